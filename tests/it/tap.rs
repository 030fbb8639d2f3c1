//! Live taps through real agents and the real binary: `meshlens tap` shows the requests sent (count,
//! statuses, callers, direction), within its sampling bound (`--max-rps`), filtered by `--find`;
//! it stops on `--max` and on `q`, and a closed tap stops the agents' sending. `meshlens top`
//! aggregates the same stream by path.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::backend::Hop;
use crate::cli::meshlens;
use crate::support::{eventually, get_json};

/// Starts `meshlens ARGS` and waits until it says on stderr that `agents` agents are tapping.
async fn tap(args: &[&str], agents: usize) -> (Child, tokio::process::ChildStdout) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshlens"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let want = format!("{agents} of {agents} agents tapping");
    let said = tokio::time::timeout(Duration::from_secs(20), async {
        let mut all = String::new();
        while let Some(line) = stderr.next_line().await.unwrap() {
            all.push_str(&line);
            all.push('\n');
            if line.contains(&want) {
                return all;
            }
        }
        panic!("tap ended before it was live: {all}");
    })
    .await
    .unwrap_or_else(|_| panic!("{args:?}: not live in 20s"));
    assert!(said.contains(&want), "{said}");
    // Keep draining stderr so the child never blocks on it.
    tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
    (child, stdout)
}

async fn lines(stdout: tokio::process::ChildStdout, n: usize) -> Vec<String> {
    let mut r = BufReader::new(stdout).lines();
    let mut out = Vec::new();
    while let Some(l) = r.next_line().await.unwrap() {
        out.push(l);
        if out.len() == n {
            break;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tap_shows_the_requests_sent_within_its_bound_and_stops_on_max_and_q() {
    let c = crate::support::collector().await;
    let api = c.api_url();
    let policy = "b:\n  retries: {attempts: 1, retry_on: [5xx], backoff: {base: 1ms, max: 1ms}, budget: {ratio: 1.0, min_per_second: 100}}";
    let hop = Hop::start(&c, policy).await;
    let (b, app) = (&hop.b, &hop.app);

    // 1. b's inbound side, every request: 8 OK and 4 failing (each failure retried once by a, so b
    // sees 8 + 4·2 = 16), then --max stops it.
    let (mut child, stdout) = tap(&["tap", "b", "--collector", &api, "-o", "json", "--max", "16"], 1).await;
    for i in 0..12 {
        let path = if i % 3 == 2 { "/status/500" } else { "/ok" };
        app.get("b", path).await;
    }
    let got: Vec<Value> = lines(stdout, 16).await.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "--max 16 ends the tap: {status}");
    assert_eq!(got.len(), 16);
    for e in &got {
        assert_eq!((e["direction"].as_str(), e["source"].as_str()), (Some("inbound"), Some("shop/a/v1")), "{e}");
        assert_eq!(e["destination"], "shop/b/v1");
        assert_eq!(e["method"], "GET");
        assert_eq!(e["trace_id"].as_str().unwrap().len(), 32);
    }
    let failed = got.iter().filter(|e| e["status"] == 500).count();
    let ok = got.iter().filter(|e| e["status"] == 200 && e["path"] == "/ok").count();
    assert_eq!((ok, failed), (8, 8), "{got:#?}");

    // 2. a's outbound side, only what fails: the retries and the trace id of each; the trace opens.
    let (mut child, stdout) =
        tap(&["tap", "shop/a", "--collector", &api, "--find", "status >= 500", "--max", "2"], 1).await;
    for path in ["/ok", "/status/503", "/ok", "/status/500", "/ok"] {
        app.get("b", path).await;
    }
    let got = lines(stdout, 2).await;
    assert!(tokio::time::timeout(Duration::from_secs(10), child.wait()).await.unwrap().unwrap().success());
    assert_eq!(got.len(), 2, "{got:?}");
    for (line, code) in got.iter().zip(["503", "500"]) {
        for want in [
            " out ",
            "src=shop/a/v1",
            "dst=b/v1",
            ":method=GET",
            &format!(":path=/status/{code}"),
            &format!(":status={code}"),
            "retries=1",
            "route=\"[default]\"",
        ] {
            assert!(line.contains(want), "{want:?} in {line}");
        }
    }
    let trace = got[0].split("trace=").nth(1).unwrap().split_whitespace().next().unwrap().to_owned();
    let trace_url = format!("{api}/api/v1/traces/{trace}");
    let body: Value = eventually("the tapped request's trace", 20, || async {
        let (s, body) = get_json(&trace_url).await;
        (s == 200 && body["spans"].as_array().is_some_and(|s| s.len() >= 3)).then_some(body)
    })
    .await;
    assert!(body["spans"].as_array().unwrap().iter().any(|s| s["http_status"] == 503), "{body:#}");

    // 3. The bound: at most 5 a second from the agent, whatever is sent; stopped by `q`.
    let (mut child, stdout) = tap(&["tap", "b", "--collector", &api, "-o", "json", "--max-rps", "5"], 1).await;
    let reader = tokio::spawn(async move {
        let mut r = BufReader::new(stdout).lines();
        let mut out = Vec::new();
        while let Ok(Some(l)) = r.next_line().await {
            out.push(serde_json::from_str::<Value>(&l).unwrap());
        }
        out
    });
    let sent = 60;
    let start = std::time::Instant::now();
    for _ in 0..sent {
        app.get("b", "/ok").await;
    }
    let secs = start.elapsed().as_secs() + 2;
    // Once the agents' last batches (every 100 ms) have reached the collector, press q.
    eventually("the tapped requests delivered", 10, || async {
        let m = reqwest::get(format!("{api}/metrics")).await.ok()?.text().await.ok()?;
        let got = crate::support::prom_value(&m, "meshlens_collector_tap_events_total")?;
        let queued = hop.a.counters.tap_events_queued.get() + b.counters.tap_events_queued.get();
        (got >= queued as f64).then_some(())
    })
    .await;
    child.stdin.as_mut().unwrap().write_all(b"q").await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "q ends the tap: {status}");
    let got = reader.await.unwrap();
    let mut per_second = std::collections::BTreeMap::<u64, u64>::new();
    for e in &got {
        *per_second.entry(e["time_unix_ms"].as_u64().unwrap() / 1000).or_default() += 1;
    }
    assert!(per_second.values().all(|&n| n <= 5), "{per_second:?}");
    assert!(per_second.values().any(|&n| n == 5), "a second with {sent} requests in ≤{secs}s shows 5: {per_second:?}");
    assert!(got.len() as u64 <= 5 * secs, "{} events for {sent} requests in {secs}s", got.len());

    // 4. Closed: the agents stop queueing (their interest is withdrawn at once).
    let queued = eventually("b's agent to stop tapping", 10, || async {
        let before = b.counters.tap_events_queued.get();
        app.get("b", "/ok").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        (b.counters.tap_events_queued.get() == before).then_some(before)
    })
    .await;
    for _ in 0..5 {
        app.get("b", "/ok").await;
    }
    assert_eq!(b.counters.tap_events_queued.get(), queued);
    let m = reqwest::get(format!("{api}/metrics")).await.unwrap().text().await.unwrap();
    assert!(m.contains("meshlens_collector_tap_events_total"), "{m}");

    // 5. Bad input names what is wrong.
    let out = meshlens(&["tap", "b", "--collector", &api, "--find", "rps > 3"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("parameter find") && err.contains("unknown field \"rps\""), "{err}");
    let (s, body) = get_json(&format!("{api}/api/v1/tap?target=b&max_rps=500")).await;
    assert_eq!(s, 400);
    assert!(body["error"]["message"].as_str().unwrap().contains("max_rps"), "{body}");
    let (s, _) = get_json(&format!("{api}/api/v1/tap")).await;
    assert_eq!(s, 400);

    hop.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_counts_requests_by_path() {
    let c = crate::support::collector().await;
    let api = c.api_url();
    let hop = Hop::start(&c, "").await;
    let app = &hop.app;
    let (child, stdout) = tap(&["top", "b", "--collector", &api, "--max", "10"], 1).await;
    for path in ["/ok", "/ok", "/ok", "/ok", "/ok", "/ok", "/status/500", "/status/500", "/status/404", "/ok"] {
        app.get("b", path).await;
    }
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output()).await.unwrap().unwrap();
    assert!(out.status.success());
    let mut text = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut { stdout }, &mut text).await.unwrap();
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0], ["SOURCE", "DESTINATION", "METHOD", "PATH", "COUNT", "BEST", "WORST", "LAST", "SUCCESS_RATE"]);
    let row = |path: &str| rows.iter().find(|r| r.get(3) == Some(&path)).unwrap_or_else(|| panic!("{path}: {text}"));
    assert_eq!(
        (row("/ok")[0], row("/ok")[1], row("/ok")[4], row("/ok")[8]),
        ("shop/a/v1", "shop/b/v1", "7", "100.00%")
    );
    assert_eq!((row("/status/500")[4], row("/status/500")[8]), ("2", "0.00%"));
    // A 404 is not a failure, as in linkerd's success rate.
    assert_eq!(row("/status/404")[8], "100.00%");
    assert_eq!(rows.len(), 4, "{text}");
    hop.shutdown().await;
}
