#!/usr/bin/env python3
"""Checks that every ruddr metric the Grafana dashboard and the Prometheus alert rules use is
one ruddr exports.

Usage: check_dashboards.py SCRAPE [EXTRA_FAMILIES]

SCRAPE is the text of a /metrics scrape of a running ruddr ("-" reads standard input).
EXTRA_FAMILIES (optional) lists further metric families, one a line, as "name" or
"name type" (type: counter, gauge, histogram, summary, ...); text from a "#" on is a
comment, blank lines are skipped. It is for families the scrape cannot show: prometheus_client leaves a
labelled family out of the exposition until a label set has been used.

The names used are every identifier starting with "ruddr_" in the `expr` of the dashboard's
panel targets and in its template variable queries (config/grafana/ruddr.json), and in the
`expr` of the alert rules (config/prometheus/ruddr-alerts.yml). A name used must be a series
name the scrape's families produce:

  counter    family F -> F_total (OpenMetrics declares "# TYPE F counter" and samples F_total;
             the classic format may declare "# TYPE F_total counter": then F_total too)
  histogram  F_bucket, F_sum, F_count
  summary    F, F_sum, F_count
  gauge, untyped, unknown, stateset: F;  info: F_info;  gaugehistogram: F_bucket, F_gsum, F_gcount
  a family of EXTRA_FAMILIES without a type: F, F_total, F_bucket, F_sum, F_count

Sample lines are accepted by their own name too (an exposition without "# TYPE" lines).

Exit status: 0 when every name is exported (prints the count), 1 when some are not (lists
them with where they are used) or a file is broken, 2 on bad usage. Depends on nothing outside
the standard library; uses PyYAML for the rules file when it is installed.
"""

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "config" / "grafana" / "ruddr.json"
ALERTS = ROOT / "config" / "prometheus" / "ruddr-alerts.yml"

# A metric name starting with ruddr_, not the tail of a longer identifier.
NAME = re.compile(r"(?<![A-Za-z0-9_:])ruddr_[A-Za-z0-9_:]*")
# Quoted strings in PromQL (label values, regexes): not metric names, unless they are the
# value of __name__.
QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
NAME_MATCHER = re.compile(r'__name__\s*=~?\s*("(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\')')

SUFFIXES = {
    "counter": ["_total"],
    "histogram": ["_bucket", "_sum", "_count"],
    "gaugehistogram": ["_bucket", "_gsum", "_gcount"],
    "summary": ["", "_sum", "_count"],
    "info": ["_info"],
    "gauge": [""],
    "untyped": [""],
    "unknown": [""],
    "stateset": [""],
    None: ["", "_total", "_bucket", "_sum", "_count"],
}


class Broken(Exception):
    pass


def names_in(expr):
    """The ruddr_ metric names an expression uses."""
    found = set()
    for m in NAME_MATCHER.finditer(expr):
        found.update(NAME.findall(m.group(1)))
    found.update(NAME.findall(QUOTED.sub('""', expr)))
    return found


def dashboard_exprs(path):
    """(where, expr) of every panel target and template variable query."""
    try:
        dash = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise Broken(f"{path}: cannot read: {e}")
    except json.JSONDecodeError as e:
        raise Broken(f"{path}: not valid JSON: {e}")
    if not isinstance(dash, dict):
        raise Broken(f"{path}: not a dashboard (a JSON object)")
    out = []

    def walk(panels):
        for p in panels or []:
            if not isinstance(p, dict):
                continue
            title = p.get("title", "?")
            for t in p.get("targets") or []:
                if isinstance(t, dict) and isinstance(t.get("expr"), str):
                    out.append((f"dashboard panel {title!r}", t["expr"]))
            walk(p.get("panels"))  # rows (collapsed ones keep their panels here)

    walk(dash.get("panels"))
    for v in (dash.get("templating") or {}).get("list") or []:
        if not isinstance(v, dict) or v.get("type") != "query":
            continue
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        for s in {q, v.get("definition")}:
            if isinstance(s, str):
                out.append((f"dashboard variable {v.get('name', '?')!r}", s))
    return out


def yaml_exprs_regex(text):
    """`expr` values of a rules file, for when PyYAML is absent: plain, quoted and block
    (| or >) scalars."""
    out = []
    lines = text.splitlines()
    key = re.compile(r"^(\s*)(?:-\s+)?expr:\s*(.*?)\s*$")
    i = 0
    while i < len(lines):
        m = key.match(lines[i])
        i += 1
        if not m:
            continue
        indent = len(m.group(1))
        rest = m.group(2)
        if re.fullmatch(r"[|>][+-]?[0-9]?(\s+#.*)?", rest):
            body = []
            while i < len(lines) and (
                not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent
            ):
                body.append(lines[i].strip())
                i += 1
            out.append(" ".join(body))
        elif rest[:1] in ("'", '"'):
            # A quoted scalar, maybe over several lines.
            closed = (
                re.compile(r'"((?:[^"\\]|\\.)*)"') if rest[0] == '"'
                else re.compile(r"'((?:[^']|'')*)'")
            )
            s = rest
            while not closed.match(s) and i < len(lines):
                s += " " + lines[i].strip()
                i += 1
            q = closed.match(s)
            if q is None:
                raise Broken(f"unterminated quoted expr: {rest}")
            if rest[0] == '"':
                out.append(re.sub(r"\\(.)", r"\1", q.group(1)))
            else:
                out.append(q.group(1).replace("''", "'"))
        else:
            plain = re.sub(r"\s+#.*$", "", rest)
            while (
                i < len(lines)
                and lines[i].strip()
                and len(lines[i]) - len(lines[i].lstrip()) > indent
                and not re.match(r"^\s*[A-Za-z_]+:(\s|$)", lines[i])
            ):
                plain += " " + lines[i].strip()
                i += 1
            out.append(plain)
    return out


def alert_exprs(path):
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise Broken(f"{path}: cannot read: {e}")
    try:
        import yaml  # noqa: PLC0415
    except ImportError:
        return [("alert rules", e) for e in yaml_exprs_regex(text)]
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise Broken(f"{path}: not valid YAML: {e}")
    out = []
    for g in (doc or {}).get("groups") or []:
        for r in g.get("rules") or []:
            if isinstance(r.get("expr"), str):
                what = r.get("alert") or r.get("record") or "?"
                out.append((f"alert rule {what}", r["expr"]))
    return out


def exported(scrape_text, extra_text):
    """Series names the families of the scrape (and the extra list) produce, and the number of
    families."""
    families = {}
    series = set()
    for line in scrape_text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] == "TYPE":
                families[parts[2]] = parts[3].strip().lower() if len(parts) > 3 else None
            elif len(parts) >= 3 and parts[1] == "HELP":
                families.setdefault(parts[2], "?")
            continue
        m = re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line)
        if m:
            series.add(m.group(0))
    if extra_text is not None:
        for line in extra_text.splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) > 1:
                families[parts[0]] = parts[1].lower()
            else:
                families.setdefault(parts[0], None)
    for name, typ in families.items():
        if typ == "?":  # HELP without TYPE: untyped
            typ = "untyped"
        for suffix in SUFFIXES.get(typ, [""]):
            series.add(name + suffix)
        if typ == "counter" and name.endswith("_total"):
            series.add(name)  # classic text format: "# TYPE x_total counter"
    return series, len(families)


def read(arg):
    if arg == "-":
        return sys.stdin.read()
    try:
        return Path(arg).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise Broken(f"{arg}: cannot read: {e}")


def main(argv):
    if len(argv) not in (2, 3) or argv[1] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        used = {}
        for where, expr in dashboard_exprs(DASHBOARD) + alert_exprs(ALERTS):
            for name in names_in(expr):
                used.setdefault(name, set()).add(where)
        scrape = read(argv[1])
        extra = read(argv[2]) if len(argv) == 3 else None
    except Broken as e:
        print(f"check_dashboards: {e}", file=sys.stderr)
        return 1
    if not used:
        print("check_dashboards: no ruddr_ metric names found in the dashboard or the rules",
              file=sys.stderr)
        return 1
    series, nfamilies = exported(scrape, extra)
    missing = sorted(n for n in used if n not in series)
    if missing:
        print(f"check_dashboards: {len(missing)} of {len(used)} metric names used are not "
              f"exported ({nfamilies} families in the scrape and extra list):", file=sys.stderr)
        for n in missing:
            print(f"  {n}  (used by {', '.join(sorted(used[n]))})", file=sys.stderr)
        return 1
    print(f"check_dashboards: all {len(used)} metric names used by {DASHBOARD.name} and "
          f"{ALERTS.name} are exported ({nfamilies} families)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
