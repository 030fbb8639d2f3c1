//! Spans to edges, as the OpenTelemetry Collector's servicegraph connector and Tempo pair them.
//!
//! - A CLIENT or PRODUCER span waits under `(trace id, its own span id)`; a SERVER or CONSUMER span
//!   under `(trace id, its parent span id)`. When both halves are there, the pair is one request on the
//!   edge from the client's workload to the server's.
//! - A CLIENT span with `db.system` / `db.system.name`, `db.namespace` or `db.name` (the database-name
//!   attributes Tempo and the connector use, old and new semantic conventions) is a one-span edge to a
//!   database node named by `peer.service`, `server.address`, `net.peer.name`,
//!   `network.peer.address`, `db.namespace`/`db.name`, `db.system`, in that order — so the same Redis
//!   has one name under either convention.
//! - A root SERVER span (no parent) is called by `user`, or by its `peer.service` when it has one.
//! - A SERVER or CONSUMER span with no parent but with links (a batch consumer) pairs with each
//!   CLIENT/PRODUCER span it links to: one request per link, from each producer.
//! - A CLIENT span whose SERVER never came, once its time to live has passed, is an edge to a virtual
//!   node named by `peer.service`, `server.address`, `net.peer.name`, the host of `url.full` /
//!   `http.url` (or `unknown`); a PRODUCER's by `messaging.destination.name` first.
//! - A SERVER span whose CLIENT never came is counted as expired, not as an edge.
//!
//! Whether a request failed follows the one rule of [`meshlens_model::stats::outcome`]: 5xx, a gRPC
//! code that is the server's fault, or no answer; a 4xx on a client span marked ERROR is an answer.
//!
//! Requests are placed in time when they arrive, not by span timestamps. The store is bounded in size
//! and time; whatever does not fit is counted.

use std::sync::Arc;

use hashbrown::HashMap;
use meshlens_model::Peer;
use meshlens_model::stats::{CodeClass, Report, outcome};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;

use crate::attrs::resource_workload;
use crate::graph::{Graph, LimitHit, Protocol};
use crate::otlp::lite::{Span, SpanAttrs, TraceRequest};
use crate::traces::{SpanNote, TraceStore};
use crate::window::Obs;

/// The key both halves of a pair share: trace id and the client span's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PairKey {
    trace: [u8; 16],
    span: [u8; 8],
}

impl PairKey {
    fn new(trace: &[u8], span: &[u8]) -> Option<Self> {
        Some(Self { trace: trace.try_into().ok()?, span: span.try_into().ok()? })
    }
}

const SIDE_CLIENT: u8 = 1;
const SIDE_MESSAGING: u8 = 2;
const SIDE_GRPC: u8 = 4;
const SIDE_FAILED: u8 = 8;
const SIDE_MTLS: u8 = 16;

/// One span half waiting for the other: 20 bytes (its key is 24 more).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Half {
    node: u32,
    /// For a client: the virtual peer to use if no server comes.
    peer: u32,
    latency_us: u32,
    /// Arrival, milliseconds since the store's epoch.
    arrived_ms: u32,
    class: u8,
    flags: u8,
    /// The gRPC status code, or [`NO_GRPC`] (in what was padding: still 20 bytes).
    grpc: u8,
}

/// No gRPC status on a half.
const NO_GRPC: u8 = u8::MAX;

impl Half {
    fn is_client(&self) -> bool {
        self.flags & SIDE_CLIENT != 0
    }

    fn grpc(&self) -> Option<u8> {
        (self.grpc != NO_GRPC).then_some(self.grpc)
    }
}

/// A span's gRPC status code as a half stores it.
fn grpc_code(a: &SpanAttrs<'_>) -> Option<u8> {
    a.grpc_code.and_then(|c| u8::try_from(c).ok()).filter(|&c| c <= 16)
}

/// Span halves waiting for their other half. Expiry scans the map once per tick rather than keeping
/// a queue of arrival times: a scan of a million halves costs a few milliseconds a second, and the
/// queue would cost 28 bytes a half.
pub struct SpanStore {
    map: HashMap<PairKey, Half>,
    /// Per node, halves that expired with no other half: `[as client, as server]`.
    pub unpaired: HashMap<u32, [u64; 2]>,
    /// Per node, halves dropped because the store was full: `[as client, as server]`.
    pub dropped: HashMap<u32, [u64; 2]>,
    /// For waiting PRODUCER halves their end, for CONSUMER halves their start (Unix ns): the time
    /// a message spent in the queue is the gap. Beside the map, so other halves stay 20 bytes.
    times: HashMap<PairKey, u64>,
    capacity: usize,
    ttl_ms: u32,
    epoch: f64,
}

impl SpanStore {
    /// A store holding at most `capacity` halves for `ttl_secs` each.
    pub fn new(capacity: usize, ttl_secs: f64) -> Self {
        Self {
            map: HashMap::new(),
            unpaired: HashMap::new(),
            dropped: HashMap::new(),
            times: HashMap::new(),
            capacity,
            ttl_ms: (ttl_secs * 1000.0) as u32,
            epoch: f64::NAN,
        }
    }

    fn ms(&mut self, now: f64) -> u32 {
        if self.epoch.is_nan() {
            self.epoch = now;
        }
        ((now - self.epoch).max(0.0) * 1000.0) as u32
    }

    /// Halves waiting.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Follows an eviction's peer moves (no half refers to an evicted peer: a peer is evicted only
    /// after the retention, which is longer than a half's time to live).
    pub fn remap_nodes(&mut self, ev: &crate::graph::Evicted) {
        if !ev.node_moves.is_empty() {
            for h in self.map.values_mut() {
                h.node = ev.node(h.node);
                h.peer = ev.node(h.peer);
            }
        }
        for m in [&mut self.unpaired, &mut self.dropped] {
            let old = std::mem::take(m);
            m.extend(old.into_iter().filter(|(k, _)| !ev.nodes_removed.contains(k)).map(|(k, v)| (ev.node(k), v)));
        }
    }

    /// Heap bytes held by the map (for the memory benchmark).
    pub fn heap_bytes(&self) -> usize {
        self.map.allocation_size()
    }
}

/// What a span says, read once.
struct SpanFacts<'a> {
    trace: Option<[u8; 16]>,
    class: CodeClass,
    failed: bool,
    latency_us: u64,
    attrs: SpanAttrs<'a>,
}

fn facts(span: &Span, server_side: bool) -> SpanFacts<'_> {
    let attrs = SpanAttrs::scan(&span.attributes);
    let error = span.status.is_some_and(|s| s.code == StatusCode::Error as i32);
    let (class, failed) =
        outcome(Report { http_status: attrs.http_status, grpc_code: attrs.grpc_code, error, server_side });
    let latency_us = span.end_time_unix_nano.saturating_sub(span.start_time_unix_nano) / 1000;
    SpanFacts { trace: span.trace_id.as_ref().try_into().ok(), class, failed, latency_us, attrs }
}

impl SpanFacts<'_> {
    /// The span as one request on a one-span edge.
    fn obs(&self) -> Obs {
        Obs {
            class: self.class,
            failed: self.failed,
            latency_us: Some(self.latency_us),
            count: 1,
            mtls: self.attrs.mtls,
            grpc: grpc_code(&self.attrs),
            trace: self.trace,
        }
    }
}

/// The database a client span calls, named by preference.
fn db_name<'a>(a: &SpanAttrs<'a>) -> Option<std::borrow::Cow<'a, str>> {
    use std::borrow::Cow;
    let db = a.db_namespace.or(a.db_name).or(a.db_system)?;
    if let Some(name) = a.peer_service.or(a.server_address).or(a.net_peer_name) {
        return Some(Cow::Borrowed(name));
    }
    // An address alone names the database with its port, as Tempo does.
    Some(match (a.network_peer_address, a.network_peer_port) {
        (Some(addr), Some(port)) => Cow::Owned(format!("{addr}:{port}")),
        (Some(addr), None) => Cow::Borrowed(addr),
        (None, _) => Cow::Borrowed(db),
    })
}

/// The virtual peer a lone client span calls: its peer attributes, or `unknown`. A producer's is
/// where it sends to: the destination, not the broker.
fn virtual_name<'a>(a: &SpanAttrs<'a>, messaging: bool) -> Option<&'a str> {
    let peer = a.peer_service.or(a.server_address).or(a.net_peer_name).or(a.url_host);
    if messaging { a.messaging_destination.or(peer).or(a.messaging_system) } else { peer }
}

/// One call's worth of pairing: the graph it writes and the store it pairs in.
struct Pairing<'a> {
    g: &'a mut Graph,
    pairing: &'a mut SpanStore,
    kept: Option<&'a mut TraceStore>,
}

impl SpanStore {
    /// Turns an export of spans into edge observations on `graph` at time `now` (Unix seconds).
    /// Each span is also kept whole in `kept`, when given (the trace store).
    pub fn ingest(&mut self, graph: &mut Graph, kept: Option<&mut TraceStore>, req: &TraceRequest, now: f64) {
        Pairing { g: graph, pairing: self, kept }.ingest_lean_traces(req, now);
    }

    /// Expires halves older than the time to live: a lone client becomes an edge to its virtual
    /// peer, a lone server is counted as expired.
    pub fn expire(&mut self, graph: &mut Graph, now: f64) {
        Pairing { g: graph, pairing: self, kept: None }.expire(now);
    }
}

impl Pairing<'_> {
    /// Turns an export of spans into edge observations at time `now` (Unix seconds).
    fn ingest_lean_traces(&mut self, req: &TraceRequest, now: f64) {
        let sec = now as u64;
        for rs in &req.resource_spans {
            let span_count: usize = rs.scope_spans.iter().map(|s| s.spans.len()).sum();
            let Some(workload) = resource_workload(rs.resource.as_ref()) else {
                // Rejected at the door already; a request built in-process may still carry one.
                self.g.counters.spans_rejected.add(span_count as u64);
                continue;
            };
            let who: Arc<str> = workload.id().into();
            let node = match self.g.peer(&Peer::Workload(workload)) {
                Ok(n) => n,
                Err(_) => {
                    self.g.counters.spans_dropped_cardinality.add(span_count as u64);
                    continue;
                }
            };
            for span in rs.scope_spans.iter().flat_map(|s| &s.spans) {
                if self.ingest_span(node, &who, span, now, sec).is_err() {
                    self.g.counters.spans_dropped_cardinality.add(1);
                }
            }
        }
        self.g.counters.store_size.set(self.pairing.len() as u64);
    }

    fn ingest_span(&mut self, node: u32, who: &Arc<str>, span: &Span, now: f64, sec: u64) -> Result<(), LimitHit> {
        let kind = SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified);
        let server_side = !matches!(kind, SpanKind::Client | SpanKind::Producer);
        let f = facts(span, server_side);
        if let Some(kept) = self.kept.as_deref_mut() {
            kept.keep(span, &SpanNote { workload: who, attrs: &f.attrs, failed: f.failed });
        }
        let (client_side, messaging) = match kind {
            SpanKind::Client => (true, false),
            SpanKind::Producer => (true, true),
            SpanKind::Server => (false, false),
            SpanKind::Consumer => (false, true),
            SpanKind::Internal | SpanKind::Unspecified => {
                self.g.counters.spans_ignored_kind.add(1);
                return Ok(());
            }
        };
        let a = &f.attrs;
        if client_side
            && !messaging
            && let Some(db) = db_name(a)
        {
            {
                let target = self.g.named_peer(&db, true)?;
                self.g.counters.database_client.add(1);
                let obs = f.obs();
                // The span's duration is the database's time too, as Tempo takes it, so that the
                // documented queries on `..._server_seconds` find database edges.
                return self.span_edge(
                    node,
                    target,
                    Protocol::Database,
                    sec,
                    &obs,
                    Some(f.latency_us),
                    Some(f.latency_us),
                );
            }
        }
        if !client_side && span.parent_span_id.is_empty() && !span.links.is_empty() {
            return self.linked_consumer(node, span, &f, messaging, now, sec);
        }
        if !client_side && span.parent_span_id.is_empty() {
            let source = match a.peer_service {
                Some(name) => self.g.named_peer(name, false)?,
                None => self.g.peer(&Peer::User)?,
            };
            self.g.counters.root_server.add(1);
            let obs = f.obs();
            let proto = protocol(messaging, a.grpc);
            return self.span_edge(source, node, proto, sec, &obs, Some(f.latency_us), None);
        }
        let key_span = if client_side { &span.span_id } else { &span.parent_span_id };
        let Some(key) = PairKey::new(&span.trace_id, key_span) else {
            self.g.counters.spans_ignored_kind.add(1);
            return Ok(());
        };
        let peer = match (client_side, virtual_name(a, messaging)) {
            (false, _) => 0,
            (true, Some(name)) => self.g.named_peer(name, false)?,
            (true, None) => self.g.peer(&Peer::Unknown)?,
        };
        let mut flags = 0;
        for (on, bit) in [
            (client_side, SIDE_CLIENT),
            (messaging, SIDE_MESSAGING),
            (a.grpc, SIDE_GRPC),
            (f.failed, SIDE_FAILED),
            (a.mtls, SIDE_MTLS),
        ] {
            if on {
                flags |= bit;
            }
        }
        let half = Half {
            node,
            peer,
            latency_us: u32::try_from(f.latency_us).unwrap_or(u32::MAX),
            arrived_ms: self.pairing.ms(now),
            class: f.class as u8,
            flags,
            grpc: grpc_code(a).unwrap_or(NO_GRPC),
        };
        let queue_time =
            messaging.then_some(if client_side { span.end_time_unix_nano } else { span.start_time_unix_nano });
        self.pair_half(key, half, queue_time, sec)
    }

    /// A batch consumer: one server half per link, each waiting for the producer it names.
    fn linked_consumer(
        &mut self,
        node: u32,
        span: &Span,
        f: &SpanFacts<'_>,
        messaging: bool,
        now: f64,
        sec: u64,
    ) -> Result<(), LimitHit> {
        let mut flags = 0;
        for (on, bit) in
            [(messaging, SIDE_MESSAGING), (f.attrs.grpc, SIDE_GRPC), (f.failed, SIDE_FAILED), (f.attrs.mtls, SIDE_MTLS)]
        {
            if on {
                flags |= bit;
            }
        }
        let half = Half {
            node,
            peer: 0,
            latency_us: u32::try_from(f.latency_us).unwrap_or(u32::MAX),
            arrived_ms: self.pairing.ms(now),
            class: f.class as u8,
            flags,
            grpc: grpc_code(&f.attrs).unwrap_or(NO_GRPC),
        };
        self.g.counters.linked_consumer.add(1);
        for link in &span.links {
            let Some(key) = PairKey::new(&link.trace_id, &link.span_id) else {
                self.g.counters.spans_ignored_kind.add(1);
                continue;
            };
            self.pair_half(key, half, messaging.then_some(span.start_time_unix_nano), sec)?;
        }
        Ok(())
    }

    /// Pairs a half with its waiting other half, or leaves it waiting. `queue_time` is a
    /// messaging half's end (producer) or start (consumer), Unix ns.
    fn pair_half(&mut self, key: PairKey, half: Half, queue_time: Option<u64>, sec: u64) -> Result<(), LimitHit> {
        let client_side = half.is_client();
        match self.pairing.map.get(&key) {
            Some(other) if other.is_client() != client_side => {
                let other = *other;
                self.pairing.map.remove(&key);
                let other_time = self.pairing.times.remove(&key);
                let (client, server) = if client_side { (half, other) } else { (other, half) };
                let (produced, consumed) =
                    if client_side { (queue_time, other_time) } else { (other_time, queue_time) };
                self.g.counters.spans_paired.add(2);
                self.complete_pair(&client, &server, key.trace, sec)?;
                // The time in the queue, when the clocks allow it (Tempo skips a negative gap too).
                if let (Some(p), Some(c)) = (produced, consumed)
                    && c > p
                    && server.flags & SIDE_MESSAGING != 0
                {
                    let proto = protocol(true, false);
                    self.g.edge_mut(client.node, server.node, proto)?.totals.messaging.record((c - p) as f64 / 1e9, 1);
                }
                Ok(())
            }
            _ => {
                if self.pairing.map.len() >= self.pairing.capacity && !self.pairing.map.contains_key(&key) {
                    self.g.counters.spans_dropped_store_full.add(1);
                    self.pairing.dropped.entry(half.node).or_default()[usize::from(!client_side)] += 1;
                    return Ok(());
                }
                self.pairing.map.insert(key, half);
                if let Some(t) = queue_time {
                    self.pairing.times.insert(key, t);
                }
                Ok(())
            }
        }
    }

    fn complete_pair(&mut self, client: &Half, server: &Half, trace: [u8; 16], sec: u64) -> Result<(), LimitHit> {
        let failed = (client.flags | server.flags) & SIDE_FAILED != 0;
        let mut class = CodeClass::from_index(usize::from(server.class));
        if failed && class == CodeClass::Ok {
            class = CodeClass::from_index(usize::from(client.class));
        }
        let obs = Obs {
            class,
            failed,
            latency_us: Some(u64::from(server.latency_us)),
            count: 1,
            mtls: (client.flags & server.flags) & SIDE_MTLS != 0,
            grpc: server.grpc().or(client.grpc()),
            trace: Some(trace),
        };
        let proto = protocol(server.flags & SIDE_MESSAGING != 0, (client.flags | server.flags) & SIDE_GRPC != 0);
        self.span_edge(
            client.node,
            server.node,
            proto,
            sec,
            &obs,
            Some(u64::from(server.latency_us)),
            Some(u64::from(client.latency_us)),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn span_edge(
        &mut self,
        source: u32,
        target: u32,
        proto: Protocol,
        sec: u64,
        obs: &Obs,
        server_us: Option<u64>,
        client_us: Option<u64>,
    ) -> Result<(), LimitHit> {
        let counters = self.g.counters.clone();
        let edge = self.g.edge_mut(source, target, proto)?;
        // Exemplars come from spans even where agent metrics count the edge: metrics carry no trace.
        if let Some(trace) = obs.trace {
            if let Some(latency_us) = server_us.or(client_us) {
                edge.offer_exemplar(crate::exemplars::Sample { trace_id: trace, latency_us, sec, failed: obs.failed });
            }
            let t = &mut edge.totals;
            for (hist, us) in [(&mut t.server, server_us), (&mut t.client, client_us)] {
                if let Some(us) = us {
                    hist.exemplar(us as f64 / 1e6, trace, sec as f64);
                }
            }
        }
        if edge.metrics_seen {
            counters.spans_covered_by_metrics.add(1);
            return Ok(());
        }
        edge.record(sec, obs);
        if let Some(us) = server_us {
            edge.record_server_latency(us, 1);
        }
        if let Some(us) = client_us {
            edge.record_client_latency(us, 1);
        }
        Ok(())
    }

    /// Expires halves older than the store's time to live: a lone client becomes an edge to its virtual
    /// peer, a lone server is counted as expired.
    fn expire(&mut self, now: f64) {
        let now_ms = self.pairing.ms(now);
        let sec = now as u64;
        let ttl = self.pairing.ttl_ms;
        let expired: Vec<(PairKey, Half)> =
            self.pairing.map.extract_if(|_, h| now_ms.saturating_sub(h.arrived_ms) >= ttl).collect();
        for (key, half) in expired {
            self.pairing.times.remove(&key);
            let messaging = half.flags & SIDE_MESSAGING != 0;
            self.pairing.unpaired.entry(half.node).or_default()[usize::from(!half.is_client())] += 1;
            if half.is_client() {
                if messaging {
                    self.g.counters.unpaired_producer.add(1);
                } else {
                    self.g.counters.unpaired_client.add(1);
                }
                let failed = half.flags & SIDE_FAILED != 0;
                let obs = Obs {
                    class: CodeClass::from_index(usize::from(half.class)),
                    failed,
                    latency_us: Some(u64::from(half.latency_us)),
                    count: 1,
                    mtls: half.flags & SIDE_MTLS != 0,
                    grpc: half.grpc(),
                    trace: Some(key.trace),
                };
                let proto = protocol(messaging, half.flags & SIDE_GRPC != 0);
                if self
                    .span_edge(half.node, half.peer, proto, sec, &obs, None, Some(u64::from(half.latency_us)))
                    .is_err()
                {
                    self.g.counters.spans_dropped_cardinality.add(1);
                }
            } else if messaging {
                self.g.counters.expired_consumer.add(1);
            } else {
                self.g.counters.expired_server.add(1);
            }
        }
        self.g.counters.store_size.set(self.pairing.len() as u64);
    }
}

fn protocol(messaging: bool, grpc: bool) -> Protocol {
    if messaging {
        Protocol::Messaging
    } else if grpc {
        Protocol::Grpc
    } else {
        Protocol::Http
    }
}

#[cfg(test)]
#[path = "spans_tests.rs"]
mod tests;
