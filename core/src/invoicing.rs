//! The invoicing domain: one customer's subscriptions, their plans, usage and adjustments for one billing
//! date → one invoice. Works on parsed core types only; `pricing_api::preview_invoice` is a thin JSON
//! adapter over [`invoice`], and an invoicer service calls [`invoice`] directly.
//!
//! A subscription's life is cut into **phases**: stretches billed on one schedule (interval and
//! anchor) and one timing (in advance or in arrears). A plan change to a plan with another interval or
//! another billing anchor starts a new phase at the change: the old phase's period is cut there (its
//! unused part credited when paid in advance) and the new plan's periods start at the change (or, with a
//! day-of-month anchor, the piece up to the next anchor date is prorated). Stripe does the same when a
//! price's interval changes (the billing cycle anchor is reset to the change, with a credit for unused
//! time); Lago terminates the old subscription and starts a new one.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;

use crate::aggregation::{Aggregate, Event, Metric};
use crate::charge::{ChargeModel, Usage};
use crate::currency::Currency;
use crate::error::{Error, Result};
use crate::invoice::{assemble, Adjustments, DraftLine, Invoice, LineKind};
use crate::money::{non_negative, Money, RoundingMode};
use crate::period::{local_date, BillingAnchor, BillingPeriod, Interval, Schedule};
use crate::proration::{ChangeEdge, ProrationConvention};
use crate::subscription::{fee_lines, segments_with, ChangeKind, FeeKind, Segment, Subscription};
use crate::tax::TaxRate;

/// How a plan's subscription fee is billed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanTerms {
    /// Fee of one full period.
    pub fee: Decimal,
    /// Billing interval.
    pub interval: Interval,
    /// Fee billed at the start of the period (true) or at its end.
    pub pay_in_advance: bool,
    /// Where periods start.
    pub anchor: BillingAnchor,
}

/// A stretch of a subscription billed on one schedule and one timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phase {
    /// First instant of the phase.
    pub from: DateTime<Utc>,
    /// First instant after it (`None` for the last phase).
    pub to: Option<DateTime<Utc>>,
    /// Periods of the phase.
    pub schedule: Schedule,
    /// Timing of the fee in this phase.
    pub pay_in_advance: bool,
}

/// The phase in force at `t` (the first one before the subscription starts).
pub fn phase_at(phases: &[Phase], t: DateTime<Utc>) -> Result<&Phase> {
    phases
        .iter()
        .rev()
        .find(|p| p.from <= t)
        .or_else(|| phases.first())
        .ok_or(Error::InvalidRequest("subscription without a phase".into()))
}

/// Cuts a subscription's life into phases. A plan change starts a new phase when the new plan's
/// interval or anchor differs (new schedule: periods start at the change, or at the new anchor day) or
/// only its timing differs (same schedule, new timing).
pub fn phases(
    sub: &Subscription,
    plans: &[PlanTerms],
    convention: ProrationConvention,
    tz: Tz,
) -> Result<Vec<Phase>> {
    let terms = |i: usize| {
        plans
            .get(i)
            .copied()
            .ok_or_else(|| Error::InvalidRequest(format!("unknown plan index {i}")))
    };
    let begin = |t| convention.effective_instant(t, ChangeEdge::Begin, tz);
    let first = terms(sub.plan)?;
    let mut out = vec![Phase {
        from: begin(sub.started_at),
        to: None,
        schedule: Schedule::anchored(first.interval, first.anchor, sub.started_at, tz)?,
        pay_in_advance: first.pay_in_advance,
    }];
    let mut current = sub.plan;
    let mut changes = sub.changes.clone();
    changes.sort_by_key(|c| c.at);
    for c in &changes {
        let (plan, at) = match c.kind {
            ChangeKind::Upgrade { plan } => (plan, begin(c.at)),
            ChangeKind::Downgrade { plan } => (
                plan,
                phase_at(&out, c.at)?.schedule.period_containing(c.at)?.end,
            ),
            _ => continue,
        };
        let (old, new) = (terms(current)?, terms(plan)?);
        current = plan;
        let reanchor = (old.interval, old.anchor) != (new.interval, new.anchor);
        if !reanchor && old.pay_in_advance == new.pay_in_advance {
            continue;
        }
        let last = out
            .last_mut()
            .ok_or(Error::InvalidRequest("no phase".into()))?;
        let schedule = if reanchor {
            let anchor = match new.anchor {
                BillingAnchor::DayOfMonth(d) => BillingAnchor::DayOfMonth(d),
                // The new plan's periods start at the change.
                _ => BillingAnchor::Anniversary,
            };
            Schedule::anchored(new.interval, anchor, at, tz)?
        } else {
            last.schedule
        };
        let phase = Phase {
            from: at,
            to: None,
            schedule,
            pay_in_advance: new.pay_in_advance,
        };
        if at < last.from {
            return Err(Error::InvalidRequest(format!(
                "plan change taking effect at {at} precedes the one at {}",
                last.from
            )));
        }
        if at == last.from {
            *last = Phase {
                to: last.to,
                ..phase
            };
        } else {
            last.to = Some(at);
            out.push(phase);
        }
    }
    Ok(out)
}

/// Keeps only what falls inside `phase`: before it the subscription counts as not started, after it
/// as ended (so the fee paid in advance is credited from the phase's end).
fn clip_to_phase(segs: Vec<Segment>, phase: &Phase) -> Vec<Segment> {
    let mut out: Vec<Segment> = Vec::with_capacity(segs.len() + 2);
    for s in segs {
        let mut cuts = vec![s.from];
        if s.from < phase.from && phase.from < s.to {
            cuts.push(phase.from);
        }
        if let Some(to) = phase.to.filter(|to| s.from < *to && *to < s.to) {
            cuts.push(to);
        }
        cuts.push(s.to);
        for w in cuts.windows(2) {
            let mut state = s.state;
            if w[0] < phase.from {
                state.started = false;
            }
            if phase.to.is_some_and(|to| w[0] >= to) {
                state.ended = true;
            }
            match out.last_mut() {
                Some(last) if last.state == state && last.to == w[0] => last.to = w[1],
                _ => out.push(Segment {
                    from: w[0],
                    to: w[1],
                    state,
                }),
            }
        }
    }
    out
}

/// A usage charge of a plan, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct PricedCharge {
    /// Code of the charge, unique in the plan.
    pub code: String,
    /// Name shown on the invoice; defaults to the code.
    pub name: Option<String>,
    /// What is metered and how it is aggregated.
    pub metric: Metric,
    /// The charge model.
    pub model: ChargeModel,
    /// Minimum commitment per period (not prorated).
    pub min_amount: Option<Decimal>,
    /// No tax on this charge.
    pub tax_exempt: bool,
    /// Tax rates of this charge's lines, when set at the charge (the most specific level wins: charge, then
    /// plan, then the invoice's rates).
    pub taxes: Option<Vec<TaxRate>>,
}

/// A plan, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct PricedPlan {
    /// Plan code.
    pub code: String,
    /// Name shown on the invoice; defaults to the code.
    pub name: Option<String>,
    /// How the fee is billed.
    pub terms: PlanTerms,
    /// No tax on the subscription fee.
    pub fee_tax_exempt: bool,
    /// Tax rates of the plan's lines (fee, and charges without their own), when set at the plan.
    pub taxes: Option<Vec<TaxRate>>,
    /// Usage charges.
    pub charges: Vec<PricedCharge>,
}

impl PricedPlan {
    fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.code)
    }
}

/// Pre-aggregated usage of one charge (and group) over the invoiced period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeAggregate {
    /// Code of the plan charge.
    pub charge: String,
    /// Value of the charge's `group_by` property, if grouped.
    pub group: Option<String>,
    /// The usage.
    pub aggregate: Aggregate,
}

/// One subscription to invoice, with its plans and usage.
#[derive(Debug, Clone, PartialEq)]
pub struct BillableSubscription {
    /// Id put on the subscription's lines (needed to tell subscriptions apart on a shared invoice).
    pub id: Option<String>,
    /// Plans; `subscription.plan` and its changes index into them.
    pub plans: Vec<PricedPlan>,
    /// Dates and changes.
    pub subscription: Subscription,
    /// Proration convention of the subscription fee.
    pub convention: ProrationConvention,
    /// Raw usage events (aggregated per usage window).
    pub events: Vec<Event>,
    /// Pre-aggregated usage; for the charges it names, events are ignored. It goes to the last usage
    /// window of the period whose plan has the charge.
    pub aggregates: Vec<ChargeAggregate>,
}

/// Everything one invoice is computed from.
#[derive(Debug, Clone, Copy)]
pub struct InvoiceInput<'a> {
    /// Invoice currency.
    pub currency: Currency,
    /// Rounding of each line.
    pub rounding: RoundingMode,
    /// Customer timezone (period boundaries are its local midnights).
    pub timezone: Tz,
    /// Any instant of the period to invoice (for each subscription, of the phase in force then).
    pub period_containing: DateTime<Utc>,
    /// The customer's subscriptions sharing this billing date.
    pub subscriptions: &'a [BillableSubscription],
    /// Coupons, taxes and credits, applied once over all the lines.
    pub adjustments: Adjustments<'a>,
}

/// The period invoiced for one subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoicedPeriod {
    /// The subscription's id.
    pub subscription: Option<String>,
    /// The period.
    pub period: BillingPeriod,
    /// Convention used for its fee.
    pub convention: ProrationConvention,
}

/// An invoice and the period it covers for each subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceOutcome {
    /// Lines and totals.
    pub invoice: Invoice,
    /// One entry per subscription, in input order.
    pub periods: Vec<InvoicedPeriod>,
}

/// Invoices one customer's subscriptions for one billing date: every subscription's fee and usage lines
/// for its period containing `period_containing`, then coupons, taxes and credits applied once over
/// all of them (Lago invoices a customer's subscriptions that share a billing date together).
pub fn invoice(input: &InvoiceInput<'_>) -> Result<InvoiceOutcome> {
    if input.subscriptions.is_empty() {
        return Err(Error::InvalidRequest("no subscription to invoice".into()));
    }
    for (i, a) in input.subscriptions.iter().enumerate() {
        if input.subscriptions[..i].iter().any(|b| b.id == a.id) {
            return Err(Error::InvalidRequest(format!(
                "two subscriptions with id {:?} on one invoice",
                a.id
            )));
        }
    }
    let mut drafts = Vec::new();
    let mut periods = Vec::with_capacity(input.subscriptions.len());
    for s in input.subscriptions {
        let period = subscription_lines(input, s, &mut drafts)?;
        periods.push(InvoicedPeriod {
            subscription: s.id.clone(),
            period,
            convention: s.convention,
        });
    }
    let invoice = assemble(input.currency, input.rounding, drafts, &input.adjustments)?;
    Ok(InvoiceOutcome { invoice, periods })
}

/// The phases of a subscription under its own convention.
fn phases_of(s: &BillableSubscription, tz: Tz) -> Result<Vec<Phase>> {
    let terms: Vec<PlanTerms> = s.plans.iter().map(|p| p.terms).collect();
    phases(&s.subscription, &terms, s.convention, tz)
}

/// A line of a one-off invoice: an add-on, or prepaid credits bought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OneOffItem {
    /// [`LineKind::AddOn`] or [`LineKind::PrepaidCredits`].
    pub kind: LineKind,
    /// No tax on the line.
    pub tax_exempt: bool,
    /// Add-on code.
    pub code: String,
    /// Line description.
    pub description: String,
    /// Units, above zero.
    pub units: Decimal,
    /// Price of one unit, zero or more.
    pub unit_amount: Decimal,
    /// The line's own tax rates (`None`: the invoice's).
    pub taxes: Option<Vec<TaxRate>>,
}

/// A one-off invoice: one line per add-on (units × unit price, rounded once), then coupons, taxes and credits as
/// on any invoice (Lago's one-off invoices of add-ons).
pub fn one_off_invoice(
    currency: Currency,
    rounding: RoundingMode,
    items: &[OneOffItem],
    adjustments: &Adjustments<'_>,
) -> Result<Invoice> {
    if items.is_empty() {
        return Err(Error::InvalidRequest(
            "a one-off invoice needs at least one fee".into(),
        ));
    }
    let mut drafts = Vec::with_capacity(items.len());
    for (i, it) in items.iter().enumerate() {
        if it.units <= Decimal::ZERO {
            return Err(Error::InvalidRequest(format!(
                "fees[{i}].units must be above 0"
            )));
        }
        non_negative("unit_amount", it.unit_amount)?;
        let amount = it
            .units
            .checked_mul(it.unit_amount)
            .ok_or(Error::Overflow("add-on amount"))?;
        drafts.push(DraftLine {
            kind: it.kind,
            code: it.code.clone(),
            description: it.description.clone(),
            amount: Money::new(amount, currency),
            from: None,
            to: None,
            units: Some(it.units),
            proration_factor: None,
            tax_exempt: it.tax_exempt,
            taxes: it.taxes.clone(),
            breakdown: Vec::new(),
            subscription: None,
            plan: None,
            metric: None,
            adjusts: None,
        });
    }
    assemble(currency, rounding, drafts, adjustments)
}

/// The **billing dates** of a subscription up to `until` (inclusive), in order: the day it starts, the start of
/// every later phase (a plan change to another interval or anchor), and the end of every period it lives in. On
/// a billing date the customer's invoice bills, for this subscription, the period that closes then (usage,
/// fees in arrears, and the prorations of changes made during it) and the subscription fee paid in advance for
/// the period that opens then. A fee charged in advance from an instant that is not a billing date (after an
/// upgrade, a resume or the end of a trial) is a proration: it waits for the end of its period, as Stripe's
/// default `create_prorations` leaves prorations for the next invoice.
pub fn billing_dates(
    s: &BillableSubscription,
    tz: Tz,
    until: DateTime<Utc>,
) -> Result<Vec<DateTime<Utc>>> {
    let phases = phases_of(s, tz)?;
    let mut out: Vec<DateTime<Utc>> = Vec::new();
    let mut push = |t: DateTime<Utc>| {
        if t <= until && out.last().is_none_or(|l| *l < t) {
            out.push(t);
        }
    };
    'phases: for ph in &phases {
        push(ph.from);
        let mut period = ph.schedule.period_containing(ph.from)?;
        loop {
            if period.start > until {
                break 'phases;
            }
            // Stop after the period in which the subscription ends.
            let state = crate::attribution::state_at(
                &s.subscription,
                &phases,
                tz,
                period.start.max(ph.from),
            )?;
            if state.ended {
                break 'phases;
            }
            let end = match ph.to {
                Some(to) if to <= period.end => {
                    push(to);
                    break;
                }
                _ => period.end,
            };
            push(end);
            period = ph.schedule.next(&period)?;
        }
    }
    Ok(out)
}

/// The period of a subscription that closes at `billing_date` (whose usage is invoiced then), if one does.
pub fn closing_period(
    s: &BillableSubscription,
    tz: Tz,
    billing_date: DateTime<Utc>,
) -> Result<Option<BillingPeriod>> {
    if billing_date <= s.subscription.started_at {
        return Ok(None);
    }
    let phases = phases_of(s, tz)?;
    let before = billing_date - Duration::nanoseconds(1);
    let phase = phase_at(&phases, before)?;
    let period = phase.schedule.period_containing(before)?;
    let closes = period.end == billing_date || phase.to == Some(billing_date);
    Ok(closes.then_some(period))
}

/// Everything the invoice of one billing date is computed from.
#[derive(Debug, Clone, Copy)]
pub struct BillingDateInput<'a> {
    /// Invoice currency.
    pub currency: Currency,
    /// Rounding of each line.
    pub rounding: RoundingMode,
    /// Customer timezone.
    pub timezone: Tz,
    /// The billing date.
    pub billing_date: DateTime<Utc>,
    /// The customer's subscriptions; those without this billing date are left out. Their `aggregates` are the
    /// usage of the period that closes on the billing date ([`closing_period`]).
    pub subscriptions: &'a [BillableSubscription],
    /// Lines billed on this date besides the periods' (usage adjustments of periods already invoiced); they make
    /// an invoice on their own.
    pub extra_lines: &'a [DraftLine],
    /// Coupons, taxes and credits, applied once over all the lines.
    pub adjustments: Adjustments<'a>,
}

/// The invoice of one customer for one billing date: for each subscription with that billing date (see
/// [`billing_dates`]), the lines of the period closing then, without the fees already billed in advance on an
/// earlier billing date, and the fee in advance of the period opening then; then coupons, taxes and credits once
/// over all lines. `None` when nothing is billed on this date (no subscription has it, or none has a line then).
pub fn invoice_billing_date(input: &BillingDateInput<'_>) -> Result<Option<InvoiceOutcome>> {
    let tz = input.timezone;
    let d = input.billing_date;
    let mut drafts = Vec::new();
    let mut periods = Vec::new();
    for s in input.subscriptions {
        let dates = billing_dates(s, tz, d)?;
        if dates.last() != Some(&d) {
            continue;
        }
        let phases = phases_of(s, tz)?;
        let as_of = |t: DateTime<Utc>, subs| InvoiceInput {
            currency: input.currency,
            rounding: input.rounding,
            timezone: tz,
            period_containing: t,
            subscriptions: subs,
            adjustments: input.adjustments,
        };
        if let Some(closing) = closing_period(s, tz, d)? {
            let before = d - Duration::nanoseconds(1);
            let advance = phase_at(&phases, before)?.pay_in_advance;
            let mut lines = Vec::new();
            subscription_lines(&as_of(before, &[]), s, &mut lines)?;
            let before_count = drafts.len();
            drafts.extend(lines.into_iter().filter(|l| {
                let billed_at_its_start = advance
                    && l.kind == LineKind::Subscription
                    && l.from.is_some_and(|f| dates.binary_search(&f).is_ok());
                !billed_at_its_start
            }));
            // A period that leaves nothing to bill (its fee was paid in advance, it has no usage charge) does not
            // make an invoice on its own.
            if drafts.len() > before_count {
                periods.push(InvoicedPeriod {
                    subscription: s.id.clone(),
                    period: closing,
                    convention: s.convention,
                });
            }
        }
        let opening = phase_at(&phases, d)?;
        if opening.pay_in_advance && opening.from <= d {
            let fees_only = BillableSubscription {
                events: Vec::new(),
                aggregates: Vec::new(),
                ..s.clone()
            };
            let mut lines = Vec::new();
            let period = subscription_lines(&as_of(d, &[]), &fees_only, &mut lines)?;
            let before = drafts.len();
            drafts.extend(
                lines
                    .into_iter()
                    .filter(|l| l.kind == LineKind::Subscription && l.from == Some(d)),
            );
            if drafts.len() > before {
                periods.push(InvoicedPeriod {
                    subscription: s.id.clone(),
                    period,
                    convention: s.convention,
                });
            }
        }
    }
    if periods.is_empty() && input.extra_lines.is_empty() {
        return Ok(None);
    }
    drafts.extend(input.extra_lines.iter().cloned());
    let invoice = assemble(input.currency, input.rounding, drafts, &input.adjustments)?;
    Ok(Some(InvoiceOutcome { invoice, periods }))
}

fn true_up(min_amount: Option<Decimal>, amount: Decimal) -> Result<Option<Decimal>> {
    let Some(min) = min_amount else {
        return Ok(None);
    };
    non_negative("min_amount", min)?;
    Ok((amount < min).then_some(min - amount))
}

/// Appends one subscription's lines and returns its invoiced period.
fn subscription_lines(
    input: &InvoiceInput<'_>,
    s: &BillableSubscription,
    drafts: &mut Vec<DraftLine>,
) -> Result<BillingPeriod> {
    let tz = input.timezone;
    let currency = input.currency;
    let convention = s.convention;
    let plans = &s.plans;
    for p in plans {
        non_negative("plan amount", p.terms.fee)?;
    }
    let terms: Vec<PlanTerms> = plans.iter().map(|p| p.terms).collect();
    let phases = phases(&s.subscription, &terms, convention, tz)?;
    let phase = *phase_at(&phases, input.period_containing)?;
    let period = phase.schedule.period_containing(input.period_containing)?;
    let period_end_at = |t: DateTime<Utc>| -> Result<DateTime<Utc>> {
        phase_at(&phases, t)?
            .schedule
            .period_containing(t)
            .map(|p| p.end)
    };
    let segs = clip_to_phase(
        segments_with(&s.subscription, &period_end_at, convention, tz, &period)?,
        &phase,
    );
    let fmt_date = |t: DateTime<Utc>| local_date(t, tz);

    let fees: Vec<Decimal> = plans.iter().map(|p| p.terms.fee).collect();
    for f in fee_lines(
        &segs,
        &fees,
        phase.pay_in_advance,
        &period,
        convention,
        &phase.schedule,
    )? {
        let plan = &plans[f.plan];
        let last_day = fmt_date(f.to - Duration::seconds(1));
        let (kind, what) = match f.kind {
            FeeKind::Charge => (LineKind::Subscription, "fee"),
            FeeKind::Credit => (LineKind::SubscriptionCredit, "credit for unused days"),
        };
        drafts.push(DraftLine {
            kind,
            code: plan.code.clone(),
            description: format!(
                "{} {what}, {} to {last_day}",
                plan.display_name(),
                fmt_date(f.from)
            ),
            amount: Money::new(f.amount, currency),
            from: Some(f.from),
            to: Some(f.to),
            units: None,
            proration_factor: Some(f.factor),
            tax_exempt: plan.fee_tax_exempt,
            taxes: plan.taxes.clone(),
            breakdown: Vec::new(),
            subscription: s.id.clone(),
            plan: Some(plan.code.clone()),
            metric: None,
            adjusts: None,
        });
    }

    // Usage windows: runs of live segments on the same plan.
    let mut windows: Vec<Segment> = Vec::new();
    for seg in segs.iter().filter(|x| x.state.live()) {
        match windows.last_mut() {
            Some(w) if w.to == seg.from && w.state.plan == seg.state.plan => w.to = seg.to,
            _ => windows.push(*seg),
        }
    }
    let has_charge = |plan: usize, code: &str| {
        plans
            .get(plan)
            .is_some_and(|p| p.charges.iter().any(|c| c.code == code))
    };
    for a in &s.aggregates {
        if !windows.iter().any(|w| has_charge(w.state.plan, &a.charge)) {
            return Err(Error::InvalidRequest(format!(
                "aggregate for charge {:?}, which no active plan of the period has",
                a.charge
            )));
        }
    }
    for (wi, w) in windows.iter().enumerate() {
        let plan = plans
            .get(w.state.plan)
            .ok_or_else(|| Error::InvalidRequest(format!("unknown plan index {}", w.state.plan)))?;
        for charge in &plan.charges {
            // Aggregates go to the last window whose plan has the charge.
            let last_for_charge = windows[wi + 1..]
                .iter()
                .all(|later| !has_charge(later.state.plan, &charge.code));
            let given: Vec<&ChargeAggregate> = s
                .aggregates
                .iter()
                .filter(|a| a.charge == charge.code)
                .collect();
            for (i, a) in given.iter().enumerate() {
                if given[..i].iter().any(|b| b.group == a.group) {
                    return Err(Error::InvalidRequest(format!(
                        "two aggregates for charge {:?} and group {:?}",
                        a.charge, a.group
                    )));
                }
            }
            let usage: BTreeMap<Option<String>, Aggregate> = if given.is_empty() {
                charge.metric.aggregate(&s.events, w.from, w.to)?
            } else if last_for_charge {
                given
                    .iter()
                    .map(|a| (a.group.clone(), a.aggregate.clone()))
                    .collect()
            } else {
                BTreeMap::new()
            };
            let name = charge.name.as_deref().unwrap_or(&charge.code);
            let mut charge_total = Decimal::ZERO;
            for (group, agg) in usage {
                let has_values = !agg.event_values.is_empty() || agg.events_count == 0;
                let out = charge.model.evaluate(&Usage {
                    units: agg.units,
                    events_count: Some(agg.events_count),
                    event_values: has_values.then_some(agg.event_values.as_slice()),
                })?;
                charge_total += out.amount;
                let label = match (&group, &charge.metric.group_by) {
                    (Some(g), Some(key)) => format!("{name} ({key}={g})"),
                    _ => name.to_string(),
                };
                drafts.push(DraftLine {
                    kind: LineKind::Charge,
                    code: charge.code.clone(),
                    description: format!(
                        "{label}, {} to {}",
                        fmt_date(w.from),
                        fmt_date(w.to - Duration::seconds(1))
                    ),
                    amount: Money::new(out.amount, currency),
                    from: Some(w.from),
                    to: Some(w.to),
                    units: Some(agg.units),
                    proration_factor: None,
                    tax_exempt: charge.tax_exempt,
                    taxes: charge.taxes.clone().or_else(|| plan.taxes.clone()),
                    breakdown: out.breakdown,
                    subscription: s.id.clone(),
                    plan: Some(plan.code.clone()),
                    metric: Some(charge.metric.code.clone()),
                    adjusts: None,
                });
            }
            if let Some(t) = true_up(charge.min_amount, charge_total)? {
                drafts.push(DraftLine {
                    kind: LineKind::TrueUp,
                    code: charge.code.clone(),
                    description: format!("{name} minimum commitment true-up"),
                    amount: Money::new(t, currency),
                    from: Some(w.from),
                    to: Some(w.to),
                    units: None,
                    proration_factor: None,
                    tax_exempt: charge.tax_exempt,
                    taxes: charge.taxes.clone().or_else(|| plan.taxes.clone()),
                    breakdown: Vec::new(),
                    subscription: s.id.clone(),
                    plan: Some(plan.code.clone()),
                    metric: Some(charge.metric.code.clone()),
                    adjusts: None,
                });
            }
        }
    }
    Ok(period)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscription::Change;
    use rust_decimal_macros::dec;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn plan(
        code: &str,
        fee: Decimal,
        interval: Interval,
        charges: Vec<PricedCharge>,
    ) -> PricedPlan {
        PricedPlan {
            code: code.into(),
            name: None,
            terms: PlanTerms {
                fee,
                interval,
                pay_in_advance: true,
                anchor: BillingAnchor::Calendar,
            },
            fee_tax_exempt: false,
            taxes: None,
            charges,
        }
    }

    // The invoicer's entry point, on core types only: parsed plans, a Subscription history, usage
    // aggregates per charge and group, adjustments → one Invoice over two subscriptions.
    #[test]
    fn a_one_off_invoice_prices_each_add_on_once() {
        let eur = Currency::parse("EUR").unwrap();
        let item = |code: &str, units, price| OneOffItem {
            kind: LineKind::AddOn,
            tax_exempt: false,
            code: code.into(),
            description: code.into(),
            units,
            unit_amount: price,
            taxes: None,
        };
        let vat = [TaxRate {
            code: "vat".into(),
            rate: dec!(20),
            inclusive: false,
        }];
        let adj = Adjustments {
            coupons: &[],
            taxes: &vat,
            customer_tax_exempt: false,
            credit_notes: &[],
            prepaid_credits: Decimal::ZERO,
        };
        // 3 × 33.333 = 99.999 → 100.00; 1 × 0.005 = 0.01 (half up); VAT 20.00 + 0.00.
        let inv = one_off_invoice(
            eur,
            RoundingMode::HalfUp,
            &[
                item("setup", dec!(3), dec!(33.333)),
                item("tiny", dec!(1), dec!(0.005)),
            ],
            &adj,
        )
        .unwrap();
        assert_eq!(inv.subtotal, dec!(100.01));
        assert_eq!(inv.lines[0].kind, LineKind::AddOn);
        assert_eq!(inv.tax_total, dec!(20.00));
        assert_eq!(inv.total, dec!(120.01));
        assert!(one_off_invoice(
            eur,
            RoundingMode::HalfUp,
            &[item("x", dec!(0), dec!(1))],
            &adj
        )
        .is_err());
        assert!(one_off_invoice(eur, RoundingMode::HalfUp, &[], &adj).is_err());
    }

    #[test]
    fn domain_invoice_over_core_types() {
        let api = PricedCharge {
            code: "api".into(),
            name: None,
            metric: serde_json::from_value(
                serde_json::json!({"code": "call", "aggregation_type": "count_agg", "group_by": "region"}),
            )
            .unwrap(),
            model: ChargeModel::from_lago("standard", &serde_json::json!({"amount": "0.5"})).unwrap(),
            min_amount: None,
            tax_exempt: false,
            taxes: None,
        };
        let agg = |group: &str, units: Decimal| ChargeAggregate {
            charge: "api".into(),
            group: Some(group.into()),
            aggregate: Aggregate {
                units,
                events_count: 1,
                event_values: vec![],
            },
        };
        let a = BillableSubscription {
            id: Some("a".into()),
            plans: vec![
                plan("m", dec!(100), Interval::Monthly, vec![api]),
                plan("y", dec!(1000), Interval::Yearly, vec![]),
            ],
            subscription: Subscription {
                started_at: utc("2026-01-01T00:00:00Z"),
                trial_ends_at: None,
                plan: 0,
                changes: vec![Change {
                    at: utc("2026-01-15T00:00:00Z"),
                    kind: ChangeKind::Upgrade { plan: 1 },
                }],
            },
            convention: ProrationConvention::Days,
            events: vec![],
            aggregates: vec![agg("eu", dec!(10)), agg("us", dec!(4))],
        };
        let b = BillableSubscription {
            id: Some("b".into()),
            plans: vec![plan("s", dec!(31), Interval::Monthly, vec![])],
            subscription: Subscription {
                started_at: utc("2026-01-22T00:00:00Z"),
                trial_ends_at: None,
                plan: 0,
                changes: vec![],
            },
            ..a.clone()
        };
        let b = BillableSubscription {
            aggregates: vec![],
            ..b
        };
        let subs = [a, b];
        let out = invoice(&InvoiceInput {
            currency: Currency::parse("USD").unwrap(),
            rounding: RoundingMode::HalfUp,
            timezone: Tz::UTC,
            period_containing: utc("2026-01-10T00:00:00Z"),
            subscriptions: &subs,
            adjustments: Adjustments {
                coupons: &[],
                taxes: &[],
                customer_tax_exempt: false,
                credit_notes: &[],
                prepaid_credits: Decimal::ZERO,
            },
        })
        .unwrap();
        let lines: Vec<(Option<&str>, LineKind, Decimal)> = out
            .invoice
            .lines
            .iter()
            .map(|l| (l.subscription.as_deref(), l.kind, l.amount))
            .collect();
        // a: monthly 100 in advance, Jan 15..=31 credited (17/31 → 54.84); usage per group at 0.5.
        // b: Jan 22..=31, 10 of 31 days of 31 = 10.00.
        assert_eq!(
            lines,
            vec![
                (Some("a"), LineKind::Subscription, dec!(100.00)),
                (Some("a"), LineKind::SubscriptionCredit, dec!(-54.84)),
                (Some("a"), LineKind::Charge, dec!(5.00)),
                (Some("a"), LineKind::Charge, dec!(2.00)),
                (Some("b"), LineKind::Subscription, dec!(10.00)),
            ]
        );
        assert_eq!(out.invoice.total, dec!(62.16));
        assert_eq!(out.periods.len(), 2);
        // The phases of `a`: monthly until Jan 15, then yearly periods from Jan 15.
        let terms: Vec<PlanTerms> = subs[0].plans.iter().map(|p| p.terms).collect();
        let ph = phases(
            &subs[0].subscription,
            &terms,
            ProrationConvention::Days,
            Tz::UTC,
        )
        .unwrap();
        assert_eq!(ph.len(), 2);
        assert_eq!(ph[0].to, Some(utc("2026-01-15T00:00:00Z")));
        let p = ph[1]
            .schedule
            .period_containing(utc("2026-02-01T00:00:00Z"))
            .unwrap();
        assert_eq!(p.start, utc("2026-01-15T00:00:00Z"));
    }
    // A subscription's billing dates and the invoice of each: the advance fee on the day it starts, then at each
    // period end the usage and prorations of the closing period with the advance fee of the opening one.
    #[test]
    fn invoices_per_billing_date() {
        let api = || PricedCharge {
            code: "api".into(),
            name: None,
            metric: serde_json::from_value(
                serde_json::json!({"code": "call", "aggregation_type": "count_agg"}),
            )
            .unwrap(),
            model: ChargeModel::from_lago("standard", &serde_json::json!({"amount": "0.5"}))
                .unwrap(),
            min_amount: None,
            tax_exempt: false,
            taxes: None,
        };
        let agg = |units: Decimal| ChargeAggregate {
            charge: "api".into(),
            group: None,
            aggregate: Aggregate {
                units,
                events_count: 1,
                event_values: vec![],
            },
        };
        let sub = BillableSubscription {
            id: Some("s".into()),
            plans: vec![
                plan("m", dec!(100), Interval::Monthly, vec![api()]),
                plan("big", dec!(200), Interval::Monthly, vec![api()]),
            ],
            subscription: Subscription {
                started_at: utc("2026-01-15T00:00:00Z"),
                trial_ends_at: None,
                plan: 0,
                changes: vec![Change {
                    at: utc("2026-02-15T00:00:00Z"),
                    kind: ChangeKind::Upgrade { plan: 1 },
                }],
            },
            convention: ProrationConvention::Days,
            events: vec![],
            aggregates: vec![],
        };
        let dates = billing_dates(&sub, Tz::UTC, utc("2026-03-01T00:00:00Z")).unwrap();
        assert_eq!(
            dates,
            vec![
                utc("2026-01-15T00:00:00Z"),
                utc("2026-02-01T00:00:00Z"),
                utc("2026-03-01T00:00:00Z")
            ]
        );
        let at = |d: &str, units: Option<Decimal>| {
            let s = BillableSubscription {
                aggregates: units.map(agg).into_iter().collect(),
                ..sub.clone()
            };
            invoice_billing_date(&BillingDateInput {
                currency: Currency::parse("EUR").unwrap(),
                rounding: RoundingMode::HalfUp,
                timezone: Tz::UTC,
                billing_date: utc(d),
                subscriptions: &[s],
                extra_lines: &[],
                adjustments: Adjustments {
                    coupons: &[],
                    taxes: &[],
                    customer_tax_exempt: false,
                    credit_notes: &[],
                    prepaid_credits: Decimal::ZERO,
                },
            })
            .unwrap()
            .map(|o| {
                o.invoice
                    .lines
                    .iter()
                    .map(|l| (l.kind, l.amount))
                    .collect::<Vec<_>>()
            })
        };
        // Jan 15: 100 × 17/31 (Jan 15..=31) = 54.838… → 54.84; nothing closes yet.
        assert_eq!(
            at("2026-01-15T00:00:00Z", None),
            Some(vec![(LineKind::Subscription, dec!(54.84))])
        );
        // Feb 1: January's usage, 10 × 0.5 = 5.00 (its fee was billed on Jan 15), and February's 100 in advance.
        assert_eq!(
            at("2026-02-01T00:00:00Z", Some(dec!(10))),
            Some(vec![
                (LineKind::Charge, dec!(5.00)),
                (LineKind::Subscription, dec!(100.00))
            ])
        );
        // Mar 1: February's prorations of the Feb 15 upgrade (credit 100 × 14/28 = 50, big 200 × 14/28 = 100),
        // February's usage 4 × 0.5 = 2.00 (on the plan in force at the end), and March's 200 in advance.
        assert_eq!(
            at("2026-03-01T00:00:00Z", Some(dec!(4))),
            Some(vec![
                (LineKind::SubscriptionCredit, dec!(-50.00)),
                (LineKind::Subscription, dec!(100.00)),
                (LineKind::Charge, dec!(2.00)),
                (LineKind::Subscription, dec!(200.00))
            ])
        );
        // Not a billing date of this subscription.
        assert_eq!(at("2026-02-10T00:00:00Z", None), None);
    }
}
