//! The xDS server: `envoy.service.discovery.v3.AggregatedDiscoveryService`, state of the world,
//! which is what gRPC clients speak to resolve `xds:///<service>`. Fed by the same mirror as
//! DNS, with the same rules for which instances are served ([`resources`]).
//!
//! One task per stream. It reads the client's requests and wakes on every mirror change (a
//! `watch`: a burst of changes is one wake-up, the latest snapshot wins), and sends a type's
//! resources when the client asks for a new set of names or when what it holds changed. Each
//! stream remembers, per type, the snapshot change count it last built at: a change to other
//! services costs it one stamp check per name ([`crate::cache::Snapshot::unchanged_since`]).
//! A slow client holds up only its own task; its next send carries the latest state.

pub mod resources;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use futures_util::Stream;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::cache::{Mirror, Snapshot};
use crate::config::XdsConfig;
use crate::dns::zone::registry::Zone;
use crate::metrics::Metrics;
use crate::registry::Status as RegistryStatus;
use resources::{Target, CLUSTER, ENDPOINTS, LISTENER, ROUTE};

type Responses = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type DeltaResponses = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

/// The ADS service.
pub struct Xds {
    mirror: Arc<Mirror>,
    status: Arc<RegistryStatus>,
    metrics: Arc<Metrics>,
    zone: Zone,
    /// The discovery zone without its trailing dot (`svc.internal`).
    zone_name: String,
    streams: Arc<Semaphore>,
    max_resources: usize,
    shutdown: CancellationToken,
    streams_logged: AtomicBool,
    resources_logged: Arc<AtomicBool>,
}

impl Xds {
    pub fn new(
        cfg: &XdsConfig,
        zone: Zone,
        mirror: Arc<Mirror>,
        status: Arc<RegistryStatus>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Self {
        let zone_name = zone
            .origin
            .to_ascii()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        Self {
            mirror,
            status,
            metrics,
            zone,
            zone_name,
            streams: Arc::new(Semaphore::new(cfg.max_streams)),
            max_resources: cfg.max_resources_per_stream,
            shutdown,
            streams_logged: AtomicBool::new(false),
            resources_logged: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// Binds `cfg.listen` and serves ADS on it until `shutdown`; returns the bound address and the
/// server's task.
pub async fn serve(
    cfg: &XdsConfig,
    xds: Xds,
) -> anyhow::Result<Option<(std::net::SocketAddr, tokio::task::JoinHandle<()>)>> {
    let Some(addr) = cfg.listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the xDS listener {addr}"))?;
    let local = listener.local_addr()?;
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(cfg.keepalive_interval))
        .http2_keepalive_timeout(Some(cfg.keepalive_timeout));
    if let (Some(cert), Some(key)) = (&cfg.tls_cert_file, &cfg.tls_key_file) {
        let read = |p: &std::path::PathBuf| {
            std::fs::read(p).with_context(|| format!("reading {}", p.display()))
        };
        let mut tls = tonic::transport::ServerTlsConfig::new().identity(
            tonic::transport::Identity::from_pem(read(cert)?, read(key)?),
        );
        if let Some(ca) = &cfg.client_ca_file {
            tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?));
        }
        builder = builder
            .tls_config(tls)
            .context("the xDS TLS certificate and key")?;
    }
    let shutdown = xds.shutdown.clone();
    let service = AggregatedDiscoveryServiceServer::new(xds)
        .max_decoding_message_size(cfg.max_message_bytes)
        .max_encoding_message_size(cfg.max_message_bytes);
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let router = builder.add_service(service);
    let task = tokio::spawn(async move {
        let serve = router.serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned());
        if let Err(error) = serve.await {
            warn!(%error, "the xDS server failed");
        }
    });
    info!(addr = %local, tls = cfg.tls_cert_file.is_some(), "xds listening");
    Ok(Some((local, task)))
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Xds {
    type StreamAggregatedResourcesStream = Responses;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Responses>, Status> {
        let Ok(permit) = self.streams.clone().try_acquire_owned() else {
            self.metrics.xds_limited("max_streams");
            if !self.streams_logged.swap(true, Ordering::Relaxed) {
                warn!("xds.max_streams streams are open: refusing new ones (logged once; see ruddr_xds_limited_total)");
            }
            return Err(Status::resource_exhausted("too many xDS streams"));
        };
        let peer = request.remote_addr();
        let inbound = request.into_inner();
        // One response in flight at most: a slow client waits on its own task, whose next
        // send is the latest state.
        let (tx, rx) = mpsc::channel(1);
        let stream = StreamTask {
            mirror: self.mirror.clone(),
            status: self.status.clone(),
            metrics: self.metrics.clone(),
            zone: self.zone.clone(),
            zone_name: self.zone_name.clone(),
            max_resources: self.max_resources,
            resources_logged: self.resources_logged.clone(),
            shutdown: self.shutdown.clone(),
        };
        tokio::spawn(stream.run(inbound, tx, permit, peer));
        let out = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(out)))
    }

    type DeltaAggregatedResourcesStream = DeltaResponses;

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaResponses>, Status> {
        Err(Status::unimplemented(
            "incremental xDS is not served; use state of the world",
        ))
    }
}

/// What a stream holds of one resource type.
#[derive(Default)]
struct TypeState {
    /// The names the client asked for last.
    names: BTreeSet<String>,
    /// The nonce of the last response of this type.
    nonce: String,
    /// What was sent last (`None`: nothing yet), to send only what changed.
    sent: Option<Vec<Any>>,
    /// The snapshot change count the last build saw.
    built_at: u64,
    /// The client asked for something not sent yet.
    pending: bool,
}

/// The parts of [`Xds`] a stream's task needs.
struct StreamTask {
    mirror: Arc<Mirror>,
    status: Arc<RegistryStatus>,
    metrics: Arc<Metrics>,
    zone: Zone,
    zone_name: String,
    max_resources: usize,
    resources_logged: Arc<AtomicBool>,
    shutdown: CancellationToken,
}

impl StreamTask {
    async fn run(
        self,
        mut inbound: Streaming<DiscoveryRequest>,
        tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
        _permit: OwnedSemaphorePermit,
        peer: Option<std::net::SocketAddr>,
    ) {
        let _open = self.metrics.xds_stream_opened();
        let mut changes = self.mirror.subscribe();
        changes.borrow_and_update();
        let mut types: HashMap<&'static str, TypeState> = HashMap::new();
        // Names whose Listener and Cluster were sent: they stay while the stream lasts, with an
        // empty assignment once their service is gone.
        let mut known: HashSet<String> = HashSet::new();
        let mut node = String::new();
        let mut local: Option<String> = None;
        let mut nacks_logged = false;
        let mut seq = 0u64;
        loop {
            let mut woke_at: Option<Instant> = None;
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                message = inbound.message() => match message {
                    Ok(Some(request)) => {
                        if let Some(n) = &request.node {
                            if node.is_empty() {
                                node = n.id.clone();
                                local = n.locality.as_ref()
                                    .map(|l| l.zone.to_ascii_lowercase())
                                    .filter(|z| !z.is_empty());
                                debug!(node = %node, ?local, ?peer, "xds stream");
                            }
                        }
                        let Some(type_url) = resources::TYPES.iter().copied().find(|t| *t == request.type_url) else {
                            debug!(type_url = %request.type_url, "xds: a type ruddr does not serve");
                            continue;
                        };
                        let state = types.entry(type_url).or_default();
                        if !request.response_nonce.is_empty() && request.response_nonce != state.nonce {
                            // An answer to an older response: a newer one is on its way.
                            continue;
                        }
                        if let Some(error) = &request.error_detail {
                            self.metrics.xds_nack(type_url);
                            if !nacks_logged {
                                nacks_logged = true;
                                warn!(node = %node, type_url, code = error.code, detail = %error.message,
                                    "an xDS client rejected an update (logged once per stream; see ruddr_xds_nacks_total)");
                            }
                        }
                        let names: BTreeSet<String> = request.resource_names.into_iter().collect();
                        if names != state.names {
                            state.names = names;
                            state.pending = true;
                        }
                        let total: usize = types.values().map(|t| t.names.len()).sum();
                        if total > self.max_resources {
                            self.metrics.xds_limited("max_resources_per_stream");
                            if !self.resources_logged.swap(true, Ordering::Relaxed) {
                                warn!(node = %node, limit = self.max_resources,
                                    "an xDS stream asks for more than xds.max_resources_per_stream names: the rest are ignored (logged once; see ruddr_xds_limited_total)");
                            }
                            let state = types.get_mut(type_url).unwrap();
                            let keep = self.max_resources.saturating_sub(total - state.names.len());
                            state.names = std::mem::take(&mut state.names).into_iter().take(keep).collect();
                        }
                    }
                    Ok(None) | Err(_) => return,
                },
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    woke_at = Some(changes.borrow_and_update().at);
                }
            }
            // Nothing to say before the first data (from etcd or the snapshot file): never an
            // empty assignment because etcd is away.
            if self.status.freshness() == crate::cache::Freshness::Empty {
                continue;
            }
            let snapshot = self.mirror.load_full();
            for type_url in resources::TYPES {
                let Some(state) = types.get_mut(type_url) else {
                    continue;
                };
                if state.names.is_empty() && !state.pending {
                    continue;
                }
                let unchanged = !state.pending
                    && state.sent.is_some()
                    && state.names.iter().all(|n| {
                        Target::parse(n, &self.zone_name)
                            .is_none_or(|t| snapshot.unchanged_since(&t.service, state.built_at))
                    });
                state.built_at = snapshot.changes;
                if unchanged {
                    continue;
                }
                let built = self.build(
                    type_url,
                    &state.names,
                    &snapshot,
                    &mut known,
                    local.as_deref(),
                );
                if !state.pending && state.sent.as_ref() == Some(&built) {
                    continue;
                }
                state.pending = false;
                seq += 1;
                state.nonce = seq.to_string();
                let response = DiscoveryResponse {
                    version_info: format!("{}.{seq}", snapshot.revision),
                    resources: built.clone(),
                    type_url: type_url.to_string(),
                    nonce: state.nonce.clone(),
                    ..Default::default()
                };
                state.sent = Some(built);
                if tx.send(Ok(response)).await.is_err() {
                    return;
                }
                self.metrics
                    .xds_push(type_url, woke_at.map(|t| t.elapsed()));
            }
        }
    }

    /// The resources of `type_url` for `names` in `snapshot`.
    fn build(
        &self,
        type_url: &str,
        names: &BTreeSet<String>,
        snapshot: &Snapshot,
        known: &mut HashSet<String>,
        local: Option<&str>,
    ) -> Vec<Any> {
        let mut out = Vec::new();
        for name in names {
            let Some(target) = Target::parse(name, &self.zone_name) else {
                continue;
            };
            let svc = snapshot.service(&target.service).map(|s| &**s);
            if svc.is_none() && !known.contains(name) {
                continue;
            }
            let any = match type_url {
                LISTENER => {
                    known.insert(name.clone());
                    resources::any(resources::listener(name))
                }
                ROUTE => resources::any(resources::route(name)),
                CLUSTER => {
                    known.insert(name.clone());
                    resources::any(resources::cluster(name))
                }
                ENDPOINTS => {
                    let (cla, left) = resources::assignment(&self.zone, name, &target, svc, local);
                    self.metrics
                        .xds_left_out(left.host_name, left.no_port, left.duplicate);
                    resources::any(cla)
                }
                _ => continue,
            };
            out.push(any);
        }
        out
    }
}
