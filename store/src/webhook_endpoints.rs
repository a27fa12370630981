//! ScyllaDB `webhook_endpoints` (migration `cql/0006_webhooks.cql`): where each tenant wants its webhook events,
//! which types, and the secrets that sign them. Also the one list of webhook event types, which the API validates
//! subscriptions against and the webhooks service maps source events to.
//!
//! **Writer: query-api.** Readers: query-api, webhooks.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

/// Every webhook event type, in documentation order (`docs/payments.md`, "Webhooks"). An endpoint subscribes to
/// some of them, or to [`ALL_TYPES`].
pub const EVENT_TYPES: &[&str] = &[
    "customer.created",
    "customer.updated",
    "subscription.created",
    "subscription.updated",
    "subscription.paused",
    "subscription.resumed",
    "subscription.canceled",
    "subscription.suspended",
    "subscription.unsuspended",
    "applied_coupon.created",
    "applied_coupon.removed",
    "wallet.created",
    "wallet_transaction.created",
    "invoice.finalized",
    "invoice.voided",
    "invoice.paid_out_of_band",
    "invoice.marked_uncollectible",
    "invoice.reminder",
    "invoice.credit_applied",
    "payment.attempted",
    "payment.succeeded",
    "payment.failed",
    "payment_method.attached",
    "payment_method.detached",
    "payment_method.default_set",
    "refund.succeeded",
    "refund.failed",
    "credit_note.created",
];

/// The subscription to every type, present and future.
pub const ALL_TYPES: &str = "*";

/// Prefix of every signing secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// An endpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEndpoint {
    /// Tenant.
    pub tenant_id: String,
    /// `we_<32 hex>`.
    pub endpoint_id: String,
    /// Absolute http(s) URL the events are POSTed to.
    pub url: String,
    /// Subscribed types, or `["*"]`.
    pub event_types: Vec<String>,
    /// Free text of the tenant.
    pub description: String,
    /// Disabled endpoints get nothing.
    pub enabled: bool,
    /// The current signing secret (`whsec_...`).
    pub secret: String,
    /// The secret before the latest rotation, still signing until `previous_secret_expires_at`.
    pub previous_secret: Option<String>,
    /// End of the rotation overlap.
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    /// Creation (wall clock).
    pub created_at: DateTime<Utc>,
    /// Latest change (wall clock).
    pub updated_at: DateTime<Utc>,
}

impl WebhookEndpoint {
    /// Whether the endpoint wants events of this type.
    pub fn subscribes_to(&self, event_type: &str) -> bool {
        self.event_types
            .iter()
            .any(|t| t == ALL_TYPES || t == event_type)
    }

    /// The secrets a delivery at `now` is signed with: the current one, and the previous one during its overlap.
    pub fn signing_secrets(&self, now: DateTime<Utc>) -> Vec<&str> {
        let mut out = vec![self.secret.as_str()];
        if let (Some(prev), Some(until)) = (&self.previous_secret, self.previous_secret_expires_at)
        {
            if now < until {
                out.push(prev.as_str());
            }
        }
        out
    }
}

type Row = (
    String,
    String,
    String,
    Option<Vec<String>>,
    Option<String>,
    bool,
    String,
    Option<String>,
    Option<DateTime<Utc>>,
    DateTime<Utc>,
    DateTime<Utc>,
);

const COLUMNS: &str =
    "tenant_id, endpoint_id, url, event_types, description, enabled, secret, previous_secret, \
                       previous_secret_expires_at, created_at, updated_at";

fn from_row(r: Row) -> WebhookEndpoint {
    WebhookEndpoint {
        tenant_id: r.0,
        endpoint_id: r.1,
        url: r.2,
        event_types: r.3.unwrap_or_default(),
        description: r.4.unwrap_or_default(),
        enabled: r.5,
        secret: r.6,
        previous_secret: r.7,
        previous_secret_expires_at: r.8,
        created_at: r.9,
        updated_at: r.10,
    }
}

pub(crate) fn upsert(ks: &str) -> String {
    format!(
        "INSERT INTO {ks}.webhook_endpoints ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
}

pub(crate) fn delete(ks: &str) -> String {
    format!("DELETE FROM {ks}.webhook_endpoints WHERE tenant_id = ? AND endpoint_id = ?")
}

pub(crate) fn select_one(ks: &str) -> String {
    format!("SELECT {COLUMNS} FROM {ks}.webhook_endpoints WHERE tenant_id = ? AND endpoint_id = ?")
}

pub(crate) fn select_tenant(ks: &str) -> String {
    format!("SELECT {COLUMNS} FROM {ks}.webhook_endpoints WHERE tenant_id = ?")
}

/// Prepared statements over `webhook_endpoints`.
pub struct WebhookEndpoints {
    session: Arc<Session>,
    upsert: PreparedStatement,
    delete: PreparedStatement,
    select_one: PreparedStatement,
    select_tenant: PreparedStatement,
}

impl WebhookEndpoints {
    /// Prepare every statement once.
    pub async fn new(session: Arc<Session>, ks: &str) -> anyhow::Result<Self> {
        let prepare = |q: String| crate::prepare(&session, q, true);
        Ok(WebhookEndpoints {
            upsert: prepare(upsert(ks)).await?,
            delete: prepare(delete(ks)).await?,
            select_one: prepare(select_one(ks)).await?,
            select_tenant: prepare(select_tenant(ks)).await?,
            session,
        })
    }

    /// Write an endpoint whole (create, update, rotation). Writer: query-api.
    pub async fn put(&self, e: &WebhookEndpoint) -> anyhow::Result<()> {
        self.session
            .execute_unpaged(
                &self.upsert,
                (
                    &e.tenant_id,
                    &e.endpoint_id,
                    &e.url,
                    &e.event_types,
                    &e.description,
                    e.enabled,
                    &e.secret,
                    &e.previous_secret,
                    e.previous_secret_expires_at,
                    e.created_at,
                    e.updated_at,
                ),
            )
            .await?;
        Ok(())
    }

    /// Delete an endpoint. Writer: query-api.
    pub async fn delete(&self, tenant: &str, id: &str) -> anyhow::Result<()> {
        self.session
            .execute_unpaged(&self.delete, (tenant, id))
            .await?;
        Ok(())
    }

    /// One endpoint.
    pub async fn get(&self, tenant: &str, id: &str) -> anyhow::Result<Option<WebhookEndpoint>> {
        Ok(self
            .session
            .execute_unpaged(&self.select_one, (tenant, id))
            .await?
            .into_rows_result()?
            .maybe_first_row::<Row>()?
            .map(from_row))
    }

    /// Every endpoint of a tenant, newest first.
    pub async fn of_tenant(&self, tenant: &str) -> anyhow::Result<Vec<WebhookEndpoint>> {
        let mut all: Vec<WebhookEndpoint> = self
            .session
            .execute_iter(self.select_tenant.clone(), (tenant,))
            .await?
            .rows_stream::<Row>()?
            .map_ok(from_row)
            .try_collect()
            .await?;
        all.sort_by(|a, b| (b.created_at, &b.endpoint_id).cmp(&(a.created_at, &a.endpoint_id)));
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(types: &[&str]) -> WebhookEndpoint {
        let t = "2026-01-01T00:00:00Z".parse().unwrap();
        WebhookEndpoint {
            tenant_id: "t".into(),
            endpoint_id: "we_1".into(),
            url: "https://example.com/hook".into(),
            event_types: types.iter().map(|s| s.to_string()).collect(),
            description: String::new(),
            enabled: true,
            secret: "whsec_new".into(),
            previous_secret: Some("whsec_old".into()),
            previous_secret_expires_at: Some("2026-01-02T00:00:00Z".parse().unwrap()),
            created_at: t,
            updated_at: t,
        }
    }

    #[test]
    fn subscriptions_and_secrets() {
        let e = endpoint(&["invoice.finalized"]);
        assert!(e.subscribes_to("invoice.finalized"));
        assert!(!e.subscribes_to("payment.failed"));
        assert!(endpoint(&["*"]).subscribes_to("payment.failed"));
        let during = "2026-01-01T12:00:00Z".parse().unwrap();
        assert_eq!(e.signing_secrets(during), ["whsec_new", "whsec_old"]);
        let after = "2026-01-02T00:00:00Z".parse().unwrap();
        assert_eq!(e.signing_secrets(after), ["whsec_new"]);
    }

    #[test]
    fn event_types_are_unique_and_dotted() {
        let mut seen = std::collections::HashSet::new();
        for t in EVENT_TYPES {
            assert!(seen.insert(*t), "{t} twice");
            assert_eq!(t.split('.').count(), 2, "{t}");
        }
    }
}
