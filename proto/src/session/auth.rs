//! Which sender may replicate which VMs: the receiver's authorisation table, an input of
//! every [`ReceiverSession`](super::ReceiverSession) (its sender's row of it).

use std::collections::{BTreeMap, BTreeSet};

/// Which sender (certificate name) may replicate which VMs (`--allow NAME=VM[,VM...]`).
/// A sender reaches only its own VMs' replicas and jobs, whatever it asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Authorizations {
    map: BTreeMap<String, BTreeSet<String>>,
}

impl Authorizations {
    /// Parses `NAME=VM[,VM...]` entries; a sender may appear in several.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let mut map: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for e in entries {
            let (name, vms) = e
                .split_once('=')
                .ok_or_else(|| format!("--allow {e:?}: expected NAME=VM[,VM...]"))?;
            let name = name.trim();
            if name.is_empty() {
                return Err(format!("--allow {e:?}: empty sender name"));
            }
            let set = map.entry(name.to_string()).or_default();
            for vm in vms.split(',').map(str::trim).filter(|v| !v.is_empty()) {
                set.insert(vm.to_string());
            }
        }
        Ok(Authorizations { map })
    }

    /// Whether `sender` may write `vm`.
    pub fn allows(&self, sender: &str, vm: &str) -> bool {
        self.map.get(sender).is_some_and(|s| s.contains(vm))
    }

    /// True when no sender is allowed anything.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Whether `sender` is known at all (unknown senders are refused at connection time).
    pub fn knows(&self, sender: &str) -> bool {
        self.map.contains_key(sender)
    }

    /// The VMs `sender` may write (empty for an unknown sender).
    pub fn vms_of(&self, sender: &str) -> BTreeSet<String> {
        self.map.get(sender).cloned().unwrap_or_default()
    }
}
