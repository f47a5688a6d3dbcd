//! `[[sources]]`: the framework layouts read beside the native prefix, and what a layout is
//! called in the config.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{invalid, normalize_name, ConfigError};
use crate::cache::ServiceName;

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

/// The name of a layout, as `[[sources]] format = ...` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// ruddr's own contract: `<prefix><service>/<id>` = JSON (README "Registry contract").
    Native,
    /// etcd's `client/v3/naming/endpoints`: `<target>/<anything>` = `{"Addr":..,"Metadata":..}`.
    EtcdNaming,
    /// go-zero `core/discov`: `<key>/<lease-id>` = `host:port`.
    GoZero,
    /// Kratos `contrib/registry/etcd`: `/microservices/<name>/<id>` = ServiceInstance JSON.
    Kratos,
    /// go-micro `registry/etcd`: `/micro/registry/<name>/<node-id>` = Service JSON.
    GoMicro,
    /// The CoreDNS etcd plugin (and SkyDNS, external-dns): `/skydns/<reversed name>` =
    /// `{"host":..,"port":..,"priority":..,"weight":..,"text":..,"ttl":..}`.
    Skydns,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Native => "native",
            Format::EtcdNaming => "etcd-naming",
            Format::GoZero => "go-zero",
            Format::Kratos => "kratos",
            Format::GoMicro => "go-micro",
            Format::Skydns => "skydns",
        }
    }

    /// Layouts whose keys carry no service name: one source per target (or base key).
    pub fn one_service_per_prefix(self) -> bool {
        matches!(self, Format::EtcdNaming | Format::GoZero)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a framework source watches for the configured `prefix`: a `/` is appended if missing
/// (a target `a/svc` must not also match `a/svc2`).
pub fn framework_prefix(prefix: &str) -> String {
    if prefix.ends_with('/') {
        prefix.to_string()
    } else {
        format!("{prefix}/")
    }
}

/// Checks `[[sources]]` against the discovery zone and the native prefix, and normalizes
/// their zones.
pub fn validate(
    sources: &mut [SourceConfig],
    zone: &str,
    native_prefix: &str,
) -> Result<(), ConfigError> {
    let zone = zone.to_string();
    let mut prefixes = vec![(Format::Native, native_prefix.to_string())];
    let mut sky_zones: Vec<String> = Vec::new();
    for src in sources.iter_mut() {
        let f = src.format;
        let at =
            |reason: String| invalid("sources", format!("{f} source {:?}: {reason}", src.prefix));
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
        let normalized = framework_prefix(&src.prefix);
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
