#!/usr/bin/env python3
"""What a fleet of ruddr replicas costs etcd, and how it restarts.

    bench/fleet.py [--ruddr target/release/ruddr] [--replicas 20] [--snapshots 3]
                   [--services 20000] [--per 5] [--rate 1000] [--steady 20]

A 3-member etcd cluster on loopback holds --services x --per instances (100,000 by default);
--replicas ruddr processes watch it (all three endpoints each), the first --snapshots with a
snapshot file (twenty writers would saturate two cores). A writer changes --rate instances a
second. Reported:

1. steady state: etcd's CPU and the bytes it sends (etcd_network_client_grpc_sent_bytes_total,
   summed over members) per replica, from the same window without replicas subtracted;
2. a cold start's bytes per replica (a list), and a restart of the snapshot replicas with 100
   changes made while they were down (resumed by watch): bytes out of etcd per replica;
3. an etcd member restart: re-lists across the fleet (0 expected: every replica resumes);
4. a compaction past every replica (all SIGSTOPped, one revision per service written and
   a compaction, then SIGCONT): etcd's peak memory over its resting memory, and the time until every replica is
   current again (re-lists spread by etcd.relist_jitter).

Needs etcd: `scripts/deps.sh`. Loopback only; every loop is bounded; everything lives in a
temp dir.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from compare import cpu_seconds, free_port  # noqa: E402
from load_etcd import b64, load, put_all  # noqa: E402


def get(url: str, timeout: float = 5) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def post(endpoint: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(endpoint + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            try:
                total += float(line.split()[-1])
            except ValueError:
                pass
    return total


class Cluster:
    """Three etcd members on loopback."""

    def __init__(self, work: Path):
        self.work = work
        self.ports = [(free_port(), free_port()) for _ in range(3)]
        self.initial = ",".join(f"m{i}=http://127.0.0.1:{p}" for i, (_, p) in enumerate(self.ports))
        self.procs: list[subprocess.Popen | None] = [None] * 3
        for i in range(3):
            self.start(i, "new")
        for i in range(3):
            self.wait_healthy(i)

    def endpoint(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[i][0]}"

    def start(self, i: int, state: str) -> None:
        c, p = self.ports[i]
        self.procs[i] = subprocess.Popen(
            ["etcd", "--name", f"m{i}", "--data-dir", str(self.work / f"m{i}"),
             "--listen-client-urls", f"http://127.0.0.1:{c}", "--advertise-client-urls", f"http://127.0.0.1:{c}",
             "--listen-peer-urls", f"http://127.0.0.1:{p}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{p}",
             "--initial-cluster", self.initial, "--initial-cluster-state", state,
             "--quota-backend-bytes", str(4 << 30)],
            stdout=open(self.work / f"m{i}.log", "a"), stderr=subprocess.STDOUT)

    def wait_healthy(self, i: int, timeout: float = 30) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                if '"true"' in get(self.endpoint(i) + "/health", 1):
                    return
            except OSError:
                pass
            time.sleep(0.2)
        sys.exit(f"etcd member {i} not healthy")

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p]

    def sent_bytes(self) -> float:
        return sum(metric(get(self.endpoint(i) + "/metrics"), "etcd_network_client_grpc_sent_bytes_total")
                   for i in range(3) if self.procs[i])

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids())

    def rss_mb(self) -> float:
        total = 0.0
        for pid in self.pids():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        return total

    def revision(self) -> int:
        return int(post(self.endpoint(0), "/v3/kv/range", {"key": b64("/")})["header"]["revision"])

    def compact(self) -> int:
        rev = self.revision()
        post(self.endpoint(0), "/v3/kv/compaction", {"revision": rev, "physical": True})
        return rev

    def stop(self) -> None:
        for p in self.procs:
            if p and p.poll() is None:
                p.terminate()
        for p in self.procs:
            if p:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()


class Replica:
    def __init__(self, binary: str, work: Path, i: int, endpoints: str, snapshot: bool, config: Path | None):
        self.i, self.binary, self.work = i, binary, work
        self.port, self.admin = free_port(), free_port()
        self.args = [binary, "serve", "--listen", f"127.0.0.1:{self.port}",
                     "--admin-listen", f"127.0.0.1:{self.admin}", "--etcd-endpoints", endpoints, "-q"]
        if config:
            self.args += ["--config", str(config)]
        if snapshot:
            self.args += ["--snapshot-file", str(work / f"r{i}.snapshot")]
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL,
                                     stderr=open(self.work / f"r{self.i}.log", "a"))

    def metrics(self) -> str:
        return get(f"http://127.0.0.1:{self.admin}/metrics", 2)

    def ready(self) -> bool:
        try:
            return '"connected":true' in get(f"http://127.0.0.1:{self.admin}/ready", 1)
        except OSError:
            return False

    def revision(self) -> float:
        try:
            return metric(self.metrics(), "ruddr_registry_revision ")
        except OSError:
            return 0

    def signal(self, sig: int) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self) -> None:
        self.signal(signal.SIGTERM)
        if self.proc:
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def a_records(port: int, name: str) -> list[str]:
    """The A records of `name` (a plain UDP query)."""
    import socket
    import struct
    qid = random.randrange(65536)
    q = struct.pack(">HHHHHH", qid, 0, 1, 0, 0, 0)
    for label in name.strip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\0" + struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(q, ("127.0.0.1", port))
        data = s.recv(4096)
    ancount = struct.unpack(">H", data[6:8])[0]
    at = len(q)
    out = []
    for _ in range(ancount):
        # The owner is a compression pointer (two bytes) back to the question.
        at += 2 if data[at] & 0xC0 == 0xC0 else data.index(b"\0", at) + 1 - at
        rtype, _, _, rdlen = struct.unpack(">HHIH", data[at:at + 10])
        at += 10
        if rtype == 1:
            out.append(".".join(str(b) for b in data[at:at + 4]))
        at += rdlen
    return out


def wait_all(replicas: list[Replica], test, what: str, timeout: float = 120) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if all(test(r) for r in replicas):
            return time.monotonic() - started
        time.sleep(0.05)
    sys.exit(f"timed out: {what}")


class Writer(threading.Thread):
    """`rate` changed instances a second (puts of the existing keys with a new address), in
    transactions of 10, on a schedule; bounded by stop()."""

    def __init__(self, endpoint: str, services: int, per: int, rate: int):
        super().__init__(daemon=True)
        self.endpoint, self.services, self.per, self.rate = endpoint, services, per, rate
        self.stop_ev = threading.Event()
        self.paused = threading.Event()
        self.written = 0

    def run(self) -> None:
        rng = random.Random(7)
        batch = 10
        start = time.monotonic()
        sent = 0
        while not self.stop_ev.is_set():
            if self.paused.is_set():
                time.sleep(0.05)
                start, sent = time.monotonic(), 0
                continue
            kvs = []
            for _ in range(batch):
                s, j = rng.randrange(self.services), rng.randrange(self.per)
                port = 8080 + j
                kvs.append((f"/ruddr/services/svc{s}/i{j}", json.dumps(
                    {"address": f"10.{200 + rng.randrange(50)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
                     "port": port, "ports": {"http": port}})))
            try:
                put_all(self.endpoint, kvs)
                self.written += batch
            except OSError:
                pass
            sent += batch
            ahead = sent / self.rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)


def window(cluster: Cluster, seconds: float) -> tuple[float, float]:
    """etcd's CPU seconds and bytes sent over `seconds`."""
    c0, b0 = cluster.cpu(), cluster.sent_bytes()
    time.sleep(seconds)
    return cluster.cpu() - c0, cluster.sent_bytes() - b0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ruddr", default=str(ROOT / "target/release/ruddr"))
    ap.add_argument("--replicas", type=int, default=20)
    ap.add_argument("--snapshots", type=int, default=3)
    ap.add_argument("--services", type=int, default=20000)
    ap.add_argument("--per", type=int, default=5)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--steady", type=float, default=20)
    ap.add_argument("--relist-jitter", default="", help='etcd.relist_jitter for the replicas, e.g. "0s" '
                    "(default: ruddr's)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ruddr-fleet-"))
    config = None
    if args.relist_jitter:
        config = work / "ruddr.toml"
        config.write_text(f'[etcd]\nrelist_jitter = "{args.relist_jitter}"\n')
    cluster = Cluster(work)
    replicas: list[Replica] = []
    writer = None
    try:
        t = time.monotonic()
        n = load(cluster.endpoint(0), args.services, args.per)
        print(f"loaded {n:,} instances in {time.monotonic() - t:.1f} s; etcd RSS {cluster.rss_mb():.0f} MB")
        writer = Writer(cluster.endpoint(0), args.services, args.per, args.rate)
        writer.start()
        cpu0, bytes0 = window(cluster, args.steady)
        print(f"etcd with the writer alone ({args.rate}/s): {cpu0 / args.steady:.3f} CPU, "
              f"{bytes0 / args.steady / 1e3:,.0f} kB/s sent")

        endpoints = ",".join(cluster.endpoint(i) for i in range(3))
        b = cluster.sent_bytes()
        t = time.monotonic()
        replicas = [Replica(args.ruddr, work, i, endpoints, i < args.snapshots, config)
                    for i in range(args.replicas)]
        took = wait_all(replicas, Replica.ready, "every replica listed and watching", 300)
        cold = (cluster.sent_bytes() - b) / args.replicas
        print(f"{args.replicas} replicas current {took:.1f} s after start; a cold start: "
              f"{cold / 1e6:.1f} MB out of etcd per replica (the list)")
        time.sleep(3)
        cpu1, bytes1 = window(cluster, args.steady)
        per_cpu = (cpu1 - cpu0) / args.steady / args.replicas
        per_bytes = (bytes1 - bytes0) / args.steady / args.replicas
        print(f"steady state: etcd {cpu1 / args.steady:.3f} CPU, {bytes1 / args.steady / 1e3:,.0f} kB/s; "
              f"per replica {per_cpu * 1000:.1f} millicores, {per_bytes / 1e3:,.1f} kB/s")
        rss = []
        for r in replicas:
            for line in Path(f"/proc/{r.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss.append(int(line.split()[1]) / 1024)
        rss.sort()
        print(f"replica RSS: median {rss[len(rss) // 2]:.1f} MiB, max {rss[-1]:.1f} MiB")

        # Restart of the snapshot replicas, 100 changes made while they are down; the writer
        # pauses so the bytes are theirs.
        time.sleep(7)  # a snapshot written since the churn
        writer.paused.set()
        time.sleep(1)
        snap = replicas[:args.snapshots]
        for r in snap:
            r.stop()
        put_all(cluster.endpoint(0), [(f"/ruddr/services/svc{i}/i0", json.dumps(
            {"address": f"10.254.{i // 250}.{i % 250 + 1}", "port": 8080, "ports": {"http": 8080}}))
            for i in range(100)])
        time.sleep(1)
        b = cluster.sent_bytes()
        for r in snap:
            r.start()
        took = wait_all(snap, lambda r: r.ready() and r.revision() >= cluster.revision(), "snapshot replicas current")
        time.sleep(1)
        warm = (cluster.sent_bytes() - b) / len(snap)
        resumed = sum(metric(r.metrics(), 'ruddr_registry_resumes_total{how="watch"}') for r in snap)
        # Every change in every restarted replica's answers: svc<i>.svc.internal A holds the new
        # address of i0 and not the old one.
        wrong = 0
        for r in snap:
            for i in range(100):
                got = set(a_records(r.port, f"svc{i}.svc.internal"))
                if f"10.254.{i // 250}.{i % 250 + 1}" not in got or f"10.{i // 250}.{i % 250}.1" in got:
                    wrong += 1
        print(f"  changed names checked on the restarted replicas: {len(snap) * 100}, wrong: {wrong}")
        print(f"restart of {len(snap)} snapshot replicas: current {took:.2f} s after start, resumed by watch: "
              f"{resumed:.0f} of {len(snap)}, {warm / 1e3:,.1f} kB out of etcd per replica "
              f"({warm / cold * 100:.2f} % of a list)")
        writer.paused.clear()

        # An etcd member restart: every replica resumes, none lists.
        relists = sum(metric(r.metrics(), "ruddr_registry_relists_total") for r in replicas)
        cluster.procs[2].terminate()
        cluster.procs[2].wait(20)
        time.sleep(3)
        cluster.start(2, "existing")
        cluster.wait_healthy(2)
        time.sleep(5)
        took = wait_all(replicas, Replica.ready, "every replica current after the member restart")
        after = sum(metric(r.metrics(), "ruddr_registry_relists_total") for r in replicas)
        print(f"etcd member restart: {after - relists:.0f} re-lists across {args.replicas} replicas; "
              f"every replica current")

        # A compaction past every replica.
        writer.paused.set()
        time.sleep(1)
        rest = cluster.rss_mb()
        relists = sum(metric(r.metrics(), "ruddr_registry_relists_total") for r in replicas)
        for r in replicas:
            r.signal(signal.SIGSTOP)
        # Enough revisions that the stopped replicas' watches fall behind (etcd queues a few
        # hundred responses per stream, the kernel some megabytes): every instance rewritten,
        # ten to a revision.
        def rewrite(part: int) -> None:
            for start in range(part * 10, args.services, 40):
                put_all(cluster.endpoint(part % 3), [(f"/ruddr/services/svc{i}/i{j}", json.dumps(
                    {"address": f"10.253.{i // 250}.{i % 250 + 1}", "port": 8080 + j, "ports": {"http": 8080 + j}}))
                    for i in range(start, min(start + 10, args.services)) for j in range(args.per)][:10])
        t = time.monotonic()
        threads = [threading.Thread(target=rewrite, args=(k,)) for k in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        print(f"  (replicas stopped; {args.services:,} revisions written in {time.monotonic() - t:.1f} s)")
        compacted = cluster.compact()
        time.sleep(1)
        peak = [cluster.rss_mb()]
        stop_sampling = threading.Event()

        def sample() -> None:
            while not stop_sampling.is_set():
                peak.append(cluster.rss_mb())
                time.sleep(0.1)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t = time.monotonic()
        for r in replicas:
            r.signal(signal.SIGCONT)
        took = wait_all(replicas, lambda r: r.revision() >= compacted, "every replica current after the compaction",
                        300)
        time.sleep(1)
        stop_sampling.set()
        sampler.join()
        after = sum(metric(r.metrics(), "ruddr_registry_relists_total") for r in replicas)
        print(f"compaction past every replica: {after - relists:.0f} re-lists, every replica current "
              f"{took:.1f} s after SIGCONT; etcd RSS at rest {rest:.0f} MB, peak {max(peak):.0f} MB "
              f"(+{max(peak) - rest:.0f} MB)")
    finally:
        if writer:
            writer.stop_ev.set()
        for r in replicas:
            r.signal(signal.SIGCONT)
            r.stop()
        cluster.stop()
        if not os.environ.get("KEEP"):
            subprocess.run(["rm", "-rf", str(work)])


if __name__ == "__main__":
    main()
