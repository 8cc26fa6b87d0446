//! The per-disk state record `VM/NAME.state` (see `LAYOUT.md`): versioned, little-endian,
//! CRC-32C protected, so a torn or tampered file is detected and reported, never trusted.

use vdrep_proto::{Guid, RangeSet};

use crate::sink::{lifecycle, DiskState, RecoveryPoint};

/// Magic at offset 0 of a state record.
pub const STATE_MAGIC: &[u8; 8] = b"vdrepDS\0";
/// The record version this build writes and reads (3: cycles write in place behind the
/// newest point's undo log; version 2 had redo logs and an "applying" phase).
pub const STATE_VERSION: u32 = 3;
/// Flag bit: an initial copy has been committed.
const FLAG_COMMITTED: u32 = 1;
/// Flag bit: an initial copy is in progress.
const FLAG_IN_PROGRESS: u32 = 2;
/// Flag bit: delta cycle `open_cycle` is open (its writes go into the replica, behind the
/// newest point's undo log).
const FLAG_CYCLE_OPEN: u32 = 4;
/// Flag bit: `pending` holds the point of the initial copy being published.
const FLAG_PENDING: u32 = 16;
const KNOWN_FLAGS: u32 = FLAG_COMMITTED | FLAG_IN_PROGRESS | FLAG_CYCLE_OPEN | FLAG_PENDING;
/// Bytes of an encoded point (cycle, created, bytes, digest).
const POINT_LEN: usize = 8 + 8 + 8 + 32;
/// Bytes of a listed point: a point and its undo log length.
const LISTED_LEN: usize = POINT_LEN + 8;
/// Fixed part of the body: see [`encode`].
const FIXED_BODY: usize = 4 + 8 + 16 + 16 + 16 + 4 + 8 + 8 + 8 + POINT_LEN;

/// A recovery point as listed in the state record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The point.
    pub point: RecoveryPoint,
    /// Durable length of its undo log `NAME.pK.undo` (0: none, the next cycle changed
    /// nothing, or this is the newest point and the open cycle has not written yet).
    pub undo_len: u64,
}

/// Everything the state record holds: the public [`DiskState`] plus the cycle machinery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The public part; `open_cycle` is the flag [`FLAG_CYCLE_OPEN`] (cycle N writes into
    /// the replica, behind the newest point's undo log).
    pub disk: DiskState,
    /// The initial copy's point while the copy is published (see `commit_initial`).
    pub pending: Option<RecoveryPoint>,
    /// Recovery points of the committed replica, oldest first.
    pub points: Vec<Listed>,
}

fn put_point(body: &mut Vec<u8>, p: &RecoveryPoint) {
    body.extend_from_slice(&p.cycle.to_le_bytes());
    body.extend_from_slice(&p.created_unix.to_le_bytes());
    body.extend_from_slice(&p.bytes.to_le_bytes());
    body.extend_from_slice(&p.digest);
}

/// Encodes `rec`: header (magic, version u32, body length u32), body, CRC-32C u32 of all
/// preceding bytes. Body: format_version u32, virtual_size u64, source_id, replica_id,
/// copy_id (16 bytes each, on-disk GUID order), flags u32, committed_cycle u64,
/// generation u64, open_cycle u64, pending point (56 bytes), the point list
/// (count u32, 64 bytes each), then the progress as a `RangeSet` encoding.
pub fn encode(rec: &Record) -> Vec<u8> {
    let state = &rec.disk;
    let mut body = Vec::with_capacity(
        FIXED_BODY + 4 + LISTED_LEN * rec.points.len() + state.progress.encoded_len(),
    );
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
    if state.open_cycle.is_some() {
        flags |= FLAG_CYCLE_OPEN;
    }
    if rec.pending.is_some() {
        flags |= FLAG_PENDING;
    }
    body.extend_from_slice(&flags.to_le_bytes());
    body.extend_from_slice(&state.committed_cycle.to_le_bytes());
    body.extend_from_slice(&state.generation.to_le_bytes());
    body.extend_from_slice(&state.open_cycle.unwrap_or(0).to_le_bytes());
    let none = RecoveryPoint {
        cycle: 0,
        created_unix: 0,
        bytes: 0,
        digest: [0; 32],
    };
    put_point(&mut body, rec.pending.as_ref().unwrap_or(&none));
    let count = u32::try_from(rec.points.len()).unwrap_or(u32::MAX);
    body.extend_from_slice(&count.to_le_bytes());
    for l in &rec.points {
        put_point(&mut body, &l.point);
        body.extend_from_slice(&l.undo_len.to_le_bytes());
    }
    state.progress.encode_into(&mut body);
    let mut out = Vec::with_capacity(16 + body.len() + 4);
    out.extend_from_slice(STATE_MAGIC);
    out.extend_from_slice(&STATE_VERSION.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&body);
    out.extend_from_slice(&[0; 4]);
    seal(&mut out);
    out
}

/// Writes the body length (bytes 12..16) and the trailing CRC-32C of a record framed as
/// [`encode`] frames it (16-byte header, body, 4-byte checksum), from the bytes between.
/// Records shorter than header and checksum are left as they are.
fn seal(b: &mut [u8]) {
    let Some(body) = b.len().checked_sub(20) else {
        return;
    };
    b[12..16].copy_from_slice(&(body as u32).to_le_bytes());
    let n = b.len() - 4;
    let crc = crc32c::crc32c(&b[..n]);
    b[n..].copy_from_slice(&crc.to_le_bytes());
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
fn point_at(b: &[u8], at: usize) -> Result<RecoveryPoint, DecodeError> {
    Ok(RecoveryPoint {
        cycle: u64_at(b, at)?,
        created_unix: u64_at(b, at + 8)?,
        bytes: u64_at(b, at + 16)?,
        digest: take(b, at + 24)?,
    })
}

/// Decodes and validates a record (checksum first, then every field).
pub fn decode(b: &[u8]) -> Result<Record, DecodeError> {
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
    if body.len() < FIXED_BODY + 4 {
        return Err((
            16,
            format!(
                "body of {} bytes is shorter than {}",
                body.len(),
                FIXED_BODY + 4
            ),
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
    let open_cycle = u64_at(body, 80)?;
    let pending = point_at(body, 88)?;
    let at = |o: usize| (16 + o) as u64;
    if format_version != STATE_VERSION {
        return Err((
            at(0),
            format!("body version {format_version} differs from header {STATE_VERSION}"),
        ));
    }
    if flags & !KNOWN_FLAGS != 0 {
        return Err((at(60), format!("unknown flags {flags:#x}")));
    }
    let initial_committed = flags & FLAG_COMMITTED != 0;
    let initial_in_progress = flags & FLAG_IN_PROGRESS != 0;
    let cycling = flags & FLAG_CYCLE_OPEN != 0;
    if let Err(why) = crate::layout::check_disk_size(virtual_size) {
        return Err((at(4), why));
    }
    let count = u32_at(body, FIXED_BODY)? as usize;
    let points_at = FIXED_BODY + 4;
    let progress_at = count
        .checked_mul(LISTED_LEN)
        .and_then(|n| n.checked_add(points_at))
        .filter(|&n| n <= body.len())
        .ok_or_else(|| {
            (
                at(FIXED_BODY),
                format!("{count} points do not fit the record"),
            )
        })?;
    let mut points = Vec::with_capacity(count);
    for k in 0..count {
        let o = points_at + k * LISTED_LEN;
        let point = point_at(body, o)?;
        let undo_len = u64_at(body, o + POINT_LEN)?;
        if points
            .last()
            .is_some_and(|p: &Listed| p.point.cycle >= point.cycle)
        {
            return Err((
                at(o),
                format!("point {k} (cycle {}) is out of order", point.cycle),
            ));
        }
        points.push(Listed { point, undo_len });
    }
    let progress = RangeSet::decode(body.get(progress_at..).unwrap_or_default())
        .map_err(|e| (at(progress_at) + e.offset, e.to_string()))?;
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
        open_cycle: cycling.then_some(open_cycle),
    };
    let rec = Record {
        disk: state,
        pending: (flags & FLAG_PENDING != 0).then_some(pending),
        points,
    };
    if let Some(b) = rec.disk.progress.bounds() {
        if b.end > rec.disk.writable_end() {
            return Err((
                at(progress_at),
                format!(
                    "progress reaches {} beyond the disk end {}",
                    b.end,
                    rec.disk.writable_end()
                ),
            ));
        }
    }
    validate(&rec).map_err(|p| (at(60), p))?;
    Ok(rec)
}

/// The invariants between the fields of a record: the lifecycle's
/// ([`lifecycle::check_record`]), then the local store's own (the pending point, the undo
/// logs).
fn validate(rec: &Record) -> Result<(), String> {
    let st = &rec.disk;
    lifecycle::check_record(st)?;
    let cycling = st.open_cycle.is_some();
    match (&rec.pending, cycling) {
        (Some(p), false) if st.initial_in_progress && p.cycle == 0 => {}
        (Some(p), _) => return Err(format!("unexpected pending point {}", p.cycle)),
        (None, _) => {}
    }
    if let Some(l) = rec
        .points
        .iter()
        .find(|l| l.undo_len != 0 && l.undo_len < super::log::FILE_HEADER)
    {
        return Err(format!(
            "undo log length {} of point {} is below its header",
            l.undo_len, l.point.cycle
        ));
    }
    match rec.points.last() {
        None if st.initial_committed => Err("a committed replica without recovery points".into()),
        Some(_) if !st.initial_committed => Err("recovery points without a replica".into()),
        Some(l) if l.point.cycle != st.committed_cycle => Err(format!(
            "newest point {} is not the committed cycle {}",
            l.point.cycle, st.committed_cycle
        )),
        // An open cycle writes behind it; a new full copy keeps a dropped cycle's undo log
        // until it commits (the old generation's points stay readable meanwhile).
        Some(l) if l.undo_len != 0 && !cycling && !st.initial_in_progress => {
            Err("the newest point has an undo log with no cycle open".into())
        }
        _ => Ok(()),
    }
}

/// Valid records and the record framing for the fuzz targets (`tests/fuzz`), which patch a
/// valid record and re-seal it so the decoder's field checks are reached behind its
/// checksum: the framing is [`encode`]'s own, so the targets cannot drift from the format.
/// Not part of the store's interface.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// A point whose fields are derived from its cycle.
    pub fn point(cycle: u64) -> RecoveryPoint {
        RecoveryPoint {
            cycle,
            created_unix: 1_700_000_000 + cycle,
            bytes: 4096 * cycle,
            digest: [cycle as u8; 32],
        }
    }

    /// A full copy in progress (with its pending point) beside a committed replica with two
    /// points.
    pub fn copying() -> Record {
        Record {
            disk: DiskState {
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
                open_cycle: None,
            },
            pending: Some(point(0)),
            points: vec![
                Listed {
                    point: point(4),
                    undo_len: 999,
                },
                Listed {
                    point: point(5),
                    undo_len: 0,
                },
            ],
        }
    }

    /// Delta cycle 6 open behind point 5's undo log.
    pub fn open() -> Record {
        let mut r = copying();
        r.disk.initial_in_progress = false;
        r.disk.copy_id = Guid::NIL;
        r.disk.open_cycle = Some(6);
        r.pending = None;
        r.points[1].undo_len = 4096;
        r
    }

    /// Makes a patched record's body length and checksum agree with its bytes, as
    /// [`encode`] writes them.
    pub fn reseal(b: &mut [u8]) {
        seal(b)
    }
}

#[cfg(test)]
mod tests {
    use super::fuzzing::{copying, open, point};
    use super::*;

    #[test]
    fn state_record_round_trips() {
        for r in [copying(), open()] {
            assert_eq!(decode(&encode(&r)).unwrap(), r);
        }
    }

    #[test]
    fn contradictory_cycle_fields_are_refused() {
        let mut r = open();
        r.pending = Some(point(6));
        assert!(
            decode(&encode(&r)).is_err(),
            "an open cycle has no pending point"
        );
        let mut r = open();
        r.disk.open_cycle = Some(9);
        assert!(decode(&encode(&r)).is_err());
        let mut r = open();
        r.disk.open_cycle = None;
        assert!(
            decode(&encode(&r)).is_err(),
            "the newest point has no undo log without a cycle or copy"
        );
        let mut r = open();
        r.points[1].undo_len = 10;
        assert!(decode(&encode(&r)).is_err(), "undo log below its header");
        let mut r = copying();
        r.points.swap(0, 1);
        assert!(decode(&encode(&r)).is_err());
    }

    #[test]
    fn a_resealed_record_reaches_the_field_checks_behind_its_checksum() {
        let mut b = encode(&open());
        b[16 + 60] |= 0x80;
        assert!(decode(&b).unwrap_err().1.contains("checksum"));
        fuzzing::reseal(&mut b);
        assert_eq!(
            decode(&b).unwrap_err(),
            (16 + 60, "unknown flags 0x85".into())
        );
        let mut b = encode(&open());
        b.insert(b.len() - 4, 0);
        assert!(decode(&b).unwrap_err().1.contains("header says"));
        fuzzing::reseal(&mut b);
        let (at, why) = decode(&b).unwrap_err();
        assert!(at > 16 + 88 && !why.contains("checksum"), "{at} {why}");
    }

    #[test]
    fn every_single_bit_flip_and_truncation_is_detected() {
        let b = encode(&copying());
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
