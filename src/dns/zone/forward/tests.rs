//! The forwarder against a fake upstream: a real UDP socket on 127.0.0.1 that records what
//! it receives.

use std::collections::HashSet;
use std::sync::Mutex;

use hickory_proto::op::Edns;
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_server::net::xfer::Protocol;
use tokio::net::UdpSocket;

use super::*;

#[derive(Clone, Copy)]
enum Behaviour {
    /// Answers each query after `delay`.
    Answer,
    /// Never answers.
    Silent,
    /// Sends a reply with the wrong id and one for another name before the right one.
    StrayFirst,
}

struct Upstream {
    addr: SocketAddr,
    /// Source address and message of every query received.
    seen: Arc<Mutex<Vec<(SocketAddr, Message)>>>,
}

impl Upstream {
    async fn start(behaviour: Behaviour, delay: Duration) -> Self {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = socket.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((len, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let query = Message::from_vec(&buf[..len]).unwrap();
                log.lock().unwrap().push((from, query.clone()));
                let socket = socket.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let mut replies = Vec::new();
                    match behaviour {
                        Behaviour::Silent => return,
                        Behaviour::Answer => {}
                        Behaviour::StrayFirst => {
                            let mut wrong_id = reply(&query, query.queries[0].name(), STRAY);
                            wrong_id.metadata.id ^= 1;
                            replies.push(wrong_id);
                            let other = Name::from_ascii("other.test.").unwrap();
                            replies.push(reply(&query, &other, STRAY));
                        }
                    }
                    replies.push(reply(&query, query.queries[0].name(), GOOD));
                    for r in replies {
                        socket.send_to(&r.to_vec().unwrap(), from).await.unwrap();
                    }
                });
            }
        });
        Self { addr, seen }
    }

    fn seen(&self) -> Vec<(SocketAddr, Message)> {
        self.seen.lock().unwrap().clone()
    }
}

/// The address in the fake upstream's real answers, and in its stray datagrams.
const GOOD: A = A::new(192, 0, 2, 7);
const STRAY: A = A::new(192, 0, 2, 66);

/// An answer to `query` with the question and one A record owned by `name`.
fn reply(query: &Message, name: &Name, address: A) -> Message {
    let mut m = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
    m.metadata.recursion_available = true;
    let mut q = query.queries[0].clone();
    q.set_name(name.clone());
    m.add_query(q);
    m.add_answer(Record::from_rdata(name.clone(), 300, RData::A(address)));
    m
}

fn request(name: &str, dnssec_ok: bool) -> Request {
    let mut m = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    if dnssec_ok {
        let mut edns = Edns::new();
        edns.set_dnssec_ok(true);
        m.set_edns(edns);
    }
    let client: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    Request::from_bytes(m.to_vec().unwrap(), client, Protocol::Udp).unwrap()
}

fn forwarder(upstream: SocketAddr, tweak: impl FnOnce(&mut ForwardConfig)) -> Forwarder {
    let mut cfg = ForwardConfig {
        upstreams: vec![upstream],
        timeout: Duration::from_secs(2),
        ..ForwardConfig::default()
    };
    tweak(&mut cfg);
    Forwarder::build(&cfg, Counters::default())
}

async fn ask(f: &Forwarder, name: &str) -> Option<Message> {
    let question = Name::from_ascii(name).unwrap();
    f.forward(&request(name, false), 1232, |_, _| {})
        .await
        .map(|(_, relayed, age)| relayed.message(&question, age))
}

#[tokio::test]
async fn identical_questions_in_flight_share_one_upstream_query() {
    let up = Upstream::start(Behaviour::Answer, Duration::from_millis(200)).await;
    let f = forwarder(up.addr, |c| c.cache_bytes = 0);
    let (one, two) = tokio::join!(ask(&f, "www.example.test."), ask(&f, "WWW.Example.TEST."));
    assert_eq!(up.seen().len(), 1, "one upstream query for both");
    assert_eq!(f.counters.coalesced.get(), 1);
    let (one, two) = (one.unwrap(), two.unwrap());
    assert!(one.answers[0]
        .name
        .eq_case(&Name::from_ascii("www.example.test.").unwrap()));
    assert!(
        two.answers[0]
            .name
            .eq_case(&Name::from_ascii("WWW.Example.TEST.").unwrap()),
        "each client gets its own spelling"
    );
    // Finished: the next asker goes upstream again (no cache here).
    ask(&f, "www.example.test.").await.unwrap();
    assert_eq!(up.seen().len(), 2);
}

#[tokio::test]
async fn cached_answers_skip_the_upstream() {
    let up = Upstream::start(Behaviour::Answer, Duration::ZERO).await;
    let f = forwarder(up.addr, |_| {});
    ask(&f, "a.example.test.").await.unwrap();
    let again = ask(&f, "A.example.test.").await.unwrap();
    assert_eq!(up.seen().len(), 1);
    assert!(again.answers[0]
        .name
        .eq_case(&Name::from_ascii("A.example.test.").unwrap()));
    assert_eq!(
        (f.counters.cache_hit.get(), f.counters.cache_miss.get()),
        (1, 1)
    );
    // The DO bit is part of the key: a DNSSEC-aware client gets its own upstream query.
    let signed = f
        .forward(&request("a.example.test.", true), 1232, |_, _| {})
        .await;
    assert!(signed.is_some());
    assert_eq!(up.seen().len(), 2);
    let sent = &up.seen()[1].1;
    assert!(sent.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok));
}

#[tokio::test]
async fn each_query_goes_from_a_new_random_port_with_a_random_id() {
    let up = Upstream::start(Behaviour::Answer, Duration::ZERO).await;
    let f = forwarder(up.addr, |c| c.cache_bytes = 0);
    for i in 0..8 {
        ask(&f, &format!("host-{i}.example.test.")).await.unwrap();
    }
    let seen = up.seen();
    let ports: HashSet<u16> = seen.iter().map(|(from, _)| from.port()).collect();
    let ids: HashSet<u16> = seen.iter().map(|(_, m)| m.metadata.id).collect();
    // The kernel picks ports at random; a repeat among 8 is possible, rarely.
    assert!(ports.len() >= 6, "source ports {ports:?}");
    assert!(ids.len() >= 6, "ids {ids:?}");
}

#[tokio::test]
async fn the_socket_bound_turns_excess_queries_away() {
    let up = Upstream::start(Behaviour::Silent, Duration::ZERO).await;
    let f = forwarder(up.addr, |c| {
        c.max_sockets = 2;
        c.timeout = Duration::from_millis(400);
    });
    let (a, b, c) = tokio::join!(
        ask(&f, "a.example.test."),
        ask(&f, "b.example.test."),
        ask(&f, "c.example.test."),
    );
    assert!(a.is_none() && b.is_none() && c.is_none());
    assert_eq!(
        up.seen().len(),
        2,
        "no more than max_sockets queries at once"
    );
    assert_eq!(f.counters.sockets_exhausted.get(), 1);
    // Freed when they time out.
    let _ = ask(&f, "d.example.test.").await;
    assert_eq!(up.seen().len(), 3);
}

#[tokio::test]
async fn datagrams_that_do_not_answer_the_query_are_ignored() {
    let up = Upstream::start(Behaviour::StrayFirst, Duration::ZERO).await;
    let f = forwarder(up.addr, |_| {});
    let answer = ask(&f, "a.example.test.").await.unwrap();
    assert_eq!(answer.answers[0].data, RData::A(GOOD));
}
