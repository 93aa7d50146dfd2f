#!/usr/bin/env python3
"""Prints a markdown table of the summary.json files under OUTDIR (as written by run-all.sh)."""
import json, os, sys

out = sys.argv[1] if len(sys.argv) > 1 else "sims-out"
walls = {}
if os.path.exists(os.path.join(out, "runs.txt")):
    for line in open(os.path.join(out, "runs.txt")):
        name, status, wall = line.split(" ", 3)[:3]
        walls[name] = (status, wall.rstrip(":"))

def f(v, fmt="{:.3f}"):
    return "–" if v is None else fmt.format(v)

print("| run | nodes | edges | success | lookups | nearest held | stretch | p50/p99 hops | converge s | recovery s | table mean/max | ctrl B/node/s | sim s | wall s |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for name in sorted(os.listdir(out)):
    p = os.path.join(out, name, "summary.json")
    if not os.path.exists(p):
        continue
    s = json.load(open(p))
    print(f"| {name} | {s['nodes']} | {s['edges']} | {f(s['success_rate'])} | {f(s['lookup_success_rate'])} "
          f"| {f(s.get('dht_nearest_held'))} | {f(s['mean_stretch'], '{:.2f}')} | {f(s['p50_hops'], '{}')}/{f(s['p99_hops'], '{}')} "
          f"| {f(s['converge_s'], '{:.1f}')} | {f(s['recovery_s'], '{:.1f}')} "
          f"| {s['table_entries_mean']:.0f}/{s['table_entries_max']} | {s['control_bytes_per_node_s']:.0f} "
          f"| {s['sim_s']:.0f} | {s['wall_s']:.0f} |")
