#!/usr/bin/env python3
"""ruddr's xDS server at scale: many ADS streams under registry changes, beside DNS load.

    bench/xds_scale.py [--streams 1000] [--services 1000] [--per-stream 10] [--rate 100]
                       [--duration 20] [--rounds 1]

A private etcd and the release ruddr (--xds-listen) on loopback; the load tool is
bench/xds_load.rs (cargo build --release --example xds_load). It registers --services services,
then per round:
  A. DNS alone: the tool changes --rate services a second (no streams) while dnsperf asks for
     random service names (A): answers per ruddr CPU-second.
  B. The same with --streams ADS streams open (each its own connection, --per-stream services
     each): the tool reports push latency, whether every stream ended at each service's last
     state, and ruddr's RSS per stream; dnsperf as in A.
The DNS drop is B's answers per CPU-second against A's.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def more_files():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def wait(what: str, f, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = f()
        if r:
            return r
        time.sleep(0.05)
    sys.exit(f"timed out waiting for {what}")


def dnsperf(port: int, qfile: Path, duration: int, pid: int) -> tuple[float, float]:
    c0 = cpu_seconds(pid)
    out = subprocess.run(["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(qfile),
                          "-l", str(duration), "-c", "10", "-T", "1"],
                         capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(pid) - c0
    done = int(re.search(r"Queries completed:\s+(\d+)", out).group(1))
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))
    return qps, done / cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--per-stream", type=int, default=10)
    ap.add_argument("--rate", type=int, default=100)
    ap.add_argument("--duration", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=1)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"
    ap.add_argument("--ruddr", default=str(target / "ruddr"))
    ap.add_argument("--load", default=str(target / "examples" / "xds_load"))
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ruddr-xds-scale-"))
    procs: list[subprocess.Popen] = []
    try:
        ec, ep = free_port(), free_port()
        etcd = f"http://127.0.0.1:{ec}"
        procs.append(subprocess.Popen(
            ["etcd", "--name", "n1", "--data-dir", str(work / "etcd"),
             "--listen-client-urls", etcd, "--advertise-client-urls", etcd,
             "--listen-peer-urls", f"http://127.0.0.1:{ep}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{ep}",
             "--initial-cluster", f"n1=http://127.0.0.1:{ep}"],
            stdout=subprocess.DEVNULL, stderr=open(work / "etcd.log", "w")))
        time.sleep(1)
        dns, admin, xds = free_port(), free_port(), free_port()
        ruddr = subprocess.Popen(
            [a.ruddr, "serve", "--listen", f"127.0.0.1:{dns}", "--admin-listen", f"127.0.0.1:{admin}",
             "--etcd-endpoints", etcd, "--xds-listen", f"127.0.0.1:{xds}"],
            stdout=subprocess.DEVNULL, stderr=open(work / "ruddr.log", "w"), preexec_fn=more_files)
        procs.append(ruddr)
        subprocess.run([a.load, "--setup", "--etcd", etcd, "--services", str(a.services)], check=True)

        def ready():
            try:
                r = json.load(urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready"))
                return r.get("connected") and r.get("instances") == a.services
            except OSError:
                return False
        wait("ruddr to hold every service", ready)
        qfile = work / "queries.txt"
        qfile.write_text("".join(f"svc{i}.svc.internal A\n" for i in range(a.services)))
        common = ["--xds", f"127.0.0.1:{xds}", "--etcd", etcd, "--services", str(a.services),
                  "--per-stream", str(a.per_stream), "--rate", str(a.rate), "--duration", str(a.duration + 2),
                  "--pid", str(ruddr.pid)]
        drops = []
        for rnd in range(1, a.rounds + 1):
            base = subprocess.Popen([a.load, *common, "--streams", "0"], stdout=subprocess.PIPE, text=True)
            base.stdout.readline()  # "streams ready: 0"
            qa, pa = dnsperf(dns, qfile, a.duration, ruddr.pid)
            base.communicate()
            load = subprocess.Popen([a.load, *common, "--streams", str(a.streams)],
                                    stdout=subprocess.PIPE, text=True, preexec_fn=more_files)
            line = load.stdout.readline()
            print(f"round {rnd}: {line.strip()}", flush=True)
            qb, pb = dnsperf(dns, qfile, a.duration, ruddr.pid)
            rest, _ = load.communicate()
            if load.returncode != 0:
                sys.exit(f"xds_load failed ({load.returncode})")
            print(rest.rstrip())
            drop = (pa - pb) / pa * 100
            drops.append(drop)
            print(f"  DNS without streams: {qa:,.0f} QPS, {pa:,.0f} answers per ruddr CPU-s")
            print(f"  DNS with {a.streams} streams: {qb:,.0f} QPS, {pb:,.0f} answers per ruddr CPU-s "
                  f"({drop:.1f} % drop)", flush=True)
        if len(drops) > 1:
            print(f"median DNS drop over {len(drops)} rounds: {statistics.median(drops):.1f} %")
        return 0
    finally:
        for p in reversed(procs):
            p.kill()
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
