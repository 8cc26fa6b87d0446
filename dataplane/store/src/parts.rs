//! The bytes of one write held in several slices, in order: a received frame's body as QUIC
//! delivered it (one slice per packet's stream data), hashed and written where it lies
//! instead of being joined into one buffer first (`bench/results/ANALYSIS.md`, session 15:
//! the join was 5 % of a receiver's CPU on loopback).

use std::borrow::Cow;

/// Consecutive slices that make up one run of bytes. Empty slices are allowed anywhere.
#[derive(Debug, Clone, Copy)]
pub struct Parts<'a> {
    slices: &'a [&'a [u8]],
    len: usize,
}

impl<'a> Parts<'a> {
    /// The bytes of `slices`, one after the other.
    pub fn new(slices: &'a [&'a [u8]]) -> Parts<'a> {
        Parts {
            slices,
            len: slices.iter().map(|s| s.len()).sum(),
        }
    }

    /// Total length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The slices, empty ones included.
    pub fn slices(&self) -> &'a [&'a [u8]] {
        self.slices
    }

    /// The slices that hold `[a, b)`, cut to it (no empty ones), or `None` when the range
    /// is not inside the bytes.
    pub fn sub(&self, a: usize, b: usize) -> Option<Vec<&'a [u8]>> {
        if a > b || b > self.len {
            return None;
        }
        let mut out = Vec::new();
        let mut at = 0usize;
        for s in self.slices {
            let (s0, s1) = (at, at + s.len());
            at = s1;
            if s.is_empty() || s1 <= a || s0 >= b {
                continue;
            }
            out.push(&s[a.max(s0) - s0..b.min(s1) - s0]);
        }
        Some(out)
    }

    /// The bytes `[a, b)`: borrowed when one slice holds them all, else copied together;
    /// `None` when the range is not inside the bytes.
    pub fn range(&self, a: usize, b: usize) -> Option<Cow<'a, [u8]>> {
        let v = self.sub(a, b)?;
        Some(match v.as_slice() {
            [] => Cow::Borrowed(&[][..]),
            [one] => Cow::Borrowed(*one),
            many => Cow::Owned(many.concat()),
        })
    }

    /// All the bytes in one buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        self.slices.concat()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_borrow_inside_a_slice_and_copy_across_slices() {
        let (a, b, c) = (b"0123".as_slice(), b"".as_slice(), b"456789".as_slice());
        let all = [a, b, c];
        let p = Parts::new(&all);
        assert_eq!(p.len(), 10);
        assert_eq!(p.to_vec(), b"0123456789");
        assert!(matches!(p.range(1, 3), Some(Cow::Borrowed(b"12"))));
        assert!(matches!(p.range(5, 10), Some(Cow::Borrowed(b"56789"))));
        let across = p.range(2, 6).unwrap();
        assert!(matches!(across, Cow::Owned(_)));
        assert_eq!(&across[..], b"2345");
        assert_eq!(&p.range(4, 4).unwrap()[..], b"");
        assert!(p.range(3, 11).is_none());
        assert!(p.range(6, 5).is_none());
        assert_eq!(p.sub(0, 10).unwrap(), vec![a, c]);
        assert_eq!(p.sub(3, 5).unwrap(), vec![&a[3..], &c[..1]]);
        let none: [&[u8]; 0] = [];
        assert!(Parts::new(&none).is_empty());
    }
}
