//! The store: ledger segments + on-disk tree + state database (an LSM tree,
//! fjall), opened and committed together.
//!
//! Durability contract (see docs/architecture.md): the Raft log is the
//! write-ahead log. An apply step's state writes become a layer, visible at
//! once and written to the database in the background (`layers`). Every
//! write first fsyncs the ledger segments, so whatever write a crash leaves
//! in the database's journal records a ledger length that is on disk. Writes
//! are not fsynced themselves, except every so often a *durable* one. After a
//! crash the database holds some write at or after its last durable one; its
//! meta says how many ledger records it covers, the ledger is cut back to
//! that length and the Raft log replays the rest.

use crate::layers::{self, Keyspaces, Layer, Layered, Table, View, KEYSPACES, META};
use crate::node_cache::NodeCache;
use crate::read_cache::ReadCache;
use crate::segments::{LedgerFiles, OpenReport, SegmentError};
use crate::tree::{TreeError, TreeFiles};
use crate::value_history::{self, Horizon};
use comity_core::entry::Record;
use comity_core::hash::Sha256;
use comity_core::merkle::{self, Hash};
use fjall::{Database, KeyspaceCreateOptions, PersistMode};
use jmt::storage::{LeafNode, Node, NodeKey, TreeReader};
use jmt::{KeyHash, OwnedValue, Version};
use serde_bytes::{ByteBuf, Bytes};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

pub use crate::layers::KeyValue;

/// State-tree versions (checkpoints) whose nodes are kept for proofs; nodes
/// replaced longer ago are deleted, so the state tree does not grow with history.
pub const STATE_VERSIONS_KEPT: u64 = 256;

/// Default block cache of the state database.
const DEFAULT_BLOCK_CACHE_BYTES: u64 = 256 << 20;

/// Sizes an operator may tune (a node takes them from its `[limits]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// Size at which a ledger segment file is closed and a new one begun.
    pub roll_bytes: u64,
    /// The state database's block cache: table blocks of every keyspace.
    pub block_cache_bytes: u64,
    /// The state tree's node cache: the larger the state, the more of its
    /// leaves a write otherwise reads from the database.
    pub node_cache_bytes: u64,
    /// Table files the state database keeps open (at least 10): part of
    /// the process's open-file limit, which connections share.
    pub max_open_files: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            roll_bytes: crate::segments::DEFAULT_ROLL_BYTES,
            block_cache_bytes: DEFAULT_BLOCK_CACHE_BYTES,
            node_cache_bytes: crate::node_cache::DEFAULT_CAPACITY_BYTES,
            max_open_files: 900,
        }
    }
}

/// Most one keyspace's memtable holds before it is flushed to disk (six
/// keyspaces: this bounds the state database's write memory). Large, with
/// [`L0_TABLES`], because random keys make each merge into level 1 rewrite
/// all of it (see docs/architecture.md).
const MEMTABLE_BYTES: u64 = 64 << 20;

/// Tables level 0 gathers before they are merged into level 1.
const L0_TABLES: u8 = 8;

/// Journal kept before memtables are flushed: bounds replay time after a crash.
const JOURNAL_BYTES: u64 = 512 << 20;

/// How long the writer gathers layers before writing them.
const WRITE_EVERY: Duration = Duration::from_millis(100);

/// How often an apply step saves the unfolded state changes with its layer,
/// which lets the writer end a write there (see [`Layer::resumable`]).
const RESUME_EVERY: Duration = Duration::from_millis(40);

/// Bytes of layers waiting to be written beyond which a committing apply step
/// waits for the writer to catch up (bounds memory, not correctness).
const MAX_UNWRITTEN_BYTES: usize = 64 << 20;

const META_LEDGER_LEN: &str = "ledger_len";
const META_LEDGER_ROOT: &str = "ledger_root";
/// State changes not yet folded into the state tree, saved with every write
/// so that recovery from a point between checkpoints loses none.
const META_DIRTY: &str = "dirty_state";

/// State changes (key → new value, or `None` for a deletion).
pub type Dirty = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Unfolded changes, plus changes taken for state-tree versions not yet written.
#[derive(Default)]
struct Unfolded {
    dirty: Dirty,
    jobs: BTreeMap<u64, Dirty>,
}

/// Changes as saved: keys and values are CBOR byte strings (serde would
/// otherwise write a `Vec<u8>` as an array of integers, slowly).
type SavedChanges<B> = Vec<(B, Option<B>)>;

#[derive(serde::Serialize)]
struct SavingUnfolded<'a> {
    dirty: SavedChanges<&'a Bytes>,
    jobs: Vec<(u64, SavedChanges<&'a Bytes>)>,
}

#[derive(serde::Deserialize)]
struct SavedUnfolded {
    dirty: SavedChanges<ByteBuf>,
    jobs: Vec<(u64, SavedChanges<ByteBuf>)>,
}

fn saving(d: &Dirty) -> SavedChanges<&Bytes> {
    d.iter()
        .map(|(k, v)| (Bytes::new(k), v.as_deref().map(Bytes::new)))
        .collect()
}

fn encode_unfolded(dirty: &Dirty, jobs: &BTreeMap<u64, Dirty>) -> Vec<u8> {
    let u = SavingUnfolded {
        dirty: saving(dirty),
        jobs: jobs.iter().map(|(v, d)| (*v, saving(d))).collect(),
    };
    let mut out = Vec::new();
    ciborium::into_writer(&u, &mut out).expect("encoding to a Vec cannot fail");
    out
}

fn decode_unfolded(b: &[u8]) -> Result<Unfolded, String> {
    let saved: SavedUnfolded = ciborium::from_reader(b).map_err(|e| e.to_string())?;
    let owned = |c: SavedChanges<ByteBuf>| -> Dirty {
        c.into_iter()
            .map(|(k, v)| (k.into_vec(), v.map(ByteBuf::into_vec)))
            .collect()
    };
    Ok(Unfolded {
        dirty: owned(saved.dirty),
        jobs: saved.jobs.into_iter().map(|(v, c)| (v, owned(c))).collect(),
    })
}

/// A value (or its absence) at a state-tree version, with its proof and that version's root.
pub struct StateProof {
    pub value: Option<Vec<u8>>,
    /// Borsh-encoded jmt `SparseMerkleProof<Sha256>`.
    pub proof: Vec<u8>,
    pub root: Hash,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Ledger(#[from] SegmentError),
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error("state database {path}: {message}")]
    Db { path: PathBuf, message: String },
    #[error("ledger record {index} is not a valid record: {message}")]
    BadRecord { index: u64, message: String },
    #[error("the ledger files in {dir} do not match the state database: {message}")]
    Mismatch { dir: PathBuf, message: String },
    #[error("state tree: {0}")]
    StateTree(String),
}

fn db_err(path: &Path) -> impl Fn(fjall::Error) -> StoreError + '_ {
    move |e| StoreError::Db {
        path: path.to_path_buf(),
        message: match e {
            fjall::Error::Locked => {
                "in use by another process (is a node already running on this data directory?)"
                    .into()
            }
            e => e.to_string(),
        },
    }
}

/// Storage of one node. Shared between the applier and readers.
pub struct Store {
    inner: Arc<Inner>,
    writer: Option<std::thread::JoinHandle<()>>,
}

struct Inner {
    db: Database,
    keyspaces: Keyspaces,
    db_path: PathBuf,
    ledger: RwLock<LedgerFiles>,
    tree: RwLock<TreeFiles>,
    /// State keys changed since the last state-root update.
    dirty: Mutex<Dirty>,
    /// Changes taken for state-tree versions whose nodes are not written yet.
    jobs: Mutex<BTreeMap<u64, Dirty>>,
    /// Nodes replaced before this version are already pruned: pruning starts
    /// here instead of scanning the deletions before it again.
    pruned_to: AtomicU64,
    /// The newest state-tree version written to the database.
    written_version: AtomicU64,
    /// Raised at each durable write: values older than it that a newer one
    /// replaced are dropped by compaction (see `value_history`).
    horizon: Horizon,
    /// Committed apply steps not yet in the database, oldest first.
    layers: RwLock<Vec<Arc<Layer>>>,
    /// Apply steps committed and visible: changed only with `layers` write-locked.
    published: AtomicU64,
    /// The latest committed state values, read or written (see `read_cache`).
    cache: ReadCache,
    /// State-tree nodes, read or written (see `node_cache`).
    nodes: NodeCache,
    /// One write transaction at a time; holds when a layer last saved the unfolded changes.
    txn_lock: Mutex<Instant>,
    /// One database writer at a time (the background writer or a caller flushing).
    db_lock: Mutex<()>,
    progress: Mutex<Progress>,
    /// Signalled when layers are added or the writer should stop.
    work: Condvar,
    /// Signalled when layers reach the database.
    written: Condvar,
}

/// Layer sequence numbers: committed by apply, written to the database, durable.
#[derive(Default)]
struct Progress {
    committed: u64,
    written: u64,
    durable: u64,
    unwritten_bytes: usize,
    /// Someone waits for the writer (a durable commit, or memory): write now.
    urgent: bool,
    stop: bool,
    /// Why writing to the database failed; every later commit reports it.
    failed: Option<String>,
}

impl Store {
    /// Opens the store in `dir` with default caches (see [`Store::open_with`]).
    pub fn open(dir: &Path, roll_bytes: u64) -> Result<(Store, OpenReport), StoreError> {
        Self::open_with(
            dir,
            &StoreOptions {
                roll_bytes,
                ..StoreOptions::default()
            },
        )
    }

    /// Opens the store in `dir`, verifying every ledger record and rebuilding the tree.
    pub fn open_with(dir: &Path, opts: &StoreOptions) -> Result<(Store, OpenReport), StoreError> {
        crate::dirs::create_dir_all_synced(dir).map_err(|e| StoreError::Db {
            path: dir.into(),
            message: e.to_string(),
        })?;
        let db_path = dir.join("state");
        let legacy = dir.join("state.redb");
        if legacy.exists() {
            return Err(StoreError::Db {
                message: format!(
                    "written by an older Comity, which kept state in redb; this version keeps it in {} and does not convert it. Run the version that wrote it, or start from a new data directory",
                    db_path.display()
                ),
                path: legacy,
            });
        }
        let ledger_dir = dir.join("ledger");
        // A listing that fails for any reason but absence must not pass
        // for "no ledger": an empty state would then cut the ledger to 0.
        let listing_err = |e: std::io::Error| StoreError::Db {
            message: format!("listing the ledger files: {e}"),
            path: ledger_dir.clone(),
        };
        let has_ledger = match std::fs::read_dir(&ledger_dir) {
            Ok(d) => {
                let mut any = false;
                for e in d {
                    any |= e
                        .map_err(listing_err)?
                        .file_name()
                        .to_string_lossy()
                        .ends_with(".seg");
                }
                any
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(listing_err(e)),
        };
        if !db_path.exists() && has_ledger {
            // Opening would cut the ledger back to an empty state's length: refuse instead.
            return Err(StoreError::Mismatch {
                dir: ledger_dir,
                message: format!(
                    "ledger files exist but the state database {} is missing; restore it from the same backup, or audit the ledger with `comity ledger verify --dir`",
                    db_path.display()
                ),
            });
        }
        // A bounded block cache keeps resident memory predictable on large
        // ledgers. Journal writes are persisted by the writer, never implicitly.
        let err = db_err(&db_path);
        let horizon = Horizon::default();
        let filters = horizon.factory();
        let db = Database::builder(db_path.clone())
            .cache_size(opts.block_cache_bytes)
            .max_cached_files(Some(opts.max_open_files.max(10)))
            .max_journaling_size(JOURNAL_BYTES)
            .manual_journal_persist(true)
            .worker_threads(1)
            .with_compaction_filter_factories(Arc::new(move |name| {
                (name == value_history::KEYSPACE).then(|| filters.clone())
            }))
            .open()
            .map_err(&err)?;
        // What a killed process wrote may still be in the page cache only:
        // made durable before anything (the purge floor, the ledger's
        // length) is decided from it.
        db.persist(PersistMode::SyncAll).map_err(&err)?;
        let keyspaces: Keyspaces = Arc::new(
            KEYSPACES
                .iter()
                .map(|name| {
                    db.keyspace(name, || {
                        KeyspaceCreateOptions::default()
                            .max_memtable_size(MEMTABLE_BYTES)
                            .compaction_strategy(Arc::new(
                                fjall::compaction::Leveled::default().with_l0_threshold(L0_TABLES),
                            ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(&err)?
                .try_into()
                .unwrap_or_else(|_| unreachable!("one handle per keyspace name")),
        );
        let converted = value_history::convert_legacy(&db, &keyspaces[Table::JmtValues as usize])
            .map_err(&err)?;
        if converted > 0 {
            tracing::info!(
                values = converted,
                "state-tree values converted to the newest-first layout"
            );
        }
        let meta = |key: &str| -> Result<Option<fjall::Slice>, StoreError> {
            keyspaces[META].get(key).map_err(&err)
        };
        // A damaged length must not read as zero: opening would cut the ledger to it.
        let durable_len = match meta(META_LEDGER_LEN)? {
            // Recorded before the first ledger record can exist, so a database
            // without it beside ledger files was replaced or emptied.
            None if has_ledger => {
                return Err(StoreError::Mismatch {
                    dir: ledger_dir,
                    message: format!(
                        "ledger files exist but the state database {} records no ledger length: it was replaced or emptied; restore it from the same backup, or audit the ledger with `comity ledger verify --dir`",
                        db_path.display()
                    ),
                });
            }
            None => {
                keyspaces[META]
                    .insert(META_LEDGER_LEN, 0u64.to_be_bytes())
                    .map_err(&err)?;
                db.persist(PersistMode::SyncAll).map_err(&err)?;
                0
            }
            Some(v) => u64::from_be_bytes((*v).try_into().map_err(|_| StoreError::Db {
                path: db_path.clone(),
                message: format!("the recorded ledger length is {} bytes, not 8", v.len()),
            })?),
        };
        let durable_root: Option<Hash> = meta(META_LEDGER_ROOT)?.and_then(|v| (*v).try_into().ok());
        let unfolded = match meta(META_DIRTY)? {
            Some(v) => decode_unfolded(&v).map_err(|e| StoreError::Db {
                path: db_path.clone(),
                message: format!("saved state changes do not decode: {e}"),
            })?,
            None => Unfolded::default(),
        };
        drop(err);
        let mut tree = TreeFiles::create(&dir.join("tree"))?;
        let mut tree_err = None;
        let (mut ledger, report) = LedgerFiles::open(
            &ledger_dir,
            durable_len,
            opts.roll_bytes,
            |index, payload| {
                if index >= durable_len {
                    return Ok(()); // unsynced tail: cut below and replayed from the Raft log
                }
                let leaf = Record::leaf_of(payload).ok_or_else(|| StoreError::BadRecord {
                    index,
                    message: "not a canonical {body, leaf} record".into(),
                })?;
                if let Err(e) = tree.push(merkle::leaf_hash(leaf)) {
                    tree_err = Some(e);
                }
                Ok::<(), StoreError>(())
            },
        )?;
        if let Some(e) = tree_err {
            return Err(e.into());
        }
        // Checked before the intact records past the recorded length are
        // cut: a state database from another ledger is refused with those
        // kept (a damaged tail past that length was cut on opening).
        let root = tree.root();
        if durable_len > 0 && Some(root) != durable_root {
            return Err(StoreError::Mismatch {
                dir: ledger_dir,
                message: format!(
                    "the {durable_len} durable records hash to root {}, the state database recorded {}",
                    hex::encode(root),
                    durable_root.map(hex::encode).unwrap_or_else(|| "none".into())
                ),
            });
        }
        if ledger.len() > durable_len {
            ledger.truncate(durable_len)?;
        }
        tree.flush()?;
        let inner = Arc::new(Inner {
            db,
            keyspaces,
            db_path,
            ledger: RwLock::new(ledger),
            tree: RwLock::new(tree),
            dirty: Mutex::new(unfolded.dirty),
            jobs: Mutex::new(unfolded.jobs),
            pruned_to: AtomicU64::new(0),
            written_version: AtomicU64::new(0),
            horizon,
            layers: RwLock::new(Vec::new()),
            published: AtomicU64::new(0),
            cache: ReadCache::new(0),
            nodes: NodeCache::new(opts.node_cache_bytes),
            txn_lock: Mutex::new(Instant::now()),
            db_lock: Mutex::new(()),
            progress: Mutex::new(Progress::default()),
            work: Condvar::new(),
            written: Condvar::new(),
        });
        let writer = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("state-writer".into())
                .spawn(move || inner.write_behind())
                .map_err(|e| StoreError::Db {
                    path: dir.into(),
                    message: format!("starting the state writer: {e}"),
                })?
        };
        Ok((
            Store {
                inner,
                writer: Some(writer),
            },
            report,
        ))
    }

    /// State-tree versions taken but not yet written (to resume after a restart).
    pub fn pending_state_versions(&self) -> Vec<Version> {
        self.inner
            .jobs
            .lock()
            .expect("jobs lock")
            .keys()
            .copied()
            .collect()
    }

    /// Starts the single write transaction of one apply step.
    pub fn begin(&self) -> Result<Txn<'_>, StoreError> {
        let guard = self.inner.txn_lock.lock().expect("txn lock");
        Ok(Txn {
            store: self,
            view: self.inner.view(),
            top: RefCell::new(Layer::default()),
            writing: guard,
            unfinished: Unfinished {
                store: self,
                touched: Cell::new(false),
            },
        })
    }

    pub fn read(&self) -> Result<Reader<'_>, StoreError> {
        Ok(Reader {
            store: self,
            view: self.inner.view(),
        })
    }

    /// Reads a ledger record; the checksum is checked before it is returned.
    pub fn record(&self, index: u64) -> Result<Vec<u8>, StoreError> {
        Ok(self.inner.ledger.read().expect("ledger lock").read(index)?)
    }

    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, StoreError> {
        merkle::inclusion_proof(&*self.inner.tree.read().expect("tree lock"), index, size)
            .map_err(|e| StoreError::StateTree(e.to_string()))
    }

    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, StoreError> {
        merkle::consistency_proof(&*self.inner.tree.read().expect("tree lock"), old, new)
            .map_err(|e| StoreError::StateTree(e.to_string()))
    }

    pub fn tree_root_at(&self, size: u64) -> Result<Hash, StoreError> {
        Ok(self.inner.tree.read().expect("tree lock").root_at(size)?)
    }
}

impl Drop for Store {
    /// Stops the background writer and writes what it left, so a clean
    /// shutdown leaves the database with every committed step.
    fn drop(&mut self) {
        let inner = &self.inner;
        inner.progress.lock().expect("progress lock").stop = true;
        inner.work.notify_all();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        // After a failure (an abandoned transaction, a failed write) the
        // unfolded changes in memory may hold work no layer records: only
        // what the layers up to a resumable one hold is written, and the
        // Raft log replays the rest.
        let failed = inner
            .progress
            .lock()
            .expect("progress lock")
            .failed
            .is_some();
        if !failed {
            // No transaction is open, so the unfolded changes are those of the last layer.
            let mut layers = inner.layers.write().expect("layers lock");
            if layers.last().is_some_and(|l| !l.resumable) {
                let mut last = Layer::default();
                inner.save_unfolded(&mut last);
                last.seal();
                inner.publish(&mut layers, last);
            }
        }
        loop {
            let before = inner.layers.read().expect("layers lock").len();
            if before == 0 {
                break;
            }
            if let Err(e) = inner.write_some() {
                tracing::error!(error = %e, "state not written at shutdown; the Raft log replays it");
                break;
            }
            // Layers past the last resumable one stay unwritten after a failure.
            if inner.layers.read().expect("layers lock").len() == before {
                break;
            }
        }
    }
}

impl Inner {
    fn db_error(&self, e: fjall::Error) -> StoreError {
        db_err(&self.db_path)(e)
    }

    /// The layers and a database snapshot, taken together (see `layers`).
    fn view(&self) -> View {
        let layers = self.layers.read().expect("layers lock");
        View {
            seq: self.published.load(Ordering::Relaxed),
            layers: layers.clone(),
            snapshot: self.db.snapshot(),
            keyspaces: self.keyspaces.clone(),
        }
    }

    /// Makes a committed layer visible to new views (`layers` is write-locked):
    /// the read cache takes the state values it writes first.
    fn publish(&self, layers: &mut Vec<Arc<Layer>>, layer: Layer) {
        let seq = self.published.load(Ordering::Relaxed) + 1;
        self.cache
            .commit(seq, layer.tables[Table::State as usize].iter());
        self.nodes
            .commit(layer.tables[Table::JmtNodes as usize].iter());
        layers.push(Arc::new(layer));
        self.published.store(seq, Ordering::Relaxed);
    }

    /// A state value as `view` (under `top`, if writing) sees it, through the read cache.
    fn state_get(
        &self,
        top: Option<&Layer>,
        view: &View,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, fjall::Error> {
        if let Some(v) = top.and_then(|t| t.tables[Table::State as usize].get(key)) {
            return Ok(v.clone());
        }
        if let Some(v) = self.cache.get(key, view.seq) {
            return Ok(v);
        }
        let v = Layered { top: None, view }.get(Table::State, key)?;
        self.cache.fill(key, &v, view.seq);
        Ok(v)
    }

    /// Saves the unfolded state changes in `layer`'s meta, making it resumable.
    fn save_unfolded(&self, layer: &mut Layer) {
        let dirty = encode_unfolded(
            &self.dirty.lock().expect("dirty lock"),
            &self.jobs.lock().expect("jobs lock"),
        );
        layer.meta.insert(META_DIRTY.into(), Some(dirty));
        layer.resumable = true;
    }

    /// The background writer: moves committed layers into the database.
    fn write_behind(&self) {
        let mut last = Instant::now();
        loop {
            {
                let mut p = self.progress.lock().expect("progress lock");
                // Gather layers for a while: one write then covers many steps,
                // and keys they share are written once.
                loop {
                    if p.stop || p.failed.is_some() {
                        return;
                    }
                    let waited = last.elapsed();
                    if p.committed > p.written && (p.urgent || waited >= WRITE_EVERY) {
                        break;
                    }
                    p = if p.committed > p.written {
                        self.work
                            .wait_timeout(p, WRITE_EVERY - waited)
                            .expect("progress lock")
                            .0
                    } else {
                        self.work.wait(p).expect("progress lock")
                    };
                }
                p.urgent = false;
            }
            last = Instant::now();
            if let Err(e) = self.write_some() {
                tracing::error!(error = %e, "writing state to the database failed; apply stops");
                self.progress.lock().expect("progress lock").failed = Some(e.to_string());
                self.written.notify_all();
                return;
            }
        }
    }

    /// Writes the oldest layers, up to and including the first durable one
    /// and ending with a resumable one, as one atomic batch: the ledger is
    /// fsynced first, the batch's journal too if it ends durable.
    fn write_some(&self) -> Result<(), StoreError> {
        let _db = self.db_lock.lock().expect("db lock");
        let layers = self.layers.read().expect("layers lock").clone();
        let upto = layers
            .iter()
            .position(|l| l.durable)
            .map_or(layers.len(), |i| i + 1);
        let Some(n) = layers[..upto]
            .iter()
            .rposition(|l| l.resumable)
            .map(|i| i + 1)
        else {
            return Ok(());
        };
        let durable = layers[..n].iter().any(|l| l.durable);
        // The recorded ledger length must never exceed what is on disk, even
        // after a power loss that keeps this write's journal entry.
        let active = self.ledger.write().expect("ledger lock").flush_for_sync()?;
        if let Some((file, path)) = active {
            if let Err(source) = file.sync_data() {
                // Linux reports a failed writeback once: a retry would
                // succeed over data that never reached the disk.
                self.ledger.write().expect("ledger lock").poison();
                return Err(SegmentError::Io { path, source }.into());
            }
        }
        let mut batch = self.db.batch();
        layers::write(&mut batch, &self.keyspaces, &layers[..n]);
        batch.commit().map_err(|e| self.db_error(e))?;
        if let Some(v) = layers[..n].iter().filter_map(|l| l.state_version).max() {
            self.written_version.fetch_max(v, Ordering::Relaxed);
        }
        if durable {
            self.db
                .persist(PersistMode::SyncAll)
                .map_err(|e| self.db_error(e))?;
            let written = self.written_version.load(Ordering::Relaxed);
            self.horizon
                .raise(written.saturating_sub(STATE_VERSIONS_KEPT));
        }
        self.layers.write().expect("layers lock").drain(..n);
        let bytes: usize = layers[..n].iter().map(|l| l.size).sum();
        let mut p = self.progress.lock().expect("progress lock");
        p.written += n as u64;
        if durable {
            p.durable = p.written;
        }
        p.unwritten_bytes = p.unwritten_bytes.saturating_sub(bytes);
        drop(p);
        self.written.notify_all();
        Ok(())
    }

    /// Waits until `until` holds, or writing has failed.
    fn wait_written(&self, until: impl Fn(&Progress) -> bool) -> Result<(), StoreError> {
        let mut p = self.progress.lock().expect("progress lock");
        loop {
            if let Some(e) = &p.failed {
                return Err(StoreError::Db {
                    path: self.db_path.clone(),
                    message: e.clone(),
                });
            }
            if until(&p) {
                return Ok(());
            }
            p = self.written.wait(p).expect("progress lock");
        }
    }
}

/// How a write transaction commits.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Commit {
    /// Visible to readers at once, written to the database in the background.
    Visible,
    /// Also made durable (ledger, then the database, fsynced) in the background.
    DurableSoon,
    /// Durable before `commit` returns.
    Durable,
}

/// One apply step's write transaction. Its tables are used through
/// [`Txn::batch`]; [`Txn::commit`] then records the ledger length and root.
pub struct Txn<'s> {
    store: &'s Store,
    view: View,
    top: RefCell<Layer>,
    /// Held until the layer is in the list: the next transaction must see it.
    writing: MutexGuard<'s, Instant>,
    unfinished: Unfinished<'s>,
}

/// A transaction dropped without committing after it appended to the ledger
/// or changed state cannot be undone in memory: those changes are already
/// in the ledger files, the Merkle tree and the state-tree work, and a later
/// commit would record them. So it stops the store, as a failed write does:
/// every later commit is refused, and a restart recovers from the Raft log.
struct Unfinished<'s> {
    store: &'s Store,
    /// Set by the writes that reach beyond the transaction's own layer.
    touched: Cell<bool>,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if !self.touched.get() {
            return;
        }
        let why = "a write transaction was abandoned after changing the ledger or state; restart the node (it recovers from the Raft log)";
        tracing::error!("{why}");
        let inner = &self.store.inner;
        let mut p = inner.progress.lock().expect("progress lock");
        p.failed.get_or_insert_with(|| why.into());
        drop(p);
        inner.work.notify_all();
        inner.written.notify_all();
    }
}

impl<'s> Txn<'s> {
    /// The reads and writes of this transaction (one at a time).
    pub fn batch(&self) -> Result<WriteBatch<'_>, StoreError> {
        Ok(WriteBatch {
            store: self.store,
            view: &self.view,
            top: self.top.borrow_mut(),
            touched: &self.unfinished.touched,
        })
    }

    /// Commits, durably before returning if `durable`.
    pub fn commit(self, durable: bool) -> Result<(), StoreError> {
        self.commit_as(if durable {
            Commit::Durable
        } else {
            Commit::Visible
        })
    }

    pub fn commit_as(mut self, how: Commit) -> Result<(), StoreError> {
        let inner = &self.store.inner;
        let mut top = self.top.into_inner();
        {
            let mut t = inner.tree.write().expect("tree lock");
            top.meta
                .insert(META_LEDGER_LEN.into(), Some(t.len().to_be_bytes().to_vec()));
            top.meta
                .insert(META_LEDGER_ROOT.into(), Some(t.root().to_vec()));
            t.flush()?;
        }
        let behind = inner
            .progress
            .lock()
            .expect("progress lock")
            .unwritten_bytes;
        // A large layer is made resumable too: the writer writes only up to
        // a resumable layer, so one that alone passed the unwritten limit
        // would hold apply (waiting for the writer) for good.
        if how != Commit::Visible
            || self.writing.elapsed() >= RESUME_EVERY
            || behind + top.measure() > MAX_UNWRITTEN_BYTES / 2
        {
            inner.save_unfolded(&mut top);
            *self.writing = Instant::now();
        }
        top.durable = how != Commit::Visible;
        top.seal();
        let bytes = top.size;
        let seq = {
            let mut layers = inner.layers.write().expect("layers lock");
            let mut p = inner.progress.lock().expect("progress lock");
            if let Some(e) = &p.failed {
                return Err(StoreError::Db {
                    path: inner.db_path.clone(),
                    message: e.clone(),
                });
            }
            inner.publish(&mut layers, top);
            self.unfinished.touched.set(false);
            p.committed += 1;
            p.unwritten_bytes += bytes;
            p.urgent |= how == Commit::Durable || p.unwritten_bytes > MAX_UNWRITTEN_BYTES;
            p.committed
        };
        drop(self.writing);
        inner.work.notify_one();
        if how == Commit::Durable {
            inner.wait_written(|p| p.durable >= seq)
        } else {
            inner.wait_written(|p| p.unwritten_bytes <= MAX_UNWRITTEN_BYTES)
        }
    }
}

/// State, indexes, ledger records and meta written by one apply step.
pub struct WriteBatch<'t> {
    store: &'t Store,
    view: &'t View,
    top: std::cell::RefMut<'t, Layer>,
    /// See [`Unfinished`].
    touched: &'t Cell<bool>,
}

impl WriteBatch<'_> {
    fn layered(&self) -> Layered<'_> {
        Layered {
            top: Some(&self.top),
            view: self.view,
        }
    }

    fn set(&mut self, t: Table, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.top.tables[t as usize].insert(key, value);
    }

    fn db<T>(&self, r: Result<T, fjall::Error>) -> Result<T, StoreError> {
        r.map_err(|e| self.store.inner.db_error(e))
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db(self.store.inner.state_get(Some(&self.top), self.view, key))
    }

    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.set(Table::State, key.to_vec(), Some(value.to_vec()));
        self.touched.set(true);
        self.store
            .inner
            .dirty
            .lock()
            .expect("dirty lock")
            .insert(key.to_vec(), Some(value.to_vec()));
        Ok(())
    }

    pub fn delete(&mut self, key: &[u8]) -> Result<(), StoreError> {
        self.set(Table::State, key.to_vec(), None);
        self.touched.set(true);
        self.store
            .inner
            .dirty
            .lock()
            .expect("dirty lock")
            .insert(key.to_vec(), None);
        Ok(())
    }

    /// Keys (and values) in `[from, to)` of the state table, in order, at most `limit`.
    pub fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        self.db(self.layered().range(Table::State, from, to, limit))
    }

    pub fn aux_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db(self.layered().get(Table::Aux, key))
    }

    pub fn aux_put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.set(Table::Aux, key.to_vec(), Some(value.to_vec()));
        Ok(())
    }

    pub fn aux_delete(&mut self, key: &[u8]) -> Result<(), StoreError> {
        self.set(Table::Aux, key.to_vec(), None);
        Ok(())
    }

    /// Keys (and values) in `[from, to)` of the aux table, in order, at most `limit`.
    pub fn aux_range(
        &self,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        self.db(self.layered().range(Table::Aux, from, to, limit))
    }

    pub fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.db(self.layered().meta_get(key))
    }

    pub fn meta_put(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.top.meta.insert(key.into(), Some(value.to_vec()));
        Ok(())
    }

    pub fn meta_remove(&mut self, key: &str) -> Result<(), StoreError> {
        self.top.meta.insert(key.into(), None);
        Ok(())
    }

    /// Appends a ledger record and its leaf to the tree; returns its index.
    pub fn append(&mut self, record: &Record) -> Result<u64, StoreError> {
        self.touched.set(true);
        let inner = &self.store.inner;
        let index = inner
            .ledger
            .write()
            .expect("ledger lock")
            .append(&record.to_cbor())?;
        inner
            .tree
            .write()
            .expect("tree lock")
            .push(merkle::leaf_hash(&record.leaf))?;
        Ok(index)
    }

    pub fn ledger_len(&self) -> u64 {
        self.store.inner.tree.read().expect("tree lock").len()
    }

    pub fn tx_root(&self) -> Hash {
        self.store.inner.tree.read().expect("tree lock").root()
    }

    /// Takes the state changed since the last call as the job of state-tree
    /// `version`; the job is kept (and saved with resumable layers) until
    /// [`WriteBatch::write_state_tree`] writes its result.
    pub fn take_state_changes(&mut self, version: Version) {
        self.touched.set(true);
        let inner = &self.store.inner;
        let changes = std::mem::take(&mut *inner.dirty.lock().expect("dirty lock"));
        inner
            .jobs
            .lock()
            .expect("jobs lock")
            .insert(version, changes);
    }

    /// Computes a taken job inside this transaction (when it cannot wait for a worker).
    pub fn compute_state_tree(&self, version: Version) -> Result<StateTreeUpdate, StoreError> {
        compute(self.store, self.layered(), version)
    }

    /// Writes a computed state-tree version and prunes nodes no longer served.
    ///
    /// `proved` is the newest version proofs are still asked for (the latest
    /// final checkpoint): nodes replaced at or before it are pruned in the
    /// same write, so most never leave the memtable. Without it, or when it
    /// lags, the last [`STATE_VERSIONS_KEPT`] versions are kept.
    pub fn write_state_tree(
        &mut self,
        update: StateTreeUpdate,
        proved: Option<Version>,
    ) -> Result<Hash, StoreError> {
        self.touched.set(true);
        let version = update.version;
        for (k, n) in update.nodes {
            self.set(Table::JmtNodes, k, Some(n));
        }
        for (k, v) in update.values {
            self.set(Table::JmtValues, k, Some(v));
        }
        self.top.state_version = Some(version);
        for (since, list) in update.stale {
            let since = since.to_be_bytes();
            // Only proofs at older versions read a replaced node: left in the
            // node cache until pruned, replaced nodes crowded out the live
            // tree's, and reads fell through to the database as it grew.
            for nk in stale_nodes(&since, &list)? {
                self.store.inner.nodes.remove(nk);
            }
            self.set(Table::JmtStale, since.to_vec(), Some(list));
        }
        // Nodes replaced at or before the horizon belong to no version still served.
        let horizon = proved
            .unwrap_or(0)
            .max(version.saturating_sub(STATE_VERSIONS_KEPT));
        if horizon > 0 {
            let pruned_to = &self.store.inner.pruned_to;
            let start = pruned_to.load(Ordering::Relaxed).to_be_bytes();
            let end = (horizon + 1).to_be_bytes();
            loop {
                let old = self.db(self.layered().range(Table::JmtStale, &start, &end, 4096))?;
                if old.is_empty() {
                    pruned_to.fetch_max(horizon + 1, Ordering::Relaxed);
                    break;
                }
                for (k, list) in old {
                    for node in stale_nodes(&k, &list)? {
                        self.set(Table::JmtNodes, node.to_vec(), None);
                    }
                    self.set(Table::JmtStale, k, None);
                }
            }
        }
        self.store
            .inner
            .jobs
            .lock()
            .expect("jobs lock")
            .remove(&version);
        Ok(update.root)
    }

    /// Folds the state changed since the last call into the state tree at
    /// `version` (versions must be consecutive from 0), synchronously.
    pub fn update_state_root(&mut self, version: Version) -> Result<Hash, StoreError> {
        self.take_state_changes(version);
        let update = self.compute_state_tree(version)?;
        self.write_state_tree(update, None)
    }
}

/// A consistent read view of state and indexes.
pub struct Reader<'s> {
    store: &'s Store,
    view: View,
}

impl Reader<'_> {
    fn layered(&self) -> Layered<'_> {
        Layered {
            top: None,
            view: &self.view,
        }
    }

    fn db<T>(&self, r: Result<T, fjall::Error>) -> Result<T, StoreError> {
        r.map_err(|e| self.store.inner.db_error(e))
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db(self.store.inner.state_get(None, &self.view, key))
    }

    pub fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        self.db(self.layered().range(Table::State, from, to, limit))
    }

    pub fn aux_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db(self.layered().get(Table::Aux, key))
    }

    pub fn aux_range(
        &self,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        self.db(self.layered().range(Table::Aux, from, to, limit))
    }

    pub fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.db(self.layered().meta_get(key))
    }

    /// Ledger length as of this view.
    pub fn ledger_len(&self) -> Result<u64, StoreError> {
        Ok(self
            .meta_get(META_LEDGER_LEN)?
            .and_then(|v| v.try_into().ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0))
    }

    /// Computes a taken state-tree job from this snapshot, which must already
    /// contain the previous version (off the apply thread).
    pub fn compute_state_tree(&self, version: Version) -> Result<StateTreeUpdate, StoreError> {
        compute(self.store, self.layered(), version)
    }

    /// The value of `key` in the state tree at `version`, with a proof
    /// (borsh-encoded jmt `SparseMerkleProof<Sha256>`) against that version's root.
    pub fn state_proof(&self, key: &[u8], version: Version) -> Result<StateProof, StoreError> {
        let reader = JmtReader {
            tables: self.layered(),
            nodes: &self.store.inner.nodes,
        };
        let tree = Jmt::new(&reader);
        let (value, proof) = tree
            .get_with_proof(KeyHash::with::<Sha256>(key), version)
            .map_err(|e| StoreError::StateTree(e.to_string()))?;
        let root = tree
            .get_root_hash(version)
            .map_err(|e| StoreError::StateTree(e.to_string()))?;
        let proof = borsh::to_vec(&proof).map_err(|e| StoreError::StateTree(e.to_string()))?;
        Ok(StateProof {
            value,
            proof,
            root: root.0,
        })
    }
}

/// A computed state-tree version, ready to be written.
///
/// Its writes are encoded where it is computed (the state-tree worker), so
/// apply only moves them into its layer.
pub struct StateTreeUpdate {
    pub version: Version,
    pub root: Hash,
    /// Encoded (node key, node) pairs of the new version.
    nodes: Vec<(Vec<u8>, Vec<u8>)>,
    /// (`value_history` key, stored value) pairs.
    values: Vec<(Vec<u8>, Vec<u8>)>,
    /// One stale-index entry per version: the nodes it replaced, each
    /// borsh-encoded behind its u16 length (an entry per node doubled the
    /// writes, as a version replaces hundreds).
    stale: BTreeMap<Version, Vec<u8>>,
}

impl StateTreeUpdate {
    fn encode(
        version: Version,
        root: Hash,
        batch: jmt::storage::TreeUpdateBatch,
    ) -> Result<StateTreeUpdate, StoreError> {
        let borsh_err = |e: std::io::Error| StoreError::StateTree(e.to_string());
        let mut nodes = Vec::with_capacity(batch.node_batch.nodes().len());
        for (k, n) in batch.node_batch.nodes() {
            nodes.push((
                borsh::to_vec(k).map_err(borsh_err)?,
                borsh::to_vec(n).map_err(borsh_err)?,
            ));
        }
        let values = batch
            .node_batch
            .values()
            .iter()
            .map(|((v, kh), val)| {
                let mut stored = Vec::with_capacity(1 + val.as_ref().map_or(0, |x| x.len()));
                match val {
                    Some(x) => {
                        stored.push(1);
                        stored.extend_from_slice(x);
                    }
                    None => stored.push(0),
                }
                (value_history::key(kh, *v), stored)
            })
            .collect();
        let mut stale: BTreeMap<Version, Vec<u8>> = BTreeMap::new();
        for st in &batch.stale_node_index_batch {
            let nk = borsh::to_vec(&st.node_key).map_err(borsh_err)?;
            let len = u16::try_from(nk.len()).map_err(|_| {
                StoreError::StateTree(format!("state-tree node key of {} bytes", nk.len()))
            })?;
            let list = stale.entry(st.stale_since_version).or_default();
            list.extend_from_slice(&len.to_be_bytes());
            list.extend_from_slice(&nk);
        }
        Ok(StateTreeUpdate {
            version,
            root,
            nodes,
            values,
            stale,
        })
    }
}

fn compute(
    store: &Store,
    tables: Layered<'_>,
    version: Version,
) -> Result<StateTreeUpdate, StoreError> {
    let changes = store
        .inner
        .jobs
        .lock()
        .expect("jobs lock")
        .get(&version)
        .cloned()
        .ok_or_else(|| {
            StoreError::StateTree(format!("no state changes taken for version {version}"))
        })?;
    let reader = JmtReader {
        tables,
        nodes: &store.inner.nodes,
    };
    let tree = Jmt::new(&reader);
    let key = |k: &[u8]| KeyHash::with::<Sha256>(k);
    // Without deletions, jmt's batch insertion walks the tree once for the
    // whole version and hashes each changed internal node once, where
    // `put_value_set` walks and rehashes the path from the root for every
    // key. It cannot delete and wants at least one change; both give the
    // same root, which depends only on the keys and values.
    let (root, batch) = if !changes.is_empty() && changes.values().all(Option::is_some) {
        let values = changes
            .into_iter()
            .filter_map(|(k, v)| Some((key(&k), v?)))
            .collect();
        tree.batch_put_value_sets(vec![values], None, version)
            .map(|(roots, batch)| (roots[0], batch))
    } else {
        tree.put_value_set(changes.into_iter().map(|(k, v)| (key(&k), v)), version)
    }
    .map_err(|e| StoreError::StateTree(e.to_string()))?;
    StateTreeUpdate::encode(version, root.0, batch)
}

/// The node keys a stale-index entry names: a version's list, or one node
/// in the key itself (8-byte version, node key) as state databases written
/// before the lists kept them.
fn stale_nodes<'a>(key: &'a [u8], list: &'a [u8]) -> Result<Vec<&'a [u8]>, StoreError> {
    if key.len() > 8 {
        return Ok(vec![&key[8..]]);
    }
    let mut nodes = Vec::new();
    let mut rest = list;
    while let [a, b, tail @ ..] = rest {
        let n = usize::from(u16::from_be_bytes([*a, *b]));
        if tail.len() < n {
            break;
        }
        nodes.push(&tail[..n]);
        rest = &tail[n..];
    }
    if !rest.is_empty() {
        let version = <[u8; 8]>::try_from(key).map_or_else(
            |_| format!("key {}", hex::encode(key)),
            |v| u64::from_be_bytes(v).to_string(),
        );
        return Err(StoreError::StateTree(format!(
            "stale-node list of version {version} is cut short"
        )));
    }
    Ok(nodes)
}

/// The state tree, hashed with ring's SHA-256.
type Jmt<'a, R> = jmt::JellyfishMerkleTree<'a, R, Sha256>;

/// Adapter from the layered tables (nodes through the node cache) to jmt's reader.
struct JmtReader<'a> {
    tables: Layered<'a>,
    nodes: &'a NodeCache,
}

impl TreeReader for JmtReader<'_> {
    fn get_node_option(&self, node_key: &NodeKey) -> anyhow::Result<Option<Node>> {
        let k = borsh::to_vec(node_key)?;
        if let Some(v) = self.nodes.get(&k) {
            return Ok(Some(borsh::from_slice(&v)?));
        }
        match self.tables.get(Table::JmtNodes, &k)? {
            Some(v) => {
                self.nodes.insert(&k, &v);
                Ok(Some(borsh::from_slice(&v)?))
            }
            None => Ok(None),
        }
    }

    fn get_value_option(
        &self,
        max_version: Version,
        key_hash: KeyHash,
    ) -> anyhow::Result<Option<OwnedValue>> {
        let (from, to) = value_history::at_or_before(&key_hash, max_version);
        let newest = self.tables.range(Table::JmtValues, &from, &to, 1)?;
        Ok(match newest.into_iter().next() {
            Some((_, v)) if v.first() == Some(&1) => Some(v[1..].to_vec()),
            _ => None,
        })
    }

    fn get_rightmost_leaf(&self) -> anyhow::Result<Option<(NodeKey, LeafNode)>> {
        anyhow::bail!(
            "tree restoration from a rightmost leaf is not supported; snapshots carry whole state"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends one ledger record and commits it durably.
    fn commit_one_record(store: &Store) {
        let txn = store.begin().unwrap();
        txn.batch()
            .unwrap()
            .append(&Record {
                leaf: vec![0xa0],
                body: vec![1],
            })
            .unwrap();
        txn.commit(true).unwrap();
    }

    #[test]
    fn a_store_in_use_is_refused_with_its_ledger_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), 1 << 20).unwrap();
        commit_one_record(&store);
        let err = Store::open(dir.path(), 1 << 20).err().expect("refused");
        assert!(
            err.to_string().contains("in use by another process"),
            "{err}"
        );
        assert_eq!(store.read().unwrap().ledger_len().unwrap(), 1);
    }

    #[test]
    fn a_transaction_abandoned_after_writing_stops_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), 1 << 20).unwrap();
        // Reading only, or writing only its own layer, leaves nothing behind.
        let txn = store.begin().unwrap();
        txn.batch().unwrap().aux_put(b"a", b"1").unwrap();
        drop(txn);
        store.begin().unwrap().commit(true).unwrap();
        assert_eq!(store.read().unwrap().aux_get(b"a").unwrap(), None);
        // A state write reaches shared work that cannot be undone.
        let txn = store.begin().unwrap();
        txn.batch().unwrap().put(b"k", b"v").unwrap();
        drop(txn);
        let e = store.begin().unwrap().commit(false).unwrap_err();
        assert!(e.to_string().contains("abandoned"), "{e}");
    }

    /// One apply step larger than the unwritten limit is written, not waited
    /// for forever (the writer writes up to a resumable layer only).
    #[test]
    fn a_step_larger_than_the_unwritten_limit_commits() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), 1 << 20).unwrap();
        let store = Arc::new(store);
        let (tx, rx) = std::sync::mpsc::channel();
        let s = store.clone();
        std::thread::spawn(move || {
            let txn = s.begin().unwrap();
            {
                let mut b = txn.batch().unwrap();
                let value = vec![7u8; 1 << 20];
                for i in 0..(MAX_UNWRITTEN_BYTES >> 20) + 1 {
                    b.aux_put(&(i as u64).to_be_bytes(), &value).unwrap();
                }
            }
            tx.send(txn.commit(false)).unwrap();
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("the commit returns")
            .unwrap();
    }

    /// A store stopped after an abandoned transaction does not save the
    /// state-tree work that transaction took: no layer records it, and a
    /// restart would find saved jobs that its pending checkpoints disagree with.
    #[test]
    fn a_stop_after_an_abandoned_transaction_saves_none_of_its_work() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), 1 << 20).unwrap();
        let txn = store.begin().unwrap();
        txn.batch().unwrap().put(b"k", b"v").unwrap();
        txn.commit(false).unwrap();
        let txn = store.begin().unwrap();
        txn.batch().unwrap().take_state_changes(7);
        drop(txn);
        assert_eq!(store.pending_state_versions(), vec![7], "in memory");
        drop(store);
        let (store, _) = Store::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(store.pending_state_versions(), Vec::<Version>::new());
    }

    #[test]
    fn cached_state_reads_follow_commits_and_each_view_sees_its_own_time() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), 1 << 20).unwrap();
        let put = |v: Option<&[u8]>| {
            let txn = store.begin().unwrap();
            let mut b = txn.batch().unwrap();
            match v {
                Some(v) => b.put(b"k", v).unwrap(),
                None => b.delete(b"k").unwrap(),
            }
            // The writer's own change wins over whatever is cached.
            assert_eq!(b.get(b"k").unwrap().as_deref(), v);
            drop(b);
            txn.commit(false).unwrap();
        };
        let get = |r: &Reader<'_>| r.get(b"k").unwrap();
        put(Some(b"1"));
        let old = store.read().unwrap();
        assert_eq!(get(&old).as_deref(), Some(&b"1"[..]));
        assert_eq!(
            get(&old).as_deref(),
            Some(&b"1"[..]),
            "served from the cache"
        );
        put(Some(b"2"));
        let new = store.read().unwrap();
        assert_eq!(get(&new).as_deref(), Some(&b"2"[..]));
        // The cache now holds the newer value; the older view still sees its own.
        assert_eq!(get(&old).as_deref(), Some(&b"1"[..]));
        // Steps that do not write the key leave the cached value in force.
        let txn = store.begin().unwrap();
        txn.batch().unwrap().put(b"other", b"x").unwrap();
        txn.commit(false).unwrap();
        assert_eq!(get(&store.read().unwrap()).as_deref(), Some(&b"2"[..]));
        put(None);
        assert_eq!(get(&store.read().unwrap()), None);
        assert_eq!(get(&new).as_deref(), Some(&b"2"[..]));
        // Once written to the database (a durable commit waits for it), the same answers.
        let txn = store.begin().unwrap();
        txn.batch().unwrap().put(b"other", b"y").unwrap();
        txn.commit(true).unwrap();
        assert_eq!(get(&store.read().unwrap()), None);
        put(Some(b"3"));
        assert_eq!(get(&store.read().unwrap()).as_deref(), Some(&b"3"[..]));
    }

    /// Writes `key0`..`key7`, each with a value unique to version `v`.
    fn put_eight_keys(b: &mut WriteBatch<'_>, v: u64) {
        for k in 0..8u64 {
            b.put(format!("key{k}").as_bytes(), &(v * 8 + k).to_be_bytes())
                .unwrap();
        }
    }

    #[test]
    fn state_tree_prunes_replaced_nodes_and_still_proves_the_latest_version() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), 1 << 20).unwrap();
        let versions = STATE_VERSIONS_KEPT + 600;
        let mut root = [0; 32];
        for v in 0..=versions {
            let txn = store.begin().unwrap();
            let mut b = txn.batch().unwrap();
            put_eight_keys(&mut b, v);
            root = b.update_state_root(v).unwrap();
            drop(b);
            txn.commit(false).unwrap();
        }
        let r = store.read().unwrap();
        let p = r.state_proof(b"key3", versions).unwrap();
        assert_eq!(p.root, root);
        let expected = (versions * 8 + 3).to_be_bytes();
        assert_eq!(p.value.as_deref(), Some(expected.as_slice()));
        comity_core::state::verify(&root, b"key3", Some(&expected), &p.proof).unwrap();
        // Each version replaces about ten nodes; without pruning all 857 versions would stay.
        store.begin().unwrap().commit(true).unwrap();
        let nodes = store.inner.keyspaces[Table::JmtNodes as usize]
            .len()
            .unwrap() as u64;
        assert!(
            nodes < (STATE_VERSIONS_KEPT + 10) * 12,
            "{nodes} state-tree nodes kept for {versions} versions"
        );
    }

    #[test]
    fn state_tree_prunes_up_to_the_proved_version() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), 1 << 20).unwrap();
        let last = 60;
        let mut roots = Vec::new();
        for v in 0..=last {
            let txn = store.begin().unwrap();
            let mut b = txn.batch().unwrap();
            put_eight_keys(&mut b, v);
            b.take_state_changes(v);
            let update = b.compute_state_tree(v).unwrap();
            roots.push(b.write_state_tree(update, v.checked_sub(2)).unwrap());
            drop(b);
            txn.commit(false).unwrap();
        }
        let r = store.read().unwrap();
        // The proved version and those after it still prove their values.
        for v in last - 2..=last {
            let p = r.state_proof(b"key3", v).unwrap();
            assert_eq!(p.root, roots[v as usize]);
            let expected = (v * 8 + 3).to_be_bytes();
            comity_core::state::verify(&p.root, b"key3", Some(&expected), &p.proof).unwrap();
        }
        // Older ones are gone although far fewer than STATE_VERSIONS_KEPT were written.
        assert!(r.state_proof(b"key3", last - 7).is_err());
        drop(r);
        store.begin().unwrap().commit(true).unwrap();
        let nodes = store.inner.keyspaces[Table::JmtNodes as usize]
            .len()
            .unwrap();
        assert!(nodes < 60, "{nodes} state-tree nodes kept");
    }

    /// Writes versions `0..=last` of a state holding `key` (changed at each
    /// of `changes`, to the version's number) and a key changed at every
    /// version, ending with a durable write.
    fn write_versions(store: &Store, last: Version, changes: &[Version]) {
        for v in 0..=last {
            let txn = store.begin().unwrap();
            let mut b = txn.batch().unwrap();
            b.put(b"every", &v.to_be_bytes()).unwrap();
            if changes.contains(&v) {
                b.put(b"key", &v.to_be_bytes()).unwrap();
            }
            b.update_state_root(v).unwrap();
            drop(b);
            txn.commit(v == last).unwrap();
        }
    }

    /// The versions of `key`'s values the value table holds, newest first.
    fn value_versions(store: &Store, key: &[u8]) -> Vec<Version> {
        let kh = KeyHash::with::<Sha256>(key);
        let (from, to) = value_history::at_or_before(&kh, u64::MAX);
        store.inner.keyspaces[Table::JmtValues as usize]
            .range(from..to)
            .map(|g| {
                let k = g.key().unwrap();
                !u64::from_be_bytes(k[32..].try_into().unwrap())
            })
            .collect()
    }

    fn compact_values(store: &Store) {
        let values = &store.inner.keyspaces[Table::JmtValues as usize];
        values.rotate_memtable_and_wait().unwrap();
        values.major_compact().unwrap();
    }

    fn assert_proves(store: &Store, key: &[u8], version: Version, value: Version) {
        let p = store.read().unwrap().state_proof(key, version).unwrap();
        let want = value.to_be_bytes();
        assert_eq!(p.value.as_deref(), Some(&want[..]), "at version {version}");
        comity_core::state::verify(&p.root, key, Some(&want), &p.proof).unwrap();
    }

    #[test]
    fn compaction_drops_values_replaced_before_the_horizon_and_recent_proofs_hold() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), 1 << 20).unwrap();
        let last = STATE_VERSIONS_KEPT + 344;
        let changes = [0, 100, 200, 550];
        write_versions(&store, last, &changes);
        // The durable write set the horizon: 600 - 256 = 344.
        assert_eq!(store.inner.horizon.get(), last - STATE_VERSIONS_KEPT);
        assert_eq!(value_versions(&store, b"key"), [550, 200, 100, 0]);
        compact_values(&store);
        // 0 and 100 were replaced by 200, at or before the horizon: no proof reads them.
        assert_eq!(value_versions(&store, b"key"), [550, 200]);
        assert_eq!(
            value_versions(&store, b"every"),
            (344..=last).rev().collect::<Vec<_>>()
        );
        for (version, value) in [(344, 200), (549, 200), (550, 550), (last, 550)] {
            assert_proves(&store, b"key", version, value);
        }
        assert_proves(&store, b"every", 344, 344);
    }

    #[test]
    fn values_of_the_oldest_first_layout_are_converted_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let last = 40;
        {
            let (store, _) = Store::open(dir.path(), 1 << 20).unwrap();
            write_versions(&store, last, &[3, 20]);
        }
        // Rewrite the value table as an older Comity kept it.
        {
            let db = Database::builder(dir.path().join("state")).open().unwrap();
            let new = db
                .keyspace(value_history::KEYSPACE, KeyspaceCreateOptions::default)
                .unwrap();
            let old = db
                .keyspace("jmt_values", KeyspaceCreateOptions::default)
                .unwrap();
            for g in new.iter() {
                let (k, v) = g.into_inner().unwrap();
                let mut legacy = k[..32].to_vec();
                legacy.extend_from_slice(
                    &(!u64::from_be_bytes(k[32..].try_into().unwrap())).to_be_bytes(),
                );
                old.insert(legacy, v).unwrap();
            }
            db.delete_keyspace(new).unwrap();
            db.persist(PersistMode::SyncAll).unwrap();
        }
        let (store, _) = Store::open(dir.path(), 1 << 20).unwrap();
        assert!(!store.inner.db.keyspace_exists("jmt_values"));
        assert_eq!(value_versions(&store, b"key"), [20, 3]);
        assert_proves(&store, b"key", 19, 3);
        assert_proves(&store, b"key", last, 20);
        assert_proves(&store, b"every", last, last);
    }

    /// Versions without deletions take jmt's batch insertion, the others
    /// per-key insertion: every root must be the one per-key insertion alone
    /// gives (jmt's own mock store as the reference), whatever mix of new
    /// keys, updates, unchanged values and deletions a version holds, and
    /// proofs from the stored tree must verify.
    #[test]
    fn state_root_matches_per_key_insertion_for_any_mix_of_changes() {
        roots_match_per_key_insertion(&StoreOptions {
            roll_bytes: 1 << 20,
            ..StoreOptions::default()
        });
    }

    /// Nodes may run with different cache sizes: a cache that holds a few
    /// nodes, so that nearly every read goes to the database, gives the same
    /// roots and proofs.
    #[test]
    fn state_roots_do_not_depend_on_cache_sizes() {
        roots_match_per_key_insertion(&StoreOptions {
            roll_bytes: 1 << 20,
            block_cache_bytes: 64 << 10,
            node_cache_bytes: 4 << 10,
            max_open_files: 10,
        });
    }

    fn roots_match_per_key_insertion(opts: &StoreOptions) {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open_with(dir.path(), opts).unwrap();
        let reference = jmt::mock::MockTreeStore::default();
        let mut current: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for v in 0..300u64 {
            let mut changes: Dirty = BTreeMap::new();
            // The first versions insert many keys at once; later ones mix.
            for _ in 0..1 + rand(if v < 3 { 400 } else { 40 }) {
                let k = format!("key{}", rand(600)).into_bytes();
                let value = match (rand(10), current.get(&k)) {
                    (0, Some(_)) if v % 4 == 3 => None,
                    (1, Some(old)) => Some(old.clone()),
                    _ => Some(rand(1 << 20).to_be_bytes().to_vec()),
                };
                changes.insert(k, value);
            }
            let txn = store.begin().unwrap();
            let mut b = txn.batch().unwrap();
            for (k, val) in &changes {
                match val {
                    Some(val) => b.put(k, val).unwrap(),
                    None => b.delete(k).unwrap(),
                }
            }
            let root = b.update_state_root(v).unwrap();
            drop(b);
            txn.commit(false).unwrap();

            let (want, update) = Jmt::new(&reference)
                .put_value_set(
                    changes
                        .iter()
                        .map(|(k, val)| (KeyHash::with::<Sha256>(k), val.clone())),
                    v,
                )
                .unwrap();
            reference.write_tree_update_batch(update).unwrap();
            assert_eq!(root, want.0, "root of version {v}");
            for (k, val) in changes {
                match val {
                    Some(val) => current.insert(k, val),
                    None => current.remove(&k),
                };
            }
        }
        let r = store.read().unwrap();
        for k in ["key1", "key77", "key599"] {
            let p = r.state_proof(k.as_bytes(), 299).unwrap();
            let want = current.get(k.as_bytes());
            assert_eq!(p.value.as_ref(), want, "{k}");
            comity_core::state::verify(&p.root, k.as_bytes(), want.map(Vec::as_slice), &p.proof)
                .unwrap();
        }
    }

    #[test]
    fn stale_entries_name_their_nodes_in_either_layout() {
        let mut list = Vec::new();
        for node in [&b"abc"[..], b"", b"defg"] {
            list.extend_from_slice(&(node.len() as u16).to_be_bytes());
            list.extend_from_slice(node);
        }
        let version = 7u64.to_be_bytes();
        assert_eq!(
            stale_nodes(&version, &list).unwrap(),
            [&b"abc"[..], b"", b"defg"]
        );
        let mut one = version.to_vec();
        one.extend_from_slice(b"node");
        assert_eq!(stale_nodes(&one, &[]).unwrap(), [&b"node"[..]]);
        for cut in [1, 3, list.len() - 1] {
            let e = stale_nodes(&version, &list[..cut]).unwrap_err();
            assert!(e.to_string().contains("version 7 is cut short"), "{e}");
        }
    }

    /// One apply step of the crash test: a state write and a ledger record;
    /// every third step takes a state-tree version, which the next step writes.
    fn crash_step(store: &Store, i: u64) {
        let txn = store.begin().unwrap();
        let mut b = txn.batch().unwrap();
        b.put(format!("key{}", i % 50).as_bytes(), &i.to_be_bytes())
            .unwrap();
        b.append(&Record {
            leaf: vec![0xa0],
            body: i.to_be_bytes().to_vec(),
        })
        .unwrap();
        write_taken_versions(store, &mut b);
        if i % 3 == 2 {
            b.take_state_changes(i / 3);
        }
        drop(b);
        txn.commit(false).unwrap();
    }

    /// Computes and writes every state-tree version taken so far.
    fn write_taken_versions(store: &Store, b: &mut WriteBatch<'_>) {
        for v in store.pending_state_versions() {
            let update = b.compute_state_tree(v).unwrap();
            b.write_state_tree(update, None).unwrap();
        }
    }

    /// Finishes taken versions, then folds the remaining changes into the
    /// next one (steps `0..len` took `len / 3` versions): the root any node
    /// with the same history would compute.
    fn final_root(store: &Store, len: u64) -> Hash {
        let txn = store.begin().unwrap();
        let mut b = txn.batch().unwrap();
        write_taken_versions(store, &mut b);
        let root = b.update_state_root(len / 3).unwrap();
        drop(b);
        txn.commit(true).unwrap();
        root
    }

    /// Run by `crash_between_writes_keeps_state_and_unfolded_changes` in a
    /// child process, which applies steps until it is aborted.
    #[test]
    #[ignore = "helper run in a child process"]
    fn crash_child() {
        let Some(dir) = std::env::var_os("COMITY_STORE_CRASH_DIR") else {
            return;
        };
        let (store, _) = Store::open(Path::new(&dir), 4096).unwrap();
        let started = Instant::now();
        let mut i = 0;
        while started.elapsed() < Duration::from_millis(700) {
            crash_step(&store, i);
            i += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        std::process::abort(); // no clean shutdown: the writer is cut off wherever it is
    }

    #[test]
    fn crash_between_writes_keeps_state_and_unfolded_changes() {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "state::tests::crash_child",
                "--nocapture",
            ])
            .env("COMITY_STORE_CRASH_DIR", dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(!status.success(), "the child must die by abort");
        let (store, _) = Store::open(dir.path(), 4096).unwrap();
        let len = store.read().unwrap().ledger_len().unwrap();
        // The writer wrote several times in 700 ms; the recovered point is one of its writes.
        assert!(len > 10, "only {len} steps recovered");
        let r = store.read().unwrap();
        for k in 0..50u64 {
            let last = (0..len).rev().find(|i| i % 50 == k);
            let got = r.get(format!("key{k}").as_bytes()).unwrap();
            assert_eq!(
                got,
                last.map(|i| i.to_be_bytes().to_vec()),
                "key{k} after {len} steps"
            );
        }
        drop(r);
        let root = final_root(&store, len);
        // A store that never crashed, with the same steps, reaches the same root.
        let clean = tempfile::tempdir().unwrap();
        let (reference, _) = Store::open(clean.path(), 4096).unwrap();
        for i in 0..len {
            crash_step(&reference, i);
        }
        assert_eq!(
            root,
            final_root(&reference, len),
            "state root after recovery at {len}"
        );
    }

    #[test]
    fn missing_state_database_is_refused_not_truncated() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = Store::open(dir.path(), 1 << 20).unwrap();
            commit_one_record(&store);
        }
        std::fs::remove_dir_all(dir.path().join("state")).unwrap();
        let err = refusal(dir.path());
        assert!(
            err.contains("state database") && err.contains("missing"),
            "{err}"
        );
        // The ledger files are untouched.
        assert!(std::fs::metadata(first_segment(dir.path())).unwrap().len() > 20);
    }

    /// A store with `leaves` appended and made durable, closed again.
    fn durable_ledger(dir: &Path, leaves: &[u8]) {
        let (store, _) = Store::open(dir, 1 << 20).unwrap();
        let txn = store.begin().unwrap();
        let mut b = txn.batch().unwrap();
        for &l in leaves {
            b.append(&Record {
                leaf: vec![0x41, l],
                body: vec![],
            })
            .unwrap();
        }
        drop(b);
        txn.commit(true).unwrap();
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                copy_dir(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }

    /// The first ledger segment file of a store in `dir`.
    fn first_segment(dir: &Path) -> PathBuf {
        dir.join("ledger")
            .join(crate::segments::segment_file_name(0))
    }

    /// Why opening the store in `dir` fails (it must).
    fn refusal(dir: &Path) -> String {
        Store::open(dir, 1 << 20)
            .err()
            .expect("must refuse")
            .to_string()
    }

    /// The state database of the store in `dir`, opened directly, and its meta keyspace.
    fn state_meta(dir: &Path) -> (fjall::Database, fjall::Keyspace) {
        let db = fjall::Database::builder(dir.join("state")).open().unwrap();
        let meta = db.keyspace("meta", KeyspaceCreateOptions::default).unwrap();
        (db, meta)
    }

    #[test]
    fn an_emptied_state_database_is_refused_not_truncated() {
        let dir = tempfile::tempdir().unwrap();
        durable_ledger(dir.path(), &[1, 2]);
        let seg = first_segment(dir.path());
        let before = std::fs::read(&seg).unwrap();
        // A new, empty database where the state database was.
        std::fs::remove_dir_all(dir.path().join("state")).unwrap();
        drop(state_meta(dir.path()));
        let err = refusal(dir.path());
        assert!(err.contains("records no ledger length"), "{err}");
        assert_eq!(std::fs::read(&seg).unwrap(), before, "the ledger was cut");
        // A new store records its (empty) ledger length at once.
        let fresh = tempfile::tempdir().unwrap();
        drop(Store::open(fresh.path(), 1 << 20).unwrap());
        let (_db, meta) = state_meta(fresh.path());
        assert_eq!(
            meta.get(META_LEDGER_LEN).unwrap().as_deref(),
            Some(&0u64.to_be_bytes()[..])
        );
    }

    #[test]
    fn a_state_database_of_another_ledger_is_refused_before_any_cut() {
        let (ours, theirs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        durable_ledger(ours.path(), &[1, 2, 3]);
        durable_ledger(theirs.path(), &[9]);
        let seg = first_segment(ours.path());
        let before = std::fs::read(&seg).unwrap();
        std::fs::remove_dir_all(ours.path().join("state")).unwrap();
        copy_dir(&theirs.path().join("state"), &ours.path().join("state"));
        let err = refusal(ours.path());
        assert!(err.contains("hash to root"), "{err}");
        assert_eq!(std::fs::read(&seg).unwrap(), before, "the ledger was cut");

        // A damaged recorded length is an error, not an empty ledger.
        durable_ledger(theirs.path(), &[]);
        {
            let (db, meta) = state_meta(theirs.path());
            meta.insert(META_LEDGER_LEN, [0u8; 3]).unwrap();
            db.persist(PersistMode::SyncAll).unwrap();
        }
        let err = refusal(theirs.path());
        assert!(err.contains("recorded ledger length"), "{err}");
    }
}
