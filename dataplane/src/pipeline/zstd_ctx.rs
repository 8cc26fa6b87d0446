//! zstd contexts kept per thread.
//!
//! `zstd::bulk::compress` and `decompress` create and free a context per call. A level-9
//! compression context holds megabytes of match tables, and with the fixed 1 MiB mmap
//! threshold of [`crate::memory`] every such allocation is a fresh mapping: page faults and
//! zeroing on each 1 MiB extent, paid again on the next. The CPU threads of the pipeline and
//! the receiver's blocking threads each keep one context (and the receiver one output
//! buffer) instead.

use std::cell::RefCell;

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
    static OUTPUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Largest match tables a compression context gets (log2 of entries, 4 bytes each): level
/// 9's, 4 + 8 MiB. zstd's levels 10–12 grow them to 24–48 MiB, which the 4 MiB frames of the
/// pipeline do not use (bench image, 4 MiB frames: level 11 gives 356.5 MB per GiB with
/// these tables and with its own; level 9 358.6), and a context per CPU thread would carry
/// a many-core sender past its 256 MiB. What buys ratio there is the deeper search, which
/// stays. Levels from 13 (binary-tree match finders) keep zstd's own tables.
const CHAIN_LOG_CAP: u32 = 20;
const HASH_LOG_CAP: u32 = 21;

/// Sets `z` up for `level`: zstd's parameters for it, the tables of levels 10–12 capped.
fn configure(z: &mut zstd::bulk::Compressor<'static>, level: i32) -> std::io::Result<()> {
    use zstd::zstd_safe::{CParameter, ResetDirective};
    let err = |e| std::io::Error::other(zstd::zstd_safe::get_error_name(e));
    z.context_mut()
        .reset(ResetDirective::Parameters)
        .map_err(err)?;
    z.set_compression_level(level)?;
    if (10..=12).contains(&level) {
        z.set_parameter(CParameter::ChainLog(CHAIN_LOG_CAP))?;
        z.set_parameter(CParameter::HashLog(HASH_LOG_CAP))?;
    }
    Ok(())
}

/// One zstd frame of `src` at `level`, with this thread's context.
pub fn compress(src: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        match c.as_mut() {
            Some((l, z)) if *l == level => z.compress(src),
            Some((l, z)) => {
                configure(z, level)?;
                *l = level;
                z.compress(src)
            }
            None => {
                let mut z = zstd::bulk::Compressor::new(level)?;
                configure(&mut z, level)?;
                let out = z.compress(src);
                *c = Some((level, z));
                out
            }
        }
    })
}

/// Decompresses one frame that must yield exactly `len` bytes and hands them to `f`
/// (`None` when the payload is not such a frame). The bytes live in this thread's buffer,
/// which keeps its capacity for the next extent; the decompressor writes at most the
/// buffer's capacity, which is at least `len` and never more than the largest extent seen.
pub fn with_decompressed<T>(src: &[u8], len: usize, f: impl FnOnce(Option<&[u8]>) -> T) -> T {
    let out = OUTPUT.with(|o| std::mem::take(&mut *o.borrow_mut()));
    let mut out = out;
    out.clear();
    out.reserve(len);
    let ok = DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = zstd::bulk::Decompressor::new().ok();
        }
        match d.as_mut() {
            Some(d) => matches!(d.decompress_to_buffer(src, &mut out), Ok(n) if n == len),
            None => false,
        }
    });
    let r = f(ok.then_some(&out[..]));
    OUTPUT.with(|o| *o.borrow_mut() = out);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_are_reused_across_levels_and_lengths_are_enforced() {
        let text: Vec<u8> = b"page blob "
            .iter()
            .cycle()
            .take(300_000)
            .copied()
            .collect();
        for level in [3, 9, 3, -1] {
            let c = compress(&text, level).unwrap();
            assert!(c.len() < text.len() / 10);
            assert_eq!(zstd::bulk::decompress(&c, text.len()).unwrap(), text);
            with_decompressed(&c, text.len(), |d| assert_eq!(d, Some(&text[..])));
            // A frame that yields more or fewer bytes than declared is refused.
            with_decompressed(&c, text.len() - 1, |d| assert!(d.is_none()));
            with_decompressed(&c, text.len() + 512, |d| assert!(d.is_none()));
        }
        with_decompressed(b"not zstd", 512, |d| assert!(d.is_none()));
        // A small extent after a large one still yields exactly its bytes.
        let small = compress(&text[..4096], 1).unwrap();
        with_decompressed(&small, 4096, |d| assert_eq!(d, Some(&text[..4096])));
    }

    /// Text with some variety, so the match finders' tables matter.
    fn words(len: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(format!("w{} ", x % 5000).as_bytes());
        }
        out.truncate(len);
        out
    }

    fn context_bytes() -> usize {
        COMPRESSOR.with(|c| {
            c.borrow_mut()
                .as_mut()
                .map_or(0, |(_, z)| z.context_mut().sizeof())
        })
    }

    #[test]
    fn levels_10_to_12_keep_level_9s_tables_and_the_cap_does_not_leak_into_other_levels() {
        let text = words(4 << 20);
        compress(&text, 9).unwrap();
        let level9 = context_bytes();
        for level in [11, 12] {
            let c = compress(&text, level).unwrap();
            assert_eq!(zstd::bulk::decompress(&c, text.len()).unwrap(), text);
            assert!(
                context_bytes() <= level9 + (1 << 20),
                "level {level}: {} bytes of context against level 9's {level9}",
                context_bytes()
            );
        }
        // Switching away from a capped level gives zstd's own parameters again.
        for level in [13, 9, 3] {
            let c = compress(&text, level).unwrap();
            assert_eq!(
                c,
                zstd::bulk::compress(&text, level).unwrap(),
                "level {level} after a capped level"
            );
        }
    }
}
