//! The per-disk state record `VM/NAME.state` (see `LAYOUT.md`): versioned, little-endian,
//! CRC-32C protected, so a torn or tampered file is detected and reported, never trusted.

use vdrep_proto::{Guid, RangeSet};

use crate::sink::DiskState;

/// Magic at offset 0 of a state record.
pub const STATE_MAGIC: &[u8; 8] = b"vdrepDS\0";
/// The record version this build writes and reads.
pub const STATE_VERSION: u32 = 1;
/// Flag bit: an initial copy has been committed.
const FLAG_COMMITTED: u32 = 1;
/// Flag bit: an initial copy is in progress.
const FLAG_IN_PROGRESS: u32 = 2;
/// Fixed part of the body: see [`encode`].
const FIXED_BODY: usize = 4 + 8 + 16 + 16 + 16 + 4 + 8 + 8;

/// Encodes `state`: header (magic, version u32, body length u32), body, CRC-32C u32 of all
/// preceding bytes. Body: virtual_size u64, source_id, replica_id, copy_id (16 bytes each,
/// on-disk GUID order), flags u32, committed_cycle u64, generation u64 — after a leading
/// format_version u32 — then the progress as a `RangeSet` encoding.
pub fn encode(state: &DiskState) -> Vec<u8> {
    let mut body = Vec::with_capacity(FIXED_BODY + state.progress.encoded_len());
    body.extend_from_slice(&STATE_VERSION.to_le_bytes());
    body.extend_from_slice(&state.virtual_size.to_le_bytes());
    body.extend_from_slice(&state.source_id.0);
    body.extend_from_slice(&state.replica_id.0);
    body.extend_from_slice(&state.copy_id.0);
    let mut flags = 0;
    if state.initial_committed {
        flags |= FLAG_COMMITTED;
    }
    if state.initial_in_progress {
        flags |= FLAG_IN_PROGRESS;
    }
    body.extend_from_slice(&flags.to_le_bytes());
    body.extend_from_slice(&state.committed_cycle.to_le_bytes());
    body.extend_from_slice(&state.generation.to_le_bytes());
    state.progress.encode_into(&mut body);
    let mut out = Vec::with_capacity(16 + body.len() + 4);
    out.extend_from_slice(STATE_MAGIC);
    out.extend_from_slice(&STATE_VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// A decode failure: offset in the record and the problem.
pub type DecodeError = (u64, String);

fn take<const N: usize>(b: &[u8], at: usize) -> Result<[u8; N], DecodeError> {
    at.checked_add(N)
        .and_then(|end| b.get(at..end))
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| {
            (
                at as u64,
                format!("truncated: need {N} bytes at {at}, file has {}", b.len()),
            )
        })
}
fn u32_at(b: &[u8], at: usize) -> Result<u32, DecodeError> {
    Ok(u32::from_le_bytes(take(b, at)?))
}
fn u64_at(b: &[u8], at: usize) -> Result<u64, DecodeError> {
    Ok(u64::from_le_bytes(take(b, at)?))
}

/// Decodes and validates a record (checksum first, then every field).
pub fn decode(b: &[u8]) -> Result<DiskState, DecodeError> {
    if take::<8>(b, 0)? != *STATE_MAGIC {
        return Err((0, "not a vdrep disk state record (bad magic)".into()));
    }
    let version = u32_at(b, 8)?;
    if version != STATE_VERSION {
        return Err((
            8,
            format!("state record version {version}, this vdrep reads {STATE_VERSION}"),
        ));
    }
    let body_len = u32_at(b, 12)? as usize;
    let total = body_len
        .checked_add(20)
        .ok_or_else(|| (12u64, "body length overflows".to_string()))?;
    if b.len() != total {
        return Err((
            12,
            format!("record is {} bytes, header says {total}", b.len()),
        ));
    }
    let crc_at = total - 4;
    let stored = u32_at(b, crc_at)?;
    let actual = crc32c::crc32c(b.get(..crc_at).unwrap_or_default());
    if stored != actual {
        return Err((
            crc_at as u64,
            format!("checksum mismatch: stored {stored:#010x}, computed {actual:#010x}"),
        ));
    }
    let body = b.get(16..crc_at).unwrap_or_default();
    if body.len() < FIXED_BODY {
        return Err((
            16,
            format!("body of {} bytes is shorter than {FIXED_BODY}", body.len()),
        ));
    }
    let format_version = u32_at(body, 0)?;
    let virtual_size = u64_at(body, 4)?;
    let source_id = Guid(take(body, 12)?);
    let replica_id = Guid(take(body, 28)?);
    let copy_id = Guid(take(body, 44)?);
    let flags = u32_at(body, 60)?;
    let committed_cycle = u64_at(body, 64)?;
    let generation = u64_at(body, 72)?;
    let at = |o: usize| (16 + o) as u64;
    if format_version != STATE_VERSION {
        return Err((
            at(0),
            format!("body version {format_version} differs from header {STATE_VERSION}"),
        ));
    }
    if flags & !(FLAG_COMMITTED | FLAG_IN_PROGRESS) != 0 {
        return Err((at(60), format!("unknown flags {flags:#x}")));
    }
    let initial_committed = flags & FLAG_COMMITTED != 0;
    let initial_in_progress = flags & FLAG_IN_PROGRESS != 0;
    if !initial_committed && !initial_in_progress {
        return Err((
            at(60),
            "neither committed nor copying: no replica is described".into(),
        ));
    }
    if generation == 0 {
        return Err((at(72), "generation 0 (generations start at 1)".into()));
    }
    if virtual_size == 0 {
        return Err((at(4), "virtual size 0".into()));
    }
    let progress = RangeSet::decode(body.get(FIXED_BODY..).unwrap_or_default())
        .map_err(|e| (at(FIXED_BODY) + e.offset, e.to_string()))?;
    let state = DiskState {
        format_version,
        virtual_size,
        source_id,
        initial_committed,
        committed_cycle,
        progress,
        generation,
        initial_in_progress,
        replica_id,
        copy_id,
    };
    if let Some(b) = state.progress.bounds() {
        if b.end > state.writable_end() {
            return Err((
                at(FIXED_BODY),
                format!(
                    "progress reaches {} beyond the disk end {}",
                    b.end,
                    state.writable_end()
                ),
            ));
        }
    }
    if !initial_in_progress && !state.progress.is_empty() {
        return Err((
            at(FIXED_BODY),
            "progress recorded without a copy in progress".into(),
        ));
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DiskState {
        DiskState {
            format_version: STATE_VERSION,
            virtual_size: 3 << 20,
            source_id: Guid([7; 16]),
            initial_committed: true,
            committed_cycle: 5,
            progress: RangeSet::from_range(0, 4096),
            generation: 2,
            initial_in_progress: true,
            replica_id: Guid([1; 16]),
            copy_id: Guid([2; 16]),
        }
    }

    #[test]
    fn state_record_round_trips() {
        let s = sample();
        assert_eq!(decode(&encode(&s)).unwrap(), s);
    }

    #[test]
    fn every_single_bit_flip_and_truncation_is_detected() {
        let b = encode(&sample());
        for i in 0..b.len() * 8 {
            let mut c = b.clone();
            c[i / 8] ^= 1 << (i % 8);
            assert!(decode(&c).is_err(), "flip of bit {i} not detected");
        }
        for n in 0..b.len() {
            assert!(decode(&b[..n]).is_err(), "truncation to {n} not detected");
        }
    }
}
