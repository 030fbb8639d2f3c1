//! The pipeline: one OS thread that takes the receivers' queued batches in order and applies each to
//! the engine under its lock, notes the write-ahead log sequence number applied through, then gives
//! the batch's bytes back to the queue's budget. Requests are placed in time by when they were made
//! durable (or applied, without a log), not by span timestamps (span clocks are skewed).

use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::mpsc;

use crate::engine::unix_now;
use crate::hub::Hub;
use crate::otlp::{self, Batch, Job};

/// Starts the pipeline thread; it ends when every sender of `rx` is gone.
pub(crate) fn spawn(hub: Arc<Hub>, mut rx: mpsc::UnboundedReceiver<Job>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("meshlens-pipeline".into()).spawn(move || {
        while let Some(job) = rx.blocking_recv() {
            let now = job.at.unwrap_or_else(unix_now);
            {
                let mut engine = hub.engine.lock();
                match &job.batch {
                    Batch::Traces(t) => engine.ingest_lean_traces(t, now),
                    Batch::Metrics(m) => engine.ingest_metrics(m, now),
                }
                if job.seq > 0 {
                    engine.applied = crate::wal::Checkpoint { seq: job.seq, at: now };
                }
            }
            otlp::done(&hub.counters, job.bytes);
        }
    })
}
