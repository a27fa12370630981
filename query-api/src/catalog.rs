//! `/v1/billable_metrics`, `/v1/plans`, `/v1/taxes`, `/v1/coupons` and `/v1/add_ons`: create, update (publishes the new version of the entry on
//! `billing.catalog`; the latest version is the one in force), read, list. Charge properties are Lago's, checked
//! with the core's own parser (`ChargeModel::from_lago`) before anything is published.

use std::collections::BTreeSet;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use billing_core::period::Interval;
use billing_runtime::http::Tenant;
use billing_schemas::catalog::{
    AddOn, Aggregation, BillableMetric, Catalog, CatalogEvent, Charge, ChargeModel, Coupon,
    CouponFrequency, CouponType, MetricFilter, Plan, TaxRate,
};
use billing_schemas::reference::tax_rate_info;
use billing_store::billing::CatalogEntry;
use billing_store::catalog_entries::{ADD_ON, COUPON, METRIC, PLAN, TAX_RATE};
use chrono::Utc;
use serde_json::Value;

use crate::error::ApiError;
use crate::idempotency;
use crate::request::{
    after_cursor, page, page_limit, ApiJson, ApiQuery, Check, PageQuery, WriteQuery,
};
use crate::wait::{answer, event_id, pending, Answer};
use crate::AppState;

/// An aggregation, by the schema's name or Lago's (`sum_agg`...).
#[derive(Debug, Clone, Copy, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AggregationBody {
    /// Number of events.
    #[serde(alias = "count_agg")]
    Count,
    /// Sum.
    #[serde(alias = "sum_agg")]
    Sum,
    /// Largest value.
    #[serde(alias = "max_agg")]
    Max,
    /// Distinct values.
    #[serde(alias = "unique_count_agg")]
    UniqueCount,
    /// Latest value.
    #[serde(alias = "latest_agg")]
    Latest,
    /// Time-weighted sum.
    #[serde(alias = "weighted_sum_agg")]
    WeightedSum,
}

impl From<AggregationBody> for Aggregation {
    fn from(a: AggregationBody) -> Self {
        match a {
            AggregationBody::Count => Aggregation::Count,
            AggregationBody::Sum => Aggregation::Sum,
            AggregationBody::Max => Aggregation::Max,
            AggregationBody::UniqueCount => Aggregation::UniqueCount,
            AggregationBody::Latest => Aggregation::Latest,
            AggregationBody::WeightedSum => Aggregation::WeightedSum,
        }
    }
}

/// A metric filter.
#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterBody {
    key: String,
    values: Vec<String>,
}

/// `POST /v1/billable_metrics`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"code": "calls", "aggregation": "count"}))]
pub struct CreateMetric {
    code: String,
    #[serde(default)]
    name: Option<String>,
    aggregation: AggregationBody,
    #[serde(default)]
    field_name: Option<String>,
    #[serde(default)]
    filters: Option<Vec<FilterBody>>,
}

/// `POST /v1/billable_metrics/{code}`: the fields given replace the stored ones.
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMetric {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    aggregation: Option<AggregationBody>,
    #[serde(default)]
    field_name: Option<String>,
    #[serde(default)]
    filters: Option<Vec<FilterBody>>,
}

/// A usage charge of a plan (Lago's shape: `properties` is a JSON object).
#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChargeBody {
    /// Stable id (default: the metric's code); usage aggregates are kept per charge id.
    #[serde(default)]
    id: Option<String>,
    #[serde(alias = "metric_code")]
    billable_metric_code: String,
    #[schema(schema_with = crate::openapi::charge_model)]
    charge_model: ChargeModel,
    #[serde(default)]
    #[schema(schema_with = crate::openapi::object)]
    properties: Option<Value>,
    #[serde(default)]
    #[schema(schema_with = crate::openapi::decimal)]
    min_amount: Option<Value>,
    #[serde(default)]
    group_by: Option<String>,
    /// Tax rates of this charge's lines (replace the plan's).
    #[serde(default)]
    tax_codes: Option<Vec<String>>,
}

/// `POST /v1/plans`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"code": "basic", "interval": "monthly", "currency": "EUR", "amount": "29.00", "pay_in_advance": true}))]
pub struct CreatePlan {
    code: String,
    #[serde(default)]
    name: Option<String>,
    #[schema(schema_with = crate::openapi::interval)]
    interval: Interval,
    currency: String,
    #[schema(schema_with = crate::openapi::decimal)]
    amount: Value,
    #[serde(default)]
    pay_in_advance: Option<bool>,
    #[serde(default)]
    trial_period_days: Option<i32>,
    #[serde(default)]
    charges: Option<Vec<ChargeBody>>,
    #[serde(default)]
    tax_codes: Option<Vec<String>>,
}

/// `POST /v1/plans/{code}`: the fields given replace the stored ones (`charges` as a whole).
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePlan {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    #[schema(schema_with = crate::openapi::interval)]
    interval: Option<Interval>,
    /// Accepted only when equal to the plan's: subscriptions are billed in their customer's currency.
    #[serde(default)]
    currency: Option<String>,
    #[serde(default)]
    #[schema(schema_with = crate::openapi::decimal)]
    amount: Option<Value>,
    #[serde(default)]
    pay_in_advance: Option<bool>,
    #[serde(default)]
    trial_period_days: Option<i32>,
    #[serde(default)]
    charges: Option<Vec<ChargeBody>>,
    /// The new version applies to subscriptions that start (or change to the plan) from this instant (RFC 3339
    /// or `YYYY-MM-DD`); running ones keep their version. Without it, the update applies to every subscription.
    #[serde(default)]
    effective_from: Option<String>,
    #[serde(default)]
    tax_codes: Option<Vec<String>>,
}

/// `POST /v1/taxes` (Lago's tax object; `inclusive` as Stripe's tax rates).
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"code": "vat", "name": "VAT", "rate": "20"}))]
pub struct CreateTax {
    code: String,
    #[serde(default)]
    name: Option<String>,
    #[schema(schema_with = crate::openapi::decimal)]
    rate: Value,
    #[serde(default)]
    inclusive: Option<bool>,
    #[serde(default, alias = "applied_to_organization")]
    applied_to_tenant: Option<bool>,
    #[serde(default)]
    description: Option<String>,
}

/// `POST /v1/taxes/{code}`: the fields given replace the stored ones; invoices finalized from then on use them.
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTax {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    #[schema(schema_with = crate::openapi::decimal)]
    rate: Option<Value>,
    #[serde(default)]
    inclusive: Option<bool>,
    #[serde(default, alias = "applied_to_organization")]
    applied_to_tenant: Option<bool>,
    #[serde(default)]
    description: Option<String>,
}

/// What a coupon applies to (Lago's `applies_to`).
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppliesTo {
    #[serde(default)]
    plan_codes: Vec<String>,
    #[serde(default, alias = "metric_codes")]
    billable_metric_codes: Vec<String>,
}

/// `POST /v1/coupons` (Lago's coupon object; `expiration_at` an RFC 3339 time or a date).
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"code": "welcome", "coupon_type": "percentage", "percentage_rate": "10"}))]
pub struct CreateCoupon {
    code: String,
    #[serde(default)]
    name: Option<String>,
    #[schema(schema_with = crate::openapi::coupon_type)]
    coupon_type: CouponType,
    #[serde(default)]
    #[schema(schema_with = crate::openapi::decimal)]
    amount: Option<Value>,
    #[serde(default)]
    amount_currency: Option<String>,
    #[serde(default)]
    #[schema(schema_with = crate::openapi::decimal)]
    percentage_rate: Option<Value>,
    #[serde(default)]
    #[schema(schema_with = crate::openapi::frequency)]
    frequency: Option<CouponFrequency>,
    #[serde(default)]
    frequency_duration: Option<i32>,
    #[serde(default)]
    expiration_at: Option<String>,
    #[serde(default)]
    reusable: Option<bool>,
    #[serde(default)]
    max_redemptions: Option<i32>,
    #[serde(default)]
    applies_to: Option<AppliesTo>,
}

/// `POST /v1/coupons/{code}`: name, expiry, reusability and redemption limit; applied coupons keep their terms.
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCoupon {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    expiration_at: Option<String>,
    #[serde(default)]
    reusable: Option<bool>,
    #[serde(default)]
    max_redemptions: Option<i32>,
}

/// A coupon's terms as an application would carry them, checked by the reference fold's own parser.
pub fn coupon_terms(
    c: &Coupon,
    customer_id: &str,
    applied_coupon_id: &str,
) -> billing_schemas::lifecycle::CouponApplied {
    billing_schemas::lifecycle::CouponApplied {
        applied_coupon_id: applied_coupon_id.into(),
        customer_id: customer_id.into(),
        subscription_id: None,
        coupon_code: c.code.clone(),
        coupon_type: c.coupon_type,
        amount: c.amount.clone(),
        amount_currency: c.amount_currency.clone(),
        percentage_rate: c.percentage_rate.clone(),
        frequency: c.frequency,
        frequency_duration: c.frequency_duration,
        plan_codes: c.plan_codes.clone(),
        metric_codes: c.metric_codes.clone(),
    }
}

fn check_coupon_fields(c: &mut Check, k: &Coupon) {
    check_name(c, &k.name);
    match k.coupon_type {
        CouponType::FixedAmount => {
            if k.amount.is_none() {
                c.fail("amount", "required by a fixed_amount coupon");
            }
            match &k.amount_currency {
                None => c.fail("amount_currency", "required by a fixed_amount coupon"),
                Some(cur) => {
                    c.currency("amount_currency", cur);
                }
            }
            if k.percentage_rate.is_some() {
                c.fail("percentage_rate", "only for a percentage coupon");
            }
        }
        CouponType::Percentage => {
            if k.percentage_rate.is_none() {
                c.fail("percentage_rate", "required by a percentage coupon");
            }
            if k.amount.is_some() || k.amount_currency.is_some() {
                c.fail("amount", "only for a fixed_amount coupon");
            }
        }
    }
    match (k.frequency, k.frequency_duration) {
        (CouponFrequency::Recurring, None) => {
            c.fail("frequency_duration", "required by a recurring coupon")
        }
        (CouponFrequency::Recurring, Some(d)) if !(1..=1200).contains(&d) => {
            c.fail("frequency_duration", format!("{d} is not in 1..=1200"))
        }
        (CouponFrequency::Once | CouponFrequency::Forever, Some(_)) => {
            c.fail("frequency_duration", "only for a recurring coupon")
        }
        _ => {}
    }
    if let Some(m) = k.max_redemptions {
        if m < 1 {
            c.fail("max_redemptions", format!("{m} is not 1 or more"));
        }
    }
    if c.is_empty() {
        if let Err(e) = billing_schemas::reference::applied_coupon(&coupon_terms(k, "", "")) {
            let field = if k.coupon_type == CouponType::FixedAmount {
                "amount"
            } else {
                "percentage_rate"
            };
            c.fail(field, e);
        }
    }
}

fn decimal_text(c: &mut Check, name: &str, v: Option<&Value>) -> Option<String> {
    v.and_then(|v| c.amount(name, v)).map(|d| d.to_string())
}

fn expiry(c: &mut Check, raw: Option<&str>) -> Option<chrono::DateTime<Utc>> {
    let raw = raw?;
    match crate::request::parse_instant("expiration_at", raw, true) {
        Ok(t) => Some(t),
        Err(_) => {
            c.fail(
                "expiration_at",
                "must be an RFC 3339 time or a YYYY-MM-DD date",
            );
            None
        }
    }
}

impl CreateCoupon {
    /// The coupon (plans and metrics still to be found), or every refused field so far.
    pub fn validate(self, c: &mut Check) -> Coupon {
        c.id("code", &self.code);
        let applies_to = self.applies_to.unwrap_or_default();
        let k = Coupon {
            name: self.name.unwrap_or_else(|| self.code.clone()),
            code: self.code,
            coupon_type: self.coupon_type,
            amount: decimal_text(c, "amount", self.amount.as_ref()),
            amount_currency: self.amount_currency.map(|s| s.to_ascii_uppercase()),
            percentage_rate: decimal_text(c, "percentage_rate", self.percentage_rate.as_ref()),
            frequency: self.frequency.unwrap_or_default(),
            frequency_duration: self.frequency_duration,
            expiration_at: expiry(c, self.expiration_at.as_deref()),
            reusable: self.reusable.unwrap_or(true),
            max_redemptions: self.max_redemptions,
            plan_codes: applies_to.plan_codes,
            metric_codes: applies_to.billable_metric_codes,
        };
        check_coupon_fields(c, &k);
        k
    }
}

impl UpdateCoupon {
    /// `old` with the given fields replaced, or every refused field.
    pub fn validate(self, mut k: Coupon) -> Result<Coupon, ApiError> {
        let mut c = Check::new();
        if let Some(n) = self.name {
            k.name = n;
        }
        if self.expiration_at.is_some() {
            k.expiration_at = expiry(&mut c, self.expiration_at.as_deref());
        }
        if let Some(r) = self.reusable {
            k.reusable = r;
        }
        if self.max_redemptions.is_some() {
            k.max_redemptions = self.max_redemptions;
        }
        check_coupon_fields(&mut c, &k);
        c.finish()?;
        Ok(k)
    }
}

/// Refuse the plans and metrics a coupon is limited to that the tenant does not have.
async fn check_scope_exists(
    state: &AppState,
    tenant: &str,
    c: &mut Check,
    k: &Coupon,
) -> Result<(), ApiError> {
    for (kind, list, field) in [
        (PLAN, &k.plan_codes, "applies_to.plan_codes"),
        (METRIC, &k.metric_codes, "applies_to.billable_metric_codes"),
    ] {
        for (i, code) in list.iter().enumerate() {
            if state
                .billing
                .catalog_entry(tenant, kind, code)
                .await?
                .is_none()
            {
                c.fail(
                    format!("{field}[{i}]"),
                    format!("no {} {code:?}", kind.replace('_', " ")),
                );
            }
        }
    }
    Ok(())
}

/// `POST /v1/add_ons` (Lago's add-on).
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"code": "setup", "name": "Setup", "amount": "100.00", "amount_currency": "EUR"}))]
pub struct CreateAddOn {
    code: String,
    #[serde(default)]
    name: Option<String>,
    #[schema(schema_with = crate::openapi::decimal)]
    amount: Value,
    amount_currency: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    tax_codes: Option<Vec<String>>,
}

/// `POST /v1/add_ons/{code}`: the fields given replace the stored ones (invoices already issued keep theirs).
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAddOn {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    #[schema(schema_with = crate::openapi::decimal)]
    amount: Option<Value>,
    #[serde(default)]
    amount_currency: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    tax_codes: Option<Vec<String>>,
}

fn check_add_on(c: &mut Check, a: &mut AddOn, amount: &Value) {
    check_name(c, &a.name);
    if let Some(cur) = c.currency("amount_currency", &a.amount_currency) {
        a.amount_currency = cur.code().to_owned();
    }
    if let Some(d) = c.amount("amount", amount) {
        a.amount = d.to_string();
    }
    if let Some(d) = &a.description {
        c.text("description", d, 1000);
    }
}

impl CreateAddOn {
    /// The add-on (tax codes still to be found), or every refused field so far.
    pub fn validate(self, c: &mut Check) -> AddOn {
        c.id("code", &self.code);
        let mut a = AddOn {
            name: self.name.unwrap_or_else(|| self.code.clone()),
            code: self.code,
            amount: String::new(),
            amount_currency: self.amount_currency,
            description: self.description,
            tax_codes: check_codes(c, "tax_codes", self.tax_codes),
        };
        check_add_on(c, &mut a, &self.amount);
        a
    }
}

impl UpdateAddOn {
    /// `old` with the given fields replaced, checked so far.
    pub fn validate(self, c: &mut Check, mut a: AddOn) -> AddOn {
        if let Some(n) = self.name {
            a.name = n;
        }
        if let Some(cur) = self.amount_currency {
            a.amount_currency = cur;
        }
        if self.description.is_some() {
            a.description = self.description;
        }
        if self.tax_codes.is_some() {
            a.tax_codes = check_codes(c, "tax_codes", self.tax_codes);
        }
        let amount = self
            .amount
            .unwrap_or_else(|| Value::String(a.amount.clone()));
        check_add_on(c, &mut a, &amount);
        a
    }
}

/// Each tax code of a list, with its field (`tax_codes[i]`).
pub(crate) fn tax_code_fields(codes: &[String]) -> Vec<(String, String)> {
    codes
        .iter()
        .enumerate()
        .map(|(i, code)| (format!("tax_codes[{i}]"), code.clone()))
        .collect()
}

/// A rate as text: a JSON number or string, checked by the reference fold's own parser (0 to 100, ≤ 4 decimals).
fn check_tax(c: &mut Check, t: &TaxRate) {
    check_name(c, &t.name);
    if let Some(d) = &t.description {
        c.text("description", d, 1000);
    }
    if let Err(e) = tax_rate_info(t) {
        c.fail("rate", e);
    }
}

fn rate_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl CreateTax {
    /// The tax rate, or every refused field.
    pub fn validate(self) -> Result<TaxRate, ApiError> {
        let mut c = Check::new();
        c.id("code", &self.code);
        let t = TaxRate {
            name: self.name.unwrap_or_else(|| self.code.clone()),
            code: self.code,
            rate: rate_text(&self.rate),
            inclusive: self.inclusive.unwrap_or(false),
            applied_to_tenant: self.applied_to_tenant.unwrap_or(false),
            description: self.description,
        };
        check_tax(&mut c, &t);
        c.finish()?;
        Ok(t)
    }
}

impl UpdateTax {
    /// `old` with the given fields replaced, or every refused field.
    pub fn validate(self, mut t: TaxRate) -> Result<TaxRate, ApiError> {
        if let Some(n) = self.name {
            t.name = n;
        }
        if let Some(r) = &self.rate {
            t.rate = rate_text(r);
        }
        if let Some(b) = self.inclusive {
            t.inclusive = b;
        }
        if let Some(b) = self.applied_to_tenant {
            t.applied_to_tenant = b;
        }
        if self.description.is_some() {
            t.description = self.description;
        }
        let mut c = Check::new();
        check_tax(&mut c, &t);
        c.finish()?;
        Ok(t)
    }
}

const MAX_NAME: usize = 255;

fn check_name(c: &mut Check, name: &str) {
    if name.chars().count() > MAX_NAME {
        c.fail("name", format!("longer than {MAX_NAME} characters"));
    }
}

/// A metric as it will be published.
pub fn check_metric(c: &mut Check, m: &BillableMetric) {
    check_name(c, &m.name);
    match (&m.aggregation, &m.field_name) {
        (Aggregation::Count, _) => {}
        (_, None) => c.fail("field_name", "required by every aggregation but count"),
        (_, Some(f)) => c.text("field_name", f, MAX_NAME),
    }
    let mut keys = BTreeSet::new();
    for (i, f) in m.filters.iter().enumerate() {
        c.text(&format!("filters[{i}].key"), &f.key, MAX_NAME);
        if !keys.insert(&f.key) {
            c.fail(
                format!("filters[{i}].key"),
                format!("{:?} is filtered twice", f.key),
            );
        }
        if f.values.is_empty() {
            c.fail(format!("filters[{i}].values"), "at least one value");
        }
    }
}

fn filters(f: Vec<FilterBody>) -> Vec<MetricFilter> {
    f.into_iter()
        .map(|f| MetricFilter {
            key: f.key,
            values: f.values,
        })
        .collect()
}

impl CreateMetric {
    /// The metric, or every refused field.
    pub fn validate(self) -> Result<BillableMetric, ApiError> {
        let mut c = Check::new();
        c.id("code", &self.code);
        let m = BillableMetric {
            name: self.name.unwrap_or_else(|| self.code.clone()),
            code: self.code,
            aggregation: self.aggregation.into(),
            field_name: self.field_name,
            filters: filters(self.filters.unwrap_or_default()),
        };
        check_metric(&mut c, &m);
        c.finish()?;
        Ok(m)
    }
}

impl UpdateMetric {
    /// `old` with the given fields replaced, or every refused field.
    pub fn validate(self, mut m: BillableMetric) -> Result<BillableMetric, ApiError> {
        if let Some(n) = self.name {
            m.name = n;
        }
        if let Some(a) = self.aggregation {
            m.aggregation = a.into();
        }
        if self.field_name.is_some() {
            m.field_name = self.field_name;
        }
        if let Some(f) = self.filters {
            m.filters = filters(f);
        }
        let mut c = Check::new();
        check_metric(&mut c, &m);
        c.finish()?;
        Ok(m)
    }
}

/// Check charges (all but the existence of their metrics); returns them as published.
pub fn check_charges(c: &mut Check, charges: Vec<ChargeBody>) -> Vec<Charge> {
    let mut ids = BTreeSet::new();
    let mut out = Vec::with_capacity(charges.len());
    for (i, ch) in charges.into_iter().enumerate() {
        let at = |f: &str| format!("charges[{i}].{f}");
        c.id(&at("billable_metric_code"), &ch.billable_metric_code);
        let id = ch
            .id
            .clone()
            .unwrap_or_else(|| ch.billable_metric_code.clone());
        if ch.id.is_some() {
            c.id(&at("id"), &id);
        }
        if !ids.insert(id.clone()) {
            c.fail(
                at("id"),
                format!(
                    "{id:?} is used by another charge of the plan; give each charge its own id"
                ),
            );
        }
        let properties = ch
            .properties
            .unwrap_or_else(|| Value::Object(Default::default()));
        if !properties.is_object() {
            c.fail(at("properties"), "must be a JSON object");
        } else {
            match billing_core::charge::ChargeModel::from_lago(
                ch.charge_model.lago_name(),
                &properties,
            ) {
                Err(e) => c.fail(at("properties"), e.to_string()),
                // Invoices are priced from rated aggregates, which keep no per-event values: options that need
                // them cannot be billed, so they are refused rather than ignored.
                Ok(model) => {
                    let probe = model.evaluate(&billing_core::charge::Usage {
                        units: rust_decimal::Decimal::ONE,
                        events_count: Some(1),
                        event_values: None,
                    });
                    if let Err(billing_core::Error::MissingInput(what)) = probe {
                        c.fail(
                            at("properties"),
                            format!("not supported: the invoice is priced from aggregated usage ({what})"),
                        );
                    }
                }
            }
        }
        let min_amount = ch
            .min_amount
            .as_ref()
            .and_then(|v| c.amount(&at("min_amount"), v))
            .map(|d| d.to_string());
        if let Some(g) = &ch.group_by {
            c.text(&at("group_by"), g, MAX_NAME);
        }
        let tax_codes = check_codes(c, &at("tax_codes"), ch.tax_codes);
        out.push(Charge {
            id,
            metric_code: ch.billable_metric_code,
            charge_model: ch.charge_model,
            properties: properties.to_string(),
            min_amount,
            group_by: ch.group_by,
            tax_codes,
        });
    }
    out
}

/// A list of tax codes: each once.
pub(crate) fn check_codes(c: &mut Check, name: &str, codes: Option<Vec<String>>) -> Vec<String> {
    let codes = codes.unwrap_or_default();
    for (i, code) in codes.iter().enumerate() {
        if codes[..i].contains(code) {
            c.fail(format!("{name}[{i}]"), format!("{code:?} is listed twice"));
        }
    }
    codes
}

/// Refuse tax codes the tenant has no tax rate for; `codes` are (field, code).
pub async fn check_tax_codes_exist(
    state: &AppState,
    tenant: &str,
    c: &mut Check,
    codes: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ApiError> {
    for (field, code) in codes {
        if state
            .billing
            .catalog_entry(tenant, TAX_RATE, &code)
            .await?
            .is_none()
        {
            c.fail(field, format!("no tax rate {code:?}"));
        }
    }
    Ok(())
}

/// Every tax code a plan names, with its field.
fn plan_tax_codes(p: &Plan) -> Vec<(String, String)> {
    let mut out = tax_code_fields(&p.tax_codes);
    for (j, ch) in p.charges.iter().enumerate() {
        for (i, code) in ch.tax_codes.iter().enumerate() {
            out.push((format!("charges[{j}].tax_codes[{i}]"), code.clone()));
        }
    }
    out
}

/// The plan's own fields.
fn check_plan_fields(c: &mut Check, p: &Plan, amount: &Value) -> Option<String> {
    check_name(c, &p.name);
    c.currency("currency", &p.currency);
    c.days("trial_period_days", p.trial_period_days);
    c.amount("amount", amount).map(|d| d.to_string())
}

impl CreatePlan {
    /// The plan (whose charges' metrics are still to be found), or every refused field so far.
    pub fn validate(self, c: &mut Check) -> Plan {
        c.id("code", &self.code);
        let mut p = Plan {
            version: 1,
            effective_from: None,
            name: self.name.unwrap_or_else(|| self.code.clone()),
            code: self.code,
            interval: self.interval,
            currency: self.currency.to_ascii_uppercase(),
            amount: String::new(),
            pay_in_advance: self.pay_in_advance.unwrap_or(false),
            trial_period_days: self.trial_period_days.unwrap_or(0),
            charges: Vec::new(),
            tax_codes: Vec::new(),
        };
        p.tax_codes = check_codes(c, "tax_codes", self.tax_codes);
        if let Some(a) = check_plan_fields(c, &p, &self.amount) {
            p.amount = a;
        }
        p.charges = check_charges(c, self.charges.unwrap_or_default());
        p
    }
}

impl UpdatePlan {
    /// `old` with the given fields replaced (charges to be found still), checked so far.
    pub fn validate(self, c: &mut Check, mut p: Plan) -> Plan {
        p.version += 1;
        p.effective_from = None;
        if let Some(raw) = &self.effective_from {
            match crate::request::parse_instant("effective_from", raw, false) {
                Ok(t) => p.effective_from = Some(t),
                Err(_) => c.fail(
                    "effective_from",
                    "must be an RFC 3339 time or a YYYY-MM-DD date",
                ),
            }
        }
        if let Some(cur) = &self.currency {
            if cur.to_ascii_uppercase() != p.currency {
                c.fail(
                    "currency",
                    format!("a plan's currency cannot change (it is {})", p.currency),
                );
            }
        }
        if let Some(n) = self.name {
            p.name = n;
        }
        if let Some(i) = self.interval {
            p.interval = i;
        }
        if let Some(b) = self.pay_in_advance {
            p.pay_in_advance = b;
        }
        if let Some(d) = self.trial_period_days {
            p.trial_period_days = d;
        }
        let amount = self
            .amount
            .unwrap_or_else(|| Value::String(p.amount.clone()));
        if let Some(a) = check_plan_fields(c, &p, &amount) {
            p.amount = a;
        }
        if let Some(charges) = self.charges {
            p.charges = check_charges(c, charges);
        }
        if self.tax_codes.is_some() {
            p.tax_codes = check_codes(c, "tax_codes", self.tax_codes);
        }
        p
    }
}

/// Refuse charges whose metric the tenant does not have.
async fn check_metrics_exist(
    state: &AppState,
    tenant: &str,
    c: &mut Check,
    charges: &[Charge],
) -> Result<(), ApiError> {
    for (i, ch) in charges.iter().enumerate() {
        if ch.metric_code.is_empty() {
            continue;
        }
        if state
            .billing
            .catalog_entry(tenant, METRIC, &ch.metric_code)
            .await?
            .is_none()
        {
            c.fail(
                format!("charges[{i}].billable_metric_code"),
                format!("no billable metric {:?}", ch.metric_code),
            );
        }
    }
    Ok(())
}

/// How a stored entry is shown.
type View = fn(&CatalogEntry) -> Result<Value, ApiError>;

/// A stored metric as the API shows it.
pub fn metric_view(e: &CatalogEntry) -> Result<Value, ApiError> {
    let m: BillableMetric = serde_json::from_str(&e.body).map_err(anyhow::Error::from)?;
    Ok(serde_json::json!({
        "object": "billable_metric",
        "code": m.code,
        "name": m.name,
        "aggregation": m.aggregation,
        "field_name": m.field_name,
        "filters": m.filters,
        "created_at": e.created_at,
    }))
}

/// A stored plan as the API shows it (charge properties as JSON objects, as they were sent).
pub fn plan_view(e: &CatalogEntry) -> Result<Value, ApiError> {
    let p: Plan = serde_json::from_str(&e.body).map_err(anyhow::Error::from)?;
    let charges: Vec<Value> = p
        .charges
        .iter()
        .map(|c| {
            serde_json::json!({
                "id": c.id,
                "billable_metric_code": c.metric_code,
                "charge_model": c.charge_model,
                "properties": serde_json::from_str::<Value>(&c.properties)
                    .unwrap_or_else(|_| Value::String(c.properties.clone())),
                "min_amount": c.min_amount,
                "group_by": c.group_by,
                "tax_codes": c.tax_codes,
            })
        })
        .collect();
    Ok(serde_json::json!({
        "object": "plan",
        "code": p.code,
        "name": p.name,
        "interval": p.interval,
        "currency": p.currency,
        "amount": p.amount,
        "pay_in_advance": p.pay_in_advance,
        "trial_period_days": p.trial_period_days,
        "version": p.version,
        "effective_from": p.effective_from,
        "charges": charges,
        "tax_codes": p.tax_codes,
        "created_at": e.created_at,
    }))
}

/// A stored tax rate as the API shows it.
pub fn tax_view(e: &CatalogEntry) -> Result<Value, ApiError> {
    let t: TaxRate = serde_json::from_str(&e.body).map_err(anyhow::Error::from)?;
    Ok(serde_json::json!({
        "object": "tax",
        "code": t.code,
        "name": t.name,
        "rate": t.rate,
        "inclusive": t.inclusive,
        "applied_to_tenant": t.applied_to_tenant,
        "description": t.description,
        "created_at": e.created_at,
    }))
}

/// The stored entry, or 404.
async fn entry(
    state: &AppState,
    tenant: &str,
    kind: &str,
    code: &str,
) -> Result<CatalogEntry, ApiError> {
    state
        .billing
        .catalog_entry(tenant, kind, code)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no {} {code:?}", kind.replace('_', " "))))
}

/// The stored plan, if any.
pub async fn plan(state: &AppState, tenant: &str, code: &str) -> Result<Option<Plan>, ApiError> {
    match state.billing.catalog_entry(tenant, PLAN, code).await? {
        None => Ok(None),
        Some(e) => Ok(Some(
            serde_json::from_str(&e.body).map_err(anyhow::Error::from)?,
        )),
    }
}

/// Publish an entry and answer with what is stored once the invoicer has materialized it.
async fn publish(
    state: &AppState,
    tenant: &str,
    q: &WriteQuery,
    payload: Catalog,
    status: StatusCode,
) -> Result<Answer, ApiError> {
    let deadline = state.deadline(q)?;
    let (kind, code, view): (&str, String, View) = match &payload {
        Catalog::BillableMetric(m) => (METRIC, m.code.clone(), metric_view),
        Catalog::Plan(p) => (PLAN, p.code.clone(), plan_view),
        Catalog::TaxRate(t) => (TAX_RATE, t.code.clone(), tax_view),
        Catalog::Coupon(k) => (COUPON, k.code.clone(), coupon_view),
        Catalog::AddOn(a) => (ADD_ON, a.code.clone(), add_on_view),
        Catalog::Deleted(_) => {
            return Err(anyhow::anyhow!("deletions are not published here").into())
        }
    };
    let ev = CatalogEvent {
        tenant_id: tenant.to_owned(),
        event_id: event_id(),
        occurred_at: Utc::now(),
        payload,
    };
    let at = state.publish_catalog(&ev).await?;
    if state.catalog_visible(at, deadline).await {
        if let Ok(Some(e)) = state.billing.catalog_entry(tenant, kind, &code).await {
            if let Ok(v) = view(&e) {
                return answer(status, v);
            }
        }
    }
    Ok(pending(&ev.event_id, kind, &code))
}

/// Publish a new entry, its code reserved meanwhile.
async fn create(
    state: &AppState,
    tenant: &str,
    q: &WriteQuery,
    payload: Catalog,
) -> Result<Answer, ApiError> {
    let (kind, code) = match &payload {
        Catalog::BillableMetric(m) => (METRIC, m.code.clone()),
        Catalog::Plan(p) => (PLAN, p.code.clone()),
        Catalog::TaxRate(t) => (TAX_RATE, t.code.clone()),
        Catalog::Coupon(k) => (COUPON, k.code.clone()),
        Catalog::AddOn(a) => (ADD_ON, a.code.clone()),
        Catalog::Deleted(_) => {
            return Err(anyhow::anyhow!("deletions are not published here").into())
        }
    };
    idempotency::reserve(state, tenant, kind, &code, "code").await?;
    let answer = publish(state, tenant, q, payload, StatusCode::CREATED).await;
    if answer.is_err() {
        idempotency::unreserve(state, tenant, kind, &code).await;
    }
    answer
}

/// `POST /v1/billable_metrics`.
pub async fn create_metric(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    ApiQuery(q): ApiQuery<WriteQuery>,
    ApiJson(body): ApiJson<CreateMetric>,
) -> Result<Answer, ApiError> {
    state.deadline(&q)?;
    let m = body.validate()?;
    if state
        .billing
        .catalog_entry(&tenant, METRIC, &m.code)
        .await?
        .is_some()
    {
        return Err(ApiError::conflict_field(
            "code",
            format!("a billable metric {:?} already exists", m.code),
        ));
    }
    create(&state, &tenant, &q, Catalog::BillableMetric(m)).await
}

/// `POST /v1/billable_metrics/{code}`.
pub async fn update_metric(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(code): Path<String>,
    ApiQuery(q): ApiQuery<WriteQuery>,
    ApiJson(body): ApiJson<UpdateMetric>,
) -> Result<Answer, ApiError> {
    state.deadline(&q)?;
    let old = entry(&state, &tenant, METRIC, &code).await?;
    let old: BillableMetric = serde_json::from_str(&old.body).map_err(anyhow::Error::from)?;
    let m = body.validate(old)?;
    publish(
        &state,
        &tenant,
        &q,
        Catalog::BillableMetric(m),
        StatusCode::OK,
    )
    .await
}

/// `GET /v1/billable_metrics/{code}`.
pub async fn get_metric(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(code): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(metric_view(
        &entry(&state, &tenant, METRIC, &code).await?,
    )?))
}

/// `GET /v1/billable_metrics`: newest first, cursor = code.
pub async fn list_metrics(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    list(&state, &tenant, METRIC, q, metric_view).await
}

/// `POST /v1/plans`.
pub async fn create_plan(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    ApiQuery(q): ApiQuery<WriteQuery>,
    ApiJson(body): ApiJson<CreatePlan>,
) -> Result<Answer, ApiError> {
    state.deadline(&q)?;
    let mut c = Check::new();
    let p = body.validate(&mut c);
    check_metrics_exist(&state, &tenant, &mut c, &p.charges).await?;
    check_tax_codes_exist(&state, &tenant, &mut c, plan_tax_codes(&p)).await?;
    c.finish()?;
    if state
        .billing
        .catalog_entry(&tenant, PLAN, &p.code)
        .await?
        .is_some()
    {
        return Err(ApiError::conflict_field(
            "code",
            format!("a plan {:?} already exists", p.code),
        ));
    }
    create(&state, &tenant, &q, Catalog::Plan(p)).await
}

/// `POST /v1/plans/{code}`: the new version replaces the plan for every subscription on it.
pub async fn update_plan(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(code): Path<String>,
    ApiQuery(q): ApiQuery<WriteQuery>,
    ApiJson(body): ApiJson<UpdatePlan>,
) -> Result<Answer, ApiError> {
    state.deadline(&q)?;
    let old = entry(&state, &tenant, PLAN, &code).await?;
    let old: Plan = serde_json::from_str(&old.body).map_err(anyhow::Error::from)?;
    let mut c = Check::new();
    let p = body.validate(&mut c, old);
    check_metrics_exist(&state, &tenant, &mut c, &p.charges).await?;
    check_tax_codes_exist(&state, &tenant, &mut c, plan_tax_codes(&p)).await?;
    c.finish()?;
    publish(&state, &tenant, &q, Catalog::Plan(p), StatusCode::OK).await
}

/// `GET /v1/plans/{code}`.
pub async fn get_plan(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(code): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(plan_view(
        &entry(&state, &tenant, PLAN, &code).await?,
    )?))
}

/// `GET /v1/plans`: newest first, cursor = code.
pub async fn list_plans(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    list(&state, &tenant, PLAN, q, plan_view).await
}

/// A stored coupon as the API shows it.
pub fn coupon_view(e: &CatalogEntry) -> Result<Value, ApiError> {
    let k: Coupon = serde_json::from_str(&e.body).map_err(anyhow::Error::from)?;
    Ok(serde_json::json!({
        "object": "coupon",
        "code": k.code,
        "name": k.name,
        "coupon_type": k.coupon_type,
        "amount": k.amount,
        "amount_currency": k.amount_currency,
        "percentage_rate": k.percentage_rate,
        "frequency": k.frequency,
        "frequency_duration": k.frequency_duration,
        "expiration_at": k.expiration_at,
        "reusable": k.reusable,
        "max_redemptions": k.max_redemptions,
        "applies_to": {"plan_codes": k.plan_codes, "billable_metric_codes": k.metric_codes},
        "created_at": e.created_at,
    }))
}

/// The stored coupon, if any.
pub async fn coupon(
    state: &AppState,
    tenant: &str,
    code: &str,
) -> Result<Option<Coupon>, ApiError> {
    match state.billing.catalog_entry(tenant, COUPON, code).await? {
        None => Ok(None),
        Some(e) => Ok(Some(
            serde_json::from_str(&e.body).map_err(anyhow::Error::from)?,
        )),
    }
}

/// A stored add-on as the API shows it.
pub fn add_on_view(e: &CatalogEntry) -> Result<Value, ApiError> {
    let a: AddOn = serde_json::from_str(&e.body).map_err(anyhow::Error::from)?;
    Ok(serde_json::json!({
        "object": "add_on",
        "code": a.code,
        "name": a.name,
        "amount": a.amount,
        "amount_currency": a.amount_currency,
        "description": a.description,
        "tax_codes": a.tax_codes,
        "created_at": e.created_at,
    }))
}

/// The stored add-on, if any.
pub async fn add_on(state: &AppState, tenant: &str, code: &str) -> Result<Option<AddOn>, ApiError> {
    match state.billing.catalog_entry(tenant, ADD_ON, code).await? {
        None => Ok(None),
        Some(e) => Ok(Some(
            serde_json::from_str(&e.body).map_err(anyhow::Error::from)?,
        )),
    }
}

/// `POST /v1/add_ons`.
pub async fn create_add_on(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    ApiQuery(q): ApiQuery<WriteQuery>,
    ApiJson(body): ApiJson<CreateAddOn>,
) -> Result<Answer, ApiError> {
    state.deadline(&q)?;
    let mut c = Check::new();
    let a = body.validate(&mut c);
    check_tax_codes_exist(&state, &tenant, &mut c, tax_code_fields(&a.tax_codes)).await?;
    c.finish()?;
    if add_on(&state, &tenant, &a.code).await?.is_some() {
        return Err(ApiError::conflict_field(
            "code",
            format!("an add-on {:?} already exists", a.code),
        ));
    }
    create(&state, &tenant, &q, Catalog::AddOn(a)).await
}

/// `POST /v1/add_ons/{code}`.
pub async fn update_add_on(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(code): Path<String>,
    ApiQuery(q): ApiQuery<WriteQuery>,
    ApiJson(body): ApiJson<UpdateAddOn>,
) -> Result<Answer, ApiError> {
    state.deadline(&q)?;
    let old = entry(&state, &tenant, ADD_ON, &code).await?;
    let old: AddOn = serde_json::from_str(&old.body).map_err(anyhow::Error::from)?;
    let mut c = Check::new();
    let a = body.validate(&mut c, old);
    check_tax_codes_exist(&state, &tenant, &mut c, tax_code_fields(&a.tax_codes)).await?;
    c.finish()?;
    publish(&state, &tenant, &q, Catalog::AddOn(a), StatusCode::OK).await
}

/// `GET /v1/add_ons/{code}`.
pub async fn get_add_on(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(code): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(add_on_view(
        &entry(&state, &tenant, ADD_ON, &code).await?,
    )?))
}

/// `GET /v1/add_ons`: cursor = code.
pub async fn list_add_ons(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    list(&state, &tenant, ADD_ON, q, add_on_view).await
}

/// `POST /v1/coupons`.
pub async fn create_coupon(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    ApiQuery(q): ApiQuery<WriteQuery>,
    ApiJson(body): ApiJson<CreateCoupon>,
) -> Result<Answer, ApiError> {
    state.deadline(&q)?;
    let mut c = Check::new();
    let k = body.validate(&mut c);
    check_scope_exists(&state, &tenant, &mut c, &k).await?;
    c.finish()?;
    if coupon(&state, &tenant, &k.code).await?.is_some() {
        return Err(ApiError::conflict_field(
            "code",
            format!("a coupon {:?} already exists", k.code),
        ));
    }
    create(&state, &tenant, &q, Catalog::Coupon(k)).await
}

/// `POST /v1/coupons/{code}`.
pub async fn update_coupon(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(code): Path<String>,
    ApiQuery(q): ApiQuery<WriteQuery>,
    ApiJson(body): ApiJson<UpdateCoupon>,
) -> Result<Answer, ApiError> {
    state.deadline(&q)?;
    let old = entry(&state, &tenant, COUPON, &code).await?;
    let old: Coupon = serde_json::from_str(&old.body).map_err(anyhow::Error::from)?;
    let k = body.validate(old)?;
    publish(&state, &tenant, &q, Catalog::Coupon(k), StatusCode::OK).await
}

/// `GET /v1/coupons/{code}`.
pub async fn get_coupon(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(code): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(coupon_view(
        &entry(&state, &tenant, COUPON, &code).await?,
    )?))
}

/// `GET /v1/coupons`: cursor = code.
pub async fn list_coupons(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    list(&state, &tenant, COUPON, q, coupon_view).await
}

/// `POST /v1/taxes`.
pub async fn create_tax(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    ApiQuery(q): ApiQuery<WriteQuery>,
    ApiJson(body): ApiJson<CreateTax>,
) -> Result<Answer, ApiError> {
    state.deadline(&q)?;
    let t = body.validate()?;
    if state
        .billing
        .catalog_entry(&tenant, TAX_RATE, &t.code)
        .await?
        .is_some()
    {
        return Err(ApiError::conflict_field(
            "code",
            format!("a tax {:?} already exists", t.code),
        ));
    }
    create(&state, &tenant, &q, Catalog::TaxRate(t)).await
}

/// `POST /v1/taxes/{code}`.
pub async fn update_tax(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(code): Path<String>,
    ApiQuery(q): ApiQuery<WriteQuery>,
    ApiJson(body): ApiJson<UpdateTax>,
) -> Result<Answer, ApiError> {
    state.deadline(&q)?;
    let old = entry(&state, &tenant, TAX_RATE, &code).await?;
    let old: TaxRate = serde_json::from_str(&old.body).map_err(anyhow::Error::from)?;
    let t = body.validate(old)?;
    publish(&state, &tenant, &q, Catalog::TaxRate(t), StatusCode::OK).await
}

/// `GET /v1/taxes/{code}`.
pub async fn get_tax(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(code): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(tax_view(
        &entry(&state, &tenant, TAX_RATE, &code).await?,
    )?))
}

/// `GET /v1/taxes`: cursor = code.
pub async fn list_taxes(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    list(&state, &tenant, TAX_RATE, q, tax_view).await
}

async fn list(
    state: &AppState,
    tenant: &str,
    kind: &str,
    q: PageQuery,
    view: View,
) -> Result<Json<Value>, ApiError> {
    let limit = page_limit(q.limit)?;
    let entries = state.billing.catalog_entries(tenant, kind).await?;
    let entries = after_cursor(entries, q.starting_after.as_deref(), |e| &e.code)?;
    let items = entries
        .iter()
        .take(limit + 1)
        .map(view)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(page(items, limit)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::parse_json;

    fn names(c: Check) -> Vec<String> {
        match c.finish().unwrap_err() {
            ApiError::Fields { params, .. } => params.into_iter().map(|p| p.name).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn metrics_take_lago_aggregation_names_and_need_a_field() {
        let m: CreateMetric =
            parse_json(br#"{"code": "gb", "aggregation": "sum_agg", "field_name": "gb"}"#).unwrap();
        let m = m.validate().unwrap();
        assert_eq!(m.aggregation, Aggregation::Sum);
        assert_eq!(m.name, "gb");
        let m: CreateMetric = parse_json(br#"{"code": "calls", "aggregation": "count"}"#).unwrap();
        assert!(m.validate().is_ok());
        let m: CreateMetric = parse_json(br#"{"code": "gb", "aggregation": "max"}"#).unwrap();
        assert!(
            matches!(m.validate(), Err(ApiError::Fields { params, .. }) if params[0].name == "field_name")
        );
        assert!(parse_json::<CreateMetric>(br#"{"code": "x", "aggregation": "median"}"#).is_err());
    }

    fn plan_body(charges: &str) -> CreatePlan {
        parse_json(
            format!(
                r#"{{"code": "pro", "interval": "monthly", "currency": "eur", "amount": "49.90",
                     "pay_in_advance": true, "charges": {charges}}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn a_plan_publishes_properties_as_json_text() {
        let mut c = Check::new();
        let p = plan_body(
            r#"[{"billable_metric_code": "calls", "charge_model": "standard", "properties": {"amount": "0.01"}},
                {"id": "gb-tiers", "metric_code": "gb", "charge_model": "graduated", "min_amount": "5",
                 "properties": {"graduated_ranges": [{"from_value": 0, "to_value": 10, "per_unit_amount": "1", "flat_amount": "0"},
                                                     {"from_value": 11, "to_value": null, "per_unit_amount": "0.5", "flat_amount": "0"}]}}]"#,
        )
        .validate(&mut c);
        assert!(c.is_ok(), "{:?}", c.finish());
        assert_eq!(p.currency, "EUR");
        assert_eq!(p.amount, "49.90");
        assert_eq!(p.charges[0].id, "calls");
        assert_eq!(p.charges[1].id, "gb-tiers");
        assert_eq!(p.charges[1].min_amount.as_deref(), Some("5"));
        let props: Value = serde_json::from_str(&p.charges[0].properties).unwrap();
        assert_eq!(props["amount"], "0.01");
    }

    #[test]
    fn bad_charges_are_named_by_index() {
        let mut c = Check::new();
        plan_body(
            r#"[{"billable_metric_code": "calls", "charge_model": "standard", "properties": {"amount": "x"}},
                {"billable_metric_code": "calls", "charge_model": "package", "properties": []},
                {"id": "m", "billable_metric_code": "gb", "charge_model": "standard", "properties": {"amount": "1"}, "min_amount": "-1"}]"#,
        )
        .validate(&mut c);
        assert_eq!(
            names(c),
            [
                "charges[0].properties",
                "charges[1].id",
                "charges[1].properties",
                "charges[2].min_amount"
            ]
        );
        let bad: Result<CreatePlan, _> = parse_json(
            br#"{"code": "p", "interval": "monthly", "currency": "EUR", "amount": "1",
                 "charges": [{"billable_metric_code": "c", "charge_model": "standard", "price": 1}]}"#,
        );
        assert!(
            matches!(bad, Err(ApiError::Fields { params, .. }) if params[0].name == "charges[0].price")
        );
    }

    #[test]
    fn charges_the_invoice_cannot_price_from_aggregates_are_refused() {
        // A percentage charge with a per-transaction minimum needs every event's value.
        let mut c = Check::new();
        plan_body(
            r#"[{"billable_metric_code": "amount", "charge_model": "percentage",
                 "properties": {"rate": "1", "per_transaction_min_amount": "0.5"}},
                {"billable_metric_code": "amount", "charge_model": "percentage", "id": "plain",
                 "properties": {"rate": "1"}}]"#,
        )
        .validate(&mut c);
        assert_eq!(names(c), ["charges[0].properties"]);
    }

    #[test]
    fn plan_fields_are_checked() {
        let mut c = Check::new();
        let p: CreatePlan = parse_json(
            br#"{"code": "p", "interval": "monthly", "currency": "EURO", "amount": "-5", "trial_period_days": -1}"#,
        )
        .unwrap();
        p.validate(&mut c);
        assert_eq!(names(c), ["currency", "trial_period_days", "amount"]);
        assert!(parse_json::<CreatePlan>(
            br#"{"code": "p", "interval": "daily", "currency": "EUR", "amount": "1"}"#
        )
        .is_err());
    }

    #[test]
    fn a_plan_update_keeps_its_currency() {
        let mut c = Check::new();
        let old = plan_body("[]").validate(&mut c);
        let u: UpdatePlan = parse_json(br#"{"currency": "USD", "amount": "59"}"#).unwrap();
        let mut c = Check::new();
        u.validate(&mut c, old.clone());
        assert_eq!(names(c), ["currency"]);
        let u: UpdatePlan = parse_json(br#"{"amount": "59", "interval": "yearly"}"#).unwrap();
        let mut c = Check::new();
        let p = u.validate(&mut c, old);
        assert!(c.is_ok());
        assert_eq!((p.amount.as_str(), p.interval), ("59", Interval::Yearly));
        assert!(p.pay_in_advance);
    }
}
