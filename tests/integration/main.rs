//! Integration tests: real etcd, the real `ruddr` binary, real DNS clients. One test binary.
//!
//! - `harness`: processes (etcd, ruddr) and DNS clients (dig, hickory-proto over UDP/TCP).
//! - `admin`: /metrics, /health, /ready and check-config on shipped configs.
//! - `discovery`: DNS-SD browsing and locality-aware answers (clients on 127.0.0.2/3/4).
//! - `dns`: the DNS contract: name forms, NXDOMAIN/NODATA with SOA, AA, REFUSED, EDNS, TC/TCP.
//! - `edns`: ISC's EDNS compliance checks and 0x20 case on both UDP paths; the paths agree.
//! - `encrypted`: DNS over TLS and HTTPS with kdig, curl and dnspython; certificates, bad
//!   requests, idle and slow connections, reloads.
//! - `frameworks`: the etcd layouts of etcd naming, go-zero, Kratos, go-micro and SkyDNS.
//! - `fuzz`: a million random and mutated packets over UDP and TCP; ruddr stays up and right.
//! - `limits`: hostile and careless traffic: idle TCP floods, response rate limiting.
//! - `liveness`: registrar repair and bounded shutdown, supervised and leader-aware watching.
//! - `mirror`: registry changes reaching answers; bad values; etcd outages; compaction.
//! - `observe`: dnstap to fstrm_capture, the query log, the status page (API and headless
//!   Chromium), the dashboard's and alert rules' metrics, promtool.
//! - `outage`: 3-member cluster failover under load, leases across outages, snapshots, max_stale.
//! - `ordering`: randomized, weighted answer order.
//! - `register`: `ruddr register` (leases, health checks, signals, child mode) and `ruddr services`.
//! - `reload`: SIGHUP reloads of each live setting under dnsperf load; broken files; restart-only settings.
//! - `resolver`: static zones, forwarding, allow list, AXFR/ANY/PTR, glibc and dnspython clients.
//! - `restart`: restarts that resume the etcd watch from the snapshot's revisions, and
//!   restarts under load that lose no query (socket activation, hand-over).
//! - `robustness`: malformed packets, CLI and config errors, signals.
//! - `scale`: registries larger than one gRPC message: paged lists, re-lists at that size.
//! - `xds`: gRPC clients (Python grpcio) on `xds:///<service>`, following the registry.

mod admin;
mod discovery;
mod dns;
mod edns;
mod encrypted;
mod frameworks;
mod fuzz;
mod harness;
mod limits;
mod liveness;
mod mirror;
mod observe;
mod ordering;
mod outage;
mod register;
mod reload;
mod resolver;
mod restart;
mod robustness;
mod scale;
mod xds;
