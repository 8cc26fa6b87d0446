//! The CPU stages for one work item: read, zero detection, compression, hashing.

use bytes::Bytes;
use vdrep_proto::wire::{Codec, ExtentHeader, ExtentOp};

use super::{AdaptiveLevel, Stats, WorkItem};
use crate::disk::{DiskError, VirtualDisk};

/// Granularity of zero detection inside a chunk: 64 KiB is checked at ~35 GB/s and is small
/// enough to catch zero-filled file-system regions inside allocated blocks.
pub const ZERO_BLOCK: usize = 64 << 10;

/// An extent ready for the wire: the header and, for writes, the payload.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Frame header (carries the BLAKE3 of the uncompressed bytes); `None` for a zero run
    /// of a known-empty replica, which needs nothing on the wire but still counts as done.
    pub header: Option<ExtentHeader>,
    /// First source byte this item accounts for.
    pub offset: u64,
    /// Compressed or raw payload; a raw payload is a slice of the read buffer (no copy).
    pub payload: Bytes,
    /// Source bytes this extent accounts for (for progress).
    pub source_len: u64,
}

/// BLAKE3 of `len` zero bytes, which is what a clear asks the receiver to produce.
pub fn zero_hash(len: u32) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    let zeros = [0u8; 8192];
    let mut left = len as usize;
    while left > 0 {
        let n = left.min(zeros.len());
        h.update(&zeros[..n]);
        left -= n;
    }
    *h.finalize().as_bytes()
}

fn is_zero(b: &[u8]) -> bool {
    // OR-fold 16-byte words; the compiler vectorises this loop.
    let mut words = b.chunks_exact(16);
    let acc = words.by_ref().fold(0u128, |acc, w| {
        acc | u128::from_ne_bytes(w.try_into().unwrap_or([0xff; 16]))
    });
    acc == 0 && words.remainder().iter().all(|&x| x == 0)
}

fn clear(offset: u64, len: u32) -> Prepared {
    Prepared {
        header: Some(ExtentHeader {
            offset,
            length: len,
            op: ExtentOp::Clear,
            codec: Codec::Raw,
            hash: zero_hash(len),
            payload_len: 0,
        }),
        offset,
        payload: Bytes::new(),
        source_len: len as u64,
    }
}

/// Runs the CPU stages for one item. Zero runs inside a read become clears (or nothing when
/// the replica is known empty); the non-zero runs become write extents.
pub fn prepare(
    disk: &dyn VirtualDisk,
    item: WorkItem,
    known_empty: bool,
    level: &AdaptiveLevel,
    stats: &Stats,
) -> Result<Vec<Prepared>, DiskError> {
    let (offset, len) = match item {
        WorkItem::Clear { offset, len } => {
            stats.add_skipped_unallocated(len as u64);
            return Ok(vec![clear(offset, len)]);
        }
        WorkItem::Read { offset, len } => (offset, len),
    };
    // The one write of the payload into memory: the disk reader fills this buffer directly.
    let data = disk.read_at(offset, len as usize)?;
    stats.add_read(len as u64);
    let mut out = Vec::new();
    let mut run_start = 0usize;
    let mut run_zero: Option<bool> = None;
    let mut pos = 0usize;
    let n = data.len();
    let flush = |s: usize, e: usize, zero: bool, out: &mut Vec<Prepared>| {
        if s == e {
            return;
        }
        if zero {
            stats.add_skipped_zero((e - s) as u64);
            if known_empty {
                out.push(Prepared {
                    header: None,
                    offset: offset + s as u64,
                    payload: Bytes::new(),
                    source_len: (e - s) as u64,
                });
            } else {
                out.push(clear(offset + s as u64, (e - s) as u32));
            }
        } else {
            out.push(encode_write(
                offset + s as u64,
                data.slice(s..e),
                level,
                stats,
            ));
        }
    };
    while pos < n {
        let end = (pos + ZERO_BLOCK).min(n);
        let z = is_zero(&data[pos..end]);
        match run_zero {
            Some(r) if r == z => {}
            Some(r) => {
                flush(run_start, pos, r, &mut out);
                run_start = pos;
                run_zero = Some(z);
            }
            None => run_zero = Some(z),
        }
        pos = end;
    }
    if let Some(r) = run_zero {
        flush(run_start, n, r, &mut out);
    }
    Ok(out)
}

/// Hashes and (maybe) compresses one run of bytes.
fn encode_write(offset: u64, raw: Bytes, level: &AdaptiveLevel, stats: &Stats) -> Prepared {
    let len = raw.len() as u32;
    let hash = *blake3::hash(&raw).as_bytes();
    let (codec, payload) = match level.current() {
        super::Compression::Off => (Codec::Raw, raw),
        super::Compression::Zstd(l) => match zstd::bulk::compress(&raw, l) {
            // Store raw when compression saves less than 3 %: the receiver then skips the
            // decompression and the payload stays the zero-copy slice of the read.
            Ok(c) if (c.len() as u64) * 100 < (raw.len() as u64) * 97 => {
                (Codec::Zstd, Bytes::from(c))
            }
            _ => {
                level.note_incompressible();
                (Codec::Raw, raw)
            }
        },
    };
    stats.add_payload(len as u64, payload.len() as u64);
    Prepared {
        header: Some(ExtentHeader {
            offset,
            length: len,
            op: ExtentOp::Write,
            codec,
            hash,
            payload_len: payload.len() as u32,
        }),
        offset,
        payload,
        source_len: len as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::raw::RawDisk;
    use std::io::Write;

    fn disk_with(content: &[u8]) -> (tempfile::NamedTempFile, RawDisk) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(content).unwrap();
        let d = RawDisk::new(crate::io::open(f.path()).unwrap()).unwrap();
        (f, d)
    }

    #[test]
    fn zero_runs_split_writes_and_become_clears_unless_known_empty() {
        let mut c = vec![0u8; 4 * ZERO_BLOCK];
        c[ZERO_BLOCK..2 * ZERO_BLOCK].fill(b'x');
        c[3 * ZERO_BLOCK + 5] = 1;
        let (_f, d) = disk_with(&c);
        let lvl = AdaptiveLevel::new(1, false);
        let st = Stats::default();
        let item = WorkItem::Read {
            offset: 0,
            len: c.len() as u32,
        };
        let v = prepare(&d, item, false, &lvl, &st).unwrap();
        let ops: Vec<_> = v
            .iter()
            .map(|p| {
                let h = p.header.unwrap();
                (h.op, h.offset, h.length)
            })
            .collect();
        let z = ZERO_BLOCK as u64;
        assert_eq!(
            ops,
            vec![
                (ExtentOp::Clear, 0, ZERO_BLOCK as u32),
                (ExtentOp::Write, z, ZERO_BLOCK as u32),
                (ExtentOp::Clear, 2 * z, ZERO_BLOCK as u32),
                (ExtentOp::Write, 3 * z, ZERO_BLOCK as u32),
            ]
        );
        // The 'x' block compresses; the hash is of the uncompressed bytes.
        let w = v[1].header.unwrap();
        assert_eq!(w.codec, Codec::Zstd);
        assert_eq!(
            w.hash,
            *blake3::hash(&c[ZERO_BLOCK..2 * ZERO_BLOCK]).as_bytes()
        );
        assert_eq!(
            zstd::bulk::decompress(&v[1].payload, ZERO_BLOCK).unwrap(),
            &c[ZERO_BLOCK..2 * ZERO_BLOCK]
        );
        let v = prepare(&d, item, true, &lvl, &st).unwrap();
        assert_eq!(v.iter().filter(|p| p.header.is_some()).count(), 2);
        assert_eq!(v.iter().map(|p| p.source_len).sum::<u64>(), c.len() as u64);
    }

    #[test]
    fn incompressible_data_is_sent_raw_as_a_slice_of_the_read() {
        let mut x = 0x9e3779b97f4a7c15u64;
        let c: Vec<u8> = (0..ZERO_BLOCK)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let (_f, d) = disk_with(&c);
        let v = prepare(
            &d,
            WorkItem::Read {
                offset: 0,
                len: c.len() as u32,
            },
            true,
            &AdaptiveLevel::new(1, false),
            &Stats::default(),
        )
        .unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].header.unwrap().codec, Codec::Raw);
        assert_eq!(&v[0].payload[..], &c[..]);
    }
}
