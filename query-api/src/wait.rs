//! Read-your-writes: a write publishes its event, learns where it landed (partition, offset) from the broker's
//! acknowledgement, then polls the invoicer's `materialized_offsets` until the partition is materialized past it
//! and reads the row back. Test clocks are ready at T when every lifecycle partition has processed T (bill runs
//! included). Also the billing "now" of a customer: its test clock's time, or the wall clock.

use std::collections::HashMap;
use std::time::Duration;

use axum::http::StatusCode;
use axum::Json;
use billing_schemas::catalog::CatalogEvent;
use billing_schemas::lifecycle::LifecycleEvent;
use billing_schemas::Encoding;
use billing_store::customers::CustomerView;
use chrono::{DateTime, Utc};
use tokio::time::Instant;

use crate::error::ApiError;
use crate::request::{WriteQuery, MAX_WAIT_SECONDS};
use crate::AppState;

/// How often the materialization progress is polled.
pub const POLL: Duration = Duration::from_millis(20);

/// What a write answers: the status and the JSON body.
pub type Answer = (StatusCode, Json<serde_json::Value>);

/// The 202 of a write whose effect was not visible in time.
pub fn pending(event_id: &str, object: &str, id: &str) -> Answer {
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({
            "event_id": event_id,
            "status": "pending",
            "object": object,
            "id": id,
        })),
    )
}

/// An answer with this status and body.
pub fn answer(status: StatusCode, body: impl serde::Serialize) -> Result<Answer, ApiError> {
    Ok((
        status,
        Json(serde_json::to_value(body).map_err(anyhow::Error::from)?),
    ))
}

/// A fresh event id.
pub fn event_id() -> String {
    format!("evt_{}", uuid::Uuid::new_v4().simple())
}

/// How far a clock has got over the lifecycle partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClockState {
    /// The earliest time any partition has processed: the clock's current time.
    pub now: DateTime<Utc>,
    /// The latest time any partition has processed: where the clock is going.
    pub frozen_time: DateTime<Utc>,
    /// The time every partition has processed, once every partition has reported.
    pub ready_time: Option<DateTime<Utc>>,
    /// Partitions that have processed `frozen_time`.
    pub partitions_at_frozen_time: usize,
    /// Lifecycle partitions.
    pub partitions: usize,
}

impl ClockState {
    /// From the per-partition progress of a clock; `None` when no partition has seen it.
    pub fn new(progress: &HashMap<i32, DateTime<Utc>>, partitions: i32) -> Option<Self> {
        let in_range: Vec<DateTime<Utc>> = (0..partitions)
            .filter_map(|p| progress.get(&p).copied())
            .collect();
        let now = in_range.iter().min().copied()?;
        let frozen_time = in_range.iter().max().copied()?;
        Some(ClockState {
            now,
            frozen_time,
            ready_time: (in_range.len() == partitions as usize).then_some(now),
            partitions_at_frozen_time: in_range.iter().filter(|t| **t >= frozen_time).count(),
            partitions: partitions as usize,
        })
    }

    /// Whether every partition has processed `t`.
    pub fn ready_at(&self, t: DateTime<Utc>) -> bool {
        self.ready_time.is_some_and(|r| r >= t)
    }

    /// `ready` when every partition has processed where the clock is going, else `advancing`.
    pub fn status(&self) -> &'static str {
        if self.ready_at(self.frozen_time) {
            "ready"
        } else {
            "advancing"
        }
    }
}

impl AppState {
    /// When a write waiting for its effect gives up: `wait_seconds` from the query (at most 300), else the
    /// configured `query_api.write_wait`.
    pub fn deadline(&self, q: &WriteQuery) -> Result<Instant, ApiError> {
        let wait = match q.wait_seconds {
            None => self.write_wait,
            Some(s) if s <= MAX_WAIT_SECONDS => Duration::from_secs(s),
            Some(s) => {
                return Err(ApiError::malformed(
                    "wait_seconds",
                    format!("{s} is not in 0..={MAX_WAIT_SECONDS}"),
                ))
            }
        };
        Ok(Instant::now() + wait)
    }

    /// Publish a lifecycle event; returns (partition, offset).
    pub async fn publish_lifecycle(&self, ev: &LifecycleEvent) -> Result<(i32, i64), ApiError> {
        Ok(self.publisher.lifecycle_at(ev, Encoding::Json).await?)
    }

    /// Publish a catalog event; returns (partition, offset).
    pub async fn publish_catalog(&self, ev: &CatalogEvent) -> Result<(i32, i64), ApiError> {
        Ok(self.publisher.catalog_at(ev, Encoding::Json).await?)
    }

    /// Wait until the lifecycle partition is materialized past `offset`; `false` at the deadline.
    pub async fn lifecycle_visible(&self, at: (i32, i64), deadline: Instant) -> bool {
        let topic = self.publisher.topics().lifecycle.clone();
        self.materialized(&topic, at, deadline).await
    }

    /// Wait until the catalog partition is materialized past `offset`; `false` at the deadline.
    pub async fn catalog_visible(&self, at: (i32, i64), deadline: Instant) -> bool {
        let topic = self.publisher.topics().catalog.clone();
        self.materialized(&topic, at, deadline).await
    }

    /// Wait until the payments partition is materialized past `offset`; `false` at the deadline.
    pub async fn payments_visible(&self, at: (i32, i64), deadline: Instant) -> bool {
        let topic = self.publisher.topics().payments.clone();
        self.materialized(&topic, at, deadline).await
    }

    async fn materialized(
        &self,
        topic: &str,
        (partition, offset): (i32, i64),
        deadline: Instant,
    ) -> bool {
        loop {
            match self.billing.materialized(topic, partition).await {
                Ok(next) if next > offset => return true,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, topic, partition, "reading materialization progress failed")
                }
            }
            if Instant::now() + POLL > deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Poll `check` until it returns `Some` or the deadline passes; errors are logged and polled again.
    pub async fn poll<T, F, Fut>(&self, deadline: Instant, mut check: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
    {
        loop {
            match check().await {
                Ok(Some(v)) => return Some(v),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "polling a read model failed"),
            }
            if Instant::now() + POLL > deadline {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// A test clock's progress (`None`: no partition has seen it).
    pub async fn clock(&self, tenant: &str, clock: &str) -> Result<Option<ClockState>, ApiError> {
        let progress = self.billing.test_clock(tenant, clock).await?;
        Ok(ClockState::new(&progress, self.partitions))
    }

    /// Wait until every partition has processed the clock up to `t`; the last state seen, and whether ready.
    pub async fn clock_ready(
        &self,
        tenant: &str,
        clock: &str,
        t: DateTime<Utc>,
        deadline: Instant,
    ) -> (Option<ClockState>, bool) {
        let mut last = None;
        loop {
            match self.billing.test_clock(tenant, clock).await {
                Ok(progress) => {
                    last = ClockState::new(&progress, self.partitions);
                    if last.as_ref().is_some_and(|s| s.ready_at(t)) {
                        return (last, true);
                    }
                }
                Err(e) => tracing::warn!(error = %e, clock, "reading a test clock failed"),
            }
            if Instant::now() + POLL > deadline {
                return (last, false);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The billing time of a customer now: its test clock's current time, or the wall clock.
    pub async fn customer_now(
        &self,
        tenant: &str,
        customer: &CustomerView,
    ) -> Result<DateTime<Utc>, ApiError> {
        match &customer.test_clock_id {
            None => Ok(Utc::now()),
            Some(clock) => match self.clock(tenant, clock).await? {
                Some(state) => Ok(state.now),
                None => Err(ApiError::Conflict(format!(
                    "the customer's test clock {clock:?} has no time yet"
                ))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn a_clock_is_ready_when_every_partition_has_processed_the_time() {
        assert_eq!(ClockState::new(&HashMap::new(), 3), None);
        let mut progress = HashMap::from([(0, t("2026-01-01T00:00:00Z"))]);
        let s = ClockState::new(&progress, 3).unwrap();
        assert_eq!(s.now, t("2026-01-01T00:00:00Z"));
        assert_eq!(s.ready_time, None);
        assert_eq!(s.status(), "advancing");
        progress.insert(1, t("2026-01-01T00:00:00Z"));
        progress.insert(2, t("2026-01-01T00:00:00Z"));
        let s = ClockState::new(&progress, 3).unwrap();
        assert_eq!(s.status(), "ready");
        assert!(s.ready_at(t("2026-01-01T00:00:00Z")));
        progress.insert(1, t("2026-02-01T00:00:00Z"));
        let s = ClockState::new(&progress, 3).unwrap();
        assert_eq!(s.now, t("2026-01-01T00:00:00Z"));
        assert_eq!(s.frozen_time, t("2026-02-01T00:00:00Z"));
        assert_eq!(s.partitions_at_frozen_time, 1);
        assert_eq!(s.status(), "advancing");
        assert!(!s.ready_at(t("2026-02-01T00:00:00Z")));
        // A partition beyond the topic's (after a shrink in config) does not count.
        progress.insert(7, t("2027-01-01T00:00:00Z"));
        assert_eq!(
            ClockState::new(&progress, 3).unwrap().frozen_time,
            t("2026-02-01T00:00:00Z")
        );
    }
}
