//! DNS messages at the byte level, for the answers ruddr gives itself: a strict parser for plain
//! queries (the UDP fast path) and a writer that sends pre-rendered answers.
//!
//! The writer copies the question from the query as it came (so its case is kept: resolvers
//! that randomize case, "0x20", get their own spelling back), writes each answer as a pointer to
//! that question plus the record's rendered bytes, and adds the OPT record. Anything the parser
//! does not fully understand is left to the general path (hickory's decoder), which applies the
//! FORMERR and drop rules.

use hickory_proto::op::{Edns, Header, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{Name, Record};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};

use super::answer::{Outcome, Rendered};
use super::reply::Reply;

/// EDNS option code of the client subnet option (RFC 7871).
const OPTION_CLIENT_SUBNET: u16 = 8;
const TYPE_OPT: u16 = 41;
const OPT_LEN: usize = 11;

/// The question section of `message`: the first question's name (wire form, uncompressed,
/// with its final zero) followed by its type and class. `None` without one question.
pub fn question(message: &[u8]) -> Option<&[u8]> {
    if message.get(4..6)? != [0, 1] {
        return None;
    }
    let name = question_name(message)?;
    message.get(12..12 + name.len() + 4)
}

/// The first question's name in wire form with its final zero byte; `None` when there is no
/// question or the name is compressed or cut short.
pub fn question_name(message: &[u8]) -> Option<&[u8]> {
    if message.get(4..6)? == [0, 0] {
        return None;
    }
    let mut at = 12;
    loop {
        let len = usize::from(*message.get(at)?);
        if len == 0 {
            let name = message.get(12..=at)?;
            return (name.len() <= 255).then_some(name);
        }
        if len > 63 {
            return None;
        }
        at += 1 + len;
    }
}

/// A plain query, parsed in place.
#[derive(Debug)]
pub struct Query<'a> {
    pub header: Header,
    /// The question section as received (name, type, class).
    pub question: &'a [u8],
    pub qtype: u16,
    pub qclass: u16,
    pub edns: Option<EdnsInfo>,
}

/// What ruddr reads from a query's OPT record.
#[derive(Debug, Clone, Copy)]
pub struct EdnsInfo {
    pub payload: u16,
    pub version: u8,
    pub dnssec_ok: bool,
}

/// Parses a query the fast path answers: QUERY opcode, one uncompressed question, no answer or
/// authority records, at most an OPT record with no client subnet option, nothing after it.
/// Anything else is `None` (for the general path). Unknown EDNS options are ignored (RFC 6891).
pub fn parse_query(message: &[u8]) -> Option<Query<'_>> {
    let header = Header::read(&mut BinDecoder::new(message)).ok()?;
    let m = &header.metadata;
    let c = &header.counts;
    if m.message_type != MessageType::Query
        || m.op_code != OpCode::Query
        || c.queries != 1
        || c.answers != 0
        || c.authorities != 0
        || c.additionals > 1
    {
        return None;
    }
    let question = question(message)?;
    let fixed = &question[question.len() - 4..];
    let qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    let qclass = u16::from_be_bytes([fixed[2], fixed[3]]);
    let rest = &message[12 + question.len()..];
    let edns = match c.additionals {
        0 if rest.is_empty() => None,
        1 => Some(parse_opt(rest)?),
        _ => return None,
    };
    Some(Query {
        header,
        question,
        qtype,
        qclass,
        edns,
    })
}

/// An OPT record that ends the message exactly.
fn parse_opt(rr: &[u8]) -> Option<EdnsInfo> {
    // Root owner, type, class (payload), TTL (extended rcode, version, flags), data length.
    if rr.len() < OPT_LEN || rr[0] != 0 {
        return None;
    }
    let be16 = |i: usize| u16::from_be_bytes([rr[i], rr[i + 1]]);
    if be16(1) != TYPE_OPT {
        return None;
    }
    let payload = be16(3);
    let version = rr[6];
    let flags = be16(7);
    let rdlen = usize::from(be16(9));
    let mut options = rr.get(OPT_LEN..)?;
    if options.len() != rdlen {
        return None;
    }
    while !options.is_empty() {
        let code = u16::from_be_bytes([*options.first()?, *options.get(1)?]);
        let len = usize::from(u16::from_be_bytes([*options.get(2)?, *options.get(3)?]));
        if code == OPTION_CLIENT_SUBNET {
            // Locality may depend on it: the general path reads it.
            return None;
        }
        options = options.get(4 + len..)?;
    }
    Some(EdnsInfo {
        payload,
        version,
        dnssec_ok: flags & 0x8000 != 0,
    })
}

impl EdnsInfo {
    /// The hickory form, for the answer core.
    pub fn to_edns(self) -> Edns {
        let mut e = Edns::new();
        e.set_max_payload(self.payload.max(512));
        e.set_version(self.version);
        e.set_dnssec_ok(self.dnssec_ok);
        e
    }
}

/// The query's question as hickory's lower-cased query, for the answer core.
pub fn lower_query(q: &Query<'_>) -> Option<hickory_proto::op::LowerQuery> {
    let name = Name::read(&mut BinDecoder::new(q.question)).ok()?;
    let mut query = hickory_proto::op::Query::query(name, q.qtype.into());
    query.set_query_class(q.qclass.into());
    Some(query.into())
}

/// What was written, for metrics.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    pub rcode: ResponseCode,
    pub truncated: bool,
}

/// Writes `reply` as the response to the query with header id `id` and question section
/// `question` (as received), into `out` (cleared first). This is the one place that decides
/// truncation, for every answer ruddr sends: a UDP response stays within the reply's payload
/// size (512 without EDNS); answers or authority records that do not fit are cut and TC set;
/// additional records (glue) that do not fit are left out without TC. TTLs are reduced by
/// `reply.age` (a cached upstream answer).
pub fn write_reply(
    out: &mut Vec<u8>,
    id: u16,
    question: &[u8],
    reply: &Reply,
    udp: bool,
) -> Written {
    out.clear();
    let mut meta = reply.meta;
    meta.id = id;
    let limit = match (udp, &reply.edns) {
        (false, _) => usize::from(u16::MAX),
        (true, Some(_)) => usize::from(reply.payload),
        (true, None) => 512,
    };
    let code = u16::from(meta.response_code);
    let mut plain_opt = [0u8; OPT_LEN];
    let with_options: Vec<u8>;
    let opt: &[u8] = match &reply.edns {
        None => &[],
        Some(e) if e.options().as_ref().is_empty() => {
            // Root owner, OPT, payload, extended rcode, version 0, flags (DO), no data.
            plain_opt[1..3].copy_from_slice(&TYPE_OPT.to_be_bytes());
            plain_opt[3..5].copy_from_slice(&e.max_payload().to_be_bytes());
            plain_opt[5] = (code >> 4) as u8;
            let flags: u16 = if e.flags().dnssec_ok { 0x8000 } else { 0 };
            plain_opt[7..9].copy_from_slice(&flags.to_be_bytes());
            &plain_opt
        }
        Some(e) => {
            // Options to echo (a client subnet): hickory writes the OPT record.
            let mut e = e.clone();
            e.set_rcode_high((code >> 4) as u8);
            let mut bytes = Vec::new();
            let mut encoder = BinEncoder::new(&mut bytes);
            with_options = match Record::from(&e).emit(&mut encoder) {
                Ok(()) => bytes,
                Err(_) => Vec::new(),
            };
            &with_options
        }
    };
    let opt_len = opt.len();
    let limit = limit.saturating_sub(opt_len);
    out.extend_from_slice(&[0; 12]);
    out.extend_from_slice(question);
    let qname_len = question.len().saturating_sub(4);
    let age = reply.age;

    let mut answers = 0u16;
    let built = reply.built.as_deref();
    // An answer built without some records (past what a TCP message holds) says so.
    let mut truncated = meta.truncation || built.is_some_and(|b| b.cut);
    let wire = built.map(|b| &b.wire);
    for &i in &reply.order {
        let (Some(w), Some(span)) = (wire, wire.and_then(|w| w.spans.get(i as usize))) else {
            continue;
        };
        let Some((record, _)) = w.answer(i as usize) else {
            continue;
        };
        if record.is_empty() {
            // Failed to render (never for records ruddr makes): leave it out.
            continue;
        }
        let pointer = if span.owner == 0 { 2 } else { 0 };
        if out.len() + pointer + record.len() > limit {
            truncated = true;
            break;
        }
        let start = out.len();
        if span.owner == 0 {
            out.extend_from_slice(&[0xc0, 0x0c]);
        }
        out.extend_from_slice(record);
        if age > 0 {
            age_records(&mut out[start..], age);
        }
        answers += 1;
    }
    if !truncated {
        for r in &reply.extra {
            if !push_record(out, r, question, qname_len, limit) {
                truncated = true;
                break;
            }
            answers += 1;
        }
    }
    let mut authorities = 0u16;
    if let (false, Some(w)) = (truncated, wire) {
        let (bytes, n) = w.authority();
        if out.len() + bytes.len() <= limit {
            let start = out.len();
            out.extend_from_slice(bytes);
            if age > 0 {
                age_records(&mut out[start..], age);
            }
            authorities += n;
        } else {
            truncated = true;
        }
    }
    if !truncated {
        if let Some(soa) = &reply.soa {
            if push_rendered(out, soa, question, qname_len, limit) {
                authorities += 1;
            } else {
                truncated = true;
            }
        }
    }
    let mut additionals = 0u16;
    if let (false, Some(w)) = (truncated, wire) {
        // Glue is optional: what does not fit is left out, without TC.
        let mut room = true;
        for &i in reply.order.iter() {
            let Some((span, (_, glue))) = w.spans.get(i as usize).zip(w.answer(i as usize)) else {
                continue;
            };
            if glue.is_empty() {
                continue;
            }
            if out.len() + glue.len() > limit {
                room = false;
                break;
            }
            let start = out.len();
            out.extend_from_slice(glue);
            if age > 0 {
                age_records(&mut out[start..], age);
            }
            additionals += span.glue_count;
        }
        let (bytes, n) = w.additional();
        if room && n > 0 && out.len() + bytes.len() <= limit {
            let start = out.len();
            out.extend_from_slice(bytes);
            if age > 0 {
                age_records(&mut out[start..], age);
            }
            additionals += n;
        } else if n > 0 && built.is_some_and(|b| b.outcome == Outcome::Referral) {
            // A referral's glue is what lets the resolver follow it (RFC 9471): without it,
            // the answer is truncated.
            truncated = true;
        }
    }
    let rcode = meta.response_code;
    if !opt.is_empty() {
        out.extend_from_slice(opt);
        additionals += 1;
    }
    meta.truncation = truncated;
    let questions = u16::from(!question.is_empty());
    write_header(
        &mut out[..12],
        &meta,
        code,
        [questions, answers, authorities, additionals],
    );
    Written { rcode, truncated }
}

/// The 12-byte header of a response with `meta`'s flags, response code `code` (its low four
/// bits; EDNS carries the rest) and the four section counts.
fn write_header(header: &mut [u8], meta: &Metadata, code: u16, counts: [u16; 4]) {
    header[..2].copy_from_slice(&meta.id.to_be_bytes());
    header[2] = 0x80
        | (u8::from(meta.op_code) & 0x0f) << 3
        | u8::from(meta.authoritative) << 2
        | u8::from(meta.truncation) << 1
        | u8::from(meta.recursion_desired);
    header[3] = u8::from(meta.recursion_available) << 7
        | u8::from(meta.authentic_data) << 5
        | u8::from(meta.checking_disabled) << 4
        | (code & 0x0f) as u8;
    for (n, count) in counts.iter().enumerate() {
        header[4 + 2 * n..6 + 2 * n].copy_from_slice(&count.to_be_bytes());
    }
}

/// The header-only response to a query with header `request` and response code `code` (a
/// FORMERR for a query whose body cannot be read): no question, no records. The one writer of
/// header-only replies.
pub fn write_header_only(out: &mut Vec<u8>, request: &Metadata, code: ResponseCode) {
    out.clear();
    out.extend_from_slice(&[0; 12]);
    let mut meta = Metadata::response_from_request(request);
    meta.response_code = code;
    write_header(&mut out[..12], &meta, u16::from(code), [0; 4]);
}

/// Turns the response in `out` into an empty truncated one: the header with TC set, the
/// question and the OPT record kept, no other records. A client over the rate limit (a
/// "slip"), or an answer larger than the path allows, then asks again over TCP.
pub fn slip(out: &mut Vec<u8>) {
    if out.len() < 12 {
        out.clear();
        return;
    }
    let question_len = question(out).map_or(0, <[u8]>::len);
    let records: usize = (0..3)
        .map(|n| usize::from(u16::from_be_bytes([out[6 + 2 * n], out[7 + 2 * n]])))
        .sum();
    let opt = out
        .get(12 + question_len..)
        .and_then(|rest| find_opt(rest, records))
        .and_then(|(at, len)| {
            let at = 12 + question_len + at;
            out.get(at..at + len).map(<[u8]>::to_vec)
        });
    out.truncate(12 + question_len);
    out[2] |= 0x02; // TC
    out[4..6].copy_from_slice(&u16::from(question_len > 0).to_be_bytes());
    out[6..12].fill(0);
    if let Some(opt) = opt {
        out.extend_from_slice(&opt);
        out[10..12].copy_from_slice(&1u16.to_be_bytes());
    }
}

/// EDNS option code of padding (RFC 7830).
const OPTION_PADDING: u16 = 12;

/// RFC 8467 4.1: padded responses are a multiple of this many octets.
pub const RESPONSE_PAD_BLOCK: usize = 468;

/// Whether `request` carried the EDNS padding option (RFC 7830): then an encrypted transport
/// pads its response (RFC 8467).
pub fn asks_padding(request: &hickory_server::server::Request) -> bool {
    request.edns.as_ref().is_some_and(|e| {
        e.option(hickory_proto::rr::rdata::opt::EdnsCode::Padding)
            .is_some()
    })
}

/// Pads the response in `out` (as [`write_reply`] wrote it, its OPT record last) to a multiple
/// of `block` octets with an EDNS padding option of zeros. Nothing without an OPT record, and
/// never past 65,535 octets.
pub fn pad_reply(out: &mut Vec<u8>, block: usize) {
    if out.len() < 12 || block == 0 {
        return;
    }
    let question_len = question(out).map_or(0, <[u8]>::len);
    let records: usize = (0..3)
        .map(|n| usize::from(u16::from_be_bytes([out[6 + 2 * n], out[7 + 2 * n]])))
        .sum();
    let Some((at, len)) = out
        .get(12 + question_len..)
        .and_then(|rest| find_opt(rest, records))
    else {
        return;
    };
    let opt_at = 12 + question_len + at;
    if opt_at + len != out.len() || len < 11 {
        return;
    }
    let with_option = out.len() + 4;
    let max = usize::from(u16::MAX);
    if with_option > max {
        return;
    }
    let pad = ((block - with_option % block) % block).min(max - with_option);
    let rdlen_at = opt_at + 9;
    let rdlen = usize::from(u16::from_be_bytes([out[rdlen_at], out[rdlen_at + 1]])) + 4 + pad;
    let Ok(rdlen) = u16::try_from(rdlen) else {
        return;
    };
    out[rdlen_at..rdlen_at + 2].copy_from_slice(&rdlen.to_be_bytes());
    out.extend_from_slice(&OPTION_PADDING.to_be_bytes());
    out.extend_from_slice(&(pad as u16).to_be_bytes());
    out.resize(out.len() + pad, 0);
}

/// Where the OPT record is among `count` records in `bytes` (names uncompressed or pointers,
/// as written here), and its length.
fn find_opt(bytes: &[u8], count: usize) -> Option<(usize, usize)> {
    let mut at = 0;
    for _ in 0..count {
        let (start, fixed) = (at, skip_name(bytes, at)?);
        let rtype = u16::from_be_bytes([*bytes.get(fixed)?, *bytes.get(fixed + 1)?]);
        at = record_end(bytes, fixed)?;
        if rtype == TYPE_OPT {
            return Some((start, at - start));
        }
    }
    None
}

/// Where the name at `at` ends: after its root label or its pointer.
fn skip_name(bytes: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *bytes.get(at)?;
        if len & 0xc0 == 0xc0 {
            return Some(at + 2);
        }
        at += 1 + usize::from(len);
        if len == 0 {
            return Some(at);
        }
    }
}

/// Where the record whose type starts at `fixed` ends (past its data).
fn record_end(bytes: &[u8], fixed: usize) -> Option<usize> {
    let rdlen = bytes.get(fixed + 8..fixed + 10)?;
    Some(fixed + 10 + usize::from(u16::from_be_bytes([rdlen[0], rdlen[1]])))
}

/// Reduces by `age` seconds the TTL of each record in `bytes`: whole records one after another
/// (owners uncompressed or a 2-byte pointer), as rendered and written here.
fn age_records(bytes: &mut [u8], age: u32) {
    let mut at = 0;
    while at < bytes.len() {
        let Some(fixed) = skip_name(bytes, at) else {
            return;
        };
        let Some(end) = record_end(bytes, fixed) else {
            return;
        };
        let rr = &mut bytes[fixed..fixed + 8];
        // OPT records carry flags, not a TTL.
        if u16::from_be_bytes([rr[0], rr[1]]) != TYPE_OPT {
            let ttl = u32::from_be_bytes([rr[4], rr[5], rr[6], rr[7]]);
            rr[4..8].copy_from_slice(&ttl.saturating_sub(age).to_be_bytes());
        }
        at = end;
    }
}

/// Appends `record`, its owner as a pointer into the question when the owner is the question's
/// name or a suffix of it, else written out. False (nothing written) when it would pass `limit`.
fn push_record(
    out: &mut Vec<u8>,
    record: &Record,
    question: &[u8],
    qname_len: usize,
    limit: usize,
) -> bool {
    let start = out.len();
    let mut encoder = BinEncoder::with_offset(out, start as u32);
    encoder.set_name_encoding(hickory_proto::serialize::binary::NameEncoding::Uncompressed);
    if record.emit(&mut encoder).is_err() {
        out.truncate(start);
        return false;
    }
    let full_owner = record.name.iter().map(|l| l.len() + 1).sum::<usize>() + 1;
    // A pointer is 2 bytes: worth it only for an owner longer than that (not the root).
    let pointer = (full_owner > 2)
        .then(|| owner_pointer(&question[..qname_len], &record.name))
        .flatten();
    if let Some(offset) = pointer {
        // The owner written out becomes a pointer into the question.
        out[start..start + 2].copy_from_slice(&(0xc000 | offset).to_be_bytes());
        out.drain(start + 2..start + full_owner);
    }
    if out.len() > limit {
        out.truncate(start);
        return false;
    }
    true
}

/// Appends a record rendered beforehand, like [`push_record`] but copying its bytes.
fn push_rendered(
    out: &mut Vec<u8>,
    rendered: &Rendered,
    question: &[u8],
    qname_len: usize,
    limit: usize,
) -> bool {
    let Some(rest) = rendered.wire.get(rendered.owner_len..) else {
        return false;
    };
    let pointer = (rendered.owner_len > 2)
        .then(|| owner_pointer(&question[..qname_len], &rendered.record.name))
        .flatten();
    match pointer {
        Some(offset) if out.len() + 2 + rest.len() <= limit => {
            out.extend_from_slice(&(0xc000 | offset).to_be_bytes());
            out.extend_from_slice(rest);
            true
        }
        None if out.len() + rendered.wire.len() <= limit => {
            out.extend_from_slice(&rendered.wire);
            true
        }
        _ => false,
    }
}

/// Appends `labels` to `out` in lower-case wire form, ending with the root label: how ruddr
/// keys names (the answer cache, the forward cache, static zones). Labels that would take the
/// name past 255 bytes are left out.
pub fn push_lower_wire<'a, A: smallvec::Array<Item = u8>>(
    labels: impl IntoIterator<Item = &'a [u8]>,
    out: &mut smallvec::SmallVec<A>,
) {
    let start = out.len();
    for label in labels {
        if out.len() - start + 1 + label.len() >= 255 {
            break;
        }
        // Labels are at most 63 bytes, so the length always fits.
        out.push(label.len() as u8);
        out.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    out.push(0);
}

/// The offsets of the labels of `name` (wire form, uncompressed), first label first, in
/// `starts`: their count, and the offset of the root label that ends them. Stops at the root
/// label, at a byte missing, at a label running past the end, or after 128 labels (a name of
/// 255 bytes has at most 127, so every offset fits a byte).
pub fn label_starts(name: &[u8], starts: &mut [u8; 128]) -> (usize, usize) {
    let (mut count, mut at) = (0, 0);
    while let Some(&len) = name.get(at) {
        if len == 0 || count == starts.len() || at + 1 + usize::from(len) > name.len() {
            break;
        }
        starts[count] = at as u8;
        count += 1;
        at += 1 + usize::from(len);
    }
    (count, at)
}

/// The message offset of the suffix of the question name `qname` (wire form, starting at
/// offset 12) that spells `name`, compared case-insensitively.
fn owner_pointer(qname: &[u8], name: &Name) -> Option<u16> {
    let mut starts = [0u8; 128];
    let (count, end) = label_starts(qname, &mut starts);
    let first = count.checked_sub(usize::from(name.num_labels()))?;
    let mut labels = name.iter();
    let matches = starts[first..count].iter().all(|&s| {
        let s = usize::from(s);
        let q = qname.get(s + 1..s + 1 + usize::from(qname[s]));
        matches!((q, labels.next()), (Some(q), Some(l)) if q.eq_ignore_ascii_case(l))
    }) && labels.next().is_none();
    let offset = 12
        + if first < count {
            usize::from(starts[first])
        } else {
            end
        };
    (matches && offset < 0x3fff).then_some(offset as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Message;
    use hickory_proto::rr::RecordType;

    fn query_bytes(name: &str, qtype: RecordType, edns: Option<Edns>) -> Vec<u8> {
        let mut m = Message::query();
        m.add_query(hickory_proto::op::Query::query(
            Name::from_ascii(name).unwrap(),
            qtype,
        ));
        if let Some(e) = edns {
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn plain_queries_parse_and_others_do_not() {
        let q = query_bytes("Web.svc.internal.", RecordType::SRV, None);
        let p = parse_query(&q).unwrap();
        assert_eq!((p.qtype, p.qclass), (33, 1));
        assert_eq!(p.question, &q[12..]);
        assert!(p.edns.is_none());
        let mut e = Edns::new();
        e.set_max_payload(1232);
        e.set_dnssec_ok(true);
        e.options_mut()
            .insert(hickory_proto::rr::rdata::opt::EdnsOption::Unknown(
                10,
                vec![1; 8],
            ));
        let q = query_bytes("web.svc.internal.", RecordType::A, Some(e));
        let edns = parse_query(&q).unwrap().edns.unwrap();
        assert_eq!(
            (edns.payload, edns.version, edns.dnssec_ok),
            (1232, 0, true)
        );
        // Trailing bytes, a second question, a response, another opcode, a client subnet
        // option: the general path.
        let mut trailing = query_bytes("web.svc.internal.", RecordType::A, None);
        trailing.push(0);
        assert!(parse_query(&trailing).is_none());
        let mut response = query_bytes("web.svc.internal.", RecordType::A, None);
        response[2] |= 0x80;
        assert!(parse_query(&response).is_none());
        let mut notify = query_bytes("web.svc.internal.", RecordType::A, None);
        notify[2] |= 4 << 3;
        assert!(parse_query(&notify).is_none());
        let mut e = Edns::new();
        e.options_mut()
            .insert(hickory_proto::rr::rdata::opt::EdnsOption::Unknown(
                8,
                vec![0, 1, 24, 0, 10, 0, 0],
            ));
        assert!(parse_query(&query_bytes("web.svc.internal.", RecordType::A, Some(e))).is_none());
        assert!(parse_query(&[0; 11]).is_none());
        assert!(parse_query(&q[..q.len() - 3]).is_none());
    }

    #[test]
    fn owners_point_into_the_question() {
        let q = query_bytes("a.WEB.svc.internal.", RecordType::A, None);
        let qname = question_name(&q).unwrap();
        let n = |s: &str| Name::from_ascii(s).unwrap();
        assert_eq!(owner_pointer(qname, &n("a.web.svc.internal.")), Some(12));
        assert_eq!(owner_pointer(qname, &n("svc.internal.")), Some(12 + 2 + 4));
        assert_eq!(owner_pointer(qname, &n("other.internal.")), None);
        assert_eq!(owner_pointer(qname, &n("x.a.web.svc.internal.")), None);
    }

    #[test]
    fn slip_is_an_empty_truncated_answer_with_the_question_and_opt() {
        use hickory_proto::rr::rdata::A;
        use hickory_proto::rr::RData;
        for with_edns in [false, true] {
            let mut e = Edns::new();
            e.set_max_payload(1232);
            let edns = with_edns.then_some(e);
            let query = query_bytes("Web.svc.internal.", RecordType::A, edns.clone());
            assert_eq!(
                question_name(&query).unwrap(),
                b"\x03Web\x03svc\x08internal\x00"
            );
            let q = Message::from_vec(&query).unwrap();
            let mut r = Message::response(q.metadata.id, q.metadata.op_code);
            r.add_query(q.queries[0].clone());
            r.add_answer(Record::from_rdata(
                Name::from_ascii("web.svc.internal.").unwrap(),
                5,
                RData::A(A::new(10, 0, 0, 1)),
            ));
            if let Some(e) = edns {
                r.set_edns(e);
            }
            let mut out = r.to_vec().unwrap();
            slip(&mut out);
            let slipped = Message::from_vec(&out).unwrap();
            assert!(slipped.metadata.truncation);
            assert_eq!(slipped.metadata.id, q.metadata.id);
            assert!(slipped.answers.is_empty() && slipped.additionals.is_empty());
            assert_eq!(slipped.queries, q.queries);
            assert_eq!(slipped.edns.is_some(), with_edns, "the OPT record stays");
        }
        // Names that cannot be read: no question, cut short.
        assert_eq!(question_name(&[0; 12]), None);
        let mut cut = query_bytes("web.svc.internal.", RecordType::A, None);
        cut.truncate(16);
        assert_eq!(question_name(&cut), None);
        let mut short = vec![0u8; 5];
        slip(&mut short);
        assert!(short.is_empty());
    }
}
