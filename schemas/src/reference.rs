//! The reference state the services fold from the reference topics: metrics and plans from `billing.catalog`,
//! customers and subscription histories from `billing.lifecycle`. Rating and the invoicer fold the same events
//! with this one code, so they cannot disagree on what a subscription is. Lifecycle events become the core's one
//! subscription model ([`billing_core::subscription::Subscription`]); attribution itself is
//! [`billing_core::attribution::attribute`].
//!
//! Applying an event never fails half-way: an event that cannot be applied (an invalid plan, a change that would
//! make a history inconsistent, a change for an unknown subscription) leaves the state as it was and returns
//! why, for the caller to log or dead-letter.

use std::collections::HashMap;
use std::sync::Arc;

use billing_core::aggregation::Metric;
use billing_core::attribution::{self, Attributable};
use billing_core::charge::ChargeModel;
use billing_core::discount::Coupon;
use billing_core::invoice::Adjustments;
use billing_core::invoicing::{
    closing_period, invoice_billing_date, BillableSubscription, BillingDateInput, ChargeAggregate,
    InvoiceOutcome, PlanTerms, PricedCharge, PricedPlan,
};
use billing_core::money::RoundingMode;
use billing_core::period::{BillingAnchor, BillingPeriod};
use billing_core::proration::ProrationConvention;
use billing_core::subscription::{Change, ChangeKind, Subscription as History};
use billing_core::tax::TaxRate;
use billing_core::Currency;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use crate::catalog::{self, Catalog, CatalogEvent};
use crate::lifecycle::{BillingTime, CustomerCreated, Lifecycle, LifecycleEvent, TaxExempt};

mod snapshot;

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

/// The version of a plan that a subscription starting on it (or changing to it) at `since` uses: the highest
/// version effective then (`effective_from` at or before `since`, or none: an edit for everyone). Running
/// subscriptions keep that version until they change plan; a version effective from a later date applies to the
/// subscriptions that start or change after it.
pub fn version_at(
    plans: &HashMap<(String, String), Vec<Arc<PlanInfo>>>,
    tenant: &str,
    code: &str,
    since: DateTime<Utc>,
) -> Option<Arc<PlanInfo>> {
    let versions = plans.get(&(tenant.to_owned(), code.to_owned()))?;
    versions
        .iter()
        .rev()
        .find(|v| v.plan.effective_from.is_none_or(|f| f <= since))
        .or_else(|| versions.first())
        .cloned()
}

/// A subscription as the lifecycle topic describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// External id.
    pub id: String,
    /// Plan codes the history's plan indices point to.
    pub plans: Vec<String>,
    /// Calendar or anniversary periods.
    pub billing_time: BillingTime,
    /// Day-of-month anchor, overriding `billing_time`.
    pub anchor_day: Option<u32>,
    /// Proration convention of the fee.
    pub proration: ProrationConvention,
    /// Billing time of the creation event.
    pub created_at: DateTime<Utc>,
    /// Start, trial, plan and changes.
    pub history: History,
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

    /// When the subscription began to use its plan number `i`: its start for the first, else the first change to
    /// it. The plan's version in force then is the one it keeps (see [`version_at`]).
    pub fn plan_since(&self, i: usize) -> DateTime<Utc> {
        if i == self.history.plan {
            return self.history.started_at;
        }
        self.history
            .changes
            .iter()
            .filter(|c| {
                matches!(c.kind, ChangeKind::Upgrade { plan } | ChangeKind::Downgrade { plan } if plan == i)
            })
            .map(|c| c.at)
            .min()
            .unwrap_or(self.history.started_at)
    }

    /// Where the subscription's periods start.
    pub fn anchor(&self) -> BillingAnchor {
        match self.anchor_day {
            Some(d) => BillingAnchor::DayOfMonth(d),
            None => BillingAnchor::from(self.billing_time),
        }
    }
}

/// A customer and its subscriptions.
#[derive(Debug, Default, Clone)]
pub struct Customer {
    /// The customer as created, with every update applied (`None` while only subscriptions were seen, and always in
    /// the state [`Reference::for_attribution`] keeps). Boxed: most of a customer's size, and rating keeps none.
    pub record: Option<Box<CustomerCreated>>,
    /// Billing time of the creation event.
    pub created_at: Option<DateTime<Utc>>,
    /// Parsed timezone (`None`: unknown or invalid; periods then use UTC).
    pub timezone: Option<Tz>,
    /// The test clock the customer runs on, if any (set at creation).
    pub test_clock: Option<String>,
    /// Subscriptions in creation order.
    pub subscriptions: Vec<Subscription>,
    /// Coupons applied, in application order.
    pub coupons: Vec<AppliedCoupon>,
    /// Prepaid-credit wallets, in creation order.
    pub wallets: Vec<Wallet>,
}

/// A coupon applied to a customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedCoupon {
    /// The application as published.
    pub applied: crate::lifecycle::CouponApplied,
    /// The terms, as the core applies them (`id`: the application's id).
    pub coupon: Coupon,
    /// Billing time of the application: it discounts the invoices whose billing date is at or after it.
    pub applied_at: DateTime<Utc>,
    /// Billing time of its removal: it discounts no invoice whose billing date is at or after it.
    pub removed_at: Option<DateTime<Utc>>,
}

impl AppliedCoupon {
    /// Whether it may discount the invoice of this billing date.
    pub fn in_force(&self, billing_date: DateTime<Utc>) -> bool {
        self.applied_at <= billing_date && self.removed_at.is_none_or(|r| billing_date < r)
    }
}

/// The core's coupon of an application: its terms parsed, its scope (plans, metrics, subscription).
pub fn applied_coupon(c: &crate::lifecycle::CouponApplied) -> Result<Coupon, String> {
    use billing_core::discount::{CouponType, Frequency};
    let num = |field: &str, v: &Option<String>| {
        v.as_deref()
            .map(|s| billing_core::money::parse_exact_decimal(field, s, 9))
            .transpose()
            .map_err(|e| e.to_string())
    };
    let coupon = Coupon {
        code: c.coupon_code.clone(),
        id: Some(c.applied_coupon_id.clone()),
        applies_to: Some(billing_core::discount::CouponScope {
            plans: c.plan_codes.clone(),
            metrics: c.metric_codes.clone(),
            subscriptions: c.subscription_id.iter().cloned().collect(),
        }),
        coupon_type: c.coupon_type,
        amount: num("amount", &c.amount)?,
        percentage_rate: num("percentage_rate", &c.percentage_rate)?,
        frequency: c.frequency,
        frequency_duration: c
            .frequency_duration
            .map(|d| u32::try_from(d).map_err(|_| format!("frequency_duration {d} is negative")))
            .transpose()?,
        periods_applied: 0,
        amount_remaining: None,
    };
    match (coupon.coupon_type, coupon.amount, coupon.percentage_rate) {
        (CouponType::FixedAmount, Some(a), _) if a > rust_decimal::Decimal::ZERO => {}
        (CouponType::Percentage, _, Some(r))
            if r > rust_decimal::Decimal::ZERO && r <= rust_decimal::Decimal::ONE_HUNDRED => {}
        (CouponType::FixedAmount, ..) => {
            return Err("a fixed_amount coupon needs an amount above 0".into())
        }
        (CouponType::Percentage, ..) => {
            return Err(
                "a percentage coupon needs a percentage_rate above 0 and at most 100".into(),
            )
        }
    }
    if coupon.frequency == Frequency::Recurring && coupon.frequency_duration.is_none_or(|d| d == 0)
    {
        return Err("a recurring coupon needs a frequency_duration of 1 or more".into());
    }
    Ok(coupon)
}

impl Customer {
    /// Whether the customer itself was created (not only its subscriptions seen).
    pub fn known(&self) -> bool {
        self.created_at.is_some()
    }

    /// The timezone periods are cut in.
    pub fn tz(&self) -> Tz {
        self.timezone.unwrap_or(Tz::UTC)
    }
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

/// A tax rate of the catalog, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaxRateInfo {
    /// The rate as the core applies it.
    pub rate: TaxRate,
    /// Name shown on invoices.
    pub name: String,
    /// Applies to the customers without tax codes of their own.
    pub applied_to_tenant: bool,
}

/// Parse a catalog tax rate: a percent from 0 to 100.
pub fn tax_rate_info(t: &catalog::TaxRate) -> Result<TaxRateInfo, String> {
    let rate =
        billing_core::money::parse_exact_decimal("rate", &t.rate, 4).map_err(|e| e.to_string())?;
    if rate < rust_decimal::Decimal::ZERO || rate > rust_decimal::Decimal::ONE_HUNDRED {
        return Err(format!("rate {} is not a percent from 0 to 100", t.rate));
    }
    Ok(TaxRateInfo {
        rate: TaxRate {
            code: t.code.clone(),
            rate,
            inclusive: t.inclusive,
        },
        name: t.name.clone(),
        applied_to_tenant: t.applied_to_tenant,
    })
}

/// The taxes of one customer's invoice besides the rates set at plans and charges.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CustomerTaxes {
    /// Rates of the lines without their own: the customer's tax codes, else the tenant's rates.
    pub rates: Vec<TaxRate>,
    /// No tax at all (exempt or reverse charge).
    pub exempt: bool,
    /// The legal mention the invoice carries, for an exempt or reverse-charge customer.
    pub note: Option<String>,
}

/// The legal mention of an invoice to a customer that pays no tax. A reverse-charge customer accounts for the
/// tax itself (EU VAT Directive, art. 196); the invoice names the customer's tax ids.
pub fn tax_note(exempt: TaxExempt, tax_ids: &[String]) -> Option<String> {
    match exempt {
        TaxExempt::None => None,
        TaxExempt::Exempt => Some("Tax exempt".to_owned()),
        TaxExempt::Reverse if tax_ids.is_empty() => {
            Some("Reverse charge: the customer accounts for the tax".to_owned())
        }
        TaxExempt::Reverse => Some(format!(
            "Reverse charge: the customer accounts for the tax (tax id {})",
            tax_ids.join(", ")
        )),
    }
}

/// What a customer's coupons and wallets gave on its earlier invoices: per coupon application, one discount per
/// invoice it discounted, in billing-date order; per wallet, the credits its invoices used. Recorded on the
/// invoices themselves, so a coupon or a credit is used once whatever the restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PriorUse {
    coupons: HashMap<String, Vec<rust_decimal::Decimal>>,
    credits: HashMap<String, rust_decimal::Decimal>,
}

impl PriorUse {
    /// Record that the coupon application `id` discounted an invoice by `amount`.
    pub fn record(&mut self, id: &str, amount: rust_decimal::Decimal) {
        self.coupons.entry(id.to_owned()).or_default().push(amount);
    }

    /// The discounts of coupon application `id` so far.
    pub fn of(&self, id: &str) -> &[rust_decimal::Decimal] {
        self.coupons.get(id).map(Vec::as_slice).unwrap_or_default()
    }

    /// Record that an invoice used `amount` of the credits of wallet `id`.
    pub fn record_credit(&mut self, id: &str, amount: rust_decimal::Decimal) {
        *self.credits.entry(id.to_owned()).or_default() += amount;
    }

    /// The credits of wallet `id` used so far.
    pub fn credit(&self, id: &str) -> rust_decimal::Decimal {
        self.credits.get(id).copied().unwrap_or_default()
    }
}

/// A prepaid-credit wallet of a customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wallet {
    /// The wallet as created.
    pub created: crate::lifecycle::WalletCreated,
    /// Billing time of its creation.
    pub created_at: DateTime<Utc>,
    /// Its top-ups in order: (billing time, the event, granted, paid).
    pub top_ups: Vec<(
        DateTime<Utc>,
        crate::lifecycle::WalletToppedUp,
        rust_decimal::Decimal,
        rust_decimal::Decimal,
    )>,
}

impl Wallet {
    /// Credits added up to `at` (inclusive).
    pub fn credited_by(&self, at: DateTime<Utc>) -> rust_decimal::Decimal {
        self.top_ups
            .iter()
            .filter(|(t, ..)| *t <= at)
            .map(|(_, _, g, p)| g + p)
            .sum()
    }

    /// Whether its credits may pay the invoice of this billing date (not expired by then).
    pub fn live_at(&self, billing_date: DateTime<Utc>) -> bool {
        self.created.expiration_at.is_none_or(|e| billing_date < e)
    }
}

/// Everything read from the catalog and lifecycle topics.
#[derive(Debug, Default)]
pub struct Reference {
    metrics: hashbrown::HashMap<(String, String), Arc<Metric>>,
    tax_rates: HashMap<(String, String), Arc<TaxRateInfo>>,
    /// Every version of each plan, in version order.
    plans: HashMap<(String, String), Vec<Arc<PlanInfo>>>,
    /// Boxed: the map then moves 32-byte entries when it grows, not whole customers (a restart over a million
    /// customers spent most of its fold copying them into fresh pages).
    customers: hashbrown::HashMap<CustomerKey, Box<Customer>>,
    /// The latest time of each clock: (tenant, clock id); the wall clock's ticks have the tenant `*`.
    clocks: hashbrown::HashMap<(String, String), DateTime<Utc>>,
    /// The latest time of all clocks (clocks only move forward): no customer's clock is past it.
    latest_clock: Option<DateTime<Utc>>,
    /// Counts the changes that can change an attribution (every one but clock ticks), for [`AttributionMemo`].
    revision: u64,
    /// Keeps only what attribution needs (see [`Reference::for_attribution`]).
    attribution_only: bool,
}

/// A `(String, String)` key, or a [`CustomerKey`], looked up by borrowed halves without building the key: it hashes
/// as the tuple does.
#[derive(Hash)]
struct Pair<'a>(&'a str, &'a str);

impl hashbrown::Equivalent<(String, String)> for Pair<'_> {
    fn equivalent(&self, key: &(String, String)) -> bool {
        self.0 == key.0 && self.1 == key.1
    }
}

/// A customer's key, its tenant and its id, in one allocation: as two `String`s, a million customers' keys took 48
/// bytes of the map's slot (about twice that per customer with the map's spare room) and two allocations each.
#[derive(Debug, PartialEq, Eq)]
struct CustomerKey {
    /// The tenant followed by the customer id.
    both: Box<str>,
    /// Where the customer id starts.
    split: usize,
}

impl CustomerKey {
    fn tenant(&self) -> &str {
        &self.both[..self.split]
    }

    fn customer(&self) -> &str {
        &self.both[self.split..]
    }
}

impl std::hash::Hash for CustomerKey {
    /// As [`Pair`] hashes, so that a `Pair` finds it.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.tenant().hash(state);
        self.customer().hash(state);
    }
}

impl hashbrown::Equivalent<CustomerKey> for Pair<'_> {
    fn equivalent(&self, key: &CustomerKey) -> bool {
        self.0 == key.tenant() && self.1 == key.customer()
    }
}

impl From<&Pair<'_>> for CustomerKey {
    fn from(p: &Pair<'_>) -> Self {
        CustomerKey {
            both: [p.0, p.1].concat().into_boxed_str(),
            split: p.0.len(),
        }
    }
}

/// An attribution kept by a caller that rates many events of one customer (see [`Reference::attribute_memo`]):
/// valid for the event times of its stretch while the reference data's revision is unchanged.
#[derive(Debug)]
pub struct AttributionMemo {
    revision: u64,
    stretch: billing_core::attribution::Stretch,
    attribution: Attribution,
}

impl Reference {
    /// The reference state rating keeps: the catalog, the clocks, and of each customer its timezone and its
    /// subscriptions, not what only invoices read (the customer's profile, coupons, wallets), which is most of a
    /// customer's memory. It attributes usage exactly as the full state does.
    pub fn for_attribution() -> Self {
        Reference {
            attribution_only: true,
            ..Reference::default()
        }
    }

    /// Apply a catalog event; an invalid entry is refused whole and the previous version kept.
    pub fn apply_catalog(&mut self, ev: CatalogEvent) -> Result<(), String> {
        self.revision += 1;
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
                metric
                    .validate()
                    .map_err(|e| format!("invalid billable metric {:?}: {e}", m.code))?;
                self.metrics.insert((tenant, m.code), Arc::new(metric));
            }
            Catalog::Plan(p) => {
                let code = p.code.clone();
                let info = plan_info(p).map_err(|e| format!("invalid plan {code:?}: {e}"))?;
                let versions = self.plans.entry((tenant, code)).or_default();
                // A repeated version (a retry, a replay) replaces itself.
                versions.retain(|v| v.plan.version != info.plan.version);
                versions.push(Arc::new(info));
                versions.sort_by_key(|v| v.plan.version);
            }
            // A coupon's terms are copied onto the customer when it is applied (`CouponApplied`), an add-on's onto
            // the one-off invoice that bills it.
            Catalog::Coupon(_) | Catalog::AddOn(_) => {}
            Catalog::TaxRate(t) => {
                let info =
                    tax_rate_info(&t).map_err(|e| format!("invalid tax rate {:?}: {e}", t.code))?;
                self.tax_rates.insert((tenant, t.code), Arc::new(info));
            }
            Catalog::Deleted(d) => match d.kind.as_str() {
                "billable_metric" => {
                    self.metrics.remove(&(tenant, d.code));
                }
                "tax_rate" => {
                    self.tax_rates.remove(&(tenant, d.code));
                }
                "coupon" | "add_on" => {}
                "plan" => {
                    self.plans.remove(&(tenant, d.code));
                }
                other => return Err(format!("unknown catalog kind {other:?} deleted")),
            },
        }
        Ok(())
    }

    /// Apply a lifecycle event. A change that would make a subscription's history inconsistent (a resume without
    /// a pause, a change after the end or before the start) is refused; the history stays as it was.
    pub fn apply_lifecycle(&mut self, ev: LifecycleEvent) -> Result<(), String> {
        let attribution_only = self.attribution_only;
        if attribution_only
            && matches!(
                ev.payload,
                Lifecycle::CouponApplied(_)
                    | Lifecycle::CouponRemoved(_)
                    | Lifecycle::WalletCreated(_)
                    | Lifecycle::WalletToppedUp(_)
            )
        {
            return Ok(());
        }
        if !matches!(ev.payload, Lifecycle::ClockTick(_)) {
            self.revision += 1;
        }
        let tenant = ev.tenant_id;
        let (customer, id, change) = match ev.payload {
            Lifecycle::CustomerCreated(c) => {
                let entry = self
                    .customers
                    .entry_ref(&Pair(&tenant, &c.customer_id))
                    .or_default();
                entry.timezone = c.timezone.parse().ok();
                entry.created_at.get_or_insert(ev.occurred_at);
                entry.test_clock.clone_from(&c.test_clock_id);
                if !attribution_only {
                    entry.record = Some(Box::new(c));
                }
                return Ok(());
            }
            Lifecycle::CustomerUpdated(u) => {
                let entry = self
                    .customers
                    .entry_ref(&Pair(&tenant, &u.customer_id))
                    .or_default();
                if attribution_only && entry.known() {
                    if let Some(tz) = u.timezone {
                        entry.timezone = tz.parse().ok();
                    }
                    return Ok(());
                }
                let Some(c) = entry.record.as_mut() else {
                    return Err(format!("update of unknown customer {:?}", u.customer_id));
                };
                if let Some(tz) = u.timezone {
                    entry.timezone = tz.parse().ok();
                    c.timezone = tz;
                }
                let keep = |old: &mut Option<String>, new: Option<String>| {
                    if new.is_some() {
                        *old = new;
                    }
                };
                if let Some(name) = u.name {
                    c.name = name;
                }
                keep(&mut c.email, u.email);
                keep(&mut c.billing_country, u.billing_country);
                if u.address.is_some() {
                    c.address = u.address;
                }
                if let Some(v) = u.tax_ids {
                    c.tax_ids = v;
                }
                if let Some(v) = u.invoice_grace_period_days {
                    c.invoice_grace_period_days = v;
                }
                if let Some(v) = u.net_payment_term_days {
                    c.net_payment_term_days = v;
                }
                if let Some(v) = u.metadata {
                    c.metadata = v;
                }
                if let Some(v) = u.tax_codes {
                    c.tax_codes = v;
                }
                if let Some(v) = u.tax_exempt {
                    c.tax_exempt = v;
                }
                return Ok(());
            }
            Lifecycle::SubscriptionCreated(s) => {
                let entry = self
                    .customers
                    .entry_ref(&Pair(&tenant, &s.customer_id))
                    .or_default();
                let anchor_day = match s.billing_anchor_day {
                    None => None,
                    Some(d @ 1..=31) => Some(d as u32),
                    Some(d) => return Err(format!("billing_anchor_day {d} is not in 1..=31")),
                };
                if let Some(existing) = entry
                    .subscriptions
                    .iter_mut()
                    .find(|x| x.id == s.subscription_id)
                {
                    // A repeated creation (a producer retry, a replayed topic) keeps the changes made since.
                    existing.billing_time = s.billing_time;
                    existing.anchor_day = anchor_day;
                    existing.proration = s.proration;
                    existing.plans[existing.history.plan] = s.plan_code;
                    existing.history.started_at = s.started_at;
                    existing.history.trial_ends_at = s.trial_ends_at;
                    return Ok(());
                }
                // Exactly one more (a `push` on an empty list makes room for four, 512 bytes a customer).
                entry.subscriptions.reserve_exact(1);
                entry.subscriptions.push(Subscription {
                    id: s.subscription_id,
                    plans: vec![s.plan_code],
                    billing_time: s.billing_time,
                    anchor_day,
                    proration: s.proration,
                    created_at: ev.occurred_at,
                    history: History {
                        started_at: s.started_at,
                        trial_ends_at: s.trial_ends_at,
                        plan: 0,
                        changes: Vec::new(),
                    },
                });
                return Ok(());
            }
            Lifecycle::CouponApplied(a) => {
                let coupon = applied_coupon(&a)
                    .map_err(|e| format!("coupon {:?} not applied: {e}", a.coupon_code))?;
                let Some(c) = self
                    .customers
                    .get_mut(&Pair(&tenant, &a.customer_id))
                    .filter(|c| c.known())
                else {
                    return Err(format!(
                        "coupon applied to unknown customer {:?}",
                        a.customer_id
                    ));
                };
                let currency = c
                    .record
                    .as_ref()
                    .map(|r| r.currency.as_str())
                    .unwrap_or_default();
                if let Some(cur) = a
                    .amount_currency
                    .as_deref()
                    .filter(|cur| !cur.eq_ignore_ascii_case(currency))
                {
                    return Err(format!(
                        "coupon {:?} is in {cur}, customer {:?} is billed in {currency}",
                        a.coupon_code, a.customer_id
                    ));
                }
                match c.coupons.iter_mut().find(|x| x.coupon.id == coupon.id) {
                    // A repeated application (a retry, a replay) keeps its first time.
                    Some(existing) => {
                        existing.coupon = coupon;
                        existing.applied = a;
                    }
                    None => c.coupons.push(AppliedCoupon {
                        applied: a,
                        coupon,
                        applied_at: ev.occurred_at,
                        removed_at: None,
                    }),
                }
                return Ok(());
            }
            Lifecycle::WalletCreated(w) => {
                let Some(c) = self
                    .customers
                    .get_mut(&Pair(&tenant, &w.customer_id))
                    .filter(|c| c.known())
                else {
                    return Err(format!("wallet of unknown customer {:?}", w.customer_id));
                };
                match c
                    .wallets
                    .iter_mut()
                    .find(|x| x.created.wallet_id == w.wallet_id)
                {
                    Some(existing) => existing.created = w,
                    None => c.wallets.push(Wallet {
                        created: w,
                        created_at: ev.occurred_at,
                        top_ups: Vec::new(),
                    }),
                }
                return Ok(());
            }
            Lifecycle::WalletToppedUp(t) => {
                let credits = |field: &str, v: &str| {
                    billing_core::money::parse_exact_decimal(field, v, 9)
                        .and_then(|d| billing_core::money::non_negative(field, d))
                        .map_err(|e| format!("top-up {:?}: {e}", t.transaction_id))
                };
                let granted = credits("granted_credits", &t.granted_credits)?;
                let paid = credits("paid_credits", &t.paid_credits)?;
                let wallet = self
                    .customers
                    .get_mut(&Pair(&tenant, &t.customer_id))
                    .and_then(|c| {
                        c.wallets
                            .iter_mut()
                            .find(|w| w.created.wallet_id == t.wallet_id)
                    });
                let Some(wallet) = wallet else {
                    return Err(format!("top-up of unknown wallet {:?}", t.wallet_id));
                };
                // A repeated top-up (a retry, a replay) is applied once.
                if !wallet
                    .top_ups
                    .iter()
                    .any(|(_, x, ..)| x.transaction_id == t.transaction_id)
                {
                    wallet.top_ups.push((ev.occurred_at, t, granted, paid));
                }
                return Ok(());
            }
            Lifecycle::CouponRemoved(r) => {
                let applied = self
                    .customers
                    .get_mut(&Pair(&tenant, &r.customer_id))
                    .and_then(|c| {
                        c.coupons
                            .iter_mut()
                            .find(|x| x.coupon.id.as_deref() == Some(r.applied_coupon_id.as_str()))
                    });
                let Some(applied) = applied else {
                    return Err(format!(
                        "removal of unknown applied coupon {:?}",
                        r.applied_coupon_id
                    ));
                };
                applied.removed_at.get_or_insert(ev.occurred_at);
                return Ok(());
            }
            Lifecycle::ClockTick(t) => {
                let at = self.clocks.entry((tenant, t.clock_id)).or_insert(t.now);
                *at = (*at).max(t.now);
                self.latest_clock = self.latest_clock.max(Some(t.now));
                return Ok(());
            }
            Lifecycle::InvoiceFinalizeRequested(_)
            | Lifecycle::CreditNoteRequested(_)
            | Lifecycle::InvoiceVoidRequested(_)
            | Lifecycle::OneOffInvoiceRequested(_) => return Ok(()),
            // The event says when the new plan takes effect, so the core applies it at that instant (or, for a
            // change at period end, at the end of the period containing that instant).
            Lifecycle::SubscriptionChanged(s) => (
                s.customer_id,
                s.subscription_id,
                (s.effective_at, Err((s.new_plan_code, s.at_period_end))),
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
            Lifecycle::SubscriptionSuspended(s) => (
                s.customer_id,
                s.subscription_id,
                (s.effective_at, Ok(ChangeKind::Suspend)),
            ),
            Lifecycle::SubscriptionUnsuspended(s) => (
                s.customer_id,
                s.subscription_id,
                (s.effective_at, Ok(ChangeKind::Unsuspend)),
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
        let Some(c) = self.customers.get_mut(&Pair(&tenant, &customer)) else {
            return Err(format!(
                "change of subscription {id:?} for unknown customer {customer:?}"
            ));
        };
        let tz = c.tz();
        let Some(sub) = c.subscriptions.iter_mut().find(|s| s.id == id) else {
            return Err(format!("change of unknown subscription {id:?}"));
        };
        let (at, kind) = change;
        let kind = kind.unwrap_or_else(|(plan_code, at_period_end)| {
            let plan = sub.plan_index(&plan_code);
            if at_period_end {
                ChangeKind::Downgrade { plan }
            } else {
                ChangeKind::Upgrade { plan }
            }
        });
        let mut history = sub.history.clone();
        if matches!(kind, ChangeKind::Cancel { .. }) {
            // The last cancellation wins: an immediate one replaces one scheduled at period end.
            history
                .changes
                .retain(|c| !matches!(c.kind, ChangeKind::Cancel { .. }));
        }
        // Exactly one more: a history kept for each of a million customers should not carry spare room.
        history.changes.reserve_exact(1);
        history.changes.push(Change { at, kind });
        // Checked with the phases and the timezone attribution uses, when every plan is known.
        let anchor = sub.anchor();
        let probe = Subscription {
            history: history.clone(),
            ..sub.clone()
        };
        let terms: Option<Vec<PlanTerms>> = (0..sub.plans.len())
            .map(|i| {
                version_at(plans, &tenant, &sub.plans[i], probe.plan_since(i))
                    .map(|p| p.terms(anchor))
            })
            .collect();
        if let Some(terms) = terms {
            attribution::check_history(&history, &terms, tz)
                .map_err(|e| format!("inconsistent change of subscription {id:?}: {e}"))?;
        }
        sub.history = history;
        Ok(())
    }

    /// The customer, if anything is known about it.
    pub fn customer(&self, tenant: &str, customer: &str) -> Option<&Customer> {
        self.customers.get(&Pair(tenant, customer)).map(|c| &**c)
    }

    /// The plan with this code, if the tenant defined it.
    pub fn plan(&self, tenant: &str, code: &str) -> Option<Arc<PlanInfo>> {
        self.plans
            .get(&(tenant.to_owned(), code.to_owned()))
            .and_then(|v| v.last())
            .cloned()
    }

    /// The version of a plan a subscription uses from `since` (see [`version_at`]).
    pub fn plan_at(&self, tenant: &str, code: &str, since: DateTime<Utc>) -> Option<Arc<PlanInfo>> {
        version_at(&self.plans, tenant, code, since)
    }

    /// Every customer known, with its (tenant, customer id).
    pub fn customers(&self) -> impl Iterator<Item = ((&str, &str), &Customer)> {
        self.customers
            .iter()
            .map(|(k, c)| ((k.tenant(), k.customer()), &**c))
    }

    /// A subscription as the core bills it: its history over its plans, parsed (charges with their metrics),
    /// under its proration convention, without usage yet. Refused when a plan or a metric is unknown or a plan
    /// is in another currency than `currency`.
    pub fn billable(
        &self,
        tenant: &str,
        sub: &Subscription,
        currency: Currency,
    ) -> Result<BillableSubscription, String> {
        let mut plans = Vec::with_capacity(sub.plans.len());
        for p in self.versions_of(tenant, sub, currency)? {
            let mut charges = Vec::with_capacity(p.charges.len());
            for c in &p.charges {
                let metric = self
                    .metric(tenant, &c.charge.metric_code)
                    .ok_or_else(|| format!("unknown billable metric {:?}", c.charge.metric_code))?;
                let min_amount = c
                    .charge
                    .min_amount
                    .as_deref()
                    .map(|m| billing_core::money::parse_decimal("min_amount", m))
                    .transpose()
                    .map_err(|e| e.to_string())?;
                charges.push(PricedCharge {
                    code: c.charge.id.clone(),
                    name: None,
                    metric: Metric {
                        group_by: c.charge.group_by.clone(),
                        ..(*metric).clone()
                    },
                    model: c.model.clone(),
                    min_amount,
                    tax_exempt: false,
                    taxes: self.rates_of(tenant, &c.charge.tax_codes)?,
                });
            }
            plans.push(PricedPlan {
                code: p.plan.code.clone(),
                name: Some(p.plan.name.clone()),
                terms: p.terms(sub.anchor()),
                fee_tax_exempt: false,
                taxes: self.rates_of(tenant, &p.plan.tax_codes)?,
                charges,
            });
        }
        Ok(BillableSubscription {
            id: Some(sub.id.clone()),
            plans,
            subscription: sub.history.clone(),
            convention: sub.proration,
            events: Vec::new(),
            aggregates: Vec::new(),
        })
    }

    /// The plan versions a subscription uses, one per plan index (the version in force when it began to use the
    /// plan): refused when a plan is unknown or in another currency than `currency`.
    fn versions_of(
        &self,
        tenant: &str,
        sub: &Subscription,
        currency: Currency,
    ) -> Result<Vec<Arc<PlanInfo>>, String> {
        let mut out = Vec::with_capacity(sub.plans.len());
        for (i, code) in sub.plans.iter().enumerate() {
            let p = self
                .plan_at(tenant, code, sub.plan_since(i))
                .ok_or_else(|| format!("unknown plan {code:?}"))?;
            if p.currency != currency {
                return Err(format!(
                    "plan {code:?} is in {}, the customer is billed in {}",
                    p.currency.code(),
                    currency.code()
                ));
            }
            out.push(p);
        }
        Ok(out)
    }

    /// A subscription's monthly recurring revenue over its life (`billing_core::mrr`) in the customer's currency:
    /// the currency's code and each segment with its plan's code. Refused like [`Reference::billable`] (an unknown
    /// plan, a plan in another currency, an unknown currency) or on an inconsistent history.
    pub fn mrr(
        &self,
        tenant: &str,
        customer: &Customer,
        sub: &Subscription,
    ) -> Result<(String, Vec<(billing_core::mrr::MrrSegment, String)>), String> {
        let currency = customer
            .record
            .as_ref()
            .and_then(|r| Currency::parse(&r.currency).ok())
            .ok_or("the customer's currency is unknown")?;
        let terms: Vec<PlanTerms> = self
            .versions_of(tenant, sub, currency)?
            .iter()
            .map(|p| p.terms(sub.anchor()))
            .collect();
        let segments = billing_core::mrr::timeline(&sub.history, &terms, currency, customer.tz())
            .map_err(|e| e.to_string())?;
        Ok((
            currency.code().to_owned(),
            segments
                .into_iter()
                .map(|s| {
                    let plan = sub.plans.get(s.plan).cloned().unwrap_or_default();
                    (s, plan)
                })
                .collect(),
        ))
    }

    /// A customer's subscriptions as the core bills them, and those it cannot bill with the reason (an unknown
    /// plan or metric, a plan in another currency).
    pub fn billable_subscriptions(
        &self,
        tenant: &str,
        customer: &str,
    ) -> (Vec<BillableSubscription>, Vec<(String, String)>) {
        let Some(c) = self.customer(tenant, customer) else {
            return (Vec::new(), Vec::new());
        };
        let Some(currency) = c
            .record
            .as_ref()
            .and_then(|r| Currency::parse(&r.currency).ok())
        else {
            let refused = c
                .subscriptions
                .iter()
                .map(|s| {
                    (
                        s.id.clone(),
                        "the customer's currency is unknown".to_owned(),
                    )
                })
                .collect();
            return (Vec::new(), refused);
        };
        let mut subs = Vec::new();
        let mut refused = Vec::new();
        for s in &c.subscriptions {
            match self.billable(tenant, s, currency) {
                Ok(b) => subs.push(b),
                Err(e) => refused.push((s.id.clone(), e)),
            }
        }
        (subs, refused)
    }

    /// The customer's invoice for one billing date, assembled by the core: `usage` gives each subscription's
    /// usage of the period that closes on that date; `extra` are lines billed besides (usage adjustments of
    /// periods already invoiced). `None` when nothing is billed on it.
    #[allow(clippy::too_many_arguments)]
    pub fn invoice_on(
        &self,
        tenant: &str,
        customer: &str,
        subs: &[BillableSubscription],
        date: DateTime<Utc>,
        prior_use: &PriorUse,
        extra: &[billing_core::invoice::DraftLine],
        usage: impl Fn(&BillableSubscription, &BillingPeriod) -> Result<Vec<ChargeAggregate>, String>,
    ) -> Result<Option<InvoiceOutcome>, String> {
        let c = self
            .customer(tenant, customer)
            .filter(|c| c.known())
            .ok_or_else(|| format!("unknown customer {customer:?}"))?;
        let record = c.record.as_ref().expect("known");
        let currency = Currency::parse(&record.currency).map_err(|e| e.to_string())?;
        let taxes = self.customer_taxes(tenant, record)?;
        let coupons: Vec<Coupon> = c
            .coupons
            .iter()
            .filter(|a| a.in_force(date))
            .map(|a| {
                let id = a.coupon.id.as_deref().unwrap_or_default();
                a.coupon.clone().after(prior_use.of(id))
            })
            .collect();
        // Wallets' credits left on the billing date, applied after tax in creation order.
        let balances: Vec<billing_core::invoice::CreditNote> = c
            .wallets
            .iter()
            .filter(|w| w.live_at(date))
            .map(|w| billing_core::invoice::CreditNote {
                code: w.created.wallet_id.clone(),
                amount: (w.credited_by(date) - prior_use.credit(&w.created.wallet_id))
                    .max(rust_decimal::Decimal::ZERO),
            })
            .filter(|b| b.amount > rust_decimal::Decimal::ZERO)
            .collect();
        let tz = c.tz();
        let mut with_usage = Vec::with_capacity(subs.len());
        for s in subs {
            let mut s = s.clone();
            if let Some(period) = closing_period(&s, tz, date).map_err(|e| e.to_string())? {
                s.aggregates = usage(&s, &period)?;
            }
            with_usage.push(s);
        }
        invoice_billing_date(&BillingDateInput {
            currency,
            rounding: RoundingMode::HalfUp,
            timezone: tz,
            billing_date: date,
            subscriptions: &with_usage,
            extra_lines: extra,
            adjustments: Adjustments {
                coupons: &coupons,
                taxes: &taxes.rates,
                customer_tax_exempt: taxes.exempt,
                credit_notes: &balances,
                prepaid_credits: rust_decimal::Decimal::ZERO,
            },
        })
        .map_err(|e| e.to_string())
    }

    /// The latest time any clock has reached: every [`Self::clock_now`] is at or before it (one read where a
    /// customer's clock takes three lookups).
    pub fn latest_clock(&self) -> Option<DateTime<Utc>> {
        self.latest_clock
    }

    /// The time of a customer's clock (its test clock's, else the wall clock's), once a tick of it was read.
    pub fn clock_now(&self, tenant: &str, customer: &str) -> Option<DateTime<Utc>> {
        let c = self.customer(tenant, customer)?;
        match c.test_clock.as_deref() {
            Some(clock) => self.clocks.get(&Pair(tenant, clock)).copied(),
            None => ["*", tenant]
                .iter()
                .filter_map(|t| self.clocks.get(&Pair(t, "wall")))
                .max()
                .copied(),
        }
    }

    /// The tax rate with this code, if the tenant defined it.
    pub fn tax_rate(&self, tenant: &str, code: &str) -> Option<Arc<TaxRateInfo>> {
        self.tax_rates
            .get(&(tenant.to_owned(), code.to_owned()))
            .cloned()
    }

    /// The rates of a list of tax codes set at a plan or charge: `None` when the list is empty (the level does
    /// not set taxes), an error naming an unknown code.
    pub fn rates_of(&self, tenant: &str, codes: &[String]) -> Result<Option<Vec<TaxRate>>, String> {
        if codes.is_empty() {
            return Ok(None);
        }
        codes
            .iter()
            .map(|code| {
                self.tax_rate(tenant, code)
                    .map(|t| t.rate.clone())
                    .ok_or_else(|| format!("unknown tax rate {code:?}"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// A customer's taxes: its exemption, and the rates of its lines that have none at their plan or charge (its
    /// own tax codes, else every rate of the tenant `applied_to_tenant`, in code order).
    pub fn customer_taxes(
        &self,
        tenant: &str,
        record: &CustomerCreated,
    ) -> Result<CustomerTaxes, String> {
        let rates = match self.rates_of(tenant, &record.tax_codes)? {
            Some(r) => r,
            None => {
                let mut r: Vec<&Arc<TaxRateInfo>> = self
                    .tax_rates
                    .iter()
                    .filter(|((t, _), info)| t == tenant && info.applied_to_tenant)
                    .map(|(_, info)| info)
                    .collect();
                r.sort_by(|a, b| a.rate.code.cmp(&b.rate.code));
                r.into_iter().map(|i| i.rate.clone()).collect()
            }
        };
        Ok(CustomerTaxes {
            rates,
            exempt: record.tax_exempt != TaxExempt::None,
            note: tax_note(record.tax_exempt, &record.tax_ids),
        })
    }

    /// A one-off invoice of add-ons for the customer, assembled by the core with the customer's taxes (an
    /// add-on's own tax codes first). No coupon or credit applies to it.
    pub fn one_off_invoice(
        &self,
        tenant: &str,
        customer: &str,
        fees: &[crate::lifecycle::OneOffFee],
    ) -> Result<InvoiceOutcome, String> {
        let record = self
            .customer(tenant, customer)
            .and_then(|c| c.record.as_ref())
            .ok_or_else(|| format!("unknown customer {customer:?}"))?;
        let currency = Currency::parse(&record.currency).map_err(|e| e.to_string())?;
        let taxes = self.customer_taxes(tenant, record)?;
        let mut items = Vec::with_capacity(fees.len());
        for (i, f) in fees.iter().enumerate() {
            let num = |field: &str, v: &str| {
                billing_core::money::parse_exact_decimal(&format!("fees[{i}].{field}"), v, 9)
                    .map_err(|e| e.to_string())
            };
            items.push(billing_core::invoicing::OneOffItem {
                kind: billing_core::invoice::LineKind::AddOn,
                tax_exempt: false,
                code: f.add_on_code.clone(),
                description: f.description.clone().unwrap_or_else(|| f.name.clone()),
                units: num("units", &f.units)?,
                unit_amount: num("unit_amount", &f.unit_amount)?,
                taxes: self.rates_of(tenant, &f.tax_codes)?,
            });
        }
        let invoice = billing_core::invoicing::one_off_invoice(
            currency,
            RoundingMode::HalfUp,
            &items,
            &Adjustments {
                coupons: &[],
                taxes: &taxes.rates,
                customer_tax_exempt: taxes.exempt,
                credit_notes: &[],
                prepaid_credits: rust_decimal::Decimal::ZERO,
            },
        )
        .map_err(|e| e.to_string())?;
        Ok(InvoiceOutcome {
            invoice,
            periods: Vec::new(),
        })
    }

    /// The invoice of credits bought for a wallet: one line, not taxed (the invoices the credits pay are).
    pub fn credit_purchase_invoice(
        &self,
        tenant: &str,
        customer: &str,
        top_up: &crate::lifecycle::WalletToppedUp,
    ) -> Result<InvoiceOutcome, String> {
        let record = self
            .customer(tenant, customer)
            .and_then(|c| c.record.as_ref())
            .ok_or_else(|| format!("unknown customer {customer:?}"))?;
        let currency = Currency::parse(&record.currency).map_err(|e| e.to_string())?;
        let paid =
            billing_core::money::parse_exact_decimal("paid_credits", &top_up.paid_credits, 9)
                .map_err(|e| e.to_string())?;
        let invoice = billing_core::invoicing::one_off_invoice(
            currency,
            RoundingMode::HalfUp,
            &[billing_core::invoicing::OneOffItem {
                kind: billing_core::invoice::LineKind::PrepaidCredits,
                tax_exempt: true,
                code: top_up.wallet_id.clone(),
                description: format!("Prepaid credits, wallet {}", top_up.wallet_id),
                units: paid,
                unit_amount: rust_decimal::Decimal::ONE,
                taxes: None,
            }],
            &Adjustments {
                coupons: &[],
                taxes: &[],
                customer_tax_exempt: true,
                credit_notes: &[],
                prepaid_credits: rust_decimal::Decimal::ZERO,
            },
        )
        .map_err(|e| e.to_string())?;
        Ok(InvoiceOutcome {
            invoice,
            periods: Vec::new(),
        })
    }

    /// Forget the customers `keep` refuses (e.g. those of partitions no longer owned).
    pub fn retain_customers(&mut self, keep: impl Fn(&str, &str) -> bool) {
        self.revision += 1;
        self.customers.retain(|k, _| keep(k.tenant(), k.customer()));
    }

    /// The metric with this code, if the tenant defined it.
    pub fn metric(&self, tenant: &str, code: &str) -> Option<Arc<Metric>> {
        self.metrics.get(&Pair(tenant, code)).cloned()
    }

    /// Attribute an event time to the subscription, plan and period in force (see
    /// [`billing_core::attribution`] for the rules).
    pub fn attribute(
        &self,
        tenant: &str,
        customer: &str,
        at: DateTime<Utc>,
    ) -> Result<Attribution, AttributionError> {
        self.attribute_by(tenant, customer, at, |subs, tz, at| {
            attribution::attribute(subs, tz, at).map(|found| (found, ()))
        })
        .map(|(found, ())| found)
    }

    /// [`Self::attribute`] for a caller that rates many events of a customer: the attribution kept in `memo` is
    /// reused while the reference data is unchanged (clock ticks aside) and the event time falls in the stretch
    /// where it holds (see [`attribution::attribute_with_stretch`]); otherwise it is computed and kept. On an error
    /// the memo is left as it was.
    pub fn attribute_memo<'m>(
        &self,
        tenant: &str,
        customer: &str,
        at: DateTime<Utc>,
        memo: &'m mut Option<AttributionMemo>,
    ) -> Result<&'m Attribution, AttributionError> {
        let fresh = memo
            .as_ref()
            .is_some_and(|m| m.revision == self.revision && m.stretch.contains(at));
        if !fresh {
            let (attribution, stretch) =
                self.attribute_by(tenant, customer, at, attribution::attribute_with_stretch)?;
            *memo = Some(AttributionMemo {
                revision: self.revision,
                stretch,
                attribution,
            });
        }
        Ok(&memo.as_ref().expect("just set").attribution)
    }

    fn attribute_by<R>(
        &self,
        tenant: &str,
        customer: &str,
        at: DateTime<Utc>,
        how: impl Fn(&[Attributable<'_>], Tz, DateTime<Utc>) -> Option<(attribution::Attribution, R)>,
    ) -> Result<(Attribution, R), AttributionError> {
        let c = self
            .customer(tenant, customer)
            .filter(|c| c.known())
            .ok_or_else(|| AttributionError::UnknownCustomer(customer.to_owned()))?;
        let none = || AttributionError::NoActiveSubscription {
            customer: customer.to_owned(),
            at,
        };
        let plans: Vec<Vec<Option<Arc<PlanInfo>>>> = c
            .subscriptions
            .iter()
            .map(|s| {
                (0..s.plans.len())
                    .map(|i| self.plan_at(tenant, &s.plans[i], s.plan_since(i)))
                    .collect()
            })
            .collect();
        let terms: Vec<Vec<Option<PlanTerms>>> = c
            .subscriptions
            .iter()
            .zip(&plans)
            .map(|(s, ps)| {
                let anchor = s.anchor();
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
        let (found, extra) = how(&subs, c.tz(), at).ok_or_else(none)?;
        let plan = plans[found.subscription][found.plan]
            .clone()
            .ok_or_else(none)?;
        Ok((
            Attribution {
                subscription_id: c.subscriptions[found.subscription].id.clone(),
                plan,
                period: found.period,
            },
            extra,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Interval, Plan};
    use crate::lifecycle::CustomerCreated;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn plan(version: i32, amount: &str, effective_from: Option<&str>) -> CatalogEvent {
        CatalogEvent::plan(
            "t",
            at("2026-01-01T00:00:00Z"),
            Plan {
                code: "p".into(),
                name: "P".into(),
                interval: Interval::Monthly,
                currency: "EUR".into(),
                amount: amount.into(),
                pay_in_advance: true,
                trial_period_days: 0,
                charges: vec![],
                version,
                effective_from: effective_from.map(at),
                tax_codes: vec![],
            },
        )
    }

    // A version effective from Feb 1 applies to subscriptions starting from then; one started before keeps the
    // first version. A version without a date (an edit) applies to every subscription.
    #[test]
    fn subscriptions_keep_the_plan_version_in_force_when_they_started() {
        let mut r = Reference::default();
        // Versions read out of order (they are keyed apart) end up in order.
        r.apply_catalog(plan(2, "200", Some("2026-02-01T00:00:00Z")))
            .unwrap();
        r.apply_catalog(plan(1, "100", None)).unwrap();
        for (c, sub, start) in [
            ("a", "sa", "2026-01-01T00:00:00Z"),
            ("b", "sb", "2026-02-05T00:00:00Z"),
        ] {
            for ev in LifecycleEvent::customer_subscribed(
                "t",
                CustomerCreated::new(c, c, "EUR", "UTC"),
                sub,
                "p",
                at(start),
            ) {
                r.apply_lifecycle(ev).unwrap();
            }
        }
        let fee = |r: &Reference, c: &str| {
            let (subs, refused) = r.billable_subscriptions("t", c);
            assert!(refused.is_empty());
            subs[0].plans[0].terms.fee
        };
        assert_eq!(fee(&r, "a"), rust_decimal::Decimal::from(100));
        assert_eq!(fee(&r, "b"), rust_decimal::Decimal::from(200));
        assert_eq!(r.plan("t", "p").unwrap().plan.version, 2);
        r.apply_catalog(plan(3, "300", None)).unwrap();
        assert_eq!(fee(&r, "a"), rust_decimal::Decimal::from(300));
        assert_eq!(fee(&r, "b"), rust_decimal::Decimal::from(300));
    }

    /// Customer `a` subscribed (`sa`) from Jan 1 to plan `p`, 10.00 a month.
    fn subscribed_on_a_10_plan() -> Reference {
        let mut r = Reference::default();
        r.apply_catalog(plan(1, "10", None)).unwrap();
        for ev in LifecycleEvent::customer_subscribed(
            "t",
            CustomerCreated::new("a", "a", "EUR", "UTC"),
            "sa",
            "p",
            at("2026-01-01T00:00:00Z"),
        ) {
            r.apply_lifecycle(ev).unwrap();
        }
        r
    }

    // A memo is reused inside its stretch and while nothing but clock ticks was read; a change of the customer's
    // subscription is seen at once.
    #[test]
    fn a_kept_attribution_is_reused_only_while_it_holds() {
        let mut r = subscribed_on_a_10_plan();
        let mut memo = None;
        let jan = r
            .attribute_memo("t", "a", at("2026-01-05T00:00:00Z"), &mut memo)
            .unwrap();
        assert_eq!(jan.period.start, at("2026-01-01T00:00:00Z"));
        let kept = memo.as_ref().unwrap().stretch;
        assert_eq!(
            (kept.from, kept.until),
            (at("2026-01-01T00:00:00Z"), at("2026-02-01T00:00:00Z"))
        );
        r.apply_lifecycle(lifecycle(
            Lifecycle::ClockTick(crate::lifecycle::ClockTick {
                clock_id: "wall".into(),
                now: at("2026-01-20T00:00:00Z"),
            }),
            "2026-01-20T00:00:00Z",
        ))
        .unwrap();
        let revision = memo.as_ref().unwrap().revision;
        r.attribute_memo("t", "a", at("2026-01-25T00:00:00Z"), &mut memo)
            .unwrap();
        assert_eq!(memo.as_ref().unwrap().revision, revision, "a tick keeps it");
        // February is outside the stretch: computed again.
        let feb = r
            .attribute_memo("t", "a", at("2026-02-03T00:00:00Z"), &mut memo)
            .unwrap();
        assert_eq!(feb.period.start, at("2026-02-01T00:00:00Z"));
        // Canceled on Feb 10: an event of Feb 12 is no longer attributed, though it lies in the kept stretch.
        r.apply_lifecycle(lifecycle(
            Lifecycle::SubscriptionCanceled(crate::lifecycle::SubscriptionCanceled {
                subscription_id: "sa".into(),
                customer_id: "a".into(),
                effective_at: at("2026-02-10T00:00:00Z"),
                at_period_end: false,
            }),
            "2026-02-10T00:00:00Z",
        ))
        .unwrap();
        assert!(matches!(
            r.attribute_memo("t", "a", at("2026-02-12T00:00:00Z"), &mut memo),
            Err(AttributionError::NoActiveSubscription { .. })
        ));
        assert_eq!(
            r.attribute_memo("t", "a", at("2026-02-05T00:00:00Z"), &mut memo)
                .unwrap()
                .period
                .end,
            at("2026-03-01T00:00:00Z")
        );
        assert_eq!(
            memo.as_ref().unwrap().stretch.until,
            at("2026-02-10T00:00:00Z")
        );
    }

    // Rating's state keeps no profile, coupon or wallet, and attributes every instant as the full state does
    // (timezone updates and test clocks included).
    #[test]
    fn the_attribution_state_attributes_alike_without_profiles() {
        let (mut full, mut lean) = (Reference::default(), Reference::for_attribution());
        let mut created = CustomerCreated::new("a", "Globex", "EUR", "Asia/Tokyo");
        created.email = Some("billing@globex.example".into());
        created.test_clock_id = Some("tc".into());
        let mut events = LifecycleEvent::customer_subscribed(
            "t",
            created,
            "sa",
            "p",
            at("2026-01-01T00:00:00Z"),
        )
        .to_vec();
        events.extend([
            lifecycle(
                Lifecycle::CustomerUpdated(crate::lifecycle::CustomerUpdated {
                    customer_id: "a".into(),
                    name: Some("Globex Corp".into()),
                    email: None,
                    timezone: Some("America/New_York".into()),
                    billing_country: None,
                    address: None,
                    tax_ids: None,
                    invoice_grace_period_days: None,
                    net_payment_term_days: None,
                    metadata: None,
                    tax_codes: None,
                    tax_exempt: None,
                }),
                "2026-01-15T00:00:00Z",
            ),
            lifecycle(
                Lifecycle::CouponApplied(welcome("w1", "EUR")),
                "2026-01-16T00:00:00Z",
            ),
            lifecycle(
                Lifecycle::ClockTick(crate::lifecycle::ClockTick {
                    clock_id: "tc".into(),
                    now: at("2026-02-20T00:00:00Z"),
                }),
                "2026-02-20T00:00:00Z",
            ),
            lifecycle(
                Lifecycle::SubscriptionPaused(crate::lifecycle::SubscriptionEffective {
                    subscription_id: "sa".into(),
                    customer_id: "a".into(),
                    effective_at: at("2026-03-10T00:00:00Z"),
                }),
                "2026-03-10T00:00:00Z",
            ),
        ]);
        for r in [&mut full, &mut lean] {
            r.apply_catalog(plan(1, "10", None)).unwrap();
            for ev in events.clone() {
                r.apply_lifecycle(ev).unwrap();
            }
        }
        let (f, l) = (
            full.customer("t", "a").unwrap(),
            lean.customer("t", "a").unwrap(),
        );
        assert!(f.record.is_some() && f.coupons.len() == 1);
        assert!(l.known() && l.record.is_none() && l.coupons.is_empty());
        assert_eq!(l.timezone, Some(chrono_tz::America::New_York));
        assert_eq!(lean.clock_now("t", "a"), Some(at("2026-02-20T00:00:00Z")));
        assert_eq!(full.clock_now("t", "a"), lean.clock_now("t", "a"));
        // The latest of every clock (here the test clock; no wall-clock tick was read) bounds each customer's.
        assert_eq!(lean.latest_clock(), Some(at("2026-02-20T00:00:00Z")));
        let mut probe = at("2025-12-31T12:00:00Z");
        let mut attributed = 0;
        while probe < at("2026-04-01T00:00:00Z") {
            let (a, b) = (
                full.attribute("t", "a", probe),
                lean.attribute("t", "a", probe),
            );
            match (a, b) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(
                        (a.subscription_id, a.plan.plan.version, a.period),
                        (b.subscription_id, b.plan.plan.version, b.period),
                        "{probe}"
                    );
                    attributed += 1;
                }
                (Err(a), Err(b)) => assert_eq!(a, b, "{probe}"),
                (a, b) => panic!("{probe}: full {a:?}, lean {b:?}"),
            }
            probe += chrono::Duration::hours(7);
        }
        assert!(attributed > 100, "{attributed}");
    }

    fn lifecycle(payload: Lifecycle, occurred_at: &str) -> LifecycleEvent {
        LifecycleEvent {
            tenant_id: "t".into(),
            event_id: String::new(),
            occurred_at: at(occurred_at),
            payload,
        }
    }

    fn welcome(id: &str, currency: &str) -> crate::lifecycle::CouponApplied {
        crate::lifecycle::CouponApplied {
            applied_coupon_id: id.into(),
            customer_id: "a".into(),
            subscription_id: None,
            coupon_code: "welcome".into(),
            coupon_type: crate::catalog::CouponType::FixedAmount,
            amount: Some("15.00".into()),
            amount_currency: Some(currency.into()),
            percentage_rate: None,
            frequency: crate::catalog::CouponFrequency::Once,
            frequency_duration: None,
            plan_codes: vec![],
            metric_codes: vec![],
        }
    }

    // A 15.00 coupon applied once on a 10.00 plan: 10.00 off January, the 5.00 left off February (its use read
    // from the earlier invoices), nothing after its removal; one in another currency is refused.
    #[test]
    fn an_applied_coupon_carries_over_and_stops_when_removed() {
        let mut r = subscribed_on_a_10_plan();
        let refused = r.apply_lifecycle(lifecycle(
            Lifecycle::CouponApplied(welcome("ac_usd", "USD")),
            "2026-01-01T00:00:00Z",
        ));
        assert!(refused.unwrap_err().contains("USD"));
        r.apply_lifecycle(lifecycle(
            Lifecycle::CouponApplied(welcome("ac_1", "EUR")),
            "2026-01-01T00:00:00Z",
        ))
        .unwrap();
        let (subs, _) = r.billable_subscriptions("t", "a");
        fn invoice(
            r: &Reference,
            subs: &[BillableSubscription],
            date: &str,
            used: &PriorUse,
        ) -> billing_core::invoice::Invoice {
            r.invoice_on("t", "a", subs, at(date), used, &[], |_, _| Ok(vec![]))
                .unwrap()
                .unwrap()
                .invoice
        }
        let mut used = PriorUse::default();
        let jan = invoice(&r, &subs, "2026-01-01T00:00:00Z", &used);
        assert_eq!(jan.discount_total, rust_decimal::Decimal::new(1000, 2));
        assert_eq!(jan.coupons[0].id.as_deref(), Some("ac_1"));
        used.record("ac_1", jan.coupons[0].amount);
        let feb = invoice(&r, &subs, "2026-02-01T00:00:00Z", &used);
        assert_eq!(feb.discount_total, rust_decimal::Decimal::new(500, 2));
        used.record("ac_1", feb.coupons[0].amount);
        assert!(invoice(&r, &subs, "2026-03-01T00:00:00Z", &used)
            .coupons
            .is_empty());
        // Removed on Feb 15: February's invoice (billed Feb 1) keeps it, March's has none.
        let mut fresh = PriorUse::default();
        r.apply_lifecycle(lifecycle(
            Lifecycle::CouponRemoved(crate::lifecycle::CouponRemoved {
                applied_coupon_id: "ac_1".into(),
                customer_id: "a".into(),
            }),
            "2026-02-15T00:00:00Z",
        ))
        .unwrap();
        fresh.record("ac_1", rust_decimal::Decimal::ONE);
        assert_eq!(
            invoice(&r, &subs, "2026-02-01T00:00:00Z", &fresh)
                .coupons
                .len(),
            1
        );
        assert!(invoice(&r, &subs, "2026-03-01T00:00:00Z", &fresh)
            .coupons
            .is_empty());
    }
}
