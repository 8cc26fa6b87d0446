//! `vdrep convert SRC DST`: any readable image to an Azure-ready fixed VHD.

use super::CliResult;
use std::fs::{self, File, OpenOptions as FsOpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::Context;

use super::CliError;
use crate::disk::{self, ExtentKind, ExtentWalker, OpenOptions, VirtualDisk};
use crate::layout;

#[derive(clap::Args, Debug)]
#[command(after_help = "Example:\n  vdrep convert os.vhdx azure-ready.vhd")]
pub struct Args {
    /// Source image (raw, VHD, VHDX; differencing chains are resolved).
    src: PathBuf,
    /// Destination fixed VHD; replaced if it exists.
    dst: PathBuf,
}

pub fn run(a: Args) -> Result<(), CliError> {
    let d = disk::open(&a.src, OpenOptions::default())?;
    convert(d.as_ref(), &a.dst)?;
    Ok(())
}

/// Largest read per step: bounded memory whatever the disk size.
const CHUNK: usize = 4 << 20;

/// Writes `d` to `dst` as a fixed VHD, sparse where the source is unallocated or zero. The
/// output is built in a temporary file beside `dst` and renamed over it, so a failed convert
/// never leaves a half-written file under the destination's name.
pub fn convert(d: &dyn VirtualDisk, dst: &Path) -> CliResult<()> {
    let size = d.info().virtual_size;
    let dir = dst
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".vdrep-convert-")
        .tempfile_in(dir)
        .with_context(|| format!("{}: cannot create a temporary file", dir.display()))?;
    let out: &File = tmp.as_file();
    out.set_len(layout::replica_file_size(size))
        .with_context(|| format!("{}: cannot size output", dst.display()))?;
    let mut buf = vec![0u8; CHUNK];
    for ext in ExtentWalker::new(d, 1 << 30) {
        let ext = ext?;
        if ext.kind == ExtentKind::Zero {
            continue; // already zero in the sparse output
        }
        let mut off = ext.offset;
        while off < ext.end() {
            let n = ((ext.end() - off) as usize).min(CHUNK);
            let b = &mut buf[..n];
            d.read_into(off, b)?;
            if b.iter().any(|&x| x != 0) {
                out.write_all_at(b, off)
                    .with_context(|| format!("{}: write at offset {off} failed", dst.display()))?;
            }
            off += n as u64;
        }
    }
    let footer = layout::replica_footer(
        size,
        layout::random_guid(),
        layout::vhd_timestamp(crate::clock::system_time()),
    );
    let foff = layout::replica_virtual_size(size);
    out.write_all_at(&footer, foff)
        .with_context(|| format!("{}: write of footer at offset {foff} failed", dst.display()))?;
    tmp.as_file_mut().flush()?;
    tmp.as_file().sync_all()?;
    tmp.persist(dst)
        .map_err(|e| e.error)
        .with_context(|| format!("{}: cannot replace destination", dst.display()))?;
    let _ = FsOpenOptions::new()
        .read(true)
        .open(dir)
        .and_then(|f| f.sync_all());
    Ok(())
}
