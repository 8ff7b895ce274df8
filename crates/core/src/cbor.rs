//! Deterministic CBOR (RFC 8949 §4.2.1) helpers.
//!
//! Everything that is hashed or signed is encoded through [`to_vec`], which
//! sorts map keys by their encoded bytes; inputs that must be deterministic are
//! checked with [`ensure_canonical`] by re-encoding and comparing.

pub use ciborium::Value;

/// Largest nesting accepted when decoding untrusted input.
const MAX_DEPTH: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum CborError {
    #[error("malformed CBOR: {0}")]
    Malformed(String),
    #[error("CBOR is not in deterministic encoding (RFC 8949 §4.2.1)")]
    NotCanonical,
    #[error("CBOR nesting deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("floating-point values are not allowed")]
    Float,
    #[error("{0}")]
    Shape(String),
}

/// Sorts every map by encoded key bytes, recursively, rejecting floats and deep nesting.
pub fn canonicalize(v: Value) -> Result<Value, CborError> {
    canon(v, 0)
}

fn canon(v: Value, depth: usize) -> Result<Value, CborError> {
    if depth > MAX_DEPTH {
        return Err(CborError::TooDeep);
    }
    Ok(match v {
        Value::Float(_) => return Err(CborError::Float),
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|i| canon(i, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Value::Map(entries) => {
            let mut keyed = Vec::with_capacity(entries.len());
            for (k, val) in entries {
                let k = canon(k, depth + 1)?;
                let kb = raw(&k);
                keyed.push((kb, k, canon(val, depth + 1)?));
            }
            keyed.sort_by(|a, b| a.0.cmp(&b.0));
            if keyed.windows(2).any(|w| w[0].0 == w[1].0) {
                return Err(CborError::Shape("duplicate map key".into()));
            }
            Value::Map(keyed.into_iter().map(|(_, k, v)| (k, v)).collect())
        }
        Value::Tag(t, inner) => Value::Tag(t, Box::new(canon(*inner, depth + 1)?)),
        other => other,
    })
}

fn raw(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).expect("writing CBOR to a Vec cannot fail");
    out
}

/// Encodes `v` deterministically.
pub fn to_vec(v: Value) -> Result<Vec<u8>, CborError> {
    Ok(raw(&canonicalize(v)?))
}

/// Decodes one CBOR item that must span all of `bytes`.
pub fn from_slice(bytes: &[u8]) -> Result<Value, CborError> {
    let mut cursor = std::io::Cursor::new(bytes);
    let v: Value = ciborium::de::from_reader_with_recursion_limit(&mut cursor, MAX_DEPTH * 2)
        .map_err(|e| CborError::Malformed(e.to_string()))?;
    if cursor.position() as usize != bytes.len() {
        return Err(CborError::Malformed(
            "trailing bytes after CBOR item".into(),
        ));
    }
    Ok(v)
}

/// Decodes `bytes` and checks they are exactly the deterministic encoding.
pub fn from_canonical_slice(bytes: &[u8]) -> Result<Value, CborError> {
    let v = from_slice(bytes)?;
    let again = to_vec(v.clone())?;
    if again != bytes {
        return Err(CborError::NotCanonical);
    }
    Ok(v)
}

/// Small accessor over a decoded map with integer or text keys.
pub struct MapView<'a>(pub &'a [(Value, Value)]);

impl<'a> MapView<'a> {
    pub fn new(v: &'a Value) -> Result<Self, CborError> {
        match v {
            Value::Map(m) => Ok(MapView(m)),
            _ => Err(CborError::Shape("expected a map".into())),
        }
    }
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.0
            .iter()
            .find(|(k, _)| matches!(k, Value::Text(t) if t == key))
            .map(|(_, v)| v)
    }
    pub fn req(&self, key: &str) -> Result<&'a Value, CborError> {
        self.get(key)
            .ok_or_else(|| CborError::Shape(format!("missing field `{key}`")))
    }
    pub fn text(&self, key: &str) -> Result<&'a str, CborError> {
        match self.req(key)? {
            Value::Text(t) => Ok(t),
            _ => Err(CborError::Shape(format!("field `{key}` must be text"))),
        }
    }
    pub fn bytes(&self, key: &str) -> Result<&'a [u8], CborError> {
        match self.req(key)? {
            Value::Bytes(b) => Ok(b),
            _ => Err(CborError::Shape(format!("field `{key}` must be bytes"))),
        }
    }
    pub fn hash(&self, key: &str) -> Result<[u8; 32], CborError> {
        self.bytes(key)?
            .try_into()
            .map_err(|_| CborError::Shape(format!("field `{key}` must be 32 bytes")))
    }
    pub fn u64(&self, key: &str) -> Result<u64, CborError> {
        match self.req(key)? {
            Value::Integer(i) => u64::try_from(*i)
                .map_err(|_| CborError::Shape(format!("field `{key}` out of range"))),
            _ => Err(CborError::Shape(format!(
                "field `{key}` must be an unsigned integer"
            ))),
        }
    }
    pub fn array(&self, key: &str) -> Result<&'a [Value], CborError> {
        match self.req(key)? {
            Value::Array(a) => Ok(a),
            _ => Err(CborError::Shape(format!("field `{key}` must be an array"))),
        }
    }
}

/// Builds a text-keyed map; [`to_vec`] puts it in canonical order.
pub fn map<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| (Value::Text(k.to_string()), v))
            .collect(),
    )
}

/// Converts a serde value (e.g. a typed governance record) to CBOR.
pub fn from_serde<T: serde::Serialize>(t: &T) -> Result<Value, CborError> {
    Value::serialized(t).map_err(|e| CborError::Shape(e.to_string()))
}

/// Reads a typed value out of decoded CBOR, with serde's checks.
pub fn to_serde<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, CborError> {
    v.deserialized()
        .map_err(|e| CborError::Shape(e.to_string()))
}

pub fn bytes(b: impl Into<Vec<u8>>) -> Value {
    Value::Bytes(b.into())
}

pub fn text(t: impl Into<String>) -> Value {
    Value::Text(t.into())
}

pub fn uint(n: u64) -> Value {
    Value::Integer(n.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_orders_keys_by_encoding() {
        let v = map([("created", uint(1)), ("op", text("x")), ("app", text("kv"))]);
        let b = to_vec(v).unwrap();
        let back = from_canonical_slice(&b).unwrap();
        let keys: Vec<_> = MapView::new(&back)
            .unwrap()
            .0
            .iter()
            .map(|(k, _)| k.as_text().unwrap().to_string())
            .collect();
        assert_eq!(keys, ["op", "app", "created"]);
    }

    #[test]
    fn non_canonical_rejected() {
        // {"b":1,"a":2} in the wrong order.
        let bad = [0xa2, 0x61, b'b', 0x01, 0x61, b'a', 0x02];
        assert!(matches!(
            from_canonical_slice(&bad),
            Err(CborError::NotCanonical)
        ));
        // 1 encoded in two bytes instead of one.
        let long_int = [0x18, 0x01];
        assert!(matches!(
            from_canonical_slice(&long_int),
            Err(CborError::NotCanonical)
        ));
    }

    #[test]
    fn trailing_and_truncated_rejected() {
        assert!(from_slice(&[0x01, 0x02]).is_err());
        assert!(from_slice(&[0x62, b'a']).is_err());
        assert!(from_slice(&[]).is_err());
    }

    #[test]
    fn duplicate_keys_rejected() {
        let v = Value::Map(vec![(text("a"), uint(1)), (text("a"), uint(2))]);
        assert!(to_vec(v).is_err());
    }
}
