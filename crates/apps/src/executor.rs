//! The executor: turns ordered commands into leaves, state and checkpoints.

use crate::command::Command;
use crate::genesis::{Config, Genesis};
use crate::node::Divergence;
use crate::registry::{self, Identity, Role, Status};
use crate::replay_filter::{RecentIds, SpentNonces};
use crate::state_worker::StateWorker;
use crate::{codes, gov, keys, kv, node, notary, Reject};
use comity_core::batch_verify::Ed25519Batch;
use comity_core::cbor::{self, MapView};
use comity_core::checkpoint::Checkpoint;
use comity_core::crypto::{sha256, PublicKey};
use comity_core::entry::{
    checkpoint_marker_body, EntryKind, Leaf, Outcome, Record, PROTOCOL_VERSION,
};
use comity_core::network::NodeSet;
use comity_core::receipt::NodeSetChange;
use comity_core::tx::Tx;
use comity_core::Hash;
use comity_store::state::StateTreeUpdate;
use comity_store::{Store, StoreError, WriteBatch};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A transaction this node parsed and verified at ingress, with the key it
/// verified against, so apply need not do either again.
pub struct Verified {
    pub tx: Tx,
    pub key: Vec<u8>,
}

/// What happened to one submitted transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxResult {
    pub id: Hash,
    pub index: u64,
    pub outcome: Outcome,
    pub time: u64,
}

/// Everything an application sees while executing one transaction.
pub struct Ctx<'a, 'b> {
    pub batch: &'a mut WriteBatch<'b>,
    pub net: Hash,
    pub signer: Hash,
    pub role: Role,
    /// The transaction's id (the hash of its bytes).
    pub tx: Hash,
    /// Ledger index this transaction's leaf will have.
    pub index: u64,
    pub time: u64,
    pub divergence: Option<Divergence>,
}

/// Results of one apply step.
#[derive(Default)]
pub struct Output {
    pub txs: Vec<TxResult>,
    /// Checkpoints completed in this step, which this node should now sign.
    pub checkpoints: Vec<Checkpoint>,
    /// Each node's signed checkpoint that differs from ours, in order.
    pub divergences: Vec<Divergence>,
    /// Node-set changes applied in this step, with the set before each: its
    /// nodes should endorse the change.
    pub node_set_changes: Vec<(NodeSetChange, NodeSet)>,
}

/// Executor state that is not application state; persisted in aux with each batch.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ExecState {
    net: Option<Hash>,
    time: u64,
    seq: u64,
    /// Leaves since the last checkpoint that need one (node signatures do not).
    uncovered: u64,
    /// The largest creation time of any recorded transaction (`None` in
    /// stores written before it was kept), which bounds what `RecentIds`
    /// may leave to the database.
    max_created: Option<u64>,
    /// Spends created before this time are pruned, and a transaction
    /// created before it is outside the window. The highest pruning
    /// horizon so far: raising the window does not lower it, so no node
    /// accepts a spend below what another node's filter took as pruned.
    nonce_horizon: u64,
}

impl Default for ExecState {
    fn default() -> Self {
        ExecState {
            net: None,
            time: 0,
            seq: 0,
            uncovered: 0,
            max_created: Some(0),
            nonce_horizon: 0,
        }
    }
}

pub struct Executor {
    st: ExecState,
    config: Config,
    /// Whether users may transact (governance opens and closes the network).
    open: bool,
    /// (from ledger index, protocol version), set by governance.
    protocol: Vec<(u64, u64)>,
    /// The trusted node set (the checkpoint signers), shared with the node's peer network.
    nodes: Arc<NodeSet>,
    /// Checkpoints whose state root is not computed yet, by sequence number.
    pending: BTreeMap<u64, PendingCheckpoint>,
    worker: Option<StateWorker>,
    /// The version the worker is computing.
    in_flight: Option<u64>,
    /// The ids recorded and nonces spent since the node started, shared
    /// with admission (see `replay_filter`).
    recent: Arc<RecentIds>,
    spent: Arc<SpentNonces>,
    /// The earliest proposal deadline as of the last expiry scan (`Some(None)`:
    /// none), or `None` once governance may have changed it: spares each
    /// batch a range scan.
    next_expiry: Option<Option<u64>>,
    /// Checks the signatures of transactions that ingress did not check.
    ed25519: Ed25519Batch,
}

/// A checkpoint marker applied, waiting for its state root.
#[derive(Clone, Debug)]
struct PendingCheckpoint {
    size: u64,
    tx_root: Hash,
    time: u64,
}

impl PendingCheckpoint {
    fn to_cbor(&self) -> Vec<u8> {
        cbor::to_vec(cbor::map([
            ("size", cbor::uint(self.size)),
            ("tx_root", cbor::bytes(self.tx_root)),
            ("time", cbor::uint(self.time)),
        ]))
        .expect("valid")
    }

    fn from_cbor(b: &[u8]) -> Result<Self, StoreError> {
        let bad = |e: cbor::CborError| StoreError::StateTree(format!("pending checkpoint: {e}"));
        let v = cbor::from_slice(b).map_err(bad)?;
        let m = MapView::new(&v).map_err(bad)?;
        Ok(PendingCheckpoint {
            size: m.u64("size").map_err(bad)?,
            tx_root: m.hash("tx_root").map_err(bad)?,
            time: m.u64("time").map_err(bad)?,
        })
    }
}

/// The ledger time of the last applied entry as saved in `r`. Entries that
/// leave no record (an idle clock tick, a batch of duplicates) move it too,
/// so a snapshot carries it for the node that catches up by replaying
/// records only.
pub fn saved_ledger_time(r: &impl crate::registry::AuxRead) -> Result<u64, StoreError> {
    Ok(saved_state(r)?.time)
}

/// The sequence number of the latest checkpoint marker applied (0 before any).
pub fn saved_checkpoint_seq(r: &impl crate::registry::AuxRead) -> Result<u64, StoreError> {
    Ok(saved_state(r)?.seq)
}

fn saved_state(r: &impl crate::registry::AuxRead) -> Result<ExecState, StoreError> {
    match r.aux_get_one(keys::EXEC)? {
        Some(b) => decode_state(&b),
        None => Ok(ExecState::default()),
    }
}

impl Executor {
    /// Loads executor state from the store (empty before genesis).
    pub fn load(store: &Store) -> Result<Self, StoreError> {
        let r = store.read()?;
        let st = saved_state(&r)?;
        let config = match r.get(keys::CONFIG)? {
            Some(_) => gov::state::config(&r)?,
            None => Config::default(),
        };
        let open = gov::state::is_open(&r)?;
        let protocol = gov::state::protocol_schedule(&r)?;
        let nodes = match r.get(keys::NODES)? {
            Some(_) => gov::state::node_set(&r)?,
            None => NodeSet(Vec::new()),
        };
        let mut pending = BTreeMap::new();
        for (k, v) in r.aux_range(
            keys::PENDING_CHECKPOINT_PREFIX,
            &[keys::PENDING_CHECKPOINT_PREFIX, &[0xff; 9]].concat(),
            usize::MAX,
        )? {
            let seq = u64::from_be_bytes(
                k[keys::PENDING_CHECKPOINT_PREFIX.len()..]
                    .try_into()
                    .map_err(|_| StoreError::StateTree("bad pending checkpoint key".into()))?,
            );
            pending.insert(seq, PendingCheckpoint::from_cbor(&v)?);
        }
        if pending.keys().copied().collect::<Vec<_>>() != store.pending_state_versions() {
            return Err(StoreError::StateTree(
                "pending checkpoints and saved state-tree jobs disagree".into(),
            ));
        }
        let window = config.tx_window_ms;
        Ok(Executor {
            config,
            open,
            protocol,
            nodes: Arc::new(nodes),
            pending,
            worker: None,
            in_flight: None,
            recent: Arc::new(RecentIds::new(st.max_created)),
            spent: Arc::new(SpentNonces::new(st.max_created, window)),
            next_expiry: None,
            ed25519: Ed25519Batch::new(),
            st,
        })
    }

    /// Moves state-tree hashing to a background thread (nodes do; replay need not).
    pub fn set_worker(&mut self, worker: StateWorker) {
        self.worker = Some(worker);
    }

    /// Checkpoints applied whose state root is still being computed.
    pub fn pending_checkpoints(&self) -> usize {
        self.pending.len()
    }

    /// Call after each committed apply step: hands the next state-tree job to
    /// the worker once the previous version is committed and visible to it.
    pub fn after_commit(&mut self) -> Result<(), StoreError> {
        if let (Some(w), None, Some(&next)) =
            (&self.worker, self.in_flight, self.pending.keys().next())
        {
            w.dispatch(next)?;
            self.in_flight = Some(next);
        }
        Ok(())
    }

    pub fn network_id(&self) -> Option<Hash> {
        self.st.net
    }
    pub fn ledger_time(&self) -> u64 {
        self.st.time
    }
    pub fn config(&self) -> &Config {
        &self.config
    }
    /// Whether users may submit application transactions.
    /// The trusted node set as of the last apply.
    pub fn nodes(&self) -> Arc<NodeSet> {
        self.nodes.clone()
    }

    /// Which transaction ids may already be recorded (see `replay_filter`).
    pub fn recent_ids(&self) -> Arc<RecentIds> {
        self.recent.clone()
    }

    /// Which nonces may be spent (see `replay_filter`).
    pub fn spent_nonces(&self) -> Arc<SpentNonces> {
        self.spent.clone()
    }

    pub fn is_open(&self) -> bool {
        self.open
    }
    pub fn checkpoint_seq(&self) -> u64 {
        self.st.seq
    }
    /// Leaves not yet covered by a checkpoint (excluding node signatures).
    pub fn uncovered(&self) -> u64 {
        self.st.uncovered
    }

    /// Applies one command. `preverified(id)` hands back a transaction this
    /// node already parsed and verified at ingress; the outcome is the same either way.
    pub fn apply(
        &mut self,
        batch: &mut WriteBatch<'_>,
        cmd: &Command,
        preverified: &dyn Fn(&Hash) -> Option<Verified>,
    ) -> Result<Output, StoreError> {
        let mut out = Output::default();
        self.poll_state_tree(batch, &mut out)?;
        match cmd {
            Command::Genesis { doc } => self.genesis(batch, doc)?,
            Command::Batch { time, txs } => {
                self.advance_time(batch, *time)?;
                // Each transaction is hashed once here, not at every step.
                let txs: Vec<(Hash, &[u8])> = txs.iter().map(|b| (sha256(b), &b[..])).collect();
                let mut verified = self.verify_batch(batch, &txs, preverified)?;
                let verified = std::cell::RefCell::new(&mut verified);
                let take = |id: &Hash| verified.borrow_mut().remove(id);
                for &(id, bytes) in &txs {
                    if let Some(r) = self.transaction(batch, id, bytes, &take, &mut out)? {
                        out.txs.push(r);
                    }
                }
            }
            Command::Checkpoint { time } => {
                self.advance_time(batch, *time)?;
                self.complete_checkpoints(batch, &mut out)?;
                self.checkpoint(batch)?;
                if self.worker.is_none() {
                    self.complete_checkpoints(batch, &mut out)?;
                }
            }
            Command::Flush => self.complete_checkpoints(batch, &mut out)?,
            Command::Recover { time, decision } => {
                self.advance_time(batch, *time)?;
                // The decision names a checkpoint: its body must be one
                // this ledger computed, so no computation may be pending.
                self.complete_checkpoints(batch, &mut out)?;
                out.txs.push(self.recover(batch, decision)?);
            }
        }
        batch.aux_put(keys::EXEC, &encode_state(&self.st))?;
        Ok(out)
    }

    fn genesis(&mut self, batch: &mut WriteBatch<'_>, doc: &[u8]) -> Result<(), StoreError> {
        if self.st.net.is_some() || batch.ledger_len() != 0 {
            tracing::warn!("ignoring a second genesis entry");
            return Ok(());
        }
        let g = Genesis::from_cbor(doc)
            .map_err(|e| StoreError::StateTree(format!("invalid genesis document: {e}")))?;
        let net = sha256(doc);
        let mut o = gov::overlay::Overlay::new(batch);
        for (role, status, list) in [
            (Role::Member, Status::Active, &g.members),
            (Role::User, Status::Active, &g.users),
        ] {
            for spec in list {
                let mut ident = Identity::new(role, status, &spec.name, spec.key.clone(), 0);
                ident.data = spec.data.clone();
                gov::state::put_identity(&mut o, &ident, true)?;
            }
        }
        for (n, meta) in g.nodes.0.iter().zip(&g.node_meta) {
            let mut ident =
                Identity::new(Role::Node, Status::Trusted, &meta.name, n.key.clone(), 0);
            ident.data = meta.data.clone();
            ident.operator = Some(n.member);
            gov::state::put_identity(&mut o, &ident, true)?;
        }
        o.put(
            keys::NODES,
            &cbor::to_vec(g.nodes.to_value()).expect("valid"),
        );
        o.put(
            keys::CONFIG,
            &cbor::to_vec(g.config.to_value()).expect("valid"),
        );
        o.put(&keys::constitution(1), &gov::state::encode(&g.constitution));
        o.put(keys::GOV_CONSTITUTION_VERSION, &1u64.to_be_bytes());
        o.put(keys::GOV_OPEN, &[u8::from(g.open)]);
        o.put(
            keys::NETWORK,
            &cbor::to_vec(cbor::map([
                ("id", cbor::bytes(net)),
                ("name", cbor::text(&g.name)),
            ]))
            .expect("valid"),
        );
        let writes = o.into_writes();
        gov::overlay::commit(batch, writes)?;
        crate::recovery::refresh_member_keys(batch)?;
        self.open = g.open;
        self.config = g.config.clone();
        self.fit_nonce_filter();
        self.nodes = Arc::new(g.nodes.clone());
        crate::node_set::record(
            batch,
            &NodeSetChange {
                network_id: net,
                size: 0,
                nodes: g.nodes.clone(),
            },
        )?;
        self.st.net = Some(net);
        self.st.time = self.st.time.max(g.time);
        let leaf = Leaf {
            version: self.version_at(0)?,
            index: 0,
            time: self.st.time,
            kind: EntryKind::Genesis,
            digest: net,
            outcome: Outcome::Applied,
            signer: None,
        };
        batch.append(&Record {
            leaf: leaf.to_cbor(),
            body: doc.to_vec(),
        })?;
        batch.update_state_root(0)?;
        self.st.uncovered += 1;
        Ok(())
    }

    fn transaction(
        &mut self,
        batch: &mut WriteBatch<'_>,
        id: Hash,
        bytes: &[u8],
        preverified: &dyn Fn(&Hash) -> Option<Verified>,
        out: &mut Output,
    ) -> Result<Option<TxResult>, StoreError> {
        let parsed = match preverified(&id) {
            Some(v) => Ok((v.tx, Some(v.key))),
            None => Tx::parse_with_id(bytes, id).map(|tx| (tx, None)),
        };
        let created = parsed.as_ref().ok().map(|(tx, _)| tx.payload.created);
        if self.recent.may_contain(&id, created) && batch.aux_get(&keys::tx(&id))?.is_some() {
            return Ok(None); // identical bytes already in the ledger: idempotent
        }
        let index = batch.ledger_len();
        let time = self.st.time;
        let mut signer_leaf = None;
        let mut is_node_sig = false;
        let version = self.version_at(index)?;
        let mut settings_changed = false;
        let outcome = match self.check(batch, bytes, parsed, &mut signer_leaf)? {
            Err(r) => Outcome::Rejected(r.0.to_string()),
            Ok((tx, ident)) => {
                let role = ident.role;
                // Join requests are client traffic, which checkpoints cover.
                is_node_sig = tx.payload.app == "node" && tx.payload.op != "join";
                if let Some(seq) =
                    node::signed_seq(&tx.payload).filter(|_| !self.pending.is_empty())
                {
                    // A checkpoint signature is checked against our own body of it.
                    self.complete_checkpoints_upto(batch, out, seq)?;
                }
                let mut ctx = Ctx {
                    batch: &mut *batch,
                    net: tx.payload.net,
                    signer: tx.kid,
                    role,
                    tx: id,
                    index,
                    time,
                    divergence: None,
                };
                let (app, op, args) = (tx.payload.app.as_str(), &tx.payload.op, &tx.payload.args);
                let r = match registry::authorize(&ident, app, op, self.open) {
                    Err(r) => Err(r),
                    Ok(()) => match app {
                        "kv" => kv::execute(&mut ctx, op, args)?,
                        "node" => node::execute(&mut ctx, op, args)?,
                        "notary" => notary::execute(&mut ctx, op, args)?,
                        "gov" => {
                            settings_changed = true;
                            gov::execute(&mut ctx, op, args)?
                        }
                        _ => Err(Reject(codes::UNKNOWN_APP)),
                    },
                };
                out.divergences.extend(ctx.divergence);
                // The nonce is spent whatever the outcome, so the same intent cannot be replayed.
                let nonce_key = keys::nonce(&tx.kid, &tx.payload.nonce);
                self.spent.note(&nonce_key, tx.payload.created);
                batch.aux_put(&nonce_key, &tx.payload.created.to_be_bytes())?;
                batch.aux_put(
                    &keys::nonce_time(tx.payload.created, &tx.kid, &tx.payload.nonce),
                    &[],
                )?;
                match r {
                    Ok(()) => Outcome::Applied,
                    Err(r) => Outcome::Rejected(r.0.to_string()),
                }
            }
        };
        let leaf = Leaf {
            version,
            index,
            time,
            kind: EntryKind::Tx,
            digest: id,
            outcome: outcome.clone(),
            signer: signer_leaf,
        };
        batch.append(&Record {
            leaf: leaf.to_cbor(),
            body: bytes.to_vec(),
        })?;
        self.record_id(batch, &id, created, index)?;
        if settings_changed {
            crate::recovery::refresh_member_keys(batch)?;
            let before = self.nodes.clone();
            self.reload(batch)?;
            if self.nodes != before {
                let change = NodeSetChange {
                    network_id: self.st.net.expect("transactions follow genesis"),
                    size: index + 1,
                    nodes: (*self.nodes).clone(),
                };
                crate::node_set::record(batch, &change)?;
                out.node_set_changes.push((change, (*before).clone()));
            }
        }
        if !is_node_sig {
            self.st.uncovered += 1;
        }
        Ok(Some(TxResult {
            id,
            index,
            outcome,
            time,
        }))
    }

    /// Records a members' recovery decision and, if it holds, installs its node set.
    fn recover(
        &mut self,
        batch: &mut WriteBatch<'_>,
        decision: &[u8],
    ) -> Result<TxResult, StoreError> {
        let net = self
            .st
            .net
            .ok_or_else(|| StoreError::StateTree("a recovery needs an existing ledger".into()))?;
        let index = batch.ledger_len();
        let id = sha256(decision);
        let outcome = match crate::recovery::enact(batch, &net, decision, index)? {
            Ok(r) => {
                self.reload(batch)?;
                crate::node_set::record(
                    batch,
                    &NodeSetChange {
                        network_id: net,
                        size: r.change_size(),
                        nodes: (*self.nodes).clone(),
                    },
                )?;
                batch.aux_put(&keys::recovery(r.change_size()), decision)?;
                tracing::warn!(
                    size = index,
                    nodes = r.nodes.0.len(),
                    "RECOVERY: members restarted the network with a new node set"
                );
                Outcome::Applied
            }
            Err(code) => Outcome::Rejected(code.to_string()),
        };
        let leaf = Leaf {
            version: self.version_at(index)?,
            index,
            time: self.st.time,
            kind: EntryKind::Recovery,
            digest: id,
            outcome: outcome.clone(),
            signer: None,
        };
        batch.append(&Record {
            leaf: leaf.to_cbor(),
            body: decision.to_vec(),
        })?;
        let created = Tx::parse_with_id(decision, id)
            .ok()
            .map(|tx| tx.payload.created);
        self.record_id(batch, &id, created, index)?;
        self.st.uncovered += 1;
        Ok(TxResult {
            id,
            index,
            outcome,
            time: self.st.time,
        })
    }

    /// Signatures of a batch checked together against the signers' keys as
    /// the batch starts (apply still compares each with the key current when
    /// the transaction is reached, so a key rotated mid-batch is caught).
    /// Transactions verified at ingress are taken as they are; if the batch
    /// check fails, the rest are left to be checked one by one.
    fn verify_batch(
        &self,
        batch: &WriteBatch<'_>,
        txs: &[(Hash, &[u8])],
        preverified: &dyn Fn(&Hash) -> Option<Verified>,
    ) -> Result<HashMap<Hash, Verified>, StoreError> {
        let mut out = HashMap::with_capacity(txs.len());
        let mut pending = Vec::new();
        for &(id, bytes) in txs {
            if let Some(v) = preverified(&id) {
                out.insert(id, v);
                continue;
            }
            let Ok(tx) = Tx::parse_with_id(bytes, id) else {
                continue;
            };
            let Some(ident) = registry::get_shared(batch, &tx.kid)? else {
                continue;
            };
            let key = ident.current_key().to_vec();
            if let Ok(pk) = PublicKey::from_spki_der(&key) {
                // As in `Tx::verify`: the header's algorithm must be the key's.
                if pk.alg() == comity_core::crypto::Alg::EdDsa && tx.alg == pk.alg() {
                    pending.push((id, tx, key, pk));
                }
            }
        }
        if pending.is_empty() {
            return Ok(out);
        }
        let data: Vec<Vec<u8>> = pending
            .iter()
            .map(|(_, tx, _, _)| tx.signed_data())
            .collect();
        let items: Vec<(&PublicKey, &[u8], &[u8])> = pending
            .iter()
            .zip(&data)
            .map(|((_, tx, _, pk), d)| (pk, d.as_slice(), tx.signature()))
            .collect();
        if self.ed25519.verify(&items) {
            for (id, tx, key, _) in pending {
                out.insert(id, Verified { tx, key });
            }
        }
        Ok(out)
    }

    /// Maps a recorded transaction's id to its index. Every id of bytes that
    /// parse is noted in `recent` with their creation time, before the layer
    /// is published: that is what keeps `RecentIds`'s "no" certain.
    fn record_id(
        &mut self,
        batch: &mut WriteBatch<'_>,
        id: &Hash,
        created: Option<u64>,
        index: u64,
    ) -> Result<(), StoreError> {
        if let Some(c) = created {
            self.recent.note(id, c);
            self.st.max_created = self.st.max_created.map(|m| m.max(c));
        }
        batch.aux_put(&keys::tx(id), &index.to_be_bytes())
    }

    /// Envelope checks, in the order the HTTP API reports them; `parsed` is
    /// the transaction with the key ingress verified it against, if it did.
    fn check(
        &self,
        batch: &WriteBatch<'_>,
        bytes: &[u8],
        parsed: Result<(Tx, Option<Vec<u8>>), comity_core::tx::TxError>,
        signer_leaf: &mut Option<(Hash, Vec<u8>)>,
    ) -> Result<Result<(Tx, Arc<Identity>), Reject>, StoreError> {
        if bytes.len() as u64 > self.config.max_tx_bytes {
            return Ok(Err(Reject(codes::MALFORMED)));
        }
        let Ok((tx, verified_key)) = parsed else {
            return Ok(Err(Reject(codes::MALFORMED)));
        };
        if Some(tx.payload.net) != self.st.net {
            return Ok(Err(Reject(codes::WRONG_NETWORK)));
        }
        let Some(ident) =
            registry::get_shared(batch, &tx.kid)?.or_else(|| crate::join::unregistered_signer(&tx))
        else {
            return Ok(Err(Reject(codes::UNKNOWN_SIGNER)));
        };
        *signer_leaf = Some((tx.kid, ident.current_key().to_vec()));
        if !registry::may_submit(&ident, &tx.payload.app, &tx.payload.op) {
            return Ok(Err(Reject(codes::INACTIVE)));
        }
        // Skipping verification is only sound if ingress checked the very key valid now.
        if verified_key.as_deref() != Some(ident.current_key()) {
            let key = PublicKey::from_spki_der(ident.current_key())
                .map_err(|e| StoreError::StateTree(format!("stored key: {e}")))?;
            if tx.verify(&key).is_err() {
                return Ok(Err(Reject(codes::BAD_SIGNATURE)));
            }
        }
        if !within_window(tx.payload.created, self.st.time, self.config.tx_window_ms)
            || tx.payload.created < self.st.nonce_horizon
        {
            return Ok(Err(Reject(codes::OUTSIDE_WINDOW)));
        }
        let nonce_key = keys::nonce(&tx.kid, &tx.payload.nonce);
        if self.spent.may_contain(&nonce_key) && batch.aux_get(&nonce_key)?.is_some() {
            return Ok(Err(Reject(codes::NONCE_REUSED)));
        }
        Ok(Ok((tx, ident)))
    }

    fn checkpoint(&mut self, batch: &mut WriteBatch<'_>) -> Result<(), StoreError> {
        if self.st.net.is_none() {
            return Ok(());
        }
        self.st.seq += 1;
        let seq = self.st.seq;
        let body = checkpoint_marker_body(seq);
        let index = batch.ledger_len();
        let leaf = Leaf {
            version: self.version_at(index)?,
            index,
            time: self.st.time,
            kind: EntryKind::Checkpoint,
            digest: sha256(&body),
            outcome: Outcome::Applied,
            signer: None,
        };
        batch.append(&Record {
            leaf: leaf.to_cbor(),
            body,
        })?;
        self.prune_nonces(batch)?;
        batch.take_state_changes(seq);
        let p = PendingCheckpoint {
            size: batch.ledger_len(),
            tx_root: batch.tx_root(),
            time: self.st.time,
        };
        batch.aux_put(&keys::pending_checkpoint(seq), &p.to_cbor())?;
        self.pending.insert(seq, p);
        self.st.uncovered = 0;
        Ok(())
    }

    /// Writes the worker's result if it is ready, without waiting.
    fn poll_state_tree(
        &mut self,
        batch: &mut WriteBatch<'_>,
        out: &mut Output,
    ) -> Result<(), StoreError> {
        if self.in_flight.is_some() {
            if let Some(r) = self.worker.as_ref().and_then(StateWorker::try_result) {
                self.in_flight = None;
                self.finish_checkpoint(batch, r?, out)?;
            }
        }
        Ok(())
    }

    /// Completes every pending checkpoint now: waits for the worker's job, and
    /// computes the others in this transaction.
    fn complete_checkpoints(
        &mut self,
        batch: &mut WriteBatch<'_>,
        out: &mut Output,
    ) -> Result<(), StoreError> {
        self.complete_checkpoints_upto(batch, out, u64::MAX)
    }

    /// Completes pending checkpoints with sequence numbers up to `upto`.
    fn complete_checkpoints_upto(
        &mut self,
        batch: &mut WriteBatch<'_>,
        out: &mut Output,
        upto: u64,
    ) -> Result<(), StoreError> {
        while let Some(&seq) = self.pending.keys().next().filter(|&&s| s <= upto) {
            let update = match (self.in_flight, &self.worker) {
                (Some(v), Some(w)) if v == seq => {
                    self.in_flight = None;
                    w.result()?
                }
                _ => batch.compute_state_tree(seq)?,
            };
            self.finish_checkpoint(batch, update, out)?;
        }
        Ok(())
    }

    fn finish_checkpoint(
        &mut self,
        batch: &mut WriteBatch<'_>,
        update: StateTreeUpdate,
        out: &mut Output,
    ) -> Result<(), StoreError> {
        let seq = update.version;
        let p = self.pending.remove(&seq).ok_or_else(|| {
            StoreError::StateTree(format!("state-tree result for unknown checkpoint {seq}"))
        })?;
        let proved = crate::query::latest_final_seq(&*batch)?;
        let state_root = batch.write_state_tree(update, proved)?;
        let net = self
            .st
            .net
            .ok_or_else(|| StoreError::StateTree("checkpoint before genesis".into()))?;
        let cp = Checkpoint {
            network_id: net,
            seq,
            size: p.size,
            tx_root: p.tx_root,
            state_root,
            time: p.time,
            version: self.version_at(p.size - 1)?,
        };
        batch.aux_put(&keys::checkpoint(seq), &cp.to_cbor())?;
        batch.aux_put(&keys::checkpoint_by_size(cp.size), &seq.to_be_bytes())?;
        batch.aux_delete(&keys::pending_checkpoint(seq))?;
        out.checkpoints.push(cp);
        Ok(())
    }

    /// Moves ledger time forward (never back) and expires proposals whose time has come.
    fn advance_time(&mut self, batch: &mut WriteBatch<'_>, time: u64) -> Result<(), StoreError> {
        self.st.time = self.st.time.max(time);
        let due = match self.next_expiry {
            None => true,
            Some(next) => next.is_some_and(|t| t <= self.st.time),
        };
        if self.st.net.is_some() && due {
            self.next_expiry = Some(gov::expire(batch, self.st.time, batch.ledger_len())?);
        }
        Ok(())
    }

    /// Re-reads the settings governance may have changed.
    fn reload(&mut self, batch: &WriteBatch<'_>) -> Result<(), StoreError> {
        self.next_expiry = None;
        self.config = gov::state::config(batch)?;
        self.fit_nonce_filter();
        self.open = gov::state::is_open(batch)?;
        self.protocol = gov::state::protocol_schedule(batch)?;
        self.nodes = Arc::new(gov::state::node_set(batch)?);
        Ok(())
    }

    /// Replaces the spent-nonce filter if the window changed its group width.
    fn fit_nonce_filter(&mut self) {
        let window = self.config.tx_window_ms;
        if !self.spent.fits(window) {
            self.spent = Arc::new(SpentNonces::new(self.st.max_created, window));
        }
    }

    /// The protocol version of ledger index `index`. A version this build does
    /// not know stops apply: guessing would fork the ledger.
    fn version_at(&self, index: u64) -> Result<u64, StoreError> {
        let v = self
            .protocol
            .iter()
            .rev()
            .find(|(from, _)| *from <= index)
            .map_or(1, |(_, v)| *v);
        if v > PROTOCOL_VERSION {
            return Err(StoreError::StateTree(format!(
                "ledger entry {index} requires protocol version {v}, but this build supports up to {PROTOCOL_VERSION}; upgrade this node"
            )));
        }
        Ok(v)
    }

    /// Forgets nonces created before the window: such transactions are refused anyway.
    fn prune_nonces(&mut self, batch: &mut WriteBatch<'_>) -> Result<(), StoreError> {
        let horizon = self.st.time.saturating_sub(self.config.tx_window_ms);
        self.recent.forget_before(horizon);
        let horizon = horizon.max(self.st.nonce_horizon);
        // Deletions before the last horizon were done then.
        let from = [
            keys::NONCE_TIME_PREFIX,
            &self.st.nonce_horizon.to_be_bytes(),
        ]
        .concat();
        let to = [keys::NONCE_TIME_PREFIX, &horizon.to_be_bytes()].concat();
        loop {
            let old = batch.aux_range(&from, &to, 1024)?;
            if old.is_empty() {
                self.st.nonce_horizon = horizon;
                self.spent.pruned_before(horizon);
                return Ok(());
            }
            for (k, _) in old {
                let signer_nonce = k
                    .get(keys::NONCE_TIME_PREFIX.len() + 8..)
                    .and_then(|rest| rest.split_at_checked(32))
                    .and_then(|(s, n)| Some((<&Hash>::try_from(s).ok()?, n)));
                let Some((signer, nonce)) = signer_nonce else {
                    return Err(StoreError::StateTree(format!(
                        "damaged nonce index key {}",
                        hex::encode(&k)
                    )));
                };
                batch.aux_delete(&keys::nonce(signer, nonce))?;
                batch.aux_delete(&k)?;
            }
        }
    }
}

/// Whether `created` lies within `window` of ledger time `now`.
pub fn within_window(created: u64, now: u64, window: u64) -> bool {
    created.abs_diff(now) <= window
}

fn encode_state(s: &ExecState) -> Vec<u8> {
    cbor::to_vec(cbor::map([
        ("net", s.net.map(cbor::bytes).unwrap_or(cbor::Value::Null)),
        ("time", cbor::uint(s.time)),
        ("seq", cbor::uint(s.seq)),
        ("uncovered", cbor::uint(s.uncovered)),
        (
            "max_created",
            s.max_created.map(cbor::uint).unwrap_or(cbor::Value::Null),
        ),
        ("nonce_horizon", cbor::uint(s.nonce_horizon)),
    ]))
    .expect("valid")
}

fn decode_state(b: &[u8]) -> Result<ExecState, StoreError> {
    let bad = |e: cbor::CborError| StoreError::StateTree(format!("executor state: {e}"));
    let v = cbor::from_slice(b).map_err(bad)?;
    let m = MapView::new(&v).map_err(bad)?;
    Ok(ExecState {
        net: m.hash("net").ok(),
        time: m.u64("time").map_err(bad)?,
        seq: m.u64("seq").map_err(bad)?,
        uncovered: m.u64("uncovered").map_err(bad)?,
        max_created: m.u64("max_created").ok(),
        // Stores written before it was kept: pruning starts over from zero.
        nonce_horizon: m.u64("nonce_horizon").unwrap_or(0),
    })
}
