//! The Raft state machine: committed entries go through the executor into
//! the store. Commits are not fsynced per batch (the Raft log is the WAL);
//! a durable commit happens at snapshots and at least every
//! [`DURABLE_EVERY`], which bounds replay after a crash.
//!
//! A snapshot carries no state: it names a durable point (Raft log id,
//! ledger length and root). A node that installs one fetches the ledger
//! records it lacks from its peers and re-executes them, checking every
//! leaf and the final root, so it trusts no peer's state.

use crate::log_store::PurgeFloor;
use crate::network::{path, LedgerRequest, Peers};
use crate::{storage_io, Entry, LogId, TxOutcome, TypeConfig};
use comity_apps::audit::{check_replayed, replay_command};
use comity_apps::executor::{Output, Verified};
use comity_apps::state_worker::StateWorker;
use comity_apps::{Command, Config, Executor};
use comity_core::checkpoint::Checkpoint;
use comity_core::network::NodeSet;
use comity_core::Hash;
use comity_store::{Commit, Store};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, SnapshotMeta, StorageError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// Longest time between durable state-machine commits.
pub const DURABLE_EVERY: Duration = Duration::from_secs(5);

const META_APPLIED: &str = "raft_applied";
const META_SNAPSHOT: &str = "raft_snapshot";
/// A snapshot being installed: its records are being fetched and replayed.
const META_INSTALLING: &str = "raft_installing";

/// Ledger records fetched from a peer per request, at most.
pub const LEDGER_PAGE_RECORDS: u64 = 1024;
/// A peer stops adding ledger records to a reply once it holds this many bytes.
pub const LEDGER_PAGE_BYTES: usize = 4 << 20;
/// The most a page of ledger records may be: its last record may pass
/// [`LEDGER_PAGE_BYTES`] by a whole record.
const LEDGER_PAGE: crate::network::Bound = crate::network::Bound {
    bytes: LEDGER_PAGE_BYTES + comity_store::segments::MAX_RECORD_LEN as usize + (64 << 10),
    items: Some(LEDGER_PAGE_RECORDS),
};

/// The peer client, set once the node has built it (after the state machine).
pub type PeerSlot = Arc<OnceLock<Peers>>;

/// What a snapshot carries: a durable point of the ledger it covers.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct SnapshotInfo {
    meta: SnapshotMeta<u64, BasicNode>,
    ledger_len: u64,
    ledger_root: Hash,
    /// Ledger time at the snapshot, which entries without a record may have
    /// moved past the last record's (0 in snapshots made before it was kept).
    #[serde(default)]
    ledger_time: u64,
}

/// The nodes a snapshot names, to fetch ledger records from.
fn peer_addrs(info: &SnapshotInfo) -> Vec<String> {
    info.meta
        .last_membership
        .membership()
        .nodes()
        .map(|(_, n)| n.addr.clone())
        .collect()
}

/// How long a snapshot install waits for any peer to have the ledger
/// records it lacks before it gives up (until the next start).
const FETCH_PATIENCE: Duration = Duration::from_secs(300);
/// How long a snapshot is checked (some peer has its last record) before
/// anything is recorded: openraft asks for the log's purge together with
/// the install, and the purge waits for the install to be recorded at
/// most [`crate::log_store::PURGE_WAIT`] before it stops Raft.
const PRECHECK_PATIENCE: Duration = Duration::from_secs(30);
const _: () = assert!(PRECHECK_PATIENCE.as_secs() * 2 <= crate::log_store::PURGE_WAIT.as_secs());

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Applied {
    last: Option<LogId>,
    membership: StoredMembership<u64, BasicNode>,
}

/// Node-local consequences of apply that the node acts on.
#[derive(Debug)]
pub enum Event {
    /// A checkpoint this node must sign and submit.
    Checkpoint(Checkpoint),
    /// Transactions applied (for waiters on any node).
    Applied(Vec<TxOutcome>),
    /// A snapshot install replayed ledger records: waiters for any of them
    /// are answered from the ledger.
    CaughtUp,
    /// A node signed a checkpoint that differs from ours.
    Divergence(comity_apps::node::Divergence),
    /// The node set changed: nodes of the set before it endorse the change.
    NodeSetChange {
        change: comity_core::receipt::NodeSetChange,
        before: NodeSet,
    },
}

/// What the node reads about the executor outside apply, published after
/// every apply step so readers never wait for apply.
#[derive(Clone, Debug, Default)]
pub struct ExecView {
    pub network_id: Option<Hash>,
    pub config: Config,
    /// Whether users may transact.
    pub open: bool,
    pub ledger_time: u64,
    /// Entries not yet covered by a checkpoint marker.
    pub uncovered: u64,
    pub checkpoint_seq: u64,
    /// Checkpoints applied whose state root is still being computed.
    pub pending_checkpoints: usize,
    /// The trusted node set: checkpoint signers and the only accepted peers.
    pub nodes: Arc<NodeSet>,
    /// Which transaction ids may already be recorded, and which nonces spent.
    pub recent_ids: Arc<comity_apps::replay_filter::RecentIds>,
    pub spent_nonces: Arc<comity_apps::replay_filter::SpentNonces>,
}

impl ExecView {
    fn of(ex: &Executor) -> Self {
        ExecView {
            network_id: ex.network_id(),
            config: ex.config().clone(),
            open: ex.is_open(),
            ledger_time: ex.ledger_time(),
            uncovered: ex.uncovered(),
            checkpoint_seq: ex.checkpoint_seq(),
            pending_checkpoints: ex.pending_checkpoints(),
            nodes: ex.nodes(),
            recent_ids: ex.recent_ids(),
            spent_nonces: ex.spent_nonces(),
        }
    }
}

pub type SharedView = Arc<RwLock<ExecView>>;

/// Hands apply the transactions this node already parsed and verified at ingress.
pub type Preverified = Arc<dyn Fn(&Hash) -> Option<Verified> + Send + Sync>;

pub struct StateMachine {
    store: Arc<Store>,
    executor: Executor,
    view: SharedView,
    applied: Applied,
    events: UnboundedSender<Event>,
    /// Transaction ids whose signatures this node checked at ingress.
    preverified: Preverified,
    last_durable: Instant,
    /// For fetching ledger records when installing a snapshot.
    peers: PeerSlot,
    /// Raised as state (or an install to resume) becomes durable.
    floor: PurgeFloor,
    /// Held by an install while it replays, and by a snapshot build: openraft
    /// builds in a task of its own, and a build amid an install would pair
    /// the old Raft position with a ledger length the install has moved on.
    install: Arc<tokio::sync::Mutex<()>>,
}

fn read_err(e: impl std::fmt::Display) -> StorageError<u64> {
    storage_io(ErrorSubject::StateMachine, ErrorVerb::Read, e)
}

fn write_err(e: impl std::fmt::Display) -> StorageError<u64> {
    storage_io(ErrorSubject::StateMachine, ErrorVerb::Write, e)
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).expect("encoding cannot fail");
    out
}

fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, StorageError<u64>> {
    ciborium::from_reader(b).map_err(read_err)
}

impl StateMachine {
    pub fn new(
        store: Arc<Store>,
        events: UnboundedSender<Event>,
        preverified: Preverified,
        peers: PeerSlot,
    ) -> Result<Self, StorageError<u64>> {
        let mut executor = Executor::load(&store).map_err(read_err)?;
        executor.set_worker(StateWorker::spawn(store.clone()).map_err(read_err)?);
        executor.after_commit().map_err(read_err)?;
        let view = Arc::new(RwLock::new(ExecView::of(&executor)));
        let applied = match store
            .read()
            .map_err(read_err)?
            .meta_get(META_APPLIED)
            .map_err(read_err)?
        {
            Some(b) => decode(&b)?,
            None => Applied::default(),
        };
        // What is on disk at start is durable, an interrupted install's
        // marker included.
        let installing = match store
            .read()
            .map_err(read_err)?
            .meta_get(META_INSTALLING)
            .map_err(read_err)?
        {
            Some(b) => decode::<SnapshotInfo>(&b)?.meta.last_log_id,
            None => None,
        };
        let floor = PurgeFloor::new(index_of(applied.last).max(index_of(installing)));
        Ok(StateMachine {
            store,
            floor,
            executor,
            view,
            applied,
            events,
            preverified,
            last_durable: Instant::now(),
            peers,
            install: Arc::default(),
        })
    }

    /// Brings the ledger and state up to the snapshot `info` by fetching the
    /// missing ledger records from peers and re-executing them, then adopts
    /// the snapshot's Raft position.
    async fn catch_up(&mut self, info: &SnapshotInfo) -> Result<(), StorageError<u64>> {
        let install = self.install.clone();
        let _installing = install.lock().await;
        let t0 = Instant::now();
        let start = self
            .store
            .read()
            .and_then(|r| r.ledger_len())
            .map_err(read_err)?;
        if start > info.ledger_len {
            return Err(write_err(format!(
                "this node's ledger ({start} records) is longer than the snapshot's ({}); its history differs from the network's",
                info.ledger_len
            )));
        }
        let addrs = peer_addrs(info);
        let mut have = start;
        let mut last = None;
        let mut logged = Instant::now();
        while have < info.ledger_len {
            let Some(mut records) = self
                .fetch(&addrs, have, info.ledger_len, FETCH_PATIENCE)
                .await
            else {
                // Some peer had the last record when the install began: the
                // next start resumes it.
                return Err(write_err(format!(
                    "no peer sent ledger records from {have} for {} s; the snapshot install resumes at the next start",
                    FETCH_PATIENCE.as_secs()
                )));
            };
            records.truncate((info.ledger_len - have) as usize);
            let n = records.len() as u64;
            last = blocking(|| self.replay(have, &records))?.or(last);
            have += n;
            if logged.elapsed() >= Duration::from_secs(10) {
                tracing::info!(
                    have,
                    of = info.ledger_len,
                    "catching up: ledger records replayed"
                );
                logged = Instant::now();
            }
        }
        if info.ledger_time > self.executor.ledger_time() {
            // What an idle clock tick did after the last record (expiries),
            // so that this node's ledger time is the network's.
            blocking(|| self.advance_to(info.ledger_time))?;
        }
        if info.ledger_len > 0 {
            let root = self.store.tree_root_at(info.ledger_len).map_err(read_err)?;
            if root != info.ledger_root {
                return Err(write_err(format!(
                    "after replaying the peers' records the ledger root at {} is {}, the snapshot says {}; this node's history differs from the network's",
                    info.ledger_len,
                    hex::encode(root),
                    hex::encode(info.ledger_root)
                )));
            }
        }
        self.applied = Applied {
            last: info.meta.last_log_id,
            membership: info.meta.last_membership.clone(),
        };
        blocking(|| {
            let txn = self.store.begin().map_err(write_err)?;
            {
                let mut batch = txn.batch().map_err(write_err)?;
                batch
                    .meta_put(META_APPLIED, &encode(&self.applied))
                    .map_err(write_err)?;
                batch
                    .meta_put(META_SNAPSHOT, &encode(info))
                    .map_err(write_err)?;
                batch.meta_remove(META_INSTALLING).map_err(write_err)?;
            }
            txn.commit(true).map_err(write_err)
        })?;
        self.last_durable = Instant::now();
        *self.view.write().expect("view lock") = ExecView::of(&self.executor);
        if let Some(o) = last {
            let _ = self.events.send(Event::Applied(vec![o]));
        }
        let _ = self.events.send(Event::CaughtUp);
        tracing::info!(
            records = info.ledger_len - start,
            ledger_len = info.ledger_len,
            elapsed_ms = t0.elapsed().as_millis() as u64,
            "installed a snapshot: caught up by replaying the peers' ledger records"
        );
        Ok(())
    }

    /// Ledger records `from..` (up to `to`) from the first peer that has
    /// some, starting at a random one (a peer whose records fail the
    /// replay's checks stops the install, and a restart should not ask it
    /// first again); retries every second until one answers, for at most
    /// `patience`, each call included.
    async fn fetch(
        &self,
        addrs: &[String],
        from: u64,
        to: u64,
        patience: Duration,
    ) -> Option<Vec<serde_bytes::ByteBuf>> {
        let req = LedgerRequest { from, to };
        let first = usize::from(comity_core::crypto::random_nonce()[0]);
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline {
            if let Some(peers) = self.peers.get() {
                let n = addrs.len();
                for addr in (0..n).map(|k| &addrs[(first + k) % n]) {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    match peers
                        // Any trusted node may serve records: replay checks them.
                        .call_bounded::<_, Vec<serde_bytes::ByteBuf>>(
                            None,
                            addr,
                            path::LEDGER,
                            &req,
                            left.min(Duration::from_secs(30)),
                            LEDGER_PAGE,
                        )
                        .await
                    {
                        Ok(r) if !r.is_empty() => return Some(r),
                        Ok(_) => {}
                        Err(e) => tracing::debug!(%addr, error = %e, "ledger records not fetched"),
                    }
                }
            }
            tracing::warn!(
                from,
                to,
                "no peer sent the ledger records this node lacks; retrying"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        None
    }

    /// Moves ledger time to `time` as an entry without transactions would.
    fn advance_to(&mut self, time: u64) -> Result<(), StorageError<u64>> {
        let txn = self.store.begin().map_err(write_err)?;
        {
            let mut batch = txn.batch().map_err(write_err)?;
            let tick = Command::Batch {
                time,
                txs: Vec::new(),
            };
            self.executor
                .apply(&mut batch, &tick, &|_| None)
                .map_err(write_err)?;
        }
        txn.commit(false).map_err(write_err)?;
        self.executor.after_commit().map_err(write_err)
    }

    /// Re-executes fetched ledger records starting at `first` in one store
    /// commit, checking each produced leaf against the record first: a bad
    /// record fails the install before anything is committed (the node then
    /// stops, and its next start resumes from the last good record). Emits
    /// no events: the network acted on these entries long ago.
    fn replay(
        &mut self,
        first: u64,
        records: &[serde_bytes::ByteBuf],
    ) -> Result<Option<TxOutcome>, StorageError<u64>> {
        let bad = |e: comity_apps::audit::Discrepancy| {
            write_err(format!("a peer's ledger record does not replay: {e}"))
        };
        let txn = self.store.begin().map_err(write_err)?;
        let mut done = Vec::with_capacity(records.len());
        {
            let mut batch = txn.batch().map_err(write_err)?;
            for (index, raw) in (first..).zip(records) {
                let (rec, leaf, cmd) = replay_command(index, raw).map_err(bad)?;
                let out = self
                    .executor
                    .apply(&mut batch, &cmd, &|_| None)
                    .map_err(write_err)?;
                done.push((index, rec, leaf, out));
            }
        }
        for (index, rec, leaf, out) in &done {
            check_replayed(&self.store, *index, rec, leaf, out).map_err(bad)?;
        }
        txn.commit(false).map_err(write_err)?;
        self.executor.after_commit().map_err(write_err)?;
        Ok(done.last().and_then(|(_, _, _, out)| {
            out.txs.last().map(|r| TxOutcome {
                id: r.id.to_vec(),
                index: r.index,
                outcome: r.outcome.code().to_string(),
                time: r.time,
            })
        }))
    }

    fn apply_entries(
        &mut self,
        entries: Vec<Entry>,
    ) -> Result<Vec<Vec<TxOutcome>>, StorageError<u64>> {
        let t0 = Instant::now();
        let mut replies = Vec::new();
        let mut events = Vec::new();
        let txn = self.store.begin().map_err(write_err)?;
        {
            let mut batch = txn.batch().map_err(write_err)?;
            let ex = &mut self.executor;
            for entry in entries {
                self.applied.last = Some(entry.log_id);
                let out = match entry.payload {
                    EntryPayload::Blank => Output::default(),
                    EntryPayload::Membership(m) => {
                        self.applied.membership = StoredMembership::new(Some(entry.log_id), m);
                        Output::default()
                    }
                    EntryPayload::Normal(cmd) => ex.apply(&mut batch, &cmd, &*self.preverified).map_err(|e| {
                        tracing::error!(error = %e, index = entry.log_id.index, "apply failed; the node stops");
                        storage_io(ErrorSubject::Apply(entry.log_id), ErrorVerb::Write, e)
                    })?,
                };
                let outcomes: Vec<TxOutcome> = out
                    .txs
                    .iter()
                    .map(|r| TxOutcome {
                        id: r.id.to_vec(),
                        index: r.index,
                        outcome: r.outcome.code().to_string(),
                        time: r.time,
                    })
                    .collect();
                if !outcomes.is_empty() {
                    events.push(Event::Applied(outcomes.clone()));
                }
                events.extend(out.checkpoints.into_iter().map(Event::Checkpoint));
                events.extend(
                    out.node_set_changes
                        .into_iter()
                        .map(|(change, before)| Event::NodeSetChange { change, before }),
                );
                events.extend(out.divergences.into_iter().map(Event::Divergence));
                replies.push(outcomes);
            }
            batch
                .meta_put(META_APPLIED, &encode(&self.applied))
                .map_err(write_err)?;
        }
        let durable = self.last_durable.elapsed() >= DURABLE_EVERY;
        txn.commit_as(if durable {
            Commit::DurableSoon
        } else {
            Commit::Visible
        })
        .map_err(write_err)?;
        self.executor.after_commit().map_err(write_err)?;
        *self.view.write().expect("view lock") = ExecView::of(&self.executor);
        metrics::histogram!("comity_apply_seconds").record(t0.elapsed().as_secs_f64());
        metrics::histogram!("comity_apply_entries").record(replies.len() as f64);
        if durable {
            self.last_durable = Instant::now();
        }
        for e in events {
            let _ = self.events.send(e);
        }
        Ok(replies)
    }

    /// The published executor view, for the node.
    pub fn view(&self) -> SharedView {
        self.view.clone()
    }

    /// For the log store's purges: see [`PurgeFloor`].
    pub fn purge_floor(&self) -> PurgeFloor {
        self.floor.clone()
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<u64, BasicNode>), StorageError<u64>> {
        let installing = self
            .store
            .read()
            .and_then(|r| r.meta_get(META_INSTALLING))
            .map_err(read_err)?;
        if let Some(b) = installing {
            // A crash interrupted an install: finish it before anything else is applied.
            let info: SnapshotInfo = decode(&b)?;
            tracing::warn!(
                ledger_len = info.ledger_len,
                "resuming a snapshot install that a restart interrupted"
            );
            self.catch_up(&info).await?;
        }
        Ok((self.applied.last, self.applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<TxOutcome>>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        blocking(|| self.apply_entries(entries))
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            store: self.store.clone(),
            floor: self.floor.clone(),
            install: self.install.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let mut info: SnapshotInfo = decode(snapshot.get_ref())?;
        info.meta = meta.clone();
        // Checked before anything is recorded: a recorded install is resumed
        // at every start. A snapshot shorter than this ledger is not one of
        // its futures, and one of a ledger no peer has would have this node
        // fetch for ever; some peer must have its last record (ledgers are
        // prefixes of one another). Both are a faulty leader's.
        let have = self
            .store
            .read()
            .and_then(|r| r.ledger_len())
            .map_err(read_err)?;
        if info.ledger_len < have {
            return Err(write_err(format!(
                "refusing a snapshot of {} ledger records: this node already has {have}",
                info.ledger_len
            )));
        }
        if info.ledger_len > have
            && self
                .fetch(
                    &peer_addrs(&info),
                    info.ledger_len - 1,
                    info.ledger_len,
                    PRECHECK_PATIENCE,
                )
                .await
                .is_none()
        {
            return Err(write_err(format!(
                "refusing a snapshot of {} ledger records: for {} s no peer had its last record",
                info.ledger_len,
                PRECHECK_PATIENCE.as_secs()
            )));
        }
        // Recorded durably first, so that a crash during the replay resumes it.
        blocking(|| {
            let txn = self.store.begin().map_err(write_err)?;
            txn.batch()
                .map_err(write_err)?
                .meta_put(META_INSTALLING, &encode(&info))
                .map_err(write_err)?;
            txn.commit(true).map_err(write_err)
        })?;
        self.floor.raise(index_of(meta.last_log_id));
        self.catch_up(&info).await
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        let r = self.store.read().map_err(read_err)?;
        match r.meta_get(META_SNAPSHOT).map_err(read_err)? {
            Some(b) => {
                let info: SnapshotInfo = decode(&b)?;
                Ok(Some(Snapshot {
                    meta: info.meta,
                    snapshot: Box::new(Cursor::new(b)),
                }))
            }
            None => Ok(None),
        }
    }
}

/// Whether a snapshot install is under way (or one a crash interrupted is
/// to be resumed): the ledger then holds records fetched from peers that
/// are checked against the snapshot only at its end.
pub fn installing(store: &Store) -> Result<bool, comity_store::StoreError> {
    Ok(store.read()?.meta_get(META_INSTALLING)?.is_some())
}

/// Detaches a store from the Raft log it was applied from, so that a new
/// Raft group (disaster recovery) starts from the store's ledger and state
/// as they are, with an empty log.
pub fn forget_raft_log(store: &Store) -> Result<(), StorageError<u64>> {
    let txn = store.begin().map_err(write_err)?;
    {
        let mut batch = txn.batch().map_err(write_err)?;
        batch
            .meta_put(META_APPLIED, &encode(&Applied::default()))
            .map_err(write_err)?;
        batch.meta_remove(META_SNAPSHOT).map_err(write_err)?;
        // An install the old group interrupted would otherwise be resumed
        // from the old group's peers, which are gone; the store keeps the
        // prefix it had replayed, which the recovery decision names.
        batch.meta_remove(META_INSTALLING).map_err(write_err)?;
    }
    txn.commit(true).map_err(write_err)
}

/// A snapshot is a durable point of the store: everything applied so far is
/// fsynced, after which Raft may purge the log below it.
pub struct SnapshotBuilder {
    store: Arc<Store>,
    floor: PurgeFloor,
    install: Arc<tokio::sync::Mutex<()>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let _no_install = self.install.lock().await;
        let store = self.store.clone();
        let info =
            tokio::task::spawn_blocking(move || -> Result<SnapshotInfo, StorageError<u64>> {
                let txn = store.begin().map_err(write_err)?;
                let mut batch = txn.batch().map_err(write_err)?;
                let applied: Applied = match batch.meta_get(META_APPLIED).map_err(read_err)? {
                    Some(b) => decode(&b)?,
                    None => Applied::default(),
                };
                let info = SnapshotInfo {
                    meta: SnapshotMeta {
                        last_log_id: applied.last,
                        last_membership: applied.membership,
                        snapshot_id: format!("durable-{}", applied.last.map_or(0, |l| l.index)),
                    },
                    ledger_len: batch.ledger_len(),
                    ledger_root: batch.tx_root(),
                    ledger_time: comity_apps::executor::saved_ledger_time(&batch)
                        .map_err(read_err)?,
                };
                batch
                    .meta_put(META_SNAPSHOT, &encode(&info))
                    .map_err(write_err)?;
                drop(batch);
                txn.commit(true).map_err(write_err)?;
                Ok(info)
            })
            .await
            .map_err(write_err)??;
        self.floor.raise(index_of(info.meta.last_log_id));
        let data = encode(&info);
        Ok(Snapshot {
            meta: info.meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

fn index_of(id: Option<LogId>) -> u64 {
    id.map_or(0, |l| l.index)
}

/// Runs synchronous storage work, letting the runtime move its other tasks elsewhere.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use comity_apps::genesis::node_info;
    use comity_apps::{Genesis, IdentitySpec};
    use comity_core::crypto::{Alg, SigningKey};
    use openraft::CommittedLeaderId;
    use serde_bytes::ByteBuf;

    const T0: u64 = 1_763_000_000_000;

    fn machine(dir: &std::path::Path) -> StateMachine {
        let (store, _) = Store::open(dir, 1 << 20).unwrap();
        let (events, _) = tokio::sync::mpsc::unbounded_channel();
        StateMachine::new(
            Arc::new(store),
            events,
            Arc::new(|_: &Hash| None),
            Arc::new(OnceLock::new()),
        )
        .unwrap()
    }

    fn entry(index: u64, cmd: Command) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(cmd),
        }
    }

    async fn snapshot_of(sm: &mut StateMachine) -> Snapshot<TypeConfig> {
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap()
    }

    fn ledger_time(sm: &StateMachine) -> u64 {
        sm.view().read().unwrap().ledger_time
    }

    /// Ledger time can move past the last record (a clock tick for a
    /// deadline): a node that catches up by snapshot takes the network's
    /// time, not its last record's, so it runs the same expiries.
    #[tokio::test]
    async fn a_snapshot_brings_ledger_time_past_the_last_record() {
        let member = SigningKey::generate(Alg::EdDsa);
        let node = SigningKey::generate(Alg::EdDsa);
        let g = Genesis::new(
            "t",
            T0,
            vec![IdentitySpec::new(member.public().to_spki_der(), "m")],
            vec![],
            NodeSet(vec![node_info(
                &node.public(),
                member.public().fingerprint(),
            )]),
        );
        let genesis = entry(
            1,
            Command::Genesis {
                doc: ByteBuf::from(g.to_cbor()),
            },
        );
        let later = T0 + 60_000;
        let tick = entry(
            2,
            Command::Batch {
                time: later,
                txs: vec![],
            },
        );
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut ahead = machine(da.path());
        ahead.apply([genesis.clone(), tick]).await.unwrap();
        assert_eq!(ledger_time(&ahead), later);
        let snap = snapshot_of(&mut ahead).await;

        // Same records, without the tick.
        let mut behind = machine(db.path());
        behind.apply([genesis]).await.unwrap();
        assert_eq!(
            behind.store.read().unwrap().ledger_len().unwrap(),
            ahead.store.read().unwrap().ledger_len().unwrap(),
            "the tick wrote no record"
        );
        assert!(ledger_time(&behind) < later);
        behind
            .install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        assert_eq!(ledger_time(&behind), later);
        drop(behind);
        assert_eq!(ledger_time(&machine(db.path())), later, "after a restart");

        // A snapshot shorter than the ledger (a faulty leader's) is refused
        // and not recorded, so a restart does not try it again.
        let dc = tempfile::tempdir().unwrap();
        let short = snapshot_of(&mut machine(dc.path())).await;
        let mut behind = machine(db.path());
        let e = behind
            .install_snapshot(&short.meta, short.snapshot)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("refusing a snapshot"), "{e}");
        let r = behind.store.read().unwrap();
        assert_eq!(r.meta_get(META_INSTALLING).unwrap(), None);
    }

    #[test]
    fn a_recovered_store_does_not_resume_the_old_groups_install() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), 1 << 20).unwrap();
        let txn = store.begin().unwrap();
        txn.batch()
            .unwrap()
            .meta_put(META_INSTALLING, b"an interrupted install")
            .unwrap();
        txn.commit(true).unwrap();
        forget_raft_log(&store).unwrap();
        let r = store.read().unwrap();
        assert_eq!(r.meta_get(META_INSTALLING).unwrap(), None);
        assert_eq!(r.meta_get(META_SNAPSHOT).unwrap(), None);
    }
}
