//! Test bytes for the pipeline's tests: incompressible noise and text-like words.

/// `n` incompressible bytes (xorshift from `seed`).
pub fn noise(n: usize, mut x: u64) -> Vec<u8> {
    (0..n).map(|_| xorshift(&mut x) as u8).collect()
}

/// `n` bytes of words from a vocabulary of `words`, seeded.
pub fn words(n: usize, mut x: u64, words: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 24);
    while out.len() < n {
        out.extend_from_slice(format!("w{} ", xorshift(&mut x) % words).as_bytes());
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
