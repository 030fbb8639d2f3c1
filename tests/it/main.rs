//! Integration tests of meshlens against real servers on loopback: an in-process collector on
//! `127.0.0.1:0`, the real binary for restarts and the CLI, the OpenTelemetry Python and Node SDKs and a real
//! Prometheus (both installed by `.ci/test`).

// The whole crate is test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod agent;
mod api;
mod backend;
mod cli;
mod console;
mod demo;
mod discovery;
mod fidelity;
mod kubernetes;
mod node_sdk;
mod otlp;
mod prometheus;
mod python_sdk;
mod restart;
mod routes;
mod security;
mod stores;
mod support;
mod tap;
mod traces;
mod web;
