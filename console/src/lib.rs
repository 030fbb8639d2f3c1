//! meshlens console: the live service graph in a terminal (`meshlens console`, ratatui), and the
//! text views of the graph for people and scripts (`meshlens stat`, `meshlens graph`), with the API
//! client they share. It talks to the collector's HTTP API only, never to collector internals.
//!
//! The UI is split as state ([`app`]: plain data and `update`), drawing ([`ui`]: a function of the
//! state), the collector task ([`live`]: SSE and fetches) and the event loop ([`tui`]). The graph
//! layout itself lives in `meshlens_model::layout`, shared with the web view.

// Modules marked `allow(unreachable_pub)` without the `fixture` feature hold items it re-exports.
#[cfg_attr(not(feature = "fixture"), allow(unreachable_pub))]
mod app;
mod client;
mod live;
mod quit;
pub mod text;
mod tui;
#[cfg_attr(not(feature = "fixture"), allow(unreachable_pub))]
mod ui;

#[cfg(any(test, feature = "fixture"))]
pub mod fixture;
#[cfg(test)]
mod ui_tests;

pub use client::{Client, ClientError, TapMessage};
pub use quit::QuitKey;
pub use tui::{ConsoleError, run};

/// The state and drawing the criterion benchmark measures (`benches/console.rs`), with the fixture.
#[cfg(feature = "fixture")]
pub mod bench {
    pub use crate::app::{Action, App};
    pub use crate::ui::draw;
}
