//! Prepaid-credit wallets (Lago's wallets): `POST /v1/wallets` creates a customer's wallet (in its currency, 1
//! credit = 1 unit) with optional granted (free) and paid (bought) credits; `POST
//! /v1/customers/{id}/wallets/{wallet_id}/transactions` tops it up; reads give the balance and the ledger. Bought
//! credits are invoiced at once (an invoice of their own, collected like any other); the credits pay the
//! invoices billed from then on, after tax. A top-up sent again with the same `Idempotency-Key` is answered from
//! the first one and applied once.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use billing_runtime::http::Tenant;
use billing_schemas::lifecycle::{Lifecycle, LifecycleEvent, WalletCreated, WalletToppedUp};
use billing_store::customers::{CustomerView, WalletView};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::{json, Value};

use crate::customers;
use crate::error::ApiError;
use crate::request::{
    after_cursor, page, page_limit, ApiJson, ApiQuery, Check, PageQuery, WriteQuery,
};
use crate::wait::{answer, event_id, pending, Answer};
use crate::AppState;

/// `POST /v1/wallets`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"customer_id": "cus_fuzz", "granted_credits": "10.00"}))]
pub struct CreateWallet {
    #[serde(alias = "external_customer_id")]
    customer_id: String,
    #[serde(default)]
    name: Option<String>,
    /// Accepted only when equal to the customer's.
    #[serde(default)]
    currency: Option<String>,
    #[serde(default)]
    #[schema(schema_with = crate::openapi::decimal)]
    granted_credits: Option<Value>,
    #[serde(default)]
    #[schema(schema_with = crate::openapi::decimal)]
    paid_credits: Option<Value>,
    #[serde(default)]
    expiration_at: Option<String>,
}

/// `POST /v1/customers/{id}/wallets/{wallet_id}/transactions`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TopUp {
    #[serde(default)]
    #[schema(schema_with = crate::openapi::decimal)]
    granted_credits: Option<Value>,
    #[serde(default)]
    #[schema(schema_with = crate::openapi::decimal)]
    paid_credits: Option<Value>,
}

/// Granted and paid credits of a request: each an exact amount of 0 or more, at least one above 0.
fn credits(
    c: &mut Check,
    granted: Option<&Value>,
    paid: Option<&Value>,
    required: bool,
) -> (Decimal, Decimal) {
    let granted = granted
        .and_then(|v| c.amount("granted_credits", v))
        .unwrap_or_default();
    let paid = paid
        .and_then(|v| c.amount("paid_credits", v))
        .unwrap_or_default();
    if required && granted.is_zero() && paid.is_zero() && c.is_empty() {
        c.fail(
            "paid_credits",
            "give granted_credits or paid_credits above 0",
        );
    }
    (granted, paid)
}

/// One top-up, with the id of the invoice of its paid credits.
fn top_up(
    wallet: &str,
    customer: &str,
    granted: Decimal,
    paid: Decimal,
    now: DateTime<Utc>,
) -> WalletToppedUp {
    let hex = uuid::Uuid::new_v4().simple().to_string();
    WalletToppedUp {
        transaction_id: format!("wt_{hex}"),
        wallet_id: wallet.to_owned(),
        customer_id: customer.to_owned(),
        granted_credits: granted.to_string(),
        paid_credits: paid.to_string(),
        invoice_id: (!paid.is_zero()).then(|| crate::invoices::one_off_invoice_id(now)),
    }
}

/// Ledger and balance of a wallet: its top-ups, what the customer's issued invoices used, and what expired.
async fn wallet_json(
    state: &AppState,
    tenant: &str,
    c: &CustomerView,
    w: &WalletView,
    now: DateTime<Utc>,
) -> Result<Value, ApiError> {
    let mut entries: Vec<(DateTime<Utc>, Value)> = Vec::new();
    let mut balance = Decimal::ZERO;
    for t in &w.top_ups {
        let (g, p) = (
            t.top_up
                .granted_credits
                .parse::<Decimal>()
                .unwrap_or_default(),
            t.top_up.paid_credits.parse::<Decimal>().unwrap_or_default(),
        );
        balance += g + p;
        for (kind, amount) in [("granted", g), ("purchased", p)] {
            if !amount.is_zero() {
                entries.push((
                    t.at,
                    json!({"type": kind, "amount": amount.to_string(), "at": t.at,
                           "transaction_id": t.top_up.transaction_id,
                           "invoice_id": if kind == "purchased" { t.top_up.invoice_id.clone() } else { None }}),
                ));
            }
        }
    }
    for inv in state.billing.invoices_of(tenant, &c.customer_id).await? {
        if inv.status == billing_store::invoices::InvoiceStatus::Draft {
            continue;
        }
        for used in inv
            .credits
            .iter()
            .filter(|u| u.wallet_id == w.created.wallet_id)
        {
            balance -= used.amount;
            let at = inv.issued_at.unwrap_or(inv.billing_date);
            entries.push((
                at,
                json!({"type": "consumed", "amount": used.amount.to_string(), "at": at,
                       "invoice_id": inv.invoice_id, "invoice_number": inv.number}),
            ));
        }
    }
    let expired = w.created.expiration_at.filter(|e| *e <= now);
    if let Some(at) = expired {
        if balance > Decimal::ZERO {
            entries.push((
                at,
                json!({"type": "expired", "amount": balance.to_string(), "at": at}),
            ));
        }
        balance = Decimal::ZERO;
    }
    entries.sort_by_key(|(at, _)| *at);
    Ok(json!({
        "object": "wallet",
        "wallet_id": w.created.wallet_id,
        "customer_id": c.customer_id,
        "name": w.created.name,
        "currency": c.currency,
        "status": if expired.is_some() { "expired" } else { "active" },
        "expiration_at": w.created.expiration_at,
        "created_at": w.created_at,
        "balance": balance.to_string(),
        "transactions": entries.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
    }))
}

fn find<'a>(c: &'a CustomerView, wallet: &str) -> Option<&'a WalletView> {
    c.wallets.iter().find(|w| w.created.wallet_id == wallet)
}

/// Publish lifecycle events in order; the partition and offset of the last.
async fn publish_all(state: &AppState, events: &[LifecycleEvent]) -> Result<(i32, i64), ApiError> {
    let mut last = None;
    for ev in events {
        last = Some(state.publish_lifecycle(ev).await?);
    }
    Ok(last.expect("at least one event"))
}

/// `POST /v1/wallets`: 422 naming the field for an unknown customer, another currency, negative credits or an
/// expiry in the past; 409 when the customer already has a wallet that has not expired (one at a time).
pub async fn create(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    ApiQuery(q): ApiQuery<WriteQuery>,
    ApiJson(body): ApiJson<CreateWallet>,
) -> Result<Answer, ApiError> {
    let deadline = state.deadline(&q)?;
    let mut c = Check::new();
    c.id("customer_id", &body.customer_id);
    if let Some(n) = &body.name {
        c.text("name", n, 255);
    }
    let (granted, paid) = credits(
        &mut c,
        body.granted_credits.as_ref(),
        body.paid_credits.as_ref(),
        false,
    );
    let expiration_at = match body.expiration_at.as_deref() {
        None => None,
        Some(raw) => match crate::request::parse_instant("expiration_at", raw, true) {
            Ok(t) => Some(t),
            Err(_) => {
                c.fail(
                    "expiration_at",
                    "must be an RFC 3339 time or a YYYY-MM-DD date",
                );
                None
            }
        },
    };
    c.finish()?;
    let Some(customer) = state.billing.customer(&tenant, &body.customer_id).await? else {
        return Err(ApiError::invalid(
            "customer_id",
            format!("no customer {:?}", body.customer_id),
        ));
    };
    if let Some(cur) = &body.currency {
        if !cur.eq_ignore_ascii_case(&customer.currency) {
            return Err(ApiError::invalid(
                "currency",
                format!(
                    "customer {:?} is billed in {}",
                    customer.customer_id, customer.currency
                ),
            ));
        }
    }
    let now = state.customer_now(&tenant, &customer).await?;
    if expiration_at.is_some_and(|e| e <= now) {
        return Err(ApiError::invalid("expiration_at", "is not in the future"));
    }
    if let Some(w) = customer
        .wallets
        .iter()
        .find(|w| w.created.expiration_at.is_none_or(|e| e > now))
    {
        return Err(ApiError::conflict_field(
            "customer_id",
            format!(
                "customer {:?} already has the active wallet {:?}",
                customer.customer_id, w.created.wallet_id
            ),
        ));
    }
    let wallet_id = format!("wal_{}", uuid::Uuid::new_v4().simple());
    let event = |payload| LifecycleEvent {
        tenant_id: tenant.clone(),
        event_id: event_id(),
        occurred_at: now,
        payload,
    };
    let mut events = vec![event(Lifecycle::WalletCreated(WalletCreated {
        wallet_id: wallet_id.clone(),
        customer_id: customer.customer_id.clone(),
        name: body.name,
        expiration_at,
    }))];
    if !(granted.is_zero() && paid.is_zero()) {
        events.push(event(Lifecycle::WalletToppedUp(top_up(
            &wallet_id,
            &customer.customer_id,
            granted,
            paid,
            now,
        ))));
    }
    let at = publish_all(&state, &events).await?;
    let first_event = events[0].event_id.clone();
    if state.lifecycle_visible(at, deadline).await {
        if let Ok(Some(c)) = state.billing.customer(&tenant, &customer.customer_id).await {
            if let Some(w) = find(&c, &wallet_id) {
                return answer(
                    StatusCode::CREATED,
                    wallet_json(&state, &tenant, &c, w, now).await?,
                );
            }
        }
    }
    Ok(pending(&first_event, "wallet", &wallet_id))
}

/// `POST /v1/customers/{id}/wallets/{wallet_id}/transactions`: adds granted and paid credits (each 0 or more,
/// one above 0); 404 for an unknown wallet, 409 for an expired one.
pub async fn top_up_wallet(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path((customer_id, wallet_id)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<WriteQuery>,
    ApiJson(body): ApiJson<TopUp>,
) -> Result<Answer, ApiError> {
    let deadline = state.deadline(&q)?;
    let mut c = Check::new();
    let (granted, paid) = credits(
        &mut c,
        body.granted_credits.as_ref(),
        body.paid_credits.as_ref(),
        true,
    );
    c.finish()?;
    let customer = customers::existing(&state, &tenant, &customer_id).await?;
    let Some(w) = find(&customer, &wallet_id) else {
        return Err(ApiError::NotFound(format!(
            "customer {customer_id:?} has no wallet {wallet_id:?}"
        )));
    };
    let now = state.customer_now(&tenant, &customer).await?;
    if w.created.expiration_at.is_some_and(|e| e <= now) {
        return Err(ApiError::Conflict(format!(
            "wallet {wallet_id:?} has expired"
        )));
    }
    let t = top_up(&wallet_id, &customer_id, granted, paid, now);
    let transaction_id = t.transaction_id.clone();
    let ev = LifecycleEvent {
        tenant_id: tenant.clone(),
        event_id: event_id(),
        occurred_at: now,
        payload: Lifecycle::WalletToppedUp(t),
    };
    let at = state.publish_lifecycle(&ev).await?;
    if state.lifecycle_visible(at, deadline).await {
        if let Ok(Some(c)) = state.billing.customer(&tenant, &customer_id).await {
            if let Some(w) = find(&c, &wallet_id).filter(|w| {
                w.top_ups
                    .iter()
                    .any(|x| x.top_up.transaction_id == transaction_id)
            }) {
                let mut v = wallet_json(&state, &tenant, &c, w, now).await?;
                v["transaction_id"] = transaction_id.into();
                return answer(StatusCode::CREATED, v);
            }
        }
    }
    Ok(pending(&ev.event_id, "wallet_transaction", &transaction_id))
}

/// `GET /v1/customers/{id}/wallets/{wallet_id}`: balance and ledger.
pub async fn get(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path((customer_id, wallet_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let c = customers::existing(&state, &tenant, &customer_id).await?;
    let w = find(&c, &wallet_id).ok_or_else(|| {
        ApiError::NotFound(format!(
            "customer {customer_id:?} has no wallet {wallet_id:?}"
        ))
    })?;
    let now = state.customer_now(&tenant, &c).await?;
    Ok(Json(wallet_json(&state, &tenant, &c, w, now).await?))
}

/// `GET /v1/customers/{id}/wallets?limit=&starting_after=`: in creation order.
pub async fn list(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(customer_id): Path<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = page_limit(q.limit)?;
    let c = customers::existing(&state, &tenant, &customer_id).await?;
    let now = state.customer_now(&tenant, &c).await?;
    let wallets = after_cursor(
        c.wallets.iter().collect(),
        q.starting_after.as_deref(),
        |w: &&WalletView| w.created.wallet_id.as_str(),
    )?;
    let mut data = Vec::with_capacity(limit + 1);
    for w in wallets.into_iter().take(limit + 1) {
        data.push(wallet_json(&state, &tenant, &c, w, now).await?);
    }
    Ok(Json(page(data, limit)?))
}
