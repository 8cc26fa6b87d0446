//! `vdrep inspect PATH [--json]`.

use std::path::PathBuf;

use serde_json::json;

use super::CliError;
use crate::disk::{self, OpenOptions};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Disk image or HRL file.
    path: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<(), CliError> {
    let v = inspect_disk(&a.path)?;
    print(&v, a.json);
    Ok(())
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
