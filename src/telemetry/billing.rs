//! Pay-per-use accounting: billed handler time, each invocation rounded up
//! to the millisecond, exported as `mqfn_handler_billed_seconds_total`.
//!
//! The `metrics` crate's counters are integers, and a seconds counter needs
//! fractions, so the total is kept here in whole milliseconds and rendered
//! into `/metrics` as a Prometheus counter in seconds.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use super::names::HANDLER_BILLED_SECONDS_TOTAL;

fn ledger() -> &'static Mutex<BTreeMap<String, Arc<AtomicU64>>> {
    static LEDGER: OnceLock<Mutex<BTreeMap<String, Arc<AtomicU64>>>> = OnceLock::new();
    LEDGER.get_or_init(Default::default)
}

/// The billed milliseconds of one invocation: its duration rounded up to
/// the next whole millisecond, at least 1.
pub fn billed_ms(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_nanos().div_ceil(1_000_000))
        .unwrap_or(u64::MAX)
        .max(1)
}

/// One handler's line in the ledger, looked up once and charged per
/// invocation without a lock.
#[derive(Debug, Clone)]
pub struct Account(Arc<AtomicU64>);

impl Account {
    /// The account of `handler`, opened on first use.
    pub fn of(handler: &str) -> Self {
        let mut l = ledger().lock().unwrap_or_else(PoisonError::into_inner);
        Self(l.entry(handler.to_owned()).or_default().clone())
    }

    /// Bills one invocation that took `elapsed`.
    pub fn charge(&self, elapsed: Duration) {
        self.0.fetch_add(billed_ms(elapsed), Ordering::Relaxed);
    }
}

/// Billed seconds of `handler` so far.
pub fn billed_seconds(handler: &str) -> f64 {
    let l = ledger().lock().unwrap_or_else(PoisonError::into_inner);
    l.get(handler)
        .map_or(0.0, |c| c.load(Ordering::Relaxed) as f64 / 1000.0)
}

/// The ledger in Prometheus text format.
pub fn render() -> String {
    let l = ledger().lock().unwrap_or_else(PoisonError::into_inner);
    let mut out = String::new();
    if l.is_empty() {
        return out;
    }
    let name = HANDLER_BILLED_SECONDS_TOTAL;
    let _ = writeln!(
        out,
        "# HELP {name} Billed handler time: each invocation rounded up to 1 ms."
    );
    let _ = writeln!(out, "# TYPE {name} counter");
    for (handler, ms) in l.iter() {
        let secs = ms.load(Ordering::Relaxed) as f64 / 1000.0;
        let _ = writeln!(out, "{name}{{handler=\"{}\"}} {secs}", escape(handler));
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_up_to_the_millisecond() {
        assert_eq!(billed_ms(Duration::from_micros(1)), 1);
        assert_eq!(billed_ms(Duration::from_micros(1000)), 1);
        assert_eq!(billed_ms(Duration::from_micros(1001)), 2);
        assert_eq!(billed_ms(Duration::ZERO), 1);
    }

    #[test]
    fn renders_a_counter_in_seconds() {
        let account = Account::of("billing-test");
        account.charge(Duration::from_micros(1500));
        account.charge(Duration::from_micros(10));
        assert_eq!(billed_seconds("billing-test"), 0.003);
        let text = render();
        assert!(text.contains("# TYPE mqfn_handler_billed_seconds_total counter"));
        assert!(text.contains("mqfn_handler_billed_seconds_total{handler=\"billing-test\"} 0.003"));
    }
}
