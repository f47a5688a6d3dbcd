//! Registering a Rust service from inside the process with the ruddr library: lease,
//! keepalive, an HTTP health check, and deregistration (with drain) on Ctrl-C.
//!
//! ```sh
//! cargo run --example register -- http://127.0.0.1:2379
//! dig @127.0.0.1 -p 5300 +short example.svc.internal
//! ```

use ruddr::config::EtcdConfig;
use ruddr::register::{InstanceSpec, Registrar};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let endpoint = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:2379".into());
    let etcd = EtcdConfig {
        endpoints: vec![endpoint],
        ..Default::default()
    };

    // The same options as `ruddr register` flags or an [[instance]] table.
    let spec: InstanceSpec = toml::from_str(
        r#"
        service = "example"
        id = "example-1"
        address = "127.0.0.1"
        port = 8080
        tags = ["v1"]
        ttl = "10s"
        check_tcp = "127.0.0.1:8080"
        interval = "2s"
        drain = "2s"
        "#,
    )?;
    let registration = spec.validate()?;

    let registrar = Registrar::connect(&etcd, vec![registration]).await?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    // Returns after the instance was deregistered, drained and its lease revoked.
    registrar.run(shutdown).await;
    Ok(())
}
