//! Taxes per line, computed on the discounted amount.
//!
//! An exclusive tax is added on top of the line's net amount. An inclusive tax is already inside the
//! line's amount and is extracted: with inclusive rates r₁…rₙ (sum R), tax_j = amount × r_j / (100 + R),
//! and the net is the amount minus those taxes. Exclusive taxes then apply to that net.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::currency::Currency;
use crate::error::{Error, Result};
use crate::money::{non_negative, round_to_minor, RoundingMode};

/// A tax rate, in percent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaxRate {
    /// Tax code (e.g. `vat_fr`).
    pub code: String,
    /// Percent (20 = 20 %).
    pub rate: Decimal,
    /// True if line amounts already include this tax.
    #[serde(default)]
    pub inclusive: bool,
}

/// One tax on one line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineTax {
    /// Tax code.
    pub code: String,
    /// Percent.
    pub rate: Decimal,
    /// Whether it was included in the line amount.
    pub inclusive: bool,
    /// Rounded tax amount.
    pub amount: Decimal,
}

/// Splits a rounded, discounted line amount into its net amount and its rounded taxes.
pub fn taxes_for_line(
    amount: Decimal,
    rates: &[TaxRate],
    exempt: bool,
    currency: Currency,
    mode: RoundingMode,
) -> Result<(Decimal, Vec<LineTax>)> {
    if exempt || rates.is_empty() {
        return Ok((amount, Vec::new()));
    }
    let overflow = || Error::Overflow("tax");
    let mut inclusive_sum = Decimal::ZERO;
    for r in rates {
        non_negative("tax rate", r.rate)?;
        if r.inclusive {
            inclusive_sum += r.rate;
        }
    }
    let divisor = Decimal::ONE_HUNDRED + inclusive_sum;
    let mut out = Vec::with_capacity(rates.len());
    let mut net = amount;
    for r in rates.iter().filter(|r| r.inclusive) {
        let t = round_to_minor(
            amount.checked_mul(r.rate).ok_or_else(overflow)? / divisor,
            currency,
            mode,
        );
        net -= t;
        out.push(LineTax {
            code: r.code.clone(),
            rate: r.rate,
            inclusive: true,
            amount: t,
        });
    }
    for r in rates.iter().filter(|r| !r.inclusive) {
        let t = round_to_minor(
            net.checked_mul(r.rate).ok_or_else(overflow)? / Decimal::ONE_HUNDRED,
            currency,
            mode,
        );
        out.push(LineTax {
            code: r.code.clone(),
            rate: r.rate,
            inclusive: false,
            amount: t,
        });
    }
    Ok((net, out))
}

/// One tax of an invoice: what a tax code took over every line it applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaxSummary {
    /// Tax code.
    pub code: String,
    /// Percent.
    pub rate: Decimal,
    /// Whether it was included in the line amounts.
    pub inclusive: bool,
    /// Σ of the taxed lines' taxable amounts (after discount, without inclusive taxes).
    pub taxable_amount: Decimal,
    /// Σ of the lines' rounded taxes (each line rounds its own tax: the invoice's tax is their sum).
    pub amount: Decimal,
}

/// Sum a rate's taxes over the lines, in order of first appearance: `lines` gives each line's taxable amount
/// and taxes. A code seen at two rates (a rate changed between two lines' sources) is kept apart per rate.
pub fn summarize<'a>(lines: impl IntoIterator<Item = (Decimal, &'a [LineTax])>) -> Vec<TaxSummary> {
    let mut out: Vec<TaxSummary> = Vec::new();
    for (taxable, taxes) in lines {
        for t in taxes {
            match out
                .iter_mut()
                .find(|s| s.code == t.code && s.rate == t.rate && s.inclusive == t.inclusive)
            {
                Some(s) => {
                    s.taxable_amount += taxable;
                    s.amount += t.amount;
                }
                None => out.push(TaxSummary {
                    code: t.code.clone(),
                    rate: t.rate,
                    inclusive: t.inclusive,
                    taxable_amount: taxable,
                    amount: t.amount,
                }),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    fn rate(code: &str, r: Decimal, inclusive: bool) -> TaxRate {
        TaxRate {
            code: code.into(),
            rate: r,
            inclusive,
        }
    }

    #[test]
    fn exclusive_inclusive_and_exempt() {
        let eur = Currency::parse("EUR").unwrap();
        let (net, t) = taxes_for_line(
            dec!(45.16),
            &[rate("vat", dec!(20), false)],
            false,
            eur,
            RoundingMode::HalfUp,
        )
        .unwrap();
        assert_eq!((net, t[0].amount), (dec!(45.16), dec!(9.03)));
        // 120.00 including 20 % VAT: 20.00 of tax, 100.00 net.
        let (net, t) = taxes_for_line(
            dec!(120.00),
            &[rate("vat", dec!(20), true)],
            false,
            eur,
            RoundingMode::HalfUp,
        )
        .unwrap();
        assert_eq!((net, t[0].amount), (dec!(100.00), dec!(20.00)));
        let (net, t) = taxes_for_line(
            dec!(120.00),
            &[rate("vat", dec!(20), false)],
            true,
            eur,
            RoundingMode::HalfUp,
        )
        .unwrap();
        assert_eq!((net, t.len()), (dec!(120.00), 0));
        let kwd = Currency::parse("KWD").unwrap();
        let (_, t) = taxes_for_line(
            dec!(1.005),
            &[rate("vat", dec!(5), false)],
            false,
            kwd,
            RoundingMode::HalfUp,
        )
        .unwrap();
        assert_eq!(t[0].amount, dec!(0.050));
        // Mixed: 10 % inclusive and 5 % exclusive on 110.00 → net 100.00, taxes 10.00 and 5.00.
        let (net, t) = taxes_for_line(
            dec!(110.00),
            &[rate("a", dec!(10), true), rate("b", dec!(5), false)],
            false,
            eur,
            RoundingMode::HalfUp,
        )
        .unwrap();
        assert_eq!(
            (net, t[0].amount, t[1].amount),
            (dec!(100.00), dec!(10.00), dec!(5.00))
        );
    }

    #[test]
    fn a_summary_sums_each_rate_over_its_lines() {
        let t = |code: &str, r: Decimal, amount: Decimal| LineTax {
            code: code.into(),
            rate: r,
            inclusive: false,
            amount,
        };
        let a = [t("vat", dec!(20), dec!(9.03))];
        let b = [
            t("vat", dec!(20), dec!(2.00)),
            t("city", dec!(1), dec!(0.10)),
        ];
        let none: [LineTax; 0] = [];
        let s = summarize([
            (dec!(45.16), &a[..]),
            (dec!(10.00), &b[..]),
            (dec!(3.00), &none[..]),
        ]);
        assert_eq!(s.len(), 2);
        assert_eq!(
            (s[0].code.as_str(), s[0].taxable_amount, s[0].amount),
            ("vat", dec!(55.16), dec!(11.03))
        );
        assert_eq!(
            (s[1].code.as_str(), s[1].taxable_amount, s[1].amount),
            ("city", dec!(10.00), dec!(0.10))
        );
    }
}
