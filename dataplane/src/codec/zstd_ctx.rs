//! zstd contexts: compression contexts shared by the process, decompression per thread.
//!
//! `zstd::bulk::compress` and `decompress` create and free a context per call. A level-9
//! compression context holds megabytes of match tables, and with the fixed 1 MiB mmap
//! threshold of [`crate::memory`] every such allocation is a fresh mapping: page faults and
//! zeroing on each 1 MiB extent, paid again on the next. So contexts are kept.
//!
//! Compression contexts live in one pool for the whole process, at most one per CPU: every
//! disk pass runs a CPU thread per core, and several VMs copy at once, so contexts per thread
//! would be VMs × cores of them (14.7 MiB each from level 9: four VMs on two cores held 118
//! MiB of match tables where two contexts keep both cores busy). A thread that finds every
//! context in use waits; more threads than cores compressing would not go faster anyway.
//! The receiver's blocking threads each keep one decompression context (one-shot: it holds
//! no window, the frame is decompressed straight into the output). The output buffers come
//! from [`crate::memory::pool`], not one per thread: a thread kept its 4 MiB buffer resident
//! as long as it lived, and the receiver into Azure had 8–9 of them (34 MiB at its peak,
//! `bench/results/ANALYSIS.md`, session 14) whether or not a write was running.

use std::cell::RefCell;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};

use crate::memory::PooledBuf;

thread_local! {
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// Capacity of every decompression buffer: the largest extent. Buffers of one size fit every
/// extent, so the pool hands each one back to the next extent whatever its length, and a
/// small extent's buffer never lands in a thread's heap (untouched pages cost nothing).
const OUTPUT_CAPACITY: usize = vdrep_proto::wire::MAX_EXTENT_LEN as usize;

/// Most compression contexts on any host. Eight at level 9–12 are 118 MiB, which with the
/// 64 MiB of prepared extents and the 32 MiB QUIC window keeps a sender on a many-core host
/// under 256 MiB; eight compress faster than a 10 Gbit/s link at the levels fast links get
/// (level 1: ~400 MB/s each), and slow links that get the high levels need few.
const MAX_CONTEXTS: usize = 8;

/// A compression context and the level it is set up for.
type Ctx = (i32, zstd::bulk::Compressor<'static>);

/// The process's compression contexts.
struct Pool {
    state: Mutex<PoolState>,
    returned: Condvar,
    /// Most contexts that may exist: the host's CPUs, at most [`MAX_CONTEXTS`].
    limit: usize,
}

#[derive(Default)]
struct PoolState {
    idle: Vec<Ctx>,
    /// Contexts in existence, idle or in use.
    live: usize,
    /// Highest `live` so far.
    peak: usize,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool {
        state: Mutex::new(PoolState::default()),
        returned: Condvar::new(),
        limit: std::thread::available_parallelism().map_or(2, |n| n.get().min(MAX_CONTEXTS)),
    })
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // The state is a list and two counters, consistent after every statement.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A context set up for `level`: an idle one at that level, else any idle one, else a
    /// new one while fewer than `limit` exist, else the next one returned.
    fn take(&self, level: i32) -> std::io::Result<Ctx> {
        let mut st = self.lock();
        loop {
            if let Some(i) = st.idle.iter().position(|(l, _)| *l == level) {
                return Ok(st.idle.swap_remove(i));
            }
            let reuse = st.idle.pop();
            if reuse.is_some() || st.live < self.limit {
                if reuse.is_none() {
                    st.live += 1;
                    st.peak = st.peak.max(st.live);
                }
                drop(st);
                let made = match reuse {
                    Some((_, mut z)) => configure(&mut z, level).map(|()| z),
                    None => zstd::bulk::Compressor::new(level)
                        .and_then(|mut z| configure(&mut z, level).map(|()| z)),
                };
                return match made {
                    Ok(z) => Ok((level, z)),
                    Err(e) => {
                        // The context is gone; let a waiting thread make another.
                        self.lock().live -= 1;
                        self.returned.notify_one();
                        Err(e)
                    }
                };
            }
            st = self.returned.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn give(&self, ctx: Ctx) {
        self.lock().idle.push(ctx);
        self.returned.notify_one();
    }
}

/// Largest match tables a compression context gets (log2 of entries, 4 bytes each): level
/// 9's, 4 + 8 MiB. zstd's levels 10–12 grow them to 24–48 MiB, which the 4 MiB frames of the
/// pipeline do not use (bench image, 4 MiB frames: level 11 gives 356.5 MB per GiB with
/// these tables and with its own; level 9 358.6), and a context per CPU thread would carry
/// a many-core sender past its 256 MiB. What buys ratio there is the deeper search, which
/// stays. Levels from 13 (binary-tree match finders) keep zstd's own tables.
const CHAIN_LOG_CAP: u32 = 20;
const HASH_LOG_CAP: u32 = 21;
/// Shortest match of levels 10–12 (zstd's own: 5). On text a 5-byte match (a short word)
/// costs about what its literals do; matching from 6 bytes leaves the lazy search for the
/// longer ones: the bench image's text blocks in 2 MiB frames (what a 4 MiB packed write of
/// the mix holds) 0.6 % smaller at level 11 for the same CPU (zstd 1.5 CLI, 64 MiB of text:
/// 10.49 against 10.55 MB; 7 gives the same as 6, 4 gives 10.75).
const MIN_MATCH_HIGH: u32 = 6;

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
        z.set_parameter(CParameter::MinMatch(MIN_MATCH_HIGH))?;
    }
    Ok(())
}

/// One zstd frame of `src` at `level`, with one of the process's contexts.
pub fn compress(src: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    let p = pool();
    let mut ctx = p.take(level)?;
    let out = ctx.1.compress(src);
    p.give(ctx);
    out
}

/// One zstd frame of `parts` back to back at `level`, after `prefix` in the same buffer:
/// a packed write's map and frame without gathering its blocks into one buffer first
/// (zstd's streaming mode reads them one after another; the frame is the same as of the
/// joined bytes, its header names their total length).
pub fn compress_parts(prefix: &[u8], parts: &[&[u8]], level: i32) -> std::io::Result<Vec<u8>> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(prefix.len() + zstd::zstd_safe::compress_bound(total));
    out.extend_from_slice(prefix);
    let p = pool();
    let mut ctx = p.take(level)?;
    let r = stream_parts(ctx.1.context_mut(), &mut out, parts, total as u64);
    if r.is_err() {
        // A failed frame leaves the session midway; the next user starts a new one.
        let _ = ctx
            .1
            .context_mut()
            .reset(zstd::zstd_safe::ResetDirective::SessionOnly);
    }
    p.give(ctx);
    r.map(|()| out)
}

fn stream_parts(
    cctx: &mut zstd::zstd_safe::CCtx<'static>,
    out: &mut Vec<u8>,
    parts: &[&[u8]],
    total: u64,
) -> std::io::Result<()> {
    use zstd::zstd_safe::{zstd_sys::ZSTD_EndDirective, InBuffer, OutBuffer, ResetDirective};
    let err = |e| std::io::Error::other(zstd::zstd_safe::get_error_name(e));
    cctx.reset(ResetDirective::SessionOnly).map_err(err)?;
    cctx.set_pledged_src_size(Some(total)).map_err(err)?;
    for part in parts {
        let mut input = InBuffer::around(part);
        while input.pos < part.len() {
            reserve_some(out);
            let pos = out.len();
            let mut o = OutBuffer::around_pos(out, pos);
            cctx.compress_stream2(&mut o, &mut input, ZSTD_EndDirective::ZSTD_e_continue)
                .map_err(err)?;
        }
    }
    loop {
        reserve_some(out);
        let pos = out.len();
        let mut o = OutBuffer::around_pos(out, pos);
        let left = cctx
            .compress_stream2(
                &mut o,
                &mut InBuffer::around(&[]),
                ZSTD_EndDirective::ZSTD_e_end,
            )
            .map_err(err)?;
        if left == 0 {
            return Ok(());
        }
    }
}

/// Room for zstd to write into; the initial capacity (the bound for the whole frame) makes
/// this a no-op in practice.
fn reserve_some(out: &mut Vec<u8>) {
    if out.capacity() - out.len() < 1024 {
        out.reserve(64 << 10);
    }
}

/// Decompresses one frame that must yield exactly `len` bytes and hands them to `f`
/// (`None` when the payload is not such a frame). The bytes live in a pooled buffer, back
/// in the pool once `f` returns; the decompressor writes at most the buffer's capacity,
/// the largest extent (or `len` if larger), twice that at most for a reused buffer.
pub fn with_decompressed<T>(src: &[u8], len: usize, f: impl FnOnce(Option<&[u8]>) -> T) -> T {
    let mut out = PooledBuf::with_capacity(len.max(OUTPUT_CAPACITY));
    let ok = DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = zstd::bulk::Decompressor::new().ok();
        }
        match d.as_mut() {
            Some(d) => matches!(d.decompress_to_buffer(src, &mut *out), Ok(n) if n == len),
            None => false,
        }
    });
    f(ok.then_some(&out[..]))
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
        // A frame yielding more than the largest extent is refused, not decompressed whole.
        let big = compress(&vec![7u8; OUTPUT_CAPACITY * 2 + 4096], 1).unwrap();
        with_decompressed(&big, OUTPUT_CAPACITY, |d| assert!(d.is_none()));
        // A small extent after a large one still yields exactly its bytes.
        let small = compress(&text[..4096], 1).unwrap();
        with_decompressed(&small, 4096, |d| assert_eq!(d, Some(&text[..4096])));
    }

    #[test]
    fn decompression_buffers_are_shared_through_the_pool_not_kept_per_thread() {
        let text = words(1 << 20);
        let c = compress(&text, 3).unwrap();
        let first = with_decompressed(&c, text.len(), |d| d.unwrap().as_ptr() as usize);
        // Another thread, a shorter extent: the same buffer, from the pool, whatever the
        // length; the thread that made it keeps nothing.
        let small = compress(&text[..8192], 3).unwrap();
        let other = std::thread::spawn(move || {
            with_decompressed(&small, 8192, |d| d.unwrap().as_ptr() as usize)
        })
        .join()
        .unwrap();
        assert_eq!(first, other);
        assert!(crate::memory::pool::idle_bytes() >= OUTPUT_CAPACITY);
    }

    #[test]
    fn a_frame_of_parts_is_the_frame_of_the_joined_bytes_after_the_prefix() {
        let text = words(600_000);
        let parts = [&text[..100_000], &text[250_000..600_000], &text[..4096]];
        let joined: Vec<u8> = parts.concat();
        for level in [1, 11, 3] {
            let c = compress_parts(b"map", &parts, level).unwrap();
            assert_eq!(&c[..3], b"map");
            assert_eq!(
                zstd::bulk::decompress(&c[3..], joined.len()).unwrap(),
                joined
            );
            // The frame header names the length, and the ratio is the whole frame's.
            let whole = compress(&joined, level).unwrap();
            assert!(
                c.len() - 3 <= whole.len() + whole.len() / 50,
                "{} vs {}",
                c.len(),
                whole.len()
            );
            with_decompressed(&c[3..], joined.len(), |d| assert_eq!(d, Some(&joined[..])));
        }
        // A plain frame afterwards, on the same pooled contexts, is unaffected.
        let c = compress(&text, 11).unwrap();
        assert_eq!(zstd::bulk::decompress(&c, text.len()).unwrap(), text);
    }

    /// Text with some variety, so the match finders' tables matter.
    fn words(len: usize) -> Vec<u8> {
        crate::codec::test_data::words(len, 0x9e37_79b9_7f4a_7c15, 5000)
    }

    /// Bytes of the largest idle context set up for `level`.
    fn context_bytes(level: i32) -> usize {
        pool()
            .lock()
            .idle
            .iter_mut()
            .filter(|(l, _)| *l == level)
            .map(|(_, z)| z.context_mut().sizeof())
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn levels_10_to_12_keep_level_9s_tables_and_the_cap_does_not_leak_into_other_levels() {
        let text = words(4 << 20);
        compress(&text, 9).unwrap();
        let level9 = context_bytes(9);
        for level in [11, 12] {
            let c = compress(&text, level).unwrap();
            assert_eq!(zstd::bulk::decompress(&c, text.len()).unwrap(), text);
            let bytes = context_bytes(level);
            assert!(
                bytes > 0 && bytes <= level9 + (1 << 20),
                "level {level}: {bytes} bytes of context against level 9's {level9}"
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

    #[test]
    fn many_threads_share_at_most_one_context_per_cpu_and_all_frames_are_right() {
        let text = words(256 << 10);
        let threads = 4 * pool().limit + 2;
        std::thread::scope(|sc| {
            for t in 0..threads {
                let text = &text;
                sc.spawn(move || {
                    for i in 0..8 {
                        let level = [1, 3, 9, 11][(t + i) % 4];
                        let c = compress(text, level).unwrap();
                        assert_eq!(zstd::bulk::decompress(&c, text.len()).unwrap(), *text);
                    }
                });
            }
        });
        let st = pool().lock();
        assert!(
            st.peak <= pool().limit && st.live <= pool().limit,
            "{} contexts at most, {} now, for {} CPUs",
            st.peak,
            st.live,
            pool().limit
        );
        assert_eq!(
            st.idle.len(),
            st.live,
            "every context went back to the pool"
        );
    }
}
