//! The Azure page-blob store: one page blob per disk in the container, recovery points as
//! blob snapshots, the durable state in a small state blob beside it, and a blob lease so
//! that one receiver at a time writes a disk.
//!
//! ## Naming (container given by `--azure-container`)
//! ```text
//! VM/NAME.vhd            page blob, replica_file_size(size) bytes: the working image; its
//!                        snapshots are the recovery points (metadata below)
//! VM/NAME.state          block blob, JSON (state.rs): committed cycle, generation, progress
//!                        of the copy or cycle in progress, footer ids
//! VM/jobs.json           block blob, the VM's jobs (the local store's job file format),
//!                        replaced with If-Match on its ETag (jobs.rs)
//! VM/NAME.hidx           page blob, the receiver's resync index of the working image
//!                        (resync/index/'s file, padded to whole pages; its exact length
//!                        in metadata `vdreplen`), leased like the replica (hidx.rs)
//! ```
//! Snapshot metadata: `vdrepcycle`, `vdrepcreated` (Unix s), `vdrepbytes`, `vdrepdigest`
//! (hex BLAKE3), `vdrepreplica` (footer id of the generation it belongs to).
//!
//! ## Design choices
//! - **Initial copy in place.** The base blob is always the working image; the *committed*
//!   replica is its newest recovery-point snapshot. `begin_initial` recreates the base blob
//!   (Put Blob keeps existing snapshots), so the previous points stay readable and unchanged
//!   until the new copy commits; commit writes the footer, snapshots, records the state,
//!   then drops the older generation's snapshots. No Copy Blob is needed (Azurite's copy
//!   support is partial, and a copy of a TiB blob is slow on Azure too).
//! - **Zero ranges**: after the blob is (re)created, every range is known zero; a clear of
//!   such a range sends nothing. Elsewhere clears are Clear Pages.
//! - **Single writer**: the disk's receiver holds a lease on `NAME.vhd` (15 s, renewed every
//!   5 s by a thread; released on drop); every Put Page, Clear Pages, snapshot and blob
//!   re-creation carries the lease id, so a receiver that lost it is fenced by the service.
//!   The state blob is replaced with `If-Match` on its last ETag. A second receiver's
//!   acquire is refused (`SinkError::Locked`, retried by the sender until the lease frees).
//!   A receiver killed with -9 stops renewing: its lease expires within 15 s.
//! - **Resync index**: every write the receiver applies keeps `NAME.hidx` in step (the
//!   index's clean-flag protocol, `crate::resync::index`), so a resync reads back only the
//!   256 KiB nodes written partially since they were hashed, not the whole blob; `send
//!   --resync --verify` rehashes the blob. The index blob carries the replica's lease id, so
//!   only the replica's writer changes it; a new copy generation (`begin_initial`) makes it
//!   stale (its header names the generation), and `remove_disk` deletes it.
//! - **Crash order** (state after data): commit snapshots before recording the commit; open
//!   rolls a snapshot forward if it carries the copy id (initial) or the open cycle.

mod auth;
mod blob;
mod coalesce;
mod disk;
mod hidx;
pub mod identity;
mod jobs;
mod pipe;
mod points;
mod reader;
mod replica;
pub mod rest;
mod state;
mod stats;
mod vm_manifest;
mod writes;

use std::sync::Arc;
use std::time::Duration;

use vdrep_proto::Guid;

pub use blob::{check_put_page, BlobItem, Container, PageRuleError, MAX_PUT_PAGE};
pub use disk::AzureDisk;
pub use reader::AzurePointReader;
use rest::{Client, Credential, RestError, RetryPolicy};

use crate::sink::{
    lifecycle, validate_name, DiskKey, PointReader, ReplicaDisk, ReplicaStore, SinkError,
};

/// How to reach the container.
#[derive(Debug, Clone)]
pub struct AzureConfig {
    /// Account URL: `https://ACCOUNT.blob.core.windows.net` or path-style
    /// `http://127.0.0.1:10000/devstoreaccount1`.
    pub account_url: String,
    /// Container name.
    pub container: String,
    /// SAS token (with or without `?`); if `None` and no key, the identity chain is used
    /// (workload identity, managed identity, Azure CLI: see [`identity`]).
    pub sas: Option<String>,
    /// Base64 account key (Shared Key), an alternative to the SAS.
    pub shared_key: Option<String>,
    /// Lease duration in seconds (15..=60).
    pub lease_secs: u32,
    /// Parallel Put Pages per blob (Azure's target: ~500 requests/s and 60 MiB/s per page
    /// blob; 8 × 4 MiB in flight is enough to reach it).
    pub max_parallel: usize,
    /// Bytes of received writes buffered per disk to be joined into Put Pages of up to
    /// 4 MiB (sent when a run is full, when this bound evicts the stalest run, when a run
    /// stops growing, and at every commit). It is the reorder window: the sender's streams
    /// each carry every Nth extent, and the receiver sees neighbouring 1 MiB extents up to
    /// ~50 writes apart (p90, measured in the bench). Replaying the order of a bench run,
    /// 32 MiB makes 10 % more Put Pages than an unbounded window, 48 MiB 2 %; the default
    /// stays 32 MiB for memory (DESIGN §5: ≤ 256 MiB RSS per process). Besides this, up to
    /// `(max_parallel + 1) × 4 MiB` are queued or in flight.
    pub max_pending: usize,
    /// PEM file of the CA certificates that sign the endpoint's TLS certificate, replacing
    /// the public (Mozilla) roots: for an emulator or a private endpoint with its own CA
    /// (`--azure-ca-file`, `VDREP_AZURE_CA_FILE`). Azurite needs HTTPS for bearer tokens.
    pub ca_file: Option<std::path::PathBuf>,
    /// The identity chain's sources when neither a SAS nor a key is given; `None` is the
    /// default chain read from the environment ([`identity::IdentityChain::from_env`]).
    /// Tests and embedders set their own.
    pub identity: Option<Vec<identity::Source>>,
    /// Retry policy for throttling, server errors and timeouts.
    pub retry: RetryPolicy,
}

impl AzureConfig {
    /// Defaults for `account_url` and `container`.
    pub fn new(account_url: &str, container: &str) -> AzureConfig {
        AzureConfig {
            account_url: account_url.to_string(),
            container: container.to_string(),
            sas: None,
            shared_key: None,
            lease_secs: 15,
            max_parallel: 8,
            max_pending: 32 << 20,
            ca_file: None,
            identity: None,
            retry: RetryPolicy::default(),
        }
    }
}

/// The resync index blob of a disk ([`hidx`]).
pub(crate) fn hidx_name(key: &DiskKey) -> String {
    format!("{}/{}.hidx", key.vm, key.disk)
}

/// Counts one retried Azure request (the metrics layer hooks here).
pub(crate) fn metrics_retry(op: &'static str) {
    tracing::trace!(op, "azure retry");
}

/// Maps a REST failure to a sink error.
pub(crate) fn rest_err(e: RestError) -> SinkError {
    let lease_lost = e.status == Some(412) && e.code.starts_with("Lease");
    SinkError::Azure {
        url: e.url,
        op: e.op,
        offset: e.offset,
        status: e.status,
        code: e.code,
        problem: e.message,
        recoverable: e.recoverable || lease_lost,
    }
}

/// A store in an Azure Storage container.
#[derive(Debug)]
pub struct AzureStore {
    container: Arc<Container>,
    cfg: AzureConfig,
}

impl AzureStore {
    /// Connects and checks access: lists the container (creating it when absent and allowed).
    /// A refused credential is a non-recoverable error naming the URL.
    pub fn open(cfg: AzureConfig) -> Result<AzureStore, SinkError> {
        validate_container(&cfg.container)?;
        let cred = match (&cfg.sas, &cfg.shared_key) {
            (Some(sas), _) => Credential::sas(sas),
            (None, Some(key)) => {
                let key =
                    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, key.trim())
                        .map_err(|e| SinkError::Unsupported {
                            path: cfg.account_url.clone().into(),
                            offset: 0,
                            problem: format!("the account key is not base64: {e}"),
                        })?;
                let (_, account, _) =
                    rest::parse_account_url(&cfg.account_url).map_err(|p| bad_url(&cfg, p))?;
                Credential::SharedKey { account, key }
            }
            (None, None) => Credential::Identity(match &cfg.identity {
                Some(sources) => identity::IdentityChain::new(sources.clone()),
                None => identity::IdentityChain::from_env(),
            }),
        };
        let ca = match &cfg.ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|e| SinkError::Unsupported {
                path: path.clone(),
                offset: 0,
                problem: format!("cannot read the CA file: {e}"),
            })?),
            None => None,
        };
        let client = Client::new(&cfg.account_url, cred, cfg.retry.clone(), ca.as_deref())
            .map_err(|p| bad_url(&cfg, p))?;
        let container = Arc::new(Container {
            client,
            name: cfg.container.clone(),
            put_pages: Default::default(),
        });
        match container.list("\u{7f}", false) {
            Ok(_) => {}
            Err(e) if e.status == Some(404) => container.ensure_exists().map_err(rest_err)?,
            Err(e) => return Err(rest_err(e)),
        }
        Ok(AzureStore { container, cfg })
    }

    /// The container client (tests and tools).
    pub fn container(&self) -> &Arc<Container> {
        &self.container
    }

    /// The recovery points of a disk, oldest first, read without opening it (no lease).
    pub fn points_of(&self, key: &DiskKey) -> Result<Vec<crate::sink::RecoveryPoint>, SinkError> {
        key.validate()?;
        Ok(points::read_only_points(&self.container, key)?
            .into_iter()
            .map(|p| p.0)
            .collect())
    }

    /// Test failover: downloads recovery point `cycle` of a disk into a local fixed VHD,
    /// without opening the disk (replication goes on). Returns the bytes downloaded.
    pub fn download_point(
        &self,
        key: &DiskKey,
        cycle: u64,
        out: &std::path::Path,
    ) -> Result<u64, SinkError> {
        key.validate()?;
        let pts = points::read_only_points(&self.container, key)?;
        let kept = pts.first().zip(pts.last());
        let kept = kept.map(|(a, b)| (a.0.cycle, b.0.cycle));
        let url = self.container.url(&format!("{}/{}.vhd", key.vm, key.disk));
        let (_, snap, size) = pts
            .into_iter()
            .find(|p| p.0.cycle == cycle)
            .ok_or_else(|| lifecycle::no_point(std::path::Path::new(&url), kept, cycle))?;
        points::download_snapshot(
            &self.container,
            &format!("{}/{}.vhd", key.vm, key.disk),
            &snap,
            size,
            out,
        )
    }

    /// Opens a disk, returning the concrete type.
    pub fn open_azure(
        &self,
        key: &DiskKey,
        virtual_size: u64,
        source_id: Guid,
    ) -> Result<AzureDisk, SinkError> {
        key.validate()?;
        AzureDisk::open(
            self.container.clone(),
            key.clone(),
            virtual_size,
            source_id,
            self.cfg.lease_secs.clamp(15, 60),
            self.cfg.max_parallel.max(1),
            self.cfg.max_pending,
        )
    }
}

fn bad_url(cfg: &AzureConfig, problem: String) -> SinkError {
    SinkError::Unsupported {
        path: cfg.account_url.clone().into(),
        offset: 0,
        problem,
    }
}

/// Container names: 3..=63 of `[a-z0-9-]`, starting and ending alphanumeric, no `--`.
fn validate_container(name: &str) -> Result<(), SinkError> {
    let ok = (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(SinkError::InvalidName {
            what: "container name",
            name: name.to_string(),
            problem: "is not a valid Azure container name (3 to 63 of [a-z0-9-], no leading, trailing or double dash)",
        })
    }
}

impl ReplicaStore for AzureStore {
    fn open_disk(
        &self,
        key: &DiskKey,
        virtual_size: u64,
        source_id: Guid,
    ) -> Result<Arc<dyn ReplicaDisk>, SinkError> {
        Ok(Arc::new(self.open_azure(key, virtual_size, source_id)?))
    }

    fn list_disks(&self, vm: Option<&str>) -> Result<Vec<DiskKey>, SinkError> {
        let prefix = match vm {
            Some(v) => {
                validate_name("VM name", v)?;
                format!("{v}/")
            }
            None => String::new(),
        };
        let items = self.container.list(&prefix, false).map_err(rest_err)?;
        let mut keys: Vec<DiskKey> = items
            .iter()
            .filter_map(|i| {
                let (v, rest) = i.name.split_once('/')?;
                let d = rest.strip_suffix(".state")?;
                DiskKey::new(v, d).ok()
            })
            .collect();
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    fn describe(&self) -> String {
        format!(
            "Azure container {} ({})",
            self.container
                .client
                .url(&format!("/{}", self.container.name)),
            self.container.client.credential_kind()
        )
    }

    fn point_reader(&self, key: &DiskKey) -> Result<Box<dyn PointReader>, SinkError> {
        key.validate()?;
        Ok(Box::new(AzurePointReader::open(
            self.container.clone(),
            key.clone(),
        )?))
    }

    fn remove_disk(&self, key: &DiskKey) -> Result<(), SinkError> {
        key.validate()?;
        reader::remove_disk(&self.container, key)?;
        // The VM's points go with its last disk.
        if self.list_disks(Some(&key.vm))?.is_empty() {
            vm_manifest::remove(&self.container, &key.vm)?;
        }
        Ok(())
    }

    fn record_job(&self, job: &crate::jobs::Job) -> Result<(), SinkError> {
        jobs::record(&self.container, job)
    }

    fn jobs(&self, vm: Option<&str>) -> Result<Vec<crate::jobs::Job>, SinkError> {
        jobs::list(&self.container, vm)
    }

    fn remove_jobs(&self, vm: &str) -> Result<(), SinkError> {
        jobs::remove(&self.container, vm)
    }

    fn upgrade(&self) -> Result<Option<String>, SinkError> {
        // No format marker on Azure: a VM without a manifest gets its earlier points.
        let vms = crate::sink::vm_points::migrate(self)?;
        Ok((!vms.is_empty()).then(|| {
            format!(
                "VM points from before VM-wide switches recorded for {}",
                vms.join(", ")
            )
        }))
    }

    fn vm_points(&self, vm: &str) -> Result<Option<crate::sink::vm_points::VmPoints>, SinkError> {
        vm_manifest::load(&self.container, vm)
    }

    fn update_vm_points(
        &self,
        vm: &str,
        f: &mut dyn FnMut(&mut crate::sink::vm_points::VmPoints, bool) -> Result<bool, SinkError>,
    ) -> Result<(), SinkError> {
        vm_manifest::update(&self.container, vm, f)
    }
}

/// Lease timing for tests: how long a killed receiver blocks its disk.
pub fn lease_expiry(cfg: &AzureConfig) -> Duration {
    Duration::from_secs(cfg.lease_secs.clamp(15, 60) as u64)
}
