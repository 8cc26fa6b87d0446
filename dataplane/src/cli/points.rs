//! `vdrep points (--store DIR | --azure-url URL --azure-container C) --vm VM [--json]`: the
//! recovery points of every disk of a VM, oldest first, read without the disks' locks or
//! leases (replication goes on).
//!
//! The VM's recovery points come first (the top-level `points` of `--json`): a point's id
//! is its VM cycle, `latest` names the newest, and `failover --vm VM --point ID` writes
//! every disk at it. Then each disk's own points (`disks[].points`, id = the disk's cycle,
//! 0 = its initial replication).

use super::CliResult;
use serde::Serialize;

use super::store_args::StoreArgs;
use super::CliError;
use crate::digest;
use crate::sink::vm_points::VmPoint;
use crate::sink::{PointReader, RecoveryPoint, ReplicaStore};

#[derive(clap::Args, Debug)]
#[command(after_help = "Example:\n  vdrep points --store /srv/vdrep --vm vm1 --json")]
pub struct Args {
    #[command(flatten)]
    store: StoreArgs,
    /// The protected VM.
    #[arg(long)]
    vm: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// One point as `--json` prints it.
#[derive(Serialize, Debug)]
pub struct PointJson {
    /// The id to pass to `failover --point` (the cycle number).
    pub id: u64,
    /// 0 for the initial replication, then the delta cycle.
    pub cycle: u64,
    /// Commit time, RFC 3339 UTC (receiver clock).
    pub time: String,
    /// Commit time, Unix seconds.
    pub unix: u64,
    /// Bytes the cycle changed (the disk size for the initial replication).
    pub bytes: u64,
    /// The sender's BLAKE3 disk digest in hex; `null` when the sender sent none.
    pub digest: Option<String>,
}

impl PointJson {
    fn of(p: &RecoveryPoint) -> PointJson {
        PointJson {
            id: p.cycle,
            cycle: p.cycle,
            time: rfc3339(p.created_unix),
            unix: p.created_unix,
            bytes: p.bytes,
            digest: has_digest(p).then(|| digest::hex(&p.digest)),
        }
    }
}

/// One disk as `--json` prints it.
#[derive(Serialize)]
struct DiskJson {
    disk: String,
    virtual_size: u64,
    replica: String,
    points: Vec<PointJson>,
}

/// One disk's part of a VM point as `--json` prints it.
#[derive(Serialize, Debug)]
pub struct PartJson {
    /// The disk.
    pub disk: String,
    /// Bytes its cycle changed.
    pub bytes: u64,
    /// Its BLAKE3 digest at the point in hex; `null` when the sender sent none.
    pub digest: Option<String>,
}

/// One VM recovery point as `--json` prints it (the top-level `points`).
#[derive(Serialize, Debug)]
pub struct VmPointJson {
    /// The id to pass to `failover --vm VM --point` (the VM cycle).
    pub id: u64,
    /// The sender's switch instant, RFC 3339 UTC: the point's source time (the RPO's).
    pub time: String,
    /// The switch instant, Unix seconds.
    pub unix: u64,
    /// The VM cycle.
    pub cycle: u64,
    /// The consistency group whose switch made it (`null` outside a group).
    pub group: Option<String>,
    /// The group's switch number (`null` outside a group).
    pub group_cycle: Option<u64>,
    /// When the receiver recorded the point, Unix seconds.
    pub committed_unix: u64,
    /// Bytes its disks' cycles changed.
    pub bytes: u64,
    /// True when every disk switched at one instant (false for points from before VM-wide
    /// switches and for initial copies made disk after disk; a qemu VM's initial copies are
    /// one instant).
    pub consistent: bool,
    /// Each disk's part.
    pub disks: Vec<PartJson>,
}

impl VmPointJson {
    fn of(p: &VmPoint) -> VmPointJson {
        let unix = p.switch_unix_ms / 1000;
        VmPointJson {
            id: p.vm_cycle,
            time: rfc3339(unix),
            unix,
            cycle: p.vm_cycle,
            group: p.group.clone(),
            group_cycle: p.group_cycle,
            committed_unix: p.committed_unix,
            bytes: p.bytes(),
            consistent: p.consistent,
            disks: p
                .disks
                .iter()
                .map(|d| PartJson {
                    disk: d.disk.clone(),
                    bytes: d.bytes,
                    digest: d.digest.clone(),
                })
                .collect(),
        }
    }
}

/// The document `--json` prints; the sidecar serves the same at `GET /v1/vms/{vm}/points`
/// (built by [`document`], so the two cannot drift). `disks[].points` are each disk's own
/// points (their `time` the receiver's commit); `points` are the VM's, oldest first.
#[derive(Serialize)]
pub struct VmJson {
    vm: String,
    store: String,
    disks: Vec<DiskJson>,
    points: Vec<VmPointJson>,
}

/// True when the sender sent a digest with the point (all zero means none).
pub fn has_digest(p: &RecoveryPoint) -> bool {
    p.digest != [0; 32]
}

/// `YYYY-MM-DDTHH:MM:SSZ` of Unix seconds.
pub fn rfc3339(unix: u64) -> String {
    let t = i64::try_from(unix)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Point readers of every disk of `vm`, sorted by disk name; an error when there is none.
pub fn vm_readers(store: &dyn ReplicaStore, vm: &str) -> CliResult<Vec<Box<dyn PointReader>>> {
    let keys = store.list_disks(Some(vm))?;
    if keys.is_empty() {
        bail!("{} holds no disks of VM {vm:?}", store.describe());
    }
    let mut out = Vec::new();
    for k in keys {
        out.push(store.point_reader(&k)?);
    }
    Ok(out)
}

/// The recovery points of every disk of `vm` in `store`: what `--json` prints.
pub fn document(store: &dyn ReplicaStore, vm: &str) -> CliResult<VmJson> {
    let readers = vm_readers(store, vm)?;
    let mut disks = Vec::new();
    for r in &readers {
        disks.push(DiskJson {
            disk: r.key().disk.clone(),
            virtual_size: r.virtual_size(),
            replica: r.describe(),
            points: r.points()?.iter().map(PointJson::of).collect(),
        });
    }
    let points = crate::sink::vm_points::list(store, vm)?
        .iter()
        .map(VmPointJson::of)
        .collect();
    Ok(VmJson {
        vm: vm.to_string(),
        store: store.describe(),
        disks,
        points,
    })
}

pub fn run(a: Args) -> Result<(), CliError> {
    let store = a.store.open_existing()?;
    let doc = document(store.as_ref(), &a.vm)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!("VM {} in {}", a.vm, store.describe());
    println!(
        "{} recovery point{} of the VM (failover --vm {} --point ID):",
        doc.points.len(),
        if doc.points.len() == 1 { "" } else { "s" },
        a.vm
    );
    if !doc.points.is_empty() {
        println!(
            "  {:>6}  {:<20}  {:>14}  {:<10}  DISKS",
            "ID", "TIME (UTC)", "BYTES", "CONSISTENT"
        );
    }
    for p in &doc.points {
        let parts: Vec<&str> = p.disks.iter().map(|d| d.disk.as_str()).collect();
        println!(
            "  {:>6}  {:<20}  {:>14}  {:<10}  {}",
            p.id,
            p.time,
            p.bytes,
            if p.consistent { "yes" } else { "no" },
            parts.join(" ")
        );
    }
    for d in doc.disks {
        println!(
            "disk {} ({} bytes, {}): {} recovery point{}",
            d.disk,
            d.virtual_size,
            d.replica,
            d.points.len(),
            if d.points.len() == 1 { "" } else { "s" }
        );
        if d.points.is_empty() {
            println!("  (none yet: the initial replication has not been committed)");
            continue;
        }
        println!(
            "  {:>6}  {:<20}  {:>6}  {:>14}  DIGEST",
            "ID", "TIME (UTC)", "CYCLE", "BYTES"
        );
        for p in d.points {
            println!(
                "  {:>6}  {:<20}  {:>6}  {:>14}  {}",
                p.id,
                p.time,
                p.cycle,
                p.bytes,
                p.digest.as_deref().map_or("none", |h| &h[..16])
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn times_print_as_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
