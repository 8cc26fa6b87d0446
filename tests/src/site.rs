//! Where a test's replicas are — a local store or a container in Azurite — and how to run
//! the operator commands (`points`, `failover`, `unprotect`, `jobs`) and a receiver against
//! it, so one test body covers both stores.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use vdrep::sink::azure::{AzureConfig, AzureStore};

use crate::azurite::Azurite;
use crate::procs::Receiver;
use crate::vdrep_command;

/// The container the Azure site uses.
pub const CONTAINER: &str = "replicas";

/// A store of replicas.
pub enum Site {
    /// A local store folder.
    Local(PathBuf),
    /// The container [`CONTAINER`] in an Azurite of the test's own.
    Azure(Azurite),
}

impl Site {
    /// A local store at `dir/store`, or a fresh Azurite.
    pub fn new(azure: bool, dir: &Path) -> Site {
        if azure {
            Site::Azure(Azurite::start())
        } else {
            Site::Local(dir.join("store"))
        }
    }

    /// A receiver writing to this store, allowing `allow`, logging to `log`.
    pub fn receiver(&self, tls: &Path, allow: &[&str], log: &Path) -> Receiver {
        match self {
            Site::Local(store) => Receiver::start(store, tls, allow),
            Site::Azure(az) => Receiver::start_azure(
                &az.url(),
                CONTAINER,
                &format!("?{}", az.sas()),
                tls,
                allow,
                log,
            ),
        }
    }

    /// The store options of every operator command.
    pub fn args(&self) -> Vec<String> {
        match self {
            Site::Local(p) => vec!["--store".into(), p.display().to_string()],
            Site::Azure(az) => vec![
                "--azure-url".into(),
                az.url(),
                "--azure-container".into(),
                CONTAINER.into(),
            ],
        }
    }

    /// `vdrep ARGS` with the store's options (the SAS in the environment, as operators
    /// would give it).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = vdrep_command();
        c.args(args).args(self.args());
        if let Site::Azure(az) = self {
            c.env("VDREP_AZURE_SAS", format!("?{}", az.sas()));
        }
        c
    }

    /// Runs `vdrep ARGS` with the store's options, whatever its exit status.
    pub fn vdrep(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("cannot start vdrep")
    }

    /// Runs `vdrep ARGS` with the store's options and requires success.
    pub fn vdrep_ok(&self, args: &[&str]) -> Output {
        crate::run(&mut self.command(args))
    }

    /// What the store holds of VM `vm`, sorted: files under `STORE/VM`, or blobs and
    /// snapshots (`NAME@SNAPSHOT`) under `VM/`.
    pub fn tree(&self, vm: &str) -> Vec<String> {
        match self {
            Site::Local(p) => files_under(&p.join(vm)),
            Site::Azure(az) => {
                let mut cfg = AzureConfig::new(&az.url(), CONTAINER);
                cfg.sas = Some(az.sas());
                let st = AzureStore::open(cfg).expect("open the Azurite store");
                let mut v: Vec<String> = st
                    .container()
                    .list(&format!("{vm}/"), true)
                    .expect("list blobs")
                    .into_iter()
                    .map(|b| format!("{}@{}", b.name, b.snapshot.unwrap_or_default()))
                    .collect();
                v.sort();
                v
            }
        }
    }

    /// `vdrep points --vm VM --json`, parsed.
    pub fn points(&self, vm: &str) -> serde_json::Value {
        let out = self.vdrep_ok(&["points", "--vm", vm, "--json"]);
        serde_json::from_slice(&out.stdout).expect("points --json prints JSON")
    }

    /// Disk name → number of its recovery points, from `points --json` (empty when the
    /// store holds no disk of the VM).
    pub fn disk_points(&self, vm: &str) -> Vec<(String, usize)> {
        let out = self.vdrep(&["points", "--vm", vm, "--json"]);
        if !out.status.success() {
            return Vec::new();
        }
        let doc: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("points --json prints JSON");
        doc["disks"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|d| {
                        (
                            d["disk"].as_str().unwrap_or_default().to_string(),
                            d["points"].as_array().map_or(0, |p| p.len()),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Every file under `dir`, relative, sorted (none when `dir` is absent).
pub fn files_under(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, d: &Path, out: &mut Vec<String>) {
        let Ok(list) = std::fs::read_dir(d) else {
            return;
        };
        for e in list.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if let Ok(rel) = p.strip_prefix(root) {
                out.push(rel.display().to_string());
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, dir, &mut v);
    v.sort();
    v
}
