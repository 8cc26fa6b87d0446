//! `vdrep inspect PATH [--json]`.

use std::path::PathBuf;

use serde_json::json;

use super::CliError;
use crate::disk::{self, OpenOptions};
use crate::hrl;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  vdrep inspect os.vhdx --json\n  vdrep inspect os.vhdx.hrl --json"
)]
pub struct Args {
    /// Disk image or HRL file.
    path: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<(), CliError> {
    let v = if is_hrl(&a.path)? {
        inspect_hrl(&a.path)?
    } else {
        inspect_disk(&a.path)?
    };
    print(&v, a.json);
    Ok(())
}

/// Formats are detected by content: an HRL log starts with the cookie "msctlog".
fn is_hrl(path: &std::path::Path) -> Result<bool, CliError> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("{}: cannot open: {e}", path.display()))?;
    let mut head = [0u8; 8];
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(anyhow::anyhow!("{}: read failed: {e}", path.display()).into()),
        }
    }
    Ok(hrl::has_hrl_cookie(&head[..n]))
}

/// Describes a log. A closed log is verified completely (any defect is an error); an
/// unclosed one (`EOLLocation` 0) is shown as far as it is valid, with `closed: false`, so
/// an operator can see what a crashed tracker left behind.
fn inspect_hrl(path: &std::path::Path) -> Result<serde_json::Value, CliError> {
    let s = hrl::scan_valid_prefix(path, &hrl::ReadOptions::default())?;
    let h = s.log.header();
    let version = match h.version {
        vdrep_proto::formats::hrl::VERSION_1 => "1.0",
        _ => "2.0",
    };
    let extents = hrl::coalesce_log(&s.log);
    Ok(json!({
        "path": path,
        "format": "hrl",
        "version": version,
        "unique_id": h.unique_id.to_string(),
        "previous_unique_id": h.previous_unique_id.to_string(),
        "vhd2_data_write_guid": h.vhd2_data_write_guid.map(|g| g.to_string()),
        "closed": s.closed,
        "eol_location": h.eol_location,
        "valid_end": s.log.valid_end(),
        "trailing_bytes": s.trailing_bytes,
        "metadata_size": h.metadata_size,
        "disk_size": h.current_size,
        "timestamp": h.timestamp,
        "last_modified_timestamp": h.last_modified_timestamp,
        "entries": s.log.entries().len(),
        "data_bytes": s.log.data_bytes(),
        "extents": extents,
    }))
}

fn inspect_disk(path: &std::path::Path) -> Result<serde_json::Value, CliError> {
    let d = disk::open(
        path,
        OpenOptions {
            allow_4k_logical: true,
        },
    )?;
    let info = d.info();
    let extents = disk::extent::all_extents(d.as_ref())?;
    let allocated: u64 = extents
        .iter()
        .filter(|e| e.kind == disk::ExtentKind::Data)
        .map(|e| e.length)
        .sum();
    Ok(json!({
        "path": info.path,
        "format": info.format.as_str(),
        "virtual_size": info.virtual_size,
        "logical_sector_size": info.logical_sector_size,
        "physical_sector_size": info.physical_sector_size,
        "block_size": info.block_size,
        "allocated_bytes": allocated,
        "extents": extents,
        "parent": info.parent,
        "identity": info.identity.map(|g| g.to_string()),
    }))
}

pub(crate) fn print(v: &serde_json::Value, as_json: bool) {
    if as_json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        return;
    }
    if let Some(map) = v.as_object() {
        for (k, val) in map {
            if let Some(arr) = val.as_array() {
                println!("{k}: {} entries", arr.len());
                for e in arr.iter().take(20) {
                    println!("  {e}");
                }
                if arr.len() > 20 {
                    println!("  ... ({} more)", arr.len() - 20);
                }
            } else {
                println!("{k}: {val}");
            }
        }
    }
}
