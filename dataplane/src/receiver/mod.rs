//! The receiver: a QUIC server that authenticates senders by certificate, authorises each
//! for its own VMs, verifies every extent's BLAKE3 and writes replicas through a
//! [`ReplicaStore`](crate::sink::ReplicaStore).

mod batch;
mod control;
mod disk;
mod disk_set;
mod effects;
mod groups;
pub mod limits;
pub mod test_hook;
pub mod windows;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tracing::{info, warn};

use crate::sink::ReplicaStore;

pub use disk::DiskSession;
/// The authorisation table is protocol input: it lives with the sessions in `vdrep_proto`.
pub use vdrep_proto::session::Authorizations;

/// Everything a receiver needs.
pub struct ReceiverConfig {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Folder with `ca.pem`, `receiver.pem`, `receiver.key`.
    pub tls: PathBuf,
    /// Sender → VMs.
    pub allow: Authorizations,
    /// Most disks one connection may hold open ([`DEFAULT_MAX_DISKS_PER_CONNECTION`]).
    pub max_disks_per_connection: usize,
    /// Most authorised connections served at once (`--max-connections`).
    pub max_connections: usize,
}

/// Default of `--max-disks-per-connection`. A connection opening more is refused by its
/// protocol session (non-recoverable, the message names the limit), so one sender cannot
/// make the receiver hold an unbounded number of replicas open.
pub use vdrep_proto::session::receiver::DEFAULT_MAX_DISKS_PER_CONNECTION;

/// Shared state of a running receiver.
pub struct Receiver {
    pub(crate) store: Arc<dyn ReplicaStore>,
    pub(crate) allow: Authorizations,
    pub(crate) stats: Arc<ReceiverStats>,
    /// Connections being served, for draining at shutdown.
    pub(crate) active: std::sync::atomic::AtomicUsize,
    pub(crate) idle: tokio::sync::Notify,
    /// Which connection has each disk (`VM/NAME`) open, so a sender that reconnects after a
    /// crash can take its disks over from its own dead connection at once instead of waiting
    /// for the idle timeout to release them.
    pub(crate) holders: std::sync::Mutex<std::collections::HashMap<String, Holder>>,
    /// See [`ReceiverConfig::max_disks_per_connection`].
    pub(crate) max_disks_per_connection: std::sync::atomic::AtomicUsize,
    /// Which connection protects each consistency group ([`groups`]).
    pub(crate) groups: std::sync::Mutex<std::collections::HashMap<String, groups::GroupHolder>>,
    /// Connection admission and the shared memory budgets.
    pub(crate) limits: limits::Limits,
    /// The TLS configuration new connections are accepted with (renewed with the
    /// certificate), each with its own windows ([`windows`]); without one, connections get
    /// the endpoint's configuration.
    tls: std::sync::RwLock<Option<quinn::ServerConfig>>,
}

/// The connection holding a disk open.
pub(crate) struct Holder {
    pub(crate) sender: String,
    pub(crate) conn: quinn::Connection,
}

/// Counters of a receiver.
#[derive(Debug, Default)]
pub struct ReceiverStats {
    /// Connections refused at the TLS handshake or for an unknown sender.
    pub refused_peers: std::sync::atomic::AtomicU64,
    /// Requests refused because the sender is not allowed the VM.
    pub unauthorized: std::sync::atomic::AtomicU64,
    /// Extents refused for a BLAKE3 mismatch.
    pub hash_mismatches: std::sync::atomic::AtomicU64,
    /// Bytes written to replicas.
    pub written: std::sync::atomic::AtomicU64,
    /// Requests, batches and streams refused (each also counted by class in
    /// `vdrep_refusals_total`).
    pub refusals: std::sync::atomic::AtomicU64,
}

impl Receiver {
    /// A receiver over `store` with the default connection limit.
    pub fn new(store: Arc<dyn ReplicaStore>, allow: Authorizations) -> Arc<Self> {
        Self::with_limits(store, allow, limits::DEFAULT_MAX_CONNECTIONS)
    }

    /// A receiver over `store` serving at most `max_connections` connections at once.
    pub fn with_limits(
        store: Arc<dyn ReplicaStore>,
        allow: Authorizations,
        max_connections: usize,
    ) -> Arc<Self> {
        Arc::new(Receiver {
            store,
            allow,
            stats: Arc::new(ReceiverStats::default()),
            active: std::sync::atomic::AtomicUsize::new(0),
            idle: tokio::sync::Notify::new(),
            holders: Default::default(),
            limits: limits::Limits::new(max_connections),
            max_disks_per_connection: DEFAULT_MAX_DISKS_PER_CONNECTION.into(),
            groups: Default::default(),
            tls: std::sync::RwLock::new(None),
        })
    }

    /// Sets how many disks one connection may hold open (at least 1).
    pub fn set_max_disks_per_connection(&self, n: usize) {
        self.max_disks_per_connection
            .store(n.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts and logs a refusal of class `class` (an [`ErrorClass`](vdrep_proto::wire::ErrorClass)
    /// name, or `connection_limit`).
    pub(crate) fn refused(&self, sender: &str, class: &'static str, what: &str) {
        self.stats
            .refusals
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        crate::metrics::events::refusal(class);
        warn!(sender, class, reason = what, "refused");
    }

    /// Counters.
    pub fn stats(&self) -> &ReceiverStats {
        &self.stats
    }

    /// Sets the TLS configuration of the connections accepted from now on: each gets its
    /// own receive windows from the receiver's budget (see [`windows`]).
    pub fn set_server_config(&self, cfg: quinn::ServerConfig) {
        if let Ok(mut t) = self.tls.write() {
            *t = Some(cfg);
        }
    }

    /// The configuration of a connection with `limits`, from the TLS configuration set by
    /// [`Receiver::set_server_config`].
    fn connection_config(&self, t: windows::TransportLimits) -> Option<Arc<quinn::ServerConfig>> {
        let base = self.tls.read().ok()?.clone()?;
        Some(t.server_bounds(limits::SEND_WINDOW).config(base))
    }

    /// Accepts connections on `endpoint` until it is closed; each gets its receive windows
    /// from what is free of the budget now, and gives them back when it ends.
    pub async fn serve(self: Arc<Self>, endpoint: quinn::Endpoint) {
        while let Some(incoming) = endpoint.accept().await {
            let me = self.clone();
            let grant = self.limits.grant_window();
            let limits = grant
                .as_ref()
                .map_or_else(windows::TransportLimits::refused, |g| g.limits());
            let remote = incoming.remote_address();
            let connecting = match self.connection_config(limits) {
                Some(cfg) => incoming.accept_with(cfg),
                None => incoming.accept(),
            };
            tokio::spawn(async move {
                let result = match connecting {
                    Ok(c) => c.await,
                    Err(e) => Err(e),
                };
                match result {
                    Ok(conn) => {
                        me.active.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                        me.clone().handle_connection(conn, grant).await;
                        me.active.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                        me.idle.notify_waiters();
                    }
                    Err(e) => {
                        drop(grant);
                        me.stats
                            .refused_peers
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        crate::metrics::events::refused_peer("handshake");
                        warn!(peer = %remote, error = %e, "refused connection: handshake failed");
                    }
                }
            });
        }
    }

    async fn handle_connection(
        self: Arc<Self>,
        conn: quinn::Connection,
        grant: Option<windows::WindowGrant>,
    ) {
        let remote = conn.remote_address();
        let name = match crate::tls::identity::peer_identity(&conn) {
            Ok(id) => id,
            Err(e) => {
                crate::metrics::events::refused_peer("no_certificate");
                self.stats
                    .refused_peers
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                warn!(peer = %remote, error = %e, "refused connection: no usable client certificate");
                conn.close(
                    crate::transport::close::NO_CERTIFICATE.into(),
                    b"no usable client certificate",
                );
                return;
            }
        };
        let (name, not_after) = (name.name, name.not_after_unix);
        if !self.allow.knows(&name) {
            crate::metrics::events::refused_peer("unknown_sender");
            self.stats
                .refused_peers
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            warn!(peer = %remote, sender = %name, "refused connection: sender is not in --allow");
            conn.close(
                crate::transport::close::UNKNOWN_SENDER.into(),
                format!("sender {name} is not authorised on this receiver").as_bytes(),
            );
            return;
        }
        // A connection accepted with no window (the receiver held `max_connections`
        // windows then) is over the limit like one refused by admission.
        let admission = match grant {
            Some(_) => self.limits.admit(),
            None => Err(limits::Busy {
                limit: self.limits.max_connections(),
            }),
        };
        let _admission = match admission {
            Ok(a) => a,
            Err(busy) => {
                crate::metrics::events::refused_peer("busy");
                self.stats
                    .refused_peers
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.refused(&name, "connection_limit", &busy.to_string());
                conn.close(
                    crate::transport::close::BUSY.into(),
                    busy.to_string().as_bytes(),
                );
                return;
            }
        };
        // Known senders only: the label values stay bounded by --allow.
        crate::metrics::events::certificate("peer", &name, not_after);
        let t = grant.as_ref().map(|g| g.limits());
        info!(peer = %remote, sender = %name, window = t.map(|t| t.window),
              data_streams = t.map(|t| t.max_streams),
              stream_window = t.map(|t| t.stream_window), "sender connected");
        let conn_state = control::ConnState::new(
            name.clone(),
            conn.clone(),
            &self.allow,
            self.max_disks_per_connection
                .load(std::sync::atomic::Ordering::Relaxed),
            self.limits.connection_frames(),
            t.map_or(0, |t| t.max_streams),
        );
        loop {
            let (send, recv) = match conn.accept_bi().await {
                Ok(s) => s,
                Err(e) => {
                    info!(peer = %remote, sender = %name, reason = %e, "sender disconnected");
                    break;
                }
            };
            let me = self.clone();
            let st = conn_state.clone();
            tokio::spawn(async move { me.handle_stream(st, send, recv).await });
        }
        conn_state.shutdown().await;
        if let Ok(mut h) = self.holders.lock() {
            h.retain(|_, v| v.conn.stable_id() != conn.stable_id());
        }
        if let Ok(mut g) = self.groups.lock() {
            g.retain(|_, v| v.conn.stable_id() != conn.stable_id());
        }
    }
}

/// Builds the endpoint and serves until the process is told to stop.
pub async fn run(cfg: ReceiverConfig, store: Arc<dyn ReplicaStore>) -> anyhow::Result<()> {
    let files = crate::tls::config::ReceiverFiles::in_dir(&cfg.tls);
    let server = crate::tls::config::receiver_quic(&files)?;
    // The key file was just read successfully by receiver_quic.
    let reset_key = std::fs::read(&files.key)
        .ok()
        .map(|k| crate::transport::StatelessResetKey::derive(&k));
    let rx = Receiver::with_limits(store.clone(), cfg.allow, cfg.max_connections);
    rx.set_max_disks_per_connection(cfg.max_disks_per_connection);
    rx.set_server_config(server.clone());
    // The endpoint's own configuration is never used for a connection (each gets its own
    // windows at accept, `Receiver::serve`); it bounds the handshakes in progress.
    let bounds = crate::transport::ServerBounds {
        max_incoming: 2 * rx.limits.max_connections(),
        ..windows::TransportLimits::refused().server_bounds(limits::SEND_WINDOW)
    };
    let endpoint = crate::transport::server_endpoint_bounded(cfg.listen, server, reset_key, bounds)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.listen))?;
    let local = endpoint.local_addr()?;
    info!(listen = %local, store = %store.describe(),
          max_connections = rx.limits.max_connections(), window_budget = limits::WINDOW_BUDGET,
          "receiver ready");
    // Tests and scripts read this line to learn the bound port.
    println!("listening on {local}");
    crate::metrics::certs::export_files(&files.ca, &files.cert);
    // A renewed certificate is taken without restart (and its expiry exported).
    let cert_watch = {
        let (ep, f, rx) = (endpoint.clone(), files.clone(), rx.clone());
        crate::metrics::certs::watch(
            files.ca.clone(),
            files.cert.clone(),
            files.key.clone(),
            move || {
                let cfg = crate::tls::config::receiver_quic(&f).map_err(|e| e.to_string())?;
                rx.set_server_config(cfg.clone());
                crate::transport::replace_server_config_bounded(&ep, cfg, bounds);
                Ok(())
            },
        )
    };
    let rpo = tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            crate::metrics::events::rpo_tick(crate::metrics::events::now_unix());
        }
    });
    let serve = tokio::spawn(rx.clone().serve(endpoint.clone()));
    crate::signals::shutdown().await;
    info!("shutting down: closing connections");
    endpoint.close(0u32.into(), b"receiver shutting down");
    serve.abort();
    rpo.abort();
    cert_watch.abort();
    rx.drain().await;
    Ok(())
}
