//! The API's JSON form of the host's bandwidth policy (see [`PolicyDocument`]).

use jiff::civil::Time;
use serde::{Deserialize, Serialize};

use super::parse_rate;
use super::schedule::{BandwidthPolicy, WorkSchedule, DAY_NAMES, MAX_RATE, MIN_RATE};

/// The host's bandwidth policy as the sidecar's API writes it (`PUT /v1/bandwidth`), as the
/// control channel carries it and as `--state DIR` keeps it: whole hours and a UTC offset,
/// the Azure Backup agent's `Set-OBMachineSetting` fields. It is a form of the one policy
/// type, [`BandwidthPolicy`], which [`PolicyDocument::policy`] builds: the one conversion,
/// so the sidecar's view and the sender's limits cannot drift apart.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
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

impl Default for PolicyDocument {
    fn default() -> Self {
        PolicyDocument {
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

impl PolicyDocument {
    /// Checks every field; the message names the field and the allowed values.
    pub fn validate(&self) -> Result<(), String> {
        for d in &self.work_days {
            if !DAY_NAMES.contains(&d.as_str()) {
                return Err(format!("work_days: {d:?} is not one of {DAY_NAMES:?}"));
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
        self.policy().rate_at(at)
    }

    /// The policy this document describes: the one conversion between the API's form
    /// (whole hours, a UTC offset) and the throttle's (civil times in a time zone).
    /// Work hours ending at 24 end at midnight; equal start and end mean no work hours.
    pub fn policy(&self) -> BandwidthPolicy {
        use BandwidthPolicy as Sender;
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
                if let Some(i) = DAY_NAMES.iter().position(|x| x == d) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_hours_pick_the_work_hour_rate_on_work_days_only() {
        let p = PolicyDocument {
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
        let shifted = PolicyDocument {
            utc_offset_minutes: 120,
            ..p.clone()
        };
        assert_eq!(
            shifted.rate_at(monday + 7 * 3600),
            Some(1_000_000),
            "09:00 at UTC+2"
        );
        let night = PolicyDocument {
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
        assert!(PolicyDocument {
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
        let p = PolicyDocument {
            no_throttle: false,
            work_days: vec!["mon".into()],
            work_hour_start: 9,
            work_hour_end: 24,
            work_hour_bytes_per_second: Some(1_000_000),
            non_work_hour_bytes_per_second: Some(5_000_000),
            utc_offset_minutes: -60,
        };
        let t = p.policy();
        // 09:00 at UTC-1 is 10:00 UTC.
        assert_eq!(t.rate_at(ts(monday + 10 * 3600 - 1)), Some(5_000_000));
        assert_eq!(t.rate_at(ts(monday + 10 * 3600)), Some(1_000_000));
        assert!(t.is_work_time(ts(monday + 24 * 3600 + 3599)), "23:59 local");
        assert!(
            !t.is_work_time(ts(monday + 25 * 3600)),
            "Tuesday 00:00 local"
        );
        let none = PolicyDocument {
            work_hour_end: 9,
            ..p.clone()
        };
        assert!(!none.policy().is_work_time(ts(monday + 10 * 3600)));
        assert_eq!(
            PolicyDocument::default().policy(),
            BandwidthPolicy::NoThrottle
        );
        assert!(p.policy().to_string().contains("UTC-01"), "{}", p.policy());
    }
}
