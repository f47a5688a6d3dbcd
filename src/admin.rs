//! The admin HTTP listener: `/metrics` (Prometheus text), `/health` (liveness) and `/ready`
//! (readiness: 200 once the mirror was filled from etcd, 503 before).

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

mod api;

use crate::cache::Mirror;
use crate::metrics::Metrics;
use crate::registry::{ErrorKind, Status};

/// What the endpoints read.
#[derive(Clone)]
pub struct Admin {
    pub mirror: Arc<Mirror>,
    pub status: Arc<Status>,
    pub metrics: Arc<Metrics>,
    pub serve_warning: bool,
    pub started: Instant,
    /// The status page and its JSON API are served (`admin_ui`).
    pub ui: bool,
    /// What the status page shows of the configuration (a reload replaces the sources).
    pub sources: Arc<arc_swap::ArcSwap<Vec<crate::registry::Source>>>,
    pub endpoints: Arc<[String]>,
}

impl Admin {
    pub fn router(self) -> Router {
        let router = Router::new()
            .route("/metrics", get(metrics))
            .route("/health", get(health))
            .route("/ready", get(ready));
        let router = if self.ui { api::routes(router) } else { router };
        router.with_state(self)
    }

    /// Serves on `listener` until `shutdown` is cancelled: HTTP/1.1, each connection closed if
    /// it does not send a request head within `header_timeout`, at most `max_connections` at
    /// once (past it, a new connection is closed at once, logged once). axum's own `serve` has
    /// neither limit, hence hyper's connection builder here.
    pub async fn serve(
        self,
        listener: TcpListener,
        header_timeout: std::time::Duration,
        max_connections: usize,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        use hyper_util::rt::{TokioIo, TokioTimer};
        use hyper_util::service::TowerToHyperService;
        let router = self.router();
        let permits = Arc::new(tokio::sync::Semaphore::new(max_connections));
        let mut connections = tokio::task::JoinSet::new();
        let mut full_logged = false;
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
                // Reap finished connections as they end.
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, say: back off instead of spinning.
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                if !full_logged {
                    full_logged = true;
                    tracing::warn!(
                        max_connections,
                        "admin connection limit reached; closing new ones (logged once)"
                    );
                }
                continue;
            };
            let service = TowerToHyperService::new(router.clone());
            let shutdown = shutdown.clone();
            connections.spawn(async move {
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .serve_connection(TokioIo::new(stream), service);
                let mut conn = std::pin::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = shutdown.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
                drop(permit);
            });
        }
        // In-flight requests finish (the caller bounds how long it waits).
        while connections.join_next().await.is_some() {}
        Ok(())
    }

    /// Readiness as JSON, and whether it counts as ready.
    ///
    /// Ready means the mirror holds data: filled from etcd at least once, or from the snapshot
    /// file. A mirror that is stale because etcd is unreachable still counts as ready: serving
    /// the last known state is the point of ruddr, and taking every replica out of rotation
    /// during an etcd outage would turn it into the outage it is meant to absorb. Past
    /// `max_stale`, registry names get SERVFAIL, and the process is not ready any more.
    pub fn readiness(&self) -> (bool, serde_json::Value) {
        let snapshot = self.mirror.load();
        let synced = self.status.is_synced();
        let from_snapshot = self.status.is_from_snapshot();
        let connected = self.status.is_connected();
        let stale_since = self.status.stale_since();
        let too_stale = self.status.freshness() == crate::cache::Freshness::Expired;
        let ready = self.status.has_data() && !too_stale;
        let reason_buf: String;
        let problem = self.status.problem();
        let reason = if !self.status.has_data() {
            match &problem {
                Some(p) => {
                    reason_buf = format!(
                        "waiting for the first sync from etcd; {}",
                        p.kind.describe()
                    );
                    reason_buf.as_str()
                }
                None => "waiting for the first sync from etcd",
            }
        } else if too_stale {
            "data older than max_stale; registry names answer SERVFAIL"
        } else if from_snapshot {
            "serving the snapshot file; etcd not reached yet"
        } else if !connected {
            match &problem {
                Some(p) if p.kind != ErrorKind::Unreachable => {
                    reason_buf = format!("serving the last known state; {}", p.kind.describe());
                    reason_buf.as_str()
                }
                _ => "serving the last known state; etcd unreachable",
            }
        } else {
            "in sync with etcd"
        };
        let body = json!({
            "status": if ready { "ready" } else { "not ready" },
            "reason": reason,
            "synced": synced,
            "from_snapshot": from_snapshot,
            "connected": connected,
            "revision": snapshot.revision,
            "services": snapshot.services.len(),
            "instances": snapshot.instance_count(),
            "stale_since": stale_since.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
            "stale_seconds": self.status.stale_for().filter(|_| !self.status.is_age_unknown()).map(|d| d.as_secs_f64()),
            "stale_age_unknown": self.status.is_age_unknown(),
            "confirmed_seconds_ago": self.status.confirmed_age().map(|d| d.as_secs_f64()),
            "error": problem.map(|p| json!({"kind": p.kind.as_str(), "message": p.message})),
        });
        (ready, body)
    }
}

async fn metrics(State(admin): State<Admin>) -> impl IntoResponse {
    let snapshot = admin.mirror.load_full();
    let status = &admin.status;
    let problem = status.problem().map(|p| p.kind);
    let failing = crate::registry::ErrorKind::ALL.map(|k| (k.as_str(), problem == Some(k)));
    let registry = crate::metrics::RegistryState {
        connected: status.is_connected(),
        failing: &failing,
        confirmed_age: status.confirmed_age(),
        stale_for: status.stale_for(),
    };
    let text = admin
        .metrics
        .render(&snapshot, &registry, admin.serve_warning);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}

async fn health(State(admin): State<Admin>) -> impl IntoResponse {
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": admin.started.elapsed().as_secs_f64(),
        "time": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
    }))
}

async fn ready(State(admin): State<Admin>) -> impl IntoResponse {
    let (ok, body) = admin.readiness();
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}
