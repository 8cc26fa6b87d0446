//! The attempt loop's side of the set: on one connection, every VM of the set runs as a
//! task of its own, VMs added meanwhile start as they come, and a failure that concerns one
//! VM alone (a refusal, its change source) is handled for that VM while the others go on.

use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use super::{VmEntry, VmSet};
use crate::sender::disk::Shared;
use crate::sender::{protect, SendError};

/// Runs every VM of `set` on `conn`, starting VMs added meanwhile; the first error aborts
/// the others, except a refusal of one VM alone (the receiver does not authorise this
/// sender for it, or holds disks of it the sender does not name): that VM goes Critical
/// with the receiver's reason and the others go on; and except a transient failure of one
/// VM's change source, which is retried for that VM alone or given up alone
/// ([`crate::sender::vm_retry`]).
/// Ends when every VM ended (`--max-cycles`), never while the set is empty; a VM refused
/// alone or given up then ends the run with its error.
pub async fn run_all(
    conn: &quinn::Connection,
    set: &VmSet,
    sh: &Arc<Shared>,
) -> Result<(), SendError> {
    let mut grew = set.subscribe();
    let mut tasks = tokio::task::JoinSet::new();
    let mut started = 0;
    let mut refused: Option<SendError> = None;
    let mut claimed = 0;
    loop {
        let list = set.list();
        if claimed < list.len() {
            // This connection protects the groups (again, when a VM joined one).
            if list[claimed..].iter().any(|e| e.policy.group.is_some()) {
                crate::sender::group::claim_all(conn, &set.groups, &sh.peer, &sh.credit).await?;
            }
            claimed = list.len();
        }
        for e in list.iter().skip(started) {
            if set.retries.gave_up(&e.name) {
                refused.get_or_insert_with(|| crate::sender::vm_retry::gave_up_error(&e.name));
                continue;
            }
            spawn_vm(&mut tasks, conn, sh, e, None);
        }
        started = started.max(list.len());
        if started > 0 && tasks.is_empty() {
            return refused.map_or(Ok(()), Err);
        }
        tokio::select! {
            Some(r) = tasks.join_next(), if !tasks.is_empty() => {
                let (e, r) = match r {
                    Ok(x) => x,
                    Err(j) => {
                        tasks.abort_all();
                        return Err(SendError::Internal(format!("VM task: {j}")));
                    }
                };
                let vm = e.name.clone();
                match r {
                    Ok(()) => {}
                    Err(err) if refused_alone(&err) && !tasks.is_empty() => {
                        let class = err.verdict();
                        sh.health.vm_failed(&vm, &class, &err.to_string());
                        sh.jobs.fail_vm(&vm, &err);
                        warn!(%vm, error = %err, advice = class.advice,
                              "VM refused by the receiver (Critical); the other VMs go on");
                        refused = Some(err);
                    }
                    Err(err) if crate::sender::vm_retry::source_alone(&err) => {
                        // A qemu VM retries in place and ends only once given up; another
                        // source's VM starts again after the delay.
                        let rounds = e.sched.cycles.load(std::sync::atomic::Ordering::Relaxed);
                        let verdict = if set.retries.gave_up(&vm) {
                            crate::sender::vm_retry::Verdict::GaveUp
                        } else {
                            set.retries.failed(&vm, rounds, sh.opts.protect_give_up_after)
                        };
                        match verdict {
                            crate::sender::vm_retry::Verdict::RetryIn(delay) => {
                                sh.health.vm_source_failed(&vm, &err.verdict(), &err.to_string(), Some(delay));
                                warn!(%vm, error = %err, retry_in_ms = delay.as_millis() as u64,
                                      "the VM's change source failed; retrying this VM alone (the others go on)");
                                spawn_vm(&mut tasks, conn, sh, &e, Some(delay));
                            }
                            crate::sender::vm_retry::Verdict::GaveUp => {
                                let class = crate::sender::vm_retry::gave_up_class();
                                sh.health.vm_source_failed(&vm, &class, &err.to_string(), None);
                                sh.jobs.fail_vm(&vm, &err);
                                tracing::error!(%vm, error = %err, advice = class.advice,
                                                "giving up on this VM after --give-up-after (Critical); the other VMs go on");
                                if let Some(q) = &e.qemu {
                                    tokio::spawn(crate::sender::qemu::stop_given_up(q.clone()));
                                }
                                refused = Some(err);
                            }
                        }
                    }
                    Err(err) => {
                        tasks.abort_all();
                        return Err(err);
                    }
                }
            }
            changed = grew.changed() => {
                if changed.is_err() {
                    warn!("the VM set is gone; ending the attempt");
                    return Ok(());
                }
            }
        }
    }
}

type VmTask = (Arc<VmEntry>, Result<(), SendError>);

/// Starts the protection of `e` on `conn` (after `delay`, for a retry of the VM alone).
fn spawn_vm(
    tasks: &mut tokio::task::JoinSet<VmTask>,
    conn: &quinn::Connection,
    sh: &Arc<Shared>,
    e: &Arc<VmEntry>,
    delay: Option<Duration>,
) {
    let (conn, sh, e) = (conn.clone(), sh.clone(), e.clone());
    tasks.spawn(async move {
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let r = match &e.qemu {
            Some(q) => {
                crate::sender::qemu::protect::protect(&conn, q, &e.sched, &e.policy, &sh).await
            }
            None => protect::protect_vm(&conn, &e.disks, &e.sched, &e.policy, &sh).await,
        };
        (e, r)
    });
}

/// A refusal that concerns one VM only: the receiver does not authorise this sender for it,
/// or its store holds disks of it that the sender does not name (issue 17, item 6).
pub(super) fn refused_alone(e: &SendError) -> bool {
    use vdrep_proto::wire::ErrorClass;
    matches!(
        e,
        SendError::Remote {
            class: ErrorClass::Unauthorized | ErrorClass::DiskSetChanged,
            ..
        }
    )
}
