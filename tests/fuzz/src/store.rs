//! Helpers of the store-format targets (`local_state`, `undo_log`, `hidx`): in-memory files
//! behind the store's file traits, valid records to patch, and checksum re-sealing so a
//! patched record reaches the checks behind its checksum.

use std::io;

use vdrep::resync::index::IndexFile;
use vdrep::sink::local::fs::DataFile;
use vdrep::sink::local::state::{encode, Listed, Record, STATE_VERSION};
use vdrep::sink::{DiskState, RecoveryPoint};
use vdrep_proto::{Guid, RangeSet};

/// A read-only data file in memory (writes and syncs fail: decoders must not write).
pub struct MemData(pub Vec<u8>);

impl DataFile for MemData {
    fn write_at(&self, _: u64, _: &[u8]) -> io::Result<()> {
        Err(io::Error::other("read-only"))
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|s| self.0.get(s..s.checked_add(buf.len())?))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn zero_range(&self, _: u64, _: u64) -> io::Result<()> {
        Err(io::Error::other("read-only"))
    }
    fn sync_data(&self) -> io::Result<()> {
        Err(io::Error::other("read-only"))
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.len() as u64)
    }
}

/// A resync index file in memory whose writes are accepted and dropped.
pub struct MemIndex(pub Vec<u8>);

impl IndexFile for MemIndex {
    fn size(&self) -> io::Result<Option<u64>> {
        Ok(Some(self.0.len() as u64))
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|s| self.0.get(s..s.checked_add(buf.len())?))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write_at(&self, _: u64, _: &[u8]) -> io::Result<()> {
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
    fn describe(&self) -> String {
        "fuzz input".into()
    }
}

fn point(cycle: u64) -> RecoveryPoint {
    RecoveryPoint {
        cycle,
        created_unix: 1_700_000_000 + cycle,
        bytes: 4096 * cycle,
        digest: [cycle as u8; 32],
    }
}

/// A valid state record: even `mode` a copy in progress beside a committed replica with two
/// points, odd an open cycle.
pub fn valid_state_record(mode: u8) -> Vec<u8> {
    let mut r = Record {
        disk: DiskState {
            format_version: STATE_VERSION,
            virtual_size: 3 << 20,
            source_id: Guid([7; 16]),
            initial_committed: true,
            committed_cycle: 5,
            progress: RangeSet::from_range(0, 4096),
            generation: 2,
            initial_in_progress: true,
            replica_id: Guid([1; 16]),
            copy_id: Guid([2; 16]),
            open_cycle: None,
        },
        pending: Some(point(0)),
        points: vec![
            Listed {
                point: point(4),
                undo_len: 999,
            },
            Listed {
                point: point(5),
                undo_len: 0,
            },
        ],
    };
    if mode & 2 == 2 {
        r.disk.initial_in_progress = false;
        r.disk.copy_id = Guid::NIL;
        r.disk.open_cycle = Some(6);
        r.pending = None;
        r.points[1].undo_len = 4096;
    }
    encode(&r)
}

/// Makes a patched state record's length field and CRC-32C agree with its bytes.
pub fn reseal_state(b: &mut Vec<u8>) {
    if b.len() < 20 {
        return;
    }
    let body = (b.len() - 20) as u32;
    b[12..16].copy_from_slice(&body.to_le_bytes());
    let n = b.len() - 4;
    let crc = crc32c(&b[..n]);
    b[n..].copy_from_slice(&crc.to_le_bytes());
}

/// Makes a resync index header's CRC-32C (bytes 60..64 over 0..60) agree with its bytes.
pub fn reseal_hidx(b: &mut [u8]) {
    if b.len() >= 64 {
        let crc = crc32c(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
    }
}

/// CRC-32C (Castagnoli), bitwise: the fuzz crate keeps its dependencies to the project's.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
