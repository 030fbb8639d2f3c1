//! Collector benchmarks (criterion; `cargo bench -p meshlens-collector`). Figures and method are in
//! docs/PERFORMANCE.md.
//!
//! - `ingest/grpc_512`: spans per second over OTLP/gRPC on loopback in 512-span batches, all the way
//!   into the graph (the clock stops when the pipeline has paired every span).
//! - `ingest/decode_512` and `ingest/engine_512`: the two halves of that path on their own — protobuf
//!   decoding, and pairing plus recording into windowed stats — to show what limits it.
//! - `api/graph_1000x5000`: `GET /api/v1/graph` over loopback for 1,000 nodes and 5,000 edges, and the
//!   same graph for another window (kept ready by the ticks while it is read, and on a first read:
//!   `_cold`), and read back from the store for a past revision.
//! - `api/freeze_1000x5000_*`: the part of a view taken under the engine lock, on a window's first
//!   read (every edge's slices summed) and a second later (the sums kept since, moved on).
//! - `api/revision_write_1000x5000`: the tick's store write of that revision (its five views).
//! - `memory`: bytes per in-flight span half in the pairing store, and for 1,000 busy edges with a 1 h
//!   window; printed, not timed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use meshlens_collector::bench::Counters;
use meshlens_collector::bench::lite;
use meshlens_collector::bench::{Engine, EngineConfig};
use meshlens_collector::testkit::{kv_int, resource, span, traces};
use meshlens_collector::{CollectorConfig, start};
use meshlens_model::graph::View;
use meshlens_model::hist::Merger;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;

const BATCH: u64 = 512;

/// Whether criterion's command line asks for any of `ids` (no filter, or a filter that is a
/// substring of one, as criterion matches): a group whose setup takes minutes (the hour of traffic
/// of `memory`) is skipped when the filter names only others. A filter with regex syntax runs it.
fn wanted(ids: &[&str]) -> bool {
    const FLAGS: [&str; 9] =
        ["--bench", "--noplot", "--list", "--quick", "--verbose", "--quiet", "--exact", "--discard-baseline", "--test"];
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut filters = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if a.starts_with("--") {
            if !a.contains('=') && !FLAGS.contains(&a) {
                i += 1; // the option's value
            }
        } else {
            filters.push(a);
        }
        i += 1;
    }
    let regex = |f: &str| f.contains(|c: char| "^$.*+?()[]{}|\\".contains(c));
    filters.is_empty() || filters.iter().any(|f| regex(f) || ids.iter().any(|id| id.contains(f)))
}

/// A message that encodes as the bytes it holds: the load generator sends pre-encoded exports, so the
/// figures are the collector's cost, not the cost of encoding them in the same process.
#[derive(Clone, Debug, Default)]
struct Raw(bytes::Bytes);

impl Message for Raw {
    fn encode_raw(&self, buf: &mut impl bytes::BufMut) {
        buf.put_slice(&self.0);
    }
    fn merge_field(
        &mut self,
        _tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, _tag, buf, ctx)
    }
    fn encoded_len(&self) -> usize {
        self.0.len()
    }
    fn clear(&mut self) {
        self.0.clear();
    }
}

/// Exports one pre-encoded trace request over a channel.
async fn export_raw(channel: tonic::transport::Channel, body: bytes::Bytes) {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    );
    let codec = tonic_prost::ProstCodec::<
        Raw,
        opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse,
    >::default();
    grpc.unary(tonic::Request::new(Raw(body)), path, codec).await.unwrap();
}

/// A 512-span batch: 256 client/server pairs between 16 workloads, unique ids per `seq`.
fn batch(seq: u64) -> ExportTraceServiceRequest {
    batch_with(seq, false)
}

/// Attributes an HTTP server span from an SDK's instrumentation typically carries.
fn http_attrs(status: i64) -> Vec<opentelemetry_proto::tonic::common::v1::KeyValue> {
    use meshlens_collector::testkit::kv;
    vec![
        kv("http.request.method", "GET"),
        kv("url.scheme", "http"),
        kv("url.path", "/api/v1/products/12345/reviews"),
        kv("http.route", "/api/v1/products/{id}/reviews"),
        kv("server.address", "reviews.default.svc.cluster.local"),
        kv_int("server.port", 9080),
        kv("network.protocol.version", "1.1"),
        kv("client.address", "10.244.1.17"),
        kv("user_agent.original", "python-requests/2.32.3"),
        kv_int("http.response.status_code", status),
    ]
}

/// Like [`batch`]; with `realistic`, every span carries ten HTTP attributes and every resource eight.
fn batch_with(seq: u64, realistic: bool) -> ExportTraceServiceRequest {
    let mut per_resource: Vec<(String, Vec<_>)> = (0..16).map(|i| (format!("svc{i}"), Vec::new())).collect();
    for p in 0..BATCH / 2 {
        let id = seq * BATCH + p * 2 + 1;
        let (a, b) = ((p % 16) as usize, ((p * 7 + 3) % 16) as usize);
        let dur = 1_000 + (p * 37) % 50_000;
        let status = if p % 50 == 0 { 503 } else { 200 };
        let (client_attrs, server_attrs) = if realistic {
            (http_attrs(status), http_attrs(status))
        } else {
            (vec![], vec![kv_int("http.response.status_code", status)])
        };
        per_resource[a].1.push(span(SpanKind::Client, seq, id, Some(1), 1, dur + 300, client_attrs, false));
        per_resource[b].1.push(span(SpanKind::Server, seq, id + 1, Some(id), 1, dur, server_attrs, false));
    }
    let res = |n: &str| {
        use meshlens_collector::testkit::kv;
        let mut r = resource("bench", n, "v1");
        if realistic {
            r.attributes.extend([
                kv("telemetry.sdk.name", "opentelemetry"),
                kv("telemetry.sdk.language", "python"),
                kv("telemetry.sdk.version", "1.45.2"),
                kv("host.name", "node-7.cluster.local"),
                kv_int("process.pid", 4242),
            ]);
        }
        r
    };
    traces(per_resource.into_iter().map(|(n, s)| (res(&n), s)).collect())
}

fn ingest(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(BATCH));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(10));

    let encoded: Vec<Vec<u8>> = (0..64).map(|i| batch(i).encode_to_vec()).collect();
    g.bench_function("decode_512", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % encoded.len();
            ExportTraceServiceRequest::decode(&encoded[i][..]).unwrap()
        })
    });

    g.bench_function("engine_512", |b| {
        let mut engine = Engine::new(EngineConfig::default(), Arc::new(Counters::default()), 1.8e9);
        let reqs: Vec<_> = (0..1024).map(|i| lite::TraceRequest::from_full(&batch(i))).collect();
        let mut i = 0usize;
        b.iter(|| {
            engine.ingest_lean_traces(&reqs[i % reqs.len()], 1.8e9 + (i / 1024) as f64);
            i += 1;
        })
    });

    let realistic: Vec<Vec<u8>> = (0..64).map(|i| batch_with(i, true).encode_to_vec()).collect();
    println!("batch sizes: minimal {} bytes, realistic {} bytes (protobuf)", encoded[0].len(), realistic[0].len());
    g.bench_function("decode_512_realistic", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % realistic.len();
            ExportTraceServiceRequest::decode(&realistic[i][..]).unwrap()
        })
    });
    // The collector's own decoding: lean types, zero-copy from the request buffer.
    for (name, set) in [("decode_512_lean", &encoded), ("decode_512_realistic_lean", &realistic)] {
        let buffers: Vec<bytes::Bytes> = set.iter().map(|v| bytes::Bytes::from(v.clone())).collect();
        g.bench_function(name, |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % buffers.len();
                lite::TraceRequest::decode(buffers[i].clone()).unwrap()
            })
        });
    }

    // With the trace store (the default) and without it (`--trace-store-spans 0`): its cost per span.
    for (name, kept) in [
        ("engine_512_realistic", EngineConfig::default().trace_store_spans),
        ("engine_512_realistic_no_trace_store", 0),
    ] {
        g.bench_function(name, |b| {
            let config = EngineConfig { trace_store_spans: kept, ..EngineConfig::default() };
            let mut engine = Engine::new(config, Arc::new(Counters::default()), 1.8e9);
            let reqs: Vec<_> = (0..1024).map(|i| lite::TraceRequest::from_full(&batch_with(i, true))).collect();
            let mut i = 0usize;
            b.iter(|| {
                engine.ingest_lean_traces(&reqs[i % reqs.len()], 1.8e9 + (i / 1024) as f64);
                i += 1;
            })
        });
    }

    // The same exports into an in-memory collector and into one with a data directory, whose
    // write-ahead log makes every batch durable (group commit, one fdatasync) before the answer.
    let wal_dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let durable = CollectorConfig { data_dir: Some(wal_dir.path().to_owned()), ..CollectorConfig::ephemeral() };
    let mut seq = 1_000_000u64;
    for (config, suffix) in [(CollectorConfig::ephemeral(), ""), (durable, "_wal")] {
        let collector = rt.block_on(start(config)).unwrap();
        let url = format!("http://{}", collector.otlp_grpc_addr);
        let channels: Vec<tonic::transport::Channel> = rt.block_on(async {
            let mut out = Vec::new();
            for _ in 0..4 {
                let ep = tonic::transport::Endpoint::from_shared(url.clone())
                    .unwrap()
                    .initial_stream_window_size(meshlens_collector::GRPC_STREAM_WINDOW)
                    .initial_connection_window_size(meshlens_collector::GRPC_CONNECTION_WINDOW);
                out.push(ep.connect().await.unwrap());
            }
            out
        });
        let counters = collector.hub.counters.clone();
        for (name, real) in [("grpc_512", false), ("grpc_512_realistic", true)] {
            g.bench_function(format!("{name}{suffix}"), |b| {
                b.iter_custom(|iters| {
                    let reqs: Vec<bytes::Bytes> =
                        (0..iters).map(|i| bytes::Bytes::from(batch_with(seq + i, real).encode_to_vec())).collect();
                    seq += iters;
                    let target = counters.spans_paired.get() + iters * BATCH;
                    let start = Instant::now();
                    rt.block_on(async {
                        let mut lanes: Vec<Vec<bytes::Bytes>> = vec![Vec::new(); channels.len()];
                        for (i, r) in reqs.into_iter().enumerate() {
                            lanes[i % channels.len()].push(r);
                        }
                        let sends = lanes.into_iter().zip(channels.iter().cloned()).map(|(lane, ch)| async move {
                            for r in lane {
                                export_raw(ch.clone(), r).await;
                            }
                        });
                        futures_util::future::join_all(sends).await;
                        while counters.spans_paired.get() < target {
                            tokio::task::yield_now().await;
                        }
                    });
                    start.elapsed()
                })
            });
        }
        rt.block_on(collector.shutdown()).unwrap();
    }
    g.finish();
}

/// An engine holding `nodes` workloads and `edges` busy edges, with traffic in the last `secs`.
fn big_engine(nodes: u64, edges: u64, secs: u64, now: f64) -> Engine {
    let config = EngineConfig { max_nodes: 100_000, max_edges: 100_000, ..EngineConfig::default() };
    let mut engine = Engine::new(config, Arc::new(Counters::default()), now - secs as f64);
    let mut seq = 0u64;
    for s in (0..secs).rev() {
        engine.ingest_traces(&second_of_traffic(nodes, edges, &mut seq), now - s as f64);
    }
    engine
}

/// One request on each of `edges` edges between `nodes` workloads (a CLIENT and a SERVER span).
fn second_of_traffic(nodes: u64, edges: u64, seq: &mut u64) -> ExportTraceServiceRequest {
    let mut batches = Vec::new();
    for e in 0..edges {
        let (a, b) = (e % nodes, (e % nodes + 1 + e / nodes) % nodes);
        *seq += 1;
        let dur = 500 + (*seq * 7919) % 200_000;
        batches.push((
            resource("bench", &format!("svc{a}"), "v1"),
            vec![span(SpanKind::Client, *seq, 1, Some(9), 1, dur, vec![], false)],
        ));
        batches.push((
            resource("bench", &format!("svc{b}"), "v2"),
            vec![span(SpanKind::Server, *seq, 2, Some(1), 1, dur, vec![], false)],
        ));
    }
    traces(batches)
}

fn api(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let collector = rt
        .block_on(start(CollectorConfig { tick: Duration::from_secs(3600), ..CollectorConfig::ephemeral() }))
        .unwrap();
    let now = meshlens_collector::bench::unix_now();
    {
        let mut engine = collector.hub.engine.lock();
        *engine = big_engine(1000, 5000, 20, now);
    }
    collector.hub.tick(now, &mut Merger::default()).unwrap();
    // A second revision, so revision 1 is read back from the store (`?at=1`).
    collector.hub.tick(now + 1.0, &mut Merger::default()).unwrap();
    assert_eq!(collector.hub.latest().unwrap().revision, 2);
    {
        // As the store writes it: each view deflated apart.
        use std::io::Write;
        let rev = collector.hub.latest().unwrap();
        let (mut json, mut stored) = (0, 0);
        for view in &rev.views {
            let v = serde_json::to_vec(view).unwrap();
            let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(&v).unwrap();
            json += v.len();
            stored += enc.finish().unwrap().len();
        }
        println!("stored revision (5 views): {json} bytes of JSON, {stored} bytes deflated");
    }
    let client = reqwest::Client::new();
    let url = format!("{}/api/v1/graph", collector.api_url());
    let body = rt.block_on(async { client.get(&url).send().await.unwrap().bytes().await.unwrap() });
    let g: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((g["nodes"].as_array().unwrap().len(), g["edges"].as_array().unwrap().len()), (2000, 5000));
    println!("graph body: {} bytes, 2000 nodes (1000 apps x 2 versions), 5000 edges", body.len());

    let mut g = c.benchmark_group("api");
    g.sample_size(30);
    g.bench_function("graph_1000x5000", |b| {
        b.iter(|| rt.block_on(async { client.get(&url).send().await.unwrap().bytes().await.unwrap() }))
    });
    let live = format!("{url}?window=30s");
    g.bench_function("graph_1000x5000_live_window", |b| {
        b.iter(|| rt.block_on(async { client.get(&live).send().await.unwrap().bytes().await.unwrap() }))
    });
    // A whole publisher tick with that window being read: the five views of the publisher's window,
    // and the watched window summed under the lock, built and serialised (nothing new to store).
    g.bench_function("tick_1000x5000_one_window_watched", |b| {
        let mut merger = Merger::default();
        b.iter(|| collector.hub.tick(now + 1.0, &mut merger).unwrap())
    });
    // Each read a window no one read before: summed under the lock, built and serialised on the read.
    let mut cold = 10u64;
    g.bench_function("graph_1000x5000_live_window_cold", |b| {
        b.iter(|| {
            cold = if cold >= 3600 { 11 } else { cold + 1 };
            let u = format!("{url}?window={cold}s");
            rt.block_on(async { client.get(&u).send().await.unwrap().bytes().await.unwrap() })
        })
    });
    let past = format!("{url}?at=1");
    g.bench_function("graph_1000x5000_at_past_revision", |b| {
        b.iter(|| rt.block_on(async { client.get(&past).send().await.unwrap().bytes().await.unwrap() }))
    });
    g.bench_function("snapshot_1000x5000_compute", |b| {
        let engine = collector.hub.engine.lock();
        let mut merger = Merger::default();
        b.iter(|| meshlens_collector::bench::snapshot(&engine, View::Versioned, 60, now, &mut merger))
    });
    // The tick's store write of that revision (five views, JSON, deflated), to an in-memory store.
    g.bench_function("revision_write_1000x5000", |b| {
        let rev = collector.hub.latest().unwrap();
        let store = meshlens_collector::bench::Store::in_memory(3600).unwrap();
        let mut r = (*rev).clone();
        b.iter(|| {
            r.revision += 1;
            store.write_tick(Some(&r), &[], now as u64, now as u64, Default::default(), &[]).unwrap();
        })
    });
    // What the publisher does every tick: all five views.
    g.bench_function("tick_views_1000x5000", |b| {
        let engine = collector.hub.engine.lock();
        let mut merger = Merger::default();
        b.iter(|| meshlens_collector::bench::snapshots(&engine, &View::ALL, 60, now, &mut merger))
    });
    // The part of a view that holds the engine lock, as a tick takes it: one more second of traffic
    // on every edge (not timed), then the 60 s window summed from every edge's slices (a window's
    // first read; what every freeze cost before windows were kept summed), or taken from the sums
    // kept since the last second. Last: they move the engine's clock on.
    let (mut t, mut seq) = (now, 1u64 << 40);
    for (name, kept) in [("freeze_1000x5000_first_read", false), ("freeze_1000x5000_next_second", true)] {
        g.bench_function(name, |b| {
            let mut engine = collector.hub.engine.lock();
            let mut merger = Merger::default();
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    t += 1.0;
                    engine.ingest_traces(&second_of_traffic(1000, 5000, &mut seq), t);
                    let start = Instant::now();
                    let frozen = if kept {
                        meshlens_collector::bench::freeze(&mut engine, 60, t + 0.5, &mut merger)
                    } else {
                        meshlens_collector::bench::freeze_summed(&engine, 60, t + 0.5, &mut merger)
                    };
                    spent += start.elapsed();
                    drop(std::hint::black_box(frozen));
                }
                spent
            })
        });
    }
    g.finish();
    rt.block_on(collector.shutdown()).unwrap();
}

fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<usize>().ok()))
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

fn memory(c: &mut Criterion) {
    if !wanted(&["memory/pairing", "memory/window", "memory/snapshot_1000_edges_1h_window"]) {
        return;
    }
    // In-flight span halves: 1,000,000 CLIENT spans waiting for their SERVER.
    let n = 1_000_000u64;
    let mut engine = Engine::new(EngineConfig::default(), Arc::new(Counters::default()), 1.8e9);
    let rss0 = rss_bytes();
    for chunk in 0..(n / 10_000) {
        let spans =
            (0..10_000).map(|i| span(SpanKind::Client, chunk, i + 1, Some(9), 1, 1000, vec![], false)).collect();
        engine.ingest_traces(&traces(vec![(resource("bench", "a", "v1"), spans)]), 1.8e9);
    }
    let rss1 = rss_bytes();
    let store = engine.pairing.heap_bytes();
    println!(
        "memory/pairing: {} halves in flight: {:.1} bytes each by structure size ({} bytes), {:.1} bytes each by RSS growth",
        engine.pairing.len(),
        store as f64 / engine.pairing.len() as f64,
        store,
        (rss1.saturating_sub(rss0)) as f64 / engine.pairing.len() as f64
    );
    drop(engine);

    // 1,000 edges with traffic every second for an hour, 40 distinct latencies per second per edge.
    let now = 1.8e9;
    let mut engine = Engine::new(EngineConfig::default(), Arc::new(Counters::default()), now - 3600.0);
    let rss0 = rss_bytes();
    let mut seq = 0u64;
    for s in (0..3600u64).rev() {
        let mut batches = Vec::with_capacity(1000);
        for e in 0..1000u64 {
            let spans = (0..40u64)
                .map(|k| {
                    seq += 1;
                    span(SpanKind::Server, seq, 1, None, 1, 1000 + k * 997 + e, vec![], false)
                })
                .collect();
            batches.push((resource("bench", &format!("svc{e}"), "v1"), spans));
        }
        engine.ingest_traces(&traces(batches), now - s as f64);
    }
    let rss1 = rss_bytes();
    println!(
        "memory/window: 1000 edges x 1h: {:.1} MiB of slices and histograms by structure size, {:.1} MiB by RSS growth, {:.1} KiB per edge",
        engine.window_heap_bytes() as f64 / (1 << 20) as f64,
        rss1.saturating_sub(rss0) as f64 / (1 << 20) as f64,
        engine.window_heap_bytes() as f64 / 1000.0 / 1024.0
    );
    // Keep criterion happy with one cheap timed function over the same state.
    c.bench_function("memory/snapshot_1000_edges_1h_window", |b| {
        let mut merger = Merger::default();
        b.iter(|| meshlens_collector::bench::snapshot(&engine, View::Versioned, 3600, now, &mut merger))
    });
}

/// A restart's store read (`Store::load`) on the same 300-service graph with a short and a long
/// revision history: only the newest revision is read whole, so the two should take about the
/// same time.
fn restart(c: &mut Criterion) {
    use meshlens_collector::bench::{Store, StoredRevision};
    let now = meshlens_collector::bench::unix_now();
    let engine = big_engine(300, 1000, 5, now);
    let views = meshlens_collector::bench::snapshots(&engine, &View::ALL, 60, now, &mut Merger::default());
    let mut g = c.benchmark_group("restart");
    g.sample_size(10);
    for (revisions, times) in [(100u64, true), (1000, true), (100, false)] {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        {
            let store = Store::open(dir.path(), 100_000).unwrap();
            for r in 1..=revisions {
                let rev = StoredRevision {
                    revision: r,
                    generated_at_ms: (now * 1000.0) as i64 + r as i64,
                    window_seconds: 60,
                    changes: Default::default(),
                    views: views.clone(),
                };
                store.write_tick(Some(&rev), &[], now as u64, now as u64, Default::default(), &[]).unwrap();
            }
            if !times {
                store.forget_revision_times().unwrap();
            }
        }
        // Without the times table every revision is read whole: the read before #16, for comparison.
        let how = if times { "" } else { "_reading_every_revision" };
        g.bench_function(format!("load_300_services_{revisions}_revisions{how}"), |b| {
            b.iter(|| {
                let store = Store::open(dir.path(), 100_000).unwrap();
                let loaded = store.load().unwrap();
                assert_eq!(loaded.index.len() as u64, revisions);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, memory, ingest, api, restart);
criterion_main!(benches);
