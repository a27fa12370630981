//! HTTP routes.

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::middleware;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};

use axum::http::{Method, StatusCode};
use billing_runtime::auth::{self, Access};
use billing_runtime::http::{Problem, Tenant};
use billing_store::analytics::{
    ChurnReportRow, CollectionsReportRow, MrrReportRow, RevenueReportRow, UsageReportRow,
};

use crate::analytics::report;
use crate::error::ApiError;
use crate::request::{ApiQuery, MAX_BODY};
use crate::{catalog, clocks, customers, idempotency, invoices, payments, subscriptions, AppState};

/// What a route needs of the API key that calls it (`docs/api.md`, "Authentication"): analytics reports are the
/// analyst's; webhook endpoints, API keys and the audit log are the admin's; reads (and the invoice preview, a read by POST) need `read`; other writes need `write`. A route this
/// does not know is refused by the gate (fail closed); the isolation test calls every route with every role.
pub fn access_of(method: &Method, path: &str) -> Option<Access> {
    if path.starts_with("/v1/analytics/") {
        // Every method: axum answers 405 to those the route does not have.
        return Some(Access::Analytics);
    }
    if path.starts_with("/v1/webhook_endpoints")
        || path.starts_with("/v1/api_keys")
        || path == "/v1/audit"
    {
        return Some(Access::Admin);
    }
    match *method {
        Method::GET => Some(Access::Read),
        Method::POST
            if path == "/v1/customers/{customer_id}/invoices/preview" || path == "/graphql" =>
        {
            Some(Access::Read)
        }
        Method::POST | Method::DELETE => Some(Access::Write),
        _ => None,
    }
}

/// The `/v1` routes behind the API key gate (key, role, rate limit per key), then the audit log of writes; POSTs
/// honour `Idempotency-Key` (after both).
pub fn router(state: AppState, gate: auth::Gate) -> Router {
    Router::new()
        .route("/v1/customers/{customer_id}/usage", get(customer_usage))
        .route(
            "/v1/customers",
            post(customers::create).get(customers::list),
        )
        .route(
            "/v1/customers/{customer_id}",
            post(customers::update).get(customers::get),
        )
        .route(
            "/v1/customers/{customer_id}/subscriptions",
            get(subscriptions::list_of_customer),
        )
        .route(
            "/v1/customers/{customer_id}/invoices",
            get(invoices::list_of_customer),
        )
        .route(
            "/v1/customers/{customer_id}/invoices/preview",
            post(crate::preview::preview),
        )
        .route(
            "/v1/billable_metrics",
            post(catalog::create_metric).get(catalog::list_metrics),
        )
        .route(
            "/v1/billable_metrics/{code}",
            post(catalog::update_metric).get(catalog::get_metric),
        )
        .route(
            "/v1/plans",
            post(catalog::create_plan).get(catalog::list_plans),
        )
        .route(
            "/v1/plans/{code}",
            post(catalog::update_plan).get(catalog::get_plan),
        )
        .route(
            "/v1/add_ons",
            post(catalog::create_add_on).get(catalog::list_add_ons),
        )
        .route(
            "/v1/add_ons/{code}",
            post(catalog::update_add_on).get(catalog::get_add_on),
        )
        .route(
            "/v1/coupons",
            post(catalog::create_coupon).get(catalog::list_coupons),
        )
        .route(
            "/v1/coupons/{code}",
            post(catalog::update_coupon).get(catalog::get_coupon),
        )
        .route("/v1/applied_coupons", post(crate::coupons::apply))
        .route("/v1/wallets", post(crate::wallets::create))
        .route(
            "/v1/customers/{customer_id}/wallets",
            get(crate::wallets::list),
        )
        .route(
            "/v1/customers/{customer_id}/wallets/{wallet_id}",
            get(crate::wallets::get),
        )
        .route(
            "/v1/customers/{customer_id}/wallets/{wallet_id}/transactions",
            post(crate::wallets::top_up_wallet),
        )
        .route(
            "/v1/customers/{customer_id}/applied_coupons",
            get(crate::coupons::list),
        )
        .route(
            "/v1/customers/{customer_id}/applied_coupons/{applied_coupon_id}",
            delete(crate::coupons::remove),
        )
        .route(
            "/v1/taxes",
            post(catalog::create_tax).get(catalog::list_taxes),
        )
        .route(
            "/v1/taxes/{code}",
            post(catalog::update_tax).get(catalog::get_tax),
        )
        .route("/v1/subscriptions", post(subscriptions::create))
        .route(
            "/v1/subscriptions/{subscription_id}",
            get(subscriptions::get),
        )
        .route(
            "/v1/subscriptions/{subscription_id}/change",
            post(subscriptions::change),
        )
        .route(
            "/v1/subscriptions/{subscription_id}/pause",
            post(subscriptions::pause),
        )
        .route(
            "/v1/subscriptions/{subscription_id}/resume",
            post(subscriptions::resume),
        )
        .route(
            "/v1/subscriptions/{subscription_id}/cancel",
            post(subscriptions::cancel),
        )
        .route("/v1/test_clocks", post(clocks::create))
        .route("/v1/test_clocks/{clock_id}", get(clocks::get))
        .route("/v1/test_clocks/{clock_id}/advance", post(clocks::advance))
        .route(
            "/v1/invoices",
            get(invoices::list).post(invoices::create_one_off),
        )
        .route("/v1/invoices/{invoice_id}", get(invoices::get))
        .route("/v1/invoices/{invoice_id}/pay", post(payments::pay))
        .route(
            "/v1/invoices/{invoice_id}/payments",
            get(payments::attempts),
        )
        .route(
            "/v1/customers/{customer_id}/payment_methods",
            post(payments::add_method).get(payments::list_methods),
        )
        .route(
            "/v1/customers/{customer_id}/payment_methods/{payment_method_id}",
            delete(payments::remove_method),
        )
        .route(
            "/v1/customers/{customer_id}/payment_methods/{payment_method_id}/default",
            post(payments::set_default),
        )
        .route(
            "/v1/invoices/{invoice_id}/finalize",
            post(invoices::finalize),
        )
        .route("/v1/invoices/{invoice_id}/void", post(invoices::void))
        .route(
            "/v1/invoices/{invoice_id}/credit_notes",
            post(crate::credit_notes::create).get(crate::credit_notes::of_invoice),
        )
        .route(
            "/v1/credit_notes/{credit_note_id}",
            get(crate::credit_notes::get),
        )
        .route(
            "/v1/webhook_endpoints",
            post(crate::webhooks::create).get(crate::webhooks::list),
        )
        .route(
            "/v1/webhook_endpoints/{endpoint_id}",
            post(crate::webhooks::update)
                .get(crate::webhooks::get)
                .delete(crate::webhooks::delete),
        )
        .route(
            "/v1/webhook_endpoints/{endpoint_id}/rotate_secret",
            post(crate::webhooks::rotate_secret),
        )
        .route(
            "/v1/webhook_endpoints/{endpoint_id}/deliveries",
            get(crate::webhooks::deliveries),
        )
        .route(
            "/v1/webhook_endpoints/{endpoint_id}/deliveries/{delivery_id}/redeliver",
            post(crate::webhooks::redeliver),
        )
        .route("/v1/audit", get(crate::audit::list))
        .route("/graphql", post(crate::graphql::handle))
        .route("/v1/analytics/mrr", get(report::<MrrReportRow>))
        .route("/v1/analytics/revenue", get(report::<RevenueReportRow>))
        .route("/v1/analytics/usage", get(report::<UsageReportRow>))
        .route("/v1/analytics/churn", get(report::<ChurnReportRow>))
        .route(
            "/v1/analytics/collections",
            get(report::<CollectionsReportRow>),
        )
        .route("/v1/api_keys", get(crate::api_keys::list))
        .route(
            "/v1/api_keys/{key_id}/revoke",
            post(crate::api_keys::revoke),
        )
        .method_not_allowed_fallback(|| async {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "this method is not allowed on this path",
            )
        })
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            idempotency::middleware,
        ))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            crate::audit::middleware,
        ))
        .route_layer(middleware::from_fn_with_state(gate, auth::gate))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .with_state(state)
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct UsageQuery {
    /// The instant whose billing periods are shown (RFC 3339); defaults to now.
    at: Option<String>,
}

async fn customer_usage(
    State(state): State<AppState>,
    Tenant(tenant_id): Tenant,
    Path(customer_id): Path<String>,
    ApiQuery(q): ApiQuery<UsageQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let at = match q.at {
        Some(raw) => DateTime::parse_from_rfc3339(&raw)
            .map_err(|e| ApiError::BadRequest(format!("at={raw:?} is not an RFC 3339 time: {e}")))?
            .with_timezone(&Utc),
        None => Utc::now(),
    };
    let usage = state.store.usage(&tenant_id, &customer_id, at).await?;
    let mut totals: std::collections::BTreeMap<&str, rust_decimal::Decimal> = Default::default();
    for u in &usage {
        *totals.entry(u.currency.as_str()).or_default() += u.amount.unwrap_or_default();
    }
    Ok(Json(serde_json::json!({
        "tenant_id": tenant_id,
        "customer_id": customer_id,
        "at": at,
        "charges": usage,
        "totals": totals,
    })))
}
