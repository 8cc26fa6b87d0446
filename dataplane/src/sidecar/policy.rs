//! Policies the sidecar holds: the host's bandwidth schedule (the Azure Backup agent's
//! `Set-OBMachineSetting -WorkDay -StartWorkHour -EndWorkHour -WorkHourBandwidth
//! -NonWorkHourBandwidth | -NoThrottle`) and each VM's replication policy.

use serde::{Deserialize, Serialize};

use crate::throttle::parse_rate;

/// Lowest settable limit: 512 Kbit/s (the agent's documented range).
pub const MIN_RATE: u64 = 64_000;
/// Highest settable limit: 1023 Mbit/s.
pub const MAX_RATE: u64 = 127_875_000;

/// The host's bandwidth schedule.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BandwidthPolicy {
    /// No limit at any time (the other fields are kept but unused).
    #[serde(default)]
    pub no_throttle: bool,
    /// Work days, `mon`..`sun`.
    #[serde(default = "default_days")]
    pub work_days: Vec<String>,
    /// First work hour, 0..=23.
    #[serde(default = "default_start")]
    pub work_hour_start: u8,
    /// End of work hours (exclusive), 0..=24; an end before the start wraps past midnight,
    /// an end equal to the start means no work hours.
    #[serde(default = "default_end")]
    pub work_hour_end: u8,
    /// Limit during work hours in bytes per second (`null`: none), 64,000 (512 Kbit/s) to
    /// 127,875,000 (1023 Mbit/s). Numbers, not rate strings, so the range is part of the
    /// API's schema.
    #[serde(default)]
    pub work_hour_bytes_per_second: Option<u64>,
    /// Limit outside work hours.
    #[serde(default)]
    pub non_work_hour_bytes_per_second: Option<u64>,
    /// Offset of the site's local time from UTC, minutes (work hours are local).
    #[serde(default)]
    pub utc_offset_minutes: i32,
}

fn default_days() -> Vec<String> {
    ["mon", "tue", "wed", "thu", "fri"]
        .map(String::from)
        .to_vec()
}
fn default_start() -> u8 {
    8
}
fn default_end() -> u8 {
    18
}

impl Default for BandwidthPolicy {
    fn default() -> Self {
        BandwidthPolicy {
            no_throttle: true,
            work_days: default_days(),
            work_hour_start: default_start(),
            work_hour_end: default_end(),
            work_hour_bytes_per_second: None,
            non_work_hour_bytes_per_second: None,
            utc_offset_minutes: 0,
        }
    }
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn check_rate(field: &str, r: Option<u64>) -> Result<(), String> {
    match r {
        Some(b) if !(MIN_RATE..=MAX_RATE).contains(&b) => Err(format!(
            "{field} {b}: settable limits range from 64000 (512 Kbit/s) to 127875000 (1023 Mbit/s) bytes per second, or null for none"
        )),
        _ => Ok(()),
    }
}

/// A rate written as operators do (`40Mbit`, `5MB`, `unlimited`), in bytes per second.
pub fn rate_from_text(s: &str) -> Result<Option<u64>, String> {
    Ok(parse_rate(s)?.0)
}

impl BandwidthPolicy {
    /// Checks every field; the message names the field and the allowed values.
    pub fn validate(&self) -> Result<(), String> {
        for d in &self.work_days {
            if !DAYS.contains(&d.as_str()) {
                return Err(format!("work_days: {d:?} is not one of {DAYS:?}"));
            }
        }
        if self.work_hour_start > 23 || self.work_hour_end > 24 {
            return Err("work_hour_start ranges from 0 to 23, work_hour_end from 0 to 24".into());
        }
        if !(-14 * 60..=14 * 60).contains(&self.utc_offset_minutes) {
            return Err("utc_offset_minutes ranges from -840 to 840".into());
        }
        check_rate(
            "work_hour_bytes_per_second",
            self.work_hour_bytes_per_second,
        )?;
        check_rate(
            "non_work_hour_bytes_per_second",
            self.non_work_hour_bytes_per_second,
        )?;
        Ok(())
    }

    /// The limit in force at `unix` seconds (`None`: no limit), as the sender applies it.
    pub fn rate_at(&self, unix: i64) -> Option<u64> {
        let at = jiff::Timestamp::from_second(unix).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        self.to_throttle().rate_at(at)
    }

    /// The sender's schedule for this policy: the one conversion between the API's form
    /// (whole hours, a UTC offset) and the throttle's (civil times in a time zone), so the
    /// sidecar's view and the sender's limits and non-work hours cannot drift apart.
    /// Work hours ending at 24 end at midnight; equal start and end mean no work hours.
    pub fn to_throttle(&self) -> crate::throttle::BandwidthPolicy {
        use crate::throttle::{BandwidthPolicy as Sender, WorkSchedule};
        use jiff::civil::Time;
        if self.no_throttle {
            return Sender::NoThrottle;
        }
        let hour = |h: u8| match h {
            24.. => Time::MAX,
            h => Time::constant(h as i8, 0, 0, 0),
        };
        let mut days = [false; 7];
        if self.work_hour_start != self.work_hour_end {
            for d in &self.work_days {
                if let Some(i) = DAYS.iter().position(|x| x == d) {
                    days[i] = true;
                }
            }
        }
        let offset = jiff::tz::Offset::from_seconds(self.utc_offset_minutes.clamp(-840, 840) * 60)
            .unwrap_or(jiff::tz::Offset::UTC);
        Sender::Schedule(WorkSchedule {
            days,
            start: hour(self.work_hour_start.min(23)),
            end: hour(self.work_hour_end),
            tz: jiff::tz::TimeZone::fixed(offset),
            work: self.work_hour_bytes_per_second,
            off: self.non_work_hour_bytes_per_second,
        })
    }
}

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
    fn work_hours_pick_the_work_hour_rate_on_work_days_only() {
        let p = BandwidthPolicy {
            no_throttle: false,
            work_hour_bytes_per_second: rate_from_text("8Mbit").unwrap(),
            non_work_hour_bytes_per_second: rate_from_text("80Mbit").unwrap(),
            ..Default::default()
        };
        p.validate().unwrap();
        // 2024-01-01 was a Monday.
        let monday = 1_704_067_200;
        assert_eq!(p.rate_at(monday + 9 * 3600), Some(1_000_000));
        assert_eq!(p.rate_at(monday + 19 * 3600), Some(10_000_000));
        assert_eq!(
            p.rate_at(monday + 5 * 86_400 + 9 * 3600),
            Some(10_000_000),
            "Saturday"
        );
        let shifted = BandwidthPolicy {
            utc_offset_minutes: 120,
            ..p.clone()
        };
        assert_eq!(
            shifted.rate_at(monday + 7 * 3600),
            Some(1_000_000),
            "09:00 at UTC+2"
        );
        let night = BandwidthPolicy {
            work_hour_start: 22,
            work_hour_end: 6,
            ..p.clone()
        };
        assert_eq!(
            night.rate_at(monday + 23 * 3600),
            Some(1_000_000),
            "wraps past midnight"
        );
        assert_eq!(night.rate_at(monday + 12 * 3600), Some(10_000_000));
        assert!(BandwidthPolicy {
            work_hour_bytes_per_second: Some(12_500),
            ..p
        }
        .validate()
        .is_err());
    }

    #[test]
    fn the_senders_schedule_keeps_the_api_policys_hours_days_and_offset() {
        let ts = |u: i64| jiff::Timestamp::from_second(u).unwrap();
        // 2024-01-01 was a Monday.
        let monday = 1_704_067_200;
        let p = BandwidthPolicy {
            no_throttle: false,
            work_days: vec!["mon".into()],
            work_hour_start: 9,
            work_hour_end: 24,
            work_hour_bytes_per_second: Some(1_000_000),
            non_work_hour_bytes_per_second: Some(5_000_000),
            utc_offset_minutes: -60,
        };
        let t = p.to_throttle();
        // 09:00 at UTC-1 is 10:00 UTC.
        assert_eq!(t.rate_at(ts(monday + 10 * 3600 - 1)), Some(5_000_000));
        assert_eq!(t.rate_at(ts(monday + 10 * 3600)), Some(1_000_000));
        assert!(t.is_work_time(ts(monday + 24 * 3600 + 3599)), "23:59 local");
        assert!(
            !t.is_work_time(ts(monday + 25 * 3600)),
            "Tuesday 00:00 local"
        );
        let none = BandwidthPolicy {
            work_hour_end: 9,
            ..p.clone()
        };
        assert!(!none.to_throttle().is_work_time(ts(monday + 10 * 3600)));
        assert_eq!(
            BandwidthPolicy::default().to_throttle(),
            crate::throttle::BandwidthPolicy::NoThrottle
        );
        assert!(
            p.to_throttle().to_string().contains("UTC-01"),
            "{}",
            p.to_throttle()
        );
    }

    #[test]
    fn a_scheduled_resync_waits_for_the_night_window() {
        let p = ReplicationPolicy::default();
        let monday = 1_704_067_200;
        assert_eq!(p.next_resync_window(monday + 12 * 3600), monday + 22 * 3600);
        assert_eq!(p.next_resync_window(monday + 23 * 3600), monday + 23 * 3600);
        assert_eq!(p.next_resync_window(monday + 3 * 3600), monday + 3 * 3600);
    }
}
