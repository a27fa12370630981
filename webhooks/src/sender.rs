//! Delivery workers: one queue and one task per endpoint, each with at most `max_in_flight_per_endpoint` requests
//! in flight, so a slow or dead endpoint delays only its own deliveries. A task keeps its deliveries in a timer
//! heap by due time; an attempt reads the delivery and the endpoint afresh (a rotation, an update, a deletion take
//! effect at the next attempt), signs the stored body, POSTs it, and records the attempt before scheduling the
//! next one. Retry timing runs on the wall clock: it is delivery mechanics, not a billing decision.
//!
//! A delivery is sent by the instance that owns its source partition; a task drops a delivery whose partition was
//! revoked (the new owner reloads it from `webhook_pending`).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use billing_runtime::config::WebhooksConfig;
use billing_runtime::Shutdown;
use billing_store::webhook_deliveries::{
    Attempt, Delivery, WebhookDeliveries, DELIVERED, FAILED, PENDING,
};
use billing_store::webhook_endpoints::WebhookEndpoints;
use chrono::{DateTime, Utc};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use crate::signing::{self, Schedule, EVENT_ID_HEADER, SIGNATURE_HEADER};

/// Wait before retrying after the store failed (the attempt is not counted).
const STORE_RETRY: Duration = Duration::from_secs(2);

/// A delivery to attempt at `due`.
#[derive(Debug, Clone)]
pub struct Job {
    /// Tenant.
    pub tenant_id: String,
    /// Endpoint.
    pub endpoint_id: String,
    /// Delivery.
    pub delivery_id: String,
    /// Owner partition.
    pub source: String,
    /// When.
    pub due: DateTime<Utc>,
}

/// What became of an attempt.
enum Outcome {
    /// Delivered, failed for good, or no longer this instance's.
    Done,
    /// Try again then.
    RetryAt(DateTime<Utc>),
}

struct Inner {
    schedule: Schedule,
    timeout: Duration,
    max_in_flight: usize,
    http: reqwest::Client,
    endpoints: Arc<WebhookEndpoints>,
    deliveries: Arc<WebhookDeliveries>,
    metrics: Metrics,
    owned: Mutex<HashSet<String>>,
    queues: Mutex<HashMap<(String, String), mpsc::UnboundedSender<Job>>>,
    shutdown: Shutdown,
    tasks: TaskTracker,
}

/// The delivery workers.
#[derive(Clone)]
pub struct Sender {
    inner: Arc<Inner>,
}

impl Sender {
    /// Workers with this configuration; they stop at `shutdown`.
    pub fn new(
        cfg: &WebhooksConfig,
        endpoints: Arc<WebhookEndpoints>,
        deliveries: Arc<WebhookDeliveries>,
        metrics: Metrics,
        shutdown: Shutdown,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            // A redirect is an answer that is not 2xx: following it would send the signed event elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("billing-webhooks/1")
            .build()?;
        Ok(Sender {
            inner: Arc::new(Inner {
                schedule: Schedule {
                    base: cfg.retry_base,
                    cap: cfg.retry_cap,
                    give_up_after: cfg.give_up_after,
                },
                timeout: cfg.request_timeout,
                max_in_flight: cfg.max_in_flight_per_endpoint,
                http,
                endpoints,
                deliveries,
                metrics,
                owned: Mutex::default(),
                queues: Mutex::default(),
                shutdown,
                tasks: TaskTracker::new(),
            }),
        })
    }

    /// Deliveries of this partition are this instance's to send.
    pub fn own(&self, source: &str) {
        self.inner.owned().insert(source.to_owned());
    }

    /// Deliveries of this partition are no longer this instance's.
    pub fn disown(&self, source: &str) {
        self.inner.owned().remove(source);
    }

    /// Whether this instance sends the deliveries of this partition.
    pub fn owns(&self, source: &str) -> bool {
        self.inner.owned().contains(source)
    }

    /// The partitions this instance owns.
    pub fn sources(&self) -> Vec<String> {
        self.inner.owned().iter().cloned().collect()
    }

    /// Queue a delivery on its endpoint's task (started on first use).
    pub fn enqueue(&self, job: Job) {
        let key = (job.tenant_id.clone(), job.endpoint_id.clone());
        let mut queues = self.inner.queues.lock().expect("queues lock");
        let tx = queues.entry(key).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            self.inner
                .tasks
                .spawn(endpoint_loop(self.inner.clone(), rx));
            tx
        });
        // A closed queue means shutdown: the delivery stays pending in the store.
        let _ = tx.send(job);
    }

    /// Queue every pending delivery of a partition (on assignment, and so after a restart). Each is attempted at
    /// once or at its stored `next_attempt_at`, whichever is later.
    pub async fn load(&self, source: &str) -> anyhow::Result<usize> {
        let pending = self.inner.deliveries.pending(source).await?;
        let n = pending.len();
        let now = Utc::now();
        for p in pending {
            self.enqueue(Job {
                tenant_id: p.tenant_id,
                endpoint_id: p.endpoint_id,
                delivery_id: p.delivery_id,
                source: source.to_owned(),
                due: now,
            });
        }
        Ok(n)
    }

    /// Wait for the endpoint tasks to end (after shutdown).
    pub async fn stopped(&self) {
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}

impl Inner {
    fn owned(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.owned.lock().expect("owned lock")
    }
}

async fn sleep_until(at: Option<DateTime<Utc>>) {
    match at {
        Some(at) => tokio::time::sleep((at - Utc::now()).to_std().unwrap_or_default()).await,
        None => std::future::pending().await,
    }
}

/// One endpoint's queue: a timer heap of its deliveries and at most `max_in_flight` attempts running.
async fn endpoint_loop(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Job>) {
    // The earliest due time of each queued delivery; heap entries that no longer match it are stale.
    let mut due: HashMap<String, Job> = HashMap::new();
    let mut heap: BinaryHeap<Reverse<(DateTime<Utc>, String)>> = BinaryHeap::new();
    let mut running: HashSet<String> = HashSet::new();
    let mut in_flight = FuturesUnordered::new();
    let queue = |job: Job,
                 due: &mut HashMap<String, Job>,
                 heap: &mut BinaryHeap<Reverse<(DateTime<Utc>, String)>>| {
        if due.get(&job.delivery_id).is_some_and(|q| q.due <= job.due) {
            return;
        }
        heap.push(Reverse((job.due, job.delivery_id.clone())));
        due.insert(job.delivery_id.clone(), job);
    };
    loop {
        let next = if running.len() < inner.max_in_flight {
            heap.peek().map(|Reverse((t, _))| *t)
        } else {
            None
        };
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            job = rx.recv() => match job {
                Some(job) => queue(job, &mut due, &mut heap),
                None => return,
            },
            _ = sleep_until(next) => {
                let now = Utc::now();
                while running.len() < inner.max_in_flight {
                    let Some(Reverse((at, id))) = heap.peek().cloned() else { break };
                    if at > now {
                        break;
                    }
                    heap.pop();
                    if due.get(&id).map(|j| j.due) != Some(at) {
                        continue;
                    }
                    let job = due.remove(&id).expect("present");
                    if running.contains(&id) {
                        // Its attempt is still running and schedules what follows; look again shortly.
                        let later = Job { due: now + chrono::Duration::seconds(1), ..job };
                        queue(later, &mut due, &mut heap);
                        continue;
                    }
                    running.insert(id);
                    let inner = inner.clone();
                    in_flight.push(async move {
                        let outcome = attempt(&inner, &job).await;
                        (job, outcome)
                    });
                }
            }
            Some((job, outcome)) = in_flight.next(), if !in_flight.is_empty() => {
                running.remove(&job.delivery_id);
                if let Outcome::RetryAt(at) = outcome {
                    queue(Job { due: at, ..job }, &mut due, &mut heap);
                }
            }
        }
    }
}

/// Whether an attempt's answer was a 2xx.
fn succeeded(a: &Attempt) -> bool {
    a.status_code.is_some_and(|s| (200..300).contains(&s))
}

/// One attempt of one delivery, with everything it records.
async fn attempt(inner: &Inner, job: &Job) -> Outcome {
    if !inner.owned().contains(&job.source) {
        return Outcome::Done;
    }
    let retry_later = || {
        inner.metrics.store_retries.inc();
        Outcome::RetryAt(Utc::now() + chrono::Duration::from_std(STORE_RETRY).unwrap_or_default())
    };
    let d = match inner
        .deliveries
        .get(&job.tenant_id, &job.endpoint_id, &job.delivery_id)
        .await
    {
        Ok(Some(d)) => d,
        Ok(None) => return Outcome::Done,
        Err(e) => {
            tracing::warn!(delivery = job.delivery_id, error = %e, "reading a delivery failed; retrying");
            return retry_later();
        }
    };
    if d.status != PENDING {
        return Outcome::Done;
    }
    let now = Utc::now();
    if let Some(next) = d.next_attempt_at {
        if next > now {
            return Outcome::RetryAt(next);
        }
    }
    let endpoint = match inner.endpoints.get(&d.tenant_id, &d.endpoint_id).await {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(endpoint = d.endpoint_id, error = %e, "reading an endpoint failed; retrying");
            return retry_later();
        }
    };
    let Some(endpoint) = endpoint.filter(|e| e.enabled) else {
        // Deleted or disabled: nothing to send to. A redeliver request after re-enabling sends it again.
        return match inner.deliveries.give_up(&d).await {
            Ok(()) => {
                inner.metrics.failed.inc();
                Outcome::Done
            }
            Err(_) => retry_later(),
        };
    };
    let t = now.timestamp();
    let signature = signing::header(&endpoint.signing_secrets(now), t, &d.payload);
    let started = Instant::now();
    let result = inner
        .http
        .post(&endpoint.url)
        .timeout(inner.timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signature)
        .header(EVENT_ID_HEADER, &d.event_id)
        .body(d.payload.clone())
        .send()
        .await;
    let elapsed = started.elapsed();
    inner.metrics.latency.observe(elapsed.as_secs_f64());
    let (status_code, error, outcome) = match result {
        Ok(resp) if resp.status().is_success() => (Some(resp.status().as_u16()), None, "delivered"),
        Ok(resp) => (
            Some(resp.status().as_u16()),
            Some(format!("HTTP {}", resp.status().as_u16())),
            "http_error",
        ),
        Err(e) if e.is_timeout() => (
            None,
            Some(format!("no answer within {} ms", inner.timeout.as_millis())),
            "timeout",
        ),
        Err(e) => (None, Some(describe(&e)), "connection_error"),
    };
    inner.metrics.attempts.with_label_values(&[outcome]).inc();
    let record = Attempt {
        attempt: d.attempts.iter().map(|a| a.attempt).max().unwrap_or(0) + 1,
        at: now,
        status_code,
        error,
        latency_ms: elapsed.as_millis() as u64,
    };
    let (status, next) = if succeeded(&record) {
        (DELIVERED, None)
    } else {
        let failures = d
            .attempts
            .iter()
            .filter(|a| a.at >= d.schedule_from && !succeeded(a))
            .count() as u32
            + 1;
        match inner
            .schedule
            .next_attempt(d.schedule_from, failures, Utc::now())
        {
            Some(at) => (PENDING, Some(at)),
            None => (FAILED, None),
        }
    };
    record_attempt(inner, &d, &record, status, next).await
}

/// Record an attempt, retrying the write a few times: an attempt that cannot be recorded is made again later
/// (receivers deduplicate by event id).
async fn record_attempt(
    inner: &Inner,
    d: &Delivery,
    attempt: &Attempt,
    status: &str,
    next: Option<DateTime<Utc>>,
) -> Outcome {
    for wait_ms in [0, 200, 1000, 3000] {
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        match inner
            .deliveries
            .record_attempt(d, attempt, status, next)
            .await
        {
            Ok(()) => {
                if status == FAILED {
                    inner.metrics.failed.inc();
                }
                return match next {
                    Some(at) => Outcome::RetryAt(at),
                    None => Outcome::Done,
                };
            }
            Err(e) => {
                inner.metrics.store_retries.inc();
                tracing::warn!(delivery = d.delivery_id, error = %e, "recording an attempt failed");
            }
        }
    }
    Outcome::RetryAt(Utc::now() + chrono::Duration::from_std(STORE_RETRY).unwrap_or_default())
}

/// An error and its causes, without the URL (the log has it).
fn describe(e: &reqwest::Error) -> String {
    let mut out = if e.is_connect() {
        "connection failed".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
