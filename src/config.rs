//! Settings: defaults, then the TOML file, then flags, validated into one [`Config`] before any
//! socket is bound.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cache::{DomainLabel, ServiceName};
use crate::cli::{EtcdArgs, ServeArgs};
use crate::registry::{Format, Layout, Source};

/// A configuration that cannot be used. Every message names the file or option at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid value for {option}: {reason}")]
    Invalid {
        option: &'static str,
        reason: String,
    },
}

fn invalid(option: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        option,
        reason: reason.into(),
    }
}

/// The whole configuration. Field docs are the reference; `config/ruddr.toml` mirrors them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Addresses to answer DNS on; each gets a UDP socket and a TCP listener.
    pub listen: Vec<SocketAddr>,
    /// HTTP listener for /metrics, /health and /ready; empty string turns it off.
    #[serde(with = "optional_addr")]
    pub admin_listen: Option<SocketAddr>,
    /// An admin connection that has not sent a whole request head within this is closed.
    #[serde(with = "humantime_serde")]
    pub admin_header_timeout: Duration,
    /// Admin connections open at once; past it, new ones are closed at once.
    pub admin_max_connections: usize,
    pub etcd: EtcdConfig,
    pub dns: DnsConfig,
    pub snapshot: SnapshotConfig,
    pub forward: ForwardConfig,
    pub rate_limit: RateLimitConfig,
    pub locality: LocalityConfig,
    /// Directory of RFC 1035 zone files (`<zone>.zone`) served beside the discovery zone; a
    /// missing directory means no static zones. Relative to the config file.
    pub zones_dir: PathBuf,
    /// Framework registry layouts read beside the native prefix (`[[sources]]`).
    pub sources: Vec<SourceConfig>,
}

/// One framework layout to read (README "Framework layouts").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub format: Format,
    /// What the framework writes under: the target (etcd-naming), the base key (go-zero), the
    /// namespace (Kratos), `/micro/registry/` (go-micro), `/skydns/` (SkyDNS).
    pub prefix: String,
    /// etcd-naming and go-zero: the service name (default: the prefix's last segment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// SkyDNS: the zones answered from the entries (like the zones of a CoreDNS `etcd` block).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zones: Vec<String>,
    /// SkyDNS: the TTL of entries without their own `ttl` (CoreDNS uses 300).
    #[serde(default = "default_skydns_ttl")]
    pub ttl: u32,
}

fn default_skydns_ttl() -> u32 {
    300
}

/// Names outside ruddr's zones: where to forward them, and for whom.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForwardConfig {
    /// Upstream resolvers, tried in order; none means REFUSED for names outside ruddr's zones.
    pub upstreams: Vec<SocketAddr>,
    /// Time to wait for one upstream before trying the next.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Client networks that may use forwarding (never an open resolver by default).
    pub allow_recursion: Vec<ipnet::IpNet>,
    /// Forwarded queries waiting for an upstream at once, overall; past it, SERVFAIL at once.
    /// Queries waiting for an identical one in flight count too, though they hold no socket.
    pub max_in_flight: usize,
    /// The same per client network (/24 for IPv4, /56 for IPv6), so one client cannot use
    /// them all.
    pub max_in_flight_per_client: usize,
    /// Upstream sockets open at once (each query sends from a fresh one on a random port);
    /// a query finding none free within 100 ms gets SERVFAIL.
    pub max_sockets: usize,
    /// Bytes of forwarded answers kept for their TTLs; 0 turns the cache off.
    pub cache_bytes: u64,
    /// The longest a forwarded answer is cached; longer TTLs are lowered to it.
    #[serde(with = "humantime_serde")]
    pub cache_max_ttl: Duration,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        Self {
            upstreams: Vec::new(),
            timeout: Duration::from_secs(2),
            allow_recursion: [
                "127.0.0.0/8",
                "::1/128",
                "10.0.0.0/8",
                "172.16.0.0/12",
                "192.168.0.0/16",
                "fc00::/7",
                "fe80::/10",
            ]
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect(),
            max_in_flight: 256,
            max_in_flight_per_client: 64,
            max_sockets: 128,
            cache_bytes: 16 << 20,
            cache_max_ttl: Duration::from_secs(3600),
        }
    }
}

/// Response rate limiting over UDP ([`crate::dns::rrl`]); TCP is never limited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// UDP responses per second per client network and kind of response (answers for one
    /// name, NXDOMAINs for one zone, errors); bursts of up to twice this. 0 turns it off.
    pub responses_per_second: u32,
    /// Every `slip`th limited response is sent empty with TC set, so real clients retry over
    /// TCP; the others are dropped. 0 drops them all, 1 truncates them all.
    pub slip: u32,
    /// Client networks that share buckets: the source address masked to these lengths
    /// (IPv4-mapped IPv6 counts as IPv4).
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    /// Client networks never limited.
    pub exempt: Vec<ipnet::IpNet>,
    /// Buckets kept (about 40 bytes each, allocated when the limit is on). A key whose slot is
    /// taken replaces the bucket there, so a table too small limits too little, never too much.
    pub table_size: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            responses_per_second: 0,
            slip: 2,
            ipv4_prefix: 24,
            ipv6_prefix: 56,
            exempt: Vec::new(),
            table_size: 65_536,
        }
    }
}

impl RateLimitConfig {
    /// Checks the rate limit settings (also when the limit is off, so turning it on later
    /// cannot reveal an old mistake).
    pub fn validate(&self) -> Result<(), ConfigError> {
        // Far above what one server answers: a higher rate could never be reached.
        const MAX_RATE: u32 = 1_000_000;
        if self.responses_per_second > MAX_RATE {
            return Err(invalid(
                "rate_limit.responses_per_second",
                format!("must be at most {MAX_RATE} (0 turns rate limiting off)"),
            ));
        }
        // knotd's limit; past it, slipping is dropping.
        if self.slip > 100 {
            return Err(invalid("rate_limit.slip", "must be between 0 and 100"));
        }
        if self.ipv4_prefix > 32 {
            return Err(invalid(
                "rate_limit.ipv4_prefix",
                "must be between 0 and 32",
            ));
        }
        if self.ipv6_prefix > 128 {
            return Err(invalid(
                "rate_limit.ipv6_prefix",
                "must be between 0 and 128",
            ));
        }
        // 2^24 buckets take about 640 MiB; more would be a typo.
        if !(1..=1 << 24).contains(&self.table_size) {
            return Err(invalid(
                "rate_limit.table_size",
                "must be between 1 and 16777216",
            ));
        }
        Ok(())
    }
}

/// Which of the `dns.udp_sockets` sockets the kernel hands a UDP query to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UdpSteering {
    /// The socket of the CPU that received the packet (CPU number mod the socket count).
    #[default]
    Cpu,
    /// The kernel's default: a hash of the addresses and ports.
    Hash,
}

/// How the client's locality shapes answers (README "Locality-aware answers").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LocalityMode {
    /// Locality is ignored.
    #[default]
    Off,
    /// Local instances first (A/AAAA), or ahead within each SRV priority.
    Prefer,
    /// Local instances only, while at least `min_healthy` of them are served.
    Only,
}

/// Locality-aware answers: where clients are, and what to do with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalityConfig {
    pub mode: LocalityMode,
    /// `only`: answer local instances while at least this many are served; fewer, every
    /// served instance (spill-over).
    pub min_healthy: usize,
    /// Networks whose EDNS Client Subnet option is believed (node-local forwarders); from
    /// anyone else the option is ignored and the source address decides.
    pub trust_client_subnet: Vec<ipnet::IpNet>,
    /// Client networks and their localities; networks must not overlap.
    pub clients: Vec<ClientLocality>,
}

impl Default for LocalityConfig {
    fn default() -> Self {
        Self {
            mode: LocalityMode::Off,
            min_healthy: 1,
            trust_client_subnet: Vec::new(),
            clients: Vec::new(),
        }
    }
}

/// `[[locality.clients]]`: clients in `networks` are in `locality`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientLocality {
    pub networks: Vec<ipnet::IpNet>,
    pub locality: String,
}

impl LocalityConfig {
    /// Checks the section and lower-cases the localities (as instance localities are).
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        if self.min_healthy == 0 {
            return Err(invalid(
                "locality.min_healthy",
                "must be at least 1 (with 0, a locality with no served instance would get none)",
            ));
        }
        let mut seen: Vec<(ipnet::IpNet, &str)> = Vec::new();
        for client in &mut self.clients {
            client.locality = crate::cache::locality(&client.locality)
                .map_err(|e| invalid("locality.clients.locality", e.to_string()))?
                .into();
            if client.networks.is_empty() {
                return Err(invalid(
                    "locality.clients.networks",
                    format!("locality {:?} lists no network", client.locality),
                ));
            }
        }
        for client in &self.clients {
            for net in &client.networks {
                let net = net.trunc();
                if let Some((other, loc)) = seen
                    .iter()
                    .find(|(o, _)| o.contains(&net) || net.contains(o))
                {
                    return Err(invalid(
                        "locality.clients.networks",
                        format!(
                            "{net} ({}) overlaps {other} ({loc}): a client must have one locality",
                            client.locality
                        ),
                    ));
                }
                seen.push((net, &client.locality));
            }
        }
        Ok(())
    }
}

/// The on-disk copy of the mirror, for starting while etcd is unreachable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotConfig {
    /// File to keep the mirror in; `""` turns snapshots off. Relative to the config file.
    #[serde(with = "optional_path")]
    pub file: Option<PathBuf>,
    /// At most one write per this interval (the latest state is always written eventually).
    #[serde(with = "humantime_serde")]
    pub min_interval: Duration,
    /// A snapshot file larger than this is not read (a 1,000,000-instance registry writes about
    /// 130 MB).
    pub max_bytes: u64,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        Self {
            file: None,
            min_interval: Duration::from_secs(5),
            max_bytes: 2 << 30,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "redact")]
    pub password: Option<String>,
    pub tls: Option<TlsConfig>,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Deadline of one etcd request of `ruddr register` and `ruddr services` (the watch of
    /// `ruddr serve` relies on keepalive instead).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// gRPC keepalive: turns a hung or partitioned etcd into an error instead of a silent stall.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// The data counts as current only while etcd confirms it: without an event or a progress
    /// notification (asked for every 2 x keepalive_interval) for this long, it is stale until
    /// etcd confirms again.
    #[serde(with = "humantime_serde")]
    pub confirm_within: Duration,
    /// Reconnect backoff: first delay, doubling up to the maximum, with jitter.
    #[serde(with = "humantime_serde")]
    pub retry_min: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// Keys per page when listing a prefix. Every page of one list is read at the revision of
    /// the first, so a list of any size is one consistent snapshot. etcd 3.4 walks the rest of
    /// the range for each page, so pages are large: small ones are for tests.
    pub list_page_size: u32,
    /// Largest etcd reply ruddr decodes (list pages, watch messages), bytes. A page that does
    /// not fit is read again in smaller pages; watch replies are fragmented by etcd to fit.
    pub max_message_bytes: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Name to verify in etcd's certificate, when it differs from the endpoint host.
    pub server_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// The zone services are answered under (fully qualified, lower case after loading).
    pub zone: String,
    /// TTL of positive answers, seconds.
    pub ttl: u32,
    /// TTL of NXDOMAIN/NODATA answers and the SOA minimum, seconds.
    pub negative_ttl: u32,
    /// Serve instances whose health is `warning` (critical ones are never served).
    pub serve_warning: bool,
    /// Largest UDP answer ruddr sends, whatever the client advertises (RFC 9715 suggests 1232).
    pub max_udp_payload: u16,
    /// A TCP connection idle this long is closed.
    #[serde(with = "humantime_serde")]
    pub tcp_idle_timeout: Duration,
    /// A TCP connection open this long is closed, busy or not.
    #[serde(with = "humantime_serde")]
    pub tcp_session_timeout: Duration,
    /// Open TCP connections at most; at the cap the longest-idle one is closed for a new one.
    /// Lowered at start to half the open-file limit if that is smaller.
    pub tcp_max_connections: usize,
    /// Open TCP connections per client address at most (the client's longest-idle one is
    /// closed for a new one).
    pub tcp_max_connections_per_client: usize,
    /// Queries in flight per TCP connection; reading pauses at the cap.
    pub tcp_max_pipelined: usize,
    /// UDP queries waiting on a static zone or an upstream at once; past it, SERVFAIL.
    pub max_pending: usize,
    /// Answer plain UDP queries for ruddr's own names straight from their bytes (the same
    /// answers; `false` sends every query through hickory's decoder and encoder).
    pub udp_fast_path: bool,
    /// UDP sockets per listen address (SO_REUSEPORT), each served by its own loop. 0: one per
    /// available CPU.
    pub udp_sockets: usize,
    /// How queries are spread over those sockets: `cpu` keeps each receiving CPU's packets on
    /// one socket (full batches, one thread awake per busy CPU); `hash` spreads them by
    /// address, for a network card that delivers everything on one CPU.
    pub udp_steering: UdpSteering,
    /// Name in the apex NS record and the SOA MNAME. Default: `ns.dns.<zone>`, which resolves
    /// when ruddr itself is registered as service `dns`, instance `ns`.
    pub ns_name: Option<String>,
    /// SOA RNAME (responsible mailbox as a name). Default: `hostmaster.<zone>`.
    pub hostmaster: Option<String>,
    /// Memory for built answers (per name and type), bytes; derived data, rebuilt on a miss.
    pub answer_cache_bytes: u64,
    /// Memory for each answering thread's table in front of the answer cache, bytes (hot
    /// answers without the shared cache's bookkeeping); 0: no front tables.
    pub answer_front_bytes: usize,
    /// Replaced by `answer_cache_bytes`; only read to say so.
    #[serde(default, skip_serializing)]
    pub answer_cache_capacity: Option<toml::Value>,
    /// Longest time to keep answering registry names from data etcd has not confirmed; past
    /// it they get SERVFAIL. `None` (`""` in TOML): no limit.
    #[serde(with = "optional_duration")]
    pub max_stale: Option<Duration>,
    /// TTL of answers given while the data is stale, seconds (RFC 8767 suggests 30).
    pub stale_ttl: u32,
    /// When the share of healthy instances of a service is below this (0.0-1.0), answer with all
    /// its instances instead of the few healthy ones. 0 turns it off.
    pub panic_threshold: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 53))],
            admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9153))),
            admin_header_timeout: Duration::from_secs(10),
            admin_max_connections: 512,
            etcd: EtcdConfig::default(),
            dns: DnsConfig::default(),
            snapshot: SnapshotConfig::default(),
            forward: ForwardConfig::default(),
            rate_limit: RateLimitConfig::default(),
            locality: LocalityConfig::default(),
            zones_dir: PathBuf::from("zones"),
            sources: Vec::new(),
        }
    }
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/ruddr/services/".into(),
            username: None,
            password: None,
            tls: None,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(2),
            keepalive_timeout: Duration::from_secs(2),
            confirm_within: Duration::from_secs(15),
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
            list_page_size: 50_000,
            max_message_bytes: 64 << 20,
        }
    }
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            zone: "svc.internal.".into(),
            ttl: 5,
            negative_ttl: 5,
            serve_warning: true,
            max_udp_payload: 1232,
            tcp_idle_timeout: Duration::from_secs(10),
            tcp_session_timeout: Duration::from_secs(120),
            tcp_max_connections: 1000,
            tcp_max_connections_per_client: 64,
            tcp_max_pipelined: 32,
            max_pending: 1024,
            udp_fast_path: true,
            udp_sockets: 0,
            udp_steering: UdpSteering::Cpu,
            ns_name: None,
            hostmaster: None,
            answer_cache_bytes: 32 << 20,
            answer_front_bytes: 16 << 20,
            answer_cache_capacity: None,
            max_stale: None,
            stale_ttl: 30,
            panic_threshold: 0.0,
        }
    }
}

/// `admin_listen` in TOML: an `ADDR:PORT` string, or `""` for off.
mod optional_addr {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.map(|a| a.to_string()).unwrap_or_default())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }

    pub fn parse(s: &str) -> Result<Option<SocketAddr>, String> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(None);
        }
        s.parse()
            .map(Some)
            .map_err(|_| format!("{s:?} is not ADDR:PORT (or \"\" for off)"))
    }
}

/// Durations that may be absent: `""` in TOML.
mod optional_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(
            &v.map(|d| humantime::format_duration(d).to_string())
                .unwrap_or_default(),
        )
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }

    pub fn parse(s: &str) -> Result<Option<Duration>, String> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(None);
        }
        humantime::parse_duration(s)
            .map(Some)
            .map_err(|e| format!("{s:?} is not a duration like 30s or 5m ({e})"))
    }
}

/// Paths that may be absent: `""` in TOML.
mod optional_path {
    use std::path::PathBuf;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(
            &v.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        )
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
        let s = String::deserialize(d)?;
        Ok((!s.trim().is_empty()).then(|| PathBuf::from(s.trim())))
    }
}

fn redact<S: serde::Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("<redacted>"),
        None => s.serialize_none(),
    }
}

impl EtcdConfig {
    /// Overrides settings with the etcd flags that were given.
    pub fn apply_flags(&mut self, a: &EtcdArgs) {
        if !a.etcd_endpoints.is_empty() {
            self.endpoints = a
                .etcd_endpoints
                .iter()
                .map(|s| s.trim().to_string())
                .collect();
        }
        if let Some(p) = &a.prefix {
            self.prefix = p.clone();
        }
        if let Some(u) = &a.etcd_username {
            self.username = Some(u.clone());
        }
        if let Some(p) = &a.etcd_password {
            self.password = Some(p.clone());
        }
        if a.etcd_ca.is_some() || a.etcd_cert.is_some() {
            let tls = self.tls.get_or_insert_with(TlsConfig::default);
            if let Some(ca) = &a.etcd_ca {
                tls.ca_file = Some(ca.clone());
            }
            if let (Some(c), Some(k)) = (&a.etcd_cert, &a.etcd_key) {
                tls.cert_file = Some(c.clone());
                tls.key_file = Some(k.clone());
            }
        }
    }

    /// Checks the etcd settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let e = self;
        if e.endpoints.is_empty() || e.endpoints.iter().any(|s| s.is_empty()) {
            return Err(invalid(
                "etcd.endpoints",
                "at least one non-empty URL is needed",
            ));
        }
        if !e.prefix.starts_with('/') || !e.prefix.ends_with('/') || e.prefix.len() < 2 {
            return Err(invalid(
                "etcd.prefix",
                format!(
                    "{:?} must start and end with '/', e.g. /ruddr/services/",
                    e.prefix
                ),
            ));
        }
        if e.username.is_some() != e.password.is_some() {
            return Err(invalid(
                "etcd.username",
                "username and password must be given together",
            ));
        }
        if let Some(tls) = &e.tls {
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err(invalid("etcd.tls", "cert_file and key_file go together"));
            }
            for p in [&tls.ca_file, &tls.cert_file, &tls.key_file]
                .into_iter()
                .flatten()
            {
                if !p.is_file() {
                    return Err(invalid(
                        "etcd.tls",
                        format!("{} is not a readable file", p.display()),
                    ));
                }
            }
        }
        if e.retry_min.is_zero() || e.retry_max < e.retry_min {
            return Err(invalid(
                "etcd.retry_min",
                "must be above zero and at most retry_max",
            ));
        }
        let progress = crate::registry::progress_interval(e);
        if e.confirm_within < progress * 2 {
            return Err(invalid(
                "etcd.confirm_within",
                format!("must be at least twice the progress interval (2 x keepalive_interval = {progress:?})"),
            ));
        }
        if e.request_timeout.is_zero() {
            return Err(invalid("etcd.request_timeout", "must be above zero"));
        }
        if e.list_page_size == 0 {
            return Err(invalid("etcd.list_page_size", "must be above zero"));
        }
        if e.max_message_bytes < 1 << 20 {
            return Err(invalid(
                "etcd.max_message_bytes",
                "must be at least 1048576 (etcd accepts values up to 1.5 MiB)",
            ));
        }
        if e.keepalive_interval.is_zero() || e.keepalive_timeout.is_zero() {
            return Err(invalid(
                "etcd.keepalive_interval",
                "keepalive times must be above zero",
            ));
        }
        Ok(())
    }

    /// Makes relative TLS paths relative to `base` (the config file's directory).
    pub fn resolve_paths(&mut self, base: &Path) {
        if let Some(tls) = &mut self.tls {
            for p in [&mut tls.ca_file, &mut tls.cert_file, &mut tls.key_file]
                .into_iter()
                .flatten()
            {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
    }
}

impl Config {
    /// Defaults, then the file named by `--config` (if any), then flags; then validation.
    pub fn load(args: &ServeArgs) -> Result<Self, ConfigError> {
        let mut cfg = match &args.config {
            Some(path) => Self::from_file(path)?,
            None => Self::default(),
        };
        cfg.apply_flags(args)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads a TOML file; relative TLS paths are taken relative to the file's directory.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg: Self = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        if cfg.zones_dir.is_relative() {
            cfg.zones_dir = base.join(&cfg.zones_dir);
        }
        if let Some(p) = &mut cfg.snapshot.file {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        cfg.etcd.resolve_paths(base);
        Ok(cfg)
    }

    fn apply_flags(&mut self, a: &ServeArgs) -> Result<(), ConfigError> {
        if !a.listen.is_empty() {
            self.listen = a
                .listen
                .iter()
                .map(|s| {
                    s.trim()
                        .parse()
                        .map_err(|_| invalid("--listen", format!("{s:?} is not ADDR:PORT")))
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(admin) = &a.admin_listen {
            self.admin_listen =
                optional_addr::parse(admin).map_err(|reason| invalid("--admin-listen", reason))?;
        }
        self.etcd.apply_flags(&a.etcd);
        if let Some(z) = &a.zone {
            self.dns.zone = z.clone();
        }
        if let Some(t) = a.ttl {
            self.dns.ttl = t;
        }
        if let Some(t) = a.negative_ttl {
            self.dns.negative_ttl = t;
        }
        if let Some(m) = &a.max_stale {
            self.dns.max_stale =
                optional_duration::parse(m).map_err(|reason| invalid("--max-stale", reason))?;
        }
        if let Some(t) = a.stale_ttl {
            self.dns.stale_ttl = t;
        }
        if let Some(t) = a.panic_threshold {
            self.dns.panic_threshold = t;
        }
        if !a.upstreams.is_empty() {
            self.forward.upstreams = a
                .upstreams
                .iter()
                .map(|u| parse_upstream(u).map_err(|reason| invalid("--upstream", reason)))
                .collect::<Result<_, _>>()?;
        }
        if let Some(t) = a.forward_timeout {
            self.forward.timeout = t;
        }
        if let Some(z) = &a.zones_dir {
            self.zones_dir = z.clone();
        }
        if let Some(f) = &a.snapshot_file {
            self.snapshot.file = (!f.as_os_str().is_empty()).then(|| f.clone());
        }
        Ok(())
    }

    /// Checks every setting and normalizes names (zone lower case and fully qualified).
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        if self.listen.is_empty() {
            return Err(invalid("listen", "at least one address is needed"));
        }
        self.etcd.validate()?;
        let d = &mut self.dns;
        d.zone = normalize_name("dns.zone", &d.zone)?;
        if d.zone == "." {
            return Err(invalid("dns.zone", "the root zone cannot be served"));
        }
        for (option, v) in [
            ("dns.ns_name", &mut d.ns_name),
            ("dns.hostmaster", &mut d.hostmaster),
        ] {
            if let Some(name) = v {
                *name = normalize_name(option, name)?;
            }
        }
        const MAX_TTL: u32 = i32::MAX as u32; // RFC 2181 section 8
        if d.ttl > MAX_TTL || d.negative_ttl > MAX_TTL {
            return Err(invalid(
                "dns.ttl",
                format!("TTLs must be at most {MAX_TTL}"),
            ));
        }
        if !(512..=4096).contains(&d.max_udp_payload) {
            return Err(invalid(
                "dns.max_udp_payload",
                "must be between 512 and 4096",
            ));
        }
        if d.stale_ttl > MAX_TTL {
            return Err(invalid(
                "dns.stale_ttl",
                format!("must be at most {MAX_TTL}"),
            ));
        }
        if !(0.0..=1.0).contains(&d.panic_threshold) {
            return Err(invalid(
                "dns.panic_threshold",
                "must be between 0.0 and 1.0",
            ));
        }
        if self.admin_header_timeout.is_zero() || self.admin_max_connections == 0 {
            return Err(invalid(
                "admin_header_timeout",
                "admin_header_timeout and admin_max_connections must be above zero",
            ));
        }
        if self.forward.timeout.is_zero() {
            return Err(invalid("forward.timeout", "must be above zero"));
        }
        if self.forward.max_in_flight == 0 || self.forward.max_in_flight_per_client == 0 {
            return Err(invalid(
                "forward.max_in_flight",
                "max_in_flight and max_in_flight_per_client must be above zero",
            ));
        }
        self.rate_limit.validate()?;
        self.locality.validate()?;
        let f = &self.forward;
        if f.max_sockets == 0 {
            return Err(invalid("forward.max_sockets", "must be above zero"));
        }
        if f.cache_bytes != 0 && f.cache_bytes < 1 << 16 {
            return Err(invalid(
                "forward.cache_bytes",
                "must be 0 (no cache) or at least 65536",
            ));
        }
        if f.cache_max_ttl < Duration::from_secs(1) {
            return Err(invalid(
                "forward.cache_max_ttl",
                "must be at least 1s (set forward.cache_bytes = 0 to turn the cache off)",
            ));
        }
        if self.dns.tcp_idle_timeout.is_zero() {
            return Err(invalid(
                "dns.tcp_idle_timeout",
                "must be above zero (0 would keep idle connections open forever)",
            ));
        }
        if self.dns.tcp_session_timeout.is_zero() {
            return Err(invalid("dns.tcp_session_timeout", "must be above zero"));
        }
        for (key, value) in [
            ("dns.tcp_max_connections", self.dns.tcp_max_connections),
            (
                "dns.tcp_max_connections_per_client",
                self.dns.tcp_max_connections_per_client,
            ),
            ("dns.tcp_max_pipelined", self.dns.tcp_max_pipelined),
            ("dns.max_pending", self.dns.max_pending),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be above zero"));
            }
        }
        if self.snapshot.min_interval.is_zero() {
            return Err(invalid("snapshot.min_interval", "must be above zero"));
        }
        let d = &mut self.dns;
        if d.answer_cache_capacity.is_some() {
            return Err(invalid(
                "dns.answer_cache_capacity",
                "replaced by dns.answer_cache_bytes (a limit in bytes, default 33554432)",
            ));
        }
        if d.answer_cache_bytes < 1 << 16 {
            return Err(invalid("dns.answer_cache_bytes", "must be at least 65536"));
        }
        self.validate_sources()
    }

    fn validate_sources(&mut self) -> Result<(), ConfigError> {
        let zone = self.dns.zone.clone();
        let mut prefixes = vec![(Format::Native, self.etcd.prefix.clone())];
        let mut sky_zones: Vec<String> = Vec::new();
        for src in &mut self.sources {
            let f = src.format;
            let at = |reason: String| {
                invalid("sources", format!("{f} source {:?}: {reason}", src.prefix))
            };
            if f == Format::Native {
                return Err(at(
                    "the native layout is etcd.prefix, not a [[sources]] entry".into(),
                ));
            }
            if src.prefix.trim_matches('/').is_empty() {
                return Err(at("prefix must not be empty".into()));
            }
            if let Some(name) = &src.service {
                if !f.one_service_per_prefix() {
                    return Err(at(
                        "`service` applies to etcd-naming and go-zero only".into()
                    ));
                }
                ServiceName::new(name).map_err(|e| at(e.to_string()))?;
            }
            if f == Format::Skydns {
                if src.zones.is_empty() {
                    return Err(at("skydns needs `zones`, the domains it answers".into()));
                }
                for z in &mut src.zones {
                    *z = normalize_name("sources.zones", z)?;
                    let overlaps =
                        |a: &str, b: &str| a == b || a.ends_with(&format!(".{b}")) || b == ".";
                    if overlaps(z, &zone) || overlaps(&zone, z) {
                        return Err(at(format!("zone {z} overlaps dns.zone {zone}")));
                    }
                    if sky_zones.contains(z) {
                        return Err(at(format!("zone {z} is served by another source")));
                    }
                    sky_zones.push(z.clone());
                }
            } else if !src.zones.is_empty() {
                return Err(at("`zones` applies to skydns only".into()));
            }
            if src.ttl > i32::MAX as u32 {
                return Err(at("ttl is too large".into()));
            }
            let normalized = Source::framework_prefix(&src.prefix);
            for (other, p) in &prefixes {
                if normalized.starts_with(p.as_str()) || p.starts_with(&normalized) {
                    return Err(at(format!(
                        "prefix overlaps the {other} prefix {p:?}: a key would belong to both"
                    )));
                }
            }
            prefixes.push((f, normalized));
        }
        Ok(())
    }

    /// Everything to watch: the native prefix first, then the framework sources.
    pub fn registry_sources(&self) -> Vec<Source> {
        let mut out = vec![Source::native(&self.etcd.prefix)];
        for s in &self.sources {
            let service = s.service.as_deref().and_then(|n| ServiceName::new(n).ok());
            let layout = Layout::new(s.format, service, s.zones.clone(), s.ttl);
            out.push(Source::framework(layout, &s.prefix));
        }
        out
    }
}

/// `ADDR:PORT`, or a bare address meaning port 53.
fn parse_upstream(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    s.parse::<SocketAddr>()
        .or_else(|_| {
            s.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .map_err(|_| format!("{s:?} is not ADDR[:PORT]"))
}

/// Lower-cases and fully qualifies a domain name, checking its syntax.
fn normalize_name(option: &'static str, name: &str) -> Result<String, ConfigError> {
    let mut n = name.trim().to_ascii_lowercase();
    if !n.ends_with('.') {
        n.push('.');
    }
    let labels_ok = n == "." || n[..n.len() - 1].split('.').all(DomainLabel::is_valid);
    if !labels_ok || n.len() > 254 {
        return Err(invalid(option, format!("{name:?} is not a domain name")));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_example_parses_and_equals_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/ruddr.toml");
        let mut cfg = Config::from_file(&path).expect("shipped config parses");
        cfg.validate().expect("shipped config is valid");
        let mut defaults = Config::default();
        defaults.validate().unwrap();
        // Relative paths in a file are relative to the file.
        defaults.zones_dir = path.parent().unwrap().join("zones");
        assert_eq!(
            cfg, defaults,
            "config/ruddr.toml must document the defaults"
        );
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let err = toml::from_str::<Config>("[dns]\nzonee = \"x.\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("zonee"), "{err}");
    }

    #[test]
    fn rate_limit_is_off_by_default_and_read_from_its_section() {
        let d = RateLimitConfig::default();
        assert_eq!(d.responses_per_second, 0, "off unless configured");
        assert!(d.exempt.is_empty(), "nothing exempt unless listed");
        let mut cfg: Config = toml::from_str(
            "[rate_limit]\nresponses_per_second = 20\nslip = 0\nipv4_prefix = 32\nipv6_prefix = 64\nexempt = [\"10.0.0.0/8\", \"fd00::/8\"]\ntable_size = 1024\n",
        )
        .unwrap();
        cfg.validate().unwrap();
        let r = &cfg.rate_limit;
        assert_eq!(
            (
                r.responses_per_second,
                r.slip,
                r.ipv4_prefix,
                r.ipv6_prefix,
                r.table_size
            ),
            (20, 0, 32, 64, 1024)
        );
        assert_eq!(r.exempt.len(), 2);
        // Typos and bad networks are errors naming the key.
        for (text, want) in [
            (
                "[rate_limit]\nresponse_per_second = 5\n",
                "response_per_second",
            ),
            ("[rate_limit]\nexempt = [\"10.0.0.0/33\"]\n", "exempt"),
            ("[rate_limit]\nipv4_prefix = 300\n", "ipv4_prefix"),
            ("[rate_limit]\nslip = -1\n", "slip"),
        ] {
            let err = toml::from_str::<Config>(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn locality_section_is_read_and_checked() {
        let d = LocalityConfig::default();
        assert_eq!((d.mode, d.min_healthy), (LocalityMode::Off, 1));
        let mut cfg: Config = toml::from_str(
            "[locality]\nmode = \"only\"\nmin_healthy = 2\ntrust_client_subnet = [\"127.0.0.4/32\"]\n[[locality.clients]]\nnetworks = [\"10.1.0.0/16\", \"fd00:1::/48\"]\nlocality = \"EU-1a\"\n[[locality.clients]]\nnetworks = [\"10.2.0.0/16\"]\nlocality = \"eu-1b\"\n",
        )
        .unwrap();
        cfg.validate().unwrap();
        let l = &cfg.locality;
        assert_eq!((l.mode, l.min_healthy), (LocalityMode::Only, 2));
        assert_eq!(l.clients[0].locality, "eu-1a", "lower-cased");
        assert_eq!(l.clients[0].networks.len(), 2);
        let err = toml::from_str::<Config>("[locality]\nmode = \"nearest\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("nearest") && err.contains("mode"), "{err}");
        for (text, want) in [
            ("[locality]\nmin_healthy = 0\n", "locality.min_healthy"),
            (
                "[[locality.clients]]\nnetworks = [\"10.1.0.0/16\"]\nlocality = \"a\"\n[[locality.clients]]\nnetworks = [\"10.1.2.0/24\"]\nlocality = \"b\"\n",
                "overlaps 10.1.0.0/16 (a)",
            ),
            (
                "[[locality.clients]]\nnetworks = [\"10.1.0.0/16\", \"10.0.0.0/8\"]\nlocality = \"a\"\n",
                "locality.clients.networks",
            ),
            (
                "[[locality.clients]]\nnetworks = []\nlocality = \"a\"\n",
                "lists no network",
            ),
            (
                "[[locality.clients]]\nnetworks = [\"10.1.0.0/16\"]\nlocality = \"a b\"\n",
                "locality.clients.locality",
            ),
        ] {
            let mut cfg: Config = toml::from_str(text).unwrap();
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
        let err = toml::from_str::<Config>(
            "[[locality.clients]]\nnetwork = [\"10.0.0.0/8\"]\nlocality = \"a\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("network"), "{err}");
    }

    #[test]
    fn flags_override_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "listen=[\"127.0.0.1:5300\"]\n[dns]\nzone=\"a.example\"\nttl=9\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            zone: Some("B.Example".into()),
            etcd: EtcdArgs {
                etcd_endpoints: vec!["http://127.0.0.1:1".into(), "http://127.0.0.1:2".into()],
                ..Default::default()
            },
            ..Default::default()
        };
        let cfg = Config::load(&args).unwrap();
        assert_eq!(cfg.dns.zone, "b.example.");
        assert_eq!(cfg.dns.ttl, 9);
        assert_eq!(
            cfg.listen,
            ["127.0.0.1:5300".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(cfg.etcd.endpoints.len(), 2);
    }

    #[test]
    fn sources_are_checked() {
        let load = |text: &str| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("c.toml");
            std::fs::write(&path, text).unwrap();
            Config::from_file(&path).and_then(|mut c| c.validate().map(|()| c))
        };
        let ok = load(
            "[[sources]]\nformat = \"kratos\"\nprefix = \"/microservices\"\n\n[[sources]]\nformat = \"skydns\"\nprefix = \"/skydns/\"\nzones = [\"SkyDNS.local\"]\n",
        )
        .unwrap();
        assert_eq!(ok.sources[1].zones, ["skydns.local."]);
        let sources = ok.registry_sources();
        assert_eq!(sources.len(), 3);
        assert_eq!(sources[1].prefix, "/microservices/");
        for (text, want) in [
            ("[[sources]]\nformat = \"consul\"\nprefix = \"/x\"\n", "unknown variant"),
            ("[[sources]]\nformat = \"native\"\nprefix = \"/x/\"\n", "etcd.prefix"),
            ("[[sources]]\nformat = \"kratos\"\nprefix = \"/\"\n", "must not be empty"),
            ("[[sources]]\nformat = \"kratos\"\nprefix = \"/ruddr/services/k\"\n", "overlaps the native prefix"),
            ("[[sources]]\nformat = \"kratos\"\nprefix = \"/a\"\n[[sources]]\nformat = \"go-micro\"\nprefix = \"/a/\"\n", "overlaps the kratos prefix"),
            ("[[sources]]\nformat = \"kratos\"\nprefix = \"/a\"\nservice = \"x\"\n", "etcd-naming and go-zero only"),
            ("[[sources]]\nformat = \"go-zero\"\nprefix = \"a\"\nservice = \"a_b\"\n", "not a DNS label"),
            ("[[sources]]\nformat = \"skydns\"\nprefix = \"/skydns/\"\n", "needs `zones`"),
            ("[[sources]]\nformat = \"skydns\"\nprefix = \"/skydns/\"\nzones = [\"x.svc.internal.\"]\n", "overlaps dns.zone"),
            ("[[sources]]\nformat = \"go-zero\"\nprefix = \"a\"\nzones = [\"x.\"]\n", "skydns only"),
            ("[[sources]]\nformat = \"kratos\"\nprefix = \"/a\"\nbogus = 1\n", "bogus"),
        ] {
            let err = load(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn forward_cache_and_sockets_are_configurable() {
        let text = "[forward]\nmax_sockets = 8\ncache_bytes = 0\ncache_max_ttl = \"10m\"\n";
        let mut cfg: Config = toml::from_str(text).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.forward.max_sockets, 8);
        assert_eq!(
            cfg.forward.cache_bytes, 0,
            "0 turns the cache off and is valid"
        );
        assert_eq!(cfg.forward.cache_max_ttl, Duration::from_secs(600));
        let d = ForwardConfig::default();
        assert_eq!(
            (d.max_sockets, d.cache_bytes, d.cache_max_ttl),
            (128, 16 << 20, Duration::from_secs(3600))
        );
    }

    #[test]
    fn bad_values_name_the_option() {
        let cases = [
            ("[etcd]\nprefix = \"ruddr\"\n", "etcd.prefix"),
            ("[dns]\nzone = \"bad zone\"\n", "dns.zone"),
            ("[dns]\nmax_udp_payload = 100\n", "dns.max_udp_payload"),
            ("[etcd]\nusername = \"u\"\n", "etcd.username"),
            ("listen = []\n", "listen"),
            ("[etcd]\nlist_page_size = 0\n", "etcd.list_page_size"),
            (
                "[etcd]\nmax_message_bytes = 1000\n",
                "etcd.max_message_bytes",
            ),
            ("[etcd]\nrequest_timeout = \"0s\"\n", "etcd.request_timeout"),
            ("[etcd]\nconfirm_within = \"1s\"\n", "etcd.confirm_within"),
            ("[dns]\nanswer_cache_bytes = 10\n", "dns.answer_cache_bytes"),
            ("[dns]\ntcp_idle_timeout = \"0s\"\n", "dns.tcp_idle_timeout"),
            ("[forward]\nmax_in_flight = 0\n", "forward.max_in_flight"),
            (
                "[rate_limit]\nresponses_per_second = 2000000\n",
                "rate_limit.responses_per_second",
            ),
            ("[rate_limit]\nslip = 101\n", "rate_limit.slip"),
            ("[rate_limit]\nipv4_prefix = 33\n", "rate_limit.ipv4_prefix"),
            (
                "[rate_limit]\nipv6_prefix = 129\n",
                "rate_limit.ipv6_prefix",
            ),
            ("[rate_limit]\ntable_size = 0\n", "rate_limit.table_size"),
            ("[forward]\nmax_sockets = 0\n", "forward.max_sockets"),
            ("[forward]\ncache_bytes = 1000\n", "forward.cache_bytes"),
            (
                "[forward]\ncache_max_ttl = \"0s\"\n",
                "forward.cache_max_ttl",
            ),
        ];
        for (text, option) in cases {
            let mut cfg: Config = toml::from_str(text).unwrap();
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains(option), "{text}: {err}");
        }
        // The replaced key is refused with a message naming its successor.
        let mut cfg: Config = toml::from_str("[dns]\nanswer_cache_capacity = 1000\n").unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(
            err.contains("dns.answer_cache_capacity") && err.contains("dns.answer_cache_bytes"),
            "{err}"
        );
        let err = toml::from_str::<Config>("[dns]\nttl = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ttl"), "{err}");
    }
}
