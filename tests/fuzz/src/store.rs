//! Helpers of the store-format targets (`local_state`, `undo_log`, `hidx`): in-memory files
//! behind the store's file traits, valid records to patch, and checksum re-sealing so a
//! patched record reaches the checks behind its checksum. The state records and their
//! framing are the store's own (`state::fuzzing`), so the targets cannot drift from it.

use std::io;

use vdrep::disk::fuzzing::read_mem;
use vdrep::resync::index::IndexFile;
use vdrep::sink::local::fs::DataFile;
use vdrep::sink::local::state::{encode, fuzzing};

/// A read-only data file in memory (writes and syncs fail: decoders must not write).
pub struct MemData(pub Vec<u8>);

impl DataFile for MemData {
    fn write_at(&self, _: u64, _: &[u8]) -> io::Result<()> {
        Err(io::Error::other("read-only"))
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        read_mem(&self.0, offset, buf)
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
        read_mem(&self.0, offset, buf)
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

/// A valid state record: with `mode` bit 1 clear a copy in progress beside a committed
/// replica with two points, with it set an open cycle (the store's own samples, [`fuzzing::copying`] and
/// [`fuzzing::open`]).
pub fn valid_state_record(mode: u8) -> Vec<u8> {
    if mode & 2 == 2 {
        encode(&fuzzing::open())
    } else {
        encode(&fuzzing::copying())
    }
}

/// Makes a patched state record's length field and CRC-32C agree with its bytes (the
/// store's framing, [`fuzzing::reseal`]).
pub fn reseal_state(b: &mut [u8]) {
    fuzzing::reseal(b)
}

/// Makes a resync index header's CRC-32C (bytes 60..64 over 0..60) agree with its bytes.
pub fn reseal_hidx(b: &mut [u8]) {
    if b.len() >= 64 {
        let crc = crc32c::crc32c(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
    }
}
