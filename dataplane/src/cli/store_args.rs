//! Choosing the replica store on the command line: `--store DIR` (local, the default) or
//! `--azure-url URL --azure-container NAME [--azure-sas TOKEN]` (Azure page blobs). Shared
//! by `receive` and the operator commands that read replicas (`points`, `failover`).

use super::CliResult;
use std::path::PathBuf;
use std::sync::Arc;

use super::Context;
use serde::Deserialize;

use crate::sink::azure::{AzureConfig, AzureStore};
use crate::sink::local::LocalStore;
use crate::sink::ReplicaStore;

/// Store selection flags.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct StoreArgs {
    /// Local page-blob store folder (`receive` creates it if missing; the other commands only
    /// open an existing store).
    #[arg(long, conflicts_with = "azure_url")]
    pub store: Option<PathBuf>,
    /// Azure Storage account URL: https://ACCOUNT.blob.core.windows.net, or path-style
    /// http://127.0.0.1:10000/devstoreaccount1 (Azurite). Selects the Azure sink; blobs are
    /// CONTAINER/VM/NAME.vhd, recovery points are their snapshots.
    #[arg(long)]
    pub azure_url: Option<String>,
    /// Container for the replicas (`receive` creates it if missing and the credential allows
    /// it).
    #[arg(long, requires = "azure_url")]
    pub azure_container: Option<String>,
    /// SAS token (with or without its leading `?`). Without it (or an account key) the
    /// Azure identity chain is used: workload identity (AZURE_FEDERATED_TOKEN_FILE,
    /// AZURE_CLIENT_ID, AZURE_TENANT_ID), the VM's managed identity, then the Azure CLI
    /// (`az login`). Prefer VDREP_AZURE_SAS or --azure-sas-file: a command line shows in
    /// `ps` to every local user (a warning says so).
    #[arg(long, env = "VDREP_AZURE_SAS", hide_env_values = true)]
    pub azure_sas: Option<String>,
    /// File holding the SAS token (surrounding whitespace ignored), instead of --azure-sas.
    #[arg(long, env = "VDREP_AZURE_SAS_FILE")]
    pub azure_sas_file: Option<PathBuf>,
    /// Account key for Shared Key authorisation (alternative to a SAS). Prefer
    /// VDREP_AZURE_KEY or --azure-key-file (see --azure-sas).
    #[arg(long, env = "VDREP_AZURE_KEY", hide_env_values = true)]
    pub azure_key: Option<String>,
    /// File holding the account key (surrounding whitespace ignored), instead of --azure-key.
    #[arg(long, env = "VDREP_AZURE_KEY_FILE")]
    pub azure_key_file: Option<PathBuf>,
    /// PEM file of the CA certificates of the storage endpoint, instead of the public roots
    /// (an emulator or a private endpoint with its own CA).
    #[arg(long, env = "VDREP_AZURE_CA_FILE", requires = "azure_url")]
    pub azure_ca_file: Option<PathBuf>,
}

/// The same choices in a TOML config file (`[azure]` table or `store = "DIR"`).
#[derive(Deserialize, Default, Debug, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct AzureFile {
    /// Account URL.
    pub url: Option<String>,
    /// Container.
    pub container: Option<String>,
    /// SAS token (prefer the environment variable).
    pub sas: Option<String>,
}

impl StoreArgs {
    /// Fills unset flags from a config file.
    pub fn merge(mut self, store: Option<PathBuf>, azure: Option<AzureFile>) -> StoreArgs {
        let az = azure.unwrap_or_default();
        if self.store.is_none() && self.azure_url.is_none() {
            self.store = store;
            self.azure_url = az.url;
        }
        self.azure_container = self.azure_container.or(az.container);
        self.azure_sas = self.azure_sas.or(az.sas);
        self
    }

    /// Opens the chosen store for an operator command that reads or removes replicas: a
    /// local store folder must already exist (a typo must not create an empty store that
    /// then "has no disks").
    pub fn open_existing(&self) -> CliResult<Arc<dyn ReplicaStore>> {
        if let (None, Some(dir)) = (&self.azure_url, &self.store) {
            if !dir.join("FORMAT").is_file() {
                bail!(
                    "{}: no vdrep store here (no FORMAT file); check --store",
                    dir.display()
                );
            }
        }
        self.open()
    }

    /// Opens the chosen store.
    pub fn open(&self) -> CliResult<Arc<dyn ReplicaStore>> {
        if let Some(url) = &self.azure_url {
            let container = self
                .azure_container
                .as_deref()
                .context("--azure-container NAME is required with --azure-url")?;
            for flag in secrets_on_command_line(std::env::args()) {
                tracing::warn!(
                    "{flag} on the command line shows in `ps` to every local user: use {} or \
                     {flag}-file FILE instead",
                    if flag == "--azure-sas" {
                        "VDREP_AZURE_SAS"
                    } else {
                        "VDREP_AZURE_KEY"
                    }
                );
            }
            let mut cfg = AzureConfig::new(url, container);
            cfg.sas = secret(&self.azure_sas, &self.azure_sas_file, "--azure-sas")?;
            cfg.shared_key = secret(&self.azure_key, &self.azure_key_file, "--azure-key")?;
            cfg.ca_file = self.azure_ca_file.clone();
            return Ok(Arc::new(AzureStore::open(cfg)?));
        }
        let dir = self
            .store
            .as_ref()
            .context("--store DIR or --azure-url URL --azure-container NAME is required")?;
        Ok(Arc::new(LocalStore::open(dir)?))
    }
}

/// The secret given by value or by file (`FLAG-file`), if any; both is an error.
fn secret(value: &Option<String>, file: &Option<PathBuf>, flag: &str) -> CliResult<Option<String>> {
    let from_file = match file {
        None => None,
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("{}: cannot read {flag}-file", p.display()))?
                .trim()
                .to_string(),
        ),
    };
    let value = value.clone().filter(|s| !s.trim().is_empty());
    match (value, from_file) {
        (Some(_), Some(_)) => bail!("give {flag} or {flag}-file, not both"),
        (v, f) => Ok(v.or(f).filter(|s| !s.is_empty())),
    }
}

/// The secret-bearing flags given on the command line itself (not by environment or file),
/// which any local user can read in `ps`.
fn secrets_on_command_line(args: impl IntoIterator<Item = String>) -> Vec<&'static str> {
    let mut out = Vec::new();
    for a in args {
        for flag in ["--azure-sas", "--azure-key"] {
            let given = a == flag || a.strip_prefix(flag).is_some_and(|r| r.starts_with('='));
            if given && !out.contains(&flag) {
                out.push(flag);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn secrets_given_as_flags_are_found_and_files_or_other_flags_are_not() {
        let a = args(&["vdrep", "receive", "--azure-sas", "sv=x", "--azure-key=abc"]);
        assert_eq!(secrets_on_command_line(a), ["--azure-sas", "--azure-key"]);
        let a = args(&[
            "vdrep",
            "receive",
            "--azure-sas-file",
            "/run/sas",
            "--azure-url",
            "u",
        ]);
        assert!(secrets_on_command_line(a).is_empty());
    }

    #[test]
    fn a_secret_is_read_from_its_file_trimmed_and_not_given_twice() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("sas");
        std::fs::write(&f, "  sv=2024&sig=abc\n").unwrap();
        let got = secret(&None, &Some(f.clone()), "--azure-sas").unwrap();
        assert_eq!(got.as_deref(), Some("sv=2024&sig=abc"));
        assert_eq!(
            secret(&Some("k".into()), &None, "--azure-key")
                .unwrap()
                .as_deref(),
            Some("k")
        );
        assert_eq!(secret(&None, &None, "--azure-key").unwrap(), None);
        let e = secret(&Some("k".into()), &Some(f), "--azure-sas").unwrap_err();
        assert!(e.to_string().contains("not both"), "{e}");
        let e = secret(&None, &Some(d.path().join("none")), "--azure-sas").unwrap_err();
        assert!(
            e.to_string().contains("none: cannot read --azure-sas-file"),
            "{e}"
        );
    }
}
