//! What happens to each answered query besides its metrics: the query log (`ruddr::query`) and
//! dnstap. The transports call [`Observer::served`] once a response is on its way (never for
//! one the rate limiter dropped); with both off it is one branch.

use std::cell::Cell;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use hickory_proto::rr::RecordType;

use crate::config::{DnsConfig, QueryLogMode};
use crate::dnstap::{Role, Tap, Transport};

/// Which kind of zone answered (the `path` label of `ruddr_dns_queries_total`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ZoneKind {
    /// The discovery zone, and reverse names of registered addresses.
    Registry,
    Skydns,
    Static,
    /// Forwarded names, from the forward cache or an upstream.
    Forward,
    /// Nobody's: refused, malformed, or answered before any zone was chosen.
    #[default]
    None,
}

impl ZoneKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Registry => "registry",
            Self::Skydns => "skydns",
            Self::Static => "static",
            Self::Forward => "forward",
            Self::None => "none",
        }
    }
}

impl prometheus_client::encoding::EncodeLabelValue for ZoneKind {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// How a query was answered, as the handler tells the transport.
#[derive(Clone, Copy, Debug)]
pub struct Served {
    pub zone: ZoneKind,
    /// Answered by the UDP fast path (straight from the packet's bytes).
    pub fast: bool,
    /// From registry data etcd has not confirmed lately.
    pub stale: bool,
    /// When the query's answering began.
    pub started: Instant,
}

impl Served {
    /// A response no zone gave (a malformed query's FORMERR).
    pub fn unzoned(started: Instant) -> Self {
        Self {
            zone: ZoneKind::None,
            fast: false,
            stale: false,
            started,
        }
    }
}

/// The query log's settings.
#[derive(Clone, Copy)]
struct QueryLog {
    mode: QueryLogMode,
    sample: u32,
}

thread_local! {
    /// Queries this thread has seen for the query log's sampling.
    static SEEN: Cell<u32> = const { Cell::new(0) };
}

pub struct Observer {
    log: QueryLog,
    tap: Option<Arc<Tap>>,
}

impl Observer {
    pub fn new(cfg: &DnsConfig, tap: Option<Arc<Tap>>) -> Self {
        Self {
            log: QueryLog {
                mode: cfg.query_log,
                sample: cfg.query_log_sample.max(1),
            },
            tap,
        }
    }

    /// Records `response`, sent (or about to be) to `client` for `query`.
    #[inline]
    pub fn served(
        &self,
        query: &[u8],
        response: &[u8],
        client: SocketAddr,
        local: Option<SocketAddr>,
        transport: Transport,
        served: &Served,
    ) {
        if self.log.mode == QueryLogMode::Off && self.tap.is_none() {
            return;
        }
        self.record(query, response, client, local, transport, served);
    }

    #[cold]
    fn record(
        &self,
        query: &[u8],
        response: &[u8],
        client: SocketAddr,
        local: Option<SocketAddr>,
        transport: Transport,
        served: &Served,
    ) {
        if let Some(tap) = &self.tap {
            let role = if served.zone == ZoneKind::Forward {
                Role::Client
            } else {
                Role::Auth
            };
            let received = SystemTime::now()
                .checked_sub(served.started.elapsed())
                .unwrap_or_else(SystemTime::now);
            tap.exchange(role, transport, client, local, received, query, response);
        }
        if self.log.mode != QueryLogMode::Off {
            self.log_line(query, response, client, transport, served);
        }
    }

    fn log_line(
        &self,
        query: &[u8],
        response: &[u8],
        client: SocketAddr,
        transport: Transport,
        served: &Served,
    ) {
        let rcode = response.get(3).map_or(2, |b| b & 0x0f);
        if self.log.mode == QueryLogMode::Errors && !matches!(rcode, 1 | 2 | 5) {
            return;
        }
        if self.log.sample > 1 {
            let n = SEEN.with(|s| {
                let n = s.get().wrapping_add(1);
                s.set(n);
                n
            });
            if !n.is_multiple_of(self.log.sample) {
                return;
            }
        }
        let micros = served.started.elapsed().as_micros() as u64;
        let question = super::wire::question_name(query);
        let name = question.map_or_else(String::new, name_text);
        let qtype = question
            .and_then(|n| query.get(12 + n.len()..12 + n.len() + 2))
            .map_or_else(String::new, |t| {
                RecordType::from(u16::from_be_bytes([t[0], t[1]])).to_string()
            });
        let answers = response
            .get(6..8)
            .map_or(0, |c| u16::from_be_bytes([c[0], c[1]]));
        // The mnemonic (NOERROR, NXDOMAIN, ...), as the metrics' label and dig spell it.
        let rcode = crate::metrics::Rcode::from_u16(u16::from(rcode));
        tracing::info!(
            target: "ruddr::query",
            client = %client.ip(),
            port = client.port(),
            name = %name,
            qtype = %qtype,
            rcode = ?rcode,
            answers,
            transport = match transport {
                Transport::Udp => "udp",
                Transport::Tcp => "tcp",
                Transport::Dot => "dot",
                Transport::Doh => "doh",
            },
            path = if served.fast { "fast" } else { "general" },
            zone = served.zone.as_str(),
            stale = served.stale,
            micros,
            "query"
        );
    }
}

/// A name in wire form as text (`web.svc.internal.`), with dots and unusual bytes escaped as
/// zone files do.
fn name_text(wire: &[u8]) -> String {
    let mut out = String::with_capacity(wire.len() + 1);
    let mut at = 0;
    while let Some(&len) = wire.get(at) {
        if len == 0 {
            break;
        }
        let label = wire.get(at + 1..at + 1 + usize::from(len)).unwrap_or(&[]);
        for &b in label {
            match b {
                b'.' | b'\\' => {
                    out.push('\\');
                    out.push(b as char);
                }
                0x21..=0x7e => out.push(b as char),
                _ => {
                    let _ = write!(out, "\\{b:03}");
                }
            }
        }
        out.push('.');
        at += 1 + usize::from(len);
    }
    if out.is_empty() {
        out.push('.');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_text() {
        assert_eq!(
            name_text(b"\x03web\x03svc\x08internal\x00"),
            "web.svc.internal."
        );
        assert_eq!(name_text(b"\x00"), ".");
        assert_eq!(name_text(b"\x03a.b\x02\x00 \x00"), "a\\.b.\\000\\032.");
    }
}
