//! Every metric name, in one place. See `docs/metrics.md`.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

/// Messages taken from a source.
pub const MESSAGES_RECEIVED_TOTAL: &str = "mqfn_messages_received_total";
/// Messages settled, by `outcome`.
pub const MESSAGES_SETTLED_TOTAL: &str = "mqfn_messages_settled_total";
/// Messages handed back to the broker for redelivery (publish failed, or
/// shutdown), by `route`.
pub const MESSAGES_REDELIVERED_TOTAL: &str = "mqfn_messages_redelivered_total";
/// Handler invocations, by `handler` and `result`.
pub const HANDLER_INVOCATIONS_TOTAL: &str = "mqfn_handler_invocations_total";
/// Handler duration histogram, by `handler`.
pub const HANDLER_DURATION_SECONDS: &str = "mqfn_handler_duration_seconds";
/// Billed handler time, rounded up to the millisecond per invocation
/// (rendered by [`super::billing`]).
pub const HANDLER_BILLED_SECONDS_TOTAL: &str = "mqfn_handler_billed_seconds_total";
/// Retries scheduled, by `route`.
pub const RETRIES_TOTAL: &str = "mqfn_retries_total";
/// Dead letters published, by `route`.
pub const DEAD_LETTERS_TOTAL: &str = "mqfn_dead_letters_total";
/// Backlog: the broker's figure plus local buffer, by `route`.
pub const BACKLOG_MESSAGES: &str = "mqfn_backlog_messages";
/// Age of the oldest message in flight, by `route`.
pub const OLDEST_INFLIGHT_AGE_SECONDS: &str = "mqfn_oldest_inflight_age_seconds";
/// Workers, by `route` and `state` (busy, idle).
pub const WORKERS: &str = "mqfn_workers";
/// Workers the autoscaler wants, by `route`.
pub const WORKERS_DESIRED: &str = "mqfn_workers_desired";
/// The route's `workers.max`, by `route`.
pub const WORKERS_MAX: &str = "mqfn_workers_max";
/// Handler instances, by `handler` and `state` (warm, busy).
pub const INSTANCES: &str = "mqfn_instances";
/// Cold starts, by `handler`.
pub const COLD_STARTS_TOTAL: &str = "mqfn_cold_starts_total";
/// Requests served by an instance that already existed, by `handler`.
pub const WARM_STARTS_TOTAL: &str = "mqfn_warm_starts_total";
/// Failed publishes (outputs, replies, dead letters), by `broker`.
pub const PUBLISH_ERRORS_TOTAL: &str = "mqfn_publish_errors_total";
/// 1 while the broker connection is up, by `broker`.
pub const BROKER_UP: &str = "mqfn_broker_up";
/// Restarts of a route after its task panicked or its source failed for
/// good, by `route`.
pub const ROUTE_RESTARTS_TOTAL: &str = "mqfn_route_restarts_total";
/// Kafka consumer lag (high watermark − position), by `route` and
/// `partition` (bounded by the topic's partition count).
pub const KAFKA_PARTITION_LAG: &str = "mqfn_kafka_partition_lag_messages";

/// Requests to the HTTP trigger, by `route` (empty for an unknown path)
/// and `code` (the response's status).
pub const HTTP_REQUESTS_TOTAL: &str = "mqfn_http_requests_total";

/// Firings of a route's schedule by this process, by `route` (with
/// `via`, the firings it published; the broker may keep fewer).
pub const SCHEDULE_FIRINGS_TOTAL: &str = "mqfn_schedule_firings_total";

/// Registers descriptions and units with the recorder.
pub fn describe() {
    describe_counter!(
        MESSAGES_RECEIVED_TOTAL,
        "Messages taken from a route's source."
    );
    describe_counter!(
        MESSAGES_SETTLED_TOTAL,
        "Messages acknowledged, by outcome (ok, dead_lettered, replied, filtered)."
    );
    describe_counter!(
        MESSAGES_REDELIVERED_TOTAL,
        "Messages handed back to the broker for redelivery."
    );
    describe_counter!(HANDLER_INVOCATIONS_TOTAL, "Handler invocations, by result.");
    describe_histogram!(
        HANDLER_DURATION_SECONDS,
        Unit::Seconds,
        "Handler invocation duration."
    );
    describe_counter!(
        RETRIES_TOTAL,
        "Retries scheduled after a retryable failure."
    );
    describe_counter!(DEAD_LETTERS_TOTAL, "Messages published to the dead letter.");
    describe_gauge!(
        BACKLOG_MESSAGES,
        "Messages waiting: broker backlog plus local buffer."
    );
    describe_gauge!(
        OLDEST_INFLIGHT_AGE_SECONDS,
        Unit::Seconds,
        "Age of the oldest message in flight."
    );
    describe_gauge!(WORKERS, "Workers, by state (busy, idle).");
    describe_gauge!(WORKERS_DESIRED, "Workers the autoscaler wants.");
    describe_gauge!(WORKERS_MAX, "The route's workers.max.");
    describe_gauge!(INSTANCES, "Handler instances, by state (warm, busy).");
    describe_counter!(COLD_STARTS_TOTAL, "Handler instances created.");
    describe_counter!(
        WARM_STARTS_TOTAL,
        "Requests served by an already running handler instance."
    );
    describe_counter!(
        PUBLISH_ERRORS_TOTAL,
        "Publishes the broker did not confirm."
    );
    describe_gauge!(BROKER_UP, "1 while the broker connection is up.");
    describe_counter!(
        ROUTE_RESTARTS_TOTAL,
        "Route restarts after a panic or a source that failed for good."
    );
    describe_counter!(
        HTTP_REQUESTS_TOTAL,
        "Requests to the HTTP trigger, by route and status code."
    );
    describe_counter!(
        SCHEDULE_FIRINGS_TOTAL,
        "Firings of a route's schedule by this process."
    );
    describe_gauge!(
        KAFKA_PARTITION_LAG,
        "Kafka consumer lag per partition: high watermark minus position."
    );
}
