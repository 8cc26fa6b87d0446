//! `vdrep sidecar --listen ADDR --sender-control PATH --token-file F [--read-token-file F]
//! --state DIR [--metrics ADDR] [--store DIR | --azure-url …] [--failover-dir DIR]`.

use super::CliResult;
use std::net::SocketAddr;
use std::path::PathBuf;

use super::Context;
use serde::Deserialize;

use super::config;
use super::store_args::{AzureFile, StoreArgs};
use super::CliError;
use crate::sidecar::failover::FailoverTarget;
use crate::sidecar::{self, SidecarConfig};

#[derive(clap::Args, Debug)]
#[command(after_help = "Example:\n  vdrep sidecar --config /etc/vdrep/sidecar.toml")]
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
    /// File holding a token that the API's reads then need (or the `--token-file` one);
    /// without it reads are open. The console page and its assets stay open either way.
    #[arg(long)]
    read_token_file: Option<PathBuf>,
    /// Folder of the sidecar's own state (jobs, policies); created if missing.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Serve Prometheus metrics on this TCP address (`GET /metrics`).
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// The receiver's replica store, read (never written) for test failovers asked through
    /// the API; without it those jobs fail saying so.
    #[command(flatten)]
    store: StoreArgs,
    /// Where test failovers write: DIR/VM/JOB-ID/NAME.vhd (default: the folder
    /// `STORE-failover` beside a local `--store`; required with `--azure-url`).
    #[arg(long)]
    failover_dir: Option<PathBuf>,
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
    read_token_file: Option<PathBuf>,
    state: Option<PathBuf>,
    metrics: Option<SocketAddr>,
    store: Option<PathBuf>,
    azure: Option<AzureFile>,
    failover_dir: Option<PathBuf>,
}

fn usage(e: impl Into<CliError>) -> CliError {
    CliError::usage(e)
}

/// Reads a token file: its first line, which must be non-empty.
pub fn read_token(path: &std::path::Path) -> CliResult<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the token file", path.display()))?;
    let t = text.lines().next().unwrap_or("").trim().to_string();
    if t.is_empty() {
        bail!("{}: the token file is empty", path.display());
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
    crate::secret::check_private(&token_file, "token file")?;
    let token = read_token(&token_file)?;
    let read_token = match a.read_token_file.or(f.read_token_file) {
        Some(p) => Some(read_token(&p)?),
        None => None,
    };
    let metrics = a.metrics.or(f.metrics);
    let failover = failover_target(
        a.store.merge(f.store, f.azure),
        a.failover_dir.or(f.failover_dir),
    )
    .map_err(usage)?;
    let rt = super::runtime()?;
    rt.block_on(async {
        if let Some(addr) = metrics {
            crate::metrics::serve(addr, crate::metrics::Role::Sidecar).await?;
        }
        sidecar::run(SidecarConfig {
            listen,
            sender_control,
            token,
            read_token,
            state,
            failover,
        })
        .await
    })?;
    Ok(())
}

/// The test-failover target: the store to read and the documented output folder.
fn failover_target(store: StoreArgs, dir: Option<PathBuf>) -> CliResult<Option<FailoverTarget>> {
    let dir = match (&store.store, &store.azure_url, dir) {
        (None, None, _) => return Ok(None),
        (_, _, Some(d)) => d,
        (Some(s), None, None) => {
            let name = s
                .file_name()
                .with_context(|| format!("{}: name the store folder itself", s.display()))?;
            let mut n = name.to_os_string();
            n.push("-failover");
            s.with_file_name(n)
        }
        (_, Some(_), None) => {
            bail!("--failover-dir DIR is required with --azure-url (where test failovers write)")
        }
    };
    // The store is opened for each failover and listing: it may come up after the sidecar.
    let st = store.clone();
    let points = std::sync::Arc::new(move |vm: &str| {
        let s = st.open_existing().map_err(|e| format!("{e:#}"))?;
        if s.list_disks(Some(vm))
            .map_err(|e| format!("{e:#}"))?
            .is_empty()
        {
            return Ok(None);
        }
        let doc = super::points::document(s.as_ref(), vm).map_err(|e| format!("{e:#}"))?;
        serde_json::to_value(doc)
            .map(Some)
            .map_err(|e| e.to_string())
    });
    let run = std::sync::Arc::new(move |vm: &str, point: Option<u64>, out: &std::path::Path| {
        let sel = point.map_or(
            super::failover::PointSel::Latest,
            super::failover::PointSel::Id,
        );
        let s = store.open_existing().map_err(|e| format!("{e:#}"))?;
        let disks =
            super::failover::materialise(s.as_ref(), vm, sel, out).map_err(|e| format!("{e:#}"))?;
        Ok(disks
            .iter()
            .map(|d| serde_json::to_value(d).unwrap_or_default())
            .collect())
    });
    Ok(Some(FailoverTarget { run, points, dir }))
}
