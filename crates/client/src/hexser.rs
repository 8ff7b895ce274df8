//! Serde helpers for the API's lowercase-hex JSON fields.

pub use comity_core::network::{hex32, hexvec};

/// `Option<Vec<u8>>` as hex or `null`.
pub mod hexopt {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&hex::encode(b)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(h) => hex::decode(h).map(Some).map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

/// `Vec<[u8; 32]>` as an array of hex strings.
pub mod hexlist {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[[u8; 32]], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(hex::encode))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<[u8; 32]>, D::Error> {
        Vec::<String>::deserialize(d)?
            .into_iter()
            .map(|h| {
                let v = hex::decode(&h).map_err(serde::de::Error::custom)?;
                v.try_into()
                    .map_err(|_| serde::de::Error::custom("expected 32 bytes of hex"))
            })
            .collect()
    }
}

/// `Vec<Vec<u8>>` as an array of hex strings.
pub mod hexveclist {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(hex::encode))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        Vec::<String>::deserialize(d)?
            .into_iter()
            .map(|h| hex::decode(h).map_err(serde::de::Error::custom))
            .collect()
    }
}
