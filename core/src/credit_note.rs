//! Credit notes on a finalized invoice: what each credited line is worth, with its tax, and what may still be
//! credited.
//!
//! Rules (as Lago and Stripe credit notes behave, written down in `docs/pricing.md`):
//!
//! * A credit note credits invoice lines; each requested amount is **before tax**, in the invoice's currency, with
//!   at most its minor-unit decimals, and greater than zero.
//! * A line can be credited up to its **net amount** (amount − coupon discount) minus what earlier credit notes
//!   credited on it. Lines whose net amount is not positive (credits for unused time) cannot be credited.
//! * The tax credited with a line is its tax in proportion, `tax × credited / net`, rounded once to the minor unit;
//!   the credit note that credits the rest of a line credits the rest of its tax, so crediting a line in full,
//!   in one or several notes, gives back exactly its total.
//! * The credit note's total is the sum of its lines' totals.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::currency::Currency;
use crate::error::{Error, Result};
use crate::money::{round_to_minor, RoundingMode};

/// Where a credit note's money goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreditNoteKind {
    /// To the customer's credit balance, consumed by the next invoices.
    Credit,
    /// Back to the customer through the payment provider (refunds the invoice's charge).
    Refund,
}

impl CreditNoteKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            CreditNoteKind::Credit => "credit",
            CreditNoteKind::Refund => "refund",
        }
    }
}

/// An invoice line as credit notes see it (rounded amounts, as invoiced).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreditableLine {
    /// Amount before discount and tax.
    pub amount: Decimal,
    /// Coupon discount.
    pub discount: Decimal,
    /// Tax.
    pub tax: Decimal,
    /// Amount already credited by earlier credit notes (before tax).
    pub credited: Decimal,
    /// Tax already credited.
    pub credited_tax: Decimal,
}

impl CreditableLine {
    /// What may still be credited, before tax.
    pub fn remaining(&self) -> Decimal {
        (self.amount - self.discount - self.credited).max(Decimal::ZERO)
    }
}

/// One line of a credit note.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreditedLine {
    /// Index of the invoice line.
    pub line_index: usize,
    /// Credited before tax.
    pub amount: Decimal,
    /// Tax credited.
    pub tax: Decimal,
    /// amount + tax.
    pub total: Decimal,
}

/// A credit note's lines and totals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditNoteAmounts {
    /// Lines, in request order.
    pub lines: Vec<CreditedLine>,
    /// Σ amounts.
    pub subtotal: Decimal,
    /// Σ taxes.
    pub tax_total: Decimal,
    /// subtotal + tax_total.
    pub total: Decimal,
}

/// Prices a credit note requesting `requested` (line index, amount before tax) on an invoice whose lines are
/// `lines`. Refuses an empty request, an unknown or repeated line, an amount that is not positive or has more
/// decimals than the currency, and an amount above what remains creditable on its line.
pub fn credit_note_amounts(
    currency: Currency,
    rounding: RoundingMode,
    lines: &[CreditableLine],
    requested: &[(usize, Decimal)],
) -> Result<CreditNoteAmounts> {
    if requested.is_empty() {
        return Err(Error::InvalidRequest(
            "a credit note needs at least one line".into(),
        ));
    }
    let mut out = Vec::with_capacity(requested.len());
    for (k, (index, amount)) in requested.iter().copied().enumerate() {
        let field = format!("lines[{k}].amount");
        let line = lines.get(index).ok_or_else(|| {
            Error::InvalidRequest(format!(
                "lines[{k}].line_index: the invoice has no line {index} (it has {})",
                lines.len()
            ))
        })?;
        if requested[..k].iter().any(|(i, _)| *i == index) {
            return Err(Error::InvalidRequest(format!(
                "lines[{k}].line_index: line {index} is credited twice in one credit note"
            )));
        }
        if amount <= Decimal::ZERO {
            return Err(Error::InvalidRequest(format!(
                "{field}: must be greater than zero"
            )));
        }
        if amount.normalize().scale() > currency.minor_units() {
            return Err(Error::InvalidRequest(format!(
                "{field}: {amount} has more decimals than {} allows ({})",
                currency.code(),
                currency.minor_units()
            )));
        }
        let remaining = line.remaining();
        if amount > remaining {
            return Err(Error::InvalidRequest(format!(
                "{field}: {amount} is more than line {index} has left to credit ({})",
                round_to_minor(remaining, currency, rounding)
            )));
        }
        let net = line.amount - line.discount;
        let tax = if amount == remaining {
            line.tax - line.credited_tax
        } else {
            round_to_minor(line.tax * amount / net, currency, rounding)
        };
        let amount = round_to_minor(amount, currency, rounding);
        let tax = round_to_minor(tax, currency, rounding);
        out.push(CreditedLine {
            line_index: index,
            amount,
            tax,
            total: amount + tax,
        });
    }
    let subtotal = out.iter().map(|l| l.amount).sum::<Decimal>();
    let tax_total = out.iter().map(|l| l.tax).sum::<Decimal>();
    Ok(CreditNoteAmounts {
        lines: out,
        subtotal,
        tax_total,
        total: subtotal + tax_total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    fn eur() -> Currency {
        Currency::parse("EUR").unwrap()
    }

    fn line(amount: Decimal, discount: Decimal, tax: Decimal) -> CreditableLine {
        CreditableLine {
            amount,
            discount,
            tax,
            credited: Decimal::ZERO,
            credited_tax: Decimal::ZERO,
        }
    }

    #[test]
    fn a_partial_credit_takes_its_share_of_the_tax() {
        // 49.00 − 4.90 discount = 44.10 net, 20 % tax 8.82; crediting 10.00 credits 8.82 × 10 / 44.10 = 2.00.
        let lines = [line(dec!(49.00), dec!(4.90), dec!(8.82))];
        let cn =
            credit_note_amounts(eur(), RoundingMode::HalfUp, &lines, &[(0, dec!(10))]).unwrap();
        assert_eq!(cn.lines[0].tax, dec!(2.00));
        assert_eq!(cn.total, dec!(12.00));
        assert_eq!(cn.subtotal.to_string(), "10.00");
    }

    #[test]
    fn crediting_the_rest_gives_back_exactly_the_line_total() {
        // Three thirds of 10.00 net with 1.99 tax: 0.66, 0.66, then the rest 0.67 (not 0.66).
        let mut l = line(dec!(10.00), dec!(0), dec!(1.99));
        let mut taxes = Vec::new();
        for amount in [dec!(3.33), dec!(3.33), dec!(3.34)] {
            let cn =
                credit_note_amounts(eur(), RoundingMode::HalfUp, &[l], &[(0, amount)]).unwrap();
            l.credited += cn.lines[0].amount;
            l.credited_tax += cn.lines[0].tax;
            taxes.push(cn.lines[0].tax);
        }
        assert_eq!(taxes, vec![dec!(0.66), dec!(0.66), dec!(0.67)]);
        assert_eq!(l.credited + l.credited_tax, dec!(11.99));
        assert_eq!(l.remaining(), dec!(0));
    }

    #[test]
    fn refuses_what_it_cannot_credit() {
        let lines = [
            line(dec!(20.00), dec!(0), dec!(0)),
            line(dec!(-5.00), dec!(0), dec!(0)),
        ];
        let err = |req: &[(usize, Decimal)]| {
            credit_note_amounts(eur(), RoundingMode::HalfUp, &lines, req)
                .unwrap_err()
                .to_string()
        };
        assert!(err(&[]).contains("at least one line"));
        assert!(err(&[(0, dec!(20.01))]).contains("left to credit (20.00)"));
        assert!(err(&[(1, dec!(1))]).contains("left to credit (0.00)"));
        assert!(err(&[(2, dec!(1))]).contains("no line 2"));
        assert!(err(&[(0, dec!(0))]).contains("greater than zero"));
        assert!(err(&[(0, dec!(-1))]).contains("greater than zero"));
        assert!(err(&[(0, dec!(1.001))]).contains("more decimals"));
        assert!(err(&[(0, dec!(1)), (0, dec!(2))]).contains("credited twice"));
        // Trailing zeros are not extra precision.
        assert!(
            credit_note_amounts(eur(), RoundingMode::HalfUp, &lines, &[(0, dec!(1.000))]).is_ok()
        );
    }

    #[test]
    fn a_currency_without_minor_units_credits_whole_units() {
        let jpy = Currency::parse("JPY").unwrap();
        let lines = [line(dec!(1000), dec!(0), dec!(100))];
        let cn = credit_note_amounts(jpy, RoundingMode::HalfUp, &lines, &[(0, dec!(333))]).unwrap();
        assert_eq!((cn.lines[0].tax, cn.total), (dec!(33), dec!(366)));
        assert!(credit_note_amounts(jpy, RoundingMode::HalfUp, &lines, &[(0, dec!(1.5))]).is_err());
    }
}
