//! `vdrep send --to ADDR --tls DIR --identity NAME --vm VM DISK... [--threads N]`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

use super::config::{self, duration_str};
use super::CliError;
use crate::sender::protect::Policy;
use crate::sender::{self, SendOptions, VmSpec};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Receiver address HOST:PORT.
    #[arg(long)]
    to: Option<String>,
    /// Folder with ca.pem and this sender's NAME.pem/NAME.key.
    #[arg(long)]
    tls: Option<PathBuf>,
    /// This sender's name (its certificate's CN).
    #[arg(long)]
    identity: Option<String>,
    /// Name to check in the receiver's certificate (default: the host in --to).
    #[arg(long)]
    server_name: Option<String>,
    /// The VM the disks belong to.
    #[arg(long)]
    vm: Option<String>,
    /// Disk images of the VM, replicated in this order.
    disks: Vec<PathBuf>,
    /// Parallel streams per disk (upload threads per VM), 1..=32.
    #[arg(long)]
    threads: Option<usize>,
    /// zstd level; 0 turns compression off.
    #[arg(long)]
    compression_level: Option<i32>,
    /// Keep the compression level fixed instead of adapting it to the link.
    #[arg(long)]
    fixed_compression: bool,
    /// Retry recoverable errors this long, then exit 75 (e.g. 10m, 30s).
    #[arg(long, value_parser = config::parse_duration)]
    give_up_after: Option<Duration>,
    /// Bandwidth limit at all times, e.g. 40Mbit, 5MB, unlimited (decimal SI; MiB/Mibit binary).
    #[arg(long, value_parser = crate::throttle::parse_rate)]
    bandwidth: Option<crate::throttle::Rate>,
    /// Keep replicating: initial copy, then a delta cycle every interval (30s, 5m, 15m, or
    /// any duration). Without it, one initial replication.
    #[arg(long, value_parser = config::parse_duration)]
    interval: Option<Duration>,
    /// Recovery-point retention (0 to 24h, default 24h).
    #[arg(long, value_parser = config::parse_duration)]
    retention: Option<Duration>,
    /// With --interval: stop after this many cycles (default: run until SIGTERM).
    #[arg(long)]
    max_cycles: Option<u64>,
    /// Resynchronise each disk's committed replica by block checksums (only differing 4 KiB
    /// pages are sent) and exit once committed. A one-shot send of a committed disk does
    /// this anyway; with --interval the resync runs before delta cycles start.
    #[arg(long)]
    resync: bool,
    /// With --resync: the receiver rehashes its whole replica instead of trusting its
    /// durable hash index (finds a replica changed behind its back) and repairs the index.
    #[arg(long)]
    verify: bool,
    /// State folder: jobs that failed before they could be reported to the receiver (disk
    /// unreadable, receiver unreachable, certificate refused) wait here and are reported at
    /// the next connection. Default: $XDG_STATE_HOME/vdrep, else ~/.local/state/vdrep, else
    /// /var/lib/vdrep.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Unix socket of the local control channel (the sidecar talks to the sender here).
    #[arg(long)]
    control: Option<PathBuf>,
    /// Serve Prometheus metrics on this TCP address (`GET /metrics`; port 0 picks one, the
    /// bound address is printed as `metrics on ADDR`).
    #[arg(long)]
    metrics: Option<std::net::SocketAddr>,
    /// TOML file with any of the options above (flags win).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileVm {
    name: String,
    disks: Vec<PathBuf>,
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
    bandwidth: Option<String>,
    #[serde(with = "duration_str")]
    interval: Option<Duration>,
    #[serde(with = "duration_str")]
    retention: Option<Duration>,
    state: Option<PathBuf>,
    control: Option<PathBuf>,
    metrics: Option<std::net::SocketAddr>,
    vm: Vec<FileVm>,
}

/// Where the sender answers besides the data path.
struct Endpoints {
    control: Option<PathBuf>,
    metrics: Option<std::net::SocketAddr>,
}

type Options = (Vec<VmSpec>, SendOptions, Option<Policy>, Endpoints);

fn options(a: &Args) -> anyhow::Result<Options> {
    let f: File = config::load(a.config.as_deref())?;
    let endpoints = Endpoints {
        control: a.control.clone().or(f.control.clone()),
        metrics: a.metrics.or(f.metrics),
    };
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
        }),
        None if a.max_cycles.is_some() => bail!("--max-cycles needs --interval"),
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
        progress: !a.no_progress,
        resync: a.resync,
        verify: a.verify,
        bandwidth: match (a.bandwidth, f.bandwidth.as_deref()) {
            (Some(r), _) => r.0,
            (None, Some(s)) => {
                crate::throttle::parse_rate(s)
                    .map_err(anyhow::Error::msg)?
                    .0
            }
            (None, None) => None,
        },
        state_dir: a.state.clone().or(f.state),
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
    let mut vms: Vec<VmSpec> =
        f.vm.into_iter()
            .map(|v| VmSpec {
                name: v.name,
                disks: v.disks,
            })
            .collect();
    match (&a.vm, a.disks.is_empty()) {
        (Some(vm), false) => {
            vms.retain(|v| &v.name != vm);
            vms.push(VmSpec {
                name: vm.clone(),
                disks: a.disks.clone(),
            });
        }
        (Some(vm), true) => bail!("--vm {vm}: name at least one DISK"),
        (None, false) => bail!("DISK given without --vm VM"),
        (None, true) => {}
    }
    if vms.is_empty() {
        bail!("nothing to send: give --vm VM DISK... or [[vm]] entries in --config");
    }
    Ok((vms, opts, policy, endpoints))
}

pub fn run(a: Args) -> Result<(), CliError> {
    let (vms, opts, policy, ends) = options(&a).map_err(|e| CliError {
        error: e,
        recoverable: false,
        usage: true,
    })?;
    let rt = super::runtime()?;
    let summary = rt
        .block_on(async {
            if let Some(addr) = ends.metrics {
                crate::metrics::serve(addr, crate::metrics::Role::Sender)
                    .await
                    .map_err(|e| sender::SendError::Internal(e.to_string()))?;
            }
            sender::run_controlled(&vms, &opts, policy, ends.control).await
        })
        .map_err(|e| {
            let recoverable = e.is_recoverable();
            CliError {
                error: anyhow::Error::new(e),
                recoverable,
                usage: false,
            }
        })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        eprintln!("{}", summary.one_line());
    }
    Ok(())
}
