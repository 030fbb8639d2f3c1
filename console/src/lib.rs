//! meshlens console: the text views of the graph for people and scripts (`meshlens stat`,
//! `meshlens graph`), and the API client they share. The terminal UI joins this crate with its own
//! issue. It talks to the collector's HTTP API only, never to collector internals.

pub mod client;
pub mod text;

pub use client::{Client, ClientError};
