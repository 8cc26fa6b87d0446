//! QUIC stream credit shared by all of a run's streams, and who is waiting for it.
//!
//! The receiver lets a connection have a bounded number of streams open (its stream credit,
//! `receiver/windows.rs`), fewer than a sender with many VMs and threads may want: 3 VMs on
//! 32 threads keep up to 96 batch streams busy against 32 credits. A worker takes its first
//! extent off the queue (holding its bytes of the run's prepared budget) and then waits in
//! `open_bi` for credit. A stream that has credit used to wait for its batch's next extent
//! for as long as it took; with enough workers waiting for credit, each holding an extent,
//! the prepared budget was all theirs, the readers could prepare nothing more, and the
//! streams with credit waited for extents that never came: the copy stopped (the throttle
//! matrix's "32 streams, 3 VMs" case). So a batch that would wait for its next extent ends
//! now instead whenever someone is waiting for credit ([`StreamCredit::wanted`]), and its
//! credit goes to the next stream. Without contention batches stay full (fewer results and
//! stream openings).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// The run's count of streams waiting for QUIC stream credit.
#[derive(Debug, Default)]
pub struct StreamCredit {
    waiting: AtomicUsize,
    notify: Notify,
}

/// One stream waiting for credit; counted while it lives.
struct Waiting<'a>(&'a StreamCredit);

impl<'a> Waiting<'a> {
    fn new(c: &'a StreamCredit) -> Self {
        c.waiting.fetch_add(1, Ordering::SeqCst);
        c.notify.notify_waiters();
        Waiting(c)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl StreamCredit {
    /// Opens a stream on `conn`; only an opening that cannot have credit at once counts as
    /// waiting, so that batches end early only when credit is short.
    pub async fn open(
        &self,
        conn: &quinn::Connection,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), quinn::ConnectionError> {
        self.wait(conn.open_bi()).await
    }

    async fn wait<T>(&self, open: impl Future<Output = T>) -> T {
        let mut open = std::pin::pin!(open);
        let mut counted = None;
        std::future::poll_fn(|cx| {
            let p = open.as_mut().poll(cx);
            if p.is_pending() && counted.is_none() {
                counted = Some(Waiting::new(self));
            }
            p
        })
        .await
    }

    /// Streams waiting for credit now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Resolves once some stream waits for credit (at once if one does).
    pub async fn wanted(&self) {
        loop {
            let notified = self.notify.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.waiting() > 0 {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_pending_opening_counts_as_waiting_until_it_resolves() {
        let c = std::sync::Arc::new(StreamCredit::default());
        // Ready at once: never counted, so nobody is told credit is wanted.
        assert_eq!(c.wait(async { 1 }).await, 1);
        assert_eq!(c.waiting(), 0);
        let wanted = tokio::spawn({
            let c = c.clone();
            async move { c.wanted().await }
        });
        tokio::task::yield_now().await;
        assert!(!wanted.is_finished());
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let opening = tokio::spawn({
            let c = c.clone();
            async move { c.wait(async { rx.await.unwrap() }).await }
        });
        tokio::time::timeout(Duration::from_secs(1), wanted)
            .await
            .expect("a pending opening wakes the streams that could give credit back")
            .unwrap();
        assert_eq!(c.waiting(), 1);
        // Once someone waits, `wanted` answers at once.
        tokio::time::timeout(Duration::from_millis(1), c.wanted())
            .await
            .unwrap();
        tx.send(7).unwrap();
        assert_eq!(opening.await.unwrap(), 7);
        assert_eq!(c.waiting(), 0);
    }
}
