//! Each VM's replication policy, as the sidecar holds it. The host's bandwidth policy is
//! the throttle's ([`crate::throttle::BandwidthPolicy`]); the API's JSON form of it is
//! [`crate::throttle::PolicyDocument`].

use serde::{Deserialize, Serialize};

/// Latest initial-replication start the API takes: 9999-12-31T23:59:59Z.
pub const LAST_START: u64 = 253_402_300_799;

/// A VM's replication policy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReplicationPolicy {
    /// Seconds between delta cycles (ASR: 30, 300, 900).
    #[serde(default = "default_interval")]
    pub interval_seconds: u64,
    /// Hours recovery points are kept, 0..=24.
    #[serde(default = "default_retention")]
    pub retention_hours: u32,
    /// RPO above which the VM is reported Warning.
    #[serde(default = "default_rpo")]
    pub rpo_threshold_seconds: u64,
    /// Hour (site time, 0..=23) when scheduled resyncs may start.
    #[serde(default = "default_resync_start")]
    pub resync_window_start_hour: u8,
    /// Hour (0..=23) when the resync window closes (may wrap past midnight).
    #[serde(default = "default_resync_end")]
    pub resync_window_end_hour: u8,
    /// Offset of the site's local time from UTC, minutes.
    #[serde(default)]
    pub utc_offset_minutes: i32,
    /// When a VM enabled through the API starts its initial replication (Unix seconds;
    /// `None`: at once). Change tracking starts at once either way.
    #[serde(default)]
    pub initial_replication_unix: Option<u64>,
    /// The consistency group the VM switches its change logs with (ASR's multi-VM
    /// consistency; `None`: alone). Members have one interval and one sender, at most 16.
    /// Handed to the sender when protection is enabled; a protected VM keeps its group.
    #[serde(default)]
    pub group: Option<String>,
}

fn default_interval() -> u64 {
    300
}
fn default_retention() -> u32 {
    24
}
fn default_rpo() -> u64 {
    1800
}
fn default_resync_start() -> u8 {
    22
}
fn default_resync_end() -> u8 {
    6
}

impl Default for ReplicationPolicy {
    fn default() -> Self {
        ReplicationPolicy {
            interval_seconds: default_interval(),
            retention_hours: default_retention(),
            rpo_threshold_seconds: default_rpo(),
            resync_window_start_hour: default_resync_start(),
            resync_window_end_hour: default_resync_end(),
            utc_offset_minutes: 0,
            initial_replication_unix: None,
            group: None,
        }
    }
}

impl ReplicationPolicy {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=86_400).contains(&self.interval_seconds) {
            return Err("interval_seconds ranges from 1 to 86400 (ASR uses 30, 300, 900)".into());
        }
        if self.retention_hours > 24 {
            return Err("retention_hours ranges from 0 to 24".into());
        }
        if self.initial_replication_unix > Some(LAST_START) {
            return Err(format!(
                "initial_replication_unix ranges from 0 to {LAST_START} (9999-12-31)"
            ));
        }
        if self.rpo_threshold_seconds == 0 || self.rpo_threshold_seconds > 7 * 86_400 {
            return Err("rpo_threshold_seconds ranges from 1 to 604800".into());
        }
        if self.resync_window_start_hour > 23 || self.resync_window_end_hour > 23 {
            return Err("resync window hours range from 0 to 23".into());
        }
        if !(-14 * 60..=14 * 60).contains(&self.utc_offset_minutes) {
            return Err("utc_offset_minutes ranges from -840 to 840".into());
        }
        if let Some(g) = &self.group {
            crate::sender::group::check_name(g)?;
        }
        Ok(())
    }

    /// The earliest time at or after `now` (Unix seconds) inside the resync window.
    pub fn next_resync_window(&self, now: i64) -> i64 {
        let off = self.utc_offset_minutes as i64 * 60;
        let (s, e) = (
            self.resync_window_start_hour as i64,
            self.resync_window_end_hour as i64,
        );
        let inside = |h: i64| {
            if s == e {
                true
            } else if s < e {
                h >= s && h < e
            } else {
                h >= s || h < e
            }
        };
        let local = now + off;
        if inside(local.rem_euclid(86_400) / 3600) {
            return now;
        }
        let day = local.div_euclid(86_400) * 86_400;
        let mut t = day + s * 3600;
        if t <= local {
            t += 86_400;
        }
        t - off
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scheduled_resync_waits_for_the_night_window() {
        let p = ReplicationPolicy::default();
        let monday = 1_704_067_200;
        assert_eq!(p.next_resync_window(monday + 12 * 3600), monday + 22 * 3600);
        assert_eq!(p.next_resync_window(monday + 23 * 3600), monday + 23 * 3600);
        assert_eq!(p.next_resync_window(monday + 3 * 3600), monday + 3 * 3600);
    }
}
