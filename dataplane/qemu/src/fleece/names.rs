//! The names vdrep gives what it adds to qemu. Everything starts with [`PREFIX`], so a
//! crashed sender's leftovers can be found and removed ([`super::cleanup_leftovers`]) without
//! touching anything the VM's owner added. qemu limits node names to 31 characters: a
//! generation is a u32 and a switch holds at most [`MAX_DISKS`] disks, so the longest name,
//! `vdrep-snap-4294967295-99`, fits.

/// The prefix of every node, job, export, bitmap and scratch file vdrep adds.
pub const PREFIX: &str = "vdrep-";
/// The most disks one switch (one VM) may hold.
pub const MAX_DISKS: usize = 100;
/// The prefix of scratch image files (the temporary copy-before-write targets).
pub const SCRATCH_FILE_PREFIX: &str = "vdrep-fleece-";

/// The names of one disk's view in one switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewNames {
    /// The scratch image's protocol node (`file` driver).
    pub target_file: String,
    /// The scratch image's format node (qcow2): the backup job's target.
    pub target: String,
    /// The `blockdev-create` job that formats the scratch image.
    pub create_job: String,
    /// The backup job (`sync=none`).
    pub job: String,
    /// The copy-before-write filter the job inserts above the disk.
    pub filter: String,
    /// The `snapshot-access` node: the point-in-time view.
    pub snapshot: String,
    /// The NBD export's id and name.
    pub export: String,
    /// The scratch image's file name (inside the scratch directory).
    pub scratch_file: String,
}

impl ViewNames {
    /// The names for disk `index` of switch `generation`.
    pub fn new(generation: u32, index: usize) -> ViewNames {
        let n = |kind: &str| format!("{PREFIX}{kind}-{generation}-{index}");
        ViewNames {
            target_file: n("tf"),
            target: n("tgt"),
            create_job: n("mk"),
            job: n("job"),
            filter: n("cbw"),
            snapshot: n("snap"),
            export: n("exp"),
            scratch_file: format!("{SCRATCH_FILE_PREFIX}{generation}-{index}.qcow2"),
        }
    }
}

/// The dirty bitmap started by switch `generation` (the same name on every disk: bitmaps
/// belong to a node).
pub fn bitmap_name(generation: u32) -> String {
    format!("{PREFIX}{generation}")
}

/// True for a name vdrep gave.
pub fn is_ours(name: &str) -> bool {
    name.starts_with(PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_names_fit_qemus_31_characters() {
        let v = ViewNames::new(u32::MAX, MAX_DISKS - 1);
        for n in [
            &v.target_file,
            &v.target,
            &v.create_job,
            &v.job,
            &v.filter,
            &v.snapshot,
            &v.export,
        ] {
            assert!(n.len() <= 31, "{n}");
            assert!(is_ours(n));
        }
    }
}
