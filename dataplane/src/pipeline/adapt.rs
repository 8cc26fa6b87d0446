//! Compression that adapts to the link: when the link waits for the compressor, compress
//! less (down to not at all); when the compressor waits for the link, compress more (up to
//! the configured level). The ladder is zstd's fast levels, which keep the CPU cost per byte
//! below the link's cost on anything slower than loopback.

use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

/// The encoding choice for the next extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Store raw.
    Off,
    /// zstd at this level.
    Zstd(i32),
}

/// Signals in a row that move the level one step.
pub const HYSTERESIS: i32 = 8;

/// Shared, lock-free compression level controller.
#[derive(Debug)]
pub struct AdaptiveLevel {
    /// Steps from "off" up to the configured level.
    ladder: Vec<Compression>,
    step: AtomicI32,
    /// Consecutive signals in one direction (positive: saturated, negative: starved); a
    /// step needs [`HYSTERESIS`] of them so that one slow read does not flip the level.
    votes: AtomicI32,
    adaptive: bool,
    incompressible: AtomicU32,
}

impl AdaptiveLevel {
    /// `level`: the configured zstd level (0 = off). `adaptive`: move between off and
    /// `level` with the link; otherwise always `level`.
    pub fn new(level: i32, adaptive: bool) -> Self {
        let mut ladder = vec![Compression::Off];
        if level != 0 {
            ladder.extend(
                [-3, -1, 1]
                    .into_iter()
                    .filter(|&l| l < level)
                    .map(Compression::Zstd),
            );
            ladder.push(Compression::Zstd(level));
        }
        let top = ladder.len() as i32 - 1;
        AdaptiveLevel {
            ladder,
            step: AtomicI32::new(top),
            votes: AtomicI32::new(0),
            adaptive,
            incompressible: AtomicU32::new(0),
        }
    }

    fn top(&self) -> i32 {
        self.ladder.len() as i32 - 1
    }

    /// The level to use now.
    pub fn current(&self) -> Compression {
        let s = if self.adaptive {
            self.step.load(Ordering::Relaxed).clamp(0, self.top())
        } else {
            self.top()
        };
        self.ladder[s as usize]
    }

    fn vote(&self, dir: i32) {
        if !self.adaptive {
            return;
        }
        let v = self.votes.load(Ordering::Relaxed);
        let v = if v.signum() == dir { v + dir } else { dir };
        if v.abs() >= HYSTERESIS {
            self.votes.store(0, Ordering::Relaxed);
            let top = self.top();
            let _ = self
                .step
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                    Some((s + dir).clamp(0, top))
                });
        } else {
            self.votes.store(v, Ordering::Relaxed);
        }
    }

    /// The senders found no prepared extent waiting: the CPU stages are the bottleneck.
    pub fn link_starved(&self) {
        self.vote(-1);
    }

    /// The prepared queue is full: the link is the bottleneck, spend CPU on ratio.
    pub fn link_saturated(&self) {
        self.vote(1);
    }

    /// An extent did not compress; counted for the summary.
    pub fn note_incompressible(&self) {
        self.incompressible.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adaptive_level_moves_between_off_and_the_configured_level() {
        let a = AdaptiveLevel::new(3, true);
        assert_eq!(a.current(), Compression::Zstd(3));
        for _ in 0..HYSTERESIS - 1 {
            a.link_starved();
        }
        assert_eq!(
            a.current(),
            Compression::Zstd(3),
            "one step needs {HYSTERESIS} votes"
        );
        for _ in 0..10 * HYSTERESIS {
            a.link_starved();
        }
        assert_eq!(a.current(), Compression::Off);
        for _ in 0..HYSTERESIS {
            a.link_saturated();
        }
        assert_eq!(a.current(), Compression::Zstd(-3));
        for _ in 0..10 * HYSTERESIS {
            a.link_saturated();
        }
        assert_eq!(a.current(), Compression::Zstd(3));
        let f = AdaptiveLevel::new(1, false);
        f.link_starved();
        assert_eq!(f.current(), Compression::Zstd(1));
        assert_eq!(AdaptiveLevel::new(0, true).current(), Compression::Off);
    }
}
