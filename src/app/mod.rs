//! The commands behind the binary: `serve` (wiring of the server), `register` (registrations
//! plus supervision of the service's process), `services` (the registry as an operator sees
//! it) and `check-config`. Each returns an exit code or a [`Failure`] that says which one.

mod listeners;
mod register;
mod reload;
mod serve;
mod services;

use anyhow::Context;

use crate::cli::Command;
use crate::config::Config;
use crate::dns::zone::file::StaticZones;

pub use register::{register, register_plan};
pub use serve::run;
pub use services::{services, services_etcd};

/// Why a command failed; the binary maps each kind to its exit code.
#[derive(Debug)]
pub enum Failure {
    /// Bad usage or configuration (exit code 64): one line naming the input that failed.
    Usage(String),
    /// Anything else (exit code 1): printed with its whole cause chain.
    Runtime(anyhow::Error),
}

impl Failure {
    fn usage(e: impl std::fmt::Display) -> Self {
        Self::Usage(e.to_string())
    }
}

/// Runs one command to its end. `Ok` carries the process exit code.
pub fn execute(command: Command) -> Result<u8, Failure> {
    match command {
        Command::CheckConfig(args) => {
            let cfg = Config::load(&args).map_err(Failure::usage)?;
            let zones = StaticZones::load_dir(&cfg.zones_dir).map_err(Failure::usage)?;
            match toml::to_string_pretty(&cfg) {
                Ok(text) => print!("{text}"),
                Err(e) => eprintln!("ruddr: cannot print the configuration: {e}"),
            }
            for (zone, records) in &zones.summary {
                println!("# static zone {zone}: {records} records");
            }
            Ok(0)
        }
        Command::Register(args) => {
            let (etcd, regs) = register_plan(&args).map_err(Failure::usage)?;
            let code = runtime()?
                .block_on(register(etcd, regs, args.command, args.stop_timeout))
                .map_err(Failure::Runtime)?;
            Ok(u8::try_from(code).unwrap_or(1))
        }
        Command::Services(args) => {
            let etcd = services_etcd(&args).map_err(Failure::usage)?;
            runtime()?
                .block_on(services(etcd, args.service, args.output))
                .map_err(Failure::Runtime)?;
            Ok(0)
        }
        Command::MetricsFamilies => {
            print!("{}", crate::metrics::Metrics::families());
            Ok(0)
        }
        Command::Serve(args) => {
            let cfg = Config::load(&args).map_err(Failure::usage)?;
            let zones = StaticZones::load_dir(&cfg.zones_dir).map_err(Failure::usage)?;
            // Before the runtimes start their threads, which take arenas as they first allocate.
            crate::memory::limit_arenas();
            let runtime = tokio::runtime::Runtime::new().map_err(|e| {
                Failure::Runtime(anyhow::anyhow!("cannot start the async runtime: {e}"))
            })?;
            runtime
                .block_on(run(cfg, args, zones, shutdown_signal()))
                .map_err(Failure::Runtime)?;
            Ok(0)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Runtime::new()
        .context("starting the async runtime")
        .map_err(Failure::Runtime)
}

/// Completes on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    match Signals::install() {
        Ok(mut signals) => {
            let sig = signals.next().await;
            tracing::info!(signal = %sig, "signal received");
        }
        Err(e) => {
            tracing::error!("{e:#}; stop with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
}

/// SIGTERM and SIGINT, listened to from creation on: signals that arrive before anyone waits
/// are kept, not lost to the default action.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    /// The next SIGTERM or SIGINT.
    pub async fn next(&mut self) -> nix::sys::signal::Signal {
        use nix::sys::signal::Signal;
        tokio::select! {
            _ = self.term.recv() => Signal::SIGTERM,
            _ = self.int.recv() => Signal::SIGINT,
        }
    }
}
