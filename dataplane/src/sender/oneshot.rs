//! The one-shot mode (`vdrep send` without a policy): on one connection, each VM's disks are
//! opened at the receiver, then each is copied once (or, when the receiver holds a
//! committed replica, resynchronised), and the VM's job is finalised. The set of disks
//! committed so far outlives the connection, so a reconnect resumes with the others.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tracing::info;

use super::{disk, progress, resync, ControlStream, DiskJob, SendError, Shared};

/// Copies (or resyncs) every disk of one VM not committed yet; `done` holds the committed
/// disks as (VM, disk).
pub(super) async fn copy_vm(
    conn: &quinn::Connection,
    jobs: Vec<DiskJob>,
    sh: &Arc<Shared>,
    done: &Mutex<HashSet<(String, String)>>,
) -> Result<(), SendError> {
    let mut ctrl = ControlStream::open(conn, &sh.peer, &sh.credit).await?;
    let Some(vm) = jobs.first().map(|j| j.vm.clone()) else {
        return Ok(());
    };
    // Open every disk first: the receiver authorises the VM, and the capacity
    // check knows what is left to copy.
    let mut opened = Vec::new();
    let names: Vec<String> = jobs.iter().map(|j| j.name.clone()).collect();
    for job in &jobs {
        let key = (job.vm.clone(), job.name.clone());
        if done.lock().map(|d| d.contains(&key)).unwrap_or(false) {
            continue;
        }
        // Not fresh: a committed replica is kept and resynchronised.
        let o = disk::open_disk(&mut ctrl, job, &names, false).await?;
        let copy = !o.initial_committed || o.known_empty;
        opened.push((job.clone(), o, copy));
    }
    sh.jobs
        .connected(&mut ctrl, &vm, &opened, &sh.opts.identity)
        .await?;
    for (job, o, _) in opened.iter_mut() {
        let key = (job.vm.clone(), job.name.clone());
        let t0 = crate::clock::std_now();
        if o.initial_committed && !o.known_empty {
            // A committed replica is brought in line by a resync, not copied again.
            let out = resync::resync(
                conn,
                &mut ctrl,
                job,
                o,
                sh,
                crate::sink::DEFAULT_RETENTION,
                true,
            )
            .await?;
            info!(vm = %job.vm, disk = %job.name, cycle = out.cycle, changed_bytes = out.changed,
                  rounds = out.rounds, seconds = progress::log_secs(t0.elapsed().as_secs_f64()),
                  "resync committed at the receiver");
            sh.board.committed(&job.vm, &job.name, out.cycle);
        } else {
            sh.jobs.copy_started(&mut ctrl, &vm, &job.name).await;
            let out = disk::copy_initial(conn, &mut ctrl, job, o, sh).await?;
            info!(vm = %job.vm, disk = %job.name, resumed_bytes = out.resumed,
                  seconds = progress::log_secs(t0.elapsed().as_secs_f64()), "disk committed at the receiver");
            let copied = (
                job.disk.info().virtual_size,
                t0.elapsed().as_secs_f64(),
                out.resumed,
            );
            sh.jobs.copy_done(&mut ctrl, &vm, &job.name, copied).await;
            sh.board.committed(&job.vm, &job.name, 0);
        }
        if let Ok(mut d) = done.lock() {
            d.insert(key);
        }
        sh.health.committed(&job.vm, &job.name, sh.clock.now_utc());
    }
    let names: Vec<String> = jobs.iter().map(|j| j.name.clone()).collect();
    sh.jobs.finalize(&mut ctrl, &vm, &names, None).await;
    ctrl.finish();
    Ok(())
}
