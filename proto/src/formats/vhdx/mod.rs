//! VHDX ([MS-VHDX] v20240423): little-endian structures protected by CRC-32C.
//!
//! A VHDX file starts with a 1 MiB header section: the file type identifier (`vhdxfile`) at 0,
//! two headers at 64 KiB and 128 KiB (the valid one with the higher sequence number is
//! current), and two copies of the region table at 192 KiB and 256 KiB that locate the BAT and
//! the metadata region. Everything else (log, BAT, metadata, payload and sector-bitmap blocks)
//! lives at 1 MiB-aligned offsets.
//!
//! - [`header`]: file type identifier and the two headers.
//! - [`region`]: region table (BAT and metadata regions; unknown required regions refused).
//! - [`metadata`]: metadata table and the items a reader needs (block size, virtual size,
//!   sector sizes, parent locator).
//! - [`bat`]: BAT entries, the chunk ratio and where payload and sector-bitmap entries sit.
//! - [`log`]: log entries and the search for the active sequence that must be replayed.
//! - [`builder`]: whole images assembled in memory, for tests and fixtures.

pub mod bat;
pub mod builder;
pub mod header;
pub mod log;
pub mod metadata;
pub mod region;

use crate::Guid;

/// 1 MiB: the alignment of every region and block in a VHDX file.
pub const MIB: u64 = 1 << 20;
/// 64 KiB: the size of the identifier, header and region-table slots.
pub const KIB64: u64 = 64 << 10;

/// Offset of the file type identifier.
pub const IDENTIFIER_OFFSET: u64 = 0;
/// Offsets of the two headers.
pub const HEADER_OFFSETS: [u64; 2] = [64 << 10, 128 << 10];
/// Offsets of the region table and its copy.
pub const REGION_TABLE_OFFSETS: [u64; 2] = [192 << 10, 256 << 10];

/// CRC-32C of `buf` computed as if the 4 bytes at `checksum_at` were zero, which is how every
/// VHDX checksum (headers, region table, log entries) is defined.
pub fn crc32c_with_zeroed_field(buf: &[u8], checksum_at: usize) -> u32 {
    let end = checksum_at.saturating_add(4).min(buf.len());
    let start = checksum_at.min(end);
    let crc = crc32c::crc32c(&buf[..start]);
    let crc = crc32c::crc32c_append(crc, &[0u8; 4][..end - start]);
    crc32c::crc32c_append(crc, &buf[end..])
}

/// Builds a GUID from its canonical text at compile-time-free cost (used for the constant
/// GUIDs of the spec); `s` is always a literal of this crate, so parsing cannot fail.
pub(crate) fn guid_const(s: &str) -> Guid {
    s.parse().unwrap_or(Guid::NIL)
}

/// Reads a UTF-16LE string (no terminator) as Rust text, replacing invalid code units.
pub(crate) fn utf16le(bytes: &[u8]) -> String {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16_lossy(&units)
}

/// Encodes text as UTF-16LE (no terminator).
pub fn to_utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_field_crc_equals_crc_of_buffer_with_zeroed_field() {
        let mut b: Vec<u8> = (0..100u8).collect();
        let c = crc32c_with_zeroed_field(&b, 4);
        b[4..8].copy_from_slice(&[0; 4]);
        assert_eq!(c, crc32c::crc32c(&b));
        // Field past the end does not panic.
        let _ = crc32c_with_zeroed_field(&b, 98);
        let _ = crc32c_with_zeroed_field(&b, 1000);
    }
}
