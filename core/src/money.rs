//! Exact money: amounts in a currency, quantities, and the one rounding rule.
//!
//! Rounding rule: a line keeps its precise `Decimal` value through every computation and is rounded
//! **once**, to the currency's minor unit, with [`RoundingMode::HalfUp`] (midpoint away from zero:
//! 0.125 USD → 0.13, −0.125 → −0.13) unless half-even (banker's rounding: 0.125 → 0.12) is selected.
//! Totals are sums of rounded lines, so they always reconcile.

use std::fmt;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

use crate::currency::Currency;
use crate::error::{Error, Result};

/// How a precise amount is rounded to the currency's minor unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoundingMode {
    /// Midpoint away from zero (the default, what invoices and most tax rules expect).
    #[default]
    HalfUp,
    /// Midpoint to the nearest even digit (banker's rounding).
    HalfEven,
}

impl RoundingMode {
    /// The rust_decimal strategy this mode maps to.
    pub fn strategy(self) -> RoundingStrategy {
        match self {
            RoundingMode::HalfUp => RoundingStrategy::MidpointAwayFromZero,
            RoundingMode::HalfEven => RoundingStrategy::MidpointNearestEven,
        }
    }
}

/// Rounds `amount` to the minor unit of `currency` and pins the scale (so USD 100 prints as `100.00`).
pub fn round_to_minor(amount: Decimal, currency: Currency, mode: RoundingMode) -> Decimal {
    let mut r = amount.round_dp_with_strategy(currency.minor_units(), mode.strategy());
    r.rescale(currency.minor_units());
    r
}

/// Parses a decimal from a string, naming the field in the error.
pub fn parse_decimal(field: &str, s: &str) -> Result<Decimal> {
    s.trim()
        .parse::<Decimal>()
        .or_else(|_| Decimal::from_scientific(s.trim()))
        .map_err(|e| Error::InvalidNumber {
            field: field.to_string(),
            reason: format!("{s:?}: {e}"),
        })
}

/// Parses a quantity exactly as written on the wire: an optional sign, digits, and optionally a point followed by at
/// most `max_scale` digits. Nothing else: no exponent (`1e3`), no digit separators (`1_000`), no spaces, no
/// `NaN`; a value beyond what a decimal holds (about 7.9 × 10²⁸) is an error, never rounded or truncated.
pub fn parse_exact_decimal(field: &str, s: &str, max_scale: u32) -> Result<Decimal> {
    let invalid = |reason: String| Error::InvalidNumber {
        field: field.to_string(),
        reason: format!("{s:?}: {reason}"),
    };
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !all_digits(int) || !all_digits(frac) || digits.ends_with('.') {
        return Err(invalid(
            "not a plain decimal number (digits, an optional point and decimals)".into(),
        ));
    }
    if frac.len() > max_scale as usize {
        return Err(invalid(format!("more than {max_scale} decimals")));
    }
    s.parse::<Decimal>()
        .map_err(|_| invalid("out of range (at most about 7.9e28)".into()))
}

/// Checks that a decimal is zero or positive, naming the field in the error.
pub fn non_negative(field: &str, d: Decimal) -> Result<Decimal> {
    if d.is_sign_negative() && !d.is_zero() {
        return Err(Error::InvalidNumber {
            field: field.to_string(),
            reason: format!("{d} is negative"),
        });
    }
    Ok(d)
}

/// An amount of money in one currency, kept at full precision until it is rounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    amount: Decimal,
    currency: Currency,
}

impl Money {
    /// Builds money from a precise amount.
    pub fn new(amount: Decimal, currency: Currency) -> Self {
        Money { amount, currency }
    }

    /// Parses an amount string such as `"12.50"` in the given currency.
    pub fn parse(amount: &str, currency: Currency) -> Result<Self> {
        Ok(Money::new(parse_decimal("amount", amount)?, currency))
    }

    /// Zero in the given currency.
    pub fn zero(currency: Currency) -> Self {
        Money::new(Decimal::ZERO, currency)
    }

    /// The precise amount.
    pub fn amount(&self) -> Decimal {
        self.amount
    }

    /// The currency.
    pub fn currency(&self) -> Currency {
        self.currency
    }

    /// Rounds once to the minor unit.
    pub fn rounded(&self, mode: RoundingMode) -> Money {
        Money::new(
            round_to_minor(self.amount, self.currency, mode),
            self.currency,
        )
    }

    /// Adds two amounts of the same currency; mixing currencies is an error, never a conversion.
    pub fn checked_add(&self, other: &Money) -> Result<Money> {
        self.same_currency(other)?;
        let amount = self
            .amount
            .checked_add(other.amount)
            .ok_or(Error::Overflow("money addition"))?;
        Ok(Money::new(amount, self.currency))
    }

    /// Subtracts two amounts of the same currency.
    pub fn checked_sub(&self, other: &Money) -> Result<Money> {
        self.same_currency(other)?;
        let amount = self
            .amount
            .checked_sub(other.amount)
            .ok_or(Error::Overflow("money subtraction"))?;
        Ok(Money::new(amount, self.currency))
    }

    /// Multiplies by a factor (a quantity, a proration factor, a rate).
    pub fn checked_mul(&self, factor: Decimal) -> Result<Money> {
        let amount = self
            .amount
            .checked_mul(factor)
            .ok_or(Error::Overflow("money multiplication"))?;
        Ok(Money::new(amount, self.currency))
    }

    fn same_currency(&self, other: &Money) -> Result<()> {
        if self.currency != other.currency {
            return Err(Error::CurrencyMismatch {
                expected: self.currency.code().to_string(),
                found: other.currency.code().to_string(),
            });
        }
        Ok(())
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.amount, self.currency)
    }
}

/// A non-negative number of units (events, GB, seconds...), never a float.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
#[serde(transparent)]
pub struct Quantity(Decimal);

impl Quantity {
    /// Zero units.
    pub const ZERO: Quantity = Quantity(Decimal::ZERO);

    /// Builds a quantity; negative values are rejected.
    pub fn new(value: Decimal) -> Result<Self> {
        Ok(Quantity(non_negative("quantity", value)?))
    }

    /// Parses a quantity from a decimal string.
    pub fn parse(s: &str) -> Result<Self> {
        Quantity::new(parse_decimal("quantity", s)?)
    }

    /// The value.
    pub fn value(&self) -> Decimal {
        self.0
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let v = <Decimal as Deserialize>::deserialize(d)?;
        Quantity::new(v).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod exact_tests {
    use super::*;
    use rust_decimal_macros::dec;

    #[test]
    fn exact_decimals_refuse_what_they_would_have_to_guess() {
        let p = |s| parse_exact_decimal("v", s, 9);
        assert_eq!(p("3.5").unwrap(), dec!(3.5));
        assert_eq!(p("-0.000000001").unwrap(), dec!(-0.000000001));
        assert_eq!(p("+12").unwrap(), dec!(12));
        for bad in [
            "1_000",
            "1e3",
            "1E3",
            " 3",
            "3 ",
            "",
            "-",
            ".5",
            "5.",
            "0x10",
            "NaN",
            "1.1234567891",
            "100000000000000000000000000000",
        ] {
            assert!(p(bad).is_err(), "{bad:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    fn cur(c: &str) -> Currency {
        Currency::parse(c).unwrap()
    }

    #[test]
    fn half_up_rounds_midpoints_away_from_zero() {
        let usd = cur("USD");
        assert_eq!(
            round_to_minor(dec!(0.125), usd, RoundingMode::HalfUp),
            dec!(0.13)
        );
        assert_eq!(
            round_to_minor(dec!(-0.125), usd, RoundingMode::HalfUp),
            dec!(-0.13)
        );
        assert_eq!(
            round_to_minor(dec!(0.124999), usd, RoundingMode::HalfUp),
            dec!(0.12)
        );
    }

    #[test]
    fn half_even_rounds_midpoints_to_even() {
        let usd = cur("USD");
        assert_eq!(
            round_to_minor(dec!(0.125), usd, RoundingMode::HalfEven),
            dec!(0.12)
        );
        assert_eq!(
            round_to_minor(dec!(0.135), usd, RoundingMode::HalfEven),
            dec!(0.14)
        );
    }

    #[test]
    fn jpy_has_no_decimals_and_kwd_three() {
        assert_eq!(
            round_to_minor(dec!(100.5), cur("JPY"), RoundingMode::HalfUp).to_string(),
            "101"
        );
        assert_eq!(
            round_to_minor(dec!(100.4999), cur("JPY"), RoundingMode::HalfUp).to_string(),
            "100"
        );
        assert_eq!(
            round_to_minor(dec!(1.2345), cur("KWD"), RoundingMode::HalfUp).to_string(),
            "1.235"
        );
        assert_eq!(
            round_to_minor(dec!(1.2345), cur("KWD"), RoundingMode::HalfEven).to_string(),
            "1.234"
        );
    }

    #[test]
    fn rounded_amount_keeps_the_currency_scale() {
        assert_eq!(
            round_to_minor(dec!(100), cur("USD"), RoundingMode::HalfUp).to_string(),
            "100.00"
        );
        assert_eq!(
            round_to_minor(dec!(7), cur("BHD"), RoundingMode::HalfUp).to_string(),
            "7.000"
        );
    }

    #[test]
    fn mixing_currencies_is_an_error() {
        let a = Money::parse("1", cur("USD")).unwrap();
        let b = Money::parse("1", cur("EUR")).unwrap();
        assert!(matches!(
            a.checked_add(&b),
            Err(Error::CurrencyMismatch { .. })
        ));
        assert_eq!(a.checked_add(&a).unwrap().amount(), dec!(2));
        assert_eq!(a.checked_sub(&a).unwrap().amount(), dec!(0));
    }

    #[test]
    fn quantities_must_not_be_negative() {
        assert!(Quantity::parse("-1").is_err());
        assert_eq!(Quantity::parse("2.5").unwrap().value(), dec!(2.5));
        assert!(Quantity::parse("abc").is_err());
        assert!(serde_json::from_str::<Quantity>("\"-3\"").is_err());
        assert_eq!(
            serde_json::from_str::<Quantity>("3").unwrap().value(),
            dec!(3)
        );
    }

    #[test]
    fn money_rounds_once_from_the_precise_value() {
        // Three thirds of 1.00 rounded each would be 0.99; the precise value rounds to 1.00.
        let third = Money::new(Decimal::ONE / dec!(3), cur("USD"));
        let sum = third
            .checked_add(&third)
            .unwrap()
            .checked_add(&third)
            .unwrap();
        assert_eq!(sum.rounded(RoundingMode::HalfUp).amount(), dec!(1.00));
    }
}
