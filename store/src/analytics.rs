//! Analytics: ClickHouse `subscription_mrr` and `payments` (migration `clickhouse/0006_analytics.sql`, with the
//! reports' views) and the reports of `reports/*.sql`, which analysts run with `clickhouse-client` and the API
//! serves at `GET /v1/analytics/{report}` (`docs/analytics.md`). The API runs the very same files, filtered to the
//! caller's tenant and months: one home per figure.
//!
//! **Writer: invoicer** (`subscription_mrr` when a subscription or its plan changes, `payments` from
//! `billing.payments`). Readers: query-api, analysts.

use billing_runtime::clickhouse::{bounded, to_decimal_38_9, WRITE_TIMEOUT};
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// `ends_at` of a segment that lasts: 2100-01-01 00:00:00 UTC.
pub const RUNNING: u32 = 4_102_444_800;

fn secs(t: DateTime<Utc>) -> u32 {
    u32::try_from(t.timestamp()).unwrap_or(0).min(RUNNING)
}

/// One MRR segment of a subscription's version; field order is the table's column order.
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct MrrRow {
    pub tenant_id: String,
    pub subscription_id: String,
    pub customer_id: String,
    /// The write's millisecond: readers keep each subscription's highest.
    pub version: u64,
    pub segment_no: u32,
    pub plan_code: String,
    pub currency: String,
    pub starts_at: u32,
    /// [`RUNNING`] while it lasts.
    pub ends_at: u32,
    pub mrr: i128,
}

/// A subscription's MRR segment: (start, end or `None` while it lasts, plan code, MRR per month).
pub type Segment = (DateTime<Utc>, Option<DateTime<Utc>>, String, Decimal);

/// The rows of one version of a subscription's MRR: one per segment, or one empty row (MRR 0, no time) when it
/// has none, so that the version replaces every earlier one.
pub fn mrr_rows(
    tenant: &str,
    customer: &str,
    subscription: &str,
    currency: &str,
    version: u64,
    segments: &[Segment],
) -> Vec<MrrRow> {
    let row = |no: usize, from: u32, to: u32, plan: &str, mrr: Decimal| MrrRow {
        tenant_id: tenant.into(),
        subscription_id: subscription.into(),
        customer_id: customer.into(),
        version,
        segment_no: no as u32,
        plan_code: plan.into(),
        currency: currency.into(),
        starts_at: from,
        ends_at: to,
        mrr: to_decimal_38_9(mrr),
    };
    if segments.is_empty() {
        return vec![row(0, 0, 0, "", Decimal::ZERO)];
    }
    segments
        .iter()
        .enumerate()
        .map(|(i, (from, to, plan, mrr))| row(i, secs(*from), to.map_or(RUNNING, secs), plan, *mrr))
        .collect()
}

/// Insert MRR rows (one INSERT, bounded by [`WRITE_TIMEOUT`]).
pub async fn insert_mrr(ch: &clickhouse::Client, rows: &[MrrRow]) -> anyhow::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    insert_all(ch, "subscription_mrr", rows).await
}

/// One INSERT of `rows` into `table`, bounded by [`WRITE_TIMEOUT`].
async fn insert_all<R>(ch: &clickhouse::Client, table: &str, rows: &[R]) -> anyhow::Result<()>
where
    R: clickhouse::RowOwned + clickhouse::RowWrite,
{
    bounded(WRITE_TIMEOUT, &format!("insert into {table}"), async {
        let mut insert = ch.insert::<R>(table).await?;
        for r in rows {
            insert.write(r).await?;
        }
        insert.end().await?;
        Ok(())
    })
    .await
}

/// What a payment event did to an invoice's balance (the `payments.kind` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentKind {
    /// The provider charged it.
    Succeeded,
    /// Paid outside the provider.
    OutOfBand,
    /// A credit note's balance paid it.
    Credit,
    /// Dunning gave up on the invoice (amount 0: the reports take what is still owed on it).
    Uncollectible,
    /// A credit note was refunded through the provider.
    Refund,
}

impl PaymentKind {
    /// The column's value.
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentKind::Succeeded => "succeeded",
            PaymentKind::OutOfBand => "out_of_band",
            PaymentKind::Credit => "credit",
            PaymentKind::Uncollectible => "uncollectible",
            PaymentKind::Refund => "refund",
        }
    }
}

/// A money movement of `billing.payments`; field order is the table's column order.
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct PaymentRow {
    pub tenant_id: String,
    pub event_id: String,
    pub invoice_id: String,
    pub customer_id: String,
    pub kind: String,
    pub amount: i128,
    pub currency: String,
    pub occurred_at: u32,
}

impl PaymentRow {
    /// The row of one event.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        tenant: &str,
        event_id: &str,
        invoice_id: &str,
        customer_id: &str,
        kind: PaymentKind,
        amount: Decimal,
        currency: &str,
        at: DateTime<Utc>,
    ) -> Self {
        PaymentRow {
            tenant_id: tenant.into(),
            event_id: event_id.into(),
            invoice_id: invoice_id.into(),
            customer_id: customer_id.into(),
            kind: kind.as_str().into(),
            amount: to_decimal_38_9(amount),
            currency: currency.into(),
            occurred_at: secs(at),
        }
    }
}

/// Insert payment rows (one INSERT, bounded by [`WRITE_TIMEOUT`]; an event inserted again collapses: the table
/// is keyed by event id).
pub async fn insert_payments(ch: &clickhouse::Client, rows: &[PaymentRow]) -> anyhow::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    insert_all(ch, "payments", rows).await
}

/// A report of `reports/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// MRR and its movements per month and currency.
    Mrr,
    /// Invoiced revenue by plan, month and currency.
    Revenue,
    /// Usage by metric and customer, per month.
    Usage,
    /// Customer and revenue churn per month and currency.
    Churn,
    /// Collections and the overdue balance per month and currency.
    Collections,
}

impl Report {
    /// Every report, in documentation order.
    pub const ALL: [Report; 5] = [
        Report::Mrr,
        Report::Revenue,
        Report::Usage,
        Report::Churn,
        Report::Collections,
    ];

    /// Its name in `/v1/analytics/{name}` and `reports/{name}.sql`.
    pub fn name(self) -> &'static str {
        match self {
            Report::Mrr => "mrr",
            Report::Revenue => "revenue",
            Report::Usage => "usage",
            Report::Churn => "churn",
            Report::Collections => "collections",
        }
    }

    /// The report by name.
    pub fn parse(name: &str) -> Option<Report> {
        Report::ALL.into_iter().find(|r| r.name() == name)
    }

    /// The SQL analysts run (`reports/<name>.sql`): every tenant, every month.
    pub fn sql(self) -> &'static str {
        match self {
            Report::Mrr => include_str!("../../reports/mrr.sql"),
            Report::Revenue => include_str!("../../reports/revenue.sql"),
            Report::Usage => include_str!("../../reports/usage.sql"),
            Report::Churn => include_str!("../../reports/churn.sql"),
            Report::Collections => include_str!("../../reports/collections.sql"),
        }
    }

    /// The columns that order its rows after the month (and make a row's id).
    pub fn keys(self) -> &'static [&'static str] {
        match self {
            Report::Mrr | Report::Churn | Report::Collections => &["currency"],
            Report::Revenue => &["currency", "plan_code"],
            // The customer last: a cursor splits at the first separators only.
            Report::Usage => &["currency", "metric_code", "customer_id"],
        }
    }
}

/// The latest version's rows of each subscription of `tenant` (for comparing what is stored with what is due).
pub async fn latest_mrr(ch: &clickhouse::Client, tenant: &str) -> anyhow::Result<Vec<MrrRow>> {
    bounded(WRITE_TIMEOUT, "read of subscription_mrr", async {
        Ok(ch
            .query(
                "SELECT ?fields FROM subscription_mrr FINAL WHERE tenant_id = ? AND (subscription_id, version) IN \
                 (SELECT subscription_id, max(version) FROM subscription_mrr WHERE tenant_id = ? \
                  GROUP BY subscription_id) ORDER BY subscription_id, segment_no",
            )
            .bind(tenant)
            .bind(tenant)
            .fetch_all::<MrrRow>()
            .await?)
    })
    .await
}

/// Which rows of a report: the tenant's, months `from..=to` (first days), equal filters on named columns, after a
/// row (its month and key values), at most `limit`.
#[derive(Debug, Clone)]
pub struct Selection<'a> {
    /// The caller's tenant.
    pub tenant: &'a str,
    /// First month.
    pub from: NaiveDate,
    /// Last month.
    pub to: NaiveDate,
    /// Column = value filters (columns of the report).
    pub filters: Vec<(&'static str, String)>,
    /// The last row of the previous page: its month and its key values.
    pub after: Option<(NaiveDate, Vec<String>)>,
    /// Page size.
    pub limit: u64,
}

/// The report's SQL without its comments and its trailing `ORDER BY` (the wrapper orders).
fn body(report: Report) -> String {
    let sql: String = report
        .sql()
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    match sql.rfind("ORDER BY") {
        Some(i) => sql[..i].to_owned(),
        None => sql,
    }
}

/// The query of a selection: the report's own SQL as a subquery, filtered, ordered by month then keys, limited;
/// `?fields` is the row type's columns. Values are bound in this order: tenant, from, to, filters, cursor, limit.
pub fn query_sql(report: Report, sel: &Selection<'_>) -> String {
    let mut sql = format!(
        "SELECT ?fields FROM ({}) WHERE tenant_id = ? AND month >= toDate(?) AND month <= toDate(?)",
        body(report)
    );
    for (col, _) in &sel.filters {
        sql.push_str(&format!(" AND {col} = ?"));
    }
    if sel.after.is_some() {
        // (month, k1, k2, …) > (m, v1, v2, …), spelled out (no tuple comparison on ClickHouse 18.16).
        let cols: Vec<String> = std::iter::once("month".to_owned())
            .chain(report.keys().iter().map(|k| (*k).to_owned()))
            .collect();
        let terms: Vec<String> = (0..cols.len())
            .map(|i| {
                let mut t: Vec<String> = cols[..i]
                    .iter()
                    .map(|c| format!("{c} = {}", placeholder(c)))
                    .collect();
                t.push(format!("{} > {}", cols[i], placeholder(&cols[i])));
                format!("({})", t.join(" AND "))
            })
            .collect();
        sql.push_str(&format!(" AND ({})", terms.join(" OR ")));
    }
    let order: Vec<&str> = std::iter::once("month")
        .chain(report.keys().iter().copied())
        .collect();
    sql.push_str(&format!(" ORDER BY {} LIMIT ?", order.join(", ")));
    sql
}

fn placeholder(col: &str) -> &'static str {
    if col == "month" {
        "toDate(?)"
    } else {
        "?"
    }
}

/// Run a selection of a report into rows of type `R` (whose fields name the report's columns).
pub async fn run<R>(
    ch: &clickhouse::Client,
    report: Report,
    sel: &Selection<'_>,
) -> anyhow::Result<Vec<R>>
where
    R: clickhouse::RowOwned + clickhouse::RowRead,
{
    let sql = query_sql(report, sel);
    let day = |d: NaiveDate| d.format("%Y-%m-%d").to_string();
    let mut q = ch
        .query(&sql)
        .bind(sel.tenant)
        .bind(day(sel.from))
        .bind(day(sel.to));
    for (_, v) in &sel.filters {
        q = q.bind(v.as_str());
    }
    if let Some((month, keys)) = &sel.after {
        let mut values: Vec<String> = vec![day(*month)];
        values.extend(keys.iter().cloned());
        for i in 0..values.len() {
            for v in &values[..=i] {
                q = q.bind(v.as_str());
            }
        }
    }
    Ok(q.bind(sel.limit).fetch_all::<R>().await?)
}

/// A ClickHouse `Date` (days since the epoch) as a date.
pub fn date(days: u16) -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid") + chrono::Days::new(u64::from(days))
}

/// A ClickHouse `Decimal(38, 9)` as a decimal.
pub fn decimal(v: i128) -> Decimal {
    Decimal::try_from_i128_with_scale(v, 9).unwrap_or(Decimal::MAX)
}

/// A ClickHouse `Decimal64(4)` (the rates) as a decimal.
pub fn rate(v: i64) -> Decimal {
    Decimal::new(v, 4)
}

/// The first instant of a month.
pub fn month_start(d: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).expect("valid"))
}

/// A row of `reports/mrr.sql`.
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Deserialize)]
#[allow(missing_docs)]
pub struct MrrReportRow {
    pub month: u16,
    pub currency: String,
    pub starting_mrr: i128,
    pub new_mrr: i128,
    pub expansion_mrr: i128,
    pub contraction_mrr: i128,
    pub churned_mrr: i128,
    pub ending_mrr: i128,
    pub customers: u64,
}

/// A row of `reports/revenue.sql`.
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Deserialize)]
#[allow(missing_docs)]
pub struct RevenueReportRow {
    pub month: u16,
    pub currency: String,
    pub plan_code: String,
    pub subscription_fees: i128,
    pub usage: i128,
    pub other: i128,
    pub net_revenue: i128,
    pub discounts: i128,
    pub invoices: u64,
}

/// A row of `reports/usage.sql`.
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Deserialize)]
#[allow(missing_docs)]
pub struct UsageReportRow {
    pub month: u16,
    pub currency: String,
    pub metric_code: String,
    pub customer_id: String,
    pub events: u64,
    pub units: i128,
    pub rated_amount: i128,
    pub unpriced_events: u64,
}

/// A row of `reports/churn.sql`.
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Deserialize)]
#[allow(missing_docs)]
pub struct ChurnReportRow {
    pub month: u16,
    pub currency: String,
    pub customers_at_start: u64,
    pub new_customers: u64,
    pub churned_customers: u64,
    pub customers_at_end: u64,
    pub starting_mrr: i128,
    pub churned_mrr: i128,
    pub contraction_mrr: i128,
    pub logo_churn_rate: i64,
    pub revenue_churn_rate: i64,
}

/// A row of `reports/collections.sql`.
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Deserialize)]
#[allow(missing_docs)]
pub struct CollectionsReportRow {
    pub month: u16,
    pub currency: String,
    pub invoiced: i128,
    pub collected: i128,
    pub paid_by_credit: i128,
    pub refunded: i128,
    pub outstanding: i128,
    pub overdue: i128,
    pub uncollectible: i128,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_named_and_their_sql_orders_by_the_keys() {
        for r in Report::ALL {
            assert_eq!(Report::parse(r.name()), Some(r));
            let sql = r.sql();
            let order = sql.rfind("ORDER BY").expect("ordered");
            let keys = std::iter::once("month")
                .chain(r.keys().iter().copied())
                .collect::<Vec<_>>();
            // The file orders by tenant, month and the keys (in some order): every key is in its ORDER BY.
            for k in &keys {
                assert!(sql[order..].contains(k), "{} orders by {k}", r.name());
            }
        }
        assert_eq!(Report::parse("ltv"), None);
    }

    #[test]
    fn the_query_wraps_the_report_and_spells_the_cursor_out() {
        let sel = Selection {
            tenant: "t",
            from: NaiveDate::from_ymd_opt(2025, 1, 1).unwrap(),
            to: NaiveDate::from_ymd_opt(2025, 12, 1).unwrap(),
            filters: vec![("currency", "EUR".into())],
            after: Some((
                NaiveDate::from_ymd_opt(2025, 3, 1).unwrap(),
                vec!["EUR".into(), "basic".into()],
            )),
            limit: 10,
        };
        let sql = query_sql(Report::Revenue, &sel);
        assert!(!sql.contains("--"), "comments are left out: {sql}");
        assert!(sql.ends_with(
            " AND currency = ? AND ((month > toDate(?)) OR (month = toDate(?) AND currency > ?) OR \
             (month = toDate(?) AND currency = ? AND plan_code > ?)) ORDER BY month, currency, plan_code LIMIT ?"
        ), "{sql}");
        // The report's own ORDER BY is gone: one ORDER BY, the wrapper's.
        assert_eq!(sql.matches("ORDER BY").count(), 1, "{sql}");
    }

    #[test]
    fn rows_of_a_subscription_version() {
        let t = |d| Utc.with_ymd_and_hms(2025, 1, d, 0, 0, 0).unwrap();
        let rows = mrr_rows(
            "t",
            "c",
            "s",
            "EUR",
            7,
            &[
                (t(1), Some(t(15)), "a".into(), Decimal::new(5000, 2)),
                (t(15), None, "b".into(), Decimal::new(100, 0)),
            ],
        );
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[1].ends_at, rows[1].mrr), (RUNNING, 100_000_000_000));
        assert_eq!(rows[0].ends_at, secs(t(15)));
        let none = mrr_rows("t", "c", "s", "EUR", 8, &[]);
        assert_eq!((none.len(), none[0].mrr, none[0].ends_at), (1, 0, 0));
        assert_eq!(decimal(100_000_000_000), Decimal::new(100, 0));
        assert_eq!(date(20089), NaiveDate::from_ymd_opt(2025, 1, 1).unwrap());
        assert_eq!(rate(1785), Decimal::new(1785, 4));
    }
}
