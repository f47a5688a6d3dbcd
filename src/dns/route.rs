//! Which zone answers a name: pure, from the names alone.

use hickory_proto::rr::LowerName;

use super::skydns::SkyZone;

/// Who answers a query name.
#[derive(Debug, Clone, Copy)]
pub enum Route<'z> {
    /// The discovery zone, from the registry.
    Registry,
    /// A zone answered from a SkyDNS source.
    Sky(&'z SkyZone),
    /// A static zone file, through hickory's catalog.
    Static,
    /// No zone of ours: a reverse name of a registered address, a forwarded name, or a refusal.
    Outside,
}

/// The most specific zone holding `qname` answers it: a static zone inside the discovery zone
/// wins there, and a static parent of the discovery zone (or of a SkyDNS zone) does not shadow
/// it. `static_origin` is the longest static zone holding `qname`, if any.
pub fn route<'z>(
    qname: &LowerName,
    apex: &LowerName,
    sky: &'z [SkyZone],
    static_origin: Option<&LowerName>,
) -> Route<'z> {
    let sky = sky
        .iter()
        .filter(|z| z.apex.zone_of(qname))
        .max_by_key(|z| z.apex.num_labels());
    let in_registry = apex.zone_of(qname);
    let is_static = static_origin.is_some_and(|o| {
        (!in_registry || o.num_labels() > apex.num_labels())
            && sky.is_none_or(|z| o.num_labels() > z.apex.num_labels())
    });
    match (is_static, sky) {
        (true, _) => Route::Static,
        (false, Some(z)) => Route::Sky(z),
        (false, None) if in_registry => Route::Registry,
        (false, None) => Route::Outside,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::SourceId;
    use crate::dns::records::Zone;
    use hickory_proto::rr::Name;

    fn lower(s: &str) -> LowerName {
        LowerName::new(&Name::from_ascii(s).unwrap())
    }

    fn sky(apex: &str) -> SkyZone {
        let origin = Name::from_ascii(apex).unwrap();
        SkyZone {
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
            Route::Static => "static".into(),
            Route::Outside => "outside".into(),
        }
    }

    #[test]
    fn most_specific_zone_answers() {
        let apex = lower("svc.internal.");
        let skies = [sky("skydns.local."), sky("east.skydns.local.")];
        let case = |q: &str, st: Option<&str>| {
            let st = st.map(lower);
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
