//! `vdrep receive --listen ADDR --store DIR --tls DIR --allow NAME=VM[,VM...]...`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use serde::Deserialize;

use super::config;
use super::CliError;
use crate::receiver::{self, Authorizations, ReceiverConfig};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// UDP address to listen on (port 0 picks a free one; the bound address is printed).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Local page-blob store folder (created if missing).
    #[arg(long)]
    store: Option<PathBuf>,
    /// Folder with ca.pem, receiver.pem and receiver.key.
    #[arg(long)]
    tls: Option<PathBuf>,
    /// NAME=VM[,VM...]: sender NAME may replicate these VMs. Repeat per sender; without any,
    /// no sender is accepted.
    #[arg(long)]
    allow: Vec<String>,
    /// TOML file with any of the options above (flags win; `allow` entries add up).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields, default)]
struct File {
    listen: Option<SocketAddr>,
    store: Option<PathBuf>,
    tls: Option<PathBuf>,
    allow: Vec<String>,
}

fn usage(e: anyhow::Error) -> CliError {
    CliError {
        error: e,
        recoverable: false,
        usage: true,
    }
}

pub fn run(a: Args) -> Result<(), CliError> {
    let f: File = config::load(a.config.as_deref()).map_err(usage)?;
    let listen = a
        .listen
        .or(f.listen)
        .context("--listen ADDR is required")
        .map_err(usage)?;
    let store_dir = a
        .store
        .or(f.store)
        .context("--store DIR is required")
        .map_err(usage)?;
    let tls = a
        .tls
        .or(f.tls)
        .context("--tls DIR is required")
        .map_err(usage)?;
    let mut allow = f.allow;
    allow.extend(a.allow);
    let allow = Authorizations::parse(&allow)
        .map_err(anyhow::Error::msg)
        .map_err(usage)?;
    if allow.is_empty() {
        tracing::warn!("no --allow given: this receiver accepts no sender");
    }
    let store = crate::sink::local::LocalStore::open(&store_dir)?;
    let rt = super::runtime()?;
    rt.block_on(receiver::run(
        ReceiverConfig { listen, tls, allow },
        Arc::new(store),
    ))?;
    Ok(())
}
