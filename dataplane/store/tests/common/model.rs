//! The disk as a test knows it: random changes (writes and clears) of a cycle, the image at
//! every committed point, and the helpers that drive a store through the lifecycle and
//! check every point against the model. Shared by the conformance suite and the
//! local-store tests.

use std::collections::BTreeMap;
use std::sync::Arc;

use rand::{rngs::StdRng, Rng, RngCore, SeedableRng};
use vdrep_proto::{Guid, RangeSet};
use vdrep_store::sink::{DiskKey, RecoveryPoint, ReplicaDisk, ReplicaStore, SinkError};

/// Source identity of the test disks.
pub const SRC: Guid = Guid([3; 16]);
/// Creation time of point 0; point N is a minute per cycle later.
pub const T0: u64 = 1_800_000_000;

/// A seeded generator (tests are reproducible).
pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

pub fn key() -> DiskKey {
    DiskKey::new("vm", "d").unwrap()
}

pub fn point(cycle: u64, bytes: u64) -> RecoveryPoint {
    RecoveryPoint {
        cycle,
        created_unix: T0 + 60 * cycle,
        bytes,
        digest: [cycle as u8; 32],
    }
}

pub fn random(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

/// A change of a cycle: data at an offset, or a clear.
#[derive(Clone)]
pub enum Change {
    Write(u64, Vec<u8>),
    Clear(u64, u64),
}

impl Change {
    pub fn range(&self) -> (u64, u64) {
        match self {
            Change::Write(o, d) => (*o, *o + d.len() as u64),
            Change::Clear(o, l) => (*o, *o + l),
        }
    }
    pub fn apply_to(&self, img: &mut [u8]) {
        match self {
            Change::Write(o, d) => img[*o as usize..*o as usize + d.len()].copy_from_slice(d),
            Change::Clear(o, l) => img[*o as usize..(*o + *l) as usize].fill(0),
        }
    }
    pub fn send(&self, d: &dyn ReplicaDisk) -> Result<(), SinkError> {
        match self {
            Change::Write(o, data) => d.write(*o, data),
            Change::Clear(o, l) => d.clear(*o, *l),
        }
    }
}

/// Disjoint (coalesced) random changes of `count` extents of up to `max` sectors, a fifth
/// of them clears.
pub fn random_changes(rng: &mut StdRng, size: u64, count: usize, max: u64) -> Vec<Change> {
    random_extents(rng, size, count, max, 0.2)
}

pub fn random_extents(
    rng: &mut StdRng,
    size: u64,
    count: usize,
    max: u64,
    clears: f64,
) -> Vec<Change> {
    let mut taken = RangeSet::new();
    let mut out = Vec::new();
    while out.len() < count {
        let len = rng.gen_range(1..=max) * 512;
        let off = rng.gen_range(0..(size - len) / 512) * 512;
        if !taken.clipped(off, off + len).is_empty() {
            continue;
        }
        taken.insert(off, off + len);
        out.push(if rng.gen_bool(clears) {
            Change::Clear(off, len)
        } else {
            Change::Write(off, random(rng, len as usize))
        });
    }
    out
}

/// The disk as the test knows it: the image at every committed point.
pub struct Model {
    pub size: u64,
    pub points: BTreeMap<u64, Vec<u8>>,
}

impl Model {
    pub fn latest(&self) -> (u64, &Vec<u8>) {
        let (c, img) = self.points.iter().next_back().unwrap();
        (*c, img)
    }
}

/// Opens a disk and commits an initial copy of random data (a few zero MiBs left zero).
pub fn initial(
    store: &dyn ReplicaStore,
    size: u64,
    rng: &mut StdRng,
) -> (Arc<dyn ReplicaDisk>, Model) {
    let d = store.open_disk(&key(), size, SRC).unwrap();
    let mut img = random(rng, size as usize);
    if size >= 2 << 20 {
        img[(1 << 20)..(2 << 20)].fill(0);
    }
    for (i, c) in img.chunks(1 << 20).enumerate() {
        d.write((i << 20) as u64, c).unwrap();
    }
    d.checkpoint(&RangeSet::from_range(0, size)).unwrap();
    d.commit_initial(&point(0, size)).unwrap();
    let mut points = BTreeMap::new();
    points.insert(0, img);
    (d, Model { size, points })
}

/// A disk with an initial copy and two cycles, then a cycle begun and dropped by a new full
/// copy, which commits as point 0: each step checked against the model (the old points
/// stay readable until the new copy commits).
pub fn recopied(
    store: &dyn ReplicaStore,
    size: u64,
    rng: &mut StdRng,
) -> (Arc<dyn ReplicaDisk>, Model) {
    let (d, mut m) = initial(store, size, rng);
    for n in 1..=2 {
        let ch = random_changes(rng, size, 4, 16);
        cycle(d.as_ref(), &mut m, n, &ch);
    }
    d.begin_cycle(3).unwrap();
    d.write(0, &[7; 4096]).unwrap();
    d.begin_initial().unwrap(); // drops the open cycle
    assert_eq!(d.state().open_cycle, None);
    assert_points_read_as_model(d.as_ref(), &m);
    let img = random(rng, size as usize);
    d.write(0, &img).unwrap();
    d.checkpoint(&RangeSet::from_range(0, size)).unwrap();
    d.commit_initial(&point(0, size)).unwrap();
    m.points = BTreeMap::from([(0, img)]);
    assert_points_read_as_model(d.as_ref(), &m);
    (d, m)
}

/// Runs cycle `n` with `changes` sent in the given order, then commits it.
pub fn cycle(d: &dyn ReplicaDisk, m: &mut Model, n: u64, changes: &[Change]) {
    assert_eq!(d.begin_cycle(n).unwrap(), RangeSet::new());
    let mut img = m.latest().1.clone();
    let mut done = RangeSet::new();
    for c in changes {
        c.send(d).unwrap();
        c.apply_to(&mut img);
        let (s, e) = c.range();
        done.insert(s, e);
    }
    d.checkpoint(&done).unwrap();
    d.commit_cycle(&point(n, done.covered_len())).unwrap();
    m.points.insert(n, img);
}

pub fn assert_points_read_as_model(d: &dyn ReplicaDisk, m: &Model) {
    let listed: Vec<u64> = d.points().unwrap().iter().map(|p| p.cycle).collect();
    let known: Vec<u64> = m.points.keys().copied().collect();
    assert_eq!(listed, known, "points are listed oldest first");
    for (&c, img) in &m.points {
        let got = d.read_point(c, 0, m.size as usize).unwrap();
        let bad = got.iter().zip(img).position(|(a, b)| a != b);
        assert!(bad.is_none(), "point {c} differs at byte {bad:?}");
    }
    let (newest, img) = m.latest();
    assert_eq!(&d.read_committed(0, m.size as usize).unwrap()[..], &img[..]);
    assert_eq!(d.state().committed_cycle, newest);
}
