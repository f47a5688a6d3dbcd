//! Upstream UDP exchanges: each on its own socket bound to a kernel-chosen random port and
//! connected to the upstream, with a random id; at most `forward.max_sockets` open at once.
//!
//! A fresh socket per query rather than a few shared long-lived ones: each query gets a new
//! random source port (16 more bits an off-path spoofer must guess, as in Unbound's
//! `outgoing-range`), the connected socket makes the kernel drop datagrams from any other
//! address, and there is no demultiplexing state to get wrong. The cost, a bind per cache
//! miss, is small next to the upstream round trip.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use tokio::net::UdpSocket;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::debug;

/// The bound on upstream sockets (UDP, and TCP for retries of truncated answers).
pub struct Sockets {
    permits: Arc<Semaphore>,
    /// How long a query waits for a socket when all are in use.
    wait: Duration,
}

/// Waiting longer than this for a socket would only add to a backlog: with every socket busy,
/// upstreams are slow or dead, and the client is better served by a quick SERVFAIL.
pub const SOCKET_WAIT: Duration = Duration::from_millis(100);

impl Sockets {
    pub fn new(max: usize, wait: Duration) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
            wait,
        }
    }

    /// The right to open one upstream socket, or `None` if none freed up in time.
    pub async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        tokio::time::timeout(self.wait, self.permits.clone().acquire_owned())
            .await
            .ok()?
            // The semaphore is never closed.
            .ok()
    }
}

/// Sends `query` to `upstream` from a fresh socket and returns the first datagram that answers
/// it: same id, a response, and the same question (name compared case-insensitively); anything
/// else is dropped and the wait goes on. The caller bounds the wait.
pub async fn exchange(upstream: SocketAddr, query: &Message) -> Option<Message> {
    let wire = query
        .to_vec()
        .inspect_err(|error| debug!(%error, "cannot encode a forwarded query"))
        .ok()?;
    let local: SocketAddr = if upstream.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = async {
        // Port 0: the kernel picks a random free ephemeral port for each socket.
        let socket = UdpSocket::bind(local).await?;
        socket.connect(upstream).await?;
        socket.send(&wire).await?;
        Ok::<_, std::io::Error>(socket)
    }
    .await
    .inspect_err(|error| debug!(%error, %upstream, "cannot send to upstream"))
    .ok()?;
    // Upstreams may send more than the size we advertised; a datagram cut short would not parse.
    // Room for the largest, received into spare capacity: nothing is zeroed, so a typical
    // answer touches a page or two of it (at most `forward.max_sockets` of these at once).
    let mut buf: Vec<u8> = Vec::with_capacity(u16::MAX as usize);
    loop {
        buf.clear();
        let len = match socket.recv_buf(&mut buf).await {
            Ok(len) => len,
            // ICMP port unreachable shows up here on a connected socket: nobody listens.
            Err(error) => {
                debug!(%error, %upstream, "upstream receive failed");
                return None;
            }
        };
        match Message::from_vec(&buf[..len]) {
            Ok(response) if answers(query, &response) => return Some(response),
            Ok(_) => debug!(%upstream, "dropped a datagram that does not answer our query"),
            Err(error) => debug!(%error, %upstream, "dropped an undecodable datagram"),
        }
    }
}

/// Whether `response` answers `query`: same id, a response, and the same question, which an
/// error response (FORMERR from an upstream that does not speak EDNS, say) may leave out.
fn answers(query: &Message, response: &Message) -> bool {
    if response.metadata.id != query.metadata.id
        || response.metadata.message_type != MessageType::Response
    {
        return false;
    }
    match (response.queries.as_slice(), query.queries.as_slice()) {
        ([theirs], [ours]) => {
            theirs.name() == ours.name()
                && theirs.query_type() == ours.query_type()
                && theirs.query_class() == ours.query_class()
        }
        ([], _) => !matches!(
            response.metadata.response_code,
            ResponseCode::NoError | ResponseCode::NXDomain
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};

    fn query(id: u16, name: &str) -> Message {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        m
    }

    #[test]
    fn a_response_must_match_id_and_question() {
        let ours = query(10, "a.example.");
        let mut reply = query(10, "A.EXAMPLE.");
        reply.metadata.message_type = MessageType::Response;
        assert!(answers(&ours, &reply), "case does not matter");
        let mut wrong_id = reply.clone();
        wrong_id.metadata.id = 11;
        assert!(!answers(&ours, &wrong_id));
        let mut other_name = query(10, "b.example.");
        other_name.metadata.message_type = MessageType::Response;
        assert!(!answers(&ours, &other_name));
        assert!(!answers(&ours, &ours), "a query is not an answer");
        let mut bare = Message::new(10, MessageType::Response, OpCode::Query);
        assert!(!answers(&ours, &bare), "an answer must carry the question");
        bare.metadata.response_code = ResponseCode::FormErr;
        assert!(answers(&ours, &bare), "an error may leave it out");
    }

    #[tokio::test]
    async fn the_socket_bound_holds() {
        let sockets = Sockets::new(2, Duration::from_millis(20));
        let one = sockets.acquire().await.unwrap();
        let _two = sockets.acquire().await.unwrap();
        assert!(
            sockets.acquire().await.is_none(),
            "a third waits, then gives up"
        );
        drop(one);
        assert!(sockets.acquire().await.is_some());
    }
}
