//! The xDS server: `envoy.service.discovery.v3.AggregatedDiscoveryService`, state of the world,
//! which is what gRPC clients speak to resolve `xds:///<service>`. Fed by the same mirror as
//! DNS, with the same rules for which instances are served ([`resources`]).
//!
//! One task per stream. It reads the client's requests and sends a type's resources when the
//! client asks for a new set of names or when what they hold changed. One dispatcher task
//! follows the mirror (a `watch`: a burst of changes is one wake-up, the latest snapshot wins)
//! and wakes only the streams subscribed to a service that changed, found by its change stamp
//! ([`crate::cache::Snapshot::unchanged_since`]): waking every stream on every change cost
//! half of DNS's throughput at 1,000 streams and 100 changes a second. A slow client holds up
//! only its own task; its next send carries the latest state.

pub mod resources;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;
use futures_util::Stream;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::cache::{Mirror, Snapshot};
use crate::config::XdsConfig;
use crate::dns::zone::registry::Zone;
use crate::metrics::Metrics;
use crate::registry::Status as RegistryStatus;
use resources::{Target, CLUSTER, ENDPOINTS, LISTENER, ROUTE};

/// How often a stream that has nothing to send before the first data looks again.
const NO_DATA_RETRY: Duration = Duration::from_millis(100);

type Responses = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type DeltaResponses = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

/// The ADS service (tonic holds it; every stream's task shares its [`Inner`]).
#[derive(Clone)]
pub struct Xds(Arc<Inner>);

/// What the service and its streams' tasks share.
struct Inner {
    mirror: Arc<Mirror>,
    status: Arc<RegistryStatus>,
    metrics: Arc<Metrics>,
    /// Which instances are served and how locality shapes them (a reload replaces it).
    zone: arc_swap::ArcSwap<Zone>,
    /// The discovery zone without its trailing dot (`svc.internal`).
    zone_name: String,
    streams: Arc<Semaphore>,
    max_resources: usize,
    shutdown: CancellationToken,
    streams_logged: AtomicBool,
    resources_logged: AtomicBool,
    /// Service -> the streams subscribed to it (by id) and how to wake them.
    subscribers: Mutex<HashMap<String, HashMap<u64, Arc<Notify>>>>,
    next_stream: AtomicU64,
    /// When the change the dispatcher last passed on was applied (for the push latency).
    last_change: Mutex<Option<Instant>>,
}

impl Xds {
    /// Selects instances as `zone` says from the next assignment sent on (a configuration
    /// reload: served health, locality).
    pub fn set_zone(&self, zone: Zone) {
        self.0.zone.store(Arc::new(zone));
    }

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
        Self(Arc::new(Inner {
            mirror,
            status,
            metrics,
            zone: arc_swap::ArcSwap::from_pointee(zone),
            zone_name,
            streams: Arc::new(Semaphore::new(cfg.max_streams)),
            max_resources: cfg.max_resources_per_stream,
            shutdown,
            streams_logged: AtomicBool::new(false),
            resources_logged: AtomicBool::new(false),
            subscribers: Mutex::default(),
            next_stream: AtomicU64::new(0),
            last_change: Mutex::default(),
        }))
    }
}

/// Serves ADS on `listener` (bound to `cfg.listen`, or inherited) until `shutdown`; returns
/// its address and the server's task.
pub fn serve(
    cfg: &XdsConfig,
    xds: Xds,
    listener: Option<tokio::net::TcpListener>,
) -> anyhow::Result<Option<(std::net::SocketAddr, tokio::task::JoinHandle<()>)>> {
    let Some(listener) = listener else {
        return Ok(None);
    };
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
    let shutdown = xds.0.shutdown.clone();
    tokio::spawn(xds.0.clone().dispatch());
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
        let inner = &self.0;
        let Ok(permit) = inner.streams.clone().try_acquire_owned() else {
            inner.metrics.xds_limited("max_streams");
            if !inner.streams_logged.swap(true, Ordering::Relaxed) {
                warn!("xds.max_streams streams are open: refusing new ones (logged once; see ruddr_xds_limited_total)");
            }
            return Err(Status::resource_exhausted("too many xDS streams"));
        };
        let peer = request.remote_addr();
        let inbound = request.into_inner();
        // One response in flight at most: a slow client waits on its own task, whose next
        // send is the latest state.
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(inner.clone().run(inbound, tx, permit, peer));
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
    /// The names the client asked for last, with the targets they name (`None`: none).
    names: BTreeMap<String, Option<Target>>,
    /// The nonce of the last response of this type.
    nonce: String,
    /// A hash of each resource last sent, by name, to send only what changed.
    sent: HashMap<String, u64>,
    /// The snapshot change count the last build saw.
    built_at: u64,
    /// The client asked for something not sent yet.
    pending: bool,
}

/// One stream's state.
#[derive(Default)]
struct Session {
    types: HashMap<&'static str, TypeState>,
    /// Names whose Listener and Cluster were sent: they stay while the stream lasts, with an
    /// empty assignment once their service is gone.
    known: HashSet<String>,
    /// The client's node id and locality (`node.locality.zone`, lower case), from its first
    /// request.
    node: String,
    local: Option<String>,
    nacks_logged: bool,
    /// Responses sent: the nonces.
    seq: u64,
    /// The services this stream is registered as subscribed to (see [`Inner::dispatch`]).
    services: HashSet<String>,
}

/// A stream's registration with the dispatcher; dropping it unregisters the stream.
struct Registration {
    inner: Arc<Inner>,
    id: u64,
    wake: Arc<Notify>,
    /// The resource names the stream subscribes to (counted in `ruddr_xds_subscribed_resources`).
    names: std::sync::atomic::AtomicI64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.inner.metrics.xds_subscribed(-*self.names.get_mut());
        let mut subscribers = self.inner.lock_subscribers();
        subscribers.retain(|_, streams| {
            streams.remove(&self.id);
            !streams.is_empty()
        });
    }
}

impl Inner {
    fn lock_subscribers(&self) -> MutexGuard<'_, HashMap<String, HashMap<u64, Arc<Notify>>>> {
        // Every operation on the map leaves it whole: a poisoned lock is still usable.
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Follows the mirror and wakes the streams subscribed to the services each change
    /// touched (a burst of changes is one pass).
    async fn dispatch(self: Arc<Self>) {
        let mut changes = self.mirror.subscribe();
        let mut seen = changes.borrow_and_update().changes;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                changed = changes.changed() => if changed.is_err() { return },
            }
            let change = *changes.borrow_and_update();
            *self.last_change.lock().unwrap_or_else(|e| e.into_inner()) = Some(change.at);
            let snapshot = self.mirror.load();
            for (service, streams) in self.lock_subscribers().iter() {
                if !snapshot.unchanged_since(service, seen) {
                    streams.values().for_each(|wake| wake.notify_one());
                }
            }
            seen = snapshot.changes;
        }
    }

    async fn run(
        self: Arc<Self>,
        mut inbound: Streaming<DiscoveryRequest>,
        tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
        _permit: OwnedSemaphorePermit,
        peer: Option<std::net::SocketAddr>,
    ) {
        let _open = self.metrics.xds_stream_opened();
        let registration = Registration {
            inner: self.clone(),
            id: self.next_stream.fetch_add(1, Ordering::Relaxed),
            wake: Arc::new(Notify::new()),
            names: std::sync::atomic::AtomicI64::new(0),
        };
        let mut session = Session::default();
        loop {
            let mut woke_at: Option<Instant> = None;
            // Before the first data nothing is sent; its arrival may come before the status
            // says so, so look again shortly rather than wait for the next change.
            let no_data = self.status.freshness() == crate::cache::Freshness::Empty;
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                message = inbound.message() => match message {
                    Ok(Some(request)) => {
                        if self.request(&mut session, request, peer) {
                            self.register(&registration, &mut session);
                        }
                    }
                    Ok(None) | Err(_) => return,
                },
                _ = registration.wake.notified() => {
                    woke_at = *self.last_change.lock().unwrap_or_else(|e| e.into_inner());
                }
                _ = tokio::time::sleep(NO_DATA_RETRY), if no_data => {}
            }
            // Nothing to say before the first data (from etcd or the snapshot file): never an
            // empty assignment because etcd is away.
            if self.status.freshness() == crate::cache::Freshness::Empty {
                continue;
            }
            let snapshot = self.mirror.load_full();
            for response in self.due(&mut session, &snapshot) {
                let type_url = response.type_url.clone();
                if tx.send(Ok(response)).await.is_err() {
                    return;
                }
                self.metrics
                    .xds_push(&type_url, woke_at.map(|t| t.elapsed()));
            }
        }
    }

    /// Registers the stream as subscribed to the services its names now hold (of every type).
    fn register(&self, registration: &Registration, s: &mut Session) {
        let names: usize = s.types.values().map(|t| t.names.len()).sum();
        let names = i64::try_from(names).unwrap_or(i64::MAX);
        self.metrics
            .xds_subscribed(names - registration.names.swap(names, Ordering::Relaxed));
        let wanted: HashSet<&str> = s
            .types
            .values()
            .flat_map(|t| t.names.values().flatten())
            .map(|t| t.service.as_str())
            .collect();
        if wanted.len() == s.services.len() && wanted.iter().all(|w| s.services.contains(*w)) {
            return;
        }
        let mut subscribers = self.lock_subscribers();
        for gone in s.services.iter().filter(|x| !wanted.contains(x.as_str())) {
            if let Some(streams) = subscribers.get_mut(gone) {
                streams.remove(&registration.id);
                if streams.is_empty() {
                    subscribers.remove(gone);
                }
            }
        }
        for new in wanted.iter().filter(|w| !s.services.contains(**w)) {
            subscribers
                .entry(new.to_string())
                .or_default()
                .insert(registration.id, registration.wake.clone());
        }
        s.services = wanted.into_iter().map(str::to_string).collect();
    }

    /// Takes in a client's request: its node (the first time), an ACK or NACK, the names it
    /// now wants; whether those changed.
    fn request(
        &self,
        s: &mut Session,
        request: DiscoveryRequest,
        peer: Option<std::net::SocketAddr>,
    ) -> bool {
        if let Some(n) = request.node.as_ref().filter(|_| s.node.is_empty()) {
            s.node = n.id.clone();
            s.local = n
                .locality
                .as_ref()
                .map(|l| l.zone.to_ascii_lowercase())
                .filter(|z| !z.is_empty());
            debug!(node = %s.node, local = ?s.local, ?peer, "xds stream");
        }
        let Some(type_url) = resources::TYPES
            .iter()
            .copied()
            .find(|t| *t == request.type_url)
        else {
            debug!(type_url = %request.type_url, "xds: a type ruddr does not serve");
            return false;
        };
        let state = s.types.entry(type_url).or_default();
        if !request.response_nonce.is_empty() && request.response_nonce != state.nonce {
            // An answer to an older response: a newer one is on its way.
            return false;
        }
        if let Some(error) = &request.error_detail {
            self.metrics.xds_nack(type_url);
            if !s.nacks_logged {
                s.nacks_logged = true;
                warn!(node = %s.node, type_url, code = error.code, detail = %error.message,
                    "an xDS client rejected an update (logged once per stream; see ruddr_xds_nacks_total)");
            }
        }
        let others: usize = s
            .types
            .iter()
            .filter(|(t, _)| **t != type_url)
            .map(|(_, t)| t.names.len())
            .sum();
        let room = self.max_resources.saturating_sub(others);
        if request.resource_names.len() > room {
            self.metrics.xds_limited("max_resources_per_stream");
            if !self.resources_logged.swap(true, Ordering::Relaxed) {
                warn!(node = %s.node, limit = self.max_resources,
                    "an xDS stream asks for more than xds.max_resources_per_stream names: the rest are ignored (logged once; see ruddr_xds_limited_total)");
            }
        }
        // Compared after the cut: a client repeating an over-long list is not answered again.
        let mut names = request.resource_names;
        names.truncate(room);
        names.sort_unstable();
        names.dedup();
        let state = s.types.get_mut(type_url).expect("entered above");
        if !names.iter().eq(state.names.keys()) {
            state.names = names
                .into_iter()
                .map(|n| {
                    let target = Target::parse(&n, &self.zone_name);
                    (n, target)
                })
                .collect();
            state.pending = true;
            return true;
        }
        false
    }

    /// The responses `s` is owed at `snapshot`: per type, when the client asked for new names
    /// or what its names hold changed; each recorded as sent.
    fn due(&self, s: &mut Session, snapshot: &Snapshot) -> Vec<DiscoveryResponse> {
        let mut out = Vec::new();
        for type_url in resources::TYPES {
            let Some(state) = s.types.get_mut(type_url) else {
                continue;
            };
            if state.names.is_empty() && !state.pending {
                continue;
            }
            // New names: all of them; else those whose service changed since the last build.
            let stale: Vec<(&String, &Option<Target>)> = state
                .names
                .iter()
                .filter(|(_, t)| {
                    state.pending
                        || t.as_ref()
                            .is_some_and(|t| !snapshot.unchanged_since(&t.service, state.built_at))
                })
                .collect();
            state.built_at = snapshot.changes;
            if stale.is_empty() && !state.pending {
                continue;
            }
            let built = self.build(type_url, &stale, snapshot, &mut s.known, s.local.as_deref());
            if state.pending {
                state.sent.clear();
            }
            let mut changed: HashSet<&String> = HashSet::new();
            for (name, _) in &stale {
                let now = built
                    .iter()
                    .find(|(n, _)| n == *name)
                    .map(|(_, any)| digest(any));
                let before = match now {
                    Some(h) => state.sent.insert((*name).clone(), h),
                    None => state.sent.remove(*name),
                };
                if before != now {
                    changed.insert(*name);
                }
            }
            if changed.is_empty() && !state.pending {
                continue;
            }
            // Listeners and clusters go all together (one missing from a response is deleted);
            // routes and assignments may go alone, so only the changed ones do.
            let resources: Vec<Any> = if !state.pending && matches!(type_url, LISTENER | CLUSTER) {
                let all: Vec<_> = state.names.iter().collect();
                self.build(type_url, &all, snapshot, &mut s.known, s.local.as_deref())
                    .into_iter()
                    .map(|(_, any)| any)
                    .collect()
            } else {
                built
                    .into_iter()
                    .filter(|(n, _)| state.pending || changed.contains(n))
                    .map(|(_, any)| any)
                    .collect()
            };
            state.pending = false;
            s.seq += 1;
            state.nonce = s.seq.to_string();
            out.push(DiscoveryResponse {
                version_info: format!("{}.{}", snapshot.revision, s.seq),
                resources,
                type_url: type_url.to_string(),
                nonce: state.nonce.clone(),
                ..Default::default()
            });
        }
        out
    }

    /// The resources of `type_url` for `names` in `snapshot`, each with its name (a name with
    /// no resource is left out).
    fn build(
        &self,
        type_url: &str,
        names: &[(&String, &Option<Target>)],
        snapshot: &Snapshot,
        known: &mut HashSet<String>,
        local: Option<&str>,
    ) -> Vec<(String, Any)> {
        let mut out = Vec::new();
        for &(name, target) in names {
            let Some(target) = target else {
                continue;
            };
            let svc = snapshot.service(&target.service).map(|s| &**s);
            if svc.is_none() && !known.contains(name) {
                continue;
            }
            let any = match type_url {
                LISTENER => {
                    known.insert(name.clone());
                    pack_any(resources::listener(name))
                }
                ROUTE => pack_any(resources::route(name)),
                CLUSTER => {
                    known.insert(name.clone());
                    pack_any(resources::cluster(name))
                }
                ENDPOINTS => {
                    let (cla, left) =
                        resources::assignment(&self.zone.load(), name, target, svc, local);
                    self.metrics
                        .xds_left_out(left.host_name, left.no_port, left.duplicate);
                    pack_any(cla)
                }
                _ => continue,
            };
            out.push((name.clone(), any));
        }
        out
    }
}

/// What a resource is compared by: a hash of its bytes.
fn digest(any: &Any) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::default().hash_one(&any.value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{Instance, ServiceName, Update};
    use crate::config::LocalityMode;
    use prost::Message;

    fn inner(max_resources: usize) -> Inner {
        let cfg = XdsConfig {
            max_resources_per_stream: max_resources,
            ..XdsConfig::default()
        };
        let mirror = Arc::new(Mirror::new());
        mirror.apply(
            [Update::Put {
                service: ServiceName::new("web").unwrap(),
                instance: Instance::for_test("a", "10.0.0.1", Some(80)),
            }],
            1,
        );
        let xds = Xds::new(
            &cfg,
            resources::tests::zone(LocalityMode::Off),
            mirror,
            Arc::new(RegistryStatus::new(None)),
            Arc::new(Metrics::new()),
            CancellationToken::new(),
        );
        Arc::into_inner(xds.0).unwrap()
    }

    fn lds(names: &[&str], nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: LISTENER.to_string(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            response_nonce: nonce.to_string(),
            ..Default::default()
        }
    }

    #[test]
    fn new_names_are_answered_once_and_an_ack_is_not() {
        let x = inner(100);
        let mut s = Session::default();
        let snap = x.mirror.load_full();
        x.request(&mut s, lds(&["web", "nosuch"], ""), None);
        let sent = x.due(&mut s, &snap);
        assert_eq!(sent.len(), 1);
        assert_eq!(
            sent[0].resources.len(),
            1,
            "no resource for a name with no service"
        );
        x.request(&mut s, lds(&["web", "nosuch"], &sent[0].nonce), None);
        assert!(x.due(&mut s, &snap).is_empty(), "an ACK is not answered");
        // A request answering an older response is ignored.
        x.request(&mut s, lds(&["web"], "0"), None);
        assert!(x.due(&mut s, &snap).is_empty());
        x.request(&mut s, lds(&["web"], &sent[0].nonce), None);
        assert_eq!(
            x.due(&mut s, &snap).len(),
            1,
            "a changed name set is answered"
        );
    }

    fn put(x: &Inner, service: &str, addr: &str, revision: i64) {
        x.mirror.apply(
            [Update::Put {
                service: ServiceName::new(service).unwrap(),
                instance: Instance::for_test("a", addr, Some(80)),
            }],
            revision,
        );
    }

    #[test]
    fn a_change_sends_the_changed_assignment_alone_and_no_listener() {
        let x = inner(100);
        put(&x, "db", "10.0.0.9", 2);
        let mut s = Session::default();
        let snap = x.mirror.load_full();
        let eds = |nonce: &str| DiscoveryRequest {
            type_url: ENDPOINTS.to_string(),
            resource_names: vec!["web".into(), "db".into()],
            response_nonce: nonce.to_string(),
            ..Default::default()
        };
        x.request(&mut s, lds(&["web", "db"], ""), None);
        x.request(&mut s, eds(""), None);
        let sent = x.due(&mut s, &snap);
        assert_eq!(sent.len(), 2);
        assert!(sent.iter().all(|r| r.resources.len() == 2));
        x.request(&mut s, lds(&["web", "db"], &sent[0].nonce), None);
        x.request(&mut s, eds(&sent[1].nonce), None);
        put(&x, "web", "10.0.0.2", 3);
        let sent = x.due(&mut s, &x.mirror.load_full());
        assert_eq!(sent.len(), 1, "the listeners did not change");
        assert_eq!(sent[0].type_url, ENDPOINTS);
        assert_eq!(sent[0].resources.len(), 1, "only web's assignment");
        let cla = envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment::decode(
            sent[0].resources[0].value.as_slice(),
        )
        .unwrap();
        assert_eq!(cla.cluster_name, "web");
        // The same change seen again sends nothing.
        assert!(x.due(&mut s, &x.mirror.load_full()).is_empty());
    }

    #[test]
    fn names_past_the_limit_are_cut_and_a_repeated_long_list_is_not_answered_again() {
        let x = inner(2);
        let mut s = Session::default();
        let snap = x.mirror.load_full();
        x.request(&mut s, lds(&["a", "b", "web"], ""), None);
        assert_eq!(s.types[LISTENER].names.len(), 2);
        let sent = x.due(&mut s, &snap);
        assert_eq!(sent.len(), 1);
        x.request(&mut s, lds(&["a", "b", "web"], &sent[0].nonce), None);
        assert!(x.due(&mut s, &snap).is_empty());
    }
}
