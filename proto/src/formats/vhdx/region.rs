//! The region table ([MS-VHDX] 2.2.3): where the BAT and the metadata region are.

use super::{crc32c_with_zeroed_field, guid_const, MIB};
use crate::error::Cursor;
use crate::{FormatError, Guid};

/// Bytes of a region table (64 KiB, all covered by its checksum).
pub const REGION_TABLE_SIZE: usize = 64 << 10;
/// `regi`.
pub const REGION_SIGNATURE: &[u8; 4] = b"regi";
/// Most entries a region table may hold.
pub const MAX_REGION_ENTRIES: u32 = 2047;

/// Region GUID of the BAT.
pub fn bat_region_guid() -> Guid {
    guid_const("2DC27766-F623-4200-9D64-115E9BFD4A08")
}

/// Region GUID of the metadata region.
pub fn metadata_region_guid() -> Guid {
    guid_const("8B7CA206-4790-4B9A-B8FE-575F050F886E")
}

/// One region table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionEntry {
    /// What the region is.
    pub guid: Guid,
    /// Absolute file offset (1 MiB aligned).
    pub file_offset: u64,
    /// Length in bytes (multiple of 1 MiB).
    pub length: u32,
    /// A reader that does not know the region must refuse the file.
    pub required: bool,
}

impl RegionEntry {
    /// One past the region's last byte.
    pub fn end(&self) -> u64 {
        self.file_offset.saturating_add(u64::from(self.length))
    }
}

/// The two regions a reader needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Regions {
    /// The block allocation table.
    pub bat: RegionEntry,
    /// The metadata region.
    pub metadata: RegionEntry,
}

/// Decodes and validates a region table: signature, CRC-32C over 64 KiB, entry count,
/// alignment, no overlap with the header section or between regions, exactly one BAT and one
/// metadata region, and no unknown region marked required.
pub fn decode_region_table(buf: &[u8]) -> Result<Regions, FormatError> {
    const S: &str = "VHDX region table";
    let c = Cursor::new(buf, S);
    let table = c.slice(0, REGION_TABLE_SIZE)?;
    let sig: [u8; 4] = c.bytes(0)?;
    if &sig != REGION_SIGNATURE {
        return Err(FormatError::new(
            S,
            0,
            format!("signature is {sig:02x?}, expected \"regi\""),
        ));
    }
    let stored = c.le_u32(4)?;
    let computed = crc32c_with_zeroed_field(table, 4);
    if stored != computed {
        return Err(FormatError::new(
            S,
            4,
            format!("CRC-32C mismatch: stored {stored:#010x}, computed {computed:#010x}"),
        ));
    }
    let count = c.le_u32(8)?;
    if count > MAX_REGION_ENTRIES {
        return Err(FormatError::new(
            S,
            8,
            format!("{count} entries, at most {MAX_REGION_ENTRIES} allowed"),
        ));
    }
    let mut entries: Vec<(usize, RegionEntry)> = Vec::new();
    for i in 0..count as usize {
        let at = 16 + i * 32;
        let e = RegionEntry {
            guid: Guid(c.bytes(at)?),
            file_offset: c.le_u64(at + 16)?,
            length: c.le_u32(at + 24)?,
            required: c.le_u32(at + 28)? & 1 == 1,
        };
        let known = e.guid == bat_region_guid() || e.guid == metadata_region_guid();
        if !known {
            if e.required {
                return Err(FormatError::new(
                    S,
                    at as u64,
                    format!(
                        "entry {i}: unknown region {{{}}} is marked required: this VHDX uses \
                         a feature vdrep does not know",
                        e.guid
                    ),
                ));
            }
            continue;
        }
        if !e.file_offset.is_multiple_of(MIB)
            || !u64::from(e.length).is_multiple_of(MIB)
            || e.length == 0
        {
            return Err(FormatError::new(
                S,
                at as u64 + 16,
                format!(
                    "entry {i}: region at {} of {} bytes is not a non-empty 1 MiB-aligned range",
                    e.file_offset, e.length
                ),
            ));
        }
        if e.file_offset < MIB {
            return Err(FormatError::new(
                S,
                at as u64 + 16,
                format!(
                    "entry {i}: region at {} overlaps the 1 MiB header section",
                    e.file_offset
                ),
            ));
        }
        if let Some((j, o)) = entries
            .iter()
            .find(|(_, o)| o.file_offset < e.end() && e.file_offset < o.end())
        {
            return Err(FormatError::new(
                S,
                at as u64,
                format!(
                    "entry {i} [{}, {}) overlaps entry {j} [{}, {})",
                    e.file_offset,
                    e.end(),
                    o.file_offset,
                    o.end()
                ),
            ));
        }
        if entries.iter().any(|(_, o)| o.guid == e.guid) {
            return Err(FormatError::new(
                S,
                at as u64,
                format!("entry {i}: region {{{}}} appears twice", e.guid),
            ));
        }
        entries.push((i, e));
    }
    let find = |g: Guid, name: &str| {
        entries
            .iter()
            .map(|(_, e)| *e)
            .find(|e| e.guid == g)
            .ok_or_else(|| FormatError::new(S, 8, format!("no {name} region")))
    };
    Ok(Regions {
        bat: find(bat_region_guid(), "BAT")?,
        metadata: find(metadata_region_guid(), "metadata")?,
    })
}

/// Encodes a region table (for tests and fixtures).
pub fn encode_region_table(entries: &[RegionEntry]) -> Vec<u8> {
    let mut b = vec![0u8; REGION_TABLE_SIZE];
    b[0..4].copy_from_slice(REGION_SIGNATURE);
    b[8..12].copy_from_slice(&(entries.len() as u32).to_le_bytes());
    for (i, e) in entries.iter().enumerate().take(MAX_REGION_ENTRIES as usize) {
        let at = 16 + i * 32;
        b[at..at + 16].copy_from_slice(&e.guid.0);
        b[at + 16..at + 24].copy_from_slice(&e.file_offset.to_le_bytes());
        b[at + 24..at + 28].copy_from_slice(&e.length.to_le_bytes());
        b[at + 28..at + 32].copy_from_slice(&u32::from(e.required).to_le_bytes());
    }
    let crc = crc32c_with_zeroed_field(&b, 4);
    b[4..8].copy_from_slice(&crc.to_le_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Vec<RegionEntry> {
        vec![
            RegionEntry {
                guid: bat_region_guid(),
                file_offset: 2 * MIB,
                length: MIB as u32,
                required: true,
            },
            RegionEntry {
                guid: metadata_region_guid(),
                file_offset: 3 * MIB,
                length: MIB as u32,
                required: true,
            },
        ]
    }

    #[test]
    fn region_guids_print_like_the_spec() {
        assert_eq!(
            bat_region_guid().to_string(),
            "2dc27766-f623-4200-9d64-115e9bfd4a08"
        );
        assert_eq!(bat_region_guid().0[0], 0x66);
    }

    #[test]
    fn region_table_round_trips() {
        let b = encode_region_table(&sample());
        let r = decode_region_table(&b).unwrap();
        assert_eq!(r.bat, sample()[0]);
        assert_eq!(r.metadata, sample()[1]);
    }

    #[test]
    fn unknown_required_region_is_refused_optional_ignored() {
        let mut v = sample();
        v.push(RegionEntry {
            guid: Guid([9; 16]),
            file_offset: 8 * MIB,
            length: MIB as u32,
            required: false,
        });
        assert!(decode_region_table(&encode_region_table(&v)).is_ok());
        v[2].required = true;
        let e = decode_region_table(&encode_region_table(&v)).unwrap_err();
        assert!(e.problem.contains("marked required"), "{e}");
    }

    #[test]
    fn overlapping_regions_and_bad_crc_are_refused() {
        let mut v = sample();
        v[1].file_offset = 2 * MIB;
        let e = decode_region_table(&encode_region_table(&v)).unwrap_err();
        assert!(e.problem.contains("overlaps"), "{e}");
        let mut b = encode_region_table(&sample());
        b[40000] = 1;
        let e = decode_region_table(&b).unwrap_err();
        assert!(e.problem.contains("CRC-32C"), "{e}");
    }

    proptest! {
        #[test]
        fn region_decoder_never_panics(pos in 0usize..REGION_TABLE_SIZE, val in any::<u8>(),
                                       pos2 in 0usize..200, val2 in any::<u8>()) {
            let mut b = encode_region_table(&sample());
            b[pos] = val;
            b[pos2] = val2;
            let _ = decode_region_table(&b);
            // and with a fixed-up checksum, so the field checks are exercised
            let crc = crc32c_with_zeroed_field(&b, 4);
            b[4..8].copy_from_slice(&crc.to_le_bytes());
            let _ = decode_region_table(&b);
        }

        #[test]
        fn short_buffers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_region_table(&bytes);
        }
    }

    proptest! {
        #[test]
        fn mutated_and_resized_tables_never_panic_and_round_trip(ms in crate::mutate::mutations(), fix in any::<bool>()) {
            let mut b = crate::mutate::mutated(&encode_region_table(&sample()), &ms);
            if fix && b.len() >= REGION_TABLE_SIZE {
                let crc = crc32c_with_zeroed_field(&b[..REGION_TABLE_SIZE], 4);
                b[4..8].copy_from_slice(&crc.to_le_bytes());
            }
            if let Ok(r) = decode_region_table(&b) {
                prop_assert_eq!(decode_region_table(&encode_region_table(&[r.bat, r.metadata])).unwrap(), r);
            }
        }
    }
}
