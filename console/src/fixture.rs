//! A fixed bookinfo graph and its workloads, for the UI's tests and benchmarks.

use meshlens_model::api::{WorkloadRow, WorkloadsBody};
use meshlens_model::graph::{Edge, GraphSnapshot, Node, NodeKind, View};
use meshlens_model::stats::{Codes, LatencyMs};
use meshlens_model::{Health, Stats};

fn stats(rps: f64, errors_pct: f64, p50: f64) -> Stats {
    let requests = (rps * 60.0).round() as u64;
    let errors = (requests as f64 * errors_pct / 100.0).round() as u64;
    Stats {
        requests,
        errors,
        rps,
        rps_min: rps * 0.8,
        rps_max: rps * 1.2,
        success_pct: Some(100.0 - errors_pct),
        error_pct: Some(errors_pct),
        codes: Codes { c2xx: requests - errors, c5xx: errors, ..Codes::default() },
        latency_ms: Some(LatencyMs { p50, p95: p50 * 2.0, p99: p50 * 3.0, max: p50 * 4.0 }),
        mtls_pct: Some(0.0),
        retries: Some((errors as f64 * 0.9) as u64),
        timeouts: Some(0),
        grpc_codes: None,
    }
}

fn health(err: f64) -> Health {
    if err >= 10.0 {
        Health::Failing
    } else if err > 0.0 {
        Health::Degraded
    } else {
        Health::Healthy
    }
}

/// Bookinfo with reviews-v3 failing a fifth of its requests.
pub fn bookinfo() -> GraphSnapshot {
    let wl = |app: &str, v: &str, inbound: Stats, outbound: Stats| Node {
        id: format!("bookinfo/{app}/{v}"),
        namespace: "bookinfo".into(),
        app: app.into(),
        version: Some(v.into()),
        kind: NodeKind::Workload,
        cluster: None,
        group: Some(format!("bookinfo/{app}")),
        health: health(inbound.error_pct.unwrap_or(0.0)),
        inbound,
        outbound,
    };
    let mut nodes = vec![
        Node {
            id: "user".into(),
            namespace: String::new(),
            app: "user".into(),
            version: None,
            kind: NodeKind::User,
            cluster: None,
            group: None,
            health: Health::Healthy,
            inbound: Stats::default(),
            outbound: stats(20.0, 0.0, 25.0),
        },
        wl("productpage", "v1", stats(20.0, 0.0, 25.0), stats(40.0, 2.6, 6.0)),
        wl("details", "v1", stats(20.0, 0.0, 4.0), Stats::default()),
        wl("reviews", "v1", stats(6.6, 0.0, 6.0), Stats::default()),
        wl("reviews", "v2", stats(6.7, 0.0, 12.0), stats(6.7, 0.0, 4.0)),
        wl("reviews", "v3", stats(6.7, 21.0, 12.0), stats(5.3, 0.0, 4.0)),
        wl("ratings", "v1", stats(12.0, 0.0, 4.0), Stats::default()),
    ];
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    let e = |s: &str, t: &str, st: Stats| Edge {
        id: format!("{s}->{t}"),
        source: s.into(),
        target: t.into(),
        protocol: "http".into(),
        health: health(st.error_pct.unwrap_or(0.0)),
        stats: st,
    };
    let mut edges = vec![
        e("user", "bookinfo/productpage/v1", stats(20.0, 0.0, 25.0)),
        e("bookinfo/productpage/v1", "bookinfo/details/v1", stats(20.0, 0.0, 4.0)),
        e("bookinfo/productpage/v1", "bookinfo/reviews/v1", stats(6.6, 0.0, 6.0)),
        e("bookinfo/productpage/v1", "bookinfo/reviews/v2", stats(6.7, 0.0, 12.0)),
        e("bookinfo/productpage/v1", "bookinfo/reviews/v3", stats(6.7, 21.0, 12.0)),
        e("bookinfo/reviews/v2", "bookinfo/ratings/v1", stats(6.7, 0.0, 4.0)),
        e("bookinfo/reviews/v3", "bookinfo/ratings/v1", stats(5.3, 0.0, 4.0)),
    ];
    edges.sort_by(|a, b| a.id.cmp(&b.id));
    GraphSnapshot {
        revision: 42,
        generated_at: "2026-11-26T12:00:00Z".into(),
        window_seconds: 60,
        view: View::Versioned,
        nodes,
        edges,
    }
}

/// The workloads of [`bookinfo`].
pub fn workloads() -> WorkloadsBody {
    let workloads = WorkloadRow::from_graph(&bookinfo());
    WorkloadsBody { revision: 42, window_seconds: 60, workloads }
}
