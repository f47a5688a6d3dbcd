#!/usr/bin/env python3
"""Floods of unique random names against one ruddr, and whether a real client's registry queries
get through meanwhile.

    bench/flood.py [--ruddr target/release/ruddr] [--kinds static,forward,tag,port,registry]
                   [--duration 10] [--senders 2] [--rate 0] [--probe-every 0.02]

ruddr serves a registry (etcd, 100 services x 3), a static zone (`static.test`, from a zone file)
and forwards `fwd.test` to knotd. For each kind, a flood of names never asked before is sent as
fast as the sender processes manage (pre-built packets, replies never read):

- static:   `<random>.static.test A`        (NXDOMAIN from the static zone)
- forward:  `<random>.fwd.test A`           (a forward-cache miss each: upstream, or SERVFAIL
                                             past the forwarding limits)
- tag:      `_<random>.svc7.svc.internal A` (a tag under a service)
- port:     `_<random>._tcp.svc7.svc.internal SRV` (a port label under a service)
- registry: `<random>.svc.internal A`       (an unknown service)

Meanwhile a probe asks `svc3.svc.internal A` every --probe-every seconds (1 s timeout) from its
own socket, and counts the probes that got no answer. Prints per kind the flood rate reached
(packets sent per second), the probes lost, ruddr's CPU seconds and RSS, and the datagrams the
kernel dropped at ruddr's sockets (receive queues full) while the probe ran.

Needs etcd, knot (knotd) and dig: `WITH_BENCH=1 scripts/deps.sh`. Loopback only; every loop is
bounded by --duration; everything lives in a temp dir.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from compare import Server, cpu_seconds, free_port, start_etcd, tear_down  # noqa: E402
from load_etcd import load as load_etcd  # noqa: E402

FLOODS = {
    "static": ("{}.static.test", 1),
    "forward": ("{}.fwd.test", 1),
    "tag": ("_{}.svc7.svc.internal", 1),
    "port": ("_{}._tcp.svc7.svc.internal", 33),
    "registry": ("{}.svc.internal", 1),
}


def wire_name(name: str) -> bytes:
    out = b""
    for label in name.strip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def packet(qid: int, name: str, qtype: int, rd: bool = True) -> bytes:
    flags = 0x0100 if rd else 0
    return struct.pack(">HHHHHH", qid & 0xFFFF, flags, 1, 0, 0, 0) + wire_name(name) + struct.pack(">HH", qtype, 1)


def sender(port: int, pattern: str, qtype: int, seed: int, duration: float, count, rate: float) -> None:
    """Sends unique names for `duration` seconds, as fast as it can or at `rate` per second (0:
    no pacing); adds what it sent to `count`."""
    rng = random.Random(seed)
    socks = []
    for _ in range(4):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        s.connect(("127.0.0.1", port))
        s.setblocking(False)
        socks.append(s)
    # Pre-built packets, so the loop only sends: names are unique (seed, counter). Paced, every
    # packet of the run is built before it starts: building a lap mid-run stalls the sender,
    # and catching up afterwards would be a burst far above the rate.
    laps = int(rate * duration * 1.1) + 256 if rate else 200_000
    batch = [packet(i, pattern.format(f"f{seed}x{i}r{rng.getrandbits(32):08x}"), qtype) for i in range(laps)]
    sent, i, n = 0, 0, len(batch)
    start = time.monotonic()
    end = start + duration
    while True:
        if rate:
            # Paced: ahead of schedule, wait for it (in steps of a burst); behind it (the sender
            # was descheduled), catch up by at most 20 ms of packets, not in one burst.
            ahead = sent / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
            elif ahead < -0.02:
                start += -0.02 - ahead
        for _ in range(256):
            try:
                socks[i & 3].send(batch[i % n])
                sent += 1
            except (BlockingIOError, ConnectionRefusedError):
                pass
            i += 1
        if i >= n:
            # Fresh names for the next lap (never a repeat).
            batch = [packet(j, pattern.format(f"f{seed}y{i + j}r{rng.getrandbits(32):08x}"), qtype) for j in range(n)]
            i = 0
        if time.monotonic() >= end:
            break
    with count.get_lock():
        count.value += sent


def probe(port: int, every: float, duration: float, result: dict) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1.0)
    sent = lost = 0
    end = time.monotonic() + duration
    qid = 0
    while time.monotonic() < end:
        qid = (qid + 1) & 0xFFFF
        started = time.monotonic()
        s.sendto(packet(qid, "svc3.svc.internal", 1, rd=False), ("127.0.0.1", port))
        sent += 1
        try:
            while True:
                data = s.recv(4096)
                if struct.unpack(">H", data[:2])[0] == qid:
                    break
        except socket.timeout:
            lost += 1
        left = every - (time.monotonic() - started)
        if left > 0:
            time.sleep(left)
    result.update(sent=sent, lost=lost)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def socket_drops(port: int) -> int:
    """Datagrams the kernel dropped at ruddr's UDP sockets on `port` (receive queue full): the
    drops column of /proc/net/udp, summed over the sockets bound to the port."""
    total = 0
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port:
            total += int(fields[-1])
    return total


def logged_bound(work: Path) -> int:
    """The cache_bound_bytes ruddr logged at start (its "answer caches bounded" line)."""
    for log in work.glob("*.log"):
        m = re.search(r"answer caches bounded.*?cache_bound_bytes=(\d+)|cache_bound_bytes=(\d+).*answer caches bounded",
                      log.read_text(errors="replace"))
        if m:
            return int(m.group(1) or m.group(2))
    sys.exit("ruddr logged no cache bound (run without -q?)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ruddr", default=str(ROOT / "target/release/ruddr"))
    ap.add_argument("--kinds", default=",".join(FLOODS))
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--senders", type=int, default=2)
    ap.add_argument("--rate", type=float, default=0, help="flood packets per second in all (0: as fast as "
                    "the senders manage)")
    ap.add_argument("--probe-every", type=float, default=0.02)
    ap.add_argument("--ruddr-args", default="")
    ap.add_argument("--bounds", default="", metavar="SHARED,FRONT,FORWARD[,FORWARD_FRONT]",
                    help="cache bounds in bytes (dns.answer_cache_bytes, dns.answer_front_bytes, "
                    "forward.cache_bytes, forward.cache_front_bytes, default the front's), e.g. "
                    "4194304,1048576,2097152; prints the RSS rise against 2x the bound ruddr "
                    "logs at start (fronts counted per answering thread) + 16 MB")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ruddr-flood-"))
    servers: list[Server] = []
    etcd = None
    try:
        etcd, endpoint = start_etcd(work)
        load_etcd(endpoint, 100, 3)
        zones = work / "zones"
        zones.mkdir()
        soa = "@ IN SOA ns hostmaster 1 3600 600 86400 300\n@ IN NS ns\nns IN A 127.0.0.1\n"
        (zones / "static.test.zone").write_text(f"$TTL 300\n{soa}www IN A 192.0.2.1\n")
        (work / "up").mkdir()
        (work / "up" / "fwd.test.zone").write_text(f"$ORIGIN fwd.test.\n$TTL 300\n{soa}www IN A 192.0.2.2\n")
        kport = free_port()
        (work / "knot").mkdir()
        (work / "knot.conf").write_text(f"""server:
    listen: 127.0.0.1@{kport}
    rundir: {work / 'knot'}
database:
    storage: {work / 'knot'}
zone:
  - domain: fwd.test
    file: {work / 'up' / 'fwd.test.zone'}
log:
  - target: stderr
    any: error
""")
        servers.append(Server("knotd", ["knotd", "-c", str(work / "knot.conf")], kport, work))
        port = free_port()
        config: list[str] = []
        limit_mb = None
        if args.bounds:
            sizes = [int(x) for x in args.bounds.split(",")]
            shared, front, fwd = sizes[:3]
            fwd_front = sizes[3] if len(sizes) > 3 else front
            (work / "ruddr.toml").write_text(
                f"[dns]\nanswer_cache_bytes = {shared}\nanswer_front_bytes = {front}\n"
                f"[forward]\ncache_bytes = {fwd}\ncache_front_bytes = {fwd_front}\n")
            config = ["-c", str(work / "ruddr.toml")]
        ruddr = Server("ruddr", [args.ruddr, "serve", *config, "--listen", f"127.0.0.1:{port}",
                                 "--etcd-endpoints", endpoint, "--admin-listen", "", "--zones-dir", str(zones),
                                 "--upstream", f"127.0.0.1:{kport}", *args.ruddr_args.split()], port, work)
        servers.append(ruddr)
        ruddr.wait_answer("svc99.svc.internal", 3)
        ruddr.wait_answer("www.fwd.test", 1)

        # What a real client's traffic keeps warm, before the floods.
        for i in range(100):
            ruddr.wait_answer(f"svc{i}.svc.internal", 3)
        base_mb = rss_mb(ruddr.proc.pid) * 1.048576
        if args.bounds:
            bound = logged_bound(work)
            limit_mb = 2 * bound / 1e6 + 16
        print(f"RSS before the floods: {base_mb:.1f} MB" +
              (f"; allowed rise: {limit_mb:.1f} MB (2 x bounds + 16 MB)" if limit_mb else ""))
        print(f"{'flood':<10}{'sent/s':>10}{'probes':>8}{'lost':>6}{'ruddr cpu s':>13}{'RSS MB':>8}"
              f"{'rise MB':>9}{'kernel drops':>14}")
        for kind in args.kinds.split(","):
            pattern, qtype = FLOODS[kind]
            count = multiprocessing.Value("q", 0)
            procs = [multiprocessing.Process(target=sender, args=(port, pattern, qtype, k + 1, args.duration, count,
                                                                 args.rate / args.senders))
                     for k in range(args.senders)]
            result: dict = {}
            # Building each sender's packets takes a moment: start the probe when they send.
            for p in procs:
                p.start()
            time.sleep(1.5)
            before = cpu_seconds(ruddr.proc.pid)
            drops = socket_drops(port)
            t = threading.Thread(target=probe, args=(port, args.probe_every, args.duration - 2, result))
            t.start()
            t.join()
            for p in procs:
                p.join()
            cpu = cpu_seconds(ruddr.proc.pid) - before
            rate = count.value / args.duration
            rss = rss_mb(ruddr.proc.pid) * 1.048576
            print(f"{kind:<10}{rate:>10,.0f}{result['sent']:>8}{result['lost']:>6}{cpu:>13.2f}"
                  f"{rss:>8.1f}{rss - base_mb:>9.1f}{socket_drops(port) - drops:>14,}", flush=True)
            time.sleep(1)
    finally:
        tear_down(servers, etcd, work)


if __name__ == "__main__":
    main()
