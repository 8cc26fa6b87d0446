//! The local store's undo-log reader (`NAME.pK.undo`): `check_file_header` and `scan`, then
//! `overlay` of every record found. Byte 0 chooses the file: 0 → the rest is the file as is;
//! otherwise the rest describes records (offset, length in sectors, data or zeros) that are
//! written as a valid log with `file_header`/`rec_header` (so the checks behind the CRCs are
//! reached), and byte 0's high bits then corrupt one byte or cut the tail. The log end and
//! the disk end are what the state record would say, or near them. Whatever `scan` accepts
//! lies inside the log end and below the disk end.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vdrep::sink::local::log::{
    check_file_header, file_header, overlay, rec_header, scan, LogKind, FILE_HEADER, REC_HEADER,
};
use vdrep_fuzz::MemData;

const DISK_END: u64 = 64 << 20;

fn build(mode: u8, input: &[u8]) -> (Vec<u8>, u64) {
    let mut f = file_header(LogKind::Undo, 3).to_vec();
    let mut rest = input;
    while rest.len() >= 4 {
        let offset = u64::from(u16::from_le_bytes([rest[0], rest[1]])) * 512;
        let sectors = u64::from(rest[2] & 0x0f) + 1;
        let zero = rest[3] & 1 == 1;
        rest = &rest[4..];
        let len = sectors * 512;
        if zero {
            f.extend_from_slice(&rec_header(offset, len, None));
        } else {
            let data: Vec<u8> = (0..len).map(|i| rest.first().copied().unwrap_or(0) ^ i as u8).collect();
            f.extend_from_slice(&rec_header(offset, len, Some(&data)));
            f.extend_from_slice(&data);
        }
    }
    let end = f.len() as u64;
    match mode >> 6 {
        1 if !f.is_empty() => {
            let at = usize::from(mode & 0x3f) * 7 % f.len();
            f[at] ^= 0x5a;
        }
        2 => f.truncate(f.len().saturating_sub(usize::from(mode & 0x3f) + 1)),
        _ => {}
    }
    (f, end)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (file, end, disk_end) = if mode == 0 {
        let Some((ends, file)) = rest.split_first_chunk::<16>() else {
            return;
        };
        let len = file.len() as u64;
        let end = u64::from_le_bytes(ends[..8].try_into().unwrap_or_default());
        let end = if end & 1 == 0 { end % (len + 1) } else { end };
        let disk_end = u64::from_le_bytes(ends[8..].try_into().unwrap_or_default());
        (file.to_vec(), end, disk_end)
    } else {
        let (f, end) = build(mode, rest);
        (f, end, DISK_END)
    };
    let f = MemData(file);
    let _ = check_file_header(&f, LogKind::Undo, 3);
    if let Ok(recs) = scan(&f, end, disk_end) {
        for r in &recs {
            assert!(r.pos >= FILE_HEADER && r.pos <= end);
            // `pos` is where the data starts, after the record's header; `stored` counts both.
            assert!(
                r.pos - REC_HEADER + r.stored() <= end,
                "{r:?} past the log end {end}"
            );
            assert!(r.len > 0 && r.end() <= disk_end, "{r:?} past the disk end");
            let mut buf = vec![0u8; r.len.min(4096) as usize];
            let _ = overlay(&f, r, r.offset, &mut buf);
        }
    }
});
