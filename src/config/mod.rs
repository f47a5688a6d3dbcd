//! Settings: defaults, then the TOML file, then flags, validated into one [`Config`] before any
//! socket is bound.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cache::DomainLabel;
use crate::cli::ServeArgs;

mod dns;
mod etcd;
mod sources;

pub use dns::{
    ClientLocality, DnsConfig, ForwardConfig, LocalityConfig, LocalityMode, QueryLogMode,
    RateLimitConfig, UdpSteering,
};
pub use etcd::{EtcdConfig, TlsConfig};
pub use sources::{framework_prefix, Format, SourceConfig};

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

pub(crate) fn invalid(option: &'static str, reason: impl Into<String>) -> ConfigError {
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
    pub restart: RestartConfig,
    pub forward: ForwardConfig,
    pub rate_limit: RateLimitConfig,
    pub locality: LocalityConfig,
    /// Directory of RFC 1035 zone files (`<zone>.zone`) served beside the discovery zone; a
    /// missing directory means no static zones. Relative to the config file.
    pub zones_dir: PathBuf,
    /// Framework registry layouts read beside the native prefix (`[[sources]]`).
    pub sources: Vec<SourceConfig>,
    pub xds: XdsConfig,
    pub dnstap: DnstapConfig,
    /// The status page (`/`) and its JSON API (`/v1/...`) on the admin listener: the whole
    /// registry, to whoever reaches the admin address.
    pub admin_ui: bool,
}

/// dnstap output (off unless one of `socket`, `tcp`, `file` is set).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnstapConfig {
    /// A collector's Unix socket (Frame Streams, bidirectional). Relative to the config file.
    #[serde(with = "optional_path")]
    pub socket: Option<PathBuf>,
    /// A collector's TCP address, `ADDR:PORT` (Frame Streams, bidirectional).
    #[serde(with = "optional_addr")]
    pub tcp: Option<SocketAddr>,
    /// A file to write (Frame Streams, unidirectional), replaced at start. Relative to the
    /// config file.
    #[serde(with = "optional_path")]
    pub file: Option<PathBuf>,
    /// The `identity` field; `""`: the host name.
    pub identity: String,
    /// The `version` field; `""`: `ruddr <version>`.
    pub version: String,
    /// Exchanges queued for the writer; past it (a slow or absent collector) they are dropped
    /// and counted, never the answer.
    pub buffer: usize,
    /// Send the query messages (`*_QUERY`).
    pub log_queries: bool,
    /// Send the response messages (`*_RESPONSE`).
    pub log_responses: bool,
}

impl Default for DnstapConfig {
    fn default() -> Self {
        Self {
            socket: None,
            tcp: None,
            file: None,
            identity: String::new(),
            version: String::new(),
            buffer: 10_000,
            log_queries: true,
            log_responses: true,
        }
    }
}

impl DnstapConfig {
    pub fn is_on(&self) -> bool {
        self.socket.is_some() || self.tcp.is_some() || self.file.is_some()
    }

    pub fn identity(&self) -> String {
        if !self.identity.is_empty() {
            return self.identity.clone();
        }
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default()
    }

    pub fn version(&self) -> String {
        if self.version.is_empty() {
            format!("ruddr {}", env!("CARGO_PKG_VERSION"))
        } else {
            self.version.clone()
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let sinks = [
            self.socket.is_some(),
            self.tcp.is_some(),
            self.file.is_some(),
        ];
        if sinks.iter().filter(|s| **s).count() > 1 {
            return Err(invalid(
                "dnstap.socket",
                "set one of dnstap.socket, dnstap.tcp and dnstap.file",
            ));
        }
        if !(1..=1_000_000).contains(&self.buffer) {
            return Err(invalid("dnstap.buffer", "must be 1 to 1,000,000"));
        }
        if self.is_on() && !self.log_queries && !self.log_responses {
            return Err(invalid(
                "dnstap.log_queries",
                "log_queries and log_responses are both off: nothing to send",
            ));
        }
        Ok(())
    }
}

/// The xDS (ADS) server for gRPC clients (`xds:///<service>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct XdsConfig {
    /// Address of the gRPC server; `""` (the default) turns it off.
    #[serde(with = "optional_addr")]
    pub listen: Option<SocketAddr>,
    /// PEM certificate chain and key: serve over TLS. Relative to the config file.
    #[serde(with = "optional_path")]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(with = "optional_path")]
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA bundle: clients must present a certificate it signed.
    #[serde(with = "optional_path")]
    pub client_ca_file: Option<PathBuf>,
    /// ADS streams open at once; past it, new streams are refused (RESOURCE_EXHAUSTED).
    pub max_streams: usize,
    /// Resource names one stream may subscribe to (all types together); the rest are ignored.
    pub max_resources_per_stream: usize,
    /// Largest request or response message.
    pub max_message_bytes: usize,
    /// HTTP/2 PING interval on idle connections, and how long an unanswered PING waits before
    /// the connection is closed (dead clients free their stream).
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
}

impl Default for XdsConfig {
    fn default() -> Self {
        Self {
            listen: None,
            tls_cert_file: None,
            tls_key_file: None,
            client_ca_file: None,
            max_streams: 10_000,
            max_resources_per_stream: 1_000,
            max_message_bytes: 4 << 20,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
        }
    }
}

impl XdsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err(invalid(
                "xds.tls_cert_file",
                "tls_cert_file and tls_key_file go together",
            ));
        }
        if self.client_ca_file.is_some() && self.tls_cert_file.is_none() {
            return Err(invalid(
                "xds.client_ca_file",
                "client certificates need TLS (tls_cert_file and tls_key_file)",
            ));
        }
        if self.max_streams == 0
            || self.max_resources_per_stream == 0
            || self.max_message_bytes < 4096
            || self.keepalive_interval.is_zero()
            || self.keepalive_timeout.is_zero()
        {
            return Err(invalid(
                "xds.max_streams",
                "max_streams, max_resources_per_stream, keepalive_interval and keepalive_timeout must be above zero, max_message_bytes at least 4096",
            ));
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

/// Restarts that lose no query (README "Restarts without a lost query").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RestartConfig {
    /// A Unix socket through which a running ruddr hands its listening sockets to a new one
    /// started with the same setting (without systemd); `""` turns it off. Relative to the
    /// config file.
    #[serde(with = "optional_path")]
    pub handover_socket: Option<PathBuf>,
    /// How long a process with inherited sockets waits before it answers: a hand-over
    /// successor for its watch to be current (past it, it takes over with its snapshot's data
    /// if within max_stale, else gives up and the running one goes on); under systemd for data
    /// (its snapshot or its first list; past it, it answers anyway).
    #[serde(with = "humantime_serde")]
    pub wait_for_data: Duration,
}

impl Default for RestartConfig {
    fn default() -> Self {
        Self {
            handover_socket: None,
            wait_for_data: Duration::from_secs(30),
        }
    }
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
            restart: RestartConfig::default(),
            forward: ForwardConfig::default(),
            rate_limit: RateLimitConfig::default(),
            locality: LocalityConfig::default(),
            zones_dir: PathBuf::from("zones"),
            sources: Vec::new(),
            xds: XdsConfig::default(),
            dnstap: DnstapConfig::default(),
            admin_ui: true,
        }
    }
}

/// `admin_listen` in TOML: an `ADDR:PORT` string, or `""` for off.
pub(crate) mod optional_addr {
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
pub(crate) mod optional_duration {
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
pub(crate) mod optional_path {
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
        for p in [
            &mut cfg.xds.tls_cert_file,
            &mut cfg.xds.tls_key_file,
            &mut cfg.xds.client_ca_file,
            &mut cfg.dnstap.socket,
            &mut cfg.dnstap.file,
            &mut cfg.dns.tls_cert_file,
            &mut cfg.dns.tls_key_file,
            &mut cfg.dns.tls_client_ca_file,
            &mut cfg.restart.handover_socket,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
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
        if let Some(xds) = &a.xds_listen {
            self.xds.listen =
                optional_addr::parse(xds).map_err(|reason| invalid("--xds-listen", reason))?;
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
                .map(|u| dns::parse_upstream(u).map_err(|reason| invalid("--upstream", reason)))
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
        if let Some(f) = &a.handover_socket {
            self.restart.handover_socket = (!f.as_os_str().is_empty()).then(|| f.clone());
        }
        Ok(())
    }

    /// Checks every setting and normalizes names (zone lower case and fully qualified), one
    /// section at a time.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        if self.listen.is_empty() {
            return Err(invalid("listen", "at least one address is needed"));
        }
        if self.admin_header_timeout.is_zero() || self.admin_max_connections == 0 {
            return Err(invalid(
                "admin_header_timeout",
                "admin_header_timeout and admin_max_connections must be above zero",
            ));
        }
        if self.snapshot.min_interval.is_zero() {
            return Err(invalid("snapshot.min_interval", "must be above zero"));
        }
        if self.restart.wait_for_data.is_zero() {
            return Err(invalid("restart.wait_for_data", "must be above zero"));
        }
        self.etcd.validate()?;
        self.dns.validate()?;
        self.forward.validate()?;
        self.rate_limit.validate()?;
        self.locality.validate()?;
        self.xds.validate()?;
        self.dnstap.validate()?;
        sources::validate(&mut self.sources, &self.dns.zone, &self.etcd.prefix)
    }
}

/// Lower-cases and fully qualifies a domain name, checking its syntax.
pub(crate) fn normalize_name(option: &'static str, name: &str) -> Result<String, ConfigError> {
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
    use crate::cli::EtcdArgs;

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
        assert_eq!(ok.sources.len(), 2);
        assert_eq!(framework_prefix(&ok.sources[0].prefix), "/microservices/");
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
