//! Realistic disk content for demos and tests: 64 KiB blocks, a quarter zero (free space), a
//! quarter random (compressed or encrypted files), half text-like (logs, configs, code),
//! deterministic for a seed.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

/// Block size of the mix.
pub const BLOCK: usize = 64 << 10;

/// xorshift64*: fast, deterministic, good enough to defeat compression.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeds the generator (0 is remapped: xorshift must not start at zero).
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    /// Next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn fill(&mut self, b: &mut [u8]) {
        for c in b.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

const WORDS: &[&str] = &[
    "replication",
    "disk",
    "error",
    "INFO",
    "WARN",
    "request",
    "kernel",
    "volume",
    "the",
    "of",
    "and",
    "to",
    "vm",
    "cycle",
    "2026-11-26T06:00:00Z",
    "GET",
    "/api/v1/items",
    "200",
    "user",
    "session",
    "timeout",
    "retry",
    "block",
    "offset",
    "{",
    "}",
    "=",
    ";",
    "fn",
    "return",
    "config",
    "value",
    "true",
    "false",
    "null",
    "0x7f3a",
    "#include",
    "<stdio.h>",
];

fn text_block(rng: &mut Rng, b: &mut [u8]) {
    let mut i = 0;
    while i < b.len() {
        let w = WORDS[(rng.next_u64() % WORDS.len() as u64) as usize].as_bytes();
        let sep: &[u8] = if rng.next_u64().is_multiple_of(9) {
            b"\n"
        } else {
            b" "
        };
        for &c in w.iter().chain(sep) {
            if i < b.len() {
                b[i] = c;
                i += 1;
            }
        }
    }
}

/// What block `i` holds under `seed`: 0 zero, 1 random, 2 text.
pub fn block_kind(seed: u64, i: u64) -> u8 {
    let mut r = Rng::new(seed ^ i.wrapping_mul(0xd6e8_feb8_6659_fd93));
    match r.next_u64() % 4 {
        0 => 0,
        1 => 1,
        _ => 2,
    }
}

/// Writes `size` bytes of the mix to `path` as a raw file, leaving zero blocks as holes.
pub fn write_raw(path: &Path, size: u64, seed: u64) -> std::io::Result<()> {
    let f = File::create(path)?;
    f.set_len(size)?;
    let mut w = BufWriter::with_capacity(4 << 20, f);
    let mut rng = Rng::new(seed);
    let mut buf = vec![0u8; BLOCK];
    let mut off = 0u64;
    let mut i = 0u64;
    use std::io::Seek;
    while off < size {
        let n = ((size - off) as usize).min(BLOCK);
        match block_kind(seed, i) {
            0 => {
                w.seek(std::io::SeekFrom::Current(n as i64))?;
            }
            1 => {
                rng.fill(&mut buf[..n]);
                w.write_all(&buf[..n])?;
            }
            _ => {
                text_block(&mut rng, &mut buf[..n]);
                w.write_all(&buf[..n])?;
            }
        }
        off += n as u64;
        i += 1;
    }
    w.flush()?;
    Ok(())
}
