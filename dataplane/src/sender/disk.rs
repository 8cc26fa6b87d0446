//! Replicating one disk over an established connection.

use std::sync::{Arc, Mutex};
use std::thread;

use bytes::Bytes;
use tracing::{debug, warn};
use vdrep_proto::wire::{BatchResult, BatchStart, Control, K_BATCH_RESULT, MAX_CONTROL_BODY};

use super::{ControlStream, SendError, SendOptions};
use crate::disk::{DiskError, VirtualDisk};
use crate::pipeline::{plan_disk, prepare, AdaptiveLevel, PlanOptions, Prepared, Stats, WorkItem};
use crate::transport::{read_frame, write_frame};

/// Source bytes per data stream before it is finished and answered: big enough to amortise
/// the round trip, small enough that a refused batch costs little.
const BATCH_SOURCE_BYTES: u64 = 32 << 20;
/// Resend passes for refused extents before giving up.
const MAX_PASSES: usize = 4;

/// One disk to replicate.
pub struct DiskJob {
    /// VM name.
    pub vm: String,
    /// Disk name in the store.
    pub name: String,
    /// The source.
    pub disk: Arc<dyn VirtualDisk>,
}

/// Outcome of a disk's replication.
#[derive(Debug, Clone)]
pub struct DiskOutcome {
    /// Bytes resumed from earlier attempts (skipped).
    pub resumed: u64,
}

/// Closes both channels when dropped, so the producer and CPU threads stop whenever the
/// sending side gives up.
struct Closer {
    work: async_channel::Sender<WorkItem>,
    prep: async_channel::Receiver<Prepared>,
}

impl Drop for Closer {
    fn drop(&mut self) {
        self.work.close();
        self.prep.close();
    }
}

/// Replicates `job` (initial copy, resumable) and commits it.
pub async fn replicate(
    conn: &quinn::Connection,
    ctrl: &mut ControlStream,
    job: &DiskJob,
    opts: &SendOptions,
    stats: &Arc<Stats>,
    level: &Arc<AdaptiveLevel>,
    peer: &str,
) -> Result<DiskOutcome, SendError> {
    let info = job.disk.info().clone();
    let req = ctrl.req();
    let opened = ctrl
        .call(Control::OpenDisk {
            req,
            vm: job.vm.clone(),
            disk: job.name.clone(),
            virtual_size: info.virtual_size,
            source_id: info.identity.unwrap_or_default(),
            full_copy: true,
        })
        .await?;
    let Control::DiskOpened {
        handle,
        generation,
        known_empty,
        progress,
        ..
    } = opened
    else {
        return Err(ctrl.unexpected(opened));
    };
    let resumed: u64 = progress.iter().map(|(a, b)| b - a).sum();
    stats.add_done(resumed);
    debug!(vm = %job.vm, disk = %job.name, handle, generation, resumed, "disk opened");

    let mut items: Option<Vec<WorkItem>> = None; // None: the whole plan
    for pass in 0..MAX_PASSES {
        let refused = run_pass(
            conn,
            job,
            handle,
            generation,
            known_empty,
            &progress,
            items.take(),
            opts,
            stats,
            level,
            peer,
        )
        .await?;
        if refused.is_empty() {
            let req = ctrl.req();
            let ans = ctrl
                .call(Control::CommitInitial {
                    req,
                    handle,
                    generation,
                })
                .await?;
            return match ans {
                Control::Committed { .. } => Ok(DiskOutcome { resumed }),
                other => Err(ctrl.unexpected(other)),
            };
        }
        warn!(vm = %job.vm, disk = %job.name, count = refused.len(), pass,
              "receiver refused extents (integrity); resending them");
        stats
            .resent
            .fetch_add(refused.len() as u64, std::sync::atomic::Ordering::Relaxed);
        items = Some(
            refused
                .iter()
                .map(|&(offset, len)| WorkItem::Read { offset, len })
                .collect(),
        );
    }
    let first = items
        .as_ref()
        .and_then(|v| v.first().copied())
        .map(|w| match w {
            WorkItem::Read { offset, .. } | WorkItem::Clear { offset, .. } => offset,
        })
        .unwrap_or(0);
    Err(SendError::Integrity {
        disk: format!("{}/{}", job.vm, job.name),
        count: items.map(|v| v.len()).unwrap_or(0),
        offset: first,
        passes: MAX_PASSES,
    })
}

/// One pass: the plan (or the given items) through the pipeline onto `opts.threads`
/// streams. Returns the extents the receiver refused.
#[allow(clippy::too_many_arguments)]
async fn run_pass(
    conn: &quinn::Connection,
    job: &DiskJob,
    handle: u32,
    generation: u64,
    known_empty: bool,
    progress: &[(u64, u64)],
    items: Option<Vec<WorkItem>>,
    opts: &SendOptions,
    stats: &Arc<Stats>,
    level: &Arc<AdaptiveLevel>,
    peer: &str,
) -> Result<Vec<(u64, u32)>, SendError> {
    let (work_tx, work_rx) = async_channel::bounded::<WorkItem>(64);
    let (prep_tx, prep_rx) = async_channel::bounded::<Prepared>(opts.threads * 2 + 4);
    let _closer = Closer {
        work: work_tx.clone(),
        prep: prep_rx.clone(),
    };
    let failure: Arc<Mutex<Option<DiskError>>> = Arc::new(Mutex::new(None));

    // Producer: the plan, window by window.
    let producer = {
        let disk = job.disk.clone();
        let plan = PlanOptions {
            chunk: opts.chunk,
            known_empty,
            done: progress.to_vec(),
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
                    None => plan_disk(disk.as_ref(), &plan, |batch| {
                        batch.into_iter().all(|it| tx.send_blocking(it).is_ok())
                    }),
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

    // CPU stages: one thread per core.
    let workers = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let mut cpu = Vec::new();
    for i in 0..workers {
        let rx = work_rx.clone();
        let tx = prep_tx.clone();
        let disk = job.disk.clone();
        let failure = failure.clone();
        let stats = stats.clone();
        let level = level.clone();
        cpu.push(
            thread::Builder::new()
                .name(format!("vdrep-cpu-{i}"))
                .spawn(move || {
                    while let Ok(item) = rx.recv_blocking() {
                        match prepare(disk.as_ref(), item, known_empty, &level, &stats) {
                            Ok(v) => {
                                for p in v {
                                    if tx.send_blocking(p).is_err() {
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
    drop(work_rx);

    // Streams.
    let refused = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..opts.threads {
        let conn = conn.clone();
        let rx = prep_rx.clone();
        let stats = stats.clone();
        let level = level.clone();
        let refused = refused.clone();
        let peer = peer.to_string();
        tasks.spawn(async move {
            stream_worker(
                &conn, handle, generation, rx, &stats, &level, &refused, &peer,
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

/// Sends prepared extents in batches on fresh streams until the queue closes.
#[allow(clippy::too_many_arguments)]
async fn stream_worker(
    conn: &quinn::Connection,
    handle: u32,
    generation: u64,
    rx: async_channel::Receiver<Prepared>,
    stats: &Stats,
    level: &AdaptiveLevel,
    refused: &Mutex<Vec<(u64, u32)>>,
    peer: &str,
) -> Result<(), SendError> {
    let conn_err = |e| SendError::Connection {
        peer: peer.to_string(),
        source: e,
    };
    let frame_err = |e| SendError::Frame {
        peer: peer.to_string(),
        source: e,
    };
    loop {
        let first = match rx.recv().await {
            Ok(p) => p,
            Err(_) => return Ok(()),
        };
        let (mut send, mut recv) = conn.open_bi().await.map_err(conn_err)?;
        write_frame(&mut send, &BatchStart { handle, generation }.encode())
            .await
            .map_err(frame_err)?;
        let mut in_batch: Vec<(u64, u64)> = Vec::new(); // (offset, source_len) sent
        let mut batch_bytes = 0u64;
        let mut next = Some(first);
        while let Some(p) = next.take() {
            batch_bytes += p.source_len;
            match p.header {
                None => stats.add_done(p.source_len),
                Some(h) => {
                    let prefix = Bytes::from(h.encode_frame_prefix());
                    stats.add_wire((prefix.len() + p.payload.len()) as u64);
                    // Header and payload go out as two buffers: the payload is not copied.
                    let mut chunks = [prefix, p.payload];
                    if let Err(e) = send.write_all_chunks(&mut chunks).await {
                        // A receiver that fails a batch (store full, bad state) stops the
                        // stream and says why in its batch result: report that, not the stop.
                        if matches!(e, quinn::WriteError::Stopped(_)) {
                            if let Some(reason) = stopped_reason(&mut recv, peer).await {
                                return Err(reason);
                            }
                        }
                        return Err(frame_err(e.into()));
                    }
                    in_batch.push((p.offset, p.source_len));
                }
            }
            if batch_bytes >= BATCH_SOURCE_BYTES {
                break;
            }
            if rx.is_full() {
                level.link_saturated();
            } else if rx.is_empty() {
                level.link_starved();
            }
            next = rx.recv().await.ok();
        }
        let _ = send.finish();
        let (kind, body) = read_frame(&mut recv, MAX_CONTROL_BODY)
            .await
            .map_err(frame_err)?;
        if kind != K_BATCH_RESULT {
            return Err(SendError::Protocol {
                peer: peer.to_string(),
                message: format!("frame type {kind} where a batch result was due"),
            });
        }
        let res = BatchResult::decode(&body).map_err(|e| SendError::Protocol {
            peer: peer.to_string(),
            message: e.to_string(),
        })?;
        if let Some((class, message)) = res.error {
            return Err(SendError::Remote {
                peer: peer.to_string(),
                class,
                message,
            });
        }
        let mut bad = Vec::new();
        for &(o, l, _) in &res.rejected {
            bad.push((o, l));
        }
        for &(o, src) in &in_batch {
            if !bad.iter().any(|&(bo, _)| bo == o) {
                stats.add_done(src);
                stats
                    .extents
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        if !bad.is_empty() {
            if let Ok(mut r) = refused.lock() {
                r.extend(bad);
            }
        }
    }
}

/// The receiver's error from the batch result of a stream it stopped, if it sent one
/// within a second.
async fn stopped_reason(recv: &mut quinn::RecvStream, peer: &str) -> Option<SendError> {
    let read = read_frame(recv, MAX_CONTROL_BODY);
    let (kind, body) = tokio::time::timeout(std::time::Duration::from_secs(1), read)
        .await
        .ok()?
        .ok()?;
    if kind != K_BATCH_RESULT {
        return None;
    }
    let (class, message) = BatchResult::decode(&body).ok()?.error?;
    Some(SendError::Remote {
        peer: peer.to_string(),
        class,
        message,
    })
}
