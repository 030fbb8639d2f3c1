//! The agent's own counters (`meshlens_agent_*` on the admin `/metrics`): what it refused, retried,
//! ejected, injected and dropped, and how its exports and reloads went. Lock-free; read by the admin
//! listener.

use meshlens_model::escape::prometheus_label as escape;
use std::fmt::Write as _;

use meshlens_model::counter::Counter;

use crate::telemetry::{BOUNDS_US, Direction, Registry};

/// Every counter the agent exposes about itself.
#[derive(Debug, Default)]
pub struct Counters {
    /// Inbound connections accepted.
    pub inbound_connections: Counter,
    /// Outbound connections accepted (from the app).
    pub outbound_connections: Counter,
    /// Connections that ended in a protocol error (malformed HTTP, oversized or slow headers).
    pub connection_errors: Counter,
    /// Outbound requests for a service the config does not name.
    pub unroutable_unknown_service: Counter,
    /// Outbound requests with no endpoint to take them (none configured or all ejected).
    pub unroutable_no_endpoint: Counter,
    /// Retries sent.
    pub retries: Counter,
    /// Retries the budget refused.
    pub retries_budget_denied: Counter,
    /// Retries not made because the request body was too large to replay.
    pub retries_body_too_large: Counter,
    /// Per-try timeouts.
    pub per_try_timeouts: Counter,
    /// Whole-request timeouts.
    pub request_timeouts: Counter,
    /// Endpoint ejections.
    pub ejections: Counter,
    /// Ejections refused by `max_ejection_percent`.
    pub ejections_capped: Counter,
    /// Injected delays.
    pub faults_delayed: Counter,
    /// Injected aborts.
    pub faults_aborted: Counter,
    /// Spans queued for export.
    pub spans_queued: Counter,
    /// Spans dropped because the queue was full or export kept failing.
    pub spans_dropped: Counter,
    /// Spans the collector accepted.
    pub spans_exported: Counter,
    /// Metric exports the collector accepted.
    pub metric_exports: Counter,
    /// Exports (metrics or spans) that failed.
    pub export_failures: Counter,
    /// Config reloads applied.
    pub reloads: Counter,
    /// Config reloads refused (bad file); the old config kept serving.
    pub reload_errors: Counter,
    /// Times a discovery source's endpoints changed (`crate::discovery`).
    pub discovery_updates: Counter,
    /// Discovery lookups or file reads that failed; the source's last endpoints kept serving.
    pub discovery_errors: Counter,
    /// Inbound requests denied by authorization (403).
    pub authz_denied: Counter,
    /// Inbound requests over the rate limit (429).
    pub rate_limited: Counter,
    /// Inbound TLS handshakes that failed (plaintext into strict, unknown CA, expired, garbage).
    pub tls_handshake_errors: Counter,
    /// Certificate rotations picked up.
    pub cert_reloads: Counter,
    /// Requests answered 400 before routing: Host headers against RFC 9112.
    pub bad_requests: Counter,
    /// Requests ended with 408: their body sent nothing for `limits.body_idle_timeout`.
    pub bodies_timed_out: Counter,
    /// Connections closed at once because the listener had `max_connections` open.
    pub connections_refused: Counter,
    /// Connections closed because their first byte did not come within the header read timeout, or
    /// they had no request in flight for the idle timeout.
    pub idle_connections_closed: Counter,
    /// Requests queued for an open tap.
    pub tap_events_queued: Counter,
    /// Tap events dropped because the queue was full.
    pub tap_events_dropped: Counter,
    /// Tap batches the collector did not take (unreachable, refused).
    pub tap_send_errors: Counter,
}

/// Prometheus text of the counters and the per-peer request metrics.
pub(crate) fn render(c: &Counters, registry: &Registry) -> String {
    let mut out = String::new();
    let counters: [(&str, &str, &Counter); 34] = [
        ("tap_events_queued_total", "Requests queued for an open tap.", &c.tap_events_queued),
        ("tap_events_dropped_total", "Tap events dropped: the tap queue was full.", &c.tap_events_dropped),
        ("tap_send_errors_total", "Tap batches the collector did not take.", &c.tap_send_errors),
        ("authz_denied_total", "Inbound requests denied by authorization.", &c.authz_denied),
        ("rate_limited_total", "Inbound requests over the rate limit.", &c.rate_limited),
        ("tls_handshake_errors_total", "Inbound TLS handshakes that failed.", &c.tls_handshake_errors),
        ("cert_reloads_total", "Certificate rotations picked up.", &c.cert_reloads),
        ("inbound_connections_total", "Inbound connections accepted.", &c.inbound_connections),
        ("outbound_connections_total", "Outbound connections accepted from the app.", &c.outbound_connections),
        ("connection_errors_total", "Connections ended by a protocol error.", &c.connection_errors),
        ("bad_requests_total", "Requests answered 400 for their Host headers (RFC 9112).", &c.bad_requests),
        (
            "connections_refused_total",
            "Connections closed at once: the listener's max_connections were open.",
            &c.connections_refused,
        ),
        (
            "request_bodies_timed_out_total",
            "Requests ended with 408: the body sent nothing for limits.body_idle_timeout.",
            &c.bodies_timed_out,
        ),
        (
            "idle_connections_closed_total",
            "Connections closed idle: nothing within the header read timeout, or no request in flight for the idle timeout.",
            &c.idle_connections_closed,
        ),
        (
            "unroutable_unknown_service_total",
            "Requests for a service not in the config.",
            &c.unroutable_unknown_service,
        ),
        ("unroutable_no_endpoint_total", "Requests with no endpoint to take them.", &c.unroutable_no_endpoint),
        ("retries_total", "Retries sent.", &c.retries),
        ("retries_budget_denied_total", "Retries refused by the retry budget.", &c.retries_budget_denied),
        ("retries_body_too_large_total", "Retries not made: body too large to replay.", &c.retries_body_too_large),
        ("per_try_timeouts_total", "Attempts that hit the per-try timeout.", &c.per_try_timeouts),
        ("request_timeouts_total", "Requests that hit the whole-request timeout.", &c.request_timeouts),
        ("ejections_total", "Endpoints ejected by outlier detection.", &c.ejections),
        ("ejections_capped_total", "Ejections refused by max_ejection_percent.", &c.ejections_capped),
        ("faults_delayed_total", "Requests delayed by fault injection.", &c.faults_delayed),
        ("faults_aborted_total", "Requests aborted by fault injection.", &c.faults_aborted),
        ("spans_queued_total", "Spans queued for export.", &c.spans_queued),
        ("spans_dropped_total", "Spans dropped (queue full or export failing).", &c.spans_dropped),
        ("spans_exported_total", "Spans the collector accepted.", &c.spans_exported),
        ("metric_exports_total", "Metric exports the collector accepted.", &c.metric_exports),
        ("export_failures_total", "Exports that failed.", &c.export_failures),
        ("config_reloads_total", "Config reloads applied.", &c.reloads),
        ("config_reload_errors_total", "Config reloads refused; the old config kept serving.", &c.reload_errors),
        ("discovery_updates_total", "Times a discovery source's endpoints changed.", &c.discovery_updates),
        (
            "discovery_errors_total",
            "Discovery lookups or file reads that failed; the source's last endpoints kept serving.",
            &c.discovery_errors,
        ),
    ];
    for (name, help, counter) in counters {
        let _ = writeln!(out, "# HELP meshlens_agent_{name} {help}\n# TYPE meshlens_agent_{name} counter");
        let _ = writeln!(out, "meshlens_agent_{name} {}", counter.get());
    }
    let _ = writeln!(
        out,
        "# HELP meshlens_agent_request_duration_seconds Requests by side, peer and outcome.\n\
         # TYPE meshlens_agent_request_duration_seconds histogram"
    );
    let (mut retries, mut timeouts, mut overflow) = (String::new(), String::new(), String::new());
    for peer in registry.all() {
        let direction = match peer.direction {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        };
        let id = peer.peer.as_ref().map(|w| w.id()).unwrap_or_default();
        for t in peer.outcomes() {
            let labels = format!(
                "direction=\"{direction}\",peer=\"{}\",status_code=\"{}\",error_type=\"{}\"",
                escape(&id),
                t.outcome.status,
                t.outcome.error.as_str()
            );
            let mut cumulative = 0;
            for (i, n) in t.buckets.iter().enumerate() {
                cumulative += n;
                let le = BOUNDS_US.get(i).map_or("+Inf".to_owned(), |b| format!("{}", *b as f64 / 1e6));
                let _ = writeln!(
                    out,
                    "meshlens_agent_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(out, "meshlens_agent_request_duration_seconds_sum{{{labels}}} {}", t.sum_s);
            let _ = writeln!(out, "meshlens_agent_request_duration_seconds_count{{{labels}}} {}", t.count);
        }
        if peer.direction == Direction::Outbound {
            let _ =
                writeln!(retries, "meshlens_agent_peer_retries_total{{peer=\"{}\"}} {}", escape(&id), peer.retries());
            let _ = writeln!(
                timeouts,
                "meshlens_agent_peer_timeouts_total{{peer=\"{}\"}} {}",
                escape(&id),
                peer.timeouts()
            );
        }
        if peer.overflow() > 0 {
            let _ = writeln!(
                overflow,
                "meshlens_agent_outcomes_overflow_total{{direction=\"{direction}\",peer=\"{}\"}} {}",
                escape(&id),
                peer.overflow()
            );
        }
    }
    for (name, help, body) in [
        ("peer_retries_total", "Retries sent, by callee.", retries),
        ("peer_timeouts_total", "Timeouts, by callee.", timeouts),
        ("outcomes_overflow_total", "Requests not recorded: more distinct outcomes than slots.", overflow),
    ] {
        let _ = write!(out, "# HELP meshlens_agent_{name} {help}\n# TYPE meshlens_agent_{name} counter\n{body}");
    }
    out
}
