//! Process signals: SIGTERM and SIGINT ask a role to drain and exit (DESIGN.md §4: in-flight
//! extents finish or are dropped, progress is persisted, exit within 10 s).

/// Resolves when the process is asked to stop.
pub async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the default disposition (exit) applies; wait forever.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
