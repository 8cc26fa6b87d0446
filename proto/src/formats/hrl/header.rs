//! The 4096-byte HRL log header.

use super::checksum::checksum_skipping;
use super::Defect;
use crate::error::Cursor;
use crate::{FormatError, Guid};

/// Size of the header; the first data (or metadata block) starts here.
pub const HEADER_SIZE: usize = 4096;
/// `Cookie`: "msctlog" and a NUL.
pub const COOKIE: &[u8; 8] = b"msctlog\0";
/// `LogFormatVersion` 1.0 (no `Vhd2DataWriteGuid`).
pub const VERSION_1: u32 = 0x0001_0000;
/// `LogFormatVersion` 2.0.
pub const VERSION_2: u32 = 0x0002_0000;
/// Offset of the header's `Checksum` field.
pub const CHECKSUM_OFFSET: usize = 40;

/// A decoded log header. Field names follow [MS-HRL] §2.2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogHeader {
    /// `LogFormatVersion`: [`VERSION_1`] or [`VERSION_2`].
    pub version: u32,
    /// Creation time, seconds since 2000-01-01 UTC.
    pub timestamp: u32,
    /// `CreatorApplication`, "ct" (change tracking) for Hyper-V.
    pub creator_application: [u8; 4],
    /// `CreatorVersion`.
    pub creator_version: u32,
    /// Size of the virtual disk when the log was created.
    pub original_size: u64,
    /// Size of the virtual disk now.
    pub current_size: u64,
    /// `Checksum` as stored (recomputed by [`LogHeader::encode`]).
    pub checksum: u32,
    /// End of the last metadata block; 0 while the log is open or after a crash.
    pub eol_location: u64,
    /// Non-zero when the writer failed.
    pub error_code: i32,
    /// Size of every metadata block (default 4096).
    pub metadata_size: u32,
    /// This log's identity.
    pub unique_id: Guid,
    /// The log this one continues (nil for the first of a chain).
    pub previous_unique_id: Guid,
    /// Time of the last update, seconds since 2000-01-01 UTC.
    pub last_modified_timestamp: u32,
    /// Number of metadata entries in the whole log.
    pub total_metadata_entries: u64,
    /// `FileType` (0).
    pub file_type: u32,
    /// `Flags`.
    pub flags: [u8; 2],
    /// `Vhd2DataWriteGuid` (version 2 only; `None` for version 1).
    pub vhd2_data_write_guid: Option<Guid>,
}

impl LogHeader {
    /// Reads the fields without judging them, so the IO layer can report each defect
    /// precisely. Fails only on a buffer shorter than [`HEADER_SIZE`].
    pub fn parse(buf: &[u8]) -> Result<LogHeader, FormatError> {
        let c = Cursor::new(buf, "HRL header");
        c.slice(0, HEADER_SIZE)?;
        let version = c.le_u32(8)?;
        Ok(LogHeader {
            version,
            timestamp: c.le_u32(12)?,
            creator_application: c.bytes(16)?,
            creator_version: c.le_u32(20)?,
            original_size: c.le_u64(24)?,
            current_size: c.le_u64(32)?,
            checksum: c.le_u32(40)?,
            eol_location: c.le_u64(44)?,
            error_code: c.le_i32(52)?,
            metadata_size: c.le_u32(56)?,
            unique_id: Guid(c.bytes(60)?),
            previous_unique_id: Guid(c.bytes(76)?),
            last_modified_timestamp: c.le_u32(92)?,
            total_metadata_entries: c.le_u64(96)?,
            file_type: c.le_u32(104)?,
            flags: c.bytes(108)?,
            vhd2_data_write_guid: if version == VERSION_2 {
                Some(Guid(c.bytes(110)?))
            } else {
                None
            },
        })
    }

    /// Checks cookie, version, checksum, `MetadataSize` and `ErrorCode` of the raw header
    /// `buf` this header was parsed from. Returns the defect and its offset in the header.
    pub fn validate(&self, buf: &[u8]) -> Result<(), (u64, Defect)> {
        let cookie = buf.get(..8).unwrap_or(buf);
        if cookie != COOKIE {
            return Err((
                0,
                Defect::BadCookie(String::from_utf8_lossy(cookie).into_owned()),
            ));
        }
        if self.version != VERSION_1 && self.version != VERSION_2 {
            return Err((8, Defect::UnsupportedVersion(self.version)));
        }
        let head = buf.get(..HEADER_SIZE).unwrap_or(buf);
        let computed = checksum_skipping(head, CHECKSUM_OFFSET);
        if computed != self.checksum {
            return Err((
                CHECKSUM_OFFSET as u64,
                Defect::Checksum {
                    structure: super::Structure::Header,
                    stored: self.checksum,
                    computed,
                },
            ));
        }
        let m = self.metadata_size;
        if m < 512 || m & 511 != 0 || m > 16 << 20 {
            return Err((56, Defect::BadMetadataSize(m)));
        }
        if self.error_code != 0 {
            return Err((52, Defect::LoggedError(self.error_code)));
        }
        Ok(())
    }

    /// Parses and validates in one step (for callers that only need yes or no, and fuzzing).
    pub fn decode(buf: &[u8]) -> Result<LogHeader, FormatError> {
        let h = LogHeader::parse(buf)?;
        h.validate(buf)
            .map_err(|(off, d)| FormatError::new("HRL header", off, d))?;
        Ok(h)
    }

    /// How many entries one metadata block holds: `(MetadataSize - 32) / 32`.
    pub fn block_capacity(&self) -> u32 {
        self.metadata_size.saturating_sub(32) / 32
    }

    /// Encodes the header with a freshly computed checksum (stored in `self.checksum` too).
    /// Version 1 headers leave the `Vhd2DataWriteGuid` bytes zero.
    pub fn encode(&mut self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(COOKIE);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&self.timestamp.to_le_bytes());
        b[16..20].copy_from_slice(&self.creator_application);
        b[20..24].copy_from_slice(&self.creator_version.to_le_bytes());
        b[24..32].copy_from_slice(&self.original_size.to_le_bytes());
        b[32..40].copy_from_slice(&self.current_size.to_le_bytes());
        b[44..52].copy_from_slice(&self.eol_location.to_le_bytes());
        b[52..56].copy_from_slice(&self.error_code.to_le_bytes());
        b[56..60].copy_from_slice(&self.metadata_size.to_le_bytes());
        b[60..76].copy_from_slice(&self.unique_id.0);
        b[76..92].copy_from_slice(&self.previous_unique_id.0);
        b[92..96].copy_from_slice(&self.last_modified_timestamp.to_le_bytes());
        b[96..104].copy_from_slice(&self.total_metadata_entries.to_le_bytes());
        b[104..108].copy_from_slice(&self.file_type.to_le_bytes());
        b[108..110].copy_from_slice(&self.flags);
        if self.version == VERSION_2 {
            if let Some(g) = self.vhd2_data_write_guid {
                b[110..126].copy_from_slice(&g.0);
            }
        }
        self.checksum = checksum_skipping(&b, CHECKSUM_OFFSET);
        b[40..44].copy_from_slice(&self.checksum.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample(version: u32) -> LogHeader {
        LogHeader {
            version,
            timestamp: 700_000_000,
            creator_application: *b"ct\0\0",
            creator_version: 0x0006_0002,
            original_size: 1 << 30,
            current_size: 1 << 30,
            checksum: 0,
            eol_location: 332_288,
            error_code: 0,
            metadata_size: 4096,
            unique_id: Guid([7; 16]),
            previous_unique_id: Guid([3; 16]),
            last_modified_timestamp: 700_000_030,
            total_metadata_entries: 58,
            file_type: 0,
            flags: [0, 0],
            vhd2_data_write_guid: if version == VERSION_2 {
                Some(Guid([9; 16]))
            } else {
                None
            },
        }
    }

    #[test]
    fn header_round_trips_in_both_versions_at_the_spec_offsets() {
        for v in [VERSION_1, VERSION_2] {
            let mut h = sample(v);
            let b = h.encode();
            assert_eq!(&b[0..8], b"msctlog\0");
            assert_eq!(u32::from_le_bytes(b[8..12].try_into().unwrap()), v);
            assert_eq!(u64::from_le_bytes(b[44..52].try_into().unwrap()), 332_288);
            assert_eq!(u32::from_le_bytes(b[56..60].try_into().unwrap()), 4096);
            assert_eq!(&b[60..76], &[7; 16]);
            assert_eq!(&b[76..92], &[3; 16]);
            assert_eq!(u64::from_le_bytes(b[96..104].try_into().unwrap()), 58);
            let tail: &[u8] = if v == VERSION_2 { &[9; 16] } else { &[0; 16] };
            assert_eq!(&b[110..126], tail);
            assert!(b[126..].iter().all(|&x| x == 0));
            let d = LogHeader::decode(&b).unwrap();
            assert_eq!(d, h);
            assert_eq!(d.block_capacity(), 127);
        }
    }

    #[test]
    fn header_checksum_covers_all_4096_bytes_except_its_field() {
        let mut h = sample(VERSION_2);
        let b = h.encode();
        let sum: u32 = b
            .iter()
            .enumerate()
            .filter(|(i, _)| !(40..44).contains(i))
            .map(|(_, &x)| x as u32)
            .sum();
        assert_eq!(h.checksum, !sum);
        // A change in the reserved area is detected.
        let mut bad = b.clone();
        bad[4000] = 1;
        let err = LogHeader::decode(&bad).unwrap_err();
        assert!(err.problem.contains("checksum mismatch"), "{err}");
    }

    #[test]
    fn header_defects_are_named() {
        let mut h = sample(VERSION_2);
        let mut b = h.encode();
        b[0] = b'x';
        assert!(LogHeader::decode(&b)
            .unwrap_err()
            .problem
            .contains("cookie"));
        let mut h3 = sample(VERSION_2);
        h3.version = 0x0003_0000;
        let b3 = h3.encode();
        let e = LogHeader::decode(&b3).unwrap_err();
        assert!(e.problem.contains("LogFormatVersion"), "{e}");
        let mut hm = sample(VERSION_2);
        hm.metadata_size = 1000;
        assert!(LogHeader::decode(&hm.encode())
            .unwrap_err()
            .problem
            .contains("MetadataSize"));
        assert!(LogHeader::decode(&h.encode()[..100])
            .unwrap_err()
            .problem
            .contains("truncated"));
    }

    proptest! {
        #[test]
        fn header_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let _ = LogHeader::decode(&bytes);
        }

        #[test]
        fn mutated_header_never_panics_and_single_byte_flips_are_caught(
            pos in 0usize..HEADER_SIZE, val in any::<u8>()
        ) {
            let mut h = sample(VERSION_2);
            let mut b = h.encode();
            let old = b[pos];
            b[pos] = val;
            let r = LogHeader::decode(&b);
            if old != val {
                prop_assert!(r.is_err());
            }
        }
    }

    proptest! {
        #[test]
        fn mutated_and_resized_headers_never_panic_and_round_trip(
            ms in crate::mutate::mutations(), fix in any::<bool>(), v2 in any::<bool>(),
        ) {
            let mut h = sample(if v2 { VERSION_2 } else { VERSION_1 });
            let mut b = crate::mutate::mutated(&h.encode(), &ms);
            if fix && b.len() >= HEADER_SIZE {
                let sum = checksum_skipping(&b[..HEADER_SIZE], CHECKSUM_OFFSET);
                b[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 4].copy_from_slice(&sum.to_le_bytes());
            }
            let _ = LogHeader::parse(&b);
            if let Ok(mut d) = LogHeader::decode(&b) {
                let _ = d.block_capacity();
                // Reserved bytes are not kept, so the re-encoded checksum may differ.
                let again = d.encode();
                prop_assert_eq!(LogHeader::decode(&again).unwrap(), d);
            }
        }
    }
}
