//! `vdrep cat PATH [--offset N] [--length N] [--out FILE]`: the virtual disk's bytes, for
//! checking vdrep's readers against other tools.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

use super::CliError;
use crate::disk::{self, OpenOptions};

#[derive(clap::Args, Debug)]
#[command(after_help = "Example:\n  vdrep cat os.vhdx --offset 1048576 --length 64 | xxd")]
pub struct Args {
    /// Disk image.
    path: PathBuf,
    /// First byte to print.
    #[arg(long, default_value_t = 0)]
    offset: u64,
    /// Bytes to print (default: to the end of the virtual disk).
    #[arg(long)]
    length: Option<u64>,
    /// Write to this file instead of standard output (replaced if it exists).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<(), CliError> {
    let d = disk::open(
        &a.path,
        OpenOptions {
            allow_4k_logical: true,
        },
    )?;
    let size = d.info().virtual_size;
    let len = a.length.unwrap_or(size.saturating_sub(a.offset));
    let mut w: Box<dyn Write> = match &a.out {
        Some(p) => Box::new(std::io::BufWriter::new(
            File::create(p).with_context(|| format!("{}: cannot create", p.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    const STEP: u64 = 4 << 20;
    let mut off = a.offset;
    let end = a
        .offset
        .checked_add(len)
        .context("offset + length overflows")?;
    while off < end {
        let n = (end - off).min(STEP) as usize;
        let b = d.read_at(off, n)?;
        w.write_all(&b)?;
        off += n as u64;
    }
    w.flush()?;
    Ok(())
}
