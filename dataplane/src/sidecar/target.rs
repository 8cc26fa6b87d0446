//! What an enable-protection request names to protect, besides its policy: the VM's disk
//! images (`disks`), or a running qemu VM (`qmp`, with optional `drives` and `nbd`, as
//! `vdrep send --qmp --drive --nbd` takes them). The job keeps it in its result, so a
//! restarted sidecar hands the same VM to the sender, and a policy change is handed over
//! with it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::policy::ReplicationPolicy;
use crate::sender::local_control::Request;

/// The disks of a VM to protect, as an enable-protection request names them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// Absolute paths of the VM's disk images on the sender's host, in disk order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<String>,
    /// A running qemu VM's QMP socket on the sender's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qmp: Option<String>,
    /// With `qmp`: the nodes to protect, `NODE[=NAME]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drives: Vec<String>,
    /// With `qmp`: the NBD server socket the VM already runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbd: Option<String>,
}

/// Most disks (or drives) per VM.
const MAX_DISKS: usize = 64;

/// Longest path (the API description's `maxLength`).
const MAX_PATH: usize = 4096;

fn absolute(what: &str, p: &str) -> Result<(), String> {
    if !Path::new(p).is_absolute() || p.contains('\0') {
        return Err(format!(
            "{what}: {p:?} is not an absolute path on the sender's host"
        ));
    }
    if p.chars().count() > MAX_PATH {
        return Err(format!("{what}: a path has at most {MAX_PATH} characters"));
    }
    Ok(())
}

/// qemu's rule for node-names (a letter, then up to 30 letters, digits, `-`, `.`, `_`): a
/// drive naming anything else can match no node, and the API description says the same.
fn node_name(d: &str) -> Result<(), String> {
    let node = d.split_once('=').map_or(d, |(n, _)| n);
    let mut b = node.bytes();
    let ok = node.len() <= 31
        && b.next().is_some_and(|c| c.is_ascii_alphabetic())
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'));
    if !ok {
        return Err(format!(
            "drives: {d:?}: a node-name is a letter followed by up to 30 letters, digits, '-', '.' or '_'"
        ));
    }
    Ok(())
}

impl Target {
    /// Nothing named: the VM must be one the sender protects already.
    pub fn is_empty(&self) -> bool {
        self.disks.is_empty() && self.qmp.is_none()
    }

    /// Takes `disks`, `qmp`, `drives` and `nbd` out of a request body (the rest is the
    /// policy) and checks them: absolute paths, none twice, disk images or a qemu VM but
    /// not both, `drives` and `nbd` only with `qmp`. The error is the 400's message.
    pub fn take(body: &mut serde_json::Map<String, serde_json::Value>) -> Result<Target, String> {
        let mut t = serde_json::Map::new();
        for k in ["disks", "qmp", "drives", "nbd"] {
            if let Some(v) = body.remove(k) {
                // null is no value here (the API description has none): refused, not
                // taken for "omitted".
                if v.is_null() {
                    return Err(format!("invalid body: {k}: null (omit it instead)"));
                }
                t.insert(k.to_string(), v);
            }
        }
        let t: Target = serde_json::from_value(serde_json::Value::Object(t))
            .map_err(|e| format!("invalid body: {e}"))?;
        t.check()?;
        Ok(t)
    }

    fn check(&self) -> Result<(), String> {
        if self.disks.len() > MAX_DISKS {
            return Err(format!("disks: at most {MAX_DISKS} disks per VM"));
        }
        for (i, d) in self.disks.iter().enumerate() {
            absolute("disks", d)?;
            if self.disks[..i].contains(d) {
                return Err(format!("disks: {d:?} is named twice"));
            }
        }
        match &self.qmp {
            None if !self.drives.is_empty() || self.nbd.is_some() => {
                return Err(
                    "drives and nbd name a qemu VM's nodes and NBD socket: give its QMP socket (qmp) too"
                        .into(),
                )
            }
            None => {}
            Some(_) if !self.disks.is_empty() => {
                return Err(
                    "name either disk images (disks) or a running qemu VM's QMP socket (qmp), not both"
                        .into(),
                )
            }
            Some(q) => absolute("qmp", q)?,
        }
        if let Some(n) = &self.nbd {
            absolute("nbd", n)?;
        }
        if self.drives.len() > MAX_DISKS {
            return Err(format!("drives: at most {MAX_DISKS} drives per VM"));
        }
        for (i, d) in self.drives.iter().enumerate() {
            node_name(d)?;
            d.parse::<crate::sender::qemu::Drive>()
                .map_err(|e| format!("drives: {e}"))?;
            if self.drives[..i].contains(d) {
                return Err(format!("drives: {d:?} is named twice"));
            }
        }
        Ok(())
    }

    /// The target a job recorded (none: the sender's own VM).
    pub fn of_result(result: Option<&serde_json::Value>) -> Target {
        result
            .and_then(|r| serde_json::from_value(r.clone()).ok())
            .unwrap_or_default()
    }

    /// The protection request handing `vm` with this target and policy `p` to the sender.
    pub fn request(&self, vm: &str, p: &ReplicationPolicy) -> Request {
        Request::Protect {
            vm: vm.to_string(),
            disks: self.disks.iter().map(PathBuf::from).collect(),
            interval_seconds: p.interval_seconds,
            rpo_threshold_seconds: Some(p.rpo_threshold_seconds),
            retention_hours: Some(p.retention_hours),
            initial_replication_unix: p.initial_replication_unix,
            group: p.group.clone(),
            qmp: self.qmp.as_ref().map(PathBuf::from),
            drives: self.drives.clone(),
            nbd: self.nbd.as_ref().map(PathBuf::from),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn take(v: serde_json::Value) -> Result<Target, String> {
        let mut m = v.as_object().unwrap().clone();
        let t = Target::take(&mut m);
        assert!(
            !m.contains_key("qmp") && !m.contains_key("disks"),
            "the policy keeps none of them"
        );
        t
    }

    #[test]
    fn a_request_names_disk_images_or_a_qemu_vm_with_its_drives_never_both() {
        let t = take(json!({"qmp": "/run/db.qmp", "drives": ["os0=os", "data0"],
                            "nbd": "/run/db.nbd", "interval_seconds": 30}))
        .unwrap();
        assert_eq!(t.qmp.as_deref(), Some("/run/db.qmp"));
        assert_eq!(t.drives, ["os0=os", "data0"]);
        let e = take(json!({"qmp": "/q", "disks": ["/a.vhdx"]})).unwrap_err();
        assert!(e.contains("not both"), "{e}");
        let e = take(json!({"drives": ["os0"]})).unwrap_err();
        assert!(e.contains("qmp"), "{e}");
        let e = take(json!({"qmp": "run/db.qmp"})).unwrap_err();
        assert!(e.contains("absolute"), "{e}");
        let e = take(json!({"qmp": "/q", "drives": ["os0", "os0"]})).unwrap_err();
        assert!(e.contains("twice"), "{e}");
        let e = take(json!({"qmp": "/q", "drives": ["n=../x"]})).unwrap_err();
        assert!(e.contains("drives"), "{e}");
        let e = take(json!({"qmp": "/q", "drives": ["1os"]})).unwrap_err();
        assert!(e.contains("node-name"), "{e}");
        assert!(take(json!({"interval_seconds": 30})).unwrap().is_empty());
        // null is not "omitted" (schemathesis found `{"nbd": null}` accepted).
        let e = take(json!({"nbd": null})).unwrap_err();
        assert!(e.contains("null"), "{e}");
    }

    #[test]
    fn a_recorded_target_becomes_the_senders_protect_request() {
        let t = take(json!({"qmp": "/run/db.qmp", "drives": ["os0"]})).unwrap();
        let back = Target::of_result(Some(&serde_json::to_value(&t).unwrap()));
        assert_eq!(back, t);
        let Request::Protect {
            qmp, drives, disks, ..
        } = back.request("db", &ReplicationPolicy::default())
        else {
            panic!("not a protect request")
        };
        assert_eq!(qmp.as_deref(), Some(Path::new("/run/db.qmp")));
        assert_eq!((drives.len(), disks.len()), (1, 0));
        // A job of an older sidecar recorded only disks.
        let old = Target::of_result(Some(&json!({"disks": ["/a.vhdx"]})));
        assert_eq!(old.disks, ["/a.vhdx"]);
    }
}
