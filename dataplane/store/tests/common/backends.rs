//! The backends of the store conformance suite. Each gives store instances on one storage:
//! a second [`Backend::store`] is another receiver on the same disks (locks, leases and
//! takeover are part of the contract).

use std::sync::Arc;
use std::time::Duration;

use vdrep_store::sink::azure::rest::RetryPolicy;
use vdrep_store::sink::azure::{AzureConfig, AzureStore};
use vdrep_store::sink::fault::{FaultPlan, FaultStore};
use vdrep_store::sink::local::LocalStore;
use vdrep_store::sink::ReplicaStore;

use super::azurite::Azurite;

/// Storage that store instances are opened on.
pub trait Backend {
    /// A new store instance on this backend's storage.
    fn store(&self) -> Arc<dyn ReplicaStore>;
}

/// The local store in a temporary directory.
pub struct Local {
    dir: tempfile::TempDir,
}

impl Local {
    /// A fresh, empty store directory.
    pub fn new() -> Local {
        Local {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
}

impl Backend for Local {
    fn store(&self) -> Arc<dyn ReplicaStore> {
        Arc::new(LocalStore::open(self.dir.path()).expect("open the local store"))
    }
}

/// The Azure sink on a container of an Azurite started for the test (killed on drop).
pub struct Azure {
    az: Azurite,
}

impl Azure {
    /// Starts Azurite (fails with the install hint, `bash ops/setup.sh`, when it is
    /// missing).
    pub fn start() -> Azure {
        Azure {
            az: Azurite::start(),
        }
    }
}

impl Backend for Azure {
    fn store(&self) -> Arc<dyn ReplicaStore> {
        let mut c = AzureConfig::new(&self.az.url(), "conformance");
        c.sas = Some(format!("?{}", self.az.sas()));
        c.retry = RetryPolicy {
            give_up_after: Duration::from_secs(30),
            ..RetryPolicy::default()
        };
        Arc::new(AzureStore::open(c).expect("open the Azure store on Azurite"))
    }
}

/// The fault-injecting wrapper over the local store, with no fault planned: it must be
/// transparent (every call forwarded, defaults included).
pub struct Fault {
    local: Local,
    /// The plan shared by every store instance (tests may add faults).
    pub plan: FaultPlan,
}

impl Fault {
    /// A wrapper over a fresh local store.
    pub fn new() -> Fault {
        Fault {
            local: Local::new(),
            plan: FaultPlan::new(),
        }
    }
}

impl Backend for Fault {
    fn store(&self) -> Arc<dyn ReplicaStore> {
        Arc::new(FaultStore::new(self.local.store(), self.plan.clone()))
    }
}
