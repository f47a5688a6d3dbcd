#!/usr/bin/env python3
"""ruddr's xDS server with real gRPC clients (Python grpcio): propagation and weight split.

    bench/xds_grpc.py [--changes 30] [--rpcs 4000]

A private etcd and the release ruddr (--xds-listen) on loopback, gRPC backends from
tests/integration/xds/backends.py, clients from tests/integration/xds/client.py (xds:///<name>).

 1. propagation  one client on xds:///prop calling every 5 ms; --changes times: register a new
                 backend, time from the etcd put to the first RPC it answers; then delete the
                 previous one and time from the delete to the last RPC it answered.
 2. weights      service `split` with two backends of registry weight 1 and 4; one client makes
                 --rpcs RPCs (ring hash, no hash policy: a random hash per RPC) and the share of
                 the weight-4 backend is reported (4/5 = 0.80 if weights are honoured).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
XDS = ROOT / "tests" / "integration" / "xds"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(what: str, f, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = f()
        if r:
            return r
        time.sleep(0.005)
    sys.exit(f"timed out waiting for {what}")


class Client:
    def __init__(self, xds_port: int, target: str, interval: float):
        bootstrap = {"xds_servers": [{"server_uri": f"127.0.0.1:{xds_port}",
                                      "channel_creds": [{"type": "insecure"}],
                                      "server_features": ["xds_v3"]}],
                     "node": {"id": "bench"}}
        env = dict(os.environ, GRPC_XDS_BOOTSTRAP_CONFIG=json.dumps(bootstrap))
        self.p = subprocess.Popen([sys.executable, str(XDS / "client.py"), target, str(interval)],
                                  env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.replies: list[tuple[float, str]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            t, _, r = line.strip().partition(" ")
            self.replies.append((float(t), r))

    def stop(self):
        self.p.stdin.close()
        self.p.kill()
        self.p.wait()


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--changes", type=int, default=30)
    ap.add_argument("--rpcs", type=int, default=4000)
    ap.add_argument("--ruddr", default=str(ROOT / "target" / "release" / "ruddr"))
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ruddr-xds-"))
    procs: list[subprocess.Popen] = []
    try:
        ec, ep = free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{ec}"
        procs.append(subprocess.Popen(
            ["etcd", "--name", "n1", "--data-dir", str(work / "etcd"),
             "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
             "--listen-peer-urls", f"http://127.0.0.1:{ep}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{ep}",
             "--initial-cluster", f"n1=http://127.0.0.1:{ep}"],
            stdout=subprocess.DEVNULL, stderr=open(work / "etcd.log", "w")))
        env = dict(os.environ, ETCDCTL_API="3", ETCDCTL_ENDPOINTS=etcd_url)

        def etcdctl(*args: str):
            subprocess.run(["etcdctl", *args], env=env, check=True, stdout=subprocess.DEVNULL)

        wait("etcd", lambda: subprocess.run(["etcdctl", "endpoint", "health"], env=env,
                                            capture_output=True).returncode == 0)
        xds_port, admin = free_port(), free_port()
        procs.append(subprocess.Popen(
            [a.ruddr, "serve", "--listen", "127.0.0.1:0", "--admin-listen", f"127.0.0.1:{admin}",
             "--etcd-endpoints", etcd_url, "--xds-listen", f"127.0.0.1:{xds_port}"],
            stdout=subprocess.DEVNULL, stderr=open(work / "ruddr.log", "w")))

        def ready():
            try:
                return json.load(urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready")).get("connected")
            except OSError:
                return False
        wait("ruddr", ready)
        ports = [free_port() for _ in range(a.changes + 3)]
        procs.append(subprocess.Popen([sys.executable, str(XDS / "backends.py"), *map(str, ports)],
                                      stdout=subprocess.PIPE, text=True))
        assert procs[-1].stdout.readline().strip() == "ready"

        def value(port: int, weight: int = 1) -> str:
            return json.dumps({"address": "127.0.0.1", "port": port, "weight": weight})

        # 1. propagation
        etcdctl("put", "/ruddr/services/prop/i0", value(ports[0]))
        c = Client(xds_port, "prop", 0.005)
        wait("the first backend", lambda: any(r == f"b{ports[0]}" for _, r in c.replies))
        add, remove = [], []
        for i in range(1, a.changes + 1):
            t0 = time.monotonic()
            etcdctl("put", f"/ruddr/services/prop/i{i}", value(ports[i]))
            hit = wait(f"backend {i}", lambda: next((t for t, r in c.replies if t > t0 and r == f"b{ports[i]}"), None))
            add.append(hit - t0)
            t1 = time.monotonic()
            etcdctl("del", f"/ruddr/services/prop/i{i - 1}")
            time.sleep(0.3)
            last = max((t for t, r in c.replies if r == f"b{ports[i - 1]}"), default=t1)
            remove.append(max(0.0, last - t1))
        errors = sum(1 for _, r in c.replies if r.startswith("ERR"))
        c.stop()
        ms = lambda xs: f"p50 {statistics.median(xs) * 1000:.1f} ms, p99 {pct(xs, 0.99) * 1000:.1f} ms, max {max(xs) * 1000:.1f} ms"
        print(f"propagation over {a.changes} changes (etcdctl put/del included, RPCs every 5 ms):")
        print(f"  put -> first RPC on the new backend:     {ms(add)}")
        print(f"  delete -> last RPC on the removed one:   {ms(remove)}")
        print(f"  RPC errors meanwhile: {errors} of {len(c.replies)}")

        # 2. weights
        etcdctl("put", "/ruddr/services/split/light", value(ports[-2], 1))
        etcdctl("put", "/ruddr/services/split/heavy", value(ports[-1], 4))
        c = Client(xds_port, "split", 0.0)
        wait("both split backends", lambda: {f"b{ports[-2]}", f"b{ports[-1]}"} <= {r for _, r in c.replies})
        start = len(c.replies)
        wait(f"{a.rpcs} RPCs", lambda: len(c.replies) >= start + a.rpcs, timeout=300)
        got = [r for _, r in c.replies[start:start + a.rpcs]]
        c.stop()
        heavy = got.count(f"b{ports[-1]}") / len(got)
        print(f"weights 1:4 over {len(got)} RPCs: weight-4 share {heavy:.3f} (0.800 if honoured)")
        return 0
    finally:
        for p in reversed(procs):
            p.kill()
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
