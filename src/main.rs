//! The `ruddr` binary: parse flags, set up logging, run, and map errors to exit codes
//! (64 for bad usage or configuration, 1 for anything else).

use std::process::ExitCode;

use clap::Parser;
use ruddr::cli::{Cli, Command, LogFormat};
use ruddr::config::{Config, ConfigError};
use ruddr::dns::zones::StaticZones;
use tracing_subscriber::EnvFilter;

const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EX_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    init_tracing(&cli);
    match cli.command {
        Command::CheckConfig(args) => match Config::load(&args) {
            Ok(cfg) => {
                let zones = match StaticZones::load_dir(&cfg.zones_dir) {
                    Ok(z) => z,
                    Err(e) => return usage_failed(&e),
                };
                match toml::to_string_pretty(&cfg) {
                    Ok(text) => print!("{text}"),
                    Err(e) => eprintln!("ruddr: cannot print the configuration: {e}"),
                }
                for (zone, records) in &zones.summary {
                    println!("# static zone {zone}: {records} records");
                }
                ExitCode::SUCCESS
            }
            Err(e) => config_failed(&e),
        },
        Command::Register(args) => {
            let (etcd, regs) = match ruddr::app::register_plan(&args) {
                Ok(plan) => plan,
                Err(e) => return config_failed(&e),
            };
            match runtime().map(|rt| {
                rt.block_on(ruddr::app::register(
                    etcd,
                    regs,
                    args.command,
                    args.stop_timeout,
                ))
            }) {
                Ok(Ok(code)) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
                Ok(Err(e)) | Err(e) => failed(&e),
            }
        }
        Command::Services(args) => {
            let etcd = match ruddr::app::services_etcd(&args) {
                Ok(etcd) => etcd,
                Err(e) => return config_failed(&e),
            };
            match runtime()
                .map(|rt| rt.block_on(ruddr::app::services(etcd, args.service, args.output)))
            {
                Ok(Ok(())) => ExitCode::SUCCESS,
                Ok(Err(e)) | Err(e) => failed(&e),
            }
        }
        Command::Serve(args) => {
            let cfg = match Config::load(&args) {
                Ok(cfg) => cfg,
                Err(e) => return config_failed(&e),
            };
            let zones = match StaticZones::load_dir(&cfg.zones_dir) {
                Ok(z) => z,
                Err(e) => return usage_failed(&e),
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("ruddr: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(ruddr::app::run(cfg, zones, shutdown_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("ruddr: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    tokio::runtime::Runtime::new().context("starting the async runtime")
}

fn failed(e: &anyhow::Error) -> ExitCode {
    tracing::error!("{e:#}");
    eprintln!("ruddr: {e:#}");
    ExitCode::FAILURE
}

fn config_failed(e: &ConfigError) -> ExitCode {
    usage_failed(e)
}

fn usage_failed(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("ruddr: {e}");
    ExitCode::from(EX_USAGE)
}

/// Completes on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    match ruddr::app::Signals::install() {
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

fn init_tracing(cli: &Cli) {
    let level = match (cli.verbose, cli.quiet) {
        (0, 0) => "info",
        (1, _) => "debug",
        (v, _) if v >= 2 => "trace",
        (_, 1) => "warn",
        _ => "error",
    };
    // hickory-server logs every query at INFO; keep that for -vv and RUST_LOG.
    let default = if cli.verbose >= 2 {
        level.to_string()
    } else {
        format!("{level},hickory_server=warn,hickory_proto=warn,hickory_net=warn,h2=warn,tower=warn,hyper=warn")
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
