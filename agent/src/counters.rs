//! The agent's own counters (`meshlens_agent_*` on the admin `/metrics`): what it refused, retried,
//! ejected, injected and dropped, and how its exports and reloads went. Lock-free; read by the admin
//! listener.

use meshlens_model::escape::prometheus_label as escape;
use std::fmt::Write as _;

use meshlens_model::counter::Counter;

use crate::telemetry::{BOUNDS_US, Direction, Registry};

/// Declares [`Counters`] once: each counter's field, its metric name (after `meshlens_agent_`) and
/// its `# HELP` text (also the field's doc, with any `///` lines above it), in the order `/metrics`
/// writes them.
macro_rules! counters {
    ($($(#[doc = $doc:literal])* $field:ident => $name:literal, $help:literal;)*) => {
        /// Every counter the agent exposes about itself.
        #[derive(Debug, Default)]
        pub struct Counters {
            $(#[doc = $help] $(#[doc = $doc])* pub $field: Counter,)*
        }

        impl Counters {
            /// Each counter with its metric name and help.
            fn each(&self) -> impl Iterator<Item = (&'static str, &'static str, &Counter)> {
                [$(($name, $help, &self.$field)),*].into_iter()
            }
        }
    };
}

counters! {
    inbound_connections => "inbound_connections_total", "Inbound connections accepted.";
    /// Outbound connections accepted (from the app).
    outbound_connections => "outbound_connections_total", "Outbound connections accepted from the app.";
    /// Connections that ended in a protocol error (malformed HTTP, oversized or slow headers).
    connection_errors => "connection_errors_total", "Connections ended by a protocol error.";
    /// Outbound requests for a service the config does not name.
    unroutable_unknown_service => "unroutable_unknown_service_total", "Requests for a service not in the config.";
    /// Outbound requests with no endpoint to take them (none configured or all ejected).
    unroutable_no_endpoint => "unroutable_no_endpoint_total", "Requests with no endpoint to take them.";
    retries => "retries_total", "Retries sent.";
    /// Retries the budget refused.
    retries_budget_denied => "retries_budget_denied_total", "Retries refused by the retry budget.";
    /// Retries not made because the request body was too large to replay.
    retries_body_too_large => "retries_body_too_large_total", "Retries not made: body too large to replay.";
    /// Per-try timeouts.
    per_try_timeouts => "per_try_timeouts_total", "Attempts that hit the per-try timeout.";
    /// Whole-request timeouts.
    request_timeouts => "request_timeouts_total", "Requests that hit the whole-request timeout.";
    /// Endpoint ejections.
    ejections => "ejections_total", "Endpoints ejected by outlier detection.";
    /// Ejections refused by `max_ejection_percent`.
    ejections_capped => "ejections_capped_total", "Ejections refused by max_ejection_percent.";
    /// Injected delays.
    faults_delayed => "faults_delayed_total", "Requests delayed by fault injection.";
    /// Injected aborts.
    faults_aborted => "faults_aborted_total", "Requests aborted by fault injection.";
    spans_queued => "spans_queued_total", "Spans queued for export.";
    /// Spans dropped because the queue was full or export kept failing.
    spans_dropped => "spans_dropped_total", "Spans dropped (queue full or export failing).";
    spans_exported => "spans_exported_total", "Spans the collector accepted.";
    metric_exports => "metric_exports_total", "Metric exports the collector accepted.";
    /// Exports (metrics or spans) that failed.
    export_failures => "export_failures_total", "Exports that failed.";
    reloads => "config_reloads_total", "Config reloads applied.";
    /// Config reloads refused (bad file); the old config kept serving.
    reload_errors => "config_reload_errors_total", "Config reloads refused; the old config kept serving.";
    /// Times a discovery source's endpoints changed (`crate::discovery`).
    discovery_updates => "discovery_updates_total", "Times a discovery source's endpoints changed.";
    discovery_errors => "discovery_errors_total", "Discovery lookups or file reads that failed; the source's last endpoints kept serving.";
    /// Inbound requests denied by authorization (403).
    authz_denied => "authz_denied_total", "Inbound requests denied by authorization.";
    /// Inbound requests over the rate limit (429).
    rate_limited => "rate_limited_total", "Inbound requests over the rate limit.";
    /// Inbound TLS handshakes that failed (plaintext into strict, unknown CA, expired, garbage).
    tls_handshake_errors => "tls_handshake_errors_total", "Inbound TLS handshakes that failed.";
    cert_reloads => "cert_reloads_total", "Certificate rotations picked up.";
    /// Requests answered 400 before routing: Host headers against RFC 9112.
    bad_requests => "bad_requests_total", "Requests answered 400 for their Host headers (RFC 9112).";
    /// Requests ended with 408: their body sent nothing for `limits.body_idle_timeout`.
    bodies_timed_out => "request_bodies_timed_out_total", "Requests ended with 408: the body sent nothing for limits.body_idle_timeout.";
    /// Connections closed at once because the listener had `max_connections` open.
    connections_refused => "connections_refused_total", "Connections closed at once: the listener's max_connections were open.";
    /// Connections closed because their first byte did not come within the header read timeout, or
    /// they had no request in flight for the idle timeout.
    idle_connections_closed => "idle_connections_closed_total", "Connections closed idle: nothing within the header read timeout, or no request in flight for the idle timeout.";
    tap_events_queued => "tap_events_queued_total", "Requests queued for an open tap.";
    /// Tap events dropped because the queue was full.
    tap_events_dropped => "tap_events_dropped_total", "Tap events dropped: the tap queue was full.";
    /// Tap batches the collector did not take (unreachable, refused).
    tap_send_errors => "tap_send_errors_total", "Tap batches the collector did not take.";
}

/// Prometheus text of the counters and the per-peer request metrics.
pub(crate) fn render(c: &Counters, registry: &Registry) -> String {
    let mut out = String::new();
    for (name, help, counter) in c.each() {
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
