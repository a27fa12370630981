//! Payments through the API: a customer's payment methods (`/v1/customers/{id}/payment_methods`), an invoice's
//! payment attempts (`GET /v1/invoices/{id}/payments`) and `POST /v1/invoices/{id}/pay` (try again now, or record a
//! payment received outside the provider, as Stripe's `paid_out_of_band`). Writes publish on `billing.payments`
//! and wait until the invoicer has materialized them; the payments service acts on them.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use billing_runtime::http::Tenant;
use billing_schemas::payment::{
    InvoicePaidOutOfBand, InvoiceRef, Payment, PaymentEvent, PaymentMethodAdded, PaymentMethodRef,
};
use billing_schemas::Encoding;
use billing_store::invoices::{InvoiceStatus, InvoiceView};
use billing_store::payments::InvoicePaymentView;
use rust_decimal::Decimal;

use crate::customers;
use crate::error::ApiError;
use crate::request::{
    after_cursor, page, page_limit, ApiJson, ApiQuery, Check, PageQuery, WriteQuery, MAX_ID_CHARS,
};
use crate::wait::{answer, event_id, pending, Answer};
use crate::AppState;

/// Body of `POST /v1/customers/{id}/payment_methods`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMethod {
    /// `card` or `sepa_debit`.
    kind: String,
    /// The provider's token or payment method id (`pm_card_visa`); never a card number.
    token: String,
    /// Charge it from now on (the first method of a customer is the default anyway).
    #[serde(default)]
    set_default: bool,
}

/// Body of `POST /v1/invoices/{id}/pay`.
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Pay {
    /// Record a payment received outside the provider instead of charging.
    #[serde(default)]
    paid_out_of_band: bool,
    /// With `paid_out_of_band`: the amount received (default: what remains due).
    #[serde(default)]
    #[schema(schema_with = crate::openapi::decimal)]
    amount: Option<serde_json::Value>,
    /// With `paid_out_of_band`: the payer's reference (a bank transfer's).
    #[serde(default)]
    reference: Option<String>,
}

/// Body of the payment-method actions that take none (`{}` or empty).
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// The payment view of an invoice: its row, or what a finalized invoice without one means.
pub fn payment_of(inv: &InvoiceView, row: Option<InvoicePaymentView>) -> serde_json::Value {
    if inv.status != InvoiceStatus::Finalized {
        return serde_json::Value::Null;
    }
    let row = row.unwrap_or_else(|| {
        InvoicePaymentView::pending(&inv.invoice_id, &inv.customer_id, &inv.currency)
    });
    // Nothing to collect is collected.
    let status = if inv.amount_due.is_zero() && row.status == "pending" {
        "paid".to_owned()
    } else {
        row.status.clone()
    };
    let remaining = if status == "paid" {
        Decimal::ZERO
    } else {
        (inv.amount_due - row.amount_paid).max(Decimal::ZERO)
    };
    serde_json::json!({
        "status": status,
        "amount_paid": row.amount_paid.to_string(),
        "amount_remaining": remaining.to_string(),
        "attempt_count": row.attempts,
        "next_payment_attempt": row.next_retry_at,
        "last_payment_error": row.last_code.as_ref().map(|c| serde_json::json!({
            "code": c,
            "message": row.last_reason,
        })),
        "paid_at": row.paid_at,
        "reference": row.reference,
    })
}

/// An invoice as the API shows it: its stored view with `payment` and `payment_status`.
pub async fn invoice_json(
    state: &AppState,
    tenant: &str,
    inv: InvoiceView,
) -> Result<serde_json::Value, ApiError> {
    let row = state
        .payments
        .invoice_payment(tenant, &inv.invoice_id)
        .await?;
    invoice_json_with(inv, row)
}

/// As [`invoice_json`], with the invoice's payment row already read.
pub fn invoice_json_with(
    inv: InvoiceView,
    row: Option<InvoicePaymentView>,
) -> Result<serde_json::Value, ApiError> {
    let payment = payment_of(&inv, row);
    let mut v = serde_json::to_value(&inv).map_err(anyhow::Error::from)?;
    v["payment_status"] = payment
        .get("status")
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    v["payment"] = payment;
    Ok(v)
}

async fn publish(state: &AppState, ev: &PaymentEvent) -> Result<(i32, i64), ApiError> {
    Ok(state.publisher.payment_at(ev, Encoding::Json).await?)
}

async fn methods_json(
    state: &AppState,
    tenant: &str,
    customer: &str,
) -> Result<serde_json::Value, ApiError> {
    let (methods, default) = state.payments.payment_methods(tenant, customer).await?;
    Ok(serde_json::json!({
        "object": "list",
        "data": methods.iter().map(|m| method_json(customer, m)).collect::<Vec<_>>(),
        "default_payment_method": default,
        "has_more": false,
    }))
}

fn method_json(
    customer: &str,
    m: &billing_store::payments::PaymentMethodView,
) -> serde_json::Value {
    serde_json::json!({
        "object": "payment_method",
        "id": m.payment_method_id,
        "customer_id": customer,
        "kind": m.kind,
        "token": m.token,
        "created_at": m.created_at,
        "is_default": m.is_default,
    })
}

/// `GET /v1/customers/{id}/payment_methods?limit=&starting_after=`: the customer's methods, oldest first, and its
/// default.
pub async fn list_methods(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(customer): Path<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = page_limit(q.limit)?;
    customers::existing(&state, &tenant, &customer).await?;
    let mut all = methods_json(&state, &tenant, &customer).await?;
    let methods = all["data"].as_array().cloned().unwrap_or_default();
    let methods = after_cursor(methods, q.starting_after.as_deref(), |m| {
        m["id"].as_str().unwrap_or_default()
    })?;
    let page = page(methods, limit)?;
    all["data"] = page["data"].clone();
    all["has_more"] = page["has_more"].clone();
    Ok(Json(all))
}

/// `POST /v1/customers/{id}/payment_methods`: add a provider token; 201 with the method once materialized.
pub async fn add_method(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(customer): Path<String>,
    ApiQuery(q): ApiQuery<WriteQuery>,
    ApiJson(body): ApiJson<AddMethod>,
) -> Result<Answer, ApiError> {
    let deadline = state.deadline(&q)?;
    let mut c = Check::new();
    if !matches!(body.kind.as_str(), "card" | "sepa_debit") {
        c.fail(
            "kind",
            format!("{:?} is neither card nor sepa_debit", body.kind),
        );
    }
    c.id("token", &body.token);
    if body.token.chars().filter(char::is_ascii_digit).count() >= 12 {
        c.fail(
            "token",
            "looks like a card or account number: send the provider's token, never the number",
        );
    }
    c.finish()?;
    let found = customers::existing(&state, &tenant, &customer).await?;
    let now = state.customer_now(&tenant, &found).await?;
    let id = format!("pm_{}", uuid::Uuid::new_v4().simple());
    let ev = PaymentEvent {
        tenant_id: tenant.clone(),
        event_id: event_id(),
        occurred_at: now,
        payload: Payment::PaymentMethodAdded(PaymentMethodAdded {
            customer_id: customer.clone(),
            payment_method_id: id.clone(),
            kind: body.kind,
            token: body.token,
            set_default: body.set_default,
        }),
    };
    let at = publish(&state, &ev).await?;
    if state.payments_visible(at, deadline).await {
        let (methods, _) = state.payments.payment_methods(&tenant, &customer).await?;
        if let Some(m) = methods.iter().find(|m| m.payment_method_id == id) {
            return answer(StatusCode::CREATED, method_json(&customer, m));
        }
    }
    Ok(pending(&ev.event_id, "payment_method", &id))
}

async fn existing_method(
    state: &AppState,
    tenant: &str,
    customer: &str,
    id: &str,
) -> Result<(), ApiError> {
    customers::existing(state, tenant, customer).await?;
    let (methods, _) = state.payments.payment_methods(tenant, customer).await?;
    if id.chars().count() > MAX_ID_CHARS || !methods.iter().any(|m| m.payment_method_id == id) {
        return Err(ApiError::NotFound(format!(
            "customer {customer:?} has no payment method {id:?}"
        )));
    }
    Ok(())
}

/// `POST /v1/customers/{id}/payment_methods/{pm}/default`.
pub async fn set_default(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path((customer, id)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<WriteQuery>,
    ApiJson(_): ApiJson<Empty>,
) -> Result<Answer, ApiError> {
    method_change(state, tenant, customer, id, q, true).await
}

/// `DELETE /v1/customers/{id}/payment_methods/{pm}`.
pub async fn remove_method(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path((customer, id)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<WriteQuery>,
) -> Result<Answer, ApiError> {
    method_change(state, tenant, customer, id, q, false).await
}

async fn method_change(
    state: AppState,
    tenant: String,
    customer: String,
    id: String,
    q: WriteQuery,
    make_default: bool,
) -> Result<Answer, ApiError> {
    let deadline = state.deadline(&q)?;
    existing_method(&state, &tenant, &customer, &id).await?;
    let found = customers::existing(&state, &tenant, &customer).await?;
    let now = state.customer_now(&tenant, &found).await?;
    let r = PaymentMethodRef {
        customer_id: customer.clone(),
        payment_method_id: id.clone(),
    };
    let ev = PaymentEvent {
        tenant_id: tenant.clone(),
        event_id: event_id(),
        occurred_at: now,
        payload: if make_default {
            Payment::DefaultPaymentMethodSet(r)
        } else {
            Payment::PaymentMethodRemoved(r)
        },
    };
    let at = publish(&state, &ev).await?;
    if state.payments_visible(at, deadline).await {
        return answer(
            StatusCode::OK,
            methods_json(&state, &tenant, &customer).await?,
        );
    }
    Ok(pending(&ev.event_id, "payment_method", &id))
}

/// `GET /v1/invoices/{id}/payments`: the invoice's payment and every attempt, first first.
pub async fn attempts(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let inv = crate::invoices::existing(&state, &tenant, &id).await?;
    let row = state.payments.invoice_payment(&tenant, &id).await?;
    let attempts = state.payments.attempts_of(&tenant, &id).await?;
    Ok(Json(serde_json::json!({
        "invoice_id": id,
        "payment": payment_of(&inv, row),
        "attempts": attempts,
    })))
}

/// `POST /v1/invoices/{id}/pay`: charge the default method again now, or (`paid_out_of_band`) record a payment
/// received outside the provider. 409 for a draft, a void invoice, an invoice already paid, or one with a charge
/// in progress.
pub async fn pay(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<WriteQuery>,
    ApiJson(body): ApiJson<Pay>,
) -> Result<Answer, ApiError> {
    let deadline = state.deadline(&q)?;
    let inv = crate::invoices::existing(&state, &tenant, &id).await?;
    match inv.status {
        InvoiceStatus::Finalized => {}
        InvoiceStatus::Draft => {
            return Err(ApiError::Conflict(format!(
                "invoice {id:?} is a draft: finalize it before paying it"
            )))
        }
        InvoiceStatus::Void => {
            return Err(ApiError::Conflict(format!(
                "invoice {id:?} is void: nothing is owed on it"
            )))
        }
    }
    let row = state.payments.invoice_payment(&tenant, &id).await?;
    let before = payment_of(&inv, row.clone());
    if before["status"] == "paid" {
        return Err(ApiError::Conflict(format!(
            "invoice {id:?} is already paid"
        )));
    }
    // A charge the provider may be taking now would collect a second time what this records or retries.
    let attempts = state.payments.attempts_of(&tenant, &id).await?;
    if let Some(a) = attempts.iter().find(|a| a.status == "started") {
        return Err(ApiError::Conflict(format!(
            "attempt {} on invoice {id:?} is in progress at the provider; try again once it has an outcome",
            a.attempt_number
        )));
    }
    let paid = row.as_ref().map_or(Decimal::ZERO, |r| r.amount_paid);
    let remaining = (inv.amount_due - paid).max(Decimal::ZERO);
    let mut c = Check::new();
    if !body.paid_out_of_band && (body.amount.is_some() || body.reference.is_some()) {
        c.fail(
            "paid_out_of_band",
            "amount and reference go with paid_out_of_band: true",
        );
    }
    let amount = match &body.amount {
        Some(v) => c.amount("amount", v),
        None => Some(remaining),
    };
    if let Some(a) = amount {
        if body.paid_out_of_band && (a.is_zero() || a > remaining) {
            c.fail(
                "amount",
                format!("{a} is not in (0, {remaining}], what remains due"),
            );
        }
        if a.scale() > inv_minor_units(&inv) {
            c.fail(
                "amount",
                format!("{a} has more decimals than {} has", inv.currency),
            );
        }
    }
    if let Some(r) = &body.reference {
        c.text("reference", r, 255);
    }
    c.finish()?;
    let customer = customers::existing(&state, &tenant, &inv.customer_id).await?;
    if !body.paid_out_of_band {
        let (_, default) = state
            .payments
            .payment_methods(&tenant, &inv.customer_id)
            .await?;
        if default.is_none() {
            return Err(ApiError::Conflict(format!(
                "customer {:?} has no default payment method to charge: add one, or record a payment with \
                 paid_out_of_band",
                inv.customer_id
            )));
        }
    }
    let now = state.customer_now(&tenant, &customer).await?;
    let payload = if body.paid_out_of_band {
        Payment::InvoicePaidOutOfBand(InvoicePaidOutOfBand {
            invoice_id: id.clone(),
            customer_id: inv.customer_id.clone(),
            currency: inv.currency.clone(),
            amount: amount.unwrap_or(remaining).to_string(),
            reference: body.reference.clone().unwrap_or_default(),
        })
    } else {
        Payment::PaymentRetryRequested(InvoiceRef {
            invoice_id: id.clone(),
            customer_id: inv.customer_id.clone(),
        })
    };
    let ev = PaymentEvent {
        tenant_id: tenant.clone(),
        event_id: event_id(),
        occurred_at: now,
        payload,
    };
    let at = publish(&state, &ev).await?;
    if state.payments_visible(at, deadline).await {
        let inv = crate::invoices::existing(&state, &tenant, &id).await?;
        return answer(StatusCode::OK, invoice_json(&state, &tenant, inv).await?);
    }
    Ok(pending(&ev.event_id, "invoice", &id))
}

fn inv_minor_units(inv: &InvoiceView) -> u32 {
    billing_core::currency::Currency::parse(&inv.currency).map_or(2, |c| c.minor_units())
}
