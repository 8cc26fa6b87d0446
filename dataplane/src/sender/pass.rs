//! One pass of a disk's extents through the pipeline onto its data streams, and the passes
//! that resend what the receiver refused ([`send_all`]). Apart from the disk's protocol
//! calls (`super::disk`): this is the machinery of threads and bounded queues (planner,
//! read-ahead, one CPU thread per core, the streams) that keeps a pass's memory fixed
//! whatever the disk size, and stops every stage when any side gives up.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread;

use tracing::warn;
use vdrep_proto::session::sender::{PassVerdict, Passes};
use vdrep_proto::wire::{ExtentHashing, MAX_EXTENT_LEN};
use vdrep_proto::RangeSet;

use super::disk::{DiskJob, Opened, Shared};
use super::stream::stream_worker;
use super::SendError;
use crate::disk::DiskError;
use crate::pipeline::{
    join_loaded, plan_disk, prepare_loaded, readahead, Loaded, PlanOptions, Prepared, Stats,
    Ticket, WorkItem, Zeros, PREPARED_BUDGET,
};

/// Closes the channels when dropped, so the producer, read-ahead and CPU threads stop
/// whenever the sending side gives up.
struct Closer {
    work: async_channel::Sender<WorkItem>,
    loaded: async_channel::Sender<Loaded>,
    prep: async_channel::Receiver<Queued>,
}

impl Drop for Closer {
    fn drop(&mut self) {
        self.work.close();
        self.loaded.close();
        self.prep.close();
    }
}

/// A prepared extent in its queue, with the bytes it holds of the run's
/// [`MemoryBudget`](crate::pipeline::MemoryBudget) (`None` for a zero run, which carries no
/// payload).
pub(super) type Queued = (Prepared, Option<Ticket>);

/// Sends `items` (or the disk's whole plan) until the receiver has accepted every extent,
/// resending refused ones for a few passes.
pub async fn send_all(
    conn: &quinn::Connection,
    job: &DiskJob,
    o: &Opened,
    items: Option<Vec<WorkItem>>,
    done: &RangeSet,
    sh: &Arc<Shared>,
) -> Result<(), SendError> {
    let mut items = items;
    let mut passes = Passes::new();
    loop {
        let refused = run_pass(
            conn,
            job,
            o.handle,
            o.generation,
            o.zeros(),
            o.hashing(),
            done,
            items.take(),
            sh,
        )
        .await?;
        if !refused.is_empty() {
            warn!(vm = %job.vm, disk = %job.name, count = refused.len(), pass = passes.made(),
                  "receiver refused extents (integrity); resending them");
            sh.stats
                .resent
                .fetch_add(refused.len() as u64, Ordering::Relaxed);
        }
        match passes.settle(refused) {
            PassVerdict::Done => return Ok(()),
            PassVerdict::Resend(refused) => {
                items = Some(
                    refused
                        .iter()
                        .map(|&(offset, len)| WorkItem::Read { offset, len })
                        .collect(),
                );
            }
            PassVerdict::GiveUp {
                count,
                first_offset,
                passes,
            } => {
                return Err(SendError::Integrity {
                    disk: format!("{}/{}", job.vm, job.name),
                    count,
                    offset: first_offset,
                    passes,
                })
            }
        }
    }
}

/// One pass: the plan (or the given items) through the pipeline onto `opts.threads`
/// streams. Returns the extents the receiver refused.
#[allow(clippy::too_many_arguments)]
async fn run_pass(
    conn: &quinn::Connection,
    job: &DiskJob,
    handle: u32,
    generation: u64,
    zeros: Zeros,
    hashing: ExtentHashing,
    progress: &RangeSet,
    items: Option<Vec<WorkItem>>,
    sh: &Arc<Shared>,
) -> Result<Vec<(u64, u32)>, SendError> {
    let opts = &sh.opts;
    let (work_tx, work_rx) = async_channel::bounded::<WorkItem>(64);
    let queue = opts.threads * 2 + 4;
    let (prep_tx, prep_rx) = async_channel::bounded::<Queued>(queue);
    // Joined reads (see JOIN_FROM_LEVEL) are sized so that one pass's queue fits the run's
    // budget: incompressible extents travel raw, so an item can be as large as its read.
    let join_max =
        (PREPARED_BUDGET / queue as u64).clamp(opts.chunk as u64, MAX_EXTENT_LEN as u64) as u32;
    // Items the read-ahead stage handed on (with their bytes when it read them): a few, as
    // the stage holds its reads in flight itself.
    let (loaded_tx, loaded_rx) = async_channel::bounded::<Loaded>(2);
    let _closer = Closer {
        work: work_tx.clone(),
        loaded: loaded_tx.clone(),
        prep: prep_rx.clone(),
    };
    let failure: Arc<Mutex<Option<DiskError>>> = Arc::new(Mutex::new(None));

    // This disk's view of the counters: its adds also reach the run's and its metrics.
    let dstats = Stats::for_disk(
        &sh.stats,
        crate::metrics::events::disk_meter(&job.vm, &job.name),
    );
    // Producer: the plan, window by window.
    let producer = {
        let pstats = dstats.clone();
        let disk = job.disk.clone();
        let plan = PlanOptions {
            chunk: opts.chunk,
            known_empty: zeros.known_empty(),
            done: progress.clone(),
        };
        let failure = failure.clone();
        let tx = work_tx.clone();
        thread::Builder::new()
            .name("vdrep-plan".into())
            .spawn(move || {
                let res = match items {
                    Some(v) => {
                        for it in v {
                            if tx.send_blocking(it).is_err() {
                                break;
                            }
                        }
                        Ok(())
                    }
                    None => {
                        // What the plan leaves out (unallocated on a known-empty replica,
                        // or already durable) is counted as skipped, never read.
                        let mut planned = 0u64;
                        let r = plan_disk(disk.as_ref(), &plan, |batch| {
                            batch.into_iter().all(|it| {
                                planned += match it {
                                    WorkItem::Read { len, .. } | WorkItem::Clear { len, .. } => {
                                        len as u64
                                    }
                                };
                                tx.send_blocking(it).is_ok()
                            })
                        });
                        if r.is_ok() {
                            let durable: u64 = plan.done.covered_len();
                            let size = disk.info().virtual_size;
                            pstats.add_skipped_unallocated(
                                size.saturating_sub(durable).saturating_sub(planned),
                            );
                        }
                        r
                    }
                };
                if let Err(e) = res {
                    if let Ok(mut f) = failure.lock() {
                        f.get_or_insert(e);
                    }
                }
                tx.close();
            })
            .map_err(|e| SendError::Internal(format!("cannot start planner: {e}")))?
    };
    drop(work_tx);

    // Read-ahead: the cold reads of the CPU threads' next items, started before they ask.
    let ahead = {
        let disk = job.disk.clone();
        let level = sh.level.clone();
        let tx = loaded_tx.clone();
        let rx = work_rx.clone();
        thread::Builder::new()
            .name("vdrep-ahead".into())
            .spawn(move || {
                readahead::run(disk.as_ref(), &level, rx.clone(), tx.clone());
                // Whichever side ended it, both ends stop: the CPU threads finish what they
                // hold, the planner stops planning.
                tx.close();
                rx.close();
            })
            .map_err(|e| SendError::Internal(format!("cannot start read-ahead: {e}")))?
    };
    drop(loaded_tx);
    drop(work_rx);

    // CPU stages: one thread per core.
    let workers = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let mut cpu = Vec::new();
    for i in 0..workers {
        let rx = loaded_rx.clone();
        let tx = prep_tx.clone();
        let disk = job.disk.clone();
        let failure = failure.clone();
        let stats = dstats.clone();
        let level = sh.level.clone();
        let budget = sh.prepared.clone();
        let cpu_budget = sh.cpu.clone();
        cpu.push(
            thread::Builder::new()
                .name(format!("vdrep-cpu-{i}"))
                .spawn(move || {
                    let mut held: Option<Loaded> = None;
                    loop {
                        let item = match held.take() {
                            Some(i) => i,
                            None => match rx.recv_blocking() {
                                Ok(i) => i,
                                Err(_) => break,
                            },
                        };
                        if let Some(b) = &cpu_budget {
                            b.gate(|| tx.is_closed());
                        }
                        // On a slow link or under a CPU budget, larger frames buy ratio
                        // (see JOIN_FROM_LEVEL, AdaptiveLevel::joins).
                        let item = if level.joins() {
                            let (joined, rest) = join_loaded(item, join_max, || rx.try_recv().ok());
                            held = rest;
                            joined
                        } else {
                            item
                        };
                        match prepare_loaded(disk.as_ref(), item, zeros, hashing, &level, &stats) {
                            Ok(v) => {
                                for p in v {
                                    let ticket = match p.payload.len() {
                                        0 => None,
                                        n => match budget.acquire(n as u64, || tx.is_closed()) {
                                            Some(t) => Some(t),
                                            None => return,
                                        },
                                    };
                                    if tx.send_blocking((p, ticket)).is_err() {
                                        return;
                                    }
                                }
                            }
                            Err(e) => {
                                if let Ok(mut f) = failure.lock() {
                                    f.get_or_insert(e);
                                }
                                rx.close();
                                return;
                            }
                        }
                    }
                })
                .map_err(|e| SendError::Internal(format!("cannot start worker: {e}")))?,
        );
    }
    drop(prep_tx);
    drop(loaded_rx);

    // Streams.
    let refused = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..opts.threads {
        let conn = conn.clone();
        let rx = prep_rx.clone();
        let refused = refused.clone();
        let progress = job.progress.clone();
        let sh = sh.clone();
        let dstats = dstats.clone();
        tasks.spawn(async move {
            stream_worker(
                &conn, handle, generation, rx, &refused, &progress, &sh, dstats,
            )
            .await
        });
    }
    let mut result = Ok(());
    while let Some(r) = tasks.join_next().await {
        let r = r.unwrap_or_else(|e| Err(SendError::Internal(format!("stream task: {e}"))));
        if let Err(e) = r {
            if result.is_ok() {
                result = Err(e);
                prep_rx.close();
            }
        }
    }
    // The channels are closed now; the threads finish their current item and exit.
    prep_rx.close();
    let _ = producer.join();
    let _ = ahead.join();
    for t in cpu {
        let _ = t.join();
    }
    if let Some(e) = failure.lock().ok().and_then(|mut f| f.take()) {
        return Err(SendError::Disk(e));
    }
    result?;
    let v = refused.lock().map(|v| v.clone()).unwrap_or_default();
    Ok(v)
}
