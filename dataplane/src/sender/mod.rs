//! The sender: opens the source disks, connects to the receiver over one QUIC connection and
//! replicates each VM's disks (one after another, several streams each; VMs in parallel),
//! reconnecting and resuming on recoverable errors: a one-shot send until `give_up_after`,
//! continuous protection on the retry schedule forever (`crate::retry`). Health goes to
//! `state/health.json` (`crate::health`); the bandwidth policy is applied by a
//! [`BandwidthControl`] that can be changed while the transfer runs.
//!
//! A run, in files: [`run_controlled`] (here) sets up and then reconnects until done or
//! given up; `start` opens the disks and starts what runs beside the transfer (bandwidth,
//! compression controller, status board); `attempt` is one connection; on it `oneshot`
//! copies each disk once, or [`vmset`] runs the protected VMs' cycles (`protect`, `cycle`).

mod attempt;
mod control;
mod credit;
mod cycle;
mod disk;
mod error;
pub mod group;
pub mod group_qemu;
pub mod group_record;
pub mod jobs;
pub mod local_control;
pub(crate) mod logimage;
mod oneshot;
mod options;
mod pass;
pub mod pending;
pub mod points;
pub mod priority;
pub mod progress;
pub mod protect;
pub mod qemu;
mod renew;
pub mod resync;
pub mod source;
mod start;
pub mod status;
mod stream;
pub mod tree;
pub mod vm_retry;
pub mod vmset;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info, warn};

pub use control::ControlStream;
pub use disk::{DiskJob, DiskOutcome, Shared};
pub use error::SendError;
pub use options::{disk_names, SendOptions, VmSpec};
pub use progress::{human, Summary};
pub use status::{Board, DiskStatus};

use crate::clock::{SharedClock, SystemClock};
use crate::health::Health;
use crate::pipeline::{AdaptiveLevel, Stats};
use crate::retry::{Backoff, RetrySchedule};
use crate::throttle::{BandwidthControl, Throttle};

/// How long a finished sender waits for its close to go out. A receiver that misses it
/// drops the connection at its idle timeout; nothing it holds depends on the close.
const CLOSE_LINGER: Duration = Duration::from_millis(50);

/// Replicates every disk of `vms` (initial replication) and returns the summary.
pub async fn run(vms: &[VmSpec], opts: &SendOptions) -> Result<Summary, SendError> {
    run_with(vms, opts, None).await
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the VM tasks of an attempt do.
enum Mode {
    /// One initial copy per disk; the set holds the disks committed so far.
    OneShot(Arc<std::sync::Mutex<HashSet<(String, String)>>>),
    /// Continuous protection of a set of VMs that grows at run time.
    Protect(Arc<vmset::VmSet>),
}

/// Replicates `vms`: one initial copy (`policy` `None`), or continuous protection with delta
/// cycles under `policy`; bandwidth per `opts.bandwidth` on the host clock.
pub async fn run_with(
    vms: &[VmSpec],
    opts: &SendOptions,
    policy: Option<protect::Policy>,
) -> Result<Summary, SendError> {
    let clock: SharedClock = Arc::new(SystemClock::new());
    let ctl = BandwidthControl::new(opts.bandwidth.clone(), Arc::new(Throttle::new(None)), clock);
    run_controlled(vms, opts, policy, ctl, None).await
}

/// [`run_with`] under a bandwidth control the caller keeps, to change the policy while the
/// transfer runs (SIGHUP, the local control channel), answering the local control channel on
/// the unix socket `control` (status, bandwidth, resync requests; see [`local_control`]).
pub async fn run_controlled(
    vms: &[VmSpec],
    opts: &SendOptions,
    policy: Option<protect::Policy>,
    ctl: Arc<BandwidthControl>,
    control: Option<PathBuf>,
) -> Result<Summary, SendError> {
    let state = opts
        .state_dir
        .clone()
        .unwrap_or_else(pending::default_state_dir);
    let sj = Arc::new(jobs::SenderJobs::new(&state));
    let res = run_jobs(vms, opts, policy, sj.clone(), ctl, control, &state).await;
    if let Err(e) = &res {
        // The job that was running fails with the run and waits in the state folder for
        // the next connection.
        sj.fail_all(e);
    }
    res
}

#[allow(clippy::too_many_arguments)]
async fn run_jobs(
    vms: &[VmSpec],
    opts: &SendOptions,
    policy: Option<protect::Policy>,
    sj: Arc<jobs::SenderJobs>,
    ctl: Arc<BandwidthControl>,
    control: Option<PathBuf>,
    state: &Path,
) -> Result<Summary, SendError> {
    let started = crate::clock::std_now();
    let clock = ctl.clock().clone();
    let schedule_task = AbortOnDrop(tokio::spawn(ctl.clone().run()));
    // VMs added at run time by earlier runs (protection only): protected again, unless the
    // command line names the VM itself.
    let added = match &policy {
        Some(_) => vmset::load_for_start(state, vms)?,
        None => Vec::new(),
    };
    let all: Vec<VmSpec> = vms
        .iter()
        .cloned()
        // Added qemu VMs (`qmp`) are opened with the command line's (`qemu::add_vms`).
        .chain(added.iter().filter(|a| a.qmp.is_none()).map(|a| VmSpec {
            name: a.vm.clone(),
            disks: a.disks.clone(),
            group: a.group.clone(),
        }))
        .collect();
    let vms = &all[..];
    let jobs = start::open_disks(vms, &sj)?;
    let total: u64 = jobs
        .iter()
        .flatten()
        .map(|j| j.disk.info().virtual_size)
        .sum();
    let threshold = opts.rpo_threshold.unwrap_or_else(|| {
        policy
            .as_ref()
            .map(|p| crate::health::default_rpo_threshold(p.interval))
            .unwrap_or(Duration::from_secs(3600))
    });
    let names: Vec<(String, Vec<String>)> = jobs
        .iter()
        .flat_map(|v| {
            v.first()
                .map(|j| (j.vm.clone(), v.iter().map(|j| j.name.clone()).collect()))
        })
        .collect();
    let health = Arc::new(Health::new(clock.clone(), threshold, &names));
    for a in added.iter().filter(|a| a.qmp.is_none()) {
        health.add_vm(&a.vm, &disk_names(&a.disks), Some(a.rpo_threshold()));
    }
    let set = policy
        .as_ref()
        .map(|p| Arc::new(vmset::VmSet::new(p.clone(), state)));
    health.set_bandwidth(ctl.policy().to_string());
    // health.json lives in the state folder, beside the pending jobs.
    let _health_task = AbortOnDrop(tokio::spawn(health.clone().run_writer(state.to_path_buf())));
    let level = Arc::new(AdaptiveLevel::new(opts.level, opts.adaptive));
    let stats = Arc::new(Stats::default());
    let cpu = opts.cpu_limit.map(|l| {
        info!(limit = %l, "CPU budget of the sender");
        level.join_under_budget();
        Arc::new(crate::cpu::CpuBudget::new(
            l,
            level.clone(),
            stats.clone(),
            clock.clone(),
        ))
    });
    let sh = Arc::new(Shared {
        opts: opts.clone(),
        stats,
        level,
        cpu,
        throttle: ctl.throttle().clone(),
        peer: opts.to.clone(),
        health: health.clone(),
        clock: clock.clone(),
        jobs: sj,
        board: Arc::new(Board::default()),
        bandwidth: ctl.clone(),
        vms: set.clone(),
        state: state.to_path_buf(),
        // Small until the compression controller has seen the link (see the controller).
        prepared: crate::pipeline::MemoryBudget::new(crate::pipeline::WARMUP_BUDGET),
        credit: Default::default(),
    });
    if let Some(p) = &policy {
        sh.board.set_interval(p.interval);
    }
    start::announce_bandwidth(&sh, &ctl, opts, control.as_deref(), state);
    let stats = &sh.stats;
    let _stop_controller = AbortOnDrop(start::spawn_controller(&sh));
    let done: Arc<std::sync::Mutex<HashSet<(String, String)>>> = Default::default();
    let mode = match (policy, set) {
        (Some(policy), Some(set)) => {
            for (vm_jobs, spec) in jobs.iter().zip(vms) {
                let p = added
                    .iter()
                    .find(|a| a.vm == spec.name)
                    .map(|a| set.policy_for(a))
                    .unwrap_or_else(|| policy.clone());
                // Joining refuses a 17th VM and a member with another interval.
                let p = set
                    .with_group(&spec.name, spec.group.as_deref(), false, p)
                    .map_err(SendError::Group)?;
                set.push(vmset::VmEntry {
                    name: spec.name.clone(),
                    paths: spec.disks.clone(),
                    disks: vmset::protected_disks(vm_jobs, &spec.disks, opts.resync)?,
                    sched: Arc::new(protect::Schedule::new(p.interval)),
                    policy: p,
                    qemu: None,
                });
            }
            qemu::add_vms(
                &sh,
                &set,
                &added,
                &policy,
                opts.rpo_threshold.unwrap_or(threshold),
            )
            .await?;
            Mode::Protect(set)
        }
        _ => Mode::OneShot(done.clone()),
    };
    start::register_disks(&sh.board, &jobs, &mode);
    let files = crate::tls::config::SenderFiles::in_dir(&opts.tls, &opts.identity);
    crate::metrics::certs::export_files(&files.ca, &files.cert);
    let sampler = tokio::spawn(status::sample(sh.board.clone(), sh.clone()));
    let _sampler = AbortOnDrop(sampler);
    let _control = match &control {
        Some(path) => Some(AbortOnDrop(local_control::serve(path, sh.clone())?)),
        None => None,
    };
    let (addr, host) = attempt::resolve(&opts.to)?;
    let server_name = opts.server_name.clone().unwrap_or(host);
    let client = crate::tls::config::sender_quic(&crate::tls::config::SenderFiles::in_dir(
        &opts.tls,
        &opts.identity,
    ))?;
    let mut endpoint = crate::transport::client_endpoint(addr, client)
        .map_err(|e| SendError::Internal(format!("cannot bind a UDP socket: {e}")))?;
    // A renewed certificate is taken at the next connection, without restart.
    let mut cert_files = crate::metrics::certs::FileWatch::new(&files.ca, &files.cert, &files.key);
    let bar = progress::Progress::new(
        opts.progress && matches!(mode, Mode::OneShot(_)),
        total,
        stats.clone(),
    );
    // One-shot sends give up after `give_up_after`; protection retries forever unless asked.
    let mut backoff = Backoff::new(
        RetrySchedule::default(),
        match mode {
            Mode::OneShot(_) => Some(opts.give_up_after),
            Mode::Protect(_) => opts.protect_give_up_after,
        },
    );
    let far = crate::clock::std_now() + Duration::from_secs(86_400 * 365);
    loop {
        let deadline = backoff.deadline().map(|d| d.into_std()).unwrap_or(far);
        let committed_before =
            done.lock().map(|d| d.len()).unwrap_or(0) as u64 + Stats::get(&stats.cycles);
        let durable_before = Stats::get(&stats.durable_growth);
        let mut connected = false;
        if cert_files.changed() {
            renew::reload_client_certificate(&mut endpoint, addr, &files);
        }
        let res = attempt::attempt_once(
            &endpoint,
            addr,
            &server_name,
            &jobs,
            &sh,
            &mode,
            deadline,
            &mut connected,
        )
        .await;
        // An attempt that committed a disk, or found more progress durable at the receiver
        // than the attempt before, starts the fast schedule again, and --give-up-after counts
        // from now: each outage is met with fast reconnects and its own give-up window, not
        // with what earlier outages (or a long copy) used up. Acknowledged extents alone do
        // not count: a full target acknowledges rewrites of ranges it already holds forever.
        let committed_after =
            done.lock().map(|d| d.len()).unwrap_or(0) as u64 + Stats::get(&stats.cycles);
        let progressed = committed_after > committed_before
            || Stats::get(&stats.durable_growth) > durable_before;
        if res.is_err() && progressed {
            backoff.reset();
            health.progressed();
        }
        let e = match res {
            Ok(()) => break,
            Err(e) => e,
        };
        let class = e.verdict();
        // A connection that was up and then lost (a receiver killed or restarted, a link cut)
        // is a new outage: it gets the fast burst again, so a restarted receiver is found
        // within seconds however many outages came before. The give-up window still counts
        // from the last durable progress, and refusals or a busy target (the receiver answered)
        // move on along the schedule.
        if connected && matches!(class.class, "network") {
            backoff.restart_burst();
        }
        // Every VM was given up alone (`vm_retry`): nothing is left to protect.
        let none_left = match &mode {
            Mode::Protect(set) => set.retries.given_up() >= set.list().len().max(1),
            Mode::OneShot(_) => false,
        };
        match backoff.next_delay(class.recoverable).filter(|_| !none_left) {
            Some(delay) => {
                health.failed(&class, &e.to_string(), Some(delay));
                sh.board.failed(class.class, Some(delay));
                stats
                    .retries
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                warn!(error = %e, class = class.class, retry_in_ms = delay.as_millis() as u64,
                      "recoverable error; reconnecting and resuming");
                tokio::time::sleep(delay).await;
            }
            None => {
                health.failed(&class, &e.to_string(), None);
                sh.board.failed(class.class, None);
                let _ = health.write(state);
                if class.recoverable {
                    error!(error = %e, class = class.class, "giving up after --give-up-after");
                } else {
                    error!(error = %e, class = class.class, advice = class.advice,
                           "non-recoverable error; not retried (VM Critical)");
                }
                bar.finish();
                endpoint.close(0u32.into(), b"sender giving up");
                return Err(e);
            }
        }
    }
    drop(schedule_task);
    let _ = health.write(state);
    bar.finish();
    endpoint.close(0u32.into(), b"done");
    // The receiver has committed everything; all that is left is to put the close on the
    // wire. `wait_idle` alone lingers for quinn's draining period (3 PTO, ~0.5 s behind a
    // 50 ms queue: 1.7 % of a 1 GiB copy at 100 Mbit/s) to answer a peer that missed it.
    let _ = tokio::time::timeout(CLOSE_LINGER, endpoint.wait_idle()).await;
    let mut summary = Summary::from_stats(stats, total, started.elapsed());
    summary.compression = sh.level.report();
    info!("{}", summary.one_line());
    info!(levels = ?summary.compression.read_bytes_by_level,
          climbs_held = summary.compression.climbs_held, "compression controller");
    Ok(summary)
}

/// The default state folder name beside a path, for tools that need one.
pub fn default_state_dir(base: &Path) -> PathBuf {
    base.join(".vdrep")
}
