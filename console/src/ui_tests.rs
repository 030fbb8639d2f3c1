//! Whole screens on ratatui's `TestBackend`, as snapshots at 80×24 and 160×48.

use ratatui::Terminal;
use ratatui::backend::TestBackend;

use crate::app::{Action, App, Connection, Dir};
use crate::fixture::{bookinfo, workloads};
use crate::ui::draw;

fn screen(app: &mut App, w: u16, h: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| draw(f, app)).unwrap();
    let buf = t.backend().buffer();
    let mut out = String::new();
    for y in 0..h {
        let mut line = String::new();
        for x in 0..w {
            line.push_str(buf[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn app() -> App {
    let mut app = App::new("http://127.0.0.1:7420");
    app.update(Action::Graph { generation: 0, graph: Box::new(bookinfo()) });
    app.update(Action::Workloads(Box::new(workloads())));
    app.update(Action::Connection(Connection::Live));
    app
}

#[test]
fn graph_at_80x24() {
    let mut app = app();
    app.update(Action::Move(Dir::Right));
    insta::assert_snapshot!(screen(&mut app, 80, 24));
}

#[test]
fn graph_with_detail_at_160x48() {
    let mut app = app();
    app.update(Action::Move(Dir::Right));
    app.update(Action::Move(Dir::Right));
    app.update(Action::Move(Dir::Down));
    app.update(Action::Move(Dir::Down));
    app.update(Action::Move(Dir::Down));
    insta::assert_snapshot!(screen(&mut app, 160, 48));
}

#[test]
fn edge_detail_at_160x48() {
    let mut app = app();
    app.update(Action::Move(Dir::Right));
    for _ in 0..4 {
        app.update(Action::NextEdge);
    }
    insta::assert_snapshot!(screen(&mut app, 160, 48));
}

#[test]
fn workloads_at_80x24() {
    let mut app = app();
    app.update(Action::SwitchScreen);
    insta::assert_snapshot!(screen(&mut app, 80, 24));
}

#[test]
fn help_at_80x24() {
    let mut app = app();
    app.update(Action::Help);
    insta::assert_snapshot!(screen(&mut app, 80, 24));
}

#[test]
fn no_collector_at_80x24() {
    let mut app = App::new("http://127.0.0.1:7420");
    app.update(Action::Connection(Connection::Down("cannot reach http://127.0.0.1:7420: connection refused".into())));
    insta::assert_snapshot!(screen(&mut app, 80, 24));
}
