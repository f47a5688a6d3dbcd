//! The zones: each answers its names with built answers rendered to wire form, and the answer
//! core ([`super::handler`]) applies the rules common to all of them.
//!
//! - [`registry`]: the discovery zone, from the mirror (services, instances, DNS-SD).
//! - [`skydns`]: zones from SkyDNS sources, as CoreDNS's etcd plugin answers them.
//! - [`file`]: static zone files.
//! - [`forward`]: names outside ruddr's zones, relayed from upstreams and cached.

pub mod file;
pub mod forward;
pub mod registry;
pub mod skydns;
