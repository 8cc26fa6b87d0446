//! The VHDX log ([MS-VHDX] 2.3): a circular buffer of 4 KiB sectors holding entries that
//! record metadata and BAT updates. A file closed uncleanly (Hyper-V crash) keeps entries that
//! must be replayed before the BAT and metadata can be trusted.
//!
//! An entry is a header sector (`loge`, 64 bytes, followed by 32-byte descriptors, spilling
//! into further descriptor sectors), then one `data` sector per data descriptor. A data
//! sector carries 4084 of the 4096 bytes it writes; the first 8 and the last 4 bytes travel in
//! its descriptor, and the 64-bit sequence number is split around the payload so torn
//! writes are detected. A `zero` descriptor zeroes a range. The CRC-32C covers the whole
//! entry with the checksum field zero.
//!
//! Finding what to replay ([MS-VHDX] 2.3.3): only entries whose LogGuid equals the header's
//! count. Among them, the head is the entry with the highest sequence number whose `Tail`
//! names an entry from which a chain of contiguous entries (each directly after the previous
//! one in the circular log, sequence numbers increasing by one) reaches the head. That chain,
//! tail to head, is the active sequence; it is replayed in order. If no such chain exists the
//! log holds nothing to replay (a writer may set LogGuid before it writes its first entry).

use super::crc32c_with_zeroed_field;
use crate::error::Cursor;
use crate::{FormatError, Guid};

/// Log sector size.
pub const LOG_SECTOR: usize = 4096;
/// `loge`.
pub const ENTRY_SIGNATURE: &[u8; 4] = b"loge";
/// Header bytes of an entry.
pub const ENTRY_HEADER_SIZE: usize = 64;
/// Bytes of one descriptor.
pub const DESCRIPTOR_SIZE: usize = 32;

/// One change an entry makes to the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogOp {
    /// Write 4096 bytes at `file_offset` (4 KiB aligned).
    Data {
        /// Absolute file offset.
        file_offset: u64,
        /// The full 4 KiB sector (leading bytes + payload + trailing bytes).
        data: Vec<u8>,
    },
    /// Zero `length` bytes at `file_offset` (both 4 KiB multiples).
    Zero {
        /// Absolute file offset.
        file_offset: u64,
        /// Bytes to zero.
        length: u64,
    },
}

/// A decoded, checksum-verified log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Sequence number (> 0).
    pub sequence_number: u64,
    /// Offset in the log of the oldest entry still to be replayed.
    pub tail: u32,
    /// Bytes of the entry (multiple of 4 KiB).
    pub entry_length: u32,
    /// Must equal the header's LogGuid.
    pub log_guid: Guid,
    /// The file was at least this long when the entry was written.
    pub flushed_file_offset: u64,
    /// The file must be at least this long after replay.
    pub last_file_offset: u64,
    /// Changes, in descriptor order.
    pub ops: Vec<LogOp>,
}

fn desc_sectors(count: u64) -> u64 {
    (ENTRY_HEADER_SIZE as u64 + DESCRIPTOR_SIZE as u64 * count).div_ceil(LOG_SECTOR as u64)
}

/// Decodes one entry from `buf`, which starts at the entry and holds at least its
/// `EntryLength` bytes (the caller unwraps the circular log).
pub fn decode_entry(buf: &[u8]) -> Result<LogEntry, FormatError> {
    const S: &str = "VHDX log entry";
    let c = Cursor::new(buf, S);
    let sig: [u8; 4] = c.bytes(0)?;
    if &sig != ENTRY_SIGNATURE {
        return Err(FormatError::new(
            S,
            0,
            format!("signature is {sig:02x?}, expected \"loge\""),
        ));
    }
    let len = c.le_u32(8)?;
    if len == 0 || !(len as usize).is_multiple_of(LOG_SECTOR) {
        return Err(FormatError::new(
            S,
            8,
            format!("entry length {len} is not a non-zero multiple of 4096"),
        ));
    }
    let entry = c.slice(0, len as usize)?;
    let stored = c.le_u32(4)?;
    let computed = crc32c_with_zeroed_field(entry, 4);
    if stored != computed {
        return Err(FormatError::new(
            S,
            4,
            format!("CRC-32C mismatch: stored {stored:#010x}, computed {computed:#010x}"),
        ));
    }
    let seq = c.le_u64(16)?;
    if seq == 0 {
        return Err(FormatError::new(S, 16, "sequence number 0"));
    }
    let count = u64::from(c.le_u32(24)?);
    let ds = desc_sectors(count);
    let total = u64::from(len) / LOG_SECTOR as u64;
    if ds > total {
        return Err(FormatError::new(
            S,
            24,
            format!("{count} descriptors do not fit in a {len}-byte entry"),
        ));
    }
    let mut ops = Vec::new();
    let mut data_sector = ds;
    for i in 0..count as usize {
        let at = ENTRY_HEADER_SIZE + i * DESCRIPTOR_SIZE;
        let dsig: [u8; 4] = c.bytes(at)?;
        let file_offset = c.le_u64(at + 16)?;
        let dseq = c.le_u64(at + 24)?;
        if dseq != seq {
            return Err(FormatError::new(
                S,
                at as u64 + 24,
                format!("descriptor {i}: sequence number {dseq} differs from the entry's {seq}"),
            ));
        }
        if !file_offset.is_multiple_of(LOG_SECTOR as u64) {
            return Err(FormatError::new(
                S,
                at as u64 + 16,
                format!("descriptor {i}: file offset {file_offset} is not 4 KiB aligned"),
            ));
        }
        match &dsig {
            b"zero" => {
                let length = c.le_u64(at + 8)?;
                if !length.is_multiple_of(LOG_SECTOR as u64)
                    || file_offset.checked_add(length).is_none()
                {
                    return Err(FormatError::new(
                        S,
                        at as u64 + 8,
                        format!("descriptor {i}: zero length {length} is not a 4 KiB multiple"),
                    ));
                }
                ops.push(LogOp::Zero {
                    file_offset,
                    length,
                });
            }
            b"desc" => {
                let trailing: [u8; 4] = c.bytes(at + 4)?;
                let leading: [u8; 8] = c.bytes(at + 8)?;
                if data_sector >= total {
                    return Err(FormatError::new(
                        S,
                        at as u64,
                        format!("descriptor {i}: no data sector left in the entry"),
                    ));
                }
                let so = (data_sector * LOG_SECTOR as u64) as usize;
                let sector = c.slice(so, LOG_SECTOR)?;
                if &sector[0..4] != b"data" {
                    return Err(FormatError::new(
                        S,
                        so as u64,
                        format!("data sector {data_sector}: signature is not \"data\""),
                    ));
                }
                let hi = c.le_u32(so + 4)?;
                let lo = c.le_u32(so + LOG_SECTOR - 4)?;
                let sseq = (u64::from(hi) << 32) | u64::from(lo);
                if sseq != seq {
                    return Err(FormatError::new(
                        S,
                        so as u64 + 4,
                        format!(
                            "data sector {data_sector}: sequence number {sseq} differs from the \
                             entry's {seq} (torn write)"
                        ),
                    ));
                }
                let mut data = Vec::with_capacity(LOG_SECTOR);
                data.extend_from_slice(&leading);
                data.extend_from_slice(&sector[8..LOG_SECTOR - 4]);
                data.extend_from_slice(&trailing);
                ops.push(LogOp::Data { file_offset, data });
                data_sector += 1;
            }
            other => {
                return Err(FormatError::new(
                    S,
                    at as u64,
                    format!(
                        "descriptor {i}: signature {other:02x?} is neither \"desc\" nor \"zero\""
                    ),
                ))
            }
        }
    }
    Ok(LogEntry {
        sequence_number: seq,
        tail: c.le_u32(12)?,
        entry_length: len,
        log_guid: Guid(c.bytes(32)?),
        flushed_file_offset: c.le_u64(48)?,
        last_file_offset: c.le_u64(56)?,
        ops,
    })
}

/// Encodes an entry (for tests and fixtures); `entry_length` is computed.
pub fn encode_entry(e: &LogEntry) -> Vec<u8> {
    let n = e.ops.len() as u64;
    let ds = desc_sectors(n) as usize;
    let data_count = e
        .ops
        .iter()
        .filter(|o| matches!(o, LogOp::Data { .. }))
        .count();
    let len = (ds + data_count) * LOG_SECTOR;
    let mut b = vec![0u8; len];
    b[0..4].copy_from_slice(ENTRY_SIGNATURE);
    b[8..12].copy_from_slice(&(len as u32).to_le_bytes());
    b[12..16].copy_from_slice(&e.tail.to_le_bytes());
    b[16..24].copy_from_slice(&e.sequence_number.to_le_bytes());
    b[24..28].copy_from_slice(&(n as u32).to_le_bytes());
    b[32..48].copy_from_slice(&e.log_guid.0);
    b[48..56].copy_from_slice(&e.flushed_file_offset.to_le_bytes());
    b[56..64].copy_from_slice(&e.last_file_offset.to_le_bytes());
    let mut sector = ds;
    for (i, op) in e.ops.iter().enumerate() {
        let at = ENTRY_HEADER_SIZE + i * DESCRIPTOR_SIZE;
        b[at + 24..at + 32].copy_from_slice(&e.sequence_number.to_le_bytes());
        match op {
            LogOp::Zero {
                file_offset,
                length,
            } => {
                b[at..at + 4].copy_from_slice(b"zero");
                b[at + 8..at + 16].copy_from_slice(&length.to_le_bytes());
                b[at + 16..at + 24].copy_from_slice(&file_offset.to_le_bytes());
            }
            LogOp::Data { file_offset, data } => {
                let mut d = data.clone();
                d.resize(LOG_SECTOR, 0);
                b[at..at + 4].copy_from_slice(b"desc");
                b[at + 4..at + 8].copy_from_slice(&d[LOG_SECTOR - 4..]);
                b[at + 8..at + 16].copy_from_slice(&d[..8]);
                b[at + 16..at + 24].copy_from_slice(&file_offset.to_le_bytes());
                let so = sector * LOG_SECTOR;
                b[so..so + 4].copy_from_slice(b"data");
                b[so + 4..so + 8]
                    .copy_from_slice(&((e.sequence_number >> 32) as u32).to_le_bytes());
                b[so + 8..so + LOG_SECTOR - 4].copy_from_slice(&d[8..LOG_SECTOR - 4]);
                b[so + LOG_SECTOR - 4..so + LOG_SECTOR]
                    .copy_from_slice(&(e.sequence_number as u32).to_le_bytes());
                sector += 1;
            }
        }
    }
    let crc = crc32c_with_zeroed_field(&b, 4);
    b[4..8].copy_from_slice(&crc.to_le_bytes());
    b
}

mod search;
pub use search::{find_active_sequence, ActiveSequence};

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn guid() -> Guid {
        Guid([0x42; 16])
    }

    fn entry(seq: u64, tail: u32, ops: Vec<LogOp>) -> LogEntry {
        LogEntry {
            sequence_number: seq,
            tail,
            entry_length: 0,
            log_guid: guid(),
            flushed_file_offset: 4 << 20,
            last_file_offset: 5 << 20,
            ops,
        }
    }

    fn data(off: u64, byte: u8) -> LogOp {
        let mut d = vec![byte; LOG_SECTOR];
        d[0] = 0x11;
        d[LOG_SECTOR - 1] = 0x22;
        LogOp::Data {
            file_offset: off,
            data: d,
        }
    }

    fn place(log: &mut [u8], pos: usize, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            let n = log.len();
            log[(pos + i) % n] = *b;
        }
    }

    #[test]
    fn entry_round_trips_with_split_data_sector() {
        let e = entry(
            0x1_0000_0005,
            0,
            vec![
                data(1 << 20, 0xa5),
                LogOp::Zero {
                    file_offset: 2 << 20,
                    length: 8192,
                },
            ],
        );
        let b = encode_entry(&e);
        assert_eq!(b.len(), 2 * LOG_SECTOR);
        let d = decode_entry(&b).unwrap();
        assert_eq!(d.ops, e.ops);
        assert_eq!(d.entry_length, 8192);
        let mut torn = b.clone();
        torn[LOG_SECTOR + LOG_SECTOR - 4] ^= 1;
        assert!(decode_entry(&torn).is_err());
    }

    #[test]
    fn active_sequence_is_the_highest_chain_from_its_tail() {
        let mut log = vec![0u8; 16 * LOG_SECTOR];
        // Old session (other guid) at 0.
        let mut old = entry(50, 0, vec![data(0, 1)]);
        old.log_guid = Guid([1; 16]);
        place(&mut log, 0, &encode_entry(&old));
        // Sequence 10, 11, 12 starting at sector 4, tail at sector 4.
        let e10 = encode_entry(&entry(10, 4 * 4096, vec![data(1 << 20, 10)]));
        let e11 = encode_entry(&entry(11, 4 * 4096, vec![data(1 << 20, 11)]));
        let e12 = encode_entry(&entry(12, 6 * 4096, vec![data(2 << 20, 12)]));
        place(&mut log, 4 * 4096, &e10);
        place(&mut log, 6 * 4096, &e11);
        place(&mut log, 8 * 4096, &e12);
        let a = find_active_sequence(&log, guid()).unwrap();
        let seqs: Vec<u64> = a.entries.iter().map(|(_, e)| e.sequence_number).collect();
        assert_eq!(seqs, vec![11, 12]);
        assert!(find_active_sequence(&log, Guid([3; 16])).is_none());
        assert!(find_active_sequence(&log, Guid::NIL).is_none());
    }

    #[test]
    fn sequence_may_wrap_around_the_end_of_the_log() {
        let mut log = vec![0u8; 8 * LOG_SECTOR];
        let e1 = encode_entry(&entry(1, 6 * 4096, vec![data(0, 1), data(4096, 2)])); // 3 sectors
        let e2 = encode_entry(&entry(2, 6 * 4096, vec![data(8192, 3)]));
        place(&mut log, 6 * 4096, &e1); // sectors 6,7,0
        place(&mut log, 4096, &e2); // sectors 1,2
        let a = find_active_sequence(&log, guid()).unwrap();
        assert_eq!(a.entries.len(), 2);
        assert_eq!(a.head().unwrap().sequence_number, 2);
    }

    #[test]
    fn head_whose_tail_is_missing_falls_back_to_an_older_valid_head() {
        let mut log = vec![0u8; 8 * LOG_SECTOR];
        place(&mut log, 0, &encode_entry(&entry(5, 0, vec![data(0, 5)])));
        place(
            &mut log,
            2 * 4096,
            &encode_entry(&entry(6, 7 * 4096, vec![data(0, 6)])),
        );
        let a = find_active_sequence(&log, guid()).unwrap();
        assert_eq!(a.head().unwrap().sequence_number, 5);
    }

    proptest! {
        #[test]
        fn log_decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..9000)) {
            let _ = decode_entry(&bytes);
            let _ = find_active_sequence(&bytes, guid());
        }

        #[test]
        fn mutated_entries_never_panic(pos in 0usize..8192, val in any::<u8>(), fix in any::<bool>()) {
            let mut b = encode_entry(&entry(3, 0, vec![data(0, 9), LogOp::Zero { file_offset: 0, length: 4096 }]));
            b[pos] = val;
            if fix {
                let crc = crc32c_with_zeroed_field(&b, 4);
                b[4..8].copy_from_slice(&crc.to_le_bytes());
            }
            let _ = decode_entry(&b);
            let mut log = vec![0u8; 4 * LOG_SECTOR];
            log[..b.len()].copy_from_slice(&b);
            let _ = find_active_sequence(&log, guid());
        }
    }

    proptest! {
        #[test]
        fn mutated_and_resized_entries_never_panic_and_round_trip(ms in crate::mutate::mutations(), fix in any::<bool>()) {
            let e = entry(3, 0, vec![data(1 << 20, 9), LogOp::Zero { file_offset: 2 << 20, length: 4096 }]);
            let mut b = crate::mutate::mutated(&encode_entry(&e), &ms);
            if fix && b.len() >= 12 {
                let len = u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize;
                if (8..=b.len()).contains(&len) {
                    let crc = crc32c_with_zeroed_field(&b[..len], 4);
                    b[4..8].copy_from_slice(&crc.to_le_bytes());
                }
            }
            if let Ok(d) = decode_entry(&b) {
                // The decoder accepts entries padded past their last data sector; the
                // encoder writes the minimal length, so only that field may shrink.
                let again = decode_entry(&encode_entry(&d)).unwrap();
                prop_assert!(again.entry_length <= d.entry_length);
                prop_assert_eq!(LogEntry { entry_length: d.entry_length, ..again }, d);
            }
        }

        #[test]
        fn mutated_logs_never_panic_the_replay_search(ms in crate::mutate::mutations()) {
            let mut log = vec![0u8; 8 * LOG_SECTOR];
            place(&mut log, 6 * 4096, &encode_entry(&entry(1, 6 * 4096, vec![data(0, 1), data(4096, 2)])));
            place(&mut log, 4096, &encode_entry(&entry(2, 6 * 4096, vec![data(8192, 3)])));
            let log = crate::mutate::mutated(&log, &ms);
            if let Some(a) = find_active_sequence(&log, guid()) {
                prop_assert!(!a.entries.is_empty());
                for (pos, e) in &a.entries {
                    prop_assert!((*pos as usize) < log.len());
                    prop_assert_eq!(e.log_guid, guid());
                }
            }
        }
    }
}
