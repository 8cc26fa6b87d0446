//! The parts of qemu's query answers vdrep reads (names as in qemu's QAPI schema,
//! `qapi/block-core.json` and `qapi/block-export.json`); unknown members are ignored so a
//! newer qemu that adds some still decodes.

use serde::Deserialize;

use super::client::Qmp;
use super::error::QmpError;

/// A dirty bitmap as qemu reports it (`BlockDirtyInfo`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct DirtyBitmap {
    /// The bitmap's name (qemu's internal bitmaps, e.g. a backup job's, have none).
    #[serde(default)]
    pub name: Option<String>,
    /// Bytes marked dirty.
    pub count: u64,
    /// Bytes per bit.
    pub granularity: u64,
    /// True while the bitmap records writes (enabled).
    pub recording: bool,
    /// True while an operation (a job, an export) holds the bitmap.
    pub busy: bool,
    /// True when qemu stores it in the image (qcow2) and reloads it on start.
    pub persistent: bool,
    /// True when a persistent bitmap was not saved cleanly (qemu crashed): its contents
    /// cannot be trusted.
    #[serde(default)]
    pub inconsistent: bool,
}

/// Size and format of a node's image (`ImageInfo`, the part vdrep reads).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ImageInfo {
    /// The image's file name.
    pub filename: String,
    /// The guest-visible size in bytes.
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
    /// The format (`raw`, `qcow2`, ...).
    pub format: String,
}

/// A named block node (`BlockDeviceInfo`, an element of `query-named-block-nodes`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct BlockNode {
    /// The node's name (auto-generated ones start with `#`).
    #[serde(rename = "node-name", default)]
    pub node_name: Option<String>,
    /// The driver (`qcow2`, `raw`, `file`, `copy-before-write`, `snapshot-access`, ...).
    pub drv: String,
    /// The node's file name as qemu shows it.
    pub file: String,
    /// True when the node is read-only.
    pub ro: bool,
    /// Its image.
    pub image: ImageInfo,
    /// Its dirty bitmaps.
    #[serde(rename = "dirty-bitmaps", default)]
    pub dirty_bitmaps: Vec<DirtyBitmap>,
}

/// A block job (`BlockJobInfo`, an element of `query-block-jobs`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct BlockJob {
    /// The job's id (QMP calls it `device` for historical reasons).
    pub device: String,
    /// The job type (`backup`, `mirror`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// The job's status (`running`, `concluded`, ...).
    pub status: String,
}

/// A generic job (`JobInfo`, an element of `query-jobs`), e.g. a `blockdev-create`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Job {
    /// The job's id.
    pub id: String,
    /// The job type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The job's status.
    pub status: String,
    /// Set when the job failed.
    #[serde(default)]
    pub error: Option<String>,
    /// Work done so far, in the job's own unit (bytes for a backup); with
    /// [`Job::total_progress`], says whether a long job still moves.
    #[serde(default, rename = "current-progress")]
    pub current_progress: u64,
    /// Work in all (it may grow while the job runs).
    #[serde(default, rename = "total-progress")]
    pub total_progress: u64,
}

/// A block export (`BlockExportInfo`, an element of `query-block-exports`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct BlockExport {
    /// The export's id.
    pub id: String,
    /// `nbd`, `fuse`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The node it exports.
    #[serde(rename = "node-name")]
    pub node_name: String,
    /// True while qemu waits for its clients to go away.
    #[serde(rename = "shutting-down")]
    pub shutting_down: bool,
}

/// The medium inserted in a guest block device (`BlockDeviceInfo` under `query-block`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Inserted {
    /// The top node's name.
    #[serde(rename = "node-name", default)]
    pub node_name: Option<String>,
    /// The driver of the top node.
    pub drv: String,
    /// The file name.
    pub file: String,
    /// True when the guest cannot write it.
    pub ro: bool,
    /// Its image.
    pub image: ImageInfo,
}

/// A guest block device (`BlockInfo`, an element of `query-block`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct BlockDevice {
    /// The device's id (empty for `-device` without a drive id).
    pub device: String,
    /// The guest device path, when the device has one.
    #[serde(default)]
    pub qdev: Option<String>,
    /// The medium, absent for an empty drive.
    #[serde(default)]
    pub inserted: Option<Inserted>,
}

impl Qmp {
    /// `query-named-block-nodes` with `flat: true`: every node, not only the top ones.
    pub fn named_block_nodes(&mut self) -> Result<Vec<BlockNode>, QmpError> {
        self.execute_as(
            "query-named-block-nodes",
            Some(serde_json::json!({"flat": true})),
        )
    }

    /// `query-block`: the guest's block devices (none in qemu-storage-daemon).
    pub fn block_devices(&mut self) -> Result<Vec<BlockDevice>, QmpError> {
        self.execute_as("query-block", None)
    }

    /// `query-block-jobs`.
    pub fn block_jobs(&mut self) -> Result<Vec<BlockJob>, QmpError> {
        self.execute_as("query-block-jobs", None)
    }

    /// `query-jobs`.
    pub fn jobs(&mut self) -> Result<Vec<Job>, QmpError> {
        self.execute_as("query-jobs", None)
    }

    /// `query-block-exports`.
    pub fn block_exports(&mut self) -> Result<Vec<BlockExport>, QmpError> {
        self.execute_as("query-block-exports", None)
    }

    /// The named node `name`, if it exists.
    pub fn node(&mut self, name: &str) -> Result<Option<BlockNode>, QmpError> {
        Ok(self
            .named_block_nodes()?
            .into_iter()
            .find(|n| n.node_name.as_deref() == Some(name)))
    }
}
