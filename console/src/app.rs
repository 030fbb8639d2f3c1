//! The terminal UI's state and its update: plain data, no IO. [`App::update`] applies an
//! [`Action`] (a key already mapped by [`key_action`], or data from the collector task) and may
//! return a [`Command`] for the collector task. Tests drive it without a terminal.

use std::collections::VecDeque;
use std::time::Instant;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use meshlens_model::api::{AppDetail, Column, ExemplarsBody, RoutesBody, WorkloadRow, WorkloadsBody};
use meshlens_model::graph::{GraphSnapshot, RevisionSummary, View};
use meshlens_model::layout::{Layout, edge_label, layout};
use meshlens_model::tap::{TapEvent, TapStatus};
use meshlens_model::viewstate::{Page, ViewState, collapse_item, expand_namespace};

/// What covers the screen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overlay {
    None,
    /// The keys.
    Help,
    /// The revisions list.
    Revisions,
    /// A live tap on the selected workload.
    Tap,
}

/// Requests the tap overlay keeps, newest last; older ones scroll away.
pub(crate) const TAP_ROWS: usize = 200;

/// A tap the console has open (`t`): what it taps and what came.
#[derive(Debug, Default)]
pub struct TapPane {
    /// The target as sent to the collector (the node's id).
    pub target: String,
    /// The latest requests, oldest first, at most [`TAP_ROWS`].
    pub events: VecDeque<TapEvent>,
    /// Requests seen since it opened (more than `events` holds once it scrolls).
    pub seen: u64,
    /// The collector's last word on it: agents tapping, dropped.
    pub status: Option<TapStatus>,
    /// Why it ended, when it did.
    pub ended: Option<String>,
}

/// The link to the collector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Connection {
    /// Not yet connected.
    Connecting,
    /// The SSE stream is open.
    Live,
    /// It failed; the collector task retries.
    Down(String),
}

/// A direction of movement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Up,
    Down,
    /// Left: to a caller.
    Left,
    /// Right: to a callee.
    Right,
}

/// Table columns, in order; the digit keys 1–9 and 0 sort by them.
pub(crate) const COLUMNS: [Column; 10] = Column::ALL;

/// Everything that changes the state.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Leave the console.
    Quit,
    /// Show or hide the keys.
    Help,
    /// Graph ↔ workloads.
    SwitchScreen,
    /// Move the selection.
    Move(Dir),
    /// Scroll the graph by cells.
    Pan(i32, i32),
    /// Versioned ↔ app view.
    ToggleView,
    /// Only the selected node and its neighbours, or everything.
    ToggleFocus,
    /// The namespace view ↔ the versioned view.
    ToggleNamespaces,
    /// Collapse the selected node's namespace into one node, or expand a collapsed one.
    Collapse,
    /// Next stats window.
    CycleWindow,
    /// Open the revisions list.
    OpenRevisions,
    /// Show the highlighted revision.
    PickRevision,
    /// Back to the live graph.
    Live,
    /// Show or hide the detail pane.
    ToggleDetail,
    /// Select the next outbound edge of the selected node (or the node again).
    NextEdge,
    /// Open a tap on the selected workload, or close the one open.
    ToggleTap,
    /// A request the open tap saw.
    Tapped {
        /// The tap's target, so a late event of a closed tap is dropped.
        target: String,
        /// The request.
        event: Box<TapEvent>,
    },
    /// The collector's status of the open tap.
    TapStatus {
        /// The tap's target.
        target: String,
        /// Agents, events, dropped.
        status: TapStatus,
    },
    /// The tap stream ended.
    TapEnded {
        /// The tap's target.
        target: String,
        /// What ended it, as the collector or the connection said.
        why: String,
    },
    /// Sort the table by this column (again: reverse).
    SortBy(Column),
    /// Start typing a filter.
    StartFilter,
    /// A character of the filter.
    FilterChar(char),
    /// Delete the filter's last character.
    FilterBackspace,
    /// Stop typing the filter.
    FilterDone,
    /// Close what is open.
    Escape,
    /// A graph from the collector: the answer to the refresh numbered `generation`.
    Graph {
        /// The [`Command::Refresh`] it answers.
        generation: u64,
        /// The graph.
        graph: Box<GraphSnapshot>,
    },
    /// Workloads from the collector.
    Workloads(Box<WorkloadsBody>),
    /// One app's detail (rate series) from the collector.
    Detail(Box<AppDetail>),
    /// The requests behind a workload (its exemplars): the newest failed and the slowest.
    Traces {
        /// The workload id.
        workload: String,
        /// Its exemplars.
        exemplars: Box<ExemplarsBody>,
    },
    /// A service's routes (as its callers' agents counted them) from the collector.
    Routes(Box<RoutesBody>),
    /// The revisions list from the collector.
    Revisions(Vec<RevisionSummary>),
    /// A new revision was published (SSE).
    Published(u64),
    /// The link changed.
    Connection(Connection),
    /// Time passes (for staleness).
    Tick(Instant),
}

/// What the collector task should fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// The graph and the workloads with these settings.
    Refresh {
        /// This fetch's number: answers are applied only when newer than the last applied, so a
        /// slow answer for settings since changed (an older window, another view) cannot overwrite
        /// a newer one.
        generation: u64,
        /// The view.
        view: View,
        /// The window.
        window: String,
        /// A revision, or live.
        at: Option<u64>,
        /// Namespaces and apps drawn as one node each.
        collapse: Vec<String>,
    },
    /// The revisions list.
    Revisions,
    /// One app's detail.
    Detail {
        namespace: String,
        app: String,
        window: String,
        /// The selected workload's id, whose exemplars are fetched beside.
        workload: String,
    },
    /// Open a tap on this target (closing any other).
    Tap {
        /// A node id.
        target: String,
    },
    /// Close the open tap.
    StopTap,
}

/// The UI state.
#[derive(Debug)]
pub struct App {
    /// The collector's URL, for the title.
    pub collector: String,
    /// What the web view's address would hold: page, view, window, pinned revision, selection,
    /// collapse and focus (one shape for both views; the console leaves `namespaces`, `find`,
    /// `hide` and `label` at their defaults).
    pub state: ViewState,
    /// What covers it.
    pub overlay: Overlay,
    /// The graph shown (focus applied).
    pub graph: GraphSnapshot,
    /// The graph as fetched.
    pub full_graph: GraphSnapshot,
    /// Its layout.
    pub layout: Layout,
    /// The workloads.
    pub workloads: Vec<WorkloadRow>,
    /// The selected app's detail.
    pub detail: Option<AppDetail>,
    /// The exemplars of a workload: `(workload, exemplars)`.
    pub traces: Option<(String, Box<ExemplarsBody>)>,
    /// The selected service's routes.
    pub routes: Option<RoutesBody>,
    /// The open tap.
    pub tap: Option<TapPane>,
    /// The selected outbound edge of the selected node, by index among its outbound edges.
    pub selected_edge: Option<usize>,
    /// The revisions list.
    pub revisions: Vec<RevisionSummary>,
    /// Highlighted revision in the list.
    pub revision_cursor: usize,
    /// Sort column and descending.
    pub sort: (Column, bool),
    /// Table filter.
    pub filter: String,
    /// Typing into the filter.
    pub filtering: bool,
    /// Highlighted table row.
    pub row: usize,
    /// Graph scroll offset (cells).
    pub scroll: (u32, u32),
    /// The graph viewport size, set by drawing (for keeping the selection in view).
    pub viewport: (u32, u32),
    /// The terminal's width, set by drawing.
    pub width: u16,
    /// Show the detail pane: `None` decides by the terminal's width.
    pub show_detail: Option<bool>,
    /// The link.
    pub connection: Connection,
    /// When data last arrived.
    pub updated: Option<Instant>,
    /// Now, as the last tick said.
    pub now: Option<Instant>,
    /// Set by [`Action::Quit`]: the event loop ends.
    pub quit: bool,
    /// The number of the last refresh asked for.
    asked: u64,
    /// The number of the refresh whose graph is shown.
    applied: u64,
}

impl App {
    /// A fresh state for the collector at `collector`.
    pub fn new(collector: &str) -> Self {
        Self {
            collector: collector.to_owned(),
            state: ViewState::default(),
            overlay: Overlay::None,
            graph: GraphSnapshot::default(),
            full_graph: GraphSnapshot::default(),
            layout: Layout::default(),
            workloads: Vec::new(),
            detail: None,
            traces: None,
            tap: None,
            routes: None,
            selected_edge: None,
            revisions: Vec::new(),
            revision_cursor: 0,
            sort: (Column::Rps, true),
            filter: String::new(),
            filtering: false,
            row: 0,
            scroll: (0, 0),
            viewport: (80, 20),
            width: 80,
            show_detail: None,
            connection: Connection::Connecting,
            updated: None,
            now: None,
            quit: false,
            asked: 0,
            applied: 0,
        }
    }

    /// The refresh for the current settings, numbered.
    pub fn refresh(&mut self) -> Command {
        self.asked += 1;
        Command::Refresh {
            generation: self.asked,
            view: self.state.view,
            window: self.state.window.clone(),
            at: self.state.revision,
            collapse: self.state.collapse.clone(),
        }
    }

    fn detail_command(&self) -> Option<Command> {
        let node = self.graph.node(self.state.selected.as_deref()?)?;
        if node.namespace.is_empty() || node.kind == meshlens_model::NodeKind::Namespace {
            return None;
        }
        Some(Command::Detail {
            namespace: node.namespace.clone(),
            app: node.app.clone(),
            window: self.state.window.clone(),
            workload: node.id.clone(),
        })
    }

    /// The selected node's index in the shown graph.
    pub fn selected_index(&self) -> Option<usize> {
        let id = self.state.selected.as_deref()?;
        self.graph.nodes.iter().position(|n| n.id == id)
    }

    /// The selected node's outbound edges (indices into the shown graph's edges).
    pub fn outbound_edges(&self) -> Vec<usize> {
        let Some(id) = self.state.selected.as_deref() else { return Vec::new() };
        self.graph.edges.iter().enumerate().filter(|(_, e)| e.source == id).map(|(i, _)| i).collect()
    }

    /// The selected edge, if one is.
    pub fn selected_edge_index(&self) -> Option<usize> {
        self.outbound_edges().get(self.selected_edge?).copied()
    }

    /// The table rows after the filter, sorted.
    pub fn rows(&self) -> Vec<&WorkloadRow> {
        // The filter is a find expression (`error > 1 and app = reviews`, the web view's language)
        // when it parses as one, else text the workload id must contain.
        let needle = self.filter.to_lowercase();
        let expr = meshlens_model::find::parse(&self.filter).ok();
        let mut rows: Vec<&WorkloadRow> = self
            .workloads
            .iter()
            .filter(|w| match &expr {
                Some(e) => e.matches_row(w),
                None => needle.is_empty() || w.id.to_lowercase().contains(&needle),
            })
            .collect();
        let (col, desc) = self.sort;
        rows.sort_by(|a, b| meshlens_model::api::compare_rows(a, b, col, desc));
        rows
    }

    fn relayout(&mut self) {
        let mut g = self.full_graph.clone();
        if self.state.focus > 0
            && let Some(sel) = self.state.selected.clone()
            && g.node(&sel).is_some()
        {
            g.retain_hops(&sel, self.state.focus);
        }
        self.layout = layout(&g, label);
        self.graph = g;
        if self.state.selected.as_deref().is_none_or(|s| self.graph.node(s).is_none()) {
            // Start where traffic starts: the first box of the first column.
            self.state.selected =
                self.layout.nodes.iter().min_by_key(|p| (p.column, p.y)).map(|p| self.graph.nodes[p.node].id.clone());
            self.selected_edge = None;
        }
        self.keep_in_view();
    }

    /// Scrolls so the selected node is on screen.
    pub fn keep_in_view(&mut self) {
        let Some(p) = self.selected_index().and_then(|i| self.layout.node(i)) else { return };
        let (vw, vh) = self.viewport;
        let (x0, x1) = (p.x.saturating_sub(2), p.x + p.w + 2);
        if x0 < self.scroll.0 {
            self.scroll.0 = x0;
        } else if x1 > self.scroll.0 + vw {
            self.scroll.0 = x1.saturating_sub(vw);
        }
        if p.y < self.scroll.1 + 1 {
            self.scroll.1 = p.y.saturating_sub(1);
        } else if p.y + 2 > self.scroll.1 + vh {
            self.scroll.1 = (p.y + 2).saturating_sub(vh);
        }
    }

    fn move_selection(&mut self, dir: Dir) {
        let Some(i) = self.selected_index() else { return };
        let Some(here) = self.layout.node(i).cloned() else { return };
        let id = self.graph.nodes[i].id.clone();
        let place_of = |id: &str| self.graph.nodes.iter().position(|n| n.id == id).and_then(|k| self.layout.node(k));
        let next = match dir {
            Dir::Up | Dir::Down => {
                let mut same: Vec<_> = self.layout.nodes.iter().filter(|p| p.column == here.column).collect();
                same.sort_by_key(|p| p.y);
                let k = same.iter().position(|p| p.node == i).unwrap_or(0);
                let k = if dir == Dir::Up { k.checked_sub(1) } else { Some(k + 1) };
                k.and_then(|k| same.get(k)).map(|p| p.node)
            }
            Dir::Right | Dir::Left => {
                let mut peers: Vec<_> = self
                    .graph
                    .edges
                    .iter()
                    .filter_map(|e| match dir {
                        Dir::Right if e.source == id && e.target != id => place_of(&e.target),
                        Dir::Left if e.target == id && e.source != id => place_of(&e.source),
                        _ => None,
                    })
                    .collect();
                // The nearest row first.
                peers.sort_by_key(|p| (p.y.abs_diff(here.y), p.y));
                peers.first().map(|p| p.node)
            }
        };
        if let Some(n) = next {
            self.state.selected = Some(self.graph.nodes[n].id.clone());
            self.selected_edge = None;
            self.keep_in_view();
        }
    }

    /// Applies an action.
    pub fn update(&mut self, action: Action) -> Option<Command> {
        match action {
            Action::Quit => self.quit = true,
            Action::Help => {
                self.overlay = if self.overlay == Overlay::Help { Overlay::None } else { Overlay::Help };
            }
            Action::Escape => {
                if self.overlay == Overlay::Tap {
                    return self.close_tap();
                }
                if self.overlay != Overlay::None {
                    self.overlay = Overlay::None;
                } else if self.filtering {
                    self.filtering = false;
                } else if self.selected_edge.is_some() {
                    self.selected_edge = None;
                } else if self.state.focus > 0 {
                    return self.update(Action::ToggleFocus);
                }
            }
            Action::SwitchScreen => {
                self.state.page = match self.state.page {
                    Page::Graph => Page::Workloads,
                    Page::Workloads => Page::Graph,
                };
            }
            Action::Move(dir) => match (self.overlay, self.state.page) {
                (Overlay::Revisions, _) => {
                    let n = self.revisions.len();
                    self.revision_cursor = match dir {
                        Dir::Up => self.revision_cursor.saturating_sub(1),
                        Dir::Down => (self.revision_cursor + 1).min(n.saturating_sub(1)),
                        _ => self.revision_cursor,
                    };
                }
                (_, Page::Workloads) => {
                    let n = self.rows().len();
                    self.row = match dir {
                        Dir::Up => self.row.saturating_sub(1),
                        Dir::Down => (self.row + 1).min(n.saturating_sub(1)),
                        _ => self.row,
                    };
                }
                (_, Page::Graph) => {
                    let before = self.state.selected.clone();
                    self.move_selection(dir);
                    if self.state.selected != before {
                        return self.detail_command();
                    }
                }
            },
            Action::Pan(dx, dy) => {
                let max_x = self.layout.width.saturating_sub(1);
                let max_y = self.layout.height.saturating_sub(1);
                self.scroll.0 = (i64::from(self.scroll.0) + i64::from(dx)).clamp(0, i64::from(max_x)) as u32;
                self.scroll.1 = (i64::from(self.scroll.1) + i64::from(dy)).clamp(0, i64::from(max_y)) as u32;
            }
            Action::ToggleView => {
                self.state.view = if self.state.view == View::App { View::Versioned } else { View::App };
                self.state.selected = None;
                return Some(self.refresh());
            }
            Action::ToggleNamespaces => {
                self.state.view = if self.state.view == View::Namespace { View::Versioned } else { View::Namespace };
                self.state.collapse.clear();
                self.state.selected = None;
                return Some(self.refresh());
            }
            Action::Collapse => {
                let node = self.state.selected.as_deref().and_then(|id| self.full_graph.node(id)).cloned()?;
                if node.kind == meshlens_model::NodeKind::Namespace {
                    expand_namespace(&mut self.state.view, &mut self.state.collapse, &node.namespace, &self.full_graph);
                    self.state.selected = None;
                } else if !node.namespace.is_empty() {
                    self.state.selected = Some(collapse_item(&mut self.state.collapse, &node.namespace));
                } else {
                    return None;
                }
                return Some(self.refresh());
            }
            Action::ToggleFocus => {
                // The console's `f` keeps one hop around the selection; the web view can ask for more.
                self.state.focus = u32::from(self.state.focus == 0);
                self.scroll = (0, 0);
                self.relayout();
            }
            Action::CycleWindow => {
                self.state.cycle_window();
                // A past revision has its own window; changing the window goes live.
                self.state.revision = None;
                return Some(self.refresh());
            }
            Action::OpenRevisions => {
                self.overlay = Overlay::Revisions;
                return Some(Command::Revisions);
            }
            Action::PickRevision => {
                if self.overlay == Overlay::Revisions
                    && let Some(r) = self.revisions.get(self.revision_cursor)
                {
                    self.state.revision = Some(r.revision);
                    self.state.window = ViewState::default().window;
                    self.overlay = Overlay::None;
                    return Some(self.refresh());
                }
                if self.state.page == Page::Graph {
                    self.show_detail = Some(true);
                }
            }
            Action::Live => {
                if self.state.revision.is_some() {
                    self.state.revision = None;
                    return Some(self.refresh());
                }
            }
            Action::ToggleDetail => self.show_detail = Some(!self.detail_visible(self.width)),
            Action::NextEdge => {
                let n = self.outbound_edges().len();
                self.selected_edge = match self.selected_edge {
                    _ if n == 0 => None,
                    None => Some(0),
                    Some(k) if k + 1 < n => Some(k + 1),
                    Some(_) => None,
                };
            }
            Action::ToggleTap => {
                if self.tap.is_some() {
                    return self.close_tap();
                }
                let node = self.state.selected.as_deref().and_then(|id| self.graph.node(id))?;
                // Only workloads have agents: not the outside (`user`), an unmeshed callee, a namespace.
                if node.namespace.is_empty() || node.kind == meshlens_model::NodeKind::Namespace {
                    return None;
                }
                let target = node.id.clone();
                self.tap = Some(TapPane { target: target.clone(), ..TapPane::default() });
                self.overlay = Overlay::Tap;
                return Some(Command::Tap { target });
            }
            Action::Tapped { target, event } => {
                if let Some(t) = self.tap.as_mut().filter(|t| t.target == target) {
                    if t.events.len() == TAP_ROWS {
                        t.events.pop_front();
                    }
                    t.events.push_back(*event);
                    t.seen += 1;
                }
            }
            Action::TapStatus { target, status } => {
                if let Some(t) = self.tap.as_mut().filter(|t| t.target == target) {
                    t.status = Some(status);
                }
            }
            Action::TapEnded { target, why } => {
                if let Some(t) = self.tap.as_mut().filter(|t| t.target == target) {
                    t.ended = Some(why);
                }
            }
            Action::SortBy(col) => self.sort = col.sort_after(self.sort),
            Action::StartFilter => {
                self.filtering = true;
                self.state.page = Page::Workloads;
            }
            Action::FilterChar(c) => {
                self.filter.push(c);
                self.row = 0;
            }
            Action::FilterBackspace => {
                self.filter.pop();
            }
            Action::FilterDone => self.filtering = false,
            Action::Graph { generation, graph } => {
                // Fetches run side by side: one older than the graph shown is dropped.
                if generation < self.applied {
                    return None;
                }
                self.applied = generation;
                let first = self.full_graph.nodes.is_empty();
                self.full_graph = *graph;
                self.updated = self.now;
                self.relayout();
                if first {
                    return self.detail_command();
                }
            }
            Action::Workloads(w) => self.workloads = w.workloads,
            Action::Detail(d) => self.detail = Some(*d),
            Action::Routes(r) => self.routes = Some(*r),
            Action::Traces { workload, exemplars } => self.traces = Some((workload, exemplars)),
            Action::Revisions(mut r) => {
                r.reverse();
                self.revisions = r;
                self.revision_cursor = 0;
            }
            Action::Published(_) => {
                self.connection = Connection::Live;
                if self.state.revision.is_none() {
                    return Some(self.refresh());
                }
            }
            Action::Connection(c) => {
                let back = c == Connection::Live && self.connection != Connection::Live;
                self.connection = c;
                if back {
                    return Some(self.refresh());
                }
            }
            Action::Tick(now) => {
                self.now = Some(now);
                if self.updated.is_none() && !self.full_graph.nodes.is_empty() {
                    self.updated = Some(now);
                }
            }
        }
        None
    }

    fn close_tap(&mut self) -> Option<Command> {
        if self.overlay == Overlay::Tap {
            self.overlay = Overlay::None;
        }
        self.tap.take().map(|_| Command::StopTap)
    }

    /// Whether the detail pane shows on a terminal `width` cells wide. By default only where it
    /// hides none of the graph: 110 cells and more, and the graph fits beside the pane — or does not
    /// fit the whole width either, so it scrolls anyway. Opened by hand, the graph narrows and
    /// scrolls to the selection.
    pub fn detail_visible(&self, width: u16) -> bool {
        self.show_detail.unwrap_or_else(|| {
            let need = u16::try_from(self.layout.width).unwrap_or(u16::MAX);
            width >= 110 && (width.saturating_sub(detail_width(width)) >= need || width < need)
        })
    }

    /// Seconds since data last arrived, if any did.
    pub fn staleness(&self) -> Option<f64> {
        Some(self.now?.saturating_duration_since(self.updated?).as_secs_f64())
    }
}

/// Cells the detail pane takes on a terminal `width` cells wide.
pub(crate) fn detail_width(width: u16) -> u16 {
    if width >= 120 { 44 } else { 34 }
}

/// The console's edge label: the layout's, with a lock when the hop was mutually authenticated.
pub(crate) fn label(e: &meshlens_model::Edge) -> String {
    let l = edge_label(e);
    if e.stats.mtls_pct.is_some_and(|m| m >= 99.5) { format!("🔒{l}") } else { l }
}

/// Maps a key to an action, given whether a filter is being typed.
pub(crate) fn key_action(key: KeyEvent, app: &App) -> Option<Action> {
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    if ctrl && matches!(key.code, KeyCode::Char('c')) {
        return Some(Action::Quit);
    }
    if app.filtering {
        return match key.code {
            KeyCode::Enter => Some(Action::FilterDone),
            KeyCode::Esc => Some(Action::Escape),
            KeyCode::Backspace => Some(Action::FilterBackspace),
            KeyCode::Char(c) => Some(Action::FilterChar(c)),
            _ => None,
        };
    }
    Some(match key.code {
        KeyCode::Char('q') => Action::Quit,
        KeyCode::Char('?') => Action::Help,
        KeyCode::Tab => Action::SwitchScreen,
        KeyCode::Esc => Action::Escape,
        KeyCode::Up | KeyCode::Char('k') => Action::Move(Dir::Up),
        KeyCode::Down | KeyCode::Char('j') => Action::Move(Dir::Down),
        KeyCode::Left | KeyCode::Char('h') => Action::Move(Dir::Left),
        KeyCode::Right | KeyCode::Char('l') => Action::Move(Dir::Right),
        KeyCode::PageUp => Action::Pan(0, -10),
        KeyCode::PageDown => Action::Pan(0, 10),
        KeyCode::Char('<') => Action::Pan(-10, 0),
        KeyCode::Char('>') => Action::Pan(10, 0),
        KeyCode::Char('a') => Action::ToggleView,
        KeyCode::Char('f') => Action::ToggleFocus,
        KeyCode::Char('n') => Action::ToggleNamespaces,
        KeyCode::Char('c') => Action::Collapse,
        KeyCode::Char('w') => Action::CycleWindow,
        KeyCode::Char('r') => Action::OpenRevisions,
        KeyCode::Char('L') => Action::Live,
        KeyCode::Enter => Action::PickRevision,
        KeyCode::Char('d') => Action::ToggleDetail,
        KeyCode::Char('e') => Action::NextEdge,
        KeyCode::Char('t') => Action::ToggleTap,
        KeyCode::Char('/') => Action::StartFilter,
        KeyCode::Char(c @ '1'..='9') => Action::SortBy(COLUMNS[c as usize - '1' as usize]),
        KeyCode::Char('0') => Action::SortBy(COLUMNS[9]),
        _ => return None,
    })
}

#[cfg(test)]
#[path = "app_tests.rs"]
mod tests;
