//! Invoice assembly: fees → coupons → tax per line → credit notes and prepaid credits.
//!
//! Each line's precise amount is rounded once; the coupon discount is rounded once per coupon and
//! spread in whole minor units; each tax is rounded once per line. Every total is a sum of rounded
//! line values, so the invoice always reconciles.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::charge::BreakdownLine;
use crate::currency::Currency;
use crate::discount::{allocate, Coupon};
use crate::error::{Error, Result};
use crate::money::{non_negative, round_to_minor, Money, RoundingMode};
use crate::tax::{taxes_for_line, LineTax, TaxRate};

/// What an invoice line bills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    /// A subscription fee (possibly prorated).
    Subscription,
    /// A credit of the unused part of a subscription fee paid in advance.
    SubscriptionCredit,
    /// A usage charge.
    Charge,
    /// The true-up that lifts a charge to its minimum commitment.
    TrueUp,
    /// An add-on, invoiced at once outside any period.
    AddOn,
    /// Prepaid credits bought for a wallet (not taxed: the invoices they pay are).
    PrepaidCredits,
    /// Usage of a period already invoiced, billed on a later invoice: what the period's usage is priced at now
    /// less what was invoiced for it (see `docs/pricing.md`, "Late usage").
    Adjustment,
}

/// A line before assembly, with its precise amount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DraftLine {
    /// What it bills.
    pub kind: LineKind,
    /// Plan or charge code.
    pub code: String,
    /// Human-readable description.
    pub description: String,
    /// Precise amount.
    pub amount: Money,
    /// Service start.
    pub from: Option<DateTime<Utc>>,
    /// Service end (exclusive).
    pub to: Option<DateTime<Utc>>,
    /// Units billed, for usage lines.
    pub units: Option<Decimal>,
    /// Proration factor, for subscription lines.
    pub proration_factor: Option<Decimal>,
    /// No tax on this line.
    pub tax_exempt: bool,
    /// The line's own tax rates (set at its charge or plan); `None`: the invoice's ([`Adjustments::taxes`]).
    pub taxes: Option<Vec<TaxRate>>,
    /// Per-tier rows of a usage charge.
    pub breakdown: Vec<BreakdownLine>,
    /// Id of the subscription the line bills, on an invoice over several subscriptions.
    pub subscription: Option<String>,
    /// Code of the plan the line bills (for coupons limited to plans).
    pub plan: Option<String>,
    /// Billable metric of a usage line (for coupons limited to metrics).
    pub metric: Option<String>,
    /// The invoice an adjustment line corrects.
    pub adjusts: Option<String>,
}

/// A prepaid balance applied after tax.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreditNote {
    /// Credit note number or id.
    pub code: String,
    /// Balance still available.
    pub amount: Decimal,
}

/// Everything assembly needs besides the lines.
#[derive(Debug, Clone, Copy)]
pub struct Adjustments<'a> {
    /// Coupons, applied in this order.
    pub coupons: &'a [Coupon],
    /// Tax rates of every non-exempt line that has none of its own.
    pub taxes: &'a [TaxRate],
    /// The customer is tax exempt.
    pub customer_tax_exempt: bool,
    /// Credit notes, applied in this order after tax.
    pub credit_notes: &'a [CreditNote],
    /// Prepaid credits (wallet balance), applied after credit notes.
    pub prepaid_credits: Decimal,
}

/// One line of the final invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceLine {
    /// Id of the subscription the line bills, on an invoice over several subscriptions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<String>,
    /// What it bills.
    pub kind: LineKind,
    /// Plan or charge code.
    pub code: String,
    /// Description.
    pub description: String,
    /// Service start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<DateTime<Utc>>,
    /// Service end (exclusive).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<DateTime<Utc>>,
    /// Units billed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub units: Option<Decimal>,
    /// Proration factor of a subscription line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proration_factor: Option<Decimal>,
    /// Precise amount before rounding.
    pub precise_amount: Decimal,
    /// Amount rounded once to the minor unit.
    pub amount: Decimal,
    /// This line's share of the coupons.
    pub discount: Decimal,
    /// Amount after discount, without inclusive taxes: the tax base.
    pub taxable_amount: Decimal,
    /// Taxes of the line.
    pub taxes: Vec<LineTax>,
    /// Sum of the line's taxes.
    pub tax_amount: Decimal,
    /// taxable_amount + tax_amount.
    pub total: Decimal,
    /// Per-tier rows of a usage charge.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub breakdown: Vec<BreakdownLine>,
    /// The invoice an adjustment line corrects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adjusts: Option<String>,
    /// Code of the plan the line bills (kept for the invoice's stored lines; not in the pricing API's output).
    #[serde(skip)]
    pub plan: Option<String>,
    /// Billable metric of a usage line (likewise).
    #[serde(skip)]
    pub metric: Option<String>,
}

/// A coupon and what it took off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedCoupon {
    /// Coupon code.
    pub code: String,
    /// Id of the coupon's application, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Rounded discount.
    pub amount: Decimal,
}

/// A credit note or prepaid credit and what it paid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedCredit {
    /// Credit note code, or `prepaid_credits`.
    pub code: String,
    /// Amount applied.
    pub amount: Decimal,
}

/// An assembled invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoice {
    /// Currency of every amount.
    pub currency: Currency,
    /// Lines.
    pub lines: Vec<InvoiceLine>,
    /// Coupons applied.
    pub coupons: Vec<AppliedCoupon>,
    /// Credit notes and prepaid credits applied.
    pub credits: Vec<AppliedCredit>,
    /// Σ line amounts.
    pub subtotal: Decimal,
    /// Σ line discounts.
    pub discount_total: Decimal,
    /// Σ taxable amounts.
    pub taxable_total: Decimal,
    /// Σ line taxes.
    pub tax_total: Decimal,
    /// Σ line totals.
    pub total: Decimal,
    /// Σ credits applied.
    pub credits_total: Decimal,
    /// total − credits_total, never below zero.
    pub amount_due: Decimal,
}

/// Assembles the invoice; lines in another currency are an error.
pub fn assemble(
    currency: Currency,
    mode: RoundingMode,
    drafts: Vec<DraftLine>,
    adj: &Adjustments<'_>,
) -> Result<Invoice> {
    let round = |d: Decimal| round_to_minor(d, currency, mode);
    let mut amounts = Vec::with_capacity(drafts.len());
    for d in &drafts {
        if d.amount.currency() != currency {
            return Err(Error::CurrencyMismatch {
                expected: currency.code().to_string(),
                found: d.amount.currency().code().to_string(),
            });
        }
        amounts.push(round(d.amount.amount()));
    }

    // Coupons: each takes off at most what is left of the positive lines and of the net subtotal.
    let mut discounts = vec![Decimal::ZERO; drafts.len()];
    let mut coupons = Vec::new();
    let net: Decimal = amounts.iter().sum();
    let mut cap = net.max(Decimal::ZERO);
    for c in adj.coupons {
        let remaining: Vec<Decimal> = amounts
            .iter()
            .zip(&discounts)
            .zip(&drafts)
            .map(|((a, d), line)| {
                let covered = c.applies_to.as_ref().is_none_or(|s| {
                    s.covers(
                        line.plan.as_deref(),
                        line.metric.as_deref(),
                        line.subscription.as_deref(),
                    )
                });
                if covered {
                    (*a - *d).max(Decimal::ZERO)
                } else {
                    Decimal::ZERO
                }
            })
            .collect();
        let base = remaining.iter().sum::<Decimal>().min(cap);
        let off = c.discount(base, currency, mode)?;
        if off.is_zero() {
            continue;
        }
        for (d, part) in discounts
            .iter_mut()
            .zip(allocate(off, &remaining, currency)?)
        {
            *d += part;
        }
        cap -= off;
        coupons.push(AppliedCoupon {
            code: c.code.clone(),
            id: c.id.clone(),
            amount: off,
        });
    }

    let mut lines = Vec::with_capacity(drafts.len());
    for ((d, amount), discount) in drafts.into_iter().zip(amounts).zip(discounts) {
        let exempt = d.tax_exempt || adj.customer_tax_exempt;
        let rates = d.taxes.as_deref().unwrap_or(adj.taxes);
        let (taxable, taxes) = taxes_for_line(amount - discount, rates, exempt, currency, mode)?;
        let tax_amount: Decimal = taxes.iter().map(|t| t.amount).sum();
        // Show every rounded amount at the currency's scale ("0.00", not "0").
        let minor = |mut d: Decimal| {
            d.rescale(currency.minor_units());
            d
        };
        let (discount, taxable, tax_amount) = (minor(discount), minor(taxable), minor(tax_amount));
        lines.push(InvoiceLine {
            subscription: d.subscription,
            kind: d.kind,
            code: d.code,
            description: d.description,
            from: d.from,
            to: d.to,
            units: d.units,
            proration_factor: d.proration_factor,
            precise_amount: d.amount.amount(),
            amount,
            discount,
            taxable_amount: taxable,
            taxes,
            tax_amount,
            total: taxable + tax_amount,
            breakdown: d.breakdown,
            adjusts: d.adjusts,
            plan: d.plan,
            metric: d.metric,
        });
    }

    let sum = |f: fn(&InvoiceLine) -> Decimal| -> Decimal {
        let mut s: Decimal = lines.iter().map(f).sum();
        s.rescale(currency.minor_units());
        s
    };
    let subtotal = sum(|l| l.amount);
    let discount_total = sum(|l| l.discount);
    let taxable_total = sum(|l| l.taxable_amount);
    let tax_total = sum(|l| l.tax_amount);
    let total = sum(|l| l.total);

    // Credit notes first, then prepaid credits, each only up to what is still due.
    let mut due = total.max(Decimal::ZERO);
    let mut credits = Vec::new();
    let sources = adj
        .credit_notes
        .iter()
        .map(|c| (c.code.as_str(), c.amount))
        .chain(std::iter::once(("prepaid_credits", adj.prepaid_credits)));
    for (code, available) in sources {
        let available = round(non_negative("credit", available)?);
        let used = available.min(due);
        if used > Decimal::ZERO {
            due -= used;
            credits.push(AppliedCredit {
                code: code.to_string(),
                amount: used,
            });
        }
    }
    let mut credits_total: Decimal = credits.iter().map(|c| c.amount).sum();
    credits_total.rescale(currency.minor_units());
    let mut amount_due = due;
    amount_due.rescale(currency.minor_units());
    Ok(Invoice {
        currency,
        lines,
        coupons,
        credits,
        subtotal,
        discount_total,
        taxable_total,
        tax_total,
        total,
        credits_total,
        amount_due,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discount::{CouponType, Frequency};
    use proptest::prelude::*;
    use rust_decimal_macros::dec;

    fn cur(c: &str) -> Currency {
        Currency::parse(c).unwrap()
    }

    fn line(kind: LineKind, amount: Decimal, c: Currency) -> DraftLine {
        DraftLine {
            kind,
            code: "x".into(),
            description: "x".into(),
            amount: Money::new(amount, c),
            from: None,
            to: None,
            units: None,
            proration_factor: None,
            tax_exempt: false,
            taxes: None,
            breakdown: vec![],
            subscription: None,
            plan: None,
            metric: None,
            adjusts: None,
        }
    }

    fn pct(code: &str, rate: Decimal) -> Coupon {
        Coupon {
            code: code.into(),
            id: None,
            applies_to: None,
            coupon_type: CouponType::Percentage,
            amount: None,
            percentage_rate: Some(rate),
            frequency: Frequency::Forever,
            frequency_duration: None,
            periods_applied: 0,
            amount_remaining: None,
        }
    }

    fn no_adj() -> Adjustments<'static> {
        Adjustments {
            coupons: &[],
            taxes: &[],
            customer_tax_exempt: false,
            credit_notes: &[],
            prepaid_credits: Decimal::ZERO,
        }
    }

    #[test]
    fn order_of_operations_on_a_small_invoice() {
        let eur = cur("EUR");
        let coupons = [pct("ten", dec!(10))];
        let taxes = [TaxRate {
            code: "vat".into(),
            rate: dec!(20),
            inclusive: false,
        }];
        let notes = [CreditNote {
            code: "cn1".into(),
            amount: dec!(10),
        }];
        let adj = Adjustments {
            coupons: &coupons,
            taxes: &taxes,
            customer_tax_exempt: false,
            credit_notes: &notes,
            prepaid_credits: dec!(1000),
        };
        let mut exempt = line(LineKind::Charge, dec!(10.005), eur);
        exempt.tax_exempt = true;
        let inv = assemble(
            eur,
            RoundingMode::HalfUp,
            vec![line(LineKind::Subscription, dec!(45.161290), eur), exempt],
            &adj,
        )
        .unwrap();
        // Lines round to 45.16 and 10.01; 10 % off 55.17 = 5.517 → 5.52, split 4.52 / 1.00.
        assert_eq!(inv.subtotal, dec!(55.17));
        assert_eq!(inv.discount_total, dec!(5.52));
        assert_eq!(inv.lines[0].discount, dec!(4.52));
        assert_eq!(inv.lines[1].discount, dec!(1.00));
        // VAT on 40.64 = 8.128 → 8.13; the exempt line pays none.
        assert_eq!(inv.lines[0].tax_amount, dec!(8.13));
        assert_eq!(inv.lines[1].tax_amount, dec!(0));
        assert_eq!(inv.total, dec!(57.78));
        assert_eq!(inv.credits[0].amount, dec!(10.00));
        assert_eq!(inv.credits[1].amount, dec!(47.78));
        assert_eq!(inv.amount_due, dec!(0.00));
    }

    #[test]
    fn a_coupon_limited_to_a_metric_discounts_its_lines_only() {
        let eur = cur("EUR");
        let mut coupon = pct("calls_half", dec!(50));
        coupon.applies_to = Some(crate::discount::CouponScope {
            metrics: vec!["calls".into()],
            ..Default::default()
        });
        let coupons = [coupon];
        let adj = Adjustments {
            coupons: &coupons,
            ..no_adj()
        };
        let mut fee = line(LineKind::Subscription, dec!(40), eur);
        fee.plan = Some("pro".into());
        let mut calls = line(LineKind::Charge, dec!(12.35), eur);
        calls.plan = Some("pro".into());
        calls.metric = Some("calls".into());
        let inv = assemble(eur, RoundingMode::HalfUp, vec![fee, calls], &adj).unwrap();
        // 50 % of 12.35 = 6.175 → 6.18, all on the usage line.
        assert_eq!(inv.lines[0].discount, dec!(0.00));
        assert_eq!(inv.lines[1].discount, dec!(6.18));
        assert_eq!(inv.discount_total, dec!(6.18));
        assert_eq!(inv.coupons[0].amount, dec!(6.18));
        assert_eq!(inv.total, dec!(46.17));
    }

    #[test]
    fn a_line_with_its_own_rates_ignores_the_invoice_rates() {
        let eur = cur("EUR");
        let rate = |code: &str, r: Decimal, inclusive: bool| TaxRate {
            code: code.into(),
            rate: r,
            inclusive,
        };
        let standard = [rate("vat_20", dec!(20), false)];
        let adj = Adjustments {
            taxes: &standard,
            ..no_adj()
        };
        let mut reduced = line(LineKind::Charge, dec!(10.00), eur);
        reduced.taxes = Some(vec![rate("vat_5_5", dec!(5.5), false)]);
        let mut untaxed = line(LineKind::Charge, dec!(3.00), eur);
        untaxed.taxes = Some(vec![]);
        let inv = assemble(
            eur,
            RoundingMode::HalfUp,
            vec![
                line(LineKind::Subscription, dec!(50), eur),
                reduced,
                untaxed,
            ],
            &adj,
        )
        .unwrap();
        // 20 % of 50 = 10.00; 5.5 % of 10 = 0.55; an empty list of its own: no tax, not the invoice's.
        assert_eq!(inv.lines[0].taxes[0].code, "vat_20");
        assert_eq!(inv.lines[0].tax_amount, dec!(10.00));
        assert_eq!(inv.lines[1].taxes[0].code, "vat_5_5");
        assert_eq!(inv.lines[1].tax_amount, dec!(0.55));
        assert!(inv.lines[2].taxes.is_empty());
        assert_eq!(inv.tax_total, dec!(10.55));
        assert_eq!(inv.total, dec!(73.55));
        // The customer's exemption beats every line's own rates.
        let exempt = Adjustments {
            customer_tax_exempt: true,
            ..adj
        };
        let mut reduced = line(LineKind::Charge, dec!(10.00), eur);
        reduced.taxes = Some(vec![rate("vat_5_5", dec!(5.5), false)]);
        let inv = assemble(eur, RoundingMode::HalfUp, vec![reduced], &exempt).unwrap();
        assert_eq!(inv.tax_total, dec!(0.00));
    }
    #[test]
    fn mixed_currencies_are_rejected() {
        let r = assemble(
            cur("USD"),
            RoundingMode::HalfUp,
            vec![line(LineKind::Charge, dec!(1), cur("EUR"))],
            &no_adj(),
        );
        assert!(matches!(r, Err(Error::CurrencyMismatch { .. })));
    }

    #[test]
    fn credits_never_discount_below_zero_and_jpy_rounds_to_yen() {
        let jpy = cur("JPY");
        let coupons = [pct("half", dec!(50))];
        let adj = Adjustments {
            coupons: &coupons,
            ..no_adj()
        };
        let inv = assemble(
            jpy,
            RoundingMode::HalfUp,
            vec![
                line(LineKind::Subscription, dec!(1000), jpy),
                line(LineKind::SubscriptionCredit, dec!(-900.5), jpy),
            ],
            &adj,
        )
        .unwrap();
        // 1000 − 901 = 99 net; half of that is 49.5 → 50 yen, all on the positive line.
        assert_eq!(inv.lines[1].amount.to_string(), "-901");
        assert_eq!(inv.discount_total.to_string(), "50");
        assert_eq!(inv.total.to_string(), "49");
    }

    proptest! {
        #[test]
        fn total_is_the_sum_of_the_lines(
            cents in prop::collection::vec(-50_000i64..500_000, 1..10),
            rate in 0u32..=100,
            vat in 0u32..30,
            inclusive in any::<bool>(),
        ) {
            let usd = cur("USD");
            let coupons = [pct("p", Decimal::from(rate))];
            let taxes = [TaxRate { code: "t".into(), rate: Decimal::from(vat), inclusive }];
            let adj = Adjustments { coupons: &coupons, taxes: &taxes, ..no_adj() };
            // Three decimals so that lines really round.
            let drafts = cents.iter().map(|c| line(LineKind::Charge, Decimal::new(*c, 3), usd)).collect();
            let inv = assemble(usd, RoundingMode::HalfUp, drafts, &adj).unwrap();
            let sum: Decimal = inv.lines.iter().map(|l| l.total).sum();
            prop_assert_eq!(inv.total, sum);
            prop_assert_eq!(inv.subtotal - inv.discount_total,
                inv.lines.iter().map(|l| l.amount - l.discount).sum::<Decimal>());
            prop_assert_eq!(inv.discount_total, inv.coupons.iter().map(|c| c.amount).sum::<Decimal>());
            for l in &inv.lines {
                prop_assert_eq!(l.total, l.taxable_amount + l.tax_amount);
                prop_assert_eq!(l.amount.scale(), 2);
            }
        }
    }
}
