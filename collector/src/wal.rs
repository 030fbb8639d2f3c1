//! The write-ahead log: an export is acknowledged only once it is on disk.
//!
//! Receivers hand each accepted batch to one writer thread. The writer takes every batch waiting
//! (a *group*), appends them to the current segment, `fdatasync`s once, and only then queues them
//! for the pipeline (in log order) and lets the receivers answer. So kill -9 at any instant after an
//! answer finds the batch in the log, and the pipeline applies batches in sequence order, so "applied
//! through N" is one number.
//!
//! Each tick the publisher stores, in the same redb transaction as the edges, the sequence number
//! applied through and the tick's time (a *checkpoint*). On a start, [`replay`] reads the log:
//! batches after the checkpoint are applied again as new; batches before it, back to one pairing
//! time-to-live earlier, are applied *warm* — span halves and cumulative series are rebuilt, nothing
//! is counted (the store already holds their counts) — so a request whose client half came before
//! the checkpoint and whose server half came after it is still paired. Segments wholly older than
//! that are deleted.
//!
//! A record: `len u32 | crc32 u32 | seq u64 | time f64 | kind u8 | payload` (little-endian; the CRC
//! covers everything after itself). A torn or corrupt tail ends a segment's replay: such a record
//! was never acknowledged, since its group's `fdatasync` had not returned.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::{mpsc, oneshot};

use crate::counters::Counters;
use crate::engine::{Engine, unix_now};
use crate::otlp::{Batch, Job, lite};

/// A segment is closed once it holds this many bytes.
pub(crate) const SEGMENT_BYTES: u64 = 64 << 20;
/// A group is written once it holds this many bytes, even if more batches wait.
const GROUP_BYTES: usize = 16 << 20;
const HEADER: usize = 4 + 4 + 8 + 8 + 1;
const KIND_TRACES: u8 = 1;
const KIND_METRICS: u8 = 2;
/// Records are kept this long beyond the pairing time-to-live, for the warm replay.
const KEEP_MARGIN_SECS: f64 = 2.0;

/// The log could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// A file operation failed.
    #[error("write-ahead log {path}: {action}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The writer thread is gone (the collector is stopping).
    #[error("write-ahead log is closed")]
    Closed,
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> WalError + 'a {
    move |source| WalError::Io { action, path: path.to_owned(), source }
}

/// Where a tick's commit left the log: applied through `seq`, at Unix seconds `at`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Checkpoint {
    /// The last sequence number whose effects are in the store.
    pub seq: u64,
    /// When that store commit was made.
    pub at: f64,
}

fn encode(batch: &Batch) -> (u8, Vec<u8>) {
    match batch {
        Batch::Traces(t) => (KIND_TRACES, t.encode_to_vec()),
        Batch::Metrics(m) => (KIND_METRICS, m.encode_to_vec()),
    }
}

fn decode(kind: u8, payload: Bytes) -> Option<Batch> {
    match kind {
        KIND_TRACES => lite::TraceRequest::decode(payload).ok().map(Batch::Traces),
        KIND_METRICS => ExportMetricsServiceRequest::decode(payload).ok().map(Batch::Metrics),
        _ => None,
    }
}

fn put_record(out: &mut Vec<u8>, seq: u64, at: f64, kind: u8, payload: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&at.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// One record read back.
struct Record {
    seq: u64,
    at: f64,
    kind: u8,
    payload: Bytes,
}

/// Reads a segment's whole records; stops at a torn or corrupt one (and says whether it did).
fn read_segment(path: &Path) -> Result<(Vec<Record>, bool), WalError> {
    let mut data = Vec::new();
    BufReader::new(File::open(path).map_err(io("open segment", path))?)
        .read_to_end(&mut data)
        .map_err(io("read segment", path))?;
    let data = Bytes::from(data);
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let Some(h) = data.get(pos..pos + HEADER) else { return Ok((out, true)) };
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        let end = pos + HEADER + len;
        let Some(body) = data.get(pos + 8..end) else { return Ok((out, true)) };
        if crc32fast::hash(body) != crc {
            return Ok((out, true));
        }
        let seq = u64::from_le_bytes(h[8..16].try_into().unwrap_or_default());
        let at = f64::from_le_bytes(h[16..24].try_into().unwrap_or_default());
        out.push(Record { seq, at, kind: h[24], payload: data.slice(pos + HEADER..end) });
        pos = end;
    }
    Ok((out, false))
}

/// A closed or open segment: its file, and the last record it holds.
#[derive(Clone, Debug)]
struct Segment {
    path: PathBuf,
    last_seq: u64,
    last_at: f64,
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.wal"))
}

fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io("list", dir))? {
        let path = entry.map_err(io("list", dir))?.path();
        let first = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(first) = first {
            out.push((first, path));
        }
    }
    out.sort();
    Ok(out)
}

/// What a start found in the log.
pub(crate) struct Recovered {
    dir: PathBuf,
    segments: Vec<Segment>,
    next_seq: u64,
    /// Batches applied again as new (after the checkpoint).
    pub replayed: u64,
    /// Batches applied warm (before it, to rebuild pairing and series state).
    pub warmed: u64,
    /// Segments whose tail was torn or corrupt (an unacknowledged write cut off).
    pub torn: u64,
    /// Whole records (CRC intact) that did not decode as a batch, skipped with a warning.
    pub undecodable: u64,
}

/// Opens the log in `dir` and brings `engine` up to date with it, given the store's checkpoint.
/// Sets `engine.applied` to the last batch applied.
pub(crate) fn replay(dir: &Path, checkpoint: Checkpoint, engine: &mut Engine) -> Result<Recovered, WalError> {
    fs::create_dir_all(dir).map_err(io("create directory", dir))?;
    let ttl = engine.config.pairing_ttl_secs;
    let mut rec = Recovered {
        dir: dir.to_owned(),
        segments: Vec::new(),
        next_seq: checkpoint.seq + 1,
        replayed: 0,
        warmed: 0,
        torn: 0,
        undecodable: 0,
    };
    let mut last_expire = f64::MIN;
    let mut warm_done = false;
    let finish_warm = |engine: &mut Engine| {
        // Halves that had expired by the checkpoint were counted before it.
        engine.expire(checkpoint.at);
        engine.graph.warm = false;
    };
    for (first, path) in list_segments(dir)? {
        let (records, torn) = read_segment(&path)?;
        rec.torn += u64::from(torn);
        let mut seg = Segment { path, last_seq: first.saturating_sub(1), last_at: 0.0 };
        for r in records {
            if r.seq < rec.next_seq && r.seq > checkpoint.seq {
                continue; // already applied from an earlier segment: apply each sequence number once
            }
            seg.last_seq = r.seq;
            seg.last_at = r.at;
            let warm = r.seq <= checkpoint.seq;
            if warm && r.at < checkpoint.at - ttl - KEEP_MARGIN_SECS {
                continue; // its halves had expired, or paired, before the checkpoint
            }
            let Some(batch) = decode(r.kind, r.payload) else {
                // Its CRC held, so this is not a torn write: a record this version cannot read.
                tracing::warn!(seq = r.seq, kind = r.kind, "write-ahead log record not decodable; skipped");
                rec.undecodable += 1;
                continue;
            };
            if warm {
                engine.graph.warm = true;
            } else if !warm_done {
                finish_warm(engine);
                warm_done = true;
            }
            // Expiry as the ticks would have run it, at most once a second of log time.
            if r.at - last_expire >= 1.0 {
                engine.expire(r.at);
                last_expire = r.at;
            }
            match &batch {
                Batch::Traces(t) => engine.ingest_lean_traces(t, r.at),
                Batch::Metrics(m) => engine.ingest_metrics(m, r.at),
            }
            if warm {
                rec.warmed += 1;
            } else {
                rec.replayed += 1;
                engine.applied = Checkpoint { seq: r.seq, at: r.at };
                rec.next_seq = r.seq + 1;
            }
        }
        rec.next_seq = rec.next_seq.max(seg.last_seq + 1);
        rec.segments.push(seg);
    }
    if !warm_done {
        finish_warm(engine);
    }
    if engine.applied.seq < checkpoint.seq {
        engine.applied = checkpoint;
    }
    Ok(rec)
}

struct Append {
    batch: Batch,
    bytes: usize,
    done: oneshot::Sender<Result<(), ()>>,
}

/// The receivers' handle on the log.
pub(crate) struct Wal {
    tx: std_mpsc::Sender<Append>,
}

impl Wal {
    /// Starts the writer after [`replay`]: appended batches go to `pipeline` once durable. Returns
    /// the log and the newest checkpoint committed to the store, which the publisher moves forward.
    pub(crate) fn start(
        rec: Recovered,
        ttl_secs: f64,
        pipeline: mpsc::UnboundedSender<Job>,
        counters: Arc<Counters>,
    ) -> Result<(Self, Arc<Mutex<Checkpoint>>), WalError> {
        // Unbounded, so a sender never blocks the runtime: the queue's byte budget, charged before a
        // batch is handed over, bounds what waits here.
        let (tx, rx) = std_mpsc::channel::<Append>();
        let checkpoint = Arc::new(Mutex::new(Checkpoint::default()));
        let mut writer = Writer::open(rec, ttl_secs, counters)?;
        let cp = checkpoint.clone();
        // Detached: the thread ends when every [`Wal`] handle is dropped.
        std::thread::Builder::new()
            .name("meshlens-wal".into())
            .spawn(move || writer.run(rx, pipeline, cp))
            .map_err(|source| WalError::Io { action: "start thread", path: PathBuf::new(), source })?;
        Ok((Self { tx }, checkpoint))
    }

    /// Appends a batch; resolves once it is on disk and queued, or with an error (not queued).
    pub(crate) async fn append(&self, batch: Batch, bytes: usize) -> Result<(), WalError> {
        let (done, wait) = oneshot::channel();
        self.tx.send(Append { batch, bytes, done }).map_err(|_| WalError::Closed)?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            _ => Err(WalError::Closed),
        }
    }
}

struct Writer {
    dir: PathBuf,
    closed: Vec<Segment>,
    current: Segment,
    file: File,
    size: u64,
    next_seq: u64,
    last_at: f64,
    ttl: f64,
    counters: Arc<Counters>,
}

impl Writer {
    fn open(mut rec: Recovered, ttl: f64, counters: Arc<Counters>) -> Result<Self, WalError> {
        // Appends always go to a fresh segment: a torn tail in an old one stays behind its end. A
        // file already named after `next_seq` holds no whole record (replay would have moved
        // `next_seq` past it), so it is emptied.
        let path = segment_path(&rec.dir, rec.next_seq);
        let file = new_segment(&path)?;
        sync_dir(&rec.dir)?;
        let size = 0;
        let current = Segment { path, last_seq: rec.next_seq.saturating_sub(1), last_at: unix_now() };
        rec.segments.retain(|s| s.path != current.path);
        counters.wal_segments.set(rec.segments.len() as u64 + 1);
        Ok(Self {
            dir: rec.dir,
            closed: rec.segments,
            current,
            file,
            size,
            next_seq: rec.next_seq,
            last_at: 0.0,
            ttl,
            counters,
        })
    }

    fn run(
        &mut self,
        rx: std_mpsc::Receiver<Append>,
        pipeline: mpsc::UnboundedSender<Job>,
        checkpoint: Arc<Mutex<Checkpoint>>,
    ) {
        let mut buf = Vec::new();
        loop {
            let first = match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(a) => a,
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    self.tidy(*checkpoint.lock());
                    continue;
                }
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            };
            let mut group = vec![first];
            let mut group_bytes = group[0].bytes;
            while group_bytes < GROUP_BYTES
                && let Ok(a) = rx.try_recv()
            {
                group_bytes += a.bytes;
                group.push(a);
            }
            // Times only go forward, so replay sees them in order.
            let at = unix_now().max(self.last_at);
            buf.clear();
            let first_seq = self.next_seq;
            for (i, a) in group.iter().enumerate() {
                let (kind, payload) = encode(&a.batch);
                put_record(&mut buf, first_seq + i as u64, at, kind, &payload);
            }
            match self.write(&buf) {
                Ok(()) => {
                    self.last_at = at;
                    self.next_seq += group.len() as u64;
                    self.current.last_seq = self.next_seq - 1;
                    self.current.last_at = at;
                    self.counters.wal_bytes.add(buf.len() as u64);
                    self.counters.wal_syncs.add(1);
                    for (i, a) in group.into_iter().enumerate() {
                        let job = Job { batch: a.batch, bytes: a.bytes, seq: first_seq + i as u64, at: Some(at) };
                        // Queued before the answer: the pipeline sees log order.
                        let queued = pipeline.send(job).is_ok();
                        let _ = a.done.send(if queued { Ok(()) } else { Err(()) });
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "write-ahead log write failed; exports are refused until it works");
                    self.counters.wal_errors.add(group.len() as u64);
                    for a in group {
                        let _ = a.done.send(Err(()));
                    }
                }
            }
            if self.size >= SEGMENT_BYTES || self.current_is_old(at) {
                self.rotate();
            }
            self.tidy(*checkpoint.lock());
        }
    }

    fn write(&mut self, buf: &[u8]) -> Result<(), WalError> {
        let res = self.file.write_all(buf).and_then(|()| self.file.sync_data());
        match res {
            Ok(()) => {
                self.size += buf.len() as u64;
                Ok(())
            }
            Err(source) => {
                // Cut a partial write off, so the next group starts on a record boundary.
                let _ = self.file.set_len(self.size);
                Err(WalError::Io { action: "append", path: self.current.path.clone(), source })
            }
        }
    }

    fn current_is_old(&self, now: f64) -> bool {
        self.size > 0 && now - self.current.last_at > self.ttl + KEEP_MARGIN_SECS
    }

    fn rotate(&mut self) {
        let path = segment_path(&self.dir, self.next_seq);
        match new_segment(&path) {
            Ok(file) => {
                let _ = sync_dir(&self.dir);
                let next = Segment { path, last_seq: self.next_seq - 1, last_at: self.last_at };
                self.closed.push(std::mem::replace(&mut self.current, next));
                self.file = file;
                self.size = 0;
            }
            Err(error) => tracing::warn!(%error, "could not start a new write-ahead log segment"),
        }
    }

    /// Deletes closed segments the store and the warm replay no longer need.
    fn tidy(&mut self, cp: Checkpoint) {
        if self.size > 0 && self.current.last_seq <= cp.seq && self.current_is_old(cp.at) {
            self.rotate();
        }
        let keep_after = cp.at - self.ttl - KEEP_MARGIN_SECS;
        self.closed.retain(|s| {
            let done = s.last_seq <= cp.seq && s.last_at < keep_after;
            if done && let Err(error) = fs::remove_file(&s.path) {
                tracing::warn!(%error, path = %s.path.display(), "could not delete a write-ahead log segment");
                return true;
            }
            !done
        });
        self.counters.wal_segments.set(self.closed.len() as u64 + 1);
    }
}

fn new_segment(path: &Path) -> Result<File, WalError> {
    OpenOptions::new().create(true).write(true).truncate(true).open(path).map_err(io("create segment", path))
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io("sync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_torn_tail_ends_the_segment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000000000000000001.wal");
        let mut buf = Vec::new();
        put_record(&mut buf, 1, 10.0, KIND_TRACES, b"abc");
        put_record(&mut buf, 2, 11.0, KIND_METRICS, b"");
        let whole = buf.len();
        put_record(&mut buf, 3, 12.0, KIND_TRACES, b"defgh");
        for cut in [buf.len(), buf.len() - 1, whole + 3, whole] {
            fs::write(&path, &buf[..cut]).unwrap();
            let (records, torn) = read_segment(&path).unwrap();
            let want = if cut == buf.len() { 3 } else { 2 };
            assert_eq!(records.len(), want, "cut at {cut}");
            assert_eq!(torn, cut != buf.len() && cut != whole, "cut at {cut}");
            assert_eq!((records[0].seq, records[0].at, &records[0].payload[..]), (1, 10.0, &b"abc"[..]));
        }
        // A flipped byte in the payload is caught by the CRC.
        let mut bad = buf.clone();
        bad[HEADER + 1] ^= 1;
        fs::write(&path, &bad).unwrap();
        let (records, torn) = read_segment(&path).unwrap();
        assert!(records.is_empty() && torn);
    }
}
