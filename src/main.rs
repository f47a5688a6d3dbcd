//! The `ruddr` binary: parse flags, set up logging, run the command, and map its failure to an
//! exit code (64 for bad usage or configuration, 1 for anything else).

use std::process::ExitCode;

use clap::Parser;
use ruddr::app::Failure;
use ruddr::cli::{Cli, LogFormat};
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
    match ruddr::app::execute(cli.command) {
        Ok(code) => ExitCode::from(code),
        Err(Failure::Usage(message)) => {
            eprintln!("ruddr: {message}");
            ExitCode::from(EX_USAGE)
        }
        Err(Failure::Runtime(e)) => {
            tracing::error!("{e:#}");
            eprintln!("ruddr: {e:#}");
            ExitCode::FAILURE
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
