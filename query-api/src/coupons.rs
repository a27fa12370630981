//! Coupons applied to customers (Lago's applied coupons): `POST /v1/applied_coupons` copies a catalog coupon's
//! terms onto a customer (or one of its subscriptions) and publishes `CouponApplied`;
//! `GET /v1/customers/{id}/applied_coupons` lists them; `DELETE /v1/customers/{id}/applied_coupons/{applied_id}`
//! publishes `CouponRemoved`. The invoicer applies them to the invoices whose billing date is at or after the
//! application, before tax (see `docs/pricing.md`, "Coupons").

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use billing_runtime::http::Tenant;
use billing_schemas::catalog::CouponType;
use billing_schemas::lifecycle::{CouponRemoved, Lifecycle, LifecycleEvent};
use billing_store::customers::CustomerView;
use serde_json::Value;

use crate::catalog::{coupon, coupon_terms};
use crate::customers;
use crate::error::ApiError;
use crate::request::{
    after_cursor, page, page_limit, ApiJson, ApiQuery, Check, PageQuery, WriteQuery,
};
use crate::wait::{answer, event_id, pending, Answer};
use crate::AppState;

/// `POST /v1/applied_coupons`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyCoupon {
    #[serde(alias = "external_customer_id")]
    customer_id: String,
    coupon_code: String,
    #[serde(default)]
    subscription_id: Option<String>,
}

/// An applied coupon as the API shows it.
fn view(c: &CustomerView, id: &str) -> Option<Value> {
    let a = c
        .applied_coupons
        .iter()
        .find(|a| a.applied.applied_coupon_id == id)?;
    let mut v = serde_json::to_value(a).ok()?;
    v["object"] = "applied_coupon".into();
    v["status"] = if a.removed_at.is_some() {
        "removed"
    } else {
        "active"
    }
    .into();
    Some(v)
}

/// The redemption counter of a coupon: a gap-free sequence of its applications (`invoice_number_blocks`, scope
/// `coupon_redemptions/<code>`), so that `max_redemptions` holds over every API instance.
fn redemption_scope(code: &str) -> String {
    format!("coupon_redemptions/{code}")
}

/// `POST /v1/applied_coupons`: 422 for an unknown coupon or customer, an expired coupon, a fixed amount in
/// another currency than the customer's, a subscription that is not the customer's; 409 for a coupon that is
/// not reusable and already applied to the customer, or whose redemptions are used up.
pub async fn apply(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    ApiQuery(q): ApiQuery<WriteQuery>,
    ApiJson(body): ApiJson<ApplyCoupon>,
) -> Result<Answer, ApiError> {
    let deadline = state.deadline(&q)?;
    let mut c = Check::new();
    c.id("customer_id", &body.customer_id);
    c.id("coupon_code", &body.coupon_code);
    c.finish()?;
    let Some(k) = coupon(&state, &tenant, &body.coupon_code).await? else {
        return Err(ApiError::invalid(
            "coupon_code",
            format!("no coupon {:?}", body.coupon_code),
        ));
    };
    let Some(customer) = state.billing.customer(&tenant, &body.customer_id).await? else {
        return Err(ApiError::invalid(
            "customer_id",
            format!("no customer {:?}", body.customer_id),
        ));
    };
    let now = state.customer_now(&tenant, &customer).await?;
    if let Some(exp) = k.expiration_at.filter(|e| *e <= now) {
        return Err(ApiError::invalid(
            "coupon_code",
            format!("coupon {:?} expired at {exp}", k.code),
        ));
    }
    if k.coupon_type == CouponType::FixedAmount {
        let cur = k.amount_currency.clone().unwrap_or_default();
        if !cur.eq_ignore_ascii_case(&customer.currency) {
            return Err(ApiError::invalid(
                "coupon_code",
                format!(
                    "coupon {:?} is an amount in {cur}; customer {:?} is billed in {}",
                    k.code, customer.customer_id, customer.currency
                ),
            ));
        }
    }
    if let Some(sub) = &body.subscription_id {
        let theirs = state
            .billing
            .subscription(&tenant, sub)
            .await?
            .is_some_and(|s| s.customer_id == customer.customer_id);
        if !theirs {
            return Err(ApiError::invalid(
                "subscription_id",
                format!(
                    "customer {:?} has no subscription {sub:?}",
                    customer.customer_id
                ),
            ));
        }
    }
    if !k.reusable
        && customer
            .applied_coupons
            .iter()
            .any(|a| a.applied.coupon_code == k.code)
    {
        return Err(ApiError::conflict_field(
            "coupon_code",
            format!(
                "coupon {:?} is not reusable and customer {:?} already had it",
                k.code, customer.customer_id
            ),
        ));
    }
    let applied_id = format!("ac_{}", uuid::Uuid::new_v4().simple());
    if let Some(max) = k.max_redemptions {
        let n = state
            .billing
            .claim_numbers(
                &tenant,
                &redemption_scope(&k.code),
                std::slice::from_ref(&applied_id),
            )
            .await?;
        if n > i64::from(max) {
            return Err(ApiError::conflict_field(
                "coupon_code",
                format!("coupon {:?} reached its {max} redemptions", k.code),
            ));
        }
    }
    let mut applied = coupon_terms(&k, &customer.customer_id, &applied_id);
    applied.subscription_id = body.subscription_id;
    let ev = LifecycleEvent {
        tenant_id: tenant.clone(),
        event_id: event_id(),
        occurred_at: now,
        payload: Lifecycle::CouponApplied(applied),
    };
    let at = state.publish_lifecycle(&ev).await?;
    if state.lifecycle_visible(at, deadline).await {
        if let Ok(Some(c)) = state.billing.customer(&tenant, &customer.customer_id).await {
            if let Some(v) = view(&c, &applied_id) {
                return answer(StatusCode::CREATED, v);
            }
        }
    }
    Ok(pending(&ev.event_id, "applied_coupon", &applied_id))
}

/// `GET /v1/customers/{id}/applied_coupons?limit=&starting_after=`: in application order, removed ones included.
pub async fn list(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(customer_id): Path<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = page_limit(q.limit)?;
    let c = customers::existing(&state, &tenant, &customer_id).await?;
    let ids: Vec<&str> = c
        .applied_coupons
        .iter()
        .map(|a| a.applied.applied_coupon_id.as_str())
        .collect();
    let ids = after_cursor(ids, q.starting_after.as_deref(), |id| id)?;
    let data: Vec<Value> = ids
        .into_iter()
        .take(limit + 1)
        .filter_map(|id| view(&c, id))
        .collect();
    Ok(Json(page(data, limit)?))
}

/// `DELETE /v1/customers/{id}/applied_coupons/{applied_coupon_id}`: the coupon discounts no invoice whose billing
/// date is at or after now (the customer's clock). 404 for an unknown one, 409 for one already removed.
pub async fn remove(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path((customer_id, applied_id)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<WriteQuery>,
) -> Result<Answer, ApiError> {
    let deadline = state.deadline(&q)?;
    let c = customers::existing(&state, &tenant, &customer_id).await?;
    let Some(a) = c
        .applied_coupons
        .iter()
        .find(|a| a.applied.applied_coupon_id == applied_id)
    else {
        return Err(ApiError::NotFound(format!(
            "customer {customer_id:?} has no applied coupon {applied_id:?}"
        )));
    };
    if a.removed_at.is_some() {
        return Err(ApiError::Conflict(format!(
            "applied coupon {applied_id:?} is already removed"
        )));
    }
    let now = state.customer_now(&tenant, &c).await?;
    let ev = LifecycleEvent {
        tenant_id: tenant.clone(),
        event_id: event_id(),
        occurred_at: now,
        payload: Lifecycle::CouponRemoved(CouponRemoved {
            applied_coupon_id: applied_id.clone(),
            customer_id: customer_id.clone(),
        }),
    };
    let at = state.publish_lifecycle(&ev).await?;
    if state.lifecycle_visible(at, deadline).await {
        let removed = state
            .poll(deadline, || async {
                Ok(state
                    .billing
                    .customer(&tenant, &customer_id)
                    .await?
                    .and_then(|c| view(&c, &applied_id))
                    .filter(|v| v["status"] == "removed"))
            })
            .await;
        if let Some(v) = removed {
            return answer(StatusCode::OK, v);
        }
    }
    Ok(pending(&ev.event_id, "applied_coupon", &applied_id))
}
