//! The simulated filesystem's own checks.

use std::path::Path;
use std::sync::Arc;

use super::{Crash, SimFs};
use crate::sink::local::fs::{DataFile, StoreFs};

/// A filesystem with `/d/a`, 1 KiB, its first sector written with ones and durable (data
/// and name), the second zero.
fn durable_sector() -> (SimFs, Arc<dyn DataFile>) {
    let fs = SimFs::new();
    let d = Path::new("/d");
    fs.create_dir_all(d).unwrap();
    let f = fs.open_data(&d.join("a"), Some(1024)).unwrap();
    f.write_at(0, &[1; 512]).unwrap();
    f.sync_data().unwrap();
    fs.sync_dir(d).unwrap();
    (fs, f)
}

#[test]
fn a_crash_keeps_only_synced_data_and_synced_names() {
    let (fs, f) = durable_sector();
    let d = Path::new("/d");
    f.write_at(512, &[2; 512]).unwrap(); // never synced
    fs.write_file(&d.join("b"), b"x").unwrap();
    fs.sync_file(&d.join("b")).unwrap(); // data synced, name not
    fs.crash(Crash::DropVolatile);
    assert!(f.write_at(0, &[3; 512]).is_err(), "old handles are stale");
    let bytes = fs.file_bytes(&d.join("a")).unwrap();
    assert_eq!(&bytes[..512], &[1; 512]);
    assert_eq!(&bytes[512..], &[0; 512]);
    assert!(!fs.exists(&d.join("b")).unwrap());
}

#[test]
fn a_failed_sync_drops_the_unsynced_writes_and_the_next_sync_succeeds_without_them() {
    let (fs, f) = durable_sector();
    let d = Path::new("/d");
    f.write_at(512, &[2; 512]).unwrap();
    fs.fail_syncs(1);
    let e = f.sync_data().unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    f.sync_data().unwrap(); // "succeeds": nothing is left to write
    let mut b = [9u8; 1024];
    f.read_at(0, &mut b).unwrap();
    assert_eq!(&b[..512], &[1; 512]);
    assert_eq!(&b[512..], &[0; 512], "the failed pages are gone");
    fs.crash(Crash::DropVolatile);
    assert_eq!(fs.file_bytes(&d.join("a")).unwrap()[512..], [0; 512]);
}
