//! The DNS side. [`server`] receives packets and decodes them; [`handler`] is the answer core
//! (protocol checks, [`route`] to a zone, freshness, cached [`answer`]s built by [`records`] and
//! [`skydns`] from query names parsed by [`name`]); static [`zones`] go through hickory's
//! catalog and other names to the [`forward`]er; [`rrl`] limits UDP response rates.
//!
//! ```text
//!  packet ─▶ server (decode, limits) ─▶ Handler::answer: checks ─▶ route ─▶ cache or build ─▶ order, fit ─▶ encode ─▶ server ─▶ packet
//! ```

pub mod answer;
pub mod answer_cache;
pub mod handler;
pub mod locality;
pub mod name;
pub mod reply;
pub mod respond;
pub mod route;
pub mod rrl;
pub mod server;
pub mod wire;
pub mod zone;

pub use handler::Handler;
