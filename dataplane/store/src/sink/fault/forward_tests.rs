//! The fault wrappers forward every trait method to the wrapped backend, defaults included:
//! a method left to the trait's default would silently change what the backend does (the
//! wrapper once turned the Azure sink's `checkpoint_acknowledged` into a full checkpoint).
//!
//! A probe backend records which of its methods ran; each call through the wrapper must
//! reach the probe's method of the same name. Adding a method to `ReplicaStore` or
//! `ReplicaDisk` means adding it to the probe and to the list below.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use vdrep_proto::{Guid, RangeSet};

use super::{FaultPlan, FaultStore};
use crate::jobs::{Job, JobNow};
use crate::sink::vm_points::VmPoints;
use crate::sink::{
    DiskKey, DiskState, PointReader, RecoveryPoint, ReplicaDisk, ReplicaStore, SinkError,
};
use vdrep_proto::wire::JobKind;

type Calls = Arc<Mutex<Vec<&'static str>>>;

struct ProbeStore {
    calls: Calls,
}

struct ProbeDisk {
    key: DiskKey,
    calls: Calls,
}

fn note(calls: &Calls, name: &'static str) {
    calls.lock().unwrap().push(name);
}

fn probe_error(what: &str) -> SinkError {
    SinkError::NotFound {
        path: "probe".into(),
        problem: format!("probe {what}"),
    }
}

impl ReplicaStore for ProbeStore {
    fn open_disk(
        &self,
        key: &DiskKey,
        _virtual_size: u64,
        _source_id: Guid,
    ) -> Result<Arc<dyn ReplicaDisk>, SinkError> {
        note(&self.calls, "open_disk");
        Ok(Arc::new(ProbeDisk {
            key: key.clone(),
            calls: self.calls.clone(),
        }))
    }
    fn list_disks(&self, _vm: Option<&str>) -> Result<Vec<DiskKey>, SinkError> {
        note(&self.calls, "list_disks");
        Ok(Vec::new())
    }
    fn describe(&self) -> String {
        note(&self.calls, "describe");
        "probe store".into()
    }
    fn point_reader(&self, _key: &DiskKey) -> Result<Box<dyn PointReader>, SinkError> {
        note(&self.calls, "point_reader");
        Err(probe_error("point_reader"))
    }
    fn remove_disk(&self, _key: &DiskKey) -> Result<(), SinkError> {
        note(&self.calls, "remove_disk");
        Ok(())
    }
    fn record_job(&self, _job: &Job) -> Result<(), SinkError> {
        note(&self.calls, "record_job");
        Ok(())
    }
    fn jobs(&self, _vm: Option<&str>) -> Result<Vec<Job>, SinkError> {
        note(&self.calls, "jobs");
        Ok(Vec::new())
    }
    fn remove_jobs(&self, _vm: &str) -> Result<(), SinkError> {
        note(&self.calls, "remove_jobs");
        Ok(())
    }
    fn available_bytes(&self) -> Result<Option<u64>, SinkError> {
        note(&self.calls, "available_bytes");
        Ok(Some(7))
    }
    fn upgrade(&self) -> Result<Option<String>, SinkError> {
        note(&self.calls, "upgrade");
        Ok(None)
    }
    fn vm_points(&self, _vm: &str) -> Result<Option<VmPoints>, SinkError> {
        note(&self.calls, "vm_points");
        Ok(None)
    }
    fn update_vm_points(
        &self,
        _vm: &str,
        _f: &mut dyn FnMut(&mut VmPoints, bool) -> Result<bool, SinkError>,
    ) -> Result<(), SinkError> {
        note(&self.calls, "update_vm_points");
        Ok(())
    }
}

impl ReplicaDisk for ProbeDisk {
    fn key(&self) -> &DiskKey {
        note(&self.calls, "key");
        &self.key
    }
    fn state(&self) -> DiskState {
        note(&self.calls, "state");
        crate::sink::lifecycle::new_replica(1, 1 << 20, Guid::NIL, Guid::NIL)
    }
    fn write(&self, _offset: u64, _data: &[u8]) -> Result<(), SinkError> {
        note(&self.calls, "write");
        Ok(())
    }
    fn room(&self, _len: usize) -> crate::sink::Room<'_> {
        note(&self.calls, "room");
        crate::sink::Room::none()
    }
    fn clear(&self, _offset: u64, _len: u64) -> Result<(), SinkError> {
        note(&self.calls, "clear");
        Ok(())
    }
    fn checkpoint(&self, _durable: &RangeSet) -> Result<(), SinkError> {
        note(&self.calls, "checkpoint");
        Ok(())
    }
    fn checkpoint_acknowledged(&self, _written: &RangeSet) -> Result<bool, SinkError> {
        note(&self.calls, "checkpoint_acknowledged");
        Ok(false)
    }
    fn commit_initial(&self, _point: &RecoveryPoint) -> Result<(), SinkError> {
        note(&self.calls, "commit_initial");
        Ok(())
    }
    fn read(&self, _offset: u64, _len: usize) -> Result<Bytes, SinkError> {
        note(&self.calls, "read");
        Ok(Bytes::new())
    }
    fn read_committed(&self, _offset: u64, _len: usize) -> Result<Bytes, SinkError> {
        note(&self.calls, "read_committed");
        Ok(Bytes::new())
    }
    fn begin_initial(&self) -> Result<(), SinkError> {
        note(&self.calls, "begin_initial");
        Ok(())
    }
    fn begin_cycle(&self, _cycle: u64) -> Result<RangeSet, SinkError> {
        note(&self.calls, "begin_cycle");
        Ok(RangeSet::new())
    }
    fn commit_cycle(&self, _point: &RecoveryPoint) -> Result<(), SinkError> {
        note(&self.calls, "commit_cycle");
        Ok(())
    }
    fn points(&self) -> Result<Vec<RecoveryPoint>, SinkError> {
        note(&self.calls, "points");
        Ok(Vec::new())
    }
    fn prune_points(&self, _older_than_unix: u64) -> Result<Vec<u64>, SinkError> {
        note(&self.calls, "prune_points");
        Ok(Vec::new())
    }
    fn read_point(&self, _cycle: u64, _offset: u64, _len: usize) -> Result<Bytes, SinkError> {
        note(&self.calls, "read_point");
        Ok(Bytes::new())
    }
    fn path_hint(&self) -> String {
        note(&self.calls, "path_hint");
        "probe disk".into()
    }
    fn resync_index(&self) -> Result<Box<dyn crate::resync::index::IndexFile>, String> {
        note(&self.calls, "resync_index");
        Err("probe resync_index".into())
    }
}

/// Runs `call` and asserts that it reached the probe's method `name` (other calls, such as
/// `path_hint` for an error message, may come along; `name` must be among them).
fn reaches(calls: &Calls, name: &'static str, call: impl FnOnce()) {
    calls.lock().unwrap().clear();
    call();
    let seen = calls.lock().unwrap().clone();
    assert!(
        seen.contains(&name),
        "the fault wrapper did not forward `{name}` (the probe saw {seen:?})"
    );
}

#[test]
fn the_fault_wrappers_forward_every_method_defaults_included() {
    let calls = Calls::default();
    let store = FaultStore::new(
        Arc::new(ProbeStore {
            calls: calls.clone(),
        }),
        FaultPlan::new(),
    );
    let key = DiskKey::new("vm", "d").unwrap();
    let s: &dyn ReplicaStore = &store;
    reaches(&calls, "list_disks", || drop(s.list_disks(None)));
    reaches(&calls, "describe", || drop(s.describe()));
    reaches(&calls, "point_reader", || {
        let e = s.point_reader(&key).err().unwrap();
        assert!(e.to_string().contains("probe point_reader"), "{e}");
    });
    reaches(&calls, "remove_disk", || s.remove_disk(&key).unwrap());
    let job = Job::start(JobKind::EnableProtection, "vm");
    reaches(&calls, "record_job", || s.record_job(&job).unwrap());
    reaches(&calls, "jobs", || drop(s.jobs(None).unwrap()));
    reaches(&calls, "remove_jobs", || s.remove_jobs("vm").unwrap());
    reaches(&calls, "available_bytes", || {
        assert_eq!(s.available_bytes().unwrap(), Some(7))
    });
    reaches(&calls, "upgrade", || {
        assert!(s.upgrade().unwrap().is_none())
    });
    reaches(&calls, "vm_points", || {
        assert!(s.vm_points("vm").unwrap().is_none())
    });
    reaches(&calls, "update_vm_points", || {
        s.update_vm_points("vm", &mut |_, _| Ok(false)).unwrap()
    });
    let mut disk = None;
    reaches(&calls, "open_disk", || {
        disk = Some(s.open_disk(&key, 1 << 20, Guid::NIL).unwrap())
    });
    let d = disk.unwrap();
    let p = RecoveryPoint {
        cycle: 1,
        created_unix: 0,
        bytes: 0,
        digest: [0; 32],
    };
    let r = RangeSet::from_range(0, 512);
    reaches(&calls, "key", || assert_eq!(d.key().disk, "d"));
    reaches(&calls, "state", || drop(d.state()));
    reaches(&calls, "write", || d.write(0, &[0; 512]).unwrap());
    reaches(&calls, "room", || drop(d.room(512)));
    reaches(&calls, "clear", || d.clear(0, 512).unwrap());
    reaches(&calls, "checkpoint", || d.checkpoint(&r).unwrap());
    reaches(&calls, "checkpoint_acknowledged", || {
        drop(d.checkpoint_acknowledged(&r))
    });
    reaches(&calls, "commit_initial", || d.commit_initial(&p).unwrap());
    reaches(&calls, "read", || drop(d.read(0, 512).unwrap()));
    reaches(&calls, "read_committed", || {
        drop(d.read_committed(0, 512).unwrap())
    });
    reaches(&calls, "begin_initial", || d.begin_initial().unwrap());
    reaches(&calls, "begin_cycle", || drop(d.begin_cycle(1).unwrap()));
    reaches(&calls, "commit_cycle", || d.commit_cycle(&p).unwrap());
    reaches(&calls, "points", || drop(d.points().unwrap()));
    reaches(&calls, "prune_points", || drop(d.prune_points(0).unwrap()));
    reaches(&calls, "read_point", || {
        drop(d.read_point(1, 0, 512).unwrap())
    });
    reaches(&calls, "path_hint", || drop(d.path_hint()));
    reaches(&calls, "resync_index", || drop(d.resync_index()));
}
