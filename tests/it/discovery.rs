//! Discovery in the agent against a real DNS server (Debian's dnsmasq on a loopback port, serving a
//! hosts file the test rewrites) and a real endpoint file: replicas on 127.0.0.2–5 come and go while
//! load runs, and no request fails.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::backend::*;
use crate::support::{eventually, free_port, prom_value, tool};

/// dnsmasq answering from a hosts file, with a 1 s TTL.
struct Dnsmasq {
    child: tokio::process::Child,
    hosts: PathBuf,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Dnsmasq {
    async fn start(hosts: &str, srv: &str) -> Dnsmasq {
        let bin = tool("MESHLENS_DNSMASQ", "/usr/sbin/dnsmasq", "dnsmasq (Debian's dnsmasq-base)");
        let dir = tempfile::tempdir().unwrap();
        // dnsmasq drops root for `nobody`, who must still read the file when it is told to again.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("hosts");
        write_readable(&path, hosts);
        let port = free_port();
        let child = tokio::process::Command::new(bin)
            .args(["--keep-in-foreground", "--no-resolv", "--no-hosts", "--bind-interfaces", "--no-negcache"])
            .args(["--listen-address=127.0.0.1", "--pid-file=", "--local-ttl=1", "--log-facility=-"])
            .arg(format!("--port={port}"))
            .arg(format!("--addn-hosts={}", path.display()))
            .arg(format!("--srv-host={srv}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        eventually("dnsmasq answers", 10, || async move { (a_records(addr, "b.test") > 0).then_some(()) }).await;
        Dnsmasq { child, hosts: path, addr, _dir: dir }
    }

    /// Serves `hosts` from now on (dnsmasq reads its hosts files again on SIGHUP).
    fn set_hosts(&self, hosts: &str) {
        write_readable(&self.hosts, hosts);
        let pid = self.child.id().unwrap();
        assert!(std::process::Command::new("kill").args(["-HUP", &pid.to_string()]).status().unwrap().success());
    }
}

fn write_readable(path: &std::path::Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

/// How many A records `server` gives for `name` (a query by hand: the test needs no resolver of its own).
fn a_records(server: SocketAddr, name: &str) -> u16 {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    s.send_to(&q, server).unwrap();
    let mut buf = [0u8; 512];
    match s.recv(&mut buf) {
        Ok(n) if n >= 8 => u16::from_be_bytes([buf[6], buf[7]]),
        _ => 0,
    }
}

/// Requests to `service` through `agent`, four at a time, until stopped: how many, how many failed.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(agent: &meshlens_agent::Running, service: &'static str) -> Load {
        let (stop, sent, failed) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::default());
        let tasks = (0..4)
            .map(|_| {
                let (app, stop, sent, failed): (_, Arc<AtomicBool>, Arc<AtomicU64>, Arc<AtomicU64>) =
                    (App::via(agent), stop.clone(), sent.clone(), Arc::clone(&failed));
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let ok = app
                            .request(reqwest::Method::GET, service, "/ok")
                            .send()
                            .await
                            .is_ok_and(|r| r.status() == 200);
                        sent.fetch_add(1, Ordering::Relaxed);
                        if !ok {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        // Paced, so the other tests running beside this one keep their share of the cores.
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                })
            })
            .collect();
        Load { stop, sent, failed, tasks }
    }

    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        (self.sent.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }
}

async fn hits_reach(what: &str, backend: &Backend, n: u64) {
    eventually(what, 20, || async move { (backend.hits() >= n).then_some(()) }).await;
}

/// Under load to `service`, the endpoints move from `before` to `after` when `change` runs: the one
/// removed gets nothing new once the table changed, the one added gets its share, nothing fails.
async fn shift(
    agent: &meshlens_agent::Running,
    service: &'static str,
    kept: [&Backend; 2],
    removed: &Backend,
    added: &Backend,
    change: impl FnOnce(),
) {
    let load = Load::start(agent, service);
    for (i, b) in kept.iter().chain([&removed]).enumerate() {
        hits_reach(&format!("replica {i} of the first set gets requests"), b, 20).await;
    }
    assert_eq!(added.hits(), 0, "not listed yet");
    change();
    hits_reach("the added replica gets requests", added, 10).await;
    // Once the added replica has answered, the table without the removed one is in force.
    let (removed_then, kept_then, added_then) = (removed.hits(), kept.map(Backend::hits), added.hits());
    hits_reach("the added replica gets 150 more", added, added_then + 150).await;
    let (sent, failed) = load.stop().await;
    assert_eq!(failed, 0, "of {sent} requests");
    assert_eq!(removed.hits(), removed_then, "the removed replica got requests after the change");
    let deltas = [kept[0].hits() - kept_then[0], kept[1].hits() - kept_then[1], added.hits() - added_then];
    let total: u64 = deltas.iter().sum();
    for d in deltas {
        assert!(d * 5 >= total, "each of three replicas has at least a fifth of {total}: {deltas:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_behind_a_dns_name_come_and_go_under_load_and_no_request_fails() {
    // One port on four loopback addresses: a DNS record carries no port.
    let port = std::net::TcpListener::bind("127.0.0.2:0").unwrap().local_addr().unwrap().port();
    let mut replicas = Vec::new();
    for ip in 2..=5 {
        replicas.push(Backend::start_on(format!("127.0.0.{ip}:{port}").parse().unwrap()).await);
    }
    let dns = Dnsmasq::start(
        "127.0.0.2 b.test\n127.0.0.3 b.test\n127.0.0.4 b.test\n",
        &format!("_http._tcp.b.test,b.test,{port}"),
    )
    .await;
    let services = format!(
        "b:\n  versions:\n    v1: [{{dns: 'b.test:{port}'}}]\nc:\n  versions:\n    v1: [{{srv: '_http._tcp.b.test'}}]\n"
    );
    let unused: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut yaml = agent_yaml("shop/a/v1", unused, &services, "", None);
    yaml.push_str(&format!("discovery: {{dns: {{server: '{}'}}}}\n", dns.addr));
    let a = agent(&yaml).await;

    // SRV: the record's target, every address of it, on the record's port.
    let app = App::via(&a);
    eventually("the SRV name's three targets get requests", 20, || {
        let (app, r) = (&app, &replicas);
        async move {
            app.get("c", "/ok").await;
            r[..3].iter().all(|b| b.hits() > 0).then_some(())
        }
    })
    .await;

    shift(&a, "b", [&replicas[0], &replicas[1]], &replicas[2], &replicas[3], || {
        dns.set_hosts("127.0.0.2 b.test\n127.0.0.3 b.test\n127.0.0.5 b.test\n")
    })
    .await;
    let text = reqwest::get(format!("http://{}/metrics", a.admin)).await.unwrap().text().await.unwrap();
    assert!(prom_value(&text, "meshlens_agent_discovery_updates_total ").unwrap() >= 3.0, "{text}");
    assert_eq!(prom_value(&text, "meshlens_agent_discovery_errors_total "), Some(0.0), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_file_changes_the_same_way_and_a_bad_one_keeps_the_last() {
    let mut replicas = Vec::new();
    for _ in 0..4 {
        replicas.push(Backend::start().await);
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("endpoints");
    let lines = |rs: &[&Backend]| rs.iter().map(|b| format!("{}\n", b.addr)).collect::<String>();
    let write = |text: &str| {
        // Written beside, then renamed over: a reader never sees half a file.
        let tmp = dir.path().join("endpoints.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
    };
    write(&format!("# b's replicas\n{}", lines(&[&replicas[0], &replicas[1], &replicas[2]])));
    let services = format!("b:\n  versions:\n    v1: [{{file: '{}'}}]\n", file.display());
    let a = agent(&agent_yaml("shop/a/v1", "127.0.0.1:9".parse().unwrap(), &services, "", None)).await;
    shift(&a, "b", [&replicas[0], &replicas[1]], &replicas[2], &replicas[3], || {
        write(&lines(&[&replicas[0], &replicas[1], &replicas[3]]))
    })
    .await;

    // A bad line: refused, counted, and the last endpoints keep serving.
    write(&format!("{}\nnot an endpoint\n", replicas[0].addr));
    eventually("the bad file is counted", 10, || async { (a.counters.discovery_errors.get() == 1).then_some(()) })
        .await;
    let before = replicas[3].hits();
    let app = App::via(&a);
    for _ in 0..30 {
        assert_eq!(app.get("b", "/ok").await.0, 200);
    }
    assert!(replicas[3].hits() > before, "the last good list still serves");

    // The same file as `kubectl get endpointslices -o yaml` writes it: the ready endpoints serve,
    // a terminating one does not (there are ready ones).
    let slice = |b: &Backend, ready: bool| {
        format!(
            "- apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  metadata: {{name: b-{port}, labels: {{kubernetes.io/service-name: b}}}}\n  \
             addressType: IPv4\n  ports: [{{name: http, protocol: TCP, port: {port}}}]\n  \
             endpoints: [{{addresses: ['{ip}'], conditions: {{ready: {ready}, serving: true, terminating: {t}}}}}]\n",
            port = b.addr.port(),
            ip = b.addr.ip(),
            t = !ready
        )
    };
    let list = format!(
        "apiVersion: v1\nkind: List\nitems:\n{}{}{}",
        slice(&replicas[0], true),
        slice(&replicas[1], true),
        slice(&replicas[3], false)
    );
    write(&list);
    let updates = a.counters.discovery_updates.get();
    eventually("the slices are read", 10, || async { (a.counters.discovery_updates.get() > updates).then_some(()) })
        .await;
    let (b0, b1, b3) = (replicas[0].hits(), replicas[1].hits(), replicas[3].hits());
    for _ in 0..40 {
        assert_eq!(app.get("b", "/ok").await.0, 200);
    }
    assert!(replicas[0].hits() > b0 && replicas[1].hits() > b1, "the ready endpoints serve");
    assert_eq!(replicas[3].hits(), b3, "the terminating endpoint gets nothing while others are ready");
}

/// A reload that turns a version's static list into a discovery source applies once the source has
/// answered: no request in between finds the version empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_to_a_discovery_source_waits_for_its_first_answer() {
    let (old, new) = (Backend::start().await, Backend::start().await);
    let dir = tempfile::tempdir().unwrap();
    let (config, endpoints) = (dir.path().join("agent.yaml"), dir.path().join("endpoints"));
    std::fs::write(&endpoints, format!("{}\n", new.addr)).unwrap();
    let yaml = |v1: &str| {
        agent_yaml("shop/a/v1", "127.0.0.1:9".parse().unwrap(), &format!("b:\n  versions:\n    v1: [{v1}]\n"), "", None)
    };
    std::fs::write(&config, yaml(&format!("'{}'", old.addr))).unwrap();
    let parsed = meshlens_agent::AgentConfig::parse(&std::fs::read_to_string(&config).unwrap(), "t").unwrap();
    let options = meshlens_agent::Options { watch: Some(config.clone()), reload_every: Duration::from_millis(50) };
    let a = meshlens_agent::start(parsed, options).await.unwrap();
    let load = Load::start(&a, "b");
    hits_reach("the static endpoint serves", &old, 10).await;
    let tmp = dir.path().join("agent.yaml.new");
    std::fs::write(&tmp, yaml(&format!("{{file: '{}'}}", endpoints.display()))).unwrap();
    std::fs::rename(&tmp, &config).unwrap();
    hits_reach("the file's endpoint serves after the reload", &new, 20).await;
    let old_then = old.hits();
    hits_reach("and keeps serving", &new, new.hits() + 50).await;
    let (sent, failed) = load.stop().await;
    assert_eq!(failed, 0, "of {sent} requests");
    assert_eq!(old.hits(), old_then, "the static endpoint is gone with the reload");
    assert_eq!(a.counters.reloads.get(), 1);
}

/// A stand-in for the Kubernetes API's EndpointSlice list and watch (what `kubectl proxy` serves
/// on loopback; no cluster runs here): a list of the slices held, then a watch stream of the
/// events the test sends.
struct FakeApi {
    addr: SocketAddr,
    /// What a list answers with.
    slices: Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    events: tokio::sync::mpsc::UnboundedSender<serde_json::Value>,
    watches: Arc<AtomicU64>,
}

fn slice(name: &str, b: &Backend, ready: bool) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "shop", "resourceVersion": "2",
                     "labels": {"kubernetes.io/service-name": "b"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": b.addr.port()}],
        "endpoints": [{"addresses": [b.addr.ip().to_string()],
                       "conditions": {"ready": ready, "serving": true, "terminating": !ready}}]
    })
}

impl FakeApi {
    async fn start(initial: Vec<serde_json::Value>) -> FakeApi {
        use http_body_util::{BodyExt, Full, StreamBody};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let slices = Arc::new(std::sync::Mutex::new(initial));
        let (events, rx) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let watches = Arc::new(AtomicU64::new(0));
        let (s, w) = (slices.clone(), watches.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (s, w, rx) = (s.clone(), w.clone(), rx.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (s, w, rx) = (s.clone(), w.clone(), rx.clone());
                        async move {
                            let q = req.uri().query().unwrap_or("").to_owned();
                            let path = req.uri().path().to_owned();
                            let wanted = path == "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices"
                                && q.contains("labelSelector=kubernetes.io%2Fservice-name%3Db");
                            let body = if !wanted {
                                Full::new(bytes::Bytes::from("not found")).map_err(|e| match e {}).boxed()
                            } else if q.contains("watch=1") {
                                w.fetch_add(1, Ordering::SeqCst);
                                let stream = futures_util::stream::unfold(rx, |rx| async move {
                                    let ev = rx.lock().await.recv().await?;
                                    let line = bytes::Bytes::from(format!("{ev}\n"));
                                    Some((Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(line)), rx))
                                });
                                StreamBody::new(stream).boxed()
                            } else {
                                let items = s.lock().unwrap().clone();
                                let list = serde_json::json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList",
                                    "metadata": {"resourceVersion": "1"}, "items": items});
                                Full::new(bytes::Bytes::from(list.to_string())).map_err(|e| match e {}).boxed()
                            };
                            let mut resp = hyper::Response::new(body);
                            if !wanted {
                                *resp.status_mut() = hyper::StatusCode::NOT_FOUND;
                            }
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeApi { addr, slices, events, watches }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpointslices_watched_through_the_api_move_traffic_as_pods_come_and_go() {
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(Backend::start().await);
    }
    let api = FakeApi::start(vec![slice("b-0", &replicas[0], true), slice("b-1", &replicas[1], true)]).await;
    let services = "b:\n  versions:\n    v1: [{kubernetes: {service: b, namespace: shop, port: http}}]\n";
    let mut yaml = agent_yaml("shop/a/v1", "127.0.0.1:9".parse().unwrap(), services, "", None);
    yaml.push_str(&format!("discovery: {{kubernetes: {{api: 'http://{}'}}}}\n", api.addr));
    let a = agent(&yaml).await;
    let events = api.events.clone();
    let (r0, r2) = (slice("b-0", &replicas[0], false), slice("b-2", &replicas[2], true));
    eventually("the watch is open", 10, || async { (api.watches.load(Ordering::SeqCst) > 0).then_some(()) }).await;
    assert_eq!(api.slices.lock().unwrap().len(), 2);
    // A new Pod's slice is added and the first Pod starts terminating (ready false, serving): the
    // first gets nothing new, the new one its share (the kept one counted twice: shift takes two).
    shift(&a, "b", [&replicas[1], &replicas[1]], &replicas[0], &replicas[2], || {
        events.send(serde_json::json!({"type": "ADDED", "object": r2})).unwrap();
        events.send(serde_json::json!({"type": "MODIFIED", "object": r0})).unwrap();
    })
    .await;
    assert_eq!(a.counters.discovery_errors.get(), 0);
}
