#!/usr/bin/env python3
"""Hostile UDP traffic for meshd's integration tests.

  udp_garbage.py capture IFACE PORT OUT SECONDS MAX
      In the victim's namespace: record (with an AF_PACKET socket) up to MAX real IPv4 UDP
      datagrams arriving on IFACE for PORT, for at most SECONDS, into OUT.

  udp_garbage.py flood DST_IP PORT CAPTURED SPOOF_IP SPOOF_PORT COUNT SEED
      In the legitimate peer's namespace: send COUNT hostile datagrams to DST_IP:PORT, mixing
        - random bytes of random length (0..1500), from an ordinary socket;
        - a type byte 1..5 followed by random or truncated bodies;
        - captured datagrams truncated at a random length;
        - captured datagrams replayed verbatim, from the peer's own address (raw socket);
        - captured datagrams with flipped bits, from the peer's own address;
        - data messages (type 5) with a real receiver index and forged counters (0, 2^64-1,
          just ahead of the window...), from the peer's own address;
        - handshake initiations (types 1 and 2) of plausible lengths.
      Prints how many of each it sent.
"""

import random
import socket
import struct
import sys
import time


def capture(iface, port, out, seconds, max_count):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
    s.bind((iface, 0))
    s.settimeout(0.2)
    print("ready", flush=True)
    end = time.time() + seconds
    got = []
    while time.time() < end and len(got) < max_count:
        try:
            pkt, addr = s.recvfrom(65535)
        except socket.timeout:
            continue
        if addr[2] == socket.PACKET_OUTGOING or len(pkt) < 28 or pkt[9] != 17:
            continue
        ihl = (pkt[0] & 15) * 4
        sport, dport, ulen = struct.unpack("!HHH", pkt[ihl:ihl + 6])
        if dport != port:
            continue
        got.append(pkt[ihl + 8:ihl + ulen])
    with open(out, "wb") as f:
        for g in got:
            f.write(struct.pack("!H", len(g)) + g)
    kinds = sorted({g[0] for g in got if g})
    print(f"captured {len(got)} datagrams (message types {kinds})")


def load(path):
    data = open(path, "rb").read()
    res, i = [], 0
    while i + 2 <= len(data):
        (n,) = struct.unpack("!H", data[i:i + 2])
        res.append(data[i + 2:i + 2 + n])
        i += 2 + n
    return res


def checksum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def spoofed(src_ip, src_port, dst_ip, dst_port, payload):
    """A whole IPv4+UDP packet from src (the legitimate peer's own address and port)."""
    src, dst = socket.inet_aton(src_ip), socket.inet_aton(dst_ip)
    ulen = 8 + len(payload)
    pseudo = src + dst + struct.pack("!BBH", 0, 17, ulen)
    udp = struct.pack("!HHHH", src_port, dst_port, ulen, 0)
    c = checksum(pseudo + udp + payload) or 0xFFFF
    udp = struct.pack("!HHHH", src_port, dst_port, ulen, c)
    total = 20 + ulen
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, random.getrandbits(16), 0, 64, 17, 0, src, dst)
    return ip + udp + payload


def flood(dst_ip, port, captured_path, spoof_ip, spoof_port, count, seed):
    rnd = random.Random(seed)
    captured = load(captured_path)
    if not captured:
        sys.exit("nothing was captured to replay")
    data_msgs = [c for c in captured if c and c[0] == 5 and len(c) >= 13]
    plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)

    def rb(n):
        return bytes(rnd.getrandbits(8) for _ in range(n)) if n < 64 else rnd.randbytes(n)

    def send_plain(p):
        try:
            plain.sendto(p, (dst_ip, port))
        except OSError:
            pass

    def send_spoofed(p):
        try:
            raw.sendto(spoofed(spoof_ip, spoof_port, dst_ip, port, p), (dst_ip, 0))
        except OSError:
            pass

    kinds = {}

    def one(kind):
        if kind == "random":
            send_plain(rb(rnd.randrange(0, 1500)))
        elif kind == "typed":
            t = rnd.randrange(1, 6)
            send_plain(bytes([t]) + rb(rnd.choice([0, 1, 3, 4, 8, 12, 20, 28, 31, 32, 48, 96, 200, 1400])))
        elif kind == "truncated":
            c = rnd.choice(captured)
            send_spoofed(c[:rnd.randrange(0, max(1, len(c)))])
        elif kind == "replay":
            send_spoofed(rnd.choice(captured))
        elif kind == "bitflip":
            c = bytearray(rnd.choice(captured))
            for _ in range(rnd.randrange(1, 4)):
                i = rnd.randrange(len(c))
                c[i] ^= 1 << rnd.randrange(8)
            send_spoofed(bytes(c))
        elif kind == "forged-counter":
            c = bytearray(rnd.choice(data_msgs or captured))
            if len(c) < 13:
                c = bytearray(b"\x05" + rb(28))
            ctr = rnd.choice([0, 1, 2**64 - 1, 2**63, 2**32, rnd.getrandbits(64), rnd.getrandbits(20)])
            c[5:13] = struct.pack("<Q", ctr)
            send_spoofed(bytes(c))
        elif kind == "handshake":
            t = rnd.choice([1, 2, 3, 4])
            hdr = bytes([t]) + rb(4 if t <= 2 else 8)
            send_spoofed(hdr + rb(rnd.choice([32, 48, 96, 112, 128, 64])))
        kinds[kind] = kinds.get(kind, 0) + 1

    order = ["random", "typed", "truncated", "replay", "bitflip", "forged-counter", "handshake"]
    weights = [30, 15, 10, 15, 10, 15, 5]
    start = time.time()
    for i in range(count):
        one(rnd.choices(order, weights)[0])
        if i % 200 == 199:
            time.sleep(0.002)  # do not just overflow the socket buffer: make the node read them
    took = time.time() - start
    print(f"sent {count} datagrams in {took:.2f}s: {kinds} (replay pool {len(captured)}, data msgs {len(data_msgs)})")


if __name__ == "__main__":
    if sys.argv[1] == "capture":
        capture(sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5]), int(sys.argv[6]))
    elif sys.argv[1] == "flood":
        a = sys.argv[2:]
        flood(a[0], int(a[1]), a[2], a[3], int(a[4]), int(a[5]), int(a[6]))
    else:
        sys.exit(__doc__)
