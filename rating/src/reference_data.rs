//! What rating knows from the reference topics: metrics and plans from `billing.catalog`, customers and
//! subscription histories from `billing.lifecycle`. Lifecycle events become the core's one subscription model
//! ([`billing_core::subscription::Subscription`]); attribution itself is [`billing_core::attribution::attribute`].

use std::collections::HashMap;
use std::sync::Arc;

use billing_core::aggregation::Metric;
use billing_core::attribution::{self, Attributable};
use billing_core::charge::ChargeModel;
use billing_core::invoicing::PlanTerms;
use billing_core::period::{BillingAnchor, BillingPeriod};
use billing_core::subscription::{Change, ChangeKind, Subscription as History};
use billing_core::Currency;
use billing_schemas::catalog::{self, Catalog, CatalogEvent};
use billing_schemas::lifecycle::{BillingTime, Lifecycle, LifecycleEvent};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;

/// A charge ready to aggregate and price.
#[derive(Debug)]
pub struct ChargeInfo {
    /// The catalog charge.
    pub charge: catalog::Charge,
    /// Its parsed Lago model.
    pub model: ChargeModel,
}

/// A plan with parsed charges.
#[derive(Debug)]
pub struct PlanInfo {
    /// The catalog plan.
    pub plan: catalog::Plan,
    /// Currency.
    pub currency: Currency,
    /// Subscription fee per period.
    pub fee: rust_decimal::Decimal,
    /// Charges, parsed.
    pub charges: Vec<ChargeInfo>,
}

impl PlanInfo {
    /// The plan's fee terms for a subscription billed on `anchor`.
    pub fn terms(&self, anchor: BillingAnchor) -> PlanTerms {
        PlanTerms {
            fee: self.fee,
            interval: self.plan.interval,
            pay_in_advance: self.plan.pay_in_advance,
            anchor,
        }
    }
}

/// Parse a plan's charges; a plan with an invalid charge is refused whole.
pub fn plan_info(plan: catalog::Plan) -> Result<PlanInfo, String> {
    let currency = Currency::parse(&plan.currency).map_err(|e| e.to_string())?;
    let fee =
        billing_core::money::parse_decimal("amount", &plan.amount).map_err(|e| e.to_string())?;
    let mut charges = Vec::with_capacity(plan.charges.len());
    for c in &plan.charges {
        let props: serde_json::Value = serde_json::from_str(&c.properties)
            .map_err(|e| format!("charge {}: properties: {e}", c.id))?;
        let model = ChargeModel::from_lago(c.charge_model.lago_name(), &props)
            .map_err(|e| format!("charge {}: {e}", c.id))?;
        charges.push(ChargeInfo {
            charge: c.clone(),
            model,
        });
    }
    Ok(PlanInfo {
        plan,
        currency,
        fee,
        charges,
    })
}

#[derive(Debug, Clone)]
struct Subscription {
    id: String,
    /// Plan codes the history's plan indices point to.
    plans: Vec<String>,
    billing_time: BillingTime,
    history: History,
}

impl Subscription {
    fn plan_index(&mut self, code: &str) -> usize {
        match self.plans.iter().position(|p| p == code) {
            Some(i) => i,
            None => {
                self.plans.push(code.to_owned());
                self.plans.len() - 1
            }
        }
    }
}

#[derive(Debug, Default)]
struct Customer {
    known: bool,
    timezone: Option<Tz>,
    subscriptions: Vec<Subscription>,
}

/// The subscription, plan and billing period an event falls in.
#[derive(Debug)]
pub struct Attribution {
    /// Subscription id.
    pub subscription_id: String,
    /// Plan in force at the event's time.
    pub plan: Arc<PlanInfo>,
    /// Billing period containing the event.
    pub period: BillingPeriod,
}

/// Why an event cannot be attributed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttributionError {
    /// No `CustomerCreated` for this customer.
    #[error("unknown customer {0:?}")]
    UnknownCustomer(String),
    /// No subscription in force at the event's time.
    #[error("no active subscription for customer {customer:?} at {at}")]
    NoActiveSubscription {
        /// Customer.
        customer: String,
        /// Event time.
        at: DateTime<Utc>,
    },
}

/// Everything read from the catalog and lifecycle topics.
#[derive(Debug, Default)]
pub struct Reference {
    metrics: HashMap<(String, String), Arc<Metric>>,
    plans: HashMap<(String, String), Arc<PlanInfo>>,
    customers: HashMap<(String, String), Customer>,
}

impl Reference {
    /// Apply a catalog event.
    pub fn apply_catalog(&mut self, ev: CatalogEvent) {
        let tenant = ev.tenant_id;
        match ev.payload {
            Catalog::BillableMetric(m) => {
                let metric = Metric {
                    code: m.code.clone(),
                    aggregation_type: m.aggregation.core(),
                    field_name: m.field_name.clone(),
                    filters: m
                        .filters
                        .iter()
                        .map(|f| (f.key.clone(), f.values.clone()))
                        .collect(),
                    group_by: None,
                    initial_value: None,
                };
                if let Err(e) = metric.validate() {
                    tracing::warn!(tenant, code = m.code, error = %e, "ignoring invalid billable metric");
                    return;
                }
                self.metrics.insert((tenant, m.code), Arc::new(metric));
            }
            Catalog::Plan(p) => {
                let code = p.code.clone();
                match plan_info(p) {
                    Ok(info) => {
                        self.plans.insert((tenant, code), Arc::new(info));
                    }
                    Err(e) => tracing::warn!(tenant, code, error = %e, "ignoring invalid plan"),
                }
            }
            Catalog::Deleted(d) => match d.kind.as_str() {
                "billable_metric" => {
                    self.metrics.remove(&(tenant, d.code));
                }
                "plan" => {
                    self.plans.remove(&(tenant, d.code));
                }
                other => tracing::warn!(kind = other, "unknown catalog kind deleted"),
            },
        }
    }

    /// Apply a lifecycle event. A change that would make a subscription's history inconsistent (a resume without
    /// a pause, a change after the end or before the start) is refused and logged; the history stays as it was.
    pub fn apply_lifecycle(&mut self, ev: LifecycleEvent) {
        let tenant = ev.tenant_id;
        let (customer, id, change) = match ev.payload {
            Lifecycle::CustomerCreated(c) => {
                let entry = self.customers.entry((tenant, c.customer_id)).or_default();
                entry.known = true;
                entry.timezone = c.timezone.parse().ok();
                return;
            }
            Lifecycle::CustomerUpdated(c) => {
                if let Some(tz) = c.timezone {
                    self.customers
                        .entry((tenant, c.customer_id))
                        .or_default()
                        .timezone = tz.parse().ok();
                }
                return;
            }
            Lifecycle::SubscriptionCreated(s) => {
                let entry = self.customers.entry((tenant, s.customer_id)).or_default();
                if let Some(existing) = entry
                    .subscriptions
                    .iter_mut()
                    .find(|x| x.id == s.subscription_id)
                {
                    // A repeated creation (a producer retry, a replayed topic) keeps the changes made since.
                    existing.billing_time = s.billing_time;
                    existing.plans[existing.history.plan] = s.plan_code;
                    existing.history.started_at = s.started_at;
                    existing.history.trial_ends_at = s.trial_ends_at;
                    return;
                }
                entry.subscriptions.push(Subscription {
                    id: s.subscription_id,
                    plans: vec![s.plan_code],
                    billing_time: s.billing_time,
                    history: History {
                        started_at: s.started_at,
                        trial_ends_at: s.trial_ends_at,
                        plan: 0,
                        changes: Vec::new(),
                    },
                });
                return;
            }
            Lifecycle::ClockTick(_) => return,
            // The event says when the new plan takes effect, so the core applies it at that instant.
            Lifecycle::SubscriptionChanged(s) => (
                s.customer_id,
                s.subscription_id,
                (s.effective_at, Err(s.new_plan_code)),
            ),
            Lifecycle::SubscriptionPaused(s) => (
                s.customer_id,
                s.subscription_id,
                (s.effective_at, Ok(ChangeKind::Pause)),
            ),
            Lifecycle::SubscriptionResumed(s) => (
                s.customer_id,
                s.subscription_id,
                (s.effective_at, Ok(ChangeKind::Resume)),
            ),
            Lifecycle::SubscriptionCanceled(s) => (
                s.customer_id,
                s.subscription_id,
                (
                    s.effective_at,
                    Ok(ChangeKind::Cancel {
                        immediate: !s.at_period_end,
                    }),
                ),
            ),
        };
        let plans = &self.plans;
        let Some(c) = self.customers.get_mut(&(tenant.clone(), customer.clone())) else {
            tracing::warn!(
                tenant,
                customer,
                subscription = id,
                "change for an unknown customer ignored"
            );
            return;
        };
        let tz = c.timezone.unwrap_or(Tz::UTC);
        let Some(sub) = c.subscriptions.iter_mut().find(|s| s.id == id) else {
            tracing::warn!(
                tenant,
                customer,
                subscription = id,
                "change of an unknown subscription ignored"
            );
            return;
        };
        let (at, kind) = change;
        let kind = kind.unwrap_or_else(|plan_code| ChangeKind::Upgrade {
            plan: sub.plan_index(&plan_code),
        });
        let mut history = sub.history.clone();
        if matches!(kind, ChangeKind::Cancel { .. }) {
            // The last cancellation wins: an immediate one replaces one scheduled at period end.
            history
                .changes
                .retain(|c| !matches!(c.kind, ChangeKind::Cancel { .. }));
        }
        history.changes.push(Change { at, kind });
        // Checked with the phases and the timezone attribution uses, when every plan is known.
        let anchor = BillingAnchor::from(sub.billing_time);
        let terms: Option<Vec<PlanTerms>> = sub
            .plans
            .iter()
            .map(|code| {
                plans
                    .get(&(tenant.clone(), code.clone()))
                    .map(|p| p.terms(anchor))
            })
            .collect();
        let valid = match terms {
            Some(terms) => attribution::check_history(&history, &terms, tz),
            None => Ok(()),
        };
        match valid {
            Ok(()) => sub.history = history,
            Err(e) => {
                tracing::warn!(tenant, customer, subscription = id, error = %e, "inconsistent subscription change refused")
            }
        }
    }

    /// The metric with this code, if the tenant defined it.
    pub fn metric(&self, tenant: &str, code: &str) -> Option<Arc<Metric>> {
        self.metrics
            .get(&(tenant.to_owned(), code.to_owned()))
            .cloned()
    }

    /// Attribute an event time to the subscription, plan and period in force (see
    /// [`billing_core::attribution`] for the rules).
    pub fn attribute(
        &self,
        tenant: &str,
        customer: &str,
        at: DateTime<Utc>,
    ) -> Result<Attribution, AttributionError> {
        let c = self
            .customers
            .get(&(tenant.to_owned(), customer.to_owned()))
            .filter(|c| c.known)
            .ok_or_else(|| AttributionError::UnknownCustomer(customer.to_owned()))?;
        let none = || AttributionError::NoActiveSubscription {
            customer: customer.to_owned(),
            at,
        };
        let plans: Vec<Vec<Option<Arc<PlanInfo>>>> = c
            .subscriptions
            .iter()
            .map(|s| {
                s.plans
                    .iter()
                    .map(|code| self.plans.get(&(tenant.to_owned(), code.clone())).cloned())
                    .collect()
            })
            .collect();
        let terms: Vec<Vec<Option<PlanTerms>>> = c
            .subscriptions
            .iter()
            .zip(&plans)
            .map(|(s, ps)| {
                let anchor = BillingAnchor::from(s.billing_time);
                ps.iter()
                    .map(|p| p.as_ref().map(|p| p.terms(anchor)))
                    .collect()
            })
            .collect();
        let subs: Vec<Attributable<'_>> = c
            .subscriptions
            .iter()
            .zip(&terms)
            .map(|(s, plans)| Attributable {
                subscription: &s.history,
                plans,
            })
            .collect();
        let found =
            attribution::attribute(&subs, c.timezone.unwrap_or(Tz::UTC), at).ok_or_else(none)?;
        let plan = plans[found.subscription][found.plan]
            .clone()
            .ok_or_else(none)?;
        Ok(Attribution {
            subscription_id: c.subscriptions[found.subscription].id.clone(),
            plan,
            period: found.period,
        })
    }
}
