//! Reads of the tables the API serves. query-api writes none of them.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlDecimal;

use billing_runtime::cql::from_cql_decimal;

/// One usage total as served.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UsageTotal {
    /// Metric code.
    pub metric_code: String,
    /// Start of the UTC calendar month.
    pub period_start: DateTime<Utc>,
    /// Events counted.
    pub event_count: i64,
    /// Sum of their `value` property, exact.
    pub value_sum: Decimal,
}

/// Prepared reads.
pub struct Store {
    session: Arc<Session>,
    usage_by_customer: PreparedStatement,
}

impl Store {
    /// Prepare every statement once.
    pub async fn new(session: Arc<Session>, keyspace: &str) -> anyhow::Result<Self> {
        let usage_by_customer = session
            .prepare(format!(
                "SELECT metric_code, period_start, event_count, value_sum FROM {keyspace}.usage_totals \
                 WHERE tenant_id = ? AND customer_id = ?"
            ))
            .await?;
        Ok(Store {
            session,
            usage_by_customer,
        })
    }

    /// Every usage total of a customer, newest period first within each metric.
    pub async fn usage(
        &self,
        tenant_id: &str,
        customer_id: &str,
    ) -> anyhow::Result<Vec<UsageTotal>> {
        let mut pager = self
            .session
            .execute_iter(self.usage_by_customer.clone(), (tenant_id, customer_id))
            .await?
            .rows_stream::<(String, DateTime<Utc>, i64, CqlDecimal)>()?;
        let mut out = Vec::new();
        use futures::TryStreamExt;
        while let Some((metric_code, period_start, event_count, value_sum)) =
            pager.try_next().await?
        {
            let value_sum = from_cql_decimal(&value_sum)
                .ok_or_else(|| anyhow::anyhow!("value_sum out of range"))?;
            out.push(UsageTotal {
                metric_code,
                period_start,
                event_count,
                value_sum,
            });
        }
        Ok(out)
    }
}
