//! Crash consistency of delta cycles on the durability model ([`SimFs`]): random sequences
//! of cycles (begin, writes and clears in any order, resends, checkpoints, restarts, commits,
//! pruning), with a power cut after every step *and* between any two filesystem calls
//! inside begin, write, checkpoint, commit and prune — with a cycle buffer of one byte
//! (every write saves its pre-image, syncs the undo log, persists its length and writes
//! the replica), of two chunks, and of the default size (writes reach the replica only at
//! checkpoints and commits). After each cut the disk reopens and:
//! - the newest committed point is intact; a cut inside a commit shows the previous point or
//!   the new one, never a mix;
//! - every listed point reads exactly as the model (an in-memory copy after each commit);
//! - an open cycle's progress is exactly what its last checkpoint recorded, and claims only
//!   data that is durably there;
//! - the sender resending the cycle (the gaps of the progress) commits the right result.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};
use vdrep_proto::{Guid, RangeSet};
use vdrep_store::sink::fault::{Crash, SimFs};
use vdrep_store::sink::local::{LocalStore, CYCLE_BUFFER};
use vdrep_store::sink::{DiskKey, RecoveryPoint, ReplicaDisk, ReplicaStore};

const CHUNK: u64 = 4096;
const CHUNKS: usize = 16;
const SIZE: u64 = CHUNK * CHUNKS as u64;
const SRC: Guid = Guid([6; 16]);
const T0: u64 = 1_800_000_000;
const CYCLES: usize = 4;

type Plan = BTreeMap<usize, u8>;

fn data(c: usize, id: u8) -> Vec<u8> {
    if id == 0 {
        return vec![0; CHUNK as usize];
    }
    (0..CHUNK as usize)
        .map(|i| id ^ (i / 512) as u8 ^ (c as u8).wrapping_mul(31) ^ 0xa5)
        .collect()
}
fn range(c: usize) -> (u64, u64) {
    (c as u64 * CHUNK, (c as u64 + 1) * CHUNK)
}
fn ranges(chunks: &BTreeSet<usize>) -> RangeSet {
    chunks.iter().map(|&c| range(c).0..range(c).1).collect()
}
fn point(cycle: u64) -> RecoveryPoint {
    RecoveryPoint {
        cycle,
        created_unix: T0 + 60 * cycle,
        bytes: 0,
        digest: [0; 32],
    }
}

#[derive(Debug, Clone, Copy)]
enum Step {
    Begin,
    Send(usize),
    Checkpoint,
    Commit,
    Reopen,
    /// Prune points created before the point of this cycle.
    Prune(u64),
}

fn script(rng: &mut StdRng) -> (Vec<Step>, Vec<Plan>) {
    let mut steps = Vec::new();
    let mut plans = vec![Plan::new()];
    for n in 1..=CYCLES as u64 {
        let mut plan = Plan::new();
        for _ in 0..rng.gen_range(0..=5) {
            let id = if rng.gen_bool(0.25) {
                0
            } else {
                rng.gen_range(1..=250)
            };
            plan.insert(rng.gen_range(0..CHUNKS), id);
        }
        let mut sends: Vec<usize> = plan.keys().copied().collect();
        if let Some(&c) = sends.first() {
            sends.push(c); // a resend within the cycle
        }
        sends.shuffle(rng);
        steps.push(Step::Begin);
        for c in sends {
            steps.push(Step::Send(c));
            match rng.gen_range(0..10) {
                0..=2 => steps.push(Step::Checkpoint),
                3 => steps.push(Step::Reopen),
                _ => {}
            }
        }
        steps.push(Step::Commit);
        if rng.gen_bool(0.3) {
            steps.push(Step::Prune(rng.gen_range(0..=n)));
        }
        plans.push(plan);
    }
    (steps, plans)
}

/// What the test knows.
#[derive(Clone, Debug)]
struct Shadow {
    /// Chunk ids of every point ever committed.
    images: BTreeMap<u64, Vec<u8>>,
    /// The points the store should list.
    live: Vec<u64>,
    committed: u64,
    /// The cycle being sent, from its Begin step until its commit.
    cur: Option<(u64, Plan)>,
    /// begin_cycle of `cur` returned.
    open_durable: bool,
    /// Chunks of `cur` written since the last restart, or recorded as progress.
    sent: BTreeSet<usize>,
    /// The last checkpoint's claims.
    claims: BTreeSet<usize>,
}

impl Shadow {
    fn next_image(&self, plan: &Plan) -> Vec<u8> {
        let mut img = self.images[&self.committed].clone();
        for (&c, &id) in plan {
            img[c] = id;
        }
        img
    }
    fn pruned(&self, before: u64) -> Vec<u64> {
        let drop = self.live[..self.live.len() - 1]
            .iter()
            .take_while(|&&c| point(c).created_unix < point(before).created_unix)
            .count();
        self.live[drop..].to_vec()
    }
}

thread_local! {
    /// The cycle buffer of the disks this test thread opens.
    static BUFFER: Cell<usize> = const { Cell::new(CYCLE_BUFFER) };
}

fn root() -> &'static Path {
    Path::new("/store")
}
fn key() -> DiskKey {
    DiskKey::new("vm", "d").unwrap()
}
fn open(fs: &SimFs) -> Arc<dyn ReplicaDisk> {
    let store = LocalStore::open_with_fs(root(), Arc::new(fs.clone()))
        .expect("store reopens")
        .with_cycle_buffer(BUFFER.get());
    store
        .open_disk(&key(), SIZE, SRC)
        .expect("disk reopens after a crash")
}
fn send(d: &dyn ReplicaDisk, c: usize, id: u8) -> Result<(), vdrep_store::sink::SinkError> {
    if id == 0 {
        d.clear(range(c).0, CHUNK)
    } else {
        d.write(range(c).0, &data(c, id))
    }
}
fn expand(img: &[u8]) -> Vec<u8> {
    img.iter()
        .enumerate()
        .flat_map(|(c, &id)| data(c, id))
        .collect()
}

/// The committed initial copy every sequence starts from.
fn setup(fs: &SimFs) -> (Arc<dyn ReplicaDisk>, Shadow) {
    let d = open(fs);
    let img: Vec<u8> = (0..CHUNKS).map(|c| [0, 7, 9][c % 3]).collect();
    for (c, &id) in img.iter().enumerate() {
        send(d.as_ref(), c, id).unwrap();
    }
    d.checkpoint(&RangeSet::from_range(0, SIZE)).unwrap();
    d.commit_initial(&point(0)).unwrap();
    let sh = Shadow {
        images: BTreeMap::from([(0, img)]),
        live: vec![0],
        committed: 0,
        cur: None,
        open_durable: false,
        sent: BTreeSet::new(),
        claims: BTreeSet::new(),
    };
    (d, sh)
}

/// Runs one step. On an error (a power cut) the shadow holds what the step did before the
/// failing call: a begun cycle is `cur` without `open_durable`, resent chunks are `sent`.
fn step(
    fs: &SimFs,
    slot: &mut Option<Arc<dyn ReplicaDisk>>,
    sh: &mut Shadow,
    s: Step,
    plans: &[Plan],
) -> Result<(), vdrep_store::sink::SinkError> {
    if matches!(s, Step::Reopen) {
        *slot = None; // releases the lock
        *slot = Some(open(fs));
    }
    let d = slot.as_ref().unwrap();
    match s {
        Step::Begin => {
            let n = sh.committed + 1;
            sh.cur = Some((n, plans[n as usize].clone()));
            sh.open_durable = false;
            sh.sent.clear();
            sh.claims.clear();
            assert_eq!(d.begin_cycle(n)?, RangeSet::new());
            sh.open_durable = true;
        }
        Step::Send(c) => {
            let id = sh.cur.as_ref().unwrap().1[&c];
            send(d.as_ref(), c, id)?;
            sh.sent.insert(c);
        }
        Step::Checkpoint => {
            d.checkpoint(&ranges(&sh.sent))?;
            sh.claims = sh.sent.clone();
        }
        Step::Commit => {
            let (n, plan) = sh.cur.clone().unwrap();
            for (&c, &id) in &plan {
                if !sh.sent.contains(&c) {
                    send(d.as_ref(), c, id)?; // the sender resends what was lost
                    sh.sent.insert(c);
                }
            }
            d.commit_cycle(&point(n))?;
            let img = sh.next_image(&plan);
            sh.images.insert(n, img);
            sh.live.push(n);
            sh.committed = n;
            sh.cur = None;
        }
        Step::Reopen => {
            if let Some((n, _)) = &sh.cur {
                let p = d.begin_cycle(*n)?;
                assert_eq!(p, ranges(&sh.claims), "progress after a restart");
                sh.sent = sh.claims.clone();
            }
        }
        Step::Prune(before) => {
            let want = sh.pruned(before);
            let dropped = d.prune_points(point(before).created_unix)?;
            let gone: Vec<u64> = sh
                .live
                .iter()
                .filter(|c| !want.contains(c))
                .copied()
                .collect();
            assert_eq!(dropped, gone);
            sh.live = want;
        }
    }
    Ok(())
}

fn check(fs: &SimFs, sh: &Shadow, cut: Option<Step>, ctx: &str) {
    let d = open(fs);
    let st = d.state();
    let listed: Vec<u64> = d.points().unwrap().iter().map(|p| p.cycle).collect();
    let cur_n = sh.cur.as_ref().map(|c| c.0);
    let may_commit = if matches!(cut, Some(Step::Commit)) {
        cur_n
    } else {
        None
    };
    assert!(
        st.committed_cycle == sh.committed || Some(st.committed_cycle) == may_commit,
        "{ctx}: committed cycle {} (model {})",
        st.committed_cycle,
        sh.committed
    );
    assert_eq!(
        listed.last(),
        Some(&st.committed_cycle),
        "{ctx}: newest point"
    );
    assert!(
        listed.windows(2).all(|w| w[1] == w[0] + 1),
        "{ctx}: {listed:?}"
    );
    let must = match cut {
        Some(Step::Prune(before)) => sh.pruned(before),
        _ => sh.live.clone(),
    };
    for c in &must {
        assert!(listed.contains(c), "{ctx}: point {c} lost: {listed:?}");
    }
    for &c in &listed {
        let img = if sh.live.contains(&c) {
            sh.images[&c].clone()
        } else {
            assert_eq!(Some(c), may_commit, "{ctx}: unexpected point {c}");
            sh.next_image(&sh.cur.as_ref().unwrap().1)
        };
        let got = d.read_point(c, 0, SIZE as usize).unwrap();
        assert!(got[..] == expand(&img)[..], "{ctx}: point {c} differs");
    }
    let open_cycle = st.open_cycle;
    match (&sh.cur, st.committed_cycle == sh.committed) {
        (Some((n, plan)), true) => {
            if sh.open_durable {
                assert_eq!(open_cycle, Some(*n), "{ctx}: open cycle lost");
            } else {
                assert!(open_cycle.is_none() || open_cycle == Some(*n), "{ctx}");
            }
            let claims = ranges(&sh.claims);
            let newer = ranges(&sh.sent);
            let ok = st.progress == claims
                || (matches!(cut, Some(Step::Checkpoint)) && st.progress == newer)
                || (!sh.open_durable && st.progress.is_empty());
            assert!(ok, "{ctx}: progress {:?}, claims {claims:?}", st.progress);
            for (&c, &id) in plan {
                let (s, e) = range(c);
                if st.progress.contains_range(s, e) {
                    let got = d.read(s, CHUNK as usize).unwrap();
                    assert!(
                        got[..] == data(c, id)[..],
                        "{ctx}: claimed chunk {c} not durable"
                    );
                }
            }
        }
        _ => assert_eq!(open_cycle, None, "{ctx}: no cycle should be open"),
    }
    // The sender resends the cycle (or starts the next one) and it commits correctly.
    let n = st.committed_cycle + 1;
    let plan = match &sh.cur {
        Some((c, p)) if *c == n => p.clone(),
        _ => Plan::from([(0, 99), (5, 0)]),
    };
    let done = d.begin_cycle(n).unwrap();
    for (&c, &id) in &plan {
        let (s, e) = range(c);
        if !done.contains_range(s, e) {
            send(d.as_ref(), c, id).unwrap();
        }
    }
    d.commit_cycle(&point(n)).unwrap();
    let mut img = if st.committed_cycle == sh.committed {
        sh.images[&sh.committed].clone()
    } else {
        sh.next_image(&sh.cur.as_ref().unwrap().1)
    };
    for (&c, &id) in &plan {
        img[c] = id;
    }
    let got = d.read_point(n, 0, SIZE as usize).unwrap();
    assert!(
        got[..] == expand(&img)[..],
        "{ctx}: resent cycle {n} differs"
    );
    let first = listed[0];
    let got = d.read_point(first, 0, SIZE as usize).unwrap();
    let want = if sh.images.contains_key(&first) {
        expand(&sh.images[&first])
    } else {
        expand(&sh.next_image(&sh.cur.as_ref().unwrap().1))
    };
    assert!(
        got[..] == want[..],
        "{ctx}: oldest point changed by the resend"
    );
}

fn run(fs: &SimFs, steps: &[Step], plans: &[Plan]) -> (Option<Arc<dyn ReplicaDisk>>, Shadow) {
    let (d, mut sh) = setup(fs);
    let mut d = Some(d);
    for &s in steps {
        step(fs, &mut d, &mut sh, s, plans).unwrap();
    }
    (d, sh)
}

#[test]
fn after_a_power_cut_anywhere_points_are_intact_and_the_resent_cycle_commits() {
    let (mut after_steps, mut inside) = (0, 0);
    for seed in 0..12u64 {
        BUFFER.set([1, 2 * CHUNK as usize, CYCLE_BUFFER][seed as usize % 3]);
        let mut rng = StdRng::seed_from_u64(seed);
        let (steps, plans) = script(&mut rng);
        for k in 0..=steps.len() {
            // A cut after step k.
            for mode in [Crash::DropVolatile, Crash::Random(seed * 977 + k as u64)] {
                let fs = SimFs::new();
                let (d, sh) = run(&fs, &steps[..k], &plans);
                fs.crash(mode);
                drop(d);
                let ctx = format!(
                    "seed {seed}, after step {k} {:?}, {mode:?}",
                    steps[..k].last()
                );
                check(&fs, &sh, None, &ctx);
                after_steps += 1;
            }
            // Cuts between the filesystem calls of step k.
            let Some(&s) = steps.get(k) else { continue };
            if matches!(s, Step::Reopen) {
                continue;
            }
            for ops in 0.. {
                let fs = SimFs::new();
                let (mut d, mut sh) = run(&fs, &steps[..k], &plans);
                fs.power_cut_after(ops);
                let r = step(&fs, &mut d, &mut sh, s, &plans);
                let whole = !fs.power_is_cut();
                let mode = if ops % 2 == 0 {
                    Crash::DropVolatile
                } else {
                    Crash::Random(seed * 131 + ops)
                };
                fs.crash(mode);
                drop(d);
                let ctx = format!("seed {seed}, step {k} {s:?} cut after {ops} fs calls, {mode:?}");
                // A failed step left the model as far as it got (see `step`).
                check(&fs, &sh, r.is_err().then_some(s), &ctx);
                inside += 1;
                if whole {
                    break;
                }
            }
        }
    }
    println!("{after_steps} cuts after steps, {inside} cuts inside steps");
    assert!(inside > 500, "too few cuts inside steps: {inside}");
}

/// A commit that failed at a call is retried on the same handle and completes — except after
/// a failed fdatasync, which ends the handle (issue 16, finding 4: the failed pages may be
/// gone): the retry is refused with `SyncLost`, and the disk, opened again, resumes the cycle
/// from its durable progress, is sent the rest and commits.
#[test]
fn a_commit_failing_at_any_call_completes_when_retried_without_a_restart() {
    let plan = Plan::from([(1, 42), (2, 0), (9, 17)]);
    let mut ops = 0;
    let mut reopened = 0;
    loop {
        let fs = SimFs::new();
        let (mut d, mut sh) = setup(&fs);
        d.begin_cycle(1).unwrap();
        for (&c, &id) in &plan {
            send(d.as_ref(), c, id).unwrap();
        }
        fs.power_cut_after(ops);
        let first = d.commit_cycle(&point(1));
        let whole = !fs.power_is_cut();
        fs.restore_power();
        if first.is_err() {
            // Until the retry, the newest point reads as before or after, never a mix.
            let now = d.read_committed(0, SIZE as usize).unwrap();
            let old = expand(&sh.images[&0]);
            let new = expand(&sh.next_image(&plan));
            assert!(
                now[..] == old[..] || now[..] == new[..],
                "cut after {ops}: a mix"
            );
            assert!(d.read_point(0, 0, SIZE as usize).unwrap()[..] == old[..]);
            match d.commit_cycle(&point(1)) {
                Ok(()) => {}
                Err(vdrep_store::sink::SinkError::SyncLost { .. }) => {
                    reopened += 1;
                    drop(d);
                    d = open(&fs);
                    if d.state().committed_cycle < 1 {
                        let durable = d.begin_cycle(1).unwrap();
                        for (&c, &id) in &plan {
                            let (a, b) = range(c);
                            if durable.clipped(a, b).covered_len() < b - a {
                                send(d.as_ref(), c, id).unwrap();
                            }
                        }
                        d.commit_cycle(&point(1)).unwrap_or_else(|e| {
                            panic!("commit after reopening, failure at call {ops}: {e}")
                        });
                    }
                }
                Err(e) => panic!("retry after a failure at call {ops}: {e}"),
            }
        }
        sh.images.insert(1, sh.next_image(&plan));
        for c in [0, 1] {
            let got = d.read_point(c, 0, SIZE as usize).unwrap();
            assert!(
                got[..] == expand(&sh.images[&c])[..],
                "cut after {ops}: point {c}"
            );
        }
        d.begin_cycle(2).unwrap();
        if whole {
            break;
        }
        ops += 1;
    }
    assert!(ops > 5, "the commit made only {ops} filesystem calls");
    assert!(reopened > 0, "no failure hit an fdatasync");
}

#[test]
fn a_rotten_undo_log_of_an_open_cycle_is_reported_at_open_and_never_trusted() {
    let fs = SimFs::new();
    let (d, _) = setup(&fs);
    d.begin_cycle(1).unwrap();
    send(d.as_ref(), 3, 77).unwrap();
    d.checkpoint(&ranges(&BTreeSet::from([3]))).unwrap();
    drop(d);
    // One flipped byte in the first record's header (after the 64-byte file header).
    let undo = root().join("vm/d.p0.undo");
    let mut b = fs.file_bytes(&undo).unwrap()[70..71].to_vec();
    b[0] ^= 0x10;
    fs.tamper(&undo, 70, &b).unwrap();
    let store = LocalStore::open_with_fs(root(), Arc::new(fs.clone())).unwrap();
    let e = store.open_disk(&key(), SIZE, SRC).map(|_| ()).unwrap_err();
    assert!(
        matches!(e, vdrep_store::sink::SinkError::CorruptState { .. }) && !e.is_transient(),
        "{e}"
    );
    assert!(
        e.to_string().contains("d.p0.undo") && e.to_string().contains("checksum"),
        "{e}"
    );
}
