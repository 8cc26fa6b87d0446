//! The one health scale and the one severity table: every condition a VM or disk can be in
//! and the state it puts it in. `health.json`, the control channel's disk status, the
//! sidecar's `/v1/vms` and the health gauge all use [`State`] and read severities from
//! [`Condition::severity`] only, so they cannot disagree (they once did on "resync required":
//! it is Warning — the disk replicates on, the resync runs by itself in its window).

use serde::{Deserialize, Serialize};

/// Health of a protected VM or disk (ASR's Normal / Warning / Critical), worst last.
/// Serialized as `Normal`/`Warning`/`Critical` in `health.json`; the control channel and the
/// API write it in lower case through [`lowercase`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum State {
    /// Replicating within its RPO.
    Normal,
    /// Needs attention soon, or is recovering by itself.
    Warning,
    /// Needs an operator.
    Critical,
}

impl State {
    /// Every state, for the one-gauge-per-state export.
    pub const ALL: [State; 3] = [State::Normal, State::Warning, State::Critical];

    /// The lower-case name: metric label, control channel and API value.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Normal => "normal",
            State::Warning => "warning",
            State::Critical => "critical",
        }
    }

    /// Parses [`State::as_str`]'s names.
    pub fn from_lowercase(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|h| h.as_str() == s)
    }
}

/// What makes a VM or disk leave Normal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// The RPO is above its threshold.
    RpoAboveThreshold,
    /// The RPO is more than [`super::CRITICAL_FACTOR`] times its threshold.
    RpoFarAboveThreshold,
    /// The disk's change history has a gap: it needs a resync (which runs by itself).
    ResyncRequired,
    /// A resync of the disk runs.
    ResyncRunning,
    /// A transient error is being retried on the schedule.
    Retrying,
    /// A permanent error stopped the VM: it waits for an operator.
    NotRetried,
}

impl Condition {
    /// The severity table.
    pub fn severity(self) -> State {
        match self {
            Condition::RpoAboveThreshold => State::Warning,
            Condition::RpoFarAboveThreshold => State::Critical,
            Condition::ResyncRequired => State::Warning,
            Condition::ResyncRunning => State::Warning,
            Condition::Retrying => State::Warning,
            Condition::NotRetried => State::Critical,
        }
    }
}

/// Serde in lower case (`normal`, `warning`, `critical`) for the control channel and the API,
/// whose documents have always written the state so.
pub mod lowercase {
    use super::State;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes [`State::as_str`].
    pub fn serialize<S: Serializer>(s: &State, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(s.as_str())
    }

    /// Reads [`State::as_str`]'s names.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<State, D::Error> {
        let s = String::deserialize(d)?;
        State::from_lowercase(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown health state {s:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_required_resync_warns_and_only_a_far_rpo_or_a_refusal_is_critical() {
        assert_eq!(Condition::ResyncRequired.severity(), State::Warning);
        assert_eq!(Condition::ResyncRunning.severity(), State::Warning);
        assert_eq!(Condition::Retrying.severity(), State::Warning);
        assert_eq!(Condition::RpoAboveThreshold.severity(), State::Warning);
        assert_eq!(Condition::RpoFarAboveThreshold.severity(), State::Critical);
        assert_eq!(Condition::NotRetried.severity(), State::Critical);
    }

    #[test]
    fn the_two_spellings_round_trip() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Api {
            #[serde(with = "lowercase")]
            health: State,
        }
        for s in State::ALL {
            let file = serde_json::to_string(&s).unwrap();
            assert_eq!(file.to_lowercase(), format!("\"{}\"", s.as_str()));
            let api = serde_json::to_string(&Api { health: s }).unwrap();
            assert_eq!(api, format!("{{\"health\":\"{}\"}}", s.as_str()));
            assert_eq!(
                serde_json::from_str::<Api>(&api).unwrap(),
                Api { health: s }
            );
        }
    }
}
