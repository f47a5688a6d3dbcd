#!/usr/bin/env python3
"""ruddr's DNS over TLS and DNS over HTTPS against its own plain TCP, and against dnsdist (DoT and
DoH frontends) in front of knotd, on the same data, in the same run, interleaved.

    bench/encrypted.py [--ruddr target/release/ruddr] [--rounds 5] [--duration 8]
                       [--setups shared,pinned] [--doh-client h2load,dnsperf] [--doh-method GET[,POST]]
                       [--services 1000] [--instances 3] [--dnsdist dnsdist] [--dnsdist-cache]

Data: 1,000 services x 3 instances (--services/--instances), in etcd for ruddr and as a zone file
for knotd. Queries: half `svcN A`, half `_http._tcp.svcN SRV` (with the targets' addresses in the
additional section), as bench/compare.py. A throwaway CA and a server certificate (ECDSA P-256,
SAN IP:127.0.0.1 and DNS:localhost) are made with openssl in the temp dir.

Servers, all on loopback, all running for the whole setup:
- ruddr: one process with a plain listener (TCP), `tls_listen` (DoT) and `https_listen` (DoH,
  /dns-query), from etcd.
- knotd: the same records as a zone file, one UDP and one TCP worker per CPU it may use.
- dnsdist in front of knotd: `addTLSLocal` (DoT) and `addDOHLocal` (DoH, /dns-query) with the same
  certificate and key, backend `newServer` = knotd. dnsdist sends what comes over DoT to knotd
  over TCP and what comes over DoH over UDP (its design in 1.7). The DoT frontend and the backend
  take up to 32 queries in flight per connection (`maxInFlight`, as ruddr's default
  tcp_max_pipelined; without it dnsdist reads one query per client connection at a time); DoH
  gets one frontend (h2o thread) per CPU the servers may use (`reusePort`), as dnsdist's tuning
  guide advises. No packet cache unless --dnsdist-cache. The config is printed at start.
  DoH is left out (and said so) when `dnsdist --version` does not list dns-over-https.

Modes, each one client run per round (10 connections, reused for the whole run), in an order
reversed every other round: ruddr-tcp, ruddr-dot, ruddr-doh, dnsdist-dot, dnsdist-doh, and
knotd-tcp (knotd alone over plain TCP, for context).
- TCP and DoT: dnsperf `-c 10 -T 1 -q 200` (as compare.py; about 20 queries in flight per
  connection).
- DoH: h2load (nghttp2-client) `-c 10 -t 1 -m 20`, the same 200 in flight as 20 HTTP/2 streams on
  each of 10 connections, GET with the same queries as dnsperf's (`?dns=`, id 0, RD, no EDNS),
  TLS 1.3 with TLS_AES_256_GCM_SHA384 (the suite dnsperf's OpenSSL gets from both servers; h2load
  would offer AES-128 first). POST (--doh-method POST) posts one query (`svc0 A`) over and over:
  h2load sends one body. h2load counts HTTP statuses, not DNS response codes.
- Why not dnsperf for DoH: dnsperf (2.10, and 2.14 still) cannot keep more than one DoH query in
  flight on a connection. It hands on one HTTP/2 response per read and never looks at what is
  left in its buffer (perf__doh_have_more is a TODO returning false), so when two answers arrive
  together the second waits for a read that never comes and the run stalls (most queries "lost",
  for dnsdist and ruddr alike). `--doh-client dnsperf` (or `h2load,dnsperf`) measures it anyway
  the one way it works: `-c 10 -T 10 -q 10`, a thread per connection and one query in flight on
  each (labelled -dnsperf, beside ruddr-tcp-lockstep, plain TCP in that shape, to compare it
  with). That shape is bound by dnsperf's own turnaround (a few thousand QPS), so servers idle
  between queries and every answer pays a wake-up: a poor throughput test, kept for reference.

Server CPU is utime + stime of the server processes (and their children, from /proc) before and
after each run: ruddr's for ruddr's modes; dnsdist's plus knotd's for dnsdist's modes (dnsdist
alone is printed too); knotd's for knotd-tcp. Setups: `shared` (servers and the client share the
cores) and `pinned` (every server on core 0, the client on core 1, with taskset); default shared.

Per setup it prints, per mode, the median over rounds (and spread) of QPS, lost queries, server
CPU seconds and answers per server CPU-second, then ratios: ruddr-dot and ruddr-doh against
ruddr-tcp, and against dnsdist-dot and dnsdist-doh (answers per CPU-second and QPS; the ratio of
the medians, with the spread of the per-round ratios), and the response codes (DNS from dnsperf,
HTTP from h2load). The clients do not verify certificates; the readiness checks (kdig, on every
transport) do, against the CA.

Needs etcd, dnsperf (2.10: -m dot), knot (knotd, kdig), openssl, h2load (Debian package
nghttp2-client) and dnsdist (Debian package `dnsdist`; `apt-get install -y dnsdist`, and keep
its system service stopped). Loopback only; everything lives in a temp dir removed at the end;
every process started is stopped, also on Ctrl-C and SIGTERM.
"""
from __future__ import annotations

import argparse
import base64
import os
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from compare import Server, free_port, queries, spread, start_etcd, tear_down, zone_text  # noqa: E402
from load_etcd import load as load_etcd  # noqa: E402

# In flight per connection on dnsdist's DoT frontend and on its TCP connections to knotd: ruddr's
# default tcp_max_pipelined.
DNSDIST_MAX_IN_FLIGHT = 32

# Client shapes, 10 connections each. "pipelined": 200 queries in flight (dnsperf's -q, or 20
# HTTP/2 streams a connection for h2load); "lockstep": one in flight per connection, a dnsperf
# thread each (the only way dnsperf's DoH runs: see the docstring).
DNSPERF_SHAPES = {"pipelined": ["-c", "10", "-T", "1", "-q", "200"],
                  "lockstep": ["-c", "10", "-T", "10", "-q", "10"]}
H2LOAD_SHAPE = ["-c", "10", "-t", "1", "-m", "20"]
H2LOAD_CIPHER = "TLS_AES_256_GCM_SHA384"

WORK: Path | None = None  # the temp dir, where compare.Server writes <label>.log


def log_tail(server: Server, lines: int = 20) -> str:
    """The end of a server's log (the temp dir goes away at exit)."""
    try:
        return "\n".join((WORK / f"{server.label}.log").read_text(errors="replace").splitlines()[-lines:])
    except (OSError, TypeError):
        return "(no log)"


def make_certs(work: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate it signed (SAN IP:127.0.0.1, DNS:localhost): (ca, cert, key)."""
    d = work / "tls"
    d.mkdir()
    ca, ca_key = d / "ca.pem", d / "ca.key"
    cert, key, csr, ext = d / "server.pem", d / "server.key", d / "server.csr", d / "server.ext"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(argv: list[str]) -> None:
        r = subprocess.run(argv, capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"{' '.join(argv[:3])} failed: {r.stderr.strip()}")

    run(["openssl", "req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
         "-subj", "/CN=ruddr bench CA"])
    run(["openssl", "req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost"])
    ext.write_text("subjectAltName = IP:127.0.0.1, DNS:localhost\nbasicConstraints = CA:FALSE\n"
                   "keyUsage = digitalSignature\nextendedKeyUsage = serverAuth\n")
    run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
         "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext)])
    return ca, cert, key


def wire_query(name: str, qtype: str) -> bytes:
    """A DNS query as dnsperf sends it without -e: RD set, no EDNS; id 0 (RFC 8484 4.1)."""
    types = {"A": 1, "NS": 2, "SOA": 6, "TXT": 16, "AAAA": 28, "SRV": 33}
    out = struct.pack(">HHHHHH", 0, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0" + struct.pack(">HH", types[qtype.upper()], 1)


def doh_get_uris(qfile: Path, port: int, out: Path) -> Path:
    """h2load's input file: a GET URI (`?dns=`, unpadded base64url) per line of dnsperf's query file."""
    lines = []
    for line in qfile.read_text().splitlines():
        if line.strip():
            name, qtype = line.split()
            dns = base64.urlsafe_b64encode(wire_query(name, qtype)).decode().rstrip("=")
            lines.append(f"https://127.0.0.1:{port}/dns-query?dns={dns}\n")
    out.write_text("".join(lines))
    return out


class Mode:
    """One thing a client measures: a transport to a port, and the servers whose CPU it costs."""

    def __init__(self, label: str, transport: str, port: int, procs: list[Server], *, method: str = "GET",
                 front: Server | None = None, client: str = "dnsperf", shape: str = "pipelined"):
        self.label, self.transport, self.port, self.method = label, transport, port, method
        self.client, self.shape = client, shape
        self.procs = procs  # CPU counted as the server's
        self.front = front  # dnsdist, whose CPU is also shown alone
        self.input: Path | None = None  # h2load's URI file (GET) or body (POST)

    def cpu(self) -> tuple[float, float]:
        total = sum(p.cpu() for p in self.procs)
        return total, self.front.cpu() if self.front else total

    def describe(self) -> str:
        if self.client == "h2load":
            return f"h2load {' '.join(H2LOAD_SHAPE)} {self.method}"
        extra = f" {self.method}" if self.transport == "doh" else ""
        return f"dnsperf -m {self.transport} {' '.join(DNSPERF_SHAPES[self.shape])}{extra}"

    def kdig_args(self, ca: Path) -> list[str]:
        if self.transport == "tcp":
            return ["+tcp"]
        argv = [f"+tls-ca={ca}", "+tls-hostname=localhost"]
        if self.transport == "doh":
            argv += ["+https=/dns-query"] + (["+https-get"] if self.method == "GET" else [])
        return argv

    def wait_ready(self, ca: Path, name: str, want: int) -> None:
        """Until kdig (verifying the certificate against the CA) gets `want` addresses for `name`."""
        deadline = time.time() + 60
        out = ""
        while time.time() < deadline:
            for p in self.procs:
                if p.proc.poll() is not None:
                    sys.exit(f"{p.label} exited:\n{log_tail(p)}")
            r = subprocess.run(["kdig", "@127.0.0.1", "-p", str(self.port), *self.kdig_args(ca), "+short",
                                "+time=2", "+retry=0", name, "A"], capture_output=True, text=True)
            out = r.stdout + r.stderr
            if len(r.stdout.split()) == want:
                return
            time.sleep(0.2)
        sys.exit(f"{self.label} never answered {name} with {want} addresses; last kdig output:\n{out}")

    def tls_summary(self) -> str:
        """Protocol and cipher suite the server picks for an OpenSSL client with default settings
        (as dnsperf is)."""
        argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{self.port}", "-brief"]
        if self.transport == "doh":
            argv += ["-alpn", "h2"]
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10)
        text = r.stdout + r.stderr
        found = [m.group(1).strip() for m in re.finditer(r"^(?:Protocol version|Ciphersuite|Peer Temp Key|"
                                                         r"ALPN protocol): *(.*)$", text, re.M)]
        return ", ".join(found) or "s_client said nothing useful"

    def run(self, qfile: Path, duration: int, client_cpu: str | None) -> tuple[dict, list[str]]:
        """One client run: its parsed figures, and what it said on stderr (warnings)."""
        if self.client == "h2load":
            argv = ["h2load", *H2LOAD_SHAPE, "-D", str(duration), f"--tls13-ciphers={H2LOAD_CIPHER}",
                    "-H", "accept: application/dns-message"]
            if self.method == "GET":
                argv += ["-i", str(self.input)]
            else:
                argv += ["-H", "content-type: application/dns-message", "-d", str(self.input),
                         f"https://127.0.0.1:{self.port}/dns-query"]
        else:
            argv = ["dnsperf", "-m", self.transport, "-s", "127.0.0.1", "-p", str(self.port), "-d", str(qfile),
                    "-l", str(duration), *DNSPERF_SHAPES[self.shape]]
            if self.transport == "doh":
                argv += ["-O", f"doh-uri=https://127.0.0.1:{self.port}/dns-query", "-O", f"doh-method={self.method}"]
        if client_cpu:
            argv = ["taskset", "-c", client_cpu, *argv]
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
        except subprocess.TimeoutExpired:
            sys.exit(f"{self.label}: {argv[0]} did not finish within {duration + 60} s")
        parsed = parse_h2load(r.stdout) if self.client == "h2load" else parse_dnsperf(r.stdout)
        warn = [line for line in r.stderr.splitlines() if line.strip()]
        if not parsed["completed"]:
            sys.exit(f"{self.client} got no answers from {self.label}:\n{r.stdout}{r.stderr}")
        return parsed, warn


def parse_dnsperf(out: str) -> dict:
    def num(pattern: str) -> float:
        m = re.search(pattern, out)
        return float(m.group(1)) if m else 0.0
    rcodes: dict[str, int] = {}
    m = re.search(r"Response codes:\s*(.*)$", out, re.M)
    if m:
        for code, n in re.findall(r"([A-Z][A-Za-z0-9]*) (\d+) \(", m.group(1)):
            rcodes[code] = int(n)
    return {
        "qps": num(r"Queries per second:\s+([\d.]+)"),
        "completed": num(r"Queries completed:\s+(\d+)"),
        "lost": num(r"Queries lost:\s+(\d+)"),
        "interrupted": num(r"Queries interrupted:\s+(\d+)"),
        "reconnections": num(r"Reconnections:\s+(\d+)"),
        "rcodes": rcodes,
        "cipher": "",
    }


def parse_h2load(out: str) -> dict:
    """h2load's summary: answers are the requests that succeeded (2xx); lost, those that failed,
    errored or timed out."""
    def num(pattern: str) -> float:
        m = re.search(pattern, out)
        return float(m.group(1)) if m else 0.0
    secs = num(r"finished in ([\d.]+)s")
    ok = num(r"requests:.*?(\d+) succeeded")
    statuses = {}
    m = re.search(r"status codes:(.*)$", out, re.M)
    if m:
        for n, cls in re.findall(r"(\d+) (\dxx)", m.group(1)):
            if int(n):
                statuses[f"HTTP {cls}"] = int(n)
    cipher = re.search(r"^Cipher: *(\S+)", out, re.M)
    return {
        "qps": ok / secs if secs else 0.0,
        "completed": ok,
        "lost": num(r"(\d+) failed") + num(r"(\d+) errored") + num(r"(\d+) timeout"),
        "interrupted": 0.0,
        "reconnections": 0.0,
        "rcodes": statuses,
        "cipher": cipher.group(1) if cipher else "",
    }


def dnsdist_has_doh(binary: str) -> tuple[bool, str]:
    r = subprocess.run([binary, "--version"], capture_output=True, text=True)
    text = (r.stdout + r.stderr).strip()
    # "dns-over-https(DOH)" in 1.7 (h2o); not "outgoing-dns-over-https(...)".
    return bool(re.search(r"(?<![-\w])dns-over-https\(", text)), text


def dnsdist_config(tls_port: int, doh_port: int | None, doh_frontends: int, knot_port: int, cert: Path,
                   key: Path, cache: bool) -> str:
    lines = [
        "-- written by bench/encrypted.py",
        'setSecurityPollSuffix("")',
        f'addTLSLocal("127.0.0.1:{tls_port}", "{cert}", "{key}", {{maxInFlight={DNSDIST_MAX_IN_FLIGHT}}})',
    ]
    if doh_port:
        for _ in range(doh_frontends):
            lines.append(f'addDOHLocal("127.0.0.1:{doh_port}", "{cert}", "{key}", "/dns-query", {{reusePort=true}})')
    lines.append(f'newServer({{address="127.0.0.1:{knot_port}", checkName="svc0.svc.internal.", '
                 f'maxInFlight={DNSDIST_MAX_IN_FLIGHT}}})')
    if cache:
        lines += ["pc = newPacketCache(100000)", 'getPool(""):setCache(pc)']
    return "\n".join(lines) + "\n"


def doh_variants(args) -> list[tuple[str, str, str]]:
    """(label suffix, client, method) of every DoH mode."""
    clients = [c for c in args.doh_client.split(",") if c]
    methods = [m.strip().upper() for m in args.doh_method.split(",") if m.strip()]
    out = []
    for client in clients:
        for method in methods:
            suffix = "-doh" + (f"-{method.lower()}" if len(methods) > 1 else "") + ("-dnsperf" if client == "dnsperf" else "")
            out.append((suffix, client, method))
    return out


def start(args, work: Path, zones: Path, qfile: Path, endpoint: str, certs: tuple[Path, Path, Path], doh: bool,
          cpus: str | None) -> tuple[list[Server], list[Mode], str]:
    """Every server of a setup (under `taskset -c cpus` from the start when given) and the modes to
    measure; also the dnsdist config."""
    _, cert, key = certs
    pre = ["taskset", "-c", cpus] if cpus else []
    n_cpus = len(cpus.split(",")) if cpus else len(os.sched_getaffinity(0))
    variants = doh_variants(args)
    servers: list[Server] = []
    modes: list[Mode] = []

    def doh_modes(base: str, port: int, procs: list[Server], front: Server | None) -> list[Mode]:
        out = []
        for suffix, client, method in variants:
            m = Mode(base + suffix, "doh", port, procs, method=method, front=front, client=client,
                     shape="pipelined" if client == "h2load" else "lockstep")
            if client == "h2load":
                if method == "GET":
                    m.input = doh_get_uris(qfile, port, work / f"uris-{port}.txt")
                else:
                    m.input = work / "post-body.bin"
                    m.input.write_bytes(wire_query("svc0.svc.internal", "A"))
            out.append(m)
        return out

    # ruddr: plain, DoT and DoH in one process.
    port, tls_port, https_port = free_port(), free_port(), free_port()
    conf = work / "ruddr.toml"
    conf.write_text(f"""[dns]
tls_listen = ["127.0.0.1:{tls_port}"]
https_listen = ["127.0.0.1:{https_port}"]
tls_cert_file = "{cert}"
tls_key_file = "{key}"
""")
    ruddr = Server("ruddr", pre + [args.ruddr, "-q", "serve", "--config", str(conf), "--listen", f"127.0.0.1:{port}",
                                   "--etcd-endpoints", endpoint, "--admin-listen", "",
                                   "--zones-dir", str(work / "no-zones"), *args.ruddr_args.split()], port, work)
    servers.append(ruddr)
    modes.append(Mode("ruddr-tcp", "tcp", port, [ruddr]))
    if any(client == "dnsperf" for _, client, _ in variants):
        # Plain TCP in dnsperf's DoH shape, so that DoH compares like with like.
        modes.append(Mode("ruddr-tcp-lockstep", "tcp", port, [ruddr], shape="lockstep"))
    modes.append(Mode("ruddr-dot", "dot", tls_port, [ruddr]))
    modes += doh_modes("ruddr", https_port, [ruddr], None)

    # knotd, with TCP workers too (compare.py's knotd has one: it is asked over UDP only there).
    kport = free_port()
    run = work / "knotd"
    run.mkdir(exist_ok=True)
    (work / "knotd.conf").write_text(f"""server:
    listen: 127.0.0.1@{kport}
    rundir: {run}
    udp-workers: {n_cpus}
    tcp-workers: {n_cpus}
    background-workers: 1
database:
    storage: {run}
zone:
  - domain: svc.internal
    file: {zones / 'svc.internal.zone'}
log:
  - target: stderr
    any: error
""")
    knot = Server("knotd", pre + ["knotd", "-c", str(work / "knotd.conf")], kport, work)
    servers.append(knot)

    # dnsdist in front of knotd.
    dot_port = free_port()
    doh_port = free_port() if doh else None
    text = dnsdist_config(dot_port, doh_port, n_cpus, kport, cert, key, args.dnsdist_cache)
    (work / "dnsdist.conf").write_text(text)
    check = subprocess.run([args.dnsdist, "--check-config", "-C", str(work / "dnsdist.conf")],
                           capture_output=True, text=True)
    if check.returncode:
        sys.exit(f"dnsdist rejected its config:\n{text}\n{check.stdout}{check.stderr}")
    dnsdist = Server("dnsdist", pre + [args.dnsdist, "--supervised", "--disable-syslog", "-C",
                                       str(work / "dnsdist.conf")], dot_port, work)
    servers.append(dnsdist)
    modes.append(Mode("dnsdist-dot", "dot", dot_port, [dnsdist, knot], front=dnsdist))
    if doh_port:
        modes += doh_modes("dnsdist", doh_port, [dnsdist, knot], dnsdist)
    modes.append(Mode("knotd-tcp", "tcp", kport, [knot]))
    return servers, modes, text


def med(values) -> float:
    values = list(values)
    return statistics.median(values) if values else 0.0


def ratio_line(runs: dict[str, list[dict]], a: str, b: str, key: str, key_b: str | None = None) -> str:
    """`a`'s median `key` over `b`'s median `key_b` (default `key`), and the spread of the
    per-round ratios (each of the same round's two runs)."""
    key_b = key_b or key
    ma, mb = med(r[key] for r in runs[a]), med(r[key_b] for r in runs[b])
    per = [x[key] / y[key_b] for x, y in zip(runs[a], runs[b]) if y[key_b]]
    if not mb or not per:
        return "n/a"
    return f"{ma / mb:.2f} ({spread(per, 2)})"


def ratio_pairs(runs: dict[str, list[dict]]) -> list[tuple[str, str]]:
    pairs = []
    for label in runs:
        if label.startswith("ruddr-dot"):
            pairs.append((label, "ruddr-tcp"))
    for label in runs:
        if label.startswith("ruddr-doh"):
            if label.endswith("-dnsperf") and "ruddr-tcp-lockstep" in runs:
                pairs.append((label, "ruddr-tcp-lockstep"))
            pairs.append((label, "ruddr-tcp"))
    for label in runs:
        twin = "dnsdist-" + label[len("ruddr-"):]
        if label.startswith("ruddr-") and twin in runs:
            pairs.append((label, twin))
    if "ruddr-tcp" in runs and "knotd-tcp" in runs:
        pairs.append(("ruddr-tcp", "knotd-tcp"))
    return pairs


def report(args, results: dict, shapes: dict, notes: dict, doh: bool) -> None:
    print()
    print(f"data: {args.services} services x {args.instances} instances; queries 50% A, 50% SRV with glue; "
          f"{args.rounds} rounds x {args.duration} s, interleaved; medians (spread over rounds)")
    print(f"clients, 10 connections each, reused: TCP and DoT dnsperf {' '.join(DNSPERF_SHAPES['pipelined'])}; "
          f"DoH h2load {' '.join(H2LOAD_SHAPE)} (HTTP/2, {H2LOAD_CIPHER})"
          + (f"; -dnsperf DoH and ruddr-tcp-lockstep dnsperf {' '.join(DNSPERF_SHAPES['lockstep'])}"
             if any(s == "lockstep" for s in shapes.values()) else ""))
    print(f"DoH method {args.doh_method.upper()}" + (" (h2load POST: one query, svc0 A, repeated)"
                                                     if "POST" in args.doh_method.upper() else "")
          + "; server cpu: ruddr-* = ruddr; dnsdist-* = dnsdist + knotd (dnsdist alone in the last "
          "columns); knotd-tcp = knotd")
    if not doh:
        print("dnsdist here has no DoH frontend compiled in: dnsdist is measured over DoT only")
    width = max(14, max(len(k) for runs in results.values() for k in runs) + 2)
    for setup, runs in results.items():
        print(f"\n[{setup}]")
        print(f"  {'mode':<{width}}{'QPS':>10} {'(spread)':>17}{'lost':>7}{'cpu s':>7}{'ans/cpu-s':>11} "
              f"{'(spread)':>17}{'dnsdist cpu s':>15}{'ans/dnsdist-cpu-s':>19}")
        for label, v in runs.items():
            qps, per = med(r["qps"] for r in v), med(r["per_cpu"] for r in v)
            front = ""
            if label.startswith("dnsdist"):
                front = f"{med(r['front_cpu'] for r in v):>15.2f}{med(r['per_front_cpu'] for r in v):>19,.0f}"
            print(f"  {label:<{width}}{qps:>10,.0f} {spread([r['qps'] for r in v]):>17}"
                  f"{med(r['lost'] for r in v):>7.0f}{med(r['cpu'] for r in v):>7.2f}{per:>11,.0f} "
                  f"{spread([r['per_cpu'] for r in v]):>17}{front}")
        print("  ratios: of the medians (spread of the per-round ratios)")
        pairs = ratio_pairs(runs)
        pw = max((len(f"{a} / {b}") for a, b in pairs), default=0) + 2
        for a, b in pairs:
            line = (f"    {f'{a} / {b}':<{pw}}answers per CPU-s {ratio_line(runs, a, b, 'per_cpu')}, "
                    f"QPS {ratio_line(runs, a, b, 'qps')}")
            if b.startswith("dnsdist"):
                line += f"; answers per CPU-s / dnsdist's alone {ratio_line(runs, a, b, 'per_cpu', 'per_front_cpu')}"
            if shapes[a] != shapes[b]:
                line += f"  [client shapes differ: {shapes[a]} / {shapes[b]}]"
            print(line)
        print("  responses and losses over all rounds (DNS rcodes from dnsperf, HTTP statuses from h2load):")
        for label, v in runs.items():
            codes: dict[str, int] = {}
            for r in v:
                for c, n in r["rcodes"].items():
                    codes[c] = codes.get(c, 0) + n
            text = ", ".join(f"{c} {n:,}" for c, n in sorted(codes.items(), key=lambda kv: -kv[1])) or "none parsed"
            extra = ""
            for key in ("interrupted", "reconnections"):
                total = sum(r[key] for r in v)
                if total:
                    extra += f", {key} {total:,.0f}"
            print(f"    {label:<{width}}{text}; lost {sum(r['lost'] for r in v):,.0f}{extra}")
        for n in notes[setup]:
            print(f"  note: {n}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ruddr", default=str(ROOT / "target/release/ruddr"), help="ruddr binary")
    ap.add_argument("--ruddr-args", default="", help="extra arguments for ruddr serve")
    ap.add_argument("--dnsdist", default="dnsdist", help="dnsdist binary")
    ap.add_argument("--dnsdist-cache", action="store_true", help="give dnsdist a packet cache (100,000 entries)")
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--instances", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--setups", default="shared", help="shared, pinned (comma list)")
    ap.add_argument("--doh-client", default="h2load", help="h2load, dnsperf (lockstep), or h2load,dnsperf")
    ap.add_argument("--doh-method", default="GET", help="GET, POST, or GET,POST for both")
    args = ap.parse_args()

    clients = [c for c in args.doh_client.split(",") if c]
    if any(c not in ("h2load", "dnsperf") for c in clients):
        sys.exit("--doh-client: h2load, dnsperf")
    for m in args.doh_method.split(","):
        if m.strip().upper() not in ("GET", "POST"):
            sys.exit(f"--doh-method: GET or POST, not {m}")
    for tool in ["etcd", "dnsperf", "knotd", "kdig", "openssl", args.dnsdist] + (["h2load"] if "h2load" in clients else []):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found (dnsdist: apt-get install -y dnsdist; h2load: apt-get install -y nghttp2-client)")
    if not Path(args.ruddr).exists():
        sys.exit(f"{args.ruddr} not found: build it (cargo build --release)")
    setups = [s for s in args.setups.split(",") if s]
    if any(s not in ("shared", "pinned") for s in setups):
        sys.exit("--setups: shared, pinned")
    if "pinned" in setups and not {0, 1} <= os.sched_getaffinity(0):
        sys.exit("the pinned setup needs cores 0 and 1")
    doh, version = dnsdist_has_doh(args.dnsdist)
    print(f"{version.splitlines()[0] if version else args.dnsdist}; DoH frontend "
          f"{'available' if doh else 'NOT compiled in: dnsdist is measured over DoT only'}", file=sys.stderr)

    # SIGTERM unwinds like Ctrl-C, so the finally below stops everything.
    def interrupted(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupted)

    global WORK
    work = WORK = Path(tempfile.mkdtemp(prefix="ruddr-encrypted-"))
    servers: list[Server] = []
    etcd = None
    try:
        etcd, endpoint = start_etcd(work)
        load_etcd(endpoint, args.services, args.instances)
        zones = work / "zones"
        zones.mkdir()
        (zones / "svc.internal.zone").write_text(zone_text(args.services, args.instances))
        certs = make_certs(work)
        qf = work / "queries.txt"
        qf.write_text(queries(args.services, 0))
        last = f"svc{args.services - 1}.svc.internal"

        results: dict[str, dict[str, list[dict]]] = {}
        notes: dict[str, list[str]] = {}
        shapes: dict[str, str] = {}
        for setup in setups:
            pinned = setup == "pinned"
            for s in servers:
                s.stop()
            new, modes, dd_conf = start(args, work, zones, qf, endpoint, certs, doh, "0" if pinned else None)
            servers[:] = new
            print(f"[{setup}] dnsdist config:\n" + "".join(f"    {l}\n" for l in dd_conf.splitlines()),
                  file=sys.stderr, end="", flush=True)
            for m in modes:
                m.wait_ready(certs[0], last, args.instances)
            print(f"[{setup}] modes:\n" + "".join(f"  {m.label}: {m.describe()}\n" for m in modes)
                  + "  TLS an OpenSSL client with its defaults (dnsperf) gets:\n"
                  + "".join(f"    {m.label}: {m.tls_summary()}\n" for m in modes
                            if m.transport != "tcp" and m.client == "dnsperf" or m.transport == "dot"),
                  file=sys.stderr, end="", flush=True)
            notes[setup] = []
            runs: dict[str, list[dict]] = {m.label: [] for m in modes}
            shapes.update({m.label: m.shape for m in modes})
            ciphers: dict[str, set[str]] = {}
            for rnd in range(args.rounds):
                order = modes if rnd % 2 == 0 else list(reversed(modes))
                for m in order:
                    cpu0, front0 = m.cpu()
                    r, warn = m.run(qf, args.duration, "1" if pinned else None)
                    cpu1, front1 = m.cpu()
                    r["cpu"], r["front_cpu"] = cpu1 - cpu0, front1 - front0
                    r["per_cpu"] = r["completed"] / r["cpu"] if r["cpu"] > 0 else 0.0
                    r["per_front_cpu"] = r["completed"] / r["front_cpu"] if r["front_cpu"] > 0 else 0.0
                    runs[m.label].append(r)
                    if r["cipher"]:
                        ciphers.setdefault(m.label, set()).add(r["cipher"])
                    extra = f" (dnsdist alone {r['front_cpu']:.2f}s, {r['per_front_cpu']:,.0f}/cpu-s)" if m.front else ""
                    if warn:
                        notes[setup].append(f"{m.label} round {rnd + 1}: {m.client} said {len(warn)} line(s) on "
                                            f"stderr, first: {warn[0]}")
                    print(f"  {setup} round {rnd + 1} {m.label}: {r['qps']:,.0f} QPS, lost {r['lost']:.0f}, "
                          f"cpu {r['cpu']:.2f}s, {r['per_cpu']:,.0f}/cpu-s{extra}"
                          f"{'; stderr: ' + warn[0] if warn else ''}", file=sys.stderr, flush=True)
            for label, cs in ciphers.items():
                if cs != {H2LOAD_CIPHER}:
                    notes[setup].append(f"{label}: h2load negotiated {', '.join(sorted(cs))}, not {H2LOAD_CIPHER}")
            results[setup] = runs

        for s in servers:
            s.stop()
        report(args, results, shapes, notes, doh)
    finally:
        tear_down(servers, etcd, work)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted: every server stopped, temp dir removed")
