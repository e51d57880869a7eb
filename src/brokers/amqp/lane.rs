//! Pipelined publishing to one destination (exchange and routing key).
//!
//! Publishes queue up in the lane; each of its [`LANE_CHANNELS`] tasks takes
//! what has queued (up to [`MAX_BATCH`]), publishes it all on its own
//! confirm-mode channel and waits for every confirm of that batch before it
//! settles any of them. Under load that is group commit: one channel, many
//! publishes per round trip, confirms that the broker coalesces. With one
//! publish per channel instead, mqfn used 1.9× the baseline's CPU per
//! message (docs/benchmarks.md).
//!
//! Why whole batches: a basic.return carries no delivery tag, and lapin
//! hands it to whichever confirm of a multiple-ack it resolves first. So
//! the batch's returns are collected once all its confirms are in, and each
//! is given to the publish whose body (and properties) it carries. Two
//! publishes with the same body and properties are interchangeable: either
//! way one such message reached a queue and one is retried. A return that
//! matches nothing fails every publish of its batch: a retry, never a loss.
//!
//! One lane per destination, so that a publish that closes its channel (a
//! missing exchange) fails only publishes to the same place, which would
//! fail too.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::join_all;
use lapin::message::BasicReturnMessage;
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation};
use tokio::sync::{mpsc, oneshot, Mutex};

use super::sink::{open_channel, Failure, CONFIRM_TIMEOUT};

/// Channels (and batches in flight) per destination.
const LANE_CHANNELS: usize = 2;
/// The most publishes in one batch.
const MAX_BATCH: usize = 256;

/// One publish waiting in a lane.
struct Job {
    payload: Bytes,
    props: BasicProperties,
    done: oneshot::Sender<Result<(), Failure>>,
}

/// The publishing lane of one destination. Its tasks stop when it is
/// dropped, after their current batch.
pub(super) struct Lane {
    jobs: mpsc::UnboundedSender<Job>,
}

impl Lane {
    /// Starts the lane's tasks on the current runtime.
    pub(super) fn start(
        connections: deadpool_lapin::Pool,
        exchange: ShortString,
        routing_key: ShortString,
    ) -> Self {
        let (jobs, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..LANE_CHANNELS {
            let to = Destination {
                connections: connections.clone(),
                exchange: exchange.clone(),
                routing_key: routing_key.clone(),
            };
            tokio::spawn(to.run(rx.clone()));
        }
        Self { jobs }
    }

    /// Publishes one message and waits for its confirm.
    pub(super) async fn send(&self, payload: Bytes, props: BasicProperties) -> Result<(), Failure> {
        let closed = || Failure::NoChannel("the publisher is closed".to_owned());
        let (done, result) = oneshot::channel();
        self.jobs
            .send(Job {
                payload,
                props,
                done,
            })
            .map_err(|_| closed())?;
        result.await.unwrap_or_else(|_| Err(closed()))
    }
}

/// Where a lane's tasks publish, and through which connection.
struct Destination {
    connections: deadpool_lapin::Pool,
    exchange: ShortString,
    routing_key: ShortString,
}

impl Destination {
    /// Takes batches off the lane until it is dropped.
    async fn run(self, jobs: Arc<Mutex<mpsc::UnboundedReceiver<Job>>>) {
        let mut channel: Option<Channel> = None;
        loop {
            let batch = {
                let mut jobs = jobs.lock().await;
                let Some(first) = jobs.recv().await else {
                    return;
                };
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match jobs.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                batch
            };
            let ch = match channel.take().filter(|c| c.status().connected()) {
                Some(ch) => ch,
                None => match open_channel(&self.connections).await {
                    Ok(ch) => ch,
                    Err(why) => {
                        for job in batch {
                            let _ = job.done.send(Err(Failure::NoChannel(why.clone())));
                        }
                        continue;
                    }
                },
            };
            let outcomes =
                match tokio::time::timeout(CONFIRM_TIMEOUT, self.publish(&ch, &batch)).await {
                    Ok(outcomes) => {
                        // A channel closed by the broker is reopened next time.
                        channel = Some(ch);
                        outcomes
                    }
                    // Confirms may still arrive on it: never use it again.
                    Err(_) => batch.iter().map(|_| Err(Failure::TimedOut)).collect(),
                };
            for (job, outcome) in batch.into_iter().zip(outcomes) {
                let _ = job.done.send(outcome);
            }
        }
    }

    /// Publishes `batch` (mandatory), waits for all its confirms and pairs
    /// the returns with the publishes they belong to.
    async fn publish(&self, ch: &Channel, batch: &[Job]) -> Vec<Result<(), Failure>> {
        let opts = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        // Polled in order: delivery tags and frames follow the batch order.
        let sent = join_all(batch.iter().map(|job| {
            ch.basic_publish(
                self.exchange.clone(),
                self.routing_key.clone(),
                opts,
                &job.payload,
                job.props.clone(),
            )
        }))
        .await;
        let confirms = join_all(sent.into_iter().map(|sent| async move {
            match sent {
                Ok(confirm) => confirm.await,
                Err(e) => Err(e),
            }
        }))
        .await;
        let mut returns: Vec<Returned> = Vec::new();
        let mut outcomes: Vec<_> = confirms
            .into_iter()
            .map(|c| match c {
                Err(e) => Err(Failure::Client(e)),
                Ok(Confirmation::Ack(r)) => {
                    returns.extend(r.map(Returned::from));
                    Ok(())
                }
                Ok(Confirmation::NotRequested) => Ok(()),
                Ok(Confirmation::Nack(r)) => {
                    returns.extend(r.map(Returned::from));
                    Err(Failure::Nacked)
                }
            })
            .collect();
        let sent: Vec<_> = batch
            .iter()
            .map(|job| (&job.payload[..], &job.props))
            .collect();
        pair_returns(&sent, &mut outcomes, returns);
        outcomes
    }
}

/// A basic.return, as far as pairing needs it.
struct Returned {
    body: Vec<u8>,
    props: BasicProperties,
    code: u16,
    text: String,
}

impl From<BasicReturnMessage> for Returned {
    fn from(r: BasicReturnMessage) -> Self {
        Self {
            body: r.delivery.data,
            props: r.delivery.properties,
            code: r.reply_code,
            text: r.reply_text.as_str().to_owned(),
        }
    }
}

/// Gives each return to the publish whose body (and, by preference,
/// properties) it carries, one return per publish. A return that matches
/// no publish fails every publish of the batch.
fn pair_returns(
    sent: &[(&[u8], &BasicProperties)],
    outcomes: &mut [Result<(), Failure>],
    returns: Vec<Returned>,
) {
    let mut taken = vec![false; sent.len()];
    for r in returns {
        let find = |exact: bool| {
            (0..sent.len()).find(|&i| {
                !taken[i] && sent[i].0 == r.body.as_slice() && (!exact || *sent[i].1 == r.props)
            })
        };
        let returned = || Failure::Returned(r.code, r.text.clone());
        match find(true).or_else(|| find(false)) {
            Some(i) => {
                taken[i] = true;
                outcomes[i] = Err(returned());
            }
            None => outcomes.iter_mut().for_each(|o| *o = Err(returned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use lapin::types::{AMQPValue, FieldTable};

    use super::*;

    fn returned(body: &str, props: &BasicProperties) -> Returned {
        Returned {
            body: body.as_bytes().to_vec(),
            props: props.clone(),
            code: 312,
            text: "NO_ROUTE".to_owned(),
        }
    }

    fn failed(outcomes: &[Result<(), Failure>]) -> Vec<usize> {
        (0..outcomes.len())
            .filter(|&i| matches!(outcomes[i], Err(Failure::Returned(312, _))))
            .collect()
    }

    #[test]
    fn each_return_goes_to_the_publish_it_carries() {
        let plain = BasicProperties::default();
        let mut h = FieldTable::default();
        h.insert("id".into(), AMQPValue::LongString("2".into()));
        let tagged = BasicProperties::default().with_headers(h);
        let sent = [
            (&b"a"[..], &plain),
            (&b"b"[..], &plain),
            (&b"b"[..], &tagged),
            (&b"b"[..], &plain),
        ];
        // lapin attached the returns to publishes 0 and 1; they belong to
        // "b" with the header (2) and to one plain "b" (1 or 3).
        let mut outcomes = vec![Ok(()), Ok(()), Ok(()), Ok(())];
        let returns = vec![returned("b", &tagged), returned("b", &plain)];
        pair_returns(&sent, &mut outcomes, returns);
        assert_eq!(failed(&outcomes), vec![1, 2]);
        // Two returns of the same body take two publishes.
        let mut outcomes = vec![Ok(()), Ok(()), Ok(()), Ok(())];
        pair_returns(
            &sent,
            &mut outcomes,
            vec![returned("b", &plain), returned("b", &plain)],
        );
        assert_eq!(failed(&outcomes), vec![1, 3]);
        // Properties that did not round-trip still find the body.
        let mut outcomes = vec![Ok(()), Ok(()), Ok(()), Ok(())];
        let odd = BasicProperties::default().with_priority(9);
        pair_returns(&sent, &mut outcomes, vec![returned("a", &odd)]);
        assert_eq!(failed(&outcomes), vec![0]);
    }

    #[test]
    fn a_return_that_matches_nothing_fails_the_whole_batch() {
        let plain = BasicProperties::default();
        let sent = [(&b"a"[..], &plain), (&b"b"[..], &plain)];
        let mut outcomes = vec![Ok(()), Err(Failure::Nacked)];
        pair_returns(&sent, &mut outcomes, vec![returned("zzz", &plain)]);
        assert_eq!(failed(&outcomes), vec![0, 1]);
    }
}
