//! Domain types shared by the registry (producer) and the DNS side (consumer).

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// A name is not a DNS label (1-63 of letters, digits and `-`, not starting or ending with `-`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a DNS label (1-63 letters, digits or '-', not starting or ending with '-')")]
pub struct InvalidLabel(pub String);

/// Checks `s` against the label rule and returns it lower-cased.
fn label(s: &str) -> Result<String, InvalidLabel> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(InvalidLabel(s.to_string()))
    }
}

macro_rules! label_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl TryFrom<String> for $name {
            type Error = InvalidLabel;
            fn try_from(s: String) -> Result<Self, InvalidLabel> {
                Self::new(&s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl $name {
            /// Validates `s` as a DNS label; the stored form is lower case.
            pub fn new(s: &str) -> Result<Self, InvalidLabel> {
                label(s).map(Self)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

label_type!(
    /// A service name: one lower-case DNS label.
    ServiceName
);
label_type!(
    /// An instance id, unique within its service: one lower-case DNS label.
    InstanceId
);

/// Health as registered. Only `Critical` is never served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    #[default]
    Passing,
    Warning,
    Critical,
}

/// One registered instance of a service, already validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub id: InstanceId,
    pub address: IpAddr,
    /// The main port; instances without one get A/AAAA records but no SRV record.
    pub port: Option<u16>,
    /// Named ports, lower-case names (`_<name>._tcp.<service>`).
    pub ports: BTreeMap<String, u16>,
    pub tags: Vec<String>,
    pub weight: u16,
    pub priority: u16,
    pub health: Health,
    pub meta: BTreeMap<String, String>,
}

impl Health {
    /// The registry contract's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Passing => "passing",
            Health::Warning => "warning",
            Health::Critical => "critical",
        }
    }
}

impl Instance {
    /// Whether DNS answers may include this instance.
    pub fn is_served(&self, serve_warning: bool) -> bool {
        match self.health {
            Health::Passing => true,
            Health::Warning => serve_warning,
            Health::Critical => false,
        }
    }

    /// Whether the instance carries `tag` (tags compare case-insensitively, as DNS names do).
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t.eq_ignore_ascii_case(tag))
    }
}

/// A change to the mirror, produced by the registry.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// An instance was written (created or replaced).
    Put {
        service: ServiceName,
        instance: Instance,
    },
    /// An instance was removed.
    Delete {
        service: ServiceName,
        id: InstanceId,
    },
    /// The whole registry as listed at one revision; replaces everything.
    Reset {
        instances: Vec<(ServiceName, Instance)>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_validated_and_lowercased() {
        assert_eq!(ServiceName::new("Web-1").unwrap().as_str(), "web-1");
        for bad in ["", "-a", "a-", "a_b", "a.b", "ü", &"a".repeat(64)] {
            assert!(ServiceName::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(InstanceId::new(&"a".repeat(63)).is_ok());
    }
}
