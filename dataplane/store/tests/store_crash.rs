//! Crash consistency of the local store on the durability model ([`SimFs`]): random
//! operation sequences, a simulated power cut after every step, then reopen and check:
//! - the store always reopens (recovery never needs an operator after a mere crash);
//! - progress equals what the last successful checkpoint recorded, and every claimed byte
//!   holds data that was written there (never lost data behind a claim);
//! - a committed replica is never lost: the last successful commit is still the replica, with
//!   a valid footer, and its content is what was written;
//! - the disk can then be completed and committed.

use std::path::Path;
use std::sync::Arc;

use rand::{rngs::StdRng, Rng, SeedableRng};
use vdrep_proto::formats::vhd::Footer;
use vdrep_proto::{Guid, RangeSet};
use vdrep_store::layout::replica_virtual_size;
use vdrep_store::sink::fault::{Crash, SimFs};
use vdrep_store::sink::local::LocalStore;
use vdrep_store::sink::{DiskKey, RecoveryPoint, ReplicaDisk, ReplicaStore, SinkError};

const SIZE: u64 = 64 << 10;
const CHUNK: u64 = 8 << 10;
const CHUNKS: usize = (SIZE / CHUNK) as usize;
const SRC: Guid = Guid([5; 16]);

fn point(cycle: u64) -> RecoveryPoint {
    RecoveryPoint {
        cycle,
        created_unix: 1_700_000_000 + cycle,
        bytes: 0,
        digest: [0; 32],
    }
}

fn root() -> &'static Path {
    Path::new("/store")
}
fn key() -> DiskKey {
    DiskKey::new("vm", "d").unwrap()
}
fn data(id: u8) -> Vec<u8> {
    if id == 0 {
        return vec![0; CHUNK as usize];
    }
    (0..CHUNK as usize)
        .map(|i| id ^ (i / 512) as u8 ^ 0x5a)
        .collect()
}

#[derive(Debug, Clone, Copy)]
enum Step {
    Write(usize, u8),
    Clear(usize),
    Checkpoint,
    Commit,
    BeginInitial,
    CommitCycle,
    Reopen,
}

fn random_steps(rng: &mut StdRng, n: usize) -> Vec<Step> {
    (0..n)
        .map(|_| match rng.gen_range(0..20) {
            0..=8 => Step::Write(rng.gen_range(0..CHUNKS), rng.gen_range(1..=250)),
            9 => Step::Clear(rng.gen_range(0..CHUNKS)),
            10..=12 => Step::Checkpoint,
            13..=15 => Step::Commit,
            16 => Step::BeginInitial,
            17 => Step::CommitCycle,
            _ => Step::Reopen,
        })
        .collect()
}

/// What the test knows about one image: the values each chunk may hold after a crash.
#[derive(Clone, Debug)]
struct Img {
    latest: Vec<u8>,
    cand: Vec<Vec<u8>>,
}
impl Img {
    fn zero() -> Img {
        Img {
            latest: vec![0; CHUNKS],
            cand: vec![vec![0]; CHUNKS],
        }
    }
    fn put(&mut self, c: usize, id: u8) {
        self.latest[c] = id;
        self.cand[c].push(id);
    }
    fn sync(&mut self) {
        for c in 0..CHUNKS {
            self.cand[c] = vec![self.latest[c]];
        }
    }
}

/// The sender's view plus the shadow images.
#[derive(Clone, Debug)]
struct Shadow {
    in_progress: bool,
    generation: u64,
    copy: Img,
    done: Vec<bool>,
    claims: RangeSet,
    committed: Option<(Guid, Img)>,
    cycle: u64,
}

fn open(fs: &SimFs) -> Arc<dyn ReplicaDisk> {
    let store = LocalStore::open_with_fs(root(), Arc::new(fs.clone())).expect("store reopens");
    store
        .open_disk(&key(), SIZE, SRC)
        .expect("disk reopens after a crash")
}

fn ok_or_invalid(r: Result<(), SinkError>) -> bool {
    match r {
        Ok(()) => true,
        Err(SinkError::InvalidState { .. }) => false,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

fn run(fs: &SimFs, steps: &[Step]) -> (Arc<dyn ReplicaDisk>, Shadow) {
    let mut d = open(fs);
    let mut sh = Shadow {
        in_progress: true,
        generation: 1,
        copy: Img::zero(),
        done: vec![false; CHUNKS],
        claims: RangeSet::new(),
        committed: None,
        cycle: 0,
    };
    for &s in steps {
        match s {
            Step::Write(..) | Step::Clear(_) => {
                let (c, id) = match s {
                    Step::Write(c, id) => (c, id),
                    Step::Clear(c) => (c, 0),
                    _ => unreachable!(),
                };
                let off = c as u64 * CHUNK;
                let r = if id == 0 {
                    d.clear(off, CHUNK)
                } else {
                    d.write(off, &data(id))
                };
                if sh.in_progress {
                    r.unwrap();
                    sh.copy.put(c, id);
                    sh.done[c] = true;
                } else {
                    // Outside a copy, writes belong to delta cycles (tests/store_cycles.rs):
                    // without an open cycle they are refused and change nothing.
                    assert!(
                        !ok_or_invalid(r),
                        "a write outside a copy or cycle was taken"
                    );
                }
            }
            Step::Checkpoint | Step::Commit => {
                let claims: RangeSet = (0..CHUNKS)
                    .filter(|&c| sh.in_progress && sh.done[c])
                    .map(|c| c as u64 * CHUNK..(c as u64 + 1) * CHUNK)
                    .collect();
                d.checkpoint(&claims).unwrap();
                if sh.in_progress {
                    sh.copy.sync();
                    sh.claims = claims;
                } else if let Some((_, img)) = &mut sh.committed {
                    img.sync();
                }
                if matches!(s, Step::Commit) && ok_or_invalid(d.commit_initial(&point(0))) {
                    sh.copy.sync();
                    sh.committed = Some((d.state().replica_id, sh.copy.clone()));
                    sh.in_progress = false;
                    sh.claims = RangeSet::new();
                    sh.cycle = 0;
                }
            }
            Step::BeginInitial => {
                d.begin_initial().unwrap();
                sh.in_progress = true;
                sh.generation += 1;
                sh.copy = Img::zero();
                sh.done = vec![false; CHUNKS];
                sh.claims = RangeSet::new();
            }
            Step::CommitCycle => {
                // An empty cycle: it becomes the next recovery point.
                let n = sh.cycle + 1;
                if ok_or_invalid(d.begin_cycle(n).map(|_| ())) {
                    d.commit_cycle(&point(n)).unwrap();
                    sh.cycle = n;
                }
            }
            Step::Reopen => {
                drop(d);
                d = open(fs);
                // A resuming sender trusts only the recorded progress: unclaimed ranges hold
                // unspecified content (a copy with no progress restarts from a fresh file).
                let st = d.state();
                if sh.in_progress {
                    for c in 0..CHUNKS {
                        sh.done[c] = st
                            .progress
                            .contains_range(c as u64 * CHUNK, (c as u64 + 1) * CHUNK);
                    }
                    if st.progress.is_empty() {
                        sh.copy = Img::zero();
                    }
                }
            }
        }
    }
    (d, sh)
}

fn assert_chunk_in(bytes: &[u8], cand: &[u8], what: &str) {
    assert!(
        cand.iter().any(|&id| bytes == &data(id)[..]),
        "{what}: content is none of the written values {cand:?}"
    );
}

fn check_after_crash(fs: &SimFs, sh: &Shadow, ctx: &str) {
    let d = open(fs);
    let st = d.state();
    match &sh.committed {
        Some((id, img)) => {
            assert!(st.initial_committed, "{ctx}: committed replica lost");
            assert_eq!(st.replica_id, *id, "{ctx}: committed replica replaced");
            assert_eq!(st.committed_cycle, sh.cycle, "{ctx}: committed cycle");
            for c in 0..CHUNKS {
                let b = d.read_committed(c as u64 * CHUNK, CHUNK as usize).unwrap();
                assert_chunk_in(&b, &img.cand[c], &format!("{ctx}: committed chunk {c}"));
            }
            let vhd = fs
                .file_bytes(&root().join("vm/d.vhd"))
                .expect("replica file");
            let at = replica_virtual_size(SIZE) as usize;
            let f = Footer::decode(&vhd[at..]).expect("valid footer");
            assert_eq!(f.unique_id, *id);
        }
        None => assert!(!st.initial_committed, "{ctx}: phantom commit"),
    }
    assert_eq!(
        st.initial_in_progress, sh.in_progress,
        "{ctx}: in-progress flag"
    );
    if sh.in_progress {
        assert_eq!(st.generation, sh.generation, "{ctx}: generation");
        assert_eq!(
            st.progress, sh.claims,
            "{ctx}: progress is exactly the last checkpoint"
        );
        for c in 0..CHUNKS {
            let (s, e) = (c as u64 * CHUNK, (c as u64 + 1) * CHUNK);
            if st.progress.contains_range(s, e) {
                let b = d.read(s, CHUNK as usize).unwrap();
                assert_chunk_in(&b, &sh.copy.cand[c], &format!("{ctx}: claimed chunk {c}"));
            }
        }
    }
    // The disk can always be finished and committed after recovery.
    if !st.initial_in_progress {
        d.begin_initial().unwrap();
    }
    for c in 0..CHUNKS {
        d.write(c as u64 * CHUNK, &data(251)).unwrap();
    }
    d.checkpoint(&RangeSet::from_range(0, SIZE)).unwrap();
    d.commit_initial(&point(0)).unwrap();
    assert_eq!(
        &d.read_committed(SIZE - CHUNK, CHUNK as usize).unwrap()[..],
        &data(251)[..]
    );
}

#[test]
fn after_a_crash_at_every_step_claims_are_durable_and_commits_survive() {
    let mut crashes = 0;
    for seed in 0..40u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let steps = random_steps(&mut rng, 24);
        for k in 0..=steps.len() {
            for (mode_no, mode) in [Crash::DropVolatile, Crash::Random(seed * 1000 + k as u64)]
                .into_iter()
                .enumerate()
            {
                let fs = SimFs::new();
                let (d, sh) = run(&fs, &steps[..k]);
                fs.crash(mode);
                drop(d);
                let ctx = format!(
                    "seed {seed}, crash after step {k} ({:?}), mode {mode_no}, steps {:?}",
                    steps[..k].last(),
                    &steps[..k]
                );
                check_after_crash(&fs, &sh, &ctx);
                crashes += 1;
            }
        }
    }
    assert_eq!(crashes, 40 * 25 * 2);
}

#[test]
fn a_crash_during_first_open_leaves_a_disk_that_opens_cleanly() {
    let fs = SimFs::new();
    drop(open(&fs));
    fs.crash(Crash::DropVolatile);
    let d = open(&fs);
    assert_eq!(d.state().generation, 1);
    assert!(d.state().progress.is_empty());
}

#[test]
fn tampered_state_in_the_model_is_reported_as_corrupt() {
    let fs = SimFs::new();
    drop(open(&fs));
    fs.tamper(&root().join("vm/d.state"), 30, &[0xff]).unwrap();
    let store = LocalStore::open_with_fs(root(), Arc::new(fs.clone())).unwrap();
    let e = store.open_disk(&key(), SIZE, SRC).err().unwrap();
    assert!(matches!(e, SinkError::CorruptState { .. }), "{e}");
}
