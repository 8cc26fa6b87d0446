//! `vdrep unprotect --vm VM (--store DIR | --azure-*) [--disk PATH...]`: disables protection
//! of a VM. Its replicas, recovery points and state go from the store; with the source disks
//! named (`--disk`), the change-tracking files beside them go too (`D.hrl`, closed
//! `D.NNNNNNNN.hrl` logs, `D.hrl.lock`, `D.hrl.shipped`, `D.hrl.resync`, `D.hrl.hashes`, `D.hrl.switch`, digests).
//!
//! Unprotecting is an operator action with replication stopped: a disk a receiver holds
//! (local lock, Azure lease) is refused with exit 1, and nothing of that disk is removed.

use super::CliResult;
use std::path::{Path, PathBuf};

use super::Context;
use anyhow::anyhow;

use super::store_args::StoreArgs;
use super::CliError;
use crate::sink::SinkError;
use crate::tracking::LogPaths;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  vdrep unprotect --store /srv/vdrep --vm vm1 --disk /vms/vm1/os.vhdx"
)]
pub struct Args {
    #[command(flatten)]
    store: StoreArgs,
    /// The VM to unprotect.
    #[arg(long)]
    vm: String,
    /// A source disk of the VM whose change-tracking files are removed (repeatable).
    #[arg(long = "disk")]
    disks: Vec<PathBuf>,
}

pub fn run(a: Args) -> Result<(), CliError> {
    let store = a.store.open_existing()?;
    let keys = store.list_disks(Some(&a.vm))?;
    if keys.is_empty() && a.disks.is_empty() {
        return Err(anyhow!(
            "{} holds no disks of VM {:?}: nothing to unprotect",
            store.describe(),
            a.vm
        )
        .into());
    }
    for k in &keys {
        match store.remove_disk(k) {
            Ok(()) => println!(
                "removed replica {k} and its recovery points from {}",
                store.describe()
            ),
            // A plain message, not the recoverable sink error: this needs the operator.
            Err(SinkError::Locked { path }) => {
                return Err(anyhow!(
                    "{}: disk {k} is being replicated (a receiver holds it): stop replication \
                     of VM {} first, then run unprotect again",
                    path.display(),
                    a.vm
                )
                .into())
            }
            Err(e) => return Err(e.into()),
        }
    }
    if keys.is_empty() {
        println!("{} holds no disks of VM {:?}", store.describe(), a.vm);
    }
    // The VM's job history goes with its protection (after the replicas: a removal cut
    // short still lists the VM and can be run again).
    store.remove_jobs(&a.vm)?;
    for d in &a.disks {
        let n = remove_tracking(d)?;
        println!(
            "removed change tracking of {} ({n} file{})",
            d.display(),
            if n == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

/// Removes the change-tracking files beside `disk`; returns how many there were.
fn remove_tracking(disk: &Path) -> CliResult<usize> {
    let p = LogPaths::new(disk);
    let mut files: Vec<PathBuf> = match p.closed_logs() {
        Ok(v) => v.into_iter().flat_map(|(c, f)| [f, p.digest(c)]).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("{}: cannot list the change logs", disk.display()))
        }
    };
    if let Ok(Some((_, next))) = p.find_next() {
        files.push(next);
    }
    files.extend([
        p.active.clone(),
        p.shipped.clone(),
        p.resync.clone(),
        p.hashes.clone(),
        p.switch.clone(),
        p.lock.clone(),
    ]);
    let mut n = 0;
    for f in files {
        match std::fs::remove_file(&f) {
            Ok(()) => n += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("{}: cannot remove", f.display())),
        }
    }
    if n > 0 {
        p.sync_dir()
            .with_context(|| format!("{}: cannot sync the folder", disk.display()))?;
    }
    Ok(n)
}
