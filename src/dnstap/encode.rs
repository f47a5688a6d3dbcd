//! The dnstap protobuf message (`dnstap.proto`) and its Frame Streams framing, written by hand:
//! a handful of fields, encoded straight into the output buffer without building message
//! structs first.

use std::net::{IpAddr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

/// Frame Streams content type of dnstap.
pub const CONTENT_TYPE: &[u8] = b"protobuf:dnstap.Dnstap";

/// Frame Streams control frame types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Control {
    Accept = 1,
    Start = 2,
    Stop = 3,
    Ready = 4,
    Finish = 5,
}

impl Control {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Accept,
            2 => Self::Start,
            3 => Self::Stop,
            4 => Self::Ready,
            5 => Self::Finish,
            _ => return None,
        })
    }
}

/// The control frame field that carries a content type.
const FIELD_CONTENT_TYPE: u32 = 1;

/// Appends a control frame (escape, length, type, and for READY/ACCEPT/START the content type).
pub fn control(out: &mut Vec<u8>, kind: Control) {
    let with_type = matches!(kind, Control::Ready | Control::Accept | Control::Start);
    let len = 4 + if with_type { 8 + CONTENT_TYPE.len() } else { 0 };
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(&(kind as u32).to_be_bytes());
    if with_type {
        out.extend_from_slice(&FIELD_CONTENT_TYPE.to_be_bytes());
        out.extend_from_slice(&(CONTENT_TYPE.len() as u32).to_be_bytes());
        out.extend_from_slice(CONTENT_TYPE);
    }
}

/// Whether a control frame's body (after its length) is `kind`, and for ACCEPT, that it
/// accepts dnstap (a reader may list several types; none listed accepts any).
pub fn control_is(body: &[u8], kind: Control) -> bool {
    let Some(t) = body.get(..4) else {
        return false;
    };
    if Control::from_u32(u32::from_be_bytes(t.try_into().unwrap_or_default())) != Some(kind) {
        return false;
    }
    if kind != Control::Accept {
        return true;
    }
    let mut rest = &body[4..];
    let mut listed = false;
    while rest.len() >= 8 {
        let field = u32::from_be_bytes(rest[..4].try_into().unwrap_or_default());
        let len = u32::from_be_bytes(rest[4..8].try_into().unwrap_or_default()) as usize;
        let Some(value) = rest.get(8..8 + len) else {
            return false;
        };
        if field == FIELD_CONTENT_TYPE {
            listed = true;
            if value == CONTENT_TYPE {
                return true;
            }
        }
        rest = &rest[8 + len..];
    }
    !listed
}

/// `Message.Type` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageType {
    AuthQuery = 1,
    AuthResponse = 2,
    ClientQuery = 5,
    ClientResponse = 6,
    ForwarderQuery = 7,
    ForwarderResponse = 8,
}

/// `SocketProtocol` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp = 1,
    Tcp = 2,
    Dot = 3,
    Doh = 4,
}

/// One dnstap message to encode.
pub struct Message<'a> {
    pub kind: MessageType,
    pub transport: Transport,
    /// The side that sent the query (the client; ruddr for a forwarder message).
    pub query_from: SocketAddr,
    /// The side that answered (ruddr's listener, if known; the upstream for a forwarder one).
    pub response_from: Option<SocketAddr>,
    pub query_time: SystemTime,
    pub response_time: Option<SystemTime>,
    pub query: Option<&'a [u8]>,
    pub response: Option<&'a [u8]>,
}

/// Appends `msg` as a data frame: its length, then a `Dnstap` message.
pub fn data_frame(out: &mut Vec<u8>, identity: &[u8], version: &[u8], msg: &Message<'_>) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    if !identity.is_empty() {
        bytes_field(out, 1, identity);
    }
    if !version.is_empty() {
        bytes_field(out, 2, version);
    }
    // Field 14, the Message: encoded in place, then its length put in front of it.
    key(out, 14, 2);
    let body_at = out.len();
    message(out, msg);
    let mut len = Vec::with_capacity(3);
    varint(&mut len, (out.len() - body_at) as u64);
    out.splice(body_at..body_at, len);
    varint_field(out, 15, 1); // Dnstap.Type MESSAGE
    let frame_len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&frame_len.to_be_bytes());
}

fn message(out: &mut Vec<u8>, m: &Message<'_>) {
    varint_field(out, 1, m.kind as u64);
    let family = if m.query_from.is_ipv4() { 1 } else { 2 };
    varint_field(out, 2, family);
    varint_field(out, 3, m.transport as u64);
    address_field(out, 4, m.query_from.ip());
    if let Some(r) = m.response_from {
        address_field(out, 5, r.ip());
    }
    varint_field(out, 6, u64::from(m.query_from.port()));
    if let Some(r) = m.response_from {
        varint_field(out, 7, u64::from(r.port()));
    }
    let (sec, nsec) = unix(m.query_time);
    varint_field(out, 8, sec);
    fixed32_field(out, 9, nsec);
    if let Some(q) = m.query {
        bytes_field(out, 10, q);
    }
    if let Some(t) = m.response_time {
        let (sec, nsec) = unix(t);
        varint_field(out, 12, sec);
        fixed32_field(out, 13, nsec);
    }
    if let Some(r) = m.response {
        bytes_field(out, 14, r);
    }
}

fn unix(t: SystemTime) -> (u64, u32) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    (d.as_secs(), d.subsec_nanos())
}

fn address_field(out: &mut Vec<u8>, field: u32, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => bytes_field(out, field, &v4.octets()),
        IpAddr::V6(v6) => bytes_field(out, field, &v6.octets()),
    }
}

fn key(out: &mut Vec<u8>, field: u32, wire: u32) {
    varint(out, u64::from(field << 3 | wire));
}

fn varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    key(out, field, 0);
    varint(out, v);
}

fn fixed32_field(out: &mut Vec<u8>, field: u32, v: u32) {
    key(out, field, 5);
    out.extend_from_slice(&v.to_le_bytes());
}

fn bytes_field(out: &mut Vec<u8>, field: u32, v: &[u8]) {
    key(out, field, 2);
    varint(out, v.len() as u64);
    out.extend_from_slice(v);
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    /// dnstap.proto's messages, for reading back what the encoder wrote.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Dnstap {
        #[prost(bytes = "vec", optional, tag = "1")]
        identity: Option<Vec<u8>>,
        #[prost(bytes = "vec", optional, tag = "2")]
        version: Option<Vec<u8>>,
        #[prost(message, optional, tag = "14")]
        message: Option<Msg>,
        #[prost(int32, tag = "15")]
        r#type: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Msg {
        #[prost(int32, tag = "1")]
        r#type: i32,
        #[prost(int32, optional, tag = "2")]
        socket_family: Option<i32>,
        #[prost(int32, optional, tag = "3")]
        socket_protocol: Option<i32>,
        #[prost(bytes = "vec", optional, tag = "4")]
        query_address: Option<Vec<u8>>,
        #[prost(bytes = "vec", optional, tag = "5")]
        response_address: Option<Vec<u8>>,
        #[prost(uint32, optional, tag = "6")]
        query_port: Option<u32>,
        #[prost(uint32, optional, tag = "7")]
        response_port: Option<u32>,
        #[prost(uint64, optional, tag = "8")]
        query_time_sec: Option<u64>,
        #[prost(fixed32, optional, tag = "9")]
        query_time_nsec: Option<u32>,
        #[prost(bytes = "vec", optional, tag = "10")]
        query_message: Option<Vec<u8>>,
        #[prost(uint64, optional, tag = "12")]
        response_time_sec: Option<u64>,
        #[prost(fixed32, optional, tag = "13")]
        response_time_nsec: Option<u32>,
        #[prost(bytes = "vec", optional, tag = "14")]
        response_message: Option<Vec<u8>>,
    }

    fn decode(frame: &[u8]) -> Dnstap {
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - 4, "the frame length covers the message");
        Dnstap::decode(&frame[4..]).unwrap()
    }

    #[test]
    fn a_response_reads_back_with_every_field() {
        let t = UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 123_456_789);
        let r = UNIX_EPOCH + std::time::Duration::new(1_700_000_001, 5);
        let big = vec![7u8; 40_000];
        let mut out = Vec::new();
        data_frame(
            &mut out,
            b"host-1",
            b"ruddr 1.0",
            &Message {
                kind: MessageType::AuthResponse,
                transport: Transport::Tcp,
                query_from: "[2001:db8::1]:5353".parse().unwrap(),
                response_from: Some("[::1]:53".parse().unwrap()),
                query_time: t,
                response_time: Some(r),
                query: Some(b"query bytes"),
                response: Some(&big),
            },
        );
        let d = decode(&out);
        assert_eq!(d.identity.as_deref(), Some(&b"host-1"[..]));
        assert_eq!(d.version.as_deref(), Some(&b"ruddr 1.0"[..]));
        assert_eq!(d.r#type, 1);
        let m = d.message.unwrap();
        assert_eq!(m.r#type, 2);
        assert_eq!(m.socket_family, Some(2));
        assert_eq!(m.socket_protocol, Some(2));
        let q: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
        assert_eq!(m.query_address.as_deref(), Some(&q.octets()[..]));
        assert_eq!(m.response_address.unwrap().len(), 16);
        assert_eq!((m.query_port, m.response_port), (Some(5353), Some(53)));
        assert_eq!(
            (m.query_time_sec, m.query_time_nsec),
            (Some(1_700_000_000), Some(123_456_789))
        );
        assert_eq!(
            (m.response_time_sec, m.response_time_nsec),
            (Some(1_700_000_001), Some(5))
        );
        assert_eq!(m.query_message.as_deref(), Some(&b"query bytes"[..]));
        assert_eq!(m.response_message.unwrap(), big);
    }

    #[test]
    fn a_query_without_response_fields_and_small_lengths() {
        let mut out = Vec::new();
        data_frame(
            &mut out,
            b"",
            b"",
            &Message {
                kind: MessageType::ClientQuery,
                transport: Transport::Udp,
                query_from: "192.0.2.1:40000".parse().unwrap(),
                response_from: None,
                query_time: UNIX_EPOCH,
                response_time: None,
                query: Some(b"q"),
                response: None,
            },
        );
        let d = decode(&out);
        assert_eq!(d.identity, None);
        let m = d.message.unwrap();
        assert_eq!(m.r#type, 5);
        assert_eq!(m.socket_family, Some(1));
        assert_eq!(m.query_address.as_deref(), Some(&[192, 0, 2, 1][..]));
        assert_eq!(m.response_address, None);
        assert_eq!(m.response_message, None);
        assert_eq!(m.response_time_sec, None);
    }

    #[test]
    fn control_frames() {
        let mut out = Vec::new();
        control(&mut out, Control::Ready);
        assert_eq!(&out[..4], &[0, 0, 0, 0]);
        let len = u32::from_be_bytes(out[4..8].try_into().unwrap()) as usize;
        assert_eq!(len, out.len() - 8);
        assert!(control_is(&out[8..], Control::Ready));
        // An ACCEPT for dnstap, for another type only, and listing none.
        let mut accept = Vec::new();
        control(&mut accept, Control::Accept);
        assert!(control_is(&accept[8..], Control::Accept));
        let mut other = 1u32.to_be_bytes().to_vec();
        other.extend_from_slice(&1u32.to_be_bytes());
        other.extend_from_slice(&3u32.to_be_bytes());
        other.extend_from_slice(b"foo");
        assert!(!control_is(&other, Control::Accept));
        assert!(control_is(&1u32.to_be_bytes(), Control::Accept));
        assert!(!control_is(&[0, 0], Control::Accept));
        let mut stop = Vec::new();
        control(&mut stop, Control::Stop);
        assert_eq!(stop, [0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 3]);
    }
}
