#!/usr/bin/env bash
# Runs the experiments behind docs/sims.md. Usage: sims/scripts/run-all.sh OUTDIR [BIN]
# BIN defaults to the workspace's release build of sims.
set -u
OUT=${1:-sims-out}
BIN=${2:-target/release/sims}
TOPO=${TOPO:-../shared/topologies}
mkdir -p "$OUT"
run() {
  local name=$1; shift
  local t0=$(date +%s.%N)
  if "$BIN" "$@" --out "$OUT/$name" > "$OUT/$name.log" 2>&1; then st=ok; else st=FAILED; fi
  printf '%s %s %.1fs: %s\n' "$name" "$st" "$(echo "$(date +%s.%N) - $t0" | bc)" "$*" | tee -a "$OUT/runs.txt"
}
# Convergence, comparable with meshnet-lab 2024 (1 ms links, 200 sampled pairs).
run converge-grid49   converge --topology grid --nodes 49 --seed 1 --duration 30
run converge-line50   converge --topology line --nodes 50 --seed 1 --duration 30
# Reach at 100 and 1,000 nodes.
for n in 100 1000; do
  for k in ba geometric grid; do
    run reach-$k-$n reach --topology $k --nodes $n --seed 1
  done
done
run reach-line-100 reach --topology line --nodes 100 --seed 1
run reach-ring-100 reach --topology ring --nodes 100 --seed 1
for f in "$TOPO"/*.gml; do
  b=$(basename "$f" .gml)
  run reach-$b reach --gml "$f" --seed 1
done
# Failure of 10% of nodes.
for n in 100 1000; do
  for k in ba geometric; do
    run fail-$k-$n fail --topology $k --nodes $n --seed 1 --duration 20
  done
done
for b in Geant2012 Cogentco Kdl; do
  run fail-$b fail --gml "$TOPO/$b.gml" --seed 1 --duration 20
done
run churn-ba-100 churn --topology ba --nodes 100 --seed 1 --duration 60
run mobility-100 mobility --nodes 100 --seed 1 --duration 60
# meshnet-lab's procedure: 50 radios, ~150 links, jumps of up to 10/30/60 m of a ~195 m
# range, pings 10 or 30 s after each jump.
for j in 0.05 0.15 0.31; do
  for st in 10 30; do
    run mobility-rounds-$j-$st mobility --nodes 50 --degree 7 --settle $st --jump $j --seed 1 --duration 120
  done
done
run cost-ba-1000 cost --topology ba --nodes 1000 --seed 1 --warmup 60
# 10,000 nodes (about 4 minutes each on this machine): SKIP_BIG=1 leaves them out.
if [ -z "${SKIP_BIG:-}" ]; then
  for k in ba geometric grid line ring; do
    run reach-$k-10000 reach --topology $k --nodes 10000 --seed 1
  done
  run fail-ba-10000 fail --topology ba --nodes 10000 --seed 1 --duration 20
fi

