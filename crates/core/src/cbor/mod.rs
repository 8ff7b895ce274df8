//! Deterministic CBOR (RFC 8949 §4.2.1) helpers.
//!
//! Everything that is hashed or signed is encoded through [`to_vec`], which
//! sorts map keys by their encoded bytes; inputs that must be deterministic are
//! checked with [`check_canonical`] in one pass over their bytes.

pub use ciborium::Value;
pub use direct::{to_canonical, to_canonical_compact};

mod direct;

/// Largest nesting accepted when decoding untrusted input.
const MAX_DEPTH: usize = 32;
/// Most items reserved ahead for an array or map; longer ones grow as read.
const MAX_RESERVE: usize = 1024;

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

/// Encodes `v` deterministically: shortest heads, definite lengths, map keys
/// sorted by their encoded bytes; floats, duplicate keys and nesting deeper
/// than the limit are refused.
pub fn to_vec(v: Value) -> Result<Vec<u8>, CborError> {
    let mut out = Vec::with_capacity(128);
    encode(&v, &mut out, 0)?;
    Ok(out)
}

/// Appends a CBOR item head: `major` type with `arg` in its shortest form.
pub(crate) fn head(out: &mut Vec<u8>, major: u8, arg: u64) {
    let m = major << 5;
    if arg < 24 {
        out.push(m | arg as u8);
    } else if arg <= u8::MAX as u64 {
        out.extend_from_slice(&[m | 24, arg as u8]);
    } else if arg <= u16::MAX as u64 {
        out.push(m | 25);
        out.extend_from_slice(&(arg as u16).to_be_bytes());
    } else if arg <= u32::MAX as u64 {
        out.push(m | 26);
        out.extend_from_slice(&(arg as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&arg.to_be_bytes());
    }
}

fn encode(v: &Value, out: &mut Vec<u8>, depth: usize) -> Result<(), CborError> {
    if depth > MAX_DEPTH {
        return Err(CborError::TooDeep);
    }
    match v {
        Value::Integer(i) => {
            let n = i128::from(*i);
            // `Integer` spans -2^64 ..= 2^64 - 1, so both casts are exact.
            if n >= 0 {
                head(out, 0, n as u64)
            } else {
                head(out, 1, (-1 - n) as u64)
            }
        }
        Value::Bytes(b) => {
            head(out, 2, b.len() as u64);
            out.extend_from_slice(b);
        }
        Value::Text(t) => {
            head(out, 3, t.len() as u64);
            out.extend_from_slice(t.as_bytes());
        }
        Value::Array(items) => {
            head(out, 4, items.len() as u64);
            for i in items {
                encode(i, out, depth + 1)?;
            }
        }
        Value::Map(entries) => {
            let mut buf = Vec::new();
            let mut spans = Vec::with_capacity(entries.len());
            for (k, v) in entries {
                let key = buf.len();
                encode(k, &mut buf, depth + 1)?;
                let value = buf.len();
                encode(v, &mut buf, depth + 1)?;
                spans.push((key, value, buf.len()));
            }
            write_map(out, &buf, &mut spans)?;
        }
        Value::Tag(t, inner) => {
            head(out, 6, *t);
            encode(inner, out, depth + 1)?;
        }
        Value::Bool(b) => out.push(if *b { 0xf5 } else { 0xf4 }),
        Value::Null => out.push(0xf6),
        Value::Float(_) => return Err(CborError::Float),
        _ => return Err(CborError::Shape("unsupported CBOR value".into())),
    }
    Ok(())
}

/// Writes a map whose entries are encoded side by side in `buf`, each
/// `(key start, value start, end)`, in the order of their encoded keys;
/// a key that appears twice is refused.
fn write_map(
    out: &mut Vec<u8>,
    buf: &[u8],
    spans: &mut [(usize, usize, usize)],
) -> Result<(), CborError> {
    spans.sort_unstable_by(|a, b| buf[a.0..a.1].cmp(&buf[b.0..b.1]));
    if spans
        .windows(2)
        .any(|w| buf[w[0].0..w[0].1] == buf[w[1].0..w[1].1])
    {
        return Err(CborError::Shape("duplicate map key".into()));
    }
    head(out, 5, spans.len() as u64);
    for &(key, _, end) in spans.iter() {
        out.extend_from_slice(&buf[key..end]);
    }
    Ok(())
}

/// Checks that `bytes` is exactly one item in the deterministic encoding
/// [`to_vec`] produces, without decoding it. Bignum tags (2, 3) are refused:
/// no Comity format uses them, and small ones have a shorter integer form.
pub fn check_canonical(bytes: &[u8]) -> Result<(), CborError> {
    Checker::whole::<()>(bytes)
}

/// Decodes `bytes` and checks they are exactly the deterministic encoding,
/// in the same single pass: every signed payload is read this way.
pub fn from_canonical_slice(bytes: &[u8]) -> Result<Value, CborError> {
    Checker::whole::<Value>(bytes)
}

/// What [`Checker`] builds from the items it checks: `()` to check only
/// (its vectors hold zero-sized items and never allocate), or a [`Value`].
trait Build: Sized {
    fn int(negative: bool, n: u64) -> Self;
    fn bytes(b: &[u8]) -> Self;
    fn text(t: &str) -> Self;
    fn array(items: Vec<Self>) -> Self;
    fn map(entries: Vec<(Self, Self)>) -> Self;
    fn tag(tag: u64, inner: Self) -> Self;
    /// false, true or null, by their initial byte.
    fn simple(ib: u8) -> Self;
}

impl Build for () {
    fn int(_: bool, _: u64) {}
    fn bytes(_: &[u8]) {}
    fn text(_: &str) {}
    fn array(_: Vec<()>) {}
    fn map(_: Vec<((), ())>) {}
    fn tag(_: u64, _: ()) {}
    fn simple(_: u8) {}
}

impl Build for Value {
    fn int(negative: bool, n: u64) -> Value {
        Value::Integer(if negative {
            (-1 - i128::from(n))
                .try_into()
                .expect("CBOR negative integers fit")
        } else {
            n.into()
        })
    }
    fn bytes(b: &[u8]) -> Value {
        Value::Bytes(b.to_vec())
    }
    fn text(t: &str) -> Value {
        Value::Text(t.to_owned())
    }
    fn array(items: Vec<Value>) -> Value {
        Value::Array(items)
    }
    fn map(entries: Vec<(Value, Value)>) -> Value {
        Value::Map(entries)
    }
    fn tag(tag: u64, inner: Value) -> Value {
        Value::Tag(tag, Box::new(inner))
    }
    fn simple(ib: u8) -> Value {
        match ib {
            0xf4 => Value::Bool(false),
            0xf5 => Value::Bool(true),
            _ => Value::Null,
        }
    }
}

struct Checker<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Checker<'_> {
    /// Checks (and builds) the one item that must span all of `bytes`.
    fn whole<B: Build>(bytes: &[u8]) -> Result<B, CborError> {
        let mut c = Checker { b: bytes, pos: 0 };
        let v = c.item(0)?;
        if c.pos != bytes.len() {
            return Err(CborError::Malformed(
                "trailing bytes after CBOR item".into(),
            ));
        }
        Ok(v)
    }

    fn take(&mut self, n: u64) -> Result<&[u8], CborError> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| CborError::Malformed("truncated CBOR item".into()))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn uint(&mut self, n: u64) -> Result<u64, CborError> {
        Ok(self.take(n)?.iter().fold(0, |a, &x| (a << 8) | x as u64))
    }

    /// Major type and argument of the next head, which must be in its
    /// shortest form.
    fn head(&mut self) -> Result<(u8, u64), CborError> {
        let ib = self.take(1)?[0];
        let (major, ai) = (ib >> 5, ib & 0x1f);
        if major == 7 {
            return match ai {
                20..=22 => Ok((7, 0)),
                25..=27 => Err(CborError::Float),
                _ => Err(CborError::Malformed("unsupported simple value".into())),
            };
        }
        let (arg, min) = match ai {
            0..=23 => return Ok((major, ai as u64)),
            24 => (self.uint(1)?, 24),
            25 => (self.uint(2)?, 1 << 8),
            26 => (self.uint(4)?, 1 << 16),
            27 => (self.uint(8)?, 1 << 32),
            31 => return Err(CborError::NotCanonical),
            _ => {
                return Err(CborError::Malformed(
                    "reserved additional information".into(),
                ))
            }
        };
        if arg < min {
            return Err(CborError::NotCanonical);
        }
        Ok((major, arg))
    }

    /// Room reserved for `n` items: no more than what is left could hold
    /// (each takes a byte at least) nor than [`MAX_RESERVE`], so forged
    /// counts at every nesting level cannot reserve a multiple of the input.
    fn capacity(&self, n: u64) -> usize {
        usize::try_from(n).map_or(MAX_RESERVE, |n| {
            n.min(self.b.len() - self.pos).min(MAX_RESERVE)
        })
    }

    fn item<B: Build>(&mut self, depth: usize) -> Result<B, CborError> {
        if depth > MAX_DEPTH {
            return Err(CborError::TooDeep);
        }
        let ib = self.b.get(self.pos).copied();
        let (major, arg) = self.head()?;
        Ok(match major {
            0 | 1 => B::int(major == 1, arg),
            2 => B::bytes(self.take(arg)?),
            3 => B::text(
                std::str::from_utf8(self.take(arg)?)
                    .map_err(|_| CborError::Malformed("text is not UTF-8".into()))?,
            ),
            4 => {
                let mut items = Vec::with_capacity(self.capacity(arg));
                for _ in 0..arg {
                    items.push(self.item(depth + 1)?);
                }
                B::array(items)
            }
            5 => {
                let mut entries = Vec::with_capacity(self.capacity(arg));
                let mut prev: Option<(usize, usize)> = None;
                for _ in 0..arg {
                    let from = self.pos;
                    let k = self.item(depth + 1)?;
                    let key = (from, self.pos);
                    if let Some(p) = prev {
                        match self.b[p.0..p.1].cmp(&self.b[key.0..key.1]) {
                            std::cmp::Ordering::Less => {}
                            std::cmp::Ordering::Equal => {
                                return Err(CborError::Shape("duplicate map key".into()))
                            }
                            std::cmp::Ordering::Greater => return Err(CborError::NotCanonical),
                        }
                    }
                    prev = Some(key);
                    entries.push((k, self.item(depth + 1)?));
                }
                B::map(entries)
            }
            6 if arg == 2 || arg == 3 => return Err(CborError::NotCanonical),
            6 => B::tag(arg, self.item(depth + 1)?),
            _ => B::simple(ib.expect("head read the initial byte")),
        })
    }
}

/// Decodes one CBOR item that must span all of `bytes`.
pub fn from_slice(bytes: &[u8]) -> Result<Value, CborError> {
    // ciborium's own deserializer: `Value` keeps tags only through it.
    let mut cursor = std::io::Cursor::new(bytes);
    let v = ciborium::de::from_reader_with_recursion_limit(&mut cursor, MAX_DEPTH * 2)
        .map_err(|e| CborError::Malformed(e.to_string()))?;
    if cursor.position() as usize != bytes.len() {
        return Err(trailing());
    }
    Ok(v)
}

fn trailing() -> CborError {
    CborError::Malformed("trailing bytes after CBOR item".into())
}

/// Reads a typed value straight from one CBOR item spanning `bytes`,
/// without a [`Value`] tree in between: for records this node wrote itself
/// (through [`to_canonical`]), read on every transaction that touches them.
/// cbor4ii reads from the slice in place, several times faster than
/// ciborium's reader; types holding a [`Value`] need [`from_slice`].
pub fn from_slice_to<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, CborError> {
    let mut de = cbor4ii::serde::Deserializer::new(Slice {
        rest: bytes,
        depth: MAX_DEPTH * 2,
    });
    let t = T::deserialize(&mut de).map_err(|e| CborError::Malformed(e.to_string()))?;
    if !de.into_inner().rest.is_empty() {
        return Err(trailing());
    }
    Ok(t)
}

/// cbor4ii's input: what is left of the slice, and how much deeper items
/// may nest.
struct Slice<'a> {
    rest: &'a [u8],
    depth: usize,
}

impl<'de> cbor4ii::core::dec::Read<'de> for Slice<'de> {
    type Error = std::convert::Infallible;

    fn fill<'b>(
        &'b mut self,
        want: usize,
    ) -> Result<cbor4ii::core::dec::Reference<'de, 'b>, Self::Error> {
        Ok(cbor4ii::core::dec::Reference::Long(
            &self.rest[..want.min(self.rest.len())],
        ))
    }

    fn advance(&mut self, n: usize) {
        self.rest = &self.rest[n.min(self.rest.len())..];
    }

    fn step_in(&mut self) -> bool {
        self.depth.checked_sub(1).map(|d| self.depth = d).is_some()
    }

    fn step_out(&mut self) {
        self.depth += 1;
    }
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

/// Converts a serde value (e.g. a typed governance record) to CBOR, in the
/// human-readable form that transaction arguments and genesis use (ids as
/// hex text): ciborium's own value serializer would pick the compact one.
pub fn from_serde<T: serde::Serialize>(t: &T) -> Result<Value, CborError> {
    from_slice(&to_canonical(t)?)
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
    fn typed_reads_refuse_trailing_truncated_and_too_deep_input() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct R {
            n: u64,
            t: String,
            l: Vec<Option<u8>>,
        }
        let r = R {
            n: 1 << 40,
            t: "text".into(),
            l: vec![Some(3), None],
        };
        let b = to_canonical(&r).unwrap();
        assert_eq!(from_slice_to::<R>(&b).unwrap(), r);
        assert!(from_slice_to::<R>(&[&b[..], &[0]].concat()).is_err());
        assert!(from_slice_to::<R>(&b[..b.len() - 1]).is_err());
        assert!(from_slice_to::<u64>(&[0x62, b'a']).is_err());
        // Nested one-element arrays, far deeper than any record: refused
        // without exhausting the stack.
        let deep = [vec![0x81; 100_000], vec![0x00]].concat();
        assert!(from_slice_to::<Vec<Vec<Vec<u8>>>>(&deep).is_err());
        assert!(from_slice_to::<serde::de::IgnoredAny>(&deep).is_err());
    }

    /// The straightforward encoder: canonicalize a copy, let ciborium write it.
    fn oracle(v: &Value) -> Result<Vec<u8>, CborError> {
        fn canon(v: &Value, depth: usize) -> Result<Value, CborError> {
            if depth > MAX_DEPTH {
                return Err(CborError::TooDeep);
            }
            Ok(match v {
                Value::Float(_) => return Err(CborError::Float),
                Value::Array(a) => Value::Array(
                    a.iter()
                        .map(|i| canon(i, depth + 1))
                        .collect::<Result<_, _>>()?,
                ),
                Value::Map(m) => {
                    let mut keyed = m
                        .iter()
                        .map(|(k, v)| {
                            let k = canon(k, depth + 1)?;
                            let mut kb = Vec::new();
                            ciborium::into_writer(&k, &mut kb).unwrap();
                            Ok((kb, k, canon(v, depth + 1)?))
                        })
                        .collect::<Result<Vec<_>, CborError>>()?;
                    keyed.sort_by(|a, b| a.0.cmp(&b.0));
                    if keyed.windows(2).any(|w| w[0].0 == w[1].0) {
                        return Err(CborError::Shape("duplicate map key".into()));
                    }
                    Value::Map(keyed.into_iter().map(|(_, k, v)| (k, v)).collect())
                }
                Value::Tag(t, i) => Value::Tag(*t, Box::new(canon(i, depth + 1)?)),
                other => other.clone(),
            })
        }
        let mut out = Vec::new();
        ciborium::into_writer(&canon(v, 0)?, &mut out).unwrap();
        Ok(out)
    }

    /// A deterministic pseudo-random value of every kind the encoder handles.
    fn arbitrary(seed: &mut u64, depth: usize) -> Value {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let r = *seed >> 33;
        let pick = if depth > 3 { r % 6 } else { r % 9 };
        let big = [
            0,
            1,
            23,
            24,
            255,
            256,
            65535,
            65536,
            u32::MAX as u64,
            1 << 32,
            u64::MAX,
        ];
        match pick {
            0 => uint(big[(r >> 4) as usize % big.len()]),
            1 => Value::Integer(
                (-1 - (big[(r >> 4) as usize % big.len()] as i128))
                    .try_into()
                    .unwrap(),
            ),
            2 => bytes(vec![r as u8; (r >> 8) as usize % 300]),
            3 => text("k".repeat((r >> 8) as usize % 30)),
            4 => Value::Bool(r & 16 == 0),
            5 => Value::Null,
            6 => Value::Array((0..r % 5).map(|_| arbitrary(seed, depth + 1)).collect()),
            7 => Value::Tag(r % 40 + 4, Box::new(arbitrary(seed, depth + 1))),
            _ => Value::Map(
                (0..r % 6)
                    .map(|_| (arbitrary(seed, depth + 1), arbitrary(seed, depth + 1)))
                    .collect(),
            ),
        }
    }

    fn has_bignum(v: &Value) -> bool {
        match v {
            Value::Tag(2 | 3, _) => true,
            Value::Tag(_, i) => has_bignum(i),
            Value::Array(a) => a.iter().any(has_bignum),
            Value::Map(m) => m.iter().any(|(k, v)| has_bignum(k) || has_bignum(v)),
            _ => false,
        }
    }

    #[test]
    fn encoder_and_checker_agree_with_the_straightforward_encoder() {
        let mut seed = 7;
        let mut mutated_rejected = 0;
        for _ in 0..1000 {
            let v = arbitrary(&mut seed, 0);
            let want = oracle(&v);
            let got = to_vec(v.clone());
            match (&want, &got) {
                (Ok(w), Ok(g)) => assert_eq!(w, g, "{v:?}"),
                (Err(_), Err(_)) => continue,
                _ => panic!("{v:?}: oracle {want:?}, encoder {got:?}"),
            }
            let b = got.unwrap();
            check_canonical(&b).unwrap();
            assert_eq!(from_canonical_slice(&b).unwrap(), from_slice(&b).unwrap());
            // Any change that still decodes is accepted exactly when
            // re-encoding the decoded value gives the same bytes.
            for i in 0..b.len().min(40) {
                for flip in [1u8, 0x20, 0x80] {
                    let mut m = b.clone();
                    m[i] ^= flip;
                    let Ok(d) = from_slice(&m) else {
                        assert!(from_canonical_slice(&m).is_err(), "{m:02x?}");
                        continue;
                    };
                    if has_bignum(&d) {
                        continue; // refused by design, see `check_canonical`
                    }
                    let same = oracle(&d).is_ok_and(|o| o == m);
                    assert_eq!(check_canonical(&m).is_ok(), same, "{m:02x?}");
                    match from_canonical_slice(&m) {
                        Ok(v) => assert!(same && v == d, "{m:02x?}"),
                        Err(_) => assert!(!same, "{m:02x?}"),
                    }
                    mutated_rejected += usize::from(!same);
                }
            }
        }
        assert!(mutated_rejected > 100, "{mutated_rejected}");
    }

    #[test]
    fn checker_refuses_indefinite_lengths_floats_and_trailing_bytes() {
        // An indefinite-length array [1] and an indefinite text "a".
        assert!(matches!(
            check_canonical(&[0x9f, 0x01, 0xff]),
            Err(CborError::NotCanonical)
        ));
        assert!(matches!(
            check_canonical(&[0x7f, 0x61, b'a', 0xff]),
            Err(CborError::NotCanonical)
        ));
        // 1.5 as a half-precision float.
        assert!(matches!(
            check_canonical(&[0xf9, 0x3e, 0x00]),
            Err(CborError::Float)
        ));
        assert!(check_canonical(&[0x01, 0x02]).is_err());
        assert!(check_canonical(&[0x62, b'a']).is_err());
        assert!(check_canonical(&[]).is_err());
        // Duplicate keys, and nesting beyond the limit.
        assert!(matches!(
            check_canonical(&[0xa2, 0x61, b'a', 0x01, 0x61, b'a', 0x02]),
            Err(CborError::Shape(_))
        ));
        let deep = [vec![0x81; MAX_DEPTH + 1], vec![0x01]].concat();
        assert!(matches!(check_canonical(&deep), Err(CborError::TooDeep)));
        assert!(check_canonical(&deep[1..]).is_ok());
    }

    #[test]
    fn duplicate_keys_rejected() {
        let v = Value::Map(vec![(text("a"), uint(1)), (text("a"), uint(2))]);
        assert!(to_vec(v).is_err());
    }
}
