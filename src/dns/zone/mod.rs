//! The zones ruddr answers besides the registry's own: static zone files ([`file`]).

pub mod file;
