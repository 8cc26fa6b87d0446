//! GUIDs as Windows stores and prints them.
//!
//! VHD, VHDX and HRL store GUIDs in the Windows mixed-endian layout (first three fields
//! little-endian, last eight bytes as they are). VHDX parent linkage stores them again as
//! braced text whose letter case differs between the spec's prose and its example, so GUIDs
//! are compared as values, never as strings.

use std::fmt;
use std::str::FromStr;

/// A 128-bit identifier in its on-disk (Windows, mixed-endian) byte order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// The all-zero GUID, which the formats use for "none".
    pub const NIL: Guid = Guid([0; 16]);

    /// True for the all-zero GUID.
    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }

    /// Builds a GUID from 16 random bytes, setting the RFC 4122 version-4 bits, so callers
    /// that have entropy (the IO layer) can mint ids without this crate touching an RNG.
    pub fn v4_from_bytes(mut b: [u8; 16]) -> Guid {
        // Data3 is little-endian on disk: its high byte (version) is b[7].
        b[7] = (b[7] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Guid(b)
    }
}

impl fmt::Display for Guid {
    /// Lower-case, unbraced, as Windows' `Guid.ToString()` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        let d1 = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let d2 = u16::from_le_bytes([b[4], b[5]]);
        let d3 = u16::from_le_bytes([b[6], b[7]]);
        write!(
            f,
            "{d1:08x}-{d2:04x}-{d3:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{{self}}}")
    }
}

/// A GUID string that is not of the form `{xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a GUID: {0:?}")]
pub struct GuidParseError(pub String);

impl FromStr for Guid {
    type Err = GuidParseError;

    /// Accepts braced or unbraced text in any letter case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || GuidParseError(s.to_string());
        let t = s.trim();
        let t = t
            .strip_prefix('{')
            .and_then(|t| t.strip_suffix('}'))
            .unwrap_or(t);
        let parts: Vec<&str> = t.split('-').collect();
        if parts.len() != 5
            || parts.iter().map(|p| p.len()).collect::<Vec<_>>() != [8, 4, 4, 4, 12]
            || !parts
                .iter()
                .all(|p| p.bytes().all(|c| c.is_ascii_hexdigit()))
        {
            return Err(err());
        }
        let d1 = u32::from_str_radix(parts[0], 16).map_err(|_| err())?;
        let d2 = u16::from_str_radix(parts[1], 16).map_err(|_| err())?;
        let d3 = u16::from_str_radix(parts[2], 16).map_err(|_| err())?;
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&d1.to_le_bytes());
        b[4..6].copy_from_slice(&d2.to_le_bytes());
        b[6..8].copy_from_slice(&d3.to_le_bytes());
        let tail = format!("{}{}", parts[3], parts[4]);
        for (i, byte) in b[8..].iter_mut().enumerate() {
            *byte = u8::from_str_radix(&tail[2 * i..2 * i + 2], 16).map_err(|_| err())?;
        }
        Ok(Guid(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_windows_mixed_endian_and_parses_any_case() {
        let g = Guid([
            0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
            0xee, 0xff,
        ]);
        assert_eq!(g.to_string(), "00112233-4455-6677-8899-aabbccddeeff");
        let upper: Guid = "{00112233-4455-6677-8899-AABBCCDDEEFF}".parse().unwrap();
        assert_eq!(upper, g);
        assert!("{0011-22}".parse::<Guid>().is_err());
        assert!("00112233-4455-6677-8899-aabbccddeefg"
            .parse::<Guid>()
            .is_err());
    }
}
