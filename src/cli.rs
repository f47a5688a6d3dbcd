//! Command-line flags as typed by the user; [`crate::config`] turns them into settings.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// ruddr: DNS for service discovery, answered from a live in-memory mirror of etcd.
///
/// Services register under an etcd prefix; ruddr watches it and answers A, AAAA, SRV and TXT
/// queries from memory, so lookups keep working while etcd is unreachable.
#[derive(Debug, Parser)]
#[command(
    name = "ruddr",
    version,
    propagate_version = true,
    after_help = "Example:\n  ruddr serve --listen 127.0.0.1:5300 --etcd-endpoints http://127.0.0.1:2379\n  dig @127.0.0.1 -p 5300 web.svc.internal SRV"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// More log output (-v debug, -vv trace). RUST_LOG, when set, takes precedence.
    #[arg(short, long, action = clap::ArgAction::Count, global = true, help_heading = "Logging")]
    pub verbose: u8,

    /// Less log output (-q warnings and errors only, -qq errors only).
    #[arg(
        short,
        long,
        action = clap::ArgAction::Count,
        global = true,
        conflicts_with = "verbose",
        help_heading = "Logging"
    )]
    pub quiet: u8,

    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true, help_heading = "Logging")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Answer DNS queries for the services registered in etcd.
    Serve(ServeArgs),
    /// Load and validate the configuration, print the effective settings, and exit
    /// (0 when valid, 64 when not).
    CheckConfig(ServeArgs),
}

/// Flags of `ruddr serve`; each overrides the same setting in the config file.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML config file (see config/ruddr.toml for every option and its default).
    #[arg(short, long, value_name = "FILE", env = "RUDDR_CONFIG")]
    pub config: Option<PathBuf>,

    /// Address to answer DNS on, over UDP and TCP; repeat or separate with commas.
    /// Port 0 picks a free port (the log line "dns listening" shows it).
    #[arg(short, long, value_name = "ADDR:PORT", value_delimiter = ',')]
    pub listen: Vec<String>,

    /// HTTP address for /metrics, /health and /ready; "" turns it off.
    #[arg(long, value_name = "ADDR:PORT")]
    pub admin_listen: Option<String>,

    /// etcd client URLs, comma-separated, e.g. http://10.0.0.1:2379,http://10.0.0.2:2379.
    #[arg(
        long,
        value_name = "URLS",
        value_delimiter = ',',
        env = "RUDDR_ETCD_ENDPOINTS"
    )]
    pub etcd_endpoints: Vec<String>,

    /// etcd key prefix that holds the registrations; must end with '/'.
    #[arg(long, value_name = "P")]
    pub prefix: Option<String>,

    /// DNS zone the services are answered under.
    #[arg(long, value_name = "Z")]
    pub zone: Option<String>,

    /// TTL of positive answers, in seconds.
    #[arg(long, value_name = "SECS")]
    pub ttl: Option<u32>,

    /// TTL of negative answers (NXDOMAIN, NODATA) and the SOA minimum, in seconds.
    #[arg(long, value_name = "SECS")]
    pub negative_ttl: Option<u32>,

    /// Longest time to answer registry names from data etcd has not confirmed (e.g. 10m);
    /// past it they get SERVFAIL. Default: no limit.
    #[arg(long, value_name = "DURATION")]
    pub max_stale: Option<String>,

    /// TTL of answers given from stale data, in seconds.
    #[arg(long, value_name = "SECS")]
    pub stale_ttl: Option<u32>,

    /// Below this share of healthy instances (0.0-1.0), answer with all instances of a service.
    #[arg(long, value_name = "SHARE")]
    pub panic_threshold: Option<f64>,

    /// Keep a copy of the mirror in this file, and serve from it at start while etcd is down.
    #[arg(long, value_name = "FILE")]
    pub snapshot_file: Option<PathBuf>,

    /// etcd user name (needs a password too).
    #[arg(long, value_name = "USER", env = "RUDDR_ETCD_USERNAME")]
    pub etcd_username: Option<String>,

    /// etcd password; prefer the environment variable over the flag.
    #[arg(
        long,
        value_name = "PASSWORD",
        env = "RUDDR_ETCD_PASSWORD",
        hide_env_values = true
    )]
    pub etcd_password: Option<String>,

    /// CA certificate (PEM) to verify etcd's TLS certificate; enables TLS.
    #[arg(long, value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,

    /// Client certificate (PEM) for etcd mutual TLS; needs --etcd-key.
    #[arg(long, value_name = "FILE", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,

    /// Client private key (PEM) for etcd mutual TLS; needs --etcd-cert.
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
}
