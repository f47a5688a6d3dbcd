//! The xDS resources of a target, built from one snapshot: pure, no I/O.
//!
//! A gRPC channel to `xds:///<target>` asks for the Listener `<target>`, then the Cluster its
//! route names, then that Cluster's ClusterLoadAssignment. Every resource of a target carries
//! the target's own name (`web`, `web:grpc`, `web.svc.internal:grpc`), so each form a client
//! may use is answered without a name of ours in between.
//!
//! What gRPC clients reject (NACK) and what they silently drop shaped these builders: the
//! Listener's filters end with the router; the route's virtual host matches any authority;
//! the Cluster is EDS over ADS; endpoints carry IP literals, each address once, a non-zero
//! weight; every locality a weight of 1 (unset, gRPC drops the locality); priorities are
//! contiguous from 0.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbConfig, LbPolicy, RingHashLbConfig,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{
    address, Address, AggregatedConfigSource, ApiVersion, ConfigSource, HealthStatus, Locality,
    SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter,
};
use envoy_types::pb::google::protobuf::{UInt32Value, UInt64Value};
use envoy_types::util::pack_any;

use crate::cache::Service;
use crate::dns::name::Target as DnsTarget;
use crate::dns::zone::registry::Zone;

pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINTS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// The resource types ruddr serves, in the order a client needs them.
pub const TYPES: [&str; 4] = [LISTENER, ROUTE, CLUSTER, ENDPOINTS];

/// Which port of a service's instances a target reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Port {
    /// The main port.
    Main,
    /// A named port (lower case).
    Named(String),
    /// A port number: each instance's main or named port with that number.
    Number(u16),
}

/// A target: `<service>[.<zone>][:<port>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub service: String,
    pub port: Port,
}

impl Target {
    /// The target `name` names, with `zone` the discovery zone (lower case, no trailing dot);
    /// `None` for a name no service can have.
    pub fn parse(name: &str, zone: &str) -> Option<Self> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let (host, port) = match name.rsplit_once(':') {
            Some((host, port)) if !port.is_empty() => {
                let port = match port.parse::<u16>() {
                    Ok(n) if n > 0 => Port::Number(n),
                    Ok(_) => return None,
                    Err(_) => Port::Named(port.to_string()),
                };
                (host.to_string(), port)
            }
            Some(_) => return None,
            None => (name, Port::Main),
        };
        let service = match host.strip_suffix(zone) {
            Some(rest) if rest.ends_with('.') => rest.trim_end_matches('.').to_string(),
            _ => host,
        };
        (!service.is_empty() && !service.contains(':')).then_some(Self { service, port })
    }
}

/// Endpoints an assignment left out, by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LeftOut {
    /// Registered by host name: gRPC endpoints are IP literals.
    pub host_name: usize,
    /// Without the port the target asks for.
    pub no_port: usize,
    /// An address and port another endpoint of the assignment already has.
    pub duplicate: usize,
}

fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

/// The route configuration of target `name`: one virtual host for any authority (a channel's
/// authority is the target itself), every RPC to the Cluster `name`.
pub fn route(name: &str) -> RouteConfiguration {
    RouteConfiguration {
        name: name.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: name.to_string(),
            domains: vec!["*".to_string()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::Prefix(String::new())),
                    ..Default::default()
                }),
                action: Some(Action::Route(RouteAction {
                    cluster_specifier: Some(ClusterSpecifier::Cluster(name.to_string())),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The Listener of target `name`: an API listener whose connection manager holds the route
/// configuration inline and ends its filters with the router.
pub fn listener(name: &str) -> Listener {
    let manager = HttpConnectionManager {
        stat_prefix: name.to_string(),
        route_specifier: Some(RouteSpecifier::RouteConfig(route(name))),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".to_string(),
            config_type: Some(ConfigType::TypedConfig(pack_any(Router::default()))),
            ..Default::default()
        }],
        ..Default::default()
    };
    Listener {
        name: name.to_string(),
        api_listener: Some(ApiListener {
            api_listener: Some(pack_any(manager)),
        }),
        ..Default::default()
    }
}

/// The Cluster of target `name`: its endpoints over ADS (the assignment is named like the
/// cluster), balanced by ring hash, the one gRPC policy that weighs endpoints (without a hash
/// policy each RPC hashes at random, which spreads RPCs by weight).
pub fn cluster(name: &str) -> Cluster {
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        lb_policy: LbPolicy::RingHash as i32,
        lb_config: Some(LbConfig::RingHashLbConfig(RingHashLbConfig {
            minimum_ring_size: Some(UInt64Value { value: 1024 }),
            maximum_ring_size: Some(UInt64Value { value: 8_388_608 }),
            hash_function: 0, // XX_HASH, the only one gRPC accepts
        })),
        ..Default::default()
    }
}

/// The ClusterLoadAssignment of target `name` (`target` parsed from it) for a client in
/// locality `local`: the instances DNS would answer for the same name and client
/// ([`Zone::select`]: health, `serve_warning`, the panic threshold, locality), as endpoints
/// grouped by priority and locality. Priorities are the SRV priorities DNS would give
/// (registry priority, and under `prefer` the client's locality first), renumbered from 0.
/// `svc` absent: an empty assignment.
pub fn assignment(
    zone: &Zone,
    name: &str,
    target: &Target,
    svc: Option<&Service>,
    local: Option<&str>,
) -> (ClusterLoadAssignment, LeftOut) {
    let mut left = LeftOut::default();
    let mut cla = ClusterLoadAssignment {
        cluster_name: name.to_string(),
        ..Default::default()
    };
    let Some(svc) = svc else {
        return (cla, left);
    };
    let dns_target = match &target.port {
        Port::Named(port) => DnsTarget::NamedPort {
            service: &target.service,
            port,
        },
        Port::Main | Port::Number(_) => DnsTarget::Service(&target.service),
    };
    let Some(selection) = zone.select(svc, dns_target, local) else {
        return (cla, left);
    };
    // (priority, locality) -> endpoints, in the selection's order.
    let mut groups: BTreeMap<(u16, &str), Vec<LbEndpoint>> = BTreeMap::new();
    let mut seen: HashSet<SocketAddr> = HashSet::new();
    let mut ordered: Vec<_> = selection.selected.iter().collect();
    // The best priority of a duplicated address wins.
    ordered.sort_by_key(|(i, _)| selection.priority(i));
    for (instance, port) in ordered {
        let port = match target.port {
            Port::Number(n) => {
                let has = instance.port == Some(n) || instance.ports.iter().any(|(_, p)| *p == n);
                has.then_some(n)
            }
            _ => *port,
        };
        let Some(port) = port else {
            left.no_port += 1;
            continue;
        };
        let Some(ip) = instance.address.ip() else {
            left.host_name += 1;
            continue;
        };
        let addr = SocketAddr::new(ip, port);
        if !seen.insert(addr) {
            left.duplicate += 1;
            continue;
        }
        let locality = instance.locality.as_deref().unwrap_or("");
        groups
            .entry((selection.priority(instance), locality))
            .or_default()
            .push(endpoint(ip, port, instance.weight));
    }
    let mut priorities: Vec<u16> = groups.keys().map(|(p, _)| *p).collect();
    priorities.dedup();
    cla.endpoints = groups
        .into_iter()
        .map(|((priority, locality), lb_endpoints)| LocalityLbEndpoints {
            locality: Some(Locality {
                zone: locality.to_string(),
                ..Default::default()
            }),
            lb_endpoints,
            load_balancing_weight: Some(UInt32Value { value: 1 }),
            priority: priorities.binary_search(&priority).unwrap_or(0) as u32,
            ..Default::default()
        })
        .collect();
    (cla, left)
}

/// One endpoint; registry weight 0 counts as 1 (gRPC rejects a zero weight).
fn endpoint(ip: IpAddr, port: u16, weight: u16) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: ip.to_string(),
                    port_specifier: Some(PortSpecifier::PortValue(u32::from(port))),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        })),
        health_status: HealthStatus::Healthy as i32,
        load_balancing_weight: Some(UInt32Value {
            value: u32::from(weight.max(1)),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cache::{Health, Instance};
    use crate::config::LocalityMode;
    use hickory_proto::rr::Name;

    pub(crate) fn zone(mode: LocalityMode) -> Zone {
        Zone {
            origin: Name::from_ascii("svc.internal.").unwrap(),
            ttl: 5,
            negative_ttl: 5,
            serve_warning: true,
            panic_threshold: 0.0,
            ns_name: Name::from_ascii("ns.svc.internal.").unwrap(),
            hostmaster: Name::from_ascii("hostmaster.svc.internal.").unwrap(),
            locality: mode,
            min_healthy: 1,
        }
    }

    fn inst(id: &str, addr: &str, port: u16, locality: Option<&str>) -> Instance {
        let mut i = Instance::for_test(id, addr, Some(port));
        i.locality = locality.map(Into::into);
        i
    }

    fn service(instances: Vec<Instance>) -> Service {
        Service {
            name: crate::cache::ServiceName::new("web").unwrap(),
            instances: instances.into_iter().collect(),
            generation: 1,
        }
    }

    fn addrs(cla: &ClusterLoadAssignment) -> Vec<(u32, String, String)> {
        let mut out = Vec::new();
        for group in &cla.endpoints {
            assert_eq!(group.load_balancing_weight, Some(UInt32Value { value: 1 }));
            for e in &group.lb_endpoints {
                let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                    panic!()
                };
                let Some(address::Address::SocketAddress(sa)) =
                    &ep.address.as_ref().unwrap().address
                else {
                    panic!()
                };
                let Some(PortSpecifier::PortValue(port)) = sa.port_specifier else {
                    panic!()
                };
                assert!(e.load_balancing_weight.unwrap().value > 0);
                out.push((
                    group.priority,
                    group.locality.as_ref().unwrap().zone.clone(),
                    format!("{}:{port}", sa.address),
                ));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn targets_parse_in_every_form() {
        let t = |s: &str| Target::parse(s, "svc.internal");
        let main = |s: &str| Target {
            service: s.into(),
            port: Port::Main,
        };
        assert_eq!(t("web"), Some(main("web")));
        assert_eq!(t("Web.svc.internal."), Some(main("web")));
        assert_eq!(
            t("web.svc.internal:grpc"),
            Some(Target {
                service: "web".into(),
                port: Port::Named("grpc".into())
            })
        );
        assert_eq!(
            t("web:50051"),
            Some(Target {
                service: "web".into(),
                port: Port::Number(50051)
            })
        );
        assert_eq!(t(""), None);
        assert_eq!(t("web:"), None);
        assert_eq!(t("web:0"), None);
        assert_eq!(t("a:b:c"), None);
    }

    #[test]
    fn served_instances_become_endpoints_without_critical_duplicates_or_host_names() {
        let mut critical = inst("c", "10.0.0.3", 80, None);
        critical.health = Health::Critical;
        let mut warning = inst("w", "10.0.0.4", 80, None);
        warning.health = Health::Warning;
        warning.weight = 0;
        let svc = service(vec![
            inst("a", "10.0.0.1", 80, None),
            inst("b", "10.0.0.1", 80, None),
            critical,
            warning,
            inst("h", "host.example", 80, None),
        ]);
        let target = Target::parse("web", "svc.internal").unwrap();
        let (cla, left) = assignment(&zone(LocalityMode::Off), "web", &target, Some(&svc), None);
        assert_eq!(cla.cluster_name, "web");
        assert_eq!(
            addrs(&cla),
            vec![
                (0, String::new(), "10.0.0.1:80".into()),
                (0, String::new(), "10.0.0.4:80".into())
            ]
        );
        assert_eq!(
            left,
            LeftOut {
                host_name: 1,
                no_port: 0,
                duplicate: 1
            }
        );
        let mut z = zone(LocalityMode::Off);
        z.serve_warning = false;
        let (cla, _) = assignment(&z, "web", &target, Some(&svc), None);
        assert_eq!(addrs(&cla).len(), 1, "warning left out");
    }

    #[test]
    fn named_and_numbered_ports_pick_their_port() {
        let mut a = inst("a", "10.0.0.1", 80, None);
        a.ports.insert("grpc".into(), 9000);
        let b = inst("b", "10.0.0.2", 9000, None);
        let svc = service(vec![a, b]);
        let z = zone(LocalityMode::Off);
        let named = Target::parse("web:grpc", "svc.internal").unwrap();
        let (cla, left) = assignment(&z, "web:grpc", &named, Some(&svc), None);
        assert_eq!(
            addrs(&cla),
            vec![(0, String::new(), "10.0.0.1:9000".into())]
        );
        assert_eq!(left, LeftOut::default(), "b has no such port: not selected");
        let numbered = Target::parse("web:9000", "svc.internal").unwrap();
        let (cla, left) = assignment(&z, "web:9000", &numbered, Some(&svc), None);
        assert_eq!(
            addrs(&cla),
            vec![
                (0, String::new(), "10.0.0.1:9000".into()),
                (0, String::new(), "10.0.0.2:9000".into())
            ]
        );
        assert_eq!(left.no_port, 0);
    }

    #[test]
    fn prefer_puts_the_clients_locality_first_and_priorities_are_contiguous() {
        let mut far = inst("c", "10.0.0.3", 80, Some("b"));
        far.priority = 5;
        let svc = service(vec![
            inst("a", "10.0.0.1", 80, Some("a")),
            inst("b", "10.0.0.2", 80, Some("b")),
            far,
        ]);
        let target = Target::parse("web", "svc.internal").unwrap();
        let z = zone(LocalityMode::Prefer);
        let (cla, _) = assignment(&z, "web", &target, Some(&svc), Some("a"));
        assert_eq!(
            addrs(&cla),
            vec![
                (0, "a".into(), "10.0.0.1:80".into()),
                (1, "b".into(), "10.0.0.2:80".into()),
                (2, "b".into(), "10.0.0.3:80".into())
            ]
        );
        // No local instance served: the rest from priority 0.
        let (cla, _) = assignment(&z, "web", &target, Some(&svc), Some("z"));
        assert_eq!(addrs(&cla)[0].0, 0);
        // `only` keeps the local ones while enough are healthy.
        let (cla, _) = assignment(
            &zone(LocalityMode::Only),
            "web",
            &target,
            Some(&svc),
            Some("a"),
        );
        assert_eq!(addrs(&cla), vec![(0, "a".into(), "10.0.0.1:80".into())]);
    }

    #[test]
    fn resources_decode_as_their_types() {
        use prost::Message;
        let l = pack_any(listener("web:grpc"));
        assert_eq!(l.type_url, LISTENER);
        let decoded = Listener::decode(l.value.as_slice()).unwrap();
        let api = decoded.api_listener.unwrap().api_listener.unwrap();
        let hcm = HttpConnectionManager::decode(api.value.as_slice()).unwrap();
        assert_eq!(
            hcm.http_filters.last().unwrap().name,
            "envoy.filters.http.router"
        );
        assert_eq!(pack_any(cluster("web")).type_url, CLUSTER);
        assert_eq!(pack_any(route("web")).type_url, ROUTE);
        assert_eq!(
            pack_any(ClusterLoadAssignment::default()).type_url,
            ENDPOINTS
        );
    }
}
