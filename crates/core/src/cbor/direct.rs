//! Deterministic CBOR straight from serde, without a [`Value`] tree: the
//! same bytes as ciborium's value serializer followed by canonical ordering
//! ([`to_vec`]), at a fraction of the allocations. Records that are written
//! on every transaction (documents, their events) go this way, and so does
//! [`from_serde`].

use super::{head, write_map, CborError, MAX_DEPTH};
use serde::ser::{self, Serialize};

#[cfg(doc)]
use super::{from_serde, to_vec, Value};

/// Encodes `t` deterministically, as [`to_vec`] would encode ciborium's
/// [`Value`] of it (for types whose form does not depend on
/// `is_human_readable`; for those, [`to_canonical_compact`] matches it):
/// shortest heads, definite lengths, map keys sorted by their encoded
/// bytes; floats, duplicate keys, 128-bit integers beyond 64 bits and
/// nesting deeper than the limit are refused.
pub fn to_canonical<T: Serialize + ?Sized>(t: &T) -> Result<Vec<u8>, CborError> {
    encode(t, false)
}

/// Like [`to_canonical`], but the encoder reports itself as not human
/// readable, so types with a compact binary form use it (ids as 32-byte
/// strings instead of 64 hex digits). For records a node stores on every
/// transaction; formats that people or other tools write keep hex.
pub fn to_canonical_compact<T: Serialize + ?Sized>(t: &T) -> Result<Vec<u8>, CborError> {
    encode(t, true)
}

fn encode<T: Serialize + ?Sized>(t: &T, compact: bool) -> Result<Vec<u8>, CborError> {
    let mut out = Vec::with_capacity(256);
    t.serialize(Enc {
        out: &mut out,
        depth: Depth { n: 0, compact },
    })?;
    Ok(out)
}

/// Nesting depth, and the encoding mode every level shares.
#[derive(Clone, Copy)]
struct Depth {
    n: usize,
    compact: bool,
}

impl Depth {
    fn next(self) -> Depth {
        Depth {
            n: self.n + 1,
            ..self
        }
    }
}

impl ser::Error for CborError {
    fn custom<M: std::fmt::Display>(msg: M) -> Self {
        CborError::Shape(msg.to_string())
    }
}

/// Writes one item at `depth` into `out`.
struct Enc<'a> {
    out: &'a mut Vec<u8>,
    depth: Depth,
}

impl<'a> Enc<'a> {
    fn check(&self) -> Result<(), CborError> {
        if self.depth.n > MAX_DEPTH {
            return Err(CborError::TooDeep);
        }
        Ok(())
    }

    fn int(self, n: i128) -> Result<(), CborError> {
        self.check()?;
        match n {
            0.. => head(self.out, 0, u64::try_from(n).map_err(|_| out_of_range())?),
            _ => head(
                self.out,
                1,
                u64::try_from(-1 - n).map_err(|_| out_of_range())?,
            ),
        }
        Ok(())
    }

    fn text(self, s: &str) -> Result<(), CborError> {
        self.check()?;
        head(self.out, 3, s.len() as u64);
        self.out.extend_from_slice(s.as_bytes());
        Ok(())
    }

    /// A one-entry map `{variant: ...}`: how serde's enum variants with data
    /// become CBOR. The caller writes the value.
    fn variant(self, variant: &str) -> Result<Enc<'a>, CborError> {
        self.check()?;
        if self.depth.n + 1 > MAX_DEPTH {
            return Err(CborError::TooDeep);
        }
        head(self.out, 5, 1);
        head(self.out, 3, variant.len() as u64);
        self.out.extend_from_slice(variant.as_bytes());
        Ok(Enc {
            out: self.out,
            depth: self.depth.next(),
        })
    }
}

fn out_of_range() -> CborError {
    CborError::Shape("integer out of the 64-bit CBOR range".into())
}

/// Serializer methods for integer types: every integer goes through `int`.
macro_rules! ints {
    ($($method:ident: $t:ty),* $(,)?) => {
        $(
            fn $method(self, v: $t) -> Result<(), CborError> {
                self.int(v.into())
            }
        )*
    };
}

impl<'a> ser::Serializer for Enc<'a> {
    type Ok = ();
    type Error = CborError;
    type SerializeSeq = Seq<'a>;
    type SerializeTuple = Seq<'a>;
    type SerializeTupleStruct = Seq<'a>;
    type SerializeTupleVariant = Seq<'a>;
    type SerializeMap = Map<'a>;
    type SerializeStruct = Map<'a>;
    type SerializeStructVariant = Map<'a>;

    fn is_human_readable(&self) -> bool {
        !self.depth.compact
    }

    fn serialize_bool(self, v: bool) -> Result<(), CborError> {
        self.check()?;
        self.out.push(if v { 0xf5 } else { 0xf4 });
        Ok(())
    }
    ints! {
        serialize_i8: i8, serialize_i16: i16, serialize_i32: i32, serialize_i64: i64,
        serialize_i128: i128, serialize_u8: u8, serialize_u16: u16, serialize_u32: u32,
        serialize_u64: u64,
    }
    fn serialize_u128(self, v: u128) -> Result<(), CborError> {
        self.int(i128::try_from(v).map_err(|_| out_of_range())?)
    }
    fn serialize_f32(self, _: f32) -> Result<(), CborError> {
        Err(CborError::Float)
    }
    fn serialize_f64(self, _: f64) -> Result<(), CborError> {
        Err(CborError::Float)
    }
    fn serialize_char(self, v: char) -> Result<(), CborError> {
        self.text(v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_str(self, v: &str) -> Result<(), CborError> {
        self.text(v)
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), CborError> {
        self.check()?;
        head(self.out, 2, v.len() as u64);
        self.out.extend_from_slice(v);
        Ok(())
    }
    fn serialize_none(self) -> Result<(), CborError> {
        self.serialize_unit()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<(), CborError> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), CborError> {
        self.check()?;
        self.out.push(0xf6);
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), CborError> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), CborError> {
        self.text(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<(), CborError> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        v: &T,
    ) -> Result<(), CborError> {
        v.serialize(self.variant(variant)?)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Seq<'a>, CborError> {
        self.check()?;
        Ok(Seq::new(self.out, self.depth))
    }
    fn serialize_tuple(self, len: usize) -> Result<Seq<'a>, CborError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<Seq<'a>, CborError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Seq<'a>, CborError> {
        let depth = self.depth.next();
        let out = self.variant(variant)?.out;
        Ok(Seq::new(out, depth))
    }
    fn serialize_map(self, len: Option<usize>) -> Result<Map<'a>, CborError> {
        self.check()?;
        Ok(Map::new(self.out, self.depth, len.unwrap_or(0)))
    }
    fn serialize_struct(self, _: &'static str, len: usize) -> Result<Map<'a>, CborError> {
        self.serialize_map(Some(len))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Map<'a>, CborError> {
        let depth = self.depth.next();
        let out = self.variant(variant)?.out;
        Ok(Map::new(out, depth, len))
    }
}

/// An array: its items are written in place, then its head in front of them.
struct Seq<'a> {
    out: &'a mut Vec<u8>,
    depth: Depth,
    start: usize,
    n: u64,
}

impl<'a> Seq<'a> {
    fn new(out: &'a mut Vec<u8>, depth: Depth) -> Seq<'a> {
        let start = out.len();
        Seq {
            out,
            depth,
            start,
            n: 0,
        }
    }

    fn item<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), CborError> {
        self.n += 1;
        v.serialize(Enc {
            out: self.out,
            depth: self.depth.next(),
        })
    }

    fn finish(self) -> Result<(), CborError> {
        prepend_head(self.out, self.start, 4, self.n);
        Ok(())
    }
}

/// Puts the head of a container (`major`, `n` items) in front of its items,
/// which were written to `out[start..]`: nested containers share one buffer
/// instead of each gathering its items in its own.
fn prepend_head(out: &mut Vec<u8>, start: usize, major: u8, n: u64) {
    let end = out.len();
    head(out, major, n);
    let head_len = out.len() - end;
    out[start..].rotate_right(head_len);
}

/// serde has one trait per kind of sequence; all are arrays here.
macro_rules! array_impl {
    ($tr:ident, $method:ident) => {
        impl ser::$tr for Seq<'_> {
            type Ok = ();
            type Error = CborError;
            fn $method<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), CborError> {
                self.item(v)
            }
            fn end(self) -> Result<(), CborError> {
                self.finish()
            }
        }
    };
}

array_impl!(SerializeSeq, serialize_element);
array_impl!(SerializeTuple, serialize_element);
array_impl!(SerializeTupleStruct, serialize_field);
array_impl!(SerializeTupleVariant, serialize_field);

/// A map: entries are written in place as they come. If their keys arrive
/// in canonical order (as a struct's fields do when declared in that
/// order) the head is put in front and nothing moves; otherwise they are
/// put in order.
struct Map<'a> {
    out: &'a mut Vec<u8>,
    depth: Depth,
    start: usize,
    /// Per entry: where its key starts, where its value starts, where it ends.
    spans: Vec<(usize, usize, usize)>,
    key_start: usize,
    /// Whether every key so far sorts after the one before.
    in_order: bool,
}

impl<'a> Map<'a> {
    fn new(out: &'a mut Vec<u8>, depth: Depth, len: usize) -> Map<'a> {
        let start = out.len();
        Map {
            out,
            depth,
            start,
            spans: Vec::with_capacity(len),
            key_start: start,
            in_order: true,
        }
    }

    fn enc(&mut self) -> Enc<'_> {
        Enc {
            out: self.out,
            depth: self.depth.next(),
        }
    }

    fn key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), CborError> {
        self.key_start = self.out.len();
        k.serialize(self.enc())
    }

    fn value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), CborError> {
        let value_start = self.out.len();
        if let Some(&(k, v, _)) = self.spans.last() {
            self.in_order &= self.out[self.key_start..value_start] > self.out[k..v];
        }
        v.serialize(self.enc())?;
        self.spans
            .push((self.key_start, value_start, self.out.len()));
        Ok(())
    }

    fn finish(mut self) -> Result<(), CborError> {
        if self.in_order {
            prepend_head(self.out, self.start, 5, self.spans.len() as u64);
            return Ok(());
        }
        let entries = self.out.split_off(self.start);
        for s in &mut self.spans {
            *s = (s.0 - self.start, s.1 - self.start, s.2 - self.start);
        }
        write_map(self.out, &entries, &mut self.spans)
    }
}

impl ser::SerializeMap for Map<'_> {
    type Ok = ();
    type Error = CborError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), CborError> {
        self.key(k)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), CborError> {
        self.value(v)
    }
    fn end(self) -> Result<(), CborError> {
        self.finish()
    }
}

/// Structs (and struct variants' contents) are maps with text keys.
macro_rules! struct_impl {
    ($tr:ident) => {
        impl ser::$tr for Map<'_> {
            type Ok = ();
            type Error = CborError;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                k: &'static str,
                v: &T,
            ) -> Result<(), CborError> {
                self.key(k)?;
                self.value(v)
            }
            fn end(self) -> Result<(), CborError> {
                self.finish()
            }
        }
    };
}

struct_impl!(SerializeStruct);
struct_impl!(SerializeStructVariant);

#[cfg(test)]
mod tests {
    use super::super::{to_vec, Value};
    use super::*;
    use proptest::prelude::*;
    use serde::Serialize;
    use std::collections::BTreeMap;
    use std::mem::discriminant;

    /// Both encoders agree: the same bytes, or the same kind of refusal.
    fn same<T: Serialize + std::fmt::Debug>(t: &T) {
        let direct = to_canonical(t);
        // ciborium's value serializer is the independent reference.
        let via_value = Value::serialized(t)
            .map_err(|e| CborError::Shape(e.to_string()))
            .and_then(to_vec);
        match (&direct, &via_value) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{t:?}"),
            (Err(a), Err(b)) => assert_eq!(discriminant(a), discriminant(b), "{t:?}: {a} / {b}"),
            _ => panic!("{t:?}: direct {direct:?}, via a value {via_value:?}"),
        }
    }

    #[derive(Serialize, Debug, Clone)]
    enum Kind {
        Unit,
        New(u64),
        Pair(i64, String),
        Named { zz: bool, a: Option<u8> },
    }

    #[derive(Serialize, Debug, Clone)]
    struct Wrapper(u32);

    #[derive(Serialize, Debug, Clone)]
    struct Inner {
        #[serde(with = "serde_bytes")]
        b: Vec<u8>,
        n: i64,
        c: char,
    }

    /// Fields declared in canonical order: written in place, not sorted.
    #[derive(Serialize, Debug, Clone)]
    struct Ordered {
        z: u8,
        aa: Vec<Inner>,
        #[serde(skip_serializing_if = "Option::is_none")]
        ab: Option<Kind>,
        zzz: String,
    }

    #[derive(Serialize, Debug, Clone)]
    struct Outer {
        title: String,
        #[serde(rename = "type")]
        kind: Kind,
        id: u64,
        neg: i32,
        flag: bool,
        opt: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        skipped: Option<u8>,
        list: Vec<Inner>,
        kinds: Vec<Kind>,
        map: BTreeMap<String, u16>,
        intmap: BTreeMap<i64, ()>,
        tuple: (u8, String, Wrapper),
        ordered: Ordered,
    }

    fn kind() -> impl Strategy<Value = Kind> {
        prop_oneof![
            Just(Kind::Unit),
            any::<u64>().prop_map(Kind::New),
            (any::<i64>(), ".{0,30}").prop_map(|(a, b)| Kind::Pair(a, b)),
            (any::<bool>(), any::<Option<u8>>()).prop_map(|(zz, a)| Kind::Named { zz, a }),
        ]
    }

    fn inner() -> impl Strategy<Value = Inner> {
        (
            prop::collection::vec(any::<u8>(), 0..300),
            any::<i64>(),
            any::<char>(),
        )
            .prop_map(|(b, n, c)| Inner { b, n, c })
    }

    fn outer() -> impl Strategy<Value = Outer> {
        (
            (".{0,40}", kind(), any::<u64>(), any::<i32>(), any::<bool>()),
            (any::<Option<String>>(), any::<Option<u8>>()),
            prop::collection::vec(inner(), 0..4),
            prop::collection::vec(kind(), 0..4),
            prop::collection::btree_map(".{0,12}", any::<u16>(), 0..8),
            prop::collection::btree_map(any::<i64>(), Just(()), 0..8),
            (any::<u8>(), ".{0,5}", any::<u32>()),
            (any::<u8>(), prop::option::of(kind()), ".{0,5}"),
        )
            .prop_map(
                |((title, kind, id, neg, flag), (opt, skipped), list, kinds, map, intmap, t, o)| {
                    let ordered = Ordered {
                        z: o.0,
                        aa: list.clone(),
                        ab: o.1,
                        zzz: o.2,
                    };
                    Outer {
                        title,
                        kind,
                        id,
                        neg,
                        flag,
                        opt,
                        skipped,
                        list,
                        kinds,
                        map,
                        intmap,
                        tuple: (t.0, t.1, Wrapper(t.2)),
                        ordered,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn the_same_bytes_as_through_a_value(o in outer()) {
            same(&o);
            same(&o.list);
            same(&o.kind);
            same(&o.ordered);
        }
    }

    #[derive(Serialize, Debug)]
    struct Deep(Vec<Deep>);

    fn deep(n: usize) -> Deep {
        (0..n).fold(Deep(Vec::new()), |d, _| Deep(vec![d]))
    }

    /// Writes the same key twice.
    #[derive(Debug)]
    struct Twice;

    impl Serialize for Twice {
        fn serialize<S: ser::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use ser::SerializeMap;
            let mut m = s.serialize_map(Some(2))?;
            m.serialize_entry("k", &1)?;
            m.serialize_entry("k", &2)?;
            m.end()
        }
    }

    #[test]
    fn the_same_refusals_as_through_a_value() {
        for n in [0, 1, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, MAX_DEPTH + 5] {
            same(&deep(n));
            same(&vec![Kind::Named { zz: true, a: None }; 1]);
        }
        assert!(matches!(
            to_canonical(&deep(MAX_DEPTH + 1)),
            Err(CborError::TooDeep)
        ));
        same(&1.5f64);
        assert!(matches!(to_canonical(&1.5f64), Err(CborError::Float)));
        same(&Twice);
        assert!(to_canonical(&Twice).is_err());
        same(&u64::MAX);
        same(&i64::MIN);
        same(&((), Some(()), None::<u8>));
    }
}
