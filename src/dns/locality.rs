//! Client localities: which locality a query comes from, from its source address or, for
//! trusted forwarders, its EDNS Client Subnet option (RFC 7871). Pure: no I/O.
//! What a locality does to an answer is decided by [`super::zone::registry::Zone::build`].

use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::op::Edns;
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use ipnet::IpNet;

use crate::config::{LocalityConfig, LocalityMode};

/// Where clients are, from `[locality]`.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub mode: LocalityMode,
    trust_client_subnet: Vec<IpNet>,
    /// Client networks (they do not overlap) and their localities.
    clients: Vec<(IpNet, Arc<str>)>,
}

/// The locality of one query.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Located {
    /// The client's locality; `None` when locality is off or no client network matched.
    pub locality: Option<Arc<str>>,
    /// The prefix length of the client network that matched: the scope of the answer's client
    /// subnet option when the answer depends on the locality.
    pub scope: u8,
    /// The query's client subnet option, echoed in the answer.
    pub subnet: Option<ClientSubnet>,
}

impl Located {
    /// The client subnet option for the answer: the query's, with `scope` when the answer
    /// depends on the client's locality and 0 when it does not (RFC 7871 7.2.1).
    pub fn answer_subnet(&self, depends: bool) -> Option<EdnsOption> {
        let mut subnet = self.subnet?;
        subnet.set_scope_prefix(if depends { self.scope } else { 0 });
        Some(EdnsOption::Subnet(subnet))
    }
}

impl Policy {
    /// A policy validated by [`LocalityConfig::validate`].
    pub fn new(cfg: &LocalityConfig) -> Self {
        Self {
            mode: cfg.mode,
            trust_client_subnet: cfg.trust_client_subnet.iter().map(IpNet::trunc).collect(),
            clients: cfg
                .clients
                .iter()
                .flat_map(|c| {
                    let locality: Arc<str> = c.locality.as_str().into();
                    c.networks
                        .iter()
                        .map(move |n| (n.trunc(), locality.clone()))
                })
                .collect(),
        }
    }

    /// Where a query from `ip` with EDNS `edns` comes from. The client subnet option counts
    /// only from a trusted network, and only when its whole subnet lies in one client
    /// network (a `/0` subnet, "do not use my address", matches none).
    pub fn locate(&self, ip: IpAddr, edns: Option<&Edns>) -> Located {
        let subnet = edns.and_then(|e| match e.option(EdnsCode::Subnet) {
            Some(EdnsOption::Subnet(s)) => Some(*s),
            _ => None,
        });
        let mut located = Located {
            subnet,
            ..Located::default()
        };
        if self.mode == LocalityMode::Off {
            return located;
        }
        let ip = ip.to_canonical();
        let trusted = self.trust_client_subnet.iter().any(|n| n.contains(&ip));
        let matched = match subnet.filter(|_| trusted) {
            Some(s) => IpNet::new(s.addr().to_canonical(), s.source_prefix())
                .ok()
                .map(|n| n.trunc())
                .and_then(|n| self.clients.iter().find(|(c, _)| c.contains(&n))),
            None => self.clients.iter().find(|(c, _)| c.contains(&ip)),
        };
        if let Some((net, locality)) = matched {
            located.locality = Some(locality.clone());
            located.scope = net.prefix_len();
        }
        located
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClientLocality;

    fn policy(mode: LocalityMode) -> Policy {
        Policy::new(&LocalityConfig {
            mode,
            min_healthy: 1,
            trust_client_subnet: vec!["127.0.0.4/32".parse().unwrap()],
            clients: vec![
                ClientLocality {
                    networks: vec![
                        "127.0.0.2/32".parse().unwrap(),
                        "10.1.0.0/16".parse().unwrap(),
                    ],
                    locality: "a".into(),
                },
                ClientLocality {
                    networks: vec![
                        "127.0.0.3/32".parse().unwrap(),
                        "fd00:b::/32".parse().unwrap(),
                    ],
                    locality: "b".into(),
                },
            ],
        })
    }

    fn ecs(subnet: &str) -> Edns {
        let mut e = Edns::new();
        e.options_mut()
            .insert(EdnsOption::Subnet(subnet.parse().unwrap()));
        e
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_source_address_decides() {
        let p = policy(LocalityMode::Prefer);
        let a = p.locate(ip("127.0.0.2"), None);
        assert_eq!((a.locality.as_deref(), a.scope), (Some("a"), 32));
        let b = p.locate(ip("fd00:b::7"), None);
        assert_eq!((b.locality.as_deref(), b.scope), (Some("b"), 32));
        assert_eq!(
            p.locate(ip("::ffff:10.1.2.3"), None).locality.as_deref(),
            Some("a")
        );
        assert_eq!(p.locate(ip("127.0.0.1"), None), Located::default());
        // Off: nobody has a locality.
        assert_eq!(
            policy(LocalityMode::Off)
                .locate(ip("127.0.0.2"), None)
                .locality,
            None
        );
    }

    #[test]
    fn a_trusted_forwarders_client_subnet_decides() {
        let p = policy(LocalityMode::Only);
        let via = p.locate(ip("127.0.0.4"), Some(&ecs("10.1.7.0/24")));
        assert_eq!((via.locality.as_deref(), via.scope), (Some("a"), 16));
        assert!(via.subnet.is_some());
        // A subnet wider than any client network, or "/0", matches none.
        assert_eq!(
            p.locate(ip("127.0.0.4"), Some(&ecs("10.0.0.0/8"))).locality,
            None
        );
        assert_eq!(
            p.locate(ip("127.0.0.4"), Some(&ecs("0.0.0.0/0"))).locality,
            None
        );
        // Untrusted: the option is ignored, the source address decides.
        let direct = p.locate(ip("127.0.0.3"), Some(&ecs("10.1.7.0/24")));
        assert_eq!(direct.locality.as_deref(), Some("b"));
        // The option is echoed with the scope used, or 0.
        let Some(EdnsOption::Subnet(s)) = via.answer_subnet(true) else {
            panic!()
        };
        assert_eq!((s.source_prefix(), s.scope_prefix()), (24, 16));
        let Some(EdnsOption::Subnet(s)) = via.answer_subnet(false) else {
            panic!()
        };
        assert_eq!(s.scope_prefix(), 0);
        assert_eq!(p.locate(ip("127.0.0.2"), None).answer_subnet(true), None);
    }
}
