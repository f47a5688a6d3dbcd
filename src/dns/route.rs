//! Which zone answers a name: pure, from the names alone.

use hickory_proto::rr::LowerName;

use super::zone::file::FileZone;
use super::zone::skydns::SkyZone;

/// Who answers a query name.
#[derive(Debug, Clone, Copy)]
pub enum Route<'z> {
    /// The discovery zone, from the registry.
    Registry,
    /// A zone answered from a SkyDNS source.
    Sky(&'z SkyZone),
    /// A static zone file.
    Static(&'z FileZone),
    /// No zone of ours: a reverse name of a registered address, a forwarded name, or a refusal.
    Outside,
}

/// The most specific zone holding `qname` answers it: a static zone inside the discovery zone
/// wins there, and a static parent of the discovery zone (or of a SkyDNS zone) does not shadow
/// it. `file` is the most specific static zone holding `qname`, if any.
pub fn route<'z>(
    qname: &LowerName,
    apex: &LowerName,
    sky: &'z [SkyZone],
    file: Option<&'z FileZone>,
) -> Route<'z> {
    let static_origin = file.map(|z| &z.origin);
    let sky = sky
        .iter()
        .filter(|z| z.apex.zone_of(qname))
        .max_by_key(|z| z.apex.num_labels());
    let in_registry = apex.zone_of(qname);
    let is_static = static_origin.is_some_and(|o| {
        (!in_registry || o.num_labels() > apex.num_labels())
            && sky.is_none_or(|z| o.num_labels() > z.apex.num_labels())
    });
    match (file.filter(|_| is_static), sky) {
        (Some(file), _) => Route::Static(file),
        (None, Some(z)) => Route::Sky(z),
        (None, None) if in_registry => Route::Registry,
        (None, None) => Route::Outside,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::SourceId;
    use crate::dns::zone::registry::Zone;
    use hickory_proto::rr::Name;

    fn lower(s: &str) -> LowerName {
        LowerName::new(&Name::from_ascii(s).unwrap())
    }

    fn sky(apex: &str) -> SkyZone {
        let origin = Name::from_ascii(apex).unwrap();
        SkyZone {
            soa: Default::default(),
            apex: LowerName::new(&origin),
            zone: Zone {
                ns_name: origin.clone(),
                hostmaster: origin.clone(),
                origin,
                ttl: 5,
                negative_ttl: 5,
                serve_warning: true,
                panic_threshold: 0.0,
                locality: Default::default(),
                min_healthy: 1,
            },
            source: SourceId(3),
            ttl: 300,
        }
    }

    fn name_of(r: Route<'_>) -> String {
        match r {
            Route::Registry => "registry".into(),
            Route::Sky(z) => format!("sky {}", z.apex),
            Route::Static(_) => "static".into(),
            Route::Outside => "outside".into(),
        }
    }

    #[test]
    fn most_specific_zone_answers() {
        let apex = lower("svc.internal.");
        let skies = [sky("skydns.local."), sky("east.skydns.local.")];
        let case = |q: &str, st: Option<&str>| {
            let st = st.map(|origin| {
                let origin = Name::from_ascii(origin).unwrap();
                let soa = hickory_proto::rr::Record::from_rdata(
                    origin.clone(),
                    60,
                    hickory_proto::rr::RData::SOA(hickory_proto::rr::rdata::SOA::new(
                        origin.clone(),
                        origin.clone(),
                        1,
                        1,
                        1,
                        1,
                        1,
                    )),
                );
                FileZone::from_records(&origin, vec![soa]).unwrap()
            });
            // A static zone routes only the names it holds, as StaticZones::zone_of finds it.
            let st = st.filter(|z| z.origin.zone_of(&lower(q)));
            name_of(route(&lower(q), &apex, &skies, st.as_ref()))
        };
        assert_eq!(case("web.svc.internal.", None), "registry");
        assert_eq!(case("WEB.Svc.Internal.", None), "registry");
        assert_eq!(case("svc.internal.", None), "registry");
        assert_eq!(case("example.com.", None), "outside");
        assert_eq!(case("1.0.0.10.in-addr.arpa.", None), "outside");
        // A static parent does not shadow the discovery zone; a static child wins inside it.
        assert_eq!(case("web.svc.internal.", Some("internal.")), "registry");
        assert_eq!(
            case("db.legacy.svc.internal.", Some("legacy.svc.internal.")),
            "static"
        );
        assert_eq!(case("www.example.com.", Some("example.com.")), "static");
        // The deepest SkyDNS zone; a static zone only over a shallower one.
        assert_eq!(case("a.west.skydns.local.", None), "sky skydns.local.");
        assert_eq!(case("a.east.skydns.local.", None), "sky east.skydns.local.");
        assert_eq!(
            case("a.east.skydns.local.", Some("local.")),
            "sky east.skydns.local."
        );
        assert_eq!(
            case("x.old.skydns.local.", Some("old.skydns.local.")),
            "static"
        );
        assert_eq!(
            case("x.old.east.skydns.local.", Some("east.skydns.local.")),
            "sky east.skydns.local."
        );
    }
}
