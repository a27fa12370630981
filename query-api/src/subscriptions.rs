//! `/v1/subscriptions`: create, change plan, pause, resume, cancel (each publishes its lifecycle event), read,
//! and a customer's subscriptions. Times default to the customer's billing "now": its test clock's current time,
//! or the wall clock.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use billing_core::period::{BillingTime, Interval};
use billing_core::proration::ProrationConvention;
use billing_runtime::http::Tenant;
use billing_schemas::catalog::Plan;
use billing_schemas::lifecycle::{
    Lifecycle, LifecycleEvent, SubscriptionCanceled, SubscriptionChanged, SubscriptionCreated,
    SubscriptionEffective,
};
use billing_store::customers::CustomerView;
use billing_store::subscriptions::{SubscriptionStatus, SubscriptionView};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;

use crate::catalog;
use crate::customers;
use crate::error::ApiError;
use crate::idempotency;
use crate::request::{
    after_cursor, page, page_limit, ApiJson, ApiQuery, Check, PageQuery, WriteQuery,
};
use crate::wait::{answer, event_id, pending, Answer};
use crate::AppState;

/// Body of `POST /v1/subscriptions`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"subscription_id": "sub_fuzz", "customer_id": "cus_fuzz", "plan_code": "basic"}))]
pub struct CreateSubscription {
    subscription_id: String,
    customer_id: String,
    plan_code: String,
    #[serde(default)]
    started_at: Option<DateTime<Utc>>,
    #[serde(default)]
    #[schema(schema_with = crate::openapi::billing_time)]
    billing_time: Option<BillingTime>,
    #[serde(default)]
    billing_anchor_day: Option<i32>,
    #[serde(default)]
    #[schema(schema_with = crate::openapi::proration)]
    proration: Option<ProrationConvention>,
    /// Absent: the plan's trial; `null`: no trial; a time: that trial end.
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = crate::openapi::nullable_instant)]
    trial_ends_at: Option<Option<DateTime<Utc>>>,
}

/// A field that may be absent (`None`), `null` (`Some(None)`) or a value.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// When a plan change takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Timing {
    /// At `effective_at`: the unused rest of the old plan is credited, the new one charged prorated.
    Immediate,
    /// At the end of the period containing `effective_at`.
    PeriodEnd,
}

/// Body of `POST /v1/subscriptions/{id}/change`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePlan {
    plan_code: String,
    #[serde(default)]
    timing: Option<Timing>,
    #[serde(default)]
    effective_at: Option<DateTime<Utc>>,
}

/// Body of `POST /v1/subscriptions/{id}/pause` and `/resume`.
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Effective {
    #[serde(default)]
    effective_at: Option<DateTime<Utc>>,
}

/// Body of `POST /v1/subscriptions/{id}/cancel`.
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Cancel {
    #[serde(default)]
    at_period_end: bool,
    #[serde(default)]
    effective_at: Option<DateTime<Utc>>,
}

/// A plan's fee over a year, to compare plans of different intervals.
fn yearly_fee(p: &Plan) -> Option<Decimal> {
    let fee = billing_core::money::parse_decimal("amount", &p.amount).ok()?;
    let per_year = match p.interval {
        Interval::Weekly => 52,
        Interval::Monthly => 12,
        Interval::Quarterly => 4,
        Interval::Semiannual => 2,
        Interval::Yearly => 1,
    };
    fee.checked_mul(Decimal::from(per_year))
}

/// Whether moving from `old` to `new` is an upgrade (immediate by default): the new fee per period is at least
/// the old one (over a year when the intervals differ). An unknown old plan counts as an upgrade.
pub fn is_upgrade(old: Option<&Plan>, new: &Plan) -> bool {
    let Some(old) = old else { return true };
    if old.interval == new.interval {
        let fee = |p: &Plan| billing_core::money::parse_decimal("amount", &p.amount).ok();
        return fee(new) >= fee(old);
    }
    yearly_fee(new) >= yearly_fee(old)
}

impl CreateSubscription {
    /// The event for `customer` on `plan` (`None`: unknown), with defaults from `now`; or every refused field.
    pub fn validate(
        self,
        customer: Option<&CustomerView>,
        plan: Option<&Plan>,
        now: DateTime<Utc>,
    ) -> Result<SubscriptionCreated, ApiError> {
        let mut c = Check::new();
        c.id("subscription_id", &self.subscription_id);
        if customer.is_none() {
            c.fail("customer_id", format!("no customer {:?}", self.customer_id));
        }
        match (plan, customer) {
            (None, _) => c.fail("plan_code", format!("no plan {:?}", self.plan_code)),
            (Some(p), Some(cu)) if p.currency != cu.currency => c.fail(
                "plan_code",
                format!(
                    "plan {:?} is billed in {}, customer {:?} in {}",
                    p.code, p.currency, cu.customer_id, cu.currency
                ),
            ),
            _ => {}
        }
        let billing_time = self.billing_time.unwrap_or_default();
        if let Some(d) = self.billing_anchor_day {
            c.anchor_day("billing_anchor_day", d);
            if billing_time == BillingTime::Anniversary {
                c.fail(
                    "billing_anchor_day",
                    "an anchor day replaces calendar billing; it cannot go with billing_time anniversary",
                );
            }
            if plan.is_some_and(|p| p.interval == Interval::Weekly) {
                c.fail(
                    "billing_anchor_day",
                    "a weekly plan has no day of the month",
                );
            }
        }
        let started_at = self.started_at.unwrap_or(now);
        let trial_ends_at = match (self.trial_ends_at, plan) {
            (Some(None), _) => None,
            (Some(Some(t)), _) => {
                if t < started_at {
                    c.fail(
                        "trial_ends_at",
                        format!("{t} is before started_at {started_at}"),
                    );
                }
                Some(t)
            }
            (None, Some(p)) if p.trial_period_days > 0 => {
                Some(started_at + chrono::Duration::days(i64::from(p.trial_period_days)))
            }
            (None, _) => None,
        };
        c.finish()?;
        Ok(SubscriptionCreated {
            subscription_id: self.subscription_id,
            customer_id: self.customer_id,
            plan_code: self.plan_code,
            started_at,
            trial_ends_at,
            billing_time,
            billing_anchor_day: self.billing_anchor_day,
            proration: self.proration.unwrap_or_default(),
        })
    }
}

/// Refuse a change of a subscription that no longer accepts one: 409 for a canceled subscription.
fn check_not_canceled(s: &SubscriptionView, what: &str) -> Result<(), ApiError> {
    if s.status == SubscriptionStatus::Canceled {
        return Err(ApiError::Conflict(format!(
            "subscription {:?} is canceled; it cannot be {what}",
            s.subscription_id
        )));
    }
    Ok(())
}

/// A change may not take effect before the subscription's start or its latest change.
fn check_effective_at(s: &SubscriptionView, at: DateTime<Utc>) -> Result<(), ApiError> {
    let mut c = Check::new();
    if at < s.started_at {
        c.fail(
            "effective_at",
            format!("{at} is before the subscription's start {}", s.started_at),
        );
    } else if let Some(last) = s.changes.iter().map(|c| c.effective_at).max() {
        if at < last {
            c.fail(
                "effective_at",
                format!("{at} is before the subscription's latest change at {last}"),
            );
        }
    }
    c.finish()
}

/// The subscription, or 404.
async fn existing(state: &AppState, tenant: &str, id: &str) -> Result<SubscriptionView, ApiError> {
    state
        .billing
        .subscription(tenant, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no subscription {id:?}")))
}

/// A subscription's customer and its billing "now".
async fn customer_and_now(
    state: &AppState,
    tenant: &str,
    s: &SubscriptionView,
) -> Result<(CustomerView, DateTime<Utc>), ApiError> {
    let customer = customers::existing(state, tenant, &s.customer_id).await?;
    let now = state.customer_now(tenant, &customer).await?;
    Ok((customer, now))
}

/// A lifecycle event of the tenant at billing time `now`.
fn event(tenant: &str, now: DateTime<Utc>, payload: Lifecycle) -> LifecycleEvent {
    LifecycleEvent {
        tenant_id: tenant.to_owned(),
        event_id: event_id(),
        occurred_at: now,
        payload,
    }
}

/// Publish an event about subscription `id`; once materialized, answer with the subscription when `visible`
/// accepts it (else 202).
async fn publish(
    state: &AppState,
    q: &WriteQuery,
    ev: LifecycleEvent,
    id: &str,
    status: StatusCode,
    visible: impl Fn(&SubscriptionView) -> bool,
) -> Result<Answer, ApiError> {
    let deadline = state.deadline(q)?;
    let at = state.publish_lifecycle(&ev).await?;
    if state.lifecycle_visible(at, deadline).await {
        if let Ok(Some(s)) = state.billing.subscription(&ev.tenant_id, id).await {
            if visible(&s) {
                return answer(status, s);
            }
        }
    }
    Ok(pending(&ev.event_id, "subscription", id))
}

/// `POST /v1/subscriptions`.
pub async fn create(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    ApiQuery(q): ApiQuery<WriteQuery>,
    ApiJson(body): ApiJson<CreateSubscription>,
) -> Result<Answer, ApiError> {
    state.deadline(&q)?;
    let customer = state.billing.customer(&tenant, &body.customer_id).await?;
    let plan = catalog::plan(&state, &tenant, &body.plan_code).await?;
    let now = match &customer {
        Some(cu) => state.customer_now(&tenant, cu).await?,
        None => Utc::now(),
    };
    let created = body.validate(customer.as_ref(), plan.as_ref(), now)?;
    if state
        .billing
        .subscription(&tenant, &created.subscription_id)
        .await?
        .is_some()
    {
        return Err(ApiError::conflict_field(
            "subscription_id",
            format!(
                "a subscription {:?} already exists",
                created.subscription_id
            ),
        ));
    }
    let id = created.subscription_id.clone();
    let ev = event(&tenant, now, Lifecycle::SubscriptionCreated(created));
    idempotency::reserve(&state, &tenant, "subscription", &id, "subscription_id").await?;
    let answer = publish(&state, &q, ev, &id, StatusCode::CREATED, |_| true).await;
    if answer.is_err() {
        idempotency::unreserve(&state, &tenant, "subscription", &id).await;
    }
    answer
}

/// `POST /v1/subscriptions/{id}/change`.
pub async fn change(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<WriteQuery>,
    ApiJson(body): ApiJson<ChangePlan>,
) -> Result<Answer, ApiError> {
    state.deadline(&q)?;
    let s = existing(&state, &tenant, &id).await?;
    check_not_canceled(&s, "changed")?;
    let (customer, now) = customer_and_now(&state, &tenant, &s).await?;
    let Some(new) = catalog::plan(&state, &tenant, &body.plan_code).await? else {
        return Err(ApiError::invalid(
            "plan_code",
            format!("no plan {:?}", body.plan_code),
        ));
    };
    if new.currency != customer.currency {
        return Err(ApiError::invalid(
            "plan_code",
            format!(
                "plan {:?} is billed in {}, customer {:?} in {}",
                new.code, new.currency, customer.customer_id, customer.currency
            ),
        ));
    }
    if new.code == s.plan_code {
        return Err(ApiError::invalid(
            "plan_code",
            format!("the subscription is already on plan {:?}", new.code),
        ));
    }
    let effective_at = body.effective_at.unwrap_or(now);
    check_effective_at(&s, effective_at)?;
    let timing = match body.timing {
        Some(t) => t,
        None => {
            let old = catalog::plan(&state, &tenant, &s.plan_code).await?;
            if is_upgrade(old.as_ref(), &new) {
                Timing::Immediate
            } else {
                Timing::PeriodEnd
            }
        }
    };
    let changes = s.changes.len();
    let payload = Lifecycle::SubscriptionChanged(SubscriptionChanged {
        subscription_id: id.clone(),
        customer_id: s.customer_id.clone(),
        new_plan_code: new.code.clone(),
        effective_at,
        at_period_end: timing == Timing::PeriodEnd,
    });
    let ev = event(&tenant, now, payload);
    publish(&state, &q, ev, &id, StatusCode::OK, |v| {
        v.changes.len() > changes
    })
    .await
}

/// A subscription suspended by dunning stays so until its unpaid invoice is paid (payments lifts it).
fn check_not_suspended(s: &SubscriptionView, what: &str) -> Result<(), ApiError> {
    if s.status == SubscriptionStatus::Suspended {
        return Err(ApiError::Conflict(format!(
            "subscription {:?} is suspended by dunning and cannot be {what}; paying its unpaid invoice lifts the \
             suspension",
            s.subscription_id
        )));
    }
    Ok(())
}

/// `POST /v1/subscriptions/{id}/pause`.
pub async fn pause(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<WriteQuery>,
    ApiJson(body): ApiJson<Effective>,
) -> Result<Answer, ApiError> {
    state.deadline(&q)?;
    let s = existing(&state, &tenant, &id).await?;
    check_not_canceled(&s, "paused")?;
    check_not_suspended(&s, "paused")?;
    if s.status == SubscriptionStatus::Paused {
        return Err(ApiError::Conflict(format!(
            "subscription {id:?} is already paused"
        )));
    }
    let (_, now) = customer_and_now(&state, &tenant, &s).await?;
    let effective_at = body.effective_at.unwrap_or(now);
    check_effective_at(&s, effective_at)?;
    let payload = Lifecycle::SubscriptionPaused(SubscriptionEffective {
        subscription_id: id.clone(),
        customer_id: s.customer_id.clone(),
        effective_at,
    });
    let ev = event(&tenant, now, payload);
    publish(&state, &q, ev, &id, StatusCode::OK, |v| {
        v.status == SubscriptionStatus::Paused
    })
    .await
}

/// `POST /v1/subscriptions/{id}/resume`.
pub async fn resume(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<WriteQuery>,
    ApiJson(body): ApiJson<Effective>,
) -> Result<Answer, ApiError> {
    state.deadline(&q)?;
    let s = existing(&state, &tenant, &id).await?;
    check_not_canceled(&s, "resumed")?;
    check_not_suspended(&s, "resumed")?;
    if s.status != SubscriptionStatus::Paused {
        return Err(ApiError::Conflict(format!(
            "subscription {id:?} is not paused"
        )));
    }
    let (_, now) = customer_and_now(&state, &tenant, &s).await?;
    let effective_at = body.effective_at.unwrap_or(now);
    check_effective_at(&s, effective_at)?;
    let payload = Lifecycle::SubscriptionResumed(SubscriptionEffective {
        subscription_id: id.clone(),
        customer_id: s.customer_id.clone(),
        effective_at,
    });
    let ev = event(&tenant, now, payload);
    publish(&state, &q, ev, &id, StatusCode::OK, |v| {
        v.status != SubscriptionStatus::Paused
    })
    .await
}

/// `POST /v1/subscriptions/{id}/cancel`. A cancellation at period end may be replaced by an immediate one (the
/// last cancellation wins); anything else on a canceled subscription is a 409.
pub async fn cancel(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<WriteQuery>,
    ApiJson(body): ApiJson<Cancel>,
) -> Result<Answer, ApiError> {
    state.deadline(&q)?;
    let s = existing(&state, &tenant, &id).await?;
    if s.status == SubscriptionStatus::Canceled && (!s.cancel_at_period_end || body.at_period_end) {
        return Err(ApiError::Conflict(format!(
            "subscription {id:?} is already canceled"
        )));
    }
    let (_, now) = customer_and_now(&state, &tenant, &s).await?;
    let effective_at = body.effective_at.unwrap_or(now);
    check_effective_at(&s, effective_at)?;
    let at_period_end = body.at_period_end;
    let payload = Lifecycle::SubscriptionCanceled(SubscriptionCanceled {
        subscription_id: id.clone(),
        customer_id: s.customer_id.clone(),
        effective_at,
        at_period_end,
    });
    let ev = event(&tenant, now, payload);
    publish(&state, &q, ev, &id, StatusCode::OK, move |v| {
        v.status == SubscriptionStatus::Canceled && v.cancel_at_period_end == at_period_end
    })
    .await
}

/// `GET /v1/subscriptions/{id}`.
pub async fn get(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<SubscriptionView>, ApiError> {
    Ok(Json(existing(&state, &tenant, &id).await?))
}

/// `GET /v1/customers/{id}/subscriptions`: newest first, cursor = subscription id.
pub async fn list_of_customer(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(customer): Path<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = page_limit(q.limit)?;
    customers::existing(&state, &tenant, &customer).await?;
    let subs = state.billing.subscriptions_of(&tenant, &customer).await?;
    let mut subs = after_cursor(subs, q.starting_after.as_deref(), |s| &s.subscription_id)?;
    subs.truncate(limit + 1);
    Ok(Json(page(subs, limit)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::parse_json;
    use billing_schemas::lifecycle::CustomerCreated;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn customer(currency: &str) -> CustomerView {
        CustomerView::new(
            &CustomerCreated::new("cus-1", "Acme", currency, "UTC"),
            t("2026-01-01T00:00:00Z"),
        )
    }

    fn plan(code: &str, interval: Interval, amount: &str, trial: i32) -> Plan {
        Plan {
            version: 1,
            effective_from: None,
            tax_codes: vec![],
            code: code.into(),
            name: code.into(),
            interval,
            currency: "EUR".into(),
            amount: amount.into(),
            pay_in_advance: true,
            trial_period_days: trial,
            charges: Vec::new(),
        }
    }

    fn names(e: ApiError) -> Vec<String> {
        match e {
            ApiError::Fields { params, .. } => params.into_iter().map(|p| p.name).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_come_from_the_clock_and_the_plan() {
        let body: CreateSubscription = parse_json(
            br#"{"subscription_id": "sub-1", "customer_id": "cus-1", "plan_code": "pro"}"#,
        )
        .unwrap();
        let now = t("2026-03-10T12:00:00Z");
        let s = body
            .validate(
                Some(&customer("EUR")),
                Some(&plan("pro", Interval::Monthly, "10", 14)),
                now,
            )
            .unwrap();
        assert_eq!(s.started_at, now);
        assert_eq!(s.trial_ends_at, Some(t("2026-03-24T12:00:00Z")));
        assert_eq!(s.billing_time, BillingTime::Calendar);
        assert_eq!(s.proration, ProrationConvention::Days);
        let body: CreateSubscription = parse_json(
            br#"{"subscription_id": "sub-1", "customer_id": "cus-1", "plan_code": "pro",
                 "started_at": "2026-01-15T00:00:00Z", "billing_anchor_day": 31, "proration": "thirty_day"}"#,
        )
        .unwrap();
        let s = body
            .validate(
                Some(&customer("EUR")),
                Some(&plan("pro", Interval::Monthly, "10", 0)),
                now,
            )
            .unwrap();
        assert_eq!(s.started_at, t("2026-01-15T00:00:00Z"));
        assert_eq!(s.trial_ends_at, None);
        assert_eq!(s.billing_anchor_day, Some(31));
        assert_eq!(s.proration, ProrationConvention::ThirtyDay);
        let no_trial: CreateSubscription = parse_json(
            br#"{"subscription_id": "sub-1", "customer_id": "cus-1", "plan_code": "pro", "trial_ends_at": null}"#,
        )
        .unwrap();
        let s = no_trial
            .validate(
                Some(&customer("EUR")),
                Some(&plan("pro", Interval::Monthly, "10", 14)),
                now,
            )
            .unwrap();
        assert_eq!(
            s.trial_ends_at, None,
            "null: no trial, whatever the plan says"
        );
    }

    #[test]
    fn references_currency_and_anchor_are_checked() {
        let now = t("2026-03-10T12:00:00Z");
        let body = || -> CreateSubscription {
            parse_json(
                br#"{"subscription_id": "sub-1", "customer_id": "cus-1", "plan_code": "pro",
                     "billing_anchor_day": 32}"#,
            )
            .unwrap()
        };
        assert_eq!(
            names(body().validate(None, None, now).unwrap_err()),
            ["customer_id", "plan_code", "billing_anchor_day"]
        );
        assert_eq!(
            names(
                body()
                    .validate(
                        Some(&customer("USD")),
                        Some(&plan("pro", Interval::Monthly, "10", 0)),
                        now
                    )
                    .unwrap_err()
            ),
            ["plan_code", "billing_anchor_day"]
        );
        let weekly: CreateSubscription = parse_json(
            br#"{"subscription_id": "sub-1", "customer_id": "cus-1", "plan_code": "w",
                 "billing_anchor_day": 3, "billing_time": "anniversary",
                 "started_at": "2026-03-10T00:00:00Z", "trial_ends_at": "2026-03-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(
            names(
                weekly
                    .validate(
                        Some(&customer("EUR")),
                        Some(&plan("w", Interval::Weekly, "10", 0)),
                        now
                    )
                    .unwrap_err()
            ),
            ["billing_anchor_day", "billing_anchor_day", "trial_ends_at"]
        );
        assert!(parse_json::<CreateSubscription>(
            br#"{"subscription_id": "s", "customer_id": "c", "plan_code": "p", "billing_time": "daily"}"#
        )
        .is_err());
        assert!(parse_json::<ChangePlan>(br#"{"plan_code": "p", "timing": "later"}"#).is_err());
    }

    #[test]
    fn upgrades_are_plans_that_cost_at_least_as_much() {
        let basic = plan("basic", Interval::Monthly, "10", 0);
        let pro = plan("pro", Interval::Monthly, "20", 0);
        let same = plan("same", Interval::Monthly, "10.00", 0);
        assert!(is_upgrade(Some(&basic), &pro));
        assert!(!is_upgrade(Some(&pro), &basic));
        assert!(is_upgrade(Some(&basic), &same));
        assert!(is_upgrade(None, &basic));
        // Across intervals the yearly fees are compared: 100/year < 10/month.
        let yearly = plan("y", Interval::Yearly, "100", 0);
        assert!(!is_upgrade(Some(&basic), &yearly));
        assert!(is_upgrade(Some(&yearly), &basic));
    }

    #[test]
    fn changes_cannot_precede_the_start_or_the_latest_change() {
        let mut s = SubscriptionView {
            subscription_id: "sub-1".into(),
            customer_id: "cus-1".into(),
            initial_plan_code: "basic".into(),
            plan_code: "basic".into(),
            status: SubscriptionStatus::Active,
            billing_time: BillingTime::Calendar,
            billing_anchor_day: None,
            proration: ProrationConvention::Days,
            started_at: t("2026-01-10T00:00:00Z"),
            trial_ends_at: None,
            canceled_at: None,
            cancel_at_period_end: false,
            changes: vec![billing_store::subscriptions::ChangeView {
                kind: "pause".into(),
                plan_code: None,
                effective_at: t("2026-02-01T00:00:00Z"),
                at_period_end: false,
            }],
            created_at: t("2026-01-10T00:00:00Z"),
        };
        assert!(check_effective_at(&s, t("2026-01-01T00:00:00Z")).is_err());
        assert!(check_effective_at(&s, t("2026-01-20T00:00:00Z")).is_err());
        assert!(check_effective_at(&s, t("2026-02-01T00:00:00Z")).is_ok());
        assert!(check_not_canceled(&s, "paused").is_ok());
        s.status = SubscriptionStatus::Canceled;
        assert!(matches!(
            check_not_canceled(&s, "paused"),
            Err(ApiError::Conflict(_))
        ));
    }
}
