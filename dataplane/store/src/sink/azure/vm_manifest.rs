//! The VM point manifest on Azure: the block blob `VM/points` (the local store's manifest
//! format, [`crate::sink::vm_points`]), replaced whole by read–modify–write with `If-Match`
//! on its ETag (`If-None-Match: *` when creating), so two writers never lose each other's
//! points: the loser of a race reads again and retries. A Put Blob is atomic: readers see
//! the old manifest or the new one.

use std::path::PathBuf;

use super::blob::Container;
use super::rest_err;
use crate::sink::vm_points::{VmPoints, VM_POINTS_FILE};
use crate::sink::{validate_name, SinkError};

/// Attempts of one read–modify–write against concurrent writers.
const RACE_ATTEMPTS: usize = 20;

fn blob(vm: &str) -> String {
    format!("{vm}/{VM_POINTS_FILE}")
}

fn read(c: &Container, vm: &str) -> Result<Option<(VmPoints, String)>, SinkError> {
    let name = blob(vm);
    match c.get_blob(&name).map_err(rest_err)? {
        Some((bytes, etag)) => Ok(Some((
            VmPoints::decode(&bytes, &PathBuf::from(c.url(&name)))?,
            etag,
        ))),
        None => Ok(None),
    }
}

/// The VM's manifest, `None` when it has none.
pub fn load(c: &Container, vm: &str) -> Result<Option<VmPoints>, SinkError> {
    validate_name("VM name", vm)?;
    Ok(read(c, vm)?.map(|(m, _)| m))
}

/// Changes the manifest of `vm` (see [`crate::sink::ReplicaStore::update_vm_points`]).
pub fn update(
    c: &Container,
    vm: &str,
    f: &mut dyn FnMut(&mut VmPoints, bool) -> Result<bool, SinkError>,
) -> Result<(), SinkError> {
    validate_name("VM name", vm)?;
    let name = blob(vm);
    for _ in 0..RACE_ATTEMPTS {
        let (mut m, etag) = match read(c, vm)? {
            Some((m, etag)) => (m, Some(etag)),
            None => (VmPoints::new(Vec::new()), None),
        };
        if !f(&mut m, etag.is_some())? {
            return Ok(());
        }
        match c.put_block_blob(&name, &m.encode(), etag.as_deref()) {
            Ok(_) => return Ok(()),
            // Another writer changed (or created) the blob meanwhile: read it again.
            Err(e) if e.status == Some(412) || e.status == Some(409) => continue,
            Err(e) => return Err(rest_err(e)),
        }
    }
    Err(SinkError::Locked {
        path: PathBuf::from(c.url(&name)),
    })
}

/// Removes the manifest (the VM's last disk went). Absent is fine.
pub fn remove(c: &Container, vm: &str) -> Result<(), SinkError> {
    validate_name("VM name", vm)?;
    c.delete_blob(&blob(vm), None).map_err(rest_err)
}
