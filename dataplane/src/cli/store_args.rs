//! Choosing the replica store on the command line: `--store DIR` (local, the default) or
//! `--azure-url URL --azure-container NAME [--azure-sas TOKEN]` (Azure page blobs). Shared
//! by `receive` and the operator commands that read replicas (`points`, `failover`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
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
    /// (`az login`).
    #[arg(long, env = "VDREP_AZURE_SAS", hide_env_values = true)]
    pub azure_sas: Option<String>,
    /// Account key for Shared Key authorisation (alternative to a SAS).
    #[arg(long, env = "VDREP_AZURE_KEY", hide_env_values = true)]
    pub azure_key: Option<String>,
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
    pub fn open_existing(&self) -> anyhow::Result<Arc<dyn ReplicaStore>> {
        if let (None, Some(dir)) = (&self.azure_url, &self.store) {
            if !dir.join("FORMAT").is_file() {
                anyhow::bail!(
                    "{}: no vdrep store here (no FORMAT file); check --store",
                    dir.display()
                );
            }
        }
        self.open()
    }

    /// Opens the chosen store.
    pub fn open(&self) -> anyhow::Result<Arc<dyn ReplicaStore>> {
        if let Some(url) = &self.azure_url {
            let container = self
                .azure_container
                .as_deref()
                .context("--azure-container NAME is required with --azure-url")?;
            let mut cfg = AzureConfig::new(url, container);
            cfg.sas = self.azure_sas.clone().filter(|s| !s.trim().is_empty());
            cfg.shared_key = self.azure_key.clone().filter(|s| !s.trim().is_empty());
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
