//! Ordering logs into a chain: each log's `PreviousUniqueId` names the log before it.
//! A cycle ships its logs in chain order, so a missing or forked link must stop shipping
//! (it means writes were lost or tracked twice) instead of being papered over.

use std::collections::HashMap;

use vdrep_proto::Guid;

use super::error::{ChainProblem, HrlError};
use super::reader::HrlLog;

/// Logs in chain order, oldest first.
#[derive(Debug, Clone, Default)]
pub struct HrlChain {
    logs: Vec<HrlLog>,
}

impl HrlChain {
    /// Orders `logs` (given in any order) into one unbroken chain. With `after`, the first
    /// log must continue that id (the last log already shipped).
    pub fn new(logs: Vec<HrlLog>, after: Option<Guid>) -> Result<HrlChain, HrlError> {
        if logs.is_empty() {
            return Ok(HrlChain { logs });
        }
        let broken = |i: usize, problem| HrlError::BrokenChain {
            path: logs[i].path().to_path_buf(),
            problem,
        };
        let mut by_id: HashMap<Guid, usize> = HashMap::new();
        let mut next: HashMap<Guid, usize> = HashMap::new();
        for (i, l) in logs.iter().enumerate() {
            let h = l.header();
            if by_id.insert(h.unique_id, i).is_some() {
                return Err(broken(i, ChainProblem::DuplicateId(h.unique_id)));
            }
            if let Some(&j) = next.get(&h.previous_unique_id) {
                return Err(broken(
                    i,
                    ChainProblem::Fork {
                        previous: h.previous_unique_id,
                        first: logs[j].header().unique_id,
                        second: h.unique_id,
                    },
                ));
            }
            next.insert(h.previous_unique_id, i);
        }
        let mut roots: Vec<usize> = (0..logs.len())
            .filter(|&i| !by_id.contains_key(&logs[i].header().previous_unique_id))
            .collect();
        // The true first log: the one continuing `after`, else the oldest root.
        roots.sort_by_key(|&i| {
            let h = logs[i].header();
            (Some(h.previous_unique_id) != after, h.timestamp)
        });
        let Some(&first) = roots.first() else {
            return Err(broken(0, ChainProblem::Cycle));
        };
        if let Some(&stray) = roots.get(1) {
            let h = logs[stray].header();
            return Err(broken(
                stray,
                ChainProblem::MissingLink {
                    id: h.unique_id,
                    previous: h.previous_unique_id,
                },
            ));
        }
        if let Some(expected) = after {
            let found = logs[first].header().previous_unique_id;
            if found != expected {
                return Err(broken(first, ChainProblem::WrongStart { expected, found }));
            }
        }
        let mut order = vec![first];
        let mut cur = first;
        while let Some(&n) = next.get(&logs[cur].header().unique_id) {
            if order.len() > logs.len() {
                break;
            }
            order.push(n);
            cur = n;
        }
        if order.len() != logs.len() {
            let stray = (0..logs.len()).find(|i| !order.contains(i)).unwrap_or(0);
            return Err(broken(stray, ChainProblem::Cycle));
        }
        let mut slots: Vec<Option<HrlLog>> = logs.into_iter().map(Some).collect();
        let logs = order.into_iter().filter_map(|i| slots[i].take()).collect();
        Ok(HrlChain { logs })
    }

    /// The logs, oldest first.
    pub fn logs(&self) -> &[HrlLog] {
        &self.logs
    }

    /// The newest log's id: the next chain must continue it.
    pub fn last_id(&self) -> Option<Guid> {
        self.logs.last().map(|l| l.header().unique_id)
    }
}
