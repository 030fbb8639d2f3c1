//! The meshlens web view: the versioned service graph in the browser (leptos, client-side rendering,
//! compiled to wasm32 and served by the collector). It talks to the collector's API only.
//!
//! The topology is SVG drawn from the shared layout (`meshlens_model::layout`), with app boxes,
//! health colours, switchable edge labels, a lock on mTLS edges, pan and zoom; a side panel shows
//! Kiali's tables for the clicked node or edge, its service's routes (linkerd viz routes' columns)
//! and the requests behind it (its exemplars: newest failed, slowest), each opening as a waterfall
//! when the collector keeps its trace, or linking to the user's Jaeger or Tempo; find/hide takes the expression language of
//! `meshlens_model::find`; live updates come from the SSE stream; a slider steps through revisions;
//! the URL holds the whole view (`meshlens_model::viewstate`). A large mesh opens as namespaces
//! (the collector's `namespace` view); a namespace expands into its apps and collapses back, and
//! focus keeps a node's k-hop neighbourhood. Every label is text, never markup, so names from span
//! data cannot run anything.

use futures_util::StreamExt;
use gloo_net::eventsource::futures::EventSource;
use gloo_net::http::Request;
use leptos::prelude::*;
use meshlens_model::api::{
    AppDetail, Column, Exemplar, ExemplarsBody, RoutesBody, TraceBody, WorkloadRow, WorkloadsBody,
};
use meshlens_model::find;
use meshlens_model::graph::{GraphSnapshot, Node, NodeKind, RevisionsBody, View};
use meshlens_model::layout::{self, Layout, layout};
use meshlens_model::viewstate::WINDOWS;
use meshlens_model::viewstate::format_pct as pct;
use meshlens_model::viewstate::{EdgeLabel, MAX_FOCUS_HOPS, Page, ViewState, format_ms};
use meshlens_model::{Health, Stats};
use wasm_bindgen::prelude::*;

/// Starts the app.
#[wasm_bindgen(start)]
pub fn start() {
    leptos::mount::mount_to_body(App);
}

fn health_color(h: Health) -> &'static str {
    match h {
        Health::Idle => "#6e7681",
        Health::Healthy => "#3fb950",
        Health::Degraded => "#d29922",
        Health::Failing => "#f85149",
    }
}

fn storage() -> Option<web_sys::Storage> {
    web_sys::window()?.local_storage().ok().flatten()
}

fn token() -> Option<String> {
    storage()?.get_item("meshlens-token").ok().flatten().filter(|t| !t.is_empty())
}

/// An API URL with the token, if one was given.
fn api(path_and_query: &str) -> String {
    match token() {
        Some(t) => {
            let sep = if path_and_query.contains('?') { '&' } else { '?' };
            format!("{path_and_query}{sep}token={}", meshlens_model::viewstate::encode(&t))
        }
        None => path_and_query.to_owned(),
    }
}

/// Why a fetch failed.
#[derive(Clone, Debug, PartialEq)]
enum Fail {
    /// The collector wants its token.
    Unauthorized,
    /// Anything else, said.
    Other(String),
}

async fn get<T: serde::de::DeserializeOwned>(path: &str) -> Result<T, Fail> {
    let resp = Request::get(&api(path)).send().await.map_err(|e| Fail::Other(e.to_string()))?;
    if resp.status() == 401 {
        return Err(Fail::Unauthorized);
    }
    if !resp.ok() {
        let text = resp.text().await.unwrap_or_default();
        let message =
            serde_json::from_str::<meshlens_model::api::ErrorBody>(&text).map(|b| b.error.message).unwrap_or(text);
        return Err(Fail::Other(format!("{path}: {} {message}", resp.status())));
    }
    resp.json::<T>().await.map_err(|e| Fail::Other(format!("{path}: {e}")))
}

fn set_url(state: &ViewState) {
    if let Some(w) = web_sys::window()
        && let Ok(h) = w.history()
    {
        let q = state.to_query();
        let url = if q.is_empty() { "/".to_owned() } else { format!("/?{q}") };
        let _ = h.replace_state_with_url(&JsValue::NULL, "", Some(&url));
    }
}

fn initial_search() -> String {
    web_sys::window().and_then(|w| w.location().search().ok()).unwrap_or_default()
}

fn initial_state() -> ViewState {
    ViewState::from_query(&initial_search())
}

/// A graph with more nodes than this, over more than one namespace, opens in the namespace view
/// (unless the URL names a view): beyond it the first view of every node is a wall of boxes.
const LARGE_MESH: usize = 120;

/// Whether `g` is a mesh to open as namespaces.
fn is_large(g: &GraphSnapshot) -> bool {
    let namespaces: std::collections::HashSet<&str> =
        g.nodes.iter().filter(|n| !n.namespace.is_empty()).map(|n| n.namespace.as_str()).collect();
    g.nodes.len() > LARGE_MESH && namespaces.len() > 1
}

/// The page.
#[component]
pub fn App() -> impl IntoView {
    let state = RwSignal::new(initial_state());
    let graph = RwSignal::new(None::<GraphSnapshot>);
    let workloads = RwSignal::new(Vec::<WorkloadRow>::new());
    let detail = RwSignal::new(None::<AppDetail>);
    let traces = RwSignal::new(None::<(String, ExemplarsBody)>);
    let routes = RwSignal::new(None::<(String, RoutesBody)>);
    let revisions = RwSignal::new(None::<RevisionsBody>);
    let error = RwSignal::new(None::<String>);
    let need_token = RwSignal::new(false);
    let live = RwSignal::new(false);
    let version = RwSignal::new(0u64);
    // Until the first graph arrives: whether a large one switches to the namespace view.
    let auto_namespaces = RwSignal::new(!initial_search().contains("view="));

    // Fetch whenever what is shown changes, or a new revision is published (`version`).
    // Each fetch takes a generation number; an answer is applied only if no fetch started after it,
    // so an older view's graph never overwrites a newer one's.
    let generation = RwSignal::new(0u64);
    Effect::new(move |_| {
        let s = state.get();
        version.track();
        set_url(&s);
        let mine = generation.get_untracked() + 1;
        generation.set(mine);
        leptos::task::spawn_local(async move {
            let answer = get::<GraphSnapshot>(&format!("/api/v1/graph?{}", s.graph_query())).await;
            if generation.get_untracked() != mine {
                return;
            }
            match answer {
                Ok(g) => {
                    if auto_namespaces.get_untracked() {
                        auto_namespaces.set(false);
                        if s.view != View::Namespace && is_large(&g) {
                            state.update(|s| s.view = View::Namespace);
                            return;
                        }
                    }
                    graph.set(Some(g));
                    error.set(None);
                    need_token.set(false);
                }
                Err(Fail::Unauthorized) => need_token.set(true),
                Err(Fail::Other(e)) => error.set(Some(e)),
            }
            if let Ok(w) = get::<WorkloadsBody>(&format!("/api/v1/workloads?window={}", s.window)).await {
                workloads.set(w.workloads);
            }
            if let Ok(r) = get::<RevisionsBody>("/api/v1/revisions?since=0&limit=1").await {
                revisions.set(Some(r));
            }
        });
    });

    // The selected node's app detail, for the rate chart.
    Effect::new(move |_| {
        let s = state.get();
        let Some(sel) = s.selected.clone() else { return };
        let Some(node) = graph.with(|g| g.as_ref().and_then(|g| g.node(&sel).cloned())) else { return };
        if node.namespace.is_empty() || node.kind == NodeKind::Namespace {
            return;
        }
        leptos::task::spawn_local(async move {
            let (seg, enc) = (meshlens_model::viewstate::encode_segment, meshlens_model::viewstate::encode);
            let path =
                format!("/api/v1/workloads/{}/{}?window={}", seg(&node.namespace), seg(&node.app), enc(&s.window));
            if let Ok(d) = get::<AppDetail>(&path).await {
                detail.set(Some(d));
            }
        });
    });

    // The requests behind the selection (its exemplars): the newest failed and the slowest of a node's
    // inbound edges, or of an edge, fetched when the selection changes.
    Effect::new(move |_| {
        let Some(sel) = state.with(|s| s.selected.clone()) else { return };
        let enc = meshlens_model::viewstate::encode;
        let q = graph.with_untracked(|g| {
            let g = g.as_ref()?;
            match g.node(&sel) {
                Some(n) => Some(format!("node={}", enc(&n.id))),
                None => g
                    .edges
                    .iter()
                    .find(|e| e.id == sel)
                    .map(|e| format!("from={}&to={}", enc(&e.source), enc(&e.target))),
            }
        });
        let Some(q) = q else { return };
        leptos::task::spawn_local(async move {
            if let Ok(body) = get::<ExemplarsBody>(&format!("/api/v1/exemplars?{q}&limit=5")).await {
                traces.set(Some((sel, body)));
            }
        });
    });

    // The routes behind the selection: a node's service's (every caller), or an edge's target's as its
    // source called them, refetched with the graph so they stay live.
    Effect::new(move |_| {
        let (sel, window) = state.with(|s| (s.selected.clone(), s.window.clone()));
        let Some(sel) = sel else { return };
        let enc = meshlens_model::viewstate::encode;
        let q = graph.with(|g| {
            let g = g.as_ref()?;
            let service = |n: &Node| {
                (!n.namespace.is_empty() && n.kind != NodeKind::Namespace).then(|| format!("{}/{}", n.namespace, n.app))
            };
            match g.node(&sel) {
                Some(n) => service(n).map(|s| format!("service={}", enc(&s))),
                None => {
                    let e = g.edges.iter().find(|e| e.id == sel)?;
                    let s = service(g.node(&e.target)?)?;
                    Some(format!("service={}&from={}", enc(&s), enc(&e.source)))
                }
            }
        });
        let Some(q) = q else { return };
        leptos::task::spawn_local(async move {
            // A service nobody has routed to is answered 404: nothing to show.
            let answer = get::<RoutesBody>(&format!("/api/v1/routes?{q}&window={window}")).await.ok();
            routes.set(answer.map(|r| (sel, r)));
        });
    });

    // Live: each published revision refetches, unless a revision is pinned.
    leptos::task::spawn_local(async move {
        let Ok(mut es) = EventSource::new(&api("/api/v1/stream")) else { return };
        let Ok(mut events) = es.subscribe("graph") else { return };
        live.set(true);
        while let Some(ev) = events.next().await {
            match ev {
                Ok(_) => {
                    live.set(true);
                    if state.with_untracked(|s| s.revision.is_none()) {
                        version.update(|v| *v += 1);
                    }
                }
                Err(_) => live.set(false),
            }
        }
        live.set(false);
        es.close();
    });

    // The page alone decides what is mounted: any other change of the state updates in place.
    let page = Memo::new(move |_| state.with(|s| s.page));
    view! {
        <Header state=state live=live revisions=revisions />
        {move || need_token.get().then(|| view! { <TokenPrompt /> })}
        {move || error.get().map(|e| view! { <div class="error" id="error">{e}</div> })}
        <main>
            {move || match page.get() {
                Page::Graph => view! {
                    <Topology state=state graph=graph />
                    <Panel state=state graph=graph detail=detail traces=traces routes=routes />
                }.into_any(),
                Page::Workloads => view! { <Workloads rows=workloads /> }.into_any(),
            }}
        </main>
    }
}

#[component]
fn TokenPrompt() -> impl IntoView {
    let value = RwSignal::new(String::new());
    view! {
        <div class="error" id="token-prompt">
            "This collector needs its token: "
            <input type="password" prop:value=move || value.get() on:input=move |ev| value.set(event_target_value(&ev)) />
            <button on:click=move |_| {
                if let Some(s) = storage() {
                    let _ = s.set_item("meshlens-token", &value.get_untracked());
                }
                if let Some(w) = web_sys::window() {
                    let _ = w.location().reload();
                }
            }>"use it"</button>
        </div>
    }
}

#[component]
fn Header(
    state: RwSignal<ViewState>,
    live: RwSignal<bool>,
    revisions: RwSignal<Option<RevisionsBody>>,
) -> impl IntoView {
    let find_error = Memo::new(move |_| {
        let f = state.with(|s| s.find.clone());
        if f.trim().is_empty() { None } else { find::parse(&f).err().map(|e| e.to_string()) }
    });
    view! {
        <header>
            <b>"meshlens"</b>
            <select id="page" on:change=move |ev| {
                let v = event_target_value(&ev);
                state.update(|s| s.page = if v == "workloads" { Page::Workloads } else { Page::Graph });
            }>
                <option value="graph" selected=move || state.with(|s| s.page == Page::Graph)>"Topology"</option>
                <option value="workloads" selected=move || state.with(|s| s.page == Page::Workloads)>"Workloads"</option>
            </select>
            <select id="view" on:change=move |ev| {
                let v: View = event_target_value(&ev).parse().unwrap_or_default();
                state.update(|s| { s.view = v; s.selected = None; });
            }>
                {View::ALL.into_iter().map(|v| view! {
                    <option value=v.as_str() selected=move || state.with(|s| s.view == v)>{v.as_str()}</option>
                }).collect_view()}
            </select>
            <select id="window" on:change=move |ev| {
                let w = event_target_value(&ev);
                state.update(|s| { s.window = w; s.revision = None; });
            }>
                {WINDOWS.into_iter().map(|w| view! {
                    <option value=w selected=move || state.with(|s| s.window == w)>{w}</option>
                }).collect_view()}
            </select>
            <input id="namespace" placeholder="namespace" prop:value=move || state.with(|s| s.namespaces.join(","))
                on:change=move |ev| {
                    let v = event_target_value(&ev);
                    state.update(|s| s.namespaces = v.split(',').map(str::trim).filter(|n| !n.is_empty()).map(str::to_owned).collect());
                } />
            <select id="label" on:change=move |ev| {
                let l = EdgeLabel::parse(&event_target_value(&ev)).unwrap_or_default();
                state.update(|s| s.label = l);
            }>
                {EdgeLabel::ALL.into_iter().map(|l| view! {
                    <option value=l.as_str() selected=move || state.with(|s| s.label == l)>{l.as_str()}</option>
                }).collect_view()}
            </select>
            <input id="find" class=move || if find_error.get().is_some() { "find bad-input" } else { "find" }
                placeholder="find: version = v3 and error > 0" title=move || find_error.get().unwrap_or_default()
                prop:value=move || state.with(|s| s.find.clone())
                on:change=move |ev| { let v = event_target_value(&ev); state.update(|s| s.find = v); } />
            <label><input id="hide" type="checkbox" prop:checked=move || state.with(|s| s.hide)
                on:change=move |ev| { let c = event_target_checked(&ev); state.update(|s| s.hide = c); } />"hide"</label>
            {move || revisions.get().filter(|r| r.latest > 0).map(|r| {
                let (lo, hi) = (r.oldest.max(1), r.latest);
                view! {
                    <input id="revision" type="range" min=lo max=hi
                        prop:value=move || state.with(|s| s.revision.unwrap_or(hi)).to_string()
                        on:change=move |ev| {
                            let v: u64 = event_target_value(&ev).parse().unwrap_or(hi);
                            state.update(|s| s.revision = if v >= hi { None } else { Some(v) });
                        } />
                    <span id="revision-label">{move || match state.with(|s| s.revision) {
                        Some(r) => format!("revision {r}"),
                        None => format!("live (revision {hi})"),
                    }}</span>
                }
            })}
            <button id="go-live" on:click=move |_| state.update(|s| s.revision = None)>"live"</button>
            <span id="live" class=move || if state.with(|s| s.revision.is_some()) { "stale" } else if live.get() { "live" } else { "down" }>
                {move || if state.with(|s| s.revision.is_some()) { "● pinned" } else if live.get() { "● live" } else { "● disconnected" }}
            </span>
        </header>
    }
}

/// What find does to each node and edge: shown, highlighted, or hidden.
fn find_marks(g: &GraphSnapshot, s: &ViewState) -> (Vec<bool>, Vec<bool>, Option<find::Expr>) {
    let expr = if s.find.trim().is_empty() { None } else { find::parse(&s.find).ok() };
    let Some(e) = &expr else { return (vec![false; g.nodes.len()], vec![false; g.edges.len()], None) };
    let nodes: Vec<bool> = g.nodes.iter().map(|n| e.matches_node(n)).collect();
    let edges = g
        .edges
        .iter()
        .map(|ed| match (g.node(&ed.source), g.node(&ed.target)) {
            (Some(a), Some(b)) => e.matches_edge(ed, a, b),
            _ => false,
        })
        .collect();
    (nodes, edges, expr)
}

/// The graph to draw: with find in hide mode, what matches is left out; with focus, only the
/// selected node's neighbourhood.
fn shown(g: &GraphSnapshot, s: &ViewState) -> GraphSnapshot {
    let mut out = hide_found(g, s);
    if let Some(sel) = s.selected.as_deref().filter(|_| s.focus > 0) {
        out.retain_hops(sel, s.focus);
    }
    out
}

fn hide_found(g: &GraphSnapshot, s: &ViewState) -> GraphSnapshot {
    let (nodes, _, expr) = find_marks(g, s);
    if !s.hide || expr.is_none() {
        return g.clone();
    }
    let mut out = g.clone();
    let hidden: std::collections::HashSet<&str> =
        g.nodes.iter().zip(&nodes).filter(|(_, m)| **m).map(|(n, _)| n.id.as_str()).collect();
    out.nodes.retain(|n| !hidden.contains(n.id.as_str()));
    out.edges.retain(|e| !hidden.contains(e.source.as_str()) && !hidden.contains(e.target.as_str()));
    out
}

#[component]
fn Topology(state: RwSignal<ViewState>, graph: RwSignal<Option<GraphSnapshot>>) -> impl IntoView {
    let pan = RwSignal::new((0.0f64, 0.0f64, 1.0f64));
    let drag = RwSignal::new(None::<(i32, i32)>);
    // What the drawing depends on: selecting a node redraws nothing unless focus follows it (the
    // highlight of the selection updates in place).
    let drawing_key = Memo::new(move |_| {
        state.with(|s| (s.find.clone(), s.hide, s.label, s.focus, s.selected.clone().filter(|_| s.focus > 0)))
    });
    let drawn = Memo::new(move |_| {
        drawing_key.track();
        let s = state.get_untracked();
        graph.with(|g| {
            g.as_ref().map(|g| {
                let g = shown(g, &s);
                let caller_rps: std::collections::HashMap<String, f64> =
                    g.nodes.iter().map(|n| (n.id.clone(), n.outbound.rps)).collect();
                let label = s.label;
                // Two cells before a label on an mTLS edge, where the lock icon goes.
                let l = layout(&g, |e| {
                    let text = label.text(e, caller_rps.get(&e.source).copied().unwrap_or(0.0));
                    if mtls(e) { format!("  {text}") } else { text }
                });
                let marks = find_marks(&g, &s);
                (g, l, marks.0, marks.1, marks.2.is_some() && !s.hide)
            })
        })
    });
    // Double-clicking a namespace expands it.
    let expand_at = move |ev: web_sys::MouseEvent| {
        let node = ev
            .target()
            .and_then(|t| t.dyn_into::<web_sys::Element>().ok())
            .and_then(|el| el.closest("[data-node]").ok().flatten())
            .and_then(|el| el.get_attribute("data-node"));
        let Some(ns) = node.as_deref().and_then(|id| id.strip_prefix("ns:")).map(str::to_owned) else { return };
        graph.with_untracked(|g| {
            if let Some(g) = g {
                state.update(|s| s.expand(&ns, g))
            }
        });
    };
    view! {
        <div id="canvas"
            on:dblclick=expand_at
            on:mousedown=move |ev: web_sys::MouseEvent| drag.set(Some((ev.client_x(), ev.client_y())))
            on:mouseup=move |_| drag.set(None)
            on:mouseleave=move |_| drag.set(None)
            on:mousemove=move |ev: web_sys::MouseEvent| {
                if let Some((x, y)) = drag.get_untracked() {
                    let (dx, dy) = (ev.client_x() - x, ev.client_y() - y);
                    pan.update(|p| { p.0 += f64::from(dx); p.1 += f64::from(dy); });
                    drag.set(Some((ev.client_x(), ev.client_y())));
                }
            }
            on:wheel=move |ev: web_sys::WheelEvent| {
                ev.prevent_default();
                let f = if ev.delta_y() < 0.0 { 1.1 } else { 1.0 / 1.1 };
                pan.update(|p| p.2 = (p.2 * f).clamp(0.1, 5.0));
            }>
            // Panning and zooming change only the transform attribute, never the drawn graph.
            {move || drawn.get().map(|(g, l, node_marks, edge_marks, highlighting)| {
                let (w, h) = (l.width as f64 * CW + 40.0, l.height as f64 * CH + 40.0);
                // Fit to the canvas, but never below a scale where text is legible: a large graph
                // opens at its top left (its first namespace) at that scale, and pans.
                let (vw, vh) = legible_extent(w, h);
                view! {
                    <svg id="graph" viewBox=format!("0 0 {vw} {vh}") preserveAspectRatio="xMinYMin meet">
                        <defs>
                            <marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" markerHeight="6" orient="auto-start-reverse">
                                <path d="M 0 0 L 10 5 L 0 10 z" fill="#7b8794" />
                            </marker>
                        </defs>
                        <g id="viewport" transform=move || { let (tx, ty, k) = pan.get(); format!("translate({tx} {ty}) scale({k})") }>
                            {draw(&g, &l, &node_marks, &edge_marks, highlighting, state)}
                        </g>
                    </svg>
                }
            })}
        </div>
    }
}

/// Cell size: the layout is in character cells; the SVG scales them.
const CW: f64 = 8.0;

/// The smallest font the graph draws (edge labels and box titles), in SVG units.
const SMALLEST_FONT: f64 = 11.0;
/// The smallest text, in CSS pixels, the initial view may show.
const LEGIBLE_PX: f64 = 10.0;

/// The part of a `w` × `h` drawing the SVG shows at first: all of it when it fits the canvas with
/// text at [`LEGIBLE_PX`] or more, else as much as does (the canvas's size from the window, less the
/// header and the side panel).
fn legible_extent(w: f64, h: f64) -> (f64, f64) {
    let window = web_sys::window();
    let px = |v: Option<Result<wasm_bindgen::JsValue, wasm_bindgen::JsValue>>, less: f64, or: f64| {
        v.and_then(|v| v.ok()?.as_f64()).map_or(or, |v| (v - less).max(200.0))
    };
    let cw = px(window.as_ref().map(|w| w.inner_width()), 380.0, 1000.0);
    let ch = px(window.as_ref().map(|w| w.inner_height()), 50.0, 700.0);
    let most = SMALLEST_FONT / LEGIBLE_PX;
    (w.min(cw * most), h.min(ch * most))
}

/// Whether an edge's traffic went over mutual TLS (a lock on its label).
fn mtls(e: &meshlens_model::Edge) -> bool {
    e.stats.mtls_pct.is_some_and(|m| m >= 99.5)
}
const CH: f64 = 18.0;

fn draw(
    g: &GraphSnapshot,
    l: &Layout,
    node_marks: &[bool],
    edge_marks: &[bool],
    highlighting: bool,
    state: RwSignal<ViewState>,
) -> impl IntoView + use<> {
    let picked = move |id: &str| state.with(|s| s.selected.as_deref() == Some(id));
    let dim = |marked: bool| if highlighting && !marked { "0.25" } else { "1" };
    let edges = l
        .edges
        .iter()
        .map(|p| {
            let e = &g.edges[p.edge];
            let pts: String = p
                .points
                .iter()
                .map(|(x, y)| format!("{},{} ", *x as f64 * CW, *y as f64 * CH + CH / 2.0))
                .collect();
            let id = e.id.clone();
            let (sel_id, health) = (e.id.clone(), e.health);
            let is_sel = move || picked(&sel_id);
            let color = { let is_sel = is_sel.clone(); move || if is_sel() { "#58a6ff" } else { health_color(health) } };
            let lock = mtls(e);
            let (lx, ly) = (p.label_at.0 as f64 * CW, p.label_at.1 as f64 * CH + CH / 2.0 - 3.0);
            // The lock is drawn, not a glyph: Debian's chromium has no emoji font.
            let lock_icon = lock.then(|| {
                let t = format!("translate({lx},{})", ly - 9.0);
                view! {
                    <g class="lock" transform=t>
                        <title>"mutual TLS"</title>
                        <path d="M2.2 4.5 V3 a2.3 2.3 0 0 1 4.6 0 V4.5" fill="none" stroke="#8b949e" stroke-width="1.4" />
                        <rect x="0.5" y="4.5" width="8" height="6" rx="1.2" fill="#8b949e" />
                    </g>
                }
            });
            let text_x = if lock { lx + 2.0 * CW } else { lx };
            let label = p.label.trim_start().to_owned();
            let tip = format!("{} → {}: {}", e.source, e.target, layout::edge_label(e));
            let opacity = dim(edge_marks[p.edge]);
            view! {
                <g class="edge" data-edge=e.id.clone() data-mtls=lock.to_string() opacity=opacity style="cursor:pointer"
                    on:click=move |ev| { ev.stop_propagation(); let id = id.clone(); state.update(|s| s.selected = Some(id)); }>
                    <title>{tip}</title>
                    <polyline points=pts fill="none" stroke=color stroke-width=move || if is_sel() { "2.5" } else { "1.5" } marker-end="url(#arrow)" />
                    {lock_icon}
                    <text x=text_x y=ly fill="#d9dee3" font-size="11">{label}</text>
                </g>
            }
        })
        .collect_view();
    let boxes = l
        .boxes
        .iter()
        .map(|b| {
            let (x, y, w, h) = (b.x as f64 * CW, b.y as f64 * CH, b.w as f64 * CW, b.h as f64 * CH);
            view! {
                <g class="box">
                    <rect x=x y=y width=w height=h rx="6" fill="#161b22" stroke="#3b4754" />
                    <text x=x + 6.0 y=y + 13.0 fill="#7b8794" font-size="11">{b.title.clone()}</text>
                </g>
            }
        })
        .collect_view();
    let nodes = l
        .nodes
        .iter()
        .map(|p| {
            let n = &g.nodes[p.node];
            let (x, y) = (p.x as f64 * CW, p.y as f64 * CH);
            let id = n.id.clone();
            let sel_id = n.id.clone();
            let is_sel = move || picked(&sel_id);
            let class = if n.kind == NodeKind::Namespace { "node namespace" } else { "node" };
            view! {
                <g class=class data-node=n.id.clone() opacity=dim(node_marks[p.node]) style="cursor:pointer"
                    on:click=move |ev| { ev.stop_propagation(); let id = id.clone(); state.update(|s| s.selected = Some(id)); }>
                    <rect x=x y=y + 2.0 width=p.w as f64 * CW height=CH - 4.0 rx="3"
                        fill={ let is_sel = is_sel.clone(); move || if is_sel() { "#1f3a5f" } else { "transparent" } }
                        stroke=move || if is_sel() { "#58a6ff" } else { "none" } />
                    <circle cx=x + 7.0 cy=y + CH / 2.0 r="5" fill=health_color(n.health) />
                    <text x=x + 16.0 y=y + CH / 2.0 + 4.0 fill="#d9dee3" font-size="12">{p.label.clone()}</text>
                </g>
            }
        })
        .collect_view();
    view! { {edges} {boxes} {nodes} }
}

fn stats_rows(label: &'static str, s: &Stats) -> impl IntoView + use<> {
    view! { <tr><td>{label}</td><td>{format!("{:.2}", s.rps)}</td><td>{pct(s.success_pct)}</td><td>{pct(s.error_pct)}</td></tr> }
}

fn latency(s: &Stats) -> String {
    s.latency_ms.as_ref().map_or("no latency yet".to_owned(), |l| {
        format!("p50 {}  p95 {}  p99 {}", format_ms(l.p50), format_ms(l.p95), format_ms(l.p99))
    })
}

fn codes(s: &Stats) -> String {
    let c = &s.codes;
    let http = format!("2xx {}  3xx {}  4xx {}  5xx {}  none {}", c.c2xx, c.c3xx, c.c4xx, c.c5xx, c.none);
    match s.grpc_line() {
        Some(grpc) => format!("{http}  ·  grpc {grpc}"),
        None => http,
    }
}

#[component]
fn Panel(
    state: RwSignal<ViewState>,
    graph: RwSignal<Option<GraphSnapshot>>,
    detail: RwSignal<Option<AppDetail>>,
    traces: RwSignal<Option<(String, ExemplarsBody)>>,
    routes: RwSignal<Option<(String, RoutesBody)>>,
) -> impl IntoView {
    let opened = RwSignal::new(None::<TraceBody>);
    view! {
        <aside id="panel">
            {move || {
                let sel = state.with(|s| s.selected.clone());
                graph.with(|g| {
                    let g = g.as_ref()?;
                    let Some(sel) = sel else {
                        let namespaces = state.with(|s| s.view == View::Namespace);
                        return namespaces.then(|| view! {
                            <p id="panel-hint" class="dim">"Each box is a namespace, its traffic merged. Double-click one, \
                                or select it and press expand, to see its apps."</p>
                        }.into_any());
                    };
                    if let Some(n) = g.node(&sel) {
                        let name = match &n.version { Some(v) => format!("{} {v}", n.app), None => n.app.clone() };
                        let (mut retries, mut timeouts) = (0, 0);
                        for e in g.edges.iter().filter(|e| e.source == n.id) {
                            retries += e.stats.retries.unwrap_or(0);
                            timeouts += e.stats.timeouts.unwrap_or(0);
                        }
                        let chart = detail.with(|d| d.as_ref().filter(|d| d.app == n.app && d.namespace == n.namespace)
                            .and_then(|d| d.versions.iter().find(|v| v.version == n.version).or(d.versions.first()))
                            .map(|v| v.rate_series.iter().map(|p| p.rps).collect::<Vec<f64>>()));
                        let actions = node_actions(state, graph, n);
                        Some(view! {
                            <h3 id="panel-title">{name}</h3>
                            <div class="dim">{n.namespace.clone()}" "{format!("{:?}", n.health).to_lowercase()}</div>
                            {actions}
                            <h4>"HTTP requests per second"</h4>
                            <table id="panel-table"><tr><th></th><th>"Total"</th><th>"%Success"</th><th>"%Error"</th></tr>
                                {stats_rows("In", &n.inbound)}{stats_rows("Out", &n.outbound)}</table>
                            <p>"In: "{latency(&n.inbound)}</p>
                            <p class="dim">{codes(&n.inbound)}</p>
                            <p>"rps min/max "{format!("{:.2} / {:.2}", n.inbound.rps_min, n.inbound.rps_max)}</p>
                            <p id="panel-retries">"outbound retries "{retries}"  timeouts "{timeouts}</p>
                            {chart.map(|c| view! { <Chart points=c /> })}
                        }.into_any())
                    } else {
                        let e = g.edges.iter().find(|e| e.id == sel)?;
                        Some(view! {
                            <h3 id="panel-title">{e.source.clone()}" → "{e.target.clone()}</h3>
                            <div class="dim">{e.protocol.clone()}" "{format!("{:?}", e.health).to_lowercase()}</div>
                            <h4>"HTTP requests per second"</h4>
                            <table id="panel-table"><tr><th></th><th>"Total"</th><th>"%Success"</th><th>"%Error"</th></tr>
                                {stats_rows("Edge", &e.stats)}</table>
                            <p>{latency(&e.stats)}</p>
                            <p class="dim">{codes(&e.stats)}</p>
                            <p id="panel-retries">"retries "{e.stats.retries.unwrap_or(0)}"  timeouts "{e.stats.timeouts.unwrap_or(0)}
                                "  mTLS "{format!("{:.0}%", e.stats.mtls_pct.unwrap_or(0.0))}</p>
                        }.into_any())
                    }
                })
            }}
            {move || {
                let sel = state.with(|s| s.selected.clone());
                routes.with(|r| {
                    let (_, body) = r.as_ref().filter(|(s, _)| Some(s) == sel.as_ref())?;
                    if body.routes.is_empty() {
                        return None;
                    }
                    // linkerd viz routes' columns: effective figures, and actual ones where retries happened.
                    let retried = body.routes.iter().any(|r| r.stats.retries.unwrap_or(0) > 0);
                    let rows = body.routes.iter().map(|r| {
                        let s = &r.stats;
                        let p99 = s.latency_ms.as_ref().map_or("-".to_owned(), |l| format_ms(l.p99));
                        let actual = retried.then(|| view! {
                            <td>{pct(r.actual_success_pct)}</td><td>{format!("{:.2}", r.actual_rps)}</td>
                        });
                        view! {
                            <tr class="route"><td>{r.route.clone()}</td><td>{format!("{:.2}", s.rps)}</td>
                                <td>{pct(s.success_pct)}</td><td>{p99}</td>{actual}</tr>
                        }
                    }).collect::<Vec<_>>();
                    let actual_head = retried.then(|| view! { <th>"Actual %"</th><th>"Actual RPS"</th> });
                    Some(view! {
                        <div id="panel-routes"><h4>"Routes"</h4>
                            <table><tr><th>"Route"</th><th>"RPS"</th><th>"%Success"</th><th>"P99"</th>{actual_head}</tr>{rows}</table>
                        </div>
                    })
                })
            }}
            {move || {
                let sel = state.with(|s| s.selected.clone());
                traces.with(|t| {
                    let (_, body) = t.as_ref().filter(|(s, _)| Some(s) == sel.as_ref())?;
                    // A kept trace opens here as a waterfall; one the store no longer holds links to the
                    // user's Jaeger or Tempo when there is one, and is named otherwise.
                    let list = |id: &'static str, title: &'static str, items: &[Exemplar]| {
                        if items.is_empty() {
                            return None;
                        }
                        let items = items.iter().map(|x| {
                            let tid = x.trace_id.clone();
                            let open = move |ev: leptos::ev::MouseEvent| {
                                ev.prevent_default();
                                let tid = tid.clone();
                                leptos::task::spawn_local(async move {
                                    if let Ok(b) = get::<TraceBody>(&format!("/api/v1/traces/{tid}")).await {
                                        opened.set(Some(b));
                                    }
                                });
                            };
                            let anchor = match (x.kept, &x.link) {
                                (true, _) => view! { <a href="#" class="trace-id" on:click=open>{x.trace_id.clone()}</a> }.into_any(),
                                (false, Some(link)) => view! {
                                    <a href=link.clone() target="_blank" rel="noopener" class="trace-link">{x.trace_id.clone()}</a>
                                }.into_any(),
                                (false, None) => view! { <span class="trace-gone" title="no longer kept here">{x.trace_id.clone()}</span> }.into_any(),
                            };
                            view! {
                                <li data-latency-ms=x.latency_ms.to_string()>{anchor}" "{format_ms(x.latency_ms)}
                                    " "<span class="muted">{format!("{} → {}", x.source, x.target)}</span></li>
                            }
                        }).collect::<Vec<_>>();
                        Some(view! { <div id=id><h4>{title}</h4><ul>{items}</ul></div> })
                    };
                    Some(view! {
                        {list("panel-traces", "Failed requests", &body.failed)}
                        {list("panel-slow", "Slowest requests (5 min)", &body.slowest)}
                    })
                })
            }}
            {move || opened.with(|t| t.as_ref().map(|t| view! { <Waterfall trace=t.clone() /> }))}
        </aside>
    }
}

/// One kept trace: a row per span, each under its parent (the console's tree order), its workload, kind, name, duration and status,
/// and a bar placed on the trace's time line; the user's Jaeger or Tempo link when the collector has one.
#[component]
fn Waterfall(trace: TraceBody) -> impl IntoView {
    let (start, end) = trace.time_line();
    let total = (end - start) as f64;
    let rows = trace.tree_order().into_iter().map(|(i, depth)| {
        let s = &trace.spans[i];
        let left = (s.start_unix_nano - start) as f64 / total * 100.0;
        let width = (s.duration_ms * 1e6 / total * 100.0).max(0.5);
        let status = s.status_text();
        let color = if s.failed { "#d9534f" } else { "#5cb85c" };
        view! {
            <tr class=if s.failed { "span failed" } else { "span" }>
                <td style=format!("padding-left:{}em", depth)>{format!("{} {} {}", s.workload, s.kind, s.name)}</td>
                <td>{format_ms(s.duration_ms)}</td>
                <td>{status}</td>
                <td class="bar"><div style=format!("margin-left:{left:.1}%;width:{width:.1}%;background:{color};height:0.7em")></div></td>
            </tr>
        }
    }).collect::<Vec<_>>();
    view! {
        <div id="trace">
            <h4>"Trace "<span id="trace-id">{trace.trace_id.clone()}</span></h4>
            {trace.link.clone().map(|l| view! { <a id="trace-link" href=l.clone() target="_blank">"open in your trace UI"</a> })}
            <table id="trace-waterfall">{rows}</table>
        </div>
    }
}

/// The selected node's buttons: expand or collapse its namespace or app, focus on its neighbourhood.
fn node_actions(state: RwSignal<ViewState>, graph: RwSignal<Option<GraphSnapshot>>, n: &Node) -> impl IntoView + use<> {
    let (ns, app_id, id) = (n.namespace.clone(), format!("{}/{}", n.namespace, n.app), n.id.clone());
    let focus = state.with_untracked(|s| s.focus);
    let collapsed_app = state.with_untracked(|s| s.collapse.contains(&n.id));
    let expand = {
        let ns = ns.clone();
        move |_| {
            state.update(|s| {
                graph.with_untracked(|g| {
                    if let Some(g) = g {
                        s.expand(&ns, g)
                    }
                })
            })
        }
    };
    let namespace = match n.kind {
        NodeKind::Namespace => Some(view! { <button id="expand" on:click=expand>"expand"</button> }.into_any()),
        _ if ns.is_empty() => None,
        _ => {
            let ns2 = ns.clone();
            Some(view! { <button id="collapse-ns" on:click=move |_| state.update(|s| s.collapse(&ns2))>"collapse "{ns.clone()}</button> }.into_any())
        }
    };
    let app = if collapsed_app {
        let id = id.clone();
        Some(view! { <button id="expand-app" on:click=move |_| state.update(|s| { s.collapse.retain(|c| *c != id); s.selected = None; })>"expand versions"</button> }.into_any())
    } else {
        n.group.is_some().then(|| {
            let a = app_id.clone();
            view! { <button id="collapse-app" on:click=move |_| state.update(|s| s.collapse(&a))>"collapse versions"</button> }.into_any()
        })
    };
    let more = if focus == 0 { "focus".to_owned() } else { format!("{} hops", focus + 1) };
    let unfocus = (focus > 0)
        .then(|| view! { <button id="unfocus" on:click=move |_| state.update(|s| s.focus = 0)>"everything"</button> });
    view! {
        <div id="panel-actions">
            {namespace}{app}
            <button id="focus" title="only what lies within this many calls" on:click=move |_| state.update(|s| s.focus = (s.focus + 1).min(MAX_FOCUS_HOPS))>{more}</button>
            {unfocus}
        </div>
    }
}

/// A rate chart with its min/max caption.
#[component]
fn Chart(points: Vec<f64>) -> impl IntoView {
    let (lo, hi) = points.iter().fold((f64::MAX, 0.0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let lo = if lo == f64::MAX { 0.0 } else { lo };
    let n = points.len().max(2) as f64 - 1.0;
    let line: String = points
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{:.1},{:.1} ", i as f64 * 320.0 / n, 60.0 - if hi > 0.0 { v / hi * 56.0 } else { 0.0 }))
        .collect();
    view! {
        <svg id="chart" width="320" height="62"><polyline points=line fill="none" stroke="#58a6ff" stroke-width="1.5" /></svg>
        <div class="dim" id="chart-caption">{format!("rps min {lo:.2} max {hi:.2}")}</div>
    }
}

#[component]
fn Workloads(rows: RwSignal<Vec<WorkloadRow>>) -> impl IntoView {
    let sort = RwSignal::new((Column::Rps, true));
    view! {
        <table class="workloads" id="workloads">
            <tr>{Column::ALL[..8].iter().map(|&c| view! {
                <th on:click=move |_| sort.update(|s| *s = c.sort_after(*s))>{c.header()}</th>
            }).collect_view()}</tr>
            {move || {
                let (col, desc) = sort.get();
                let mut rows = rows.get();
                rows.sort_by(|a, b| meshlens_model::api::compare_rows(a, b, col, desc));
                rows.into_iter().map(|w| {
                    let l = w.inbound.latency_ms;
                    let ms = move |f: fn(&meshlens_model::LatencyMs) -> f64| l.as_ref().map_or("-".to_owned(), |l| format_ms(f(l)));
                    view! { <tr data-row=w.id.clone()>
                        <td>{w.namespace.clone()}</td><td>{w.app.clone()}</td><td>{w.version.clone().unwrap_or_default()}</td>
                        <td style=format!("color:{}", health_color(w.health))>{w.inbound.success_pct.map_or("-".to_owned(), |p| format!("{p:.2}%"))}</td>
                        <td>{format!("{:.1}", w.inbound.rps)}</td><td>{ms(|l| l.p50)}</td><td>{ms(|l| l.p95)}</td><td>{ms(|l| l.p99)}</td>
                    </tr> }
                }).collect_view()
            }}
        </table>
    }
}
