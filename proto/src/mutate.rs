//! Test support: byte-level mutations of valid encodings, so every decoder's property tests
//! see inputs that are *almost* right (a flipped bit past a checksum, a field shifted by an
//! inserted byte, a structure cut short) and not only random noise, which most decoders
//! reject at the first signature check.

use proptest::prelude::*;

/// One mutation: `(kind, position, value)`; [`apply`] reads them.
pub(crate) type Mutation = (u8, usize, u8);

/// One to six mutations; kinds are weighted towards in-place changes (xor 8/20, set 4/20,
/// insert 3/20, remove 3/20, truncate 2/20). Half of the positions fall in the first 256
/// bytes, where headers and their fields live, so large zero-padded structures are still hit
/// where it matters.
pub(crate) fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    proptest::collection::vec((0u8..20, any::<usize>(), any::<u8>()), 1..6)
}

fn pos(p: usize, len: usize) -> usize {
    if len == 0 {
        0
    } else if p & 1 == 1 {
        (p >> 1) % len.min(256)
    } else {
        (p >> 1) % len
    }
}

/// Applies `ms` to `buf` in order.
pub(crate) fn apply(buf: &mut Vec<u8>, ms: &[Mutation]) {
    for &(kind, p, v) in ms {
        let len = buf.len();
        match kind {
            0..=7 if len > 0 => buf[pos(p, len)] ^= v | 1,
            8..=11 if len > 0 => buf[pos(p, len)] = v,
            12..=14 => {
                let at = pos(p, len + 1).min(len);
                let n = usize::from(v % 8) + 1;
                buf.splice(at..at, std::iter::repeat_n(v, n));
            }
            15..=17 if len > 0 => {
                let at = pos(p, len);
                let end = (at + usize::from(v % 16) + 1).min(len);
                buf.drain(at..end);
            }
            18.. => buf.truncate(pos(p, len + 1)),
            _ => {}
        }
    }
}

/// `valid` mutated by `ms`.
pub(crate) fn mutated(valid: &[u8], ms: &[Mutation]) -> Vec<u8> {
    let mut b = valid.to_vec();
    apply(&mut b, ms);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_changes_the_buffer_as_named() {
        let v = vec![0u8; 10];
        assert_eq!(mutated(&v, &[(0, 4, 0)]), [0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(mutated(&v, &[(8, 6, 7)])[3], 7);
        assert_eq!(mutated(&v, &[(12, 0, 2)]).len(), 13);
        assert_eq!(mutated(&v, &[(15, 0, 1)]).len(), 8);
        assert_eq!(mutated(&v, &[(19, 8, 0)]).len(), 4);
        assert!(mutated(&[], &[(0, 3, 1), (15, 3, 3)]).is_empty());
    }
}
