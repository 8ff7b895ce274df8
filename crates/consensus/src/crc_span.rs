//! CRC-32C of any span of a buffer in about a microsecond, from checksums
//! of its prefixes kept every KiB.
//!
//! Looking for a valid record after a torn one means checksumming, at every
//! offset, as many bytes as the offset claims: quadratic in the tail, which
//! is a client's bytes. CRC-32C is linear, so with `P(k)` the checksum of
//! the first `k` bytes, the checksum of bytes `a..b` is
//! `P(b) ^ shift(P(a), b - a)`, where `shift(c, n)` is `c` carried past `n`
//! zero bytes (`crc32c_combine(c, 0, n)`), a product of precomputed
//! operators, one per bit of `n`.

/// The CRC-32C polynomial, reflected.
const POLY: u32 = 0x82F6_3B78;
/// Bytes between two kept prefix checksums.
const STRIDE: usize = 1024;

/// A 32×32 matrix over GF(2), one column per bit: a linear map of CRC values.
type Operator = [u32; 32];

fn times(op: &Operator, mut v: u32) -> u32 {
    let mut sum = 0;
    let mut i = 0;
    while v != 0 {
        if v & 1 == 1 {
            sum ^= op[i];
        }
        v >>= 1;
        i += 1;
    }
    sum
}

fn square(op: &Operator) -> Operator {
    let mut sq = [0; 32];
    for (s, col) in sq.iter_mut().zip(op) {
        *s = times(op, *col);
    }
    sq
}

/// Checksums of the spans of one buffer.
pub struct CrcSpans<'a> {
    data: &'a [u8],
    /// `prefix[j]` is the checksum of `data[..j * STRIDE]`.
    prefix: Vec<u32>,
    /// `zeros[k]` carries a checksum past 2^k zero bytes.
    zeros: Vec<Operator>,
}

impl<'a> CrcSpans<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        let mut prefix = Vec::with_capacity(data.len() / STRIDE + 1);
        let mut crc = 0;
        prefix.push(crc);
        for chunk in data.chunks_exact(STRIDE) {
            crc = crc32c::crc32c_append(crc, chunk);
            prefix.push(crc);
        }
        // One zero bit, then squared up to one zero byte, then doubled.
        let mut bit: Operator = [0; 32];
        bit[0] = POLY;
        for (n, col) in bit.iter_mut().enumerate().skip(1) {
            *col = 1 << (n - 1);
        }
        let mut op = square(&square(&square(&bit)));
        let mut zeros = Vec::with_capacity(usize::BITS as usize);
        for _ in 0..usize::BITS {
            zeros.push(op);
            op = square(&op);
        }
        CrcSpans {
            data,
            prefix,
            zeros,
        }
    }

    /// `c` carried past `n` zero bytes: `crc32c_combine(c, 0, n)`.
    pub fn shift(&self, mut c: u32, mut n: usize) -> u32 {
        let mut k = 0;
        while n != 0 {
            if n & 1 == 1 {
                c = times(&self.zeros[k], c);
            }
            n >>= 1;
            k += 1;
        }
        c
    }

    /// The checksum of `data[..k]`.
    fn prefix(&self, k: usize) -> u32 {
        let j = k / STRIDE;
        crc32c::crc32c_append(self.prefix[j], &self.data[j * STRIDE..k])
    }

    /// `crc32c_append(seed, &data[a..b])`.
    pub fn span(&self, seed: u32, a: usize, b: usize) -> u32 {
        let n = b - a;
        let plain = self.prefix(b) ^ self.shift(self.prefix(a), n);
        self.shift(seed, n) ^ plain
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_match_direct_checksums() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let data: Vec<u8> = (0..3 * STRIDE + 777).map(|_| next() as u8).collect();
        let spans = CrcSpans::new(&data);
        for n in [0, 1, 7, 4095, 4096, 4097, 1 << 20, usize::MAX >> 3] {
            let c = next() as u32;
            assert_eq!(
                spans.shift(c, n),
                crc32c::crc32c_combine(c, 0, n),
                "n = {n}"
            );
        }
        for _ in 0..500 {
            let a = next() as usize % data.len();
            let b = a + next() as usize % (data.len() - a + 1);
            let seed = next() as u32;
            assert_eq!(
                spans.span(seed, a, b),
                crc32c::crc32c_append(seed, &data[a..b]),
                "{a}..{b}"
            );
        }
    }
}
