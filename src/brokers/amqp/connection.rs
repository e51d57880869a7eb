//! The consuming connection and its supervisor: connect, declare the
//! topology, watch the connection, and after a loss reconnect with backoff,
//! reporting down meanwhile.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use lapin::{Channel, Connection, ConnectionProperties, Event};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::topology;
use super::AmqpConfig;
use crate::brokers::{reconnect_delay, BrokerError, BrokerErrorKind};
use crate::telemetry::quiet::{Quiet, Verdict};
use crate::telemetry::{names, redact_url};

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the supervisor checks the connection besides its events.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The largest frame mqfn asks RabbitMQ for, unless the URL sets
/// `frame_max`. lapin keeps 32 frames of buffer per direction per
/// connection, zero-filled when the connection opens: with RabbitMQ's
/// default of 128 KiB that is 8 MiB per connection, a third of mqfn's idle
/// RSS. 32 KiB costs 2 MiB; bodies larger than a frame are split in frames.
const FRAME_MAX: u32 = 32 * 1024;

/// `url` with `frame_max` set to [`FRAME_MAX`] when the URL does not set
/// it. A URL that does not parse is returned as it is, for lapin to report.
pub(super) fn tuned_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return url.to_owned();
    };
    if parsed.query_pairs().any(|(k, _)| k == "frame_max") {
        return url.to_owned();
    }
    parsed
        .query_pairs_mut()
        .append_pair("frame_max", &FRAME_MAX.to_string());
    parsed.into()
}

/// The name a connection shows in RabbitMQ: broker, process and purpose.
pub(super) fn connection_name(broker: &str, purpose: &str) -> String {
    format!("mqfn/{broker}/{}/{purpose}", std::process::id())
}

/// The consuming connection, as the supervisor keeps it.
pub(crate) struct Link {
    pub(super) broker: String,
    pub(super) cfg: AmqpConfig,
    current: watch::Sender<Option<Arc<Connection>>>,
    up: AtomicBool,
    last_error: std::sync::Mutex<String>,
    /// Channels of taps and inboxes, closed before the connection so that
    /// a dropped stream never races the connection's close.
    private: std::sync::Mutex<Vec<Channel>>,
}

impl Link {
    /// A link that is down until [`supervise`] brings it up.
    pub(super) fn new(broker: &str, cfg: &AmqpConfig) -> Self {
        metrics::gauge!(names::BROKER_UP, "broker" => broker.to_owned()).set(0.0);
        Self {
            broker: broker.to_owned(),
            cfg: cfg.clone(),
            current: watch::channel(None).0,
            up: AtomicBool::new(false),
            last_error: std::sync::Mutex::new("connecting".to_owned()),
            private: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Whether the connection is up and the topology declared.
    pub(super) fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Keeps a tap's or inbox's channel, to be closed before the connection.
    pub(super) fn keep_private(&self, ch: Channel) {
        let mut private = self.private.lock().unwrap_or_else(PoisonError::into_inner);
        private.retain(|c| c.status().connected());
        private.push(ch);
    }

    pub(super) fn receive_err(&self, message: impl Into<String>) -> BrokerError {
        BrokerError::receive(self.broker.clone(), message.into())
    }

    fn set(&self, conn: Option<Arc<Connection>>, why: &str) {
        let up = conn.is_some();
        self.up.store(up, Ordering::Relaxed);
        self.current.send_replace(conn);
        metrics::gauge!(names::BROKER_UP, "broker" => self.broker.clone()).set(if up {
            1.0
        } else {
            0.0
        });
        let url = redact_url(&self.cfg.url);
        if up {
            let suppressed = Quiet::of(&self.broker).recovered();
            info!(broker = %self.broker, url, suppressed, "Connected to AMQP; topology declared.");
        } else {
            *self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = why.to_owned();
            warn!(broker = %self.broker, url, reason = why, "Lost the AMQP connection; reconnecting.");
        }
    }

    /// A new channel on the current connection, waiting for one up to
    /// `wait` (`None`: for as long as it takes).
    pub(super) async fn channel(&self, wait: Option<Duration>) -> Result<Channel, BrokerError> {
        let mut rx = self.current.subscribe();
        let conn = {
            let ready = rx.wait_for(Option::is_some);
            let got = match wait {
                Some(w) => tokio::time::timeout(w, ready).await.ok(),
                None => Some(ready.await),
            };
            match got {
                Some(Ok(c)) => c.clone(),
                _ => None,
            }
        };
        let Some(conn) = conn else {
            let why = self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            return Err(BrokerError::connect(
                self.broker.clone(),
                format!("not connected ({why})"),
            ));
        };
        conn.create_channel()
            .await
            .map_err(|e| self.receive_err(format!("cannot open a channel: {e}")))
    }

    /// Connects and declares the topology.
    async fn open(&self) -> Result<Connection, BrokerError> {
        let err = |message: String| BrokerError::connect(self.broker.clone(), message);
        let props = ConnectionProperties::default()
            .with_connection_name(connection_name(&self.broker, "consume").into());
        let url = redact_url(&self.cfg.url);
        let tuned = tuned_url(&self.cfg.url);
        let connect = Connection::connect(&tuned, props);
        let conn = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                let why = topology::reason(&e);
                return Err(err(format!(
                    "{why} (url {url}); is RabbitMQ running, and are the URL, user and vhost right?"
                )));
            }
            Err(_) => {
                return Err(err(format!(
                    "no answer from {url} within {CONNECT_TIMEOUT:?}"
                )))
            }
        };
        if let Err(e) = topology::declare(&conn, &self.broker, &self.cfg).await {
            let _ = conn.close(200, "OK".into()).await;
            return Err(e);
        }
        Ok(conn)
    }
}

/// Keeps the consuming connection up until `stop`. With `first`, the
/// outcome of the first attempt is reported there, and a failure ends it
/// (CLI commands fail fast); otherwise it retries for ever.
pub(super) async fn supervise(
    link: Arc<Link>,
    stop: CancellationToken,
    mut first: Option<oneshot::Sender<Result<(), BrokerError>>>,
) {
    let mut failures = 0u32;
    loop {
        let opened = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            c = link.open() => c,
        };
        match opened {
            Ok(conn) => {
                failures = 0;
                let conn = Arc::new(conn);
                let events = conn.events_listener();
                link.set(Some(conn.clone()), "");
                if let Some(tx) = first.take() {
                    let _ = tx.send(Ok(()));
                }
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => {
                        link.current.send_replace(None);
                        link.up.store(false, Ordering::Relaxed);
                        let private = std::mem::take(&mut *link.private.lock().unwrap_or_else(PoisonError::into_inner));
                        for ch in private {
                            let _ = ch.close(200, "OK".into()).await;
                        }
                        let _ = conn.close(200, "OK".into()).await;
                        return;
                    }
                    why = lost(&conn, events) => link.set(None, &why),
                }
            }
            Err(e) => {
                if let Some(tx) = first.take() {
                    let _ = tx.send(Err(e));
                    return;
                }
                failures += 1;
                match Quiet::of(&link.broker).complain(std::time::Instant::now()) {
                    Verdict::Log => {
                        warn!(broker = %link.broker, error = %e, "Cannot connect to AMQP yet; retrying. Repeats are summed up once a minute.")
                    }
                    Verdict::Summary(n) => {
                        warn!(broker = %link.broker, suppressed = n, last_error = %e, "Still cannot connect to AMQP; {n} attempts in the last minute.")
                    }
                    Verdict::Drop => {
                        debug!(broker = %link.broker, error = %e, "Cannot connect to AMQP yet; retrying.")
                    }
                }
                let why = match e.kind {
                    BrokerErrorKind::Connect | BrokerErrorKind::Setup => e.message.clone(),
                    _ => e.to_string(),
                };
                *link
                    .last_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = why;
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(reconnect_delay(failures)) => {}
                }
            }
        }
    }
}

/// Resolves with the reason once the connection is no longer usable.
async fn lost(conn: &Connection, events: impl futures::Stream<Item = Event>) -> String {
    let mut events = std::pin::pin!(events);
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                // Channel errors come here too; only a dead connection counts.
                Some(Event::Error(e)) if !conn.status().connected() => return topology::reason(&e),
                None => return "the connection closed".to_owned(),
                Some(_) => {}
            },
            _ = tick.tick() => if !conn.status().connected() {
                return "the connection closed".to_owned();
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_max_is_asked_for_unless_the_url_sets_it() {
        assert_eq!(
            tuned_url("amqp://guest:p%40ss@127.0.0.1:5672/%2f"),
            "amqp://guest:p%40ss@127.0.0.1:5672/%2f?frame_max=32768"
        );
        assert_eq!(
            tuned_url("amqps://h/vh?heartbeat=10"),
            "amqps://h/vh?heartbeat=10&frame_max=32768"
        );
        let own = "amqp://h/%2f?frame_max=131072";
        assert_eq!(tuned_url(own), own);
        assert_eq!(tuned_url("not a url"), "not a url");
    }
}
