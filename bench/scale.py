#!/usr/bin/env python3
"""ruddr at registry scale: cold start, throughput, churn and warm restart with N instances.

    bench/scale.py [--instances 100000] [--per-service 5] [--duration 10] [--skip-churn] [--keep]

Needs etcd, dnsperf and dnspython (bench/scale.sh installs them and builds ruddr). Everything runs
on loopback in a temp dir: a private etcd, then three ruddr processes in turn.

 1. load    N instances (<per-service> per service) into etcd through its JSON gateway,
            /ruddr/services/svc<i>/i<j>, values of about 150 bytes, plus a service `control`
            with 3 fixed instances.
 2. cold    ruddr without a snapshot file: process start to /ready 200 holding every instance,
            then 200 random services checked over DNS; RSS after sync and 2 s later.
 3. dnsperf random service names (A) for --duration s: QPS, lost queries, and answers per second
            of ruddr CPU time (utime + stime).
 4. churn   a second ruddr, with a snapshot file, under dnsperf while a writer applies 1,000
            registry updates/s (10 per txn every 10 ms: half puts of new or changed instances,
            half deletes of earlier ones): once under another prefix (/other/services/, not
            watched: the control load), once under ruddr's prefix. Meanwhile a checker asks
            `control` every 5 ms (its 3 instances never change), and in the second run a probe
            registers a brand-new service every 50 ms and times put-to-DNS. Each run goes on
            for 3 s after dnsperf: put-to-DNS without query load, and ruddr's CPU per update.
 5. snapshot RSS peak (VmHWM) during churn, snapshot size and how often it was rewritten.
 6. warm    SIGTERM (final snapshot), etcd frozen with SIGSTOP, a third ruddr from the snapshot:
            start to /ready 200 from the snapshot, then sample answers checked.

Prints a summary table with every figure. Exits non-zero when a step fails or a check finds
wrong data.
"""
from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

try:
    import dns.exception
    import dns.message
    import dns.query
    import dns.rcode
    import dns.rdatatype
except ImportError:
    sys.exit("scale.py needs dnspython: python3 -m pip install dnspython (or WITH_BENCH=1 scripts/deps.sh)")

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "/ruddr/services/"
OTHER_PREFIX = "/other/services/"
ZONE = "svc.internal."
VALUE_BYTES = 150
TXN_MAX_OPS = 100  # etcd's --max-txn-ops defaults to 128
LOAD_THREADS = 4
CONTROL_ADDRS = {"192.0.2.1", "192.0.2.2", "192.0.2.3"}
CHURN_RATE = 1000  # registry updates per second
CHURN_BATCH = 10  # updates per txn
CHECK_EVERY = 0.005
PROBE_EVERY = 0.050
PROBE_POLL = 0.0005
PROBE_TIMEOUT = 2.0
QUIET_TAIL = 3.0  # seconds of churn and probes after dnsperf, without query load
SAMPLE = 200
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A step that cannot go on; the message says why."""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------------------------
# processes

SETPRIV = shutil.which("setpriv")
PROCS: list[tuple[str, subprocess.Popen]] = []


def spawn(name: str, argv: list[str], log_path: Path) -> subprocess.Popen:
    """Starts argv in its own session (a Ctrl-C reaches only this script, which stops it), with
    its output in log_path. With setpriv it also dies if this script is killed outright. Called
    from the main thread only (the parent-death signal follows the thread that forked)."""
    prefix = [SETPRIV, "--pdeathsig", "KILL"] if SETPRIV else []
    with open(log_path, "ab") as out:
        p = subprocess.Popen(prefix + argv, stdin=subprocess.DEVNULL, stdout=out,
                             stderr=subprocess.STDOUT, start_new_session=True)
    PROCS.append((name, p))
    return p


def stop(p: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15.0) -> tuple[int | None, float, bool]:
    """Sends sig and waits; SIGKILL after timeout. Returns (exit code, seconds, killed)."""
    t0 = time.monotonic()
    if p.poll() is not None:
        return p.returncode, 0.0, False
    try:
        p.send_signal(sig)
        p.send_signal(signal.SIGCONT)  # a frozen process acts on the signal only once resumed
    except ProcessLookupError:
        pass
    try:
        p.wait(timeout=timeout)
        return p.returncode, time.monotonic() - t0, False
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(timeout=10)
        return p.returncode, time.monotonic() - t0, True


def stop_all() -> None:
    for name, p in reversed(PROCS):
        if p.poll() is None:
            stop(p, signal.SIGTERM, 5.0)


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text[-lines:])


def sleep_until(deadline: float) -> float:
    """Sleeps until `deadline` (monotonic); returns it, or now if it has passed (no catching up)."""
    now = time.monotonic()
    if deadline > now:
        time.sleep(deadline - now)
        return deadline
    return now


def cpu_seconds(pid: int) -> float:
    """utime + stime of pid (fields 14 and 15 of /proc/PID/stat), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state), so field n is fields[n - 3]
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status(pid: int, key: str) -> int:
    """A kB value of /proc/PID/status (VmRSS, VmHWM) in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise BenchError(f"/proc/{pid}/status has no {key}")


def reset_peak_rss(pid: int) -> bool:
    """Resets VmHWM to the current RSS (clear_refs 5); False when not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def free_port(used: set[int]) -> int:
    """A loopback port free for both TCP and UDP, not handed out before in this run."""
    for _ in range(100):
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            u.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            t.close()
            u.close()
        if port not in used:
            used.add(port)
            return port
    raise BenchError("no free loopback port")


# --------------------------------------------------------------------------------------------
# etcd through its JSON gateway

def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def put_op(key: str, value: str) -> str:
    return '{"request_put":{"key":"%s","value":"%s"}}' % (b64(key), b64(value))


def delete_op(key: str) -> str:
    return '{"request_delete_range":{"key":"%s"}}' % b64(key)


def value_json(address: str, port: int) -> str:
    """A registry value of about VALUE_BYTES bytes: address, port, and a meta field as padding."""
    head = '{"address":"%s","port":%d,"meta":{"pad":"' % (address, port)
    tail_ = '"}}'
    return head + "x" * max(1, VALUE_BYTES - len(head) - len(tail_)) + tail_


class Etcd:
    """One keep-alive connection to etcd's gateway; one per thread."""

    def __init__(self, port: int, timeout: float = 30.0):
        self.port = port
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def post(self, path: str, body: str) -> dict:
        last: Exception | None = None
        for _ in range(3):  # puts and deletes are idempotent, so a retry is safe
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
                self.conn.request("POST", path, body.encode(), {"Content-Type": "application/json"})
                resp = self.conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as e:
                self.close()
                last = e
                time.sleep(0.1)
                continue
            if resp.status != 200:
                raise BenchError(f"etcd {path}: HTTP {resp.status}: {data[:300].decode(errors='replace')}")
            return json.loads(data)
        raise BenchError(f"etcd {path}: {last}")

    def txn(self, ops: list[str]) -> int:
        """Applies the ops in one transaction; returns the revision."""
        r = self.post("/v3/kv/txn", '{"success":[' + ",".join(ops) + "]}")
        return int(r["header"]["revision"])

    def revision(self) -> int:
        r = self.post("/v3/kv/range", json.dumps({"key": b64("/"), "limit": 1}))
        return int(r["header"]["revision"])


def start_etcd(work: Path, ports: set[int]) -> tuple[subprocess.Popen, int]:
    client, peer = free_port(ports), free_port(ports)
    cu, pu = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    argv = ["etcd", "--name", "n1", "--data-dir", str(work / "etcd"),
            "--listen-client-urls", cu, "--advertise-client-urls", cu,
            "--listen-peer-urls", pu, "--initial-advertise-peer-urls", pu,
            "--initial-cluster", f"n1={pu}", "--initial-cluster-state", "new",
            "--quota-backend-bytes", "8589934592"]
    p = spawn("etcd", argv, work / "etcd.log")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise BenchError(f"etcd exited with {p.returncode}:\n{tail(work / 'etcd.log')}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", client, timeout=1)
            c.request("GET", "/health")
            ok = c.getresponse().read()
            c.close()
            if json.loads(ok).get("health") == "true":
                return p, client
        except (OSError, http.client.HTTPException, ValueError):
            pass
        time.sleep(0.1)
    raise BenchError(f"etcd did not become healthy in 30 s:\n{tail(work / 'etcd.log')}")


# --------------------------------------------------------------------------------------------
# the data set

class Layout:
    """N base instances, per_service each: svc<k // per>/i<k % per>, address from k."""

    def __init__(self, instances: int, per: int):
        self.n, self.per = instances, per
        self.services = (instances + per - 1) // per

    @staticmethod
    def address(k: int) -> str:
        return f"10.{(k >> 16) & 255}.{(k >> 8) & 255}.{k & 255}"

    def key_value(self, k: int) -> tuple[str, str]:
        s, j = divmod(k, self.per)
        return f"{PREFIX}svc{s}/i{j}", value_json(self.address(k), 8080 + j)

    def base_addresses(self, s: int) -> set[str]:
        return {self.address(k) for k in range(s * self.per, min((s + 1) * self.per, self.n))}


def parallel_txns(port: int, chunks: int, make_chunk, label: str, timeout: float) -> float:
    """Runs make_chunk(c) -> ops for c in range(chunks) as transactions, LOAD_THREADS at a time.
    Returns the seconds taken."""
    done = [0]
    lock = threading.Lock()
    errors: list[BaseException] = []
    stop_ev = threading.Event()

    def worker(t: int) -> None:
        etcd = Etcd(port)
        try:
            for c in range(t, chunks, LOAD_THREADS):
                if stop_ev.is_set():
                    return
                etcd.txn(make_chunk(c))
                with lock:
                    done[0] += 1
        except BaseException as e:  # reported by the caller
            errors.append(e)
            stop_ev.set()
        finally:
            etcd.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(LOAD_THREADS)]
    for th in threads:
        th.start()
    last_report = t0
    try:
        while any(th.is_alive() for th in threads):
            for th in threads:
                th.join(timeout=0.5)
            now = time.monotonic()
            if now - t0 > timeout:
                raise BenchError(f"{label}: not done after {timeout:.0f} s ({done[0]}/{chunks} txns)")
            if now - last_report >= 10:
                last_report = now
                log(f"  {label}: {done[0]}/{chunks} txns, {now - t0:.0f} s")
    finally:
        stop_ev.set()
    if errors:
        raise BenchError(f"{label}: {errors[0]}")
    return time.monotonic() - t0


# --------------------------------------------------------------------------------------------
# ruddr

class Ruddr:
    def __init__(self, binary: Path, work: Path, name: str, etcd_port: int, ports: set[int],
                 snapshot: Path | None):
        self.name = name
        self.dns_port = free_port(ports)
        self.admin_port = free_port(ports)
        self.log = work / f"ruddr-{name}.log"
        cfg = work / f"ruddr-{name}.toml"
        lines = [
            f'listen = ["127.0.0.1:{self.dns_port}"]',
            f'admin_listen = "127.0.0.1:{self.admin_port}"',
            f'zones_dir = "{work / "no-zones"}"',
            "[etcd]",
            f'endpoints = ["http://127.0.0.1:{etcd_port}"]',
            f'prefix = "{PREFIX}"',
            "[dns]",
            f'zone = "{ZONE}"',
        ]
        if snapshot is not None:
            lines += ["[snapshot]", f'file = "{snapshot}"']
        cfg.write_text("\n".join(lines) + "\n")
        self.t0 = time.monotonic()
        self.proc = spawn(f"ruddr-{name}", [str(binary), "serve", "--config", str(cfg)], self.log)
        self.pid = self.proc.pid

    def ready(self) -> tuple[int, dict] | None:
        """(HTTP status, JSON body) of /ready, None when the admin listener does not answer."""
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=2)
            c.request("GET", "/ready")
            r = c.getresponse()
            body = json.loads(r.read())
            c.close()
            return r.status, body
        except (OSError, http.client.HTTPException, ValueError):
            return None

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"ruddr ({self.name}) exited with {self.proc.returncode}:\n{tail(self.log)}")

    def wait_ready(self, instances: int, timeout: float, from_snapshot: bool | None = None) -> dict:
        """Polls /ready every 10 ms until 200 with exactly `instances` (and from_snapshot, when
        given). Returns timings in seconds since the process was started."""
        first_answer = first_200 = None
        last: dict = {}
        last_report = time.monotonic()
        while True:
            self.check_alive()
            now = time.monotonic()
            r = self.ready()
            if r is not None:
                status, body = r
                last = body
                if first_answer is None:
                    first_answer = now - self.t0
                if status == 200:
                    if first_200 is None:
                        first_200 = now - self.t0
                    if body.get("instances") == instances and (
                            from_snapshot is None or body.get("from_snapshot") == from_snapshot):
                        return {"admin_up": first_answer, "first_200": first_200,
                                "full": time.monotonic() - self.t0, "body": body}
            if now - self.t0 > timeout:
                raise BenchError(
                    f"ruddr ({self.name}) not ready with {instances} instances after {timeout:.0f} s; "
                    f"last /ready: {json.dumps(last) if last else 'no answer'}\n{tail(self.log)}")
            if now - last_report >= 10:
                last_report = now
                log(f"  still waiting ({now - self.t0:.0f} s): /ready {json.dumps(last) if last else 'no answer'}")
            time.sleep(0.01)

    def wait_revision(self, revision: int, timeout: float = 30.0) -> dict:
        """Waits until ruddr applied `revision` (its mirror revision is at least that)."""
        deadline = time.monotonic() + timeout
        last: dict = {}
        while time.monotonic() < deadline:
            self.check_alive()
            r = self.ready()
            if r is not None:
                last = r[1]
                if int(last.get("revision") or 0) >= revision:
                    return last
            time.sleep(0.05)
        raise BenchError(f"ruddr ({self.name}) did not reach etcd revision {revision} in {timeout:.0f} s; "
                         f"last /ready: {json.dumps(last)}")


# --------------------------------------------------------------------------------------------
# DNS

def query_a(port: int, name: str, timeout: float = 1.0) -> tuple[str, set[str]]:
    """(rcode or TIMEOUT, A addresses) for name, over UDP."""
    q = dns.message.make_query(name, dns.rdatatype.A)
    try:
        r = dns.query.udp(q, "127.0.0.1", port=port, timeout=timeout)
    except dns.exception.Timeout:
        return "TIMEOUT", set()
    addrs = {rd.address for rrset in r.answer if rrset.rdtype == dns.rdatatype.A for rd in rrset}
    return dns.rcode.to_text(r.rcode()), addrs


def check_sample(port: int, expected: dict[str, set[str]]) -> tuple[int, list[str]]:
    """Asks each name once (one retry on a timeout); returns (correct, first few failures)."""
    good, bad = 0, []
    for name, want in expected.items():
        rcode, got = query_a(port, name, 2.0)
        if rcode == "TIMEOUT":
            rcode, got = query_a(port, name, 2.0)
        if rcode == "NOERROR" and got == want:
            good += 1
        elif len(bad) < 5:
            bad.append(f"{name}: {rcode} {sorted(got)} (want {sorted(want)})")
    return good, bad


def run_dnsperf(work: Path, port: int, qfile: Path, duration: float, label: str,
                ruddr: Ruddr, etcd_pid: int) -> dict:
    out = work / f"dnsperf-{label}.txt"
    argv = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(qfile),
            "-l", str(duration), "-c", "10", "-T", "1"]
    cpu0, ecpu0, t0 = cpu_seconds(ruddr.pid), cpu_seconds(etcd_pid), time.monotonic()
    p = spawn("dnsperf", argv, out)
    try:
        p.wait(timeout=duration + 60)
    except subprocess.TimeoutExpired:
        stop(p, signal.SIGKILL)
        raise BenchError(f"dnsperf ({label}) did not finish in {duration + 60:.0f} s")
    wall = time.monotonic() - t0
    cpu1, ecpu1 = cpu_seconds(ruddr.pid), cpu_seconds(etcd_pid)
    text = out.read_text(errors="replace")
    if p.returncode != 0:
        raise BenchError(f"dnsperf ({label}) exited with {p.returncode}:\n{text[-1500:]}")

    def grab(pattern: str) -> str:
        m = re.search(pattern, text, re.M)
        if not m:
            raise BenchError(f"dnsperf ({label}) output has no {pattern!r}:\n{text[-1500:]}")
        return m.group(1)

    completed = int(grab(r"Queries completed:\s+(\d+)"))
    cpu = cpu1 - cpu0
    res = {
        "sent": int(grab(r"Queries sent:\s+(\d+)")),
        "completed": completed,
        "lost": int(grab(r"Queries lost:\s+(\d+)")),
        "lost_pct": float(grab(r"Queries lost:\s+\d+ \(([\d.]+)%\)")),
        "qps": float(grab(r"Queries per second:\s+([\d.]+)")),
        "latency_ms": float(grab(r"Average Latency \(s\):\s+([\d.]+)")) * 1000,
        "rcodes": grab(r"Response codes:\s+(.*)$").strip(),
        "cpu": cpu,
        "etcd_cpu": ecpu1 - ecpu0,
        "wall": wall,
        "per_cpu": completed / cpu if cpu > 0 else float("nan"),
    }
    log(f"  dnsperf {label}: {res['qps']:,.0f} QPS, lost {res['lost']} ({res['lost_pct']:.2f}%), "
        f"ruddr CPU {cpu:.2f} s -> {res['per_cpu']:,.0f} answers/CPU-s; rcodes {res['rcodes']}")
    return res


# --------------------------------------------------------------------------------------------
# churn: writer, checker, probe, monitor

class Writer(threading.Thread):
    """CHURN_RATE updates/s under `prefix`, CHURN_BATCH per txn on a monotonic schedule. Each
    batch: half puts (alternately a new extra instance on a random service, and a changed
    address of an existing extra), half deletes of random existing extras. `pool` maps
    "svc<i>/x<seq>" to its address (the writer's model of the extras) and is changed in place."""

    def __init__(self, etcd_port: int, prefix: str, services: int, pool: dict[str, str],
                 seq: list[int], rng: random.Random):
        super().__init__(daemon=True)
        self.etcd = Etcd(etcd_port, timeout=10)
        self.prefix, self.services, self.pool, self.seq, self.rng = prefix, services, pool, seq, rng
        self.keys = list(pool)
        self.stop_ev = threading.Event()
        self.error: BaseException | None = None
        self.puts_new = self.puts_changed = self.deletes = self.txns = 0
        self.puts = 0
        self.late_batches = 0
        self.max_revision = 0
        self.t_start = self.t_end = 0.0

    def _pop_random(self, avoid: set[str]) -> str | None:
        for _ in range(10):
            if not self.keys:
                return None
            i = self.rng.randrange(len(self.keys))
            k = self.keys[i]
            if k not in avoid:
                self.keys[i] = self.keys[-1]
                self.keys.pop()
                return k
        return None

    def _new_address(self) -> str:
        self.seq[0] += 1
        s = self.seq[0]
        return f"172.{16 + ((s >> 16) & 15)}.{(s >> 8) & 255}.{s & 255}"

    def batch(self) -> list[str]:
        ops: list[str] = []
        touched: set[str] = set()
        for i in range(CHURN_BATCH):
            if i % 2 == 1:  # delete a random earlier extra
                k = self._pop_random(touched)
                if k is not None:
                    touched.add(k)
                    del self.pool[k]
                    ops.append(delete_op(self.prefix + k))
                    self.deletes += 1
                    continue
                # nothing left to delete: fall through to a new instance
            self.puts += 1
            if self.puts % 2 == 0 and self.keys:  # every other put changes an existing extra
                k = self._pop_random(touched)
                if k is not None:
                    self.keys.append(k)
                    touched.add(k)
                    addr = self._new_address()
                    self.pool[k] = addr
                    ops.append(put_op(self.prefix + k, value_json(addr, 9000)))
                    self.puts_changed += 1
                    continue
            self.seq[0] += 1
            k = f"svc{self.rng.randrange(self.services)}/x{self.seq[0]}"
            addr = self._new_address()
            self.pool[k] = addr
            self.keys.append(k)
            touched.add(k)
            ops.append(put_op(self.prefix + k, value_json(addr, 9000)))
            self.puts_new += 1
        return ops

    def run(self) -> None:
        interval = CHURN_BATCH / CHURN_RATE
        self.t_start = nxt = time.monotonic()
        try:
            while not self.stop_ev.is_set():
                rev = self.etcd.txn(self.batch())
                self.max_revision = max(self.max_revision, rev)
                self.txns += 1
                nxt += interval
                now = time.monotonic()
                if nxt > now:
                    time.sleep(nxt - now)
                else:
                    self.late_batches += 1
                    if now - nxt > 1.0:  # more than a second behind: do not try to catch up
                        nxt = now
        except BaseException as e:
            self.error = e
        finally:
            self.t_end = time.monotonic()
            self.etcd.close()

    @property
    def updates(self) -> int:
        return self.puts_new + self.puts_changed + self.deletes

    @property
    def rate(self) -> float:
        return self.updates / max(1e-9, self.t_end - self.t_start)


class Checker(threading.Thread):
    """Asks control.<zone> A every CHECK_EVERY s and classifies the answers."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port = port
        self.stop_ev = threading.Event()
        self.counts = {"ok": 0, "wrong": 0, "SERVFAIL": 0, "NXDOMAIN": 0, "other": 0, "timeout": 0}
        self.examples: list[str] = []
        self.rtts: list[tuple[float, float]] = []  # (time sent, seconds to the answer)
        self.error: BaseException | None = None

    def run(self) -> None:
        nxt = time.monotonic()
        try:
            while not self.stop_ev.is_set():
                t0 = time.monotonic()
                rcode, got = query_a(self.port, "control." + ZONE, 0.5)
                if rcode != "TIMEOUT":
                    self.rtts.append((t0, time.monotonic() - t0))
                if rcode == "TIMEOUT":
                    kind = "timeout"
                elif rcode == "NOERROR":
                    kind = "ok" if got == CONTROL_ADDRS else "wrong"
                elif rcode in ("SERVFAIL", "NXDOMAIN"):
                    kind = rcode
                else:
                    kind = "other"
                self.counts[kind] += 1
                if kind != "ok" and len(self.examples) < 5:
                    self.examples.append(f"{rcode} {sorted(got)}")
                nxt += CHECK_EVERY
                nxt = sleep_until(nxt)
        except BaseException as e:
            self.error = e

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class Probe(threading.Thread):
    """Every PROBE_EVERY s: put a brand-new service probe<k> with a unique address, then ask for
    it every PROBE_POLL s until it answers with that address (PROBE_TIMEOUT at most). Latency is
    from the put's HTTP response to the first correct answer."""

    def __init__(self, etcd_port: int, dns_port: int, start_k: int):
        super().__init__(daemon=True)
        self.etcd = Etcd(etcd_port, timeout=10)
        self.dns_port = dns_port
        self.k = start_k
        self.stop_ev = threading.Event()
        self.results: list[tuple[float, float | None, int]] = []  # (put time, latency or None, polls)
        self.max_revision = 0
        self.added: dict[str, str] = {}  # service -> address, for the later checks
        self.error: BaseException | None = None

    def one(self) -> None:
        self.k += 1
        svc, addr = f"probe{self.k}", f"198.18.{(self.k >> 8) & 255}.{self.k & 255}"
        wire = dns.message.make_query(f"{svc}.{ZONE}", dns.rdatatype.A).to_wire()
        rev = self.etcd.txn([put_op(f"{PREFIX}{svc}/p", value_json(addr, 7000))])
        t0 = time.monotonic()
        self.max_revision = max(self.max_revision, rev)
        self.added[svc] = addr
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        polls = 0
        try:
            sock.connect(("127.0.0.1", self.dns_port))
            sock.settimeout(0.05)
            while True:
                t_poll = time.monotonic()
                if t_poll - t0 > PROBE_TIMEOUT:
                    self.results.append((t0, None, polls))
                    return
                polls += 1
                sock.send(wire)
                try:
                    data = sock.recv(4096)
                except (socket.timeout, ConnectionRefusedError):
                    continue
                now = time.monotonic()
                try:
                    msg = dns.message.from_wire(data)
                    found = any(rrset.rdtype == dns.rdatatype.A and any(rd.address == addr for rd in rrset)
                                for rrset in msg.answer)
                except dns.exception.DNSException:
                    found = False
                if found:
                    self.results.append((t0, now - t0, polls))
                    return
                wait = t_poll + PROBE_POLL - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
        finally:
            sock.close()

    def run(self) -> None:
        nxt = time.monotonic()
        try:
            while not self.stop_ev.is_set():
                self.one()
                nxt += PROBE_EVERY
                nxt = sleep_until(nxt)
        except BaseException as e:
            self.error = e
        finally:
            self.etcd.close()


class Monitor(threading.Thread):
    """Watches the snapshot file (each atomic rewrite is a new inode) and ruddr's VmRSS, every
    10 ms. A temp file seen in the snapshot directory before a rewrite gives a rough write time."""

    def __init__(self, pid: int, snapshot: Path):
        super().__init__(daemon=True)
        self.pid, self.snapshot = pid, snapshot
        self.stop_ev = threading.Event()
        self.rewrites: list[tuple[float, int, float | None]] = []  # (time, size, write seconds)
        self.max_rss = 0
        self.t_start = time.monotonic()
        self.error: BaseException | None = None

    def run(self) -> None:
        last = None  # a file there before the monitor started is not a write it saw
        try:
            st = self.snapshot.stat()
            last = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            pass
        temp_seen: float | None = None
        n = 0
        try:
            while not self.stop_ev.is_set():
                now = time.monotonic()
                try:
                    st = self.snapshot.stat()
                    ident = (st.st_ino, st.st_mtime_ns, st.st_size)
                except FileNotFoundError:
                    ident, st = None, None
                if ident is not None and ident != last:
                    self.rewrites.append((now, st.st_size, now - temp_seen if temp_seen else None))
                    last = ident
                    temp_seen = None
                if temp_seen is None and any(name != self.snapshot.name for name in os.listdir(self.snapshot.parent)):
                    temp_seen = now
                if n % 10 == 0:
                    try:
                        self.max_rss = max(self.max_rss, proc_status(self.pid, "VmRSS"))
                    except (OSError, BenchError):
                        pass
                n += 1
                time.sleep(0.01)
        except BaseException as e:
            self.error = e


def stop_threads(*threads: threading.Thread) -> None:
    for t in threads:
        if t is not None:
            t.stop_ev.set()
    for t in threads:
        if t is not None:
            t.join(timeout=PROBE_TIMEOUT + 15)
            if t.is_alive():
                raise BenchError(f"{type(t).__name__} thread did not stop")
            if t.error is not None:
                raise BenchError(f"{type(t).__name__} failed: {t.error}")


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(-(-len(s) * q // 100)) - 1))]


def spread(ms: list[float]) -> str:
    return f"p50 {pct(ms, 50):.2f} ms, p99 {pct(ms, 99):.2f} ms, max {max(ms):.2f} ms"


# --------------------------------------------------------------------------------------------
# report

NOTES = [
    "notes: answers per ruddr CPU-second = dnsperf's completed queries / ruddr's utime+stime during",
    "  the run; on a shared machine it is steadier than QPS. Put-to-DNS latency under dnsperf",
    "  includes the wait behind dnsperf's outstanding queries (compare the control name RTT row);",
    "  the no-dnsperf rows show propagation with the same churn. RSS peaks: VmHWM, reset at each",
    "  run start (clear_refs 5).",
]


class Report:
    def __init__(self):
        self.rows: list[tuple[str, str, str]] = []
        self.problems: list[str] = []

    def add(self, section: str, label: str, value: str) -> None:
        self.rows.append((section, label, value))
        log(f"  {label}: {value}")

    def problem(self, text: str) -> None:
        self.problems.append(text)
        log(f"  PROBLEM: {text}")

    def print(self, argv: list[str], header: list[str]) -> None:
        print()
        print("=" * 100)
        print("ruddr scale benchmark")
        print("command: " + shlex.join(argv))
        for h in header:
            print(h)
        print("=" * 100)
        width = max((len(label) for _, label, _ in self.rows), default=10)
        section = None
        for sec, label, value in self.rows:
            if sec != section:
                section = sec
                print(f"\n{sec}")
            print(f"  {label:<{width}}  {value}")
        print()
        for note in NOTES:
            print(note)
        print()
        if self.problems:
            print("PROBLEMS:")
            for p in self.problems:
                print("  - " + p)
        print("=" * 100)


def mib(b: int) -> str:
    return f"{b / 1048576:,.1f} MiB"


def rss_per_instance(b: int, n: int) -> str:
    return f" ({b / n:,.0f} B per instance)" if n else ""


def dnsperf_rows(rep: Report, sec: str, label: str, r: dict) -> None:
    rep.add(sec, f"{label}: QPS", f"{r['qps']:,.0f}")
    rep.add(sec, f"{label}: queries lost", f"{r['lost']:,} of {r['sent']:,} ({r['lost_pct']:.2f}%)")
    rep.add(sec, f"{label}: response codes", r["rcodes"])
    rep.add(sec, f"{label}: average latency", f"{r['latency_ms']:.3f} ms")
    rep.add(sec, f"{label}: ruddr CPU / etcd CPU", f"{r['cpu']:.2f} s / {r['etcd_cpu']:.2f} s over {r['wall']:.1f} s")
    rep.add(sec, f"{label}: answers per ruddr CPU-second", f"{r['per_cpu']:,.0f}")


# --------------------------------------------------------------------------------------------
# main

def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", type=int, default=100_000, help="base instances to load (default 100000)")
    ap.add_argument("--per-service", type=int, default=5, help="instances per service (default 5)")
    ap.add_argument("--duration", type=float, default=10, help="seconds per dnsperf run (default 10)")
    ap.add_argument("--skip-churn", action="store_true", help="skip the churn runs (step 4 and 5)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs, snapshot)")
    ap.add_argument("--ruddr", default=os.environ.get("RUDDR") or
                    str(Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release" / "ruddr"),
                    help="ruddr binary (default target/release/ruddr)")
    ap.add_argument("--ready-timeout", type=float, default=600, help="longest wait for /ready, s (default 600)")
    ap.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    ap.add_argument("--profile-churn", metavar="PATH",
                    help="record `perf record -g` of ruddr during both churn-step dnsperf runs into "
                         "PATH.control and PATH.churn (perf.data files; read with perf report -i)")
    ap.add_argument("--profile-call-graph", default="fp", metavar="MODE",
                    help="perf record --call-graph mode for --profile-churn (fp, dwarf; default fp)")
    a = ap.parse_args()
    if not 1 <= a.instances <= 16_000_000:
        ap.error("--instances must be 1..16000000")
    if not 1 <= a.per_service <= 50:
        ap.error("--per-service must be 1..50 (larger answers do not fit a 512-byte UDP reply)")
    if not 1 <= a.duration <= 3600:
        ap.error("--duration must be 1..3600")
    return a


def main() -> int:
    args = parse_args()
    for tool in ("etcd", "dnsperf"):
        if shutil.which(tool) is None:
            print(f"{tool} not found (WITH_BENCH=1 scripts/deps.sh installs it)", file=sys.stderr)
            return 1
    src = Path(args.ruddr)
    if not os.access(src, os.X_OK):
        print(f"ruddr binary not found at {src} (cargo build --release)", file=sys.stderr)
        return 1

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    rng = random.Random(args.seed)
    layout = Layout(args.instances, args.per_service)
    work = Path(tempfile.mkdtemp(prefix="ruddr-scale."))
    rep = Report()
    ports: set[int] = set()
    version = subprocess.run([str(src), "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    header = [
        f"ruddr: {version} ({src}, built {time.strftime('%Y-%m-%d %H:%M', time.localtime(src.stat().st_mtime))})",
        f"data: {args.instances:,} instances, {args.per_service} per service = {layout.services:,} services, "
        f"values ~{VALUE_BYTES} B; + service 'control' (3 instances)",
        f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; "
        f"everything (etcd, ruddr, dnsperf, writer) shares it",
        f"work dir: {work}" + ("" if args.keep else " (removed at exit; --keep keeps it)"),
    ]
    ok = False
    try:
        # A private copy: a rebuild of target/release/ruddr during the run changes nothing here.
        binary = work / "ruddr"
        shutil.copy2(src, binary)
        (work / "snap").mkdir()
        snapshot = work / "snap" / "ruddr.snapshot"
        run(args, rep, rng, layout, work, binary, snapshot, ports)
        ok = not rep.problems
    except KeyboardInterrupt as e:
        rep.problem(f"interrupted ({str(e) or 'Ctrl-C'})")
    except BenchError as e:
        rep.problem(f"step failed: {e}")
    except Exception as e:  # a bug here: still clean up and show what was measured
        traceback.print_exc()
        rep.problem(f"unexpected error: {type(e).__name__}: {e}")
    finally:
        stop_all()
        rep.print(sys.argv, header)
        if args.keep:
            print(f"kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print("result: " + ("OK" if ok else "FAILED"))
    return 0 if ok else 1


def run(args, rep: Report, rng: random.Random, layout: Layout, work: Path, binary: Path,
        snapshot: Path, ports: set[int]) -> None:
    expected_base = args.instances + len(CONTROL_ADDRS)

    # 1. etcd and the data
    log(f"1. starting etcd and loading {args.instances:,} instances")
    etcd_proc, etcd_port = start_etcd(work, ports)
    sec = "1. load (etcd JSON gateway, txns of <= 100 puts, 4 threads)"
    rep.add(sec, "etcd", f"pid {etcd_proc.pid}, 127.0.0.1:{etcd_port}")
    chunks = (args.instances + TXN_MAX_OPS - 1) // TXN_MAX_OPS

    def base_chunk(c: int) -> list[str]:
        return [put_op(*layout.key_value(k))
                for k in range(c * TXN_MAX_OPS, min((c + 1) * TXN_MAX_OPS, args.instances))]

    secs = parallel_txns(etcd_port, chunks, base_chunk, "load", 300 + args.instances / 200)
    etcd = Etcd(etcd_port)
    # max_rev: the last revision written under ruddr's prefix (ruddr's mirror revision follows
    # the events of its prefix, not writes elsewhere)
    max_rev = etcd.txn([put_op(f"{PREFIX}control/c{i}", value_json(a, 7000))
                        for i, a in enumerate(sorted(CONTROL_ADDRS))])
    etcd.close()
    rep.add(sec, "load time", f"{secs:.1f} s ({args.instances / secs:,.0f} instances/s, {chunks:,} txns)")

    # 2. cold start without a snapshot
    log("2. cold start, no snapshot file")
    sec = "2. cold start from etcd (no snapshot file)"
    a = Ruddr(binary, work, "cold", etcd_port, ports, None)
    t = a.wait_ready(expected_base, args.ready_timeout)
    rss_sync = proc_status(a.pid, "VmRSS")
    rep.add(sec, "cold start to answering every service",
            f"{t['full']:.2f} s (process start to /ready 200 with all {expected_base:,} instances; "
            f"admin up at {t['admin_up']:.2f} s, first 200 at {t['first_200']:.2f} s)")
    rep.add(sec, "/ready", f"{t['body']['services']:,} services, {t['body']['instances']:,} instances, "
                           f"revision {t['body']['revision']}")
    sample = rng.sample(range(layout.services), min(SAMPLE, layout.services))
    t0 = time.monotonic()
    good, bad = check_sample(a.dns_port, {f"svc{s}.{ZONE}": layout.base_addresses(s) for s in sample})
    rep.add(sec, "sample check (A records == the registered set)",
            f"{good}/{len(sample)} services correct ({time.monotonic() - t0:.2f} s)")
    if good != len(sample):
        rep.problem(f"cold start: {len(sample) - good} of {len(sample)} sampled services answered wrong: {bad}")
    time.sleep(2)
    rss_steady = proc_status(a.pid, "VmRSS")
    rep.add(sec, "RSS after sync", mib(rss_sync) + rss_per_instance(rss_sync, expected_base))
    rep.add(sec, "RSS steady (2 s later)", mib(rss_steady) + rss_per_instance(rss_steady, expected_base))
    rep.add(sec, "RSS peak so far (VmHWM)", mib(proc_status(a.pid, "VmHWM")))

    # 3. dnsperf over random services
    lines = min(max(2 * layout.services, 10_000), 1_000_000)
    qfile = work / "queries.txt"
    with open(qfile, "w") as f:
        for n in range(lines):
            s = rng.randrange(layout.services)
            if n % 2:
                f.write(f"_svc{s}._tcp.{ZONE.rstrip('.')} SRV\n")
            else:
                f.write(f"svc{s}.{ZONE.rstrip('.')} A\n")
    log(f"3. dnsperf, {args.duration:g} s, {lines:,} random service names")
    sec = (f"3. dnsperf, no churn ({lines:,} random service names, half A, half SRV, -c 10 -T 1, "
           f"{args.duration:g} s)")
    base = run_dnsperf(work, a.dns_port, qfile, args.duration, "baseline", a, etcd_proc.pid)
    dnsperf_rows(rep, sec, "no churn", base)
    rss_queried = proc_status(a.proc.pid, "VmRSS")
    rep.add(sec, "RSS after the queries", mib(rss_queried) + rss_per_instance(rss_queried, expected_base))
    code, took, killed = stop(a.proc)
    if code != 0 or killed:
        rep.problem(f"ruddr (cold) SIGTERM: exit {code}{' after SIGKILL' if killed else ''} in {took:.1f} s")

    # 4./5. churn with snapshots on
    log("4. churn, with a snapshot file")
    sec = "4. churn (1,000 updates/s: 10 per txn every 10 ms; snapshot file on)"
    b = Ruddr(binary, work, "churn", etcd_port, ports, snapshot)
    t = b.wait_ready(expected_base, args.ready_timeout)
    rep.add(sec, "start to ready (snapshot on, no file yet)", f"{t['full']:.2f} s")
    monitor = Monitor(b.pid, snapshot)
    monitor.start()
    model: dict[str, str] = {}  # extras under ruddr's prefix: "svc<i>/x<seq>" -> address
    probes: dict[str, str] = {}
    if args.skip_churn:
        rep.add(sec, "churn", "skipped (--skip-churn)")
    else:
        # Each writer drains its pool by 250 instances/s (new puts 250/s, deletes 500/s), so seed
        # enough extras that deletes always have an earlier instance to remove.
        seed_n = 1000 + int(250 * (args.duration + 15))
        seq = [0]
        other: dict[str, str] = {}
        for prefix, pool in ((OTHER_PREFIX, other), (PREFIX, model)):  # ruddr's last, see max_rev
            for _ in range(seed_n):
                seq[0] += 1
                pool[f"svc{rng.randrange(layout.services)}/x{seq[0]}"] = \
                    f"172.{16 + ((seq[0] >> 16) & 15)}.{(seq[0] >> 8) & 255}.{seq[0] & 255}"
            items = list(pool.items())

            def seed_chunk(c: int, items=items, prefix=prefix) -> list[str]:
                return [put_op(prefix + k, value_json(v, 9000)) for k, v in items[c * TXN_MAX_OPS:(c + 1) * TXN_MAX_OPS]]

            parallel_txns(etcd_port, (len(items) + TXN_MAX_OPS - 1) // TXN_MAX_OPS, seed_chunk, "seed", 300)
        etcd = Etcd(etcd_port)
        max_rev = etcd.revision()
        etcd.close()
        b.wait_revision(max_rev)
        rep.add(sec, "extras seeded before churn", f"{seed_n:,} under {PREFIX} and {seed_n:,} under {OTHER_PREFIX}")

        results = {}
        quiet: dict[str, tuple[float, int, float]] = {}  # label -> (ruddr CPU s, updates, seconds)
        hwm_before = proc_status(b.pid, "VmHWM")  # sync and seeding
        churn_peaks: list[int] = []
        for label, prefix, pool in (("control load (/other/services/)", OTHER_PREFIX, other),
                                    ("churn (/ruddr/services/)", PREFIX, model)):
            log(f"  run: {label}")
            reset = reset_peak_rss(b.pid)
            writer = Writer(etcd_port, prefix, layout.services, pool, seq, rng)
            checker = Checker(b.dns_port)
            probe = Probe(etcd_port, b.dns_port, len(probes)) if prefix == PREFIX else None
            rewrites_before = len(monitor.rewrites)
            try:
                writer.start()
                checker.start()
                if probe:
                    probe.start()
                time.sleep(1.0)
                if writer.error:
                    raise BenchError(f"writer: {writer.error}")
                perf = None
                if args.profile_churn:
                    which = "churn" if prefix == PREFIX else "control"
                    perf = subprocess.Popen(["perf", "record", "--call-graph", args.profile_call_graph,
                                             "-F", "999", "-o", f"{args.profile_churn}.{which}",
                                             "-p", str(b.pid)], stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL)
                t_dn0 = time.monotonic()
                try:
                    r = run_dnsperf(work, b.dns_port, qfile, args.duration,
                                    "churn" if prefix == PREFIX else "control", b, etcd_proc.pid)
                finally:
                    if perf:
                        perf.send_signal(signal.SIGINT)
                        perf.wait(timeout=60)
                # The same churn without the query load: propagation alone, and what the updates
                # cost ruddr (its CPU time with only the checker and the probe querying).
                t_dn1 = time.monotonic()
                u0, c0 = writer.updates, cpu_seconds(b.pid)
                time.sleep(QUIET_TAIL)
                quiet[label] = (cpu_seconds(b.pid) - c0, writer.updates - u0, time.monotonic() - t_dn1)
            finally:
                stop_threads(writer, checker, probe)
            hwm = proc_status(b.pid, "VmHWM")
            churn_peaks.append(hwm)
            results[label] = r
            dnsperf_rows(rep, sec, label, r)
            rep.add(sec, f"{label}: writer",
                    f"{writer.updates:,} updates in {writer.t_end - writer.t_start:.1f} s = {writer.rate:,.0f}/s "
                    f"({writer.puts_new:,} new, {writer.puts_changed:,} changed, {writer.deletes:,} deleted; "
                    f"{writer.late_batches} of {writer.txns} txns started late)")
            if writer.rate < 0.9 * CHURN_RATE:
                rep.add(sec, f"{label}: NOTE", f"the writer reached only {writer.rate:,.0f} of {CHURN_RATE} updates/s")
            c = checker.counts
            rep.add(sec, f"{label}: control name checks",
                    f"{checker.total:,} queries: {c['ok']:,} ok, {c['wrong']} wrong address set, "
                    f"{c['SERVFAIL']} SERVFAIL, {c['NXDOMAIN']} NXDOMAIN, {c['other']} other rcode, "
                    f"{c['timeout']} timeouts (0.5 s)" + (f"; e.g. {checker.examples}" if checker.examples else ""))
            if c["wrong"] or c["SERVFAIL"] or c["NXDOMAIN"] or c["other"]:
                rep.problem(f"{label}: the untouched control name got {checker.total - c['ok'] - c['timeout']} "
                            f"wrong answers: {checker.examples}")
            rtt = [x * 1000 for t0, x in checker.rtts if t_dn0 <= t0 < t_dn1]
            if rtt:
                rep.add(sec, f"{label}: control name query RTT under dnsperf", spread(rtt))
            if probe:
                probes.update(probe.added)
                max_rev = max(max_rev, probe.max_revision)
                for phase, lo, hi in (("under dnsperf", t_dn0, t_dn1),
                                      (f"churn only, no dnsperf ({QUIET_TAIL:g} s)", t_dn1, float("inf"))):
                    rs = [x for x in probe.results if lo <= x[0] < hi]
                    lat = [x[1] * 1000 for x in rs if x[1] is not None]
                    lost = sum(1 for x in rs if x[1] is None)
                    first = sum(1 for x in rs if x[1] is not None and x[2] == 1)
                    rep.add(sec, f"{label}: put-to-DNS latency, {phase}",
                            (spread(lat) + f", {len(lat)} probes" if lat else "no probe answered")
                            + f"; {first} answered on the first poll; {lost} not within {PROBE_TIMEOUT:g} s")
                    if lost:
                        rep.problem(f"{label}: {lost} probes ({phase}) not answered within {PROBE_TIMEOUT:g} s")
                if rtt:
                    rtt_q = [x * 1000 for t0, x in checker.rtts if t0 >= t_dn1]
                    if rtt_q:
                        rep.add(sec, f"{label}: control name query RTT, no dnsperf", spread(rtt_q))
            qc, qu, qs = quiet[label]
            rep.add(sec, f"{label}: ruddr CPU without dnsperf ({QUIET_TAIL:g} s)",
                    f"{qc / qs * 100:.0f}% of a core ({qu:,} updates applied by the writer meanwhile)")
            if prefix == PREFIX:
                max_rev = max(max_rev, writer.max_revision)
            writes = monitor.rewrites[rewrites_before:]
            rep.add(sec, f"{label}: snapshot rewrites during the run",
                    f"{len(writes)} in {writer.t_end - writer.t_start:.1f} s")
            rep.add(sec, f"{label}: RSS peak (VmHWM{'' if reset else ', since start'})", mib(hwm))

        ctl, ch = results["control load (/other/services/)"], results["churn (/ruddr/services/)"]

        def drop(what: str, x: float, y: float) -> str:
            if not x:
                return "n/a"
            d = (x - y) / x * 100
            return (f"{x:,.0f} -> {y:,.0f} {what}: " +
                    (f"{d:.1f}% drop" if d >= 0 else f"no drop ({-d:.1f}% higher under churn)"))

        rep.add(sec, "churn vs control load: QPS", drop("QPS", ctl["qps"], ch["qps"]))
        rep.add(sec, "churn vs control load: answers per ruddr CPU-s",
                drop("answers/CPU-s", ctl["per_cpu"], ch["per_cpu"]))
        (cc, _, cs), (hc, hu, hs) = quiet["control load (/other/services/)"], quiet["churn (/ruddr/services/)"]
        if hu:
            rep.add(sec, "ruddr CPU per update (churn minus control load, no dnsperf)",
                    f"{(hc / hs - cc / cs) * hs / hu * 1e6:,.0f} us")

    # the mirror must match etcd exactly once the writes are applied
    expected_final = expected_base + len(model) + len(probes)
    body = b.wait_revision(max_rev)
    snap_count = body.get("instances")
    if snap_count != expected_final:
        rep.problem(f"after churn ruddr holds {snap_count} instances, etcd has {expected_final}")
    # the snapshot must exist before the restart test (the final write comes with SIGTERM)
    deadline = time.monotonic() + 30
    while not snapshot.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if not snapshot.exists():
        raise BenchError("ruddr wrote no snapshot file in 30 s")
    sec5 = "5. snapshot file and memory (churn instance)"
    if not args.skip_churn:
        rep.add(sec5, "RSS peak during sync and seeding (VmHWM)", mib(hwm_before))
        rep.add(sec5, "RSS peak during the churn runs (VmHWM)", mib(max(churn_peaks)))
    rep.add(sec5, "RSS before shutdown", mib(proc_status(b.pid, "VmRSS")))
    if monitor.max_rss:
        rep.add(sec5, "RSS max sampled every 100 ms since ready", mib(monitor.max_rss))
    running_writes = len(monitor.rewrites)
    t_term = time.monotonic()
    code, took, killed = stop(b.proc, timeout=60)
    time.sleep(0.05)
    stop_threads(monitor)
    rep.add(sec5, "SIGTERM to exit (with the final snapshot write)", f"{took:.2f} s, exit {code}")
    if code != 0 or killed:
        rep.problem(f"ruddr (churn) SIGTERM: exit {code}{' after SIGKILL' if killed else ''} in {took:.1f} s")
    size = snapshot.stat().st_size
    rep.add(sec5, "snapshot file size",
            f"{mib(size)} ({size / max(1, snap_count):,.0f} B per instance, {snap_count:,} instances)")
    ws = monitor.rewrites[:running_writes]
    text = f"{len(ws)} in {t_term - monitor.t_start:.1f} s"
    if len(ws) >= 2:
        gaps = [y[0] - x[0] for x, y in zip(ws, ws[1:])]
        text += f"; interval median {statistics.median(gaps):.2f} s, min {min(gaps):.2f} s, max {max(gaps):.2f} s"
    text += f"; +{len(monitor.rewrites) - running_writes} at shutdown"
    rep.add(sec5, "snapshot rewrites from ready to SIGTERM", text)
    timed = [w[2] * 1000 for w in monitor.rewrites if w[2] is not None]
    if timed:
        rep.add(sec5, "snapshot write time (temp file seen -> renamed, 10 ms polling)",
                f"median {statistics.median(timed):.0f} ms, max {max(timed):.0f} ms "
                f"(seen for {len(timed)} of {len(monitor.rewrites)} writes; the others took < ~10 ms)")
    else:
        rep.add(sec5, "snapshot write time", "below the 10 ms polling resolution for every write")

    # 6. warm start from the snapshot with etcd frozen
    log("6. etcd frozen (SIGSTOP), ruddr from the snapshot")
    sec = "6. start from the snapshot, etcd frozen (SIGSTOP)"
    etcd_proc.send_signal(signal.SIGSTOP)
    c = Ruddr(binary, work, "warm", etcd_port, ports, snapshot)
    t = c.wait_ready(snap_count, args.ready_timeout, from_snapshot=True)
    rep.add(sec, "start to answering from the snapshot",
            f"{t['full']:.2f} s (process start to /ready 200, from_snapshot, all {snap_count:,} instances)")
    rep.add(sec, "/ready", f"reason {t['body'].get('reason')!r}, revision {t['body'].get('revision')}, "
                           f"stale {t['body'].get('stale_seconds')} s")
    want: dict[str, set[str]] = {}
    extras: dict[int, set[str]] = {}
    for k, addr in model.items():
        extras.setdefault(int(k.split("/")[0][3:]), set()).add(addr)
    for s in rng.sample(range(layout.services), min(SAMPLE, layout.services)):
        want[f"svc{s}.{ZONE}"] = layout.base_addresses(s) | extras.get(s, set())
    for s in list(extras)[:20]:  # services the churn changed
        want[f"svc{s}.{ZONE}"] = layout.base_addresses(s) | extras[s]
    for name in list(probes)[:20]:
        want[f"{name}.{ZONE}"] = {probes[name]}
    want["control." + ZONE] = set(CONTROL_ADDRS)
    good, bad = check_sample(c.dns_port, want)
    rep.add(sec, "sample check (A records == etcd's last state)", f"{good}/{len(want)} names correct")
    if good != len(want):
        rep.problem(f"from the snapshot: {len(want) - good} of {len(want)} names answered wrong: {bad}")
    rss = proc_status(c.pid, "VmRSS")
    rep.add(sec, "RSS after load", mib(rss) + rss_per_instance(rss, snap_count))
    code, took, killed = stop(c.proc)
    rep.add(sec, "SIGTERM to exit (etcd still frozen)", f"{took:.2f} s, exit {code}{' (SIGKILL)' if killed else ''}")
    if code != 0 or killed:
        rep.problem(f"ruddr (warm) SIGTERM with etcd frozen: exit {code}{' after SIGKILL' if killed else ''}")
    stop(etcd_proc, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
