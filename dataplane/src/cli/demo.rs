//! `vdrep demo`: the README's main command.

use std::path::PathBuf;

use super::CliError;
use crate::demo::{run_demo, DemoOptions};

#[derive(clap::Args, Debug)]
#[command(after_help = "Example:\n  vdrep demo --dir /tmp/vdrep-demo --size-mib 256")]
pub struct Args {
    /// Working folder; its contents are replaced.
    #[arg(long, default_value = "vdrep-demo")]
    dir: PathBuf,
    /// Virtual size of the generated disk in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Disk format to generate: vhdx or vhd.
    #[arg(long, default_value = "vhdx")]
    format: String,
    /// Upload threads (parallel streams).
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<(), CliError> {
    let (summary, replica) = run_demo(&DemoOptions {
        dir: a.dir,
        size: a.size_mib << 20,
        format: a.format,
        threads: a.threads,
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!("{}", summary.one_line());
    }
    println!("replica: {}", replica.display());
    Ok(())
}
