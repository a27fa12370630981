//! Late usage: usage that reaches a period after the period's invoice was finalized is never dropped. At the
//! customer's next bill run each changed period is priced again with the usage as it is now, and the difference
//! from what was invoiced for it becomes an **adjustment line** on the new invoice (positive) or a **credit note** on
//! the period's invoice (negative). The rules are in `docs/pricing.md`, "Late usage".
//!
//! What was invoiced for a (subscription, charge, period) is read from the invoices themselves: the period's usage
//! and true-up lines, plus every correction recorded since on a later invoice ([`LateUsageView`]: an adjustment
//! line's amount, or the amount a credit note took back). Recording the corrections on the invoices that carry them,
//! as coupons' and wallets' use is recorded, makes the computation repeatable: after a crash it gives the same
//! lines, and a correction once finalized is never made twice.
//!
//! Which customers to look at is decided without reading their invoices: every invoice keeps the usage partition's
//! end offset the bill run waited for (`usage_offset`, in `invoices_by_date` too); an aggregate of an invoiced
//! period whose last offset is at or beyond the offset of the customer's last finalized invoice changed after it
//! ([`changed_since`]).

use std::collections::BTreeMap;

use billing_core::invoice::{DraftLine, LineKind};
use billing_core::invoicing::{closing_period, BillableSubscription};
use billing_core::money::{round_to_minor, Money, RoundingMode};
use billing_core::tax::TaxRate;
use billing_core::Currency;
use billing_schemas::reference::{PriorUse, Reference};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::invoices::{InvoiceLineView, InvoiceStatus, InvoiceView};
use crate::usage::CustomerUsage;
use crate::usage_aggregates::AggKey;

/// The line kind of a usage adjustment.
pub const ADJUSTMENT: &str = "adjustment";

/// A late-usage correction, recorded on the invoice that carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LateUsageView {
    /// The invoice of the corrected period.
    pub invoice_id: String,
    /// The subscription.
    pub subscription_id: String,
    /// The charge.
    pub charge: String,
    /// First instant of the corrected period.
    pub period_start: DateTime<Utc>,
    /// What was added (an adjustment line on this invoice) or, negative, taken back by credit notes, in line
    /// amounts (inclusive taxes included, as the lines show them).
    pub amount: Decimal,
    /// The credit notes that took it back.
    #[serde(default)]
    pub credit_notes: Vec<String>,
}

/// The aggregates of periods that started before `last_billed` (the customer's last finalized billing date) and
/// changed at or after `billed_offset` (that invoice's usage offset; `None`: unknown, every such aggregate).
pub fn changed_since(
    usage: &CustomerUsage,
    last_billed: DateTime<Utc>,
    billed_offset: Option<i64>,
) -> Vec<AggKey> {
    let mut keys: Vec<AggKey> = usage
        .aggregates
        .iter()
        .filter(|(k, st)| {
            k.period_start < last_billed && billed_offset.is_none_or(|o| st.last_offset >= o)
        })
        .map(|(k, _)| k.clone())
        .collect();
    keys.sort();
    keys
}

/// One (subscription, charge, period) whose usage is priced differently now than it was invoiced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LateDelta {
    /// The period's invoice.
    pub invoice_id: String,
    /// Its number.
    pub invoice_number: String,
    /// Subscription.
    pub subscription_id: String,
    /// Charge code.
    pub charge: String,
    /// Charge name (its code when it has none).
    pub charge_name: String,
    /// Plan code, for coupons limited to plans.
    pub plan: String,
    /// Metric code, for coupons limited to metrics.
    pub metric: String,
    /// The period's usage window.
    pub from: DateTime<Utc>,
    /// Its end (exclusive).
    pub to: DateTime<Utc>,
    /// First instant of the period (the aggregates' key).
    pub period_start: DateTime<Utc>,
    /// Priced now − invoiced, in line amounts.
    pub delta: Decimal,
    /// The taxes the charge's lines have now.
    pub taxes: Vec<TaxRate>,
}

fn usage_kind(kind: &str) -> bool {
    matches!(kind, "usage" | "true_up")
}

/// The (subscription, charge, period) corrections due before `before` (the billing date of the invoice that
/// carries them): for every finalized invoice of the customer that billed a changed period, the period priced again
/// with today's usage, less its usage and true-up lines and the corrections recorded on the invoices since.
/// Void invoices are not corrected (what they billed was cancelled), and a void invoice's adjustment lines do not
/// count as invoiced; credit notes a late correction issued stand even if that invoice is voided later.
#[allow(clippy::too_many_arguments)]
pub fn deltas(
    reference: &Reference,
    tenant: &str,
    customer: &str,
    subs: &[BillableSubscription],
    usage: &CustomerUsage,
    changed: &[AggKey],
    invoices: &[InvoiceView],
    before: DateTime<Utc>,
) -> Result<Vec<LateDelta>, String> {
    if changed.is_empty() {
        return Ok(Vec::new());
    }
    let c = reference
        .customer(tenant, customer)
        .ok_or_else(|| format!("unknown customer {customer:?}"))?;
    let tz = c.tz();
    let mut issued: Vec<&InvoiceView> = invoices
        .iter()
        .filter(|i| {
            i.customer_id == customer
                && !i.one_off
                && i.billing_date < before
                && i.status != InvoiceStatus::Draft
                && i.number.is_some()
        })
        .collect();
    issued.sort_by_key(|i| i.billing_date);
    let mut out = Vec::new();
    for x in issued
        .iter()
        .filter(|i| i.status == InvoiceStatus::Finalized)
    {
        // The changed keys whose period closes on this invoice's billing date.
        let mut here: Vec<(&BillableSubscription, &str, DateTime<Utc>)> = Vec::new();
        for s in subs {
            let Some(id) = s.id.as_deref() else { continue };
            let Some(period) = closing_period(s, tz, x.billing_date).map_err(|e| e.to_string())?
            else {
                continue;
            };
            for k in changed
                .iter()
                .filter(|k| k.subscription_id == id && k.period_start == period.start)
            {
                if !here
                    .iter()
                    .any(|(h, code, _)| h.id == s.id && *code == k.charge_id)
                {
                    here.push((s, k.charge_id.as_str(), period.start));
                }
            }
        }
        if here.is_empty() {
            continue;
        }
        let outcome = reference.invoice_on(
            tenant,
            customer,
            subs,
            x.billing_date,
            &PriorUse::default(),
            &[],
            |s, p| usage.for_subscription(s, p),
        )?;
        let now_lines = outcome.map(|o| o.invoice.lines).unwrap_or_default();
        for (s, code, period_start) in here {
            let sub = s.id.as_deref().unwrap_or_default();
            let now: Vec<_> = now_lines
                .iter()
                .filter(|l| {
                    matches!(l.kind, LineKind::Charge | LineKind::TrueUp)
                        && l.subscription.as_deref() == Some(sub)
                        && l.code == code
                })
                .collect();
            let billed: Vec<&InvoiceLineView> = x
                .lines
                .iter()
                .filter(|l| {
                    usage_kind(&l.kind)
                        && l.subscription_id.as_deref() == Some(sub)
                        && l.code == code
                })
                .collect();
            let corrected: Decimal = issued
                .iter()
                .filter(|i| i.billing_date > x.billing_date)
                .flat_map(|i| i.late_usage.iter().map(move |u| (i.status, u)))
                .filter(|(status, u)| {
                    u.invoice_id == x.invoice_id
                        && u.subscription_id == sub
                        && u.charge == code
                        // An adjustment on a void invoice was cancelled; a credit note stands.
                        && (*status == InvoiceStatus::Finalized || u.amount < Decimal::ZERO)
                })
                .map(|(_, u)| u.amount)
                .sum();
            let invoiced: Decimal = billed.iter().map(|l| l.amount).sum::<Decimal>() + corrected;
            let priced: Decimal = now.iter().map(|l| l.amount).sum();
            let delta = priced - invoiced;
            if delta.is_zero() {
                continue;
            }
            let charge = s.plans.iter().find_map(|p| {
                p.charges
                    .iter()
                    .find(|ch| ch.code == code)
                    .map(|ch| (p, ch))
            });
            let (plan, charge_name, metric) = match charge {
                Some((p, ch)) => (
                    p.code.clone(),
                    ch.name.clone().unwrap_or_else(|| ch.code.clone()),
                    ch.metric.code.clone(),
                ),
                None => (String::new(), code.to_owned(), String::new()),
            };
            let from = now
                .iter()
                .filter_map(|l| l.from)
                .chain(billed.iter().filter_map(|l| l.period_start))
                .min()
                .unwrap_or(period_start);
            let to = now
                .iter()
                .filter_map(|l| l.to)
                .chain(billed.iter().filter_map(|l| l.period_end))
                .max()
                .unwrap_or(x.billing_date);
            let taxes = now
                .first()
                .map(|l| &l.taxes)
                .or(billed.first().map(|l| &l.taxes))
                .map(|t| {
                    t.iter()
                        .map(|t| TaxRate {
                            code: t.code.clone(),
                            rate: t.rate,
                            inclusive: t.inclusive,
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(LateDelta {
                invoice_id: x.invoice_id.clone(),
                invoice_number: x.number.clone().unwrap_or_default(),
                subscription_id: sub.to_owned(),
                charge: code.to_owned(),
                charge_name,
                plan,
                metric,
                from,
                to,
                period_start,
                delta,
                taxes,
            });
        }
    }
    Ok(out)
}

/// The adjustment line of a positive correction: its amount is the difference, taxed with the charge's taxes as
/// they are now.
pub fn adjustment_line<Tz: chrono::TimeZone>(
    d: &LateDelta,
    currency: Currency,
    tz: Tz,
) -> DraftLine {
    let day = |t: DateTime<Utc>| t.with_timezone(&tz).date_naive();
    DraftLine {
        kind: LineKind::Adjustment,
        code: d.charge.clone(),
        description: format!(
            "Usage adjustment for {}, {} to {} (invoice {})",
            d.charge_name,
            day(d.from),
            day(d.to - chrono::Duration::seconds(1)),
            d.invoice_number
        ),
        amount: Money::new(d.delta, currency),
        from: Some(d.from),
        to: Some(d.to),
        units: None,
        proration_factor: None,
        tax_exempt: false,
        taxes: Some(d.taxes.clone()),
        breakdown: Vec::new(),
        subscription: Some(d.subscription_id.clone()),
        plan: (!d.plan.is_empty()).then(|| d.plan.clone()),
        metric: (!d.metric.is_empty()).then(|| d.metric.clone()),
        adjusts: Some(d.invoice_id.clone()),
    }
}

/// The record of a positive correction billed by an adjustment line.
pub fn billed(d: &LateDelta) -> LateUsageView {
    LateUsageView {
        invoice_id: d.invoice_id.clone(),
        subscription_id: d.subscription_id.clone(),
        charge: d.charge.clone(),
        period_start: d.period_start,
        amount: d.delta,
        credit_notes: Vec::new(),
    }
}

/// The lines a negative correction credits, per invoice: (invoice id, line index, amount before tax), and the line
/// amount they stand for (≤ −delta: a line is credited at most what remains creditable on it). The period's own
/// usage and true-up lines first, then the adjustment lines of finalized invoices that billed its earlier
/// corrections. `credited(invoice, line)` is what credit notes already took back from a line, before tax.
pub fn credit_lines(
    d: &LateDelta,
    invoices: &[InvoiceView],
    credited: impl Fn(&str, usize) -> Decimal,
    currency: Currency,
) -> (Vec<(String, usize, Decimal)>, Decimal) {
    let mut left = -d.delta;
    let mut out = Vec::new();
    let mut taken = Decimal::ZERO;
    let mut targets: Vec<&InvoiceView> = invoices
        .iter()
        .filter(|i| i.status == InvoiceStatus::Finalized && i.number.is_some())
        .collect();
    targets.sort_by_key(|i| (i.invoice_id != d.invoice_id, i.billing_date));
    for inv in targets {
        for (idx, l) in inv.lines.iter().enumerate() {
            if left <= Decimal::ZERO {
                break;
            }
            let ours = l.subscription_id.as_deref() == Some(d.subscription_id.as_str())
                && l.code == d.charge
                && if inv.invoice_id == d.invoice_id {
                    usage_kind(&l.kind)
                } else {
                    l.kind == ADJUSTMENT && l.adjusts.as_deref() == Some(d.invoice_id.as_str())
                };
            if !ours || l.amount <= Decimal::ZERO {
                continue;
            }
            // Line amounts include inclusive taxes; a credit note's amount is before tax.
            let before_tax = if l.taxes.iter().any(|t| t.inclusive) {
                l.taxable_amount + l.discount
            } else {
                l.amount
            };
            let creditable =
                (before_tax - l.discount - credited(&inv.invoice_id, idx)).max(Decimal::ZERO);
            if creditable.is_zero() {
                continue;
            }
            let gross = left.min(l.amount);
            let want = round_to_minor(
                gross * before_tax / l.amount,
                currency,
                RoundingMode::HalfUp,
            );
            let amount = want.min(creditable);
            if amount <= Decimal::ZERO {
                continue;
            }
            // What the credit stands for in line amounts: exactly the share asked for, unless capped.
            let stands_for = if amount == want {
                gross
            } else if amount == before_tax {
                l.amount
            } else {
                round_to_minor(
                    amount * l.amount / before_tax,
                    currency,
                    RoundingMode::HalfUp,
                )
            };
            left -= stands_for;
            taken += stands_for;
            out.push((inv.invoice_id.clone(), idx, amount));
        }
    }
    (out, taken)
}

/// The id of the credit note a late correction issues on `invoice_id` from the invoice of `billing_date`: the same
/// after a crash, so it is issued once.
pub fn credit_note_id(invoice_id: &str, billing_date: DateTime<Utc>) -> String {
    format!("{invoice_id}-late-{}", billing_date.format("%Y%m%d%H%M%S"))
}

/// Group credited lines per invoice, in first-seen order.
pub fn per_invoice(lines: &[(String, usize, Decimal)]) -> BTreeMap<String, Vec<(usize, Decimal)>> {
    let mut out: BTreeMap<String, Vec<(usize, Decimal)>> = BTreeMap::new();
    for (id, idx, amount) in lines {
        let v = out.entry(id.clone()).or_default();
        match v.iter_mut().find(|(i, _)| i == idx) {
            Some((_, a)) => *a += *amount,
            None => v.push((*idx, *amount)),
        }
    }
    out
}
