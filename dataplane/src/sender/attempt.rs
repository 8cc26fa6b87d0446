//! One connection to the receiver: connect with a bounded wait, run the mode's VMs on it
//! (the protected set, [`super::vmset::run_all`]; or one copy per disk,
//! [`super::oneshot`]), and close it with the outcome. The reconnect loop around it
//! ([`super::run_controlled`]) decides what a failed attempt means.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::info;

use super::{oneshot, vmset, DiskJob, Mode, SendError, Shared};

/// The receiver's address and the host name its certificate is checked against.
pub(super) fn resolve(to: &str) -> Result<(SocketAddr, String), SendError> {
    let addr = to
        .to_socket_addrs()
        .map_err(|e| SendError::Resolve(format!("{to}: {e}")))?
        .next()
        .ok_or_else(|| SendError::Resolve(to.to_string()))?;
    let host = to
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(to)
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok((addr, host))
}

/// Longest wait for a handshake. QUIC ignores ICMP, so an unreachable receiver would only
/// show as the 15 s idle timeout; a shorter bound keeps reconnects fast and lets
/// `--give-up-after` be honoured within about a second.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One attempt: connects to `addr` (waiting up to [`CONNECT_TIMEOUT`], less near
/// `deadline`), sets `connected` once the handshake is done (a connection lost later is a
/// new outage for the retry schedule), and runs `mode`'s VMs on the connection until they
/// end or one fails.
#[allow(clippy::too_many_arguments)]
pub(super) async fn attempt_once(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    server_name: &str,
    jobs: &[Vec<DiskJob>],
    sh: &Arc<Shared>,
    mode: &Mode,
    deadline: Instant,
    connected: &mut bool,
) -> Result<(), SendError> {
    let peer = sh.peer.as_str();
    let connecting = endpoint
        .connect(addr, server_name)
        .map_err(|e| SendError::Connect {
            peer: peer.to_string(),
            source: e,
        })?;
    let wait = CONNECT_TIMEOUT
        .min(deadline.saturating_duration_since(crate::clock::std_now()))
        .max(Duration::from_millis(500));
    let conn = match tokio::time::timeout(wait, connecting).await {
        Ok(r) => r,
        Err(_) => Err(quinn::ConnectionError::TimedOut),
    }
    .map_err(|e| SendError::Connection {
        peer: peer.to_string(),
        source: e,
    })?;
    info!(receiver = %peer, "connected");
    *connected = true;
    let _meter = crate::throttle::wire::MeterGuard::start(&conn, &sh.throttle);
    let _window = crate::transport::SendWindowGuard::start(&conn);
    sh.board.connected(&conn);
    let mut vms = tokio::task::JoinSet::new();
    let done = match mode {
        Mode::OneShot(d) => d,
        Mode::Protect(set) => {
            let res = vmset::run_all(&conn, set, sh).await;
            conn.close(
                0u32.into(),
                if res.is_ok() {
                    b"done"
                } else {
                    b"sender error"
                },
            );
            return res;
        }
    };
    for vm_jobs in jobs {
        let conn = conn.clone();
        let jobs: Vec<DiskJob> = vm_jobs.to_vec();
        let sh = sh.clone();
        let done = done.clone();
        vms.spawn(async move { oneshot::copy_vm(&conn, jobs, &sh, &done).await });
    }
    finish_vms(vms, conn).await
}

/// Waits for the VM tasks of an attempt; the first error aborts the others.
async fn finish_vms(
    mut vms: tokio::task::JoinSet<Result<(), SendError>>,
    conn: quinn::Connection,
) -> Result<(), SendError> {
    let mut first_err = None;
    while let Some(r) = vms.join_next().await {
        let r = r.unwrap_or_else(|e| Err(SendError::Internal(format!("VM task: {e}"))));
        if let Err(e) = r {
            if first_err.is_none() {
                first_err = Some(e);
                vms.abort_all();
            }
        }
    }
    match first_err {
        Some(e) => {
            conn.close(0u32.into(), b"sender error");
            Err(e)
        }
        None => {
            tracing::debug!(stats = ?conn.stats(), "connection statistics at close");
            conn.close(0u32.into(), b"done");
            Ok(())
        }
    }
}
