//! `/v1/customers`: create (publishes `CustomerCreated`), update (Stripe style: the fields given change,
//! publishes `CustomerUpdated`), read, list newest first.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use billing_runtime::http::Tenant;
use billing_schemas::lifecycle::{
    Address, CustomerCreated, CustomerUpdated, Lifecycle, LifecycleEvent, TaxExempt,
};
use billing_store::customers::CustomerView;
use chrono::Utc;

use crate::error::ApiError;
use crate::idempotency;
use crate::request::{
    page, page_limit, unknown_cursor, ApiJson, ApiQuery, Check, PageQuery, WriteQuery,
};
use crate::wait::{answer, event_id, pending, Answer};
use crate::AppState;

/// A postal address in a request.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddressBody {
    line1: Option<String>,
    line2: Option<String>,
    city: Option<String>,
    postal_code: Option<String>,
    state: Option<String>,
    country: Option<String>,
}

/// `POST /v1/customers`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"customer_id": "cus_fuzz", "name": "Acme SA", "currency": "EUR", "timezone": "Europe/Paris"}))]
pub struct CreateCustomer {
    customer_id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    email: Option<String>,
    currency: String,
    #[serde(default)]
    timezone: Option<String>,
    #[serde(default)]
    billing_country: Option<String>,
    #[serde(default)]
    address: Option<AddressBody>,
    #[serde(default)]
    tax_ids: Option<Vec<String>>,
    #[serde(default)]
    invoice_grace_period_days: Option<i32>,
    #[serde(default)]
    net_payment_term_days: Option<i32>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    test_clock_id: Option<String>,
    /// Tax rates of the customer's lines that have none at their plan or charge.
    #[serde(default)]
    tax_codes: Option<Vec<String>>,
    /// `none`, `exempt` or `reverse` (Stripe's `tax_exempt`).
    #[serde(default)]
    #[schema(schema_with = crate::openapi::tax_exempt)]
    tax_exempt: Option<TaxExempt>,
}

/// `POST /v1/customers/{id}`: every field optional; the ones given replace the stored values.
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCustomer {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    email: Option<String>,
    /// Accepted only when equal to the customer's: a customer's currency never changes.
    #[serde(default)]
    currency: Option<String>,
    #[serde(default)]
    timezone: Option<String>,
    #[serde(default)]
    billing_country: Option<String>,
    #[serde(default)]
    address: Option<AddressBody>,
    #[serde(default)]
    tax_ids: Option<Vec<String>>,
    #[serde(default)]
    invoice_grace_period_days: Option<i32>,
    #[serde(default)]
    net_payment_term_days: Option<i32>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
    /// Accepted only when equal to the customer's: a customer stays on its clock.
    #[serde(default)]
    test_clock_id: Option<String>,
    /// Tax rates of the customer's lines that have none at their plan or charge.
    #[serde(default)]
    tax_codes: Option<Vec<String>>,
    /// `none`, `exempt` or `reverse` (Stripe's `tax_exempt`).
    #[serde(default)]
    #[schema(schema_with = crate::openapi::tax_exempt)]
    tax_exempt: Option<TaxExempt>,
}

const MAX_TEXT: usize = 255;
const MAX_TAX_IDS: usize = 20;
const MAX_METADATA_KEYS: usize = 50;

fn check_email(c: &mut Check, email: &str) {
    let ok = email.len() <= 254
        && !email.chars().any(char::is_whitespace)
        && email
            .split_once('@')
            .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty());
    if !ok {
        c.fail("email", format!("{email:?} is not an email address"));
    }
}

/// An ISO 3166-1 alpha-2 code, upper-cased.
fn check_country(c: &mut Check, name: &str, value: &str) -> String {
    if value.len() != 2 || !value.bytes().all(|b| b.is_ascii_alphabetic()) {
        c.fail(
            name,
            format!("{value:?} is not an ISO 3166-1 alpha-2 country code"),
        );
    }
    value.to_ascii_uppercase()
}

fn check_address(c: &mut Check, a: AddressBody) -> Address {
    for (name, v) in [
        ("address.line1", &a.line1),
        ("address.line2", &a.line2),
        ("address.city", &a.city),
        ("address.postal_code", &a.postal_code),
        ("address.state", &a.state),
    ] {
        if let Some(v) = v {
            if v.chars().count() > MAX_TEXT {
                c.fail(name, format!("longer than {MAX_TEXT} characters"));
            }
        }
    }
    let country = a
        .country
        .as_deref()
        .map(|v| check_country(c, "address.country", v));
    Address {
        line1: a.line1,
        line2: a.line2,
        city: a.city,
        postal_code: a.postal_code,
        state: a.state,
        country,
    }
}

fn check_tax_ids(c: &mut Check, ids: &[String]) {
    if ids.len() > MAX_TAX_IDS {
        c.fail("tax_ids", format!("at most {MAX_TAX_IDS}"));
    }
    for (i, id) in ids.iter().enumerate() {
        c.text(&format!("tax_ids[{i}]"), id, 64);
    }
}

fn check_metadata(c: &mut Check, m: &BTreeMap<String, String>) {
    if m.len() > MAX_METADATA_KEYS {
        c.fail("metadata", format!("at most {MAX_METADATA_KEYS} keys"));
    }
    for (k, v) in m {
        if k.is_empty() || k.chars().count() > 40 {
            c.fail(
                format!("metadata.{k}"),
                "keys are 1 to 40 characters".to_owned(),
            );
        }
        if v.chars().count() > 500 {
            c.fail(format!("metadata.{k}"), "values are at most 500 characters");
        }
    }
}

impl CreateCustomer {
    /// The event payload, or every refused field (422).
    pub fn validate(self) -> Result<CustomerCreated, ApiError> {
        let mut c = Check::new();
        c.id("customer_id", &self.customer_id);
        if let Some(n) = &self.name {
            if n.chars().count() > MAX_TEXT {
                c.fail("name", format!("longer than {MAX_TEXT} characters"));
            }
        }
        if let Some(e) = &self.email {
            check_email(&mut c, e);
        }
        let currency = c.currency("currency", &self.currency);
        let timezone = self.timezone.unwrap_or_else(|| "UTC".to_owned());
        c.timezone("timezone", &timezone);
        let billing_country = self
            .billing_country
            .as_deref()
            .map(|v| check_country(&mut c, "billing_country", v));
        let address = self.address.map(|a| check_address(&mut c, a));
        let tax_ids = self.tax_ids.unwrap_or_default();
        check_tax_ids(&mut c, &tax_ids);
        let grace = self.invoice_grace_period_days.unwrap_or(0);
        c.days("invoice_grace_period_days", grace);
        let net = self.net_payment_term_days.unwrap_or(0);
        c.days("net_payment_term_days", net);
        let metadata = self.metadata.unwrap_or_default();
        check_metadata(&mut c, &metadata);
        if let Some(clock) = &self.test_clock_id {
            c.id("test_clock_id", clock);
        }
        c.finish()?;
        Ok(CustomerCreated {
            customer_id: self.customer_id,
            name: self.name.unwrap_or_default(),
            email: self.email,
            currency: currency.map(|c| c.code().to_owned()).unwrap_or_default(),
            timezone,
            billing_country,
            address,
            tax_ids,
            invoice_grace_period_days: grace,
            net_payment_term_days: net,
            metadata,
            test_clock_id: self.test_clock_id,
            tax_codes: self.tax_codes.unwrap_or_default(),
            tax_exempt: self.tax_exempt.unwrap_or_default(),
        })
    }
}

/// Refuse tax codes the tenant has no tax rate for.
async fn check_tax_codes(
    state: &AppState,
    tenant: &str,
    codes: Option<&Vec<String>>,
) -> Result<(), ApiError> {
    let mut c = Check::new();
    let codes = crate::catalog::check_codes(&mut c, "tax_codes", codes.cloned());
    c.finish()?;
    let mut c = Check::new();
    crate::catalog::check_tax_codes_exist(
        state,
        tenant,
        &mut c,
        crate::catalog::tax_code_fields(&codes),
    )
    .await?;
    c.finish()
}

impl UpdateCustomer {
    /// The event payload for `existing` (`None`: nothing to change), or every refused field.
    pub fn validate(self, existing: &CustomerView) -> Result<Option<CustomerUpdated>, ApiError> {
        let mut c = Check::new();
        if let Some(n) = &self.name {
            if n.chars().count() > MAX_TEXT {
                c.fail("name", format!("longer than {MAX_TEXT} characters"));
            }
        }
        if let Some(e) = &self.email {
            check_email(&mut c, e);
        }
        if let Some(cur) = &self.currency {
            if let Some(parsed) = c.currency("currency", cur) {
                if parsed.code() != existing.currency {
                    c.fail(
                        "currency",
                        format!(
                            "a customer's currency cannot change (it is {})",
                            existing.currency
                        ),
                    );
                }
            }
        }
        if let Some(clock) = &self.test_clock_id {
            if existing.test_clock_id.as_deref() != Some(clock.as_str()) {
                c.fail("test_clock_id", "a customer's test clock cannot change");
            }
        }
        if let Some(tz) = &self.timezone {
            c.timezone("timezone", tz);
        }
        let billing_country = self
            .billing_country
            .as_deref()
            .map(|v| check_country(&mut c, "billing_country", v));
        let address = self.address.map(|a| check_address(&mut c, a));
        if let Some(ids) = &self.tax_ids {
            check_tax_ids(&mut c, ids);
        }
        if let Some(d) = self.invoice_grace_period_days {
            c.days("invoice_grace_period_days", d);
        }
        if let Some(d) = self.net_payment_term_days {
            c.days("net_payment_term_days", d);
        }
        if let Some(m) = &self.metadata {
            check_metadata(&mut c, m);
        }
        c.finish()?;
        let update = CustomerUpdated {
            customer_id: existing.customer_id.clone(),
            name: self.name,
            email: self.email,
            timezone: self.timezone,
            billing_country,
            address,
            tax_ids: self.tax_ids,
            invoice_grace_period_days: self.invoice_grace_period_days,
            net_payment_term_days: self.net_payment_term_days,
            metadata: self.metadata,
            tax_codes: self.tax_codes,
            tax_exempt: self.tax_exempt,
        };
        let changes_nothing = update.name.is_none()
            && update.email.is_none()
            && update.timezone.is_none()
            && update.billing_country.is_none()
            && update.address.is_none()
            && update.tax_ids.is_none()
            && update.invoice_grace_period_days.is_none()
            && update.net_payment_term_days.is_none()
            && update.metadata.is_none()
            && update.tax_codes.is_none()
            && update.tax_exempt.is_none();
        Ok((!changes_nothing).then_some(update))
    }
}

/// The customer, or 404.
pub async fn existing(state: &AppState, tenant: &str, id: &str) -> Result<CustomerView, ApiError> {
    state
        .billing
        .customer(tenant, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no customer {id:?}")))
}

/// `POST /v1/customers`.
pub async fn create(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    ApiQuery(q): ApiQuery<WriteQuery>,
    ApiJson(body): ApiJson<CreateCustomer>,
) -> Result<Answer, ApiError> {
    let deadline = state.deadline(&q)?;
    let customer = body.validate()?;
    check_tax_codes(&state, &tenant, Some(&customer.tax_codes)).await?;
    if state
        .billing
        .customer(&tenant, &customer.customer_id)
        .await?
        .is_some()
    {
        return Err(ApiError::conflict_field(
            "customer_id",
            format!("a customer {:?} already exists", customer.customer_id),
        ));
    }
    let occurred_at = match &customer.test_clock_id {
        None => Utc::now(),
        Some(clock) => match state.clock(&tenant, clock).await? {
            Some(s) => s.now,
            None => {
                return Err(ApiError::invalid(
                    "test_clock_id",
                    format!("no test clock {clock:?}"),
                ))
            }
        },
    };
    let id = customer.customer_id.clone();
    let ev = LifecycleEvent {
        tenant_id: tenant.clone(),
        event_id: event_id(),
        occurred_at,
        payload: Lifecycle::CustomerCreated(customer),
    };
    idempotency::reserve(&state, &tenant, "customer", &id, "customer_id").await?;
    let at = match state.publish_lifecycle(&ev).await {
        Ok(at) => at,
        Err(e) => {
            idempotency::unreserve(&state, &tenant, "customer", &id).await;
            return Err(e);
        }
    };
    if state.lifecycle_visible(at, deadline).await {
        if let Ok(Some(view)) = state.billing.customer(&tenant, &id).await {
            return answer(StatusCode::CREATED, view);
        }
    }
    Ok(pending(&ev.event_id, "customer", &id))
}

/// `POST /v1/customers/{id}`.
pub async fn update(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<WriteQuery>,
    ApiJson(body): ApiJson<UpdateCustomer>,
) -> Result<Answer, ApiError> {
    let deadline = state.deadline(&q)?;
    let current = existing(&state, &tenant, &id).await?;
    let Some(update) = body.validate(&current)? else {
        return answer(StatusCode::OK, current);
    };
    check_tax_codes(&state, &tenant, update.tax_codes.as_ref()).await?;
    let occurred_at = state.customer_now(&tenant, &current).await?;
    let ev = LifecycleEvent {
        tenant_id: tenant.clone(),
        event_id: event_id(),
        occurred_at,
        payload: Lifecycle::CustomerUpdated(update),
    };
    let at = state.publish_lifecycle(&ev).await?;
    if state.lifecycle_visible(at, deadline).await {
        if let Ok(Some(view)) = state.billing.customer(&tenant, &id).await {
            return answer(StatusCode::OK, view);
        }
    }
    Ok(pending(&ev.event_id, "customer", &id))
}

/// `GET /v1/customers/{id}`.
pub async fn get(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<CustomerView>, ApiError> {
    Ok(Json(existing(&state, &tenant, &id).await?))
}

/// `GET /v1/customers?limit=&starting_after=`: newest first.
pub async fn list(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = page_limit(q.limit)?;
    if let Some(after) = &q.starting_after {
        if state.billing.customer(&tenant, after).await?.is_none() {
            return Err(unknown_cursor(after));
        }
    }
    let items = state
        .billing
        .customers(&tenant, limit as i32 + 1, q.starting_after.as_deref())
        .await?;
    Ok(Json(page(items, limit)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::parse_json;

    fn names(e: ApiError) -> Vec<String> {
        match e {
            ApiError::Fields { params, .. } => params.into_iter().map(|p| p.name).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_customer_gets_defaults_and_normalized_codes() {
        let body: CreateCustomer = parse_json(
            br#"{"customer_id": "cus-1", "currency": "eur", "billing_country": "fr",
                 "address": {"city": "Lyon", "country": "fr"}, "metadata": {"crm": "42"}}"#,
        )
        .unwrap();
        let c = body.validate().unwrap();
        assert_eq!(c.currency, "EUR");
        assert_eq!(c.timezone, "UTC");
        assert_eq!(c.billing_country.as_deref(), Some("FR"));
        assert_eq!(c.address.unwrap().country.as_deref(), Some("FR"));
        assert_eq!(c.invoice_grace_period_days, 0);
        assert_eq!(c.metadata["crm"], "42");
    }

    #[test]
    fn every_bad_field_is_named() {
        let body: CreateCustomer = parse_json(
            br#"{"customer_id": "a/b", "currency": "EURO", "timezone": "Europe/Lyon",
                 "invoice_grace_period_days": -1, "net_payment_term_days": -3,
                 "email": "nobody", "billing_country": "FRA"}"#,
        )
        .unwrap();
        assert_eq!(
            names(body.validate().unwrap_err()),
            [
                "customer_id",
                "email",
                "currency",
                "timezone",
                "billing_country",
                "invoice_grace_period_days",
                "net_payment_term_days"
            ]
        );
    }

    fn view() -> CustomerView {
        CustomerView::new(
            &CustomerCreated::new("cus-1", "Acme", "EUR", "UTC"),
            "2026-01-01T00:00:00Z".parse().unwrap(),
        )
    }

    #[test]
    fn updates_keep_currency_and_clock() {
        let u: UpdateCustomer = parse_json(br#"{"currency": "USD"}"#).unwrap();
        assert_eq!(names(u.validate(&view()).unwrap_err()), ["currency"]);
        let u: UpdateCustomer = parse_json(br#"{"currency": "eur"}"#).unwrap();
        assert_eq!(
            u.validate(&view()).unwrap(),
            None,
            "same currency: nothing to do"
        );
        let u: UpdateCustomer = parse_json(br#"{"test_clock_id": "clock_1"}"#).unwrap();
        assert_eq!(names(u.validate(&view()).unwrap_err()), ["test_clock_id"]);
        let u: UpdateCustomer =
            parse_json(br#"{"name": "Acme SA", "net_payment_term_days": 30}"#).unwrap();
        let ev = u.validate(&view()).unwrap().unwrap();
        assert_eq!(ev.customer_id, "cus-1");
        assert_eq!(ev.name.as_deref(), Some("Acme SA"));
        assert_eq!(ev.net_payment_term_days, Some(30));
        assert_eq!(ev.email, None);
        assert!(parse_json::<UpdateCustomer>(br#"{"customer_id": "x"}"#).is_err());
    }
}
