//! `vdrep send --to ADDR --tls DIR --identity NAME --vm VM DISK... [--threads N]`.
//!
//! Bandwidth: `--bandwidth RATE` (one limit at all times), or `--work-days mon-fri
//! --work-hours 09:00-18:00 --tz Europe/Berlin --work-bandwidth RATE --off-bandwidth RATE`,
//! or `--no-throttle`; the same keys under `[bandwidth]` in `--config`. SIGHUP re-reads the
//! config and applies its bandwidth policy at once (flags given on the command line still
//! win); an invalid file is reported and the policy in force stays.

use super::CliResult;
use std::path::PathBuf;
use std::time::Duration;

use super::Context;
use serde::Deserialize;

use super::config::{self, duration_str};
use super::CliError;
use crate::clock::SystemClock;
use crate::sender::protect::Policy;
use crate::sender::{self, SendOptions, VmSpec};
use crate::throttle::{BandwidthControl, BandwidthPolicy, PolicySpec, Throttle};
use std::sync::Arc;

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  vdrep send --to receiver.example:4433 --tls tls --identity host1 --vm vm1 os.vhdx data.vhdx
  vdrep send --config /etc/vdrep/sender.toml --interval 5m --bandwidth 40Mbit
Every option can also come from --config (flags win). Exit codes: 0 done, 1 not recoverable,
2 usage, 75 recoverable error given up on.")]
pub struct Args {
    /// Receiver address HOST:PORT (required unless in --config).
    #[arg(long, value_name = "HOST:PORT", help_heading = "Connection")]
    to: Option<String>,
    /// Folder with ca.pem and this sender's NAME.pem/NAME.key (required unless in --config).
    #[arg(long, value_name = "DIR", help_heading = "Connection")]
    tls: Option<PathBuf>,
    /// This sender's name, its certificate's CN (required unless in --config).
    #[arg(long, value_name = "NAME", help_heading = "Connection")]
    identity: Option<String>,
    /// Name to check in the receiver's certificate [default: the host in --to].
    #[arg(long, value_name = "NAME", help_heading = "Connection")]
    server_name: Option<String>,
    /// TOML file with any of these options (flags win; unknown keys are errors).
    #[arg(long, value_name = "FILE", help_heading = "Connection")]
    config: Option<PathBuf>,
    /// The VM the disks belong to (required with its disks, unless --control; or [[vm]] in
    /// --config).
    #[arg(long, value_name = "VM", help_heading = "VM")]
    pub(super) vm: Option<String>,
    /// Disk images of the VM, replicated in this order (required with --vm, unless --qmp).
    #[arg(value_name = "DISK")]
    pub(super) disks: Vec<PathBuf>,
    /// Protect the running qemu VM --vm through its QMP socket (with --interval): qemu's
    /// dirty bitmaps track the writes and point-in-time views are read over NBD.
    #[arg(long, value_name = "SOCKET", help_heading = "VM")]
    pub(super) qmp: Option<PathBuf>,
    /// With --qmp: a block node to protect, stored as NAME [default: the node-name, else
    /// the image's stem]. Repeatable; required with qemu-storage-daemon [default: the
    /// guest's writable block devices].
    #[arg(long = "drive", value_name = "NODE[=NAME]", help_heading = "VM")]
    pub(super) drives: Vec<crate::sender::qemu::Drive>,
    /// With --qmp: the NBD server socket the VM already runs (qemu allows one) [default:
    /// vdrep starts one on a private socket in --state and stops it when done].
    #[arg(long, value_name = "SOCKET", help_heading = "VM")]
    pub(super) nbd: Option<PathBuf>,
    /// With --interval: the consistency group of --vm. VMs of one group (this one and the
    /// [[vm]]s of --config with the same `group`) switch their change logs together, so
    /// each group point is one instant of all their disks; at most 16 VMs, one of them a
    /// qemu VM (--qmp), one sender.
    #[arg(long, value_name = "NAME", requires = "vm", help_heading = "VM")]
    pub(super) group: Option<String>,
    /// Parallel streams per disk (upload threads per VM), 1..=32 [default: 4].
    #[arg(long, value_name = "N", help_heading = "Transfer")]
    threads: Option<usize>,
    /// zstd level, -7..=22; 0 turns compression off [default: 1].
    #[arg(long, value_name = "LEVEL", help_heading = "Transfer")]
    compression_level: Option<i32>,
    /// Keep the compression level fixed instead of adapting it to the link.
    #[arg(long, help_heading = "Transfer")]
    fixed_compression: bool,
    /// Retry recoverable errors this long without progress, then exit 75 (e.g. 10m, 30s).
    /// A one-shot send defaults to 10m; with --interval, protection retries forever on the
    /// retry schedule (1, 2, 4, 8, 10, then every 30 minutes) unless this is given.
    #[arg(long, value_name = "DURATION", value_parser = config::parse_duration, help_heading = "Retry")]
    give_up_after: Option<Duration>,
    /// Bandwidth limit at all times, e.g. 40Mbit, 5MB, unlimited (decimal SI; MiB/Mibit
    /// binary; 512Kbit..1023Mbit). Counts bytes on the wire, shared by all streams and VMs
    /// [default: unlimited].
    #[arg(long, value_name = "RATE", help_heading = "Bandwidth")]
    bandwidth: Option<String>,
    /// Work days of the bandwidth schedule: mon-fri, mon,wed,fri, all.
    #[arg(long, value_name = "DAYS", help_heading = "Bandwidth")]
    work_days: Option<String>,
    /// Work hours, local time in --tz: 09:00-18:00 (22:00-06:00 for a night shift).
    #[arg(long, value_name = "HH:MM-HH:MM", help_heading = "Bandwidth")]
    work_hours: Option<String>,
    /// Time zone of the work hours and of --initial-at (IANA name, e.g. Europe/Berlin, or
    /// UTC) [default: UTC].
    #[arg(long, value_name = "ZONE", help_heading = "Bandwidth")]
    tz: Option<String>,
    /// Limit during work hours (512Kbit..1023Mbit or unlimited).
    #[arg(long, value_name = "RATE", help_heading = "Bandwidth")]
    work_bandwidth: Option<String>,
    /// Limit outside work hours (512Kbit..1023Mbit or unlimited).
    #[arg(long, value_name = "RATE", help_heading = "Bandwidth")]
    off_bandwidth: Option<String>,
    /// No bandwidth limit.
    #[arg(long, help_heading = "Bandwidth")]
    no_throttle: bool,
    /// RPO above which a VM warns [default: twice --interval].
    #[arg(long, value_name = "DURATION", value_parser = config::parse_duration, help_heading = "Schedule")]
    rpo_threshold: Option<Duration>,
    /// Keep replicating: initial copy, then a delta cycle every interval (30s, 5m, 15m, or
    /// any duration). Without it, one initial replication.
    #[arg(long, value_name = "DURATION", value_parser = config::parse_duration, help_heading = "Schedule")]
    interval: Option<Duration>,
    /// Recovery-point retention, 0 to 24h [default: 24h].
    #[arg(long, value_name = "DURATION", value_parser = config::parse_duration, help_heading = "Schedule")]
    retention: Option<Duration>,
    /// With --interval: start the initial replication of disks without a committed replica
    /// at this time instead of now (change tracking starts at once): an RFC 3339 time
    /// (2026-11-27T22:00:00+01:00) or HH:MM, the next such time in --tz (default UTC).
    #[arg(long, value_name = "TIME", help_heading = "Schedule")]
    initial_at: Option<String>,
    /// With --interval: stop after this many cycles [default: run until SIGTERM].
    #[arg(long, value_name = "N", help_heading = "Schedule")]
    max_cycles: Option<u64>,
    /// Resynchronise each disk's committed replica by block checksums (only differing 4 KiB
    /// pages are sent) and exit once committed. A one-shot send of a committed disk does
    /// this anyway; with --interval the resync runs before delta cycles start.
    #[arg(long, help_heading = "Schedule")]
    resync: bool,
    /// With --resync: the receiver rehashes its whole replica instead of trusting its
    /// durable hash index (finds a replica changed behind its back) and repairs the index.
    #[arg(long, help_heading = "Schedule")]
    verify: bool,
    /// State folder: jobs that failed before they could be reported to the receiver (disk
    /// unreadable, receiver unreachable, certificate refused) wait here and are reported at
    /// the next connection; health.json (per VM and disk health, RPO, errors) is written
    /// here every second. Default: $XDG_STATE_HOME/vdrep, else ~/.local/state/vdrep, else
    /// /var/lib/vdrep.
    #[arg(long, value_name = "DIR", help_heading = "Output")]
    state: Option<PathBuf>,
    /// Cap the sender process's CPU at this many cores (all threads, averaged over a few
    /// seconds; a decimal ≥ 0.05, e.g. 0.5): compression gives way first, then reads are
    /// paced. Default: no cap.
    #[arg(long, value_name = "CORES", help_heading = "Transfer")]
    cpu_limit: Option<String>,
    /// Run the shipping (reads, compression, hashing, QUIC) N nice levels below the
    /// priority vdrep was started at (as `nice -n N`, capped at 19), so that it yields the
    /// CPU to the guests; a qemu view's drain keeps the process's priority. 0–19.
    /// Default: 10 when protecting qemu VMs, else 0.
    #[arg(long, value_name = "N", help_heading = "Transfer")]
    nice: Option<i32>,
    /// Print the summary as JSON on stdout (with `cpu_seconds`, the sender's CPU time).
    #[arg(long, help_heading = "Output")]
    json: bool,
    /// No progress: no bar on a terminal, no progress lines (one a minute) otherwise.
    #[arg(long, help_heading = "Output")]
    no_progress: bool,
    /// Unix socket of the local control channel (the sidecar manages the sender through it;
    /// a pushed bandwidth schedule in --state then wins over the flags).
    #[arg(long, value_name = "SOCKET", help_heading = "Output")]
    control: Option<PathBuf>,
    /// Serve Prometheus metrics on this TCP address (`GET /metrics`; port 0 picks one, the
    /// bound address is printed as `metrics on ADDR`).
    #[arg(long, value_name = "ADDR", help_heading = "Output")]
    metrics: Option<std::net::SocketAddr>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct FileVm {
    pub(super) name: String,
    #[serde(default)]
    pub(super) disks: Vec<PathBuf>,
    /// qemu's QMP socket (then `disks` stays empty).
    #[serde(default)]
    pub(super) qmp: Option<PathBuf>,
    /// `NODE[=NAME]` entries, as `--drive`.
    #[serde(default)]
    pub(super) drives: Vec<String>,
    /// The VM's own NBD server socket, as `--nbd`.
    #[serde(default)]
    pub(super) nbd: Option<PathBuf>,
    /// The VM's consistency group.
    #[serde(default)]
    pub(super) group: Option<String>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields, default)]
struct File {
    to: Option<String>,
    tls: Option<PathBuf>,
    identity: Option<String>,
    server_name: Option<String>,
    threads: Option<usize>,
    compression_level: Option<i32>,
    fixed_compression: Option<bool>,
    #[serde(with = "duration_str")]
    give_up_after: Option<Duration>,
    bandwidth: Option<BandwidthConf>,
    #[serde(with = "duration_str")]
    rpo_threshold: Option<Duration>,
    #[serde(with = "duration_str")]
    interval: Option<Duration>,
    #[serde(with = "duration_str")]
    retention: Option<Duration>,
    initial_at: Option<String>,
    state: Option<PathBuf>,
    control: Option<PathBuf>,
    metrics: Option<std::net::SocketAddr>,
    cpu_limit: Option<f64>,
    nice: Option<i32>,
    vm: Vec<FileVm>,
}

/// `bandwidth = "40Mbit"` or a `[bandwidth]` table with the schedule keys.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum BandwidthConf {
    Rate(String),
    Table(PolicySpec),
}

impl BandwidthConf {
    fn spec(self) -> PolicySpec {
        match self {
            BandwidthConf::Rate(r) => PolicySpec {
                bandwidth: Some(r),
                ..Default::default()
            },
            BandwidthConf::Table(t) => t,
        }
    }
}

/// The bandwidth settings given as flags.
fn flag_policy(a: &Args) -> PolicySpec {
    PolicySpec {
        bandwidth: a.bandwidth.clone(),
        work_days: a.work_days.clone(),
        work_hours: a.work_hours.clone(),
        // --tz alone is the site's zone for --initial-at, not a schedule.
        tz: a
            .tz
            .clone()
            .filter(|_| a.work_days.is_some() || a.work_hours.is_some()),
        work_bandwidth: a.work_bandwidth.clone(),
        off_bandwidth: a.off_bandwidth.clone(),
        no_throttle: a.no_throttle.then_some(true),
    }
}

/// The policy of flags over a config file's `[bandwidth]`: a flag replaces the whole
/// file section when it names a different kind of policy, so `--bandwidth` on the command
/// line is not refused for a schedule in the file.
fn merged_policy(flags: &PolicySpec, file: PolicySpec) -> CliResult<BandwidthPolicy> {
    let flags_set = *flags != PolicySpec::default();
    let spec = if flags_set { flags.clone() } else { file };
    Ok(spec.build()?)
}

/// Every required option that neither the flags nor `--config` give, so one usage error
/// names them all (not one per attempt).
fn missing_required(a: &Args, f: &File, control: bool) -> Vec<String> {
    let mut out = Vec::new();
    let connection: Vec<&str> = [
        (a.to.is_none() && f.to.is_none(), "--to HOST:PORT"),
        (a.tls.is_none() && f.tls.is_none(), "--tls DIR"),
        (
            a.identity.is_none() && f.identity.is_none(),
            "--identity NAME",
        ),
    ]
    .into_iter()
    .filter_map(|(missing, flag)| missing.then_some(flag))
    .collect();
    if !connection.is_empty() {
        out.push(format!(
            "{} (required unless in --config)",
            connection.join(", ")
        ));
    }
    let interval = a.interval.or(f.interval).is_some();
    if a.vm.is_none() && a.disks.is_empty() && f.vm.is_empty() && !(interval && control) {
        out.push(
            "--vm VM DISK... (required unless [[vm]] in --config, or --interval with --control)"
                .into(),
        );
    }
    out
}

/// Which of the two [`merged_policy`] takes: "flags", "config" or "default" (neither).
fn policy_source(flags: &PolicySpec, file: &PolicySpec) -> &'static str {
    if *flags != PolicySpec::default() {
        "flags"
    } else if *file != PolicySpec::default() {
        "config"
    } else {
        "default"
    }
}

/// Re-reads `--config` for its bandwidth policy (SIGHUP).
fn reload_policy(flags: &PolicySpec, path: &std::path::Path) -> CliResult<BandwidthPolicy> {
    let f: File = config::load(Some(path))?;
    merged_policy(
        flags,
        f.bandwidth.map(BandwidthConf::spec).unwrap_or_default(),
    )
}

/// Where the sender answers besides the data path.
pub(super) struct Endpoints {
    control: Option<PathBuf>,
    metrics: Option<std::net::SocketAddr>,
}

pub(super) type Options = (Vec<VmSpec>, SendOptions, Option<Policy>, Endpoints);

pub(super) fn options(a: &Args) -> CliResult<Options> {
    let mut f: File = config::load(a.config.as_deref())?;
    let endpoints = Endpoints {
        control: a.control.clone().or(f.control.clone()),
        metrics: a.metrics.or(f.metrics),
    };
    let missing = missing_required(a, &f, endpoints.control.is_some());
    if !missing.is_empty() {
        bail!("missing {}", missing.join("; "));
    }
    let file_spec = f
        .bandwidth
        .take()
        .map(BandwidthConf::spec)
        .unwrap_or_default();
    let d = SendOptions::default();
    let retention = a
        .retention
        .or(f.retention)
        .unwrap_or(Duration::from_secs(86_400));
    if retention > Duration::from_secs(86_400) {
        bail!("--retention {retention:?}: recovery points are kept 0 to 24 hours");
    }
    let policy = match a.interval.or(f.interval) {
        Some(interval) if interval.is_zero() => bail!("--interval must be longer than zero"),
        Some(interval) => Some(Policy {
            interval,
            retention,
            max_cycles: a.max_cycles,
            group: None,
            initial_at: match a.initial_at.as_ref().or(f.initial_at.as_ref()) {
                Some(t) => Some(
                    start_time(
                        t,
                        a.tz.as_deref(),
                        crate::clock::Clock::now_utc(crate::clock::process()),
                    )
                    .map_err(|e| anyhow::anyhow!("--initial-at {t}: {e}"))?,
                ),
                None => None,
            },
        }),
        None if a.max_cycles.is_some() => bail!("--max-cycles needs --interval"),
        None if a.initial_at.is_some() => bail!("--initial-at needs --interval"),
        None => None,
    };
    let opts = SendOptions {
        to: a.to.clone().or(f.to).context("--to ADDR is required")?,
        server_name: a.server_name.clone().or(f.server_name),
        tls: a.tls.clone().or(f.tls).context("--tls DIR is required")?,
        identity: a
            .identity
            .clone()
            .or(f.identity)
            .context("--identity NAME is required")?,
        threads: a.threads.or(f.threads).unwrap_or(d.threads),
        level: a
            .compression_level
            .or(f.compression_level)
            .unwrap_or(d.level),
        adaptive: !(a.fixed_compression || f.fixed_compression.unwrap_or(false)),
        chunk: d.chunk,
        give_up_after: a
            .give_up_after
            .or(f.give_up_after)
            .unwrap_or(d.give_up_after),
        // Protection retries forever on the retry schedule unless a window is asked for.
        protect_give_up_after: policy.as_ref().and(a.give_up_after.or(f.give_up_after)),
        progress: !a.no_progress,
        bandwidth_source: policy_source(&flag_policy(a), &file_spec),
        bandwidth: merged_policy(&flag_policy(a), file_spec)?,
        rpo_threshold: a.rpo_threshold.or(f.rpo_threshold),
        resync: a.resync,
        verify: a.verify,
        state_dir: a.state.clone().or(f.state),
        cpu_limit: match (&a.cpu_limit, f.cpu_limit) {
            (Some(s), _) => Some(
                s.parse::<crate::cpu::CpuLimit>()
                    .map_err(|e| anyhow::anyhow!("--cpu-limit {e}"))?,
            ),
            (None, Some(v)) => {
                Some(crate::cpu::CpuLimit::new(v).map_err(|e| anyhow::anyhow!("cpu_limit {e}"))?)
            }
            (None, None) => None,
        },
        nice: a.nice.or(f.nice),
        qemu: Vec::new(),
    };
    if a.verify && !a.resync {
        bail!("--verify applies to --resync");
    }
    if !(1..=32).contains(&opts.threads) {
        bail!(
            "--threads {}: upload threads per VM range from 1 to 32",
            opts.threads
        );
    }
    if !(-7..=22).contains(&opts.level) {
        bail!(
            "--compression-level {}: zstd levels range from -7 to 22 (0 = off)",
            opts.level
        );
    }
    let (mut vms, qemu) = super::send_qemu::split_vms(a, f.vm, policy.is_some())?;
    match (&a.vm, a.disks.is_empty()) {
        _ if a.qmp.is_some() => {}
        (Some(vm), false) => {
            vms.retain(|v| &v.name != vm);
            vms.push(VmSpec {
                name: vm.clone(),
                disks: a.disks.clone(),
                group: a.group.clone(),
            });
        }
        (Some(vm), true) => bail!("--vm {vm}: name at least one DISK"),
        (None, false) => bail!("DISK given without --vm VM"),
        (None, true) => {}
    }
    if vms.iter().any(|v| v.group.is_some()) && policy.is_none() {
        bail!("a consistency group (--group, `group` of a [[vm]]) needs --interval: its VMs switch their change logs together");
    }
    crate::sender::group::check_members(
        vms.iter()
            .map(|v| (v.name.as_str(), v.group.as_deref(), false))
            .chain(
                qemu.iter()
                    .map(|q| (q.vm.as_str(), q.group.as_deref(), true)),
            ),
    )
    .map_err(anyhow::Error::msg)?;
    // A protecting sender with a control channel may start empty: the sidecar enables
    // protection of VMs at run time (and the state folder keeps those it added before).
    if vms.is_empty() && qemu.is_empty() && (policy.is_none() || endpoints.control.is_none()) {
        bail!("nothing to send: give --vm VM DISK... or [[vm]] entries in --config (or --interval with --control, to protect VMs enabled through the sidecar)");
    }
    let opts = SendOptions { qemu, ..opts };
    Ok((vms, opts, policy, endpoints))
}

pub fn run(a: Args) -> Result<(), CliError> {
    let (vms, opts, policy, ends) = options(&a).map_err(CliError::usage)?;
    let clock = SystemClock::from_env().map_err(|e| CliError {
        error: anyhow::anyhow!(e),
        recovery: crate::error::Recovery::Permanent,
        usage: true,
    })?;
    // Before the runtime and the pipeline start their threads: they inherit it.
    let nice = sender::priority::resolve(opts.nice, !opts.qemu.is_empty())
        .map_err(|e| CliError::usage(anyhow::anyhow!("--nice: {e}")))?;
    if let Err(e) = sender::priority::yield_to_guests(nice) {
        tracing::warn!(nice, error = %e, "cannot lower the sender's priority: its shipping competes with the guests");
    }
    let rt = super::runtime()?;
    let ctl = rt.block_on(async {
        BandwidthControl::new(
            opts.bandwidth.clone(),
            Arc::new(Throttle::new(None)),
            Arc::new(clock),
        )
    });
    if let Some(path) = a.config.clone() {
        rt.spawn(reload_on_sighup(flag_policy(&a), path, ctl.clone()));
    }
    let summary = rt
        .block_on(async {
            if let Some(addr) = ends.metrics {
                crate::metrics::serve(addr, crate::metrics::Role::Sender)
                    .await
                    .map_err(|e| sender::SendError::Internal(e.to_string()))?;
            }
            if opts.qemu.is_empty() {
                return sender::run_controlled(&vms, &opts, policy, ctl, ends.control).await;
            }
            // qemu VMs stop cleanly on SIGTERM: vdrep's views, jobs, exports and NBD
            // server go, the bitmaps stay (writes made while stopped ship at the next start).
            tokio::select! {
                r = sender::run_controlled(&vms, &opts, policy, ctl, ends.control) => r,
                _ = crate::signals::shutdown() => {
                    let _ = tokio::task::spawn_blocking(sender::qemu::ctl::stop_all).await;
                    tracing::info!("stopped");
                    std::process::exit(0);
                }
            }
        })
        .map_err(CliError::from)?;
    // The summary is in the log already (its last line): printed again only as JSON.
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    Ok(())
}

/// Applies the config's bandwidth policy on every SIGHUP.
async fn reload_on_sighup(flags: PolicySpec, path: PathBuf, ctl: Arc<BandwidthControl>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot handle SIGHUP; the bandwidth policy is fixed for this run");
        return;
    };
    while hup.recv().await.is_some() {
        if flags != PolicySpec::default() {
            tracing::warn!("SIGHUP: bandwidth flags on the command line win over the config");
        }
        match reload_policy(&flags, &path) {
            Ok(p) => {
                tracing::info!(config = %path.display(), policy = %p, "SIGHUP: bandwidth policy reloaded");
                ctl.set_policy(p);
            }
            Err(e) => tracing::error!(config = %path.display(), error = format!("{e:#}"),
                                      "SIGHUP: config not applied; the policy in force stays"),
        }
    }
}

/// An initial replication start time: RFC 3339 with an offset, or `HH:MM`, the next such
/// civil time (after `now`) in the zone `tz` (IANA name; default UTC).
fn start_time(s: &str, tz: Option<&str>, now: jiff::Timestamp) -> Result<jiff::Timestamp, String> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t);
    }
    let zone = jiff::tz::TimeZone::get(tz.unwrap_or("UTC")).map_err(|e| e.to_string())?;
    let (h, m) = s
        .split_once(':')
        .and_then(|(h, m)| Some((h.parse::<i8>().ok()?, m.parse::<i8>().ok()?)))
        .filter(|&(h, m)| (0..24).contains(&h) && (0..60).contains(&m))
        .ok_or("expected an RFC 3339 time with an offset or HH:MM")?;
    let today = now.to_zoned(zone.clone()).date();
    for day in [today, today.tomorrow().map_err(|e| e.to_string())?] {
        let t = day
            .at(h, m, 0, 0)
            .to_zoned(zone.clone())
            .map_err(|e| e.to_string())?
            .timestamp();
        if t > now {
            return Ok(t);
        }
    }
    Err("no such time today or tomorrow".into())
}

#[cfg(test)]
mod tests {
    use super::start_time;

    #[test]
    fn a_start_time_is_rfc3339_or_the_next_hh_mm_in_the_zone() {
        let now: jiff::Timestamp = "2026-11-26T21:30:00Z".parse().unwrap();
        let t = |s, tz| start_time(s, tz, now).map(|t| t.to_string());
        assert_eq!(
            t("2026-11-27T22:00:00+01:00", None).unwrap(),
            "2026-11-27T21:00:00Z"
        );
        assert_eq!(t("22:00", None).unwrap(), "2026-11-26T22:00:00Z");
        assert_eq!(
            t("21:00", None).unwrap(),
            "2026-11-27T21:00:00Z",
            "passed today"
        );
        assert_eq!(
            t("23:00", Some("Europe/Berlin")).unwrap(),
            "2026-11-26T22:00:00Z",
            "23:00 in Berlin (UTC+1) is 22:00 UTC, still ahead"
        );
        assert_eq!(
            t("22:00", Some("Europe/Berlin")).unwrap(),
            "2026-11-27T21:00:00Z",
            "22:00 in Berlin (21:00 UTC) has passed today"
        );
        assert!(t("25:00", None).is_err());
        assert!(t("tonight", None).is_err());
        assert!(t("22:00", Some("Mars/Olympus")).is_err());
    }
}
