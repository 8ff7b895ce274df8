//! A ledger on a real store, driven through the executor the way a node
//! applies committed entries: shared by the application tests.
#![allow(dead_code)]

use comity_apps::{Command, Executor, Genesis};
use comity_core::cbor::Value;
use comity_core::crypto::{sha256, SigningKey};
use comity_core::tx::{Tx, TxPayload};
use comity_core::Hash;
use comity_store::Store;
use serde_bytes::ByteBuf;

pub struct Ledger {
    pub store: Store,
    pub ex: Executor,
    pub net: Hash,
    /// Ledger time given to the next entry (ms).
    pub time: u64,
    nonce: u64,
    _dir: tempfile::TempDir,
}

impl Ledger {
    /// A fresh store in a temporary directory with `g` applied, at `g.time`.
    pub fn start(g: &Genesis) -> Ledger {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), 1 << 20).unwrap();
        let mut l = Ledger {
            ex: Executor::load(&store).unwrap(),
            store,
            net: g.network_id(),
            time: g.time,
            nonce: 0,
            _dir: dir,
        };
        l.apply(Command::Genesis {
            doc: ByteBuf::from(g.to_cbor()),
        });
        l
    }

    pub fn apply(&mut self, cmd: Command) -> comity_apps::executor::Output {
        let t = self.store.begin().unwrap();
        let out = self
            .ex
            .apply(&mut t.batch().unwrap(), &cmd, &|_| None)
            .unwrap();
        t.commit(false).unwrap();
        out
    }

    /// A transaction signed by `key` as identity `kid`, with a fresh nonce.
    pub fn sign_as(
        &mut self,
        key: &SigningKey,
        kid: &Hash,
        app: &str,
        op: &str,
        args: Value,
    ) -> Vec<u8> {
        self.nonce += 1;
        let p = TxPayload {
            net: self.net,
            app: app.into(),
            op: op.into(),
            args,
            nonce: self.nonce.to_be_bytes().to_vec(),
            created: self.time,
        };
        Tx::sign(key, kid, &p)
    }

    /// Applies one transaction 10 ms later; returns its id and outcome code.
    pub fn run(&mut self, tx: Vec<u8>) -> (Hash, String) {
        self.time += 10;
        let out = self.apply(Command::Batch {
            time: self.time,
            txs: vec![ByteBuf::from(tx.clone())],
        });
        assert_eq!(out.txs.len(), 1);
        (sha256(&tx), out.txs[0].outcome.code().to_string())
    }
}
