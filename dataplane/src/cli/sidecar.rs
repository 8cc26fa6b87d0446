//! `vdrep sidecar --listen ADDR --sender-control PATH --token-file F --state DIR
//! [--metrics ADDR]`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use serde::Deserialize;

use super::config;
use super::CliError;
use crate::sidecar::{self, SidecarConfig};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// TCP address of the API (loopback by default; port 0 picks one, printed as
    /// `sidecar on ADDR`).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The sender's control socket (`vdrep send --control PATH`).
    #[arg(long)]
    sender_control: Option<PathBuf>,
    /// File holding the bearer token that state-changing calls must send.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Folder of the sidecar's own state (jobs, policies); created if missing.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Serve Prometheus metrics on this TCP address (`GET /metrics`).
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// TOML file with any of the options above (flags win).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields, default)]
struct File {
    listen: Option<SocketAddr>,
    sender_control: Option<PathBuf>,
    token_file: Option<PathBuf>,
    state: Option<PathBuf>,
    metrics: Option<SocketAddr>,
}

fn usage(e: anyhow::Error) -> CliError {
    CliError {
        error: e,
        recoverable: false,
        usage: true,
    }
}

/// Reads a token file: its first line, which must be non-empty.
pub fn read_token(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the token file", path.display()))?;
    let t = text.lines().next().unwrap_or("").trim().to_string();
    if t.is_empty() {
        anyhow::bail!("{}: the token file is empty", path.display());
    }
    Ok(t)
}

pub fn run(a: Args) -> Result<(), CliError> {
    let f: File = config::load(a.config.as_deref()).map_err(usage)?;
    let listen = a
        .listen
        .or(f.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9640)));
    let sender_control = a
        .sender_control
        .or(f.sender_control)
        .context("--sender-control PATH is required")
        .map_err(usage)?;
    let token_file = a
        .token_file
        .or(f.token_file)
        .context("--token-file F is required")
        .map_err(usage)?;
    let state = a
        .state
        .or(f.state)
        .context("--state DIR is required")
        .map_err(usage)?;
    let token = read_token(&token_file)?;
    let metrics = a.metrics.or(f.metrics);
    let rt = super::runtime()?;
    rt.block_on(async {
        if let Some(addr) = metrics {
            crate::metrics::serve(addr, crate::metrics::Role::Sidecar).await?;
        }
        sidecar::run(SidecarConfig {
            listen,
            sender_control,
            token,
            state,
        })
        .await
    })?;
    Ok(())
}
