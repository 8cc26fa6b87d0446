//! `vdrep receive --listen ADDR (--store DIR | --azure-url URL --azure-container NAME
//! [--azure-sas TOKEN]) --tls DIR --allow NAME=VM[,VM...]...`.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::{Classed, Context};
use serde::Deserialize;

use super::config;
use super::store_args::{AzureFile, StoreArgs};
use super::CliError;
use crate::receiver::{self, Authorizations, ReceiverConfig};

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  vdrep receive --listen 0.0.0.0:4433 --store /srv/vdrep --tls tls --allow host1=vm1\n  vdrep receive --config /etc/vdrep/receiver.toml"
)]
pub struct Args {
    /// UDP address to listen on (port 0 picks a free one; the bound address is printed).
    #[arg(long)]
    listen: Option<SocketAddr>,
    #[command(flatten)]
    store: StoreArgs,
    /// Folder with ca.pem, receiver.pem and receiver.key.
    #[arg(long)]
    tls: Option<PathBuf>,
    /// NAME=VM[,VM...]: sender NAME may replicate these VMs. Repeat per sender; without any,
    /// no sender is accepted.
    #[arg(long)]
    allow: Vec<String>,
    /// Serve Prometheus metrics on this TCP address (`GET /metrics`; port 0 picks one, the
    /// bound address is printed as `metrics on ADDR`).
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Most disks one connection may hold open at once (default 256; also
    /// VDREP_MAX_DISKS_PER_CONNECTION); one more is refused
    /// with a non-recoverable error naming this limit. Bounds what one sender can make the
    /// receiver hold (disk state, resync index) however many disks it announces.
    #[arg(long, env = "VDREP_MAX_DISKS_PER_CONNECTION")]
    max_disks_per_connection: Option<usize>,
    /// Most sender connections served at once (1 to 64, default 16); one more is refused
    /// as busy and its sender retries later. The connections share one memory budget.
    #[arg(long)]
    max_connections: Option<usize>,
    /// TOML file with any of the options above (flags win; `allow` entries add up).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields, default)]
struct File {
    listen: Option<SocketAddr>,
    store: Option<PathBuf>,
    azure: Option<AzureFile>,
    tls: Option<PathBuf>,
    allow: Vec<String>,
    metrics: Option<SocketAddr>,
    max_disks_per_connection: Option<usize>,
    max_connections: Option<usize>,
}

fn usage(e: anyhow::Error) -> CliError {
    CliError {
        error: e,
        recovery: crate::error::Recovery::Permanent,
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
    let store_args = a.store.merge(f.store, f.azure);
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
    if store_args.store.is_none() && store_args.azure_url.is_none() {
        return Err(usage(anyhow::anyhow!(
            "--store DIR or --azure-url URL --azure-container NAME is required"
        )));
    }
    let max_connections = a
        .max_connections
        .or(f.max_connections)
        .unwrap_or(receiver::limits::DEFAULT_MAX_CONNECTIONS);
    if !(1..=receiver::limits::MAX_CONNECTIONS).contains(&max_connections) {
        return Err(usage(anyhow::anyhow!(
            "--max-connections {max_connections}: must be 1 to {} (the connections share one \
             memory budget)",
            receiver::limits::MAX_CONNECTIONS
        )));
    }
    let store = store_args.open()?;
    tracing::info!(store = %store.describe(), "replica store");
    // Before any disk is opened: a store of an earlier build gets this build's format.
    if let Some(what) = store.upgrade().classed()? {
        tracing::info!(store = %store.describe(), "{what}");
    }
    let rt = super::runtime()?;
    let metrics = a.metrics.or(f.metrics);
    rt.block_on(async {
        if let Some(addr) = metrics {
            crate::metrics::serve(addr, crate::metrics::Role::Receiver).await?;
        }
        receiver::run(
            ReceiverConfig {
                listen,
                tls,
                allow,
                max_connections,
                max_disks_per_connection: a
                    .max_disks_per_connection
                    .or(f.max_disks_per_connection)
                    .unwrap_or(receiver::DEFAULT_MAX_DISKS_PER_CONNECTION)
                    .max(1),
            },
            store,
        )
        .await
    })?;
    Ok(())
}
