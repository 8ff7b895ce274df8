//! Property tests of every decoder that reads bytes from outside a node:
//! transactions from clients, receipts and checkpoints from anyone, ledger
//! records and recovery decisions from files. Whatever the bytes, a decoder
//! answers (usually an error) and never panics; what it accepts is exactly
//! what was signed or encoded.

use comity_core::cbor::{self, Value};
use comity_core::checkpoint::{self, Checkpoint};
use comity_core::crypto::{Alg, SigningKey};
use comity_core::entry::{Leaf, Record};
use comity_core::receipt::Receipt;
use comity_core::recovery::MemberKeys;
use comity_core::tx::{Tx, TxPayload};
use proptest::prelude::*;
use std::sync::OnceLock;

/// Runs every decoder on `bytes`; any panic fails the property.
fn decode_all(bytes: &[u8]) {
    let _ = cbor::from_canonical_slice(bytes);
    let _ = cbor::from_slice(bytes);
    let _ = Tx::parse(bytes);
    let _ = Receipt::from_cose(bytes);
    let _ = Checkpoint::from_cbor(bytes);
    let _ = checkpoint::parse_signature(bytes);
    let _ = Leaf::from_cbor(bytes);
    let _ = Record::from_cbor(bytes);
    let _ = Record::leaf_of(bytes);
    let _ = MemberKeys::from_cbor(bytes);
}

/// CBOR values of every major type, nested a few levels, with unique map
/// keys. No bignum tags
/// (2, 3): the canonical decoder refuses them by design, as no Comity
/// format uses them (the cbor module's own tests cover that).
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<u64>().prop_map(cbor::uint),
        any::<i64>().prop_map(|i| Value::Integer(i.into())),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(cbor::bytes),
        "[a-z]{0,12}".prop_map(cbor::text),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            // Unique keys: a map with a key twice is not CBOR any encoder
            // here may produce (the canonical decoder refuses it).
            proptest::collection::btree_map("[a-z]{1,8}", inner.clone(), 0..6).prop_map(|m| {
                Value::Map(m.into_iter().map(|(k, v)| (cbor::text(k), v)).collect())
            }),
            (
                (0u64..40).prop_filter("bignum", |t| !matches!(t, 2 | 3)),
                inner
            )
                .prop_map(|(t, v)| Value::Tag(t, Box::new(v))),
        ]
    })
}

/// One signing key for the whole run (key generation is not under test).
fn key() -> &'static SigningKey {
    static K: OnceLock<SigningKey> = OnceLock::new();
    K.get_or_init(|| SigningKey::generate(Alg::EdDsa))
}

fn signed_tx(args: Value, nonce: Vec<u8>) -> Vec<u8> {
    let k = key();
    let payload = TxPayload {
        net: [7; 32],
        app: "kv".into(),
        op: "put".into(),
        args,
        nonce,
        created: 1_700_000_000_000,
    };
    Tx::sign(k, &k.public().fingerprint(), &payload)
}

/// A change to valid bytes: overwrite, insert or delete a byte, or cut the tail.
#[derive(Debug, Clone)]
enum Edit {
    Set(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Delete),
        any::<usize>().prop_map(Edit::Truncate),
    ];
    proptest::collection::vec(edit, 1..4)
}

fn apply(mut b: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let n = b.len();
        match *e {
            Edit::Set(i, v) if n > 0 => b[i % n] = v,
            Edit::Insert(i, v) => b.insert(i % (n + 1), v),
            Edit::Delete(i) if n > 0 => {
                b.remove(i % n);
            }
            Edit::Truncate(i) => b.truncate(i % (n + 1)),
            _ => {}
        }
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&bytes);
    }

    /// Well-formed CBOR of the wrong shape reaches the decoders' field checks.
    #[test]
    fn well_formed_cbor_of_any_shape_never_panics(v in value()) {
        if let Ok(bytes) = cbor::to_vec(v) {
            decode_all(&bytes);
            // Canonical bytes decode, and encode back to themselves.
            let back = cbor::from_canonical_slice(&bytes).expect("canonical bytes decode");
            prop_assert_eq!(cbor::to_vec(back).expect("re-encode"), bytes);
        }
    }

    /// Bytes the canonical decoder accepts are exactly their own encoding,
    /// so one value has one byte string (transaction ids depend on it).
    #[test]
    fn canonical_decoding_accepts_one_encoding(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(v) = cbor::from_canonical_slice(&bytes) {
            prop_assert_eq!(cbor::to_vec(v).expect("re-encode"), bytes);
        }
    }

    /// An edited transaction is refused, or is a different, unsigned one:
    /// never the signer's transaction under another id.
    #[test]
    fn edited_transactions_never_verify(
        args in value(),
        nonce in proptest::collection::vec(any::<u8>(), 1..33),
        e in edits(),
    ) {
        let bytes = signed_tx(args, nonce);
        let tx = Tx::parse(&bytes).expect("a signed transaction parses");
        prop_assert!(tx.verify(&key().public()).is_ok());
        let edited = apply(bytes.clone(), &e);
        decode_all(&edited);
        if edited != bytes {
            if let Ok(t) = Tx::parse(&edited) {
                prop_assert!(t.verify(&key().public()).is_err(), "edit {:?} verified", e);
            }
        }
    }

    /// Edited checkpoints, signatures, leaves and records decode or fail, never panic.
    #[test]
    fn edited_ledger_structures_never_panic(
        size in 1u64..1 << 40,
        time in any::<u64>(),
        e in edits(),
    ) {
        let cp = Checkpoint {
            network_id: [1; 32],
            seq: size / 7 + 1,
            size,
            tx_root: [2; 32],
            state_root: [3; 32],
            time,
            version: 1,
        };
        let body = cp.to_cbor();
        prop_assert_eq!(Checkpoint::from_cbor(&body).expect("round trip"), cp);
        let k = key();
        let sig = checkpoint::sign("application/comity-checkpoint", &body, k, &k.public().fingerprint());
        let record = Record { leaf: body.clone(), body: sig.clone() };
        for valid in [body, sig, record.to_cbor()] {
            decode_all(&apply(valid, &e));
        }
    }
}
