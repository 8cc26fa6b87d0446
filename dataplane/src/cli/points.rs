//! `vdrep points (--store DIR | --azure-url URL --azure-container C) --vm VM [--json]`: the
//! recovery points of every disk of a VM, oldest first, read without the disks' locks or
//! leases (replication goes on).
//!
//! A point's id is its cycle number (0 = the initial replication); `latest` names the newest.

use super::CliResult;
use serde::Serialize;

use super::store_args::StoreArgs;
use super::CliError;
use crate::digest;
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

/// The document `--json` prints; the sidecar serves the same at `GET /v1/vms/{vm}/points`
/// (built by [`document`], so the two cannot drift).
#[derive(Serialize)]
pub struct VmJson {
    vm: String,
    store: String,
    disks: Vec<DiskJson>,
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
    Ok(VmJson {
        vm: vm.to_string(),
        store: store.describe(),
        disks,
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
