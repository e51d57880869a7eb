//! The autoscaler's arithmetic, kept pure so that it is tested with paused
//! time and no broker:
//!
//! ```text
//! desired = clamp(ceil(backlog / target_backlog), min, max)
//! ```
//!
//! Up at once; down one step per `cooldown`; to zero only when `min = 0`
//! and the backlog has been zero for `idle_timeout`.

use tokio::time::Instant;

use crate::config::WorkersConfig;

/// One scaling decision with its inputs, as logged and shown in `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Decision {
    /// The scaler's tick (scale interval) number, counted from 1.
    #[serde(default)]
    pub tick: u64,
    /// Backlog seen (broker + local).
    pub backlog: u64,
    /// Consecutive ticks, this one included, that saw a non-zero backlog:
    /// how many scale intervals the pressure has lasted.
    #[serde(default)]
    pub backlog_ticks: u32,
    /// Workers running an invocation when the decision was taken (filled
    /// in by the caller; scale-in waits for them).
    #[serde(default)]
    pub busy: usize,
    /// Workers before.
    pub current: usize,
    /// What the formula asks for.
    pub desired: usize,
    /// Workers after this decision.
    pub next: usize,
}

/// The autoscaler state of one route.
#[derive(Debug)]
pub struct Scaler {
    cfg: WorkersConfig,
    current: usize,
    last_change: Instant,
    zero_since: Option<Instant>,
    ticks: u64,
    backlog_ticks: u32,
}

impl Scaler {
    /// Starts at `min` workers.
    pub fn new(cfg: WorkersConfig, now: Instant) -> Self {
        Self {
            current: cfg.min,
            cfg,
            last_change: now,
            zero_since: Some(now),
            ticks: 0,
            backlog_ticks: 0,
        }
    }

    /// The current size.
    pub fn current(&self) -> usize {
        self.current
    }

    /// What the formula asks for at this backlog.
    pub fn desired(&self, backlog: u64) -> usize {
        let want = backlog.div_ceil(self.cfg.target_backlog().max(1));
        usize::try_from(want)
            .unwrap_or(usize::MAX)
            .clamp(self.cfg.min, self.cfg.max)
    }

    /// Looks at the backlog and decides the next size.
    pub fn tick(&mut self, backlog: u64, now: Instant) -> Decision {
        self.ticks += 1;
        if backlog == 0 {
            self.zero_since.get_or_insert(now);
            self.backlog_ticks = 0;
        } else {
            self.zero_since = None;
            self.backlog_ticks = self.backlog_ticks.saturating_add(1);
        }
        let desired = self.desired(backlog);
        let current = self.current;
        let next = if desired > current {
            desired
        } else if desired < current {
            let idle = self
                .zero_since
                .is_some_and(|t| now.duration_since(t) >= self.cfg.idle_timeout);
            let floor = if idle { 0 } else { desired.max(1) };
            if idle && self.cfg.min == 0 {
                0
            } else if current > floor && now.duration_since(self.last_change) >= self.cfg.cooldown {
                current - 1
            } else {
                current
            }
        } else {
            current
        };
        if next != current {
            self.last_change = now;
            self.current = next;
        }
        Decision {
            tick: self.ticks,
            backlog,
            backlog_ticks: self.backlog_ticks,
            busy: 0,
            current,
            desired,
            next,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn cfg(min: usize, max: usize) -> WorkersConfig {
        WorkersConfig {
            min,
            max,
            target_backlog: Some(100),
            scale_interval: Duration::from_secs(1),
            cooldown: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(300),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn scales_up_at_once_and_down_one_step_per_cooldown() {
        let mut s = Scaler::new(cfg(1, 8), Instant::now());
        assert_eq!(s.tick(5_000, Instant::now()).next, 8, "straight to max");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            s.tick(0, Instant::now()).next,
            8,
            "no step before the cooldown"
        );
        let mut sizes = vec![];
        for _ in 0..10 {
            tokio::time::advance(Duration::from_secs(60)).await;
            sizes.push(s.tick(0, Instant::now()).next);
        }
        assert_eq!(
            sizes,
            vec![7, 6, 5, 4, 3, 2, 1, 1, 1, 1],
            "down to min, one step per cooldown"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn scales_to_zero_after_idle_timeout_and_wakes_on_work() {
        let mut s = Scaler::new(cfg(0, 4), Instant::now());
        assert_eq!(
            s.tick(1, Instant::now()).next,
            1,
            "the first message wakes a worker"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(s.tick(0, Instant::now()).next, 1);
        tokio::time::advance(Duration::from_secs(299)).await;
        assert_eq!(
            s.tick(0, Instant::now()).next,
            1,
            "idle, but not for idle_timeout yet"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(s.tick(0, Instant::now()).next, 0, "scaled to zero");
        assert_eq!(s.tick(250, Instant::now()).next, 3, "activation");
    }

    #[tokio::test(start_paused = true)]
    async fn decisions_count_the_ticks_under_pressure_and_new_work_stops_the_descent() {
        let mut s = Scaler::new(cfg(1, 8), Instant::now());
        let d = s.tick(0, Instant::now());
        assert_eq!((d.tick, d.backlog_ticks, d.next), (1, 0, 1));
        let d = s.tick(5_000, Instant::now());
        assert_eq!(
            (d.tick, d.backlog_ticks, d.next),
            (2, 1, 8),
            "max at the first tick under pressure"
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(s.tick(0, Instant::now()).next, 7);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(s.tick(0, Instant::now()).next, 6);
        let d = s.tick(800, Instant::now());
        assert_eq!((d.backlog_ticks, d.next), (1, 8), "back up at once");
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(
            s.tick(0, Instant::now()).next,
            8,
            "the cooldown restarts after a scale-up"
        );
        for _ in 0..20 {
            tokio::time::advance(Duration::from_secs(60)).await;
            s.tick(0, Instant::now());
        }
        assert_eq!(s.current(), 1, "back to min after the cooldowns");
    }

    #[tokio::test(start_paused = true)]
    async fn min_zero_without_idle_timeout_stays_at_one() {
        let mut s = Scaler::new(cfg(0, 4), Instant::now());
        assert_eq!(s.tick(400, Instant::now()).next, 4);
        for _ in 0..4 {
            tokio::time::advance(Duration::from_secs(60)).await;
            s.tick(0, Instant::now());
        }
        assert_eq!(s.current(), 1, "one worker stays until idle_timeout passes");
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(
            s.tick(0, Instant::now()).next,
            1,
            "the backlog has been zero for 240s only"
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(s.tick(0, Instant::now()).next, 0, "zero for 300s: to zero");
    }

    #[test]
    fn desired_follows_the_formula() {
        let s = Scaler::new(cfg(2, 10), Instant::now());
        assert_eq!(s.desired(0), 2);
        assert_eq!(s.desired(101), 2);
        assert_eq!(s.desired(301), 4);
        assert_eq!(s.desired(u64::MAX), 10);
    }
}
