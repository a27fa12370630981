//! `/v1/invoices` (read side; the invoicer writes them): list with filters, read, a customer's invoices, early
//! finalization of a draft (publishes `InvoiceFinalizeRequested`) and the void of a finalized, unpaid invoice
//! (publishes `InvoiceVoidRequested`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use billing_runtime::http::Tenant;
use billing_schemas::lifecycle::{
    InvoiceFinalizeRequested, InvoiceVoidRequested, Lifecycle, LifecycleEvent,
    OneOffInvoiceRequested,
};
use billing_store::invoices::{void_refusal, InvoiceStatus, InvoiceView, VoidRefusal};
use chrono::{DateTime, Utc};

use crate::customers;
use crate::error::ApiError;
use crate::invoice_cache::Cached;
use crate::request::{page, page_limit, parse_instant, ApiJson, ApiQuery, WriteQuery};
use crate::wait::{answer, event_id, pending, Answer};
use crate::AppState;

/// Query of `GET /v1/invoices`.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct InvoiceQuery {
    customer_id: Option<String>,
    status: Option<String>,
    period_from: Option<String>,
    period_to: Option<String>,
    limit: Option<i64>,
    starting_after: Option<String>,
}

/// Query of `GET /v1/customers/{id}/invoices`.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CustomerInvoiceQuery {
    status: Option<String>,
    period_from: Option<String>,
    period_to: Option<String>,
    limit: Option<i64>,
    starting_after: Option<String>,
}

/// Body of `POST /v1/invoices/{id}/finalize`: nothing (an empty body or `{}`).
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Finalize {}

/// One fee of `POST /v1/invoices` (Lago's one-off invoice fee): an add-on, its units (default 1), and a unit
/// price and description replacing the add-on's.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OneOffFeeBody {
    add_on_code: String,
    #[serde(default)]
    #[schema(schema_with = crate::openapi::decimal)]
    units: Option<serde_json::Value>,
    #[serde(default)]
    #[schema(schema_with = crate::openapi::decimal)]
    unit_amount: Option<serde_json::Value>,
    #[serde(default)]
    description: Option<String>,
}

/// `POST /v1/invoices`: a one-off invoice of add-ons, issued at once.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOneOff {
    #[serde(alias = "external_customer_id")]
    customer_id: String,
    /// Accepted only when equal to the customer's.
    #[serde(default)]
    currency: Option<String>,
    fees: Vec<OneOffFeeBody>,
}

/// Body of `POST /v1/invoices/{id}/void`: an optional reason.
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Void {
    #[serde(default)]
    reason: Option<String>,
}

/// Which invoices a list keeps.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// Only this customer's.
    pub customer_id: Option<String>,
    /// Only in this status.
    pub status: Option<InvoiceStatus>,
    /// Billing date on or after.
    pub from: Option<DateTime<Utc>>,
    /// Billing date on or before.
    pub to: Option<DateTime<Utc>>,
}

impl Filter {
    /// Parse the query's filters.
    pub fn parse(
        customer_id: Option<String>,
        status: Option<&str>,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<Self, ApiError> {
        let status = match status {
            None => None,
            Some("draft") => Some(InvoiceStatus::Draft),
            Some("finalized") => Some(InvoiceStatus::Finalized),
            Some("void") => Some(InvoiceStatus::Void),
            Some(other) => {
                return Err(ApiError::malformed(
                    "status",
                    format!("{other:?} is not draft, finalized or void"),
                ))
            }
        };
        let from = from
            .map(|s| parse_instant("period_from", s, false))
            .transpose()?;
        let to = to
            .map(|s| parse_instant("period_to", s, true))
            .transpose()?;
        if let (Some(f), Some(t)) = (from, to) {
            if f > t {
                return Err(ApiError::malformed(
                    "period_from",
                    "is after period_to".to_owned(),
                ));
            }
        }
        Ok(Filter {
            customer_id,
            status,
            from,
            to,
        })
    }

    /// Whether the list keeps the invoice.
    pub fn keep(&self, inv: &InvoiceView) -> bool {
        self.keeps(&inv.customer_id, inv.status, inv.billing_date)
    }

    /// Whether the list keeps an invoice of this customer, status and billing date.
    pub fn keeps(
        &self,
        customer: &str,
        status: InvoiceStatus,
        billing_date: DateTime<Utc>,
    ) -> bool {
        self.customer_id.as_ref().is_none_or(|c| c == customer)
            && self.status.is_none_or(|s| s == status)
            && self.from.is_none_or(|f| billing_date >= f)
            && self.to.is_none_or(|t| billing_date <= t)
    }
}

/// Up to `limit + 1` invoices newest first after the cursor.
async fn fetch(
    state: &AppState,
    tenant: &str,
    filter: &Filter,
    limit: usize,
    after: Option<&str>,
) -> Result<Vec<InvoiceView>, ApiError> {
    if let Some(a) = after {
        if state.billing.invoice(tenant, a).await?.is_none() {
            return Err(crate::request::unknown_cursor(a));
        }
    }
    let Some(customer) = &filter.customer_id else {
        return Ok(state
            .billing
            .invoices(tenant, limit + 1, after, |i| filter.keep(i))
            .await?);
    };
    // A customer's invoices: its index, newest first (ids sort by billing date).
    let ids = state.billing.invoice_ids_of(tenant, customer).await?;
    let mut out = Vec::new();
    for id in ids {
        if after.is_some_and(|a| id.as_str() >= a) {
            continue;
        }
        if let Some(inv) = state.billing.invoice(tenant, &id).await? {
            if filter.keep(&inv) {
                out.push(inv);
                if out.len() > limit {
                    break;
                }
            }
        }
    }
    Ok(out)
}

/// `GET /v1/invoices?customer_id=&status=&period_from=&period_to=&limit=&starting_after=`.
pub async fn list(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    ApiQuery(q): ApiQuery<InvoiceQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = page_limit(q.limit)?;
    let filter = Filter::parse(
        q.customer_id,
        q.status.as_deref(),
        q.period_from.as_deref(),
        q.period_to.as_deref(),
    )?;
    let items = fetch(&state, &tenant, &filter, limit, q.starting_after.as_deref()).await?;
    Ok(Json(page(shown(&state, &tenant, items).await?, limit)?))
}

/// `GET /v1/customers/{id}/invoices`.
pub async fn list_of_customer(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(customer): Path<String>,
    ApiQuery(q): ApiQuery<CustomerInvoiceQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = page_limit(q.limit)?;
    customers::existing(&state, &tenant, &customer).await?;
    let filter = Filter::parse(
        Some(customer),
        q.status.as_deref(),
        q.period_from.as_deref(),
        q.period_to.as_deref(),
    )?;
    let items = fetch(&state, &tenant, &filter, limit, q.starting_after.as_deref()).await?;
    Ok(Json(page(shown(&state, &tenant, items).await?, limit)?))
}

/// An invoice of the tenant, or 404.
pub async fn existing(state: &AppState, tenant: &str, id: &str) -> Result<InvoiceView, ApiError> {
    state
        .billing
        .invoice(tenant, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no invoice {id:?}")))
}

/// `GET /v1/invoices/{id}`.
///
/// The answer carries a strong `ETag` (a hash of its body: any change to the invoice or its payment changes it); a
/// request whose `If-None-Match` names it (or `*`) gets `304 Not Modified` without a body. An issued invoice's answer
/// may come from the instance's cache (`invoice_cache`).
pub async fn get(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<axum::response::Response, ApiError> {
    let cached = match state.invoice_cache.get(&tenant, &id) {
        Some(c) => c,
        None => {
            let read_at = std::time::Instant::now();
            // The invoice and its payment, read at once.
            let (inv, payment) = tokio::try_join!(existing(&state, &tenant, &id), async {
                Ok::<_, ApiError>(state.payments.invoice_payment(&tenant, &id).await?)
            })?;
            let issued = inv.status != InvoiceStatus::Draft;
            let customer = inv.customer_id.clone();
            let body = crate::payments::invoice_json_with(inv, payment)?;
            let bytes = serde_json::to_vec(&body).map_err(anyhow::Error::from)?;
            let answer = Cached {
                etag: etag_of(&bytes),
                body: bytes.into(),
            };
            if issued {
                state
                    .invoice_cache
                    .put(&tenant, &id, &customer, read_at, answer.clone());
            }
            answer
        }
    };
    conditional(&headers, cached)
}

/// A strong ETag: the first 16 bytes of the body's SHA-256, quoted.
fn etag_of(body: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(body);
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

/// The answer, or `304 Not Modified` without a body when `If-None-Match` names its ETag (or `*`).
fn conditional(
    headers: &axum::http::HeaderMap,
    answer: Cached,
) -> Result<axum::response::Response, ApiError> {
    use axum::http::{header, HeaderValue, StatusCode};
    use axum::response::IntoResponse;
    let matches = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == answer.etag || t == "*");
    let tag = HeaderValue::from_str(&answer.etag).map_err(anyhow::Error::from)?;
    if matches {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, tag)]).into_response());
    }
    Ok((
        [
            (header::ETAG, tag),
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
        ],
        answer.body,
    )
        .into_response())
}

/// The invoices of a page as the API shows them (with their payment).
async fn shown(
    state: &AppState,
    tenant: &str,
    items: Vec<InvoiceView>,
) -> Result<Vec<serde_json::Value>, ApiError> {
    let mut out = Vec::with_capacity(items.len());
    for inv in items {
        out.push(crate::payments::invoice_json(state, tenant, inv).await?);
    }
    Ok(out)
}

/// `POST /v1/invoices/{id}/finalize`: ends a draft's grace period now. 409 for an invoice already finalized.
pub async fn finalize(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<WriteQuery>,
    ApiJson(_): ApiJson<Finalize>,
) -> Result<Answer, ApiError> {
    let deadline = state.deadline(&q)?;
    let inv = existing(&state, &tenant, &id).await?;
    if inv.status != InvoiceStatus::Draft {
        return Err(ApiError::Conflict(format!(
            "invoice {id:?} is already finalized (number {})",
            inv.number.as_deref().unwrap_or("?")
        )));
    }
    let customer = customers::existing(&state, &tenant, &inv.customer_id).await?;
    let now = state.customer_now(&tenant, &customer).await?;
    let ev = LifecycleEvent {
        tenant_id: tenant.clone(),
        event_id: event_id(),
        occurred_at: now,
        payload: Lifecycle::InvoiceFinalizeRequested(InvoiceFinalizeRequested {
            customer_id: inv.customer_id.clone(),
            invoice_id: id.clone(),
        }),
    };
    let at = state.publish_lifecycle(&ev).await?;
    if state.lifecycle_visible(at, deadline).await {
        let finalized = state
            .poll(deadline, || async {
                Ok(state
                    .billing
                    .invoice(&tenant, &id)
                    .await?
                    .filter(|i| i.status == InvoiceStatus::Finalized))
            })
            .await;
        if let Some(inv) = finalized {
            return answer(
                StatusCode::OK,
                crate::payments::invoice_json(&state, &tenant, inv).await?,
            );
        }
    }
    Ok(pending(&ev.event_id, "invoice", &id))
}

/// `POST /v1/invoices`: invoices add-ons to a customer at once, outside any period (Lago's one-off invoice):
/// numbered in the invoices' sequence, taxed like any invoice (an add-on's tax codes first), collected by
/// payments. 422 naming the field for an unknown customer or add-on, a currency other than the customer's, or
/// units that are not above zero.
pub async fn create_one_off(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    ApiQuery(q): ApiQuery<WriteQuery>,
    ApiJson(body): ApiJson<CreateOneOff>,
) -> Result<Answer, ApiError> {
    let deadline = state.deadline(&q)?;
    let mut c = crate::request::Check::new();
    c.id("customer_id", &body.customer_id);
    if body.fees.is_empty() {
        c.fail("fees", "at least one fee");
    }
    if body.fees.len() > 100 {
        c.fail("fees", "at most 100 fees");
    }
    c.finish()?;
    let Some(customer) = state.billing.customer(&tenant, &body.customer_id).await? else {
        return Err(ApiError::invalid(
            "customer_id",
            format!("no customer {:?}", body.customer_id),
        ));
    };
    let mut c = crate::request::Check::new();
    if let Some(cur) = &body.currency {
        if !cur.eq_ignore_ascii_case(&customer.currency) {
            c.fail(
                "currency",
                format!(
                    "customer {:?} is billed in {}",
                    customer.customer_id, customer.currency
                ),
            );
        }
    }
    let mut fees = Vec::with_capacity(body.fees.len());
    for (i, f) in body.fees.into_iter().enumerate() {
        let at = |field: &str| format!("fees[{i}].{field}");
        let Some(a) = crate::catalog::add_on(&state, &tenant, &f.add_on_code).await? else {
            c.fail(at("add_on_code"), format!("no add-on {:?}", f.add_on_code));
            continue;
        };
        let units = match &f.units {
            None => Some(rust_decimal::Decimal::ONE),
            Some(v) => c.amount(&at("units"), v),
        };
        if units.is_some_and(|u| u.is_zero()) {
            c.fail(at("units"), "must be above 0");
        }
        let unit_amount = match &f.unit_amount {
            Some(v) => c.amount(&at("unit_amount"), v).map(|d| d.to_string()),
            None if a.amount_currency != customer.currency => {
                c.fail(
                    at("add_on_code"),
                    format!(
                        "add-on {:?} is priced in {}; customer {:?} is billed in {}: give a unit_amount",
                        a.code, a.amount_currency, customer.customer_id, customer.currency
                    ),
                );
                None
            }
            None => Some(a.amount.clone()),
        };
        if let Some(d) = &f.description {
            c.text(&at("description"), d, 1000);
        }
        if let (Some(units), Some(unit_amount)) = (units, unit_amount) {
            fees.push(billing_schemas::lifecycle::OneOffFee {
                add_on_code: a.code.clone(),
                name: a.name.clone(),
                units: units.to_string(),
                unit_amount,
                description: f.description,
                tax_codes: a.tax_codes.clone(),
            });
        }
    }
    c.finish()?;
    let now = state.customer_now(&tenant, &customer).await?;
    let id = one_off_invoice_id(now);
    let ev = LifecycleEvent {
        tenant_id: tenant.clone(),
        event_id: event_id(),
        occurred_at: now,
        payload: Lifecycle::OneOffInvoiceRequested(OneOffInvoiceRequested {
            invoice_id: id.clone(),
            customer_id: customer.customer_id.clone(),
            fees,
        }),
    };
    let at = state.publish_lifecycle(&ev).await?;
    if state.lifecycle_visible(at, deadline).await {
        let issued = state
            .poll(deadline, || async {
                Ok(state
                    .billing
                    .invoice(&tenant, &id)
                    .await?
                    .filter(|i| i.number.is_some()))
            })
            .await;
        if let Some(inv) = issued {
            return answer(
                StatusCode::CREATED,
                crate::payments::invoice_json(&state, &tenant, inv).await?,
            );
        }
    }
    Ok(pending(&ev.event_id, "invoice", &id))
}

/// The id of a one-off invoice (or of bought credits' invoice) issued at `at`: `inv_<date>_<16 hex>` like every invoice (so id order stays
/// billing-date order), the hex part random.
pub(crate) fn one_off_invoice_id(at: DateTime<Utc>) -> String {
    let hex = uuid::Uuid::new_v4().simple().to_string();
    format!("inv_{}_{}", at.format("%Y%m%d"), &hex[..16])
}

/// `POST /v1/invoices/{id}/void`: voids a finalized invoice nothing was paid or credited on (409 otherwise: a
/// paid invoice is corrected by a credit note). Its number is kept; `invoice.voided` is published and payments
/// stop collecting it.
pub async fn void(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<WriteQuery>,
    ApiJson(body): ApiJson<Void>,
) -> Result<Answer, ApiError> {
    let deadline = state.deadline(&q)?;
    if let Some(r) = &body.reason {
        let mut c = crate::request::Check::new();
        c.text("reason", r, 500);
        c.finish()?;
    }
    let inv = existing(&state, &tenant, &id).await?;
    let payment = state.payments.invoice_payment(&tenant, &id).await?;
    let credited = state.credit_notes.of_invoice(&tenant, &id).await?;
    match void_refusal(&inv, &inv.customer_id, payment.as_ref(), &credited) {
        Ok(()) => {}
        Err(VoidRefusal::AlreadyVoid) => {
            return Err(ApiError::conflict_field(
                "invoice_id",
                format!("invoice {id:?} is already void"),
            ))
        }
        Err(VoidRefusal::Refused(field, reason)) => {
            return Err(ApiError::conflict_field(field, reason))
        }
    }
    let customer = customers::existing(&state, &tenant, &inv.customer_id).await?;
    let now = state.customer_now(&tenant, &customer).await?;
    let ev = LifecycleEvent {
        tenant_id: tenant.clone(),
        event_id: event_id(),
        occurred_at: now,
        payload: Lifecycle::InvoiceVoidRequested(InvoiceVoidRequested {
            customer_id: inv.customer_id.clone(),
            invoice_id: id.clone(),
            reason: body.reason,
        }),
    };
    let at = state.publish_lifecycle(&ev).await?;
    if state.lifecycle_visible(at, deadline).await {
        let voided = state
            .poll(deadline, || async {
                Ok(state
                    .billing
                    .invoice(&tenant, &id)
                    .await?
                    .filter(|i| i.status == InvoiceStatus::Void))
            })
            .await;
        if let Some(inv) = voided {
            return answer(
                StatusCode::OK,
                crate::payments::invoice_json(&state, &tenant, inv).await?,
            );
        }
    }
    Ok(pending(&ev.event_id, "invoice", &id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keeps(f: &Filter, customer: &str, status: InvoiceStatus, date: &str) -> bool {
        f.keeps(customer, status, date.parse().unwrap())
    }

    #[test]
    fn filters_on_customer_status_and_billing_date() {
        let f = Filter::parse(
            Some("c1".into()),
            Some("draft"),
            Some("2026-02-01"),
            Some("2026-02-28"),
        )
        .unwrap();
        assert!(keeps(
            &f,
            "c1",
            InvoiceStatus::Draft,
            "2026-02-01T00:00:00Z"
        ));
        assert!(keeps(
            &f,
            "c1",
            InvoiceStatus::Draft,
            "2026-02-28T23:00:00Z"
        ));
        assert!(!keeps(
            &f,
            "c2",
            InvoiceStatus::Draft,
            "2026-02-01T00:00:00Z"
        ));
        assert!(!keeps(
            &f,
            "c1",
            InvoiceStatus::Finalized,
            "2026-02-01T00:00:00Z"
        ));
        assert!(!keeps(
            &f,
            "c1",
            InvoiceStatus::Draft,
            "2026-03-01T00:00:00Z"
        ));
        assert!(!keeps(
            &f,
            "c1",
            InvoiceStatus::Draft,
            "2026-01-31T23:59:59Z"
        ));
        assert!(keeps(
            &Filter::default(),
            "c9",
            InvoiceStatus::Finalized,
            "2020-01-01T00:00:00Z"
        ));
        assert!(Filter::parse(None, Some("paid"), None, None).is_err());
        assert!(Filter::parse(None, None, Some("2026-03-01"), Some("2026-02-01")).is_err());
        assert!(Filter::parse(None, None, Some("soon"), None).is_err());
    }
}
