//! `vdrep unprotect --vm VM (--store DIR | --azure-*) [--disk PATH[=NAME]...] [--yes]
//! [--qmp SOCKET [--drive NODE[=NAME]...] [--state DIR]]`: disables protection of a VM, or
//! of some of its disks; with `--qmp`, of a qemu VM: vdrep's bitmaps and leftovers go from
//! qemu too.
//!
//! Without `--disk` the whole VM goes: every replica with its recovery points, and the VM's
//! job history. With `--disk` only the disks named go — each one's replica and recovery
//! points from the store (NAME, by default PATH's stem as `send` names it; the store's name
//! must be given when `send` made it `STEM-2`), and the change-tracking files beside PATH
//! (`D.hrl`, closed `D.NNNNNNNN.hrl` logs, `D.hrl.lock`, `D.hrl.shipped`, `D.hrl.resync`,
//! `D.hrl.hashes`, `D.hrl.switch`, digests, point plans; [`LogPaths::existing_files`]). The VM's other
//! disks, and its jobs, stay; naming every disk of the VM is the whole VM. This is how a
//! disk leaves a protected VM: a `send` whose disks differ from the store's is refused until
//! the disks it no longer names are unprotected.
//!
//! It asks first on a terminal, and refuses without `--yes` when stdin is not one (see
//! [`super::confirm`]). Unprotecting is an operator action with replication stopped: a disk
//! a receiver holds (local lock, Azure lease) is refused with exit 1, and nothing of that
//! disk is removed; a removal cut short can be run again.

use std::path::{Path, PathBuf};

use super::Context;
use anyhow::anyhow;

use super::confirm::{confirm, Answer};
use super::store_args::StoreArgs;
use super::{CliError, CliResult};
use crate::sink::{vm_points, DiskKey, ReplicaStore, SinkError};
use crate::tracking::LogPaths;

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    vdrep unprotect --store /srv/vdrep --vm vm1 --yes                      # the whole VM\n  \
    vdrep unprotect --store /srv/vdrep --vm vm1 --disk /vms/vm1/data.vhdx  # one disk (asks)\n  \
    vdrep unprotect --store /srv/vdrep --vm vm1 --disk /vms/b/os.vhdx=os-2 --yes")]
pub struct Args {
    #[command(flatten)]
    store: StoreArgs,
    /// The VM to unprotect.
    #[arg(long)]
    vm: String,
    /// A disk of the VM to unprotect (repeatable): its replica and recovery points in the
    /// store, named NAME (default: PATH's stem, as `send` names it; `send` names a second
    /// disk with the same stem STEM-2), and its change-tracking files beside PATH. Without
    /// --disk the whole VM is unprotected.
    #[arg(long = "disk", value_name = "PATH[=NAME]", value_parser = parse_disk)]
    disks: Vec<DiskSpec>,
    /// Remove without asking (needed when stdin is not a terminal).
    #[arg(long, short = 'y')]
    yes: bool,
    /// A qemu VM: remove vdrep's bitmaps, views, jobs and exports from it through this
    /// QMP socket, and its folder in --state.
    #[arg(long, value_name = "SOCKET")]
    qmp: Option<PathBuf>,
    /// With --qmp: the nodes protected, as `send --drive` named them [default: the guest's
    /// writable block devices].
    #[arg(long = "drive", value_name = "NODE[=NAME]")]
    drives: Vec<crate::sender::qemu::Drive>,
    /// With --qmp: the sender's state folder [default: as `send`].
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
}

/// One `--disk PATH[=NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    /// The source disk's image, beside which its change logs live.
    path: PathBuf,
    /// The disk's name in the store.
    name: String,
}

/// Parses `PATH[=NAME]`. An argument that names an existing file is a PATH whole, even with
/// an `=` in it; otherwise the text after the last `=` is NAME when it holds no `/`.
fn parse_disk(s: &str) -> Result<DiskSpec, String> {
    if s.is_empty() {
        return Err("empty disk path".into());
    }
    let (path, name) = match s.rsplit_once('=') {
        Some((p, n)) if !Path::new(s).exists() && !n.contains('/') => {
            if p.is_empty() {
                return Err(format!("{s:?}: PATH is empty (the form is PATH[=NAME])"));
            }
            crate::sink::validate_name("disk name", n).map_err(|e| e.to_string())?;
            (PathBuf::from(p), n.to_string())
        }
        _ => {
            let p = PathBuf::from(s);
            let name = crate::sender::disk_names(std::slice::from_ref(&p)).remove(0);
            (p, name)
        }
    };
    Ok(DiskSpec { path, name })
}

/// What unprotecting one disk removes, found before anything is removed.
struct Item {
    /// The disk's name in the store.
    name: String,
    /// The replica in the store (`None`: the store has none by that name; only the change
    /// tracking or parts of the VM's points are left, e.g. after a removal cut short).
    key: Option<DiskKey>,
    /// The VM's recovery points name the disk.
    in_vm_points: bool,
    /// Its recovery points, when they could be counted.
    points: Option<usize>,
    /// The source disk (`--disk`), and its tracking files now.
    source: Option<(PathBuf, Vec<PathBuf>)>,
}

pub fn run(a: Args) -> Result<(), CliError> {
    if a.qmp.is_none() && (!a.drives.is_empty() || a.state.is_some()) {
        return Err(CliError::usage(anyhow!("--drive and --state need --qmp")));
    }
    for (i, d) in a.disks.iter().enumerate() {
        if a.disks[..i].iter().any(|e| e.name == d.name) {
            return Err(CliError::usage(anyhow!(
                "--disk {}: disk {:?} is named twice",
                d.path.display(),
                d.name
            )));
        }
    }
    let store = a.store.open_existing()?;
    let keys = store.list_disks(Some(&a.vm))?;
    let in_points = point_disks(store.as_ref(), &a.vm)?;
    // A qemu VM whose store holds nothing (yet, or any more) still has vdrep's bitmaps.
    let nothing_stored = keys.is_empty() && in_points.is_empty() && a.disks.is_empty();
    let items = if a.qmp.is_some() && nothing_stored {
        Vec::new()
    } else {
        plan(store.as_ref(), &a.vm, &keys, &in_points, &a.disks)?
    };
    // Naming every disk of the VM is unprotecting the VM: its jobs go too.
    let whole_vm = keys
        .iter()
        .all(|k| items.iter().any(|i| i.key.as_ref() == Some(k)));

    let mut lines = Vec::new();
    for i in &items {
        if let Some(k) = &i.key {
            lines.push(match i.points {
                Some(n) => format!("replica {k} and its {n} recovery point{}", plural(n)),
                None => format!("replica {k} and its recovery points"),
            });
        }
        if i.in_vm_points {
            lines.push(format!(
                "disk {}'s parts of the VM's recovery points",
                i.name
            ));
        }
        if let Some((p, files)) = &i.source {
            if !files.is_empty() {
                lines.push(format!(
                    "change tracking of {}: {} file{}",
                    p.display(),
                    files.len(),
                    plural(files.len())
                ));
            }
        }
    }
    if let Some(qmp) = &a.qmp {
        lines.push(format!(
            "vdrep's dirty bitmaps, views and exports in qemu ({}) and its qemu state folder",
            qmp.display()
        ));
    }
    if whole_vm {
        lines.push(format!("the job history of VM {}", a.vm));
    } else {
        let staying: Vec<&str> = keys
            .iter()
            .filter(|k| !items.iter().any(|i| i.key.as_ref() == Some(*k)))
            .map(|k| k.disk.as_str())
            .collect();
        lines.push(format!(
            "(staying: disk{} {} and the VM's jobs)",
            plural(staying.len()),
            staying.join(", ")
        ));
    }
    let action = format!("unprotect VM {} in {}", a.vm, store.describe());
    if confirm(a.yes, &action, &lines)? == Answer::No {
        return Err(anyhow!("unprotect cancelled: nothing removed").into());
    }

    // Per disk: the replica first, then its parts of the VM's points (a removal cut short
    // in between leaves points naming a missing disk, which running unprotect again
    // finishes; the other order would drop the parts of a disk a receiver still holds).
    for i in &items {
        if let Some(k) = &i.key {
            remove_replica(store.as_ref(), k, &a.vm)?;
        }
        if i.in_vm_points {
            vm_points::remove_disk(store.as_ref(), &a.vm, &i.name)?;
            println!(
                "removed disk {} from the recovery points of VM {}",
                i.name, a.vm
            );
        }
    }
    if keys.is_empty() {
        println!("{} holds no disks of VM {:?}", store.describe(), a.vm);
    }
    if whole_vm {
        // The VM's job history goes with its protection (after the replicas: a removal cut
        // short still lists the VM and can be run again).
        store.remove_jobs(&a.vm)?;
    }
    for i in &items {
        let Some((p, files)) = &i.source else {
            continue;
        };
        let n = remove_files(p, files)?;
        println!(
            "removed change tracking of {} ({n} file{})",
            p.display(),
            plural(n)
        );
    }
    if let Some(qmp) = &a.qmp {
        unprotect_qemu(&a, qmp)?;
    }
    Ok(())
}

/// Removes everything vdrep added to the qemu VM (its bitmaps too) and the VM's qemu state.
fn unprotect_qemu(a: &Args, qmp: &Path) -> Result<(), CliError> {
    let spec = crate::sender::qemu::QemuSpec {
        vm: a.vm.clone(),
        qmp: qmp.to_path_buf(),
        drives: a.drives.clone(),
        nbd: None,
        group: None,
    };
    let state = a
        .state
        .clone()
        .unwrap_or_else(crate::sender::pending::default_state_dir);
    let r = crate::sender::qemu::unprotect::unprotect(&spec, &state).map_err(|e| anyhow!(e))?;
    println!(
        "removed from qemu: {} bitmap(s) {:?}, {} leftover(s){}{}",
        r.bitmaps.len(),
        r.bitmaps,
        r.leftovers,
        if r.nbd_server {
            ", vdrep's NBD server"
        } else {
            ""
        },
        if r.state { ", its state folder" } else { "" }
    );
    Ok(())
}

/// Removes one replica with its own recovery points.
fn remove_replica(store: &dyn ReplicaStore, k: &DiskKey, vm: &str) -> Result<(), CliError> {
    match store.remove_disk(k) {
        Ok(()) => {
            println!(
                "removed replica {k} and its recovery points from {}",
                store.describe()
            );
            Ok(())
        }
        // A plain message, not the recoverable sink error: this needs the operator.
        Err(SinkError::Locked { path }) => Err(anyhow!(
            "{}: disk {k} is being replicated (a receiver holds it): stop replication of VM \
             {vm} first, then run unprotect again",
            path.display()
        )
        .into()),
        Err(e) => Err(e.into()),
    }
}

/// The disks the VM's recovery-point manifest names (none without a manifest, or on a
/// store that keeps no VM points).
fn point_disks(store: &dyn ReplicaStore, vm: &str) -> Result<Vec<String>, CliError> {
    let m = match store.vm_points(vm) {
        Ok(Some(m)) => m,
        Ok(None) | Err(SinkError::NotSupported { .. }) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut v: Vec<String> = m
        .points
        .iter()
        .flat_map(|p| p.disks.iter().map(|d| d.disk.clone()))
        .collect();
    v.sort();
    v.dedup();
    Ok(v)
}

/// The disks to unprotect: every disk of the VM without `--disk`, else the named ones, each
/// of which must have a replica in the store or tracking files beside it.
fn plan(
    store: &dyn ReplicaStore,
    vm: &str,
    keys: &[DiskKey],
    in_points: &[String],
    specs: &[DiskSpec],
) -> Result<Vec<Item>, CliError> {
    let count = |k: &DiskKey| {
        store
            .point_reader(k)
            .and_then(|r| r.points())
            .ok()
            .map(|p| p.len())
    };
    if specs.is_empty() {
        if keys.is_empty() && in_points.is_empty() {
            return Err(anyhow!(
                "{} holds no disks of VM {vm:?}: nothing to unprotect",
                store.describe()
            )
            .into());
        }
        let mut items: Vec<Item> = keys
            .iter()
            .map(|k| Item {
                name: k.disk.clone(),
                key: Some(k.clone()),
                in_vm_points: in_points.contains(&k.disk),
                points: count(k),
                source: None,
            })
            .collect();
        // Parts of disks whose replica went already (a removal cut short).
        for d in in_points {
            if !keys.iter().any(|k| &k.disk == d) {
                items.push(Item {
                    name: d.clone(),
                    key: None,
                    in_vm_points: true,
                    points: None,
                    source: None,
                });
            }
        }
        return Ok(items);
    }
    let mut items = Vec::new();
    let mut missing = Vec::new();
    for s in specs {
        let key = DiskKey::new(vm, &s.name)?;
        let files = match LogPaths::new(&s.path).existing_files() {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("{}: cannot list the change logs", s.path.display()))
            }
        };
        let held = keys.contains(&key);
        let in_vm_points = in_points.contains(&s.name);
        if !held && !in_vm_points && files.is_empty() {
            missing.push(s);
        }
        items.push(Item {
            name: s.name.clone(),
            in_vm_points,
            points: if held { count(&key) } else { None },
            key: held.then_some(key),
            source: Some((s.path.clone(), files)),
        });
    }
    if !missing.is_empty() {
        let names: Vec<String> = keys.iter().map(|k| k.disk.clone()).collect();
        let what: Vec<String> = missing
            .iter()
            .map(|s| format!("{} (as {:?})", s.path.display(), s.name))
            .collect();
        return Err(anyhow!(
            "{} holds no disk of VM {vm:?} named {} and no change tracking is beside it: \
             nothing to unprotect (the VM's disks there: {}; name one as --disk PATH=NAME)",
            store.describe(),
            what.join(", "),
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        )
        .into());
    }
    Ok(items)
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Removes `files` (one disk's change tracking, listed by the plan); returns how many were
/// still there.
fn remove_files(disk: &Path, files: &[PathBuf]) -> CliResult<usize> {
    let mut n = 0;
    for f in files {
        match std::fs::remove_file(f) {
            Ok(()) => n += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("{}: cannot remove", f.display())),
        }
    }
    if n > 0 {
        LogPaths::new(disk)
            .sync_dir()
            .with_context(|| format!("{}: cannot sync the folder", disk.display()))?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(path: &str, name: &str) -> DiskSpec {
        DiskSpec {
            path: PathBuf::from(path),
            name: name.into(),
        }
    }

    #[test]
    fn a_disk_is_named_by_its_stem_as_send_names_it_unless_given() {
        assert_eq!(
            parse_disk("/vms/vm1/os.vhdx"),
            Ok(spec("/vms/vm1/os.vhdx", "os"))
        );
        assert_eq!(
            parse_disk("/vms/b/os.vhdx=os-2"),
            Ok(spec("/vms/b/os.vhdx", "os-2"))
        );
        assert_eq!(
            parse_disk("my disk.raw"),
            Ok(spec("my disk.raw", "my_disk"))
        );
        // `=` inside a folder name is part of the path.
        assert_eq!(
            parse_disk("/vms/a=b/os.vhdx"),
            Ok(spec("/vms/a=b/os.vhdx", "os"))
        );
        assert!(parse_disk("=os").unwrap_err().contains("PATH is empty"));
        assert!(parse_disk("os.vhdx=").is_err());
        assert!(parse_disk("os.vhdx=.hidden").is_err());
        assert!(parse_disk("").is_err());
    }

    #[test]
    fn an_existing_file_with_an_equals_sign_is_a_path_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a=b.raw");
        std::fs::write(&p, b"").unwrap();
        let s = p.to_str().unwrap();
        assert_eq!(parse_disk(s), Ok(spec(s, "a_b")));
    }
}
