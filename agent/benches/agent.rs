//! Agent microbenchmarks (criterion; `cargo bench -p meshlens-agent`). Figures and method are in
//! docs/PERFORMANCE.md; the proxy as a whole is measured against nginx and haproxy by
//! `bench/proxy.sh`.
//!
//! - `telemetry/record`: recording one request's outcome and latency (the hot-path cost; goal
//!   < 200 ns), with the outcome in the first slot and in the eighth.
//! - `telemetry/record_contended`: the same from two threads on one peer (the atomics shared).
//! - `telemetry/inbound_lookup`: finding the caller's metrics by its id (lock-free map read).
//! - `trace/parse_and_child`: parsing a `traceparent` and writing a child's.
//! - `export/build`: building the OTLP metrics export for 100 peers × 4 outcomes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use meshlens_agent::bench::{Direction, ErrorKind, Outcome, Registry, TraceContext, metrics_request};
use meshlens_model::Workload;

fn telemetry(c: &mut Criterion) {
    let registry = Registry::default();
    let peer = registry.peer(Direction::Outbound, "shop/reviews/v1");
    let mut g = c.benchmark_group("telemetry");
    g.throughput(Throughput::Elements(1));
    g.bench_function("record", |b| {
        b.iter(|| peer.record(black_box(Outcome::status(200)), black_box(Duration::from_micros(870))))
    });
    for code in 201..208 {
        peer.record(Outcome::status(code), Duration::ZERO);
    }
    g.bench_function("record_eighth_slot", |b| {
        b.iter(|| {
            peer.record(black_box(Outcome::failed(ErrorKind::Timeout, true)), black_box(Duration::from_millis(3)))
        })
    });
    g.bench_function("record_contended", |b| {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let other = {
            let (peer, stop) = (peer.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    peer.record(Outcome::status(200), Duration::from_micros(870));
                }
            })
        };
        b.iter(|| peer.record(black_box(Outcome::status(200)), black_box(Duration::from_micros(870))));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        other.join().unwrap();
    });
    for i in 0..100 {
        registry.peer(Direction::Inbound, &format!("shop/app{i}/v1"));
    }
    g.bench_function("inbound_lookup", |b| b.iter(|| registry.peer(Direction::Inbound, black_box("shop/app42/v1"))));
    g.finish();
}

fn trace(c: &mut Criterion) {
    let tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    c.bench_function("trace/parse_and_child", |b| {
        b.iter(|| TraceContext::parse(black_box(tp)).map(|t| t.child().header()))
    });
}

fn export(c: &mut Criterion) {
    let registry = Registry::default();
    for i in 0..100 {
        let p =
            registry.peer(if i % 2 == 0 { Direction::Inbound } else { Direction::Outbound }, &format!("ns/app{i}/v1"));
        for code in [200, 404, 500, 503] {
            p.record(Outcome::status(code), Duration::from_millis(i));
        }
    }
    let me = Workload { namespace: "ns".into(), app: "me".into(), version: Some("v1".into()), cluster: None };
    let start = SystemTime::now();
    c.bench_function("export/build_100_peers", |b| {
        b.iter(|| metrics_request(&me, &registry, start, SystemTime::now()))
    });
}

/// Full mTLS handshakes (TLS 1.3, ECDSA P-256, client certificate, SPIFFE check) over loopback, one
/// at a time: the inverse is handshakes per second on one core's worth of client and server.
fn tls(c: &mut Criterion) {
    use meshlens_agent::tls;
    let dir = std::env::temp_dir().join(format!("meshlens-bench-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    tls::init_ca(&dir, tls::TRUST_DOMAIN).unwrap();
    let now = SystemTime::now() - Duration::from_secs(60);
    let server = tls::issue(&dir, "shop", "b", "b", now, Duration::from_secs(3600)).unwrap();
    let client = tls::issue(&dir, "shop", "a", "a", now, Duration::from_secs(3600)).unwrap();
    let ca = dir.join("ca.pem");
    let server = tls::MeshTls::load(&server.cert, &server.key, &ca, tls::TRUST_DOMAIN, true).unwrap();
    let client = tls::MeshTls::load(&client.cert, &client.key, &ca, tls::TRUST_DOMAIN, true).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(server.server.clone());
    rt.spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(s).await;
            });
        }
    });
    let connector = tokio_rustls::TlsConnector::from(client.client_h1.clone());
    let name = tls::server_name("shop", "b").unwrap();
    let mut g = c.benchmark_group("tls");
    g.throughput(Throughput::Elements(1));
    g.bench_function("mtls_handshake", |b| {
        b.iter(|| {
            rt.block_on(async {
                let s = tokio::net::TcpStream::connect(addr).await.unwrap();
                let mut t = connector.connect(name.clone(), s).await.unwrap();
                // The server's side finishes with the client's certificate check.
                tokio::io::AsyncWriteExt::shutdown(&mut t).await.unwrap();
            })
        })
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, telemetry, trace, export, tls);
criterion_main!(benches);
