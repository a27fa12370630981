//! Harness for integration and end-to-end tests against the real local stack (`make up`).
//!
//! Each test gets its own topics (prefix), keyspace, ClickHouse database and consumer group, so tests never see
//! each other's data and can run in parallel. `TestEnv::cleanup` drops them.

use std::net::SocketAddr;
use std::time::Duration;

pub mod api;
pub mod billing;
pub mod catalog;
pub mod invoices;

use billing_runtime::auth::Role;
use billing_runtime::kafka::Topics;
use billing_runtime::Settings;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

/// One test's isolated slice of the stack.
pub struct TestEnv {
    /// Settings pointing at this test's topics, keyspace and database.
    pub settings: Settings,
    /// Its topic names.
    pub topics: Topics,
    /// Unique suffix.
    pub id: String,
    producer: FutureProducer,
}

/// A free loopback address for a service's listener ([`billing_runtime::health::free_loopback_addr`]).
pub fn free_addr() -> SocketAddr {
    billing_runtime::health::free_loopback_addr().expect("a free loopback port")
}

impl TestEnv {
    /// Settings for a fresh, migrated environment named after the test.
    pub async fn new(name: &str) -> Self {
        Self::with_partitions(name, 3).await
    }

    /// As [`TestEnv::new`], with topics of `partitions` partitions.
    pub async fn with_partitions(name: &str, partitions: i32) -> Self {
        let id = format!("{name}_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let mut settings =
            Settings::load_with_env(None, std::iter::empty()).expect("default settings");
        // `BILLING_TEST_LOG=info` (a `tracing` filter) shows the in-process services' logs on stderr; run with
        // `--nocapture`. Each test's topics, keyspace and groups carry its id, which tells the logs apart.
        if let Ok(filter) = std::env::var("BILLING_TEST_LOG") {
            settings.telemetry.filter = filter;
            billing_runtime::telemetry::init(&settings.telemetry);
        }
        settings.kafka.topic_prefix = format!("it.{id}.");
        settings.kafka.partitions = partitions;
        settings.cassandra.keyspace = format!("it_{id}");
        settings.clickhouse.database = format!("it_{id}");
        settings.rating.group_id = format!("it-{id}-rating");
        settings.rating.listen = free_addr();
        settings.query_api.listen = free_addr();
        settings.rating.checkpoint_interval = Duration::from_millis(100);
        settings.invoicer.group_id = format!("it-{id}-invoicer");
        settings.invoicer.listen = free_addr();
        settings.payments.group_id = format!("it-{id}-payments");
        settings.payments.listen = free_addr();
        let report = billing_store::migrate::run(&settings)
            .await
            .expect("migrate");
        assert_eq!(
            report.topics_created.len(),
            7,
            "fresh environment gets all seven topics: {report}"
        );
        let topics = Topics::new(&settings.kafka);
        // One producer for the whole test: creating one per message costs an idempotence handshake each time.
        let producer = billing_runtime::kafka::producer(&settings.kafka).unwrap();
        TestEnv {
            settings,
            topics,
            id,
            producer,
        }
    }

    /// A producer with the project's delivery settings.
    pub fn producer(&self) -> FutureProducer {
        self.producer.clone()
    }

    /// Produce one value with an optional content-type header and wait for the broker's ack.
    pub async fn produce(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        content_type: Option<&str>,
    ) -> (i32, i64) {
        let producer = self.producer();
        let mut record = FutureRecord::to(topic).key(key).payload(payload);
        if let Some(ct) = content_type {
            record = record.headers(OwnedHeaders::new().insert(Header {
                key: "content-type",
                value: Some(ct),
            }));
        }
        let d = producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
        (d.partition, d.offset)
    }

    /// Produce usage events to `billing.usage` as JSON, keyed by their customer, one by one (each acknowledged).
    pub async fn produce_usage(&self, events: Vec<billing_schemas::usage::UsageEvent>) {
        for e in events {
            let key = billing_schemas::customer_key(&e.tenant_id, &e.customer_id);
            let json = billing_schemas::encode(&e, billing_schemas::Encoding::Json).unwrap();
            self.produce(&self.topics.usage, &key, &json, Some("application/json"))
                .await;
        }
    }

    /// Usage events `{customer}-{i}` for `i` in `range` on the `api_calls` metric (value 1, 2026-03-14 15:00 UTC), as
    /// JSON, one acknowledged produce each.
    pub async fn produce_calls(&self, tenant: &str, customer: &str, range: std::ops::Range<usize>) {
        let events = range.map(|i| call_event(tenant, customer, i)).collect();
        self.produce_usage(events).await;
    }

    /// Read every message of a topic from the start until `n` arrived or the timeout passed.
    pub async fn read_topic(&self, topic: &str, n: usize, timeout: Duration) -> Vec<OwnedMessage> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.settings.kafka.brokers)
            .set(
                "group.id",
                format!("it-{}-reader-{}", self.id, uuid::Uuid::new_v4().simple()),
            )
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        consumer.subscribe(&[topic]).unwrap();
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while out.len() < n {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(Ok(m)) => out.push(m.detach()),
                Ok(Err(e)) => panic!("reading {topic}: {e}"),
                Err(_) => break,
            }
        }
        out
    }

    /// A ClickHouse client on this test's database.
    pub fn clickhouse(&self) -> clickhouse::Client {
        billing_runtime::clickhouse::client(&self.settings.clickhouse)
    }

    /// A tenant's rows in ClickHouse `usage_events`, read with `FINAL` (as reports read it: rows with the same
    /// (tenant, customer, event id) collapsed) or without (a row a replay or a retried insert wrote again is there
    /// twice until a merge), if ClickHouse answers.
    pub async fn usage_event_counts(&self, tenant: &str, final_: bool) -> Option<UsageEventCounts> {
        let query = format!(
            "SELECT count() AS rows, uniqExact(event_id) AS distinct FROM usage_events {} WHERE tenant_id = ?",
            if final_ { "FINAL" } else { "" }
        );
        self.clickhouse()
            .query(&query)
            .bind(tenant)
            .fetch_one::<UsageEventCounts>()
            .await
            .ok()
    }

    /// Drop this test's keyspace, database and topics.
    pub async fn cleanup(self) {
        if let Ok(session) = billing_runtime::cql::connect(&self.settings.cassandra).await {
            let _ = session
                .query_unpaged(
                    format!(
                        "DROP KEYSPACE IF EXISTS {}",
                        self.settings.cassandra.keyspace
                    ),
                    (),
                )
                .await;
        }
        let _ = billing_runtime::clickhouse::server_client(&self.settings.clickhouse)
            .query(&format!(
                "DROP DATABASE IF EXISTS {}",
                self.settings.clickhouse.database
            ))
            .execute()
            .await;
        self.cleanup_topics().await;
    }

    async fn cleanup_topics(&self) {
        let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
            ClientConfig::new()
                .set("bootstrap.servers", &self.settings.kafka.brokers)
                .create()
                .unwrap();
        let names: Vec<&str> = self.topics.all().iter().map(|(n, _)| *n).collect();
        let _ = admin
            .delete_topics(&names, &rdkafka::admin::AdminOptions::new())
            .await;
    }
}

/// Poll `f` every 100 ms until it returns `Some`, or panic after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Usage event `{customer}-{i}` on the `api_calls` metric of [`TestEnv::publish_basic_catalog`]: value 1, at
/// [`CALLS_AT`].
pub fn call_event(tenant: &str, customer: &str, i: usize) -> billing_schemas::usage::UsageEvent {
    billing_schemas::usage::UsageEvent {
        tenant_id: tenant.into(),
        event_id: format!("{customer}-{i}"),
        customer_id: customer.into(),
        metric_code: "api_calls".into(),
        timestamp: CALLS_AT,
        properties: [("value".to_owned(), "1".to_owned())].into(),
    }
}

/// The time of the events [`TestEnv::produce_calls`] produces.
pub const CALLS_AT: chrono::DateTime<chrono::Utc> =
    chrono::DateTime::from_timestamp(1_773_500_400, 0).expect("2026-03-14T15:00:00Z");

/// Rows and distinct event ids in ClickHouse `usage_events` (see [`TestEnv::usage_event_counts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clickhouse::Row, serde::Deserialize)]
pub struct UsageEventCounts {
    /// Rows.
    pub rows: u64,
    /// Distinct event ids.
    pub distinct: u64,
}

/// A process stopped with SIGSTOP, resumed (SIGCONT) when dropped, also when the test panics.
pub struct Stopped(String);

impl Stopped {
    /// Stop the process.
    pub fn new(pid: &str) -> Self {
        signal("-STOP", pid);
        Stopped(pid.to_owned())
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal("-CONT", &self.0);
    }
}

fn signal(sig: &str, pid: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, pid])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// The local stack's Cassandra process id.
pub fn cassandra_pid() -> String {
    stack_pid("cassandra")
}

/// The local stack's Kafka broker process id.
pub fn kafka_pid() -> String {
    stack_pid("kafka")
}

/// The local stack's ClickHouse process id.
pub fn clickhouse_pid() -> String {
    stack_pid("clickhouse")
}

/// The process id of one server of the local stack, from its pidfile.
fn stack_pid(server: &str) -> String {
    let dir =
        std::env::var("BILLING_STACK_DIR").unwrap_or_else(|_| "/var/tmp/billing-stack".into());
    std::fs::read_to_string(format!("{dir}/{server}/{server}.pid"))
        .unwrap_or_else(|e| {
            panic!("the local stack's {server} pidfile (deploy/local/stack up): {e}")
        })
        .trim()
        .to_owned()
}

/// The `billing` binary next to the running test executable (`cargo test --workspace` builds it).
pub fn billing_binary() -> std::path::PathBuf {
    // target/<profile>/deps/<test>-… → target/<profile>/billing
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("billing");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build --bin billing` (cargo test --workspace does)",
        bin.display()
    );
    bin
}

/// `billing <service>` as a child process on this environment's topics, keyspace and database.
pub fn spawn_service(
    settings: &Settings,
    service: &str,
    extra_env: &[(&str, String)],
) -> std::process::Child {
    let mut cmd = std::process::Command::new(billing_binary());
    cmd.arg(service)
        .env("BILLING__KAFKA__TOPIC_PREFIX", &settings.kafka.topic_prefix)
        .env(
            "BILLING__KAFKA__PARTITIONS",
            settings.kafka.partitions.to_string(),
        )
        .env("BILLING__CASSANDRA__KEYSPACE", &settings.cassandra.keyspace)
        .env(
            "BILLING__CLICKHOUSE__DATABASE",
            &settings.clickhouse.database,
        )
        .env("BILLING__RATING__GROUP_ID", &settings.rating.group_id)
        .env("BILLING__INVOICER__GROUP_ID", &settings.invoicer.group_id)
        .env("BILLING__RATING__LISTEN", free_addr().to_string())
        .env("BILLING__INVOICER__LISTEN", free_addr().to_string())
        .env(
            "BILLING__TELEMETRY__FILTER",
            std::env::var("BILLING_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        );
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.spawn()
        .unwrap_or_else(|e| panic!("start billing {service}: {e}"))
}

/// Run a service and say on stderr when it ends before it was asked to (a test waiting on it then times out, and
/// this line says why).
async fn reported(
    name: &'static str,
    stop: billing_runtime::Shutdown,
    service: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let result = service.await;
    if !stop.is_cancelled() {
        match &result {
            Ok(()) => eprintln!("[test services] {name} ended before it was stopped"),
            Err(e) => eprintln!("[test services] {name} failed: {e:#}"),
        }
    }
    result
}

/// rating, the invoicer and query-api running in this process against a [`TestEnv`]. Dropping it (a test that
/// panics) cancels them, so the runtime can shut down and the test fails instead of hanging.
pub struct Services {
    /// Cancel to stop them all.
    pub stop: billing_runtime::Shutdown,
    /// The query API's base URL.
    pub api: String,
    tasks: Option<ServiceTasks>,
    settings: Settings,
    keys: tokio::sync::Mutex<std::collections::HashMap<String, String>>,
}

struct ServiceTasks {
    rating: tokio::task::JoinHandle<anyhow::Result<()>>,
    invoicer: tokio::task::JoinHandle<anyhow::Result<()>>,
    query_api: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Drop for Services {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Services {
    /// Whether rating has stopped (it should only stop when asked to).
    pub fn rating_stopped(&self) -> bool {
        self.tasks.as_ref().is_none_or(|t| t.rating.is_finished())
    }

    /// Whether the invoicer has stopped.
    pub fn invoicer_stopped(&self) -> bool {
        self.tasks.as_ref().is_none_or(|t| t.invoicer.is_finished())
    }

    /// Start rating, the invoicer and the query API.
    pub async fn start(settings: &Settings) -> Self {
        let stop = billing_runtime::Shutdown::new();
        let rating = tokio::spawn(reported(
            "rating",
            stop.clone(),
            billing_rating::run(settings.clone(), stop.clone()),
        ));
        let invoicer = tokio::spawn(reported(
            "invoicer",
            stop.clone(),
            billing_invoicer::run(settings.clone(), stop.clone()),
        ));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let query_api = tokio::spawn(reported(
            "query-api",
            stop.clone(),
            billing_query_api::run(settings.clone(), stop.clone(), move |a| {
                let _ = tx.send(a);
            }),
        ));
        let addr = rx.await.expect("query-api bound");
        Services {
            stop,
            api: format!("http://{addr}"),
            settings: settings.clone(),
            keys: Default::default(),
            tasks: Some(ServiceTasks {
                rating,
                invoicer,
                query_api,
            }),
        }
    }

    /// An admin key of `tenant` (created with the tenant on first use, then reused).
    pub async fn key(&self, tenant: &str) -> String {
        let mut keys = self.keys.lock().await;
        if let Some(k) = keys.get(tenant) {
            return k.clone();
        }
        let k = api_key(&self.settings, tenant, Role::Admin).await;
        keys.insert(tenant.to_owned(), k.clone());
        k
    }

    /// A client of the API for `tenant`, with its admin key.
    pub async fn api_for(&self, tenant: &str) -> api::Api {
        api::Api::new(&self.api, &self.key(tenant).await)
    }

    /// Stop them all and surface their errors.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        let t = self.tasks.take().expect("running");
        t.rating.await.unwrap().expect("rating ended cleanly");
        t.invoicer.await.unwrap().expect("invoicer ended cleanly");
        t.query_api.await.unwrap().expect("query-api ended cleanly");
    }
}

/// A new API key of `role` for `tenant` in this environment's store (the tenant is created when absent).
pub async fn api_key(settings: &Settings, tenant: &str, role: Role) -> String {
    let session = std::sync::Arc::new(
        billing_runtime::cql::connect(&settings.cassandra)
            .await
            .unwrap(),
    );
    let keys = billing_store::api_keys::ApiKeys::new(
        session,
        &settings.cassandra.keyspace,
        &settings.auth.key_hash_secret,
    )
    .await
    .unwrap();
    let now = chrono::Utc::now();
    keys.create_tenant(&billing_store::api_keys::TenantRow {
        tenant_id: tenant.to_owned(),
        name: tenant.to_owned(),
        created_at: now,
        limits: Default::default(),
    })
    .await
    .unwrap();
    keys.create_key(tenant, role, "test", now).await.unwrap().0
}

/// `(units, events_count, amount)` of one charge of a customer in the period containing `at`, as the API serves
/// them, if present (summed over groups when `group` is `None`).
pub async fn api_usage(
    api: &str,
    key: &str,
    customer: &str,
    charge: &str,
    at: &str,
) -> Option<(String, u64, String)> {
    let body = api_usage_body(api, key, customer, at).await?;
    body["charges"]
        .as_array()?
        .iter()
        .find(|u| u["charge_id"] == charge)
        .map(|u| {
            (
                u["units"].as_str().unwrap_or_default().to_owned(),
                u["events_count"].as_u64().unwrap_or_default(),
                u["amount"].as_str().unwrap_or_default().to_owned(),
            )
        })
}

/// `(units, events_count, amount)` of the `calls` charge of [`TestEnv::publish_basic_catalog`] for a customer in
/// the period containing `at`, once the API counts at least `n` events (waits up to 180 s).
pub async fn calls_reaching(
    services: &Services,
    tenant: &str,
    customer: &str,
    at: &str,
    n: u64,
) -> (String, u64, String) {
    eventually(
        Duration::from_secs(180),
        &format!("{customer}'s {n} events"),
        || async {
            api_usage(
                &services.api,
                &services.key(tenant).await,
                customer,
                "calls",
                at,
            )
            .await
            .filter(|u| u.1 >= n)
        },
    )
    .await
}

/// The whole usage document of a customer at `at`, read with `key`.
pub async fn api_usage_body(
    api: &str,
    key: &str,
    customer: &str,
    at: &str,
) -> Option<serde_json::Value> {
    let resp = reqwest::Client::new()
        .get(format!("{api}/v1/customers/{customer}/usage"))
        .query(&[("at", at)])
        .bearer_auth(key)
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.json().await.ok()
}

/// The ingest gateway running in this process on a free port: its base URL, its stop token and its task.
pub async fn start_ingest(
    settings: &Settings,
) -> (
    String,
    billing_runtime::Shutdown,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let mut settings = settings.clone();
    settings.ingest.listen = "127.0.0.1:0".parse().unwrap();
    let stop = billing_runtime::Shutdown::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(billing_ingest::run(settings, stop.clone(), move |a| {
        let _ = tx.send(a);
    }));
    let addr = rx.await.expect("ingest bound");
    (format!("http://{addr}"), stop, task)
}

/// A series of a service's Prometheus `/metrics` at `base` (`http://host:port`), e.g.
/// `billing_rating_cached_customers` or `name{label="value"}`; 0 when it is not exported yet.
pub async fn metric(base: &str, series: &str) -> i64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0, |v| v.parse().unwrap())
}

/// `(partition, high watermark)` of every partition of `topic`, as the broker reports them now.
pub async fn high_watermarks(settings: &Settings, topic: &str) -> Vec<(i32, i64)> {
    let brokers = settings.kafka.brokers.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap();
        let timeout = Duration::from_secs(10);
        let metadata = consumer.fetch_metadata(Some(&topic), timeout).unwrap();
        metadata.topics()[0]
            .partitions()
            .iter()
            .map(|p| {
                let (_, high) = consumer.fetch_watermarks(&topic, p.id(), timeout).unwrap();
                (p.id(), high)
            })
            .collect()
    })
    .await
    .unwrap()
}

/// Σ (end offset − committed offset) of rating's group over the usage partitions (blocking).
pub fn committed_lag(
    settings: &billing_runtime::Settings,
    topics: &billing_runtime::kafka::Topics,
) -> i64 {
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka.brokers)
        .set("group.id", &settings.rating.group_id)
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..settings.kafka.partitions {
        tpl.add_partition(&topics.usage, p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    committed
        .elements()
        .iter()
        .map(|e| {
            let (_, high) = consumer
                .fetch_watermarks(&topics.usage, e.partition(), Duration::from_secs(10))
                .unwrap();
            match e.offset() {
                rdkafka::Offset::Offset(o) => high - o,
                _ => high,
            }
        })
        .sum()
}

/// [`committed_lag`] of the environment's rating group, off the async runtime's threads.
pub async fn rating_lag(env: &TestEnv) -> i64 {
    let (settings, topics) = (env.settings.clone(), env.topics.clone());
    tokio::task::spawn_blocking(move || committed_lag(&settings, &topics))
        .await
        .unwrap()
}

/// Wait until rating's group has committed every offset of the usage partitions.
pub async fn rating_caught_up(env: &TestEnv, timeout: Duration) {
    eventually(timeout, "rating's offsets committed", || async {
        (rating_lag(env).await == 0).then_some(())
    })
    .await;
}
