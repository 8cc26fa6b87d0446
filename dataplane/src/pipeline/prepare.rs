//! The CPU stages for one work item: read, zero detection, compression, hashing.

use bytes::Bytes;
use vdrep_proto::wire::{Codec, ExtentHashing, ExtentHeader, ExtentOp};

use super::{AdaptiveLevel, Stats, WorkItem};
pub use crate::codec::ZERO_BLOCK;
use crate::codec::{extent_hash, zero_extent_hash, zero_runs};
use crate::disk::{DiskError, VirtualDisk};

/// An extent ready for the wire: the header and, for writes, the payload.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Frame header (carries the BLAKE3 of the uncompressed bytes); `None` for a zero run
    /// of a known-empty replica, which needs nothing on the wire but still counts as done.
    pub header: Option<ExtentHeader>,
    /// First source byte this item accounts for.
    pub offset: u64,
    /// Compressed or raw payload; a raw payload is the read buffer or a slice of it (no copy),
    /// except the raw runs of a packed read (see `pack`).
    pub payload: Bytes,
    /// Source bytes this extent accounts for (for progress).
    pub source_len: u64,
}

fn clear(offset: u64, len: u32, hashing: ExtentHashing) -> Prepared {
    Prepared {
        header: Some(ExtentHeader {
            offset,
            length: len,
            op: ExtentOp::Clear,
            codec: Codec::Raw,
            hash: zero_extent_hash(hashing, offset, len),
            payload_len: 0,
        }),
        offset,
        payload: Bytes::new(),
        source_len: len as u64,
    }
}

/// What the replica holds where a read found zero blocks, which decides how they travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zeros {
    /// The replica may hold older data there: zero runs become clears.
    Clear,
    /// The replica holds zeros there: zero runs need nothing on the wire.
    Skip,
    /// As [`Zeros::Skip`], and the receiver takes [`ExtentOp::WriteSparse`]: a compressed
    /// extent spans the zero gaps between a read's data runs, so one zstd frame keeps the
    /// context the gaps would otherwise cut (with 25 % zero 64 KiB blocks, runs average
    /// ~256 KiB and split frames lost 4 % of ratio: bench/results/ANALYSIS.md).
    Span,
    /// Protocol ≥ 3: a read's compressible blocks go as one [`ExtentOp::WritePacked`], its
    /// incompressible ones raw, its zero runs as clears unless `known_empty` (see
    /// [`super::pack`]).
    Pack {
        /// The replica holds zeros where nothing is written.
        known_empty: bool,
    },
}

impl Zeros {
    /// Whether the replica is known to hold zeros where nothing is written.
    pub fn known_empty(self) -> bool {
        match self {
            Zeros::Clear => false,
            Zeros::Skip | Zeros::Span => true,
            Zeros::Pack { known_empty } => known_empty,
        }
    }
}

/// Runs the CPU stages for one item. Zero runs inside a read become clears (or nothing when
/// the replica is known empty); the non-zero runs become write extents, or one sparse write
/// when `zeros` is [`Zeros::Span`] and compression pays.
pub fn prepare(
    disk: &dyn VirtualDisk,
    item: WorkItem,
    zeros: Zeros,
    level: &AdaptiveLevel,
    stats: &Stats,
) -> Result<Vec<Prepared>, DiskError> {
    let hashing = ExtentHashing::Whole;
    prepare_loaded(
        disk,
        super::Loaded::plain(item),
        zeros,
        hashing,
        level,
        stats,
    )
}

/// [`prepare`] for an item that the read-ahead stage may have read already
/// ([`super::readahead`]): its bytes are used as they are, and only an item without them is
/// read here. Extent hashes are made as `hashing` says (the negotiated version).
pub fn prepare_loaded(
    disk: &dyn VirtualDisk,
    loaded: super::Loaded,
    zeros: Zeros,
    hashing: ExtentHashing,
    level: &AdaptiveLevel,
    stats: &Stats,
) -> Result<Vec<Prepared>, DiskError> {
    let (offset, len) = match loaded.item {
        WorkItem::Clear { offset, len } => {
            stats.add_skipped_unallocated(len as u64);
            return Ok(vec![clear(offset, len, hashing)]);
        }
        WorkItem::Read { offset, len } => (offset, len),
    };
    // The one write of the payload into memory: the disk reader (or the read-ahead) fills
    // this buffer directly.
    let data = match loaded.data {
        Some(d) if d.len() == len as usize => {
            disk.read_ahead_taken(offset, &d);
            d
        }
        _ => disk.read_at(offset, len as usize)?,
    };
    stats.add_read(len as u64);
    level.note_read(len as u64);
    let runs = zero_runs(&data);
    if let (Zeros::Pack { .. }, super::Compression::Zstd(l)) = (zeros, level.current()) {
        return Ok(super::pack::encode(
            offset, &data, &runs, l, zeros, hashing, level, stats,
        ));
    }
    if zeros == Zeros::Span && runs.iter().filter(|r| !r.2).count() > 1 {
        if let super::Compression::Zstd(l) = level.current() {
            if let Some(v) = encode_span(offset, &data, &runs, l, hashing, level, stats) {
                return Ok(v);
            }
        }
    }
    let mut out = Vec::with_capacity(runs.len());
    for (s, e, zero) in runs {
        if zero {
            out.push(zero_run(
                offset + s as u64,
                (e - s) as u64,
                zeros,
                hashing,
                stats,
            ));
        } else {
            out.push(encode_write(
                offset + s as u64,
                data.slice(s..e),
                hashing,
                level,
                stats,
            ));
        }
    }
    Ok(out)
}

/// A zero run: counted, and a clear unless the replica is known to hold zeros.
pub(super) fn zero_run(
    offset: u64,
    len: u64,
    zeros: Zeros,
    hashing: ExtentHashing,
    stats: &Stats,
) -> Prepared {
    stats.add_skipped_zero(len);
    if zeros.known_empty() {
        Prepared {
            header: None,
            offset,
            payload: Bytes::new(),
            source_len: len,
        }
    } else {
        clear(offset, len as u32, hashing)
    }
}

/// One [`ExtentOp::WriteSparse`] from the first to the last data run of a read, its zero
/// gaps inside the frame (zstd turns a zero block into a few bytes); leading and trailing
/// zero runs stay outside. `None` when compression does not pay, so the caller sends the
/// runs raw as slices of the read.
fn encode_span(
    offset: u64,
    data: &Bytes,
    runs: &[(usize, usize, bool)],
    l: i32,
    hashing: ExtentHashing,
    level: &AdaptiveLevel,
    stats: &Stats,
) -> Option<Vec<Prepared>> {
    let first = runs.iter().position(|r| !r.2)?;
    let last = runs.iter().rposition(|r| !r.2)?;
    let (s, e) = (runs[first].0, runs[last].1);
    let span = &data[s..e];
    let nonzero: usize = runs[first..=last]
        .iter()
        .filter(|r| !r.2)
        .map(|r| r.1 - r.0)
        .sum();
    // This compression is the one copy of the span's bytes (the sparse write's payload).
    let c = match crate::codec::zstd_ctx::compress(span, l) {
        Ok(c) if (c.len() as u64) * 100 < (nonzero as u64) * 97 => c,
        _ => {
            level.note_incompressible();
            return None;
        }
    };
    let hash = extent_hash(hashing, &[(offset + s as u64, span)]);
    let mut out = Vec::with_capacity(3);
    for r in runs[..first].iter().chain(&runs[last + 1..]) {
        out.push(zero_run(
            offset + r.0 as u64,
            (r.1 - r.0) as u64,
            Zeros::Skip,
            hashing,
            stats,
        ));
    }
    stats.add_skipped_zero(((e - s) - nonzero) as u64);
    stats.add_payload(nonzero as u64, c.len() as u64);
    out.push(Prepared {
        header: Some(ExtentHeader {
            offset: offset + s as u64,
            length: (e - s) as u32,
            op: ExtentOp::WriteSparse,
            codec: Codec::Zstd,
            hash,
            payload_len: c.len() as u32,
        }),
        offset: offset + s as u64,
        payload: Bytes::from(c),
        source_len: (e - s) as u64,
    });
    Some(out)
}

/// Hashes and (maybe) compresses one run of bytes.
fn encode_write(
    offset: u64,
    raw: Bytes,
    hashing: ExtentHashing,
    level: &AdaptiveLevel,
    stats: &Stats,
) -> Prepared {
    let len = raw.len() as u32;
    let payload = match level.current() {
        super::Compression::Off => return raw_write(offset, raw, hashing, stats),
        super::Compression::Zstd(l) => match crate::codec::zstd_ctx::compress(&raw, l) {
            Ok(c) if (c.len() as u64) * 100 < (raw.len() as u64) * 97 => Bytes::from(c),
            // Store raw when compression saves less than 3 %: the receiver then skips the
            // decompression and the payload stays the zero-copy slice of the read.
            _ => {
                level.note_incompressible();
                return raw_write(offset, raw, hashing, stats);
            }
        },
    };
    let hash = extent_hash(hashing, &[(offset, &raw)]);
    stats.add_payload(len as u64, payload.len() as u64);
    Prepared {
        header: Some(ExtentHeader {
            offset,
            length: len,
            op: ExtentOp::Write,
            codec: Codec::Zstd,
            hash,
            payload_len: payload.len() as u32,
        }),
        offset,
        payload,
        source_len: len as u64,
    }
}

/// A write of `raw` as it is: the payload is `raw` itself (no copy here).
pub(super) fn raw_write(
    offset: u64,
    raw: Bytes,
    hashing: ExtentHashing,
    stats: &Stats,
) -> Prepared {
    let len = raw.len() as u32;
    stats.add_payload(len as u64, len as u64);
    Prepared {
        header: Some(ExtentHeader {
            offset,
            length: len,
            op: ExtentOp::Write,
            codec: Codec::Raw,
            hash: extent_hash(hashing, &[(offset, &raw)]),
            payload_len: len,
        }),
        offset,
        payload: raw,
        source_len: len as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::test_data::noise;
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
        let v = prepare(&d, item, Zeros::Clear, &lvl, &st).unwrap();
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
        let v = prepare(&d, item, Zeros::Skip, &lvl, &st).unwrap();
        assert_eq!(v.iter().filter(|p| p.header.is_some()).count(), 2);
        assert_eq!(v.iter().map(|p| p.source_len).sum::<u64>(), c.len() as u64);
    }

    #[test]
    fn a_known_empty_span_is_one_sparse_frame_between_its_outer_zero_runs() {
        let z = ZERO_BLOCK;
        // zero | text | zero | text | zero
        let mut c = vec![0u8; 5 * z];
        for i in (z..2 * z).chain(3 * z..4 * z) {
            c[i] = b"replica "[i % 8];
        }
        let (_f, d) = disk_with(&c);
        let item = WorkItem::Read {
            offset: 0,
            len: c.len() as u32,
        };
        let st = Stats::default();
        let v = prepare(&d, item, Zeros::Span, &AdaptiveLevel::new(3, false), &st).unwrap();
        let w: Vec<_> = v.iter().filter_map(|p| p.header).collect();
        assert_eq!(w.len(), 1, "{v:?}");
        let h = w[0];
        assert_eq!((h.op, h.codec), (ExtentOp::WriteSparse, Codec::Zstd));
        assert_eq!((h.offset, h.length), (z as u64, 3 * z as u32));
        assert_eq!(h.hash, *blake3::hash(&c[z..4 * z]).as_bytes());
        let sparse = v.iter().find(|p| p.header.is_some()).unwrap();
        assert_eq!(
            zstd::bulk::decompress(&sparse.payload, 3 * z).unwrap(),
            &c[z..4 * z]
        );
        // Every source byte is accounted for once, and the zeros count as skipped.
        assert_eq!(v.iter().map(|p| p.source_len).sum::<u64>(), c.len() as u64);
        assert_eq!(
            st.skipped_zero.load(std::sync::atomic::Ordering::Relaxed),
            3 * z as u64
        );
        // Without compression, or where the replica may hold data, the runs travel apart.
        let v = prepare(&d, item, Zeros::Span, &AdaptiveLevel::new(0, false), &st).unwrap();
        assert_eq!(v.iter().filter(|p| p.header.is_some()).count(), 2);
        let v = prepare(&d, item, Zeros::Clear, &AdaptiveLevel::new(3, false), &st).unwrap();
        assert!(v
            .iter()
            .all(|p| p.header.unwrap().op != ExtentOp::WriteSparse));
    }

    #[test]
    fn an_incompressible_span_falls_back_to_raw_runs() {
        let z = ZERO_BLOCK;
        let mut c = noise(3 * z, 0x2545f4914f6cdd1d);
        c[z..2 * z].fill(0);
        let (_f, d) = disk_with(&c);
        let item = WorkItem::Read {
            offset: 0,
            len: c.len() as u32,
        };
        let v = prepare(
            &d,
            item,
            Zeros::Span,
            &AdaptiveLevel::new(3, false),
            &Stats::default(),
        )
        .unwrap();
        let w: Vec<_> = v.iter().filter_map(|p| p.header).collect();
        assert_eq!(w.len(), 2);
        assert!(w
            .iter()
            .all(|h| h.op == ExtentOp::Write && h.codec == Codec::Raw));
    }

    #[test]
    fn incompressible_data_is_sent_raw_as_a_slice_of_the_read() {
        let c = noise(ZERO_BLOCK, 0x9e3779b97f4a7c15);
        let (_f, d) = disk_with(&c);
        let v = prepare(
            &d,
            WorkItem::Read {
                offset: 0,
                len: c.len() as u32,
            },
            Zeros::Span,
            &AdaptiveLevel::new(1, false),
            &Stats::default(),
        )
        .unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].header.unwrap().codec, Codec::Raw);
        assert_eq!(&v[0].payload[..], &c[..]);
    }
}
