#!/usr/bin/env python3
"""Drives ruddr's status page (/, /ui.js, /ui.css on the admin listener) in headless Chromium
through Playwright (sync API) against a running ruddr and etcd that the caller started.

Steps, each printing one "ok: ..." line, or "FAIL: ..." and exiting 1:
  a. the page loads and #freshness gets the class "current";
  b. the row of --service is listed; the search box narrows the list (server side, ?q=) and a
     name that matches nothing empties it;
  c. clicking the service opens its instances, --instance among them;
  d. an `etcdctl put` of --put-key/--put-value shows --new-instance in the open service and in
     #changes within WAIT_S (20 s), without reloading the page;
  x. (with --xss-service) that service's hostile values are shown as text: no element injected,
     no payload ran;
  e. SIGSTOP of --etcd-pid turns #freshness "stale" (SIGCONT always follows, and the page must
     turn "current" again);
  f. / carries a Content-Security-Policy header, and the page logged no console error (CSP
     violations included) and threw nothing.

Needs: pip install playwright; Debian chromium (used via executable_path: `playwright install`
is not needed). Exit 0 when every step passed, 1 on a failed step, 2 on bad usage or setup.
"""
import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time

try:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright
except ImportError:
    print("FAIL: python module playwright is missing (pip install playwright)", flush=True)
    sys.exit(2)


class Fail(Exception):
    pass


def ok(msg):
    print(f"ok: {msg}", flush=True)


def find_chromium():
    for c in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
              shutil.which("chromium-browser"), "/usr/bin/chromium-browser",
              shutil.which("google-chrome"), shutil.which("google-chrome-stable")):
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def css_str(s):
    """A CSS string literal for an attribute selector."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\a ") + '"'


# Records, from before the page's own scripts run, every element the page ever inserts that
# could run code or load something (script, img, iframe, object, embed, svg, on* attributes),
# and a trap for alert()/confirm()/prompt(). The page itself creates none of these.
WATCHDOG = r"""
(() => {
  window.__ruddr_injected = [];
  window.__ruddr_dialogs = 0;
  for (const f of ["alert", "confirm", "prompt"]) {
    window[f] = function () { window.__ruddr_dialogs++; };
  }
  const bad = new Set(["SCRIPT", "IMG", "IFRAME", "OBJECT", "EMBED", "SVG", "svg", "FRAME", "BASE", "FORM", "META", "VIDEO", "AUDIO"]);
  const check = (n) => {
    if (!n || n.nodeType !== 1) return;
    const all = [n, ...n.querySelectorAll("*")];
    for (const e of all) {
      const tag = e.tagName;
      let suspicious = bad.has(tag) || bad.has(tag.toUpperCase());
      if (tag === "SCRIPT" && e.parentNode && e.parentNode.tagName === "HEAD" &&
          e.getAttribute("src") === "/ui.js" && document.readyState === "loading") suspicious = false;
      if (tag === "META" && document.readyState === "loading" && e.parentNode && e.parentNode.tagName === "HEAD") suspicious = false;
      for (const a of Array.from(e.attributes || [])) {
        if (/^on/i.test(a.name) || /^\s*javascript:/i.test(a.value)) suspicious = true;
      }
      if (suspicious) window.__ruddr_injected.push(e.outerHTML.slice(0, 200));
    }
  };
  new MutationObserver((ms) => {
    for (const m of ms) {
      for (const n of m.addedNodes) check(n);
      if (m.type === "attributes") check(m.target);
    }
  }).observe(document, { childList: true, subtree: true, attributes: true });
})();
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True, help="the status page, e.g. http://127.0.0.1:9153/")
    ap.add_argument("--etcdctl-endpoint", required=True, help="e.g. http://127.0.0.1:2379")
    ap.add_argument("--etcd-pid", type=int, required=True, help="etcd's pid, stopped for the stale step")
    ap.add_argument("--service", required=True, help="a registered service, e.g. web")
    ap.add_argument("--instance", required=True, help="a registered instance of it, e.g. web-1")
    ap.add_argument("--put-key", required=True, help="key of a new registration this script writes")
    ap.add_argument("--put-value", required=True, help="its value")
    ap.add_argument("--new-instance", required=True, help="the instance id the put creates (in --service)")
    ap.add_argument("--screenshots", help="directory for current.png and stale.png")
    ap.add_argument("--stale-timeout", type=float, default=30.0, help="seconds to wait for stale (default 30)")
    ap.add_argument("--xss-service", help="a registered service whose values hold HTML/script payloads")
    ap.add_argument("--xss-global", action="append", default=[],
                    help="a window property the payload would set (repeatable; __xss and xss are always checked)")
    ap.add_argument("--xss-text", action="append", default=[],
                    help="raw text of the payload that must be visible as text (default: '<script' or '<img')")
    ap.add_argument("--chromium", help="browser binary (default: /usr/bin/chromium or chromium on PATH)")
    ap.add_argument("--headed", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    chromium = args.chromium or find_chromium()
    if not chromium:
        print("FAIL: no Chromium found (apt-get install chromium, or pass --chromium)", flush=True)
        return 2
    if not shutil.which("etcdctl"):
        print("FAIL: etcdctl not on PATH", flush=True)
        return 2
    if args.screenshots:
        os.makedirs(args.screenshots, exist_ok=True)

    console_errors = []
    # SIGTERM/SIGHUP (a harness timing out) unwind through the finally blocks, so a stopped etcd
    # is always continued.
    def interrupted(signum, _frame):
        print(f"FAIL: interrupted by signal {signal.Signals(signum).name}", flush=True)
        sys.exit(1)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=chromium,
                headless=not args.headed,
                args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                      "--no-first-run", "--disable-extensions", "--disable-background-networking"],
            )
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.add_init_script(WATCHDOG)
                page.on("console", lambda m: m.type == "error" and console_errors.append(f"console: {m.text}"))
                page.on("pageerror", lambda e: console_errors.append(f"pageerror: {e}"))
                run_steps(page, args, console_errors)
            finally:
                browser.close()
    except Fail as e:
        print(f"FAIL: {e}", flush=True)
        return 1
    except PlaywrightError as e:
        print(f"FAIL: browser: {str(e).splitlines()[0] if str(e) else e!r}", flush=True)
        return 1
    finally:
        if _stopped:
            resume(args.etcd_pid)
    return 0


_stopped = False


def resume(pid):
    global _stopped
    _stopped = False
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


# How long the page may take to show what a step expects. The page polls every 2 s; the rest
# is room for a loaded machine (the suite runs many servers and this browser on two cores).
WAIT_S = 20


def wait_for(page, js, arg, timeout_s, what):
    try:
        page.wait_for_function(js, arg=arg, timeout=timeout_s * 1000, polling=100)
    except PlaywrightTimeout:
        raise Fail(f"{what} (after {timeout_s:g} s)") from None


def freshness(page):
    return page.evaluate(
        "() => { const f = document.getElementById('freshness');"
        " return f ? f.className + ' | ' + f.innerText.trim().split('\\n')[0].trim() : 'no #freshness'; }")


def wait_freshness(page, cls, timeout_s, what):
    try:
        page.wait_for_function(
            "(c) => { const f = document.getElementById('freshness'); return f && f.classList.contains(c); }",
            arg=cls, timeout=timeout_s * 1000, polling=100)
    except PlaywrightTimeout:
        raise Fail(f"{what}: #freshness is not '{cls}' after {timeout_s:g} s; it shows: {freshness(page)}") from None


def service_rows(page):
    return page.evaluate(
        "() => Array.from(document.querySelectorAll('#services [data-service]')).map(e => e.getAttribute('data-service'))")


def show_row(page, name):
    """Waits for the row of service `name` in #services. With more than one page of services it
    may be on another page: then its exact name is searched for. Returns how it was found."""
    sel = f"#services [data-service={css_str(name)}]"
    wait_for(page, "() => document.querySelectorAll('#services [data-service]').length > 0", None, WAIT_S,
             "#services lists no service")
    where = "on the first page"
    if not page.query_selector(sel) and page.is_enabled("#next"):
        page.locator("#search").fill(name)
        where = "after searching its name (more than one page of services)"
    wait_for(page, "(s) => !!document.querySelector(s)", sel, WAIT_S,
             f"no row [data-service={name!r}] in #services; rows: {service_rows(page)[:10]}")
    return where


def run_steps(page, args, console_errors):
    svc_sel = f"#services [data-service={css_str(args.service)}]"
    inst_sel = f"#instances [data-instance={css_str(args.instance)}]"
    new_sel = f"#instances [data-instance={css_str(args.new_instance)}]"

    # a. load
    try:
        resp = page.goto(args.url, wait_until="load", timeout=WAIT_S * 1000)
    except PlaywrightError as e:
        raise Fail(f"cannot load {args.url}: {str(e).splitlines()[0]}") from None
    if resp is None or resp.status != 200:
        raise Fail(f"GET {args.url}: status {resp.status if resp else 'none'}")
    csp = resp.headers.get("content-security-policy")
    wait_freshness(page, "current", WAIT_S, "page load")
    ok(f"page loaded, freshness current: {freshness(page).split(' | ', 1)[-1]}")

    # b. service row and search
    where = show_row(page, args.service)
    ok(f"row [data-service={args.service!r}] listed {where}")
    n = len(args.service)
    part = args.service[1:-1] if n >= 4 else args.service[:max(1, n - 1)]
    part = part.upper()  # the match is case-insensitive
    search = page.locator("#search")
    search.fill(part)
    wait_for(page, "([s, sel]) => { const u = new URL(location.href); "
             "return (u.searchParams.get('q') || '') === s && !!document.querySelector(sel); }",
             [part, svc_sel], WAIT_S, f"after typing {part!r} in #search the row of {args.service!r} is not shown "
             f"(rows: {service_rows(page)[:10]})")
    others = service_rows(page)
    if any(part.lower() not in r.lower() for r in others):
        raise Fail(f"search {part!r} lists names that do not contain it: {[r for r in others if part.lower() not in r.lower()][:5]}")
    ok(f"search {part!r} keeps {args.service!r} ({len(others)} row(s) shown)")
    junk = "zq-no-such-" + secrets.token_hex(6)
    search.fill(junk)
    wait_for(page, "([s]) => new URL(location.href).searchParams.get('q') === s && "
             "document.querySelectorAll('#services [data-service]').length === 0",
             [junk], WAIT_S, f"search {junk!r} still lists rows: {service_rows(page)[:10]}")
    ok(f"search {junk!r} lists no service")
    search.fill("")
    wait_for(page, "() => !new URL(location.href).searchParams.get('q') && "
             "document.querySelectorAll('#services [data-service]').length > 0", None, WAIT_S,
             "after clearing #search no rows are back")
    ok(f"search cleared, {len(service_rows(page))} row(s) back")

    # c. open the service
    show_row(page, args.service)
    page.locator(svc_sel).click()
    wait_for(page, "(sel) => !!document.querySelector(sel)", inst_sel, WAIT_S,
             f"clicking {args.service!r} does not show instance {args.instance!r} in #instances")
    ok(f"service {args.service!r} opened, instance {args.instance!r} shown")

    # d. a registration appears by itself
    if page.query_selector(new_sel):
        raise Fail(f"instance {args.new_instance!r} is shown before the put")
    env = dict(os.environ, ETCDCTL_API="3")
    put = subprocess.run(["etcdctl", "--endpoints", args.etcdctl_endpoint, "put", args.put_key, args.put_value],
                         capture_output=True, text=True, env=env, timeout=20)
    if put.returncode != 0:
        raise Fail(f"etcdctl put {args.put_key}: {put.stderr.strip() or put.stdout.strip()}")
    t0 = time.monotonic()
    wait_for(page, "(sel) => !!document.querySelector(sel)", new_sel, WAIT_S,
             f"instance {args.new_instance!r} did not appear in the open service view")
    wait_for(page, "([svc, inst]) => Array.from(document.querySelectorAll('#changes tbody tr')).some(tr =>"
             " tr.getAttribute('data-change-instance') === inst && tr.getAttribute('data-change-service') === svc)",
             [args.service, args.new_instance], max(0.5, WAIT_S - (time.monotonic() - t0)),
             f"no row for {args.service}/{args.new_instance} in #changes")
    ok(f"put {args.put_key}: {args.new_instance!r} shown in the service and in #changes "
       f"after {time.monotonic() - t0:.1f} s without reload")

    # x. hostile values stay text
    if args.xss_service:
        check_xss(page, args)
        show_row(page, args.service)
        page.locator(svc_sel).click()
        wait_for(page, "(sel) => !!document.querySelector(sel)", inst_sel, WAIT_S,
                 f"reopening {args.service!r} does not show {args.instance!r}")

    # e. stale
    if args.screenshots:
        page.screenshot(path=os.path.join(args.screenshots, "current.png"), full_page=True)
        ok(f"screenshot {os.path.join(args.screenshots, 'current.png')}")
    global _stopped
    try:
        _stopped = True
        os.kill(args.etcd_pid, signal.SIGSTOP)
    except ProcessLookupError:
        raise Fail(f"no process {args.etcd_pid} (--etcd-pid)") from None
    stopped_at = time.monotonic()
    try:
        wait_freshness(page, "stale", args.stale_timeout, "etcd stopped (SIGSTOP)")
        ok(f"etcd stopped: stale after {time.monotonic() - stopped_at:.1f} s: {freshness(page).split(' | ', 1)[-1]}")
        if args.screenshots:
            page.screenshot(path=os.path.join(args.screenshots, "stale.png"), full_page=True)
            ok(f"screenshot {os.path.join(args.screenshots, 'stale.png')}")
    finally:
        resume(args.etcd_pid)
    wait_freshness(page, "current", args.stale_timeout, "etcd resumed (SIGCONT)")
    ok("etcd resumed: current again")

    # f. CSP and console
    if not csp:
        raise Fail(f"GET {args.url} has no Content-Security-Policy header")
    for need in ("script-src 'self'", "default-src 'none'"):
        if need not in csp:
            raise Fail(f"Content-Security-Policy lacks {need!r}: {csp}")
    if "unsafe-inline" in csp or "unsafe-eval" in csp:
        raise Fail(f"Content-Security-Policy allows unsafe-*: {csp}")
    ok(f"Content-Security-Policy: {csp}")
    page.wait_for_timeout(300)
    if console_errors:
        raise Fail(f"{len(console_errors)} console error(s): " + " || ".join(console_errors[:5]))
    injected = page.evaluate("() => window.__ruddr_injected || []")
    if injected:
        raise Fail(f"elements injected into the page: {injected[:3]}")
    ok("no console errors, no CSP violations, no page errors")


def check_xss(page, args):
    sel = f"#services [data-service={css_str(args.xss_service)}]"
    page.locator("#search").fill(args.xss_service)
    wait_for(page, "(sel) => !!document.querySelector(sel)", sel, WAIT_S,
             f"no row [data-service={args.xss_service!r}] after searching for it")
    page.locator(sel).click()
    wait_for(page, "(name) => document.getElementById('service-name').textContent === name && "
             "document.querySelectorAll('#instances [data-instance]').length > 0",
             args.xss_service, WAIT_S, f"service {args.xss_service!r} shows no instances")
    page.wait_for_timeout(2500)  # one more refresh cycle re-renders it
    globals_ = ["__xss", "xss", "__ruddr_xss"] + args.xss_global
    res = page.evaluate(
        """(globals) => ({
            imgs: document.querySelectorAll('img').length,
            imgx: document.querySelectorAll('img[src="x"]').length,
            scripts: Array.from(document.scripts).map(s => s.getAttribute('src')),
            onattrs: Array.from(document.querySelectorAll('*')).filter(e =>
                Array.from(e.attributes).some(a => /^on/i.test(a.name))).length,
            set: globals.filter(g => window[g] !== undefined),
            dialogs: window.__ruddr_dialogs || 0,
            injected: window.__ruddr_injected || [],
            text: document.getElementById('instances').innerText,
        })""", globals_)
    problems = []
    if res["imgs"] or res["imgx"]:
        problems.append(f"{res['imgs']} <img> element(s) in the page")
    if res["scripts"] != ["/ui.js"]:
        problems.append(f"scripts in the page: {res['scripts']}")
    if res["onattrs"]:
        problems.append(f"{res['onattrs']} element(s) with on* attributes")
    if res["set"]:
        problems.append(f"payload ran: window.{res['set'][0]} is set")
    if res["dialogs"]:
        problems.append("payload ran: alert/confirm/prompt called")
    if res["injected"]:
        problems.append(f"injected: {res['injected'][:3]}")
    wanted = args.xss_text or None
    text = res["text"]
    if wanted:
        missing = [w for w in wanted if w not in text]
        if missing:
            problems.append(f"raw payload text not shown: {missing}")
    elif "<script" not in text and "<img" not in text:
        problems.append("neither '<script' nor '<img' is visible as text in #instances")
    if problems:
        raise Fail(f"XSS service {args.xss_service!r}: " + "; ".join(problems))
    shown = [w for w in (wanted or ["<script", "<img"]) if w in text]
    ok(f"XSS service {args.xss_service!r}: payload shown as text ({', '.join(map(repr, shown))}), nothing injected or run")
    page.locator("#search").fill("")
    wait_for(page, "() => !new URL(location.href).searchParams.get('q') && "
             "document.querySelectorAll('#services [data-service]').length > 0", None, WAIT_S,
             "after clearing #search no rows are back")


if __name__ == "__main__":
    sys.exit(main())
