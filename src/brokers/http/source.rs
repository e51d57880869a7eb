//! A route on the listener: its entry in the table, the source that hands
//! its requests to the route, and the settle token that answers them.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use super::config::{Auth, Mode};
use super::{HttpEndpoint, Table};
use crate::brokers::{
    Answer, BacklogProbe, BrokerError, Delivery, OutMessage, Publisher, Settle, Source,
};
use crate::config::{Endpoint, RouteConfig};
use crate::message::Message;
use mqfn_handlers::HandlerError;

/// How a request's message ended, as the listener answers it.
#[derive(Debug)]
pub(super) enum Reply {
    /// The results.
    Done(Vec<OutMessage>),
    /// The handler failed.
    Failed {
        error: HandlerError,
        timed_out: bool,
    },
    /// Skipped by the route's filter.
    Filtered,
    /// Handed back (a publish not confirmed, a shutdown): come back after
    /// the delay.
    Later(Duration),
}

/// A route served at one path.
pub(super) struct Entry {
    /// The route's name.
    pub route: String,
    /// Where its requests go.
    pub tx: mpsc::Sender<Delivery>,
    /// Sync or async.
    pub mode: Mode,
    /// Who may call, and the secret.
    pub auth: Option<(Auth, Vec<u8>)>,
    /// The route's broker source, where queued requests go (a route's own
    /// `http` key only).
    pub forward: Option<(Arc<dyn Publisher>, Endpoint)>,
    /// The route's `max_message_bytes`.
    pub max_bytes: Option<usize>,
    /// The route's `workers.max`, for the 503's message.
    pub workers_max: usize,
    /// How long a request may wait for its answer in all.
    pub wait: Duration,
}

/// Deliveries of one route's requests. Dropped (the route stopped or was
/// reloaded), it takes the path off the listener, unless a newer
/// registration of the path took it over.
pub(super) struct HttpSource {
    rx: mpsc::Receiver<Delivery>,
    table: Arc<Table>,
    path: String,
    entry: Arc<Entry>,
}

impl HttpSource {
    /// Serves `route` at `ep`'s path, replacing an older registration.
    pub fn register(
        table: &Arc<Table>,
        route: &RouteConfig,
        ep: &HttpEndpoint,
        forward: Option<(Arc<dyn Publisher>, Endpoint)>,
    ) -> Self {
        // The queue in front of the route, beyond the messages its window
        // holds: once it is full, requests get 503.
        let (tx, rx) = mpsc::channel(route.workers.max.max(1));
        let entry = Arc::new(Entry {
            route: route.name.clone(),
            tx,
            mode: ep.mode,
            auth: ep.auth.clone().map(|a| {
                let secret = a.secret();
                (a, secret)
            }),
            forward,
            max_bytes: route.max_message_bytes,
            workers_max: route.workers.max,
            // The invocation's own limit answers 504 first; this bounds
            // the wait for a worker too. Without a route `timeout`, the
            // handler's applies, which this side does not know: an hour.
            wait: route.timeout.map_or(Duration::from_secs(3600), |t| {
                t * 2 + Duration::from_secs(1)
            }),
        });
        table
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(ep.http.clone(), entry.clone());
        Self {
            rx,
            table: table.clone(),
            path: ep.http.clone(),
            entry,
        }
    }
}

impl Drop for HttpSource {
    fn drop(&mut self) {
        let mut table = self.table.write().unwrap_or_else(PoisonError::into_inner);
        if table
            .get(&self.path)
            .is_some_and(|e| Arc::ptr_eq(e, &self.entry))
        {
            table.remove(&self.path);
        }
    }
}

#[async_trait]
impl Source for HttpSource {
    async fn next(&mut self) -> Result<Delivery, BrokerError> {
        match self.rx.recv().await {
            Some(d) => Ok(d),
            // The entry holds a sender for as long as this source lives.
            None => Err(BrokerError::terminal("http", "the listener went away")),
        }
    }

    fn backlog_probe(&self) -> Option<Arc<dyn BacklogProbe>> {
        Some(Arc::new(Queued(self.entry.clone())))
    }

    async fn close(&mut self) {
        // Requests still queued are answered 503 as their tokens drop.
        self.rx.close();
    }
}

/// Requests queued and not yet taken by the route.
struct Queued(Arc<Entry>);

#[async_trait]
impl BacklogProbe for Queued {
    async fn backlog(&self) -> Result<u64, BrokerError> {
        let tx = &self.0.tx;
        Ok((tx.max_capacity() - tx.capacity()) as u64)
    }
}

/// Answers one request. Dropped unanswered, the listener answers 503.
pub(super) struct Token {
    tx: Mutex<Option<oneshot::Sender<Reply>>>,
}

impl Token {
    pub fn new(tx: oneshot::Sender<Reply>) -> Self {
        Self {
            tx: Mutex::new(Some(tx)),
        }
    }

    fn send(&self, reply: Reply) {
        let tx = self
            .tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(tx) = tx {
            let _ = tx.send(reply); // the client may have gone
        }
    }
}

#[async_trait]
impl Settle for Token {
    async fn ack(&self) -> Result<(), BrokerError> {
        // Answered already, unless the route's filter skipped it.
        self.send(Reply::Filtered);
        Ok(())
    }

    async fn nack(&self, _msg: &Message, delay: Duration) -> Result<(), BrokerError> {
        self.send(Reply::Later(delay));
        Ok(())
    }

    fn waits(&self) -> bool {
        true
    }

    fn answer(&self, answer: Answer<'_>) {
        self.send(match answer {
            Answer::Done(outputs) => Reply::Done(outputs.to_vec()),
            Answer::Failed { error, timed_out } => Reply::Failed {
                error: error.clone(),
                timed_out,
            },
        });
    }
}
