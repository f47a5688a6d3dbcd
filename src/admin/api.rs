//! The status page (`/`, `/ui.js`, `/ui.css`) and the JSON API it reads: `/v1/status`,
//! `/v1/services?offset=&limit=&q=`, `/v1/services/<name>` and `/v1/changes`.
//!
//! Everything comes from the current snapshot and the mirror's change log; nothing here asks
//! etcd. The page's own files are compiled in (no asset from anywhere else) and served with a
//! Content-Security-Policy that allows scripts and styles from this origin only.

use std::time::SystemTime;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderName, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::Admin;
use crate::cache::{Freshness, Instance, Service, ServiceName, SourceId};
use crate::registry::Layout;

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/ui.js");
const STYLE: &str = include_str!("ui/ui.css");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Services per page unless `limit` says otherwise, and the most one page may hold.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 500;

pub fn routes(router: Router<Admin>) -> Router<Admin> {
    router
        .route("/", get(|| page(INDEX, "text/html; charset=utf-8")))
        .route(
            "/ui.js",
            get(|| page(SCRIPT, "text/javascript; charset=utf-8")),
        )
        .route("/ui.css", get(|| page(STYLE, "text/css; charset=utf-8")))
        .route("/v1/status", get(status))
        .route("/v1/services", get(services))
        .route("/v1/services/{name}", get(service))
        .route("/v1/changes", get(changes))
}

async fn page(body: &'static str, kind: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
            (HeaderName::from_static("referrer-policy"), "no-referrer"),
        ],
        body,
    )
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

impl Admin {
    fn source_prefix(&self, id: SourceId) -> Option<String> {
        self.sources
            .load()
            .iter()
            .find(|s| s.id == id)
            .map(|s| s.prefix.clone())
    }

    /// The etcd key an instance came from where it can be derived: the native layout's keys
    /// are `<prefix><service>/<id>`; framework layouts map their keys to DNS labels, which do
    /// not lead back (`null`).
    fn key_of(&self, service: &ServiceName, instance: &Instance) -> Option<String> {
        let sources = self.sources.load();
        let source = sources.iter().find(|s| s.id == instance.source)?;
        (source.layout == Layout::Native).then(|| {
            crate::registry::layout::native::encode_key(&source.prefix, service, &instance.id)
        })
    }
}

/// Instance counts by health.
fn health_counts(service: &Service) -> (usize, usize, usize) {
    use crate::cache::Health;
    let (mut passing, mut warning, mut critical) = (0, 0, 0);
    for i in service.instances.values() {
        match i.health {
            Health::Passing => passing += 1,
            Health::Warning => warning += 1,
            Health::Critical => critical += 1,
        }
    }
    (passing, warning, critical)
}

async fn status(State(admin): State<Admin>) -> impl IntoResponse {
    let snapshot = admin.mirror.load_full();
    let st = &admin.status;
    let state = match st.freshness() {
        Freshness::Empty => "syncing",
        Freshness::Current => "current",
        _ if st.is_from_snapshot() => "snapshot",
        Freshness::Stale { .. } | Freshness::Expired => "stale",
    };
    let problem = st.problem();
    let sources: Vec<Value> = admin
        .sources
        .load()
        .iter()
        .map(|s| {
            let refused = st.source_refused(&s.prefix);
            json!({
                "prefix": s.prefix,
                "layout": s.layout.to_string(),
                "state": if refused.is_some() { "failing" } else { "ok" },
                "problem": refused,
            })
        })
        .collect();
    let (mut passing, mut warning, mut critical) = (0, 0, 0);
    for svc in snapshot.services.values() {
        let (p, w, c) = health_counts(svc);
        passing += p;
        warning += w;
        critical += c;
    }
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "now": rfc3339(SystemTime::now()),
        "freshness": {
            "state": state,
            "stale_since": st.stale_since().map(rfc3339),
            "stale_seconds": st.stale_for().filter(|_| !st.is_age_unknown()).map(|d| d.as_secs_f64()),
            "max_stale_seconds": st.max_stale().map(|d| d.as_secs_f64()),
            "revision": snapshot.revision,
            "watch_connected": st.is_connected(),
            "endpoints": &admin.endpoints[..],
            "problem": problem.map(|p| format!("{}: {}", p.kind.describe(), p.message)),
        },
        "sources": sources,
        "totals": {
            "services": snapshot.services.len(),
            "instances": snapshot.instance_count(),
            "passing": passing,
            "warning": warning,
            "critical": critical,
        },
    }))
}

/// `offset`, `limit` and `q` from a query string; anything unreadable counts as absent.
#[derive(Default)]
struct Page {
    offset: usize,
    limit: Option<usize>,
    q: String,
}

impl Page {
    fn parse(query: Option<&str>) -> Self {
        let mut page = Page::default();
        for pair in query.unwrap_or("").split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            match k {
                "offset" => page.offset = v.parse().unwrap_or(0),
                "limit" => page.limit = v.parse().ok(),
                "q" => page.q = v,
                _ => {}
            }
        }
        page
    }
}

/// `application/x-www-form-urlencoded` decoding (`+` is a space); bad escapes stay as they are.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn services(State(admin): State<Admin>, RawQuery(query): RawQuery) -> impl IntoResponse {
    let page = Page::parse(query.as_deref());
    let snapshot = admin.mirror.load_full();
    let q = page.q.trim().to_ascii_lowercase();
    let mut names: Vec<&ServiceName> = snapshot
        .services
        .keys()
        .filter(|n| q.is_empty() || n.as_str().contains(q.as_str()))
        .collect();
    names.sort_unstable();
    let limit = page.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let rows: Vec<Value> = names
        .iter()
        .skip(page.offset)
        .take(limit)
        .filter_map(|n| snapshot.services.get(*n))
        .map(|svc| {
            let (passing, warning, critical) = health_counts(svc);
            json!({
                "name": svc.name.as_str(),
                "instances": svc.instances.len(),
                "passing": passing,
                "warning": warning,
                "critical": critical,
            })
        })
        .collect();
    Json(json!({
        "total": names.len(),
        "offset": page.offset,
        "limit": limit,
        "services": rows,
    }))
}

async fn service(State(admin): State<Admin>, Path(name): Path<String>) -> impl IntoResponse {
    let snapshot = admin.mirror.load_full();
    let Some(svc) = snapshot.service(&name.to_ascii_lowercase()) else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such service"})),
        );
    };
    let instances: Vec<Value> = svc
        .instances
        .values()
        .map(|i| {
            let ports: serde_json::Map<String, Value> =
                i.ports.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            json!({
                "id": i.id.as_str(),
                "address": i.address.to_string(),
                "port": i.port,
                "ports": ports,
                "weight": i.weight,
                "priority": i.priority,
                "health": i.health.as_str(),
                "locality": i.locality.as_deref(),
                "source": admin.source_prefix(i.source),
                "key": admin.key_of(&svc.name, i),
                "tags": i.tags,
            })
        })
        .collect();
    (
        StatusCode::OK,
        Json(json!({"name": svc.name.as_str(), "instances": instances})),
    )
}

async fn changes(State(admin): State<Admin>) -> impl IntoResponse {
    let rows: Vec<Value> = admin
        .mirror
        .recent_changes()
        .into_iter()
        .map(|c| {
            json!({
                "time": rfc3339(c.time),
                "revision": c.revision,
                "kind": c.kind.as_str(),
                "service": c.service.as_ref().map(|s| s.as_str()),
                "instance": c.instance.as_ref().map(|i| i.as_str()).or(c.path.as_deref()),
                "source": c.source.and_then(|s| admin.source_prefix(s)),
            })
        })
        .collect();
    Json(json!({ "changes": rows }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_parameters() {
        let p = Page::parse(Some("offset=100&limit=20&q=we%62+x%zz"));
        assert_eq!((p.offset, p.limit), (100, Some(20)));
        assert_eq!(p.q, "web x%zz");
        let p = Page::parse(Some("offset=-1&limit=x&q=%"));
        assert_eq!((p.offset, p.limit, p.q.as_str()), (0, None, "%"));
        let p = Page::parse(None);
        assert_eq!((p.offset, p.limit, p.q.as_str()), (0, None, ""));
    }
}
