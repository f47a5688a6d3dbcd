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
    /// Keep an instance registered in etcd (lease, keepalive, health checks) until SIGTERM or
    /// SIGINT, then deregister it and drain; optionally run the service as a child process.
    Register(RegisterArgs),
    /// List registered services (healthy/total), or the instances of one service.
    Services(ServicesArgs),
    /// Print every Prometheus metric family `serve` exports, one `name type` per line (for
    /// checking dashboards and alert rules).
    MetricsFamilies,
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

    /// Address of the xDS (ADS) server for gRPC clients (xds:///<service>); "" turns it off.
    /// Keep it on loopback or a private network.
    #[arg(long, value_name = "ADDR:PORT")]
    pub xds_listen: Option<String>,

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

    /// Upstream resolver for names outside ruddr's zones (ADDR[:PORT]); repeat or separate
    /// with commas, tried in order. Without one, such names get REFUSED.
    #[arg(long = "upstream", value_name = "ADDR:PORT", value_delimiter = ',')]
    pub upstreams: Vec<String>,

    /// How long to wait for one upstream before trying the next (e.g. 2s).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub forward_timeout: Option<std::time::Duration>,

    /// Directory of zone files (<zone>.zone) to serve authoritatively.
    #[arg(long, value_name = "DIR")]
    pub zones_dir: Option<PathBuf>,

    /// Keep a copy of the mirror in this file, and serve from it at start while etcd is down.
    #[arg(long, value_name = "FILE")]
    pub snapshot_file: Option<PathBuf>,

    /// Hand the listening sockets over through this Unix socket: a new `ruddr serve` with the
    /// same path takes them from the running one, which stops once the new one answers.
    #[arg(long, value_name = "PATH")]
    pub handover_socket: Option<PathBuf>,

    #[command(flatten)]
    pub etcd: EtcdArgs,
}

/// Where the registry is; shared by every command that talks to etcd.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "etcd")]
pub struct EtcdArgs {
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

/// Flags of `ruddr register`.
#[derive(Debug, Clone, Default, Args)]
pub struct RegisterArgs {
    /// TOML file with an [etcd] table and [[instance]] tables (same options as the flags),
    /// to register several instances at once.
    #[arg(short, long, value_name = "FILE", conflicts_with_all = ["service", "id", "address"])]
    pub config: Option<PathBuf>,

    /// Service name (a DNS label).
    #[arg(long, required_unless_present = "config")]
    pub service: Option<String>,
    /// Instance id, unique within the service (a DNS label).
    #[arg(long, required_unless_present = "config")]
    pub id: Option<String>,
    /// IPv4 or IPv6 address clients should use.
    #[arg(long, required_unless_present = "config")]
    pub address: Option<String>,
    /// Main port (SRV records).
    #[arg(long)]
    pub port: Option<u16>,
    /// Named port NAME=PORT (SRV at _NAME._tcp.<service>); repeatable.
    #[arg(long = "port-name", value_name = "NAME=PORT")]
    pub port_names: Vec<String>,
    /// Tag; repeatable.
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// SRV weight; also makes the address come first more often.
    #[arg(long)]
    pub weight: Option<u16>,
    /// SRV priority (lower first).
    #[arg(long)]
    pub priority: Option<u16>,
    /// Metadata KEY=VALUE; repeatable.
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    pub meta: Vec<String>,
    /// Lease TTL: how long the instance outlives this process if it dies without deregistering.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "10s")]
    pub ttl: std::time::Duration,

    /// Health check: GET this URL, 2xx passes.
    #[arg(long, value_name = "URL", help_heading = "Health check", conflicts_with_all = ["check_tcp", "check_cmd"])]
    pub check_http: Option<String>,
    /// Health check: connect to HOST:PORT.
    #[arg(
        long,
        value_name = "HOST:PORT",
        help_heading = "Health check",
        conflicts_with = "check_cmd"
    )]
    pub check_tcp: Option<String>,
    /// Health check: run this shell command, exit 0 passes.
    #[arg(long, value_name = "CMD", help_heading = "Health check")]
    pub check_cmd: Option<String>,
    /// Time between checks.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "5s", help_heading = "Health check")]
    pub interval: std::time::Duration,
    /// Time one check may take.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "2s", help_heading = "Health check")]
    pub timeout: std::time::Duration,
    /// Consecutive failures before the instance is marked critical (and leaves DNS answers).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 3,
        help_heading = "Health check"
    )]
    pub fail_after: u32,
    /// Consecutive passes before a critical instance is passing again.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 2,
        help_heading = "Health check"
    )]
    pub pass_after: u32,
    /// Remove the key after being critical this long (it comes back when healthy).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "60s", help_heading = "Health check")]
    pub deregister_after: std::time::Duration,
    /// After deregistering on SIGTERM/SIGINT, wait this long (for DNS caches to expire) before
    /// revoking the lease, signalling the child and exiting.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "5s")]
    pub drain: std::time::Duration,

    /// After the signal reaches the child (once draining is over), wait this long for it to
    /// exit before sending SIGKILL to its process group.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "10s")]
    pub stop_timeout: std::time::Duration,

    /// Run this command as the service: signals are forwarded to it after deregistering and
    /// draining; if it exits, the instance is deregistered at once; its exit status is ruddr's.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,

    #[command(flatten)]
    pub etcd: EtcdArgs,
}

/// Output format of `ruddr services`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    #[default]
    Text,
    Json,
}

/// Flags of `ruddr services`.
#[derive(Debug, Clone, Default, Args)]
pub struct ServicesArgs {
    /// Show the instances of this service; without it, list services with healthy/total counts.
    pub service: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// TOML config file to take the [etcd] settings from.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub etcd: EtcdArgs,
}
