//! meshlens console: the live service graph in a terminal (`meshlens console`, ratatui), and the
//! text views of the graph for people and scripts (`meshlens stat`, `meshlens graph`), with the API
//! client they share. It talks to the collector's HTTP API only, never to collector internals.
//!
//! The UI is split as state ([`app`]: plain data and `update`), drawing ([`ui`]: a function of the
//! state), the collector task ([`live`]: SSE and fetches) and the event loop ([`tui`]). The graph
//! layout itself lives in `meshlens_model::layout`, shared with the web view.

pub mod app;
pub mod client;
pub mod live;
pub mod quit;
pub mod text;
pub mod tui;
pub mod ui;

#[cfg(any(test, feature = "fixture"))]
pub mod fixture;
#[cfg(test)]
mod ui_tests;

pub use client::{Client, ClientError};
