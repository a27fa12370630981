//! ScyllaDB `webhook_deliveries`, `webhook_deliveries_by_created` and `webhook_pending` (migration
//! `cql/0006_webhooks.cql`): one row per (event, endpoint) with its status and every attempt, the newest-first
//! log the API pages through, and the deliveries still to be sent by owner (`source`, the event's Kafka
//! partition), which an instance reloads when it is assigned that partition.
//!
//! A delivery's id is derived from its endpoint and event ([`delivery_id`]), and it is created with a lightweight
//! transaction, so an event read twice (a replay after a crash) never makes a second delivery nor resets one.
//!
//! **Writer: webhooks.** Readers: webhooks, query-api.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Waiting for its next attempt.
pub const PENDING: &str = "pending";
/// An attempt got a 2xx.
pub const DELIVERED: &str = "delivered";
/// Given up (retry window over, or its endpoint deleted or disabled).
pub const FAILED: &str = "failed";

/// The deterministic id of the delivery of an event to an endpoint: `whd_` and 32 hex digits of
/// SHA-256(endpoint id, event id).
pub fn delivery_id(endpoint_id: &str, event_id: &str) -> String {
    let mut h = Sha256::new();
    h.update(endpoint_id.as_bytes());
    h.update([0u8]);
    h.update(event_id.as_bytes());
    let hex: String = h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("whd_{hex}")
}

/// One HTTP attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1 for the first; numbers go on across redeliveries.
    pub attempt: i32,
    /// When it was sent (wall clock).
    pub at: DateTime<Utc>,
    /// The endpoint's HTTP status, when it answered.
    pub status_code: Option<u16>,
    /// Why there is no 2xx: a connection error, a timeout, or the non-2xx status.
    pub error: Option<String>,
    /// From sending the request to the answer's status line (or the error).
    pub latency_ms: u64,
}

/// A delivery as stored and as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// `whd_<32 hex>`.
    pub delivery_id: String,
    /// Tenant.
    #[serde(skip)]
    pub tenant_id: String,
    /// Endpoint.
    pub endpoint_id: String,
    /// Owner: `<topic>/<partition>` of the source event.
    #[serde(skip)]
    pub source: String,
    /// The webhook event's id (`Billing-Event-Id`).
    pub event_id: String,
    /// Its type.
    pub event_type: String,
    /// The exact body sent.
    #[serde(skip)]
    pub payload: String,
    /// When the source event was appended to Kafka.
    pub created_at: DateTime<Utc>,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    /// Every attempt, oldest first.
    pub attempts: Vec<Attempt>,
    /// When a pending delivery is tried next.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Start of the current retry schedule (creation, or the latest redeliver request).
    #[serde(skip)]
    pub schedule_from: DateTime<Utc>,
    /// The latest redeliver request handled.
    #[serde(skip)]
    pub redelivered_up_to: Option<DateTime<Utc>>,
}

/// A delivery to create.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// Tenant.
    pub tenant_id: String,
    /// Endpoint.
    pub endpoint_id: String,
    /// From [`delivery_id`].
    pub delivery_id: String,
    /// `<topic>/<partition>` of the source event.
    pub source: String,
    /// Webhook event id.
    pub event_id: String,
    /// Webhook event type.
    pub event_type: String,
    /// The JSON body.
    pub payload: String,
    /// Kafka time of the source event (the same on a replay).
    pub created_at: DateTime<Utc>,
    /// First attempt.
    pub first_attempt_at: DateTime<Utc>,
}

/// A pending delivery's key, as `webhook_pending` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PendingKey {
    /// Tenant.
    pub tenant_id: String,
    /// Endpoint.
    pub endpoint_id: String,
    /// Delivery.
    pub delivery_id: String,
}

type Row = (
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    DateTime<Utc>,
    String,
    Option<HashMap<i32, String>>,
    Option<DateTime<Utc>>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
);

const COLUMNS: &str =
    "tenant_id, endpoint_id, delivery_id, source, event_id, event_type, payload, created_at, \
                       status, attempts, next_attempt_at, schedule_from, redelivered_up_to";

fn from_row(r: Row) -> anyhow::Result<Delivery> {
    let mut attempts =
        r.9.unwrap_or_default()
            .into_values()
            .map(|json| serde_json::from_str::<Attempt>(&json))
            .collect::<Result<Vec<_>, _>>()?;
    attempts.sort_by_key(|a| a.attempt);
    Ok(Delivery {
        tenant_id: r.0,
        endpoint_id: r.1,
        delivery_id: r.2,
        source: r.3,
        event_id: r.4,
        event_type: r.5,
        payload: r.6,
        created_at: r.7,
        status: r.8,
        attempts,
        next_attempt_at: r.10,
        schedule_from: r.11,
        redelivered_up_to: r.12,
    })
}

pub(crate) fn insert_new(ks: &str) -> String {
    format!(
        "INSERT INTO {ks}.webhook_deliveries (tenant_id, endpoint_id, delivery_id, source, event_id, event_type, \
         payload, created_at, status, next_attempt_at, schedule_from) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, '{PENDING}', ?, ?) IF NOT EXISTS"
    )
}

pub(crate) fn insert_index(ks: &str) -> String {
    format!(
        "INSERT INTO {ks}.webhook_deliveries_by_created (tenant_id, endpoint_id, created_at, delivery_id) \
         VALUES (?, ?, ?, ?)"
    )
}

pub(crate) fn insert_pending(ks: &str) -> String {
    format!(
        "INSERT INTO {ks}.webhook_pending (source, tenant_id, endpoint_id, delivery_id) VALUES (?, ?, ?, ?)"
    )
}

pub(crate) fn delete_pending(ks: &str) -> String {
    format!(
        "DELETE FROM {ks}.webhook_pending WHERE source = ? AND tenant_id = ? AND endpoint_id = ? AND delivery_id = ?"
    )
}

pub(crate) fn select_pending(ks: &str) -> String {
    format!("SELECT tenant_id, endpoint_id, delivery_id FROM {ks}.webhook_pending WHERE source = ?")
}

pub(crate) fn record_attempt(ks: &str) -> String {
    format!(
        "UPDATE {ks}.webhook_deliveries SET attempts = attempts + ?, status = ?, next_attempt_at = ? \
         WHERE tenant_id = ? AND endpoint_id = ? AND delivery_id = ?"
    )
}

pub(crate) fn set_status(ks: &str) -> String {
    format!(
        "UPDATE {ks}.webhook_deliveries SET status = ?, next_attempt_at = ? \
         WHERE tenant_id = ? AND endpoint_id = ? AND delivery_id = ?"
    )
}

pub(crate) fn requeue(ks: &str) -> String {
    format!(
        "UPDATE {ks}.webhook_deliveries SET status = '{PENDING}', next_attempt_at = ?, schedule_from = ?, \
         redelivered_up_to = ? WHERE tenant_id = ? AND endpoint_id = ? AND delivery_id = ?"
    )
}

pub(crate) fn select_one(ks: &str) -> String {
    format!(
        "SELECT {COLUMNS} FROM {ks}.webhook_deliveries WHERE tenant_id = ? AND endpoint_id = ? AND delivery_id = ?"
    )
}

pub(crate) fn page_first(ks: &str) -> String {
    format!(
        "SELECT delivery_id FROM {ks}.webhook_deliveries_by_created WHERE tenant_id = ? AND endpoint_id = ? LIMIT ?"
    )
}

pub(crate) fn page_after(ks: &str) -> String {
    format!(
        "SELECT delivery_id FROM {ks}.webhook_deliveries_by_created WHERE tenant_id = ? AND endpoint_id = ? \
         AND (created_at, delivery_id) < (?, ?) LIMIT ?"
    )
}

/// Prepared statements over the delivery tables.
pub struct WebhookDeliveries {
    session: Arc<Session>,
    insert_new: PreparedStatement,
    insert_index: PreparedStatement,
    insert_pending: PreparedStatement,
    delete_pending: PreparedStatement,
    select_pending: PreparedStatement,
    record_attempt: PreparedStatement,
    set_status: PreparedStatement,
    requeue: PreparedStatement,
    select_one: PreparedStatement,
    page_first: PreparedStatement,
    page_after: PreparedStatement,
}

impl WebhookDeliveries {
    /// Prepare every statement once.
    pub async fn new(session: Arc<Session>, ks: &str) -> anyhow::Result<Self> {
        let prepare = |q: String, idempotent: bool| crate::prepare(&session, q, idempotent);
        Ok(WebhookDeliveries {
            // A lightweight transaction: retrying it is harmless (it applies once), but the driver must not
            // retry it blindly on a timeout; the caller does, reading what it holds.
            insert_new: prepare(insert_new(ks), false).await?,
            insert_index: prepare(insert_index(ks), true).await?,
            insert_pending: prepare(insert_pending(ks), true).await?,
            delete_pending: prepare(delete_pending(ks), true).await?,
            select_pending: prepare(select_pending(ks), true).await?,
            record_attempt: prepare(record_attempt(ks), true).await?,
            set_status: prepare(set_status(ks), true).await?,
            requeue: prepare(requeue(ks), true).await?,
            select_one: prepare(select_one(ks), true).await?,
            page_first: prepare(page_first(ks), true).await?,
            page_after: prepare(page_after(ks), true).await?,
            session,
        })
    }

    /// Create a delivery unless it exists, with its log entry and, while it is pending, its pending entry. Returns
    /// the delivery as stored (the existing one on a replay) and whether this call created it. Writer: webhooks.
    pub async fn create(&self, d: &NewDelivery) -> anyhow::Result<(Delivery, bool)> {
        let result = self
            .session
            .execute_unpaged(
                &self.insert_new,
                (
                    &d.tenant_id,
                    &d.endpoint_id,
                    &d.delivery_id,
                    &d.source,
                    &d.event_id,
                    &d.event_type,
                    &d.payload,
                    d.created_at,
                    d.first_attempt_at,
                    d.first_attempt_at,
                ),
            )
            .await?
            .into_rows_result()?;
        // The first column of a lightweight transaction's answer is `[applied]`.
        let created = matches!(
            result
                .rows::<scylla::value::Row>()?
                .next()
                .transpose()?
                .and_then(|r| r.columns.into_iter().next()),
            Some(Some(scylla::value::CqlValue::Boolean(true)))
        );
        // Applied or not, the row now exists: read it, and make sure its index and pending entries exist too (a
        // crash may have come between the three writes).
        let stored = self
            .get(&d.tenant_id, &d.endpoint_id, &d.delivery_id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("delivery {} vanished", d.delivery_id))?;
        self.session
            .execute_unpaged(
                &self.insert_index,
                (
                    &d.tenant_id,
                    &d.endpoint_id,
                    stored.created_at,
                    &d.delivery_id,
                ),
            )
            .await?;
        if stored.status == PENDING {
            self.session
                .execute_unpaged(
                    &self.insert_pending,
                    (&stored.source, &d.tenant_id, &d.endpoint_id, &d.delivery_id),
                )
                .await?;
        }
        Ok((stored, created))
    }

    /// One delivery.
    pub async fn get(
        &self,
        tenant: &str,
        endpoint: &str,
        id: &str,
    ) -> anyhow::Result<Option<Delivery>> {
        self.session
            .execute_unpaged(&self.select_one, (tenant, endpoint, id))
            .await?
            .into_rows_result()?
            .maybe_first_row::<Row>()?
            .map(from_row)
            .transpose()
    }

    /// Record an attempt and the status it leads to (`next_attempt_at` while still pending); a delivery that is
    /// no longer pending leaves the pending list. Writer: webhooks.
    pub async fn record_attempt(
        &self,
        d: &Delivery,
        attempt: &Attempt,
        status: &str,
        next_attempt_at: Option<DateTime<Utc>>,
    ) -> anyhow::Result<()> {
        let entry = HashMap::from([(attempt.attempt, serde_json::to_string(attempt)?)]);
        self.session
            .execute_unpaged(
                &self.record_attempt,
                (
                    entry,
                    status,
                    next_attempt_at,
                    &d.tenant_id,
                    &d.endpoint_id,
                    &d.delivery_id,
                ),
            )
            .await?;
        if status != PENDING {
            self.remove_pending(d).await?;
        }
        Ok(())
    }

    /// End a delivery without an attempt (its endpoint was deleted or disabled). Writer: webhooks.
    pub async fn give_up(&self, d: &Delivery) -> anyhow::Result<()> {
        self.session
            .execute_unpaged(
                &self.set_status,
                (
                    FAILED,
                    None::<DateTime<Utc>>,
                    &d.tenant_id,
                    &d.endpoint_id,
                    &d.delivery_id,
                ),
            )
            .await?;
        self.remove_pending(d).await
    }

    async fn remove_pending(&self, d: &Delivery) -> anyhow::Result<()> {
        self.session
            .execute_unpaged(
                &self.delete_pending,
                (&d.source, &d.tenant_id, &d.endpoint_id, &d.delivery_id),
            )
            .await?;
        Ok(())
    }

    /// Make a delivery pending again from `requested_at` on, for a redeliver request. Writer: webhooks.
    pub async fn requeue(&self, d: &Delivery, requested_at: DateTime<Utc>) -> anyhow::Result<()> {
        self.session
            .execute_unpaged(
                &self.requeue,
                (
                    requested_at,
                    requested_at,
                    requested_at,
                    &d.tenant_id,
                    &d.endpoint_id,
                    &d.delivery_id,
                ),
            )
            .await?;
        self.session
            .execute_unpaged(
                &self.insert_pending,
                (&d.source, &d.tenant_id, &d.endpoint_id, &d.delivery_id),
            )
            .await?;
        Ok(())
    }

    /// The pending deliveries of one owner.
    pub async fn pending(&self, source: &str) -> anyhow::Result<Vec<PendingKey>> {
        Ok(self
            .session
            .execute_iter(self.select_pending.clone(), (source,))
            .await?
            .rows_stream::<(String, String, String)>()?
            .map_ok(|(tenant_id, endpoint_id, delivery_id)| PendingKey {
                tenant_id,
                endpoint_id,
                delivery_id,
            })
            .try_collect()
            .await?)
    }

    /// An endpoint's deliveries newest first, after the delivery `starting_after` when given (`None` when that
    /// delivery does not exist).
    pub async fn page(
        &self,
        tenant: &str,
        endpoint: &str,
        limit: i32,
        starting_after: Option<&str>,
    ) -> anyhow::Result<Option<Vec<Delivery>>> {
        let result = match starting_after {
            None => {
                self.session
                    .execute_unpaged(&self.page_first, (tenant, endpoint, limit))
                    .await?
            }
            Some(after) => {
                let Some(cursor) = self.get(tenant, endpoint, after).await? else {
                    return Ok(None);
                };
                self.session
                    .execute_unpaged(
                        &self.page_after,
                        (tenant, endpoint, cursor.created_at, after, limit),
                    )
                    .await?
            }
        };
        let ids: Vec<String> = result
            .into_rows_result()?
            .rows::<(String,)>()?
            .map(|r| r.map(|(id,)| id))
            .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(d) = self.get(tenant, endpoint, &id).await? {
                out.push(d);
            }
        }
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_ids_are_deterministic_and_distinct() {
        let a = delivery_id("we_1", "evt_1");
        assert_eq!(a, delivery_id("we_1", "evt_1"));
        assert_eq!(a.len(), 4 + 32);
        assert!(a.starts_with("whd_"));
        assert_ne!(a, delivery_id("we_2", "evt_1"));
        assert_ne!(a, delivery_id("we_1", "evt_2"));
        // The separator keeps ("ab", "c") apart from ("a", "bc").
        assert_ne!(delivery_id("ab", "c"), delivery_id("a", "bc"));
    }
}
