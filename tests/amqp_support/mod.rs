//! Helpers for `tests/amqp.rs`: a test-side RabbitMQ client, `rabbitmqctl`,
//! a private vhost and user, and config snippets.

#![allow(dead_code)] // each test crate uses a different part

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::common::{metric, rand_name, Mqfn};

/// Bounds for a hung test, never timing assertions.
pub const LONG: Duration = Duration::from_secs(180);
pub const SHORT: Duration = Duration::from_secs(60);

/// A test-side client of the broker.
pub struct Rabbit {
    conn: Connection,
    ch: Channel,
}

/// One message read back, with its headers as text.
pub struct Got {
    /// The payload as text (lossy).
    pub payload: String,
    /// The payload, byte for byte.
    pub data: Vec<u8>,
    pub headers: HashMap<String, String>,
    pub correlation_id: Option<String>,
}

impl Rabbit {
    pub async fn connect(url: &str) -> Self {
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("the test connects to RabbitMQ (is it running on 127.0.0.1:5672?)");
        let ch = conn.create_channel().await.expect("channel");
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        Self { conn, ch }
    }

    /// Publishes to a queue through the default exchange, confirmed.
    pub async fn publish_all<'a, P: AsRef<[u8]>>(
        &self,
        queue: &str,
        msgs: impl IntoIterator<Item = (P, Vec<(&'a str, String)>)>,
    ) {
        for (payload, headers) in msgs {
            let mut t = FieldTable::default();
            for (k, v) in headers {
                t.insert(k.into(), AMQPValue::LongString(v.into()));
            }
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_headers(t);
            let opts = BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            };
            let _confirm = self
                .ch
                .basic_publish("".into(), queue.into(), opts, payload.as_ref(), props)
                .await
                .expect("publish");
        }
        let returned = self.ch.wait_for_confirms().await.expect("confirms");
        assert!(
            returned.is_empty(),
            "{} test messages were unroutable",
            returned.len()
        );
    }

    pub async fn publish(&self, queue: &str, payload: &str) {
        self.publish_all(queue, [(payload.to_owned(), Vec::new())])
            .await;
    }

    /// Ready messages in `queue` (passive declare).
    pub async fn count(&self, queue: &str) -> u32 {
        let ch = self.conn.create_channel().await.expect("channel");
        let opts = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let q = ch
            .queue_declare(queue.into(), opts, FieldTable::default())
            .await
            .unwrap_or_else(|e| panic!("queue {queue} exists: {e}"));
        let _ = ch.close(200, "OK".into()).await;
        q.message_count()
    }

    /// Takes `n` messages from `queue`.
    pub async fn take(&self, queue: &str, n: usize) -> Vec<Got> {
        self.take_until(queue, |got| got.len() >= n).await
    }

    /// Takes messages from `queue` until `enough` says so.
    pub async fn take_until(&self, queue: &str, enough: impl Fn(&[Got]) -> bool) -> Vec<Got> {
        let ch = self.conn.create_channel().await.expect("channel");
        let opts = BasicConsumeOptions {
            no_ack: true,
            ..BasicConsumeOptions::default()
        };
        let mut c = ch
            .basic_consume(queue.into(), "test".into(), opts, FieldTable::default())
            .await
            .expect("consume");
        let mut got = Vec::new();
        let start = Instant::now();
        while !enough(&got) {
            let d = tokio::time::timeout(SHORT, c.next())
                .await
                .unwrap_or_else(|_| panic!("stuck after {} messages on {queue}", got.len()))
                .expect("consumer open")
                .expect("delivery");
            let headers = d
                .properties
                .headers()
                .as_ref()
                .map(|t| {
                    t.inner()
                        .iter()
                        .map(|(k, v)| {
                            let v = match v {
                                AMQPValue::LongString(s) => s.to_string(),
                                other => format!("{other:?}"),
                            };
                            (k.to_string(), v)
                        })
                        .collect()
                })
                .unwrap_or_default();
            got.push(Got {
                payload: String::from_utf8_lossy(&d.data).into_owned(),
                data: d.data.clone(),
                headers,
                correlation_id: d
                    .properties
                    .correlation_id()
                    .as_ref()
                    .map(|c| c.to_string()),
            });
            assert!(start.elapsed() < LONG, "draining {queue} hung");
        }
        let _ = ch.close(200, "OK".into()).await;
        got
    }

    pub async fn exchange(&self, name: &str) {
        self.declare_exchange(name, ExchangeKind::Direct).await;
    }

    async fn declare_exchange(&self, name: &str, kind: ExchangeKind) {
        let opts = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        self.ch
            .exchange_declare(name.into(), kind, opts, FieldTable::default())
            .await
            .expect("declare exchange");
    }

    pub async fn bind(&self, queue: &str, exchange: &str, key: &str) {
        self.bind_with(queue, exchange, key, FieldTable::default())
            .await;
    }

    async fn bind_with(&self, queue: &str, exchange: &str, key: &str, args: FieldTable) {
        self.ch
            .queue_bind(
                queue.into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                args,
            )
            .await
            .expect("bind");
    }

    /// A headers exchange `name` that routes to `queue` only the messages
    /// whose headers include every one of `all`.
    pub async fn headers_exchange(&self, name: &str, queue: &str, all: &[(&str, &str)]) {
        self.declare_exchange(name, ExchangeKind::Headers).await;
        let mut args = FieldTable::default();
        args.insert("x-match".into(), AMQPValue::LongString("all".into()));
        for (k, v) in all {
            args.insert((*k).into(), AMQPValue::LongString((*v).into()));
        }
        self.bind_with(queue, name, "", args).await;
    }

    pub async fn cleanup(&self, queues: &[&str], exchanges: &[&str]) {
        for q in queues {
            let _ = self
                .ch
                .queue_delete((*q).into(), QueueDeleteOptions::default())
                .await;
        }
        for x in exchanges {
            let _ = self
                .ch
                .exchange_delete((*x).into(), ExchangeDeleteOptions::default())
                .await;
        }
    }
}

/// Runs `rabbitmqctl` (or `$RABBITMQCTL`) and returns its stdout.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let cmd = std::env::var("RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".to_owned());
    let mut words = cmd.split_whitespace();
    let program = words.next().expect("a command");
    let out = std::process::Command::new(program)
        .args(words)
        .args(args)
        .output()
        .expect("rabbitmqctl runs (set RABBITMQCTL to reach the broker's)");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The config head: admin and the broker `rabbit` at `url`.
pub fn broker(url: &str) -> String {
    format!("[brokers.rabbit]\nkind = \"amqp\"\nurl = \"{url}\"\n")
}

pub fn queue_decl(name: &str, kind: &str) -> String {
    format!("[[brokers.rabbit.queues]]\nname = \"{name}\"\nqueue_type = \"{kind}\"\n")
}

pub async fn series(m: &Mqfn, name: &str) -> f64 {
    metric(&m.metrics().await, name).unwrap_or(0.0)
}

/// A private vhost and user, so that the test can cut mqfn off (revoke
/// its permissions, close its connections) without touching anyone else.
pub struct Vhost {
    pub name: String,
    pub user: String,
}

impl Vhost {
    pub fn create() -> Self {
        let v = Self {
            name: rand_name("mqfn_vh"),
            user: rand_name("mqfn_user"),
        };
        rabbitmqctl(&["-q", "add_vhost", &v.name]);
        rabbitmqctl(&["-q", "add_user", &v.user, "secret"]);
        v.grant();
        rabbitmqctl(&[
            "-q",
            "set_permissions",
            "-p",
            &v.name,
            "guest",
            ".*",
            ".*",
            ".*",
        ]);
        v
    }

    pub fn url(&self, user: &str, password: &str) -> String {
        format!("amqp://{user}:{password}@127.0.0.1:5672/{}", self.name)
    }

    pub fn grant(&self) {
        rabbitmqctl(&[
            "-q",
            "set_permissions",
            "-p",
            &self.name,
            &self.user,
            ".*",
            ".*",
            ".*",
        ]);
    }

    /// Revokes the user's access and closes its connections.
    pub fn cut(&self) -> usize {
        rabbitmqctl(&["-q", "clear_permissions", "-p", &self.name, &self.user]);
        let listing = rabbitmqctl(&[
            "-q",
            "list_connections",
            "--no-table-headers",
            "pid",
            "user",
        ]);
        let mut closed = 0;
        for line in listing.lines() {
            let mut cols = line.split_whitespace();
            if let (Some(pid), Some(user)) = (cols.next(), cols.next()) {
                if user == self.user {
                    rabbitmqctl(&["-q", "close_connection", pid, "test: connection killed"]);
                    closed += 1;
                }
            }
        }
        closed
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| {
            rabbitmqctl(&["-q", "delete_vhost", &self.name]);
            rabbitmqctl(&["-q", "delete_user", &self.user]);
        });
    }
}
