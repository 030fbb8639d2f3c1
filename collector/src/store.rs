//! The embedded store (redb) under `--data-dir`: published revisions, and each edge's identity,
//! totals and window slices, so a restart after `kill -9` brings back the graph, the revisions and
//! the window stats, and revision numbers continue. `--in-memory` uses redb's in-memory backend, so
//! both modes run the same code.
//!
//! Each tick writes one transaction: the new revision (if any) and, per edge touched since the last
//! tick, its metadata and the slices that changed. What arrived after the last committed tick (at
//! most one tick, 1 s by default) is lost on `kill -9`; see docs/ARCHITECTURE.md.

use std::path::{Path, PathBuf};

use meshlens_model::Peer;
use meshlens_model::graph::{GraphSnapshot, RevisionSummary, TopologyChanges, View};
use meshlens_model::hist::SparseHist;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::graph::{Protocol, Totals};
use crate::window::{COARSE_SLOTS, COARSE_WIDTH, FINE_SLOTS, FINE_WIDTH, Slice};

const REVISIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("revisions");
/// Per revision its summary (time and topology changes) as JSON, so listing revisions reads a few
/// hundred bytes each, not every view.
const SUMMARIES: TableDefinition<u64, &[u8]> = TableDefinition::new("revision_summaries");
const EDGES: TableDefinition<u32, &[u8]> = TableDefinition::new("edges");
const SLOTS: TableDefinition<(u32, u8, u64), &[u8]> = TableDefinition::new("slots");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// `(revision, view)` → that view's snapshot, JSON deflated ([`View::ALL`] order): a read of one
/// view at a past revision inflates that view only and sends its bytes as stored. Revisions written
/// before this table hold their views inside their `revisions` record.
const VIEWS: TableDefinition<(u64, u8), &[u8]> = TableDefinition::new("revision_views");
/// Revision → when it was published (Unix ms): what a start needs of every revision, without
/// reading the revisions themselves.
const TIMES: TableDefinition<u64, i64> = TableDefinition::new("revision_times");

/// A store failure, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The database could not be opened.
    #[error("cannot open store {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// The cause.
        source: Box<redb::DatabaseError>,
    },
    /// A read or write failed.
    #[error("store {action}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The cause.
        source: Box<redb::Error>,
    },
    /// The store file exists but is empty: truncated, or not written by meshlens. Starting fresh
    /// over it would pass the loss of all history in silence.
    #[error(
        "store {path} is empty (0 bytes): it was truncated or never written; move it away to start a new store, or restore it from a backup"
    )]
    Empty {
        /// The database file.
        path: PathBuf,
    },
    /// A stored record did not decode.
    #[error("store holds a corrupt {what} record: {detail}")]
    Corrupt {
        /// Which table.
        what: &'static str,
        detail: String,
    },
}

fn io<E: Into<redb::Error>>(action: &'static str) -> impl FnOnce(E) -> StoreError {
    move |e| StoreError::Io { action, source: Box::new(e.into()) }
}

/// A published revision as stored: all five views.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredRevision {
    /// The revision number.
    pub revision: u64,
    /// When it was published, Unix ms.
    pub generated_at_ms: i64,
    /// The window its stats cover.
    pub window_seconds: u64,
    /// Topology changes from the revision before.
    pub changes: TopologyChanges,
    /// Snapshots in `View::ALL` order.
    pub views: Vec<GraphSnapshot>,
}

impl StoredRevision {
    /// The snapshot of `view`, if the revision holds it.
    pub fn view(&self, view: View) -> Option<&GraphSnapshot> {
        self.views.get(View::ALL.iter().position(|&v| v == view)?)
    }
}

/// An edge's identity and totals.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EdgeMeta {
    pub source: Peer,
    pub target: Peer,
    pub protocol: Protocol,
    /// Totals for `/metrics`.
    pub totals: Totals,
    /// Agent metrics cover it.
    pub metrics_seen: bool,
    /// The callee's agent reports it.
    pub server_metrics_seen: bool,
    /// Last second with data.
    pub last_sec: u64,
}

/// One edge's changes in a tick.
pub struct EdgeRecord {
    /// Engine edge index.
    pub index: u32,
    /// Identity and totals.
    pub meta: EdgeMeta,
    /// Changed slices: ring (0 fine, 1 coarse) and slice.
    pub slices: Vec<(u8, Slice)>,
}

/// An edge read back: index, identity and totals, slices by ring.
pub(crate) type StoredEdge = (u32, EdgeMeta, Vec<(u8, Slice)>);

/// What a start reads back.
pub struct Loaded {
    /// The newest revision.
    pub latest: Option<StoredRevision>,
    /// `(revision, generated_at_ms)` of every stored revision.
    pub index: Vec<(u64, i64)>,
    /// Edges with their slices, in index order.
    pub edges: Vec<StoredEdge>,
    /// When the data began (Unix seconds).
    pub data_since: Option<u64>,
    /// The write-ahead log checkpoint the stored state includes.
    pub checkpoint: crate::wal::Checkpoint,
}

fn encode_slice(s: &Slice) -> Vec<u8> {
    let mut b = Vec::with_capacity(64 + s.hist.buckets.len() * 6);
    b.extend_from_slice(&s.epoch.to_le_bytes());
    for v in [
        s.requests, s.errors, s.codes[0], s.codes[1], s.codes[2], s.codes[3], s.codes[4], s.mtls, s.retries, s.timeouts,
    ] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&s.hist.max_us.to_le_bytes());
    b.extend_from_slice(&(s.hist.buckets.len() as u32).to_le_bytes());
    for &(i, c) in &s.hist.buckets {
        b.extend_from_slice(&i.to_le_bytes());
        b.extend_from_slice(&c.to_le_bytes());
    }
    // gRPC codes last, only when there are some: slices written before they existed decode too.
    if let Some(g) = &s.grpc {
        for c in g.iter() {
            b.extend_from_slice(&c.to_le_bytes());
        }
    }
    b
}

fn decode_slice(b: &[u8]) -> Option<Slice> {
    let mut pos = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let s = b.get(pos..pos + n)?;
        pos += n;
        Some(s)
    };
    let u64_ = |s: &[u8]| u64::from_le_bytes(s.try_into().unwrap_or([0; 8]));
    let u32_ = |s: &[u8]| u32::from_le_bytes(s.try_into().unwrap_or([0; 4]));
    let epoch = u64_(take(8)?);
    let mut v = [0u32; 10];
    for x in &mut v {
        *x = u32_(take(4)?);
    }
    let max_us = u64_(take(8)?);
    let n = u32_(take(4)?) as usize;
    let mut buckets = Vec::with_capacity(n.min(4096));
    for _ in 0..n {
        let i = u16::from_le_bytes(take(2)?.try_into().ok()?);
        let c = u32_(take(4)?);
        buckets.push((i, c));
    }
    let grpc = match take(68) {
        Some(g) => {
            let mut codes = [0u32; 17];
            for (c, chunk) in codes.iter_mut().zip(g.chunks_exact(4)) {
                *c = u32_(chunk);
            }
            Some(Box::new(codes))
        }
        None => None,
    };
    Some(Slice {
        epoch,
        requests: v[0],
        errors: v[1],
        codes: [v[2], v[3], v[4], v[5], v[6]],
        mtls: v[7],
        retries: v[8],
        timeouts: v[9],
        hist: SparseHist { buckets, max_us },
        grpc,
    })
}

/// The store.
pub struct Store {
    db: Database,
    retain_revisions: u64,
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path, retain_revisions: u64) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir { path: dir.to_owned(), source })?;
        let path = dir.join("meshlens.redb");
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == 0) {
            return Err(StoreError::Empty { path });
        }
        let db = Database::create(&path).map_err(|e| StoreError::Open { path: path.clone(), source: Box::new(e) })?;
        Self::init(db, retain_revisions)
    }

    /// A store that keeps nothing once the process ends.
    pub fn in_memory(retain_revisions: u64) -> Result<Self, StoreError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| StoreError::Open { path: PathBuf::from(":memory:"), source: Box::new(e) })?;
        Self::init(db, retain_revisions)
    }

    fn init(db: Database, retain_revisions: u64) -> Result<Self, StoreError> {
        let tx = db.begin_write().map_err(io("begin"))?;
        tx.open_table(REVISIONS).map_err(io("create tables"))?;
        tx.open_table(SUMMARIES).map_err(io("create tables"))?;
        tx.open_table(EDGES).map_err(io("create tables"))?;
        tx.open_table(SLOTS).map_err(io("create tables"))?;
        tx.open_table(META).map_err(io("create tables"))?;
        tx.open_table(TIMES).map_err(io("create tables"))?;
        tx.open_table(VIEWS).map_err(io("create tables"))?;
        tx.commit().map_err(io("commit"))?;
        Ok(Self { db, retain_revisions: retain_revisions.max(1) })
    }

    /// Reads back everything a start needs.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let tx = self.db.begin_read().map_err(io("begin read"))?;
        let revs = tx.open_table(REVISIONS).map_err(io("open revisions"))?;
        let times = tx.open_table(TIMES).map_err(io("open revision times"))?;
        // Only the newest revision is read whole; the index comes from the times table, so a start
        // takes the same time whatever the history's length. (Revisions stored before that table
        // are read once, here.)
        let mut index = Vec::new();
        for item in times.iter().map_err(io("read revision times"))? {
            let (k, v) = item.map_err(io("read revision times"))?;
            index.push((k.value(), v.value()));
        }
        let first_timed = index.first().map_or(u64::MAX, |&(r, _)| r);
        let mut older = Vec::new();
        for item in revs.range(..first_timed).map_err(io("read revisions"))? {
            let (k, v) = item.map_err(io("read revisions"))?;
            older.push((k.value(), parse_revision::<StoredRevision>(v.value())?.generated_at_ms));
        }
        older.append(&mut index);
        let index = older;
        let views = tx.open_table(VIEWS).map_err(io("open revision views"))?;
        let latest = match revs.last().map_err(io("read revisions"))? {
            Some((_, v)) => Some(with_views(parse_revision(v.value())?, &views)?),
            None => None,
        };
        let edges_t = tx.open_table(EDGES).map_err(io("open edges"))?;
        let slots_t = tx.open_table(SLOTS).map_err(io("open slots"))?;
        let mut edges = Vec::new();
        for item in edges_t.iter().map_err(io("read edges"))? {
            let (k, v) = item.map_err(io("read edges"))?;
            let idx = k.value();
            let meta: EdgeMeta = serde_json::from_slice(v.value())
                .map_err(|e| StoreError::Corrupt { what: "edge", detail: e.to_string() })?;
            let mut slices = Vec::new();
            for s in slots_t.range((idx, 0u8, 0u64)..=(idx, 1u8, u64::MAX)).map_err(io("read slots"))? {
                let (k, v) = s.map_err(io("read slots"))?;
                let slice = decode_slice(v.value())
                    .ok_or(StoreError::Corrupt { what: "slot", detail: format!("edge {idx}") })?;
                slices.push((k.value().1, slice));
            }
            edges.push((idx, meta, slices));
        }
        let meta = tx.open_table(META).map_err(io("open meta"))?;
        let data_since = meta.get("data_since").map_err(io("read meta"))?.map(|v| v.value());
        let seq = meta.get("wal_seq").map_err(io("read meta"))?.map(|v| v.value()).unwrap_or(0);
        let at_ms = meta.get("wal_at_ms").map_err(io("read meta"))?.map(|v| v.value()).unwrap_or(0);
        let checkpoint = crate::wal::Checkpoint { seq, at: at_ms as f64 / 1000.0 };
        Ok(Loaded { latest, index, edges, data_since, checkpoint })
    }

    /// Writes one tick: an optional new revision, the edges that changed, and the write-ahead log
    /// checkpoint they include.
    pub fn write_tick(
        &self,
        revision: Option<&StoredRevision>,
        edges: &[EdgeRecord],
        now_sec: u64,
        data_since: u64,
        checkpoint: crate::wal::Checkpoint,
        edge_moves: &[(u32, Option<u32>)],
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(io("begin write"))?;
        {
            let mut meta = tx.open_table(META).map_err(io("open meta"))?;
            if meta.get("data_since").map_err(io("read meta"))?.is_none() {
                meta.insert("data_since", data_since).map_err(io("write meta"))?;
            }
            if checkpoint.seq > 0 {
                meta.insert("wal_seq", checkpoint.seq).map_err(io("write meta"))?;
                meta.insert("wal_at_ms", (checkpoint.at * 1000.0) as u64).map_err(io("write meta"))?;
            }
            if let Some(rev) = revision {
                let mut t = tx.open_table(REVISIONS).map_err(io("open revisions"))?;
                let bytes = encode_revision(&RevisionHead::of(rev))?;
                t.insert(rev.revision, bytes.as_slice()).map_err(io("write revision"))?;
                let mut vt = tx.open_table(VIEWS).map_err(io("open revision views"))?;
                for (i, view) in rev.views.iter().enumerate() {
                    vt.insert((rev.revision, i as u8), encode_revision(view)?.as_slice()).map_err(io("write view"))?;
                }
                let keep_from = rev.revision.saturating_sub(self.retain_revisions - 1);
                if keep_from > 0 {
                    t.retain_in(..keep_from, |_, _| false).map_err(io("prune revisions"))?;
                    vt.retain_in(..(keep_from, 0), |_, _| false).map_err(io("prune revision views"))?;
                }
                let mut times = tx.open_table(TIMES).map_err(io("open revision times"))?;
                times.insert(rev.revision, rev.generated_at_ms).map_err(io("write revision time"))?;
                if keep_from > 0 {
                    times.retain_in(..keep_from, |_, _| false).map_err(io("prune revision times"))?;
                }
                let mut sums = tx.open_table(SUMMARIES).map_err(io("open summaries"))?;
                let summary = serde_json::to_vec(&summary_of(rev))
                    .map_err(|e| StoreError::Corrupt { what: "summary", detail: e.to_string() })?;
                sums.insert(rev.revision, summary.as_slice()).map_err(io("write summary"))?;
                if keep_from > 0 {
                    sums.retain_in(..keep_from, |_, _| false).map_err(io("prune summaries"))?;
                }
            }
            let mut et = tx.open_table(EDGES).map_err(io("open edges"))?;
            let mut st = tx.open_table(SLOTS).map_err(io("open slots"))?;
            // Evictions first, in the order the graph did them, so indices match memory again.
            for &(gone, moved_from) in edge_moves {
                et.remove(gone).map_err(io("evict edge"))?;
                st.retain_in((gone, 0u8, 0u64)..=(gone, 1u8, u64::MAX), |_, _| false).map_err(io("evict slots"))?;
                let Some(from) = moved_from else { continue };
                let meta = et.remove(from).map_err(io("move edge"))?.map(|v| v.value().to_vec());
                if let Some(meta) = meta {
                    et.insert(gone, meta.as_slice()).map_err(io("move edge"))?;
                }
                let mut slots = Vec::new();
                for s in st.range((from, 0u8, 0u64)..=(from, 1u8, u64::MAX)).map_err(io("move slots"))? {
                    let (k, v) = s.map_err(io("move slots"))?;
                    let (_, ring, epoch) = k.value();
                    slots.push((ring, epoch, v.value().to_vec()));
                }
                st.retain_in((from, 0u8, 0u64)..=(from, 1u8, u64::MAX), |_, _| false).map_err(io("move slots"))?;
                for (ring, epoch, v) in slots {
                    st.insert((gone, ring, epoch), v.as_slice()).map_err(io("move slots"))?;
                }
            }
            let fine_cut = (now_sec / FINE_WIDTH).saturating_sub(FINE_SLOTS as u64);
            let coarse_cut = (now_sec / COARSE_WIDTH).saturating_sub(COARSE_SLOTS as u64);
            for e in edges {
                let bytes = serde_json::to_vec(&e.meta)
                    .map_err(|err| StoreError::Corrupt { what: "edge", detail: err.to_string() })?;
                et.insert(e.index, bytes.as_slice()).map_err(io("write edge"))?;
                for (ring, slice) in &e.slices {
                    st.insert((e.index, *ring, slice.epoch), encode_slice(slice).as_slice())
                        .map_err(io("write slot"))?;
                }
                st.retain_in((e.index, 0u8, 0u64)..(e.index, 0u8, fine_cut), |_, _| false)
                    .map_err(io("prune slots"))?;
                st.retain_in((e.index, 1u8, 0u64)..(e.index, 1u8, coarse_cut), |_, _| false)
                    .map_err(io("prune slots"))?;
            }
        }
        tx.commit().map_err(io("commit"))?;
        Ok(())
    }

    /// Empties the revision times table, leaving a store as written before it existed (for the
    /// restart benchmark's comparison, and the test of that path).
    pub fn forget_revision_times(&self) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(io("begin write"))?;
        tx.open_table(TIMES).map_err(io("open revision times"))?.retain(|_, _| false).map_err(io("prune"))?;
        tx.commit().map_err(io("commit"))
    }

    /// One revision.
    pub fn revision(&self, n: u64) -> Result<Option<StoredRevision>, StoreError> {
        let tx = self.db.begin_read().map_err(io("begin read"))?;
        let t = tx.open_table(REVISIONS).map_err(io("open revisions"))?;
        let views = tx.open_table(VIEWS).map_err(io("open revision views"))?;
        match t.get(n).map_err(io("read revision"))? {
            Some(v) => Ok(Some(with_views(parse_revision(v.value())?, &views)?)),
            None => Ok(None),
        }
    }

    /// One view of a revision as stored: the revision without its views, and that view's JSON.
    pub fn revision_view(&self, n: u64, view: View) -> Result<Option<(StoredRevision, Vec<u8>)>, StoreError> {
        let tx = self.db.begin_read().map_err(io("begin read"))?;
        let t = tx.open_table(REVISIONS).map_err(io("open revisions"))?;
        let Some(v) = t.get(n).map_err(io("read revision"))? else { return Ok(None) };
        let mut head: StoredRevision = parse_revision(v.value())?;
        let i = View::ALL.iter().position(|&v| v == view).unwrap_or(0);
        let json = if head.views.is_empty() {
            let views = tx.open_table(VIEWS).map_err(io("open revision views"))?;
            let stored = views.get((n, i as u8)).map_err(io("read revision view"))?;
            let stored =
                stored.ok_or(StoreError::Corrupt { what: "revision", detail: format!("{n} lacks view {view}") })?;
            inflate(stored.value())?
        } else {
            // Written before views were stored apart: the record holds them all.
            let g = head
                .views
                .get(i)
                .ok_or(StoreError::Corrupt { what: "revision", detail: format!("{n} lacks view {view}") })?;
            serde_json::to_vec(g).map_err(|e| StoreError::Corrupt { what: "revision", detail: e.to_string() })?
        };
        head.views.clear();
        Ok(Some((head, json)))
    }

    /// Summaries of the revisions after `since`, oldest first, at most `limit`.
    pub fn revisions_after(&self, since: u64, limit: usize) -> Result<Vec<RevisionSummary>, StoreError> {
        let tx = self.db.begin_read().map_err(io("begin read"))?;
        let sums = tx.open_table(SUMMARIES).map_err(io("open summaries"))?;
        let t = tx.open_table(REVISIONS).map_err(io("open revisions"))?;
        let mut out = Vec::new();
        for item in t.range(since.saturating_add(1)..).map_err(io("read revisions"))?.take(limit) {
            let (k, v) = item.map_err(io("read revisions"))?;
            // Stores written before the summaries table read the whole revision, once.
            let summary = match sums.get(k.value()).map_err(io("read summary"))? {
                Some(s) => serde_json::from_slice(s.value())
                    .map_err(|e| StoreError::Corrupt { what: "summary", detail: e.to_string() })?,
                None => summary_of(&parse_revision(v.value())?),
            };
            out.push(summary);
        }
        Ok(out)
    }
}

fn summary_of(r: &StoredRevision) -> RevisionSummary {
    RevisionSummary {
        revision: r.revision,
        generated_at: meshlens_model::time::format_rfc3339_ms(r.generated_at_ms),
        changes: r.changes.clone(),
    }
}

/// A revision's record without its views (they are stored apart, per view, in [`VIEWS`]); it reads
/// back as a [`StoredRevision`] with no views.
#[derive(Serialize)]
struct RevisionHead<'a> {
    revision: u64,
    generated_at_ms: i64,
    window_seconds: u64,
    changes: &'a TopologyChanges,
    views: [(); 0],
}

impl<'a> RevisionHead<'a> {
    fn of(r: &'a StoredRevision) -> Self {
        Self {
            revision: r.revision,
            generated_at_ms: r.generated_at_ms,
            window_seconds: r.window_seconds,
            changes: &r.changes,
            views: [],
        }
    }
}

/// A revision read from its record, with its views from [`VIEWS`] when the record has none.
fn with_views(
    mut rev: StoredRevision,
    views: &redb::ReadOnlyTable<(u64, u8), &[u8]>,
) -> Result<StoredRevision, StoreError> {
    if !rev.views.is_empty() {
        return Ok(rev);
    }
    for item in views.range((rev.revision, 0)..=(rev.revision, u8::MAX)).map_err(io("read revision views"))? {
        let (_, v) = item.map_err(io("read revision views"))?;
        rev.views.push(parse_revision(v.value())?);
    }
    Ok(rev)
}

/// Revisions and their views are JSON, deflate-compressed: a view repeats ids and field names, and
/// compresses about tenfold.
fn encode_revision<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    let corrupt = |e: &dyn std::fmt::Display| StoreError::Corrupt { what: "revision", detail: e.to_string() };
    // Serialised whole, then deflated in one call: serde_json's many small writes straight into the
    // encoder cost ~1.9 s for a 5,000-edge revision (each write a compressor call that clears its
    // buffers), against the figures in docs/PERFORMANCE.md ("Storing a revision") this way.
    let json = serde_json::to_vec(value).map_err(|e| corrupt(&e))?;
    let mut enc = flate2::write::DeflateEncoder::new(Vec::with_capacity(json.len() / 8), flate2::Compression::fast());
    std::io::Write::write_all(&mut enc, &json).map_err(|e| corrupt(&e))?;
    enc.finish().map_err(|e| corrupt(&e))
}

/// Inflates a stored record whole.
fn inflate(b: &[u8]) -> Result<Vec<u8>, StoreError> {
    let mut json = Vec::with_capacity(b.len() * 8);
    std::io::Read::read_to_end(&mut flate2::read::DeflateDecoder::new(b), &mut json)
        .map_err(|e| StoreError::Corrupt { what: "revision", detail: e.to_string() })?;
    Ok(json)
}

fn parse_revision<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, StoreError> {
    // Inflated whole, then parsed from the slice (serde_json reads a slice faster than a reader).
    serde_json::from_slice(&inflate(b)?).map_err(|e| StoreError::Corrupt { what: "revision", detail: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_comes_from_the_times_table_and_old_stores_still_load() {
        let store = Store::in_memory(3).unwrap();
        for r in 1..=5u64 {
            let rev = StoredRevision {
                revision: r,
                generated_at_ms: 1000 + r as i64,
                window_seconds: 60,
                changes: Default::default(),
                views: vec![],
            };
            store.write_tick(Some(&rev), &[], 5, 0, Default::default(), &[]).unwrap();
        }
        let want = vec![(3, 1003), (4, 1004), (5, 1005)];
        let loaded = store.load().unwrap();
        assert_eq!((loaded.index.clone(), loaded.latest.map(|r| r.revision)), (want.clone(), Some(5)));
        store.forget_revision_times().unwrap();
        let loaded = store.load().unwrap();
        assert_eq!((loaded.index, loaded.latest.map(|r| r.revision)), (want, Some(5)), "read from the revisions");
    }

    #[test]
    fn edge_moves_follow_the_graph_s_swap_removal() {
        let store = Store::in_memory(10).unwrap();
        let meta = |n: &str| EdgeMeta {
            source: Peer::User,
            target: Peer::External { name: n.into() },
            protocol: crate::graph::Protocol::Http,
            totals: Default::default(),
            metrics_seen: false,
            server_metrics_seen: false,
            last_sec: 1,
        };
        let slice = |epoch| Slice { epoch, ..Slice::default() };
        let edges: Vec<EdgeRecord> = (0..4u32)
            .map(|i| EdgeRecord { index: i, meta: meta(&format!("e{i}")), slices: vec![(0, slice(u64::from(i) + 1))] })
            .collect();
        let cp = crate::wal::Checkpoint::default();
        store.write_tick(None, &edges, 5, 0, cp, &[]).unwrap();
        // Edge 1 goes and edge 3 (the last) takes its place; then edge 2, now last, goes.
        store.write_tick(None, &[], 5, 0, cp, &[(1, Some(3)), (2, None)]).unwrap();
        let loaded = store.load().unwrap();
        let got: Vec<(u32, String, Vec<u64>)> = loaded
            .edges
            .iter()
            .map(|(i, m, s)| (*i, m.target.id(), s.iter().map(|(_, s)| s.epoch).collect()))
            .collect();
        assert_eq!(got, vec![(0, "ext:e0".into(), vec![1]), (1, "ext:e3".into(), vec![4])]);
    }

    #[test]
    fn revisions_round_trip_compressed() {
        let rev = StoredRevision {
            revision: 9,
            generated_at_ms: 1_800_000_000_000,
            window_seconds: 60,
            changes: TopologyChanges { nodes_added: vec!["default/a".into()], ..TopologyChanges::default() },
            views: vec![GraphSnapshot { revision: 9, ..GraphSnapshot::default() }; 4],
        };
        let bytes = encode_revision(&rev).unwrap();
        let back: StoredRevision = parse_revision(&bytes).unwrap();
        assert_eq!((back.revision, back.views.len(), back.changes), (9, 4, rev.changes));
        assert!(parse_revision::<StoredRevision>(&bytes[..bytes.len() / 2]).is_err());
    }

    #[test]
    fn views_are_stored_apart_and_records_holding_them_still_read() {
        let rev = |n: u64| StoredRevision {
            revision: n,
            generated_at_ms: 1_800_000_000_000 + n as i64,
            window_seconds: 60,
            changes: TopologyChanges::default(),
            views: View::ALL
                .iter()
                .map(|&view| GraphSnapshot { revision: n, view, ..GraphSnapshot::default() })
                .collect(),
        };
        let store = Store::in_memory(3).unwrap();
        store.write_tick(Some(&rev(1)), &[], 100, 100, Default::default(), &[]).unwrap();
        let (head, json) = store.revision_view(1, View::Service).unwrap().unwrap();
        assert_eq!((head.revision, head.window_seconds, head.views.len()), (1, 60, 0));
        let g: GraphSnapshot = serde_json::from_slice(&json).unwrap();
        assert_eq!((g.revision, g.view), (1, View::Service));
        let whole = store.revision(1).unwrap().unwrap();
        assert_eq!(whole.views.iter().map(|g| g.view).collect::<Vec<_>>(), View::ALL);
        // A record written before views were stored apart holds them all.
        let tx = store.db.begin_write().unwrap();
        tx.open_table(REVISIONS).unwrap().insert(2, encode_revision(&rev(2)).unwrap().as_slice()).unwrap();
        tx.commit().unwrap();
        let (_, json) = store.revision_view(2, View::App).unwrap().unwrap();
        assert_eq!(serde_json::from_slice::<GraphSnapshot>(&json).unwrap().view, View::App);
        assert_eq!(store.revision(2).unwrap().unwrap().views.len(), View::ALL.len());
        assert_eq!(store.load().unwrap().latest.unwrap().views.len(), View::ALL.len());
        // Retention drops a revision's views with it.
        for n in 3..=5 {
            store.write_tick(Some(&rev(n)), &[], 100, 100, Default::default(), &[]).unwrap();
        }
        assert!(store.revision_view(1, View::App).unwrap().is_none());
        let tx = store.db.begin_read().unwrap();
        let views = tx.open_table(VIEWS).unwrap();
        assert_eq!(views.iter().unwrap().count(), 3 * View::ALL.len(), "the views of 3, 4 and 5 only");
        assert_eq!(store.load().unwrap().latest.unwrap().revision, 5);
    }

    #[test]
    fn slices_round_trip() {
        let mut s = Slice {
            epoch: 42,
            requests: 3,
            errors: 1,
            codes: [2, 0, 0, 1, 0],
            mtls: 3,
            retries: 4,
            timeouts: 5,
            ..Slice::default()
        };
        s.hist.record(1500);
        s.hist.record(90_000);
        assert_eq!(decode_slice(&encode_slice(&s)), Some(s.clone()));
        let bytes = encode_slice(&s);
        assert_eq!(decode_slice(&bytes[..bytes.len() - 1]), None);
        // With gRPC codes; a slice written before them (no trailing codes) still reads.
        let old = encode_slice(&s);
        let mut codes = [0u32; 17];
        codes[14] = 2;
        s.grpc = Some(Box::new(codes));
        assert_eq!(decode_slice(&encode_slice(&s)), Some(s.clone()));
        assert_eq!(decode_slice(&old).unwrap().grpc, None);
    }
}
