//! Offline pricing API: serde request/response types and two pure functions, used by the
//! `billing pricing charge|preview` CLI and by the invoicer. See `docs/pricing.md` for the formats.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::aggregation::{Aggregate, Event, Metric};
use crate::charge::{BreakdownLine, ChargeModel, Usage};
use crate::currency::Currency;
use crate::discount::Coupon;
use crate::error::{Error, Result};
use crate::invoice::{Adjustments, CreditNote, Invoice};
use crate::invoicing::{
    invoice, BillableSubscription, ChargeAggregate, InvoiceInput, PlanTerms, PricedCharge,
    PricedPlan,
};
use crate::money::{non_negative, round_to_minor, Quantity, RoundingMode};
use crate::period::{parse_timezone, BillingAnchor, BillingPeriod, BillingTime, Interval};
use crate::proration::ProrationConvention;
use crate::subscription::{Change, ChangeKind, Subscription};
use crate::tax::TaxRate;

/// Input of [`evaluate_charge`]: one charge model applied to one period's aggregated usage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChargeRequest {
    /// ISO 4217 code; sets the rounding precision.
    pub currency: Currency,
    /// Lago charge model name.
    pub charge_model: String,
    /// Lago charge properties for that model.
    pub properties: serde_json::Value,
    /// Aggregated units; defaults to the sum of `event_values`.
    #[serde(default)]
    pub units: Option<Quantity>,
    /// Number of events; defaults to the length of `event_values`.
    #[serde(default)]
    pub events_count: Option<u64>,
    /// Per-event values in billing order (percentage free units per events and min/max need them).
    #[serde(default)]
    pub event_values: Option<Vec<Decimal>>,
    /// Minimum commitment of the charge; a true-up lifts the amount to it.
    #[serde(default)]
    pub min_amount: Option<Decimal>,
    /// `half_up` (default) or `half_even`.
    #[serde(default)]
    pub rounding: RoundingMode,
}

/// The true-up that lifts a charge to its minimum commitment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrueUp {
    /// Minimum commitment.
    pub min_amount: Decimal,
    /// Precise true-up.
    pub amount: Decimal,
    /// True-up rounded once.
    pub amount_rounded: Decimal,
}

/// Output of [`evaluate_charge`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeResponse {
    /// Currency.
    pub currency: Currency,
    /// Charge model evaluated.
    pub charge_model: String,
    /// Units evaluated.
    pub units: Decimal,
    /// Events counted, if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events_count: Option<u64>,
    /// Precise amount.
    pub amount: Decimal,
    /// Amount rounded once to the minor unit.
    pub amount_rounded: Decimal,
    /// Per-tier or per-component rows (precise amounts adding up to `amount`).
    pub breakdown: Vec<BreakdownLine>,
    /// True-up to the minimum commitment, when one applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub true_up: Option<TrueUp>,
    /// amount_rounded + true-up rounded: what the invoice bills for this charge.
    pub total: Decimal,
}

/// Evaluates one charge model on aggregated usage.
pub fn evaluate_charge(req: ChargeRequest) -> Result<ChargeResponse> {
    let model = ChargeModel::from_lago(&req.charge_model, &req.properties)?;
    let values = req.event_values.as_deref();
    let units = match (req.units, values) {
        (Some(u), _) => u.value(),
        (None, Some(v)) => v.iter().copied().sum(),
        (None, None) => return Err(Error::MissingInput("units or event_values".into())),
    };
    let events_count = req.events_count.or(values.map(|v| v.len() as u64));
    let out = model.evaluate(&Usage {
        units,
        events_count,
        event_values: values,
    })?;
    let round = |d| round_to_minor(d, req.currency, req.rounding);
    let true_up = true_up(req.min_amount, out.amount)?.map(|amount| TrueUp {
        min_amount: req.min_amount.unwrap_or_default(),
        amount,
        amount_rounded: round(amount),
    });
    let amount_rounded = round(out.amount);
    Ok(ChargeResponse {
        currency: req.currency,
        charge_model: model.name().to_string(),
        units,
        events_count,
        amount: out.amount,
        amount_rounded,
        breakdown: out.breakdown,
        total: amount_rounded + true_up.as_ref().map_or(Decimal::ZERO, |t| t.amount_rounded),
        true_up,
    })
}

fn true_up(min_amount: Option<Decimal>, amount: Decimal) -> Result<Option<Decimal>> {
    let Some(min) = min_amount else {
        return Ok(None);
    };
    non_negative("min_amount", min)?;
    Ok((amount < min).then_some(min - amount))
}

/// A usage charge of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanCharge {
    /// Code of the charge, unique in the plan (used by `aggregates` and on invoice lines).
    pub code: String,
    /// Name shown on the invoice; defaults to the code.
    #[serde(default)]
    pub name: Option<String>,
    /// What is metered and how it is aggregated.
    pub billable_metric: Metric,
    /// Lago charge model name.
    pub charge_model: String,
    /// Lago charge properties.
    pub properties: serde_json::Value,
    /// Minimum commitment per period (not prorated); a true-up line makes up the difference.
    #[serde(default)]
    pub min_amount: Option<Decimal>,
    /// No tax on this charge.
    #[serde(default)]
    pub tax_exempt: bool,
    /// This charge's own tax rates (replace the plan's and the request's for its lines).
    #[serde(default)]
    pub taxes: Option<Vec<TaxRate>>,
}

/// A plan: a recurring fee and usage charges.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanSpec {
    /// Plan code.
    pub code: String,
    /// Name shown on the invoice; defaults to the code.
    #[serde(default)]
    pub name: Option<String>,
    /// Subscription fee per full period.
    pub amount: Decimal,
    /// Billing interval.
    pub interval: Interval,
    /// Fee billed at the start of the period (true) or at its end (false, default).
    #[serde(default)]
    pub pay_in_advance: bool,
    /// `calendar` (default) or `anniversary`.
    #[serde(default)]
    pub billing_time: BillingTime,
    /// Free trial length in days from the subscription start.
    #[serde(default)]
    pub trial_period_days: Option<u32>,
    /// Proration convention of this plan; overrides the request's.
    #[serde(default)]
    pub proration: Option<ProrationConvention>,
    /// No tax on the subscription fee.
    #[serde(default)]
    pub fee_tax_exempt: bool,
    /// The plan's own tax rates (replace the request's for its lines).
    #[serde(default)]
    pub taxes: Option<Vec<TaxRate>>,
    /// Usage charges.
    #[serde(default)]
    pub charges: Vec<PlanCharge>,
}

/// A subscription change in a preview request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ChangeSpec {
    /// Immediate plan change: credit the unused part, charge the new plan prorated.
    Upgrade {
        /// When.
        at: DateTime<Utc>,
        /// Code of the new plan (in `plans`).
        plan: String,
        /// New billing day of the month from this change on (the piece up to it is prorated).
        #[serde(default)]
        billing_anchor_day: Option<u32>,
    },
    /// Plan change at the end of the period containing `at`.
    Downgrade {
        /// When requested.
        at: DateTime<Utc>,
        /// Code of the new plan (in `plans`).
        plan: String,
        /// New billing day of the month from this change on (the piece up to it is prorated).
        #[serde(default)]
        billing_anchor_day: Option<u32>,
    },
    /// Cancellation, immediate (with credit) or at period end.
    Cancel {
        /// When.
        at: DateTime<Utc>,
        /// True for immediate.
        #[serde(default)]
        immediate: bool,
    },
    /// Pause: no fee from this day.
    Pause {
        /// When.
        at: DateTime<Utc>,
    },
    /// Resume after a pause.
    Resume {
        /// When.
        at: DateTime<Utc>,
    },
}

/// The subscription in a preview request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSpec {
    /// Id shown on the lines of an invoice over several subscriptions (required then).
    #[serde(default)]
    pub id: Option<String>,
    /// Start of the subscription.
    pub started_at: DateTime<Utc>,
    /// Day of the month (1–31, clamped in short months) the subscription bills on, separate from its
    /// start (Kill Bill's BCD, Stripe's `billing_cycle_anchor`); replaces calendar billing.
    #[serde(default)]
    pub billing_anchor_day: Option<u32>,
    /// End of the trial; overrides the plan's `trial_period_days`.
    #[serde(default)]
    pub trial_ends_at: Option<DateTime<Utc>>,
    /// Changes, in any order.
    #[serde(default)]
    pub changes: Vec<ChangeSpec>,
}

/// Pre-aggregated usage of one charge, used instead of events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateInput {
    /// Code of the plan charge.
    pub charge: String,
    /// Value of the charge's `group_by` property, if grouped.
    #[serde(default)]
    pub group: Option<String>,
    /// Aggregated units.
    pub units: Quantity,
    /// Number of events.
    #[serde(default)]
    pub events_count: Option<u64>,
    /// Per-event values in billing order.
    #[serde(default)]
    pub event_values: Option<Vec<Decimal>>,
}

/// Another subscription of the same customer on the same invoice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtherSubscriptionSpec {
    /// Id shown on its lines.
    pub id: String,
    /// The plan it starts on.
    pub plan: PlanSpec,
    /// Other plans its changes refer to.
    #[serde(default)]
    pub plans: Vec<PlanSpec>,
    /// Its dates and changes.
    pub subscription: SubscriptionSpec,
    /// Its usage events.
    #[serde(default)]
    pub events: Vec<Event>,
    /// Its pre-aggregated usage.
    #[serde(default)]
    pub aggregates: Vec<AggregateInput>,
}

fn default_tz() -> String {
    "UTC".into()
}

/// Input of [`preview_invoice`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviewRequest {
    /// Invoice currency; all amounts are in it.
    pub currency: Currency,
    /// Customer's IANA timezone; period boundaries are local midnights (default `UTC`).
    #[serde(default = "default_tz")]
    pub timezone: String,
    /// `half_up` (default) or `half_even`.
    #[serde(default)]
    pub rounding: RoundingMode,
    /// Tenant's proration convention (default `days`); a plan's own `proration` wins.
    #[serde(default)]
    pub proration: ProrationConvention,
    /// The plan the subscription starts on.
    pub plan: PlanSpec,
    /// Other plans that upgrades and downgrades refer to by code.
    #[serde(default)]
    pub plans: Vec<PlanSpec>,
    /// Subscription dates and changes.
    pub subscription: SubscriptionSpec,
    /// Any instant of the period to invoice.
    pub period_containing: DateTime<Utc>,
    /// Raw usage events.
    #[serde(default)]
    pub events: Vec<Event>,
    /// Pre-aggregated usage; replaces events for the charges it names.
    #[serde(default)]
    pub aggregates: Vec<AggregateInput>,
    /// Coupons, applied in order before tax.
    #[serde(default)]
    pub coupons: Vec<Coupon>,
    /// Tax rates, applied per line after coupons.
    #[serde(default)]
    pub taxes: Vec<TaxRate>,
    /// The customer pays no tax.
    #[serde(default)]
    pub customer_tax_exempt: bool,
    /// Credit notes, applied after tax.
    #[serde(default)]
    pub credit_notes: Vec<CreditNote>,
    /// Prepaid credits (wallet balance), applied after credit notes.
    #[serde(default)]
    pub prepaid_credits: Decimal,
    /// Other subscriptions of the customer invoiced together with this one.
    #[serde(default)]
    pub other_subscriptions: Vec<OtherSubscriptionSpec>,
}

/// The invoiced period, in UTC and in local dates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodOut {
    /// First instant.
    pub from: DateTime<Utc>,
    /// First instant after the period.
    pub to: DateTime<Utc>,
    /// First local date.
    pub from_date: NaiveDate,
    /// Last local date (inclusive).
    pub to_date: NaiveDate,
    /// Number of days.
    pub days: i64,
}

/// One subscription's invoiced period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionPeriodOut {
    /// The subscription's id.
    pub id: String,
    /// Convention of its fee.
    pub proration: ProrationConvention,
    /// Its period.
    pub period: PeriodOut,
}

/// Output of [`preview_invoice`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviewResponse {
    /// Customer timezone.
    pub timezone: String,
    /// Convention used for the subscription fee.
    pub proration: ProrationConvention,
    /// Invoiced period (of the first subscription).
    pub period: PeriodOut,
    /// Each subscription's period, with `other_subscriptions` only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscriptions: Vec<SubscriptionPeriodOut>,
    /// Lines and totals.
    #[serde(flatten)]
    pub invoice: Invoice,
}

fn parse_charges(spec: &PlanSpec) -> Result<Vec<PricedCharge>> {
    non_negative("plan amount", spec.amount)?;
    spec.charges
        .iter()
        .map(|c| {
            c.billable_metric.validate()?;
            let model = ChargeModel::from_lago(&c.charge_model, &c.properties)
                .map_err(|e| Error::InvalidProperties(format!("charge {}: {e}", c.code)))?;
            Ok(PricedCharge {
                code: c.code.clone(),
                name: c.name.clone(),
                metric: c.billable_metric.clone(),
                model,
                min_amount: c.min_amount,
                tax_exempt: c.tax_exempt,
                taxes: c.taxes.clone(),
            })
        })
        .collect()
}

fn priced_plan(spec: &PlanSpec, anchor: BillingAnchor) -> Result<PricedPlan> {
    Ok(PricedPlan {
        code: spec.code.clone(),
        name: spec.name.clone(),
        terms: PlanTerms {
            fee: spec.amount,
            interval: spec.interval,
            pay_in_advance: spec.pay_in_advance,
            anchor,
        },
        fee_tax_exempt: spec.fee_tax_exempt,
        taxes: spec.taxes.clone(),
        charges: parse_charges(spec)?,
    })
}

/// The anchor a plan bills on, given the subscription's anchor day (which replaces calendar billing;
/// an explicit `anniversary` would be contradicted, so it is an error).
fn anchor_of(spec: &PlanSpec, anchor_day: Option<u32>) -> Result<BillingAnchor> {
    match (anchor_day, spec.billing_time) {
        (None, t) => Ok(t.into()),
        (Some(_), BillingTime::Anniversary) => Err(Error::InvalidRequest(format!(
            "plan {}: billing_time anniversary contradicts billing_anchor_day",
            spec.code
        ))),
        (Some(d), BillingTime::Calendar) => Ok(BillingAnchor::DayOfMonth(d)),
    }
}

/// Turns one subscription of a preview request into the domain's input.
#[allow(clippy::too_many_arguments)]
fn billable_subscription(
    id: Option<String>,
    plan: &PlanSpec,
    others: &[PlanSpec],
    sub: &SubscriptionSpec,
    events: &[Event],
    aggregates: &[AggregateInput],
    tenant_proration: ProrationConvention,
) -> Result<BillableSubscription> {
    let convention = plan.proration.unwrap_or(tenant_proration);
    let anchor_day = sub.billing_anchor_day;
    let mut plans = vec![priced_plan(plan, anchor_of(plan, anchor_day)?)?];
    for p in others {
        // Every field is used or rejected: a trial only exists at the subscription's start, and one
        // subscription is prorated under one convention.
        if p.trial_period_days.is_some() {
            return Err(Error::InvalidRequest(format!(
                "plan {}: trial_period_days only applies to the plan the subscription starts on",
                p.code
            )));
        }
        if p.proration.is_some_and(|c| c != convention) {
            return Err(Error::InvalidRequest(format!(
                "plan {}: proration {:?} differs from the subscription's {convention:?}",
                p.code,
                p.proration.unwrap_or_default()
            )));
        }
        if plans.iter().any(|q| q.code == p.code) {
            return Err(Error::InvalidRequest(format!(
                "two plans with code {:?}",
                p.code
            )));
        }
        plans.push(priced_plan(p, anchor_of(p, anchor_day)?)?);
    }
    let plan_count = plans.len();
    // A change's own billing_anchor_day re-anchors the plan it switches to (a derived plan entry).
    let mut target = |code: &str, anchor: Option<u32>| -> Result<usize> {
        let i = plans[..plan_count]
            .iter()
            .position(|p| p.code == code)
            .ok_or_else(|| Error::InvalidRequest(format!("unknown plan {code:?}")))?;
        let Some(d) = anchor else {
            return Ok(i);
        };
        let spec = if i == 0 { plan } else { &others[i - 1] };
        if spec.billing_time == BillingTime::Anniversary {
            return Err(Error::InvalidRequest(format!(
                "plan {}: billing_time anniversary contradicts billing_anchor_day",
                spec.code
            )));
        }
        let mut derived = plans[i].clone();
        derived.terms.anchor = BillingAnchor::DayOfMonth(d);
        plans.push(derived);
        Ok(plans.len() - 1)
    };
    let mut changes = Vec::with_capacity(sub.changes.len());
    for c in &sub.changes {
        changes.push(match c {
            ChangeSpec::Upgrade {
                at,
                plan,
                billing_anchor_day,
            } => Change {
                at: *at,
                kind: ChangeKind::Upgrade {
                    plan: target(plan, *billing_anchor_day)?,
                },
            },
            ChangeSpec::Downgrade {
                at,
                plan,
                billing_anchor_day,
            } => Change {
                at: *at,
                kind: ChangeKind::Downgrade {
                    plan: target(plan, *billing_anchor_day)?,
                },
            },
            ChangeSpec::Cancel { at, immediate } => Change {
                at: *at,
                kind: ChangeKind::Cancel {
                    immediate: *immediate,
                },
            },
            ChangeSpec::Pause { at } => Change {
                at: *at,
                kind: ChangeKind::Pause,
            },
            ChangeSpec::Resume { at } => Change {
                at: *at,
                kind: ChangeKind::Resume,
            },
        });
    }
    let trial_ends_at = sub.trial_ends_at.or(plan
        .trial_period_days
        .filter(|d| *d > 0)
        .map(|d| sub.started_at + Duration::days(i64::from(d))));
    Ok(BillableSubscription {
        id,
        plans,
        subscription: Subscription {
            started_at: sub.started_at,
            trial_ends_at,
            plan: 0,
            changes,
        },
        convention,
        events: events.to_vec(),
        aggregates: aggregates
            .iter()
            .map(|a| {
                let values = a.event_values.clone().unwrap_or_default();
                let count = a.events_count.unwrap_or(values.len() as u64);
                ChargeAggregate {
                    charge: a.charge.clone(),
                    group: a.group.clone(),
                    aggregate: Aggregate {
                        units: a.units.value(),
                        events_count: count,
                        event_values: values,
                    },
                }
            })
            .collect(),
    })
}

fn period_out(p: &BillingPeriod) -> PeriodOut {
    PeriodOut {
        from: p.start,
        to: p.end,
        from_date: p.start_date,
        to_date: p.end_date.pred_opt().unwrap_or(p.end_date),
        days: p.days(),
    }
}

/// Previews the invoice of one period: the JSON adapter over [`crate::invoicing::invoice`].
///
/// The subscription fee follows the plan's timing (in advance or in arrears) and the proration
/// convention; usage charges are always for the period's own usage. Lines carry their service range so
/// an invoicer can split in-advance fees and in-arrears usage into separate documents if it wants. With
/// `other_subscriptions`, the invoice covers several subscriptions of the customer sharing the billing
/// date, with coupons, taxes and credits applied once over all their lines.
pub fn preview_invoice(req: PreviewRequest) -> Result<PreviewResponse> {
    let tz: Tz = parse_timezone(&req.timezone)?;
    let mut subs = vec![billable_subscription(
        req.subscription.id.clone(),
        &req.plan,
        &req.plans,
        &req.subscription,
        &req.events,
        &req.aggregates,
        req.proration,
    )?];
    for o in &req.other_subscriptions {
        if o.subscription.id.as_ref().is_some_and(|i| *i != o.id) {
            return Err(Error::InvalidRequest(format!(
                "other subscription {:?}: subscription.id {:?} differs from its id",
                o.id, o.subscription.id
            )));
        }
        subs.push(billable_subscription(
            Some(o.id.clone()),
            &o.plan,
            &o.plans,
            &o.subscription,
            &o.events,
            &o.aggregates,
            req.proration,
        )?);
    }
    if !req.other_subscriptions.is_empty() && req.subscription.id.is_none() {
        return Err(Error::InvalidRequest(
            "subscription.id is required with other_subscriptions".into(),
        ));
    }
    let out = invoice(&InvoiceInput {
        currency: req.currency,
        rounding: req.rounding,
        timezone: tz,
        period_containing: req.period_containing,
        subscriptions: &subs,
        adjustments: Adjustments {
            coupons: &req.coupons,
            taxes: &req.taxes,
            customer_tax_exempt: req.customer_tax_exempt,
            credit_notes: &req.credit_notes,
            prepaid_credits: req.prepaid_credits,
        },
    })?;
    let main = out
        .periods
        .first()
        .ok_or(Error::InvalidRequest("no subscription".into()))?;
    let subscriptions = if req.other_subscriptions.is_empty() {
        Vec::new()
    } else {
        out.periods
            .iter()
            .map(|p| SubscriptionPeriodOut {
                id: p.subscription.clone().unwrap_or_default(),
                proration: p.convention,
                period: period_out(&p.period),
            })
            .collect()
    };
    Ok(PreviewResponse {
        timezone: tz.name().to_string(),
        proration: main.convention,
        period: period_out(&main.period),
        subscriptions,
        invoice: out.invoice,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invoice::LineKind;
    use proptest::prelude::*;
    use rust_decimal_macros::dec;
    use serde_json::json;

    fn charge(src: &str) -> ChargeResponse {
        evaluate_charge(serde_json::from_str(src).unwrap()).unwrap()
    }

    fn preview(src: &str) -> PreviewResponse {
        preview_invoice(serde_json::from_str(src).unwrap()).unwrap()
    }

    fn amounts(r: &PreviewResponse) -> Vec<Decimal> {
        r.invoice.lines.iter().map(|l| l.amount).collect()
    }

    #[test]
    fn example_charge_graduated() {
        let r = charge(include_str!(
            "../../docs/examples/pricing/charge-graduated.json"
        ));
        // Tier 1: 100 × 0.10 + 5 = 15; tier 2: 900 × 0.05 = 45; tier 3: 234.5 × 0.0125 + 10 = 12.93125.
        assert_eq!(r.breakdown.len(), 3);
        assert_eq!(r.breakdown[0].amount, dec!(15));
        assert_eq!(r.breakdown[1].units, dec!(900));
        assert_eq!(r.breakdown[2].amount, dec!(12.93125));
        assert_eq!(r.amount, dec!(72.93125));
        assert_eq!(r.amount_rounded.to_string(), "72.93");
        // Minimum 100: true-up 27.06875 → 27.07; the charge bills exactly 100.00.
        let t = r.true_up.as_ref().unwrap();
        assert_eq!((t.amount, t.amount_rounded), (dec!(27.06875), dec!(27.07)));
        assert_eq!(r.total.to_string(), "100.00");
    }

    #[test]
    fn example_charge_percentage() {
        let r = charge(include_str!(
            "../../docs/examples/pricing/charge-percentage.json"
        ));
        // Events 10 and 250 are free. 5 → 0.145 + 0.30 = 0.445 → min 0.50; 12.34 → 0.35786 + 0.30 =
        // 0.65786; 400 → 11.60 + 0.30 = 11.90 → max 5. Sum 6.15786.
        assert_eq!(r.units, dec!(677.34));
        assert_eq!(r.events_count, Some(5));
        assert_eq!(r.amount, dec!(6.15786));
        assert_eq!(r.amount_rounded.to_string(), "6.16");
        assert_eq!(r.breakdown[0].amount, dec!(12.10286)); // 2.9 % of 417.34
        assert_eq!(r.breakdown[1].amount, dec!(0.90)); // 3 paid events × 0.30
        assert_eq!(r.breakdown[2].amount, dec!(-6.845)); // +0.055 − 6.90
    }

    #[test]
    fn example_charge_package_jpy() {
        let r = charge(include_str!(
            "../../docs/examples/pricing/charge-package-jpy.json"
        ));
        // 2001 − 1000 free = 1001 units → 3 packages of 500 → 3 × 333.35 = 1000.05 → ¥1000.
        assert_eq!(r.breakdown[0].units, dec!(3));
        assert_eq!(r.amount, dec!(1000.05));
        assert_eq!(r.amount_rounded.to_string(), "1000");
    }

    #[test]
    fn example_charge_graduated_block() {
        let r = charge(include_str!(
            "../../docs/examples/pricing/charge-graduated-block.json"
        ));
        // Tier 1: 1000 units = 10 blocks of 100 × 2.50 = 25. Tier 2: 1001 units → 3 started blocks of 500
        // × 9.99 = 29.97, + flat 1 = 30.97. Total 55.97.
        assert_eq!(r.breakdown.len(), 2);
        assert_eq!(
            (r.breakdown[0].units, r.breakdown[0].amount),
            (dec!(10), dec!(25))
        );
        assert_eq!(
            (r.breakdown[1].units, r.breakdown[1].amount),
            (dec!(3), dec!(30.97))
        );
        assert_eq!(r.amount_rounded.to_string(), "55.97");
    }

    #[test]
    fn example_preview_lago_upgrade() {
        let r = preview(include_str!(
            "../../docs/examples/pricing/preview-lago-upgrade.json"
        ));
        assert_eq!(r.period.from.to_rfc3339(), "2025-12-31T23:00:00+00:00");
        assert_eq!(r.period.days, 31);
        assert_eq!(amounts(&r), vec![dec!(100.00), dec!(-54.84), dec!(109.68)]);
        let kinds: Vec<LineKind> = r.invoice.lines.iter().map(|l| l.kind).collect();
        assert_eq!(
            kinds,
            vec![
                LineKind::Subscription,
                LineKind::SubscriptionCredit,
                LineKind::Subscription
            ]
        );
        assert_eq!(
            r.invoice.lines[1].proration_factor,
            Some(dec!(17) / dec!(31))
        );
        assert_eq!(r.invoice.total.to_string(), "154.84");
        assert_eq!(r.invoice.amount_due.to_string(), "154.84");
    }

    #[test]
    fn example_preview_thirty_day() {
        let r = preview(include_str!(
            "../../docs/examples/pricing/preview-thirty-day.json"
        ));
        // January counts 30 days; the upgrade on Jan 15 leaves Jan 15..=30 (the 31st is day 30): 16/30.
        // Credit 100 × 16/30 = 53.333… → −53.33; Premium 200 × 16/30 = 106.666… → 106.67.
        assert_eq!(amounts(&r), vec![dec!(100.00), dec!(-53.33), dec!(106.67)]);
        assert_eq!(
            r.invoice.lines[1].proration_factor,
            Some(dec!(16) / dec!(30))
        );
        assert_eq!(r.invoice.total.to_string(), "153.34");
        // The same upgrade on Feb 15 (28-day month) also leaves 16 of 30 days.
        let mut v: serde_json::Value = serde_json::from_str(include_str!(
            "../../docs/examples/pricing/preview-thirty-day.json"
        ))
        .unwrap();
        v["subscription"]["changes"][0]["at"] = json!("2026-02-15T10:00:00Z");
        v["period_containing"] = json!("2026-02-20T00:00:00Z");
        assert_eq!(
            amounts(&run(v).unwrap()),
            vec![dec!(100.00), dec!(-53.33), dec!(106.67)]
        );
    }

    #[test]
    fn example_preview_taxes_coupons_credits() {
        let r = preview(include_str!(
            "../../docs/examples/pricing/preview-taxes-coupons-credits.json"
        ));
        // February in Paris: the fee in advance 40.00, 7 calls × 0.50 = 3.50.
        assert_eq!(amounts(&r), vec![dec!(40.00), dec!(3.50)]);
        // calls-half: 50 % of the calls line only = 1.75. welcome: 10.00 over what is left (40.00 and 1.75, in
        // proportion: 9.5808 and 0.4192 → 9.58 and 0.42, the odd cent to the larger remainder).
        let discounts: Vec<Decimal> = r.invoice.lines.iter().map(|l| l.discount).collect();
        assert_eq!(discounts, vec![dec!(9.58), dec!(2.17)]);
        assert_eq!(r.invoice.coupons[0].amount, dec!(1.75));
        assert_eq!(r.invoice.coupons[1].amount, dec!(10.00));
        // Taxes, the most specific level first: the fee takes the plan's 20 % (30.42 → 6.08), the calls their
        // charge's 5.5 % (1.33 → 0.07315 → 0.07); the request's 19 % (the customer's level) is not used.
        let taxes: Vec<(&str, Decimal)> = r
            .invoice
            .lines
            .iter()
            .map(|l| (l.taxes[0].code.as_str(), l.tax_amount))
            .collect();
        assert_eq!(
            taxes,
            vec![("vat_fr", dec!(6.08)), ("vat_fr_reduced", dec!(0.07))]
        );
        assert_eq!(r.invoice.total, dec!(37.90));
        // 30.00 of prepaid credits after tax: 7.90 left to pay.
        assert_eq!(r.invoice.credits_total, dec!(30.00));
        assert_eq!(r.invoice.amount_due, dec!(7.90));
    }

    #[test]
    fn example_preview_typical() {
        let r = preview(include_str!(
            "../../docs/examples/pricing/preview-typical.json"
        ));
        // March 2026 in New York: EST at the start, EDT at the end (DST on March 8).
        assert_eq!(r.period.from.to_rfc3339(), "2026-03-01T05:00:00+00:00");
        assert_eq!(r.period.to.to_rfc3339(), "2026-04-01T04:00:00+00:00");
        // Fee 49; API calls: 5 ok events in the local month (c1, c2, c4, c5, c6) → 2 × 1 + 3 × 0.5 + 2 =
        // 5.50, true-up to 10 = 4.50; storage eu max 120 → 120 × 0.08 + 1 = 10.60, us 30.5 × 0.10 = 3.05;
        // payments 1 % of 12000 + 40 × 0.10 = 124.
        assert_eq!(
            amounts(&r),
            vec![
                dec!(49.00),
                dec!(5.50),
                dec!(4.50),
                dec!(10.60),
                dec!(3.05),
                dec!(124.00)
            ]
        );
        assert_eq!(r.invoice.lines[1].units, Some(dec!(5)));
        assert_eq!(r.invoice.subtotal, dec!(196.65));
        // 10 % of 196.65 = 19.665 → 19.67; each line gets 10 % and the odd cent goes to the largest
        // remainder (3.05 → 0.305 → 0.31).
        let discounts: Vec<Decimal> = r.invoice.lines.iter().map(|l| l.discount).collect();
        assert_eq!(
            discounts,
            vec![
                dec!(4.90),
                dec!(0.55),
                dec!(0.45),
                dec!(1.06),
                dec!(0.31),
                dec!(12.40)
            ]
        );
        // 8.875 % on 44.10, 4.95, 4.05, 9.54, 2.74 = 3.91, 0.44, 0.36, 0.85, 0.24; payments are exempt.
        let taxes: Vec<Decimal> = r.invoice.lines.iter().map(|l| l.tax_amount).collect();
        assert_eq!(
            taxes,
            vec![
                dec!(3.91),
                dec!(0.44),
                dec!(0.36),
                dec!(0.85),
                dec!(0.24),
                dec!(0)
            ]
        );
        assert_eq!(r.invoice.discount_total.to_string(), "19.67");
        assert_eq!(r.invoice.tax_total.to_string(), "5.80");
        assert_eq!(r.invoice.total.to_string(), "182.78");
        assert_eq!(r.invoice.credits_total.to_string(), "55.00");
        assert_eq!(r.invoice.amount_due.to_string(), "127.78");
    }

    #[test]
    fn example_preview_kwd_trial() {
        let r = preview(include_str!(
            "../../docs/examples/pricing/preview-kwd-trial.json"
        ));
        // Anniversary period Jan 31 → Feb 28 (28 days). The 14-day trial ends Feb 14: the fee covers
        // 14 of 28 days → 12.345 × 0.5 = 6.1725 → 6.173 (half-up, 3 decimals).
        assert_eq!(r.period.from_date.to_string(), "2026-01-31");
        assert_eq!(r.period.to_date.to_string(), "2026-02-27");
        assert_eq!(r.invoice.lines[0].proration_factor, Some(dec!(0.5)));
        assert_eq!(r.invoice.lines[0].amount.to_string(), "6.173");
        // 1001 × 0.0125 = 12.5125 → 12.513.
        assert_eq!(r.invoice.lines[1].amount.to_string(), "12.513");
        // Inclusive 5 % VAT: 6.173 × 5/105 = 0.294, 12.513 × 5/105 = 0.596.
        assert_eq!(r.invoice.lines[0].tax_amount, dec!(0.294));
        assert_eq!(r.invoice.lines[1].taxable_amount, dec!(11.917));
        assert_eq!(r.invoice.tax_total.to_string(), "0.890");
        assert_eq!(r.invoice.total.to_string(), "18.686");
        // Half-even rounds both midpoints down to the even digit.
        let mut req: PreviewRequest = serde_json::from_str(include_str!(
            "../../docs/examples/pricing/preview-kwd-trial.json"
        ))
        .unwrap();
        req.rounding = RoundingMode::HalfEven;
        let r = preview_invoice(req).unwrap();
        assert_eq!(amounts(&r), vec![dec!(6.172), dec!(12.512)]);
    }

    fn base_request() -> serde_json::Value {
        json!({
            "currency": "USD",
            "plan": {"code": "a", "amount": "30", "interval": "monthly", "pay_in_advance": true},
            "plans": [{"code": "b", "amount": "15", "interval": "monthly", "pay_in_advance": true}],
            "subscription": {"started_at": "2026-01-01T00:00:00Z"},
            "period_containing": "2026-04-10T00:00:00Z"
        })
    }

    fn run(v: serde_json::Value) -> Result<PreviewResponse> {
        preview_invoice(
            serde_json::from_value(v).map_err(|e| Error::InvalidRequest(e.to_string()))?,
        )
    }

    #[test]
    fn downgrade_cancel_and_pause_through_the_api() {
        let mut v = base_request();
        v["subscription"]["changes"] =
            json!([{"type": "downgrade", "at": "2026-04-10T00:00:00Z", "plan": "b"}]);
        assert_eq!(amounts(&run(v.clone()).unwrap()), vec![dec!(30.00)]);
        v["period_containing"] = json!("2026-05-10T00:00:00Z");
        assert_eq!(amounts(&run(v).unwrap()), vec![dec!(15.00)]);

        // Immediate cancellation on April 10 under `days`: April 1..=10 billed, 20 of 30 days credited.
        let mut v = base_request();
        v["subscription"]["changes"] =
            json!([{"type": "cancel", "at": "2026-04-10T12:00:00Z", "immediate": true}]);
        assert_eq!(
            amounts(&run(v.clone()).unwrap()),
            vec![dec!(30.00), dec!(-20.00)]
        );
        v["period_containing"] = json!("2026-05-10T00:00:00Z");
        assert!(run(v).unwrap().invoice.lines.is_empty());

        // Paused April 11..=20 (10 days of 30): credit 10.00 then charge 11/30 back on resume.
        let mut v = base_request();
        v["subscription"]["changes"] = json!([
            {"type": "resume", "at": "2026-04-21T00:00:00Z"},
            {"type": "pause", "at": "2026-04-11T00:00:00Z"}
        ]);
        let r = run(v).unwrap();
        assert_eq!(amounts(&r), vec![dec!(30.00), dec!(-20.00), dec!(10.00)]);
        assert_eq!(r.invoice.total, dec!(20.00));
    }

    #[test]
    fn bad_requests_are_errors() {
        let mut v = base_request();
        v["timezone"] = json!("Nowhere/Land");
        assert!(matches!(run(v), Err(Error::UnknownTimezone(_))));
        let mut v = base_request();
        v["subscription"]["changes"] =
            json!([{"type": "upgrade", "at": "2026-04-10T00:00:00Z", "plan": "zzz"}]);
        assert!(run(v).is_err());
        let mut v = base_request();
        v["surprise"] = json!(1);
        assert!(run(v).is_err());
        let mut v = base_request();
        v["currency"] = json!("XYZ");
        assert!(run(v).is_err());
        let missing =
            json!({"currency": "USD", "charge_model": "standard", "properties": {"amount": "1"}});
        assert!(matches!(
            evaluate_charge(serde_json::from_value(missing).unwrap()),
            Err(Error::MissingInput(_))
        ));
    }

    // Every field a request can carry is used or rejected, at every level.
    #[test]
    fn unknown_or_unused_fields_are_errors_at_every_level() {
        let charge = json!({"code": "c", "billable_metric": {"code": "m", "aggregation_type": "count_agg"},
            "charge_model": "standard", "properties": {"amount": "1"}});
        let mut ok = base_request();
        ok["plan"]["charges"] = json!([charge]);
        ok["events"] =
            json!([{"transaction_id": "e1", "code": "m", "timestamp": "2026-04-02T00:00:00Z"}]);
        ok["coupons"] =
            json!([{"code": "p", "coupon_type": "percentage", "percentage_rate": "10"}]);
        ok["taxes"] = json!([{"code": "t", "rate": "5"}]);
        ok["credit_notes"] = json!([{"code": "cn", "amount": "1"}]);
        ok["subscription"]["changes"] = json!([{"type": "pause", "at": "2026-04-20T00:00:00Z"}]);
        assert!(run(ok.clone()).is_ok());
        let typos: [(&str, serde_json::Value); 12] = [
            ("/plan/charges/0/billable_metric", json!({"field": "x"})),
            ("/plan/charges/0", json!({"charge_modle": "standard"})),
            ("/plan/charges/0/properties", json!({"grouped_by": ["x"]})),
            ("/events/0", json!({"external_subscription_id": "s"})),
            ("/coupons/0", json!({"expiration": "never"})),
            ("/taxes/0", json!({"applied_to": "fees"})),
            ("/credit_notes/0", json!({"currency": "USD"})),
            ("/subscription/changes/0", json!({"plan": "b"})),
            (
                "/subscription",
                json!({"ending_at": "2027-01-01T00:00:00Z"}),
            ),
            ("/plan", json!({"amount_currency": "USD"})),
            // Fields of `plans` entries that would be silently unused are errors.
            ("/plans/0", json!({"trial_period_days": 7})),
            ("/plans/0", json!({"proration": "seconds"})),
        ];
        for (path, extra) in typos {
            let mut v = ok.clone();
            let target = v.pointer_mut(path).unwrap();
            for (k, x) in extra.as_object().unwrap() {
                target[k] = x.clone();
            }
            assert!(run(v).is_err(), "{path} {extra} was accepted");
        }
        // The same proration as the subscription's is consistent, hence accepted.
        let mut v = ok.clone();
        v["plans"][0]["proration"] = json!("days");
        assert!(run(v).is_ok());
        let mut v = ok;
        v["aggregates"] = json!([{"charge": "c", "units": "1", "unit": "x"}]);
        assert!(run(v).is_err());
    }

    #[test]
    fn example_preview_anchor_day() {
        let r = preview(include_str!(
            "../../docs/examples/pricing/preview-anchor-day.json"
        ));
        // Started Jan 10, bills on the 15th: the first period is Dec 15 → Jan 14 (31 days) and Jan 10..=14
        // are 5 of its days: 30 × 5/31 = 4.8387… → 4.84 (leading proration, paid in advance).
        assert_eq!(r.period.from_date.to_string(), "2025-12-15");
        assert_eq!(r.period.to_date.to_string(), "2026-01-14");
        assert_eq!(amounts(&r), vec![dec!(4.84)]);
        let mut v: serde_json::Value = serde_json::from_str(include_str!(
            "../../docs/examples/pricing/preview-anchor-day.json"
        ))
        .unwrap();
        // Each convention: days_exclusive_end 0.161290323 × 30 = 4.84; seconds 5 × 86400 / 31 × 86400
        // = 4.84; thirty_day: Dec 15 → Jan 15 is 30 days, Jan 10 is day 25, so 5/30 → 5.00.
        for (conv, expected) in [
            ("days_exclusive_end", dec!(4.84)),
            ("seconds", dec!(4.84)),
            ("thirty_day", dec!(5.00)),
        ] {
            v["proration"] = json!(conv);
            assert_eq!(amounts(&run(v.clone()).unwrap()), vec![expected], "{conv}");
        }
        v["proration"] = json!("days");
        // The next period is a whole one, Jan 15 → Feb 14.
        v["period_containing"] = json!("2026-01-20T00:00:00Z");
        let next = run(v.clone()).unwrap();
        assert_eq!(next.period.from_date.to_string(), "2026-01-15");
        assert_eq!(amounts(&next), vec![dec!(30.00)]);
        // In arrears the same 4.84 is billed at the end of the first period.
        v["plan"]["pay_in_advance"] = json!(false);
        v["period_containing"] = json!("2026-01-10T00:00:00Z");
        assert_eq!(amounts(&run(v.clone()).unwrap()), vec![dec!(4.84)]);
        // Day 31 bills on the last day of short months; an anniversary plan contradicts the anchor.
        v["subscription"]["billing_anchor_day"] = json!(31);
        v["period_containing"] = json!("2026-02-10T00:00:00Z");
        let feb = run(v.clone()).unwrap();
        assert_eq!(feb.period.from_date.to_string(), "2026-01-31");
        assert_eq!(feb.period.to_date.to_string(), "2026-02-27");
        v["plan"]["billing_time"] = json!("anniversary");
        assert!(run(v.clone()).is_err());
        v["plan"]["billing_time"] = json!("calendar");
        v["subscription"]["billing_anchor_day"] = json!(32);
        assert!(run(v).is_err());
    }

    // Kill Bill's BCD change / Stripe's `billing_cycle_anchor` reset on a plan change: the old plan is
    // credited from the change, and the new plan is charged for the piece up to its new anchor date.
    #[test]
    fn anchor_change_on_a_plan_change_prorates_up_to_the_new_anchor() {
        let mut v: serde_json::Value = serde_json::from_str(include_str!(
            "../../docs/examples/pricing/preview-anchor-day.json"
        ))
        .unwrap();
        v["plans"] =
            json!([{"code": "pro", "amount": "60", "interval": "monthly", "pay_in_advance": true}]);
        v["subscription"]["changes"] = json!([{"type": "upgrade", "at": "2026-01-20T08:00:00Z", "plan": "pro", "billing_anchor_day": 1}]);
        // The period Jan 15 → Feb 14 (31 days): 30 charged at its start, Jan 20 → Feb 14 (26 days)
        // credited: 30 × 26/31 = 25.16.
        v["period_containing"] = json!("2026-01-16T00:00:00Z");
        let old = run(v.clone()).unwrap();
        assert_eq!(amounts(&old), vec![dec!(30.00), dec!(-25.16)]);
        // The new plan bills on the 1st: its period Jan 1 → Jan 31 is served from Jan 20, 12 of 31 days:
        // 60 × 12/31 = 23.23; then whole months from Feb 1.
        v["period_containing"] = json!("2026-01-25T00:00:00Z");
        let new = run(v.clone()).unwrap();
        assert_eq!(new.period.from_date.to_string(), "2026-01-01");
        assert_eq!(amounts(&new), vec![dec!(23.23)]);
        v["period_containing"] = json!("2026-02-25T00:00:00Z");
        let feb = run(v).unwrap();
        assert_eq!(feb.period.from_date.to_string(), "2026-02-01");
        assert_eq!(amounts(&feb), vec![dec!(60.00)]);
    }

    // Stripe (billing cycle docs, https://docs.stripe.com/billing/subscriptions/billing-cycle): changing to
    // a price with a different interval resets the billing cycle anchor to the change, credits the unused
    // time on the old price and starts a full period of the new one; Lago terminates the old
    // subscription (credit of the unused advance fee) and starts the new plan at the change.
    #[test]
    fn example_preview_monthly_to_yearly_and_back() {
        let r = preview(include_str!(
            "../../docs/examples/pricing/preview-monthly-to-yearly.json"
        ));
        // The yearly plan's first period starts at the change: Jan 15 2026 → Jan 14 2027, billed whole.
        assert_eq!(r.period.from_date.to_string(), "2026-01-15");
        assert_eq!(r.period.to_date.to_string(), "2027-01-14");
        assert_eq!(amounts(&r), vec![dec!(1000.00)]);
        let mut v: serde_json::Value = serde_json::from_str(include_str!(
            "../../docs/examples/pricing/preview-monthly-to-yearly.json"
        ))
        .unwrap();
        // January's monthly period: 100 in advance, Jan 15..=31 credited (17/31 × 100 = 54.84).
        v["period_containing"] = json!("2026-01-10T00:00:00Z");
        assert_eq!(
            amounts(&run(v.clone()).unwrap()),
            vec![dec!(100.00), dec!(-54.84)]
        );
        // And back to monthly on Jul 15 2026: 184 of the yearly period's 365 days unused → −504.11; the
        // monthly plan's period starts on Jul 15 and is billed whole.
        v["subscription"]["changes"] = json!([
            {"type": "upgrade", "at": "2026-01-15T09:30:00Z", "plan": "yearly"},
            {"type": "upgrade", "at": "2026-07-15T09:30:00Z", "plan": "monthly"}
        ]);
        v["period_containing"] = json!("2026-03-01T00:00:00Z");
        assert_eq!(
            amounts(&run(v.clone()).unwrap()),
            vec![dec!(1000.00), dec!(-504.11)]
        );
        v["period_containing"] = json!("2026-07-20T00:00:00Z");
        let back = run(v.clone()).unwrap();
        assert_eq!(back.period.from_date.to_string(), "2026-07-15");
        assert_eq!(amounts(&back), vec![dec!(100.00)]);
        // In arrears: Jan 1..=14 of monthly (45.16), Jan 15..=Jul 14 of yearly (181/365 → 495.89).
        v["plan"]["pay_in_advance"] = json!(false);
        v["plans"][0]["pay_in_advance"] = json!(false);
        v["period_containing"] = json!("2026-01-10T00:00:00Z");
        assert_eq!(amounts(&run(v.clone()).unwrap()), vec![dec!(45.16)]);
        v["period_containing"] = json!("2026-03-01T00:00:00Z");
        assert_eq!(amounts(&run(v.clone()).unwrap()), vec![dec!(495.89)]);
        // Every convention: a change at midnight starts the yearly period exactly at it (factor 1), and the
        // monthly credit follows the convention (thirty_day: Jan 15..=30 is 16 of 30 days).
        for (conv, credit) in [
            ("days", dec!(-54.84)),
            ("days_exclusive_end", dec!(-54.84)),
            ("seconds", dec!(-54.84)),
            ("thirty_day", dec!(-53.33)),
        ] {
            let mut v: serde_json::Value = serde_json::from_str(include_str!(
                "../../docs/examples/pricing/preview-monthly-to-yearly.json"
            ))
            .unwrap();
            v["proration"] = json!(conv);
            v["subscription"]["changes"][0]["at"] = json!("2026-01-15T00:00:00Z");
            assert_eq!(
                amounts(&run(v.clone()).unwrap()),
                vec![dec!(1000.00)],
                "{conv}"
            );
            v["period_containing"] = json!("2026-01-10T00:00:00Z");
            assert_eq!(
                amounts(&run(v).unwrap()),
                vec![dec!(100.00), credit],
                "{conv}"
            );
        }
    }

    // Lago groups a customer's subscriptions billed on the same day into one invoice (Lago docs,
    // invoicing overview), so coupons, taxes and credits apply once over the whole.
    #[test]
    fn example_preview_two_subscriptions() {
        let r = preview(include_str!(
            "../../docs/examples/pricing/preview-two-subscriptions.json"
        ));
        // sub_main: 49.00 (arrears) + 100 × 0.10 = 10.00; sub_addon: started Mar 10, in advance, 22 of 31
        // days: 20 × 22/31 = 14.19.
        assert_eq!(amounts(&r), vec![dec!(49.00), dec!(10.00), dec!(14.19)]);
        let subs: Vec<Option<&str>> = r
            .invoice
            .lines
            .iter()
            .map(|l| l.subscription.as_deref())
            .collect();
        assert_eq!(
            subs,
            vec![Some("sub_main"), Some("sub_main"), Some("sub_addon")]
        );
        assert_eq!(r.subscriptions.len(), 2);
        assert_eq!(
            r.subscriptions[1].period.from_date.to_string(),
            "2026-03-01"
        );
        // One coupon of 10.00 over 73.19, split 6.69 / 1.37 / 1.94 (largest remainders); 10 % tax on
        // 42.31, 8.63, 12.25 = 4.23 + 0.86 + 1.23 = 6.32; total 69.51; credit note 5 → due 64.51.
        assert_eq!(r.invoice.subtotal, dec!(73.19));
        let discounts: Vec<Decimal> = r.invoice.lines.iter().map(|l| l.discount).collect();
        assert_eq!(discounts, vec![dec!(6.69), dec!(1.37), dec!(1.94)]);
        assert_eq!(r.invoice.coupons.len(), 1);
        assert_eq!(r.invoice.tax_total, dec!(6.32));
        assert_eq!(r.invoice.total, dec!(69.51));
        assert_eq!(r.invoice.credits.len(), 1);
        assert_eq!(r.invoice.amount_due, dec!(64.51));
        // Ids are required and unique.
        let mut v: serde_json::Value = serde_json::from_str(include_str!(
            "../../docs/examples/pricing/preview-two-subscriptions.json"
        ))
        .unwrap();
        v["other_subscriptions"][0]["id"] = json!("sub_main");
        v["other_subscriptions"][0]["subscription"]["id"] = json!("sub_main");
        assert!(run(v.clone()).is_err());
        v["subscription"]["id"] = serde_json::Value::Null;
        assert!(run(v).is_err());
    }

    #[test]
    fn jan_31_anniversary_in_a_leap_year_through_the_api() {
        let v = json!({
            "currency": "USD",
            "plan": {"code": "a", "amount": "31", "interval": "monthly", "pay_in_advance": true,
                     "billing_time": "anniversary"},
            "subscription": {"started_at": "2024-01-31T08:00:00Z",
                             "changes": [{"type": "cancel", "at": "2024-03-10T18:00:00Z", "immediate": true}]},
            "period_containing": "2024-02-15T00:00:00Z"
        });
        let feb = run(v.clone()).unwrap();
        assert_eq!(feb.period.from_date.to_string(), "2024-01-31");
        assert_eq!(feb.period.to_date.to_string(), "2024-02-28");
        assert_eq!(feb.period.days, 29);
        let mut v = v;
        v["period_containing"] = json!("2024-03-05T00:00:00Z");
        let mar = run(v).unwrap();
        // Feb 29 → Mar 30 (31 days, back to the 31st anchor clamped to Mar 31 exclusive).
        assert_eq!(mar.period.from_date.to_string(), "2024-02-29");
        assert_eq!(mar.period.to_date.to_string(), "2024-03-30");
        // Cancelled on Mar 10 (billed, Lago counts it): Mar 11..=30 are 20 unused days of 31.
        assert_eq!(amounts(&mar), vec![dec!(31.00), dec!(-20.00)]);
    }

    #[test]
    fn paris_dst_day_by_seconds_and_by_days() {
        // 2026-03-29 is the spring-forward Sunday in Paris: the local day has 23 hours.
        let mut v = json!({
            "currency": "EUR",
            "timezone": "Europe/Paris",
            "proration": "seconds",
            "plan": {"code": "a", "amount": "2674.80", "interval": "monthly"},
            "subscription": {"started_at": "2026-03-29T00:00:00+01:00"},
            "period_containing": "2026-03-30T00:00:00Z"
        });
        let r = run(v.clone()).unwrap();
        assert_eq!(r.period.from.to_rfc3339(), "2026-02-28T23:00:00+00:00");
        assert_eq!(r.period.to.to_rfc3339(), "2026-03-31T22:00:00+00:00");
        // 71 hours of a 743-hour month: 2674.80 × 255600 / 2674800 = 255.60.
        assert_eq!(amounts(&r), vec![dec!(255.60)]);
        v["proration"] = json!("days");
        // 3 of 31 days: 2674.80 × 3 / 31 = 258.851… → 258.85.
        assert_eq!(amounts(&run(v).unwrap()), vec![dec!(258.85)]);
    }

    #[test]
    fn duplicate_aggregates_are_rejected() {
        let v = json!({
            "currency": "USD",
            "plan": {"code": "a", "amount": "0", "interval": "monthly", "charges": [
                {"code": "c", "billable_metric": {"code": "m", "aggregation_type": "count_agg"},
                 "charge_model": "standard", "properties": {"amount": "1"}}]},
            "subscription": {"started_at": "2026-01-01T00:00:00Z"},
            "period_containing": "2026-01-10T00:00:00Z",
            "aggregates": [{"charge": "c", "units": "1"}, {"charge": "c", "units": "2"}]
        });
        assert!(matches!(run(v.clone()), Err(Error::InvalidRequest(_))));
        let mut ok = v;
        ok["aggregates"] = json!([{"charge": "c", "units": "2"}]);
        assert_eq!(amounts(&run(ok).unwrap()), vec![dec!(2.00)]);
    }

    #[test]
    fn errors_are_permanent() {
        assert!(!Error::UnknownTimezone("x".into()).is_retryable());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn preview_does_not_depend_on_event_order(seed in any::<u64>()) {
            let mut req: PreviewRequest =
                serde_json::from_str(include_str!("../../docs/examples/pricing/preview-typical.json")).unwrap();
            let expected = preview_invoice(req.clone()).unwrap();
            let mut s = seed;
            for i in (1..req.events.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                req.events.swap(i, (s >> 33) as usize % (i + 1));
            }
            prop_assert_eq!(preview_invoice(req).unwrap(), expected);
        }
    }
}
