//! Encrypted DNS: DNS over TLS (RFC 7858) and DNS over HTTPS (RFC 8484), on the same answer
//! core, writer, connection table and limits as TCP.
//!
//! One certificate pair serves both; [`Certs`] holds the live TLS configurations (swapped
//! whole on reload: connections already open keep theirs) and the session cache and ticket
//! keys they share, so a session resumes across a reload.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio_rustls::rustls::{self, pki_types, server::WebPkiClientVerifier, ServerConfig};
use tracing::{debug, warn};

use super::connections::Slot;
use super::tcp::Stream;
use super::{decode, format_error, Decoded, Transport};
use crate::config::DnsConfig;
use crate::dns::observe::Served;
use crate::dnstap;
use crate::metrics::Proto;

/// The DoH path (RFC 8484's example, what clients use by default).
pub const DOH_PATH: &str = "/dns-query";
/// The largest DNS message.
const MAX_MESSAGE: usize = 65_535;
/// The largest oversized body read (and dropped) before a 413, so the client sees the answer.
const DRAIN_MAX: usize = 1 << 20;

/// The certificate files, as configured.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

impl CertFiles {
    pub fn of(cfg: &DnsConfig) -> Option<Self> {
        Some(Self {
            cert: cfg.tls_cert_file.clone()?,
            key: cfg.tls_key_file.clone()?,
            client_ca: cfg.tls_client_ca_file.clone(),
        })
    }
}

/// The live TLS configurations for DoT (ALPN `dot`) and DoH (`h2`, `http/1.1`).
pub struct Certs {
    files: CertFiles,
    dot: ArcSwap<ServerConfig>,
    doh: ArcSwap<ServerConfig>,
    sessions: Arc<dyn rustls::server::StoresServerSessions>,
    tickets: Arc<dyn rustls::server::ProducesTickets>,
}

/// TLS sessions kept for resumption (stateful); tickets resume beyond it.
const SESSION_CACHE: usize = 4096;

impl Certs {
    /// Loads the pair (and CA); a clear error naming the file that is missing or bad.
    pub fn load(files: CertFiles) -> anyhow::Result<Self> {
        let sessions: Arc<dyn rustls::server::StoresServerSessions> =
            rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
        let tickets = rustls::crypto::ring::Ticketer::new()
            .map_err(|e| anyhow::anyhow!("TLS session tickets: {e}"))?;
        let (dot, doh) = configs(&files, &sessions, &tickets)?;
        Ok(Self {
            files,
            dot: ArcSwap::from(dot),
            doh: ArcSwap::from(doh),
            sessions,
            tickets,
        })
    }

    /// Reads the files again; on any error the old pair stays (and the error is returned).
    pub fn reload(&self) -> anyhow::Result<()> {
        let (dot, doh) = configs(&self.files, &self.sessions, &self.tickets)?;
        self.dot.store(dot);
        self.doh.store(doh);
        Ok(())
    }
}

/// The DoT (ALPN `dot`) and DoH (`h2`, `http/1.1`) configurations of `files` (read once),
/// sharing the session cache and ticket keys.
fn configs(
    files: &CertFiles,
    sessions: &Arc<dyn rustls::server::StoresServerSessions>,
    tickets: &Arc<dyn rustls::server::ProducesTickets>,
) -> anyhow::Result<(Arc<ServerConfig>, Arc<ServerConfig>)> {
    let mut dot = server_config(files, sessions, tickets)?;
    let mut doh = dot.clone();
    dot.alpn_protocols = vec![b"dot".to_vec()];
    doh.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(dot), Arc::new(doh)))
}

/// Checks that the files make a usable configuration (for `check-config`).
pub fn check(files: &CertFiles) -> anyhow::Result<()> {
    Certs::load(files.clone()).map(|_| ())
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {what} {}: {e}", path.display()))
}

fn server_config(
    files: &CertFiles,
    sessions: &Arc<dyn rustls::server::StoresServerSessions>,
    tickets: &Arc<dyn rustls::server::ProducesTickets>,
) -> anyhow::Result<ServerConfig> {
    use pki_types::pem::PemObject;
    use pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert_pem = read(&files.cert, "dns.tls_cert_file")?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("dns.tls_cert_file {}: {e}", files.cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!(
            "dns.tls_cert_file {}: no certificate in it",
            files.cert.display()
        );
    }
    let key_pem = read(&files.key, "dns.tls_key_file")?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| anyhow::anyhow!("dns.tls_key_file {}: {e}", files.key.display()))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("TLS versions: {e}"))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let pem = read(ca, "dns.tls_client_ca_file")?;
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&pem) {
                let c =
                    c.map_err(|e| anyhow::anyhow!("dns.tls_client_ca_file {}: {e}", ca.display()))?;
                roots
                    .add(c)
                    .map_err(|e| anyhow::anyhow!("dns.tls_client_ca_file {}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| anyhow::anyhow!("dns.tls_client_ca_file {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut cfg = builder.with_single_cert(certs, key).map_err(|e| {
        anyhow::anyhow!(
            "dns.tls_cert_file {} and dns.tls_key_file {}: {e}",
            files.cert.display(),
            files.key.display()
        )
    })?;
    cfg.session_storage = sessions.clone();
    cfg.ticketer = tickets.clone();
    Ok(cfg)
}

/// Which encrypted protocol a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encrypted {
    Dot,
    Doh,
}

impl Transport {
    /// Completes the TLS handshake of an admitted connection (within `tls_handshake_timeout`,
    /// or while the slot is not reclaimed), then serves it as DoT or DoH.
    pub(super) async fn encrypted(
        self: &Arc<Self>,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
        slot: &Slot,
        kind: Encrypted,
        certs: &Certs,
    ) {
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().ok();
        let config = match kind {
            Encrypted::Dot => certs.dot.load_full(),
            Encrypted::Doh => certs.doh.load_full(),
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let handshake =
            tokio::time::timeout(self.cfg.tls_handshake_timeout, acceptor.accept(stream));
        let tls = tokio::select! {
            done = handshake => match done {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    debug!(%peer, %error, "TLS handshake failed");
                    self.metrics.tls_handshake_failures.inc();
                    return;
                }
                Err(_) => {
                    debug!(%peer, "TLS handshake timed out");
                    self.metrics.tls_handshake_failures.inc();
                    return;
                }
            },
            _ = slot.closed.cancelled() => return,
            _ = self.shutdown.cancelled() => return,
        };
        slot.touch(&self.connections);
        match kind {
            Encrypted::Dot => {
                self.connection(tls, peer, local, slot, Stream::Tls).await;
            }
            Encrypted::Doh => {
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
                self.https(tls, peer, local, slot, h2).await;
            }
        }
    }

    /// Serves one DoH connection (HTTP/2 when ALPN chose it, else HTTP/1.1) until it ends,
    /// idles past `tcp_idle_timeout`, outlives `tcp_session_timeout`, or its slot is reclaimed.
    async fn https<S>(
        self: &Arc<Self>,
        tls: S,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        slot: &Slot,
        h2: bool,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let activity = Arc::new(Activity {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        });
        let this = self.clone();
        let act = activity.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let (this, act) = (this.clone(), act.clone());
            async move {
                act.begin();
                let response = this.doh_request(req, peer, local).await;
                act.end();
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let builder = self.http_builder();
        let io = TokioIo::new(tls);
        let conn = if h2 {
            builder
                .http2_only()
                .serve_connection(io, service)
                .into_owned()
        } else {
            builder
                .http1_only()
                .serve_connection(io, service)
                .into_owned()
        };
        let mut conn = std::pin::pin!(conn);
        let session = tokio::time::sleep(self.cfg.tcp_session_timeout);
        tokio::pin!(session);
        let idle = self.cfg.tcp_idle_timeout;
        let mut check = tokio::time::interval((idle / 2).max(Duration::from_millis(10)));
        check.tick().await;
        let mut closing = false;
        loop {
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = &mut session, if !closing => closing = true,
                _ = slot.closed.cancelled(), if !closing => closing = true,
                _ = self.shutdown.cancelled(), if !closing => closing = true,
                _ = check.tick(), if !closing => {
                    let idle_for = activity.idle_for();
                    if idle_for < idle / 2 {
                        // Active lately: not the one to close when the table is full.
                        slot.touch(&self.connections);
                    }
                    closing = idle_for >= idle;
                }
            }
            if closing {
                // In-flight requests finish; then the connection closes (bounded by the drain).
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(self.cfg.tcp_idle_timeout, conn.as_mut()).await;
                return;
            }
        }
    }

    fn http_builder(&self) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
        let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        b.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.cfg.https_request_timeout)
            .max_buf_size(self.cfg.https_max_header_bytes.max(8192) + MAX_MESSAGE)
            .keep_alive(true);
        b.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.cfg.https_max_streams_per_connection)
            .max_header_list_size(self.cfg.https_max_header_bytes as u32)
            .max_pending_accept_reset_streams(self.cfg.https_max_pending_resets)
            .max_local_error_reset_streams(Some(self.cfg.https_max_pending_resets * 10))
            .keep_alive_interval(Some(self.cfg.tcp_idle_timeout))
            .keep_alive_timeout(self.cfg.tcp_idle_timeout);
        b
    }

    /// One DoH request: GET with `?dns=` or POST of `application/dns-message` to
    /// [`DOH_PATH`]; the answer as `application/dns-message` with `Cache-Control`.
    async fn doh_request(
        self: &Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        local: Option<SocketAddr>,
    ) -> Response<Full<Bytes>> {
        if req.uri().path() != DOH_PATH {
            return status(StatusCode::NOT_FOUND, "not found");
        }
        let query = match *req.method() {
            Method::GET => {
                let Some(b64) = req
                    .uri()
                    .query()
                    .unwrap_or("")
                    .split('&')
                    .find_map(|p| p.strip_prefix("dns="))
                else {
                    return status(StatusCode::BAD_REQUEST, "no dns parameter");
                };
                if b64.len() > MAX_MESSAGE.div_ceil(3) * 4 {
                    return status(StatusCode::URI_TOO_LONG, "dns parameter too long");
                }
                match base64url(b64.as_bytes()) {
                    Some(q) => Bytes::from(q),
                    None => return status(StatusCode::BAD_REQUEST, "bad base64url in dns"),
                }
            }
            Method::POST => {
                let ok_type = req
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.split(';').next())
                    .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/dns-message"));
                if !ok_type {
                    return self
                        .refuse(
                            req,
                            StatusCode::UNSUPPORTED_MEDIA_TYPE,
                            "content type must be application/dns-message",
                        )
                        .await;
                }
                let limit = self.cfg.https_max_body_bytes;
                if declared_length(&req).is_some_and(|n| n > limit as u64) {
                    return self
                        .refuse(req, StatusCode::PAYLOAD_TOO_LARGE, "body too large")
                        .await;
                }
                let body = Limited::new(req.into_body(), limit).collect();
                match tokio::time::timeout(self.cfg.https_request_timeout, body).await {
                    Ok(Ok(b)) => b.to_bytes(),
                    Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
                        return status(StatusCode::PAYLOAD_TOO_LARGE, "body too large")
                    }
                    Ok(Err(_)) => return status(StatusCode::BAD_REQUEST, "body not read"),
                    Err(_) => return status(StatusCode::REQUEST_TIMEOUT, "body too slow"),
                }
            }
            _ => {
                let mut r = self
                    .refuse(req, StatusCode::METHOD_NOT_ALLOWED, "GET or POST")
                    .await;
                r.headers_mut()
                    .insert(header::ALLOW, header::HeaderValue::from_static("GET, POST"));
                return r;
            }
        };
        if query.len() < 12 {
            return status(StatusCode::BAD_REQUEST, "not a DNS message");
        }
        let started = Instant::now();
        let mut out = Vec::new();
        let live = self.live();
        let served = match decode(&query, peer, hickory_server::net::xfer::Protocol::Tcp) {
            Decoded::Drop => return status(StatusCode::BAD_REQUEST, "not a DNS query"),
            Decoded::Malformed(header) => {
                format_error(&header, &mut out);
                Served::unzoned(started)
            }
            Decoded::Request(request) => {
                match live.handler.answer_now(&request, &mut out, Proto::doh) {
                    Ok(served) => served,
                    Err(deferred) => {
                        live.handler
                            .answer_later(&request, deferred, &mut out)
                            .await
                    }
                }
            }
        };
        live.observer
            .served(&query, &out, peer, local, dnstap::Transport::Doh, &served);
        let cache = cache_control(&out);
        let mut r = Response::new(Full::new(Bytes::from(out)));
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/dns-message"),
        );
        if let Ok(v) = header::HeaderValue::from_str(&cache) {
            h.insert(header::CACHE_CONTROL, v);
        }
        r
    }
}

impl Transport {
    /// An error answer to a request whose body is not wanted. A client still sending its body
    /// may miss an early answer (HTTP/1.1 closes, an HTTP/2 stream is reset under it), so a body
    /// of moderate size is read and dropped first, bounded in size and time; a larger declared
    /// one is not waited for.
    async fn refuse(
        &self,
        req: Request<Incoming>,
        code: StatusCode,
        text: &'static str,
    ) -> Response<Full<Bytes>> {
        if declared_length(&req).is_none_or(|n| n <= DRAIN_MAX as u64) {
            let drain = Limited::new(req.into_body(), DRAIN_MAX).collect();
            let _ = tokio::time::timeout(self.cfg.https_request_timeout, drain).await;
        }
        status(code, text)
    }
}

/// The body length a request declares (`Content-Length`), if any.
fn declared_length(req: &Request<Incoming>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// When a DoH connection last did something and whether a request is in flight.
struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
    fn begin(&self) {
        self.in_flight.fetch_add(1, Relaxed);
        self.last_ms.store(self.now_ms(), Relaxed);
    }
    fn end(&self) {
        self.in_flight.fetch_sub(1, Relaxed);
        self.last_ms.store(self.now_ms(), Relaxed);
    }
    fn is_busy(&self) -> bool {
        self.in_flight.load(Relaxed) > 0
    }
    fn idle_for(&self) -> Duration {
        if self.is_busy() {
            return Duration::ZERO;
        }
        Duration::from_millis(self.now_ms().saturating_sub(self.last_ms.load(Relaxed)))
    }
}

fn status(code: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = code;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

/// RFC 8484 5.1: the smallest TTL of the answer; a negative answer's SOA negative TTL (the
/// smaller of its TTL and MINIMUM); errors are not to be stored.
fn cache_control(response: &[u8]) -> String {
    use hickory_proto::op::{Message, ResponseCode};
    use hickory_proto::rr::RData;
    let Ok(m) = Message::from_vec(response) else {
        return "no-store".into();
    };
    let code = m.metadata.response_code;
    if !matches!(code, ResponseCode::NoError | ResponseCode::NXDomain) || m.metadata.truncation {
        return "no-store".into();
    }
    let answers = m.answers.iter().map(|r| r.ttl).min();
    let ttl = match answers {
        Some(t) => Some(t),
        None => m.authorities.iter().find_map(|r| match &r.data {
            RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
            _ => None,
        }),
    };
    match ttl {
        Some(t) => format!("max-age={t}"),
        None => "no-store".into(),
    }
}

/// base64url without padding (RFC 8484 4.1); padding is tolerated. `None` when invalid.
fn base64url(s: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine.decode(s).ok()
}

/// Logs a certificate reload's outcome.
pub fn reload(certs: &Certs) {
    match certs.reload() {
        Ok(()) => tracing::info!(cert = %certs.files.cert.display(), "TLS certificate reloaded"),
        Err(error) => {
            warn!(%error, "TLS certificate reload failed; keeping the certificate in use")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_without_and_with_padding() {
        assert_eq!(base64url(b"AAABAAAB").unwrap(), [0, 0, 1, 0, 0, 1]);
        assert_eq!(base64url(b"-_8").unwrap(), [0xfb, 0xff]);
        assert_eq!(base64url(b"-_8=").unwrap(), [0xfb, 0xff]);
        assert!(
            base64url(b"a+b/").is_none(),
            "standard alphabet is not base64url"
        );
        assert!(base64url(b"A").is_none());
    }
}
