//! `billing.usage`: usage events (schema `usage_event.avsc`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{de, Deserialize, Deserializer, Serialize};

use crate::registry::{Message, SchemaId};

/// One usage event. `(tenant_id, event_id)` is its idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEvent {
    /// Tenant that owns the customer.
    pub tenant_id: String,
    /// Producer-chosen idempotency key, unique per tenant.
    pub event_id: String,
    /// The customer's external id.
    pub customer_id: String,
    /// Code of the billable metric this event feeds.
    pub metric_code: String,
    /// Event time.
    #[serde(with = "crate::time")]
    pub timestamp: DateTime<Utc>,
    /// Event properties. JSON numbers and booleans are kept as their exact text.
    #[serde(default, deserialize_with = "properties")]
    pub properties: BTreeMap<String, String>,
}

impl Message for UsageEvent {
    const SCHEMA: SchemaId = SchemaId::Usage;
}

fn properties<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = Option::<BTreeMap<String, serde_json::Value>>::deserialize(d)?;
    raw.unwrap_or_default()
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                other => {
                    return Err(de::Error::custom(format!(
                        "property {k:?} must be a string, number or boolean, not {other}"
                    )))
                }
            };
            Ok((k, text))
        })
        .collect()
}
