//! The `vdrep` command line. Conventions (DESIGN.md §4): exit 0 done, 1 non-recoverable
//! error, 2 usage, 75 recoverable error given up on; errors are one line naming the file or
//! peer, the offset and the problem.

mod cat;
mod certs;
pub(crate) mod config;
mod confirm;
mod convert;
mod demo;
mod error;
pub mod failover;
mod failover_group;
mod generate;
mod inspect;
mod jobs;
mod log_write;
mod logging;
mod ops;
mod points;
mod receive;
mod send;
mod sidecar;
pub mod store_args;
mod unprotect;
mod watch;

use clap::{CommandFactory, Parser, Subcommand};

pub use error::{Classed, CliError, Context, IntoAnyhow};

/// Exit code for success.
pub const EXIT_OK: i32 = 0;
/// Exit code for a non-recoverable error.
pub const EXIT_FATAL: i32 = 1;
/// Exit code for a usage error.
pub const EXIT_USAGE: i32 = 2;
/// Exit code for a recoverable error that was retried until given up on (EX_TEMPFAIL).
pub const EXIT_TEMPFAIL: i32 = 75;

#[derive(Parser, Debug)]
#[command(
    name = "vdrep",
    version,
    about = "Replicates VM disks (VHD, VHDX, raw) to Azure page blobs"
)]
struct Cli {
    /// Log lines on stderr as text (colours only on a terminal) or as JSON lines.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t,
        env = "VDREP_LOG_FORMAT"
    )]
    log_format: logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Describe a disk image or an HRL change log.
    Inspect(inspect::Args),
    /// Write any readable image as an Azure-ready fixed VHD.
    Convert(convert::Args),
    /// Print the virtual disk's bytes (or a range of them).
    Cat(cat::Args),
    /// Run the whole product on this machine: make a VHDX, replicate it over QUIC into a local
    /// store, verify the replica.
    Demo(demo::Args),
    /// Replicate a VM's disks to a receiver: one copy, or continuous protection with
    /// --interval.
    Send(Box<send::Args>),
    /// Record a write in a disk's active change log (and write raw / fixed-VHD disks).
    LogWrite(log_write::Args),
    /// Run a receiver that writes replicas into a store.
    Receive(receive::Args),
    /// Create and add the certificates of mutual TLS between senders and the receiver.
    Certs(certs::Args),
    /// List the recovery points of every disk of a VM (replication goes on).
    Points(points::Args),
    /// Test failover: write every disk of a VM at a recovery point as a fixed VHD, verified
    /// against the sender's digest (replication goes on); without --store or --azure-url the
    /// sidecar runs it where the store is.
    Failover(failover::Args),
    /// List the jobs recorded in the store (or kept in a sender's --state folder); without
    /// either, the sidecar's jobs, or one of them with its steps.
    Jobs(jobs::Args),
    /// Disable protection of a VM, or only of the disks given with --disk: remove their
    /// replicas, points and state, and the change logs beside those disks (asks first).
    Unprotect(unprotect::Args),
    /// Run the control sidecar: the HTTP/JSON API over VMs, jobs and policies.
    Sidecar(sidecar::Args),
    /// Show VMs and disks with health, RPO and cycles (asks the sidecar).
    Status(ops::StatusArgs),
    /// Resynchronise a VM, now or in its resync window (asks the sidecar).
    Resync(ops::ResyncArgs),
    /// Print a shell completion script (bash, zsh, fish, ...), made from these definitions.
    Completions(generate::CompletionsArgs),
    /// Write the man pages (vdrep.1, vdrep-COMMAND.1) into a folder.
    #[command(hide = true)]
    Man(generate::ManArgs),
}

/// Runs the CLI and returns the process exit code.
pub fn main() -> i32 {
    crate::memory::tune_allocator();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            let _ = e.print();
            return code;
        }
    };
    logging::init(cli.log_format);
    let res = match cli.command {
        Command::Inspect(a) => inspect::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Cat(a) => cat::run(a),
        Command::Send(a) => send::run(*a),
        Command::Demo(a) => demo::run(a),
        Command::LogWrite(a) => log_write::run(a),
        Command::Receive(a) => receive::run(a),
        Command::Certs(a) => certs::run(a),
        Command::Points(a) => points::run(a),
        Command::Failover(a) => failover::run(a),
        Command::Jobs(a) => jobs::run(a),
        Command::Unprotect(a) => unprotect::run(a),
        Command::Sidecar(a) => sidecar::run(a),
        Command::Status(a) => ops::status(a),
        Command::Resync(a) => ops::resync(a),
        Command::Completions(a) => generate::completions(a, Cli::command()),
        Command::Man(a) => generate::man(a, Cli::command()),
    };
    match res {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("vdrep: error: {}", one_line(&e.error));
            e.exit_code()
        }
    }
}

/// The async runtime of the network roles ([`crate::transport::runtime`]).
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(crate::transport::runtime()?)
}

/// The error and its causes on one line. Disk errors already print their cause inside their
/// own message (`file: structure at offset N: problem`), so a cause whose text is already
/// shown is not repeated (anyhow's `{:#}` would print it twice).
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if out.contains(&s) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s);
    }
    out
}
