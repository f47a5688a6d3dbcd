//! `[dns]`, `[forward]`, `[rate_limit]` and `[locality]`: the DNS side's settings, each with
//! its own `validate`.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{invalid, normalize_name, optional_duration, ConfigError};

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
    /// Bytes of cached forwarded answers each answering thread keeps in a table of its own in
    /// front of the shared cache (0: none); on top of `cache_bytes`, per thread.
    pub cache_front_bytes: usize,
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
            cache_front_bytes: 4 << 20,
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
    /// UDP queries waiting on an upstream at once; past it, SERVFAIL.
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
    /// Receive buffer of each UDP socket, in bytes (SO_RCVBUF; the kernel caps it at
    /// `net.core.rmem_max`): room for the queries that arrive while a socket's thread is off
    /// the CPU, so a burst does not overflow into lost queries.
    pub udp_receive_buffer: usize,
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
    /// One log line per query on the `ruddr::query` target: `off`, `all`, or `errors`
    /// (SERVFAIL, REFUSED and FORMERR answers only).
    pub query_log: QueryLogMode,
    /// Log one query in this many (of those `query_log` selects).
    pub query_log_sample: u32,
    /// Addresses to answer DNS over TLS on (RFC 7858; port 853 by convention). Empty: none.
    pub tls_listen: Vec<SocketAddr>,
    /// Addresses to answer DNS over HTTPS on (RFC 8484, path `/dns-query`). Empty: none.
    pub https_listen: Vec<SocketAddr>,
    /// PEM certificate chain and key for DoT and DoH. Relative to the config file.
    #[serde(with = "super::optional_path")]
    pub tls_cert_file: Option<std::path::PathBuf>,
    #[serde(with = "super::optional_path")]
    pub tls_key_file: Option<std::path::PathBuf>,
    /// PEM CA bundle: DoT and DoH clients must present a certificate it signed (mutual TLS).
    #[serde(with = "super::optional_path")]
    pub tls_client_ca_file: Option<std::path::PathBuf>,
    /// A TLS handshake not done within this is cut.
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    /// HTTP/2 streams a DoH connection may have open at once.
    pub https_max_streams_per_connection: u32,
    /// Largest HTTP request head (HTTP/1.1) or header list (HTTP/2), bytes.
    pub https_max_header_bytes: usize,
    /// Largest POST body, bytes (a DNS message is at most 65,535); past it, 413.
    pub https_max_body_bytes: usize,
    /// A request head or body not received within this is answered 408 (or the connection
    /// closed).
    #[serde(with = "humantime_serde")]
    pub https_request_timeout: Duration,
    /// HTTP/2 streams a client may reset before the server handles them, at once; past it the
    /// connection is closed (rapid reset protection, CVE-2023-44487).
    pub https_max_pending_resets: usize,
}

/// Which queries get a query log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueryLogMode {
    Off,
    All,
    Errors,
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
            udp_receive_buffer: 4 << 20,
            ns_name: None,
            hostmaster: None,
            answer_cache_bytes: 32 << 20,
            answer_front_bytes: 16 << 20,
            answer_cache_capacity: None,
            max_stale: None,
            stale_ttl: 30,
            panic_threshold: 0.0,
            query_log: QueryLogMode::Off,
            query_log_sample: 1,
            tls_listen: Vec::new(),
            https_listen: Vec::new(),
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            tls_handshake_timeout: Duration::from_secs(5),
            https_max_streams_per_connection: 100,
            https_max_header_bytes: 16 << 10,
            https_max_body_bytes: 65_535,
            https_request_timeout: Duration::from_secs(5),
            https_max_pending_resets: 20,
        }
    }
}

impl DnsConfig {
    /// Checks `[dns]` and normalizes its names.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        let d = self;
        d.zone = normalize_name("dns.zone", &d.zone)?;
        let encrypted = !d.tls_listen.is_empty() || !d.https_listen.is_empty();
        if encrypted && (d.tls_cert_file.is_none() || d.tls_key_file.is_none()) {
            return Err(invalid(
                "dns.tls_cert_file",
                "tls_listen and https_listen need tls_cert_file and tls_key_file",
            ));
        }
        if d.tls_cert_file.is_some() != d.tls_key_file.is_some() {
            return Err(invalid(
                "dns.tls_cert_file",
                "tls_cert_file and tls_key_file go together",
            ));
        }
        if d.tls_handshake_timeout.is_zero()
            || d.https_request_timeout.is_zero()
            || d.https_max_streams_per_connection == 0
            || d.https_max_pending_resets == 0
            || d.https_max_header_bytes < 1024
            || !(512..=65_535).contains(&d.https_max_body_bytes)
        {
            return Err(invalid(
                "dns.https_max_body_bytes",
                "tls_handshake_timeout, https_request_timeout, https_max_streams_per_connection and https_max_pending_resets must be above zero, https_max_header_bytes at least 1024, https_max_body_bytes 512 to 65535",
            ));
        }
        if encrypted {
            let files = crate::dns::server::tls::CertFiles::of(d).expect("both set");
            crate::dns::server::tls::check(&files)
                .map_err(|e| invalid("dns.tls_cert_file", e.to_string()))?;
        }
        if d.query_log_sample == 0 {
            return Err(invalid("dns.query_log_sample", "must be at least 1"));
        }
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
        if d.tcp_idle_timeout.is_zero() {
            return Err(invalid(
                "dns.tcp_idle_timeout",
                "must be above zero (0 would keep idle connections open forever)",
            ));
        }
        if d.tcp_session_timeout.is_zero() {
            return Err(invalid("dns.tcp_session_timeout", "must be above zero"));
        }
        for (key, value) in [
            ("dns.tcp_max_connections", d.tcp_max_connections),
            (
                "dns.tcp_max_connections_per_client",
                d.tcp_max_connections_per_client,
            ),
            ("dns.tcp_max_pipelined", d.tcp_max_pipelined),
            ("dns.max_pending", d.max_pending),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be above zero"));
            }
        }
        if d.answer_cache_capacity.is_some() {
            return Err(invalid(
                "dns.answer_cache_capacity",
                "replaced by dns.answer_cache_bytes (a limit in bytes, default 33554432)",
            ));
        }
        if d.answer_cache_bytes < 1 << 16 {
            return Err(invalid("dns.answer_cache_bytes", "must be at least 65536"));
        }
        Ok(())
    }
}

impl ForwardConfig {
    /// Checks `[forward]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let f = self;
        if f.timeout.is_zero() {
            return Err(invalid("forward.timeout", "must be above zero"));
        }
        if f.max_in_flight == 0 || f.max_in_flight_per_client == 0 {
            return Err(invalid(
                "forward.max_in_flight",
                "max_in_flight and max_in_flight_per_client must be above zero",
            ));
        }
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
        Ok(())
    }
}

/// `ADDR:PORT`, or a bare address meaning port 53.
pub(super) fn parse_upstream(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    s.parse::<SocketAddr>()
        .or_else(|_| {
            s.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .map_err(|_| format!("{s:?} is not ADDR[:PORT]"))
}
