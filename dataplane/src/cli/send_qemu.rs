//! The qemu VMs of `vdrep send`: `--vm VM --qmp SOCKET [--drive NODE[=NAME]]... [--nbd
//! SOCKET]`, or `qmp`, `drives` and `nbd` on a `[[vm]]` of the config (issue 18), split
//! from the VMs whose disks are image files.

use super::send::{Args, FileVm};
use crate::sender::qemu::QemuSpec;
use crate::sender::VmSpec;

/// The config's VMs and the command line's `--qmp` VM, as image-file VMs and qemu VMs
/// (the command line's `--vm` with DISKs is added by the caller). `interval`: `--interval`
/// is given (a qemu VM is protected, never copied once).
pub(super) fn split_vms(
    a: &Args,
    file_vms: Vec<FileVm>,
    interval: bool,
) -> super::CliResult<(Vec<VmSpec>, Vec<QemuSpec>)> {
    let mut vms: Vec<VmSpec> = Vec::new();
    let mut qemu: Vec<QemuSpec> = Vec::new();
    for v in file_vms {
        match v.qmp {
            Some(qmp) => {
                if !v.disks.is_empty() {
                    bail!("[[vm]] {}: give either disks or qmp, not both", v.name);
                }
                let drives = v
                    .drives
                    .iter()
                    .map(|d| d.parse::<crate::sender::qemu::Drive>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| anyhow::anyhow!("[[vm]] {}: {e}", v.name))?;
                qemu.push(QemuSpec {
                    vm: v.name,
                    qmp,
                    drives,
                    nbd: v.nbd,
                    group: v.group,
                });
            }
            None => {
                if !v.drives.is_empty() || v.nbd.is_some() {
                    bail!("[[vm]] {}: drives and nbd need qmp", v.name);
                }
                vms.push(VmSpec {
                    name: v.name,
                    disks: v.disks,
                    group: v.group,
                })
            }
        }
    }
    if a.qmp.is_none() && (!a.drives.is_empty() || a.nbd.is_some()) {
        bail!("--drive and --nbd need --qmp");
    }
    match (&a.vm, &a.qmp) {
        (Some(vm), Some(qmp)) => {
            if !a.disks.is_empty() {
                bail!("--vm {vm} --qmp: qemu's disks are named with --drive, not as DISK");
            }
            vms.retain(|v| &v.name != vm);
            qemu.retain(|q| &q.vm != vm);
            qemu.push(QemuSpec {
                vm: vm.clone(),
                qmp: qmp.clone(),
                drives: a.drives.clone(),
                nbd: a.nbd.clone(),
                group: a.group.clone(),
            });
        }
        (None, Some(_)) => bail!("--qmp needs --vm VM"),
        _ => {}
    }
    for q in &qemu {
        crate::sink::validate_name("VM name", &q.vm)?;
    }
    if !qemu.is_empty() && !interval {
        bail!("--qmp protects a running VM: give --interval");
    }
    Ok((vms, qemu))
}

#[cfg(test)]
mod qemu_tests {
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: super::super::send::Args,
    }

    fn parse(args: &[&str]) -> super::super::CliResult<super::super::send::Options> {
        let mut v = vec!["send", "--to", "r:1", "--tls", "t", "--identity", "h"];
        v.extend_from_slice(args);
        let cli = Cli::try_parse_from(v).expect("the test's arguments parse");
        super::super::send::options(&cli.a)
    }

    #[test]
    fn a_qemu_vm_comes_from_qmp_and_drive_flags_or_a_config_vm_with_qmp_and_drives() {
        let (vms, opts, _, _) = parse(&[
            "--vm",
            "vm1",
            "--qmp",
            "/run/vm1.qmp",
            "--drive",
            "os0=os",
            "--drive",
            "data",
            "--interval",
            "1s",
        ])
        .unwrap();
        assert!(vms.is_empty());
        assert_eq!(opts.qemu.len(), 1);
        let q = &opts.qemu[0];
        assert_eq!(
            (q.vm.as_str(), q.qmp.to_str()),
            ("vm1", Some("/run/vm1.qmp"))
        );
        assert_eq!(q.drives.len(), 2);
        assert_eq!(q.drives[0].name.as_deref(), Some("os"));
        assert_eq!(q.nbd, None);

        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("s.toml");
        std::fs::write(
            &conf,
            "interval = \"5m\"\n[[vm]]\nname = \"db\"\nqmp = \"/run/db.qmp\"\ndrives = [\"d0=data\"]\nnbd = \"/run/db.nbd\"\n[[vm]]\nname = \"web\"\ndisks = [\"/vms/web.vhdx\"]\n",
        )
        .unwrap();
        let (vms, opts, policy, _) = parse(&["--config", conf.to_str().unwrap()]).unwrap();
        assert!(policy.is_some());
        assert_eq!(vms.len(), 1, "the file VM with disks");
        assert_eq!(opts.qemu.len(), 1);
        assert_eq!(opts.qemu[0].vm, "db");
        assert_eq!(
            opts.qemu[0].nbd.as_deref().and_then(|p| p.to_str()),
            Some("/run/db.nbd")
        );
    }

    #[test]
    fn qmp_without_interval_or_with_disk_paths_and_drive_without_qmp_are_refused() {
        let e = parse(&["--vm", "vm1", "--qmp", "/q"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--interval"), "{e}");
        let e = parse(&["--vm", "vm1", "--qmp", "/q", "--interval", "1s", "/a.raw"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--drive"), "{e}");
        let e = parse(&["--vm", "vm1", "--drive", "x", "/a.raw"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("need --qmp"), "{e}");
    }

    #[test]
    fn a_qemu_vm_joins_a_consistency_group_and_a_second_qemu_vm_in_it_is_refused() {
        let (_, opts, _, _) = parse(&[
            "--vm",
            "vm1",
            "--qmp",
            "/q",
            "--group",
            "g1",
            "--interval",
            "1s",
        ])
        .unwrap();
        assert_eq!(opts.qemu[0].group.as_deref(), Some("g1"));
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("s.toml");
        // One qemu VM and an image VM in one group.
        std::fs::write(
            &conf,
            "interval = \"5m\"\n[[vm]]\nname = \"db\"\nqmp = \"/run/db.qmp\"\ngroup = \"g1\"\n[[vm]]\nname = \"web\"\ndisks = [\"/vms/web.vhdx\"]\ngroup = \"g1\"\n",
        )
        .unwrap();
        let (vms, opts, _, _) = parse(&["--config", conf.to_str().unwrap()]).unwrap();
        assert_eq!(vms[0].group.as_deref(), Some("g1"));
        assert_eq!(opts.qemu[0].group.as_deref(), Some("g1"));
        // A second qemu VM in it: refused, saying why.
        let e = parse(&[
            "--config",
            conf.to_str().unwrap(),
            "--vm",
            "app",
            "--qmp",
            "/run/app.qmp",
            "--group",
            "g1",
        ])
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("consistency group g1") && e.contains("holds qemu VM db already"),
            "{e}"
        );
        assert!(e.contains("at most one qemu VM"), "{e}");
    }
}
