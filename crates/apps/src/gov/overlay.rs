//! Writes held back until every action of a proposal has succeeded.

use crate::registry::StateRead;
use comity_store::{StoreError, WriteBatch};
use std::collections::BTreeMap;

/// A view of state with pending writes on top; [`Overlay::commit`] writes them.
pub struct Overlay<'a, 'b> {
    base: &'a WriteBatch<'b>,
    writes: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl<'a, 'b> Overlay<'a, 'b> {
    pub fn new(base: &'a WriteBatch<'b>) -> Self {
        Overlay {
            base,
            writes: BTreeMap::new(),
        }
    }

    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        self.writes.insert(key.to_vec(), value.to_vec());
    }

    /// The writes, in key order, for the caller to apply to the batch.
    pub fn into_writes(self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        self.writes
    }
}

impl StateRead for Overlay<'_, '_> {
    fn state(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.writes.get(key) {
            Some(v) => Ok(Some(v.clone())),
            None => self.base.get(key),
        }
    }
}

/// Applies an overlay's writes.
pub fn commit(
    batch: &mut WriteBatch<'_>,
    writes: BTreeMap<Vec<u8>, Vec<u8>>,
) -> Result<(), StoreError> {
    writes.iter().try_for_each(|(k, v)| batch.put(k, v))
}
