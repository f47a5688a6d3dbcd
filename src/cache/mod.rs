//! The in-memory service view: our own types ([`ServiceName`], [`Instance`], [`Update`]) and the
//! [`Mirror`] that holds every registered instance. Pure data; no I/O.

mod freshness;
mod mirror;
mod types;

pub use freshness::Freshness;
pub use mirror::{
    Change, ChangeKind, InstanceKey, KeyOwner, Logged, Mirror, Service, Snapshot, CHANGE_LOG,
};
pub(crate) use types::bounded_map;
pub use types::locality;
pub use types::{
    Address, DomainKey, DomainLabel, DomainRecord, Health, Instance, InstanceId, InvalidAddress,
    InvalidDomainLabel, InvalidLabel, InvalidLocality, Kept, Meta, Ports, Positions, ServiceName,
    SourceId, Update,
};
