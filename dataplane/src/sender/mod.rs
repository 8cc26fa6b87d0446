//! The sender: opens the source disks, connects to the receiver over one QUIC connection and
//! replicates each VM's disks (one after another, several streams each; VMs in parallel),
//! reconnecting and resuming on recoverable errors: a one-shot send until `give_up_after`,
//! continuous protection on the retry schedule forever (`crate::retry`). Health goes to
//! `state/health.json` (`crate::health`); the bandwidth policy is applied by a
//! [`BandwidthControl`] that can be changed while the transfer runs.

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
mod options;
pub mod pending;
pub mod points;
pub mod progress;
pub mod protect;
pub mod qemu;
mod renew;
pub mod resync;
pub mod source;
pub mod status;
mod stream;
pub mod tree;
pub mod vm_retry;
pub mod vmset;

use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

pub use control::ControlStream;
pub use disk::{DiskJob, DiskOutcome, Shared};
pub use error::SendError;
pub use options::{disk_names, SendOptions, VmSpec};
pub use progress::{human, Summary};
pub use status::{Board, DiskStatus};

use crate::clock::{SharedClock, SystemClock};
use crate::disk::{self as vdisk, OpenOptions};
use crate::health::Health;
use crate::pipeline::{AdaptiveLevel, Stats};
use crate::retry::{Backoff, RetrySchedule};
use crate::throttle::{BandwidthControl, Throttle};

fn resolve(to: &str) -> Result<(SocketAddr, String), SendError> {
    let addr = to
        .to_socket_addrs()
        .map_err(|e| SendError::Resolve(format!("{to}: {e}")))?
        .next()
        .ok_or_else(|| SendError::Resolve(to.to_string()))?;
    let host = to
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(to)
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok((addr, host))
}

/// Longest wait for a handshake. QUIC ignores ICMP, so an unreachable receiver would only
/// show as the 15 s idle timeout; a shorter bound keeps reconnects fast and lets
/// `--give-up-after` be honoured within about a second.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
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
    // Prerequisites (enable protection's first checks): every disk opens, its format is
    // supported, it has 512-byte sectors.
    let mut jobs: Vec<Vec<DiskJob>> = Vec::new();
    for vm in vms {
        sj.start_vm(&vm.name);
        let names = disk_names(&vm.disks);
        let mut v = Vec::new();
        for (p, name) in vm.disks.iter().zip(names) {
            let d = vdisk::open(p, OpenOptions::default()).inspect_err(|e| {
                sj.disk_failed(&vm.name, e);
            })?;
            v.push(DiskJob {
                vm: vm.name.clone(),
                name,
                disk: Arc::from(d),
                progress: Default::default(),
            });
        }
        sj.disks_checked(&vm.name, &v);
        jobs.push(v);
    }
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
        let t = a
            .rpo_threshold_seconds
            .map(Duration::from_secs)
            .unwrap_or_else(|| {
                crate::health::default_rpo_threshold(Duration::from_secs(a.interval_seconds))
            });
        health.add_vm(&a.vm, &disk_names(&a.disks), Some(t));
    }
    let set = policy
        .as_ref()
        .map(|p| Arc::new(vmset::VmSet::new(p.clone(), state)));
    health.set_bandwidth(ctl.policy().to_string());
    // health.json lives in the state folder, beside the pending jobs.
    let _health_task = AbortOnDrop(tokio::spawn(health.clone().run_writer(state.to_path_buf())));
    let level = Arc::new(AdaptiveLevel::new(opts.level, opts.adaptive));
    let cpu = opts.cpu_limit.map(|l| {
        info!(limit = %l, "CPU budget of the sender");
        Arc::new(crate::cpu::CpuBudget::new(l, level.clone(), clock.clone()))
    });
    let sh = Arc::new(Shared {
        opts: opts.clone(),
        stats: Arc::new(Stats::default()),
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
    // Which bandwidth policy wins, said once. With --control (a sidecar manages this
    // sender) the schedule it pushed to an earlier run, kept in STATE/bandwidth.json, wins
    // over the flags, which win over the config; without --control the file is never read:
    // a file left behind must not silently override the command line.
    let pushed_file = state.join(local_control::SCHEDULE_FILE);
    let pushed = match &control {
        Some(_) => local_control::load_schedule(state),
        None => None,
    };
    match pushed {
        Some(p) => {
            info!(policy = %p.policy(), source = "pushed schedule", file = %pushed_file.display(),
                  "bandwidth: the schedule the sidecar pushed wins over flags and config (delete the file to return to them)");
            local_control::apply_schedule(&sh, p);
        }
        None if control.is_some() => {
            info!(policy = %ctl.policy(), source = opts.bandwidth_source, file = %pushed_file.display(),
                  "bandwidth: no pushed schedule yet; flags win over config")
        }
        None => {
            info!(policy = %ctl.policy(), source = opts.bandwidth_source, file = %pushed_file.display(),
                      "bandwidth: flags win over config; the pushed-schedule file is not read without --control")
        }
    }
    let stats = &sh.stats;
    // The compression controller decides every tick for the whole run: often at first,
    // with a small prepared budget, so that little of the disk is compressed at a level
    // chosen before the link was seen; then the whole budget.
    let controller = {
        let (level, prepared) = (sh.level.clone(), sh.prepared.clone());
        tokio::spawn(async move {
            use crate::pipeline::{tick_after, CpuIdle, PREPARED_BUDGET, WARMUP};
            let mut idle = CpuIdle::default();
            let start = crate::clock::std_now();
            let mut warm = false;
            tokio::time::sleep(tick_after(start.elapsed())).await;
            level.discard_waits();
            idle.spare();
            loop {
                tokio::time::sleep(tick_after(start.elapsed())).await;
                level.tick_with_spare_cpu(idle.spare());
                if !warm && start.elapsed() >= WARMUP {
                    prepared.set_total(PREPARED_BUDGET);
                    warm = true;
                }
            }
        })
    };
    let _stop_controller = AbortOnDrop(controller);
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
    register_disks(&sh.board, &jobs, &mode);
    let files = crate::tls::config::SenderFiles::in_dir(&opts.tls, &opts.identity);
    crate::metrics::certs::export_files(&files.ca, &files.cert);
    let sampler = tokio::spawn(status::sample(sh.board.clone(), sh.clone()));
    let _sampler = AbortOnDrop(sampler);
    let _control = match &control {
        Some(path) => Some(AbortOnDrop(local_control::serve(path, sh.clone())?)),
        None => None,
    };
    let (addr, host) = resolve(&opts.to)?;
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
        let res = attempt_once(
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
    let summary = Summary::from_stats(stats, total, started.elapsed());
    info!("{}", summary.one_line());
    Ok(summary)
}

#[allow(clippy::too_many_arguments)]
async fn attempt_once(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    server_name: &str,
    jobs: &[Vec<DiskJob>],
    sh: &Arc<Shared>,
    mode: &Mode,
    deadline: Instant,
    connected: &mut bool,
) -> Result<(), SendError> {
    let peer = sh.peer.as_str();
    let connecting = endpoint
        .connect(addr, server_name)
        .map_err(|e| SendError::Connect {
            peer: peer.to_string(),
            source: e,
        })?;
    let wait = CONNECT_TIMEOUT
        .min(deadline.saturating_duration_since(crate::clock::std_now()))
        .max(Duration::from_millis(500));
    let conn = match tokio::time::timeout(wait, connecting).await {
        Ok(r) => r,
        Err(_) => Err(quinn::ConnectionError::TimedOut),
    }
    .map_err(|e| SendError::Connection {
        peer: peer.to_string(),
        source: e,
    })?;
    info!(receiver = %peer, "connected");
    *connected = true;
    let _meter = crate::throttle::wire::MeterGuard::start(&conn, &sh.throttle);
    let _window = crate::transport::SendWindowGuard::start(&conn);
    sh.board.connected(&conn);
    let mut vms = tokio::task::JoinSet::new();
    let done = match mode {
        Mode::OneShot(d) => d,
        Mode::Protect(set) => {
            let res = vmset::run_all(&conn, set, sh).await;
            conn.close(
                0u32.into(),
                if res.is_ok() {
                    b"done"
                } else {
                    b"sender error"
                },
            );
            return res;
        }
    };
    for vm_jobs in jobs {
        let conn = conn.clone();
        let jobs: Vec<DiskJob> = vm_jobs.to_vec();
        let sh = sh.clone();
        let done = done.clone();
        vms.spawn(async move {
            let mut ctrl = ControlStream::open(&conn, &sh.peer, &sh.credit).await?;
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
                        &conn,
                        &mut ctrl,
                        job,
                        o,
                        &sh,
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
                    let out = disk::copy_initial(&conn, &mut ctrl, job, o, &sh).await?;
                    info!(vm = %job.vm, disk = %job.name, resumed_bytes = out.resumed,
                          seconds = progress::log_secs(t0.elapsed().as_secs_f64()), "disk committed at the receiver");
                    let detail = format!(
                        "{} bytes committed as recovery point 0 in {:.1} s ({} bytes resumed)",
                        job.disk.info().virtual_size,
                        t0.elapsed().as_secs_f64(),
                        out.resumed
                    );
                    sh.jobs.copy_done(&mut ctrl, &vm, &job.name, &detail).await;
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
            Ok::<(), SendError>(())
        });
    }
    finish_vms(vms, conn).await
}

/// Waits for the VM tasks of an attempt; the first error aborts the others.
async fn finish_vms(
    mut vms: tokio::task::JoinSet<Result<(), SendError>>,
    conn: quinn::Connection,
) -> Result<(), SendError> {
    let mut first_err = None;
    while let Some(r) = vms.join_next().await {
        let r = r.unwrap_or_else(|e| Err(SendError::Internal(format!("VM task: {e}"))));
        if let Err(e) = r {
            if first_err.is_none() {
                first_err = Some(e);
                vms.abort_all();
            }
        }
    }
    match first_err {
        Some(e) => {
            conn.close(0u32.into(), b"sender error");
            Err(e)
        }
        None => {
            tracing::debug!(stats = ?conn.stats(), "connection statistics at close");
            conn.close(0u32.into(), b"done");
            Ok(())
        }
    }
}

/// Puts every disk on the status board (with its change tracker when protecting).
fn register_disks(board: &Board, jobs: &[Vec<DiskJob>], mode: &Mode) {
    match mode {
        Mode::OneShot(_) => {
            for j in jobs.iter().flatten() {
                board.add_disk(j, None);
            }
        }
        Mode::Protect(set) => {
            for e in set.list() {
                for d in e.disks.iter() {
                    if let Ok(g) = d.lock() {
                        board.add_disk(&g.job, Some(g.tracker.clone()));
                    }
                }
            }
        }
    }
}

/// The default state folder name beside a path, for tools that need one.
pub fn default_state_dir(base: &Path) -> PathBuf {
    base.join(".vdrep")
}
