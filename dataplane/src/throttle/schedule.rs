//! The host's bandwidth policy, as the Azure Backup/ASR agent has it (KB3056159,
//! `Set-OBMachineSetting -WorkDay -StartWorkHour -EndWorkHour -WorkHourBandwidth
//! -NonWorkHourBandwidth | -NoThrottle`): work days, work-hour start and end, a work-hour and
//! a non-work-hour rate, or no throttle. Rates lie in the agent's settable range, 512 Kbit/s
//! to 1023 Mbit/s, or are `unlimited`.
//!
//! Work hours are civil times in an explicit IANA time zone (the tz database is compiled in),
//! so a DST change moves them with the local clock, as an operator expects: "09:00" is 09:00
//! on the wall of the office, winter and summer. A start after the end means a night shift
//! (`22:00-06:00`): the hours after midnight belong to the work day before.

use std::fmt;

use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;
use jiff::Timestamp;

use super::{parse_rate, Rate};

/// Lowest settable limit: 512 Kbit/s in bytes per second.
pub const MIN_RATE: u64 = 64_000;
/// Highest settable limit: 1023 Mbit/s in bytes per second.
pub const MAX_RATE: u64 = 127_875_000;

/// Why a policy is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A rate outside 512 Kbit/s .. 1023 Mbit/s.
    #[error("{what} {given}: the settable range is 512Kbit to 1023Mbit, or unlimited")]
    OutOfRange {
        /// Which setting.
        what: &'static str,
        /// As written.
        given: String,
    },
    /// A value that does not parse.
    #[error("{what} {given:?}: {why}")]
    Invalid {
        /// Which setting.
        what: &'static str,
        /// As written.
        given: String,
        /// What was expected.
        why: String,
    },
    /// Settings that exclude each other or are incomplete.
    #[error("{0}")]
    Conflict(String),
}

impl crate::error::Classify for PolicyError {
    /// An invalid setting stays invalid until it is edited.
    fn recovery(&self) -> crate::error::Recovery {
        crate::error::Recovery::Permanent
    }
}

/// The bandwidth policy of a sender host.
#[derive(Debug, Clone, PartialEq)]
pub enum BandwidthPolicy {
    /// No limit at any time (`--no-throttle`, or nothing configured).
    NoThrottle,
    /// One limit at all times (`--bandwidth RATE`); `None` is unlimited.
    Fixed(Option<u64>),
    /// Work hours and their rates.
    Schedule(WorkSchedule),
}

/// Work days, work hours and the two rates.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkSchedule {
    /// Work days, Monday first.
    pub days: [bool; 7],
    /// Work-hour start (local civil time).
    pub start: Time,
    /// Work-hour end (local civil time; before `start` for a night shift).
    pub end: Time,
    /// The time zone the hours are in.
    pub tz: TimeZone,
    /// Limit during work hours (`None`: unlimited).
    pub work: Option<u64>,
    /// Limit outside work hours (`None`: unlimited).
    pub off: Option<u64>,
}

/// The settings as written on the command line or under `[bandwidth]` in the config; every
/// key is optional and [`Self::build`] checks the combination.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySpec {
    /// One limit at all times.
    pub bandwidth: Option<String>,
    /// `mon-fri`, `mon,wed,fri`, `sat-sun`, `all`.
    pub work_days: Option<String>,
    /// `09:00-18:00`.
    pub work_hours: Option<String>,
    /// IANA time zone, e.g. `Europe/Berlin`, or `UTC`.
    pub tz: Option<String>,
    /// Limit during work hours.
    pub work_bandwidth: Option<String>,
    /// Limit outside work hours.
    pub off_bandwidth: Option<String>,
    /// No limit at all.
    pub no_throttle: Option<bool>,
}

impl PolicySpec {
    /// Fills the keys unset in `self` from `other` (flags over file).
    pub fn or(self, other: PolicySpec) -> PolicySpec {
        PolicySpec {
            bandwidth: self.bandwidth.or(other.bandwidth),
            work_days: self.work_days.or(other.work_days),
            work_hours: self.work_hours.or(other.work_hours),
            tz: self.tz.or(other.tz),
            work_bandwidth: self.work_bandwidth.or(other.work_bandwidth),
            off_bandwidth: self.off_bandwidth.or(other.off_bandwidth),
            no_throttle: self.no_throttle.or(other.no_throttle),
        }
    }

    /// The policy these settings describe.
    pub fn build(&self) -> Result<BandwidthPolicy, PolicyError> {
        let sched_keys = [
            ("--work-days", self.work_days.is_some()),
            ("--work-hours", self.work_hours.is_some()),
            ("--tz", self.tz.is_some()),
            ("--work-bandwidth", self.work_bandwidth.is_some()),
            ("--off-bandwidth", self.off_bandwidth.is_some()),
        ];
        let any_sched = sched_keys.iter().any(|k| k.1);
        if self.no_throttle == Some(true) {
            if any_sched || self.bandwidth.is_some() {
                return Err(PolicyError::Conflict(
                    "--no-throttle excludes --bandwidth and the work-hour settings".into(),
                ));
            }
            return Ok(BandwidthPolicy::NoThrottle);
        }
        if let Some(b) = &self.bandwidth {
            if any_sched {
                return Err(PolicyError::Conflict(
                    "--bandwidth (one limit at all times) excludes the work-hour settings; use --work-bandwidth and --off-bandwidth".into(),
                ));
            }
            return Ok(BandwidthPolicy::Fixed(checked_rate("--bandwidth", b)?));
        }
        if !any_sched {
            return Ok(BandwidthPolicy::NoThrottle);
        }
        let missing: Vec<&str> = sched_keys.iter().filter(|k| !k.1).map(|k| k.0).collect();
        if !missing.is_empty() {
            return Err(PolicyError::Conflict(format!(
                "a work-hour schedule needs {} too",
                missing.join(", ")
            )));
        }
        let (days, hours, tz, work, off) = (
            self.work_days.as_deref().unwrap_or_default(),
            self.work_hours.as_deref().unwrap_or_default(),
            self.tz.as_deref().unwrap_or_default(),
            self.work_bandwidth.as_deref().unwrap_or_default(),
            self.off_bandwidth.as_deref().unwrap_or_default(),
        );
        let (start, end) = parse_hours(hours)?;
        Ok(BandwidthPolicy::Schedule(WorkSchedule {
            days: parse_days(days)?,
            start,
            end,
            tz: TimeZone::get(tz).map_err(|e| PolicyError::Invalid {
                what: "--tz",
                given: tz.into(),
                why: format!("not an IANA time zone name ({e}); e.g. Europe/Berlin or UTC"),
            })?,
            work: checked_rate("--work-bandwidth", work)?,
            off: checked_rate("--off-bandwidth", off)?,
        }))
    }
}

/// A rate in the settable range, or unlimited.
fn checked_rate(what: &'static str, s: &str) -> Result<Option<u64>, PolicyError> {
    let Rate(r) = parse_rate(s).map_err(|why| PolicyError::Invalid {
        what,
        given: s.into(),
        why,
    })?;
    match r {
        Some(v) if !(MIN_RATE..=MAX_RATE).contains(&v) => Err(PolicyError::OutOfRange {
            what,
            given: s.into(),
        }),
        r => Ok(r),
    }
}

pub(super) const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn day_index(s: &str) -> Option<usize> {
    let s = s.trim().to_ascii_lowercase();
    DAY_NAMES
        .iter()
        .position(|d| s.len() >= 3 && d.starts_with(&s[..3]) && is_day_word(&s))
}

fn is_day_word(s: &str) -> bool {
    const FULL: [&str; 7] = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    FULL.iter().any(|f| f.starts_with(s))
}

/// Parses `mon-fri`, `mon,wed,fri`, `fri-mon` (wrapping), `all`.
pub fn parse_days(s: &str) -> Result<[bool; 7], PolicyError> {
    let bad = |why: &str| PolicyError::Invalid {
        what: "--work-days",
        given: s.into(),
        why: why.into(),
    };
    let mut days = [false; 7];
    let t = s.trim();
    if t.eq_ignore_ascii_case("all") || t.eq_ignore_ascii_case("daily") {
        return Ok([true; 7]);
    }
    for part in t.split(',') {
        let idx =
            |w: &str| day_index(w).ok_or_else(|| bad("expected days like mon-fri or mon,wed,fri"));
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (idx(a)?, idx(b)?);
                let mut i = a;
                loop {
                    days[i] = true;
                    if i == b {
                        break;
                    }
                    i = (i + 1) % 7;
                }
            }
            None => days[idx(part)?] = true,
        }
    }
    Ok(days)
}

/// Parses `09:00-18:00`.
pub fn parse_hours(s: &str) -> Result<(Time, Time), PolicyError> {
    let bad = |why: String| PolicyError::Invalid {
        what: "--work-hours",
        given: s.into(),
        why,
    };
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| bad("expected START-END, e.g. 09:00-18:00".into()))?;
    let t = |x: &str| -> Result<Time, PolicyError> {
        let x = x.trim();
        let x = if x == "24:00" {
            "23:59:59.999999999"
        } else {
            x
        };
        x.parse::<Time>()
            .map_err(|e| bad(format!("{x:?} is not a time of day HH:MM ({e})")))
    };
    let (a, b) = (t(a)?, t(b)?);
    if a == b {
        return Err(bad("work hours start and end at the same time".into()));
    }
    Ok((a, b))
}

impl WorkSchedule {
    /// Whether `at` falls in work hours.
    pub fn is_work_time(&self, at: Timestamp) -> bool {
        let local = at.to_zoned(self.tz.clone());
        let (day, time) = (local.weekday(), local.time());
        let workday = |w: Weekday| self.days[w.to_monday_zero_offset() as usize];
        if self.start < self.end {
            workday(day) && time >= self.start && time < self.end
        } else {
            (workday(day) && time >= self.start) || (workday(day.previous()) && time < self.end)
        }
    }
}

impl BandwidthPolicy {
    /// The limit in force at `at` (bytes per second; `None`: unlimited).
    pub fn rate_at(&self, at: Timestamp) -> Option<u64> {
        match self {
            BandwidthPolicy::NoThrottle => None,
            BandwidthPolicy::Fixed(r) => *r,
            BandwidthPolicy::Schedule(s) if s.is_work_time(at) => s.work,
            BandwidthPolicy::Schedule(s) => s.off,
        }
    }

    /// Whether `at` is in work hours (never, without a schedule).
    pub fn is_work_time(&self, at: Timestamp) -> bool {
        match self {
            BandwidthPolicy::Schedule(s) => s.is_work_time(at),
            _ => false,
        }
    }
}

fn show_rate(r: Option<u64>) -> String {
    match r {
        None => "unlimited".into(),
        Some(b) => format!("{}kbit/s", b * 8 / 1000),
    }
}

impl fmt::Display for BandwidthPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BandwidthPolicy::NoThrottle => write!(f, "no throttle"),
            BandwidthPolicy::Fixed(r) => write!(f, "{} at all times", show_rate(*r)),
            BandwidthPolicy::Schedule(s) => {
                let days: Vec<&str> = (0..7)
                    .filter(|&i| s.days[i])
                    .map(|i| DAY_NAMES[i])
                    .collect();
                write!(
                    f,
                    "{} {}-{} {}: {} in work hours, {} otherwise",
                    days.join(","),
                    s.start.strftime("%H:%M"),
                    s.end.strftime("%H:%M"),
                    s.tz.iana_name().map(String::from).unwrap_or_else(|| s
                        .tz
                        .to_fixed_offset()
                        .map(|o| format!("UTC{o}"))
                        .unwrap_or_else(|_| "?".into())),
                    show_rate(s.work),
                    show_rate(s.off)
                )
            }
        }
    }
}

/// Whether a resync may start now: outside work hours (always, without a schedule). A forced
/// resync ignores this.
pub fn resync_allowed_now(policy: &BandwidthPolicy, clock: &dyn crate::clock::Clock) -> bool {
    !policy.is_work_time(clock.now_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(days: &str, hours: &str, tz: &str, work: &str, off: &str) -> PolicySpec {
        PolicySpec {
            work_days: Some(days.into()),
            work_hours: Some(hours.into()),
            tz: Some(tz.into()),
            work_bandwidth: Some(work.into()),
            off_bandwidth: Some(off.into()),
            ..Default::default()
        }
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn days_parse_as_ranges_lists_and_wrapping_ranges() {
        let d = |s| parse_days(s).unwrap();
        assert_eq!(d("mon-fri"), [true, true, true, true, true, false, false]);
        assert_eq!(
            d("Mon,Wed,friday"),
            [true, false, true, false, true, false, false]
        );
        assert_eq!(d("fri-mon"), [true, false, false, false, true, true, true]);
        assert_eq!(d("all"), [true; 7]);
        assert!(parse_days("mon-funday").is_err());
        assert!(parse_days("mo").is_err());
    }

    #[test]
    fn rates_outside_the_agents_range_are_refused_but_unlimited_is_fine() {
        let p = |b: &str| {
            PolicySpec {
                bandwidth: Some(b.into()),
                ..Default::default()
            }
            .build()
        };
        assert_eq!(p("512Kbit"), Ok(BandwidthPolicy::Fixed(Some(64_000))));
        assert_eq!(p("1023Mbit"), Ok(BandwidthPolicy::Fixed(Some(127_875_000))));
        assert_eq!(p("unlimited"), Ok(BandwidthPolicy::Fixed(None)));
        assert!(matches!(p("500Kbit"), Err(PolicyError::OutOfRange { .. })));
        assert!(matches!(p("1024Mbit"), Err(PolicyError::OutOfRange { .. })));
    }

    #[test]
    fn incomplete_or_conflicting_settings_are_refused_with_the_missing_keys() {
        let mut s = spec(
            "mon-fri",
            "09:00-18:00",
            "Europe/Berlin",
            "10Mbit",
            "100Mbit",
        );
        s.tz = None;
        let e = s.build().unwrap_err().to_string();
        assert!(e.contains("--tz"), "{e}");
        let mut s = spec(
            "mon-fri",
            "09:00-18:00",
            "Europe/Berlin",
            "10Mbit",
            "100Mbit",
        );
        s.bandwidth = Some("5Mbit".into());
        assert!(matches!(s.build(), Err(PolicyError::Conflict(_))));
        let s = spec(
            "mon-fri",
            "09:00-18:00",
            "Mars/Olympus",
            "10Mbit",
            "100Mbit",
        );
        assert!(matches!(
            s.build(),
            Err(PolicyError::Invalid { what: "--tz", .. })
        ));
        let s = PolicySpec {
            no_throttle: Some(true),
            ..Default::default()
        };
        assert_eq!(s.build(), Ok(BandwidthPolicy::NoThrottle));
    }

    #[test]
    fn work_hours_follow_the_local_wall_clock_across_dst() {
        let p = spec(
            "mon-fri",
            "09:00-18:00",
            "Europe/Berlin",
            "10Mbit",
            "unlimited",
        )
        .build()
        .unwrap();
        // Winter (CET, UTC+1): Monday 2025-01-06 09:00 local is 08:00 UTC.
        assert_eq!(p.rate_at(ts("2025-01-06T07:59:59Z")), None);
        assert_eq!(p.rate_at(ts("2025-01-06T08:00:00Z")), Some(1_250_000));
        assert_eq!(p.rate_at(ts("2025-01-06T16:59:59Z")), Some(1_250_000));
        assert_eq!(p.rate_at(ts("2025-01-06T17:00:00Z")), None);
        // Summer (CEST, UTC+2), the Monday after the switch: 09:00 local is 07:00 UTC.
        assert_eq!(p.rate_at(ts("2025-03-31T06:59:59Z")), None);
        assert_eq!(p.rate_at(ts("2025-03-31T07:00:00Z")), Some(1_250_000));
        assert_eq!(p.rate_at(ts("2025-03-31T15:59:59Z")), Some(1_250_000));
        assert_eq!(p.rate_at(ts("2025-03-31T16:00:00Z")), None);
        // Saturday is not a work day.
        assert_eq!(p.rate_at(ts("2025-01-11T10:00:00Z")), None);
    }

    #[test]
    fn a_work_hour_start_skipped_by_dst_begins_when_the_clock_passes_it() {
        // 2025-03-30 in Berlin: 02:00 CET jumps to 03:00 CEST; 02:30 never shows on the wall.
        let p = spec("all", "02:30-04:00", "Europe/Berlin", "10Mbit", "20Mbit")
            .build()
            .unwrap();
        assert!(!p.is_work_time(ts("2025-03-30T00:59:59Z"))); // 01:59:59 CET
        assert!(p.is_work_time(ts("2025-03-30T01:00:00Z"))); // 03:00 CEST
        assert!(!p.is_work_time(ts("2025-03-30T02:00:00Z"))); // 04:00 CEST
                                                              // 2025-10-26: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice and both count.
        assert!(p.is_work_time(ts("2025-10-26T00:30:00Z"))); // 02:30 CEST
        assert!(p.is_work_time(ts("2025-10-26T01:30:00Z"))); // 02:30 CET
        assert!(!p.is_work_time(ts("2025-10-26T03:00:00Z"))); // 04:00 CET
    }

    #[test]
    fn a_night_shift_belongs_to_the_work_day_it_started_on() {
        let p = spec("fri", "22:00-06:00", "UTC", "10Mbit", "unlimited")
            .build()
            .unwrap();
        assert!(!p.is_work_time(ts("2025-01-10T21:59:00Z"))); // Friday
        assert!(p.is_work_time(ts("2025-01-10T22:00:00Z")));
        assert!(p.is_work_time(ts("2025-01-11T05:59:00Z"))); // Saturday morning
        assert!(!p.is_work_time(ts("2025-01-11T06:00:00Z")));
        assert!(!p.is_work_time(ts("2025-01-10T03:00:00Z"))); // Thursday's night is off
    }

    #[test]
    fn resync_waits_for_non_work_hours() {
        let p = spec("all", "09:00-18:00", "UTC", "10Mbit", "unlimited")
            .build()
            .unwrap();
        let c = crate::clock::TokioClock::starting_at(ts("2025-01-06T12:00:00Z"));
        assert!(!resync_allowed_now(&p, &c));
        let c = crate::clock::TokioClock::starting_at(ts("2025-01-06T19:00:00Z"));
        assert!(resync_allowed_now(&p, &c));
        assert!(resync_allowed_now(
            &BandwidthPolicy::Fixed(Some(MIN_RATE)),
            &c
        ));
    }
}
