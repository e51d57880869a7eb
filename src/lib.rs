//! mqfn: functions on message queues.
//!
//! One binary that consumes NATS (core and JetStream), Kafka and AMQP 0.9.1,
//! runs each message through a registered handler in an autoscaled worker
//! pool, publishes the results, retries, dead-letters, and acknowledges a
//! message only once its results are safely published.

pub mod app;
pub mod brokers;
pub mod cli;
pub mod config;
pub mod handler;
pub mod message;
pub mod pool;
pub mod route;
pub mod state;
pub mod telemetry;
