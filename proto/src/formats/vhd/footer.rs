//! The VHD footer.

use crate::error::Cursor;
use crate::{FormatError, Guid};

/// Size of the footer (and of its copy at offset 0 of dynamic disks).
pub const FOOTER_SIZE: usize = 512;
/// The footer's cookie.
pub const COOKIE: &[u8; 8] = b"conectix";
/// Seconds between the Unix epoch and the VHD epoch (2000-01-01 00:00:00 UTC).
pub const VHD_EPOCH_UNIX: u64 = 946_684_800;

/// `Disk Type` of the footer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskType {
    /// 2: the data precedes the footer.
    Fixed,
    /// 3: a BAT allocates blocks on demand.
    Dynamic,
    /// 4: like dynamic, with a parent.
    Differencing,
}

impl DiskType {
    fn code(self) -> u32 {
        match self {
            DiskType::Fixed => 2,
            DiskType::Dynamic => 3,
            DiskType::Differencing => 4,
        }
    }
}

/// A decoded footer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footer {
    /// Features bit field (bit 1 is reserved and always set).
    pub features: u32,
    /// File format version (0x00010000).
    pub format_version: u32,
    /// Offset of the dynamic header; all ones for fixed disks.
    pub data_offset: u64,
    /// Creation time, seconds since 2000-01-01 UTC.
    pub timestamp: u32,
    /// Creator application, e.g. `win `, `vpc `, `qemu`, `d2v\0`.
    pub creator_app: [u8; 4],
    /// Creator version.
    pub creator_version: u32,
    /// Creator host OS (`Wi2k`, `Mac `).
    pub creator_os: u32,
    /// Size at creation.
    pub original_size: u64,
    /// Current size of the virtual disk.
    pub current_size: u64,
    /// Cylinders of the CHS geometry.
    pub cylinders: u16,
    /// Heads of the CHS geometry.
    pub heads: u8,
    /// Sectors per track of the CHS geometry.
    pub sectors_per_track: u8,
    /// Fixed, dynamic or differencing.
    pub disk_type: DiskType,
    /// The disk's identity; a child's dynamic header names its parent by this id.
    pub unique_id: Guid,
    /// Saved-state flag.
    pub saved_state: u8,
}

/// One's complement of the byte sum of `buf`, skipping the four bytes at `skip`.
pub fn vhd_checksum(buf: &[u8], skip: usize) -> u32 {
    let mut sum: u32 = 0;
    for (i, b) in buf.iter().enumerate() {
        if i < skip || i >= skip + 4 {
            sum = sum.wrapping_add(*b as u32);
        }
    }
    !sum
}

/// CHS geometry for a disk of `size` bytes, per the algorithm in the VHD spec's appendix.
pub fn chs_geometry(size: u64) -> (u16, u8, u8) {
    let mut total = size / 512;
    if total > 65535 * 16 * 255 {
        total = 65535 * 16 * 255;
    }
    let (spt, heads, cth): (u64, u64, u64);
    if total >= 65535 * 16 * 63 {
        spt = 255;
        heads = 16;
        cth = total / spt;
    } else {
        let mut s = 17;
        let mut c = total / s;
        let mut h = c.div_ceil(1024);
        if h < 4 {
            h = 4;
        }
        if c >= h * 1024 || h > 16 {
            s = 31;
            h = 16;
            c = total / s;
        }
        if c >= h * 1024 {
            s = 63;
            h = 16;
            c = total / s;
        }
        spt = s;
        heads = h;
        cth = c;
    }
    ((cth / heads) as u16, heads as u8, spt as u8)
}

impl Footer {
    /// Decodes and verifies a footer (cookie, checksum, disk type).
    pub fn decode(buf: &[u8]) -> Result<Footer, FormatError> {
        const S: &str = "VHD footer";
        let c = Cursor::new(buf, S);
        let cookie: [u8; 8] = c.bytes(0)?;
        if &cookie != COOKIE {
            return Err(FormatError::new(
                S,
                0,
                format!(
                    "cookie is {:?}, expected \"conectix\"",
                    String::from_utf8_lossy(&cookie)
                ),
            ));
        }
        let raw = c.slice(0, FOOTER_SIZE)?;
        let stored = c.be_u32(64)?;
        let computed = vhd_checksum(raw, 64);
        if stored != computed {
            return Err(FormatError::new(
                S,
                64,
                format!("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"),
            ));
        }
        let disk_type = match c.be_u32(60)? {
            2 => DiskType::Fixed,
            3 => DiskType::Dynamic,
            4 => DiskType::Differencing,
            t => {
                return Err(FormatError::new(
                    S,
                    60,
                    format!("disk type {t} is not fixed (2), dynamic (3) or differencing (4)"),
                ))
            }
        };
        Ok(Footer {
            features: c.be_u32(8)?,
            format_version: c.be_u32(12)?,
            data_offset: c.be_u64(16)?,
            timestamp: c.be_u32(24)?,
            creator_app: c.bytes(28)?,
            creator_version: c.be_u32(32)?,
            creator_os: c.be_u32(36)?,
            original_size: c.be_u64(40)?,
            current_size: c.be_u64(48)?,
            cylinders: c.be_u16(56)?,
            heads: c.u8(58)?,
            sectors_per_track: c.u8(59)?,
            disk_type,
            unique_id: Guid(c.bytes(68)?),
            saved_state: c.u8(84)?,
        })
    }

    /// Size the guest sees. Virtual PC (`vpc `, `vs  `) sized its disks by CHS geometry and
    /// left a larger current size in the footer; everyone else (Hyper-V, qemu, Disk2VHD) uses
    /// the current size. qemu and Hyper-V agree on this rule, so vdrep does too.
    pub fn virtual_size(&self) -> u64 {
        if &self.creator_app == b"vpc " || &self.creator_app == b"vs  " {
            self.cylinders as u64 * self.heads as u64 * self.sectors_per_track as u64 * 512
        } else {
            self.current_size
        }
    }

    /// A footer as Hyper-V writes it for a fixed disk of `size` bytes: creator `win `, host
    /// `Wi2k`, CHS per the spec, original = current = `size`. Azure and qemu then both take
    /// the current size, so the replica is exactly `size` bytes to every tool.
    pub fn hyperv_fixed(size: u64, unique_id: Guid, timestamp: u32) -> Footer {
        let (cylinders, heads, sectors_per_track) = chs_geometry(size);
        Footer {
            features: 2,
            format_version: 0x0001_0000,
            data_offset: u64::MAX,
            timestamp,
            creator_app: *b"win ",
            creator_version: 0x000a_0000,
            creator_os: u32::from_be_bytes(*b"Wi2k"),
            original_size: size,
            current_size: size,
            cylinders,
            heads,
            sectors_per_track,
            disk_type: DiskType::Fixed,
            unique_id,
            saved_state: 0,
        }
    }

    /// Encodes the footer with a correct checksum.
    pub fn encode(&self) -> [u8; FOOTER_SIZE] {
        let mut b = [0u8; FOOTER_SIZE];
        b[0..8].copy_from_slice(COOKIE);
        b[8..12].copy_from_slice(&self.features.to_be_bytes());
        b[12..16].copy_from_slice(&self.format_version.to_be_bytes());
        b[16..24].copy_from_slice(&self.data_offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.timestamp.to_be_bytes());
        b[28..32].copy_from_slice(&self.creator_app);
        b[32..36].copy_from_slice(&self.creator_version.to_be_bytes());
        b[36..40].copy_from_slice(&self.creator_os.to_be_bytes());
        b[40..48].copy_from_slice(&self.original_size.to_be_bytes());
        b[48..56].copy_from_slice(&self.current_size.to_be_bytes());
        b[56..58].copy_from_slice(&self.cylinders.to_be_bytes());
        b[58] = self.heads;
        b[59] = self.sectors_per_track;
        b[60..64].copy_from_slice(&self.disk_type.code().to_be_bytes());
        b[68..84].copy_from_slice(&self.unique_id.0);
        b[84] = self.saved_state;
        let sum = vhd_checksum(&b, 64);
        b[64..68].copy_from_slice(&sum.to_be_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hyperv_fixed_footer_round_trips_and_checks_its_checksum() {
        let f = Footer::hyperv_fixed(1 << 30, Guid([7; 16]), 1234);
        let mut b = f.encode();
        assert_eq!(Footer::decode(&b).unwrap(), f);
        assert_eq!(f.virtual_size(), 1 << 30);
        b[100] ^= 1;
        let e = Footer::decode(&b).unwrap_err();
        assert!(e.problem.contains("checksum"), "{e}");
    }

    #[test]
    fn chs_follows_the_spec_algorithm() {
        // Past 65535*16*63 sectors the spec switches to 255 sectors per track.
        assert_eq!(chs_geometry(136_365_211_648), (65278, 16, 255));
        // Beyond the CHS limit the geometry saturates.
        assert_eq!(chs_geometry(4 << 40), (65535, 16, 255));
        // 1 GiB: 2097152 sectors -> spt 63, 16 heads, 2080 cylinders (as qemu computes).
        assert_eq!(chs_geometry(1 << 30), (2080, 16, 63));
        // A tiny disk keeps at least 4 heads.
        assert_eq!(chs_geometry(1 << 20), (30, 4, 17));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            let _ = Footer::decode(&bytes);
        }
    }

    proptest! {
        #[test]
        fn mutated_footers_never_panic_and_what_decodes_round_trips(
            ms in crate::mutate::mutations(), fix in any::<bool>(), dynamic in any::<bool>(),
        ) {
            let mut f = Footer::hyperv_fixed(1 << 30, Guid([7; 16]), 1234);
            if dynamic {
                f.disk_type = DiskType::Dynamic;
                f.data_offset = 512;
            }
            let mut b = crate::mutate::mutated(&f.encode(), &ms);
            if fix && b.len() >= FOOTER_SIZE {
                let sum = vhd_checksum(&b[..FOOTER_SIZE], 64);
                b[64..68].copy_from_slice(&sum.to_be_bytes());
            }
            if let Ok(d) = Footer::decode(&b) {
                let _ = d.virtual_size();
                prop_assert_eq!(Footer::decode(&d.encode()).unwrap(), d);
            }
        }
    }
}
