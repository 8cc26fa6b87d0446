//! `vdrep log-write DISK --offset N --file F [--log-only]`: records a write in the disk's
//! active change log, atomically with respect to a log switch, and writes it into the disk
//! where vdrep can (raw and fixed VHD, whose bytes sit at their virtual offsets). A switch
//! intent beside the disk left by a crashed sender is completed before the write.

use super::CliResult;
use std::fs::OpenOptions as FsOpen;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use super::Context;
use bytes::Bytes;

use super::CliError;
use crate::disk::{self, DiskFormat, OpenOptions};
use crate::tracking::Tracker;

#[derive(clap::Args, Debug)]
#[command(after_help = "Example:\n  vdrep log-write os.raw --offset 1048576 --file block.bin")]
pub struct Args {
    /// The protected disk.
    disk: PathBuf,
    /// Disk offset of the write (multiple of 512).
    #[arg(long)]
    offset: u64,
    /// File holding the bytes (length a multiple of 512).
    #[arg(long)]
    file: PathBuf,
    /// Only log the write: the bytes were written into the disk by someone else (needed for
    /// dynamic VHD and VHDX disks, which vdrep does not write).
    #[arg(long)]
    log_only: bool,
}

pub fn run(a: Args) -> Result<(), CliError> {
    log_write(a)
}

fn log_write(a: Args) -> CliResult<()> {
    let d = disk::open(&a.disk, OpenOptions::default())?;
    let info = d.info().clone();
    drop(d);
    let data =
        std::fs::read(&a.file).with_context(|| format!("{}: cannot read", a.file.display()))?;
    if data.is_empty() || !data.len().is_multiple_of(512) || !a.offset.is_multiple_of(512) {
        bail!(
            "{}: write of {} bytes at offset {}: offsets and lengths must be non-zero multiples of 512",
            a.disk.display(),
            data.len(),
            a.offset
        );
    }
    let end = a
        .offset
        .checked_add(data.len() as u64)
        .context("offset overflows")?;
    if end > info.virtual_size {
        bail!(
            "{}: write of {} bytes at offset {} ends past the disk's {} bytes",
            a.disk.display(),
            data.len(),
            a.offset,
            info.virtual_size
        );
    }
    let writes_disk = matches!(info.format, DiskFormat::Raw | DiskFormat::VhdFixed);
    if !writes_disk && !a.log_only {
        bail!(
            "{}: a {} disk is written by its hypervisor (or qemu-io), not by vdrep: write it there and log the same bytes with --log-only",
            a.disk.display(),
            info.format.as_str()
        );
    }
    let tracker = Tracker::new(&a.disk, info.virtual_size);
    // A log switch of the disk's VM interrupted by a crash is completed first (for all its
    // disks), so this write lands wholly after it on every disk.
    let now = std::time::SystemTime::from(crate::clock::Clock::now_utc(crate::clock::process()));
    let locked = tracker.lock_for_write(now)?;
    // Checked under the lock before the disk is touched: a write with no log to record it
    // would be a gap in the replica's history.
    if !tracker.is_active() {
        bail!(
            "{}: change tracking is not active (no {}): start protection with `vdrep send --interval` first",
            a.disk.display(),
            tracker.paths().active.display()
        );
    }
    let mut log = locked.active_writer()?;
    if writes_disk && !a.log_only {
        let f = FsOpen::new()
            .write(true)
            .open(&a.disk)
            .with_context(|| format!("{}: cannot open for writing", a.disk.display()))?;
        f.write_all_at(&data, a.offset).with_context(|| {
            format!("{}: write at offset {} failed", a.disk.display(), a.offset)
        })?;
        f.sync_data()
            .with_context(|| format!("{}: sync failed", a.disk.display()))?;
    }
    if let Err(e) = log.append(&[(a.offset, Bytes::from(data))], now) {
        if writes_disk && !a.log_only {
            // The disk holds a write its log does not: only a resync can bring the replica
            // in line again.
            let _ = tracker.mark_resync(&format!(
                "a write at offset {} reached the disk but not its change log: {e}",
                a.offset
            ));
        }
        return Err(e.into());
    }
    Ok(())
}
