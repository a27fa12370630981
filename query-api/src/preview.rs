//! `POST /v1/customers/{id}/invoices/preview`: the customer's upcoming invoice, now (Stripe's upcoming invoice):
//! the invoice of its next billing date as it would be if that date were now, with the usage rated so far. It is
//! assembled by the same code as the invoicer's (the reference fold and the core), from the read models the
//! invoicer materialized, and nothing is stored or published.

use axum::extract::{Path, State};
use axum::Json;
use billing_core::invoicing::billing_dates;
use billing_runtime::http::Tenant;
use billing_schemas::catalog::{BillableMetric, Catalog, CatalogEvent, Plan, TaxRate};
use billing_schemas::lifecycle::{
    CouponRemoved, Lifecycle, LifecycleEvent, SubscriptionCanceled, SubscriptionChanged,
    SubscriptionCreated, SubscriptionEffective,
};
use billing_schemas::reference::Reference;
use billing_store::catalog_entries::{METRIC, PLAN, TAX_RATE};
use billing_store::customers::CustomerView;
use billing_store::invoices::{InvoiceStatus, InvoiceView};
use billing_store::late_usage;
use billing_store::subscriptions::SubscriptionView;
use chrono::{DateTime, Duration, Utc};

use crate::customers;
use crate::error::ApiError;
use crate::AppState;

/// How far ahead the next billing date is looked for.
const HORIZON_DAYS: i64 = 400;

/// `POST /v1/customers/{id}/invoices/preview`.
pub async fn preview(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(customer_id): Path<String>,
) -> Result<Json<InvoiceView>, ApiError> {
    let customer = customers::existing(&state, &tenant, &customer_id).await?;
    let now = state.customer_now(&tenant, &customer).await?;
    let mut subscriptions = state
        .billing
        .subscriptions_of(&tenant, &customer_id)
        .await?;
    subscriptions.sort_by_key(|s| s.created_at);
    let reference = fold(&state, &tenant, &customer, &subscriptions).await?;
    let (subs, refused) = reference.billable_subscriptions(&tenant, &customer_id);
    if let Some((id, reason)) = refused.first() {
        return Err(ApiError::Conflict(format!(
            "subscription {id:?} cannot be billed: {reason}"
        )));
    }
    let tz = reference
        .customer(&tenant, &customer_id)
        .map(|c| c.tz())
        .unwrap_or(chrono_tz::Tz::UTC);
    let mut next: Option<DateTime<Utc>> = None;
    for s in &subs {
        let dates = billing_dates(s, tz, now + Duration::days(HORIZON_DAYS))
            .map_err(|e| anyhow::anyhow!("billing dates of {:?}: {e}", s.id))?;
        if let Some(d) = dates.into_iter().find(|d| *d > now) {
            next = Some(next.map_or(d, |n| n.min(d)));
        }
    }
    let Some(date) = next else {
        return Err(ApiError::NotFound(format!(
            "customer {customer_id:?} has no upcoming invoice"
        )));
    };
    let usage = state.store.aggregates(&tenant, &customer_id).await?;
    let invoices = state.billing.invoices_of(&tenant, &customer_id).await?;
    let prior_use = billing_store::invoices::prior_use(&invoices, date);
    // Late usage the bill run will adjust on this invoice (its credit notes are not on the invoice).
    let (extra, corrections) = match late_usage::last_billed(&invoices, date) {
        Some((last, offset)) => {
            let changed = late_usage::changed_since(&usage, last, offset);
            let deltas = late_usage::deltas(
                &reference,
                &tenant,
                &customer_id,
                &subs,
                &usage,
                &changed,
                &invoices,
                date,
            )
            .map_err(|e| anyhow::anyhow!(e))?;
            let currency = billing_core::Currency::parse(&customer.currency)
                .map_err(|e| anyhow::anyhow!(e))?;
            late_usage::adjustments(&deltas, currency, tz)
        }
        None => Default::default(),
    };
    let outcome = reference
        .invoice_on(
            &tenant,
            &customer_id,
            &subs,
            date,
            &prior_use,
            &extra,
            |s, p| usage.for_subscription(s, p),
        )
        .map_err(|e| anyhow::anyhow!(e))?
        .ok_or_else(|| {
            ApiError::NotFound(format!("customer {customer_id:?} has no upcoming invoice"))
        })?;
    let mut view = billing_store::invoices::customer_invoice(
        &reference,
        &tenant,
        &customer_id,
        date,
        InvoiceStatus::Draft,
        None,
        &outcome,
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    view.late_usage = corrections;
    Ok(Json(view))
}

/// The reference state of one customer, rebuilt from the read models by replaying what they record.
async fn fold(
    state: &AppState,
    tenant: &str,
    customer: &CustomerView,
    subscriptions: &[SubscriptionView],
) -> Result<Reference, ApiError> {
    let mut reference = Reference::default();
    let catalog = |occurred_at, payload| CatalogEvent {
        tenant_id: tenant.into(),
        event_id: String::new(),
        occurred_at,
        payload,
    };
    for e in state.billing.catalog_entries(tenant, METRIC).await? {
        let m: BillableMetric = serde_json::from_str(&e.body).map_err(anyhow::Error::from)?;
        let _ = reference.apply_catalog(catalog(e.created_at, Catalog::BillableMetric(m)));
    }
    for e in state.billing.catalog_entries(tenant, PLAN).await? {
        let p: Plan = serde_json::from_str(&e.body).map_err(anyhow::Error::from)?;
        let _ = reference.apply_catalog(catalog(e.created_at, Catalog::Plan(p)));
    }
    for e in state.billing.catalog_entries(tenant, TAX_RATE).await? {
        let t: TaxRate = serde_json::from_str(&e.body).map_err(anyhow::Error::from)?;
        let _ = reference.apply_catalog(catalog(e.created_at, Catalog::TaxRate(t)));
    }
    let event = |occurred_at, payload| LifecycleEvent {
        tenant_id: tenant.into(),
        event_id: String::new(),
        occurred_at,
        payload,
    };
    let c = customer;
    let created = c.record();
    let mut events = vec![event(c.created_at, Lifecycle::CustomerCreated(created))];
    for s in subscriptions {
        let (sub, cus) = (s.subscription_id.clone(), s.customer_id.clone());
        events.push(event(
            s.created_at,
            Lifecycle::SubscriptionCreated(SubscriptionCreated {
                subscription_id: sub.clone(),
                customer_id: cus.clone(),
                plan_code: s.initial_plan_code.clone(),
                started_at: s.started_at,
                trial_ends_at: s.trial_ends_at,
                billing_time: s.billing_time,
                billing_anchor_day: s.billing_anchor_day,
                proration: s.proration,
            }),
        ));
        for ch in &s.changes {
            let effective = SubscriptionEffective {
                subscription_id: sub.clone(),
                customer_id: cus.clone(),
                effective_at: ch.effective_at,
            };
            let payload = match ch.kind.as_str() {
                "plan_change" => Lifecycle::SubscriptionChanged(SubscriptionChanged {
                    subscription_id: sub.clone(),
                    customer_id: cus.clone(),
                    new_plan_code: ch.plan_code.clone().unwrap_or_default(),
                    effective_at: ch.effective_at,
                    at_period_end: ch.at_period_end,
                }),
                "pause" => Lifecycle::SubscriptionPaused(effective),
                "resume" => Lifecycle::SubscriptionResumed(effective),
                "suspend" => Lifecycle::SubscriptionSuspended(effective),
                "unsuspend" => Lifecycle::SubscriptionUnsuspended(effective),
                "cancel" => Lifecycle::SubscriptionCanceled(SubscriptionCanceled {
                    subscription_id: sub.clone(),
                    customer_id: cus.clone(),
                    effective_at: ch.effective_at,
                    at_period_end: ch.at_period_end,
                }),
                other => {
                    return Err(anyhow::anyhow!("stored change of unknown kind {other:?}").into());
                }
            };
            events.push(event(ch.effective_at, payload));
        }
    }
    for a in &c.applied_coupons {
        events.push(event(
            a.applied_at,
            Lifecycle::CouponApplied(a.applied.clone()),
        ));
        if let Some(at) = a.removed_at {
            events.push(event(
                at,
                Lifecycle::CouponRemoved(CouponRemoved {
                    applied_coupon_id: a.applied.applied_coupon_id.clone(),
                    customer_id: c.customer_id.clone(),
                }),
            ));
        }
    }
    for w in &c.wallets {
        events.push(event(
            w.created_at,
            Lifecycle::WalletCreated(w.created.clone()),
        ));
        for t in &w.top_ups {
            events.push(event(t.at, Lifecycle::WalletToppedUp(t.top_up.clone())));
        }
    }
    for ev in events {
        reference
            .apply_lifecycle(ev)
            .map_err(|e| anyhow::anyhow!("stored subscription history does not fold: {e}"))?;
    }
    Ok(reference)
}
