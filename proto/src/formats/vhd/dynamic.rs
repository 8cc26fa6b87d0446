//! Structures of dynamic and differencing VHDs: the `cxsparse` header, the block allocation
//! table (BAT), parent locators and sector bitmaps. All big-endian, except the locators' path
//! data, which Windows writes as UTF-16LE (while the header's parent name is UTF-16BE: a
//! classic trap, so both decoders live here side by side).

use crate::error::Cursor;
use crate::formats::vhd::footer::vhd_checksum;
use crate::ranges::RangeSet;
use crate::{FormatError, Guid};

/// Size of the dynamic disk header.
pub const HEADER_SIZE: usize = 1024;
/// The header's cookie.
pub const HEADER_COOKIE: &[u8; 8] = b"cxsparse";
/// A BAT entry that says "this block is not allocated".
pub const BAT_ABSENT: u32 = 0xFFFF_FFFF;
/// VHD sectors are always 512 bytes.
pub const SECTOR: u64 = 512;
/// Number of parent locator entries in the header.
pub const LOCATORS: usize = 8;
/// Offset of the header's checksum field.
const CHECKSUM_AT: usize = 36;
/// Offset and size of the UTF-16BE parent name.
const NAME_AT: usize = 64;
const NAME_LEN: usize = 512;
/// Offset and size of the locator table.
const LOCATOR_AT: usize = 576;
const LOCATOR_LEN: usize = 24;

/// Platform code of a parent locator entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlatformCode {
    /// Unused entry (code 0).
    None,
    /// `W2ru`: Windows relative path, UTF-16LE (e.g. `.\base.vhd`).
    W2ru,
    /// `W2ku`: Windows absolute path, UTF-16LE.
    W2ku,
    /// Anything else (`Wi2r`, `Wi2k` (deprecated), `Mac `, `MacX`): vdrep does not follow it.
    Other([u8; 4]),
}

impl PlatformCode {
    fn from_bytes(b: [u8; 4]) -> Self {
        match &b {
            [0, 0, 0, 0] => PlatformCode::None,
            b"W2ru" => PlatformCode::W2ru,
            b"W2ku" => PlatformCode::W2ku,
            _ => PlatformCode::Other(b),
        }
    }
    fn to_bytes(self) -> [u8; 4] {
        match self {
            PlatformCode::None => [0; 4],
            PlatformCode::W2ru => *b"W2ru",
            PlatformCode::W2ku => *b"W2ku",
            PlatformCode::Other(b) => b,
        }
    }
}

/// One of the eight parent locator entries of the dynamic header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParentLocator {
    /// How to interpret the locator's data.
    pub platform_code: PlatformCode,
    /// Space reserved for the data: the spec says sectors, but several writers (Hyper-V
    /// among them) store bytes; see [`ParentLocator::space_bytes`].
    pub data_space: u32,
    /// Length of the locator data in bytes.
    pub data_length: u32,
    /// Absolute file offset of the locator data.
    pub data_offset: u64,
}

impl ParentLocator {
    /// An unused entry.
    pub const EMPTY: ParentLocator = ParentLocator {
        platform_code: PlatformCode::None,
        data_space: 0,
        data_length: 0,
        data_offset: 0,
    };

    /// Bytes reserved in the file for the data. A value that already covers the data length
    /// is taken as bytes (what Hyper-V and qemu write); a smaller one as sectors (the spec's
    /// unit). Taking the smaller reading keeps overlap checks from rejecting valid files.
    pub fn space_bytes(&self) -> u64 {
        let space = self.data_space as u64;
        if space >= self.data_length as u64 {
            space
        } else {
            space * SECTOR
        }
    }
}

/// The dynamic disk header (`cxsparse`) of dynamic and differencing VHDs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicHeader {
    /// Next structure; unused, all ones.
    pub data_offset: u64,
    /// Absolute file offset of the BAT.
    pub table_offset: u64,
    /// 0x00010000.
    pub header_version: u32,
    /// Number of BAT entries.
    pub max_table_entries: u32,
    /// Bytes of virtual disk per block (2 MiB by default); a power of two, at least 512.
    pub block_size: u32,
    /// The parent's footer unique id (differencing disks); checked against the parent.
    pub parent_unique_id: Guid,
    /// The parent's modification time, seconds since 2000-01-01 UTC.
    pub parent_timestamp: u32,
    /// The parent's file name as stored (UTF-16BE), trailing NULs removed.
    pub parent_name: String,
    /// The eight parent locator entries.
    pub parent_locators: [ParentLocator; LOCATORS],
}

impl DynamicHeader {
    /// Decodes and verifies a header (cookie, checksum, block size).
    pub fn decode(buf: &[u8]) -> Result<DynamicHeader, FormatError> {
        const S: &str = "VHD dynamic header";
        let c = Cursor::new(buf, S);
        let cookie: [u8; 8] = c.bytes(0)?;
        if &cookie != HEADER_COOKIE {
            return Err(FormatError::new(
                S,
                0,
                format!(
                    "cookie is {:?}, expected \"cxsparse\"",
                    String::from_utf8_lossy(&cookie)
                ),
            ));
        }
        let raw = c.slice(0, HEADER_SIZE)?;
        let stored = c.be_u32(CHECKSUM_AT)?;
        let computed = vhd_checksum(raw, CHECKSUM_AT);
        if stored != computed {
            return Err(FormatError::new(
                S,
                CHECKSUM_AT as u64,
                format!("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"),
            ));
        }
        let block_size = c.be_u32(32)?;
        if block_size < SECTOR as u32 || !block_size.is_power_of_two() {
            return Err(FormatError::new(
                S,
                32,
                format!("block size {block_size} is not a power-of-two multiple of 512 bytes"),
            ));
        }
        let mut parent_locators = [ParentLocator::EMPTY; LOCATORS];
        for (i, loc) in parent_locators.iter_mut().enumerate() {
            let at = LOCATOR_AT + i * LOCATOR_LEN;
            *loc = ParentLocator {
                platform_code: PlatformCode::from_bytes(c.bytes(at)?),
                data_space: c.be_u32(at + 4)?,
                data_length: c.be_u32(at + 8)?,
                data_offset: c.be_u64(at + 16)?,
            };
        }
        let name = c.slice(NAME_AT, NAME_LEN)?;
        let parent_name = decode_utf16(name, u16::from_be_bytes)
            .map_err(|p| FormatError::new(S, NAME_AT as u64, format!("parent name: {p}")))?;
        Ok(DynamicHeader {
            data_offset: c.be_u64(8)?,
            table_offset: c.be_u64(16)?,
            header_version: c.be_u32(24)?,
            max_table_entries: c.be_u32(28)?,
            block_size,
            parent_unique_id: Guid(c.bytes(40)?),
            parent_timestamp: c.be_u32(56)?,
            parent_name,
            parent_locators,
        })
    }

    /// Encodes the header with a correct checksum. The parent name is cut to 256 UTF-16
    /// units. Used by tests and fixture builders.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(HEADER_COOKIE);
        b[8..16].copy_from_slice(&self.data_offset.to_be_bytes());
        b[16..24].copy_from_slice(&self.table_offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.header_version.to_be_bytes());
        b[28..32].copy_from_slice(&self.max_table_entries.to_be_bytes());
        b[32..36].copy_from_slice(&self.block_size.to_be_bytes());
        b[40..56].copy_from_slice(&self.parent_unique_id.0);
        b[56..60].copy_from_slice(&self.parent_timestamp.to_be_bytes());
        for (i, unit) in self
            .parent_name
            .encode_utf16()
            .take(NAME_LEN / 2)
            .enumerate()
        {
            let at = NAME_AT + 2 * i;
            b[at..at + 2].copy_from_slice(&unit.to_be_bytes());
        }
        for (i, loc) in self.parent_locators.iter().enumerate() {
            let at = LOCATOR_AT + i * LOCATOR_LEN;
            b[at..at + 4].copy_from_slice(&loc.platform_code.to_bytes());
            b[at + 4..at + 8].copy_from_slice(&loc.data_space.to_be_bytes());
            b[at + 8..at + 12].copy_from_slice(&loc.data_length.to_be_bytes());
            b[at + 16..at + 24].copy_from_slice(&loc.data_offset.to_be_bytes());
        }
        let sum = vhd_checksum(&b, CHECKSUM_AT);
        b[CHECKSUM_AT..CHECKSUM_AT + 4].copy_from_slice(&sum.to_be_bytes());
        b
    }

    /// Bytes of the sector bitmap that precedes each block, padded to a whole sector.
    pub fn bitmap_bytes(&self) -> u64 {
        bitmap_bytes(self.block_size as u64)
    }
}

/// Bytes of the sector bitmap of a block of `block_size` bytes: one bit per sector, padded to
/// a 512-byte boundary (2 MiB blocks have a 512-byte bitmap).
pub fn bitmap_bytes(block_size: u64) -> u64 {
    let bits = block_size.div_ceil(SECTOR);
    bits.div_ceil(8).div_ceil(SECTOR) * SECTOR
}

/// Decodes `entries` BAT entries (32-bit big-endian sector offsets; [`BAT_ABSENT`] = not
/// allocated).
pub fn decode_bat(buf: &[u8], entries: usize) -> Result<Vec<u32>, FormatError> {
    let need = entries.checked_mul(4).ok_or_else(|| {
        FormatError::new(
            "VHD BAT",
            0,
            format!("{entries} entries overflow the address space"),
        )
    })?;
    if buf.len() < need {
        return Err(FormatError::new(
            "VHD BAT",
            buf.len() as u64,
            format!(
                "truncated: {entries} entries need {need} bytes, buffer holds {}",
                buf.len()
            ),
        ));
    }
    Ok(buf[..need]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Encodes BAT entries, padded with [`BAT_ABSENT`] to a whole sector as writers do.
pub fn encode_bat(entries: &[u32]) -> Vec<u8> {
    let mut out: Vec<u8> = entries.iter().flat_map(|e| e.to_be_bytes()).collect();
    let padded = (out.len() as u64).div_ceil(SECTOR).max(1) * SECTOR;
    out.resize(padded as usize, 0xFF);
    out
}

/// Decodes the data of a `W2ru`/`W2ku` locator: a UTF-16LE path, trailing NULs removed.
pub fn decode_locator_path(buf: &[u8]) -> Result<String, FormatError> {
    decode_utf16(buf, u16::from_le_bytes)
        .map_err(|p| FormatError::new("VHD parent locator data", 0, p))
}

/// Encodes a path as `W2ru`/`W2ku` locator data (UTF-16LE, no terminator).
pub fn encode_locator_path(path: &str) -> Vec<u8> {
    path.encode_utf16().flat_map(|u| u.to_le_bytes()).collect()
}

fn decode_utf16(buf: &[u8], unit: fn([u8; 2]) -> u16) -> Result<String, String> {
    if !buf.len().is_multiple_of(2) {
        return Err(format!("odd length {} for UTF-16 text", buf.len()));
    }
    let mut units: Vec<u16> = buf.chunks_exact(2).map(|c| unit([c[0], c[1]])).collect();
    // Text ends at the first NUL; what follows is padding.
    if let Some(nul) = units.iter().position(|&u| u == 0) {
        units.truncate(nul);
    }
    String::from_utf16(&units).map_err(|_| "invalid UTF-16 text".to_string())
}

/// Whether sector `sector` of a block is set in its bitmap. VHD bitmaps are
/// most-significant-bit first: bit 7 of byte 0 is the block's first sector (the opposite of
/// VHDX). Bits past the end of `bitmap` read as clear.
pub fn bitmap_bit(bitmap: &[u8], sector: u64) -> bool {
    let byte = usize::try_from(sector / 8).ok().and_then(|i| bitmap.get(i));
    match byte {
        Some(b) => b & (0x80 >> (sector % 8)) != 0,
        None => false,
    }
}

/// Sets (or clears) sector `sector` in a bitmap; out-of-range sectors are ignored.
pub fn set_bitmap_bit(bitmap: &mut [u8], sector: u64, value: bool) {
    if let Some(b) = usize::try_from(sector / 8)
        .ok()
        .and_then(|i| bitmap.get_mut(i))
    {
        let mask = 0x80u8 >> (sector % 8);
        if value {
            *b |= mask;
        } else {
            *b &= !mask;
        }
    }
}

/// The set sectors among the first `sectors` sectors of a bitmap, as runs of sector numbers
/// `[first, end)` (adjacent sectors merged).
pub fn bitmap_runs(bitmap: &[u8], sectors: u64) -> RangeSet {
    // Runs are found in ascending order, so each insert appends.
    let mut runs = RangeSet::new();
    let mut start: Option<u64> = None;
    let mut s = 0;
    while s < sectors {
        // Whole bytes of one value are the common case; skip them eight sectors at a time.
        if s % 8 == 0 && s + 8 <= sectors {
            let byte = usize::try_from(s / 8)
                .ok()
                .and_then(|i| bitmap.get(i))
                .copied()
                .unwrap_or(0);
            if byte == 0xFF && start.is_some() || byte == 0 && start.is_none() {
                s += 8;
                continue;
            }
        }
        match (bitmap_bit(bitmap, s), start) {
            (true, None) => start = Some(s),
            (false, Some(st)) => {
                runs.insert(st, s);
                start = None;
            }
            _ => {}
        }
        s += 1;
    }
    if let Some(st) = start {
        runs.insert(st, sectors);
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> DynamicHeader {
        let mut parent_locators = [ParentLocator::EMPTY; LOCATORS];
        parent_locators[0] = ParentLocator {
            platform_code: PlatformCode::W2ru,
            data_space: 512,
            data_length: 20,
            data_offset: 0x1000,
        };
        parent_locators[1] = ParentLocator {
            platform_code: PlatformCode::W2ku,
            data_space: 1,
            data_length: 60,
            data_offset: 0x1200,
        };
        DynamicHeader {
            data_offset: u64::MAX,
            table_offset: 1536,
            header_version: 0x0001_0000,
            max_table_entries: 64,
            block_size: 2 << 20,
            parent_unique_id: Guid([9; 16]),
            parent_timestamp: 77,
            parent_name: "base.vhd".into(),
            parent_locators,
        }
    }

    #[test]
    fn header_round_trips_with_checksum_and_big_endian_parent_name() {
        let h = sample();
        let b = h.encode();
        assert_eq!(&b[64..68], &[0, b'b', 0, b'a'], "parent name is UTF-16BE");
        assert_eq!(DynamicHeader::decode(&b).unwrap(), h);
        assert_eq!(h.bitmap_bytes(), 512);
    }

    #[test]
    fn header_checksum_and_cookie_errors_name_the_field_offset() {
        let mut b = sample().encode();
        b[700] ^= 1;
        let e = DynamicHeader::decode(&b).unwrap_err();
        assert_eq!(e.offset, 36);
        assert!(e.problem.contains("checksum"), "{e}");
        let mut b = sample().encode();
        b[0] = b'X';
        assert!(DynamicHeader::decode(&b)
            .unwrap_err()
            .problem
            .contains("cxsparse"));
    }

    #[test]
    fn block_size_must_be_a_power_of_two_multiple_of_512() {
        for bad in [0u32, 256, 3 << 20, 1000] {
            let mut h = sample();
            h.block_size = bad;
            let e = DynamicHeader::decode(&h.encode()).unwrap_err();
            assert_eq!(e.offset, 32, "{bad}: {e}");
        }
    }

    #[test]
    fn locator_space_accepts_bytes_and_sectors() {
        let h = sample();
        assert_eq!(h.parent_locators[0].space_bytes(), 512); // bytes (Hyper-V)
        assert_eq!(h.parent_locators[1].space_bytes(), 512); // 1 sector (spec)
    }

    #[test]
    fn locator_paths_are_utf16_little_endian() {
        let b = encode_locator_path(r".\base.vhd");
        assert_eq!(&b[..4], &[b'.', 0, b'\\', 0]);
        let mut padded = b.clone();
        padded.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(decode_locator_path(&padded).unwrap(), r".\base.vhd");
        assert!(decode_locator_path(&[0x00, 0xD8, 0x41, 0x00]).is_err()); // lone surrogate
        assert!(decode_locator_path(&[1, 2, 3]).is_err());
    }

    #[test]
    fn bat_decodes_big_endian_and_pads_with_absent() {
        let b = encode_bat(&[3, BAT_ABSENT, 0x0102_0304]);
        assert_eq!(b.len(), 512);
        assert_eq!(&b[8..12], &[1, 2, 3, 4]);
        assert_eq!(
            decode_bat(&b, 4).unwrap(),
            vec![3, BAT_ABSENT, 0x0102_0304, BAT_ABSENT]
        );
        assert!(decode_bat(&b, 129).is_err());
    }

    #[test]
    fn bitmaps_are_msb_first() {
        let bm = [0b1000_0001u8, 0xFF, 0x00, 0b0100_0000];
        assert!(bitmap_bit(&bm, 0));
        assert!(!bitmap_bit(&bm, 1));
        assert!(bitmap_bit(&bm, 7));
        assert!(bitmap_bit(&bm, 25));
        assert!(!bitmap_bit(&bm, 1000));
        let runs = |n| bitmap_runs(&bm, n).iter().collect::<Vec<_>>();
        assert_eq!(runs(32), vec![0..1, 7..16, 25..26]);
        assert_eq!(runs(10), vec![0..1, 7..10]);
        let mut m = [0u8; 2];
        set_bitmap_bit(&mut m, 9, true);
        assert_eq!(m, [0, 0x40]);
        set_bitmap_bit(&mut m, 9, false);
        set_bitmap_bit(&mut m, 99, true);
        assert_eq!(m, [0, 0]);
    }

    #[test]
    fn bitmap_size_is_padded_to_a_sector() {
        assert_eq!(bitmap_bytes(512), 512);
        assert_eq!(bitmap_bytes(2 << 20), 512);
        assert_eq!(bitmap_bytes(4 << 20), 1024);
    }

    proptest! {
        #[test]
        fn decoders_never_panic_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..1100), n in 0usize..400, s in any::<u64>()) {
            let _ = DynamicHeader::decode(&bytes);
            let _ = decode_bat(&bytes, n);
            let _ = decode_locator_path(&bytes);
            let _ = bitmap_bit(&bytes, s);
            let _ = bitmap_runs(&bytes, (s % 5000).min(n as u64 * 8));
        }

        #[test]
        fn mutated_headers_never_panic(flips in proptest::collection::vec((0usize..HEADER_SIZE, any::<u8>()), 1..20), fix in any::<bool>()) {
            let mut b = sample().encode();
            for (i, v) in flips {
                b[i] = v;
            }
            if fix {
                let sum = vhd_checksum(&b, CHECKSUM_AT);
                b[CHECKSUM_AT..CHECKSUM_AT + 4].copy_from_slice(&sum.to_be_bytes());
            }
            if let Ok(h) = DynamicHeader::decode(&b) {
                let _ = h.bitmap_bytes();
                for l in h.parent_locators {
                    let _ = l.space_bytes();
                }
            }
        }

        #[test]
        fn bitmap_runs_match_bit_by_bit(bytes in proptest::collection::vec(any::<u8>(), 0..40), sectors in 0u64..400) {
            let runs = bitmap_runs(&bytes, sectors);
            for s in 0..sectors {
                prop_assert_eq!(runs.contains(s), bitmap_bit(&bytes, s));
            }
        }
    }

    proptest! {
        #[test]
        fn mutated_and_resized_headers_never_panic_and_round_trip(ms in crate::mutate::mutations(), fix in any::<bool>()) {
            let mut b = crate::mutate::mutated(&sample().encode(), &ms);
            if fix && b.len() >= HEADER_SIZE {
                let sum = vhd_checksum(&b[..HEADER_SIZE], CHECKSUM_AT);
                b[CHECKSUM_AT..CHECKSUM_AT + 4].copy_from_slice(&sum.to_be_bytes());
            }
            if let Ok(h) = DynamicHeader::decode(&b) {
                let _ = h.bitmap_bytes();
                prop_assert_eq!(DynamicHeader::decode(&h.encode()).unwrap(), h);
            }
        }

        #[test]
        fn mutated_bats_never_panic_and_round_trip(
            entries in proptest::collection::vec(any::<u32>(), 0..300),
            ms in crate::mutate::mutations(), extra in 0usize..200,
        ) {
            let b = encode_bat(&entries);
            prop_assert_eq!(&decode_bat(&b, entries.len()).unwrap(), &entries);
            let m = crate::mutate::mutated(&b, &ms);
            let n = entries.len() + extra;
            if let Ok(d) = decode_bat(&m, n) {
                prop_assert_eq!(d.len(), n);
                prop_assert_eq!(decode_bat(&encode_bat(&d), n).unwrap(), d);
            }
            prop_assert!(decode_bat(&m, usize::MAX).is_err());
        }

        #[test]
        fn locator_paths_round_trip_and_mutations_never_panic(
            path in "[^\u{0}]{0,40}", ms in crate::mutate::mutations(),
        ) {
            let b = encode_locator_path(&path);
            prop_assert_eq!(&decode_locator_path(&b).unwrap(), &path);
            if let Ok(p) = decode_locator_path(&crate::mutate::mutated(&b, &ms)) {
                prop_assert_eq!(decode_locator_path(&encode_locator_path(&p)).unwrap(), p);
            }
        }
    }
}
