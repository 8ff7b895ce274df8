//! Write-behind for the state database.
//!
//! An apply step's writes become a [`Layer`]: visible to every reader the
//! moment the step commits, and written to the database later, by a
//! background thread, together with the layers that followed it. Apply thus
//! never waits for the database, and many steps share one write batch (see
//! docs/architecture.md, "Write-behind").
//!
//! A reader sees the layers not yet written on top of a database snapshot.
//! Both are taken under one lock, so the snapshot never lacks a layer that
//! the list lacks too: the writer removes layers from the list only after
//! the database has them, and a layer in both places holds the same values.

use crate::key_filter::{FilterHash, KeyFilter};
use fjall::{Keyspace, Readable, Snapshot};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

/// Keyspace names, in [`Table`] order, then the meta keyspace.
pub(crate) const KEYSPACES: [&str; 6] = [
    "state",
    "aux",
    "jmt_nodes",
    crate::value_history::KEYSPACE,
    "jmt_stale",
    "meta",
];

/// Index of the meta keyspace (string keys: ledger length, root, executor meta).
pub(crate) const META: usize = 5;

/// The keyspaces of the state database, in [`KEYSPACES`] order.
pub(crate) type Keyspaces = Arc<[Keyspace; 6]>;

/// A byte-keyed table of the state database.
#[derive(Clone, Copy)]
pub(crate) enum Table {
    /// Application state committed to by the state root.
    State = 0,
    /// Derived indexes (tx ids, nonces, histories, checkpoints): rebuilt by replay, not in the root.
    Aux = 1,
    /// State-tree nodes.
    JmtNodes = 2,
    /// (key hash ‖ !version big-endian) → 0x00 (deleted) or 0x01 ‖ value
    /// (see `value_history`).
    JmtValues = 3,
    /// (stale-since version big-endian ‖ borsh node key) → (): replaced nodes, for pruning.
    JmtStale = 4,
}

/// Changes to one table: a value, or `None` for a deletion.
pub(crate) type Changes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// The writes of one apply step (or of several, once merged for writing).
#[derive(Default)]
pub(crate) struct Layer {
    pub tables: [Changes; 5],
    pub meta: BTreeMap<String, Option<Vec<u8>>>,
    /// This step asked for a durable point: it is written with an fsync.
    pub durable: bool,
    /// The meta holds the unfolded state changes as of this step, so the
    /// database may be left (by a crash) just after it; see `state`.
    pub resumable: bool,
    /// Approximate memory held, set when the layer is sealed.
    pub size: usize,
    /// The state-tree version whose nodes this step wrote, if any.
    pub state_version: Option<u64>,
    /// The keys of `tables`, set when the layer is sealed.
    filter: KeyFilter,
}

impl Layer {
    /// Readies a layer that will change no more for readers: its size and
    /// key filter.
    pub fn seal(&mut self) {
        self.size = self.measure();
        let n = self.tables.iter().map(BTreeMap::len).sum();
        let keys = self
            .tables
            .iter()
            .enumerate()
            .flat_map(|(t, changes)| changes.keys().map(move |k| FilterHash::of(t, k)));
        self.filter = KeyFilter::build(n, keys);
    }

    /// Approximate memory held by the changes.
    pub(crate) fn measure(&self) -> usize {
        let t: usize = self
            .tables
            .iter()
            .flat_map(|t| t.iter())
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len) + 48)
            .sum();
        t + self
            .meta
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
            .sum::<usize>()
    }
}

/// A key and its value, as read from a range.
pub type KeyValue = (Vec<u8>, Vec<u8>);

type Entry = (Vec<u8>, Option<Vec<u8>>);
type Source<'a> = Box<dyn Iterator<Item = Result<Entry, fjall::Error>> + 'a>;

/// Layers not yet in the database (oldest first) over a database snapshot.
pub(crate) struct View {
    /// Apply steps committed when the view was taken.
    pub seq: u64,
    pub layers: Vec<Arc<Layer>>,
    pub snapshot: Snapshot,
    pub keyspaces: Keyspaces,
}

/// A view plus, for a writer, its own uncommitted layer on top.
#[derive(Clone, Copy)]
pub(crate) struct Layered<'a> {
    pub top: Option<&'a Layer>,
    pub view: &'a View,
}

impl<'a> Layered<'a> {
    /// Layers newest first.
    fn layers(self) -> impl Iterator<Item = &'a Layer> {
        self.top
            .into_iter()
            .chain(self.view.layers.iter().rev().map(|l| &**l))
    }

    fn stored(self, keyspace: usize, key: &[u8]) -> Result<Option<Vec<u8>>, fjall::Error> {
        let v = self
            .view
            .snapshot
            .get(&self.view.keyspaces[keyspace], key)?;
        Ok(v.map(|v| v.to_vec()))
    }

    pub fn get(self, t: Table, key: &[u8]) -> Result<Option<Vec<u8>>, fjall::Error> {
        let h = FilterHash::of(t as usize, key);
        for l in self.layers().filter(|l| l.filter.may_contain(h)) {
            if let Some(v) = l.tables[t as usize].get(key) {
                return Ok(v.clone());
            }
        }
        self.stored(t as usize, key)
    }

    pub fn meta_get(self, key: &str) -> Result<Option<Vec<u8>>, fjall::Error> {
        for l in self.layers() {
            if let Some(v) = l.meta.get(key) {
                return Ok(v.clone());
            }
        }
        self.stored(META, key.as_bytes())
    }

    /// Keys (and values) in `[from, to)`, in order, at most `limit`.
    pub fn range(
        self,
        t: Table,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, fjall::Error> {
        if from >= to {
            return Ok(Vec::new());
        }
        let bounds = (Bound::Included(from), Bound::Excluded(to));
        // Highest priority first: the newest layer, down to the database.
        let mut sources: Vec<Source<'_>> = self
            .layers()
            .map(|l| -> Source<'_> {
                Box::new(
                    l.tables[t as usize]
                        .range::<[u8], _>(bounds)
                        .map(|(k, v)| Ok((k.clone(), v.clone()))),
                )
            })
            .collect();
        sources.push(Box::new(
            self.view
                .snapshot
                .range(&self.view.keyspaces[t as usize], from..to)
                .map(|g| g.into_inner().map(|(k, v)| (k.to_vec(), Some(v.to_vec())))),
        ));
        merge(sources, limit)
    }
}

/// Merges sorted sources (highest priority first) into at most `limit`
/// live entries: for a key in several sources the first one's value counts,
/// and a deletion hides the key.
fn merge(mut sources: Vec<Source<'_>>, limit: usize) -> Result<Vec<KeyValue>, fjall::Error> {
    let mut heads = sources
        .iter_mut()
        .map(|s| s.next().transpose())
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::new();
    while out.len() < limit {
        let Some(min) = heads.iter().flatten().map(|(k, _)| k).min().cloned() else {
            break;
        };
        let mut value = None;
        let mut taken = false;
        for (head, source) in heads.iter_mut().zip(sources.iter_mut()) {
            if head.as_ref().is_some_and(|(k, _)| *k == min) {
                let (_, v) = head.take().expect("checked above");
                if !taken {
                    value = v;
                    taken = true;
                }
                *head = source.next().transpose()?;
            }
        }
        if let Some(v) = value {
            out.push((min, v));
        }
    }
    Ok(out)
}

/// Adds the latest change of each key in `layers` (oldest first) to one
/// database batch (applied atomically). Values are copied once, straight
/// from the layers into the batch.
pub(crate) fn write(
    batch: &mut fjall::OwnedWriteBatch,
    keyspaces: &Keyspaces,
    layers: &[Arc<Layer>],
) {
    fn put<'a>(
        batch: &mut fjall::OwnedWriteBatch,
        keyspace: &Keyspace,
        changes: impl Iterator<Item = (&'a [u8], &'a Option<Vec<u8>>)>,
    ) {
        let latest: BTreeMap<&[u8], &Option<Vec<u8>>> = changes.collect();
        for (k, v) in latest {
            match v {
                Some(v) => batch.insert(keyspace, k, v.as_slice()),
                None => batch.remove(keyspace, k),
            }
        }
    }
    for (t, keyspace) in keyspaces.iter().enumerate().take(META) {
        let changes = layers
            .iter()
            .flat_map(|l| l.tables[t].iter().map(|(k, v)| (k.as_slice(), v)));
        put(batch, keyspace, changes);
    }
    let meta = layers
        .iter()
        .flat_map(|l| l.meta.iter().map(|(k, v)| (k.as_bytes(), v)));
    put(batch, &keyspaces[META], meta);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(t: Table, items: &[(&str, Option<&str>)]) -> Arc<Layer> {
        let mut l = Layer::default();
        for (k, v) in items {
            l.tables[t as usize].insert(k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec()));
        }
        l.seal();
        Arc::new(l)
    }

    fn open_db(dir: &std::path::Path) -> (fjall::Database, Keyspaces) {
        let db = fjall::Database::builder(dir).open().unwrap();
        let keyspaces: Keyspaces = Arc::new(KEYSPACES.map(|name| {
            db.keyspace(name, fjall::KeyspaceCreateOptions::default)
                .unwrap()
        }));
        (db, keyspaces)
    }

    #[test]
    fn writing_several_layers_keeps_the_latest_change_of_each_key() {
        let dir = tempfile::tempdir().unwrap();
        let (db, keyspaces) = open_db(dir.path());
        let layers = [
            layer(
                Table::Aux,
                &[("a", Some("1")), ("b", Some("1")), ("c", Some("1"))],
            ),
            layer(Table::Aux, &[("a", Some("2")), ("b", None)]),
            layer(Table::Aux, &[("a", Some("3")), ("d", Some("3"))]),
        ];
        let mut batch = db.batch();
        write(&mut batch, &keyspaces, &layers);
        batch.commit().unwrap();
        let aux = &keyspaces[Table::Aux as usize];
        let get = |k: &str| aux.get(k).unwrap().map(|v| v.to_vec());
        assert_eq!(get("a"), Some(b"3".to_vec()));
        assert_eq!(get("b"), None);
        assert_eq!(get("c"), Some(b"1".to_vec()));
        assert_eq!(get("d"), Some(b"3".to_vec()));
    }

    #[test]
    fn newer_layers_override_older_ones_and_the_database_and_deletions_hide_keys() {
        let dir = tempfile::tempdir().unwrap();
        let (db, keyspaces) = open_db(dir.path());
        let stored = layer(
            Table::Aux,
            &[
                ("a", Some("r")),
                ("b", Some("r")),
                ("c", Some("r")),
                ("e", Some("r")),
            ],
        );
        let mut batch = db.batch();
        write(&mut batch, &keyspaces, &[stored]);
        batch.commit().unwrap();
        let old = layer(
            Table::Aux,
            &[("b", Some("1")), ("c", None), ("d", Some("1"))],
        );
        let new = layer(
            Table::Aux,
            &[("b", Some("2")), ("d", None), ("f", Some("2"))],
        );
        let view = View {
            seq: 0,
            layers: vec![old, new],
            snapshot: db.snapshot(),
            keyspaces,
        };
        let top = layer(Table::Aux, &[("a", None), ("g", Some("3"))]);
        let l = Layered {
            top: Some(&top),
            view: &view,
        };
        let s = |v: Option<Vec<u8>>| v.map(|v| String::from_utf8(v).unwrap());
        assert_eq!(s(l.get(Table::Aux, b"a").unwrap()), None);
        assert_eq!(s(l.get(Table::Aux, b"b").unwrap()).as_deref(), Some("2"));
        assert_eq!(s(l.get(Table::Aux, b"c").unwrap()), None);
        assert_eq!(s(l.get(Table::Aux, b"e").unwrap()).as_deref(), Some("r"));
        let all: Vec<String> = l
            .range(Table::Aux, b"", b"z", 100)
            .unwrap()
            .into_iter()
            .map(|(k, v)| format!("{}={}", s(Some(k)).unwrap(), s(Some(v)).unwrap()))
            .collect();
        assert_eq!(all, ["b=2", "e=r", "f=2", "g=3"]);
        assert_eq!(l.range(Table::Aux, b"c", b"f", 1).unwrap().len(), 1);
        assert!(l.range(Table::Aux, b"f", b"c", 10).unwrap().is_empty());
    }
}
