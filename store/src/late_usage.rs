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

/// The adjustment lines of the positive corrections among `deltas`, with their records.
pub fn adjustments<Tz: chrono::TimeZone>(
    deltas: &[LateDelta],
    currency: Currency,
    tz: Tz,
) -> (Vec<DraftLine>, Vec<LateUsageView>) {
    deltas
        .iter()
        .filter(|d| d.delta > Decimal::ZERO)
        .map(|d| (adjustment_line(d, currency, tz.clone()), billed(d)))
        .unzip()
}

/// The customer's last finalized billing date before `before` and its usage offset, from its invoices (what the
/// invoicer keeps in memory, for a reader that has only the invoices).
pub fn last_billed(
    invoices: &[InvoiceView],
    before: DateTime<Utc>,
) -> Option<(DateTime<Utc>, Option<i64>)> {
    invoices
        .iter()
        .filter(|i| {
            i.status == InvoiceStatus::Finalized
                && !i.one_off
                && i.number.is_some()
                && i.billing_date < before
        })
        .max_by_key(|i| i.billing_date)
        .map(|i| (i.billing_date, i.usage_offset))
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

#[cfg(test)]
mod tests {
    use super::*;
    use billing_core::aggregation::{Latest, RunningAggregate};
    use billing_schemas::catalog::{
        Aggregation, CatalogEvent, Charge, ChargeModel, Interval, Plan,
    };
    use billing_schemas::lifecycle::{CustomerCreated, LifecycleEvent};
    use rust_decimal_macros::dec;

    use crate::invoices::{customer_invoice, InvoiceStatus};
    use crate::usage_aggregates::AggState;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    /// Plan `metered`: 10.00 EUR a month in advance, `calls` at 0.50 and `seats` (latest reading) at 2.00 in
    /// arrears; customer `c1` on it from January 1.
    fn reference() -> Reference {
        let mut r = Reference::default();
        let t0 = at("2026-01-01T00:00:00Z");
        for (code, aggregation, field) in [
            ("calls", Aggregation::Count, None),
            ("seats", Aggregation::Latest, Some("seats")),
        ] {
            r.apply_catalog(CatalogEvent::metric(
                "t",
                t0,
                code,
                aggregation,
                field,
                vec![],
            ))
            .unwrap();
        }
        r.apply_catalog(CatalogEvent::plan(
            "t",
            t0,
            Plan {
                version: 1,
                effective_from: None,
                tax_codes: vec![],
                code: "metered".into(),
                name: "Metered".into(),
                interval: Interval::Monthly,
                currency: "EUR".into(),
                amount: "10.00".into(),
                pay_in_advance: true,
                trial_period_days: 0,
                charges: vec![
                    Charge::on_metric(
                        "calls",
                        "calls",
                        ChargeModel::Standard,
                        r#"{"amount":"0.50"}"#,
                    ),
                    Charge::on_metric(
                        "seats",
                        "seats",
                        ChargeModel::Standard,
                        r#"{"amount":"2.00"}"#,
                    ),
                ],
            },
        ))
        .unwrap();
        for ev in LifecycleEvent::customer_subscribed(
            "t",
            CustomerCreated::new("c1", "C", "EUR", "UTC"),
            "s1",
            "metered",
            t0,
        ) {
            r.apply_lifecycle(ev).unwrap();
        }
        r
    }

    /// January's usage: `calls` calls and a latest seat count of `seats`, last changed at `offset`.
    fn usage(calls: u64, seats: Decimal, offset: i64) -> CustomerUsage {
        let mut u = CustomerUsage::default();
        let key = |charge: &str| AggKey {
            subscription_id: "s1".into(),
            charge_id: charge.into(),
            period_start: at("2026-01-01T00:00:00Z"),
            group_key: String::new(),
        };
        let state = |aggregation: &str, running: RunningAggregate| AggState {
            period_end: at("2026-02-01T00:00:00Z"),
            metric_code: String::new(),
            aggregation: aggregation.into(),
            charge_model: "standard".into(),
            charge_properties: "{}".into(),
            currency: "EUR".into(),
            running,
            last_partition: 0,
            last_offset: offset,
        };
        u.aggregates.insert(
            key("calls"),
            state(
                "count_agg",
                RunningAggregate {
                    events_count: calls,
                    ..Default::default()
                },
            ),
        );
        u.aggregates.insert(
            key("seats"),
            state(
                "latest_agg",
                RunningAggregate {
                    events_count: 1,
                    latest: Some(Latest {
                        timestamp: at("2026-01-20T00:00:00Z"),
                        event_id: "s".into(),
                        value: seats,
                    }),
                    ..Default::default()
                },
            ),
        );
        u
    }

    fn subs(r: &Reference) -> Vec<BillableSubscription> {
        r.billable_subscriptions("t", "c1").0
    }

    /// The finalized invoice of `date`, numbered `number`.
    fn issued(
        r: &Reference,
        u: &CustomerUsage,
        date: &str,
        number: &str,
        extra: &[DraftLine],
    ) -> InvoiceView {
        let d = at(date);
        let outcome = r
            .invoice_on(
                "t",
                "c1",
                &subs(r),
                d,
                &PriorUse::default(),
                extra,
                |s, p| u.for_subscription(s, p),
            )
            .unwrap()
            .unwrap();
        let mut inv =
            customer_invoice(r, "t", "c1", d, InvoiceStatus::Finalized, Some(d), &outcome).unwrap();
        inv.number = Some(number.into());
        inv
    }

    fn amounts(inv: &InvoiceView) -> Vec<(&str, &str, Decimal)> {
        inv.lines
            .iter()
            .map(|l| (l.kind.as_str(), l.code.as_str(), l.amount))
            .collect()
    }

    /// The worked example of `docs/pricing.md`, "Late usage".
    #[test]
    fn docs_pricing_late_usage_example() {
        let r = reference();
        let eur = Currency::parse("EUR").unwrap();
        // Billed on Feb 1: 10 calls (5.00) and 5 seats (10.00), with February's fee; the run waited for offset 100.
        let invoiced = usage(10, dec!(5), 99);
        let mut feb = issued(&r, &invoiced, "2026-02-01T00:00:00Z", "T-2", &[]);
        feb.usage_offset = Some(100);
        assert_eq!(
            amounts(&feb),
            vec![
                ("usage", "calls", dec!(5.00)),
                ("usage", "seats", dec!(10.00)),
                ("subscription_fee", "metered", dec!(10.00)),
            ]
        );
        // Then 4 more January calls and a corrected seat count of 3 arrive.
        let now = usage(14, dec!(3), 120);
        let changed = changed_since(&now, feb.billing_date, feb.usage_offset);
        assert_eq!(changed.len(), 2);
        assert!(changed_since(&invoiced, feb.billing_date, feb.usage_offset).is_empty());
        let invoices = vec![feb.clone()];
        let mar = at("2026-03-01T00:00:00Z");
        let found = deltas(&r, "t", "c1", &subs(&r), &now, &changed, &invoices, mar).unwrap();
        let summary: Vec<(&str, Decimal)> =
            found.iter().map(|d| (d.charge.as_str(), d.delta)).collect();
        assert_eq!(summary, vec![("calls", dec!(2.00)), ("seats", dec!(-4.00))]);
        let line = adjustment_line(&found[0], eur, Utc);
        assert_eq!(
            line.description,
            "Usage adjustment for calls, 2026-01-01 to 2026-01-31 (invoice T-2)"
        );
        assert_eq!(line.adjusts.as_deref(), Some(feb.invoice_id.as_str()));
        // The seats are credited on the period's own line: 4.00 before tax.
        let (credit, stands_for) = credit_lines(&found[1], &invoices, |_, _| Decimal::ZERO, eur);
        assert_eq!(credit, vec![(feb.invoice_id.clone(), 1, dec!(4.00))]);
        assert_eq!(stands_for, dec!(4.00));
        // The March invoice carries the adjustment and records both corrections: asked again, nothing is due.
        let mut march = issued(&r, &now, "2026-03-01T00:00:00Z", "T-3", &[line]);
        assert!(march
            .lines
            .iter()
            .any(|l| l.kind == ADJUSTMENT && l.amount == dec!(2.00)));
        march.late_usage = vec![
            billed(&found[0]),
            LateUsageView {
                amount: -stands_for,
                credit_notes: vec!["cn".into()],
                ..billed(&found[1])
            },
        ];
        let invoices = vec![feb.clone(), march.clone()];
        let apr = at("2026-04-01T00:00:00Z");
        assert!(
            deltas(&r, "t", "c1", &subs(&r), &now, &changed, &invoices, apr)
                .unwrap()
                .is_empty()
        );
        // Two more calls: +1.00, against 5.00 invoiced and 2.00 adjusted.
        let later = usage(16, dec!(3), 130);
        let found = deltas(&r, "t", "c1", &subs(&r), &later, &changed, &invoices, apr).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].charge.as_str(), found[0].delta),
            ("calls", dec!(1.00))
        );
        // Voided, the March invoice's adjustment no longer counts (it is billed again); its credit note stands.
        march.status = InvoiceStatus::Void;
        let invoices = vec![feb, march];
        let found = deltas(&r, "t", "c1", &subs(&r), &later, &changed, &invoices, apr).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].charge.as_str(), found[0].delta),
            ("calls", dec!(3.00))
        );
    }

    /// A line with an inclusive tax is credited before tax; what is left creditable caps the credit.
    #[test]
    fn credits_of_inclusive_lines_are_before_tax_and_capped() {
        let eur = Currency::parse("EUR").unwrap();
        let r = reference();
        let mut x = issued(
            &r,
            &usage(24, dec!(0), 1),
            "2026-02-01T00:00:00Z",
            "T-2",
            &[],
        );
        // The calls line as an inclusive 20 % tax leaves it: 12.00 = 10.00 + 2.00.
        let calls = &mut x.lines[0];
        calls.taxable_amount = dec!(10.00);
        calls.tax = dec!(2.00);
        calls.taxes = vec![billing_core::tax::LineTax {
            code: "vat".into(),
            rate: dec!(20),
            inclusive: true,
            amount: dec!(2.00),
        }];
        let delta = |amount: Decimal| LateDelta {
            invoice_id: x.invoice_id.clone(),
            invoice_number: "T-2".into(),
            subscription_id: "s1".into(),
            charge: "calls".into(),
            charge_name: "calls".into(),
            plan: "metered".into(),
            metric: "calls".into(),
            from: at("2026-01-01T00:00:00Z"),
            to: at("2026-02-01T00:00:00Z"),
            period_start: at("2026-01-01T00:00:00Z"),
            delta: amount,
            taxes: vec![],
        };
        let invoices = vec![x.clone()];
        let (credit, stands_for) =
            credit_lines(&delta(dec!(-6.00)), &invoices, |_, _| Decimal::ZERO, eur);
        assert_eq!(credit, vec![(x.invoice_id.clone(), 0, dec!(5.00))]);
        assert_eq!(stands_for, dec!(6.00));
        // 8.00 already credited: 2.00 before tax is all that is left, standing for 2.40 of the line.
        let (credit, stands_for) =
            credit_lines(&delta(dec!(-6.00)), &invoices, |_, _| dec!(8.00), eur);
        assert_eq!(credit, vec![(x.invoice_id.clone(), 0, dec!(2.00))]);
        assert_eq!(stands_for, dec!(2.40));
        // Nothing left: nothing credited.
        let (credit, stands_for) =
            credit_lines(&delta(dec!(-6.00)), &invoices, |_, _| dec!(10.00), eur);
        assert!(credit.is_empty() && stands_for.is_zero());
    }
}
