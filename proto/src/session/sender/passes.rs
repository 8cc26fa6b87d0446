//! Resend passes: extents the receiver refused (a hash mismatch, a payload that did not
//! decode) are sent again, a bounded number of times. A refusal that repeats is not noise
//! on the link but a fault (memory, disk, a bug) that more passes will not cure.

/// Passes over a disk's extents before giving up: the first and three resends.
pub const MAX_PASSES: usize = 4;

/// Counts the passes of one disk's transfer.
#[derive(Debug, Default)]
pub struct Passes {
    done: usize,
}

/// What follows a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a pass verdict says whether to resend or give up"]
pub enum PassVerdict {
    /// Every extent was accepted.
    Done,
    /// Send these ranges `(offset, length)` again.
    Resend(Vec<(u64, u32)>),
    /// The last pass still had refusals: the transfer fails with an integrity error.
    GiveUp {
        /// Ranges still refused.
        count: usize,
        /// The first of them.
        first_offset: u64,
        /// Passes made.
        passes: usize,
    },
}

impl Passes {
    /// No pass made yet.
    pub fn new() -> Self {
        Passes::default()
    }

    /// Passes made so far.
    pub fn made(&self) -> usize {
        self.done
    }

    /// Settles a pass with the ranges it had refused.
    pub fn settle(&mut self, refused: Vec<(u64, u32)>) -> PassVerdict {
        self.done += 1;
        if refused.is_empty() {
            return PassVerdict::Done;
        }
        if self.done < MAX_PASSES {
            return PassVerdict::Resend(refused);
        }
        PassVerdict::GiveUp {
            count: refused.len(),
            first_offset: refused.first().map_or(0, |r| r.0),
            passes: self.done,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_extents_are_resent_three_times_then_the_transfer_gives_up() {
        let mut p = Passes::new();
        assert_eq!(
            p.settle(vec![(4096, 512)]),
            PassVerdict::Resend(vec![(4096, 512)])
        );
        assert_eq!(
            p.settle(vec![(4096, 512)]),
            PassVerdict::Resend(vec![(4096, 512)])
        );
        assert_eq!(
            p.settle(vec![(4096, 512)]),
            PassVerdict::Resend(vec![(4096, 512)])
        );
        assert_eq!(
            p.settle(vec![(4096, 512), (8192, 512)]),
            PassVerdict::GiveUp {
                count: 2,
                first_offset: 4096,
                passes: 4
            }
        );
        let mut p = Passes::new();
        assert_eq!(
            p.settle(vec![(0, 512)]),
            PassVerdict::Resend(vec![(0, 512)])
        );
        assert_eq!(p.settle(vec![]), PassVerdict::Done);
        assert_eq!(p.made(), 2);
    }
}
