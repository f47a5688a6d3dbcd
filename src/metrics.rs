//! Prometheus metrics. Counters are updated where things happen (DNS handler, registry watcher);
//! gauges that describe state (services, instances, staleness) are computed at scrape time.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::cache::Snapshot;

/// The registry's state as the gauges show it; the admin side reads it from the watcher's
/// status at each scrape.
pub struct RegistryState<'a> {
    pub connected: bool,
    /// Every kind of registry error, and whether it is the current problem.
    pub failing: &'a [(&'static str, bool)],
    /// Since etcd last confirmed the data.
    pub confirmed_age: Option<std::time::Duration>,
    /// Since the data became stale (`None`: current).
    pub stale_for: Option<std::time::Duration>,
}
/// Query types with their own label value; anything else is `OTHER`, so a client cannot
/// create unbounded label sets.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(clippy::upper_case_acronyms)]
pub enum QType {
    A,
    AAAA,
    SRV,
    TXT,
    PTR,
    SOA,
    NS,
    CNAME,
    ANY,
    AXFR,
    IXFR,
    OTHER,
}

impl QType {
    pub fn from_u16(t: u16) -> Self {
        match t {
            1 => Self::A,
            28 => Self::AAAA,
            33 => Self::SRV,
            16 => Self::TXT,
            12 => Self::PTR,
            6 => Self::SOA,
            2 => Self::NS,
            5 => Self::CNAME,
            255 => Self::ANY,
            252 => Self::AXFR,
            251 => Self::IXFR,
            _ => Self::OTHER,
        }
    }
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(clippy::upper_case_acronyms)]
pub enum Rcode {
    NOERROR,
    FORMERR,
    SERVFAIL,
    NXDOMAIN,
    NOTIMP,
    REFUSED,
    BADVERS,
    OTHER,
}

impl Rcode {
    pub fn from_u16(code: u16) -> Self {
        match code {
            0 => Self::NOERROR,
            1 => Self::FORMERR,
            2 => Self::SERVFAIL,
            3 => Self::NXDOMAIN,
            4 => Self::NOTIMP,
            5 => Self::REFUSED,
            16 => Self::BADVERS,
            _ => Self::OTHER,
        }
    }
}

/// Label values are the variant names, hence lower case.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Proto {
    udp,
    tcp,
    /// DNS over TLS.
    dot,
    /// DNS over HTTPS.
    doh,
}

impl Proto {
    /// UDP or TCP, as a decoded request says.
    pub fn of(protocol: hickory_server::net::xfer::Protocol) -> Self {
        match protocol {
            hickory_server::net::xfer::Protocol::Udp => Self::udp,
            _ => Self::tcp,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryLabels {
    pub qtype: QType,
    pub rcode: Rcode,
    pub proto: Proto,
    /// Which kind of zone answered.
    pub path: crate::dns::observe::ZoneKind,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum Health {
    all,
    healthy,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HealthLabels {
    health: Health,
}

/// How one upstream attempt ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ForwardResult {
    answered,
    timeout,
    error,
}

/// What happened to a UDP response over the rate limit.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RateLimitAction {
    /// Sent empty with TC set, so the client retries over TCP.
    slip,
    drop,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RateLimitLabels {
    pub action: RateLimitAction,
}

/// Whether a forwarded question was answered from the forward cache.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum CacheResult {
    hit,
    miss,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    result: CacheResult,
}

/// What the client's locality did to an answer for a set of instances.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum LocalityResult {
    /// Local instances only, or first.
    local,
    /// Too few local instances: every served instance.
    spill_over,
    /// The client has no locality: every served instance.
    no_locality,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LocalityLabels {
    result: LocalityResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HowLabels {
    how: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ForwardLabels {
    upstream: String,
    result: ForwardResult,
}

/// Every metric ruddr exports.
pub struct Metrics {
    registry: Registry,
    pub queries: Family<QueryLabels, Counter>,
    pub latency: Histogram,
    pub udp_truncated: Counter,
    pub stale_answers: Counter,
    /// Queries answered SERVFAIL because too many forwarded queries were in flight.
    pub forward_limited: Counter,
    /// Packets given no answer (too short, a response, an unanswerable source).
    pub dropped: Counter,
    /// Queries answered SERVFAIL because `dns.max_pending` were waiting already.
    pub pending_limited: Counter,
    /// Open TCP connections.
    pub tcp_connections: Gauge,
    /// TCP connections closed to make room for new ones.
    pub tcp_evicted: Counter,
    /// TCP accept errors other than a peer giving up (EMFILE, ENOMEM, ...).
    pub tcp_accept_errors: Counter,
    /// UDP responses over `rate_limit.responses_per_second`, counted by
    /// [`crate::dns::rrl::RateLimiter::check`] as it decides.
    pub rate_limited: Family<RateLimitLabels, Counter>,
    /// Forwarded queries that waited for an identical one in flight instead of asking upstream.
    pub forward_coalesced: Counter,
    /// Forwarded queries answered SERVFAIL because every upstream socket was in use.
    pub forward_sockets_exhausted: Counter,
    forward_cache: Family<CacheLabels, Counter>,
    locality_answers: Family<LocalityLabels, Counter>,
    pub invalid_values: Counter,
    pub relists: Counter,
    /// Restarts of the etcd watcher after it ended or panicked.
    pub watcher_restarts: Counter,
    /// Sources etcd refuses (permission denied); their names keep their last data.
    pub sources_failing: Gauge,
    registry_errors: Family<ErrorLabels, Counter>,
    resumes: Family<HowLabels, Counter>,
    config_reloads: Family<ReloadLabels, Counter>,
    registry_failing: Family<ErrorLabels, Gauge>,
    forwarded: Family<ForwardLabels, Counter>,
    connected: Gauge,
    revision: Gauge,
    confirmed_age: Gauge<f64, AtomicU64>,
    stale_seconds: Gauge<f64, AtomicU64>,
    services: Family<HealthLabels, Gauge>,
    instances: Family<HealthLabels, Gauge>,
    xds_streams: Gauge,
    xds_subscribed: Gauge,
    xds_pushes: Family<XdsTypeLabels, Counter>,
    xds_push_latency: Histogram,
    xds_nacks: Family<XdsTypeLabels, Counter>,
    xds_limited: Family<XdsLimitLabels, Counter>,
    xds_left_out: Family<XdsLeftOutLabels, Counter>,
    /// TLS handshakes (DoT, DoH) that failed or timed out.
    pub tls_handshake_failures: Counter,
    /// dnstap messages written to the collector.
    pub dnstap_sent: Counter,
    dnstap_dropped: Family<DnstapDropLabels, Counter>,
    /// 1 while the dnstap collector is connected (or the file open).
    pub dnstap_connected: Gauge,
    /// Answers by where they came from: this thread's table, the shared cache, or built.
    answer_cache: Family<AnswerCacheLabels, Counter>,
}

/// Why dnstap messages were dropped.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum DnstapDrop {
    queue_full,
    disconnected,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DnstapDropLabels {
    reason: DnstapDrop,
}

/// Where a registry answer came from.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum AnswerSource {
    front_hit,
    shared_hit,
    built,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AnswerCacheLabels {
    result: AnswerSource,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct XdsTypeLabels {
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct XdsLimitLabels {
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct XdsLeftOutLabels {
    reason: &'static str,
}

/// Keeps `ruddr_xds_streams` one higher while it lives.
pub struct StreamOpen(Gauge);

impl Drop for StreamOpen {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The short name of an xDS resource type, for labels.
fn xds_type(type_url: &str) -> &'static str {
    match type_url.rsplit('.').next() {
        Some("Listener") => "listener",
        Some("RouteConfiguration") => "route",
        Some("Cluster") => "cluster",
        Some("ClusterLoadAssignment") => "endpoints",
        _ => "other",
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Counts an xDS stream as open until the guard drops.
    pub fn xds_stream_opened(&self) -> StreamOpen {
        self.xds_streams.inc();
        StreamOpen(self.xds_streams.clone())
    }

    /// Moves the count of subscribed xDS resource names by `delta`.
    pub fn xds_subscribed(&self, delta: i64) {
        self.xds_subscribed.inc_by(delta);
    }

    /// Counts one xDS response of `type_url`, caused by a registry change `since` ago if it was.
    pub fn xds_push(&self, type_url: &str, since: Option<Duration>) {
        let labels = XdsTypeLabels {
            r#type: xds_type(type_url),
        };
        self.xds_pushes.get_or_create(&labels).inc();
        if let Some(d) = since {
            self.xds_push_latency.observe(d.as_secs_f64());
        }
    }

    pub fn xds_nack(&self, type_url: &str) {
        let labels = XdsTypeLabels {
            r#type: xds_type(type_url),
        };
        self.xds_nacks.get_or_create(&labels).inc();
    }

    pub fn xds_limited(&self, limit: &'static str) {
        self.xds_limited
            .get_or_create(&XdsLimitLabels { limit })
            .inc();
    }

    pub fn xds_left_out(&self, host_name: usize, no_port: usize, duplicate: usize) {
        for (reason, n) in [
            ("host_name", host_name),
            ("no_port", no_port),
            ("duplicate", duplicate),
        ] {
            if n > 0 {
                self.xds_left_out
                    .get_or_create(&XdsLeftOutLabels { reason })
                    .inc_by(n as u64);
            }
        }
    }

    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ruddr");
        let m = Self {
            queries: Family::default(),
            // 10 µs .. ~650 ms
            latency: Histogram::new(exponential_buckets(0.000_01, 3.0, 11)),
            udp_truncated: Counter::default(),
            stale_answers: Counter::default(),
            forward_limited: Counter::default(),
            dropped: Counter::default(),
            pending_limited: Counter::default(),
            tcp_connections: Gauge::default(),
            tcp_evicted: Counter::default(),
            tcp_accept_errors: Counter::default(),
            rate_limited: Family::default(),
            forward_coalesced: Counter::default(),
            forward_sockets_exhausted: Counter::default(),
            forward_cache: Family::default(),
            locality_answers: Family::default(),
            invalid_values: Counter::default(),
            relists: Counter::default(),
            watcher_restarts: Counter::default(),
            sources_failing: Gauge::default(),
            registry_errors: Family::default(),
            resumes: Family::default(),
            config_reloads: Family::default(),
            registry_failing: Family::default(),
            forwarded: Family::default(),
            connected: Gauge::default(),
            revision: Gauge::default(),
            confirmed_age: Gauge::default(),
            stale_seconds: Gauge::default(),
            services: Family::default(),
            instances: Family::default(),
            xds_streams: Gauge::default(),
            xds_subscribed: Gauge::default(),
            xds_pushes: Family::default(),
            // 100 µs .. ~6.5 s
            xds_push_latency: Histogram::new(exponential_buckets(0.000_1, 3.0, 11)),
            xds_nacks: Family::default(),
            xds_limited: Family::default(),
            xds_left_out: Family::default(),
            tls_handshake_failures: Counter::default(),
            dnstap_sent: Counter::default(),
            dnstap_dropped: Family::default(),
            dnstap_connected: Gauge::default(),
            answer_cache: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "dns_tls_handshake_failures",
            "TLS handshakes (DNS over TLS and HTTPS) that failed or took longer than dns.tls_handshake_timeout",
            m.tls_handshake_failures.clone(),
        );
        registry.register(
            "dnstap_sent",
            "dnstap messages written to the collector",
            m.dnstap_sent.clone(),
        );
        registry.register(
            "dnstap_dropped",
            "dnstap messages dropped: the queue was full (dnstap.buffer) or the collector away",
            m.dnstap_dropped.clone(),
        );
        for reason in [DnstapDrop::queue_full, DnstapDrop::disconnected] {
            let _ = m.dnstap_dropped.get_or_create(&DnstapDropLabels { reason });
        }
        registry.register(
            "dnstap_connected",
            "1 while the dnstap collector is connected (or its file open)",
            m.dnstap_connected.clone(),
        );
        registry.register(
            "dns_answer_cache",
            "Registry and zone answers by source: this thread's table, the shared cache, built",
            m.answer_cache.clone(),
        );
        registry.register(
            "xds_subscribed_resources",
            "Resource names the open xDS streams subscribe to, all types together",
            m.xds_subscribed.clone(),
        );
        registry.register(
            "xds_streams",
            "Open xDS (ADS) streams",
            m.xds_streams.clone(),
        );
        registry.register(
            "xds_pushes",
            "xDS responses sent, by resource type",
            m.xds_pushes.clone(),
        );
        registry.register(
            "xds_push_latency_seconds",
            "From a registry change being applied to the xDS response it caused being sent",
            m.xds_push_latency.clone(),
        );
        registry.register(
            "xds_nacks",
            "xDS responses a client rejected, by resource type",
            m.xds_nacks.clone(),
        );
        registry.register(
            "xds_limited",
            "xDS streams refused at xds.max_streams, or requests cut at xds.max_resources_per_stream",
            m.xds_limited.clone(),
        );
        registry.register(
            "xds_endpoints_left_out",
            "Instances left out of xDS assignments: host_name (not an IP), no_port (without the port asked for), duplicate (an address already in the assignment)",
            m.xds_left_out.clone(),
        );
        registry.register(
            "dns_forwarded",
            "Attempts to forward a query to an upstream, by upstream and result",
            m.forwarded.clone(),
        );
        registry.register(
            "dns_forward_limited",
            "Queries answered SERVFAIL at once because forward.max_in_flight (overall or per client network) was reached",
            m.forward_limited.clone(),
        );
        registry.register(
            "dns_dropped",
            "Packets given no answer: shorter than a header, responses, or from an address that cannot be answered",
            m.dropped.clone(),
        );
        registry.register(
            "dns_pending_limited",
            "Queries answered SERVFAIL at once because dns.max_pending queries were already waiting on upstreams",
            m.pending_limited.clone(),
        );
        registry.register(
            "dns_tcp_connections",
            "Open DNS TCP connections",
            m.tcp_connections.clone(),
        );
        registry.register(
            "dns_tcp_evicted",
            "DNS TCP connections closed to make room at dns.tcp_max_connections or dns.tcp_max_connections_per_client",
            m.tcp_evicted.clone(),
        );
        registry.register(
            "dns_tcp_accept_errors",
            "Failed accepts of DNS TCP connections (out of file descriptors or memory); each backs off",
            m.tcp_accept_errors.clone(),
        );
        registry.register(
            "dns_rate_limited",
            "UDP responses over rate_limit.responses_per_second, by action: slip (sent empty with TC set) or drop (not sent)",
            m.rate_limited.clone(),
        );
        registry.register(
            "dns_forward_cache",
            "Forwarded questions looked up in the forward cache, by result",
            m.forward_cache.clone(),
        );
        registry.register(
            "dns_forward_coalesced",
            "Forwarded queries that waited for an identical query already in flight instead of asking an upstream",
            m.forward_coalesced.clone(),
        );
        registry.register(
            "dns_forward_sockets_exhausted",
            "Forwarded queries answered SERVFAIL because all forward.max_sockets upstream sockets were in use",
            m.forward_sockets_exhausted.clone(),
        );
        registry.register(
            "dns_queries",
            "DNS queries answered, by query type, response code and transport",
            m.queries.clone(),
        );
        registry.register(
            "dns_response_duration_seconds",
            "Time from a parsed query to its response being sent",
            m.latency.clone(),
        );
        registry.register(
            "dns_udp_truncated",
            "UDP responses sent with the TC bit set",
            m.udp_truncated.clone(),
        );
        registry.register(
            "dns_locality_answers",
            "Answers for names that follow locality (services, tags, named ports, DNS-SD instance lists) while [locality] is on, by result: local, spill_over (too few local instances) or no_locality (the client has none)",
            m.locality_answers.clone(),
        );
        registry.register(
            "dns_stale_answers",
            "Answers for registry names given while etcd was unreachable",
            m.stale_answers.clone(),
        );
        registry.register(
            "registry_invalid_values",
            "Registry entries skipped because their key or value broke the contract",
            m.invalid_values.clone(),
        );
        registry.register(
            "registry_relists",
            "Full re-lists of the registry after the first (compaction, etcd rebuilt)",
            m.relists.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads (SIGHUP) by result: \"ok\", or \"error\" (the file did not load or validate; the running configuration stays)",
            m.config_reloads.clone(),
        );
        registry.register(
            "registry_resumes",
            "How the watcher got current at each start: \"watch\" (resumed from the snapshot's revisions, no list) or \"list\"",
            m.resumes.clone(),
        );
        registry.register(
            "registry_watcher_restarts",
            "Restarts of the etcd watcher after it ended or panicked (a bug: please report it)",
            m.watcher_restarts.clone(),
        );
        registry.register(
            "registry_sources_failing",
            "Registry sources etcd refuses to list or watch (permission denied); retried every etcd.retry_max",
            m.sources_failing.clone(),
        );
        registry.register(
            "registry_errors",
            "Failed etcd sessions by kind (unreachable, message_too_large, permission_denied, compacted, bad_response)",
            m.registry_errors.clone(),
        );
        registry.register(
            "registry_failing",
            "1 for the kind of error that keeps the watch down now, 0 for the others",
            m.registry_failing.clone(),
        );
        registry.register(
            "registry_connected",
            "1 while the etcd watch is established, else 0",
            m.connected.clone(),
        );
        registry.register(
            "registry_revision",
            "Last etcd revision applied to the mirror",
            m.revision.clone(),
        );
        registry.register(
            "registry_confirmed_age_seconds",
            "Seconds since etcd last confirmed the mirror current (-1: never)",
            m.confirmed_age.clone(),
        );
        registry.register(
            "registry_stale_seconds",
            "Seconds the mirror has been possibly behind etcd (0 when connected)",
            m.stale_seconds.clone(),
        );
        registry.register(
            "services",
            "Services in the mirror; healthy ones have at least one served instance",
            m.services.clone(),
        );
        registry.register(
            "instances",
            "Instances in the mirror; healthy ones are served",
            m.instances.clone(),
        );
        Self { registry, ..m }
    }

    /// Counts `n` dropped dnstap messages.
    pub fn dnstap_dropped(&self, reason: DnstapDrop, n: u64) {
        self.dnstap_dropped
            .get_or_create(&DnstapDropLabels { reason })
            .inc_by(n);
    }

    #[cfg(test)]
    pub fn dnstap_dropped_count(&self, reason: DnstapDrop) -> u64 {
        self.dnstap_dropped
            .get_or_create(&DnstapDropLabels { reason })
            .get()
    }

    /// The counter of answers taken from `source`, for the answer cache to keep.
    pub fn answer_source(&self, source: AnswerSource) -> Counter {
        self.answer_cache
            .get_or_create(&AnswerCacheLabels { result: source })
            .clone()
    }

    /// Records one answered query.
    pub fn observe_query(&self, labels: &QueryLabels, elapsed: Duration, truncated: bool) {
        self.queries.get_or_create(labels).inc();
        self.latency.observe(elapsed.as_secs_f64());
        if truncated && labels.proto == Proto::udp {
            self.udp_truncated.inc();
        }
    }

    /// A configuration reload ended with `result` ("ok" or "error").
    pub fn observe_config_reload(&self, result: &'static str) {
        self.config_reloads
            .get_or_create(&ReloadLabels { result })
            .inc();
    }

    /// The watcher got current at a start by resuming its watch (`"watch"`) or by listing.
    pub fn observe_resume(&self, how: &'static str) {
        self.resumes.get_or_create(&HowLabels { how }).inc();
    }

    /// Counts one failed etcd session of this kind ([`crate::registry::ErrorKind::as_str`]).
    pub fn observe_registry_error(&self, kind: &'static str) {
        self.registry_errors
            .get_or_create(&ErrorLabels { kind })
            .inc();
    }

    /// Records one attempt at an upstream (label values come from the configured list only).
    /// The forward cache's counter for `result`, for the forwarder to keep.
    pub fn forward_cache(&self, result: CacheResult) -> Counter {
        self.forward_cache
            .get_or_create(&CacheLabels { result })
            .clone()
    }

    pub fn observe_locality(&self, result: LocalityResult) {
        self.locality_answers
            .get_or_create(&LocalityLabels { result })
            .inc();
    }

    pub fn observe_forward(&self, upstream: std::net::SocketAddr, result: ForwardResult) {
        self.forwarded
            .get_or_create(&ForwardLabels {
                upstream: upstream.to_string(),
                result,
            })
            .inc();
    }

    /// Every metric family ruddr exports, as `name type` lines: families with labels appear in
    /// a scrape only once a label set was used, so this renders a registry with one of each.
    pub fn families() -> String {
        let m = Self::new();
        m.observe_query(
            &QueryLabels {
                qtype: QType::A,
                rcode: Rcode::NOERROR,
                proto: Proto::udp,
                path: crate::dns::observe::ZoneKind::Registry,
            },
            Duration::ZERO,
            false,
        );
        m.rate_limited
            .get_or_create(&RateLimitLabels {
                action: RateLimitAction::drop,
            })
            .inc();
        let _ = m.forward_cache(CacheResult::hit);
        m.observe_locality(LocalityResult::local);
        m.observe_registry_error("unreachable");
        m.observe_resume("watch");
        m.observe_config_reload("ok");
        m.observe_forward(
            std::net::SocketAddr::from(([127, 0, 0, 1], 53)),
            ForwardResult::answered,
        );
        m.xds_push(
            "type.googleapis.com/envoy.config.listener.v3.Listener",
            None,
        );
        m.xds_nack("type.googleapis.com/envoy.config.listener.v3.Listener");
        m.xds_limited("max_streams");
        m.xds_left_out(1, 1, 1);
        let _ = m.answer_source(AnswerSource::built);
        let failing = [("unreachable", false)];
        let text = m.render(
            &Snapshot::default(),
            &RegistryState {
                connected: true,
                failing: &failing,
                confirmed_age: None,
                stale_for: None,
            },
            true,
        );
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    /// Refreshes the state gauges and renders the Prometheus text format.
    pub fn render(
        &self,
        snapshot: &Snapshot,
        registry: &RegistryState<'_>,
        serve_warning: bool,
    ) -> String {
        self.connected.set(i64::from(registry.connected));
        for &(kind, failing) in registry.failing {
            self.registry_failing
                .get_or_create(&ErrorLabels { kind })
                .set(i64::from(failing));
        }
        self.revision.set(snapshot.revision);
        self.confirmed_age
            .set(registry.confirmed_age.map_or(-1.0, |d| d.as_secs_f64()));
        self.stale_seconds
            .set(registry.stale_for.map_or(0.0, |d| d.as_secs_f64()));
        let (mut services, mut healthy_services, mut instances, mut healthy_instances) =
            (0, 0, 0, 0);
        for svc in snapshot.services.values() {
            services += 1;
            let healthy = svc
                .instances
                .values()
                .filter(|i| i.is_served(serve_warning))
                .count();
            instances += svc.instances.len() as i64;
            healthy_instances += healthy as i64;
            if healthy > 0 {
                healthy_services += 1;
            }
        }
        let set = |f: &Family<HealthLabels, Gauge>, health, v| {
            f.get_or_create(&HealthLabels { health }).set(v);
        };
        set(&self.services, Health::all, services);
        set(&self.services, Health::healthy, healthy_services);
        set(&self.instances, Health::all, instances);
        set(&self.instances, Health::healthy, healthy_instances);
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod families_tests {
    #[test]
    fn families_lists_every_registered_metric() {
        let text = super::Metrics::families();
        let listed = text.lines().count();
        let source = include_str!("metrics.rs");
        // The patterns below occur once more, in this test.
        let registered = source.matches("registry.register(").count() - 1;
        assert_eq!(listed, registered, "{text}");
    }
}
