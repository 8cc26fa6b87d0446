//! Which of a qemu VM's block nodes vdrep protects, and the store name of each.
//!
//! With qemu, the VM's writable disks are its guest block devices (`query-block`): every
//! inserted, writable medium, by its top node-name. qemu-storage-daemon has no guest
//! devices, so there `--drive NODE[=NAME]` is required and names node-names. A disk's store
//! NAME is the one given, else the node-name when it is a valid store name, else the image
//! file's stem (made unique in the VM as `disk_names` does).

use std::path::PathBuf;

use vdrep_qemu::qmp::Qmp;

use crate::sender::disk_names;

/// One `--drive NODE[=NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drive {
    /// The node-name.
    pub node: String,
    /// The store name, when given.
    pub name: Option<String>,
}

impl std::str::FromStr for Drive {
    type Err = String;

    fn from_str(s: &str) -> Result<Drive, String> {
        let (node, name) = match s.split_once('=') {
            Some((n, m)) => (n, Some(m.to_string())),
            None => (s, None),
        };
        if node.is_empty() || node.len() > 31 {
            return Err(format!("--drive {s:?}: a node-name has 1 to 31 characters"));
        }
        if let Some(m) = &name {
            crate::sink::validate_name("disk name", m).map_err(|e| format!("--drive {s}: {e}"))?;
        }
        Ok(Drive {
            node: node.to_string(),
            name,
        })
    }
}

/// A disk found in qemu.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundDisk {
    /// The node the guest writes through (the fleecing filter goes above it).
    pub node: String,
    /// The store name.
    pub name: String,
    /// The guest-visible size.
    pub size: u64,
    /// The node's driver (`qcow2` keeps bitmaps in the image).
    pub format: String,
    /// The image file.
    pub file: String,
}

/// Why discovery failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoverError {
    /// QMP failed.
    #[error(transparent)]
    Qmp(#[from] vdrep_qemu::qmp::QmpError),
    /// A `--drive` names no node.
    #[error(
        "qemu has no block node {0} (see `query-named-block-nodes`; --drive names node-names)"
    )]
    NoNode(String),
    /// No disk to protect.
    #[error("no writable disk found: the VM has no guest block devices (qemu-storage-daemon?): name its nodes with --drive NODE[=NAME]")]
    NoDisks,
    /// A node named twice, or two disks with one store name.
    #[error("{0}")]
    Invalid(String),
}

/// The disks to protect: `drives` when given, else the guest's writable block devices.
pub fn discover(qmp: &mut Qmp, drives: &[Drive]) -> Result<Vec<FoundDisk>, DiscoverError> {
    let nodes = qmp.named_block_nodes()?;
    let mut picked: Vec<(String, Option<String>)> = Vec::new();
    if drives.is_empty() {
        for d in qmp.block_devices()? {
            let Some(ins) = d.inserted else { continue };
            if ins.ro {
                continue;
            }
            let node = ins.node_name.ok_or_else(|| {
                DiscoverError::Invalid(format!(
                    "device {} has no node-name: name its node with --drive",
                    d.device
                ))
            })?;
            picked.push((node, None));
        }
    } else {
        for d in drives {
            picked.push((d.node.clone(), d.name.clone()));
        }
    }
    if picked.is_empty() {
        return Err(DiscoverError::NoDisks);
    }
    let mut out = Vec::new();
    let mut stems = Vec::new();
    for (i, (node, name)) in picked.iter().enumerate() {
        if picked[..i].iter().any(|(n, _)| n == node) {
            return Err(DiscoverError::Invalid(format!("node {node} named twice")));
        }
        let n = nodes
            .iter()
            .find(|n| n.node_name.as_deref() == Some(node.as_str()))
            .ok_or_else(|| DiscoverError::NoNode(node.clone()))?;
        stems.push(PathBuf::from(&n.image.filename));
        out.push(FoundDisk {
            node: node.clone(),
            name: name.clone().unwrap_or_default(),
            size: n.image.virtual_size,
            format: n.drv.clone(),
            file: n.image.filename.clone(),
        });
    }
    let by_stem = disk_names(&stems);
    for (d, stem) in out.iter_mut().zip(by_stem) {
        if d.name.is_empty() {
            d.name = if crate::sink::validate_name("disk name", &d.node).is_ok() {
                d.node.clone()
            } else {
                stem
            };
        }
    }
    for (i, d) in out.iter().enumerate() {
        if out[..i].iter().any(|e| e.name == d.name) {
            return Err(DiscoverError::Invalid(format!(
                "two disks would be stored as {}: give names with --drive NODE=NAME",
                d.name
            )));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drive_is_a_node_with_an_optional_store_name() {
        assert_eq!(
            "os0".parse::<Drive>().unwrap(),
            Drive {
                node: "os0".into(),
                name: None
            }
        );
        let d: Drive = "drive-virtio-disk0=os".parse().unwrap();
        assert_eq!(
            (d.node.as_str(), d.name.as_deref()),
            ("drive-virtio-disk0", Some("os"))
        );
        assert!("=os".parse::<Drive>().is_err());
        assert!("n=../x".parse::<Drive>().is_err(), "store name rules apply");
    }
}
