//! The store: ledger segments + on-disk tree + redb state, opened and
//! committed together.
//!
//! Durability contract (see docs/architecture.md): the Raft log is the
//! write-ahead log. Apply-time commits use `Durability::None`; every so often a
//! *durable* commit first fsyncs the ledger segments, then commits redb with
//! `Durability::Immediate`. After a crash redb is back at its last durable
//! commit, whose meta says how many ledger records were durable; the ledger is
//! cut back to that length and the Raft log replays the rest.

use crate::segments::{LedgerFiles, OpenReport, SegmentError};
use crate::tree::{TreeError, TreeFiles};
use comity_core::entry::Record;
use comity_core::merkle::{self, Hash};
use jmt::storage::{LeafNode, Node, NodeKey, TreeReader};
use jmt::{KeyHash, OwnedValue, Sha256Jmt, Version};
use redb::{
    Database, Durability, ReadTransaction, ReadableTable, TableDefinition, WriteTransaction,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

/// Application state committed to by the state root.
const STATE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("state");
/// Derived indexes (tx ids, nonces, histories, checkpoints): rebuilt by replay, not in the root.
const AUX: TableDefinition<&[u8], &[u8]> = TableDefinition::new("aux");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const JMT_NODES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("jmt_nodes");
/// (key hash ‖ version big-endian) → 0x00 (deleted) or 0x01 ‖ value.
const JMT_VALUES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("jmt_values");
/// (stale-since version big-endian ‖ borsh node key) → (): replaced state-tree nodes, for pruning.
const JMT_STALE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("jmt_stale");

/// State-tree versions (checkpoints) whose nodes are kept for proofs; nodes
/// replaced longer ago are deleted, so the state tree does not grow with history.
pub const STATE_VERSIONS_KEPT: u64 = 256;

/// Page cache of the state database.
pub const STATE_CACHE_BYTES: usize = 256 << 20;

const META_LEDGER_LEN: &str = "ledger_len";
const META_LEDGER_ROOT: &str = "ledger_root";
/// State changes not yet folded into the state tree, saved at durable commits
/// so that recovery from a durable point between checkpoints loses none.
const META_DIRTY: &str = "dirty_state";

/// State changes (key → new value, or `None` for a deletion).
pub type Dirty = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Unfolded changes, plus changes taken for state-tree versions not yet written.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Unfolded {
    dirty: Dirty,
    jobs: BTreeMap<u64, Dirty>,
}

/// A key and its value, as read from a range.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// A value (or its absence) at a state-tree version, with its proof and that version's root.
pub struct StateProof {
    pub value: Option<Vec<u8>>,
    /// Borsh-encoded jmt `SparseMerkleProof<Sha256>`.
    pub proof: Vec<u8>,
    pub root: Hash,
}

fn encode_unfolded(u: &Unfolded) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(u, &mut out).expect("encoding to a Vec cannot fail");
    out
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

fn db_err(path: &Path) -> impl Fn(redb::Error) -> StoreError + '_ {
    move |e| StoreError::Db {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

macro_rules! dbe {
    ($self:expr, $e:expr) => {
        $e.map_err(|e| StoreError::Db {
            path: $self.db_path.clone(),
            message: e.to_string(),
        })
    };
}

/// Storage of one node. Shared between the applier and readers.
pub struct Store {
    db: Database,
    db_path: PathBuf,
    ledger: RwLock<LedgerFiles>,
    tree: RwLock<TreeFiles>,
    /// State keys changed since the last state-root update.
    dirty: Mutex<Dirty>,
    /// Changes taken for state-tree versions whose nodes are not written yet.
    jobs: Mutex<BTreeMap<u64, Dirty>>,
}

impl Store {
    /// Opens the store in `dir`, verifying every ledger record and rebuilding the tree.
    pub fn open(dir: &Path, roll_bytes: u64) -> Result<(Store, OpenReport), StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Db {
            path: dir.into(),
            message: e.to_string(),
        })?;
        let db_path = dir.join("state.redb");
        let ledger_dir = dir.join("ledger");
        let has_ledger = std::fs::read_dir(&ledger_dir)
            .map(|mut d| {
                d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".seg")))
            })
            .unwrap_or(false);
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
        // A bounded page cache keeps resident memory predictable on large ledgers.
        let db = redb::Builder::new()
            .set_cache_size(STATE_CACHE_BYTES)
            .create(&db_path)
            .map_err(|e| db_err(&db_path)(e.into()))?;
        let (durable_len, durable_root, unfolded) = {
            let txn = db.begin_write().map_err(|e| db_err(&db_path)(e.into()))?;
            for t in [STATE, AUX, JMT_NODES, JMT_VALUES, JMT_STALE] {
                txn.open_table(t).map_err(|e| db_err(&db_path)(e.into()))?;
            }
            let meta = txn
                .open_table(META)
                .map_err(|e| db_err(&db_path)(e.into()))?;
            let len = meta
                .get(META_LEDGER_LEN)
                .map_err(|e| db_err(&db_path)(e.into()))?
                .map(|v| u64::from_be_bytes(v.value().try_into().unwrap_or_default()))
                .unwrap_or(0);
            let root: Option<Hash> = meta
                .get(META_LEDGER_ROOT)
                .map_err(|e| db_err(&db_path)(e.into()))?
                .and_then(|v| v.value().try_into().ok());
            let unfolded: Unfolded = match meta
                .get(META_DIRTY)
                .map_err(|e| db_err(&db_path)(e.into()))?
            {
                Some(v) => ciborium::from_reader(v.value()).map_err(|e| StoreError::Db {
                    path: db_path.clone(),
                    message: format!("saved state changes do not decode: {e}"),
                })?,
                None => Unfolded::default(),
            };
            drop(meta);
            txn.commit().map_err(|e| db_err(&db_path)(e.into()))?;
            (len, root, unfolded)
        };
        let mut tree = TreeFiles::create(&dir.join("tree"))?;
        let mut tree_err = None;
        let (mut ledger, report) =
            LedgerFiles::open(&ledger_dir, durable_len, roll_bytes, |index, payload| {
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
            })?;
        if let Some(e) = tree_err {
            return Err(e.into());
        }
        if ledger.len() > durable_len {
            ledger.truncate(durable_len)?;
        }
        tree.flush()?;
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
        Ok((
            Store {
                db,
                db_path,
                ledger: RwLock::new(ledger),
                tree: RwLock::new(tree),
                dirty: Mutex::new(unfolded.dirty),
                jobs: Mutex::new(unfolded.jobs),
            },
            report,
        ))
    }

    /// Pushes already-written state and ledger bytes to disk through separate
    /// file handles, without taking any lock. Correctness never depends on it:
    /// it keeps the periodic durable commit from having seconds of dirty pages
    /// to flush at once (a latency spike). Call it from a background thread.
    pub fn writeback(&self) {
        let newest_segment = std::fs::read_dir(self.db_path.with_file_name("ledger"))
            .ok()
            .and_then(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "seg"))
                    .max()
            });
        for path in [Some(self.db_path.clone()), newest_segment]
            .into_iter()
            .flatten()
        {
            if let Err(e) = std::fs::File::open(&path).and_then(|f| f.sync_data()) {
                tracing::debug!(path = %path.display(), error = %e, "writeback failed");
            }
        }
    }

    /// State-tree versions taken but not yet written (to resume after a restart).
    pub fn pending_state_versions(&self) -> Vec<Version> {
        self.jobs
            .lock()
            .expect("jobs lock")
            .keys()
            .copied()
            .collect()
    }

    /// Starts the single write transaction of one apply step.
    pub fn begin(&self) -> Result<Txn<'_>, StoreError> {
        let mut txn = dbe!(self, self.db.begin_write())?;
        txn.set_durability(Durability::None);
        Ok(Txn { store: self, txn })
    }

    pub fn read(&self) -> Result<Reader<'_>, StoreError> {
        Ok(Reader {
            store: self,
            txn: dbe!(self, self.db.begin_read())?,
        })
    }

    /// Reads a ledger record; the checksum is checked before it is returned.
    pub fn record(&self, index: u64) -> Result<Vec<u8>, StoreError> {
        Ok(self.ledger.read().expect("ledger lock").read(index)?)
    }

    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, StoreError> {
        merkle::inclusion_proof(&*self.tree.read().expect("tree lock"), index, size)
            .map_err(|e| StoreError::StateTree(e.to_string()))
    }

    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, StoreError> {
        merkle::consistency_proof(&*self.tree.read().expect("tree lock"), old, new)
            .map_err(|e| StoreError::StateTree(e.to_string()))
    }

    pub fn tree_root_at(&self, size: u64) -> Result<Hash, StoreError> {
        Ok(self.tree.read().expect("tree lock").root_at(size)?)
    }
}

/// One apply step's write transaction. Its tables are used through
/// [`Txn::batch`]; [`Txn::commit`] then records the ledger length and root.
pub struct Txn<'s> {
    store: &'s Store,
    txn: WriteTransaction,
}

impl<'s> Txn<'s> {
    /// Opens the tables once for a run of operations (opening per operation is costly).
    pub fn batch(&self) -> Result<WriteBatch<'_>, StoreError> {
        let s = self.store;
        Ok(WriteBatch {
            store: s,
            txn: &self.txn,
            state: dbe!(s, self.txn.open_table(STATE))?,
            aux: dbe!(s, self.txn.open_table(AUX))?,
            meta: dbe!(s, self.txn.open_table(META))?,
        })
    }

    /// Commits. A durable commit fsyncs the ledger first, then redb, so the
    /// recorded ledger length never exceeds what is on disk.
    pub fn commit(mut self, durable: bool) -> Result<(), StoreError> {
        let (len, root) = {
            let t = self.store.tree.read().expect("tree lock");
            (t.len(), t.root())
        };
        {
            let mut meta = dbe!(self.store, self.txn.open_table(META))?;
            dbe!(
                self.store,
                meta.insert(META_LEDGER_LEN, len.to_be_bytes().as_slice())
            )?;
            dbe!(self.store, meta.insert(META_LEDGER_ROOT, root.as_slice()))?;
        }
        self.store.tree.write().expect("tree lock").flush()?;
        if durable {
            let dirty = encode_unfolded(&Unfolded {
                dirty: self.store.dirty.lock().expect("dirty lock").clone(),
                jobs: self.store.jobs.lock().expect("jobs lock").clone(),
            });
            let mut meta = dbe!(self.store, self.txn.open_table(META))?;
            dbe!(self.store, meta.insert(META_DIRTY, dirty.as_slice()))?;
            drop(meta);
            self.store.ledger.write().expect("ledger lock").sync()?;
            self.txn.set_durability(Durability::Immediate);
        }
        dbe!(self.store, self.txn.commit())?;
        Ok(())
    }
}

type Tbl<'t, K> = redb::Table<'t, K, &'static [u8]>;

/// State, indexes, ledger records and meta written by one apply step.
pub struct WriteBatch<'t> {
    store: &'t Store,
    txn: &'t WriteTransaction,
    state: Tbl<'t, &'static [u8]>,
    aux: Tbl<'t, &'static [u8]>,
    meta: Tbl<'t, &'static str>,
}

impl WriteBatch<'_> {
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        table_get(self.store, &self.state, key)
    }

    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        dbe!(self.store, self.state.insert(key, value))?;
        self.store
            .dirty
            .lock()
            .expect("dirty lock")
            .insert(key.to_vec(), Some(value.to_vec()));
        Ok(())
    }

    pub fn delete(&mut self, key: &[u8]) -> Result<(), StoreError> {
        dbe!(self.store, self.state.remove(key))?;
        self.store
            .dirty
            .lock()
            .expect("dirty lock")
            .insert(key.to_vec(), None);
        Ok(())
    }

    /// Keys (and values) in `[from, to)` of the state table, in order, at most `limit`.
    pub fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        range(self.store, &self.state, from, to, limit)
    }

    pub fn aux_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        table_get(self.store, &self.aux, key)
    }

    pub fn aux_put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        dbe!(self.store, self.aux.insert(key, value))?;
        Ok(())
    }

    pub fn aux_delete(&mut self, key: &[u8]) -> Result<(), StoreError> {
        dbe!(self.store, self.aux.remove(key))?;
        Ok(())
    }

    /// Keys (and values) in `[from, to)` of the aux table, in order, at most `limit`.
    pub fn aux_range(
        &self,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        range(self.store, &self.aux, from, to, limit)
    }

    pub fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let v = dbe!(self.store, self.meta.get(key))?.map(|v| v.value().to_vec());
        Ok(v)
    }

    pub fn meta_put(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        dbe!(self.store, self.meta.insert(key, value))?;
        Ok(())
    }

    pub fn meta_remove(&mut self, key: &str) -> Result<(), StoreError> {
        dbe!(self.store, self.meta.remove(key))?;
        Ok(())
    }

    /// Appends a ledger record and its leaf to the tree; returns its index.
    pub fn append(&mut self, record: &Record) -> Result<u64, StoreError> {
        let index = self
            .store
            .ledger
            .write()
            .expect("ledger lock")
            .append(&record.to_cbor())?;
        self.store
            .tree
            .write()
            .expect("tree lock")
            .push(merkle::leaf_hash(&record.leaf))?;
        Ok(index)
    }

    pub fn ledger_len(&self) -> u64 {
        self.store.tree.read().expect("tree lock").len()
    }

    pub fn tx_root(&self) -> Hash {
        self.store.tree.read().expect("tree lock").root()
    }

    /// Takes the state changed since the last call as the job of state-tree
    /// `version`; the job is kept (and saved at durable commits) until
    /// [`WriteBatch::write_state_tree`] writes its result.
    pub fn take_state_changes(&mut self, version: Version) {
        let changes = std::mem::take(&mut *self.store.dirty.lock().expect("dirty lock"));
        self.store
            .jobs
            .lock()
            .expect("jobs lock")
            .insert(version, changes);
    }

    /// Computes a taken job inside this transaction (when it cannot wait for a worker).
    pub fn compute_state_tree(&self, version: Version) -> Result<StateTreeUpdate, StoreError> {
        let nodes = dbe!(self.store, self.txn.open_table(JMT_NODES))?;
        let values = dbe!(self.store, self.txn.open_table(JMT_VALUES))?;
        compute(self.store, &nodes, &values, version)
    }

    /// Writes a computed state-tree version and prunes nodes no longer served.
    pub fn write_state_tree(&mut self, update: StateTreeUpdate) -> Result<Hash, StoreError> {
        let version = update.version;
        let batch = update.batch;
        let mut nodes = dbe!(self.store, self.txn.open_table(JMT_NODES))?;
        let mut values = dbe!(self.store, self.txn.open_table(JMT_VALUES))?;
        for (k, n) in batch.node_batch.nodes() {
            let kb = borsh::to_vec(k).map_err(|e| StoreError::StateTree(e.to_string()))?;
            let nb = borsh::to_vec(n).map_err(|e| StoreError::StateTree(e.to_string()))?;
            dbe!(self.store, nodes.insert(kb.as_slice(), nb.as_slice()))?;
        }
        for ((v, kh), val) in batch.node_batch.values() {
            let key = value_key(kh, *v);
            let mut stored = Vec::with_capacity(1 + val.as_ref().map_or(0, |x| x.len()));
            match val {
                Some(x) => {
                    stored.push(1);
                    stored.extend_from_slice(x);
                }
                None => stored.push(0),
            }
            dbe!(self.store, values.insert(key.as_slice(), stored.as_slice()))?;
        }
        let mut stale = dbe!(self.store, self.txn.open_table(JMT_STALE))?;
        for st in &batch.stale_node_index_batch {
            let mut k = st.stale_since_version.to_be_bytes().to_vec();
            k.extend(
                borsh::to_vec(&st.node_key).map_err(|e| StoreError::StateTree(e.to_string()))?,
            );
            dbe!(self.store, stale.insert(k.as_slice(), [].as_slice()))?;
        }
        // Nodes replaced at or before the horizon belong to no version still served.
        if let Some(horizon) = version.checked_sub(STATE_VERSIONS_KEPT) {
            let end = (horizon + 1).to_be_bytes();
            loop {
                let old = range(self.store, &stale, &[], &end, 4096)?;
                if old.is_empty() {
                    break;
                }
                for (k, _) in old {
                    dbe!(self.store, nodes.remove(&k[8..]))?;
                    dbe!(self.store, stale.remove(k.as_slice()))?;
                }
            }
        }
        self.store.jobs.lock().expect("jobs lock").remove(&version);
        Ok(update.root)
    }

    /// Folds the state changed since the last call into the state tree at
    /// `version` (versions must be consecutive from 0), synchronously.
    pub fn update_state_root(&mut self, version: Version) -> Result<Hash, StoreError> {
        self.take_state_changes(version);
        let update = self.compute_state_tree(version)?;
        self.write_state_tree(update)
    }
}

/// A consistent read view of state and indexes.
pub struct Reader<'s> {
    store: &'s Store,
    txn: ReadTransaction,
}

impl Reader<'_> {
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        table_get(
            self.store,
            &dbe!(self.store, self.txn.open_table(STATE))?,
            key,
        )
    }

    pub fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        range(
            self.store,
            &dbe!(self.store, self.txn.open_table(STATE))?,
            from,
            to,
            limit,
        )
    }

    pub fn aux_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        table_get(
            self.store,
            &dbe!(self.store, self.txn.open_table(AUX))?,
            key,
        )
    }

    pub fn aux_range(
        &self,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        range(
            self.store,
            &dbe!(self.store, self.txn.open_table(AUX))?,
            from,
            to,
            limit,
        )
    }

    pub fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let t = dbe!(self.store, self.txn.open_table(META))?;
        let v = dbe!(self.store, t.get(key))?.map(|v| v.value().to_vec());
        Ok(v)
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
        let nodes = dbe!(self.store, self.txn.open_table(JMT_NODES))?;
        let values = dbe!(self.store, self.txn.open_table(JMT_VALUES))?;
        compute(self.store, &nodes, &values, version)
    }

    /// The value of `key` in the state tree at `version`, with a proof
    /// (borsh-encoded jmt `SparseMerkleProof<Sha256>`) against that version's root.
    pub fn state_proof(&self, key: &[u8], version: Version) -> Result<StateProof, StoreError> {
        let nodes = dbe!(self.store, self.txn.open_table(JMT_NODES))?;
        let values = dbe!(self.store, self.txn.open_table(JMT_VALUES))?;
        let reader = JmtReader {
            nodes: &nodes,
            values: &values,
        };
        let tree = Sha256Jmt::new(&reader);
        let (value, proof) = tree
            .get_with_proof(KeyHash::with::<sha2::Sha256>(key), version)
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

fn table_get(
    store: &Store,
    t: &impl ReadableTable<&'static [u8], &'static [u8]>,
    key: &[u8],
) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(dbe!(store, t.get(key))?.map(|v| v.value().to_vec()))
}

fn range(
    store: &Store,
    t: &impl ReadableTable<&'static [u8], &'static [u8]>,
    from: &[u8],
    to: &[u8],
    limit: usize,
) -> Result<Vec<KeyValue>, StoreError> {
    let mut out = Vec::new();
    for r in dbe!(store, t.range::<&[u8]>(from..to))? {
        if out.len() >= limit {
            break;
        }
        let (k, v) = dbe!(store, r)?;
        out.push((k.value().to_vec(), v.value().to_vec()));
    }
    Ok(out)
}

/// A computed state-tree version, ready to be written.
pub struct StateTreeUpdate {
    pub version: Version,
    pub root: Hash,
    batch: jmt::storage::TreeUpdateBatch,
}

fn compute(
    store: &Store,
    nodes: &impl ReadableTable<&'static [u8], &'static [u8]>,
    values: &impl ReadableTable<&'static [u8], &'static [u8]>,
    version: Version,
) -> Result<StateTreeUpdate, StoreError> {
    let changes = store
        .jobs
        .lock()
        .expect("jobs lock")
        .get(&version)
        .cloned()
        .ok_or_else(|| {
            StoreError::StateTree(format!("no state changes taken for version {version}"))
        })?;
    let reader = JmtReader { nodes, values };
    let (root, batch) = Sha256Jmt::new(&reader)
        .put_value_set(
            changes
                .into_iter()
                .map(|(k, v)| (KeyHash::with::<sha2::Sha256>(&k), v)),
            version,
        )
        .map_err(|e| StoreError::StateTree(e.to_string()))?;
    Ok(StateTreeUpdate {
        version,
        root: root.0,
        batch,
    })
}

fn value_key(kh: &KeyHash, version: Version) -> Vec<u8> {
    let mut k = Vec::with_capacity(40);
    k.extend_from_slice(&kh.0);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

/// Adapter from redb tables to jmt's reader.
struct JmtReader<'a, N, V> {
    nodes: &'a N,
    values: &'a V,
}

impl<N, V> TreeReader for JmtReader<'_, N, V>
where
    N: ReadableTable<&'static [u8], &'static [u8]>,
    V: ReadableTable<&'static [u8], &'static [u8]>,
{
    fn get_node_option(&self, node_key: &NodeKey) -> anyhow::Result<Option<Node>> {
        let k = borsh::to_vec(node_key)?;
        match self.nodes.get(k.as_slice())? {
            Some(v) => Ok(Some(borsh::from_slice(v.value())?)),
            None => Ok(None),
        }
    }

    fn get_value_option(
        &self,
        max_version: Version,
        key_hash: KeyHash,
    ) -> anyhow::Result<Option<OwnedValue>> {
        let from = value_key(&key_hash, 0);
        let to = value_key(&key_hash, max_version);
        let mut it = self
            .values
            .range::<&[u8]>(from.as_slice()..=to.as_slice())?;
        match it.next_back() {
            Some(r) => {
                let (_, v) = r?;
                let v = v.value();
                Ok(if v.first() == Some(&1) {
                    Some(v[1..].to_vec())
                } else {
                    None
                })
            }
            None => Ok(None),
        }
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

    #[test]
    fn state_tree_prunes_replaced_nodes_and_still_proves_the_latest_version() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), 1 << 20).unwrap();
        let versions = STATE_VERSIONS_KEPT + 600;
        let mut root = [0; 32];
        for v in 0..=versions {
            let txn = store.begin().unwrap();
            let mut b = txn.batch().unwrap();
            for k in 0..8u64 {
                b.put(format!("key{k}").as_bytes(), &(v * 8 + k).to_be_bytes())
                    .unwrap();
            }
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
        let nodes =
            redb::ReadableTableMetadata::len(&r.txn.open_table(JMT_NODES).unwrap()).unwrap();
        assert!(
            nodes < (STATE_VERSIONS_KEPT + 10) * 12,
            "{nodes} state-tree nodes kept for {versions} versions"
        );
    }

    #[test]
    fn missing_state_database_is_refused_not_truncated() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = Store::open(dir.path(), 1 << 20).unwrap();
            let txn = store.begin().unwrap();
            txn.batch()
                .unwrap()
                .append(&Record {
                    leaf: vec![0xa0],
                    body: vec![],
                })
                .unwrap();
            txn.commit(true).unwrap();
        }
        std::fs::remove_file(dir.path().join("state.redb")).unwrap();
        let err = Store::open(dir.path(), 1 << 20)
            .err()
            .expect("must refuse")
            .to_string();
        assert!(
            err.contains("state database") && err.contains("missing"),
            "{err}"
        );
        // The ledger files are untouched.
        let seg = dir
            .path()
            .join("ledger")
            .join(crate::segments::segment_file_name(0));
        assert!(std::fs::metadata(seg).unwrap().len() > 20);
    }
}
