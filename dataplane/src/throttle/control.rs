//! The run-time handle of the host's bandwidth policy: it holds the policy, sets the shared
//! throttle's rate from it, and lets the policy change while transfers run (SIGHUP re-reads
//! the config; the sidecar's control socket calls [`BandwidthControl::set_policy`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::info;

use super::{BandwidthPolicy, Throttle};
use crate::clock::SharedClock;

/// How often the schedule is re-evaluated: a work-hour boundary takes effect within this
/// (plus one throttle wait of at most 250 ms).
pub const TICK: Duration = Duration::from_millis(200);

/// The policy, the throttle it drives, and the clock it reads.
#[derive(Debug)]
pub struct BandwidthControl {
    policy: Mutex<BandwidthPolicy>,
    throttle: Arc<Throttle>,
    clock: SharedClock,
}

impl BandwidthControl {
    /// A control applying `policy` to `throttle` at once.
    pub fn new(policy: BandwidthPolicy, throttle: Arc<Throttle>, clock: SharedClock) -> Arc<Self> {
        let c = Arc::new(BandwidthControl {
            policy: Mutex::new(policy),
            throttle,
            clock,
        });
        c.tick();
        c
    }

    /// Replaces the policy; the new limit applies to the next piece every stream sends.
    pub fn set_policy(&self, policy: BandwidthPolicy) {
        if let Ok(mut p) = self.policy.lock() {
            if *p != policy {
                info!(policy = %policy, "bandwidth policy changed");
            }
            *p = policy;
        }
        self.tick();
    }

    /// The policy in force.
    pub fn policy(&self) -> BandwidthPolicy {
        self.policy
            .lock()
            .map(|p| p.clone())
            .unwrap_or(BandwidthPolicy::NoThrottle)
    }

    /// The shared throttle.
    pub fn throttle(&self) -> &Arc<Throttle> {
        &self.throttle
    }

    /// The clock the schedule reads.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Whether a (not forced) resync may start now: outside work hours.
    pub fn resync_allowed_now(&self) -> bool {
        super::resync_allowed_now(&self.policy(), self.clock.as_ref())
    }

    /// Sets the throttle's rate to what the policy says for now.
    pub fn tick(&self) {
        let now = self.clock.now_utc();
        let rate = self.policy().rate_at(now);
        if self.throttle.rate() != rate {
            info!(
                rate_bit_s = rate.map(|r| r * 8),
                work_hours = self.policy().is_work_time(now),
                "bandwidth limit now {}",
                rate.map(|r| format!("{} kbit/s", r * 8 / 1000))
                    .unwrap_or_else(|| "unlimited".into())
            );
            self.throttle.set_rate(rate);
        }
    }

    /// Re-evaluates the schedule every [`TICK`] until dropped.
    pub async fn run(self: Arc<Self>) {
        loop {
            self.tick();
            tokio::time::sleep(TICK).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::TokioClock;
    use crate::throttle::PolicySpec;

    #[tokio::test(start_paused = true)]
    async fn the_rate_switches_within_a_tick_of_a_work_hour_boundary_and_on_set_policy() {
        let spec = PolicySpec {
            work_days: Some("mon-fri".into()),
            work_hours: Some("09:00-18:00".into()),
            tz: Some("America/New_York".into()),
            work_bandwidth: Some("10Mbit".into()),
            off_bandwidth: Some("100Mbit".into()),
            ..Default::default()
        };
        // Monday 2025-01-06 08:59:58 in New York (UTC-5).
        let clock = Arc::new(TokioClock::starting_at(
            "2025-01-06T13:59:58Z".parse().unwrap(),
        ));
        let t = Arc::new(Throttle::new(None));
        let c = BandwidthControl::new(spec.build().unwrap(), t.clone(), clock);
        assert_eq!(t.rate(), Some(12_500_000));
        tokio::spawn(c.clone().run());
        tokio::time::sleep(Duration::from_millis(1990)).await;
        assert_eq!(t.rate(), Some(12_500_000), "still before 09:00");
        tokio::time::sleep(TICK + Duration::from_millis(20)).await;
        assert_eq!(t.rate(), Some(1_250_000), "work hours began at 09:00");
        c.set_policy(BandwidthPolicy::Fixed(Some(5_000_000)));
        assert_eq!(t.rate(), Some(5_000_000), "set_policy applies at once");
        c.set_policy(BandwidthPolicy::NoThrottle);
        assert_eq!(t.rate(), None);
    }
}
