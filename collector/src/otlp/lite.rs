//! A lean decoding of OTLP trace exports: only the span fields the collector reads, with ids and
//! attributes kept as zero-copy slices of the request buffer.
//!
//! Decoding into `opentelemetry-proto`'s types allocates a `String` for every attribute key and value
//! (and for names, events and links the collector never reads); at ten attributes a span that was
//! most of the ingest cost. Here prost skips the fields this module does not declare, `bytes` fields
//! share the request's buffer, and each attribute stays an undecoded `KeyValue` until
//! [`SpanAttrs::scan`] reads the few keys the collector uses. The wire format is the same, so the
//! full types and these decode the same bytes (tests check both ways).

use bytes::Bytes;
use meshlens_model::names;
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

/// `ExportTraceServiceRequest`, lean.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TraceRequest {
    /// Spans by resource.
    #[prost(message, repeated, tag = "1")]
    pub resource_spans: Vec<ResourceSpans>,
}

/// `ResourceSpans`, lean: the resource in full (it is small and names the workload).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ResourceSpans {
    /// The resource.
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    /// Spans by scope.
    #[prost(message, repeated, tag = "2")]
    pub scope_spans: Vec<ScopeSpans>,
}

/// `ScopeSpans`, lean: the scope itself is skipped.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ScopeSpans {
    /// The spans.
    #[prost(message, repeated, tag = "2")]
    pub spans: Vec<Span>,
}

/// `Span`, lean.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Span {
    /// 16 bytes.
    #[prost(bytes = "bytes", tag = "1")]
    pub trace_id: Bytes,
    /// 8 bytes.
    #[prost(bytes = "bytes", tag = "2")]
    pub span_id: Bytes,
    /// 8 bytes, or empty for a root span.
    #[prost(bytes = "bytes", tag = "4")]
    pub parent_span_id: Bytes,
    /// The span's name (kept for the trace store; UTF-8 per the spec, read lossily).
    #[prost(bytes = "bytes", tag = "5")]
    pub name: Bytes,
    /// `SpanKind`.
    #[prost(int32, tag = "6")]
    pub kind: i32,
    /// Start, Unix ns.
    #[prost(fixed64, tag = "7")]
    pub start_time_unix_nano: u64,
    /// End, Unix ns.
    #[prost(fixed64, tag = "8")]
    pub end_time_unix_nano: u64,
    /// Each attribute as its undecoded `KeyValue` message.
    #[prost(bytes = "bytes", repeated, tag = "9")]
    pub attributes: Vec<Bytes>,
    /// Links to other spans (a batch consumer's producers).
    #[prost(message, repeated, tag = "13")]
    pub links: Vec<Link>,
    /// The status.
    #[prost(message, optional, tag = "15")]
    pub status: Option<Status>,
}

/// `Span.Link`, lean: whom it links to.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Link {
    /// 16 bytes.
    #[prost(bytes = "bytes", tag = "1")]
    pub trace_id: Bytes,
    /// 8 bytes.
    #[prost(bytes = "bytes", tag = "2")]
    pub span_id: Bytes,
}

/// `Status`, lean: the code only.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Status {
    /// `StatusCode`.
    #[prost(int32, tag = "3")]
    pub code: i32,
}

impl TraceRequest {
    /// Re-reads a request decoded into the full types (OTLP/JSON, tests) as a lean one.
    pub fn from_full(req: &opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest) -> Self {
        // Both describe the same wire format, so this cannot fail on bytes prost itself wrote.
        Self::decode(Bytes::from(req.encode_to_vec())).unwrap_or_default()
    }
}

/// An attribute value as the collector reads it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Raw<'a> {
    /// `string_value`.
    Str(&'a str),
    /// `int_value`.
    Int(i64),
    /// `bool_value`.
    Bool(bool),
    /// `double_value`.
    Double(f64),
    /// Arrays, maps, bytes, or nothing.
    Other,
}

impl Raw<'_> {
    /// As an integer; numeric strings and doubles count (SDKs differ).
    pub fn as_int(self) -> Option<i64> {
        match self {
            Raw::Int(i) => Some(i),
            Raw::Double(d) => Some(d as i64),
            Raw::Str(s) => s.trim().parse().ok(),
            _ => None,
        }
    }
}

fn varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(v);
        }
    }
    None
}

/// Walks the fields of a message: `(field number, wire type, payload)`; the payload of a
/// length-delimited field is its bytes, of a varint its value in the first 8 bytes of `u64`.
fn fields(b: &[u8]) -> impl Iterator<Item = (u64, Field<'_>)> {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        if pos >= b.len() {
            return None;
        }
        let tag = varint(b, &mut pos)?;
        let field = match tag & 7 {
            0 => Field::Varint(varint(b, &mut pos)?),
            1 => {
                let s = b.get(pos..pos + 8)?;
                pos += 8;
                Field::Fixed64(u64::from_le_bytes(s.try_into().ok()?))
            }
            2 => {
                let len = usize::try_from(varint(b, &mut pos)?).ok()?;
                let s = b.get(pos..pos.checked_add(len)?)?;
                pos += len;
                Field::Bytes(s)
            }
            5 => {
                pos += 4;
                b.get(pos - 4..pos)?;
                Field::Fixed32
            }
            _ => return None,
        };
        Some((tag >> 3, field))
    })
}

enum Field<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32,
}

fn any_value(b: &[u8]) -> Raw<'_> {
    let mut out = Raw::Other;
    for (n, f) in fields(b) {
        out = match (n, f) {
            (1, Field::Bytes(s)) => std::str::from_utf8(s).map(Raw::Str).unwrap_or(Raw::Other),
            (2, Field::Varint(v)) => Raw::Bool(v != 0),
            (3, Field::Varint(v)) => Raw::Int(v as i64),
            (4, Field::Fixed64(v)) => Raw::Double(f64::from_bits(v)),
            _ => Raw::Other,
        };
    }
    out
}

/// Splits an encoded `KeyValue` into its key and value: the tests' independent read of an attribute
/// (the ingest path reads only the ones it needs, [`SpanAttrs::scan`]).
#[cfg(test)]
fn key_value(b: &[u8]) -> Option<(&str, Raw<'_>)> {
    let mut key = None;
    let mut value = Raw::Other;
    for (n, f) in fields(b) {
        match (n, f) {
            (1, Field::Bytes(s)) => key = std::str::from_utf8(s).ok(),
            (2, Field::Bytes(s)) => value = any_value(s),
            _ => {}
        }
    }
    Some((key?, value))
}

/// The attributes of a span the collector reads, found in one pass.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SpanAttrs<'a> {
    /// `http.response.status_code`, or the older `http.status_code`.
    pub http_status: Option<i64>,
    /// `rpc.grpc.status_code` present, or `rpc.system = grpc`.
    pub grpc: bool,
    /// `rpc.grpc.status_code`.
    pub grpc_code: Option<i64>,
    /// The host of `url.full` (or the older `http.url`), for a callee with no span of its own.
    pub url_host: Option<&'a str>,
    /// `network.peer.address` (or the older `net.sock.peer.addr`).
    pub network_peer_address: Option<&'a str>,
    /// `network.peer.port` (or the older `net.sock.peer.port`).
    pub network_peer_port: Option<i64>,
    /// `messaging.destination.name` (or the older `messaging.destination`).
    pub messaging_destination: Option<&'a str>,
    /// `messaging.system`.
    pub messaging_system: Option<&'a str>,
    /// `meshlens.mtls`.
    pub mtls: bool,
    /// `db.system` or `db.system.name`.
    pub db_system: Option<&'a str>,
    /// `peer.service`.
    pub peer_service: Option<&'a str>,
    /// `server.address`.
    pub server_address: Option<&'a str>,
    /// `net.peer.name`.
    pub net_peer_name: Option<&'a str>,
    /// `db.namespace`.
    pub db_namespace: Option<&'a str>,
    /// `db.name`.
    pub db_name: Option<&'a str>,
}

/// Which attribute a key names, matched on raw bytes before anything is decoded.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wanted {
    HttpStatus,
    HttpStatusOld,
    GrpcStatus,
    RpcSystem,
    Mtls,
    DbSystem,
    PeerService,
    ServerAddress,
    NetPeerName,
    DbNamespace,
    DbName,
    Url,
    NetworkPeerAddress,
    NetworkPeerPort,
    MessagingDestination,
    MessagingDestinationOld,
    MessagingSystem,
}

const HTTP_STATUS: &[u8] = names::HTTP_STATUS.as_bytes();
const HTTP_STATUS_OLD: &[u8] = names::HTTP_STATUS_OLD.as_bytes();
const GRPC_STATUS: &[u8] = names::GRPC_STATUS.as_bytes();
const MTLS: &[u8] = names::MTLS.as_bytes();

fn wanted(key: &[u8]) -> Option<Wanted> {
    Some(match key {
        HTTP_STATUS => Wanted::HttpStatus,
        HTTP_STATUS_OLD => Wanted::HttpStatusOld,
        GRPC_STATUS => Wanted::GrpcStatus,
        b"rpc.system" => Wanted::RpcSystem,
        MTLS => Wanted::Mtls,
        b"db.system" | b"db.system.name" => Wanted::DbSystem,
        b"peer.service" => Wanted::PeerService,
        b"server.address" => Wanted::ServerAddress,
        b"net.peer.name" => Wanted::NetPeerName,
        b"db.namespace" => Wanted::DbNamespace,
        b"db.name" => Wanted::DbName,
        b"url.full" | b"http.url" => Wanted::Url,
        b"network.peer.address" | b"net.sock.peer.addr" => Wanted::NetworkPeerAddress,
        b"network.peer.port" | b"net.sock.peer.port" => Wanted::NetworkPeerPort,
        b"messaging.destination.name" => Wanted::MessagingDestination,
        b"messaging.destination" => Wanted::MessagingDestinationOld,
        b"messaging.system" => Wanted::MessagingSystem,
        _ => return None,
    })
}

/// The host of an absolute URL (`https://user@api.example.com:8443/x` → `api.example.com`), without
/// port or user; `None` when there is no scheme or host. IPv6 hosts keep their brackets.
pub fn url_host(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host_port.starts_with('[') {
        host_port.split_once(']').map(|(h, _)| &host_port[..=h.len()])?
    } else {
        host_port.split(':').next()?
    };
    (!host.is_empty()).then_some(host)
}

impl<'a> SpanAttrs<'a> {
    /// Reads the attributes the collector uses. A key is compared as raw bytes; the value of an
    /// attribute the collector does not use is never decoded.
    pub fn scan(attrs: &'a [Bytes]) -> Self {
        let mut s = SpanAttrs::default();
        for kv in attrs {
            let mut which = None;
            let mut value: &[u8] = &[];
            for (n, f) in fields(kv) {
                match (n, f) {
                    (1, Field::Bytes(k)) => {
                        which = wanted(k);
                        if which.is_none() {
                            break;
                        }
                    }
                    (2, Field::Bytes(v)) => value = v,
                    _ => {}
                }
            }
            let Some(which) = which else { continue };
            let value = any_value(value);
            let text = match value {
                Raw::Str(t) if !t.is_empty() => Some(t),
                _ => None,
            };
            match which {
                Wanted::HttpStatus => s.http_status = value.as_int().or(s.http_status),
                Wanted::HttpStatusOld => s.http_status = s.http_status.or(value.as_int()),
                Wanted::GrpcStatus => {
                    s.grpc = true;
                    s.grpc_code = value.as_int();
                }
                Wanted::RpcSystem => s.grpc |= text == Some("grpc"),
                Wanted::Mtls => {
                    s.mtls = matches!(value, Raw::Bool(true)) || text.is_some_and(|t| t.eq_ignore_ascii_case("true"))
                }
                Wanted::DbSystem => s.db_system = text.or(s.db_system),
                Wanted::PeerService => s.peer_service = text,
                Wanted::ServerAddress => s.server_address = text,
                Wanted::NetPeerName => s.net_peer_name = text,
                Wanted::DbNamespace => s.db_namespace = text,
                Wanted::DbName => s.db_name = text,
                Wanted::Url => s.url_host = text.and_then(url_host).or(s.url_host),
                Wanted::NetworkPeerAddress => s.network_peer_address = text.or(s.network_peer_address),
                Wanted::NetworkPeerPort => s.network_peer_port = value.as_int().or(s.network_peer_port),
                Wanted::MessagingDestination => s.messaging_destination = text,
                Wanted::MessagingDestinationOld => s.messaging_destination = s.messaging_destination.or(text),
                Wanted::MessagingSystem => s.messaging_system = text,
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{kv, kv_bool, kv_int, resource, span, traces};
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

    #[test]
    fn lean_and_full_decode_the_same_spans() {
        let attrs = vec![
            kv("http.request.method", "GET"),
            kv_int("http.response.status_code", 503),
            kv("peer.service", "payments"),
            kv_bool("meshlens.mtls", true),
            KeyValue {
                key: "ratio".into(),
                value: Some(AnyValue { value: Some(Value::DoubleValue(0.5)) }),
                ..KeyValue::default()
            },
            kv("db.system", "postgresql"),
        ];
        let full = traces(vec![(
            resource("shop", "cart", "v2"),
            vec![span(SpanKind::Client, 7, 42, Some(41), 1000, 1500, attrs, true)],
        )]);
        let lean = TraceRequest::from_full(&full);
        let s = &lean.resource_spans[0].scope_spans[0].spans[0];
        let f = &full.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(
            (&s.trace_id[..], &s.span_id[..], &s.parent_span_id[..]),
            (&f.trace_id[..], &f.span_id[..], &f.parent_span_id[..])
        );
        assert_eq!(
            (s.kind, s.start_time_unix_nano, s.end_time_unix_nano),
            (f.kind, f.start_time_unix_nano, f.end_time_unix_nano)
        );
        assert_eq!(s.status.map(|st| st.code), Some(2));
        assert_eq!(lean.resource_spans[0].resource, full.resource_spans[0].resource);
        let a = SpanAttrs::scan(&s.attributes);
        assert_eq!(a.http_status, Some(503));
        assert_eq!(a.peer_service, Some("payments"));
        assert_eq!(a.db_system, Some("postgresql"));
        assert!(a.mtls);
        assert_eq!(key_value(&s.attributes[4]), Some(("ratio", Raw::Double(0.5))));
    }

    #[test]
    fn broken_attributes_are_skipped_not_trusted() {
        assert_eq!(key_value(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]), None);
        assert_eq!(key_value(&[]), None);
        let junk = [Bytes::from_static(&[0x0a, 0x05, b'a']), Bytes::from_static(&[0xff; 12])];
        assert_eq!(SpanAttrs::scan(&junk), SpanAttrs::default());
    }
}

#[cfg(test)]
mod fuzz {
    //! Random and mutated inputs: the lean decoder and the attribute scan must never panic, and on
    //! any input prost accepts they must agree with the full types.
    use super::*;
    use crate::testkit::{kv, kv_int, resource, span, traces};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn mutated_exports_never_panic_and_agree_with_the_full_decoder() {
        let valid = traces(vec![(
            resource("ns", "app", "v1"),
            (0..8)
                .map(|i| {
                    let attrs = vec![
                        kv("peer.service", "x"),
                        kv_int("http.response.status_code", 200 + i),
                        kv("db.system", "pg"),
                    ];
                    span(SpanKind::Client, 1, i as u64 + 1, Some(9), 5, 7, attrs, i % 2 == 0)
                })
                .collect(),
        )])
        .encode_to_vec();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut agreed = 0;
        for round in 0..20_000 {
            let mut input = if round % 4 == 0 {
                (0..(rng.next() % 200)).map(|_| rng.next() as u8).collect::<Vec<u8>>()
            } else {
                let mut v = valid.clone();
                for _ in 0..(1 + rng.next() % 4) {
                    let at = (rng.next() as usize) % v.len();
                    v[at] = rng.next() as u8;
                }
                v
            };
            if round % 7 == 0 {
                let cut = (rng.next() as usize) % (input.len() + 1);
                input.truncate(cut);
            }
            let lean = TraceRequest::decode(Bytes::from(input.clone()));
            let full = ExportTraceServiceRequest::decode(&input[..]);
            if let Ok(lean) = &lean {
                for s in lean.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans) {
                    let _ = SpanAttrs::scan(&s.attributes);
                }
            }
            if let (Ok(lean), Ok(full)) = (&lean, &full) {
                let lean_spans: Vec<_> =
                    lean.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans).collect();
                let full_spans: Vec<_> =
                    full.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans).collect();
                assert_eq!(lean_spans.len(), full_spans.len());
                for (l, f) in lean_spans.iter().zip(&full_spans) {
                    assert_eq!((&l.trace_id[..], &l.span_id[..], l.kind), (&f.trace_id[..], &f.span_id[..], f.kind));
                    assert_eq!(l.attributes.len(), f.attributes.len());
                }
                agreed += 1;
            }
        }
        assert!(agreed > 1000, "enough inputs decoded to compare: {agreed}");
    }
}
