//! `update` on plain state: navigation, views, windows, revisions, the table, the link.

use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use meshlens_model::graph::{RevisionSummary, TopologyChanges, View};

use super::*;
use crate::fixture::{bookinfo, workloads};
use meshlens_model::api::Column;

fn loaded() -> App {
    let mut app = App::new("http://127.0.0.1:7420");
    app.viewport = (200, 50);
    assert_eq!(
        app.update(Action::Graph { generation: 0, graph: Box::new(bookinfo()) })
            .map(|c| matches!(c, Command::Detail { .. })),
        None
    );
    app.update(Action::Workloads(Box::new(workloads())));
    app
}

#[test]
fn starts_on_the_first_caller_and_walks_the_graph() {
    let mut app = loaded();
    assert_eq!(app.state.selected.as_deref(), Some("user"));
    let cmd = app.update(Action::Move(Dir::Right));
    assert_eq!(app.state.selected.as_deref(), Some("bookinfo/productpage/v1"));
    assert_eq!(
        cmd,
        Some(Command::Detail {
            namespace: "bookinfo".into(),
            app: "productpage".into(),
            window: "1m".into(),
            workload: "bookinfo/productpage/v1".into()
        })
    );
    app.update(Action::Move(Dir::Right));
    assert_eq!(app.state.selected.as_deref(), Some("bookinfo/details/v1"), "the nearest callee");
    app.update(Action::Move(Dir::Down));
    assert_eq!(app.state.selected.as_deref(), Some("bookinfo/reviews/v1"));
    app.update(Action::Move(Dir::Down));
    app.update(Action::Move(Dir::Down));
    assert_eq!(app.state.selected.as_deref(), Some("bookinfo/reviews/v3"));
    app.update(Action::Move(Dir::Down));
    assert_eq!(app.state.selected.as_deref(), Some("bookinfo/reviews/v3"), "stays at the bottom");
    app.update(Action::Move(Dir::Right));
    assert_eq!(app.state.selected.as_deref(), Some("bookinfo/ratings/v1"));
    app.update(Action::Move(Dir::Left));
    assert!(app.state.selected.as_deref().unwrap().starts_with("bookinfo/reviews/v"));
}

#[test]
fn edges_of_the_selection_can_be_picked() {
    let mut app = loaded();
    app.update(Action::Move(Dir::Right));
    assert_eq!(app.outbound_edges().len(), 4);
    app.update(Action::NextEdge);
    assert_eq!(app.graph.edges[app.selected_edge_index().unwrap()].target, "bookinfo/details/v1");
    for _ in 0..4 {
        app.update(Action::NextEdge);
    }
    assert_eq!(app.selected_edge, None, "after the last edge, the node again");
    app.update(Action::NextEdge);
    app.update(Action::Escape);
    assert_eq!(app.selected_edge, None);
}

#[test]
fn a_namespace_collapses_and_expands() {
    let mut app = loaded();
    app.update(Action::Move(Dir::Right));
    let refresh = |generation, collapse: &[&str], view| Command::Refresh {
        generation,
        view,
        window: "1m".into(),
        at: None,
        collapse: collapse.iter().map(|c| c.to_string()).collect(),
    };
    assert_eq!(app.update(Action::Collapse), Some(refresh(1, &["bookinfo"], View::Versioned)));
    assert_eq!(app.state.selected.as_deref(), Some("ns:bookinfo"), "the collapsed namespace stays selected");
    // The collector answers with the namespace as one node; `c` on it expands it again.
    let mut g = bookinfo();
    let mut ns = g.nodes.iter().find(|n| n.namespace == "bookinfo").unwrap().clone();
    (ns.id, ns.app, ns.version, ns.group, ns.kind) =
        ("ns:bookinfo".into(), "bookinfo".into(), None, None, meshlens_model::NodeKind::Namespace);
    g.nodes.retain(|n| n.namespace != "bookinfo");
    g.nodes.push(ns);
    g.edges = vec![meshlens_model::Edge {
        id: "user->ns:bookinfo".into(),
        target: "ns:bookinfo".into(),
        ..g.edges[0].clone()
    }];
    app.update(Action::Graph { generation: 0, graph: Box::new(g) });
    assert_eq!(app.state.selected.as_deref(), Some("ns:bookinfo"));
    assert_eq!(app.update(Action::Collapse), Some(refresh(2, &[], View::Versioned)));
    assert_eq!(app.update(Action::ToggleNamespaces), Some(refresh(3, &[], View::Namespace)));
    let key = |c: KeyCode| KeyEvent::new(c, KeyModifiers::NONE);
    assert_eq!(key_action(key(KeyCode::Char('c')), &app), Some(Action::Collapse));
    assert_eq!(key_action(key(KeyCode::Char('n')), &app), Some(Action::ToggleNamespaces));
}

#[test]
fn focus_keeps_the_neighbourhood() {
    let mut app = loaded();
    app.update(Action::Move(Dir::Right));
    app.update(Action::Move(Dir::Right));
    app.update(Action::Move(Dir::Down));
    app.update(Action::Move(Dir::Down));
    assert_eq!(app.state.selected.as_deref(), Some("bookinfo/reviews/v2"));
    app.update(Action::ToggleFocus);
    let ids: Vec<&str> = app.graph.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, ["bookinfo/productpage/v1", "bookinfo/ratings/v1", "bookinfo/reviews/v2"]);
    app.update(Action::Escape);
    assert_eq!(app.graph.nodes.len(), 7);
}

/// Fetches run side by side: the answer to an older refresh (a window since left) arriving after a
/// newer one's is dropped, not drawn over it.
#[test]
fn an_older_fetchs_answer_does_not_overwrite_a_newer_one() {
    let mut app = loaded();
    let Some(Command::Refresh { generation: older, .. }) = app.update(Action::CycleWindow) else { panic!() };
    let Some(Command::Refresh { generation: newer, window, .. }) = app.update(Action::CycleWindow) else { panic!() };
    assert_eq!(window, "15m");
    let graph = |secs| {
        let mut g = bookinfo();
        g.window_seconds = secs;
        Box::new(g)
    };
    app.update(Action::Graph { generation: newer, graph: graph(900) });
    app.update(Action::Graph { generation: older, graph: graph(300) });
    assert_eq!(app.full_graph.window_seconds, 900, "the 5m answer came last and was dropped");
    let Some(Command::Refresh { generation: next, .. }) = app.update(Action::Published(9)) else { panic!() };
    app.update(Action::Graph { generation: next, graph: graph(901) });
    assert_eq!(app.full_graph.window_seconds, 901, "a newer one is drawn");
}

#[test]
fn view_and_window_changes_ask_for_a_refresh() {
    let mut app = loaded();
    assert_eq!(
        app.update(Action::ToggleView),
        Some(Command::Refresh { generation: 1, view: View::App, window: "1m".into(), at: None, collapse: vec![] })
    );
    assert_eq!(
        app.update(Action::CycleWindow),
        Some(Command::Refresh { generation: 2, view: View::App, window: "5m".into(), at: None, collapse: vec![] })
    );
    for _ in 0..3 {
        app.update(Action::CycleWindow);
    }
    assert_eq!(app.state.window, "30s", "wraps around");
}

#[test]
fn an_older_revision_can_be_shown_and_left() {
    let mut app = loaded();
    assert_eq!(app.update(Action::OpenRevisions), Some(Command::Revisions));
    let rev =
        |r: u64| RevisionSummary { revision: r, generated_at: String::new(), changes: TopologyChanges::default() };
    app.update(Action::Revisions(vec![rev(40), rev(41), rev(42)]));
    assert_eq!(app.revisions[0].revision, 42, "newest first");
    app.update(Action::Move(Dir::Down));
    assert_eq!(
        app.update(Action::PickRevision),
        Some(Command::Refresh {
            generation: 1,
            view: View::Versioned,
            window: "1m".into(),
            at: Some(41),
            collapse: vec![]
        })
    );
    assert_eq!(app.overlay, Overlay::None);
    assert_eq!(app.update(Action::Published(43)), None, "pinned: live updates do not move it");
    assert_eq!(
        app.update(Action::Live),
        Some(Command::Refresh {
            generation: 2,
            view: View::Versioned,
            window: "1m".into(),
            at: None,
            collapse: vec![]
        })
    );
    assert!(app.update(Action::Published(44)).is_some());
}

#[test]
fn the_table_sorts_and_filters() {
    let mut app = loaded();
    app.update(Action::SwitchScreen);
    let ids = |app: &App| app.rows().iter().map(|w| w.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&app)[0], "bookinfo/details/v1", "by rps, highest first (ties by id)");
    app.update(Action::SortBy(Column::Success));
    assert_eq!(ids(&app)[0], "bookinfo/details/v1");
    app.update(Action::SortBy(Column::Success));
    assert_eq!(ids(&app)[0], "bookinfo/reviews/v3", "success, lowest first after reversing");
    app.update(Action::SortBy(Column::App));
    assert_eq!(ids(&app)[0], "bookinfo/details/v1");
    for c in "rev".chars() {
        app.update(Action::FilterChar(c));
    }
    assert_eq!(ids(&app).len(), 3);
    app.update(Action::FilterBackspace);
    assert_eq!(app.filter, "re");
    app.filter = "error > 1 or app = details".into();
    assert_eq!(ids(&app), ["bookinfo/details/v1", "bookinfo/reviews/v3"], "a find expression filters too");
}

#[test]
fn keys_map_to_actions_and_the_filter_takes_letters() {
    let key = |c: KeyCode| KeyEvent::new(c, KeyModifiers::NONE);
    let mut app = loaded();
    assert_eq!(key_action(key(KeyCode::Char('q')), &app), Some(Action::Quit));
    assert_eq!(key_action(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL), &app), Some(Action::Quit));
    assert_eq!(key_action(key(KeyCode::Char('3')), &app), Some(Action::SortBy(Column::Version)));
    app.update(Action::StartFilter);
    assert_eq!(key_action(key(KeyCode::Char('q')), &app), Some(Action::FilterChar('q')));
    assert_eq!(key_action(key(KeyCode::Enter), &app), Some(Action::FilterDone));
}

#[test]
fn the_link_state_and_staleness_follow_the_collector() {
    let mut app = loaded();
    let t0 = Instant::now();
    app.update(Action::Tick(t0));
    let fetch = |c: Option<Command>| matches!(c, Some(Command::Refresh { at: None, .. }));
    assert!(fetch(app.update(Action::Connection(Connection::Live))), "connected: fetch");
    app.update(Action::Connection(Connection::Down("refused".into())));
    app.update(Action::Tick(t0 + Duration::from_secs(7)));
    assert_eq!(app.staleness().map(|s| s.round()), Some(7.0));
    assert!(fetch(app.update(Action::Connection(Connection::Live))), "back: fetch again");
}

fn tapped(target: &str, path: &str) -> Action {
    Action::Tapped {
        target: target.into(),
        event: Box::new(TapEvent {
            direction: meshlens_model::tap::Direction::Inbound,
            source: "bookinfo/productpage/v1".into(),
            destination: target.into(),
            path: path.into(),
            status: 200,
            ..TapEvent::default()
        }),
    }
}

#[test]
fn t_taps_the_selected_workload_keeps_the_latest_and_closes() {
    let mut app = loaded();
    assert_eq!(app.update(Action::ToggleTap), None, "the outside (user) has no agent to tap");
    assert_eq!(app.overlay, Overlay::None);
    app.update(Action::Move(Dir::Right));
    let target = "bookinfo/productpage/v1";
    assert_eq!(app.update(Action::ToggleTap), Some(Command::Tap { target: target.into() }));
    assert_eq!(app.overlay, Overlay::Tap);
    for i in 0..TAP_ROWS + 5 {
        app.update(tapped(target, &format!("/{i}")));
    }
    app.update(tapped("bookinfo/details/v1", "/late"));
    let tap = app.tap.as_ref().unwrap();
    assert_eq!((tap.events.len(), tap.seen), (TAP_ROWS, TAP_ROWS as u64 + 5), "bounded; a closed tap's event dropped");
    assert_eq!(tap.events.front().unwrap().path, "/5");
    assert_eq!(tap.events.back().unwrap().path, format!("/{}", TAP_ROWS + 4));
    assert_eq!(key_action(KeyEvent::new(KeyCode::Char('t'), KeyModifiers::NONE), &app), Some(Action::ToggleTap));
    assert_eq!(app.update(Action::Escape), Some(Command::StopTap));
    assert!(app.tap.is_none());
    assert_eq!(app.overlay, Overlay::None);
    assert_eq!(app.update(Action::ToggleTap), Some(Command::Tap { target: target.into() }));
    assert_eq!(app.update(Action::ToggleTap), Some(Command::StopTap), "t again closes it");
}
