//! When a schedule fires: its slots, from a cron expression (with the
//! `croner` crate, in a time zone from `chrono-tz`) or `@every DURATION`,
//! and the clock that the firings wait on.

use std::time::Duration;

use chrono::{DateTime, TimeZone as _, Utc};
use croner::parser::{CronParser, Seconds};

/// The slots of one schedule.
#[derive(Debug, Clone)]
pub enum Plan {
    /// A cron expression (5 fields, or 6 with seconds first), in `tz`.
    Cron {
        /// The parsed expression.
        cron: Box<croner::Cron>,
        /// Where its hours and days are.
        tz: chrono_tz::Tz,
    },
    /// Every period, counted from the Unix epoch, so that every replica
    /// has the same slots.
    Every(Duration),
}

impl Plan {
    /// Parses `expr` in `timezone` (UTC when absent); the error says how
    /// to write it.
    pub fn parse(expr: &str, timezone: Option<&str>) -> Result<Self, (&'static str, String)> {
        let tz = match timezone {
            None => chrono_tz::UTC,
            Some(name) => name.parse().map_err(|_| {
                (
                    "timezone",
                    format!("unknown time zone {name:?}: use an IANA name such as \"Europe/Paris\" or \"UTC\""),
                )
            })?,
        };
        if let Some(every) = expr.trim().strip_prefix("@every") {
            let period = humantime::parse_duration(every.trim()).map_err(|e| {
                (
                    "schedule",
                    format!("{expr:?}: {e}; write e.g. \"@every 30s\" or \"@every 5m\""),
                )
            })?;
            if period < Duration::from_secs(1) || period.subsec_nanos() != 0 {
                return Err((
                    "schedule",
                    format!("{expr:?}: the period must be whole seconds, 1s or more"),
                ));
            }
            return Ok(Self::Every(period));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(expr)
            .map_err(|e| {
                (
                    "schedule",
                    format!(
                        "{expr:?} is not a cron expression ({e}): write 5 fields (\"*/5 * * * *\", minute first), 6 with seconds first, \"@daily\", or \"@every 30s\""
                    ),
                )
            })?;
        let plan = Self::Cron {
            cron: Box::new(cron),
            tz,
        };
        match plan.next_after(Utc::now()) {
            Some(_) => Ok(plan),
            None => Err(("schedule", format!("{expr:?} never fires"))),
        }
    }

    /// The first slot strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Self::Every(period) => {
                let p = period.as_secs() as i64;
                Utc.timestamp_opt((t.timestamp().div_euclid(p) + 1) * p, 0)
                    .single()
            }
            Self::Cron { cron, tz } => cron
                .find_next_occurrence(&t.with_timezone(tz), false)
                .ok()
                .map(|d| d.with_timezone(&Utc)),
        }
    }

    /// The last slot at or before `t`.
    pub fn last_until(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Self::Every(period) => {
                let p = period.as_secs() as i64;
                Utc.timestamp_opt(t.timestamp().div_euclid(p) * p, 0)
                    .single()
            }
            Self::Cron { cron, tz } => cron
                .find_previous_occurrence(&t.with_timezone(tz), true)
                .ok()
                .map(|d| d.with_timezone(&Utc)),
        }
    }
}

/// Wall-clock time read from tokio's clock, anchored to the system clock
/// when it was made: firings wait on tokio's timers, and under paused time
/// (tests) the wall clock moves with them.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall: DateTime<Utc>,
    mono: tokio::time::Instant,
}

/// A clock anchored now.
impl Default for Clock {
    fn default() -> Self {
        Self {
            wall: Utc::now(),
            mono: tokio::time::Instant::now(),
        }
    }
}

impl Clock {
    /// Now.
    pub fn now(&self) -> DateTime<Utc> {
        let elapsed = tokio::time::Instant::now() - self.mono;
        self.wall + chrono::TimeDelta::from_std(elapsed).unwrap_or_default()
    }

    /// The instant of tokio's clock at wall time `t` (now, if `t` passed).
    pub fn instant_at(&self, t: DateTime<Utc>) -> tokio::time::Instant {
        let ahead = (t - self.now()).to_std().unwrap_or_default();
        tokio::time::Instant::now() + ahead
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn every_is_aligned_to_the_epoch() {
        let p = Plan::parse("@every 30s", None).unwrap();
        let t = at("2026-12-01T10:00:10Z");
        assert_eq!(p.next_after(t), Some(at("2026-12-01T10:00:30Z")));
        assert_eq!(p.last_until(t), Some(at("2026-12-01T10:00:00Z")));
        assert_eq!(
            p.next_after(at("2026-12-01T10:00:30Z")),
            Some(at("2026-12-01T10:01:00Z")),
            "strictly after"
        );
    }

    #[test]
    fn cron_follows_its_time_zone() {
        // 09:00 in Paris is 08:00 UTC in winter, 07:00 in summer.
        let p = Plan::parse("0 9 * * *", Some("Europe/Paris")).unwrap();
        assert_eq!(
            p.next_after(at("2026-12-01T10:00:00Z")),
            Some(at("2026-12-02T08:00:00Z"))
        );
        assert_eq!(
            p.next_after(at("2026-07-01T10:00:00Z")),
            Some(at("2026-07-02T07:00:00Z"))
        );
        assert_eq!(
            p.last_until(at("2026-12-02T08:00:00Z")),
            Some(at("2026-12-02T08:00:00Z"))
        );
        let five = Plan::parse("*/5 * * * *", None).unwrap();
        assert_eq!(
            five.next_after(at("2026-12-01T10:02:00Z")),
            Some(at("2026-12-01T10:05:00Z"))
        );
    }

    #[test]
    fn bad_expressions_say_how_to_write_them() {
        let (key, e) = Plan::parse("every 5 minutes", None).unwrap_err();
        assert_eq!(key, "schedule");
        assert!(e.contains("*/5 * * * *"), "{e}");
        let (key, e) = Plan::parse("0 9 * * *", Some("Mars/Olympus")).unwrap_err();
        assert_eq!(key, "timezone");
        assert!(e.contains("Europe/Paris"), "{e}");
        let (_, e) = Plan::parse("@every 500ms", None).unwrap_err();
        assert!(e.contains("whole seconds"), "{e}");
    }
}
