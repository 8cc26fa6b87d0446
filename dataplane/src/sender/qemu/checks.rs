//! Enable protection's prerequisite checks of a qemu VM (DESIGN.md §1), in order, each a
//! step of the VM's enable-protection job: **QMP reachable** (the monitor socket answers
//! the QMP handshake), **disks found** (the `--drive` nodes, or the guest's writable block
//! devices, as [`super::discover`] picks them), **bitmaps supported** (every disk's node takes
//! the dirty bitmap protection would add: [`vdrep_qemu::fleece::probe_bitmap`]).
//!
//! The same checks run for a VM named on the command line, in the config, or asked for over
//! the control channel (the sidecar's enable-protection job): a failing one stops that VM
//! before anything is changed in qemu, and its message names the step, the socket or node
//! and qemu's reason, so the job's error says what to fix.

use std::time::Duration;

use vdrep_qemu::fleece::{probe_bitmap, FleeceError};
use vdrep_qemu::qmp::Qmp;

use super::discover::{discover, DiscoverError, FoundDisk};
use super::QemuSpec;
use crate::sender::SendError;

/// The job step: the QMP socket answers.
pub const STEP_QMP: &str = "QMP reachable";
/// The job step: the disks to protect exist in qemu.
pub const STEP_DISKS: &str = "disks found";
/// The job step: every disk's node takes a dirty bitmap.
pub const STEP_BITMAPS: &str = "bitmaps supported";
/// The steps, in order.
pub const STEPS: [&str; 3] = [STEP_QMP, STEP_DISKS, STEP_BITMAPS];

/// The checks passed: the open QMP session, the disks, and each step's detail (for the
/// job), in [`STEPS`] order.
pub struct Checked {
    /// The QMP session the checks used (the VM keeps it).
    pub qmp: Qmp,
    /// The disks to protect, in order.
    pub disks: Vec<FoundDisk>,
    /// What each step found.
    pub details: [String; 3],
}

/// A check failed: which one and why (the job shows both).
#[derive(Debug, Clone, thiserror::Error)]
#[error("prerequisite check failed: {step}: {message}")]
pub struct CheckFailed {
    /// The failing step (one of [`STEPS`]).
    pub step: &'static str,
    /// What failed and what to do.
    pub message: String,
    /// Whether trying again later may pass (qemu not running yet, a slow monitor).
    pub transient: bool,
}

impl CheckFailed {
    /// The error the sender reports for VM `vm`.
    pub fn into_send_error(self, vm: &str) -> SendError {
        SendError::Source {
            vm: vm.to_string(),
            transient: self.transient,
            message: self.to_string(),
        }
    }
}

/// Runs the checks in order; the first failure ends them.
pub fn run(spec: &QemuSpec, timeout: Duration) -> Result<Checked, CheckFailed> {
    let mut qmp = Qmp::connect(&spec.qmp, timeout).map_err(|e| CheckFailed {
        step: STEP_QMP,
        transient: e.is_transient(),
        message: e.to_string(),
    })?;
    let v = qmp.version();
    let qmp_detail = format!(
        "{} answers (qemu {}.{}.{})",
        spec.qmp.display(),
        v.major,
        v.minor,
        v.micro
    );
    let disks = discover(&mut qmp, &spec.drives).map_err(|e| CheckFailed {
        step: STEP_DISKS,
        transient: matches!(&e, DiscoverError::Qmp(q) if q.is_transient()),
        message: e.to_string(),
    })?;
    let disks_detail = disks
        .iter()
        .map(|d| {
            format!(
                "{} (node {}, {} {}, {} bytes)",
                d.name, d.node, d.format, d.file, d.size
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let mut kinds = Vec::new();
    for d in &disks {
        // As the switches add it: persistent where the format keeps bitmaps.
        let persistent = d.format == "qcow2";
        probe_bitmap(&mut qmp, &d.node, persistent).map_err(|e| CheckFailed {
            step: STEP_BITMAPS,
            transient: e.is_transient(),
            message: bitmap_refused(d, persistent, &e),
        })?;
        kinds.push(format!(
            "{}: {}",
            d.name,
            if persistent {
                "persistent (kept in the image)"
            } else {
                "in memory (lost when qemu stops: a resync follows)"
            }
        ));
    }
    Ok(Checked {
        qmp,
        disks,
        details: [qmp_detail, disks_detail, kinds.join(", ")],
    })
}

/// A node refused the probe bitmap: qemu's reason, and the fix for the known case.
fn bitmap_refused(d: &FoundDisk, persistent: bool, e: &FleeceError) -> String {
    let kind = if persistent {
        "a persistent dirty bitmap"
    } else {
        "a dirty bitmap"
    };
    let mut m = format!("disk {} (node {}) takes no {kind}: {e}", d.name, d.node);
    if persistent && e.to_string().contains("v2") {
        m.push_str(&format!(
            "; upgrade the image to qcow2 v3 (`qemu-img amend -o compat=1.1 {}` while the VM is stopped)",
            d.file
        ));
    }
    m
}
