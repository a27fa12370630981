//! ScyllaDB `webhook_redeliveries` (migration `cql/0006_webhooks.cql`): a tenant's requests to send a delivery
//! again (`POST /v1/webhook_endpoints/{id}/deliveries/{delivery_id}/redeliver`), filed under the delivery's owner
//! (`source`, the Kafka partition of its event) so the webhooks instance that owns that partition finds them.
//! Rows expire after 7 days; a request is handled once, as the delivery's `redelivered_up_to` records.
//!
//! **Writer: query-api.** Readers: webhooks.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

/// One request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redelivery {
    /// Owner of the delivery: `<topic>/<partition>`.
    pub source: String,
    /// When the API received it (wall clock).
    pub requested_at: DateTime<Utc>,
    /// Unique per request.
    pub request_id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Endpoint.
    pub endpoint_id: String,
    /// Delivery to send again.
    pub delivery_id: String,
}

pub(crate) fn insert(ks: &str) -> String {
    format!(
        "INSERT INTO {ks}.webhook_redeliveries (source, requested_at, request_id, tenant_id, endpoint_id, delivery_id) \
         VALUES (?, ?, ?, ?, ?, ?)"
    )
}

pub(crate) fn select_since(ks: &str) -> String {
    format!(
        "SELECT source, requested_at, request_id, tenant_id, endpoint_id, delivery_id FROM {ks}.webhook_redeliveries \
         WHERE source = ? AND requested_at >= ?"
    )
}

/// Prepared statements over `webhook_redeliveries`.
pub struct WebhookRedeliveries {
    session: Arc<Session>,
    insert: PreparedStatement,
    select_since: PreparedStatement,
}

impl WebhookRedeliveries {
    /// Prepare every statement once.
    pub async fn new(session: Arc<Session>, ks: &str) -> anyhow::Result<Self> {
        let prepare = |q: String| crate::prepare(&session, q, true);
        Ok(WebhookRedeliveries {
            insert: prepare(insert(ks)).await?,
            select_since: prepare(select_since(ks)).await?,
            session,
        })
    }

    /// File a request. Writer: query-api.
    pub async fn put(&self, r: &Redelivery) -> anyhow::Result<()> {
        self.session
            .execute_unpaged(
                &self.insert,
                (
                    &r.source,
                    r.requested_at,
                    &r.request_id,
                    &r.tenant_id,
                    &r.endpoint_id,
                    &r.delivery_id,
                ),
            )
            .await?;
        Ok(())
    }

    /// The requests of one owner made at or after `since`, oldest first.
    pub async fn since(
        &self,
        source: &str,
        since: DateTime<Utc>,
    ) -> anyhow::Result<Vec<Redelivery>> {
        type Row = (String, DateTime<Utc>, String, String, String, String);
        Ok(self
            .session
            .execute_iter(self.select_since.clone(), (source, since))
            .await?
            .rows_stream::<Row>()?
            .map_ok(|r| Redelivery {
                source: r.0,
                requested_at: r.1,
                request_id: r.2,
                tenant_id: r.3,
                endpoint_id: r.4,
                delivery_id: r.5,
            })
            .try_collect()
            .await?)
    }
}
