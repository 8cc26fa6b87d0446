//! Deterministic test bytes: one generator instead of a copy per test file, so a test's data
//! is reproducible from its seed and the seeds of different tests do not collide by accident.

/// Incompressible bytes: one xorshift64 step per byte. The seed is mixed first, so small
/// seeds (1, 2, 3 …) give unrelated streams and seed 0 does not give zeros.
pub fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n).map(|_| xorshift(&mut x) as u8).collect()
}

/// Text-like bytes from a small vocabulary: what zstd compresses several times over.
pub fn text(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(n + 16);
    while out.len() < n {
        let w = xorshift(&mut x);
        out.extend_from_slice(format!("page{} blob{} ", w % 300, w % 7).as_bytes());
    }
    out.truncate(n);
    out
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_give_different_reproducible_streams() {
        assert_eq!(noise(1, 4096), noise(1, 4096));
        assert_ne!(noise(1, 4096), noise(2, 4096));
        assert!(noise(0, 4096).iter().any(|&b| b != 0));
        assert_eq!(text(3, 1000).len(), 1000);
        assert_ne!(text(3, 1000), text(4, 1000));
    }

    #[test]
    fn noise_uses_every_byte_value_and_text_only_its_vocabulary() {
        let mut seen = [false; 256];
        noise(7, 1 << 16)
            .iter()
            .for_each(|&b| seen[b as usize] = true);
        assert!(seen.iter().all(|&s| s), "noise misses byte values");
        assert!(text(7, 1 << 16)
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b' '));
    }
}
