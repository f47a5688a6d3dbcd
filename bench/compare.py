#!/usr/bin/env python3
"""ruddr against knotd and nsd (and optionally hickory-dns or another ruddr build) on the same data,
in the same run, interleaved.

    bench/compare.py [--ruddr new=target/release/ruddr] [--ruddr old=/path/to/other/ruddr]
                     [--servers knot,nsd] [--hickory PATH] [--rounds 3] [--duration 10]
                     [--setups shared,pinned] [--mixes plain,nx10] [--latency] [--dnstap]

Data: 1,000 services x 3 instances (--services/--instances), in etcd for ruddr and as a zone file
for the others. Queries: half `svcN A`, half `_http._tcp.svcN SRV` (answered with the targets'
addresses in the additional section); the `nx10` mix turns one query in ten into a name that does
not exist. Setups: `shared` (servers and dnsperf share both cores) and `pinned` (the server on
core 0, dnsperf on core 1, with taskset).

Every server runs for the whole benchmark; each round runs dnsperf (`-c 10 -T 1`, UDP) against
each server in turn, reading the server's CPU time (utime + stime of the process and its
children, from /proc) before and after. Per setup and mix it prints the median and spread over
rounds of QPS, lost queries, server CPU seconds and answers per server CPU-second, with the ratios
to knotd (QPS/knotd, and a/cpu/knotd for answers per CPU-second). dnsperf tops out near 140-180k QPS on two cores, so answers per CPU-second is the figure
that separates fast servers.

--cases chooses what each ruddr build serves the data as (comma list): `registry` (from etcd,
the default), `static` (the same records as a zone file in its zones directory, the discovery
zone moved elsewhere) and `forward` (forwarded to knotd and answered from ruddr's forward cache:
the zone's TTLs outlast the run, so after the first pass every answer is a cache hit) and
`skydns` (the same instances written in the SkyDNS layout, `/skydns/internal/svc/svcN/iJ`, and
served as the SkyDNS zone `svc.internal`: its queries are `svcN A` and `svcN SRV`, the same
answers as the others' `svcN A` and `_http._tcp.svcN SRV`). Each is a server of its own in the
same interleaved rounds, labelled `<label>`, `<label>-static`, `<label>-fwd` and `<label>-sky`;
the forward case needs knot among the reference servers.

--latency also runs dnsperf at a fixed 5,000 QPS (`-Q 5000 -v`, pinned) once per server per
round, interleaved, and reports the medians (and spread) of the p50/p99 of the per-query latencies
it prints, with each p99's distance from knotd's.

--dnstap measures what dnstap costs, in the same interleaved rounds: each ruddr server `X` gets a
twin `X-tap` (the same binary, data and flags, its config extended by `[dnstap] socket = ...`, and
an admin listener for its metrics), and knotd a twin `knotd-tap` (mod-dnstap, global-module, to a
Unix socket). Both log every query and every response (two messages per answer). Each tap socket
is read by its own `fstrm_capture -t protobuf:dnstap.Dnstap -u SOCK -w /dev/null` (pinned to the
dnsperf core in the pinned setup), started before its server and stopped after it; its CPU is not
in the server's (printed per round on its own). With --dnstap, CPU is read once the server's CPU
time stops growing after dnsperf (up to 2 s), so a tap still draining its queue is charged. After
each table it prints, per pair, answers per CPU-second and QPS of the tap twin as a ratio of its
twin's without dnstap, and for ruddr the messages sent and dropped (ruddr_dnstap_sent_total and
ruddr_dnstap_dropped_total by reason, from /metrics: a tap that drops is cheaper than one that
sends). At the end, per tap server over the whole run: what ruddr sent and dropped and how many
messages fstrm_capture received, per answer (knotd does not count its drops; 2.00 per answer
means none). Needs fstrm-bin and knot-module-dnstap.

Needs etcd, dnsperf, knot and nsd (Debian packages; WITH_BENCH=1 scripts/deps.sh installs them).
Loopback only; everything lives in a temp dir.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from load_etcd import ip_of, load as load_etcd, put_all  # noqa: E402
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
        try:
            with socket.socket() as t:
                t.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` and every live descendant (nsd serves from forked children), plus
    what reaped children used."""
    stats = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # fields[0] is field 3 (state); ppid is field 4, utime 14, stime 15, cutime 16, cstime 17.
            stats[int(d.name)] = (int(fields[1]), sum(int(f) for f in fields[11:15]))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        if p in stats:
            total += stats[p][1]
        todo.extend(c for c, (ppid, _) in stats.items() if ppid == p)
    return total / TICK


def process_tree(pid: int) -> list[int]:
    """`pid` and its live descendants."""
    parents = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(c for c, pp in parents.items() if pp == p)
    return tree


class EventCount:
    """`perf stat` of a server's processes while dnsperf runs: system calls and context
    switches (software events, so they count on virtual machines without hardware counters).
    Per answer they show how well a server batches, which CPU time alone does not."""

    EVENTS = ("raw_syscalls:sys_enter", "context-switches")

    def __init__(self, pid: int, work: Path):
        self.out = work / "perf-stat.csv"
        self.proc = subprocess.Popen(
            ["perf", "stat", "-x", ",", "-o", str(self.out), "-e", ",".join(self.EVENTS),
             "-p", ",".join(map(str, process_tree(pid)))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.2)

    def stop(self) -> tuple[float, float]:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait()
        counts = {}
        for line in self.out.read_text().splitlines():
            f = line.split(",")
            if len(f) > 2 and f[0].isdigit():
                counts[f[2]] = float(f[0])
        return tuple(counts.get(e, 0.0) for e in self.EVENTS)


def start_etcd(work: Path) -> tuple[subprocess.Popen, str]:
    """A one-member etcd on free loopback ports with its data in `work`, once healthy."""
    cport, pport = free_port(), free_port()
    etcd = subprocess.Popen(
        ["etcd", "--name", "b", "--data-dir", str(work / "etcd"),
         "--listen-client-urls", f"http://127.0.0.1:{cport}", "--advertise-client-urls", f"http://127.0.0.1:{cport}",
         "--listen-peer-urls", f"http://127.0.0.1:{pport}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{pport}",
         "--initial-cluster", f"b=http://127.0.0.1:{pport}", "--initial-cluster-state", "new"],
        stdout=open(work / "etcd.log", "w"), stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{cport}"
    for _ in range(100):
        try:
            urllib.request.urlopen(endpoint + "/health", timeout=1).read()
            break
        except OSError:
            time.sleep(0.1)
    return etcd, endpoint


def load_skydns(endpoint: str, services: int, instances: int) -> None:
    """The same instances in the SkyDNS layout: /skydns/internal/svc/svc<i>/i<j>."""
    put_all(endpoint, [(f"/skydns/internal/svc/svc{i}/i{j}",
                        json.dumps({"host": ip_of(i, j), "port": 8080 + j, "ttl": 86400}))
                       for i in range(services) for j in range(instances)])


def tear_down(servers: list["Server"], etcd: subprocess.Popen | None, work: Path) -> None:
    """Stops every server and etcd, and removes the work directory."""
    for s in servers:
        s.stop()
    if etcd:
        etcd.terminate()
        etcd.wait()
    shutil.rmtree(work, ignore_errors=True)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group of `proc`, SIGKILL after 10 s; waits for it."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def zone_text(services: int, instances: int) -> str:
    # TTLs longer than any run: the forward case answers from ruddr's cache throughout.
    lines = ["$ORIGIN svc.internal.", "$TTL 86400",
             "@ IN SOA ns.dns hostmaster 1 3600 600 86400 86400", "@ IN NS ns.dns", "ns.dns IN A 127.0.0.1"]
    for i in range(services):
        for j in range(instances):
            ip = ip_of(i, j)
            lines.append(f"svc{i} IN A {ip}")
            lines.append(f"_http._tcp.svc{i} IN SRV 0 1 {8080 + j} i{j}.svc{i}")
            lines.append(f"i{j}.svc{i} IN A {ip}")
    return "\n".join(lines) + "\n"


def queries(services: int, nx_every: int, srv: str = "_http._tcp.{}") -> str:
    out = []
    n = 0
    for i in range(services):
        for q in (f"svc{i}.svc.internal A", f"{srv.format(f'svc{i}')}.svc.internal SRV"):
            n += 1
            out.append(f"nx{n}.svc.internal A" if nx_every and n % nx_every == 0 else q)
    return "\n".join(out) + "\n"


class Collector:
    """`fstrm_capture` reading one tap server's dnstap socket and writing it to /dev/null."""

    def __init__(self, sock: Path, log: Path, cpu: str | None):
        sock.unlink(missing_ok=True)
        self.log = log
        argv = ["fstrm_capture", "-t", "protobuf:dnstap.Dnstap", "-u", str(sock), "-w", "/dev/null"]
        if cpu:
            argv = ["taskset", "-c", cpu, *argv]
        self.proc = subprocess.Popen(argv, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.time() + 10
        while not sock.exists():
            if self.proc.poll() is not None or time.time() > deadline:
                sys.exit(f"fstrm_capture did not listen on {sock}: see {log}")
            time.sleep(0.05)

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> int | None:
        """Stops it (SIGTERM: it closes its output and says how many frames it wrote); the data
        frames, i.e. dnstap messages, it received, or None if it did not say."""
        stop_group(self.proc)
        # Every output file starts with a START and ends with a STOP control frame.
        counts = re.findall(r"wrote (\d+) frames", self.log.read_text(errors="replace"))
        return sum(int(n) - 2 for n in counts) if counts else None


# Per tap server label, summed over its lifetimes (servers restart per setup): answers dnsperf got,
# ruddr's dnstap counters when it stopped, and the messages its fstrm_capture received.
TAP_TOTALS: dict[str, dict[str, float]] = {}


class Server:
    def __init__(self, label: str, argv: list[str], port: int, work: Path, env=None, queries: str = "",
                 collector: Collector | None = None, admin: int | None = None):
        self.label, self.port = label, port
        # Which query files this server gets: "" the common ones, "sky" the SkyDNS names.
        self.queries = queries
        # A dnstap twin: its fstrm_capture, and for ruddr the admin port its metrics are on.
        self.collector, self.admin = collector, admin
        self.answers = 0.0
        self.stopped = False
        log = open(work / f"{label}.log", "w")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)

    def tap_metrics(self) -> dict[str, float] | None:
        """ruddr's dnstap counters from its /metrics, if it is a ruddr tap."""
        if not self.admin:
            return None
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics", timeout=5).read().decode()
        except OSError:
            return None

        def val(name: str) -> float:
            m = re.search(r"^" + re.escape(name) + r"\s+([0-9.eE+-]+)", text, re.M)
            return float(m.group(1)) if m else 0.0
        return {"sent": val("ruddr_dnstap_sent_total"),
                "queue_full": val('ruddr_dnstap_dropped_total{reason="queue_full"}'),
                "disconnected": val('ruddr_dnstap_dropped_total{reason="disconnected"}'),
                "connected": val("ruddr_dnstap_connected")}

    def wait_tap(self) -> None:
        """Until a ruddr tap is connected to its collector (knotd connects as it starts)."""
        if not self.admin:
            return
        deadline = time.time() + 30
        while time.time() < deadline:
            m = self.tap_metrics()
            if m and m["connected"] >= 1:
                return
            time.sleep(0.2)
        sys.exit(f"{self.label} never connected to its dnstap collector: see its log")

    def settle(self, limit: float = 2.0) -> None:
        """Waits (up to `limit` s) until the server's CPU time stops growing: a dnstap writer may
        still be sending what it queued when dnsperf stopped, and that belongs to this run."""
        deadline = time.time() + limit
        last = self.cpu()
        while time.time() < deadline:
            time.sleep(0.1)
            now = self.cpu()
            if now - last < 1.5 / TICK:
                return
            last = now

    def wait_answer(self, name: str, want: int) -> None:
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"{self.label} exited: see its log")
            out = subprocess.run(["dig", "@127.0.0.1", "-p", str(self.port), "+short", "+time=1",
                                  "+tries=1", name, "A"], capture_output=True, text=True).stdout
            if len(out.split()) == want:
                return
            time.sleep(0.2)
        sys.exit(f"{self.label} never answered {name}")

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        totals = None
        if self.collector:
            totals = TAP_TOTALS.setdefault(self.label, {})
            totals["answers"] = totals.get("answers", 0.0) + self.answers
            m = self.tap_metrics()
            if m:
                for k in ("sent", "queue_full", "disconnected"):
                    totals[k] = totals.get(k, 0.0) + m[k]
        stop_group(self.proc)
        if self.collector:
            frames = self.collector.stop()
            if frames is None:
                totals["unknown"] = 1.0
            else:
                totals["received"] = totals.get("received", 0.0) + frames


def dnsperf(port: int, qfile: Path, duration: int, client_cpu: str | None, extra=()) -> str:
    argv = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(qfile), "-l", str(duration),
            "-c", "10", "-T", "1", "-q", "200", *extra]
    if client_cpu:
        argv = ["taskset", "-c", client_cpu, *argv]
    return subprocess.run(argv, capture_output=True, text=True).stdout


def parse(out: str) -> dict:
    def num(pattern: str) -> float:
        m = re.search(pattern, out)
        return float(m.group(1)) if m else 0.0
    return {
        "qps": num(r"Queries per second:\s+([\d.]+)"),
        "completed": num(r"Queries completed:\s+(\d+)"),
        "lost": num(r"Queries lost:\s+(\d+)"),
    }


def spread(values: list[float], digits: int = 0) -> str:
    return f"{min(values):,.{digits}f}-{max(values):,.{digits}f}"


def start_servers(args, ruddrs, refs, work: Path, zones: Path, endpoint: str, cpus: str | None) -> list[Server]:
    """Every server of the run, under `taskset -c cpus` from the start when given (so each sizes
    its workers by the CPUs it may use)."""
    servers: list[Server] = []
    pre = ["taskset", "-c", cpus] if cpus else []
    cases = [c for c in args.cases.split(",") if c]
    # fstrm_capture runs where dnsperf does when the server is pinned, so the server's core is its own.
    pinned = {int(c) for c in cpus.split(",")} if cpus else set()
    collector_cpu = (",".join(str(c) for c in sorted(os.sched_getaffinity(0) - pinned)) or None) if cpus else None

    def ruddr(label: str, path: str, extra: list[str], config: str = "", queries: str = "") -> list[Server]:
        """The ruddr server `label`, and with --dnstap its twin `label-tap`."""
        out = []
        for tap in [False, True] if args.dnstap else [False]:
            name = f"{label}-tap" if tap else label
            port = free_port()
            text, collector, admin = config, None, None
            if tap:
                sock = work / f"{name}.sock"
                text += f'\n[dnstap]\nsocket = "{sock}"\n'
                collector = Collector(sock, work / f"{name}.fstrm.log", collector_cpu)
                admin = free_port()
            conf = []
            if text:
                (work / f"{name}.toml").write_text(text)
                conf = ["--config", str(work / f"{name}.toml")]
            argv = [path, "-q", "serve", *conf, "--listen", f"127.0.0.1:{port}", "--etcd-endpoints", endpoint,
                    "--admin-listen", f"127.0.0.1:{admin}" if admin else "", *extra, *args.ruddr_args.split()]
            out.append(Server(name, pre + argv, port, work, queries=queries, collector=collector, admin=admin))
        return out

    for label, path in ruddrs:
        if "registry" in cases:
            servers += ruddr(label, path, ["--zones-dir", str(work / "no-zones")])
        if "static" in cases:
            # The registry moves to another zone; svc.internal comes from the zone file.
            servers += ruddr(f"{label}-static", path, ["--zone", "registry.internal", "--zones-dir", str(zones)])
        if "skydns" in cases:
            servers += ruddr(f"{label}-sky", path, ["--zone", "registry.internal", "--zones-dir", str(work / "no-zones")],
                             config='[[sources]]\nformat = "skydns"\nprefix = "/skydns/"\nzones = ["svc.internal."]\n',
                             queries="sky")
    if "knot" in refs:
        # knotd sizes its workers by the CPUs online, not those it may use: give it one per CPU
        # it is pinned to, as ruddr and nsd have.
        workers = len(cpus.split(",")) if cpus else os.cpu_count()
        for name in ["knotd", "knotd-tap"] if args.dnstap else ["knotd"]:
            port = free_port()
            run = work / name
            run.mkdir(exist_ok=True)
            tap, collector = "", None
            if name.endswith("-tap"):
                # mod-dnstap (knot-module-dnstap, loaded from knot's module directory) on every
                # query; it logs queries and responses by default.
                sock = work / f"{name}.sock"
                collector = Collector(sock, work / f"{name}.fstrm.log", collector_cpu)
                tap = f"""mod-dnstap:
  - id: tap
    sink: "unix:{sock}"
    log-queries: on
    log-responses: on
template:
  - id: default
    global-module: mod-dnstap/tap
"""
            (work / f"{name}.conf").write_text(f"""server:
    listen: 127.0.0.1@{port}
    rundir: {run}
    udp-workers: {workers}
    tcp-workers: 1
    background-workers: 1
database:
    storage: {run}
{tap}zone:
  - domain: svc.internal
    file: {zones / 'svc.internal.zone'}
log:
  - target: stderr
    any: error
""")
            servers.append(Server(name, pre + ["knotd", "-c", str(work / f"{name}.conf")], port, work,
                                  collector=collector))
    if "nsd" in refs:
        port = free_port()
        (work / "nsd").mkdir(exist_ok=True)
        (work / "nsd.conf").write_text(f"""server:
    ip-address: 127.0.0.1@{port}
    port: {port}
    zonesdir: "{zones}"
    pidfile: "{work / 'nsd' / 'nsd.pid'}"
    database: ""
    zonelistfile: "{work / 'nsd' / 'zone.list'}"
    xfrdfile: "{work / 'nsd' / 'xfrd.state'}"
    xfrdir: "{work / 'nsd'}"
    username: ""
    chroot: ""
    rrl-ratelimit: 0
    verbosity: 0
remote-control:
    control-enable: no
zone:
    name: svc.internal
    zonefile: svc.internal.zone
""")
        servers.append(Server("nsd", pre + ["nsd", "-d", "-c", str(work / "nsd.conf")], port, work))
    if args.hickory:
        port = free_port()
        (work / "hickory.toml").write_text(f"""listen_addrs_ipv4 = ["127.0.0.1"]
listen_port = {port}
user = "{os.environ.get('USER', 'root')}"
group = "{os.environ.get('USER', 'root')}"
[[zones]]
zone = "svc.internal"
zone_type = "Primary"
file = "svc.internal.zone"
""")
        servers.append(Server("hickory-dns", pre + [args.hickory, "-q", "-c", str(work / "hickory.toml"),
                                                    "-z", str(zones)], port, work))
    if "forward" in cases:
        knot = next((s for s in servers if s.label == "knotd"), None)
        if knot is None:
            sys.exit("--cases forward needs knot in --servers (the upstream)")
        for label, path in ruddrs:
            servers += ruddr(f"{label}-fwd", path, ["--zone", "registry.internal", "--zones-dir", str(work / "no-zones"),
                                                    "--upstream", f"127.0.0.1:{knot.port}"])
    return servers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ruddr", action="append", default=[], metavar="LABEL=PATH")
    ap.add_argument("--servers", default="knot,nsd", help="reference servers: knot, nsd (comma list, may be empty)")
    ap.add_argument("--hickory", help="path of a hickory-dns binary to include")
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--instances", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--setups", default="shared,pinned")
    ap.add_argument("--mixes", default="plain,nx10")
    ap.add_argument("--latency", action="store_true")
    ap.add_argument("--profile", metavar="LABEL", help="also record `perf record -g` of this server "
                    "under the first mix (pinned) and print the top of `perf report`")
    ap.add_argument("--events", action="store_true", help="also count the servers' system calls and "
                    "context switches per answer (perf stat)")
    ap.add_argument("--profile-call-graph", default="fp", help="perf record --call-graph mode (fp, dwarf)")
    ap.add_argument("--profile-data", metavar="PATH", help="keep the perf.data of --profile here")
    ap.add_argument("--profile-sort", default="symbol", help="perf report --sort keys (symbol, dso, ...)")
    ap.add_argument("--profile-limit", type=float, default=1.5, help="smallest share of samples shown, %%")
    ap.add_argument("--ruddr-args", default="", help="extra arguments for every ruddr")
    ap.add_argument("--cases", default="registry", help="what each ruddr serves: registry, static, forward "
                    "(comma list)")
    ap.add_argument("--dnstap", action="store_true", help="also run each ruddr server and knotd with dnstap "
                    "to fstrm_capture (`<label>-tap`, `knotd-tap`) and print what it costs")
    args = ap.parse_args()
    ruddrs = [r.split("=", 1) for r in (args.ruddr or [f"ruddr={ROOT / 'target/release/ruddr'}"])]
    refs = [s for s in args.servers.split(",") if s]

    work = Path(tempfile.mkdtemp(prefix="ruddr-compare-"))
    servers: list[Server] = []
    etcd = None
    try:
        etcd, endpoint = start_etcd(work)
        load_etcd(endpoint, args.services, args.instances)
        if "skydns" in args.cases.split(","):
            load_skydns(endpoint, args.services, args.instances)
        zones = work / "zones"
        zones.mkdir()
        (zones / "svc.internal.zone").write_text(zone_text(args.services, args.instances))
        last = f"svc{args.services - 1}.svc.internal"

        qfiles, sky_qfiles = {}, {}
        for mix in args.mixes.split(","):
            qf = work / f"queries-{mix}.txt"
            qf.write_text(queries(args.services, 10 if mix == "nx10" else 0))
            qfiles[mix] = qf
            qf = work / f"queries-sky-{mix}.txt"
            qf.write_text(queries(args.services, 10 if mix == "nx10" else 0, srv="{}"))
            sky_qfiles[mix] = qf

        results: dict[tuple, dict[str, list[dict]]] = {}
        for setup in args.setups.split(","):
            pinned = setup == "pinned"
            for srv in servers:
                srv.stop()
            servers[:] = start_servers(args, ruddrs, refs, work, zones, endpoint, "0" if pinned else None)
            for srv in servers:
                srv.wait_answer(last, args.instances)
                srv.wait_tap()
            for mix, qf in qfiles.items():
                runs: dict[str, list[dict]] = {s.label: [] for s in servers}
                for rnd in range(args.rounds):
                    order = servers if rnd % 2 == 0 else list(reversed(servers))
                    for s in order:
                        tap0 = s.tap_metrics()
                        count = EventCount(s.proc.pid, work) if args.events else None
                        cap0 = s.collector.cpu() if s.collector else 0.0
                        before = s.cpu()
                        sqf = sky_qfiles[mix] if s.queries == "sky" else qf
                        r = parse(dnsperf(s.port, sqf, args.duration, "1" if pinned else None))
                        if args.dnstap:
                            s.settle()
                        r["cpu"] = s.cpu() - before
                        r["per_cpu"] = r["completed"] / r["cpu"] if r["cpu"] > 0 else 0.0
                        s.answers += r["completed"]
                        extra = ""
                        if s.collector:
                            r["cap_cpu"] = s.collector.cpu() - cap0
                            extra += f", fstrm_capture cpu {r['cap_cpu']:.2f}s (not counted)"
                        tap1 = s.tap_metrics()
                        if tap0 and tap1:
                            for k in ("sent", "queue_full", "disconnected"):
                                r[f"tap_{k}"] = tap1[k] - tap0[k]
                            extra += (f", dnstap sent {r['tap_sent']:,.0f} dropped "
                                      f"{r['tap_queue_full'] + r['tap_disconnected']:,.0f}")
                        if count:
                            calls, switches = count.stop()
                            n = max(r["completed"], 1)
                            r["syscalls"], r["switches"] = calls / n, switches / n
                            extra += f", per answer {r['syscalls']:.2f} syscalls, {r['switches']:.3f} switches"
                        runs[s.label].append(r)
                        print(f"  {setup}/{mix} round {rnd + 1} {s.label}: {r['qps']:,.0f} QPS, lost {r['lost']:.0f}, "
                              f"cpu {r['cpu']:.2f}s, {r['per_cpu']:,.0f}/cpu-s{extra}", file=sys.stderr, flush=True)
                results[(setup, mix)] = runs

        latency = {}
        if (args.latency or args.profile) and args.setups.split(",")[-1] != "pinned":
            for srv in servers:
                srv.stop()
            servers[:] = start_servers(args, ruddrs, refs, work, zones, endpoint, "0")
            for srv in servers:
                srv.wait_answer(last, args.instances)
                srv.wait_tap()
        if args.latency:
            # One run per server per round, interleaved like the throughput runs.
            qf = next(iter(qfiles.values()))
            for rnd in range(args.rounds):
                order = servers if rnd % 2 == 0 else list(reversed(servers))
                for s in order:
                    out = dnsperf(s.port, qf, args.duration, "1", ["-Q", "5000", "-v"])
                    s.answers += parse(out)["completed"]
                    lat = sorted(float(m.group(1)) for m in re.finditer(r"\b(0\.\d{6})\s*$", out, re.M))
                    if lat:
                        p50, p99 = lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000
                        latency.setdefault(s.label, []).append((p50, p99, len(lat)))
                        print(f"  latency round {rnd + 1} {s.label}: p50 {p50:.3f} ms, p99 {p99:.3f} ms",
                              file=sys.stderr, flush=True)

        if args.profile:
            target = next(s for s in servers if s.label == args.profile)
            data = work / "perf.data"
            perf = subprocess.Popen(["perf", "record", "--call-graph", args.profile_call_graph, "-o", str(data), "-p", str(target.proc.pid)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            target.answers += parse(dnsperf(target.port, next(iter(qfiles.values())), args.duration, "1"))["completed"]
            perf.send_signal(signal.SIGINT)
            perf.wait()
            report = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--percent-limit", str(args.profile_limit),
                                     "--stdio", "-g", "none", "--sort", args.profile_sort],
                                    capture_output=True, text=True).stdout
            if args.profile_data:
                shutil.copy(data, args.profile_data)
            print(f"\n[profile of {args.profile}, pinned, self time >= {args.profile_limit} %]")
            print("\n".join(l for l in report.splitlines() if l.strip() and not l.startswith("#")))

        # Stop the servers now: a tap's totals (its metrics, what its fstrm_capture received) come as it stops.
        for srv in servers:
            srv.stop()

        width = max([14] + [len(s.label) + 2 for s in servers])
        print()
        print(f"data: {args.services} services x {args.instances} instances; queries 50% A, 50% SRV with glue; "
              f"dnsperf -c 10 -T 1 UDP, {args.rounds} rounds x {args.duration} s, interleaved; medians (spread)")
        if args.dnstap:
            print("dnstap: each -tap server sends every query and response (2 messages per answer) to its own "
                  "fstrm_capture writing to /dev/null; fstrm_capture's CPU is not counted in the server's cpu s")
        for (setup, mix), runs in results.items():
            print(f"\n[{setup}, {mix}]")
            print(f"  {'server':<{width}}{'QPS':>10} {'(spread)':>17}{'lost':>8}{'cpu s':>8}{'ans/cpu-s':>11} {'(spread)':>17}"
                  f"{'QPS/knotd':>10}{'a/cpu/knotd':>12}" + (f"{'calls/ans':>10}{'cs/ans':>10}" if args.events else ""))
            med = {k: (statistics.median(r["qps"] for r in v), statistics.median(r["per_cpu"] for r in v))
                   for k, v in runs.items()}
            ref = med.get("knotd")
            for label, v in runs.items():
                qps, per = med[label]
                lost = statistics.median(r["lost"] for r in v)
                cpu = statistics.median(r["cpu"] for r in v)
                ratio = (f"{qps / ref[0]:>10.2f}{per / ref[1]:>12.2f}") if ref and ref[0] and ref[1] else ""
                events = ""
                if args.events:
                    events = (f"{statistics.median(r['syscalls'] for r in v):>10.2f}"
                              f"{statistics.median(r['switches'] for r in v):>10.3f}")
                print(f"  {label:<{width}}{qps:>10,.0f} {spread([r['qps'] for r in v]):>17}{lost:>8.0f}{cpu:>8.2f}"
                      f"{per:>11,.0f} {spread([r['per_cpu'] for r in v]):>17}{ratio}{events}")
            for label, v in runs.items():
                base = label[:-len("-tap")]
                if not label.endswith("-tap") or base not in med:
                    continue
                (qps, per), (qps0, per0) = med[label], med[base]
                if not (qps0 and per0):
                    continue
                cap = statistics.median(r.get("cap_cpu", 0.0) for r in v)
                print(f"  {base} dnstap cost: answers per CPU-s {per / per0:.2f}x of without ({per / per0 - 1:+.0%}), "
                      f"QPS {qps / qps0:.2f}x ({qps / qps0 - 1:+.0%}); fstrm_capture {cap:.2f} cpu-s per round, not counted")
                if all("tap_sent" in r for r in v):
                    answers = sum(r["completed"] for r in v)
                    sent = sum(r["tap_sent"] for r in v)
                    full = sum(r["tap_queue_full"] for r in v)
                    away = sum(r["tap_disconnected"] for r in v)
                    print(f"    {label} over these rounds: sent {sent:,.0f} messages ({sent / max(answers, 1):.2f} per answer), "
                          f"dropped {full + away:,.0f} ({(full + away) / max(sent + full + away, 1):.1%}: "
                          f"queue full {full:,.0f}, disconnected {away:,.0f})")
        if latency:
            print("\n[pinned, fixed 5,000 QPS] latency per query, ms: medians over rounds (spread)")
            ref = latency.get("knotd")
            ref99 = statistics.median(r[1] for r in ref) if ref else None
            for label, rs in latency.items():
                p50 = statistics.median(r[0] for r in rs)
                p99 = statistics.median(r[1] for r in rs)
                n = sum(r[2] for r in rs)
                versus = f"  p99 - knotd's {p99 - ref99:+.3f}" if ref99 is not None else ""
                print(f"  {label:<{width}} p50 {p50:.3f} ({spread([r[0] for r in rs], 3)})"
                      f"  p99 {p99:.3f} ({spread([r[1] for r in rs], 3)}){versus}  ({n} queries)")
        if TAP_TOTALS:
            print("\n[dnstap over the whole run: every setup, mix and latency run; answers as dnsperf counted them]")
            for label, t in TAP_TOTALS.items():
                answers = max(t.get("answers", 0.0), 1.0)
                line = f"  {label:<{width}}{t.get('answers', 0.0):,.0f} answers"
                if "sent" in t:
                    dropped = t["queue_full"] + t["disconnected"]
                    line += (f"; sent {t['sent']:,.0f} ({t['sent'] / answers:.2f} per answer), dropped {dropped:,.0f} "
                             f"(queue full {t['queue_full']:,.0f}, disconnected {t['disconnected']:,.0f})")
                elif label.startswith("knotd"):
                    line += "; knotd does not count what it drops"
                if "unknown" in t:
                    line += "; fstrm_capture did not say what it received"
                elif "received" in t:
                    line += f"; fstrm_capture received {t['received']:,.0f} ({t['received'] / answers:.2f} per answer)"
                print(line)
            print("  (2.00 messages per answer: nothing dropped; the readiness queries add a few)")
    finally:
        tear_down(servers, etcd, work)


if __name__ == "__main__":
    main()
