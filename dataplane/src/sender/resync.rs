//! Resynchronisation of a committed replica: compare hash trees (see [`crate::resync`]),
//! send only the differing pages, as one delta cycle.
//!
//! **Safety.** The resync is cycle `committed + 1`: on both sinks its writes stay outside the
//! latest recovery point until `CommitCycle`, so the last good point survives whatever
//! happens meanwhile, and the open cycle is the receiver's durable "inconsistent" mark. Once
//! committed, the resync is itself the next recovery point.
//!
//! **Resume.** After a cut or a kill the sender reopens the same cycle and runs the
//! comparison again: the receiver's side covers its working image *including* the cycle's
//! durable writes (its index marks the nodes they touched dirty, and they are rehashed), so
//! pages already sent now match and are not resent; only the hash exchange (whose
//! volume shrinks with the remaining differences) is repeated. The cycle's progress list is
//! deliberately not used to skip ranges: an open cycle left by an interrupted delta cycle
//! holds a log's data, not necessarily the source's.
//!
//! **Confirmation.** After the data, both sides rehash the nodes under the sent ranges and
//! compare full-strength roots; a mismatch (a truncated-hash collision, or the source
//! changing underneath) runs another round, up to [`MAX_ROUNDS`].

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{info, warn};
use vdrep_proto::session::sender::{DiskEvent, SenderDisk};
use vdrep_proto::wire::MAX_HASH_PARENTS;
use vdrep_proto::RangeSet;

use super::disk::{begin_cycle, commit_cycle, disk_call, out_of_order, DiskJob, Opened, Shared};
use super::pass::send_all;
use super::tree::SourceTree as Tree;
use super::{ControlStream, SendError};
use crate::disk::{ExtentKind, VirtualDisk};
use crate::pipeline::WorkItem;
use crate::resync::{children, node_range, trunc, Source, PAGE, PAGE_LEVEL};

/// Comparison rounds before the roots must agree.
pub const MAX_ROUNDS: usize = 3;

/// A source disk as a tree [`Source`].
pub struct DiskSource(pub Arc<dyn VirtualDisk>);

impl Source for DiskSource {
    fn size(&self) -> u64 {
        self.0.info().virtual_size
    }
    fn read(&self, off: u64, len: usize) -> Result<bytes::Bytes, String> {
        self.0.read_at(off, len).map_err(|e| e.to_string())
    }
    fn known_zero(&self, off: u64, len: u64) -> bool {
        self.0
            .extents_in(off, off + len)
            .map(|v| v.iter().all(|e| e.kind == ExtentKind::Zero))
            .unwrap_or(false)
    }
}

/// What a resync did.
#[derive(Debug, Clone, Default)]
pub struct ResyncOutcome {
    /// The cycle it committed.
    pub cycle: u64,
    /// Bytes found different and sent (uncompressed).
    pub changed: u64,
    /// Comparison rounds.
    pub rounds: usize,
}

fn threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

/// Resynchronises `job`'s committed replica (opened as `o`) and commits the result as a
/// cycle. `strict`: the roots must agree (a quiescent source); otherwise a mismatch after
/// the last round is logged and the following delta cycles carry the writes.
pub async fn resync(
    conn: &quinn::Connection,
    ctrl: &mut ControlStream,
    job: &DiskJob,
    o: &mut Opened,
    sh: &Arc<Shared>,
    retention: Duration,
    strict: bool,
) -> Result<ResyncOutcome, SendError> {
    let cycle = o.committed_cycle + 1;
    begin_cycle(ctrl, o, cycle).await?;
    let src = Arc::new(DiskSource(job.disk.clone()));
    let s2 = src.clone();
    let tree = tokio::task::spawn_blocking(move || Tree::build(s2.as_ref(), threads()))
        .await
        .map_err(|e| SendError::Internal(format!("hash task: {e}")))?
        .map_err(SendError::Internal)?;
    let tree = Arc::new(Mutex::new(tree));
    let mut out = ResyncOutcome {
        cycle,
        ..Default::default()
    };
    let co = Opened {
        known_empty: false,
        ..o.clone()
    };
    // Scattered pages trickle through the pipeline, which the adaptive controller reads as
    // a starved link and answers by turning compression off; a resync sends little data and
    // its wire bytes are what counts, so it compresses at the configured level throughout.
    let sh = &Arc::new(Shared {
        opts: sh.opts.clone(),
        stats: sh.stats.clone(),
        level: Arc::new(crate::pipeline::AdaptiveLevel::new(sh.opts.level, false)),
        throttle: sh.throttle.clone(),
        peer: sh.peer.clone(),
        health: sh.health.clone(),
        clock: sh.clock.clone(),
        bandwidth: sh.bandwidth.clone(),
        jobs: sh.jobs.clone(),
        board: sh.board.clone(),
        vms: sh.vms.clone(),
        state: sh.state.clone(),
        prepared: sh.prepared.clone(),
        credit: sh.credit.clone(),
        // The budget paces the resync's reads too (its cap acts on the run's level, which
        // a resync does not use: a resync sends little, at its fixed level).
        cpu: sh.cpu.clone(),
    });
    loop {
        out.rounds += 1;
        // `--verify`: the receiver rehashes its whole working image once, in the first round.
        let verify = sh.opts.verify && out.rounds == 1;
        let diff = compare(ctrl, &mut o.session, &tree, &src, sh, verify).await?;
        let bytes = diff.covered_len();
        out.changed += bytes;
        info!(vm = %job.vm, disk = %job.name, round = out.rounds, differing_bytes = bytes,
              ranges = diff.range_count(), "resync comparison done");
        if out.rounds == 1 {
            job.progress.resync_remaining(&sh.stats, bytes);
        }
        if !diff.is_empty() {
            let items = split(&diff, sh.opts.chunk as u64);
            send_all(conn, job, &co, Some(items), &RangeSet::new(), sh).await?;
        }
        let (t2, s2) = (tree.clone(), src.clone());
        let r2 = diff.clone();
        let mine = tokio::task::spawn_blocking(move || {
            let mut t = t2.lock().map_err(|_| "tree lock poisoned".to_string())?;
            t.refresh(s2.as_ref(), &r2)?;
            t.root()
        })
        .await
        .map_err(|e| SendError::Internal(format!("hash task: {e}")))?
        .map_err(SendError::Internal)?;
        let req = ctrl.req();
        let msg = o.session.root_request(req).map_err(|e| ctrl.error(e))?;
        sh.stats
            .add_hash_wire(msg.encode().len() as u64 + 5 + 8 + 32);
        let root = match disk_call(ctrl, &mut o.session, msg).await? {
            DiskEvent::Root(root) => root,
            other => return Err(out_of_order(other)),
        };
        if root == mine {
            break;
        }
        if out.rounds >= MAX_ROUNDS {
            if strict {
                return Err(SendError::Integrity {
                    disk: format!("{}/{}", job.vm, job.name),
                    count: 1,
                    offset: 0,
                    passes: MAX_ROUNDS,
                });
            }
            warn!(vm = %job.vm, disk = %job.name,
                  "resync roots still differ (the source is being written); the next cycles carry those writes");
            break;
        }
        warn!(vm = %job.vm, disk = %job.name, round = out.rounds,
              "resync roots differ after the round; comparing again");
    }
    commit_cycle(
        ctrl,
        o,
        out.changed,
        [0; 32],
        retention.as_secs().min(86_400) as u32,
    )
    .await?;
    sh.stats.cycles.fetch_add(1, Ordering::Relaxed);
    sh.stats
        .resync_changed
        .fetch_add(out.changed, Ordering::Relaxed);
    Ok(out)
}

/// Asks the receiver for the hashes of `level` under `parents` (batched), counting the bytes.
async fn ask(
    ctrl: &mut ControlStream,
    disk: &mut SenderDisk,
    level: u8,
    parents: &[u64],
    sh: &Shared,
    verify: bool,
) -> Result<Vec<u64>, SendError> {
    let mut out = Vec::new();
    let batches: Vec<&[u64]> = if parents.is_empty() {
        vec![&[][..]]
    } else {
        parents.chunks(MAX_HASH_PARENTS).collect()
    };
    for b in batches {
        let req = ctrl.req();
        // The session counts the answer's hashes against the tree's geometry.
        let msg = disk
            .hash_request(req, level, b.to_vec(), verify)
            .map_err(|e| ctrl.error(e))?;
        sh.stats.add_hash_wire(msg.encode().len() as u64);
        let hashes = match disk_call(ctrl, disk, msg).await? {
            DiskEvent::Hashes(hashes) => hashes,
            other => return Err(out_of_order(other)),
        };
        sh.stats.add_hash_wire(5 + 13 + 8 * hashes.len() as u64);
        out.extend(hashes);
    }
    Ok(out)
}

fn short_answer(sh: &Shared, level: u8) -> SendError {
    SendError::Protocol {
        peer: sh.peer.clone(),
        message: format!("wrong number of level-{level} hashes in a resync answer"),
    }
}

/// Walks the trees down to pages where they differ; returns the byte ranges to send.
async fn compare(
    ctrl: &mut ControlStream,
    disk: &mut SenderDisk,
    tree: &Arc<Mutex<Tree>>,
    src: &Arc<DiskSource>,
    sh: &Shared,
    verify: bool,
) -> Result<RangeSet, SendError> {
    let size = src.size();
    let poisoned = || SendError::Internal("tree lock poisoned".into());
    let mut diff = RangeSet::new();
    // Levels 0 and 1: plain descent.
    // The disk session checked every answer holds as many hashes as the tree has there
    // (`SenderDisk::hash_request`); the slices below only stay in bounds.
    let theirs = ask(ctrl, disk, 0, &[], sh, verify).await?;
    let mut nodes: Vec<u64> = {
        let mut t = tree.lock().map_err(|_| poisoned())?;
        (0..theirs.len() as u64)
            .filter(|&i| t.at(0, i) != Some(theirs[i as usize]))
            .collect()
    };
    for level in 1..PAGE_LEVEL {
        let theirs = ask(ctrl, disk, level, &nodes, sh, false).await?;
        let mut next = Vec::new();
        let mut dense: Vec<(u64, Vec<u64>)> = Vec::new();
        {
            let mut t = tree.lock().map_err(|_| poisoned())?;
            let mut k = 0usize;
            for &p in &nodes {
                let kids = children(size, level as usize - 1, p);
                let n = kids.end - kids.start;
                let Some(slice) = theirs.get(k..k + n as usize) else {
                    return Err(short_answer(sh, level));
                };
                k += n as usize;
                let differing: Vec<u64> = kids
                    .zip(slice)
                    .filter(|(c, h)| t.at(level as usize, *c) != Some(**h))
                    .map(|(c, _)| c)
                    .collect();
                // Most children of a 16 MiB node differ: a contiguous change, or dense scattered
                // ones. Decided below on a sample of page hashes.
                if level + 1 == PAGE_LEVEL
                    && n > 1
                    && differing.len() as u64 * 64 >= crate::resync::WHOLE_NODE_THRESHOLD as u64 * n
                {
                    dense.push((p, differing));
                } else {
                    next.extend(differing);
                }
            }
        }
        if !dense.is_empty() {
            // One differing child per dense node: if nearly all its pages differ, the node
            // changed as a whole and is sent without page hashes (≤ 1 MiB of hashes for a
            // 256 MiB region); otherwise its pages are compared like any other.
            let sample: Vec<u64> = dense.iter().map(|(_, d)| d[0]).collect();
            let dirty = page_diff(ctrl, disk, tree, src, sh, &sample).await?;
            for ((p, differing), pages) in dense.into_iter().zip(dirty) {
                let whole = pages.len() * 64 >= crate::resync::WHOLE_NODE_THRESHOLD * 64;
                if whole {
                    let (a, b) = node_range(size, level as usize - 1, p);
                    diff.insert(a, b);
                } else {
                    next.extend(differing);
                }
            }
            next.sort_unstable();
        }
        nodes = next;
    }
    // Pages: the receiver's answer and this side's page hashes.
    for (p, pages) in nodes
        .iter()
        .zip(page_diff(ctrl, disk, tree, src, sh, &nodes).await?)
    {
        let (a, _) = node_range(size, PAGE_LEVEL as usize - 1, *p);
        for j in pages {
            let s = a + j as u64 * PAGE;
            diff.insert(s, (s + PAGE).min(size));
        }
    }
    Ok(diff)
}

/// For each 256 KiB node of `nodes` (ascending), the indices of its pages that differ:
/// the receiver's answer and this side's page hashes, batch by batch, in parallel.
async fn page_diff(
    ctrl: &mut ControlStream,
    disk: &mut SenderDisk,
    tree: &Arc<Mutex<Tree>>,
    src: &Arc<DiskSource>,
    sh: &Shared,
    nodes: &[u64],
) -> Result<Vec<Vec<usize>>, SendError> {
    let mut out = Vec::with_capacity(nodes.len());
    for batch in nodes.chunks(MAX_HASH_PARENTS) {
        let (t2, s2, b2) = (tree.clone(), src.clone(), batch.to_vec());
        let mine = tokio::task::spawn_blocking(move || {
            let t = t2.lock().map_err(|_| "tree lock poisoned".to_string())?;
            b2.iter()
                .map(|&p| t.pages(s2.as_ref(), p))
                .collect::<Result<Vec<_>, String>>()
        });
        let theirs = ask(ctrl, disk, PAGE_LEVEL, batch, sh, false).await?;
        let mine = mine
            .await
            .map_err(|e| SendError::Internal(format!("hash task: {e}")))?
            .map_err(SendError::Internal)?;
        let mut k = 0usize;
        for pages in &mine {
            let Some(slice) = theirs.get(k..k + pages.len()) else {
                return Err(short_answer(sh, PAGE_LEVEL));
            };
            k += pages.len();
            out.push(
                pages
                    .iter()
                    .zip(slice)
                    .enumerate()
                    .filter(|(_, (m, h))| trunc(m) != **h)
                    .map(|(j, _)| j)
                    .collect(),
            );
        }
    }
    Ok(out)
}

/// Work items for `ranges`, at most `chunk` bytes each.
fn split(ranges: &RangeSet, chunk: u64) -> Vec<WorkItem> {
    let mut out = Vec::new();
    for r in ranges.iter() {
        crate::pipeline::push_split(&mut out, r.start, r.end, chunk, false);
    }
    out
}
