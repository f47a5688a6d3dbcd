//! What to register: one instance, its health check and its timings. Parsed from flags or from
//! a TOML file (`[[instance]]` tables), validated before anything is written to etcd.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cache::{Health, Instance, InstanceId, ServiceName};
use crate::config::{ConfigError, EtcdConfig};
use crate::registry::{encode_key, encode_value};

/// A health check. Exactly one kind per instance, or none (always passing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// GET the URL; 2xx passes.
    Http(String),
    /// Connect to `host:port`; success passes.
    Tcp(String),
    /// Run with `sh -c`; exit status 0 passes.
    Cmd(String),
}

/// One instance as written in `[[instance]]` (and built from flags).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceSpec {
    pub service: String,
    pub id: String,
    pub address: String,
    pub port: Option<u16>,
    #[serde(default)]
    pub ports: BTreeMap<String, u16>,
    #[serde(default)]
    pub tags: Vec<String>,
    pub weight: Option<u16>,
    pub priority: Option<u16>,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    #[serde(default = "defaults::ttl", with = "humantime_serde")]
    pub ttl: Duration,
    pub check_http: Option<String>,
    pub check_tcp: Option<String>,
    pub check_cmd: Option<String>,
    #[serde(default = "defaults::interval", with = "humantime_serde")]
    pub interval: Duration,
    #[serde(default = "defaults::timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "defaults::fail_after")]
    pub fail_after: u32,
    #[serde(default = "defaults::pass_after")]
    pub pass_after: u32,
    #[serde(default = "defaults::deregister_after", with = "humantime_serde")]
    pub deregister_after: Duration,
    #[serde(default = "defaults::drain", with = "humantime_serde")]
    pub drain: Duration,
}

pub mod defaults {
    use std::time::Duration;
    pub fn ttl() -> Duration {
        Duration::from_secs(10)
    }
    pub fn interval() -> Duration {
        Duration::from_secs(5)
    }
    pub fn timeout() -> Duration {
        Duration::from_secs(2)
    }
    pub fn fail_after() -> u32 {
        3
    }
    pub fn pass_after() -> u32 {
        2
    }
    pub fn deregister_after() -> Duration {
        Duration::from_secs(60)
    }
    pub fn drain() -> Duration {
        Duration::from_secs(5)
    }
}

/// A validated registration.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    pub service: ServiceName,
    /// What is written to the registry (its health is set by the checks).
    pub instance: Instance,
    pub ttl: Duration,
    pub check: Option<Check>,
    pub interval: Duration,
    pub timeout: Duration,
    pub fail_after: u32,
    pub pass_after: u32,
    pub deregister_after: Duration,
    pub drain: Duration,
}

fn invalid(option: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        option,
        reason: reason.into(),
    }
}

impl InstanceSpec {
    /// Checks every field against the registry contract and sane timings.
    pub fn validate(&self) -> Result<Registration, ConfigError> {
        let service =
            ServiceName::new(&self.service).map_err(|e| invalid("--service", e.to_string()))?;
        let id = InstanceId::new(&self.id).map_err(|e| invalid("--id", e.to_string()))?;
        let address: IpAddr = self.address.parse().map_err(|_| {
            invalid(
                "--address",
                format!("{:?} is not an IPv4 or IPv6 literal", self.address),
            )
        })?;
        if self.port == Some(0) || self.ports.values().any(|p| *p == 0) {
            return Err(invalid("--port", "port 0 is not usable"));
        }
        let mut ports = BTreeMap::new();
        for (name, port) in &self.ports {
            let label =
                ServiceName::new(name).map_err(|e| invalid("--port-name", e.to_string()))?;
            ports.insert(label.as_str().to_string(), *port);
        }
        let checks = [&self.check_http, &self.check_tcp, &self.check_cmd];
        if checks.iter().filter(|c| c.is_some()).count() > 1 {
            return Err(invalid(
                "--check-http",
                "give at most one of --check-http, --check-tcp, --check-cmd",
            ));
        }
        let check = if let Some(url) = &self.check_http {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(
                    "--check-http",
                    format!("{url:?} is not an http:// or https:// URL"),
                ));
            }
            Some(Check::Http(url.clone()))
        } else if let Some(target) = &self.check_tcp {
            if target
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
            {
                return Err(invalid(
                    "--check-tcp",
                    format!("{target:?} is not HOST:PORT"),
                ));
            }
            Some(Check::Tcp(target.clone()))
        } else {
            self.check_cmd.as_ref().map(|c| Check::Cmd(c.clone()))
        };
        if self.ttl < Duration::from_secs(2) {
            return Err(invalid(
                "--ttl",
                "must be at least 2s (etcd lease granularity is 1s)",
            ));
        }
        if self.interval.is_zero() {
            return Err(invalid("--interval", "must be above zero"));
        }
        if self.timeout.is_zero() {
            return Err(invalid("--timeout", "must be above zero"));
        }
        if self.fail_after == 0 || self.pass_after == 0 {
            return Err(invalid(
                "--fail-after",
                "--fail-after and --pass-after must be at least 1",
            ));
        }
        Ok(Registration {
            service,
            instance: Instance {
                id,
                address: crate::cache::Address::Ip(address),
                port: self.port,
                ports: ports.into_iter().collect(),
                tags: self.tags.clone(),
                weight: self.weight.unwrap_or(1),
                priority: self.priority.unwrap_or(0),
                health: Health::Passing,
                meta: self.meta.clone().into_iter().collect(),
                source: crate::cache::SourceId::NATIVE,
                locality: None,
            },
            ttl: self.ttl,
            check,
            interval: self.interval,
            timeout: self.timeout,
            fail_after: self.fail_after,
            pass_after: self.pass_after,
            deregister_after: self.deregister_after,
            drain: self.drain,
        })
    }
}

/// `ruddr register --config FILE`: etcd settings and any number of instances.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterFile {
    #[serde(default)]
    pub etcd: EtcdConfig,
    #[serde(default)]
    pub instance: Vec<InstanceSpec>,
}

impl RegisterFile {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }
}

impl Registration {
    /// The registry value (see the README "Registry contract") for `health`, with extra meta.
    pub fn value(&self, health: Health, extra_meta: &BTreeMap<String, String>) -> String {
        let mut instance = self.instance.clone();
        instance.health = health;
        instance
            .meta
            .extend(extra_meta.iter().map(|(k, v)| (k.clone(), v.clone())));
        encode_value(&instance)
    }

    /// The etcd key under `prefix`.
    pub fn key(&self, prefix: &str) -> String {
        encode_key(prefix, &self.service, &self.instance.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::parse_entry;

    fn spec() -> InstanceSpec {
        toml::from_str::<RegisterFile>(
            "[[instance]]\nservice = \"Web\"\nid = \"web-1\"\naddress = \"10.0.0.5\"\nport = 8080\nports = { grpc = 9090 }\ntags = [\"v2\"]\nmeta = { az = \"a\" }\ncheck_http = \"http://127.0.0.1:1/health\"\n",
        )
        .unwrap()
        .instance
        .remove(0)
    }

    #[test]
    fn defaults_and_value_follow_the_registry_contract() {
        let r = spec().validate().unwrap();
        assert_eq!(
            (r.ttl, r.interval, r.fail_after, r.pass_after),
            (defaults::ttl(), defaults::interval(), 3, 2)
        );
        assert_eq!(r.key("/ruddr/services/"), "/ruddr/services/web/web-1");
        let extra = BTreeMap::from([("check".to_string(), "ok".to_string())]);
        let value = r.value(Health::Critical, &extra);
        let (svc, inst) = parse_entry(
            "/ruddr/services/",
            r.key("/ruddr/services/").as_bytes(),
            value.as_bytes(),
        )
        .unwrap();
        assert_eq!(svc.as_str(), "web");
        assert_eq!(inst.health, Health::Critical);
        assert_eq!(inst.ports[&"grpc".to_string()], 9090);
        assert_eq!(inst.meta.get("check").unwrap(), "ok");
        assert_eq!(inst.meta.get("az").unwrap(), "a");
    }

    #[test]
    fn bad_specs_name_the_option() {
        type Mutation = fn(&mut InstanceSpec);
        let cases: Vec<(Mutation, &str)> = vec![
            (|s| s.service = "we_b".into(), "--service"),
            (|s| s.id = "".into(), "--id"),
            (|s| s.address = "host.example".into(), "--address"),
            (|s| s.port = Some(0), "--port"),
            (|s| s.check_tcp = Some("x:1".into()), "--check-http"),
            (
                |s| {
                    s.check_http = None;
                    s.check_tcp = Some("nohost".into())
                },
                "--check-tcp",
            ),
            (|s| s.ttl = Duration::from_secs(1), "--ttl"),
            (|s| s.fail_after = 0, "--fail-after"),
            (|s| s.interval = Duration::ZERO, "--interval"),
        ];
        for (mutate, option) in cases {
            let mut s = spec();
            mutate(&mut s);
            let err = s.validate().unwrap_err().to_string();
            assert!(err.contains(option), "{option}: {err}");
        }
        let err = toml::from_str::<RegisterFile>(
            "[[instance]]\nservice=\"a\"\nid=\"b\"\naddress=\"10.0.0.1\"\nchek_http=\"x\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("chek_http"), "{err}");
    }
}
