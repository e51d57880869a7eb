//! One in-process queue: ready messages, messages in flight, delayed
//! redeliveries, watchers, and the faults a test has scripted.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use crate::brokers::{OutMessage, PublishErrorKind};
use crate::message::{Message, Position, TRACEPARENT_HEADER};

/// A message as the queue keeps it.
#[derive(Debug, Clone)]
pub(super) struct Stored {
    pub seq: u64,
    pub msg: OutMessage,
    /// Deliveries so far.
    pub deliveries: u32,
}

#[derive(Debug, Default)]
struct State {
    next_seq: u64,
    ready: VecDeque<Stored>,
    /// Nacked with a delay: visible again at the key's instant.
    delayed: BTreeMap<(Instant, u64), Stored>,
    inflight: HashMap<u64, Stored>,
    taps: Vec<mpsc::UnboundedSender<Message>>,
    refuse_publishes: usize,
    fail_publishes: usize,
    fail_settles: usize,
    end_receives: usize,
    panic_receives: usize,
    refuse_subscribes: usize,
    acked: u64,
    probes: u64,
}

/// An in-process queue with at-least-once semantics.
#[derive(Debug)]
pub struct Queue {
    name: String,
    state: Mutex<State>,
    changed: Notify,
    /// Whether subscribers count as joined (see [`Queue::hold_joins`]).
    joins: tokio::sync::watch::Sender<bool>,
}

impl Queue {
    pub(super) fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            joins: tokio::sync::watch::Sender::new(true),
        }
    }

    /// A lock that survives a panic elsewhere: the state is kept consistent
    /// by each short critical section.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Appends a message, as a publish does, or returns the scripted fault.
    pub fn push(&self, msg: OutMessage) -> Result<(), PublishErrorKind> {
        let mut s = self.state();
        if s.refuse_publishes > 0 {
            s.refuse_publishes -= 1;
            return Err(PublishErrorKind::Rejected);
        }
        if s.fail_publishes > 0 {
            s.fail_publishes -= 1;
            return Err(PublishErrorKind::Transient);
        }
        s.next_seq += 1;
        let stored = Stored {
            seq: s.next_seq,
            msg,
            deliveries: 0,
        };
        if !s.taps.is_empty() {
            let seen = self.message(&stored, "");
            s.taps.retain(|t| t.send(seen.clone()).is_ok());
        }
        s.ready.push_back(stored);
        drop(s);
        self.changed.notify_waiters();
        Ok(())
    }

    /// Publishes a payload with nothing else (for tests).
    pub fn send(&self, payload: impl Into<bytes::Bytes>) {
        let msg = OutMessage {
            payload: payload.into(),
            ..OutMessage::default()
        };
        // A test that scripted a fault for its own sends sees it here.
        let _ = self.push(msg);
    }

    /// The next `n` publishes are refused for good.
    pub fn refuse_publishes(&self, n: usize) {
        self.state().refuse_publishes = n;
    }

    /// The next `n` publishes fail as a broker outage would.
    pub fn fail_publishes(&self, n: usize) {
        self.state().fail_publishes = n;
    }

    /// The next `n` acks or nacks fail; the message is redelivered, as a
    /// broker does when an ack is lost.
    pub fn fail_settles(&self, n: usize) {
        self.state().fail_settles = n;
    }

    /// The next `n` receives end the subscription for good, as a closed
    /// subscription or a stopped client thread does.
    pub fn end_receives(&self, n: usize) {
        self.state().end_receives = n;
    }

    /// The next `n` receives panic (a bug in a source).
    pub fn panic_receives(&self, n: usize) {
        self.state().panic_receives = n;
    }

    /// The next `n` subscriptions are refused, as a missing stream or
    /// queue would be.
    pub fn refuse_subscribes(&self, n: usize) {
        self.state().refuse_subscribes = n;
    }

    /// Subscribers report that they have not joined yet, as a Kafka
    /// group member before its first assignment, until
    /// [`Queue::release_joins`].
    pub fn hold_joins(&self) {
        self.joins.send_replace(false);
    }

    /// Subscribers have joined.
    pub fn release_joins(&self) {
        self.joins.send_replace(true);
    }

    /// Watches whether subscribers have joined.
    pub(super) fn joined(&self) -> tokio::sync::watch::Receiver<bool> {
        self.joins.subscribe()
    }

    /// Takes one scripted receive fault: `Some(true)` to panic,
    /// `Some(false)` to end for good.
    pub(super) fn receive_fault(&self) -> Option<bool> {
        let mut s = self.state();
        if s.panic_receives > 0 {
            s.panic_receives -= 1;
            return Some(true);
        }
        if s.end_receives > 0 {
            s.end_receives -= 1;
            return Some(false);
        }
        None
    }

    /// Takes one scripted subscribe fault.
    pub(super) fn subscribe_fault(&self) -> bool {
        let mut s = self.state();
        let refused = s.refuse_subscribes > 0;
        if refused {
            s.refuse_subscribes -= 1;
        }
        refused
    }

    /// Messages waiting, as a route's backlog probe asks (counted).
    pub(super) fn probe(&self) -> usize {
        let mut s = self.state();
        s.probes += 1;
        s.ready.len() + s.delayed.len()
    }

    /// How often a backlog probe has asked so far.
    pub fn probes(&self) -> u64 {
        self.state().probes
    }

    /// Messages waiting (ready or delayed), not in flight.
    pub fn len(&self) -> usize {
        let s = self.state();
        s.ready.len() + s.delayed.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Messages delivered and not settled.
    pub fn inflight(&self) -> usize {
        self.state().inflight.len()
    }

    /// Messages acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.state().acked
    }

    /// Waits until at least `n` messages wait here.
    pub async fn wait_len(&self, n: usize) {
        self.wait_until(|q| q.len() >= n).await;
    }

    /// Waits until nothing waits and nothing is in flight.
    pub async fn wait_settled(&self) {
        self.wait_until(|q| q.is_empty() && q.inflight() == 0).await;
    }

    /// Waits until `done` holds; re-checked on every change.
    pub async fn wait_until(&self, done: impl Fn(&Queue) -> bool) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if done(self) {
                return;
            }
            changed.await;
        }
    }

    /// Takes every waiting message, oldest first (for tests reading results).
    pub fn drain(&self) -> Vec<Message> {
        let mut s = self.state();
        let mut out: Vec<Stored> = s.ready.drain(..).collect();
        out.extend(std::mem::take(&mut s.delayed).into_values());
        drop(s);
        self.changed.notify_waiters();
        out.iter().map(|m| self.message(m, "")).collect()
    }

    /// Copies of the waiting messages, oldest first, at most `limit`.
    pub fn peek(&self, limit: usize) -> Vec<Message> {
        let s = self.state();
        s.ready
            .iter()
            .chain(s.delayed.values())
            .take(limit)
            .map(|m| self.message(m, ""))
            .collect()
    }

    /// The sequences waiting now, for a taker's cursor.
    pub(super) fn waiting(&self) -> Vec<u64> {
        let s = self.state();
        s.ready
            .iter()
            .chain(s.delayed.values())
            .map(|m| m.seq)
            .collect()
    }

    /// A watcher that sees every message published from now on.
    pub(super) fn tap(&self) -> mpsc::UnboundedReceiver<Message> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.state().taps.push(tx);
        rx
    }

    /// Moves the next visible message in flight; otherwise when the next
    /// delayed one becomes visible.
    pub(super) fn poll(&self, only: Option<u64>) -> Result<Stored, Option<Instant>> {
        let mut s = self.state();
        let now = Instant::now();
        while let Some(entry) = s.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let m = entry.remove();
            s.ready.push_back(m);
        }
        let at = match only {
            Some(seq) => s.ready.iter().position(|m| m.seq == seq),
            None => (!s.ready.is_empty()).then_some(0),
        };
        let Some(mut m) = at.and_then(|i| s.ready.remove(i)) else {
            return Err(s.delayed.keys().next().map(|(t, _)| *t));
        };
        m.deliveries += 1;
        s.inflight.insert(m.seq, m.clone());
        drop(s);
        self.changed.notify_waiters();
        Ok(m)
    }

    /// Waits for the next visible message.
    pub(super) async fn next(&self) -> Stored {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.poll(None) {
                Ok(m) => return m,
                Err(None) => changed.await,
                Err(Some(at)) => {
                    tokio::select! {
                        _ = changed => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
            }
        }
    }

    /// Settles a delivery: `None` acks it, `Some(delay)` hands it back.
    /// `Err` when a scripted settle fault hit: the message is redelivered.
    /// `delivery` is the delivery count the token was made for, so that a
    /// stale token never settles a later delivery of the same message.
    pub(super) fn settle(&self, seq: u64, delivery: u32, nack: Option<Duration>) -> Result<(), ()> {
        let mut s = self.state();
        if s.inflight.get(&seq).map(|m| m.deliveries) != Some(delivery) {
            return Ok(()); // already settled or handed back
        }
        let Some(m) = s.inflight.remove(&seq) else {
            return Ok(());
        };
        let failed = s.fail_settles > 0;
        if failed {
            s.fail_settles -= 1;
        }
        match (failed, nack) {
            (false, None) => s.acked += 1,
            (true, _) => s.ready.push_back(m),
            (false, Some(d)) if d.is_zero() => s.ready.push_back(m),
            (false, Some(d)) => {
                s.delayed.insert((Instant::now() + d, m.seq), m);
            }
        }
        drop(s);
        self.changed.notify_waiters();
        if failed {
            Err(())
        } else {
            Ok(())
        }
    }

    /// The envelope of a stored message, as route `route` sees it.
    pub(super) fn message(&self, m: &Stored, route: &str) -> Message {
        let o = &m.msg;
        Message {
            payload: o.payload.clone(),
            headers: o.headers.clone(),
            key: o.key.clone(),
            subject: self.name.clone(),
            route: route.to_owned(),
            position: Position::stable(&self.name, itoa::Buffer::new().format(m.seq)),
            attempt: m.deliveries.max(1),
            traceparent: o.headers.get(TRACEPARENT_HEADER).map(str::to_owned),
            reply_to: o.reply_to.clone(),
            correlation_id: o.correlation_id.clone(),
            deadline: None,
        }
    }
}
