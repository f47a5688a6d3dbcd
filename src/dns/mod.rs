//! The DNS side, layered so that imports run one way:
//!
//! ```text
//!  server (udp, batch, tcp, connections, socket)     transport: packets in and out, limits
//!    └─▶ respond                                     runs the core for a packet or a request
//!          └─▶ handler                               the answer core: checks, route, freshness,
//!                │                                   stale TTL, caching, negative answers, order
//!                └─▶ zone (registry, skydns, file, forward)   built answers per name and type
//!                      └─▶ answer, reply, wire       rendered answers, the reply, the one writer
//! ```
//!
//! - [`server`]: UDP sockets (a thread each, `recvmmsg`/`sendmmsg` batches) and TCP listeners.
//! - [`respond`]: the UDP fast path, decoded requests, forwarded names that wait, metrics.
//! - [`handler`]: [`Handler::answer`], the one function that decides every response.
//! - [`route`]: which zone holds a name; [`name`]: what a discovery-zone name asks for;
//!   [`locality`]: where a client is; [`answer_cache`]: built answers by name and type;
//!   [`front`]: the per-thread table in front of a shared cache.
//! - [`zone`]: the answerers: the registry, SkyDNS zones, static zone files, the forward cache.
//! - [`answer`]: built answers rendered to wire form once; [`reply`]: a decided response;
//!   [`wire`]: the strict query parser and the one writer (truncation, case, OPT, TTL aging).
//! - [`rrl`]: response rate limiting over UDP.

pub mod answer;
pub mod answer_cache;
pub mod front;
pub mod handler;
pub mod locality;
pub mod name;
pub mod observe;
pub mod reply;
pub mod respond;
pub mod route;
pub mod rrl;
pub mod server;
pub mod wire;
pub mod zone;

pub use handler::Handler;
