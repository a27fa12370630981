//! `GET /v1/analytics/{mrr,revenue,usage,churn,collections}` for analysts (and admins): the reports of
//! `reports/*.sql`, run by `billing_store::analytics` on ClickHouse for the caller's tenant (`docs/analytics.md`).
//!
//! Query: `from` and `to` (months, `YYYY-MM`; default the twelve months up to the current one, at most 120), the
//! report's filters (`currency` on all; `plan_code` on revenue; `customer_id` and `metric_code` on usage), `limit`
//! (1 to 1000, default 100) and `starting_after` (a row's `id`). A parameter a report does not know is a 400.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use billing_core::Currency;
use billing_runtime::clickhouse::bounded;
use billing_runtime::http::{Problem, Tenant};
use billing_store::analytics::{
    self, decimal, rate, ChurnReportRow, CollectionsReportRow, MrrReportRow, Report,
    RevenueReportRow, Selection, UsageReportRow,
};
use chrono::{Datelike, Months, NaiveDate, Utc};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::request::ApiQuery;
use crate::AppState;

/// How long a report may run before the caller gets a 503.
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default and largest page.
const DEFAULT_ROWS: u64 = 100;
const MAX_ROWS: u64 = 1000;
/// The widest range of months.
const MAX_MONTHS: u32 = 120;

/// The query string of every report.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AnalyticsQuery {
    from: Option<String>,
    to: Option<String>,
    currency: Option<String>,
    plan_code: Option<String>,
    customer_id: Option<String>,
    metric_code: Option<String>,
    limit: Option<i64>,
    starting_after: Option<String>,
}

fn month(name: &str, raw: &str) -> Result<NaiveDate, ApiError> {
    NaiveDate::parse_from_str(&format!("{raw}-01"), "%Y-%m-%d")
        .ok()
        .filter(|_| raw.len() == 7)
        .ok_or_else(|| ApiError::malformed(name, format!("{raw:?} is not a month (YYYY-MM)")))
}

fn month_name(d: NaiveDate) -> String {
    d.format("%Y-%m").to_string()
}

fn months_between(from: NaiveDate, to: NaiveDate) -> i64 {
    i64::from(to.year() - from.year()) * 12 + i64::from(to.month()) - i64::from(from.month())
}

/// The selection a query asks for, checked.
fn selection<'a>(
    report: Report,
    tenant: &'a str,
    q: &AnalyticsQuery,
) -> Result<Selection<'a>, ApiError> {
    let now = Utc::now().date_naive();
    let this_month = NaiveDate::from_ymd_opt(now.year(), now.month(), 1).expect("valid");
    let to = match &q.to {
        Some(raw) => month("to", raw)?,
        None => this_month,
    };
    let from = match &q.from {
        Some(raw) => month("from", raw)?,
        None => to.checked_sub_months(Months::new(11)).unwrap_or(to),
    };
    if from > to {
        return Err(ApiError::malformed(
            "from",
            format!("{} is after to = {}", month_name(from), month_name(to)),
        ));
    }
    if months_between(from, to) >= i64::from(MAX_MONTHS) {
        return Err(ApiError::malformed(
            "to",
            format!("at most {MAX_MONTHS} months from `from`"),
        ));
    }
    let limit = match q.limit {
        None => DEFAULT_ROWS,
        Some(n) if (1..=MAX_ROWS as i64).contains(&n) => n as u64,
        Some(n) => {
            return Err(ApiError::malformed(
                "limit",
                format!("{n} is not in 1..={MAX_ROWS}"),
            ))
        }
    };
    let mut filters: Vec<(&'static str, String)> = Vec::new();
    if let Some(c) = &q.currency {
        let c = Currency::parse(c).map_err(|e| ApiError::malformed("currency", e.to_string()))?;
        filters.push(("currency", c.code().to_owned()));
    }
    let own: &[&str] = match report {
        Report::Revenue => &["plan_code"],
        Report::Usage => &["customer_id", "metric_code"],
        _ => &[],
    };
    for (name, value) in [
        ("plan_code", &q.plan_code),
        ("customer_id", &q.customer_id),
        ("metric_code", &q.metric_code),
    ] {
        let Some(v) = value else { continue };
        if !own.contains(&name) {
            return Err(ApiError::malformed(
                name,
                format!("the {} report has no {name} filter", report.name()),
            ));
        }
        filters.push((name, v.clone()));
    }
    let after = match &q.starting_after {
        None => None,
        Some(id) => Some(parse_id(report, id)?),
    };
    Ok(Selection {
        tenant,
        from,
        to,
        filters,
        after,
        limit: limit + 1,
    })
}

/// A row's id: its month, then its key values, joined by `/` (the customer id, which may hold one, last).
fn row_id(month: NaiveDate, keys: &[&str]) -> String {
    std::iter::once(month_name(month))
        .chain(keys.iter().map(|k| (*k).to_owned()))
        .collect::<Vec<_>>()
        .join("/")
}

fn parse_id(report: Report, id: &str) -> Result<(NaiveDate, Vec<String>), ApiError> {
    let n = report.keys().len();
    let parts: Vec<&str> = id.splitn(n + 1, '/').collect();
    if parts.len() != n + 1 {
        return Err(crate::request::unknown_cursor(id));
    }
    let m = month("starting_after", parts[0]).map_err(|_| crate::request::unknown_cursor(id))?;
    Ok((m, parts[1..].iter().map(|s| (*s).to_owned()).collect()))
}

/// An amount of the report in its currency's minor unit (exact: the report sums rounded amounts).
fn money(v: i128, currency: &str) -> String {
    let d = decimal(v);
    match Currency::parse(currency) {
        Ok(c) => {
            billing_core::money::round_to_minor(d, c, billing_core::money::RoundingMode::HalfUp)
                .to_string()
        }
        Err(_) => d.normalize().to_string(),
    }
}

fn quantity(v: i128) -> String {
    decimal(v).normalize().to_string()
}

fn ratio(v: i64) -> String {
    rate(v).to_string()
}

/// A report's row as the API shows it.
pub trait ApiRow: clickhouse::RowOwned + clickhouse::RowRead {
    /// The report it is a row of.
    const REPORT: Report;
    /// Its JSON (without `object`).
    fn json(&self) -> Value;
}

impl ApiRow for MrrReportRow {
    const REPORT: Report = Report::Mrr;
    fn json(&self) -> Value {
        let (m, c) = (analytics::date(self.month), self.currency.as_str());
        json!({
            "id": row_id(m, &[c]),
            "month": month_name(m),
            "currency": c,
            "starting_mrr": money(self.starting_mrr, c),
            "new_mrr": money(self.new_mrr, c),
            "expansion_mrr": money(self.expansion_mrr, c),
            "contraction_mrr": money(self.contraction_mrr, c),
            "churned_mrr": money(self.churned_mrr, c),
            "ending_mrr": money(self.ending_mrr, c),
            "customers": self.customers,
        })
    }
}

impl ApiRow for RevenueReportRow {
    const REPORT: Report = Report::Revenue;
    fn json(&self) -> Value {
        let (m, c) = (analytics::date(self.month), self.currency.as_str());
        json!({
            "id": row_id(m, &[c, &self.plan_code]),
            "month": month_name(m),
            "currency": c,
            "plan_code": (!self.plan_code.is_empty()).then_some(&self.plan_code),
            "subscription_fees": money(self.subscription_fees, c),
            "usage": money(self.usage, c),
            "other": money(self.other, c),
            "net_revenue": money(self.net_revenue, c),
            "discounts": money(self.discounts, c),
            "invoices": self.invoices,
        })
    }
}

impl ApiRow for UsageReportRow {
    const REPORT: Report = Report::Usage;
    fn json(&self) -> Value {
        let m = analytics::date(self.month);
        json!({
            "id": row_id(m, &[&self.currency, &self.metric_code, &self.customer_id]),
            "month": month_name(m),
            "customer_id": self.customer_id,
            "metric_code": self.metric_code,
            "currency": self.currency,
            "events": self.events,
            "units": quantity(self.units),
            "rated_amount": quantity(self.rated_amount),
            "unpriced_events": self.unpriced_events,
        })
    }
}

impl ApiRow for ChurnReportRow {
    const REPORT: Report = Report::Churn;
    fn json(&self) -> Value {
        let (m, c) = (analytics::date(self.month), self.currency.as_str());
        json!({
            "id": row_id(m, &[c]),
            "month": month_name(m),
            "currency": c,
            "customers_at_start": self.customers_at_start,
            "new_customers": self.new_customers,
            "churned_customers": self.churned_customers,
            "customers_at_end": self.customers_at_end,
            "starting_mrr": money(self.starting_mrr, c),
            "churned_mrr": money(self.churned_mrr, c),
            "contraction_mrr": money(self.contraction_mrr, c),
            "logo_churn_rate": ratio(self.logo_churn_rate),
            "revenue_churn_rate": ratio(self.revenue_churn_rate),
        })
    }
}

impl ApiRow for CollectionsReportRow {
    const REPORT: Report = Report::Collections;
    fn json(&self) -> Value {
        let (m, c) = (analytics::date(self.month), self.currency.as_str());
        json!({
            "id": row_id(m, &[c]),
            "month": month_name(m),
            "currency": c,
            "invoiced": money(self.invoiced, c),
            "collected": money(self.collected, c),
            "paid_by_credit": money(self.paid_by_credit, c),
            "refunded": money(self.refunded, c),
            "outstanding": money(self.outstanding, c),
            "overdue": money(self.overdue, c),
            "uncollectible": money(self.uncollectible, c),
        })
    }
}

/// `GET /v1/analytics/{report}`: the report whose rows are `R`.
pub async fn report<R: ApiRow>(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    ApiQuery(q): ApiQuery<AnalyticsQuery>,
) -> Result<Json<Value>, ApiError> {
    let report = R::REPORT;
    let sel = selection(report, &tenant, &q)?;
    let rows: Vec<R> = bounded(
        REPORT_TIMEOUT,
        &format!("the {} report", report.name()),
        analytics::run::<R>(&state.clickhouse, report, &sel),
    )
    .await
    .map_err(|e| {
        tracing::warn!(
            error = format!("{e:#}"),
            report = report.name(),
            "report failed"
        );
        let mut p = Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the analytics store did not answer; retry",
        );
        p.retry_after = Some(5);
        ApiError::Problem(p)
    })?;
    // The selection asks for one row more than the page: it says whether more follow.
    let limit = (sel.limit - 1) as usize;
    let has_more = rows.len() > limit;
    let data: Vec<Value> = rows
        .iter()
        .take(limit)
        .map(|r| {
            let mut v = r.json();
            v["object"] = json!(format!("analytics.{}", report.name()));
            v
        })
        .collect();
    Ok(Json(
        json!({ "object": "list", "data": data, "has_more": has_more }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> AnalyticsQuery {
        let s = pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let uri: axum::http::Uri = format!("/v1/analytics/x?{s}").parse().unwrap();
        axum::extract::Query::<AnalyticsQuery>::try_from_uri(&uri)
            .unwrap()
            .0
    }

    #[test]
    fn months_filters_and_cursors_are_checked() {
        let s = selection(
            Report::Usage,
            "t",
            &q(&[
                ("from", "2025-01"),
                ("to", "2025-12"),
                ("currency", "eur"),
                ("customer_id", "c/1"),
                ("starting_after", "2025-03/EUR/calls/c/1"),
            ]),
        )
        .unwrap();
        assert_eq!(s.from, NaiveDate::from_ymd_opt(2025, 1, 1).unwrap());
        assert_eq!(
            s.filters,
            vec![
                ("currency", "EUR".to_owned()),
                ("customer_id", "c/1".to_owned())
            ]
        );
        assert_eq!(
            s.after,
            Some((
                NaiveDate::from_ymd_opt(2025, 3, 1).unwrap(),
                vec!["EUR".to_owned(), "calls".to_owned(), "c/1".to_owned()]
            ))
        );
        assert_eq!(s.limit, DEFAULT_ROWS + 1);
        let refused = |r: Report, pairs: &[(&str, &str)]| selection(r, "t", &q(pairs)).is_err();
        assert!(refused(Report::Mrr, &[("from", "2025-13")]));
        assert!(refused(Report::Mrr, &[("from", "2025-1")]));
        assert!(refused(
            Report::Mrr,
            &[("from", "2025-06"), ("to", "2025-05")]
        ));
        assert!(refused(
            Report::Mrr,
            &[("from", "2015-01"), ("to", "2025-01")]
        ));
        assert!(!refused(
            Report::Mrr,
            &[("from", "2015-02"), ("to", "2025-01")]
        ));
        assert!(refused(Report::Mrr, &[("plan_code", "basic")]));
        assert!(refused(Report::Revenue, &[("customer_id", "c")]));
        assert!(refused(Report::Mrr, &[("currency", "EURO")]));
        assert!(refused(Report::Mrr, &[("limit", "0")]));
        assert!(refused(Report::Mrr, &[("limit", "1001")]));
        assert!(refused(Report::Mrr, &[("starting_after", "2025-03")]));
        assert!(refused(
            Report::Revenue,
            &[("starting_after", "March/EUR/basic")]
        ));
        assert_eq!(
            row_id(
                NaiveDate::from_ymd_opt(2025, 3, 1).unwrap(),
                &["EUR", "basic"]
            ),
            "2025-03/EUR/basic"
        );
        assert_eq!(money(100_000_000_000, "EUR"), "100.00");
        assert_eq!(money(100_000_000_000, "JPY"), "100");
        assert_eq!(quantity(1_500_000_000), "1.5");
        assert_eq!(ratio(1785), "0.1785");
    }
}
