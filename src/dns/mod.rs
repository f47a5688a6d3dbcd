//! The DNS side: query names parsed into [`name::Target`]s, answers built from the mirror in
//! [`records`], and the hickory request handler in [`handler`].
//!
//! ```text
//!  packet ─▶ hickory Server ─▶ Handler: checks (opcode, class, EDNS) ─▶ Target ─▶ cache or build ─▶ shuffle ─▶ packet
//! ```

pub mod answer;
pub mod forward;
pub mod handler;
pub mod locality;
pub mod name;
pub mod records;
pub mod route;
pub mod rrl;
pub mod server;
pub mod skydns;
pub mod zones;

pub use handler::Handler;
