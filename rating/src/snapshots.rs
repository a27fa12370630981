//! Snapshots of the lifecycle state rating folds (`billing_schemas::reference`'s snapshot format, kept by
//! `billing_store::reference_snapshots`), so that a restart does not grow with `billing.lifecycle`'s history: it
//! reads the newest snapshot and folds only the lifecycle events after it. The catalog is still read whole.
//!
//! The reference reader's folder takes a snapshot once it has caught up and `rating.reference_snapshot_events`
//! lifecycle events were folded since the last one (or since the start), at most once per
//! `rating.reference_snapshot_interval`; a task here writes it. Nothing depends on a snapshot being there: without
//! one (none yet, the store unreadable, one that does not fit the topic) the topic is read from its start.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use billing_runtime::Shutdown;
use billing_store::reference_snapshots::{ReferenceSnapshots, SnapshotHead};

use crate::Metrics;

/// Attempts of each store call, each bounded by [`ATTEMPT_TIMEOUT`]; after the last, a start reads the topic
/// whole and a snapshot is given up (the next one is taken later).
const ATTEMPTS: u32 = 3;
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the snapshots of one lifecycle topic are kept, and how often one is taken.
pub struct Snapshots {
    store: ReferenceSnapshots,
    name: String,
    every_events: u64,
    every: Duration,
    metrics: Metrics,
}

/// A snapshot read back.
pub struct Loaded {
    /// Its head: the positions it reflects.
    pub head: SnapshotHead,
    /// Its bytes.
    pub data: Vec<u8>,
}

/// A snapshot taken by the folder, for the writer.
struct Taken {
    positions: BTreeMap<i32, i64>,
    customers: usize,
    data: Vec<u8>,
}

impl Snapshots {
    /// The snapshots of `lifecycle_topic`'s state.
    pub fn new(
        store: ReferenceSnapshots,
        lifecycle_topic: &str,
        settings: &billing_runtime::config::RatingConfig,
        metrics: Metrics,
    ) -> Self {
        Snapshots {
            store,
            name: billing_store::reference_snapshots::rating_snapshot_name(lifecycle_topic),
            every_events: settings.reference_snapshot_events,
            every: settings.reference_snapshot_interval,
            metrics,
        }
    }

    /// The newest complete snapshot that fits the topic ([`SnapshotHead::fits`] its partitions' end offsets
    /// `ends`) and reads back whole (a damaged one is deleted and the next tried), or `None`: none written yet, or
    /// the store not readable (logged; the topic is then read from its start).
    pub async fn newest(&self, ends: &BTreeMap<i32, i64>) -> Option<Loaded> {
        let heads = match attempts("reference snapshot heads", || self.store.heads(&self.name))
            .await
        {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "reference snapshots not readable; reading billing.lifecycle from its start");
                return None;
            }
        };
        let fits = |h: &SnapshotHead| {
            let fits = h.fits(ends);
            if !fits && h.sha256.is_some() {
                tracing::warn!(snapshot = %h.id, positions = ?h.positions, ends = ?ends,
                    "reference snapshot does not fit billing.lifecycle; not used");
            }
            fits
        };
        let candidates = heads.into_iter().filter(|h| h.sha256.is_some() && fits(h));
        for head in candidates.take(2) {
            let started = Instant::now();
            match attempts("reference snapshot", || self.store.read(&self.name, &head)).await {
                Ok(Some(data)) => {
                    tracing::info!(
                        snapshot = %head.id,
                        customers = head.customers,
                        bytes = data.len(),
                        folded = head.folded,
                        seconds = started.elapsed().as_secs_f64(),
                        "reference snapshot read"
                    );
                    return Some(Loaded { head, data });
                }
                Ok(None) => {
                    // Damaged for good (a chunk lost, or not what its head says): deleted, so that a snapshot of
                    // the same positions is written again rather than skipped for it.
                    tracing::warn!(snapshot = %head.id, "reference snapshot damaged; deleted");
                    if let Err(e) = attempts("reference snapshot deletion", || {
                        self.store.delete(&self.name, &head)
                    })
                    .await
                    {
                        tracing::warn!(snapshot = %head.id, error = %e, "damaged reference snapshot not deleted");
                    }
                }
                Err(e) => {
                    tracing::warn!(snapshot = %head.id, error = %e, "reference snapshot not readable")
                }
            }
        }
        None
    }

    /// Start the task that writes snapshots; the returned [`Taker`] is the folder's side.
    pub fn spawn_writer(self, shutdown: Shutdown) -> Taker {
        // One snapshot waiting at most: the folder does not take another while one is waiting.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Taken>(1);
        let taker = Taker {
            tx,
            every_events: self.every_events,
            every: self.every,
            since: 0,
            last: None,
            metrics: self.metrics.clone(),
        };
        tokio::spawn(async move {
            loop {
                let taken = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    taken = rx.recv() => match taken {
                        Some(t) => t,
                        None => return,
                    },
                };
                let outcome = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    outcome = self.write(taken) => outcome,
                };
                self.metrics
                    .reference_snapshots
                    .with_label_values(&[outcome])
                    .inc();
            }
        });
        taker
    }

    /// Write one snapshot unless one of the same positions is there already; returns the outcome's label.
    async fn write(&self, taken: Taken) -> &'static str {
        let started = Instant::now();
        let newest = attempts("reference snapshot heads", || self.store.heads(&self.name)).await;
        if let Ok(heads) = &newest {
            // Another instance wrote the same state (every instance catches up to the same ends).
            if heads
                .iter()
                .any(|h| h.sha256.is_some() && h.positions == taken.positions)
            {
                return "skipped";
            }
        }
        let written = attempts("reference snapshot", || {
            self.store
                .write(&self.name, &taken.positions, taken.customers, &taken.data)
        })
        .await;
        match written {
            Ok(head) => {
                tracing::info!(
                    snapshot = %head.id,
                    customers = head.customers,
                    bytes = head.bytes,
                    folded = head.folded,
                    seconds = started.elapsed().as_secs_f64(),
                    "reference snapshot written"
                );
                "written"
            }
            Err(e) => {
                tracing::warn!(error = %e, "reference snapshot not written; another is taken later");
                "failed"
            }
        }
    }
}

/// Run a store call up to [`ATTEMPTS`] times, each bounded by [`ATTEMPT_TIMEOUT`], with a backoff between.
async fn attempts<T, F, Fut>(what: &str, mut call: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut backoff = Duration::from_millis(500);
    let mut attempt = 1;
    loop {
        let error = match tokio::time::timeout(ATTEMPT_TIMEOUT, call()).await {
            Ok(Ok(out)) => return Ok(out),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {ATTEMPT_TIMEOUT:?}"),
        };
        anyhow::ensure!(attempt < ATTEMPTS, "{what}: {error} ({ATTEMPTS} attempts)");
        tracing::warn!(what, error, retry_in = ?backoff, "store call failed; retrying");
        tokio::time::sleep(backoff).await;
        backoff *= 4;
        attempt += 1;
    }
}

/// The folder's side of the snapshots: counts the lifecycle events folded, says when a snapshot is due, and hands
/// one to the writer.
pub struct Taker {
    tx: tokio::sync::mpsc::Sender<Taken>,
    every_events: u64,
    every: Duration,
    /// Lifecycle events folded since the last snapshot taken (or the start).
    since: u64,
    last: Option<Instant>,
    metrics: Metrics,
}

impl Taker {
    /// `n` more lifecycle events folded.
    pub fn folded(&mut self, n: u64) {
        self.since += n;
    }

    /// Whether to take a snapshot now (the caller has just caught up): enough events folded, the interval passed,
    /// and the writer free.
    pub fn due(&self) -> bool {
        self.every_events > 0
            && self.since >= self.every_events
            && self.last.is_none_or(|t| t.elapsed() >= self.every)
            && self.tx.capacity() > 0
    }

    /// Hand a snapshot reflecting `positions` (every lifecycle partition's next offset) to the writer.
    pub fn take(&mut self, positions: BTreeMap<i32, i64>, customers: usize, data: Vec<u8>) {
        self.metrics.reference_snapshot_bytes.set(data.len() as i64);
        if self
            .tx
            .try_send(Taken {
                positions,
                customers,
                data,
            })
            .is_ok()
        {
            self.since = 0;
            self.last = Some(Instant::now());
        }
    }
}
