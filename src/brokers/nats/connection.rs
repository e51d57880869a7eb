//! The NATS connection: connecting with the connection task on an I/O
//! thread of its own, tracking whether the connection is up, and declaring
//! the configured JetStream streams.

use std::sync::atomic::{AtomicBool, Ordering};

use async_nats::jetstream::{self, stream};
use tracing::{debug, info, warn};

use super::{NatsStream, Storage};
use crate::brokers::BrokerError;
use crate::telemetry::names;
use crate::telemetry::quiet::{Quiet, Verdict};

/// Stops the connection's I/O thread when the broker is dropped.
pub(super) struct IoThread(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for IoThread {
    fn drop(&mut self) {
        if let Some(stop) = self.0.take() {
            let _ = stop.send(());
        }
    }
}

/// Connects with the connection task on a thread of its own.
///
/// mqfn runs each message in its own task. Were the connection task on the
/// same runtime, every publish or ack would wake it into the worker's LIFO
/// slot, and it would run at once and write that one command: one socket
/// write per command. On its own thread it writes what has queued up
/// meanwhile, many commands at a time.
pub(super) async fn connect_on_io_thread(
    name: &str,
    opts: async_nats::ConnectOptions,
    addrs: Vec<String>,
) -> Result<(async_nats::Client, IoThread), String> {
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name(format!("nats-io-{name}"))
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("cannot start the NATS I/O thread: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
                let connected = opts.connect(addrs).await.map_err(|e| e.to_string());
                let ok = connected.is_ok();
                let _ = ready_tx.send(connected);
                if ok {
                    let _ = stop_rx.await;
                }
            });
        })
        .map_err(|e| format!("cannot start the NATS I/O thread: {e}"))?;
    let client = ready_rx
        .await
        .map_err(|_| "the NATS I/O thread stopped".to_owned())??;
    Ok((client, IoThread(Some(stop_tx))))
}

/// Creates the declared streams that are missing; existing ones are bound as
/// they are.
pub(super) async fn ensure_streams(
    broker: &str,
    js: &jetstream::Context,
    streams: &[NatsStream],
) -> Result<(), BrokerError> {
    for s in streams {
        let config = stream::Config {
            name: s.name.clone(),
            subjects: s.subjects.clone(),
            storage: match s.storage {
                Storage::Memory => stream::StorageType::Memory,
                Storage::File => stream::StorageType::File,
            },
            max_age: s.max_age.unwrap_or_default(),
            // -1 is JetStream's "unlimited".
            max_messages: s
                .max_messages
                .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX)),
            max_bytes: s
                .max_bytes
                .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX)),
            ..Default::default()
        };
        js.get_or_create_stream(config).await.map_err(|e| {
            BrokerError::setup(
                broker.to_owned(),
                format!("cannot create or bind stream {}: {e}", s.name),
            )
        })?;
    }
    Ok(())
}

/// Declares the streams as soon as the connection allows, retrying with
/// backoff, so that streams used only by outputs and dead letters exist too.
pub(super) async fn declare_streams_when_up(
    broker: String,
    js: jetstream::Context,
    streams: Vec<NatsStream>,
) {
    let mut failures = 0;
    while let Err(e) = ensure_streams(&broker, &js, &streams).await {
        failures += 1;
        if failures == 1 || failures % 10 == 0 {
            warn!(broker = %broker, error = %e, "Cannot declare the streams yet; retrying.");
        }
        tokio::time::sleep(crate::brokers::reconnect_delay(failures)).await;
    }
}

/// Follows the connection's events: the up flag, the broker-up gauge and
/// a log line for each change.
pub(super) fn on_event(flag: &AtomicBool, broker: &str, url: &str, event: async_nats::Event) {
    use async_nats::Event;
    let gauge = metrics::gauge!(names::BROKER_UP, "broker" => broker.to_owned());
    match event {
        Event::Connected => {
            flag.store(true, Ordering::Relaxed);
            gauge.set(1.0);
            let suppressed = Quiet::of(broker).recovered();
            info!(broker, url, suppressed, "Connected to NATS.");
        }
        Event::Disconnected => {
            flag.store(false, Ordering::Relaxed);
            gauge.set(0.0);
            warn!(broker, url, "Disconnected from NATS; reconnecting.");
        }
        Event::Closed => {
            flag.store(false, Ordering::Relaxed);
            gauge.set(0.0);
        }
        // Client errors come once per reconnect attempt while the server
        // is away: the first of an outage, then a summary a minute.
        other => match Quiet::of(broker).complain(std::time::Instant::now()) {
            Verdict::Log => {
                warn!(broker, event = %other, "NATS connection event. Repeats are summed up once a minute.")
            }
            Verdict::Summary(n) => {
                warn!(broker, suppressed = n, last = %other, "NATS connection events go on; {n} in the last minute.")
            }
            Verdict::Drop => debug!(broker, event = %other, "NATS connection event."),
        },
    }
}
