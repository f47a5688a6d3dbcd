// ruddr status page: polls the admin JSON API (/v1/status, /v1/services, /v1/services/<name>,
// /v1/changes) every 2 s and renders it. Every value from the registry is put into the page as
// text (textContent / createTextNode); nothing is parsed as HTML. No inline styles (the CSP
// forbids them): looks are chosen with classes from ui.css.
"use strict";

(function () {
  var REFRESH_MS = 2000;
  var FETCH_TIMEOUT_MS = 8000;
  var PAGE = 50; // services per page
  var INST_PAGE = 100; // instances per page (client side; one service's list)
  var DEBOUNCE_MS = 250;
  var HEALTH = { passing: 1, warning: 1, critical: 1 };
  var KINDS = { put: 1, delete: 1, relist: 1 };
  var FRESHNESS = { current: 1, stale: 1, syncing: 1, snapshot: 1 };

  var state = {
    paused: false,
    q: "",
    offset: 0,
    service: null, // the open service's name
    instFilter: "",
    instOffset: 0,
    detail: null, // last /v1/services/<name> body for state.service
    now: null, // server time of the last status
    errors: {},
  };

  var nf = new Intl.NumberFormat("en-US");
  var collator = new Intl.Collator("en", { numeric: true });

  function $(id) {
    return document.getElementById(id);
  }

  // ---- DOM helpers (text only) ----

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function td(text, cls) {
    return el("td", cls, text === null || text === undefined || text === "" ? "–" : text);
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function setText(id, text) {
    var n = $(id);
    var t = text === null || text === undefined ? "–" : String(text);
    if (n.textContent !== t) n.textContent = t;
  }

  function num(n) {
    return typeof n === "number" && isFinite(n) ? nf.format(n) : "–";
  }

  // a number without grouping (ports, revisions, weights)
  function plain(n) {
    return typeof n === "number" && isFinite(n) ? String(n) : n === null || n === undefined ? "–" : String(n);
  }

  function pad(n) {
    return n < 10 ? "0" + n : String(n);
  }

  function parseTime(s) {
    if (typeof s !== "string") return null;
    var d = new Date(s);
    return isNaN(d.getTime()) ? null : d;
  }

  function ymd(d) {
    return d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate());
  }

  function hms(d) {
    return pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()) + ":" + pad(d.getUTCSeconds());
  }

  // "2026-12-06 05:00:00Z"; the raw value when it does not parse.
  function fullTime(s) {
    var d = parseTime(s);
    return d ? ymd(d) + " " + hms(d) + "Z" : s === null || s === undefined ? "–" : String(s);
  }

  // "05:00:00" on the server's current day (UTC), else the full date.
  function shortTime(s) {
    var d = parseTime(s);
    if (!d) return s === null || s === undefined ? "–" : String(s);
    var now = parseTime(state.now);
    if (now && ymd(now) === ymd(d)) return hms(d);
    return ymd(d) + " " + hms(d);
  }

  function duration(sec) {
    if (typeof sec !== "number" || !isFinite(sec)) return "?";
    var s = Math.max(0, Math.floor(sec));
    if (s < 120) return s + " s";
    function two(a, ua, b, ub) {
      return a + " " + ua + (b ? " " + b + " " + ub : "");
    }
    if (s < 7200) return two(Math.floor(s / 60), "min", s % 60, "s");
    if (s < 172800) return two(Math.floor(s / 3600), "h", Math.floor((s % 3600) / 60), "min");
    return two(Math.floor(s / 86400), "d", Math.floor((s % 86400) / 3600), "h");
  }

  function healthClass(h) {
    return HEALTH.hasOwnProperty(h) ? h : "unknown";
  }

  // ---- fetching ----

  function HttpError(status, message) {
    this.status = status;
    this.message = message;
  }

  function getJSON(url) {
    var ctl = typeof AbortController === "function" ? new AbortController() : null;
    var timer = ctl ? setTimeout(function () { ctl.abort(); }, FETCH_TIMEOUT_MS) : null;
    return fetch(url, {
      cache: "no-store",
      credentials: "same-origin",
      headers: { Accept: "application/json" },
      signal: ctl ? ctl.signal : undefined,
    })
      .then(function (resp) {
        return resp.text().then(function (text) {
          if (!resp.ok) {
            var msg = "HTTP " + resp.status;
            try {
              var b = JSON.parse(text);
              if (b && typeof b.error === "string") msg += ": " + b.error;
            } catch (e) { /* not JSON */ }
            throw new HttpError(resp.status, msg);
          }
          return { text: text, data: JSON.parse(text) };
        });
      })
      .catch(function (e) {
        if (e instanceof HttpError) throw e;
        if (e && e.name === "AbortError") throw new HttpError(0, "timed out after " + FETCH_TIMEOUT_MS / 1000 + " s");
        throw new HttpError(0, (e && e.message) || String(e));
      })
      .finally(function () {
        if (timer) clearTimeout(timer);
      });
  }

  // One endpoint: at most one request in flight unless forced; a forced (newer) request makes
  // the answers of older ones be dropped. render(result) is skipped when the body is unchanged
  // since the last render (unless the render asks to be always called).
  function loader(name, urlFn, render, onError, keyFn) {
    var seq = 0;
    var busy = false;
    var lastKey = null;
    var api = {
      invalidate: function () { lastKey = null; },
      load: function (force) {
        if (busy && !force) return Promise.resolve();
        var url = urlFn();
        if (!url) return Promise.resolve();
        var my = ++seq;
        busy = true;
        // an answer is used only when it is the newest asked for and still what the page wants
        // (the search, page or open service did not change meanwhile)
        function current() {
          if (my !== seq) return false;
          busy = false;
          return url === urlFn();
        }
        return getJSON(url).then(
          function (r) {
            if (!current()) return;
            delete state.errors[name];
            var key = url + "\n" + (keyFn ? keyFn() : "") + "\n" + r.text;
            if (key !== lastKey || render.always) {
              lastKey = null;
              render(r.data);
              lastKey = key;
            }
          },
          function (e) {
            if (!current()) return;
            lastKey = null;
            if (!onError || !onError(e)) state.errors[name] = name + ": " + e.message;
          }
        ).then(renderErrors, function (e) {
          // a render bug must not stop the refresh loop
          busy = false;
          state.errors[name] = name + ": " + (e && e.message ? e.message : String(e));
          renderErrors();
        });
      },
    };
    return api;
  }

  function renderErrors() {
    var box = $("error");
    var keys = Object.keys(state.errors);
    if (state.errors.status) {
      showUnreachable(state.errors.status);
    }
    if (keys.length === 0) {
      box.hidden = true;
      clear(box);
      return;
    }
    clear(box);
    box.appendChild(el("strong", null, "Could not load: "));
    keys.forEach(function (k, i) {
      if (i) box.appendChild(document.createTextNode(" · "));
      box.appendChild(document.createTextNode(state.errors[k]));
    });
    box.hidden = false;
  }

  // ---- status ----

  function showUnreachable(msg) {
    var b = $("freshness");
    b.className = "banner unreachable";
    setText("freshness-text", "Cannot reach the ruddr admin API — showing the last data received");
    setText("freshness-detail", msg);
  }

  function renderStatus(s) {
    s = s || {};
    state.now = s.now || null;
    var f = s.freshness || {};
    setText("version", s.version ? "v" + s.version : "");

    var b = $("freshness");
    var st = FRESHNESS.hasOwnProperty(f.state) ? f.state : "unknown";
    b.className = "banner " + st;
    var rev = plain(f.revision);
    var title, detail = [];
    if (st === "current") {
      title = "Current — revision " + rev;
      detail.push("etcd confirms the data; answers use the normal TTLs.");
    } else if (st === "stale") {
      title = "STALE since " + (f.stale_since ? fullTime(f.stale_since) : "an unknown time") +
        (typeof f.stale_seconds === "number" ? " (" + duration(f.stale_seconds) + ")" : "");
      detail.push("etcd has not confirmed the data; serving the last known state (revision " + rev + ") with the stale TTL.");
      if (typeof f.max_stale_seconds === "number") {
        if (typeof f.stale_seconds === "number" && f.stale_seconds >= f.max_stale_seconds) {
          detail.push("Past max_stale (" + duration(f.max_stale_seconds) + "): registry names answer SERVFAIL.");
        } else {
          detail.push("Registry names answer SERVFAIL after max_stale = " + duration(f.max_stale_seconds) +
            (typeof f.stale_seconds === "number" ? " (" + duration(f.max_stale_seconds - f.stale_seconds) + " left)." : "."));
        }
      }
    } else if (st === "syncing") {
      title = "Syncing with etcd…";
      detail.push("Listing the registry; names answer once the first list is complete.");
    } else if (st === "snapshot") {
      title = "Serving the snapshot — revision " + rev;
      detail.push("Loaded from the snapshot file; etcd has not confirmed it yet.");
    } else {
      title = "Freshness: " + (f.state === undefined ? "unknown" : String(f.state));
    }
    if (f.problem) detail.push("Problem: " + f.problem);
    setText("freshness-text", title);
    setText("freshness-detail", detail.join(" "));

    var eps = Array.isArray(f.endpoints) ? f.endpoints : [];
    setText("endpoints", eps.length ? eps.join(", ") : "–");
    var w = $("watch");
    clear(w);
    if (f.watch_connected === true) w.appendChild(el("span", "badge passing", "connected"));
    else if (f.watch_connected === false) w.appendChild(el("span", "badge critical", "disconnected"));
    else w.textContent = "–";
    setText("revision", rev);
    var p = $("problem");
    p.className = f.problem ? "problem" : "muted";
    setText("problem", f.problem || "none");

    var t = s.totals || {};
    setText("total-services", num(t.services));
    setText("total-instances", num(t.instances));
    setText("total-passing", num(t.passing));
    setText("total-warning", num(t.warning));
    setText("total-critical", num(t.critical));
    $("total-warning").parentNode.classList.toggle("nonzero", t.warning > 0);
    $("total-critical").parentNode.classList.toggle("nonzero", t.critical > 0);

    var body = $("sources");
    clear(body);
    (Array.isArray(s.sources) ? s.sources : []).forEach(function (src) {
      var tr = el("tr", src.state === "ok" ? "" : "failing");
      tr.appendChild(td(src.prefix, "mono"));
      tr.appendChild(td(src.layout));
      var c = el("td");
      c.appendChild(el("span", "badge " + (src.state === "ok" ? "passing" : "critical"), src.state || "?"));
      tr.appendChild(c);
      tr.appendChild(td(src.problem, src.problem ? "problem" : "muted"));
      body.appendChild(tr);
    });
    if (!body.firstChild) {
      var tr = el("tr");
      var c = el("td", "muted", "no sources");
      c.colSpan = 4;
      tr.appendChild(c);
      body.appendChild(tr);
    }

    setText("updated", state.paused ? "paused" : "updated " + (s.now ? hms(parseTime(s.now) || new Date()) + "Z" : ""));
  }
  renderStatus.always = true;

  // ---- services list ----

  function servicesURL() {
    var u = "/v1/services?offset=" + state.offset + "&limit=" + PAGE;
    if (state.q) u += "&q=" + encodeURIComponent(state.q);
    return u;
  }

  function countCell(n, cls) {
    return td(num(n), "n" + (n > 0 ? " " + cls : " zero"));
  }

  function renderServices(r) {
    r = r || {};
    var list = Array.isArray(r.services) ? r.services : [];
    var total = typeof r.total === "number" ? r.total : list.length;
    var offset = typeof r.offset === "number" ? r.offset : state.offset;
    if (list.length === 0 && total > 0 && offset > 0) {
      // the list shrank under us: go to its last page
      state.offset = Math.max(0, Math.floor((total - 1) / PAGE) * PAGE);
      services.load(true);
      return;
    }
    var body = $("services");
    var frag = document.createDocumentFragment();
    list.forEach(function (s) {
      var tr = el("tr");
      tr.setAttribute("data-service", String(s.name));
      if (s.name === state.service) tr.className = "selected";
      var name = el("td", "name");
      var btn = el("button", "link", s.name);
      btn.type = "button";
      btn.title = "Show the instances of " + s.name;
      name.appendChild(btn);
      tr.appendChild(name);
      tr.appendChild(td(num(s.instances), "n"));
      tr.appendChild(countCell(s.passing, "passing"));
      tr.appendChild(countCell(s.warning, "warning"));
      tr.appendChild(countCell(s.critical, "critical"));
      frag.appendChild(tr);
    });
    clear(body);
    body.appendChild(frag);
    $("services-empty").hidden = list.length > 0;
    $("services-empty").textContent = state.q ? "No service name contains “" + state.q + "”." : "No services registered.";
    setText("range", list.length ? num(offset + 1) + "–" + num(offset + list.length) + " of " + num(total) : "0 of " + num(total));
    $("prev").disabled = offset <= 0;
    $("next").disabled = offset + list.length >= total;
  }

  function markSelected() {
    var rows = $("services").querySelectorAll("tr[data-service]");
    for (var i = 0; i < rows.length; i++) {
      rows[i].classList.toggle("selected", rows[i].getAttribute("data-service") === state.service);
    }
  }

  // ---- one service ----

  function serviceURL() {
    return state.service === null ? null : "/v1/services/" + encodeURIComponent(state.service);
  }

  function serviceError(e) {
    if (e.status === 404) {
      state.detail = null;
      clear($("instance-rows"));
      setText("service-summary", "");
      setText("inst-range", "");
      var m = $("service-missing");
      m.textContent = "Service “" + state.service + "” is not in the registry (any more).";
      m.hidden = false;
      return true;
    }
    return false;
  }

  function renderService(r) {
    if (!r || r.name === undefined) r = { name: state.service, instances: [] };
    $("service-missing").hidden = true;
    var list = Array.isArray(r.instances) ? r.instances.slice() : [];
    list.sort(function (a, b) {
      return collator.compare(String(a.id), String(b.id)) || collator.compare(String(a.source), String(b.source));
    });
    state.detail = list;
    renderInstances();
  }

  function instanceText(i) {
    var parts = [i.id, i.address, i.port, i.health, i.locality, i.source, i.key];
    if (Array.isArray(i.tags)) parts = parts.concat(i.tags);
    if (i.ports && typeof i.ports === "object") {
      Object.keys(i.ports).forEach(function (k) { parts.push(k); });
    }
    return parts.join(" ").toLowerCase();
  }

  function renderInstances() {
    var all = state.detail || [];
    var c = { passing: 0, warning: 0, critical: 0 };
    all.forEach(function (i) { if (c.hasOwnProperty(i.health)) c[i.health]++; });
    setText("service-summary", num(all.length) + (all.length === 1 ? " instance" : " instances") + " · " +
      num(c.passing) + " passing · " + num(c.warning) + " warning · " + num(c.critical) + " critical");

    var f = state.instFilter.toLowerCase();
    var list = f ? all.filter(function (i) { return instanceText(i).indexOf(f) >= 0; }) : all;
    if (state.instOffset >= list.length) state.instOffset = Math.max(0, Math.floor((list.length - 1) / INST_PAGE) * INST_PAGE);
    var page = list.slice(state.instOffset, state.instOffset + INST_PAGE);

    var body = $("instance-rows");
    var frag = document.createDocumentFragment();
    page.forEach(function (i) {
      var h = healthClass(i.health);
      var tr = el("tr", "h-" + h);
      tr.setAttribute("data-instance", String(i.id));
      tr.appendChild(td(i.id, "mono nowrap"));
      tr.appendChild(td(i.address, "mono nowrap"));
      tr.appendChild(td(plain(i.port), "n mono"));
      var ports = el("td", "chips");
      var names = i.ports && typeof i.ports === "object" ? Object.keys(i.ports).sort() : [];
      names.forEach(function (k) {
        var chip = el("span", "chip");
        chip.appendChild(el("span", "chip-key", k));
        chip.appendChild(document.createTextNode(" " + plain(i.ports[k])));
        ports.appendChild(chip);
      });
      if (!names.length) ports.appendChild(el("span", "muted", "–"));
      tr.appendChild(ports);
      tr.appendChild(td(plain(i.weight), "n"));
      tr.appendChild(td(plain(i.priority), "n"));
      var hc = el("td", "nowrap");
      hc.appendChild(el("span", "badge " + h, i.health === undefined ? "?" : i.health));
      tr.appendChild(hc);
      tr.appendChild(td(i.locality));
      var tags = el("td", "chips tags");
      (Array.isArray(i.tags) ? i.tags : []).forEach(function (t) { tags.appendChild(el("span", "chip", t)); });
      if (!tags.firstChild) tags.appendChild(el("span", "muted", "–"));
      tr.appendChild(tags);
      tr.appendChild(td(i.source, "mono small"));
      tr.appendChild(td(i.key, "mono small"));
      frag.appendChild(tr);
    });
    clear(body);
    body.appendChild(frag);
    if (!page.length) {
      var tr = el("tr");
      var cell = el("td", "muted", f ? "No instance matches." : "No instances.");
      cell.colSpan = 11;
      tr.appendChild(cell);
      body.appendChild(tr);
    }
    setText("inst-range", list.length ? num(state.instOffset + 1) + "–" + num(state.instOffset + page.length) + " of " + num(list.length) : "");
    $("inst-prev").disabled = state.instOffset <= 0;
    $("inst-next").disabled = state.instOffset + page.length >= list.length;
  }

  function openService(name) {
    if (state.service !== name) {
      state.service = name;
      state.detail = null;
      state.instFilter = "";
      state.instOffset = 0;
      $("instance-filter").value = "";
      clear($("instance-rows"));
      setText("service-summary", "loading…");
      setText("inst-range", "");
      $("service-missing").hidden = true;
      serviceLoader.invalidate();
    }
    setText("service-name", name);
    $("service-view").hidden = false;
    markSelected();
    saveURL();
    serviceLoader.load(true);
    $("service-view").scrollIntoView({ block: "nearest" });
  }

  function closeService() {
    state.service = null;
    state.detail = null;
    $("service-view").hidden = true;
    clear($("instance-rows"));
    delete state.errors.service;
    renderErrors();
    markSelected();
    saveURL();
  }

  // ---- changes ----

  function renderChanges(r) {
    var list = r && Array.isArray(r.changes) ? r.changes : [];
    var body = $("change-rows");
    var frag = document.createDocumentFragment();
    list.forEach(function (c) {
      var kind = KINDS.hasOwnProperty(c.kind) ? c.kind : "other";
      var tr = el("tr", "kind-" + kind);
      if (c.service !== null && c.service !== undefined) tr.setAttribute("data-change-service", String(c.service));
      if (c.instance !== null && c.instance !== undefined) tr.setAttribute("data-change-instance", String(c.instance));
      var t = td(shortTime(c.time), "mono nowrap");
      if (c.time) t.title = String(c.time);
      tr.appendChild(t);
      tr.appendChild(td(plain(c.revision), "n mono"));
      var k = el("td");
      k.appendChild(el("span", "badge kind " + kind, c.kind === undefined ? "?" : c.kind));
      tr.appendChild(k);
      var s = el("td");
      if (c.service !== null && c.service !== undefined) {
        var b = el("button", "link", c.service);
        b.type = "button";
        b.setAttribute("data-open", String(c.service));
        b.title = "Show the instances of " + c.service;
        s.appendChild(b);
      } else {
        s.appendChild(el("span", "muted", "–"));
      }
      tr.appendChild(s);
      tr.appendChild(td(c.instance, "mono"));
      tr.appendChild(td(c.source, "mono small"));
      frag.appendChild(tr);
    });
    clear(body);
    body.appendChild(frag);
    $("changes-empty").hidden = list.length > 0;
  }

  // ---- wiring ----

  var status = loader("status", function () { return "/v1/status"; }, renderStatus);
  var services = loader("services", servicesURL, renderServices);
  var serviceLoader = loader("service", serviceURL, renderService, serviceError);
  // times show without a date when on the server's current day: re-render when that changes
  var changes = loader("changes", function () { return "/v1/changes"; }, renderChanges, null, function () {
    var d = parseTime(state.now);
    return d ? ymd(d) : "";
  });

  function refresh(force) {
    // the status first: the others use its server time
    return Promise.all([
      status.load(force).then(function () { return changes.load(force); }),
      services.load(force),
      serviceLoader.load(force),
    ]);
  }

  function saveURL() {
    var p = [];
    if (state.q) p.push("q=" + encodeURIComponent(state.q));
    if (state.service !== null) p.push("service=" + encodeURIComponent(state.service));
    var u = location.pathname + (p.length ? "?" + p.join("&") : "");
    try {
      history.replaceState(null, "", u);
    } catch (e) { /* not essential */ }
  }

  function readURL() {
    var p = new URLSearchParams(location.search);
    state.q = (p.get("q") || "").trim();
    $("search").value = state.q;
    var s = p.get("service");
    if (s) {
      state.service = s;
      setText("service-name", s);
      $("service-view").hidden = false;
    }
  }

  function setPaused(p) {
    state.paused = p;
    var b = $("pause");
    b.textContent = p ? "Resume" : "Pause";
    b.setAttribute("aria-pressed", p ? "true" : "false");
    b.title = p ? "Refresh every 2 s again" : "Stop refreshing every 2 s";
    document.body.classList.toggle("paused", p);
    if (p) setText("updated", "paused");
    else refresh(true);
  }

  function init() {
    readURL();

    var debounce = null;
    $("search").addEventListener("input", function () {
      clearTimeout(debounce);
      debounce = setTimeout(function () {
        var q = $("search").value.trim();
        if (q === state.q) return;
        state.q = q;
        state.offset = 0;
        saveURL();
        services.load(true);
      }, DEBOUNCE_MS);
    });
    $("search").addEventListener("keydown", function (e) {
      if (e.key === "Escape") {
        $("search").value = "";
        $("search").dispatchEvent(new Event("input"));
      }
    });
    $("prev").addEventListener("click", function () {
      state.offset = Math.max(0, state.offset - PAGE);
      services.load(true);
    });
    $("next").addEventListener("click", function () {
      state.offset += PAGE;
      services.load(true);
    });
    $("services").addEventListener("click", function (e) {
      var tr = e.target.closest("tr[data-service]");
      if (tr) openService(tr.getAttribute("data-service"));
    });
    $("change-rows").addEventListener("click", function (e) {
      var b = e.target.closest("button[data-open]");
      if (b) openService(b.getAttribute("data-open"));
    });
    $("close-service").addEventListener("click", closeService);

    var instDebounce = null;
    $("instance-filter").addEventListener("input", function () {
      clearTimeout(instDebounce);
      instDebounce = setTimeout(function () {
        state.instFilter = $("instance-filter").value.trim();
        state.instOffset = 0;
        renderInstances();
      }, 150);
    });
    $("inst-prev").addEventListener("click", function () {
      state.instOffset = Math.max(0, state.instOffset - INST_PAGE);
      renderInstances();
    });
    $("inst-next").addEventListener("click", function () {
      state.instOffset += INST_PAGE;
      renderInstances();
    });

    $("refresh").addEventListener("click", function () { refresh(true); });
    $("pause").addEventListener("click", function () { setPaused(!state.paused); });
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden && !state.paused) refresh(false);
    });

    setInterval(function () {
      if (!state.paused && !document.hidden) refresh(false);
    }, REFRESH_MS);
    refresh(true);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
