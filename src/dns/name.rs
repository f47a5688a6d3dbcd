//! Query names inside the zone, parsed into what they ask for. See the README "DNS names".
//!
//! Services and instance ids are DNS labels (no `_`), so the `_`-prefixed forms below can
//! never be mistaken for an instance:
//!
//! | name (relative to the zone) | target                         |
//! |-----------------------------|--------------------------------|
//! | (apex)                      | SOA, NS                        |
//! | `<svc>`                     | the service                    |
//! | `<id>.<svc>`                | one instance                   |
//! | `_<svc>._tcp`               | the service, RFC 2782 form     |
//! | `_<port>._tcp.<svc>`        | the instances with named port  |
//! | `<tag>._tag.<svc>`          | the instances carrying the tag |
//!
//! DNS-SD (RFC 6763) browsing over the same data:
//!
//! | name                        | target                                      |
//! |-----------------------------|---------------------------------------------|
//! | `_services._dns-sd._udp`    | PTR to every `_<svc>._tcp` (service types)   |
//! | `_<svc>._tcp`               | also PTR to each `<id>._<svc>._tcp`          |
//! | `<id>._<svc>._tcp`          | one instance: SRV and TXT (its `meta`)       |
//! | `b._dns-sd._udp`, `lb.`...  | PTR to the zone (browse domains)             |
//! | `_udp`, `_dns-sd._udp`      | empty non-terminals (NODATA)                 |

/// What a name inside the zone refers to. Labels are lower case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    Apex,
    Service(&'a str),
    Instance {
        service: &'a str,
        id: &'a str,
    },
    /// `_<svc>._tcp`
    ServiceSrv(&'a str),
    /// `_<port>._tcp.<svc>`
    NamedPort {
        service: &'a str,
        port: &'a str,
    },
    /// `<tag>._tag.<svc>`
    Tag {
        service: &'a str,
        tag: &'a str,
    },
    /// `_tcp` (exists when any service does)
    TcpNode,
    /// `_tcp.<svc>` or `_tag.<svc>`: exists when the service does
    ServiceNode(&'a str),
    /// `_services._dns-sd._udp`: the service types (DNS-SD service type enumeration)
    ServiceTypes,
    /// `<id>._<svc>._tcp`: a DNS-SD service instance
    SdInstance {
        service: &'a str,
        id: &'a str,
    },
    /// `b._dns-sd._udp` and `lb._dns-sd._udp`: the browse domains, which are the zone
    BrowseDomain,
    /// `_udp` and `_dns-sd._udp`: names that exist only for the names below them
    EmptyNode,
    /// A name in the zone that cannot exist.
    None,
}

impl Target<'_> {
    /// Whether the client's locality shapes the answer: names that stand for a set of
    /// instances do; an instance's own name always answers for itself.
    pub fn follows_locality(&self) -> bool {
        matches!(
            self,
            Target::Service(_)
                | Target::ServiceSrv(_)
                | Target::NamedPort { .. }
                | Target::Tag { .. }
        )
    }
}

/// Parses the labels below the zone apex, leftmost first.
pub fn parse<'a>(relative: &[&'a [u8]]) -> Target<'a> {
    let mut labels = [""; 3];
    if relative.len() > labels.len() {
        return Target::None;
    }
    for (slot, raw) in labels.iter_mut().zip(relative) {
        match std::str::from_utf8(raw) {
            Ok(s) => *slot = s,
            Err(_) => return Target::None,
        }
    }
    let under = |s: &'a str| s.strip_prefix('_').filter(|r| !r.is_empty());
    match &labels[..relative.len()] {
        [] => Target::Apex,
        ["_tcp"] => Target::TcpNode,
        ["_udp"] | ["_dns-sd", "_udp"] => Target::EmptyNode,
        ["_services", "_dns-sd", "_udp"] => Target::ServiceTypes,
        ["b" | "lb", "_dns-sd", "_udp"] => Target::BrowseDomain,
        [id, s, "_tcp"] if !id.starts_with('_') => {
            under(s).map_or(Target::None, |service| Target::SdInstance { service, id })
        }
        [svc] if !svc.starts_with('_') => Target::Service(svc),
        [s, "_tcp"] => under(s).map_or(Target::None, Target::ServiceSrv),
        ["_tcp" | "_tag", svc] if !svc.starts_with('_') => Target::ServiceNode(svc),
        [id, svc] if !id.starts_with('_') && !svc.starts_with('_') => {
            Target::Instance { service: svc, id }
        }
        [p, "_tcp", svc] if !svc.starts_with('_') => under(p).map_or(Target::None, |port| {
            Target::NamedPort { service: svc, port }
        }),
        [tag, "_tag", svc] if !svc.starts_with('_') => Target::Tag { service: svc, tag },
        _ => Target::None,
    }
}

/// The address a reverse name (`4.3.2.1.in-addr.arpa.`, nibbles `.ip6.arpa.`) stands for;
/// `None` for anything else, including partial names.
pub fn reverse_address(labels: &[&[u8]]) -> Option<std::net::IpAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr};
    let lower: Vec<String> = labels
        .iter()
        .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
        .collect();
    match lower.as_slice() {
        [d, c, b, a, inaddr, arpa] if inaddr == "in-addr" && arpa == "arpa" => {
            let octet = |s: &String| {
                // No leading zeros: "01" is not a valid label here.
                (s == "0" || !s.starts_with('0'))
                    .then(|| s.parse::<u8>().ok())
                    .flatten()
            };
            Some(Ipv4Addr::new(octet(a)?, octet(b)?, octet(c)?, octet(d)?).into())
        }
        [nibbles @ .., ip6, arpa] if nibbles.len() == 32 && ip6 == "ip6" && arpa == "arpa" => {
            let mut value: u128 = 0;
            for n in nibbles.iter().rev() {
                let mut chars = n.chars();
                let (Some(c), None) = (chars.next(), chars.next()) else {
                    return None;
                };
                value = (value << 4) | u128::from(c.to_digit(16)?);
            }
            Some(Ipv6Addr::from(value).into())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str) -> Target<'_> {
        let labels: Vec<&[u8]> = if name.is_empty() {
            vec![]
        } else {
            name.split('.').map(str::as_bytes).collect()
        };
        parse(&labels)
    }

    #[test]
    fn forms() {
        assert_eq!(p(""), Target::Apex);
        assert_eq!(p("web"), Target::Service("web"));
        assert_eq!(
            p("web-1.web"),
            Target::Instance {
                service: "web",
                id: "web-1"
            }
        );
        assert_eq!(p("_web._tcp"), Target::ServiceSrv("web"));
        assert_eq!(
            p("_grpc._tcp.web"),
            Target::NamedPort {
                service: "web",
                port: "grpc"
            }
        );
        assert_eq!(
            p("v2._tag.web"),
            Target::Tag {
                service: "web",
                tag: "v2"
            }
        );
        assert_eq!(p("_tcp"), Target::TcpNode);
        assert_eq!(p("_tcp.web"), Target::ServiceNode("web"));
        assert_eq!(p("_tag.web"), Target::ServiceNode("web"));
    }

    #[test]
    fn dns_sd_forms() {
        assert_eq!(p("_services._dns-sd._udp"), Target::ServiceTypes);
        assert_eq!(p("b._dns-sd._udp"), Target::BrowseDomain);
        assert_eq!(p("lb._dns-sd._udp"), Target::BrowseDomain);
        assert_eq!(p("_dns-sd._udp"), Target::EmptyNode);
        assert_eq!(p("_udp"), Target::EmptyNode);
        assert_eq!(
            p("web-1._web._tcp"),
            Target::SdInstance {
                service: "web",
                id: "web-1"
            }
        );
        // The RFC 2782 name keeps its meaning; the instance list is its PTR answer.
        assert_eq!(p("_web._tcp"), Target::ServiceSrv("web"));
        for n in [
            "db._dns-sd._udp",
            "x._services._dns-sd._udp",
            "_x._dns-sd._udp",
            "_a._web._tcp",
            "a._._tcp",
            "a.web._tcp",
        ] {
            assert_eq!(p(n), Target::None, "{n}");
        }
        assert!(p("web").follows_locality() && p("_web._tcp").follows_locality());
        assert!(p("v2._tag.web").follows_locality() && p("_grpc._tcp.web").follows_locality());
        assert!(!p("a.web").follows_locality() && !p("a._web._tcp").follows_locality());
    }

    #[test]
    fn reverse_names() {
        let r = |n: &str| {
            let labels: Vec<&[u8]> = n
                .trim_end_matches('.')
                .split('.')
                .map(str::as_bytes)
                .collect();
            reverse_address(&labels)
        };
        assert_eq!(
            r("5.0.0.10.in-addr.arpa."),
            Some("10.0.0.5".parse().unwrap())
        );
        assert_eq!(
            r("5.0.0.10.IN-ADDR.ARPA."),
            Some("10.0.0.5".parse().unwrap())
        );
        assert_eq!(r("0.0.10.in-addr.arpa."), None);
        assert_eq!(r("256.0.0.10.in-addr.arpa."), None);
        assert_eq!(r("05.0.0.10.in-addr.arpa."), None);
        let v6 = "7.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.";
        assert_eq!(r(v6), Some("fd00::7".parse().unwrap()));
        assert_eq!(r("7.0.ip6.arpa."), None);
        assert_eq!(r("web.svc.internal."), None);
    }

    #[test]
    fn impossible_names() {
        for n in [
            "_web",
            "a.b.c.d",
            "_._tcp",
            "x._tcp.web",
            "_a._udp.web",
            "a._web",
            "_a.web",
            "a.b.web",
        ] {
            assert_eq!(p(n), Target::None, "{n}");
        }
        assert_eq!(parse(&[b"\xff"]), Target::None);
    }
}
