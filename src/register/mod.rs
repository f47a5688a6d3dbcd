//! The producer side of the registry contract: keep instances registered in etcd with a lease,
//! run their health checks, and deregister them on shutdown. Used by `ruddr register` and
//! usable as a library:
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use ruddr::register::{InstanceSpec, Registrar};
//! let spec: InstanceSpec = toml::from_str(r#"
//!     service = "web"
//!     id = "web-1"
//!     address = "10.0.0.5"
//!     port = 8080
//!     check_http = "http://127.0.0.1:8080/health"
//! "#)?;
//! let registrar = Registrar::connect(&Default::default(), vec![spec.validate()?]).await?;
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! registrar.run(shutdown).await; // returns after deregistering, once `shutdown` is cancelled
//! # Ok(()) }
//! ```

mod agent;
pub mod check;
mod spec;

use std::time::Duration;

pub use agent::Agent;
pub use spec::{defaults, Check, InstanceSpec, RegisterFile, Registration};
use tokio_util::sync::CancellationToken;

use crate::config::EtcdConfig;

/// Several registrations sharing one etcd client.
pub struct Registrar {
    client: etcd_client::Client,
    prefix: String,
    registrations: Vec<Registration>,
    skip_drain: CancellationToken,
    call_timeout: Duration,
}

impl Registrar {
    /// Prepares the etcd client (lazily: an unreachable etcd is retried, not an error).
    pub async fn connect(
        etcd: &EtcdConfig,
        registrations: Vec<Registration>,
    ) -> anyhow::Result<Self> {
        let client = crate::registry::connect(etcd).await?;
        Ok(Self {
            client,
            prefix: etcd.prefix.clone(),
            registrations,
            skip_drain: CancellationToken::new(),
            call_timeout: etcd.request_timeout,
        })
    }

    /// Cancel to deregister without (the rest of) the drain wait: the service is gone, or a
    /// second signal asks to stop now.
    pub fn skip_drain_token(&self) -> CancellationToken {
        self.skip_drain.clone()
    }

    /// Keeps every instance registered until `shutdown` is cancelled, then deregisters them all
    /// (delete, drain, revoke) and returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tasks = tokio::task::JoinSet::new();
        for reg in self.registrations {
            let agent = Agent::new(self.client.clone(), &self.prefix, reg, self.call_timeout);
            tasks.spawn(agent.run(shutdown.clone(), self.skip_drain.clone()));
        }
        while tasks.join_next().await.is_some() {}
    }
}
