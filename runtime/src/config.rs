//! Layered configuration: embedded `default.toml`, then an optional file, then `BILLING__SECTION__KEY`
//! environment variables. Unknown keys are errors, so a typo never silently falls back to a default.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

const DEFAULTS: &str = include_str!("../default.toml");

/// Every setting of every service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Kafka connection and topic layout.
    pub kafka: KafkaConfig,
    /// ScyllaDB / Cassandra connection.
    pub cassandra: CassandraConfig,
    /// ClickHouse connection.
    pub clickhouse: ClickHouseConfig,
    /// Logging.
    pub telemetry: TelemetryConfig,
    /// The rating service.
    pub rating: RatingConfig,
    /// The query API.
    pub query_api: QueryApiConfig,
    /// The ingest gateway.
    pub ingest: IngestConfig,
    /// The invoicer.
    pub invoicer: InvoicerConfig,
    /// The payments service.
    pub payments: PaymentsConfig,
    /// The webhooks dispatcher (and the API's webhook endpoints).
    pub webhooks: WebhooksConfig,
    /// How long operational data is kept (`billing retention run`, and the ticker every `interval`).
    pub retention: RetentionConfig,
    /// API keys: how their secrets are hashed and how fast a revocation takes effect.
    pub auth: AuthConfig,
    /// Requests allowed per API key, per route class; a tenant may have its own (`billing tenant update`).
    pub rate_limits: RateLimitsConfig,
}

/// API keys (`docs/api.md`, "Authentication").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The key of the keyed hash (HMAC-SHA256) under which key secrets are stored. Set it in production (from a
    /// secret store); keys created under one value do not verify under another.
    pub key_hash_secret: String,
    /// How long a verified key (and its tenant's limits) is trusted before it is read again: a revoked key stops
    /// working on every instance within this long.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
}

/// A steady rate and the burst above it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Requests per second, steadily.
    pub per_second: u32,
    /// Requests allowed at once above that rate.
    pub burst: u32,
}

/// Default rate limits per API key, by route class.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// `GET` routes (and the invoice preview).
    pub reads: Rate,
    /// Writes: `POST` and `DELETE` of the management API.
    pub writes: Rate,
    /// `POST /v1/events` of the ingest gateway (requests, whatever their batch size).
    pub ingest: Rate,
}

/// Data retention. Invoices, credit notes and everything billing decides from are never deleted by it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Raw usage events in ClickHouse `usage_events`: a monthly partition is dropped once all of it is older.
    #[serde(with = "humantime_serde")]
    pub usage_events: Duration,
    /// The audit log in ClickHouse `audit_log`: a monthly partition is dropped once all of it is older.
    #[serde(with = "humantime_serde")]
    pub audit_log: Duration,
    /// Dead-letter topics (`billing.usage.dlq`, `billing.lifecycle.dlq`): their Kafka `retention.ms`.
    #[serde(with = "humantime_serde")]
    pub dead_letters: Duration,
    /// Webhook delivery logs (`webhook_deliveries`, `webhook_deliveries_by_created`): their CQL default TTL, for
    /// rows written from then on.
    #[serde(with = "humantime_serde")]
    pub webhook_deliveries: Duration,
    /// How often `billing ticker` applies it.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

/// Kafka settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated.
    pub brokers: String,
    /// Prefix for every topic name.
    pub topic_prefix: String,
    /// Partitions of every topic the project creates.
    pub partitions: i32,
    /// Replication factor of those topics.
    pub replication_factor: i32,
    /// How long a producer keeps trying to deliver a record before it reports the delivery failed (librdkafka's
    /// `message.timeout.ms`); what happens then is the caller's choice (rating sends a dead letter again).
    #[serde(with = "humantime_serde")]
    pub message_timeout: Duration,
    /// Records a producer holds at most while they wait for delivery (librdkafka's `queue.buffering.max.messages`);
    /// past it a send is refused at once (rating keeps a refused dead letter and sends it again).
    pub producer_queue_messages: usize,
    /// A group consumer's fetch is answered once this many bytes are ready for it (librdkafka's
    /// `fetch.min.bytes`), or after `fetch_wait`. Above 1, a steady trickle of records is fetched in small
    /// batches rather than as each record arrives, which costs the broker less CPU.
    pub fetch_min_bytes: u32,
    /// The longest a broker holds a group consumer's fetch for `fetch_min_bytes` (librdkafka's
    /// `fetch.wait.max.ms`): what a record can wait at most before the consumer receives it.
    #[serde(with = "humantime_serde")]
    pub fetch_wait: Duration,
}

/// CQL settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CassandraConfig {
    /// Contact points, host:port.
    pub nodes: Vec<String>,
    /// Keyspace of all billing tables.
    pub keyspace: String,
    /// Replication map used when creating the keyspace.
    pub replication: String,
}

/// ClickHouse settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// HTTP endpoint.
    pub url: String,
    /// Database of all billing tables.
    pub database: String,
    /// User.
    pub user: String,
    /// Password.
    pub password: String,
}

/// Log output.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// `tracing` env-filter directives, e.g. `info,billing_rating=debug`.
    pub filter: String,
}

/// Log line format.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The rating service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatingConfig {
    /// Health/metrics listen address.
    pub listen: SocketAddr,
    /// Consumer group.
    pub group_id: String,
    /// Events pending at most: past it, consuming waits until the checkpoint being written is durable.
    pub checkpoint_events: usize,
    /// A checkpoint starts this often with what is pending, unless the previous one is still being written.
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// While rating is far behind the end of its partitions, checkpoints are this far apart instead (larger ones:
    /// each customer is written once for many of its events).
    #[serde(with = "humantime_serde")]
    pub catch_up_interval: Duration,
    /// Larger usage payloads are dead-lettered.
    pub max_event_bytes: usize,
    /// Event times further than this after Kafka's append time are dead-lettered.
    #[serde(with = "humantime_serde")]
    pub max_future: Duration,
    /// Usage older than this on its customer's clock (the latest tick of its test clock, or of the wall clock) is
    /// dead-lettered as `period_closed`; younger late usage is billed as an adjustment (`docs/pricing.md`).
    #[serde(with = "humantime_serde")]
    pub late_usage_horizon: Duration,
    /// `/ready` fails when the group has lag and no checkpoint advanced for this long.
    #[serde(with = "humantime_serde")]
    pub stall_timeout: Duration,
    /// `/health` fails (an orchestrator restarts the process) when the consumer has waited on a store this long
    /// without progress (a checkpoint write or a customer's load, retried all that time).
    #[serde(with = "humantime_serde")]
    pub stuck_timeout: Duration,
    /// Customers whose usage is kept in memory; past it, after each durable checkpoint, those used least recently
    /// (and with nothing pending) are dropped and reloaded from the store when they are next used.
    pub max_cached_customers: usize,
    /// Memory the cached customers' usage may take, in bytes, by estimate (aggregates, unique values, dedup ids);
    /// past it, after each durable checkpoint, customers are dropped as past `max_cached_customers`.
    pub max_cached_bytes: usize,
    /// The process's resident memory (RSS) that rating keeps under: past 90 % of it, after a durable checkpoint,
    /// idle customers are dropped as past `max_cached_bytes`, until the cached usage is smaller by what the process
    /// takes over 80 % of it (the rest of the process, reference data included, is not dropped: the bound must
    /// leave it room).
    pub max_resident_bytes: usize,
    /// Distinct values a unique-count aggregate (one subscription, charge, period and group) counts exactly, all
    /// held in memory; an event that would add one more is dead-lettered as `unique_count_limit`.
    pub max_unique_values: usize,
    /// How long usage waits for the catalog and lifecycle topics to be read up to their end.
    #[serde(with = "humantime_serde")]
    pub reference_timeout: Duration,
    /// A snapshot of the lifecycle state is written to the store once this many lifecycle events were folded since
    /// the last one (or since the start), when the reader has caught up; a restart reads the newest snapshot and
    /// only the events after it. 0: never.
    pub reference_snapshot_events: u64,
    /// Snapshots are at least this far apart.
    #[serde(with = "humantime_serde")]
    pub reference_snapshot_interval: Duration,
}

/// A consumer service that has no tuning yet beyond its group.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupServiceConfig {
    /// Health/metrics listen address.
    pub listen: SocketAddr,
    /// Consumer group.
    pub group_id: String,
}

/// The webhooks dispatcher. Its retry timing runs on the wall clock: it is delivery mechanics, not billing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Health/metrics listen address.
    pub listen: SocketAddr,
    /// Consumer group.
    pub group_id: String,
    /// Longest wait for an endpoint's answer, per attempt.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Wait before the first retry; each retry waits twice as long as the one before…
    #[serde(with = "humantime_serde")]
    pub retry_base: Duration,
    /// …at most this long.
    #[serde(with = "humantime_serde")]
    pub retry_cap: Duration,
    /// A delivery not delivered this long after its first attempt is marked `failed`.
    #[serde(with = "humantime_serde")]
    pub give_up_after: Duration,
    /// Requests in flight to one endpoint at most.
    pub max_in_flight_per_endpoint: usize,
    /// After a secret rotation, the old secret keeps signing (a second `v1`) this long.
    #[serde(with = "humantime_serde")]
    pub secret_rotation_overlap: Duration,
    /// How often redeliver requests are looked for.
    #[serde(with = "humantime_serde")]
    pub redeliver_poll: Duration,
}

/// The payments service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentsConfig {
    /// Health/metrics listen address.
    pub listen: SocketAddr,
    /// Consumer group.
    pub group_id: String,
    /// The payment provider charged.
    #[serde(default)]
    pub provider: ProviderConfig,
    /// Waits after each failed attempt before the next one, in billing time (test clocks drive them too). Preset
    /// `stripe` (8 tries within 2 weeks) or `killbill` (8, 8 and 8 days), or `custom` with `retry_delays`.
    pub retry_schedule: RetryPreset,
    /// The waits of a `custom` schedule (`"36h"`, `"3d"`).
    #[serde(default)]
    pub retry_delays: Vec<humantime_serde::Serde<Duration>>,
    /// What dunning does to an invoice's subscriptions after its last attempt failed (the invoice is marked
    /// uncollectible in every case).
    pub dunning_action: DunningAction,
    /// Days relative to an unpaid invoice's due date (negative: before it) when a `dunning.reminder` is sent.
    pub reminder_days: Vec<i32>,
    /// Provider calls in flight at once.
    pub concurrency: usize,
}

/// A retry schedule preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryPreset {
    /// Stripe's recommendation: 8 tries within 2 weeks (retries after 1, 2, 2, 2, 2, 2 and 3 days).
    Stripe,
    /// Kill Bill's default `paymentRetryDays`: retries after 8, 8 and 8 days.
    Killbill,
    /// `retry_delays` as given.
    Custom,
}

impl PaymentsConfig {
    /// The waits after each failed attempt: the number of retries is its length.
    pub fn retry_delays(&self) -> Vec<Duration> {
        let days = |d: &[u64]| d.iter().map(|d| Duration::from_secs(d * 86_400)).collect();
        match self.retry_schedule {
            RetryPreset::Stripe => days(&[1, 2, 2, 2, 2, 2, 3]),
            RetryPreset::Killbill => days(&[8, 8, 8]),
            RetryPreset::Custom => self.retry_delays.iter().map(|d| **d).collect(),
        }
    }
}

/// What dunning does to the subscriptions of an invoice it gives up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DunningAction {
    /// Nothing: the subscriptions go on.
    None,
    /// Pause them (their fees stop; usage is still metered).
    Pause,
    /// Suspend them (Kill Bill's blocked billing): no fee and no usage charge until the customer has nothing
    /// unpaid on them; payments then lifts the suspension.
    Suspend,
    /// Cancel them at once.
    Cancel,
}

impl DunningAction {
    /// The name used in events and docs.
    pub fn as_str(self) -> &'static str {
        match self {
            DunningAction::None => "none",
            DunningAction::Pause => "pause",
            DunningAction::Suspend => "suspend",
            DunningAction::Cancel => "cancel",
        }
    }
}

/// Which payment provider the payments service charges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// The deterministic in-process sandbox (test tokens; its ledger in Cassandra).
    Sandbox,
    /// Stripe's HTTP API.
    Stripe,
}

/// The payment provider (`[payments.provider]`).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderConfig {
    /// `sandbox` or `stripe`.
    pub kind: ProviderKind,
    /// Stripe's API base URL (stripe-mock locally).
    pub stripe_base_url: String,
    /// Stripe secret key; set it with `BILLING__PAYMENTS__PROVIDER__STRIPE_SECRET_KEY`, never in a file.
    pub stripe_secret_key: String,
    /// Timeout of one provider HTTP call.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How long the sandbox's `pm_card_slow` waits after charging before it answers.
    #[serde(with = "humantime_serde")]
    pub sandbox_slow_delay: Duration,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        ProviderConfig {
            kind: ProviderKind::Sandbox,
            stripe_base_url: "https://api.stripe.com".to_owned(),
            stripe_secret_key: String::new(),
            timeout: Duration::from_secs(10),
            sandbox_slow_delay: Duration::from_secs(5),
        }
    }
}

// Written by hand so that the secret key never reaches a log line.
impl std::fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = if self.stripe_secret_key.is_empty() {
            ""
        } else {
            "<redacted>"
        };
        f.debug_struct("ProviderConfig")
            .field("kind", &self.kind)
            .field("stripe_base_url", &self.stripe_base_url)
            .field("stripe_secret_key", &key)
            .field("timeout", &self.timeout)
            .field("sandbox_slow_delay", &self.sandbox_slow_delay)
            .finish()
    }
}

/// How invoices are numbered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NumberingScope {
    /// One sequence per tenant: `<prefix>-000123`.
    Tenant,
    /// One sequence per customer: `<prefix>-<customer>-001`.
    Customer,
}

/// The invoicer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvoicerConfig {
    /// Health/metrics listen address.
    pub listen: SocketAddr,
    /// Consumer group.
    pub group_id: String,
    /// Sequence invoices are numbered in.
    pub numbering: NumberingScope,
    /// Number prefix; empty means the tenant id in upper case.
    pub number_prefix: String,
    /// Digits of the sequence part, zero-padded.
    pub number_width: usize,
    /// Issue invoices whose total is zero (Lago users ask for them; Stripe issues them too).
    pub issue_zero_invoices: bool,
    /// How long a bill run waits for rating to checkpoint a customer's usage partition before it retries later.
    #[serde(with = "humantime_serde")]
    pub usage_wait: Duration,
}

/// The ingest HTTP gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// How far ahead of the gateway's clock an event timestamp may be.
    #[serde(with = "humantime_serde")]
    pub max_future: Duration,
    /// Largest accepted event, measured as its JSON encoding on the topic.
    pub max_event_bytes: usize,
    /// Most events in one request.
    pub max_batch: usize,
}

/// The query API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryApiConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// How long a write waits for its effect to be materialized before answering 202 with the event id.
    #[serde(with = "humantime_serde")]
    pub write_wait: Duration,
    /// How old an issued invoice's answer may be (`GET /v1/invoices/{id}` keeps it in memory, dropped at once on a
    /// change seen on the invoice, payment or lifecycle topics); `0s` disables the cache.
    #[serde(with = "humantime_serde")]
    pub invoice_cache_ttl: Duration,
}

/// Bad configuration: every problem found, so the operator fixes them in one go.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {}", .0.join("; "))]
pub struct ConfigError(pub Vec<String>);

impl Settings {
    /// Load defaults, then `file` if given, then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// As [`Settings::load`], with the environment passed in (for tests).
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        use config::{Config, File, FileFormat};
        let mut builder = Config::builder().add_source(File::from_str(DEFAULTS, FileFormat::Toml));
        if let Some(path) = file {
            builder = builder.add_source(File::from(path).format(FileFormat::Toml).required(true));
        }
        let mut errors = Vec::new();
        for (key, value) in env {
            let Some(rest) = key.strip_prefix("BILLING__") else {
                continue;
            };
            let path = rest.to_lowercase().replace("__", ".");
            builder = match builder.set_override(path.clone(), value) {
                Ok(b) => b,
                Err(e) => {
                    errors.push(format!("{key}: {e}"));
                    return Err(ConfigError(errors));
                }
            };
        }
        let settings: Settings = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError(vec![e.to_string()]))?;
        settings.validate()
    }

    fn validate(self) -> Result<Self, ConfigError> {
        let mut errors = Vec::new();
        if self.kafka.partitions < 1 {
            errors.push(format!(
                "kafka.partitions must be at least 1, not {}",
                self.kafka.partitions
            ));
        }
        if self.kafka.replication_factor < 1 {
            errors.push("kafka.replication_factor must be at least 1".to_owned());
        }
        if self.cassandra.nodes.is_empty() {
            errors.push("cassandra.nodes must name at least one node".to_owned());
        }
        let ident_ok =
            |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ident_ok(&self.cassandra.keyspace) {
            errors.push(format!(
                "cassandra.keyspace {:?} must be letters, digits and _",
                self.cassandra.keyspace
            ));
        }
        if !ident_ok(&self.clickhouse.database) {
            errors.push(format!(
                "clickhouse.database {:?} must be letters, digits and _",
                self.clickhouse.database
            ));
        }
        if self.kafka.producer_queue_messages == 0 {
            errors.push("kafka.producer_queue_messages must be at least 1".to_owned());
        }
        if self.kafka.fetch_min_bytes == 0 {
            errors.push("kafka.fetch_min_bytes must be at least 1".to_owned());
        }
        if self.kafka.fetch_wait.is_zero() || self.kafka.fetch_wait > Duration::from_secs(5) {
            errors.push("kafka.fetch_wait must be between 1ms and 5s".to_owned());
        }
        if self.rating.max_cached_bytes == 0 {
            errors.push("rating.max_cached_bytes must be at least 1".to_owned());
        }
        if self.rating.max_resident_bytes < 16 << 20 {
            errors.push("rating.max_resident_bytes must be at least 16 MiB (16777216)".to_owned());
        }
        if self.rating.max_unique_values == 0 {
            errors.push("rating.max_unique_values must be at least 1".to_owned());
        }
        if self.rating.checkpoint_events == 0 {
            errors.push("rating.checkpoint_events must be at least 1".to_owned());
        }
        for (class, rate) in [
            ("reads", self.rate_limits.reads),
            ("writes", self.rate_limits.writes),
            ("ingest", self.rate_limits.ingest),
        ] {
            if rate.per_second == 0 || rate.burst == 0 {
                errors.push(format!(
                    "rate_limits.{class}: per_second and burst must be at least 1"
                ));
            }
        }
        if self.auth.key_hash_secret.len() < 16 {
            errors.push("auth.key_hash_secret must be at least 16 characters".to_owned());
        }
        if self.auth.cache_ttl > Duration::from_secs(60) {
            errors.push(format!(
                "auth.cache_ttl is {:?}: a revoked key must stop working within a minute",
                self.auth.cache_ttl
            ));
        }
        if self.ingest.max_event_bytes < 1024 || self.ingest.max_batch == 0 {
            errors.push(
                "ingest.max_event_bytes must be at least 1024 and ingest.max_batch at least 1"
                    .to_owned(),
            );
        }
        if self.webhooks.max_in_flight_per_endpoint == 0
            || self.webhooks.retry_base.is_zero()
            || self.webhooks.request_timeout.is_zero()
        {
            errors.push(
                "webhooks.max_in_flight_per_endpoint, retry_base and request_timeout must be above zero"
                    .to_owned(),
            );
        }
        let provider = &self.payments.provider;
        if provider.kind == ProviderKind::Stripe && provider.stripe_secret_key.is_empty() {
            errors.push(
                "payments.provider.kind = \"stripe\" needs BILLING__PAYMENTS__PROVIDER__STRIPE_SECRET_KEY"
                    .to_owned(),
            );
        }
        if provider.timeout.is_zero() {
            errors.push("payments.provider.timeout must be above zero".to_owned());
        }
        if errors.is_empty() {
            Ok(self)
        } else {
            Err(ConfigError(errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load() {
        let s = Settings::load_with_env(None, env(&[])).unwrap();
        assert_eq!(s.kafka.partitions, 12);
        assert_eq!(s.rating.checkpoint_interval, Duration::from_millis(100));
        assert_eq!(s.telemetry.format, LogFormat::Text);
    }

    #[test]
    fn environment_overrides_defaults() {
        let s = Settings::load_with_env(
            None,
            env(&[
                ("BILLING__KAFKA__PARTITIONS", "3"),
                ("BILLING__TELEMETRY__FORMAT", "json"),
                ("OTHER", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(s.kafka.partitions, 3);
        assert_eq!(s.telemetry.format, LogFormat::Json);
    }

    #[test]
    fn payment_provider_defaults_match_the_file_and_the_key_comes_from_the_environment() {
        let s = Settings::load_with_env(None, env(&[])).unwrap();
        let (file, code) = (&s.payments.provider, ProviderConfig::default());
        assert_eq!(file.kind, ProviderKind::Sandbox);
        assert_eq!(
            (
                file.kind,
                &file.stripe_base_url,
                file.timeout,
                file.sandbox_slow_delay
            ),
            (
                code.kind,
                &code.stripe_base_url,
                code.timeout,
                code.sandbox_slow_delay
            )
        );
        assert_eq!(file.timeout, Duration::from_secs(10));
        assert_eq!(file.sandbox_slow_delay, Duration::from_secs(5));
        let err = Settings::load_with_env(
            None,
            env(&[("BILLING__PAYMENTS__PROVIDER__KIND", "stripe")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("STRIPE_SECRET_KEY"), "{err}");
        let s = Settings::load_with_env(
            None,
            env(&[
                ("BILLING__PAYMENTS__PROVIDER__KIND", "stripe"),
                (
                    "BILLING__PAYMENTS__PROVIDER__STRIPE_SECRET_KEY",
                    "sk_test_123",
                ),
                ("BILLING__PAYMENTS__PROVIDER__TIMEOUT", "2s"),
            ]),
        )
        .unwrap();
        assert_eq!(s.payments.provider.kind, ProviderKind::Stripe);
        assert_eq!(s.payments.provider.stripe_secret_key, "sk_test_123");
        assert_eq!(s.payments.provider.timeout, Duration::from_secs(2));
        assert!(!format!("{:?}", s.payments.provider).contains("sk_test_123"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_reported() {
        let err =
            Settings::load_with_env(None, env(&[("BILLING__KAFKA__BROKRES", "x")])).unwrap_err();
        assert!(err.to_string().contains("brokres"), "{err}");
        let err = Settings::load_with_env(
            None,
            env(&[
                ("BILLING__KAFKA__PARTITIONS", "0"),
                ("BILLING__CASSANDRA__KEYSPACE", "bad-name"),
            ]),
        )
        .unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
    }
}
