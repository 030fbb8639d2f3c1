//! W3C trace context and the agent's spans: parse `traceparent`, decide sampling (parent-based with
//! a ratio for new traces, as the OpenTelemetry SDK's `ParentBased(TraceIdRatioBased)`), and hand
//! finished spans of sampled requests to the exporter through a bounded queue. A full queue drops
//! the span and counts it; traffic never waits for telemetry.

use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderValue;
use tokio::sync::mpsc;

use crate::counters::Counters;

/// A `traceparent` header's fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// Trace id.
    pub trace_id: [u8; 16],
    /// The span this one descends from, or this span.
    pub span_id: [u8; 8],
    /// Whether the trace is sampled.
    pub sampled: bool,
}

fn hex_into(out: &mut [u8], text: &[u8]) -> Option<()> {
    if text.len() != out.len() * 2 {
        return None;
    }
    for (i, pair) in text.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(())
}

impl TraceContext {
    /// Parses a `traceparent` value; `None` when it is not valid (all-zero ids included).
    pub fn parse(value: &[u8]) -> Option<Self> {
        if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let mut version = [0u8; 1];
        hex_into(&mut version, &value[0..2])?;
        if version[0] == 0xff || (version[0] == 0 && value.len() != 55) {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        let mut flags = [0u8; 1];
        hex_into(&mut trace_id, &value[3..35])?;
        hex_into(&mut span_id, &value[36..52])?;
        hex_into(&mut flags, &value[53..55])?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self { trace_id, span_id, sampled: flags[0] & 1 == 1 })
    }

    /// A new trace, sampled with probability `ratio`.
    pub fn root(ratio: f64) -> Self {
        let mut trace_id = [0u8; 16];
        trace_id[..8].copy_from_slice(&fastrand::u64(1..).to_be_bytes());
        trace_id[8..].copy_from_slice(&fastrand::u64(..).to_be_bytes());
        Self { trace_id, span_id: [0; 8], sampled: ratio > 0.0 && fastrand::f64() < ratio }
    }

    /// A child of this context with a new span id.
    pub fn child(&self) -> Self {
        Self { trace_id: self.trace_id, span_id: fastrand::u64(1..).to_be_bytes(), sampled: self.sampled }
    }

    /// The trace id as 32 hex digits.
    pub fn trace_id_hex(&self) -> String {
        self.trace_id.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The `traceparent` header for this context.
    pub fn header(&self) -> HeaderValue {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        for (i, b) in self.trace_id.iter().enumerate() {
            out[3 + 2 * i] = HEX[usize::from(b >> 4)];
            out[4 + 2 * i] = HEX[usize::from(b & 0xf)];
        }
        for (i, b) in self.span_id.iter().enumerate() {
            out[36 + 2 * i] = HEX[usize::from(b >> 4)];
            out[37 + 2 * i] = HEX[usize::from(b & 0xf)];
        }
        if self.sampled {
            out[54] = b'1';
        }
        // Only hex digits and dashes: always a valid header value.
        HeaderValue::from_bytes(&out)
            .unwrap_or(HeaderValue::from_static("00-00000000000000000000000000000000-0000000000000000-00"))
    }
}

/// Server or client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SpanKind {
    /// The inbound side.
    Server,
    /// One outbound attempt.
    Client,
}

/// A finished span of a sampled request.
#[derive(Clone, Debug)]
pub(crate) struct SpanRecord {
    /// Trace id.
    pub trace_id: [u8; 16],
    /// Span id.
    pub span_id: [u8; 8],
    /// Parent span id, zero for a root.
    pub parent_span_id: [u8; 8],
    pub kind: SpanKind,
    /// The request method.
    pub method: http::Method,
    /// The request path (server spans).
    pub path: Option<String>,
    /// The called service (client spans).
    pub peer_service: Option<Arc<str>>,
    /// The endpoint (client spans).
    pub server_address: Option<Arc<str>>,
    pub start: SystemTime,
    pub end: SystemTime,
    /// Response status, 0 for none.
    pub status: u16,
    /// `error.type` when there was no response.
    pub error: &'static str,
}

/// Hands finished spans to the exporter without waiting.
#[derive(Clone)]
pub(crate) struct SpanSink {
    tx: Option<mpsc::Sender<SpanRecord>>,
    counters: Arc<Counters>,
}

impl SpanSink {
    /// A sink into `tx`; `None` drops everything uncounted (telemetry off).
    pub(crate) fn new(tx: Option<mpsc::Sender<SpanRecord>>, counters: Arc<Counters>) -> Self {
        Self { tx, counters }
    }

    /// Queues a span, or drops and counts it when the queue is full.
    pub(crate) fn send(&self, span: SpanRecord) {
        if let Some(tx) = &self.tx {
            if tx.try_send(span).is_err() {
                self.counters.spans_dropped.add(1);
            } else {
                self.counters.spans_queued.add(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_writes_traceparent() {
        let c = TraceContext::parse(TP).unwrap();
        assert!(c.sampled);
        assert_eq!(c.span_id, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert_eq!(c.header().as_bytes(), TP);
        let child = c.child();
        assert_eq!((child.trace_id, child.sampled), (c.trace_id, true));
        assert_ne!(child.span_id, c.span_id);
    }

    #[test]
    fn refuses_bad_traceparent() {
        for bad in [
            &b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0"[..],
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        // A later version may carry more fields.
        assert!(TraceContext::parse(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra").is_some());
    }

    #[test]
    fn roots_sample_by_ratio() {
        fastrand::seed(7);
        assert!(!TraceContext::root(0.0).sampled);
        assert!(TraceContext::root(1.0).sampled);
        let n = (0..10_000).filter(|_| TraceContext::root(0.1).sampled).count();
        assert!((800..1200).contains(&n), "{n}");
    }
}
