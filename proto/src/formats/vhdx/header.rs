//! The file type identifier and the two VHDX headers ([MS-VHDX] 2.2.1, 2.2.2).

use super::{crc32c_with_zeroed_field, utf16le, HEADER_OFFSETS};
use crate::error::Cursor;
use crate::{FormatError, Guid};

/// The identifier's signature at offset 0 of every VHDX.
pub const IDENTIFIER_SIGNATURE: &[u8; 8] = b"vhdxfile";
/// Bytes a header occupies (the rest of its 64 KiB slot is reserved).
pub const HEADER_SIZE: usize = 4096;
/// `head`.
pub const HEADER_SIGNATURE: &[u8; 4] = b"head";

/// Decodes the file type identifier (`vhdxfile` and the creator string).
///
/// Returns the creator (UTF-16LE, up to 256 code units, NUL-terminated), e.g. the tool that
/// made the file, which `inspect` shows.
pub fn decode_identifier(buf: &[u8]) -> Result<String, FormatError> {
    let c = Cursor::new(buf, "VHDX file type identifier");
    let sig: [u8; 8] = c.bytes(0)?;
    if &sig != IDENTIFIER_SIGNATURE {
        return Err(FormatError::new(
            "VHDX file type identifier",
            0,
            format!("signature is {sig:02x?}, expected \"vhdxfile\": not a VHDX file"),
        ));
    }
    let creator = buf.get(8..(8 + 512).min(buf.len())).unwrap_or(&[]);
    let s = utf16le(creator);
    Ok(s.split('\0').next().unwrap_or("").to_string())
}

/// Encodes a file type identifier (for tests and fixtures): 64 KiB.
pub fn encode_identifier(creator: &str) -> Vec<u8> {
    let mut b = vec![0u8; 64 << 10];
    b[..8].copy_from_slice(IDENTIFIER_SIGNATURE);
    let c = super::to_utf16le(creator);
    let n = c.len().min(510);
    b[8..8 + n].copy_from_slice(&c[..n]);
    b
}

/// A decoded VHDX header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Higher wins between the two headers.
    pub sequence_number: u64,
    /// Changes whenever the file is opened for writing.
    pub file_write_guid: Guid,
    /// Changes whenever the virtual disk's data changes; children link to it.
    pub data_write_guid: Guid,
    /// Non-nil when the log may hold entries that must be replayed.
    pub log_guid: Guid,
    /// Must be 0.
    pub log_version: u16,
    /// Must be 1.
    pub version: u16,
    /// Log size in bytes (multiple of 1 MiB).
    pub log_length: u32,
    /// Log offset in bytes (multiple of 1 MiB).
    pub log_offset: u64,
}

impl Header {
    /// Decodes and validates a header (signature, CRC-32C, version, log alignment). `buf` must
    /// hold at least [`HEADER_SIZE`] bytes.
    pub fn decode(buf: &[u8]) -> Result<Header, FormatError> {
        const S: &str = "VHDX header";
        let c = Cursor::new(buf, S);
        let block = c.slice(0, HEADER_SIZE)?;
        let sig: [u8; 4] = c.bytes(0)?;
        if &sig != HEADER_SIGNATURE {
            return Err(FormatError::new(
                S,
                0,
                format!("signature is {sig:02x?}, expected \"head\""),
            ));
        }
        let stored = c.le_u32(4)?;
        let computed = crc32c_with_zeroed_field(block, 4);
        if stored != computed {
            return Err(FormatError::new(
                S,
                4,
                format!("CRC-32C mismatch: stored {stored:#010x}, computed {computed:#010x}"),
            ));
        }
        let h = Header {
            sequence_number: c.le_u64(8)?,
            file_write_guid: Guid(c.bytes(16)?),
            data_write_guid: Guid(c.bytes(32)?),
            log_guid: Guid(c.bytes(48)?),
            log_version: c.le_u16(64)?,
            version: c.le_u16(66)?,
            log_length: c.le_u32(68)?,
            log_offset: c.le_u64(72)?,
        };
        if h.version != 1 {
            return Err(FormatError::new(
                S,
                66,
                format!("version {} is not supported (expected 1)", h.version),
            ));
        }
        if h.log_version != 0 {
            return Err(FormatError::new(
                S,
                64,
                format!(
                    "log version {} is not supported (expected 0)",
                    h.log_version
                ),
            ));
        }
        if !h.log_length.is_multiple_of(1 << 20) || !h.log_offset.is_multiple_of(1 << 20) {
            return Err(FormatError::new(
                S,
                68,
                format!(
                    "log at {} of {} bytes is not 1 MiB aligned",
                    h.log_offset, h.log_length
                ),
            ));
        }
        if h.log_length > 0 && h.log_offset < (1 << 20) {
            return Err(FormatError::new(
                S,
                72,
                format!("log offset {} is inside the header section", h.log_offset),
            ));
        }
        Ok(h)
    }

    /// Encodes the header into its 4 KiB form with a correct checksum.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(HEADER_SIGNATURE);
        b[8..16].copy_from_slice(&self.sequence_number.to_le_bytes());
        b[16..32].copy_from_slice(&self.file_write_guid.0);
        b[32..48].copy_from_slice(&self.data_write_guid.0);
        b[48..64].copy_from_slice(&self.log_guid.0);
        b[64..66].copy_from_slice(&self.log_version.to_le_bytes());
        b[66..68].copy_from_slice(&self.version.to_le_bytes());
        b[68..72].copy_from_slice(&self.log_length.to_le_bytes());
        b[72..80].copy_from_slice(&self.log_offset.to_le_bytes());
        let crc = crc32c_with_zeroed_field(&b, 4);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        b
    }
}

/// Picks the current header from the two header slots ([MS-VHDX] 2.2.2.1): the valid one
/// with the higher sequence number. Two valid headers with equal sequence numbers are
/// accepted when identical (Disk2VHD writes the same header twice) and refused otherwise.
///
/// Returns the header and its index (0 = first, 1 = second). Offsets in errors are absolute
/// file offsets, since both slots are at fixed places.
pub fn current_header(first: &[u8], second: &[u8]) -> Result<(Header, usize), FormatError> {
    let h1 = Header::decode(first).map_err(|e| e.at(HEADER_OFFSETS[0]));
    let h2 = Header::decode(second).map_err(|e| e.at(HEADER_OFFSETS[1]));
    match (h1, h2) {
        (Ok(a), Ok(b)) => {
            if a.sequence_number > b.sequence_number {
                Ok((a, 0))
            } else if b.sequence_number > a.sequence_number {
                Ok((b, 1))
            } else if a == b {
                Ok((a, 0))
            } else {
                Err(FormatError::new(
                    "VHDX headers",
                    HEADER_OFFSETS[0] + 8,
                    format!(
                        "both headers are valid with the same sequence number {} but differ: \
                         the current header is ambiguous",
                        a.sequence_number
                    ),
                ))
            }
        }
        (Ok(a), Err(_)) => Ok((a, 0)),
        (Err(_), Ok(b)) => Ok((b, 1)),
        (Err(e1), Err(e2)) => Err(FormatError::new(
            "VHDX headers",
            e1.offset,
            format!(
                "both headers are invalid: first: {} at offset {}: {}; second: {} at offset {}: {}",
                e1.structure, e1.offset, e1.problem, e2.structure, e2.offset, e2.problem
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample(seq: u64) -> Header {
        Header {
            sequence_number: seq,
            file_write_guid: Guid([1; 16]),
            data_write_guid: Guid([2; 16]),
            log_guid: Guid::NIL,
            log_version: 0,
            version: 1,
            log_length: 1 << 20,
            log_offset: 1 << 20,
        }
    }

    #[test]
    fn header_round_trips_and_crc_detects_corruption() {
        let h = sample(7);
        let mut b = h.encode();
        assert_eq!(Header::decode(&b).unwrap(), h);
        b[100] ^= 1;
        let e = Header::decode(&b).unwrap_err();
        assert!(e.problem.contains("CRC-32C"), "{e}");
    }

    #[test]
    fn higher_sequence_wins_and_one_bad_header_is_tolerated() {
        let a = sample(5).encode();
        let b = sample(6).encode();
        assert_eq!(current_header(&a, &b).unwrap().1, 1);
        assert_eq!(current_header(&b, &a).unwrap().1, 0);
        let mut bad = b.clone();
        bad[0] = b'x';
        assert_eq!(current_header(&a, &bad).unwrap(), (sample(5), 0));
        // Disk2VHD: identical headers.
        assert_eq!(current_header(&a, &a).unwrap().1, 0);
    }

    #[test]
    fn both_headers_bad_names_both_problems_and_offsets() {
        let mut a = sample(5).encode();
        a[200] ^= 0xff;
        let e = current_header(&a, &[0u8; 4096]).unwrap_err();
        assert!(e.problem.contains("both headers are invalid"), "{e}");
        assert!(e.problem.contains("offset 65540"), "{e}");
        assert!(e.problem.contains("offset 131072"), "{e}");
    }

    #[test]
    fn identifier_needs_signature() {
        let b = encode_identifier("vdrep test");
        assert_eq!(decode_identifier(&b).unwrap(), "vdrep test");
        assert!(decode_identifier(b"vhdxfilx").is_err());
        assert!(decode_identifier(b"vhd").is_err());
    }

    proptest! {
        #[test]
        fn header_decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4200)) {
            let _ = Header::decode(&bytes);
            let _ = decode_identifier(&bytes);
            let _ = current_header(&bytes, &bytes);
        }

        #[test]
        fn mutated_header_never_panics(pos in 0usize..4096, val in any::<u8>()) {
            let mut b = sample(3).encode();
            b[pos] = val;
            let _ = Header::decode(&b);
        }
    }

    proptest! {
        #[test]
        fn mutated_and_resized_headers_never_panic_and_round_trip(
            ms in crate::mutate::mutations(), ms2 in crate::mutate::mutations(), fix in any::<bool>(),
        ) {
            let mut b = crate::mutate::mutated(&sample(3).encode(), &ms);
            if fix && b.len() >= HEADER_SIZE {
                let crc = crc32c_with_zeroed_field(&b[..HEADER_SIZE], 4);
                b[4..8].copy_from_slice(&crc.to_le_bytes());
            }
            if let Ok(h) = Header::decode(&b) {
                prop_assert_eq!(Header::decode(&h.encode()).unwrap(), h);
            }
            let other = crate::mutate::mutated(&sample(4).encode(), &ms2);
            if let Ok((h, i)) = current_header(&b, &other) {
                prop_assert!(i < 2);
                prop_assert_eq!(Header::decode(&h.encode()).unwrap(), h);
            }
        }

        #[test]
        fn mutated_identifiers_never_panic_and_round_trip(creator in "[^\u{0}]{0,40}", ms in crate::mutate::mutations()) {
            let b = encode_identifier(&creator);
            prop_assert_eq!(&decode_identifier(&b).unwrap(), &creator);
            if let Ok(c) = decode_identifier(&crate::mutate::mutated(&b, &ms)) {
                // Creators past 255 code units are cut on encode; others survive.
                if c.encode_utf16().count() < 255 {
                    prop_assert_eq!(decode_identifier(&encode_identifier(&c)).unwrap(), c);
                }
            }
        }
    }
}
