//! `vdrep certs init DIR --sender NAME... [--host H]... [--days N] [--owner USER[:GROUP]]
//! [--force]` and `vdrep certs add-sender DIR NAME [--days N] [--owner USER[:GROUP]] [--force]`: the certificates of mutual TLS
//! between senders and the receiver (layout and rules in `crate::tls`).

use std::path::PathBuf;

use super::CliError;
use crate::tls::certs::{self, DEFAULT_VALIDITY_DAYS};
use crate::tls::owner::{is_ca_key, Owner};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Create a CA, the receiver's certificate and one certificate per sender in DIR.
    Init(InitArgs),
    /// Issue a certificate for one more sender with the CA already in DIR.
    AddSender(AddSenderArgs),
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  vdrep certs init /etc/vdrep/tls --sender host1 --host receiver.example --owner vdrep"
)]
struct InitArgs {
    /// Directory to write into (created if missing).
    dir: PathBuf,
    /// A sender's name (its certificate's CN and DNS name); repeat for each sender.
    #[arg(long = "sender", value_name = "NAME", required = true)]
    senders: Vec<String>,
    /// A DNS name or IP address the receiver is reached by (besides localhost, 127.0.0.1 and
    /// ::1); repeat for each.
    #[arg(long = "host", value_name = "H")]
    hosts: Vec<String>,
    /// Validity of the receiver's and senders' certificates, in days.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_VALIDITY_DAYS,
          value_parser = clap::value_parser!(u32).range(1..=36500))]
    days: u32,
    /// Give the files written (except ca.key) to USER (and GROUP, default USER's group), and
    /// the directory to GROUP with mode 0750: the account the role runs as, e.g. `vdrep`.
    #[arg(long, value_name = "USER[:GROUP]")]
    owner: Option<String>,
    /// Replace an existing CA (every certificate it signed stops being accepted).
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args, Debug)]
#[command(after_help = "Example:\n  vdrep certs add-sender /etc/vdrep/tls host2 --owner vdrep")]
struct AddSenderArgs {
    /// Directory holding ca.pem and ca.key.
    dir: PathBuf,
    /// The new sender's name.
    name: String,
    /// Validity of the certificate, in days (never beyond the CA's).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_VALIDITY_DAYS,
          value_parser = clap::value_parser!(u32).range(1..=36500))]
    days: u32,
    /// Give the new files to USER[:GROUP] (see `certs init --owner`).
    #[arg(long, value_name = "USER[:GROUP]")]
    owner: Option<String>,
    /// Replace this sender's existing certificate and key (renewal).
    #[arg(long)]
    force: bool,
}

pub fn run(a: Args) -> Result<(), CliError> {
    let (dir, owner, written) = match a.command {
        Command::Init(i) => {
            // Resolved before anything is written: a typo must not leave root-only keys.
            let owner = i.owner.as_deref().map(Owner::parse).transpose()?;
            let w = certs::init(&i.dir, &i.senders, &i.hosts, i.days, i.force)?;
            (i.dir, owner, w)
        }
        Command::AddSender(s) => {
            let owner = s.owner.as_deref().map(Owner::parse).transpose()?;
            let w = certs::add_sender(&s.dir, &s.name, s.days, s.force)?;
            (s.dir, owner, w)
        }
    };
    if let Some(o) = &owner {
        o.apply(&dir, &written)?;
    }
    print_written(&written);
    Ok(())
}

fn print_written(files: &[PathBuf]) {
    for f in files {
        println!("wrote {}", f.display());
    }
    if files.iter().any(|f| is_ca_key(f)) {
        println!(
            "keep ca.key off the replicating machines: only `vdrep certs add-sender` needs it"
        );
    }
}
