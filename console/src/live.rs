//! The collector task: follows the SSE stream (`/api/v1/stream`) and turns each published revision
//! into [`Action::Published`]; runs the UI's [`Command`]s (fetches) and sends their answers back as
//! actions; follows the one tap the UI may have open (`/api/v1/tap`) as [`Action::Tapped`]. When the
//! stream breaks it says so and reconnects with backoff, so the console survives
//! a collector restart.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::app::{Action, Command, Connection};
use crate::client::Client;

/// Runs until the UI hangs up.
pub(crate) async fn run(
    client: Client,
    mut commands: mpsc::UnboundedReceiver<Command>,
    actions: mpsc::UnboundedSender<Action>,
) {
    let stream = tokio::spawn(follow(client.base().to_owned(), client.token().map(str::to_owned), actions.clone()));
    let mut tap: Option<tokio::task::JoinHandle<()>> = None;
    while let Some(cmd) = commands.recv().await {
        match cmd {
            Command::Tap { target } => {
                if let Some(old) = tap.replace(tokio::spawn(follow_tap(client.clone(), target, actions.clone()))) {
                    old.abort();
                }
                continue;
            }
            Command::StopTap => {
                // Dropping the stream closes it; the collector then tells the agents to stop.
                if let Some(old) = tap.take() {
                    old.abort();
                }
                continue;
            }
            _ => {}
        }
        let client = client.clone();
        let actions = actions.clone();
        // Fetches run side by side; each answer is applied when it arrives.
        tokio::spawn(async move {
            let result = match cmd {
                Command::Refresh { generation, view, window, at, collapse } => {
                    let (g, w) =
                        tokio::join!(client.graph_at(view, &window, at, &collapse), client.workloads(&window, &[]));
                    if let Ok(w) = w {
                        let _ = actions.send(Action::Workloads(Box::new(w)));
                    }
                    g.map(|g| Action::Graph { generation, graph: Box::new(g) })
                }
                Command::Tap { .. } | Command::StopTap => return,
                Command::Revisions => client.revisions(200).await.map(|r| Action::Revisions(r.revisions)),
                Command::Detail { namespace, app, window, workload } => {
                    let service = format!("{namespace}/{app}");
                    let (d, exemplars, routes) = tokio::join!(
                        client.app(&namespace, &app, &window),
                        client.exemplars(&workload, 3),
                        client.routes(&service, None, &window),
                    );
                    // A service nobody has routed to yet has no routes to show.
                    if let Ok(r) = routes {
                        let _ = actions.send(Action::Routes(Box::new(r)));
                    }
                    // An older collector without exemplars leaves the list out.
                    if let Ok(e) = exemplars {
                        let _ = actions.send(Action::Traces { workload, exemplars: Box::new(e) });
                    }
                    d.map(|d| Action::Detail(Box::new(d)))
                }
            };
            match result {
                Ok(a) => {
                    let _ = actions.send(a);
                }
                Err(e) => {
                    let _ = actions.send(Action::Connection(Connection::Down(e.to_string())));
                }
            }
        });
    }
    stream.abort();
    if let Some(t) = tap {
        t.abort();
    }
}

/// Follows a tap until it ends or is aborted, then says why it ended.
async fn follow_tap(client: Client, target: String, actions: mpsc::UnboundedSender<Action>) {
    use crate::client::TapMessage;
    let why = match client.tap(&target, None, None).await {
        Ok(stream) => {
            let mut stream = std::pin::pin!(stream);
            loop {
                let action = match stream.next().await {
                    Some(Ok(TapMessage::Request(event))) => Action::Tapped { target: target.clone(), event },
                    Some(Ok(TapMessage::Status(status))) => Action::TapStatus { target: target.clone(), status },
                    Some(Err(e)) => break e.to_string(),
                    None => break "the collector closed the tap".to_owned(),
                };
                if actions.send(action).is_err() {
                    return;
                }
            }
        }
        Err(e) => e.to_string(),
    };
    let _ = actions.send(Action::TapEnded { target, why });
}

async fn follow(base: String, token: Option<String>, actions: mpsc::UnboundedSender<Action>) {
    // No overall timeout: the stream stays open; a silent connection is caught by the read timeout.
    let Ok(http) = Client::builder(token.as_deref()).read_timeout(Duration::from_secs(60)).build() else { return };
    let url = format!("{base}/api/v1/stream");
    let mut backoff = Duration::from_millis(250);
    loop {
        let why = match http.get(&url).send().await {
            Ok(resp) if resp.status().is_success() => {
                backoff = Duration::from_millis(250);
                if actions.send(Action::Connection(Connection::Live)).is_err() {
                    return;
                }
                // The revision is the event's SSE id; the graph itself is fetched for the console's own
                // settings, so the event's data is not decoded.
                let mut events = eventsource_stream::Eventsource::eventsource(resp.bytes_stream());
                let mut failure = "the collector closed the stream".to_owned();
                while let Some(event) = events.next().await {
                    match event {
                        Ok(ev) if ev.event == "graph" => {
                            if actions.send(Action::Published(ev.id.parse().unwrap_or(0))).is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            failure = e.to_string();
                            break;
                        }
                    }
                }
                failure
            }
            Ok(resp) => format!("{url}: {}", resp.status()),
            Err(e) => format!("cannot reach {base}: {}", short(&e)),
        };
        if actions.send(Action::Connection(Connection::Down(why))).is_err() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

fn short(e: &reqwest::Error) -> String {
    if e.is_connect() { "connection refused".to_owned() } else { e.to_string() }
}
