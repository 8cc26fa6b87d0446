//! The sender's local control channel (`vdrep send ... --control PATH`): a unix socket that
//! speaks JSON lines, one request and one answer per line. The sidecar is its client; so is
//! `socat` for an operator. Only processes that may open the socket file (mode 0600, owned
//! by the sender's user) can talk to it.
//!
//! Requests (`op`): `status`; `set_bandwidth` with `bytes_per_second` (null = no limit);
//! `resync` with `vm`; `protect` with `vm`, `disks` (or a qemu VM's `qmp` with optional
//! `drives` and `nbd`), `interval_seconds` and optionally `rpo_threshold_seconds`. Answers: `{"ok":true,...}` or `{"ok":false,"error":"..."}`.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tracing::{info, warn};

use super::disk::Shared;
use super::status::DiskStatus;
use super::SendError;

/// A request on the control channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Every disk's status and the sender's settings.
    Status,
    /// Changes the host's bandwidth limit at once (`None`: no limit).
    SetBandwidth {
        /// Bytes per second.
        bytes_per_second: Option<u64>,
    },
    /// Replaces the host's bandwidth schedule (the sidecar's policy, whole): the sender
    /// applies it itself, switching rates at work-hour boundaries and letting automatic
    /// resyncs wait for non-work hours, and keeps it in `STATE/bandwidth.json` so a restart
    /// applies it at once (it wins over the command line's bandwidth flags from then on).
    SetSchedule {
        /// The schedule.
        policy: crate::throttle::PolicyDocument,
    },
    /// Resynchronises every disk of a VM now.
    Resync {
        /// The VM.
        vm: String,
    },
    /// Protects a VM from now on (enable protection without a restart; see
    /// [`super::vmset`]): checks its disks, starts tracking, keeps it in the state folder.
    /// Asking again with the same disks is answered `already`; other disks are refused.
    Protect {
        /// The VM.
        vm: String,
        /// Absolute paths of its disk images, in disk order (empty for a qemu VM).
        #[serde(default)]
        disks: Vec<std::path::PathBuf>,
        /// Seconds between cycles.
        interval_seconds: u64,
        /// RPO above which the VM warns (`None`: twice the interval).
        #[serde(default)]
        rpo_threshold_seconds: Option<u64>,
        /// Recovery-point retention in hours (`None`: the sender's `--retention`).
        #[serde(default)]
        retention_hours: Option<u32>,
        /// Start of the initial replication, Unix seconds (`None`: at once).
        #[serde(default)]
        initial_replication_unix: Option<u64>,
        /// The consistency group the VM switches with (`None`: alone); refused when the
        /// group has 16 VMs or another interval.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<String>,
        /// A running qemu VM's QMP socket, instead of `disks` (`send --qmp`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        qmp: Option<std::path::PathBuf>,
        /// With `qmp`: `NODE[=NAME]` of the nodes to protect (`send --drive`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        drives: Vec<String>,
        /// With `qmp`: the VM's own NBD server socket (`send --nbd`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nbd: Option<std::path::PathBuf>,
    },
}

/// The sender's state as `status` reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SenderStatus {
    /// This sender's name.
    pub identity: String,
    /// The receiver.
    pub receiver: String,
    /// Process id (the sidecar notices a restarted sender by it).
    pub pid: u32,
    /// The current bandwidth limit (`None`: no limit).
    pub bandwidth_bytes_per_second: Option<u64>,
    /// The schedule the sidecar pushed, when it is the one in force (`None`: the command
    /// line's or config's policy, or a fixed rate set over this channel).
    #[serde(default)]
    pub bandwidth_schedule: Option<crate::throttle::PolicyDocument>,
    /// The policy in force, in words.
    #[serde(default)]
    pub bandwidth_policy: String,
    /// Whether it is work time under that policy now (automatic resyncs wait otherwise).
    #[serde(default)]
    pub work_hours_now: bool,
    /// Cycle interval in seconds (`None`: one initial copy).
    pub interval_seconds: Option<u64>,
    /// Every disk.
    pub disks: Vec<DiskStatus>,
    /// Each VM's health as the sender's health model reports it (`health.json`'s `vms`):
    /// the sidecar's `/v1/vms` shows these, not a view of its own.
    #[serde(default)]
    pub health: Vec<crate::health::VmHealth>,
    /// Each VM's enable-protection job in this run (prerequisite checks and their results).
    #[serde(default)]
    pub enable_jobs: Vec<crate::jobs::Job>,
}

/// Bounded request line: nothing legitimate comes near it.
const MAX_LINE: usize = 64 << 10;

/// Binds a Unix socket at `path` that is never reachable with a mode other than 0600: it
/// is bound inside a fresh 0700 folder beside `path` (so nobody else can reach it there, under
/// any umask), made 0600, then renamed over `path` (replacing a stale socket atomically).
/// Binding at `path` and chmod'ing afterwards left it open to every local user in between.
/// Process-wide `umask` is not an option: the runtime's other threads create files meanwhile.
fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let parent = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let dir = parent.join(format!(
        ".{}.{:016x}",
        name.as_deref().unwrap_or("control"),
        rand::random::<u64>()
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let tmp = dir.join("s");
    let bound = UnixListener::bind(&tmp).and_then(|l| {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&tmp, path)?;
        Ok(l)
    });
    let _ = std::fs::remove_file(&tmp);
    let _ = std::fs::remove_dir(&dir);
    bound
}

/// Binds `path` (replacing a stale socket) and answers requests until aborted.
pub fn serve(path: &Path, sh: Arc<Shared>) -> Result<tokio::task::JoinHandle<()>, SendError> {
    let err =
        |e: std::io::Error| SendError::Internal(format!("control socket {}: {e}", path.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let listener = bind_private(path).map_err(err)?;
    info!(path = %path.display(), "control channel ready");
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let sh = sh.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut lines = BufReader::new(r.take(MAX_LINE as u64 * 64)).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let answer = if line.len() > MAX_LINE {
                        serde_json::json!({"ok": false, "error": "request too long"})
                    } else {
                        match serde_json::from_str::<Request>(&line) {
                            Ok(req) => answer(req, &sh).await,
                            Err(e) => {
                                serde_json::json!({"ok": false, "error": format!("bad request: {e}")})
                            }
                        }
                    };
                    let mut out = answer.to_string();
                    out.push('\n');
                    if w.write_all(out.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    }))
}

use tokio::io::AsyncReadExt as _;

async fn answer(req: Request, sh: &Arc<Shared>) -> serde_json::Value {
    match req {
        Request::Status => {
            let st = SenderStatus {
                identity: sh.opts.identity.clone(),
                receiver: sh.peer.clone(),
                pid: std::process::id(),
                bandwidth_bytes_per_second: sh.throttle.rate(),
                bandwidth_schedule: sh
                    .board
                    .schedule()
                    .filter(|p| p.policy() == sh.bandwidth.policy()),
                bandwidth_policy: sh.bandwidth.policy().to_string(),
                work_hours_now: sh
                    .bandwidth
                    .policy()
                    .is_work_time(sh.bandwidth.clock().now_utc()),
                interval_seconds: sh.board.interval().map(|i| i.as_secs()),
                disks: sh.board.disks(&sh.health),
                health: sh.health.report().vms,
                enable_jobs: sh.jobs.enable_jobs(),
            };
            serde_json::json!({"ok": true, "status": st})
        }
        Request::SetBandwidth { bytes_per_second } => {
            // Through the policy: a direct rate would be undone by the schedule's next tick.
            sh.bandwidth
                .set_policy(crate::throttle::BandwidthPolicy::Fixed(bytes_per_second));
            sh.board.set_schedule(None);
            sh.health.set_bandwidth(sh.bandwidth.policy().to_string());
            info!(
                ?bytes_per_second,
                "bandwidth limit changed over the control channel"
            );
            serde_json::json!({"ok": true, "bandwidth_bytes_per_second": bytes_per_second})
        }
        Request::Protect {
            vm,
            disks,
            interval_seconds,
            rpo_threshold_seconds,
            retention_hours,
            initial_replication_unix,
            group,
            qmp,
            drives,
            nbd,
        } => {
            let Some(set) = sh.vms.clone() else {
                return serde_json::json!({"ok": false, "error":
                    "this sender makes one initial copy (no --interval): start it with --interval to protect VMs"});
            };
            let req = super::vmset::AddedVm {
                vm: vm.clone(),
                disks,
                interval_seconds,
                rpo_threshold_seconds,
                retention_hours,
                initial_replication_unix,
                group,
                qmp,
                drives,
                nbd,
            };
            // Disks open and qemu's checks talk QMP: off the runtime's threads.
            let sh = sh.clone();
            let added =
                tokio::task::spawn_blocking(move || super::vmset::add(&sh, &set, req)).await;
            match added.unwrap_or_else(|e| Err(format!("protection task: {e}"))) {
                Ok(super::vmset::Added::Started(d)) => {
                    serde_json::json!({"ok": true, "disks": d, "already": false})
                }
                Ok(super::vmset::Added::Already(d)) => {
                    serde_json::json!({"ok": true, "disks": d, "already": true})
                }
                Err(e) => {
                    warn!(%vm, error = %e, "protection request refused");
                    serde_json::json!({"ok": false, "error": e})
                }
            }
        }
        Request::SetSchedule { policy } => {
            if let Err(e) = policy.validate() {
                return serde_json::json!({"ok": false, "error": e});
            }
            apply_schedule(sh, policy.clone());
            if let Err(e) = save_schedule(&sh.state, &policy) {
                warn!(error = %e, "cannot keep the bandwidth schedule in the state folder");
            }
            info!(policy = %sh.bandwidth.policy(), "bandwidth schedule set over the control channel");
            serde_json::json!({"ok": true, "bandwidth_bytes_per_second": sh.throttle.rate()})
        }
        Request::Resync { vm } => match sh.board.request_resync(&vm) {
            Ok(disks) => {
                info!(%vm, ?disks, "resync requested over the control channel");
                serde_json::json!({"ok": true, "disks": disks})
            }
            Err(e) => {
                warn!(%vm, error = %e, "resync request refused");
                serde_json::json!({"ok": false, "error": e})
            }
        },
    }
}

/// The file that keeps the pushed schedule in the state folder.
pub const SCHEDULE_FILE: &str = "bandwidth.json";

/// Applies a pushed schedule (throttle, status, health report).
pub fn apply_schedule(sh: &Shared, policy: crate::throttle::PolicyDocument) {
    sh.bandwidth.set_policy(policy.policy());
    sh.health.set_bandwidth(sh.bandwidth.policy().to_string());
    sh.board.set_schedule(Some(policy));
}

fn save_schedule(state: &Path, policy: &crate::throttle::PolicyDocument) -> std::io::Result<()> {
    std::fs::create_dir_all(state)?;
    let tmp = state.join(".bandwidth.json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(policy).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(&tmp, state.join(SCHEDULE_FILE))
}

/// The schedule a sidecar pushed to an earlier run, if any (an unreadable file is logged
/// and ignored: the command line's policy holds until the sidecar pushes again).
pub fn load_schedule(state: &Path) -> Option<crate::throttle::PolicyDocument> {
    let path = state.join(SCHEDULE_FILE);
    let b = std::fs::read(&path).ok()?;
    match serde_json::from_slice::<crate::throttle::PolicyDocument>(&b) {
        Ok(p) if p.validate().is_ok() => Some(p),
        Ok(_) | Err(_) => {
            warn!(file = %path.display(), "ignoring an invalid pushed bandwidth schedule");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::bind_private;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    #[tokio::test]
    async fn the_control_socket_appears_at_its_path_already_0600_replacing_a_stale_one() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("control");
        std::fs::write(&path, b"stale").unwrap();
        let l = bind_private(&path).unwrap();
        let m = std::fs::symlink_metadata(&path).unwrap();
        assert!(m.file_type().is_socket());
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        // The private folder it was bound in is gone; only the socket is left.
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["control"]);
        // Reachable at its final path.
        let c = tokio::net::UnixStream::connect(&path).await.unwrap();
        let (_s, _) = l.accept().await.unwrap();
        drop(c);
    }
}
