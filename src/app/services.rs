//! `ruddr services`: lists the registry straight from etcd and prints it as a table or JSON.

use anyhow::Context;

use crate::config::{Config, ConfigError};
use crate::registry;

/// `ruddr services`: the registry as an operator sees it.
pub async fn services(
    etcd: crate::config::EtcdConfig,
    service: Option<String>,
    output: crate::cli::Output,
) -> anyhow::Result<()> {
    use std::collections::BTreeMap;

    use serde_json::json;

    let mut client = registry::connect(&etcd).await?;
    let mut kv = client
        .kv_client()
        .max_decoding_message_size(etcd.max_message_bytes);
    let mut by_service: BTreeMap<String, Vec<(crate::cache::Instance, i64)>> = BTreeMap::new();
    let mut invalid = 0;
    let t = etcd.request_timeout;
    registry::list::list(
        &mut kv,
        &etcd.prefix,
        etcd.list_page_size,
        Some(t),
        |item| {
            let kv = match item {
                registry::list::Listed::Kv(kv) => kv,
                registry::list::Listed::Restart => {
                    by_service.clear();
                    invalid = 0;
                    return;
                }
            };
            match registry::parse_entry(&etcd.prefix, kv.key(), kv.value()) {
                Ok((svc, inst)) => by_service
                    .entry(svc.to_string())
                    .or_default()
                    .push((inst, kv.lease())),
                Err(_) => invalid += 1,
            }
        },
    )
    .await
    .with_context(|| format!("listing {} from {}", etcd.prefix, etcd.endpoints.join(",")))?;
    let json_out = output == crate::cli::Output::Json;
    match service {
        None => {
            let rows: Vec<_> = by_service
                .iter()
                .map(|(name, insts)| {
                    let healthy = insts.iter().filter(|(i, _)| i.is_served(true)).count();
                    (name, healthy, insts.len())
                })
                .collect();
            if json_out {
                let list: Vec<_> = rows
                    .iter()
                    .map(|(n, h, t)| json!({"service": n, "healthy": h, "total": t}))
                    .collect();
                println!("{}", json!({"services": list, "invalid_entries": invalid}));
            } else {
                println!("{:<32} {:>7} {:>7}", "SERVICE", "HEALTHY", "TOTAL");
                for (n, h, t) in rows {
                    println!("{n:<32} {h:>7} {t:>7}");
                }
                if invalid > 0 {
                    println!(
                        "({invalid} entries under {} break the registry contract)",
                        etcd.prefix
                    );
                }
            }
        }
        Some(name) => {
            let name = name.to_ascii_lowercase();
            let Some(insts) = by_service.get(&name) else {
                anyhow::bail!("no service {name:?} under {}", etcd.prefix);
            };
            let mut rows = Vec::new();
            for (inst, lease) in insts {
                let ttl_left = if *lease == 0 {
                    None
                } else {
                    registry::deadline(t, client.lease_time_to_live(*lease, None))
                        .await
                        .ok()
                        .map(|r| r.ttl())
                        .filter(|t| *t >= 0)
                };
                rows.push((inst, ttl_left));
            }
            if json_out {
                let list: Vec<_> = rows
                    .iter()
                    .map(|(i, ttl)| {
                        json!({
                            "id": i.id.as_str(),
                            "address": i.address.to_string(),
                            "port": i.port,
                            "ports": i.ports.iter().collect::<BTreeMap<_, _>>(),
                            "tags": i.tags,
                            "weight": i.weight,
                            "priority": i.priority,
                            "health": i.health.as_str(),
                            "meta": i.meta.iter().collect::<BTreeMap<_, _>>(),
                            "lease_ttl_seconds": ttl,
                        })
                    })
                    .collect();
                println!("{}", json!({"service": name, "instances": list}));
            } else {
                println!(
                    "{:<24} {:<40} {:>5} {:<9} {:>9}  TAGS",
                    "ID", "ADDRESS", "PORT", "HEALTH", "LEASE TTL"
                );
                for (i, ttl) in rows {
                    println!(
                        "{:<24} {:<40} {:>5} {:<9} {:>9}  {}",
                        i.id.as_str(),
                        i.address,
                        i.port.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                        i.health.as_str(),
                        ttl.map(|t| format!("{t}s")).unwrap_or_else(|| "-".into()),
                        i.tags.join(","),
                    );
                }
            }
        }
    }
    Ok(())
}

/// The etcd settings for `ruddr services`: defaults, the [etcd] table of a config file, flags.
pub fn services_etcd(
    args: &crate::cli::ServicesArgs,
) -> Result<crate::config::EtcdConfig, ConfigError> {
    let mut etcd = match &args.config {
        Some(path) => Config::from_file(path)?.etcd,
        None => crate::config::EtcdConfig::default(),
    };
    etcd.apply_flags(&args.etcd);
    etcd.validate()?;
    Ok(etcd)
}
