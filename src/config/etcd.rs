//! `[etcd]`: where the registry is, how to reach it, and how long to trust what it said.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError};
use crate::cli::EtcdArgs;

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
    /// A re-list after etcd compacted the watched revision waits a random time up to this:
    /// replicas that all fell behind at once (a compaction past every one of them) do not all
    /// list the whole registry out of etcd at the same moment. Answers go on from the data
    /// held meanwhile.
    #[serde(with = "humantime_serde")]
    pub relist_jitter: Duration,
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
            relist_jitter: Duration::from_secs(5),
            list_page_size: 50_000,
            max_message_bytes: 64 << 20,
        }
    }
}

fn redact<S: serde::Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("<redacted>"),
        None => s.serialize_none(),
    }
}

impl EtcdConfig {
    /// How often a watch asks etcd for a progress notification: twice the keepalive interval
    /// (at least 1 s), so a confirmation comes well within `confirm_within`.
    pub fn progress_interval(&self) -> Duration {
        self.keepalive_interval.max(Duration::from_secs(1)) * 2
    }

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
        let progress = e.progress_interval();
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
