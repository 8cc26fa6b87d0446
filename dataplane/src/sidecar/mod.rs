//! `vdrep sidecar`: the control API beside the sender (DESIGN.md §1, §7, §8).
//!
//! An HTTP/JSON API (loopback by default; state-changing calls need the bearer token from
//! `--token-file`) over VMs and disks with their health, RPO and progress, jobs with steps
//! and errors, the bandwidth and replication policies, and requests for resync, test
//! failover and protection. The sender does the data work; the sidecar reaches it over its
//! local control channel every second ([`client`]), pushes the bandwidth schedule to a
//! sender that does not run it yet (the sender applies and keeps it itself), hands VMs to
//! protect and unfinished requests to the sender (again after its restart), and keeps jobs and policies in
//! `--state DIR` ([`state`]) so its own restart loses nothing.
//!
//! The OpenAPI description is `ops/openapi.json`, compiled in and served at `/openapi.json`.
//! The operator's console, a page over this API, is served at `/` (`console.rs`); with
//! `--read-token-file` the API's reads need a token too (`auth.rs`).

mod api;
mod auth;
pub mod client;
mod console;
pub mod failover;
mod job_view;
mod jobs;
mod points;
pub mod policy;
pub mod state;
mod target;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{info, warn};

use crate::metrics::events;
use crate::sender::local_control::SenderStatus;
use client::SenderClient;
use state::{State, Store};

/// The OpenAPI description of the API (`ops/openapi.json`).
pub const OPENAPI: &str = include_str!("../../../ops/openapi.json");

/// What `vdrep sidecar` needs.
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    /// TCP address of the API.
    pub listen: SocketAddr,
    /// The sender's control socket.
    pub sender_control: PathBuf,
    /// The bearer token for state-changing calls.
    pub token: String,
    /// The token the API's reads need (`None`: reads are open); the write token reads too.
    pub read_token: Option<String>,
    /// Folder of the durable state.
    pub state: PathBuf,
    /// Where test failovers run (`None`: the sidecar cannot read the store).
    pub failover: Option<failover::FailoverTarget>,
}

/// The running sidecar's shared state.
pub struct Sidecar {
    store: Store,
    state: Mutex<State>,
    client: SenderClient,
    /// BLAKE3 of the bearer token: requests are compared digest to digest (32 bytes, in
    /// constant time), so neither the token's bytes nor its length show in response times.
    token: blake3::Hash,
    /// BLAKE3 of the `--read-token-file` token, compared the same way.
    read_token: Option<blake3::Hash>,
    /// The sender's last status and when it was fetched.
    status: Mutex<Option<(SenderStatus, u64)>>,
    sender_up: AtomicBool,
    /// The bandwidth schedule last pushed: (sender pid, schedule).
    applied: Mutex<Option<(u32, crate::throttle::PolicyDocument)>>,
    failover: Option<failover::FailoverTarget>,
    /// Jobs whose work runs in a task now (test failovers).
    running: Mutex<std::collections::HashSet<String>>,
}

impl Sidecar {
    /// Loads the state and prepares the client.
    pub fn open(cfg: &SidecarConfig) -> Result<Arc<Self>, String> {
        let (store, state) = Store::open(&cfg.state)?;
        Ok(Arc::new(Sidecar {
            store,
            state: Mutex::new(state),
            client: SenderClient::new(&cfg.sender_control),
            token: blake3::hash(cfg.token.as_bytes()),
            read_token: cfg.read_token.as_ref().map(|t| blake3::hash(t.as_bytes())),
            status: Mutex::new(None),
            sender_up: AtomicBool::new(false),
            applied: Mutex::new(None),
            failover: cfg.failover.clone(),
            running: Mutex::new(Default::default()),
        }))
    }

    /// Runs `f` on the state and saves it.
    fn update<T>(&self, f: impl FnOnce(&mut State) -> T) -> Result<T, String> {
        let mut g = self.state.lock().map_err(|_| "state lock poisoned")?;
        let out = f(&mut g);
        self.store.save(&mut g)?;
        Ok(out)
    }

    fn read<T>(&self, f: impl FnOnce(&State) -> T) -> Option<T> {
        self.state.lock().ok().map(|g| f(&g))
    }

    fn cached_status(&self) -> Option<(SenderStatus, u64)> {
        self.status.lock().ok()?.clone()
    }

    /// One round: poll the sender, apply the bandwidth policy, advance jobs, export
    /// metrics.
    pub async fn tick(self: &Arc<Self>) {
        let now = events::now_unix();
        match self.client.status().await {
            Ok(st) => {
                if !self.sender_up.swap(true, Ordering::Relaxed) {
                    info!(pid = st.pid, "sender reachable");
                }
                if let Ok(mut s) = self.status.lock() {
                    *s = Some((st, now));
                }
            }
            Err(e) => {
                if self.sender_up.swap(false, Ordering::Relaxed) {
                    warn!(error = %e, "sender unreachable; jobs and policy wait for it");
                }
            }
        }
        let up = self.sender_up.load(Ordering::Relaxed);
        events::sender_up(up);
        if up {
            self.apply_bandwidth().await;
        }
        jobs::advance(self, now, up).await;
        if let Some(counts) = self.read(|s| {
            state::JobState::ALL.map(|st| {
                (
                    st.as_str(),
                    s.jobs.iter().filter(|j| j.record.state == st).count(),
                )
            })
        }) {
            events::jobs(&counts);
        }
    }

    /// Pushes the bandwidth schedule, whole, to a sender that does not run it yet (a new
    /// policy, or a sender that never had it): the sender applies it itself from then on,
    /// at every work-hour boundary, and keeps it across its restarts.
    async fn apply_bandwidth(&self) {
        let Some((st, _)) = self.cached_status() else {
            return;
        };
        let Some(want) = self.read(|s| s.bandwidth.clone()) else {
            return;
        };
        let pushed = self.applied.lock().ok().and_then(|a| a.clone());
        if st.bandwidth_schedule.as_ref() == Some(&want) || pushed == Some((st.pid, want.clone())) {
            return;
        }
        let req = crate::sender::local_control::Request::SetSchedule {
            policy: want.clone(),
        };
        match self.client.call(&req).await {
            Ok(ans) => {
                info!(pid = st.pid, policy = %want.policy(), "bandwidth schedule pushed to the sender");
                if let Ok(mut a) = self.applied.lock() {
                    *a = Some((st.pid, want.clone()));
                }
                // The view follows at once, not at the next status poll.
                if let Ok(mut s) = self.status.lock() {
                    if let Some((st, _)) = s.as_mut().filter(|(x, _)| x.pid == st.pid) {
                        st.bandwidth_schedule = Some(want.clone());
                        st.bandwidth_policy = want.policy().to_string();
                        st.bandwidth_bytes_per_second = ans["bandwidth_bytes_per_second"].as_u64();
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot push the bandwidth schedule; retrying"),
        }
    }

    /// Hands a changed replication policy (interval, RPO threshold) to the sender for a VM
    /// enabled through the API with its disks; the next enable-protection hand-over carries
    /// it anyway, so a sender that is down now gets it then (or at its next request).
    async fn push_policy(&self, vm: &str, p: &policy::ReplicationPolicy) {
        let target = self
            .read(|s| {
                s.jobs
                    .iter()
                    .rev()
                    .filter(|j| {
                        j.record.vm == vm
                            && j.record.kind == state::JobKind::EnableProtection
                            && j.record.state != state::JobState::Failed
                    })
                    .map(|j| target::Target::of_result(j.result.as_ref()))
                    .find(|t| !t.is_empty())
            })
            .flatten();
        let Some(target) = target else { return };
        let listed = self
            .cached_status()
            .is_some_and(|(st, _)| st.disks.iter().any(|d| d.vm == vm));
        if !listed {
            return;
        }
        let req = target.request(vm, p);
        match self.client.call(&req).await {
            Ok(_) => {
                info!(%vm, interval_s = p.interval_seconds, "replication policy handed to the sender")
            }
            Err(e) => warn!(%vm, error = %e, "cannot hand the replication policy to the sender"),
        }
    }

    /// Forgets what was applied, so the next tick applies the policy again.
    fn policy_changed(&self) {
        if let Ok(mut a) = self.applied.lock() {
            *a = None;
        }
    }
}

/// Serves the API on `cfg.listen` until SIGTERM/SIGINT; prints `sidecar on ADDR` once bound.
pub async fn run(cfg: SidecarConfig) -> anyhow::Result<()> {
    let sc = Sidecar::open(&cfg).map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.listen))?;
    let local = listener.local_addr()?;
    if !local.ip().is_loopback() {
        warn!(listen = %local, "the API listens beyond loopback: protect it (firewall, TLS proxy)");
    }
    let ticker = {
        let sc = sc.clone();
        tokio::spawn(async move {
            loop {
                sc.tick().await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    let app = api::router(sc.clone());
    info!(listen = %local, state = %cfg.state.display(), "sidecar ready");
    println!("sidecar on {local}");
    let serve = axum::serve(listener, app).with_graceful_shutdown(crate::signals::shutdown());
    let res = serve.await;
    ticker.abort();
    res.map_err(|e| anyhow::anyhow!("API server: {e}"))
}
