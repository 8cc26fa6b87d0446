//! What the fleecing tests check and how they read disks.

use std::path::Path;
use std::time::Duration;

use vdrep_qemu::fleece::{bitmap_state, BitmapState, SwitchDisk};
use vdrep_qemu::nbd::{Extent, NbdClient};
use vdrep_qemu::qmp::Qmp;

use super::{make_image, Disk, Qsd, Rng};

pub const SIZE: u64 = 8 << 20;
pub const IO: Duration = Duration::from_secs(20);
pub const LIMIT: Duration = Duration::from_secs(120);

pub fn disk(dir: &Path, node: &str, format: &str, fill: u8) -> Disk {
    Disk {
        path: make_image(dir, node, format, SIZE, fill),
        format: format.into(),
        node: node.into(),
    }
}

pub fn read_all<S: std::io::Read + std::io::Write>(c: &mut NbdClient<S>) -> Vec<u8> {
    let mut buf = vec![0u8; c.size() as usize];
    for (i, piece) in buf.chunks_mut(256 << 10).enumerate() {
        c.read(i as u64 * (256 << 10), piece).unwrap();
    }
    buf
}

/// The guest's disk as the guest sees it now, over its own export.
pub fn guest_contents(q: &Qsd, node: &str) -> Vec<u8> {
    let mut c = NbdClient::connect_unix(q.nbd_socket(), &format!("guest-{node}"), &[], IO).unwrap();
    read_all(&mut c)
}

pub fn apply(model: &mut [u8], writes: &[(u64, u64, u8)]) {
    for &(off, len, pat) in writes {
        model[off as usize..(off + len) as usize].fill(pat);
    }
}

/// `n` writes of 1 byte to 96 KiB at any offset (unaligned too), patterns from `first`.
pub fn random_writes(rng: &mut Rng, n: usize, first: u8) -> Vec<(u64, u64, u8)> {
    (0..n)
        .map(|i| {
            let len = 1 + rng.below(96 << 10);
            let off = rng.below(SIZE - len);
            (off, len, first.wrapping_add(i as u8) | 1)
        })
        .collect()
}

pub fn switch_disks(nodes: &[(&str, Option<&str>)]) -> Vec<SwitchDisk> {
    nodes
        .iter()
        .map(|(n, p)| SwitchDisk {
            node: n.to_string(),
            previous_bitmap: p.map(str::to_string),
            copy: false,
        })
        .collect()
}

/// Nothing named `vdrep-` but bitmaps: no node, job or export.
pub fn assert_only_bitmaps_left(qmp: &mut Qmp) {
    let nodes: Vec<String> = qmp
        .named_block_nodes()
        .unwrap()
        .into_iter()
        .filter_map(|n| n.node_name)
        .filter(|n| n.starts_with("vdrep-"))
        .collect();
    assert!(nodes.is_empty(), "nodes left: {nodes:?}");
    let jobs: Vec<String> = qmp.jobs().unwrap().into_iter().map(|j| j.id).collect();
    assert!(jobs.is_empty(), "jobs left: {jobs:?}");
    let exports: Vec<String> = qmp
        .block_exports()
        .unwrap()
        .into_iter()
        .filter(|e| e.id.starts_with("vdrep-") || e.node_name.starts_with("vdrep-"))
        .map(|e| format!("{} on {}", e.id, e.node_name))
        .collect();
    assert!(
        exports.is_empty(),
        "exports left or still on a vdrep node: {exports:?}"
    );
}

pub fn scratch_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

pub fn bitmap_count(qmp: &mut Qmp, node: &str, name: &str) -> u64 {
    match bitmap_state(qmp, node, name).unwrap() {
        BitmapState::Present(b) => b.count,
        other => panic!("bitmap {name} on {node}: {other:?}"),
    }
}

/// Every written byte lies inside a dirty extent.
pub fn assert_covered(writes: &[(u64, u64, u8)], dirty: &[Extent]) {
    for &(off, len, _) in writes {
        let mut at = off;
        while at < off + len {
            let e = dirty
                .iter()
                .find(|e| e.offset <= at && at < e.end())
                .unwrap_or_else(|| panic!("write {off}+{len}: byte {at} is in no dirty extent"));
            at = e.end();
        }
    }
}
