//! `ruddr register`: turns flags or a register file into validated registrations, keeps them
//! in etcd, and supervises the service's process (deregister and drain before signalling it).

use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Signals;
use crate::config::ConfigError;

/// Turns `ruddr register` flags or its config file into validated registrations. Nothing is
/// written to etcd when this fails.
pub fn register_plan(
    args: &crate::cli::RegisterArgs,
) -> Result<
    (
        crate::config::EtcdConfig,
        Vec<crate::register::Registration>,
    ),
    ConfigError,
> {
    use crate::register::{InstanceSpec, RegisterFile};
    let (mut etcd, specs) = match &args.config {
        Some(path) => {
            let file = RegisterFile::load(path)?;
            let mut etcd = file.etcd;
            etcd.resolve_paths(path.parent().unwrap_or(std::path::Path::new(".")));
            if file.instance.is_empty() {
                return Err(ConfigError::Invalid {
                    option: "instance",
                    reason: format!("{} has no [[instance]] table", path.display()),
                });
            }
            (etcd, file.instance)
        }
        None => {
            let pairs = |option: &'static str, items: &[String]| {
                items
                    .iter()
                    .map(|item| {
                        item.split_once('=')
                            .filter(|(k, _)| !k.is_empty())
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .ok_or_else(|| ConfigError::Invalid {
                                option,
                                reason: format!("{item:?} is not NAME=VALUE"),
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()
            };
            let mut ports = std::collections::BTreeMap::new();
            for (name, port) in pairs("--port-name", &args.port_names)? {
                let port: u16 = port.parse().map_err(|_| ConfigError::Invalid {
                    option: "--port-name",
                    reason: format!("{port:?} is not a port number"),
                })?;
                ports.insert(name, port);
            }
            let spec = InstanceSpec {
                service: args.service.clone().unwrap_or_default(),
                id: args.id.clone().unwrap_or_default(),
                address: args.address.clone().unwrap_or_default(),
                port: args.port,
                ports,
                tags: args.tags.clone(),
                weight: args.weight,
                priority: args.priority,
                meta: pairs("--meta", &args.meta)?.into_iter().collect(),
                ttl: args.ttl,
                check_http: args.check_http.clone(),
                check_tcp: args.check_tcp.clone(),
                check_cmd: args.check_cmd.clone(),
                interval: args.interval,
                timeout: args.timeout,
                fail_after: args.fail_after,
                pass_after: args.pass_after,
                deregister_after: args.deregister_after,
                drain: args.drain,
            };
            (crate::config::EtcdConfig::default(), vec![spec])
        }
    };
    etcd.apply_flags(&args.etcd);
    etcd.validate()?;
    let regs = specs
        .iter()
        .map(InstanceSpec::validate)
        .collect::<Result<Vec<_>, _>>()?;
    let mut seen = std::collections::HashSet::new();
    for r in &regs {
        if !seen.insert((r.service.clone(), r.instance.id.clone())) {
            return Err(ConfigError::Invalid {
                option: "--id",
                reason: format!("{}/{} is registered twice", r.service, r.instance.id),
            });
        }
    }
    Ok((etcd, regs))
}

/// `ruddr register`: keeps the registrations until a signal (or the child's exit), then
/// deregisters. Returns the process exit code: 0, or the child's status.
///
/// On SIGTERM/SIGINT: deregister and drain (the drain counts from the signal; a second signal
/// cuts it short), then pass the signal to the child's process group; a child still running
/// `stop_timeout` later gets SIGKILL. No etcd call can hold this up past its deadline.
pub async fn register(
    etcd: crate::config::EtcdConfig,
    registrations: Vec<crate::register::Registration>,
    command: Vec<String>,
    stop_timeout: Duration,
) -> anyhow::Result<i32> {
    use nix::sys::signal::{killpg, Signal};
    // Before anything is registered: a signal from now on always leads to deregistration.
    let mut signals = Signals::install()?;
    let token = CancellationToken::new();
    let registrar = crate::register::Registrar::connect(&etcd, registrations).await?;
    let skip_drain = registrar.skip_drain_token();
    let mut agents = tokio::spawn(registrar.run(token.clone()));

    if command.is_empty() {
        let sig = signals.next().await;
        info!(signal = %sig, "deregistering");
        token.cancel();
        deregistered(&mut agents, &mut signals, &skip_drain).await?;
        return Ok(0);
    }

    // Its own process group: a Ctrl-C in the terminal reaches ruddr only, which deregisters
    // and drains before passing the signal on.
    let mut child = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .process_group(0)
        // Only reached on an internal error: never leave the service running unsupervised.
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {:?}", command[0]))?;
    // The child leads its own process group: signal the whole group, so workers a shell or
    // supervisor started get it too.
    let pid = child.id().map(|id| nix::unistd::Pid::from_raw(id as i32));
    info!(command = ?command, pid = ?pid, "started the service");
    let status = tokio::select! {
        status = child.wait() => {
            let status = status.context("waiting for the service")?;
            warn!(%status, "the service exited; deregistering at once");
            skip_drain.cancel();
            token.cancel();
            (&mut agents).await.context("registration task")?;
            status
        }
        sig = signals.next() => {
            info!(signal = %sig, "deregistering, draining, then signalling the service");
            token.cancel();
            // Deregister and drain first, so no new traffic reaches the service when it stops.
            tokio::select! {
                done = deregistered(&mut agents, &mut signals, &skip_drain) => {
                    done?;
                    if let Some(pid) = pid {
                        if let Err(e) = killpg(pid, sig) {
                            warn!(error = %e, "cannot signal the service");
                        }
                    }
                    match tokio::time::timeout(stop_timeout, child.wait()).await {
                        Ok(status) => status.context("waiting for the service")?,
                        Err(_) => {
                            warn!(?stop_timeout, "the service ignored the signal; killing it");
                            if let Some(pid) = pid {
                                let _ = killpg(pid, Signal::SIGKILL);
                            }
                            child.wait().await.context("waiting for the service")?
                        }
                    }
                }
                status = child.wait() => {
                    // The service stopped on its own while draining; finish deregistering.
                    let status = status.context("waiting for the service")?;
                    skip_drain.cancel();
                    (&mut agents).await.context("registration task")?;
                    status
                }
            }
        }
    };
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1))
}

/// Waits for the registrations to deregister; a further SIGTERM/SIGINT meanwhile skips the
/// rest of the drain.
async fn deregistered(
    agents: &mut tokio::task::JoinHandle<()>,
    signals: &mut Signals,
    skip_drain: &CancellationToken,
) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            done = &mut *agents => return done.context("registration task"),
            sig = signals.next(), if !skip_drain.is_cancelled() => {
                info!(signal = %sig, "second signal: skipping the rest of the drain");
                skip_drain.cancel();
            }
        }
    }
}
