//! Listing cursors sealed by the node. A page of a filtered listing can stop
//! after reading index entries the caller may not see; a plain cursor would
//! then tell the caller the position (document id, time) of a record it is
//! not party to. A sealed cursor is opaque: authenticated encryption under a
//! key derived from this node's key, so it stays valid across restarts but
//! only on the node that issued it. It is bound to the listing it came from
//! (caller and filter): the indexes share one key layout, so a cursor taken
//! where it stopped on a hidden record, replayed under another filter,
//! would place that record among the caller's own.

use crate::error::ApiError;
use comity_core::crypto::sha256;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

pub struct CursorSeal {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl CursorSeal {
    /// The seal of the node whose PKCS#8 key is `node_key_pem`.
    pub fn new(node_key_pem: &str) -> CursorSeal {
        let secret = sha256(&[b"comity.cursor.v1\0".as_slice(), node_key_pem.as_bytes()].concat());
        let key = UnboundKey::new(&CHACHA20_POLY1305, &secret).expect("a 32-byte key");
        CursorSeal {
            key: LessSafeKey::new(key),
            rng: SystemRandom::new(),
        }
    }

    /// An opaque cursor (hex) for `position` in the listing `context`.
    pub fn seal(&self, context: &[u8], position: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).expect("system randomness");
        let mut buf = position.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context),
                &mut buf,
            )
            .expect("a cursor fits");
        hex::encode([nonce.as_slice(), &buf].concat())
    }

    /// The position a cursor from [`CursorSeal::seal`] names, if it was
    /// sealed for the same `context`.
    pub fn open(&self, context: &[u8], cursor: &str) -> Result<Vec<u8>, ApiError> {
        let bad = || {
            ApiError::bad_request(
                "bad_cursor",
                "after must be a `next` cursor this node issued for the same listing (same caller and filter, on the same node)",
            )
        };
        let raw = hex::decode(cursor).map_err(|_| bad())?;
        if raw.len() < NONCE_LEN {
            return Err(bad());
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| bad())?;
        let mut buf = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context), &mut buf)
            .map_err(|_| bad())?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_opens_only_on_its_node_for_its_listing_and_whole() {
        let a = CursorSeal::new("node a");
        let c = a.seal(b"status=draft", b"position");
        assert_eq!(a.open(b"status=draft", &c).unwrap(), b"position");
        assert_ne!(
            a.seal(b"status=draft", b"position"),
            c,
            "each seal is fresh"
        );
        assert!(!c.contains(&hex::encode(b"position")));
        assert_eq!(
            CursorSeal::new("node b")
                .open(b"status=draft", &c)
                .unwrap_err()
                .code,
            "bad_cursor"
        );
        assert_eq!(
            a.open(b"party=me", &c).unwrap_err().code,
            "bad_cursor",
            "another listing"
        );
        let mut flipped = hex::decode(&c).unwrap();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(a.open(b"status=draft", &hex::encode(flipped)).is_err());
        assert!(a.open(b"", "zz").is_err());
        assert!(a.open(b"", "00").is_err());
    }
}
