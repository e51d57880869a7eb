//! NATS: core subjects (at-most-once, queue groups) and JetStream (durable
//! pull consumers, PubAck-confirmed publishes).

pub mod config;
mod dlq;
mod sink;
mod source;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_nats::jetstream::{self, stream};
use async_nats::{HeaderMap, HeaderName, HeaderValue};
use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use tracing::{info, warn};

use super::{BacklogProbe, Broker, BrokerError, Kind as _, Publisher, Source};
pub use config::{NatsConfig, NatsSource, NatsStream, NatsTarget, Storage, KIND};

use crate::config::{Endpoint, RouteConfig};
use crate::message::{
    Headers, Message, CORRELATION_HEADER, KEY_HEADER, REPLY_HEADER, TRACEPARENT_HEADER,
};
use crate::telemetry::{names, redact_url};

/// A NATS connection with its JetStream context.
pub struct NatsBroker {
    name: String,
    cfg: NatsConfig,
    client: async_nats::Client,
    js: jetstream::Context,
    up: Arc<AtomicBool>,
    _io: IoThread,
}

/// Stops the connection's I/O thread when the broker is dropped.
struct IoThread(Option<tokio::sync::oneshot::Sender<()>>);

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
async fn connect_on_io_thread(
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

impl NatsBroker {
    /// Connects. With `wait` false the connection is made in the background
    /// and retried for ever, so that `run` starts while NATS is down.
    pub async fn connect(name: &str, cfg: &NatsConfig, wait: bool) -> Result<Self, BrokerError> {
        let err = |message: String| BrokerError::connect(name.to_owned(), message);
        let mut opts = match (&cfg.credentials_file, &cfg.nkey_file) {
            (Some(path), _) => async_nats::ConnectOptions::with_credentials_file(path)
                .await
                .map_err(|e| err(format!("cannot read credentials_file {path}: {e}")))?,
            (None, Some(path)) => {
                let seed = std::fs::read_to_string(path)
                    .map_err(|e| err(format!("cannot read nkey_file {path}: {e}")))?;
                async_nats::ConnectOptions::with_nkey(seed.trim().to_owned())
            }
            (None, None) => async_nats::ConnectOptions::new(),
        };
        let up = Arc::new(AtomicBool::new(false));
        let flag = up.clone();
        let broker = name.to_owned();
        let url = redact_url(&cfg.url);
        if let Some(ca) = &cfg.tls_ca_file {
            opts = opts.add_root_certificates(ca.into()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&cfg.tls_cert_file, &cfg.tls_key_file) {
            opts = opts
                .add_client_certificate(cert.into(), key.into())
                .require_tls(true);
        }
        opts = opts
            .name(format!("mqfn/{name}"))
            .connection_timeout(cfg.connect_timeout)
            .max_reconnects(None)
            .event_callback(move |event| {
                let (flag, broker, url) = (flag.clone(), broker.clone(), url.clone());
                async move { on_event(&flag, &broker, &url, event) }
            });
        if cfg.tls_required {
            opts = opts.require_tls(true);
        }
        if !wait {
            opts = opts.retry_on_initial_connect();
        }
        let addrs: Vec<String> = cfg.url.split(',').map(|a| a.trim().to_owned()).collect();
        let (client, io) = connect_on_io_thread(name, opts, addrs).await.map_err(|e| {
            err(format!(
                "{e} (url {}); is the server running and the URL right?",
                redact_url(&cfg.url)
            ))
        })?;
        if client.connection_state() == async_nats::connection::State::Connected {
            up.store(true, Ordering::Relaxed);
            metrics::gauge!(names::BROKER_UP, "broker" => name.to_owned()).set(1.0);
        }
        let js = jetstream::new(client.clone());
        if !cfg.streams.is_empty() {
            let task = declare_streams_when_up(name.to_owned(), js.clone(), cfg.streams.clone());
            if wait {
                // CLI commands: declare before publishing, within a bound.
                let _ = tokio::time::timeout(cfg.connect_timeout, task).await;
            } else {
                tokio::spawn(task);
            }
        }
        Ok(Self {
            name: name.to_owned(),
            cfg: cfg.clone(),
            client,
            js,
            up,
            _io: io,
        })
    }

    /// Creates the declared streams that are missing.
    async fn ensure_streams(&self) -> Result<(), BrokerError> {
        ensure_streams(&self.name, &self.js, &self.cfg.streams).await
    }
}

/// Creates the declared streams that are missing; existing ones are bound as
/// they are.
async fn ensure_streams(
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
async fn declare_streams_when_up(broker: String, js: jetstream::Context, streams: Vec<NatsStream>) {
    let mut failures = 0;
    while let Err(e) = ensure_streams(&broker, &js, &streams).await {
        failures += 1;
        if failures == 1 || failures % 10 == 0 {
            warn!(broker = %broker, error = %e, "Cannot declare the streams yet; retrying.");
        }
        tokio::time::sleep(crate::brokers::reconnect_delay(failures)).await;
    }
}

fn on_event(flag: &AtomicBool, broker: &str, url: &str, event: async_nats::Event) {
    use async_nats::Event;
    let gauge = metrics::gauge!(names::BROKER_UP, "broker" => broker.to_owned());
    match event {
        Event::Connected => {
            flag.store(true, Ordering::Relaxed);
            gauge.set(1.0);
            info!(broker, url, "Connected to NATS.");
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
        other => warn!(broker, event = %other, "NATS connection event."),
    }
}

#[async_trait]
impl Broker for NatsBroker {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        KIND.name()
    }

    fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    async fn source(
        &self,
        route: &RouteConfig,
        window: usize,
    ) -> Result<Box<dyn Source>, BrokerError> {
        let Some(src) = route.source.get::<NatsSource>() else {
            return Err(self.not_mine(&route.source));
        };
        if let Some(stream) = &src.stream {
            self.ensure_streams().await?;
            let s = source::JetStreamSource::bind(&self.name, &self.js, route, src, stream, window)
                .await?;
            Ok(Box::new(s))
        } else {
            let s = source::CoreSource::subscribe(&self.name, &self.client, route, src).await?;
            Ok(Box::new(s))
        }
    }

    fn publisher(&self) -> Arc<dyn Publisher> {
        Arc::new(sink::NatsPublisher::new(
            &self.name,
            self.client.clone(),
            self.cfg.jetstream.then(|| self.js.clone()),
        ))
    }

    async fn tap(&self, at: &Endpoint) -> Result<BoxStream<'static, Message>, BrokerError> {
        let subject = at.address();
        let sub =
            self.client.subscribe(subject).await.map_err(|e| {
                BrokerError::receive(self.name.clone(), e.to_string()).with_source(e)
            })?;
        self.client
            .flush()
            .await
            .map_err(|e| BrokerError::receive(self.name.clone(), e.to_string()).with_source(e))?;
        Ok(sub.map(|m| core_message(m, "")).boxed())
    }

    async fn inbox(&self) -> Result<(String, BoxStream<'static, Message>), BrokerError> {
        let inbox = self.client.new_inbox();
        let at = Endpoint::new(&self.name, Arc::new(NatsTarget::new(inbox.clone())));
        let stream = self.tap(&at).await?;
        Ok((inbox, stream))
    }

    async fn browse(&self, at: &Endpoint, limit: usize) -> Result<Vec<Message>, BrokerError> {
        dlq::browse(&self.name, &self.js, &at.address(), limit).await
    }

    async fn take(&self, at: &Endpoint) -> Result<Box<dyn Source>, BrokerError> {
        let s = dlq::TakeSource::open(&self.name, &self.js, &at.address()).await?;
        Ok(Box::new(s))
    }

    fn reserved_headers(&self) -> &'static [&'static str] {
        &["Nats-"]
    }

    async fn close(&self) {
        if let Err(e) = self.client.flush().await {
            warn!(broker = %self.name, error = %e, "Could not flush NATS before closing.");
        }
    }
}

/// Splits NATS headers into the envelope's fields.
fn from_header_map(map: Option<&HeaderMap>, msg: &mut Message) {
    let Some(map) = map else { return };
    let mut headers = Headers::new();
    for (name, values) in map.iter() {
        for v in values {
            headers.append(name.to_string(), v.as_str());
        }
    }
    msg.key = headers
        .get(KEY_HEADER)
        .map(|k| bytes::Bytes::from(k.to_owned()));
    msg.traceparent = headers.get(TRACEPARENT_HEADER).map(str::to_owned);
    msg.correlation_id = headers.get(CORRELATION_HEADER).map(str::to_owned);
    // The explicit header wins over the native reply subject: a JetStream
    // publish uses the native one for its PubAck.
    if let Some(r) = headers.get(REPLY_HEADER) {
        msg.reply_to = Some(r.to_owned());
    }
    msg.headers = headers;
}

/// Builds NATS headers, refusing names and values the protocol cannot carry.
fn to_header_map(headers: &Headers) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (k, v) in headers.iter() {
        let (name, value) = header(k, v)?;
        map.append(name, value);
    }
    Ok(map)
}

/// One NATS header, or why NATS cannot carry it. async-nats's own parsers
/// decide (names of printable ASCII without `:`, values without line
/// breaks); its `&str` conversions would panic on the same input.
fn header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let parsed: Option<HeaderName> = name.parse().ok().filter(|_| !name.is_empty());
    let Some(parsed) = parsed else {
        return Err(format!(
            "header name {name:?} is not valid for NATS (printable ASCII without ':' only)"
        ));
    };
    let Ok(value) = value.parse() else {
        return Err(format!(
            "header {name} has a line break, which NATS cannot carry"
        ));
    };
    Ok((parsed, value))
}

fn core_message(m: async_nats::Message, route: &str) -> Message {
    let mut msg = Message {
        payload: m.payload,
        subject: m.subject.to_string(),
        route: route.to_owned(),
        attempt: 1,
        reply_to: m.reply.map(|r| r.to_string()),
        ..Message::default()
    };
    from_header_map(m.headers.as_ref(), &mut msg);
    msg
}

/// The JetStream consumer's pending count, for the autoscaler.
struct ConsumerBacklog {
    broker: String,
    consumer: jetstream::consumer::Consumer<jetstream::consumer::pull::Config>,
}

#[async_trait]
impl BacklogProbe for ConsumerBacklog {
    async fn backlog(&self) -> Result<u64, BrokerError> {
        let info =
            self.consumer.get_info().await.map_err(|e| {
                BrokerError::receive(self.broker.clone(), e.to_string()).with_source(e)
            })?;
        Ok(info.num_pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_nats_cannot_carry_are_refused_not_panicked_on() {
        for (name, value, why) in [
            ("naïve", "v", "not valid for NATS"),
            ("with space", "v", "not valid for NATS"),
            ("a:b", "v", "not valid for NATS"),
            ("", "v", "not valid for NATS"),
            ("ok", "line\r\nbreak", "line break"),
        ] {
            let h: Headers = [(name, value)].into_iter().collect();
            let e = to_header_map(&h).expect_err(name);
            assert!(e.contains(why), "{name:?}: {e}");
        }
        let h: Headers = [("a", "1"), ("a", "2"), ("Nats-Msg-Id", "x")]
            .into_iter()
            .collect();
        let map = to_header_map(&h).unwrap();
        assert_eq!(map.get_all("a").count(), 2);
        assert_eq!(map.get("Nats-Msg-Id").unwrap().as_str(), "x");
    }
}
