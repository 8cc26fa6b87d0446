//! The realistic image: deterministic, seeded 64 KiB blocks, 25 % zero, 25 % random and
//! 50 % text-like, so every tool in a run sees exactly the same bytes and a rerun with the
//! same seed reproduces them.
//!
//! Block `i`'s kind and content depend only on `(seed, i)`, so blocks can be generated in
//! parallel and in any order. `allocated < 1` leaves whole 32 MiB regions untouched (zero and,
//! in sparse/VHD/VHDX output, unallocated), which is how the "half allocated" dynamic disks of
//! the reader benchmark are made.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// Size of one generated block.
pub const BLOCK: usize = 64 << 10;
/// Granularity of `allocated`: a region is all data-mix or all zero.
pub const REGION: u64 = 32 << 20;

/// Output container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Plain image.
    Raw,
    /// Dynamic VHD (qemu `vpc`, subformat dynamic, force_size).
    Vhd,
    /// Dynamic VHDX (qemu default block size).
    Vhdx,
}

impl Format {
    /// qemu's driver name.
    pub fn qemu(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Vhd => "vpc",
            Format::Vhdx => "vhdx",
        }
    }
}

/// What to generate.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct GenSpec {
    /// Virtual size (e.g. 8GiB, 1GiB, 512MiB); rounded down to 64 KiB.
    #[arg(long, value_parser = crate::parse_size)]
    pub size: u64,
    /// Seed of the content.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Container to write.
    #[arg(long, value_enum, default_value_t = Format::Raw)]
    pub format: Format,
    /// Fraction of 32 MiB regions that hold the data mix; the others stay zero.
    #[arg(long, default_value_t = 1.0)]
    pub allocated: f64,
    /// Raw output: leave zero blocks as holes instead of writing zeros.
    #[arg(long)]
    pub sparse: bool,
}

/// What a block holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Zero,
    Random,
    Text,
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fast PRNG (xorshift64*), seeded per block.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The kind of block `i`.
pub fn kind(spec: &GenSpec, i: u64) -> Kind {
    let region = i * BLOCK as u64 / REGION;
    let r = splitmix(spec.seed ^ 0xa11c_a7ed ^ region.wrapping_mul(0x1000_0000_01b3));
    if (r >> 11) as f64 / (1u64 << 53) as f64 >= spec.allocated {
        return Kind::Zero;
    }
    match splitmix(spec.seed.wrapping_mul(31) ^ i) % 4 {
        0 => Kind::Zero,
        1 => Kind::Random,
        _ => Kind::Text,
    }
}

const SYLLABLES: [&str; 32] = [
    "an", "ber", "con", "da", "el", "for", "ge", "hal", "in", "jo", "ka", "le", "men", "no", "or",
    "pre", "qu", "re", "sto", "ter", "un", "ver", "wa", "xe", "yo", "zu", "the", "ing", "ion",
    "st", "de", "al",
];

/// A fixed vocabulary of 1024 pseudo-words (1–3 syllables).
/// Words in the vocabulary; entries from here on are phrases.
const WORDS: usize = 1024;
/// Phrases: the recurring word sequences of real text and the fixed templates of log lines.
const PHRASES: usize = 512;

/// `WORDS` words of 1–3 syllables, then `PHRASES` phrases of 3–10 of those words.
fn vocabulary() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = (0..WORDS as u64)
        .map(|w| {
            let h = splitmix(w ^ 0x5eed);
            let n = 1 + (h % 3) as usize;
            (0..n)
                .flat_map(|k| SYLLABLES[((h >> (8 + 5 * k)) & 31) as usize].bytes())
                .collect()
        })
        .collect();
    for p in 0..PHRASES as u64 {
        let mut rng = Rng(splitmix(p ^ 0xf4a5e) | 1);
        let n = 3 + (rng.next() % 8) as usize;
        let words: Vec<&[u8]> = (0..n)
            .map(|_| v[(rng.next() % WORDS as u64) as usize].as_slice())
            .collect();
        let phrase = words.join(&b' ');
        v.push(phrase);
    }
    v
}

/// Fills `buf` with block `i`'s bytes.
pub fn fill(spec: &GenSpec, vocab: &[Vec<u8>], i: u64, buf: &mut [u8]) -> Kind {
    let k = kind(spec, i);
    let mut rng = Rng(splitmix(spec.seed ^ i.wrapping_mul(0x9e37_79b9)) | 1);
    match k {
        Kind::Zero => buf.fill(0),
        Kind::Random => {
            for c in buf.chunks_mut(8) {
                let v = rng.next().to_le_bytes();
                c.copy_from_slice(&v[..c.len()]);
            }
        }
        Kind::Text => {
            // Zipf-like word choice (a few common words, a long tail), recurring phrases,
            // sentences, line breaks and numbers. Calibrated to DESIGN.md §5's reference mix:
            // the whole image compresses 2.7× with zstd -1 and 2.5× with --fast=1 (text
            // blocks about 4×, like logs and prose). Without the phrases (the first version
            // of this generator) the image gave 2.2×: words drawn independently leave LZ
            // nothing to match beyond single words.
            let mut pos = 0;
            let mut line = 0;
            let mut cap = true;
            while pos < buf.len() {
                let r = rng.next();
                let idx = if (r >> 32).is_multiple_of(PHRASE_ONE_IN) {
                    WORDS + ((r >> 8) % PHRASES as u64) as usize
                } else if r & 1 == 0 {
                    ((r >> 8) % 32) as usize
                } else {
                    ((r >> 8) % WORDS as u64) as usize
                };
                let mut word: &[u8] = &vocab[idx];
                let mut num = [0u8; 8];
                if (r >> 40).is_multiple_of(23) {
                    let n = (r >> 20) % 100_000;
                    let s = format!("{n}");
                    let l = s.len().min(8);
                    num[..l].copy_from_slice(&s.as_bytes()[..l]);
                    word = &num[..l];
                }
                for (j, &b) in word.iter().enumerate() {
                    if pos >= buf.len() {
                        break;
                    }
                    buf[pos] = if cap && j == 0 {
                        b.to_ascii_uppercase()
                    } else {
                        b
                    };
                    pos += 1;
                }
                cap = false;
                line += word.len() + 1;
                if pos < buf.len() {
                    let end = (r >> 50) % 12;
                    buf[pos] = if line > 72 {
                        line = 0;
                        b'\n'
                    } else if end == 0 {
                        cap = true;
                        b'.'
                    } else if end == 1 {
                        b','
                    } else {
                        b' '
                    };
                    pos += 1;
                }
            }
        }
    }
    k
}

/// One word in this many is a phrase (calibrates the ratio, see `fill`).
const PHRASE_ONE_IN: u64 = 3;

/// Writes the raw image to `path` (2 threads).
fn write_raw(spec: &GenSpec, path: &Path, sparse: bool) -> anyhow::Result<()> {
    let f = File::create(path).with_context(|| format!("{}: cannot create", path.display()))?;
    let blocks = spec.size / BLOCK as u64;
    f.set_len(blocks * BLOCK as u64)?;
    let vocab = vocabulary();
    let threads = 2u64;
    std::thread::scope(|s| -> anyhow::Result<()> {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let (f, vocab) = (&f, &vocab);
                s.spawn(move || -> std::io::Result<()> {
                    // Each thread writes runs of 16 blocks (1 MiB), interleaved.
                    let mut buf = vec![0u8; 16 * BLOCK];
                    let mut run = t;
                    while run * 16 < blocks {
                        let first = run * 16;
                        let n = (blocks - first).min(16) as usize;
                        let mut any_zero = false;
                        for b in 0..n {
                            let k = fill(
                                spec,
                                vocab,
                                first + b as u64,
                                &mut buf[b * BLOCK..][..BLOCK],
                            );
                            any_zero |= k == Kind::Zero;
                        }
                        if !sparse || !any_zero {
                            f.write_all_at(&buf[..n * BLOCK], first * BLOCK as u64)?;
                        } else {
                            for b in 0..n {
                                let blk = &buf[b * BLOCK..][..BLOCK];
                                if kind(spec, first + b as u64) != Kind::Zero {
                                    f.write_all_at(blk, (first + b as u64) * BLOCK as u64)?;
                                }
                            }
                        }
                        run += threads;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in hs {
            h.join()
                .map_err(|_| anyhow::anyhow!("generator thread panicked"))??;
        }
        Ok(())
    })?;
    f.sync_all()?;
    Ok(())
}

/// Generates the image at `out` in the requested container.
pub fn generate(spec: &GenSpec, out: &Path) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&spec.allocated) {
        bail!("--allocated {} must be within 0..=1", spec.allocated);
    }
    match spec.format {
        Format::Raw => write_raw(spec, out, spec.sparse),
        Format::Vhd | Format::Vhdx => {
            let tmp = PathBuf::from(format!("{}.raw-tmp", out.display()));
            write_raw(spec, &tmp, true)?;
            let opts = match spec.format {
                Format::Vhd => "subformat=dynamic,force_size=on",
                _ => "subformat=dynamic",
            };
            let st = Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", spec.format.qemu(), "-o", opts])
                .arg(&tmp)
                .arg(out)
                .status()
                .context("qemu-img not found: install qemu-utils (ops/setup.sh)")?;
            let _ = std::fs::remove_file(&tmp);
            if !st.success() {
                bail!("qemu-img convert to {} failed: {st}", spec.format.qemu());
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(allocated: f64) -> GenSpec {
        GenSpec {
            size: 64 << 20,
            seed: 7,
            format: Format::Raw,
            allocated,
            sparse: false,
        }
    }

    #[test]
    fn mix_is_a_quarter_zero_a_quarter_random_half_text() {
        let s = spec(1.0);
        let n = 20_000u64;
        let mut c = [0u64; 3];
        for i in 0..n {
            c[kind(&s, i) as usize] += 1;
        }
        let f = |x: u64| x as f64 / n as f64;
        assert!((f(c[0]) - 0.25).abs() < 0.02, "{c:?}");
        assert!((f(c[1]) - 0.25).abs() < 0.02, "{c:?}");
        assert!((f(c[2]) - 0.50).abs() < 0.02, "{c:?}");
    }

    #[test]
    fn blocks_are_deterministic_and_text_compresses_like_text() {
        let s = spec(1.0);
        let v = vocabulary();
        let i = (0..).find(|&i| kind(&s, i) == Kind::Text).unwrap();
        let (mut a, mut b) = (vec![0u8; BLOCK], vec![0u8; BLOCK]);
        fill(&s, &v, i, &mut a);
        fill(&s, &v, i, &mut b);
        assert_eq!(a, b);
        let r = BLOCK as f64 / zstd::bulk::compress(&a, 1).unwrap().len() as f64;
        assert!((2.0..4.5).contains(&r), "text ratio {r}");
    }
}
