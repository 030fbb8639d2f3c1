//! The real `meshlens console` binary in tmux against a running collector: it draws the graph,
//! answers keys, survives a collector restart, and quits on `q`.

use std::process::Command;

use meshlens_collector::CollectorConfig;

use crate::support::*;

struct Tmux {
    bin: std::path::PathBuf,
    session: String,
}

impl Tmux {
    /// Runs tmux on this session's own server (`-L`): tests run side by side, and a server shared
    /// between them exits under one test when the other's last session ends.
    fn run(&self, args: &[&str]) -> String {
        let o = Command::new(&self.bin).arg("-L").arg(&self.session).args(args).output().unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", &self.session])
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", &self.session];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    /// Waits for `what` on the screen; on a timeout the panic shows the last screen drawn.
    async fn wait_for(&self, what: &str, secs: u64) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let s = self.screen();
            if s.contains(what) {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out after {secs}s waiting for {what:?} on the console; it shows:\n{s}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    fn alive(&self) -> bool {
        Command::new(&self.bin)
            .arg("-L")
            .arg(&self.session)
            .args(["has-session", "-t", &self.session])
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new(&self.bin)
            .arg("-L")
            .arg(&self.session)
            .args(["kill-server"])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_draws_the_graph_answers_keys_and_reconnects() {
    let bin = tool("MESHLENS_TMUX", "/usr/bin/tmux", "tmux");
    let c = collector().await;
    let http = c.http_addr;
    grpc_traces(&c, pairs(1, ("productpage", "v1"), ("reviews", "v2"), 20, 200, 5)).await.unwrap();
    wait_edge(&c, "", "default/productpage/v1", "default/reviews/v2", 20).await;

    let t = Tmux { bin, session: format!("meshlens-console-{}", std::process::id()) };
    let cmd = format!("{} console --collector {}", env!("CARGO_BIN_EXE_meshlens"), c.api_url());
    t.run(&["new-session", "-d", "-s", &t.session, "-x", "100", "-y", "30", &cmd]);
    let screen = t.wait_for("reviews", 20).await;
    assert!(screen.contains("productpage") && screen.contains("● live"), "{screen}");

    t.keys(&["?"]);
    t.wait_for("Keys", 5).await;
    t.keys(&["Escape", "Tab"]);
    let table = t.wait_for("NAMESPACE", 5).await;
    assert!(table.contains("reviews") && table.contains("100.00%"), "{table}");
    t.keys(&["Tab"]);

    // The collector goes away and comes back on the same port: the console says so, then recovers.
    c.shutdown().await.unwrap();
    t.wait_for("reconnecting", 20).await;
    let c = collector_with(|cfg: &mut CollectorConfig| cfg.http = http).await;
    grpc_traces(&c, pairs(2, ("productpage", "v1"), ("ratings", "v1"), 5, 200, 5)).await.unwrap();
    let screen = t.wait_for("ratings", 30).await;
    assert!(screen.contains("● live"), "{screen}");

    t.keys(&["q"]);
    eventually("the console to exit", 10, || async { (!t.alive()).then_some(()) }).await;
}

/// Every box title drawn whole at two terminal sizes: the detail pane, open by default on a wide
/// terminal, never covers part of the graph. Box titles carry the namespace where two namespaces
/// have an app of the same name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn box_titles_are_whole_at_120x40_and_200x50() {
    let bin = tool("MESHLENS_TMUX", "/usr/bin/tmux", "tmux");
    let c = collector().await;
    let calls = [
        (("productpage", "v1"), ("details", "v1")),
        (("productpage", "v1"), ("reviews", "v1")),
        (("productpage", "v1"), ("reviews", "v2")),
        (("productpage", "v1"), ("reviews", "v3")),
        (("reviews", "v2"), ("ratings", "v1")),
        (("reviews", "v3"), ("ratings", "v1")),
    ];
    // As the demo shows it: users in front, every hop over mTLS (a 🔒 on each label), reviews-v3
    // failing a fifth of its requests.
    for (i, (a, b)) in calls.iter().enumerate() {
        let mut req = pairs(10 + i as u64, *a, *b, 20, 200, 3);
        for (k, s) in req
            .resource_spans
            .iter_mut()
            .flat_map(|r| r.scope_spans.iter_mut().flat_map(|s| s.spans.iter_mut()))
            .enumerate()
        {
            s.attributes.push(kv_bool("meshlens.mtls", true));
            if b.1 == "v3" && k % 5 == 0 {
                s.attributes.retain(|a| a.key != "http.response.status_code");
                s.attributes.push(kv_int("http.response.status_code", 503));
            }
        }
        grpc_traces(&c, req).await.unwrap();
    }
    let roots: Vec<_> = (0..20u64)
        .map(|i| {
            span(SpanKind::Server, 99, 5000 + i, None, 1, 30_000, vec![kv_int("http.response.status_code", 200)], false)
        })
        .collect();
    grpc_traces(&c, traces(vec![(resource("", "productpage", "v1"), roots)])).await.unwrap();
    wait_edge(&c, "", "default/reviews/v3", "default/ratings/v1", 20).await;
    wait_edge(&c, "", "user", "default/productpage/v1", 20).await;
    let cmd = format!("{} console --collector {}", env!("CARGO_BIN_EXE_meshlens"), c.api_url());
    for (w, h) in [(120, 40), (200, 50)] {
        let t = Tmux { bin: bin.clone(), session: format!("meshlens-titles-{}-{w}", std::process::id()) };
        t.run(&["new-session", "-d", "-s", &t.session, "-x", &w.to_string(), "-y", &h.to_string(), &cmd]);
        let screen = t.wait_for("ratings", 20).await;
        for title in ["productpage", "details", "reviews", "ratings"] {
            let line = screen
                .lines()
                .find(|l| l.contains(&format!("┌{title}")))
                .unwrap_or_else(|| panic!("{w}x{h}: the title {title} is not drawn whole:\n{screen}"));
            let after = &line[line.find(&format!("┌{title}")).unwrap()..];
            assert!(after.contains('┐'), "{w}x{h}: the box of {title} is cut:\n{screen}");
        }
        t.keys(&["q"]);
    }
}

/// The detail pane of the selected workload lists the requests behind it (exemplars), failed and slowest, by the id
/// `meshlens trace` opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_detail_pane_lists_the_selected_workloads_failed_and_slow_traces() {
    let bin = tool("MESHLENS_TMUX", "/usr/bin/tmux", "tmux");
    let c = collector().await;
    grpc_traces(&c, pairs(3, ("productpage", "v1"), ("reviews", "v2"), 4, 503, 5)).await.unwrap();
    wait_edge(&c, "", "default/productpage/v1", "default/reviews/v2", 4).await;
    let (_, kept) = crate::support::get_json(&format!(
        "{}/api/v1/traces?from=default/productpage/v1&to=default/reviews/v2&failed=true",
        c.api_url()
    ))
    .await;
    let id = kept["traces"][0]["trace_id"].as_str().expect("a failed trace kept").to_owned();

    let t = Tmux { bin, session: format!("meshlens-console-traces-{}", std::process::id()) };
    let cmd = format!("{} console --collector {}", env!("CARGO_BIN_EXE_meshlens"), c.api_url());
    t.run(&["new-session", "-d", "-s", &t.session, "-x", "200", "-y", "50", &cmd]);
    let screen = t.wait_for("traces (meshlens trace ID)", 20).await;
    assert!(screen.contains(&format!("failed {id}")), "{screen}");
    assert!(screen.contains("slow   "), "{screen}");
    t.keys(&["q"]);
    eventually("the console to exit", 10, || async { (!t.alive()).then_some(()) }).await;
}

/// `t` on the selected node opens a tap on it: the requests its agent sees, live, with caller,
/// path, status and latency; `t` again closes it and the agent stops sampling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t_opens_a_tap_on_the_selected_workload() {
    let bin = tool("MESHLENS_TMUX", "/usr/bin/tmux", "tmux");
    let c = collector().await;
    let hop = crate::backend::Hop::start(&c, "").await;
    for _ in 0..3 {
        assert_eq!(hop.app.get("b", "/ok").await.0, 200);
    }
    wait_edge(&c, "", "shop/a/v1", "shop/b/v1", 3).await;

    let t = Tmux { bin, session: format!("meshlens-console-tap-{}", std::process::id()) };
    let cmd = format!("{} console --collector {}", env!("CARGO_BIN_EXE_meshlens"), c.api_url());
    t.run(&["new-session", "-d", "-s", &t.session, "-x", "160", "-y", "40", &cmd]);
    t.wait_for("● live", 20).await;
    // The first column's box (a) is selected; right goes to its callee, b.
    t.keys(&["Right", "t"]);
    t.wait_for("Tap shop/b/v1", 10).await;
    let mut n = 0;
    let screen = eventually("tapped requests on the console", 20, || {
        n += 1;
        let (app, t) = (&hop.app, &t);
        async move {
            assert_eq!(app.get("b", &format!("/ok/tapped-{n}")).await.0, 200);
            let s = t.screen();
            (s.contains("/ok/tapped-") && s.contains("1 of 1 agents tapping")).then_some(s)
        }
    })
    .await;
    let row = screen.lines().find(|l| l.contains("/ok/tapped-")).unwrap();
    assert!(row.contains(" in ") && row.contains("shop/a/v1") && row.contains("GET") && row.contains("200"), "{row}");

    t.keys(&["t"]);
    eventually("the tap overlay to close", 10, || async { (!t.screen().contains("Tap shop/b/v1")).then_some(()) })
        .await;
    let queued = eventually("b's agent to stop sampling", 20, || async {
        let before = hop.b.counters.tap_events_queued.get();
        assert_eq!(hop.app.get("b", "/ok").await.0, 200);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        (hop.b.counters.tap_events_queued.get() == before).then_some(before)
    })
    .await;
    for _ in 0..5 {
        assert_eq!(hop.app.get("b", "/ok").await.0, 200);
    }
    assert_eq!(hop.b.counters.tap_events_queued.get(), queued);
    t.keys(&["q"]);
    eventually("the console to exit", 10, || async { (!t.alive()).then_some(()) }).await;
    hop.shutdown().await;
}

/// The detail pane of a service's workload lists its routes, as `meshlens routes` counts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_detail_pane_lists_the_selected_services_routes() {
    let bin = tool("MESHLENS_TMUX", "/usr/bin/tmux", "tmux");
    let c = collector().await;
    let policy = "b:\n  routes:\n    - matches: [{method: GET, path: {type: Template, value: '/status/{code}'}}]";
    let hop = crate::backend::Hop::start(&c, policy).await;
    for path in ["/status/200", "/status/200", "/status/200", "/status/200", "/status/503", "/ok", "/ok"] {
        hop.app.get("b", path).await;
    }
    let api = c.api_url();
    eventually("the routes counted", 20, || async {
        let (_, body) = crate::support::get_json(&format!("{api}/api/v1/routes?service=b&window=1m")).await;
        let total: u64 = body["routes"].as_array()?.iter().map(|r| r["stats"]["requests"].as_u64().unwrap_or(0)).sum();
        (total == 7).then_some(())
    })
    .await;

    let t = Tmux { bin, session: format!("meshlens-console-routes-{}", std::process::id()) };
    let cmd = format!("{} console --collector {api}", env!("CARGO_BIN_EXE_meshlens"));
    t.run(&["new-session", "-d", "-s", &t.session, "-x", "200", "-y", "50", &cmd]);
    t.wait_for("● live", 20).await;
    t.keys(&["Right"]);
    let screen = t.wait_for("routes (meshlens routes)", 20).await;
    let line = |what: &str| screen.lines().find(|l| l.contains(what)).unwrap_or_else(|| panic!("{what}:\n{screen}"));
    assert!(line("GET /status/{code}").contains("80.00%"), "{screen}");
    assert!(line("[default]").contains("100.00%"), "{screen}");
    t.keys(&["q"]);
    eventually("the console to exit", 10, || async { (!t.alive()).then_some(()) }).await;
    hop.shutdown().await;
}
