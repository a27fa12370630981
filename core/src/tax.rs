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
}
