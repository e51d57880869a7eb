//! `kind = "process"`: long-lived worker processes that speak the frame
//! protocol on stdin/stdout (see `docs/handlers.md`).
//!
//! Each instance runs one request at a time. An instance that exits, breaks
//! the protocol or runs past the deadline is killed and discarded, and its
//! message is retried ([`HandlerError::Crashed`], or retryable on timeout);
//! reads are bounded by the deadline, so mqfn never hangs on a process.

mod frame;
mod instance;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use mqfn_handlers::{Handler, HandlerError, Headers, Message, Output};
use tracing::warn;

use crate::config::ProcessConfig;
use crate::pool::instances::{InstancePool, Instances};

pub use frame::{fuzz_decode, ExchangeError};
pub use instance::{Process, ProcessSpawner};

/// The largest response header frame.
const MAX_HEADER_BYTES: usize = 1 << 20;
/// The largest output payload frame.
pub const MAX_OUTPUT_BYTES: usize = 64 << 20;
/// The longest stderr line logged as one event; longer lines are split.
const MAX_LOG_LINE: usize = 8 << 10;
/// How long a stopped process may take to exit after its stdin closes.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// A process handler: a pool of processes.
pub struct ProcessHandler {
    name: String,
    pool: Arc<InstancePool<ProcessSpawner>>,
    timeout: Duration,
}

impl ProcessHandler {
    /// Builds the handler and its (empty) instance pool.
    pub fn new(name: &str, cfg: &ProcessConfig) -> Self {
        let spawner = ProcessSpawner::new(name, cfg);
        Self {
            name: name.to_owned(),
            pool: InstancePool::new(name, spawner, cfg.max_instances, cfg.idle_timeout),
            timeout: cfg.timeout,
        }
    }

    /// The instance pool, for scaling and shutdown.
    pub fn instances(&self) -> Arc<dyn Instances> {
        self.pool.clone()
    }
}

#[async_trait]
impl Handler for ProcessHandler {
    async fn call(&self, msg: &Message) -> Result<Vec<Output>, HandlerError> {
        let mut lease = self.pool.get().await?;
        let id = lease.id();
        // Under a route, the route's time limit drops this future at the
        // deadline, and dropping the unfinished lease kills the process.
        // Called directly, the handler's own timeout does the same.
        let (deadline, own_limit) = match msg.deadline {
            Some(d) => (d, None),
            None => {
                let d = Instant::now() + self.timeout;
                (d, Some(tokio::time::Instant::from_std(d)))
            }
        };
        let exchange = lease.instance().exchange(msg, deadline);
        let result = match own_limit {
            Some(limit) => tokio::time::timeout_at(limit, exchange).await,
            None => Ok(exchange.await),
        };
        let (resp, payloads) = match result {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                warn!(handler = %self.name, instance = id, error = %e, "Instance failed; it is replaced and the message retried.");
                return Err(HandlerError::crashed(format!("instance {id}: {e}")));
            }
            Err(_) => {
                warn!(handler = %self.name, instance = id, "Instance ran past the deadline; killing it.");
                return Err(HandlerError::retryable(format!(
                    "instance {id} did not answer before the deadline and was killed"
                )));
            }
        };
        if !matches!(resp.status.as_str(), "ok" | "retry" | "fail") {
            warn!(handler = %self.name, instance = id, status = %resp.status, "Unknown response status; the instance is replaced.");
            return Err(HandlerError::crashed(format!(
                "instance {id}: protocol error: unknown status {:?}",
                resp.status
            )));
        }
        lease.finish();
        match resp.status.as_str() {
            "ok" => Ok(resp
                .outputs
                .into_iter()
                .zip(payloads)
                .map(|(h, payload)| Output {
                    payload,
                    headers: h.headers.into_iter().collect::<Headers>(),
                    key: h.key.map(Bytes::from),
                })
                .collect()),
            "retry" => {
                Err(HandlerError::retryable(resp.error.unwrap_or_else(|| {
                    "the handler asked for a retry".to_owned()
                })))
            }
            _ => Err(HandlerError::permanent(
                resp.error
                    .unwrap_or_else(|| "the handler failed".to_owned()),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flaky(timeout: Duration, idle: Duration) -> ProcessHandler {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/handlers/examples/flaky.py");
        let cfg = ProcessConfig {
            command: vec!["python3".into(), script.into()],
            args: vec![],
            env: crate::config::DEFAULT_PROCESS_ENV
                .iter()
                .map(|s| s.to_string())
                .collect(),
            cwd: None,
            timeout,
            max_instances: 2,
            idle_timeout: idle,
        };
        ProcessHandler::new("flaky", &cfg)
    }

    fn msg(payload: &str) -> Message {
        let mut m = Message::new(payload.to_owned());
        m.headers.append("h", "v");
        m
    }

    #[tokio::test]
    async fn instances_are_reused_and_broken_ones_replaced() {
        let h = flaky(Duration::from_secs(10), Duration::from_secs(60));
        for i in 0..5 {
            let out = h.call(&msg(&format!("hello {i}"))).await.unwrap();
            assert_eq!(out[0].payload, format!("hello {i}"));
        }
        let c = h.instances().counts();
        assert_eq!((c.cold_starts, c.warm_starts, c.live), (1, 4, 1), "{c:?}");

        let exit = h.call(&msg("exit")).await.unwrap_err();
        assert!(matches!(exit, HandlerError::Crashed { .. }), "{exit:?}");
        assert!(exit.to_string().contains("exited"), "{exit}");
        let garbage = h.call(&msg("garbage")).await.unwrap_err();
        assert!(
            matches!(garbage, HandlerError::Crashed { .. }),
            "{garbage:?}"
        );
        assert_eq!(
            h.instances().counts().live,
            0,
            "broken instances are discarded"
        );

        assert_eq!(h.call(&msg("again")).await.unwrap()[0].payload, "again");
        let perm = h.call(&msg("permanent")).await.unwrap_err();
        assert!(!perm.is_retryable());
        let retry = h.call(&msg("retry")).await.unwrap_err();
        assert!(matches!(retry, HandlerError::Retryable { .. }));
        let c = h.instances().counts();
        assert_eq!((c.cold_starts, c.live), (3, 1), "{c:?}");
        h.instances().close().await;
        assert_eq!(h.instances().counts().live, 0);
    }

    #[tokio::test]
    async fn a_process_past_its_deadline_is_killed_and_replaced() {
        let h = flaky(Duration::from_secs(2), Duration::from_secs(60));
        let err = h.call(&msg("sleep:30")).await.unwrap_err();
        assert!(
            err.is_retryable() && err.to_string().contains("killed"),
            "{err}"
        );
        assert_eq!(h.instances().counts().live, 0);
        assert_eq!(h.call(&msg("ok")).await.unwrap()[0].payload, "ok");
        assert_eq!(h.instances().counts().cold_starts, 2);
    }

    #[tokio::test]
    async fn dropping_the_call_discards_the_instance() {
        let h = flaky(Duration::from_secs(30), Duration::from_secs(60));
        let m = msg("sleep:30");
        let call = h.call(&m);
        assert!(tokio::time::timeout(Duration::from_millis(500), call)
            .await
            .is_err());
        let c = h.instances().counts();
        assert_eq!((c.live, c.busy), (0, 0), "{c:?}");
    }

    #[tokio::test]
    async fn idle_instances_are_reaped_and_parking_stops_them_all() {
        let h = flaky(Duration::from_secs(10), Duration::from_millis(200));
        h.call(&msg("a")).await.unwrap();
        assert_eq!(h.instances().counts().live, 1);
        let gone = tokio::time::timeout(Duration::from_secs(10), async {
            while h.instances().counts().live > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(gone.is_ok(), "the reaper stops idle instances");

        let h = flaky(Duration::from_secs(10), Duration::from_secs(600));
        let i = h.instances();
        i.attach();
        h.call(&msg("a")).await.unwrap();
        assert_eq!(i.reap().await, 0, "not idle for long enough");
        i.park(true);
        assert_eq!(i.reap().await, 1, "scaled to zero: stopped");
        i.park(false);
        h.call(&msg("b")).await.unwrap();
        assert_eq!(i.counts().cold_starts, 2, "activation is a cold start");
    }

    #[tokio::test]
    async fn a_missing_program_is_a_crash_not_a_hang() {
        let cfg = ProcessConfig {
            command: vec!["/no/such/program".into()],
            args: vec![],
            env: vec![],
            cwd: None,
            timeout: Duration::from_secs(5),
            max_instances: 1,
            idle_timeout: Duration::from_secs(5),
        };
        let h = ProcessHandler::new("missing", &cfg);
        let err = h.call(&Message::new("x")).await.unwrap_err();
        assert!(matches!(err, HandlerError::Crashed { .. }), "{err:?}");
    }
}
