//! `vdrep failover --test (--store DIR | --azure-*) --vm VM [--point ID|latest] --out DIR`:
//! materialises every disk of a VM at one recovery point as an Azure-ready fixed VHD
//! `DIR/NAME.vhd`, without pausing replication (the store is read through
//! [`crate::sink::PointReader`], which takes no lock or lease).
//!
//! Every output is checked before it gets its name: its BLAKE3 disk digest
//! ([`crate::digest`]), computed by reading the written file back, must equal the digest the
//! sender computed for that point. A mismatch fails the command (exit 1) and no output is
//! left; a point without a sender digest is written and says so.
//!
//! All disks are written at one VM recovery point (`vdrep points`' top-level `points`): each
//! disk at its part of it, never a mix of points, so a VM whose disks switched together
//! comes up crash-consistent across them; `latest` is the VM's newest point. Each disk's
//! line says which of its points that is and when it was committed.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::{Classed, Context};
use anyhow::bail;
use serde::Serialize;

use super::points::{has_digest, rfc3339, vm_readers};
use super::store_args::StoreArgs;
use super::CliError;
use crate::digest::{self, DigestBuilder};
use crate::disk::{self, OpenOptions};
use crate::jobs::{Job, JobNow};
use crate::layout;
use crate::sink::{PointReader, RecoveryPoint, ReplicaStore, SECTOR};
use vdrep_proto::wire::JobKind;

/// Largest read per step: memory stays bounded whatever the disk size.
const CHUNK: u64 = 4 << 20;
/// Granularity of the zero check: all-zero pieces stay holes in the sparse output.
const ZERO_PIECE: usize = 64 << 10;

/// Which recovery point of the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointSel {
    /// The VM's newest point.
    Latest,
    /// The VM point with this id (its VM cycle, as `vdrep points` lists it).
    Id(u64),
}

impl FromStr for PointSel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("latest") {
            return Ok(PointSel::Latest);
        }
        s.parse().map(PointSel::Id).map_err(|_| {
            format!("{s:?} is not a recovery point id: give a cycle number as `vdrep points` lists it, or `latest`")
        })
    }
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  vdrep failover --test --store /srv/vdrep --vm vm1 --point latest --out /tmp/vm1\n  vdrep failover --test --vm vm1 --point 3   # through the sidecar"
)]
pub struct Args {
    #[command(flatten)]
    store: StoreArgs,
    /// Test failover: write the disks out, replication goes on (planned and unplanned
    /// failover are not supported yet, so this flag is required).
    #[arg(long)]
    test: bool,
    /// The protected VM; all its disks are written.
    #[arg(long, required_unless_present = "group", conflicts_with = "group")]
    vm: Option<String>,
    /// A consistency group instead of one VM: every member VM at the group point (a group
    /// cycle, or `latest`: the newest every member has) as DIR/VM/NAME.vhd; a group cycle
    /// some member lacks is refused, naming those VMs. Needs --store or --azure-url.
    #[arg(long, value_name = "NAME")]
    group: Option<String>,
    /// Recovery point id (see `vdrep points`) or `latest`.
    #[arg(long, default_value = "latest")]
    point: PointSel,
    /// Output folder (created if missing); each disk becomes DIR/NAME.vhd, replaced if it
    /// exists. Required with a store; through the sidecar the output goes to its documented
    /// folder beside the store and the job says where.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print a JSON summary instead of lines.
    #[arg(long)]
    json: bool,
    /// Without --store or --azure-url: the sidecar's API address (it runs the failover).
    #[arg(long, env = "VDREP_SIDECAR", default_value = "127.0.0.1:9640")]
    sidecar: String,
    /// Token file for the sidecar (without --store or --azure-url).
    #[arg(
        long,
        env = "VDREP_TOKEN_FILE",
        default_value = "/etc/vdrep/sidecar.token"
    )]
    token_file: PathBuf,
}

/// One materialised disk.
#[derive(Serialize, Debug, Clone)]
pub struct DiskOut {
    disk: String,
    path: PathBuf,
    /// The VM point written (its id).
    vm_point: u64,
    /// The disk's own point that is its part of the VM point.
    point: u64,
    /// That disk point's commit time.
    time: String,
    virtual_size: u64,
    /// The output's digest (read back from the file when it was verified).
    digest: String,
    /// True when it equals the sender's digest; false when the point carries none.
    verified: bool,
}

pub fn run(a: Args) -> Result<(), CliError> {
    if !a.test {
        return Err(CliError {
            error: anyhow::anyhow!(
                "only test failover is supported: add --test (planned and unplanned failover \
                 are later goals)"
            ),
            recovery: crate::error::Recovery::Permanent,
            usage: true,
        });
    }
    if let Some(group) = &a.group {
        return run_group(&a, group);
    }
    let vm = a.vm.clone().unwrap_or_default();
    if a.store.store.is_none() && a.store.azure_url.is_none() {
        let point = match a.point {
            PointSel::Latest => None,
            PointSel::Id(c) => Some(c),
        };
        return super::ops::failover(&a.sidecar, &a.token_file, &vm, point, a.json);
    }
    let Some(out) = &a.out else {
        return Err(CliError {
            error: anyhow::anyhow!("--out DIR is required with --store or --azure-url"),
            recovery: crate::error::Recovery::Permanent,
            usage: true,
        });
    };
    let store = a.store.open_existing()?;
    let done = materialise(store.as_ref(), &vm, a.point, out)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&done)?);
    } else {
        for d in &done {
            let check = if d.verified {
                "digest verified against the sender's"
            } else {
                "the point carries no sender digest: not verified"
            };
            println!(
                "{}: VM point {} (disk point {} of {}) written to {} ({} bytes; {check}; digest {})",
                d.disk,
                d.vm_point,
                d.point,
                d.time,
                d.path.display(),
                d.virtual_size,
                d.digest
            );
        }
    }
    Ok(())
}

/// `failover --test --group NAME` (see [`super::failover_group`]).
fn run_group(a: &Args, group: &str) -> Result<(), CliError> {
    let usage = |m: &str| CliError {
        error: anyhow::anyhow!("{m}"),
        recovery: crate::error::Recovery::Permanent,
        usage: true,
    };
    if a.store.store.is_none() && a.store.azure_url.is_none() {
        return Err(usage(
            "--group needs --store DIR or --azure-url: the sidecar fails over one VM",
        ));
    }
    let Some(out) = &a.out else {
        return Err(usage("--out DIR is required with --store or --azure-url"));
    };
    let store = a.store.open_existing()?;
    let done = super::failover_group::materialise(store.as_ref(), group, a.point, out)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&done)?);
        return Ok(());
    }
    for v in &done.vms {
        for d in &v.disks {
            let check = if d.verified {
                "digest verified against the sender's"
            } else {
                "the point carries no sender digest: not verified"
            };
            println!(
                "{}/{}: group point {} (VM point {}, disk point {}, {}) written to {} ({check})",
                v.vm,
                d.disk,
                done.group_cycle,
                v.point,
                d.point,
                d.time,
                d.path.display()
            );
        }
    }
    Ok(())
}

const STEP_CHOOSE: &str = "choose recovery point";
const STEP_PUBLISH: &str = "publish outputs";

fn write_step(disk: &str) -> String {
    format!("write and verify {disk}")
}

/// Records the failover's job in the store; a store that cannot is only a warning (the
/// failover's output is what the operator asked for).
fn record(store: &dyn ReplicaStore, job: &Job) {
    if let Err(e) = store.record_job(job) {
        tracing::warn!(error = %e, job = %job.id, "the test-failover job was not recorded");
    }
}

/// Writes every disk of `vm` at the chosen point into `out` as verified fixed VHDs
/// (`out/NAME.vhd`); a failure leaves no output. The run is a job recorded in the store
/// once the VM is known there. Also what the sidecar runs for a test failover asked
/// through its API.
pub fn materialise(
    store: &dyn ReplicaStore,
    vm: &str,
    sel: PointSel,
    out: &Path,
) -> anyhow::Result<Vec<DiskOut>> {
    let readers = vm_readers(store, vm)?;
    let mut job = Job::start(JobKind::TestFailover, vm);
    let mut plan = vec![STEP_CHOOSE.to_string()];
    plan.extend(readers.iter().map(|r| write_step(&r.key().disk)));
    plan.push(STEP_PUBLISH.to_string());
    job.plan(&plan.iter().map(String::as_str).collect::<Vec<_>>());
    record(store, &job);
    let res = write_point(store, vm, &readers, sel, out, &mut job);
    match &res {
        Ok(_) => job.succeed(),
        Err(e) => job.fail(
            &super::one_line(e),
            super::error::recovery(e).is_transient(),
        ),
    }
    record(store, &job);
    res
}

/// Chooses the VM point and writes every disk at its part of it (staged, then renamed once
/// all are verified).
fn write_point(
    store: &dyn ReplicaStore,
    vm: &str,
    readers: &[Box<dyn PointReader>],
    sel: PointSel,
    out: &Path,
    job: &mut Job,
) -> anyhow::Result<Vec<DiskOut>> {
    job.begin(STEP_CHOOSE);
    let mut listed = Vec::new();
    for r in readers {
        listed.push(r.points().classed()?);
    }
    let vm_points = crate::sink::vm_points::list(store, vm).classed()?;
    let chosen = choose(readers, &listed, &vm_points, sel)?;
    job.step_ok(
        STEP_CHOOSE,
        &format!(
            "recovery point {} of {} ({sel:?} asked{})",
            chosen.id,
            rfc3339(chosen.switch_unix),
            if chosen.consistent {
                ""
            } else {
                "; its disks did not switch at one instant"
            }
        ),
    );
    fs::create_dir_all(out).with_context(|| format!("{}: cannot create folder", out.display()))?;
    // Written beside their destinations and renamed only once every disk is verified: a
    // failed run leaves no output (and replaces nothing).
    let mut staged = Vec::new();
    for ((r, pts), cycle) in readers.iter().zip(&listed).zip(&chosen.cycles) {
        let step = write_step(&r.key().disk);
        job.begin(&step);
        let Some(point) = pts.iter().find(|p| p.cycle == *cycle) else {
            bail!(
                "{}: recovery point {cycle} (its part of VM point {}) vanished",
                r.describe(),
                chosen.id
            );
        };
        let dst = out.join(format!("{}.vhd", r.key().disk));
        let (tmp, mut written) = write_disk(r.as_ref(), point, &dst)?;
        written.vm_point = chosen.id;
        let check = if written.verified {
            "digest verified against the sender's"
        } else {
            "the point carries no sender digest: not verified"
        };
        job.step_ok(
            &step,
            &format!(
                "{} bytes at its point {} ({}), {check}, digest {}",
                written.virtual_size, written.point, written.time, written.digest
            ),
        );
        staged.push((tmp, dst, written));
    }
    job.begin(STEP_PUBLISH);
    let mut done = Vec::new();
    for (tmp, dst, summary) in staged {
        tmp.persist(&dst)
            .map_err(|e| e.error)
            .with_context(|| format!("{}: cannot replace the destination", dst.display()))?;
        done.push(summary);
    }
    let _ = File::open(out).and_then(|f| f.sync_all());
    let paths: Vec<String> = done.iter().map(|d| d.path.display().to_string()).collect();
    job.step_ok(STEP_PUBLISH, &paths.join(", "));
    Ok(done)
}

/// A VM point resolved against the VM's disks: each disk's cycle, in the readers' order.
#[derive(Debug)]
struct Chosen {
    id: u64,
    switch_unix: u64,
    consistent: bool,
    cycles: Vec<u64>,
}

/// The VM point to write: the one asked for, or the newest. Every disk of the VM must have
/// a part in it that its store still holds — points are never mixed: a disk missing from
/// the point is an error naming it, not an older point of that disk. A VM of one disk also
/// takes each of its disk's points (one disk is consistent with itself), so a cycle a
/// resync committed is a point of it.
fn choose(
    readers: &[Box<dyn PointReader>],
    listed: &[Vec<RecoveryPoint>],
    vm_points: &[crate::sink::vm_points::VmPoint],
    sel: PointSel,
) -> anyhow::Result<Chosen> {
    let mut cands: Vec<Chosen> = Vec::new();
    for p in vm_points {
        let mut cycles = Vec::new();
        let mut missing = Vec::new();
        for r in readers {
            match p.part(&r.key().disk) {
                Some(part) => cycles.push(part.cycle),
                None => missing.push(r.key().disk.clone()),
            }
        }
        if !missing.is_empty() {
            if sel == PointSel::Id(p.vm_cycle) {
                bail!(
                    "VM point {} has no part of disk(s) {} (added to the VM later?): no disk is \
                     written at another point; choose a newer point (see `vdrep points`)",
                    p.vm_cycle,
                    missing.join(", ")
                );
            }
            continue;
        }
        cands.push(Chosen {
            id: p.vm_cycle,
            switch_unix: p.switch_unix_ms / 1000,
            consistent: p.consistent,
            cycles,
        });
    }
    if let ([_], [pts]) = (readers, listed) {
        for q in pts {
            if !cands.iter().any(|c| c.id == q.cycle) {
                cands.push(Chosen {
                    id: q.cycle,
                    switch_unix: q.created_unix,
                    consistent: true,
                    cycles: vec![q.cycle],
                });
            }
        }
        cands.sort_by_key(|c| c.id);
    }
    let kept = match (cands.first(), cands.last()) {
        (Some(a), Some(b)) => format!("points {}..={} are kept", a.id, b.id),
        _ => "no VM point is committed yet".to_string(),
    };
    let c = match sel {
        PointSel::Id(id) => match cands.into_iter().find(|c| c.id == id) {
            Some(c) => c,
            None => {
                let vm = readers
                    .first()
                    .map(|r| r.key().vm.clone())
                    .unwrap_or_default();
                bail!("VM {vm}: recovery point {id} does not exist ({kept}; see `vdrep points`)")
            }
        },
        PointSel::Latest => match cands.pop() {
            Some(c) => c,
            None => {
                let what: Vec<String> = readers
                    .iter()
                    .zip(listed)
                    .map(|(r, pts)| format!("{}: {} disk points", r.key(), pts.len()))
                    .collect();
                bail!(
                    "VM has no recovery point that all its disks are part of ({})",
                    what.join("; ")
                )
            }
        },
    };
    for ((r, pts), cycle) in readers.iter().zip(listed).zip(&c.cycles) {
        if !pts.iter().any(|p| p.cycle == *cycle) {
            bail!(
                "{}: its part of VM point {} (disk point {cycle}) is no longer kept (see `vdrep points`)",
                r.describe(),
                c.id
            );
        }
    }
    Ok(c)
}

/// Writes point `point` of `r` as a fixed VHD into a temporary file beside `dst` and
/// verifies it; returns the file (not yet renamed) and its summary.
pub(super) fn write_disk(
    r: &dyn PointReader,
    point: &RecoveryPoint,
    dst: &Path,
) -> anyhow::Result<(tempfile::NamedTempFile, DiskOut)> {
    let size = r.virtual_size();
    let dir = dst.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".vdrep-failover-")
        .tempfile_in(dir)
        .with_context(|| format!("{}: cannot create a temporary file", dir.display()))?;
    let out: &File = tmp.as_file();
    out.set_len(layout::replica_file_size(size))
        .with_context(|| format!("{}: cannot size the output", dst.display()))?;
    let end = size.div_ceil(SECTOR) * SECTOR;
    let allocated = r.allocated(point.cycle).classed()?;
    let mut streamed = DigestBuilder::new(size);
    let mut off = 0u64;
    while off < end {
        let n = (end - off).min(CHUNK);
        let needed = allocated
            .as_ref()
            .is_none_or(|a| !a.clipped(off, off + n).is_empty());
        if !needed {
            streamed.zeros(n);
            off += n;
            continue;
        }
        let data = r.read_point(point.cycle, off, n as usize).classed()?;
        streamed.update(&data);
        for (i, piece) in data.chunks(ZERO_PIECE).enumerate() {
            if piece.iter().any(|&b| b != 0) {
                let at = off + (i * ZERO_PIECE) as u64;
                out.write_all_at(piece, at)
                    .with_context(|| format!("{}: write at offset {at} failed", dst.display()))?;
            }
        }
        off += n;
    }
    let footer = layout::replica_footer(
        size,
        layout::random_guid(),
        layout::vhd_timestamp(crate::clock::system_time()),
    );
    let foff = layout::replica_virtual_size(size);
    out.write_all_at(&footer, foff).with_context(|| {
        format!(
            "{}: write of the footer at offset {foff} failed",
            dst.display()
        )
    })?;
    tmp.as_file_mut().flush()?;
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("{}: fsync failed", dst.display()))?;
    let streamed = streamed.finish().classed()?;
    let verified = has_digest(point);
    let got = if verified {
        // Read back what landed in the file, through the VHD reader: the check covers the
        // store, the copy and the output's layout.
        let written = disk::open(tmp.path(), OpenOptions::default()).classed()?;
        let got = digest::digest_of_first(written.as_ref(), size).classed()?;
        if got != point.digest {
            bail!(
                "{}: the output of recovery point {} does not match the sender's digest \
                 (sender {}, output {}, read from the store {}); nothing was written — the \
                 replica may be damaged: check the store and resynchronise the disk",
                dst.display(),
                point.cycle,
                digest::hex(&point.digest),
                digest::hex(&got),
                digest::hex(&streamed)
            );
        }
        got
    } else {
        streamed
    };
    let summary = DiskOut {
        disk: r.key().disk.clone(),
        path: dst.to_path_buf(),
        vm_point: point.cycle,
        point: point.cycle,
        time: rfc3339(point.created_unix),
        virtual_size: size,
        digest: digest::hex(&got),
        verified,
    };
    Ok((tmp, summary))
}
