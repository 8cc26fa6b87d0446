//! The metadata region ([MS-VHDX] 2.6): a table of items, of which a reader needs the file
//! parameters, the virtual disk size and id, the sector sizes and (for differencing disks) the
//! parent locator.

use super::{guid_const, to_utf16le, utf16le, KIB64, MIB};
use crate::error::Cursor;
use crate::{FormatError, Guid};

/// `metadata`.
pub const METADATA_SIGNATURE: &[u8; 8] = b"metadata";
/// Most entries the metadata table may hold.
pub const MAX_METADATA_ENTRIES: u16 = 2047;
/// Largest virtual disk the spec allows (64 TiB).
pub const MAX_VIRTUAL_SIZE: u64 = 64 << 40;

/// Item GUID of the file parameters.
pub fn file_parameters_guid() -> Guid {
    guid_const("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
}
/// Item GUID of the virtual disk size.
pub fn virtual_disk_size_guid() -> Guid {
    guid_const("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
}
/// Item GUID of the virtual disk id.
pub fn virtual_disk_id_guid() -> Guid {
    guid_const("BECA12AB-B2E6-4523-93EF-C309E000C746")
}
/// Item GUID of the logical sector size.
pub fn logical_sector_size_guid() -> Guid {
    guid_const("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
}
/// Item GUID of the physical sector size.
pub fn physical_sector_size_guid() -> Guid {
    guid_const("CDA348C7-445D-4471-9CC9-E9885251C556")
}
/// Item GUID of the parent locator.
pub fn parent_locator_guid() -> Guid {
    guid_const("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
}
/// Locator type of a VHDX parent locator.
pub fn vhdx_locator_type_guid() -> Guid {
    guid_const("B04AEFB7-D19E-4A81-B789-25B8E9445913")
}

/// The parent locator's key/value pairs, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParentLocator {
    /// Locator type (the VHDX type is [`vhdx_locator_type_guid`]).
    pub locator_type: Guid,
    /// Keys and values as written (UTF-16LE decoded).
    pub entries: Vec<(String, String)>,
}

impl ParentLocator {
    /// The value of `key` (keys are case-sensitive in the spec: `parent_linkage`, ...).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `parent_linkage` as a GUID: the parent's DataWriteGuid. Braced text whose letter case
    /// varies between writers, so it is parsed, never compared as a string.
    pub fn parent_linkage(&self) -> Option<Guid> {
        self.get("parent_linkage").and_then(|s| s.parse().ok())
    }

    /// `parent_linkage2`, an alternative identity the parent may carry.
    pub fn parent_linkage2(&self) -> Option<Guid> {
        self.get("parent_linkage2").and_then(|s| s.parse().ok())
    }

    /// Path candidates in the order a reader should try them: relative first, then the
    /// absolute Win32 path, then the volume path.
    pub fn path_candidates(&self) -> Vec<String> {
        ["relative_path", "absolute_win32_path", "volume_path"]
            .iter()
            .filter_map(|k| self.get(k))
            .map(str::to_string)
            .collect()
    }
}

/// What a reader needs from the metadata region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhdxMetadata {
    /// Payload block size: a power of two in 1 MiB..=256 MiB.
    pub block_size: u32,
    /// Hint that the file is fully provisioned (a "fixed" VHDX).
    pub leave_blocks_allocated: bool,
    /// Differencing disk.
    pub has_parent: bool,
    /// Size the guest sees.
    pub virtual_size: u64,
    /// Identity of the virtual disk (stable across writes).
    pub virtual_disk_id: Guid,
    /// 512 or 4096.
    pub logical_sector_size: u32,
    /// 512 or 4096.
    pub physical_sector_size: u32,
    /// Present when `has_parent`.
    pub parent_locator: Option<ParentLocator>,
}

#[derive(Debug, Clone, Copy)]
struct Item {
    offset: u32,
    length: u32,
    table_at: usize,
}

/// Decodes the metadata region (`region` = the whole region, offsets relative to it).
pub fn decode_metadata(region: &[u8]) -> Result<VhdxMetadata, FormatError> {
    const S: &str = "VHDX metadata table";
    let c = Cursor::new(region, S);
    let sig: [u8; 8] = c.bytes(0)?;
    if &sig != METADATA_SIGNATURE {
        return Err(FormatError::new(
            S,
            0,
            format!("signature is {sig:02x?}, expected \"metadata\""),
        ));
    }
    let count = c.le_u16(10)?;
    if count > MAX_METADATA_ENTRIES {
        return Err(FormatError::new(
            S,
            10,
            format!("{count} entries, at most {MAX_METADATA_ENTRIES} allowed"),
        ));
    }
    let known = [
        file_parameters_guid(),
        virtual_disk_size_guid(),
        virtual_disk_id_guid(),
        logical_sector_size_guid(),
        physical_sector_size_guid(),
        parent_locator_guid(),
    ];
    let mut items: Vec<(Guid, Item)> = Vec::new();
    for i in 0..count as usize {
        let at = 32 + i * 32;
        let id = Guid(c.bytes(at)?);
        let offset = c.le_u32(at + 16)?;
        let length = c.le_u32(at + 20)?;
        let flags = c.le_u32(at + 24)?;
        let is_user = flags & 1 == 1;
        let required = flags & 4 == 4;
        if length > 0 {
            let end = u64::from(offset) + u64::from(length);
            if u64::from(offset) < KIB64 || end > region.len() as u64 {
                return Err(FormatError::new(
                    S,
                    at as u64 + 16,
                    format!(
                        "entry {i} ({{{id}}}): item [{offset}, {end}) is outside the metadata \
                         region's item area [65536, {})",
                        region.len()
                    ),
                ));
            }
        }
        if !is_user && known.contains(&id) {
            if items.iter().any(|(g, _)| *g == id) {
                return Err(FormatError::new(
                    S,
                    at as u64,
                    format!("entry {i}: item {{{id}}} appears twice"),
                ));
            }
            items.push((
                id,
                Item {
                    offset,
                    length,
                    table_at: at,
                },
            ));
        } else if required {
            return Err(FormatError::new(
                S,
                at as u64,
                format!(
                    "entry {i}: unknown metadata item {{{id}}} is marked required: this VHDX \
                     uses a feature vdrep does not know"
                ),
            ));
        }
    }
    let item = |g: Guid, name: &str, min_len: u32| -> Result<&[u8], FormatError> {
        let (_, it) = items.iter().find(|(id, _)| *id == g).ok_or_else(|| {
            FormatError::new(S, 10, format!("required metadata item {name} is missing"))
        })?;
        if it.length < min_len {
            return Err(FormatError::new(
                S,
                it.table_at as u64 + 20,
                format!(
                    "metadata item {name} is {} bytes, needs {min_len}",
                    it.length
                ),
            ));
        }
        c.slice(it.offset as usize, it.length as usize)
    };
    let item_off = |g: Guid| {
        items
            .iter()
            .find(|(id, _)| *id == g)
            .map(|(_, it)| u64::from(it.offset))
            .unwrap_or(0)
    };

    let fp = item(file_parameters_guid(), "file parameters", 8)?;
    let fpc = Cursor::new(fp, "VHDX file parameters");
    let block_size = fpc.le_u32(0)?;
    let bits = fpc.le_u32(4)?;
    if !block_size.is_power_of_two() || !(MIB as u32..=256 * MIB as u32).contains(&block_size) {
        return Err(FormatError::new(
            "VHDX file parameters",
            item_off(file_parameters_guid()),
            format!("block size {block_size} is not a power of two between 1 MiB and 256 MiB"),
        ));
    }
    let has_parent = bits & 2 == 2;
    let leave_blocks_allocated = bits & 1 == 1;

    let lss = u32::from_le_bytes(
        Cursor::new(
            item(logical_sector_size_guid(), "logical sector size", 4)?,
            "VHDX logical sector size",
        )
        .bytes(0)?,
    );
    if lss != 512 && lss != 4096 {
        return Err(FormatError::new(
            "VHDX logical sector size",
            item_off(logical_sector_size_guid()),
            format!("{lss} is neither 512 nor 4096"),
        ));
    }
    let pss = u32::from_le_bytes(
        Cursor::new(
            item(physical_sector_size_guid(), "physical sector size", 4)?,
            "VHDX physical sector size",
        )
        .bytes(0)?,
    );
    if pss != 512 && pss != 4096 {
        return Err(FormatError::new(
            "VHDX physical sector size",
            item_off(physical_sector_size_guid()),
            format!("{pss} is neither 512 nor 4096"),
        ));
    }
    let vs = u64::from_le_bytes(
        Cursor::new(
            item(virtual_disk_size_guid(), "virtual disk size", 8)?,
            "VHDX virtual disk size",
        )
        .bytes(0)?,
    );
    if vs == 0 || vs % u64::from(lss) != 0 || vs > MAX_VIRTUAL_SIZE {
        return Err(FormatError::new(
            "VHDX virtual disk size",
            item_off(virtual_disk_size_guid()),
            format!(
                "{vs} bytes is not a non-zero multiple of the {lss}-byte logical sector up \
                 to 64 TiB"
            ),
        ));
    }
    let id = Guid(
        Cursor::new(
            item(virtual_disk_id_guid(), "virtual disk id", 16)?,
            "VHDX virtual disk id",
        )
        .bytes(0)?,
    );
    let parent_locator = if has_parent {
        let pl = item(parent_locator_guid(), "parent locator", 20)?;
        let base = item_off(parent_locator_guid());
        Some(decode_parent_locator(pl).map_err(|e| e.at(base))?)
    } else {
        None
    };
    Ok(VhdxMetadata {
        block_size,
        leave_blocks_allocated,
        has_parent,
        virtual_size: vs,
        virtual_disk_id: id,
        logical_sector_size: lss,
        physical_sector_size: pss,
        parent_locator,
    })
}

/// Decodes a parent locator item (offsets relative to the item).
pub fn decode_parent_locator(buf: &[u8]) -> Result<ParentLocator, FormatError> {
    const S: &str = "VHDX parent locator";
    let c = Cursor::new(buf, S);
    let locator_type = Guid(c.bytes(0)?);
    if locator_type != vhdx_locator_type_guid() {
        return Err(FormatError::new(
            S,
            0,
            format!("locator type {{{locator_type}}} is not the VHDX locator type"),
        ));
    }
    let count = c.le_u16(18)?;
    let mut entries = Vec::with_capacity(usize::from(count));
    for i in 0..usize::from(count) {
        let at = 20 + i * 12;
        let ko = c.le_u32(at)? as usize;
        let vo = c.le_u32(at + 4)? as usize;
        let kl = usize::from(c.le_u16(at + 8)?);
        let vl = usize::from(c.le_u16(at + 10)?);
        let key = c.slice(ko, kl).map_err(|_| {
            FormatError::new(
                S,
                at as u64,
                format!("entry {i}: key [{ko}, +{kl}) is outside the item"),
            )
        })?;
        let value = c.slice(vo, vl).map_err(|_| {
            FormatError::new(
                S,
                at as u64 + 4,
                format!("entry {i}: value [{vo}, +{vl}) is outside the item"),
            )
        })?;
        entries.push((utf16le(key), utf16le(value)));
    }
    Ok(ParentLocator {
        locator_type,
        entries,
    })
}

/// Encodes a parent locator item (for tests and fixtures).
pub fn encode_parent_locator(entries: &[(&str, &str)]) -> Vec<u8> {
    let mut head = Vec::new();
    head.extend_from_slice(&vhdx_locator_type_guid().0);
    head.extend_from_slice(&0u16.to_le_bytes());
    head.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    let mut data = Vec::new();
    let data_base = 20 + 12 * entries.len();
    for (k, v) in entries {
        let (k, v) = (to_utf16le(k), to_utf16le(v));
        let ko = data_base + data.len();
        data.extend_from_slice(&k);
        let vo = data_base + data.len();
        data.extend_from_slice(&v);
        head.extend_from_slice(&(ko as u32).to_le_bytes());
        head.extend_from_slice(&(vo as u32).to_le_bytes());
        head.extend_from_slice(&(k.len() as u16).to_le_bytes());
        head.extend_from_slice(&(v.len() as u16).to_le_bytes());
    }
    head.extend_from_slice(&data);
    head
}

/// Encodes a 1 MiB metadata region holding `m` (for tests and fixtures).
pub fn encode_metadata(m: &VhdxMetadata) -> Vec<u8> {
    let mut items: Vec<(Guid, Vec<u8>, u32)> = vec![
        (
            file_parameters_guid(),
            [
                m.block_size.to_le_bytes(),
                (u32::from(m.leave_blocks_allocated) | (u32::from(m.has_parent) << 1))
                    .to_le_bytes(),
            ]
            .concat(),
            4,
        ),
        (
            virtual_disk_size_guid(),
            m.virtual_size.to_le_bytes().to_vec(),
            6,
        ),
        (virtual_disk_id_guid(), m.virtual_disk_id.0.to_vec(), 6),
        (
            logical_sector_size_guid(),
            m.logical_sector_size.to_le_bytes().to_vec(),
            6,
        ),
        (
            physical_sector_size_guid(),
            m.physical_sector_size.to_le_bytes().to_vec(),
            6,
        ),
    ];
    if let Some(pl) = &m.parent_locator {
        let e: Vec<(&str, &str)> = pl
            .entries
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        items.push((parent_locator_guid(), encode_parent_locator(&e), 4));
    }
    let mut b = vec![0u8; MIB as usize];
    b[0..8].copy_from_slice(METADATA_SIGNATURE);
    b[10..12].copy_from_slice(&(items.len() as u16).to_le_bytes());
    let mut off = KIB64 as usize;
    for (i, (g, data, flags)) in items.iter().enumerate() {
        let at = 32 + i * 32;
        b[at..at + 16].copy_from_slice(&g.0);
        b[at + 16..at + 20].copy_from_slice(&(off as u32).to_le_bytes());
        b[at + 20..at + 24].copy_from_slice(&(data.len() as u32).to_le_bytes());
        b[at + 24..at + 28].copy_from_slice(&flags.to_le_bytes());
        b[off..off + data.len()].copy_from_slice(data);
        off += data.len().next_multiple_of(8);
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(parent: bool) -> VhdxMetadata {
        VhdxMetadata {
            block_size: 2 << 20,
            leave_blocks_allocated: false,
            has_parent: parent,
            virtual_size: 64 << 20,
            virtual_disk_id: Guid([7; 16]),
            logical_sector_size: 512,
            physical_sector_size: 4096,
            parent_locator: parent.then(|| ParentLocator {
                locator_type: vhdx_locator_type_guid(),
                entries: vec![
                    (
                        "parent_linkage".into(),
                        "{0A0B0C0D-0E0F-1011-1213-141516171819}".into(),
                    ),
                    ("relative_path".into(), r".\base.vhdx".into()),
                    ("absolute_win32_path".into(), r"C:\VMs\base.vhdx".into()),
                ],
            }),
        }
    }

    #[test]
    fn metadata_round_trips_with_parent_locator() {
        for p in [false, true] {
            let m = sample(p);
            assert_eq!(decode_metadata(&encode_metadata(&m)).unwrap(), m);
        }
        let pl = sample(true).parent_locator.unwrap();
        let want: Guid = "0a0b0c0d-0e0f-1011-1213-141516171819".parse().unwrap();
        assert_eq!(pl.parent_linkage(), Some(want));
        assert_eq!(
            pl.path_candidates(),
            vec![r".\base.vhdx".to_string(), r"C:\VMs\base.vhdx".to_string()]
        );
    }

    #[test]
    fn block_size_and_sector_sizes_are_checked() {
        let mut m = sample(false);
        m.block_size = 3 << 20;
        let e = decode_metadata(&encode_metadata(&m)).unwrap_err();
        assert!(e.problem.contains("block size"), "{e}");
        let mut m = sample(false);
        m.block_size = 512 << 20;
        assert!(decode_metadata(&encode_metadata(&m)).is_err());
        let mut m = sample(false);
        m.logical_sector_size = 1024;
        assert!(decode_metadata(&encode_metadata(&m)).is_err());
        let mut m = sample(false);
        m.virtual_size = 1000;
        assert!(decode_metadata(&encode_metadata(&m)).is_err());
    }

    #[test]
    fn item_outside_region_is_refused() {
        let mut b = encode_metadata(&sample(false));
        // First entry's offset -> past the end.
        b[48..52].copy_from_slice(&(2u32 << 20).to_le_bytes());
        let e = decode_metadata(&b).unwrap_err();
        assert!(e.problem.contains("outside"), "{e}");
        assert_eq!(e.offset, 48);
    }

    proptest! {
        #[test]
        fn metadata_decoder_never_panics(pos in 0usize..(64 << 10) + 200, val in any::<u8>(),
                                         pos2 in 0usize..300, val2 in any::<u8>()) {
            let mut b = encode_metadata(&sample(true));
            b[pos] = val;
            b[pos2] = val2;
            let _ = decode_metadata(&b);
            let _ = decode_metadata(&b[..pos.min(b.len())]);
        }

        #[test]
        fn parent_locator_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode_parent_locator(&bytes);
            let mut b = vhdx_locator_type_guid().0.to_vec();
            b.extend_from_slice(&bytes);
            let _ = decode_parent_locator(&b);
        }
    }

    proptest! {
        #[test]
        fn mutated_and_resized_regions_never_panic_and_round_trip(ms in crate::mutate::mutations(), parent in any::<bool>()) {
            let b = crate::mutate::mutated(&encode_metadata(&sample(parent)), &ms);
            if let Ok(m) = decode_metadata(&b) {
                let small = m.parent_locator.as_ref().is_none_or(|p| {
                    p.entries.iter().map(|(k, v)| k.len() + v.len() + 12).sum::<usize>() < (256 << 10)
                });
                if small {
                    prop_assert_eq!(decode_metadata(&encode_metadata(&m)).unwrap(), m);
                }
            }
        }

        #[test]
        fn mutated_parent_locators_never_panic_and_round_trip(
            entries in proptest::collection::vec(("[a-z_]{1,12}", "[^\u{0}]{0,30}"), 0..6),
            ms in crate::mutate::mutations(),
        ) {
            let e: Vec<(&str, &str)> = entries.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let b = encode_parent_locator(&e);
            let d = decode_parent_locator(&b).unwrap();
            prop_assert_eq!(d.entries, entries);
            if let Ok(p) = decode_parent_locator(&crate::mutate::mutated(&b, &ms)) {
                let _ = (p.parent_linkage(), p.parent_linkage2(), p.path_candidates());
                let e: Vec<(&str, &str)> = p.entries.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                prop_assert_eq!(decode_parent_locator(&encode_parent_locator(&e)).unwrap(), p);
            }
        }
    }
}
