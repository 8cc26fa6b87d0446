//! Progress of any size crosses in pages (WIRE.md §4.3): a `DiskOpened` or `CycleOpened`
//! carries the first [`PROGRESS_PAGE`] ranges and says whether more follow; the session keeps
//! the rest of that answer's snapshot per handle and serves it to `ProgressRequest`s. A peer
//! older than version 4 cannot ask for pages, so it gets a subset that fits one frame — the
//! largest ranges: every range reported is durable, the sender sends the others again.

use super::{ControlStep, ReceiverSession};
use crate::ranges::RangeSet;
use crate::session::{Refusal, StreamId};
use crate::wire::{Control, ErrorClass, PAGED_PROGRESS_VERSION, PROGRESS_PAGE, V3_PROGRESS_RANGES};

/// The ranges an answer carries and whether more pages follow; keeps the rest for
/// [`ReceiverSession::progress_page`].
impl ReceiverSession {
    pub(super) fn first_page(
        &mut self,
        version: u16,
        handle: u32,
        progress: RangeSet,
    ) -> (RangeSet, bool) {
        self.progress.remove(&handle);
        if version < PAGED_PROGRESS_VERSION {
            return (coarsen(progress, V3_PROGRESS_RANGES), false);
        }
        if progress.range_count() <= PROGRESS_PAGE {
            return (progress, false);
        }
        let (first, _) = progress.page(0, PROGRESS_PAGE);
        self.progress.insert(handle, progress);
        (first, true)
    }

    /// Answers a `ProgressRequest`: the ranges of the kept snapshot starting at or after
    /// `after`, one page; the snapshot is dropped with its last page.
    pub(super) fn progress_page(
        &mut self,
        stream: StreamId,
        version: u16,
        req: u32,
        handle: u32,
        after: u64,
    ) -> ControlStep {
        if version < PAGED_PROGRESS_VERSION {
            return self.close(
                stream,
                req,
                Refusal::new(
                    ErrorClass::Protocol,
                    format!(
                        "ProgressRequest needs protocol version {PAGED_PROGRESS_VERSION}; this \
                         stream speaks {version}"
                    ),
                ),
            );
        }
        if !self.disks.contains_key(&handle) {
            return self.unknown_handle(stream, req, handle);
        }
        let Some(all) = self.progress.get(&handle) else {
            return self.refuse(
                stream,
                req,
                Refusal::new(
                    ErrorClass::InvalidState,
                    format!("no progress pages are pending for disk handle {handle}"),
                ),
            );
        };
        let (page, more) = all.page(after, PROGRESS_PAGE);
        if !more {
            self.progress.remove(&handle);
        }
        ControlStep::Answer {
            answer: Control::ProgressPage {
                req,
                handle,
                progress: page,
                more,
            },
            close: false,
            report: None,
        }
    }
}

/// At most `max` of `ranges` — the largest, in their original order — so a peer that cannot
/// page still skips most of what is durable.
pub(crate) fn coarsen(set: RangeSet, max: usize) -> RangeSet {
    if set.range_count() <= max {
        return set;
    }
    let mut ranges: Vec<_> = set.iter().collect();
    // Stable: of equally long ranges the lower ones are kept, as before.
    ranges.sort_by_key(|r| std::cmp::Reverse(r.end - r.start));
    ranges.truncate(max);
    // Ranges of one set stay separated: any subset of them is a set again.
    ranges.into_iter().collect()
}
