//! Zero trust between agents: mutual TLS with SPIFFE identities, authorization, rate limits, and
//! what a strict inbound refuses. Real agents, a real collector, certificates from `meshlens ca`'s
//! code, all on loopback.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;

use meshlens_agent::tls;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::backend::*;
use crate::support::{edge, eventually, get_json};

struct Ca {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Ca {
    fn new() -> Ca {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        tls::init_ca(&path, tls::TRUST_DOMAIN).unwrap();
        Ca { _dir: dir, path }
    }

    /// Issues `ns/app` a certificate valid from `ago` before now for `ttl`: (cert, key).
    fn issue(&self, app: &str, stem: &str, ago: Duration, ttl: Duration) -> (PathBuf, PathBuf) {
        let i = tls::issue(&self.path, "shop", app, stem, SystemTime::now() - ago, ttl).unwrap();
        (i.cert, i.key)
    }

    fn leaf(&self, app: &str) -> (PathBuf, PathBuf) {
        self.issue(app, &format!("shop-{app}"), Duration::from_secs(60), Duration::from_secs(3600))
    }

    fn ca(&self) -> PathBuf {
        self.path.join("ca.pem")
    }
}

fn tls_yaml(cert: &Path, key: &Path, ca: &Path, mode: &str) -> String {
    format!("tls: {{cert: '{}', key: '{}', ca: '{}', mode: {mode}}}\n", cert.display(), key.display(), ca.display())
}

/// The callee `shop/b/v1` in front of `backend`, with TLS and `extra` YAML.
async fn callee_tls(
    backend: &Backend,
    pair: &(PathBuf, PathBuf),
    ca: &Path,
    mode: &str,
    extra: &str,
    otlp: Option<&str>,
) -> meshlens_agent::Running {
    let mut y = agent_yaml("shop/b/v1", backend.addr, "", "", otlp);
    y.push_str(&tls_yaml(&pair.0, &pair.1, ca, mode));
    y.push_str(extra);
    agent(&y).await
}

/// The caller `shop/a/v1` calling service `b` at `endpoint`, with TLS.
async fn caller_tls(
    endpoint: std::net::SocketAddr,
    pair: &(PathBuf, PathBuf),
    ca: &Path,
    otlp: Option<&str>,
) -> meshlens_agent::Running {
    let services = format!("b:\n  versions:\n    v1: ['{endpoint}']");
    let mut y = agent_yaml("shop/a/v1", "127.0.0.1:9".parse().unwrap(), &services, "", otlp);
    y.push_str(&tls_yaml(&pair.0, &pair.1, ca, "strict"));
    agent(&y).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_carries_http1_and_h2_and_the_graph_shows_it() {
    let ca = Ca::new();
    let c = crate::support::collector().await;
    let otlp = format!("http://{}", c.otlp_grpc_addr);
    let backend = Backend::start().await;
    let b = callee_tls(&backend, &ca.leaf("b"), &ca.ca(), "strict", "", Some(&otlp)).await;
    let a = caller_tls(b.inbound, &ca.leaf("a"), &ca.ca(), Some(&otlp)).await;
    let app = App::via(&a);
    for _ in 0..20 {
        assert_eq!(app.get("b", "/ok").await, (200, "ok".into()));
    }
    let out = a.outbound.unwrap();
    let h2 = reqwest::Client::builder().http2_prior_knowledge().resolve("b", out).build().unwrap();
    let r = h2.get(format!("http://b:{}/headers", out.port())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-version"], "HTTP/2.0", "h2 over mTLS to the callee's agent");
    a.shutdown().await;
    b.shutdown().await;
    let g = eventually("the mTLS edge", 20, || async {
        let (_, g) = get_json(&format!("{}/api/v1/graph", c.api_url())).await;
        (edge(&g, "shop/a/v1", "shop/b/v1")?["stats"]["requests"] == 21).then_some(g)
    })
    .await;
    assert_eq!(edge(&g, "shop/a/v1", "shop/b/v1").unwrap()["stats"]["mtls_pct"], 100.0);
}

/// Sends one request through a caller that should be refused by the callee (or refuse it): 503 with
/// the reason.
async fn refused(a: &meshlens_agent::Running) -> String {
    let (status, body) = App::via(a).get("b", "/ok").await;
    assert_eq!(status, 503, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_from_another_ca_expired_ones_and_the_wrong_identity_are_refused() {
    let (ca, other) = (Ca::new(), Ca::new());
    let backend = Backend::start().await;
    let b = callee_tls(&backend, &ca.leaf("b"), &ca.ca(), "strict", "", None).await;

    // A caller whose certificate another CA signed (it trusts both CAs, so only b's check can fail).
    let both = ca.path.join("both.pem");
    std::fs::write(&both, std::fs::read_to_string(ca.ca()).unwrap() + &std::fs::read_to_string(other.ca()).unwrap())
        .unwrap();
    let stranger = caller_tls(b.inbound, &other.leaf("a"), &both, None).await;
    // In TLS 1.3 the client finishes its side of the handshake before the server checks the client
    // certificate, so the refusal shows as a failed connect or as a reset of the first request.
    let body = refused(&stranger).await;
    assert!(body.contains("connect_failure") || body.contains("reset"), "{body}");

    // An expired certificate: valid from two hours ago for one hour.
    let expired = caller_tls(
        b.inbound,
        &ca.issue("a", "expired", Duration::from_secs(7200), Duration::from_secs(3600)),
        &ca.ca(),
        None,
    )
    .await;
    refused(&expired).await;
    assert!(b.counters.tls_handshake_errors.get() >= 2, "b refused both handshakes");

    // Service b's endpoint is really app c: the caller checks the identity it meant to reach.
    let c_backend = Backend::start().await;
    let impostor = {
        let mut y = agent_yaml("shop/c/v1", c_backend.addr, "", "", None);
        let pair = ca.leaf("c");
        y.push_str(&tls_yaml(&pair.0, &pair.1, &ca.ca(), "strict"));
        agent(&y).await
    };
    let a = caller_tls(impostor.inbound, &ca.leaf("a"), &ca.ca(), None).await;
    let body = refused(&a).await;
    assert!(body.contains("spiffe://meshlens.local/ns/shop/sa/c") && body.contains("sa/b was meant"), "{body}");
    assert_eq!(c_backend.hits(), 0, "nothing reached the impostor's app");

    // The right caller still gets through.
    let good = caller_tls(b.inbound, &ca.leaf("a"), &ca.ca(), None).await;
    assert_eq!(App::via(&good).get("b", "/ok").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_refuses_plaintext_permissive_takes_both_and_garbage_disturbs_nobody() {
    let ca = Ca::new();
    let backend = Backend::start().await;
    let strict = callee_tls(&backend, &ca.leaf("b"), &ca.ca(), "strict", "", None).await;
    let a = caller_tls(strict.inbound, &ca.leaf("a"), &ca.ca(), None).await;
    let app = App::via(&a);
    assert_eq!(app.get("b", "/ok").await.0, 200);

    // Plaintext HTTP into the strict inbound: no answer, the connection closed.
    let mut s = tokio::net::TcpStream::connect(strict.inbound).await.unwrap();
    s.write_all(b"GET /ok HTTP/1.1\r\nhost: b\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.unwrap();
    assert!(!String::from_utf8_lossy(&out).contains("200 OK"), "{:?}", String::from_utf8_lossy(&out));
    let hits = backend.hits();

    // Random bytes into the TLS port, while mTLS traffic goes on.
    let mut junk = Vec::new();
    for _ in 0..20 {
        let mut s = tokio::net::TcpStream::connect(strict.inbound).await.unwrap();
        let bytes: Vec<u8> = (0..4096).map(|_| fastrand::u8(..)).collect();
        let _ = s.write_all(&bytes).await;
        junk.push(s);
    }
    for _ in 0..20 {
        assert_eq!(app.get("b", "/ok").await.0, 200);
    }
    assert_eq!(backend.hits(), hits + 20);
    drop(junk);
    eventually("handshake errors counted", 5, || async {
        (strict.counters.tls_handshake_errors.get() >= 21).then_some(())
    })
    .await;

    // Permissive: mTLS callers and plaintext callers both get through.
    let permissive = callee_tls(&backend, &ca.leaf("b"), &ca.ca(), "permissive", "", None).await;
    let r = reqwest::get(format!("http://{}/ok", permissive.inbound)).await.unwrap();
    assert_eq!(r.status(), 200, "plaintext into permissive");
    let a2 = caller_tls(permissive.inbound, &ca.leaf("a"), &ca.ca(), None).await;
    assert_eq!(App::via(&a2).get("b", "/ok").await.0, 200, "mTLS into permissive");
    let text = reqwest::get(format!("http://{}/metrics", permissive.admin)).await.unwrap().text().await.unwrap();
    assert!(text.contains("peer=\"shop/a/v1\""), "the mTLS caller is known by its certificate\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_swaps_certificates_while_traffic_flows() {
    let ca = Ca::new();
    let backend = Backend::start().await;
    let pair = ca.leaf("b");
    let b = callee_tls(&backend, &pair, &ca.ca(), "strict", "", None).await;
    let a = caller_tls(b.inbound, &ca.leaf("a"), &ca.ca(), None).await;
    let app = App::via(&a);
    let mut sent = 0u64;
    for _ in 0..10 {
        assert_eq!(app.get("b", "/ok").await.0, 200);
        sent += 1;
    }
    // Reissue b's certificate in place (a new key, as a rotation would: written to a temp name, then
    // renamed over, as cert managers do) and keep sending until the agent has picked it up, then ten
    // more: no request fails across the swap.
    let stem = "shop-b";
    let i = tls::issue(&ca.path, "shop", "b", &format!("{stem}-new"), SystemTime::now(), Duration::from_secs(7200))
        .unwrap();
    std::fs::rename(&i.key, ca.path.join(format!("{stem}.key"))).unwrap();
    std::fs::rename(&i.cert, ca.path.join(format!("{stem}.pem"))).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while b.counters.cert_reloads.get() == 0 {
        assert!(std::time::Instant::now() < deadline, "the rotation was not picked up in 10 s");
        assert_eq!(app.get("b", "/ok").await.0, 200);
        sent += 1;
    }
    for _ in 0..10 {
        assert_eq!(app.get("b", "/ok").await.0, 200);
        sent += 1;
    }
    // A new connection handshakes with the new certificate.
    let fresh = caller_tls(b.inbound, &ca.leaf("a"), &ca.ca(), None).await;
    assert_eq!(App::via(&fresh).get("b", "/ok").await.0, 200);
    let served = served_certificate(b.inbound, &ca).await;
    let on_disk = std::fs::read_to_string(&pair.0).unwrap();
    assert!(on_disk.contains(&served), "the served leaf is the rotated file's");
    assert!(sent >= 20 && backend.hits.load(Ordering::SeqCst) >= sent);
}

/// The leaf certificate the inbound at `addr` serves, base64 as in a PEM file.
async fn served_certificate(addr: std::net::SocketAddr, ca: &Ca) -> String {
    let pair = ca.leaf("probe");
    let mesh = tls::MeshTls::load(&pair.0, &pair.1, &ca.ca(), tls::TRUST_DOMAIN, true).unwrap();
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = tls::server_name("shop", "b").unwrap();
    let s = tokio_rustls::TlsConnector::from(mesh.client_h1.clone()).connect(name, stream).await.unwrap();
    let der = s.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    // The first 48 bytes of the body, base64: enough to tell two certificates apart.
    base64_line(&der)
}

fn base64_line(der: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in der.chunks(3).take(16) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authz_denies_with_403_counted_on_the_graph_and_rate_limits_give_429() {
    let ca = Ca::new();
    let c = crate::support::collector().await;
    let otlp = format!("http://{}", c.otlp_grpc_addr);
    let backend = Backend::start().await;
    let authz = "authz:\n  default: deny\n  rules:\n    - {action: allow, from: ['spiffe://meshlens.local/ns/shop/*'], methods: [GET], paths: ['/ok']}\n    - {action: deny, from: ['spiffe://meshlens.local/ns/shop/sa/a'], paths: ['/ok/admin']}\n";
    let b = callee_tls(&backend, &ca.leaf("b"), &ca.ca(), "strict", authz, Some(&otlp)).await;
    let a = caller_tls(b.inbound, &ca.leaf("a"), &ca.ca(), Some(&otlp)).await;
    let app = App::via(&a);
    assert_eq!(app.get("b", "/ok").await.0, 200, "allowed by rule 0");
    for _ in 0..5 {
        let (status, body) = app.get("b", "/status/200").await;
        assert_eq!(status, 403);
        assert!(
            body.contains("denied by the default") && body.contains("spiffe://meshlens.local/ns/shop/sa/a"),
            "{body}"
        );
    }
    let (status, body) = app.get("b", "/ok/admin").await;
    assert_eq!(status, 403);
    assert!(body.contains("rule 1"), "{body}");
    assert_eq!(b.counters.authz_denied.get(), 6);
    assert_eq!(backend.hits(), 1);
    a.shutdown().await;
    b.shutdown().await;
    let g = eventually("403s on the edge", 20, || async {
        let (_, g) = get_json(&format!("{}/api/v1/graph", c.api_url())).await;
        (edge(&g, "shop/a/v1", "shop/b/v1")?["stats"]["codes"]["4xx"] == 6).then_some(g)
    })
    .await;
    assert_eq!(edge(&g, "shop/a/v1", "shop/b/v1").unwrap()["stats"]["requests"], 7);

    // 5 a second, burst 5: of 20 at once, 5 pass.
    let limited = callee_tls(
        &backend,
        &ca.leaf("b"),
        &ca.ca(),
        "strict",
        "rate_limit: {requests_per_second: 5, burst: 5}\n",
        None,
    )
    .await;
    let a = caller_tls(limited.inbound, &ca.leaf("a"), &ca.ca(), None).await;
    let client = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(format!("http://{}", a.outbound.unwrap())).unwrap())
        .build()
        .unwrap();
    let mut codes = Vec::new();
    for _ in 0..20 {
        let r = client.get("http://b/ok").send().await.unwrap();
        if r.status() == 429 {
            assert!(r.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
        }
        codes.push(r.status().as_u16());
    }
    let ok = codes.iter().filter(|&&s| s == 200).count();
    assert!((5..=7).contains(&ok), "{codes:?}");
    assert_eq!(limited.counters.rate_limited.get() as usize, 20 - ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_with_a_token_answers_401_without_it() {
    let c = crate::support::collector_with(|cfg| cfg.token = Some("s3cret".into())).await;
    let url = c.api_url();
    let r = reqwest::get(format!("{url}/api/v1/graph")).await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let wrong = reqwest::Client::new().get(format!("{url}/metrics")).bearer_auth("s3creT").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let ok = reqwest::Client::new().get(format!("{url}/api/v1/graph")).bearer_auth("s3cret").send().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(reqwest::get(format!("{url}/api/v1/workloads?token=s3cret")).await.unwrap().status(), 200);
    assert_eq!(reqwest::get(format!("{url}/healthz")).await.unwrap().status(), 200, "probes stay open");

    // OTLP too: HTTP and gRPC.
    let spans = crate::support::pairs(1, ("a", "v1"), ("b", "v1"), 3, 200, 5);
    assert_eq!(crate::support::http_traces(&c, &spans).await.status(), 401);
    let status = crate::support::grpc_traces(&c, spans.clone()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    // An agent that has the token exports through.
    let backend = Backend::start().await;
    let mut y = agent_yaml("shop/b/v1", backend.addr, "", "", Some(&format!("http://{}", c.otlp_grpc_addr)));
    y = y.replace("sampling: 1.0}", "sampling: 1.0, token: s3cret}");
    let b = agent(&y).await;
    assert_eq!(reqwest::get(format!("http://{}/ok", b.inbound)).await.unwrap().status(), 200);

    // The tap stream is the API's, behind the same token; the agent subscribes with its own.
    assert_eq!(reqwest::get(format!("{url}/api/v1/tap?target=b")).await.unwrap().status(), 401);
    let mut tap =
        reqwest::Client::new().get(format!("{url}/api/v1/tap?target=b")).bearer_auth("s3cret").send().await.unwrap();
    assert_eq!(tap.status(), 200);
    let mut seen = String::new();
    let mut read_until = async |what: &str| {
        tokio::time::timeout(Duration::from_secs(20), async {
            while !seen.contains(what) {
                let chunk = tap.chunk().await.unwrap().expect("the tap stream stays open");
                seen.push_str(&String::from_utf8_lossy(&chunk));
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {what:?} on the tap: {seen}"));
    };
    read_until("\"live\":1").await;
    assert_eq!(reqwest::get(format!("http://{}/ok/tapped", b.inbound)).await.unwrap().status(), 200);
    read_until("/ok/tapped").await;
    drop(tap);
    b.shutdown().await;
    eventually("the agent's export accepted", 20, || async {
        let r = reqwest::Client::new().get(format!("{url}/api/v1/graph")).bearer_auth("s3cret").send().await.ok()?;
        let g: serde_json::Value = r.json().await.ok()?;
        edge(&g, "user", "shop/b/v1").map(|_| ())
    })
    .await;
}

/// Sends one HTTP/1.1 request as written (no client normalises it) and returns the status code.
async fn raw_status(addr: std::net::SocketAddr, method: &str, target: &str) -> u16 {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("{method} {target} HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&out);
    text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no status in {text:?}"))
}

/// Authorization on the path as the app would read it: every spelling of a denied prefix is
/// denied, an encoded slash is refused, methods match in any case, and what passes reaches the
/// app normalised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authz_sees_the_normalised_path_and_methods_in_any_case() {
    let backend = Backend::start().await;
    let authz = "authz:\n  default: allow\n  rules:\n    - {action: deny, paths: ['/status']}\n    - {action: deny, methods: [DELETE], paths: ['/ok']}\n";
    let mut y = agent_yaml("shop/b/v1", backend.addr, "", "", None);
    y.push_str(authz);
    let b = agent(&y).await;
    for target in [
        "/status/200",
        "/%73tatus/200",
        "//status/200",
        "/./status/200",
        "/x/../status/200",
        "/%2e/status/200",
        "/%2E%2E/status/200",
    ] {
        assert_eq!(raw_status(b.inbound, "GET", target).await, 403, "{target}");
    }
    for target in ["/x%2F..%2Fstatus/200", "/%5cstatus/200", "/st%zzatus"] {
        assert_eq!(raw_status(b.inbound, "GET", target).await, 400, "{target}");
    }
    for method in ["DELETE", "delete", "Delete"] {
        assert_eq!(raw_status(b.inbound, method, "/ok").await, 403, "{method}");
    }
    assert_eq!(backend.hits(), 0, "nothing denied reached the app");
    // Allowed, and the app gets the normalised path (`/ok`, which it answers 200; the raw
    // `/a/../ok` would be its 404).
    assert_eq!(raw_status(b.inbound, "GET", "/a/../ok").await, 200);
    assert_eq!(raw_status(b.inbound, "GET", "/ok?x=/../status").await, 200, "the query is not the path");
    assert_eq!(backend.hits(), 2);
}

/// Without mTLS the `x-meshlens-source` header is anyone's to write: a caller that rotates it is
/// still one caller (its address) to the rate limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotating_source_header_does_not_escape_the_rate_limit() {
    let backend = Backend::start().await;
    let mut y = agent_yaml("shop/b/v1", backend.addr, "", "", None);
    y.push_str("rate_limit: {requests_per_second: 5, burst: 5}\n");
    let b = agent(&y).await;
    let client = reqwest::Client::new();
    let mut ok = 0;
    for i in 0..50 {
        let r = client
            .get(format!("http://{}/ok", b.inbound))
            .header("x-meshlens-source", format!("shop/caller{i}/v1"))
            .send()
            .await
            .unwrap();
        ok += usize::from(r.status() == 200);
    }
    assert!((5..=8).contains(&ok), "{ok} of 50 passed");
    assert_eq!(b.counters.rate_limited.get() as usize, 50 - ok);
}

/// Without a token the collector listens on loopback only, and answers only loopback `Host` names:
/// a page whose name re-resolves to 127.0.0.1 (DNS rebinding) is refused on the API and on
/// OTLP/HTTP. With a token, the token is the guard and any name is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_only_loopback_host_names_are_served() {
    let c = crate::support::collector().await;
    let get = |host: &'static str| {
        let url = format!("{}/api/v1/revisions", c.api_url());
        async move { crate::support::http().get(url).header("host", host).send().await.unwrap() }
    };
    let r = get("evil.example:7420").await;
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("DNS rebinding"));
    for ok in ["localhost:7420", "127.0.0.1", "[::1]:7420"] {
        assert_eq!(get(ok).await.status(), 200, "{ok}");
    }
    let otlp = crate::support::http()
        .post(format!("http://{}/v1/traces", c.otlp_http_addr))
        .header("host", "evil.example")
        .header("content-type", "application/x-protobuf")
        .body(Vec::new())
        .send()
        .await
        .unwrap();
    assert_eq!(otlp.status(), 403);

    let t = crate::support::collector_with(|cfg| cfg.token = Some("s3cret".into())).await;
    let r = crate::support::http()
        .get(format!("{}/api/v1/revisions", t.api_url()))
        .header("host", "meshlens.example.com")
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// A TLS client that trusts the mesh CA, verifies names as WebPKI does, and shows no certificate.
fn anonymous_client(ca: &Ca) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca.ca()).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A collector serving TLS with the mesh CA's `meshlens/collector` certificate (client
/// certificates required or not), and that certificate's files.
async fn tls_collector(ca: &Ca, require_client_cert: bool) -> (meshlens_collector::Running, tls::Issued) {
    let server = tls::issue_with_names(
        &ca.path,
        "meshlens",
        "collector",
        "collector",
        SystemTime::now() - Duration::from_secs(60),
        Duration::from_secs(3600),
        &["127.0.0.1".to_owned()],
    )
    .unwrap();
    let mesh = tls::MeshTls::load(&server.cert, &server.key, &ca.ca(), tls::TRUST_DOMAIN, require_client_cert).unwrap();
    (crate::support::collector_with(|cfg| cfg.tls = Some(mesh.server.clone())).await, server)
}

/// TLS on the collector's listeners, with a certificate from the mesh CA: the API and OTLP/HTTP
/// answer over TLS (HTTP/1.1), OTLP/gRPC takes an export over TLS (HTTP/2), and a plaintext client
/// gets no answer on any of them; with client certificates required, a client without one is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_serves_tls_from_the_mesh_ca() {
    let ca = Ca::new();
    let (c, server) = tls_collector(&ca, false).await;
    // The client: an agent's pair from the same CA (its verifier checks the collector's chain).
    let (cert, key) = ca.leaf("a");
    let client = tls::MeshTls::load(&cert, &key, &ca.ca(), tls::TRUST_DOMAIN, false).unwrap();
    let name = tls::server_name("meshlens", "collector").unwrap();
    let over_tls = |addr: std::net::SocketAddr, request: Vec<u8>| {
        let (config, name) = (client.client_h1.clone(), name.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut s = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.unwrap();
            s.write_all(&request).await.unwrap();
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
            String::from_utf8_lossy(&out).into_owned()
        }
    };
    let api = over_tls(
        c.http_addr,
        b"GET /api/v1/revisions HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n".to_vec(),
    )
    .await;
    assert!(api.starts_with("HTTP/1.1 200"), "{api}");
    let export = prost::Message::encode_to_vec(&crate::support::pairs(1, ("a", "v1"), ("b", "v1"), 2, 200, 1));
    let mut post = format!(
        "POST /v1/traces HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        export.len()
    )
    .into_bytes();
    post.extend(&export);
    let otlp = over_tls(c.otlp_http_addr, post).await;
    assert!(otlp.starts_with("HTTP/1.1 200"), "{otlp}");
    // OTLP/gRPC over TLS, HTTP/2.
    let tcp = tokio::net::TcpStream::connect(c.otlp_grpc_addr).await.unwrap();
    let s = tokio_rustls::TlsConnector::from(client.client_h2.clone()).connect(name.clone(), tcp).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(s))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(export.len() as u32).to_be_bytes());
    framed.extend(&export);
    let req = hyper::Request::post(
        "https://collector.meshlens.mesh/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    )
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(http_body_util::Full::new(bytes::Bytes::from(framed)))
    .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let head = resp.headers().clone();
    let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap();
    let status = body.trailers().and_then(|t| t.get("grpc-status")).or(head.get("grpc-status")).cloned();
    assert_eq!(status.as_ref().map(|s| s.to_str().unwrap()), Some("0"), "{head:?} {:?}", body.trailers());
    // Both exports (OTLP/HTTP's and OTLP/gRPC's) reached the graph, read over TLS too.
    let get_graph = b"GET /api/v1/graph HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n".to_vec();
    eventually("both exports on the edge", 20, || async {
        let answer = over_tls(c.http_addr, get_graph.clone()).await;
        let body: serde_json::Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1)?).ok()?;
        (edge(&body, "default/a/v1", "default/b/v1")?["stats"]["requests"] == 4).then_some(())
    })
    .await;
    // A client that checks names the usual way (WebPKI, as curl and the SDKs do) and shows no
    // certificate reaches https://127.0.0.1 (the certificate names it, `--san 127.0.0.1`).
    let standard = Arc::new(anonymous_client(&ca));
    let tcp = tokio::net::TcpStream::connect(c.http_addr).await.unwrap();
    let ip = rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let mut st = tokio_rustls::TlsConnector::from(standard.clone()).connect(ip, tcp).await.unwrap();
    st.write_all(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), st.read_to_end(&mut out)).await;
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
    // Plaintext gets nothing on any listener, and is counted.
    for addr in [c.http_addr, c.otlp_http_addr] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /api/v1/revisions HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        assert!(!String::from_utf8_lossy(&out).contains("200 OK"));
    }
    assert!(c.hub.counters.tls_handshake_errors.get() >= 2);

    // Client certificates required: a client with none is refused.
    let strict = tls::MeshTls::load(&server.cert, &server.key, &ca.ca(), tls::TRUST_DOMAIN, true).unwrap();
    let s = crate::support::collector_with(|cfg| cfg.tls = Some(strict.server.clone())).await;
    let anonymous = anonymous_client(&ca);
    let tcp = tokio::net::TcpStream::connect(s.http_addr).await.unwrap();
    let refused = match tokio_rustls::TlsConnector::from(Arc::new(anonymous)).connect(name, tcp).await {
        Err(_) => true,
        Ok(mut st) => {
            let _ = st.write_all(b"GET /api/v1/revisions HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n").await;
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), st.read_to_end(&mut out)).await;
            !String::from_utf8_lossy(&out).contains("200 OK")
        }
    };
    assert!(refused, "a client without a certificate is refused");
}

/// Agents export to a TLS collector that requires client certificates (`https://` in
/// `telemetry.collector`): each presents its mesh certificate, and spans and metrics arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_export_to_a_tls_collector_with_their_mesh_certificates() {
    let ca = Ca::new();
    let (c, _) = tls_collector(&ca, true).await;
    let otlp = format!("https://{}", c.otlp_grpc_addr);
    let backend = Backend::start().await;
    let b = callee_tls(&backend, &ca.leaf("b"), &ca.ca(), "strict", "", Some(&otlp)).await;
    let a = caller_tls(b.inbound, &ca.leaf("a"), &ca.ca(), Some(&otlp)).await;
    let app = App::via(&a);
    for _ in 0..5 {
        assert_eq!(app.get("b", "/ok").await.0, 200);
    }
    let counters = c.hub.counters.clone();
    eventually("spans and metrics over TLS", 20, || async {
        (counters.spans_received.get() >= 10 && counters.points_received.get() > 0).then_some(())
    })
    .await;
    assert_eq!(a.counters.export_failures.get() + b.counters.export_failures.get(), 0);
    assert_eq!(counters.tls_handshake_errors.get(), 0);
    // Without a tls: block an https collector is a config error that says what to add.
    let y = agent_yaml("shop/a/v1", backend.addr, "", "", Some(&otlp));
    let e = meshlens_agent::config::AgentConfig::parse(&y, "test.yaml").unwrap_err().to_string();
    assert!(e.contains("add a tls: block"), "{e}");
}

/// `inbound.source_header: ignore`: a caller without a certificate cannot name itself; its
/// requests count as from an unknown caller, and the forged name never reaches the graph.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ignored_source_header_puts_no_forged_caller_on_the_graph() {
    let c = crate::support::collector().await;
    let otlp = format!("http://{}", c.otlp_grpc_addr);
    let backend = Backend::start().await;
    let y = agent_yaml("shop/b/v1", backend.addr, "", "", Some(&otlp))
        .replace(&format!("app: '{}'}}", backend.addr), &format!("app: '{}', source_header: ignore}}", backend.addr));
    assert!(y.contains("source_header: ignore"), "{y}");
    let b = agent(&y).await;
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let r = client
            .get(format!("http://{}/ok", b.inbound))
            .header("x-meshlens-source", "shop/forged/v1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let g = eventually("the requests on the graph", 20, || async {
        let (_, g) = get_json(&format!("{}/api/v1/graph", c.api_url())).await;
        let into_b: u64 = g["edges"]
            .as_array()?
            .iter()
            .filter(|e| e["target"] == "shop/b/v1")
            .map(|e| e["stats"]["requests"].as_u64().unwrap_or(0))
            .sum();
        (into_b == 3).then_some(g)
    })
    .await;
    assert!(!g.to_string().contains("forged"), "{g}");
}
