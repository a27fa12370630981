//! ClickHouse `audit_log` (migration `clickhouse/0005_audit_log.sql`): every write of the management API, who made
//! it, what it changed and when, appended before the write is answered. Nothing updates or deletes a row except
//! retention (`retention.audit_log`, whole months).
//!
//! **Writer: query-api.** Readers: query-api (`GET /v1/audit`, admins), analysts.

use serde::{Deserialize, Serialize};
use serde_json::Value;

const TABLE: &str = "audit_log";

/// The most of a request or answer body kept, in bytes (longer ones are cut, with a mark).
pub const MAX_BODY_CHARS: usize = 4096;

/// What every string value that looks like a secret becomes.
pub const REDACTED: &str = "[redacted]";

/// One write; field order is the table's column order.
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct AuditRow {
    pub tenant_id: String,
    /// Seconds since the epoch (`DateTime`).
    pub at: u32,
    pub at_ms: u64,
    pub request_id: String,
    pub key_id: String,
    pub role: String,
    pub method: String,
    pub path: String,
    /// The route's template (`/v1/customers/{customer_id}`).
    pub route: String,
    /// The resource the write named or created.
    pub resource_id: String,
    pub status: u16,
    pub remote_addr: String,
    /// The request body, secrets redacted, at most [`MAX_BODY_CHARS`].
    pub request: String,
    /// The answer's body: the resource after the write, or the problem.
    pub response: String,
}

/// Whether a JSON member holds a secret: signing secrets, API keys, and members named like one.
fn is_secret(name: &str, value: &str) -> bool {
    value.starts_with("whsec_")
        || value.starts_with(billing_runtime::auth::KEY_PREFIX)
        || value.starts_with("sk_")
        || matches!(name, "secret" | "previous_secret" | "password" | "api_key")
}

fn redact_value(name: &str, v: &mut Value) {
    match v {
        Value::String(s) if is_secret(name, s) => *s = REDACTED.to_owned(),
        Value::Array(items) => items.iter_mut().for_each(|i| redact_value(name, i)),
        Value::Object(map) => map.iter_mut().for_each(|(k, v)| redact_value(k, v)),
        _ => {}
    }
}

/// A body as the log keeps it: JSON with every secret redacted (anything else as text), cut at
/// [`MAX_BODY_CHARS`].
pub fn summarize(body: &[u8]) -> String {
    if body.is_empty() {
        return String::new();
    }
    let text = match serde_json::from_slice::<Value>(body) {
        Ok(mut v) => {
            redact_value("", &mut v);
            v.to_string()
        }
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    if text.len() <= MAX_BODY_CHARS {
        return text;
    }
    let mut cut = MAX_BODY_CHARS;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…(cut, {} bytes)", &text[..cut], text.len())
}

/// The resource a write names or created: the answer's `id`-like member when it has one, else the path's last id.
pub fn resource_id(path: &str, route: &str, response: &[u8]) -> String {
    if let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(response) {
        for field in [
            "id",
            "invoice_id",
            "credit_note_id",
            "subscription_id",
            "customer_id",
            "wallet_id",
            "code",
        ] {
            if let Some(Value::String(s)) = m.get(field) {
                return s.clone();
            }
        }
    }
    // The last path segment that is a parameter of the route.
    path.split('/')
        .zip(route.split('/'))
        .filter(|(_, r)| r.starts_with('{'))
        .map(|(p, _)| p.to_owned())
        .last()
        .unwrap_or_default()
}

/// Append one row.
pub async fn append(ch: &clickhouse::Client, row: &AuditRow) -> anyhow::Result<()> {
    let mut insert = ch.insert::<AuditRow>(TABLE).await?;
    insert.write(row).await?;
    insert.end().await?;
    Ok(())
}

/// A tenant's rows, newest first: at most `limit`, older than `before` (`(at_ms, request_id)`) when given, of one key
/// when `key_id` is given.
pub async fn list(
    ch: &clickhouse::Client,
    tenant: &str,
    before: Option<(u64, &str)>,
    key_id: Option<&str>,
    limit: u32,
) -> anyhow::Result<Vec<AuditRow>> {
    // FINAL: a retried append may have landed twice before a merge collapsed it.
    let mut sql = String::from("SELECT ?fields FROM audit_log FINAL WHERE tenant_id = ?");
    if before.is_some() {
        sql.push_str(" AND (at_ms < ? OR (at_ms = ? AND request_id < ?))");
    }
    if key_id.is_some() {
        sql.push_str(" AND key_id = ?");
    }
    sql.push_str(" ORDER BY at_ms DESC, request_id DESC LIMIT ?");
    let mut q = ch.query(&sql).bind(tenant);
    if let Some((ms, id)) = before {
        q = q.bind(ms).bind(ms).bind(id);
    }
    if let Some(k) = key_id {
        q = q.bind(k);
    }
    let rows = q.bind(limit).fetch_all::<AuditRow>().await?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_and_long_bodies_cut() {
        let body = br#"{"id":"we_1","secret":"whsec_abc","nested":[{"token":"bk_0_1"}],"url":"https://x"}"#;
        let s = summarize(body);
        assert!(!s.contains("whsec_abc") && !s.contains("bk_0_1"), "{s}");
        assert_eq!(s.matches(REDACTED).count(), 2, "{s}");
        assert!(s.contains("https://x"));
        let long = format!("\"{}\"", "é".repeat(5000));
        let cut = summarize(long.as_bytes());
        assert!(
            cut.len() < MAX_BODY_CHARS + 40 && cut.contains("(cut,"),
            "{}",
            cut.len()
        );
        assert_eq!(summarize(b""), "");
        assert_eq!(summarize(b"not json"), "not json");
    }

    #[test]
    fn the_resource_is_the_answers_id_or_the_paths() {
        assert_eq!(
            resource_id(
                "/v1/customers",
                "/v1/customers",
                br#"{"customer_id":"cus-1"}"#
            ),
            "cus-1"
        );
        assert_eq!(
            resource_id(
                "/v1/subscriptions/sub-9/cancel",
                "/v1/subscriptions/{subscription_id}/cancel",
                br#"{"status":404}"#
            ),
            "sub-9"
        );
        assert_eq!(resource_id("/v1/customers", "/v1/customers", b""), "");
    }
}
