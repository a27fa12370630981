//! Coupons and how a discount is spread over invoice lines.

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::currency::Currency;
use crate::error::{Error, Result};
use crate::money::{non_negative, round_to_minor, RoundingMode};

/// Fixed amount or percentage (Lago's `coupon_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CouponType {
    /// A fixed amount off, in the invoice currency.
    #[serde(alias = "fixed")]
    FixedAmount,
    /// A percentage off the subtotal.
    Percentage,
}

/// How many invoices a coupon applies to (Lago's `frequency`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Frequency {
    /// The first invoice only (a fixed coupon's unused amount carries over via `amount_remaining`).
    #[default]
    Once,
    /// `frequency_duration` invoices.
    Recurring,
    /// Every invoice.
    Forever,
}

/// The lines a coupon may discount (Lago's `applies_to` and a coupon applied to one subscription). Empty lists
/// do not restrict.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CouponScope {
    /// Plans whose lines (fee and usage charges) it discounts.
    #[serde(default)]
    pub plans: Vec<String>,
    /// Billable metrics whose usage lines it discounts.
    #[serde(default)]
    pub metrics: Vec<String>,
    /// Subscriptions whose lines it discounts.
    #[serde(default)]
    pub subscriptions: Vec<String>,
}

impl CouponScope {
    /// Whether a line of this plan, metric (usage lines) and subscription is discounted: on a listed plan or a
    /// listed metric (when either list is set), and of a listed subscription (when that list is set).
    pub fn covers(
        &self,
        plan: Option<&str>,
        metric: Option<&str>,
        subscription: Option<&str>,
    ) -> bool {
        let listed =
            |list: &[String], v: Option<&str>| v.is_some_and(|v| list.iter().any(|x| x == v));
        let by_item = (self.plans.is_empty() && self.metrics.is_empty())
            || listed(&self.plans, plan)
            || listed(&self.metrics, metric);
        let by_subscription =
            self.subscriptions.is_empty() || listed(&self.subscriptions, subscription);
        by_item && by_subscription
    }
}

/// A coupon applied to a customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Coupon {
    /// Coupon code.
    pub code: String,
    /// Id of this application of the coupon (a customer may have a coupon applied twice).
    #[serde(default)]
    pub id: Option<String>,
    /// The lines it may discount (`None`: every line).
    #[serde(default)]
    pub applies_to: Option<CouponScope>,
    /// Fixed amount or percentage.
    pub coupon_type: CouponType,
    /// Amount off, for fixed coupons.
    #[serde(default)]
    pub amount: Option<Decimal>,
    /// Percent off (10 = 10 %), for percentage coupons.
    #[serde(default)]
    pub percentage_rate: Option<Decimal>,
    /// Once, recurring or forever.
    #[serde(default)]
    pub frequency: Frequency,
    /// Number of invoices, for recurring coupons.
    #[serde(default)]
    pub frequency_duration: Option<u32>,
    /// Invoices the coupon was already applied to.
    #[serde(default)]
    pub periods_applied: u32,
    /// What is left of a fixed coupon after earlier invoices (defaults to `amount`).
    #[serde(default)]
    pub amount_remaining: Option<Decimal>,
}

impl Coupon {
    /// The coupon after it discounted earlier invoices by `used` (one amount per invoice it discounted, in
    /// order): each counts as one period applied, and a fixed amount applied once keeps what is left for the next
    /// invoices (Lago's carry-over), a recurring or forever fixed amount gives its full amount each period.
    pub fn after(mut self, used: &[Decimal]) -> Coupon {
        self.periods_applied = u32::try_from(used.len()).unwrap_or(u32::MAX);
        if self.coupon_type == CouponType::FixedAmount
            && self.frequency == Frequency::Once
            && !used.is_empty()
        {
            let spent: Decimal = used.iter().sum();
            self.amount_remaining = self.amount.map(|a| (a - spent).max(Decimal::ZERO));
        }
        self
    }

    /// Whether the coupon still applies to the next invoice.
    pub fn is_active(&self) -> Result<bool> {
        Ok(match self.frequency {
            Frequency::Once => self.periods_applied == 0 || self.amount_remaining.is_some(),
            Frequency::Recurring => {
                let n = self.frequency_duration.ok_or_else(|| {
                    Error::InvalidRequest(format!(
                        "coupon {}: recurring needs frequency_duration",
                        self.code
                    ))
                })?;
                self.periods_applied < n
            }
            Frequency::Forever => true,
        })
    }

    /// The rounded discount this coupon gives on `base` (already rounded, never exceeded).
    pub fn discount(
        &self,
        base: Decimal,
        currency: Currency,
        mode: RoundingMode,
    ) -> Result<Decimal> {
        if base <= Decimal::ZERO || !self.is_active()? {
            return Ok(Decimal::ZERO);
        }
        let d = match self.coupon_type {
            CouponType::FixedAmount => {
                let a = self.amount_remaining.or(self.amount).ok_or_else(|| {
                    Error::InvalidRequest(format!(
                        "coupon {}: fixed_amount needs amount",
                        self.code
                    ))
                })?;
                non_negative("coupon amount", a)?.min(base)
            }
            CouponType::Percentage => {
                let r = self.percentage_rate.ok_or_else(|| {
                    Error::InvalidRequest(format!(
                        "coupon {}: percentage needs percentage_rate",
                        self.code
                    ))
                })?;
                non_negative("percentage_rate", r)?;
                base.checked_mul(r).ok_or(Error::Overflow("coupon"))? / Decimal::ONE_HUNDRED
            }
        };
        Ok(round_to_minor(d, currency, mode).min(base))
    }
}

/// Spreads a rounded discount over rounded line amounts in proportion to them, in whole minor units,
/// by the largest-remainder method (ties go to the earlier line), so the parts add up exactly.
pub fn allocate(discount: Decimal, bases: &[Decimal], currency: Currency) -> Result<Vec<Decimal>> {
    let scale = Decimal::from(10u64.pow(currency.minor_units()));
    let to_minor = |d: Decimal| -> Result<i128> {
        let m = d.checked_mul(scale).ok_or(Error::Overflow("allocation"))?;
        if m.fract() != Decimal::ZERO {
            return Err(Error::InvalidRequest(format!(
                "{d} is not rounded to {currency}"
            )));
        }
        m.to_i128().ok_or(Error::Overflow("allocation"))
    };
    let total = to_minor(discount)?;
    let parts: Vec<i128> = bases
        .iter()
        .map(|b| to_minor(*b).map(|m| m.max(0)))
        .collect::<Result<_>>()?;
    let sum: i128 = parts.iter().sum();
    if total == 0 || sum == 0 {
        return Ok(vec![Decimal::ZERO; bases.len()]);
    }
    if total > sum {
        return Err(Error::InvalidRequest(
            "discount exceeds the lines it spreads over".into(),
        ));
    }
    let mut shares = Vec::with_capacity(parts.len());
    let mut given = 0i128;
    for p in &parts {
        let num = total.checked_mul(*p).ok_or(Error::Overflow("allocation"))?;
        shares.push((num / sum, num % sum));
        given += num / sum;
    }
    let mut order: Vec<usize> = (0..parts.len()).collect();
    order.sort_by(|a, b| shares[*b].1.cmp(&shares[*a].1).then(a.cmp(b)));
    for i in order
        .into_iter()
        .take(usize::try_from(total - given).unwrap_or(0))
    {
        shares[i].0 += 1;
    }
    shares
        .into_iter()
        .map(|(q, _)| {
            let d = Decimal::try_from_i128_with_scale(q, currency.minor_units())
                .map_err(|_| Error::Overflow("allocation"))?;
            Ok(d)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rust_decimal_macros::dec;

    fn usd() -> Currency {
        Currency::parse("USD").unwrap()
    }

    fn coupon(t: CouponType, amount: Option<Decimal>, rate: Option<Decimal>) -> Coupon {
        Coupon {
            code: "c".into(),
            id: None,
            applies_to: None,
            coupon_type: t,
            amount,
            percentage_rate: rate,
            frequency: Frequency::Once,
            frequency_duration: None,
            periods_applied: 0,
            amount_remaining: None,
        }
    }

    #[test]
    fn allocation_is_exact_with_remainders() {
        let parts = allocate(dec!(1.00), &[dec!(1.00), dec!(1.00), dec!(1.00)], usd()).unwrap();
        assert_eq!(parts, vec![dec!(0.34), dec!(0.33), dec!(0.33)]);
        let parts = allocate(dec!(5.00), &[dec!(30.00), dec!(10.00), dec!(-4.00)], usd()).unwrap();
        assert_eq!(parts, vec![dec!(3.75), dec!(1.25), dec!(0.00)]);
        let jpy = Currency::parse("JPY").unwrap();
        let parts = allocate(dec!(100), &[dec!(333), dec!(333), dec!(334)], jpy).unwrap();
        assert_eq!(parts.iter().sum::<Decimal>(), dec!(100));
    }

    #[test]
    fn coupon_amounts_and_frequencies() {
        let fixed = coupon(CouponType::FixedAmount, Some(dec!(50)), None);
        assert_eq!(
            fixed
                .discount(dec!(30), usd(), RoundingMode::HalfUp)
                .unwrap(),
            dec!(30)
        );
        let pct = coupon(CouponType::Percentage, None, Some(dec!(12.5)));
        assert_eq!(
            pct.discount(dec!(10.10), usd(), RoundingMode::HalfUp)
                .unwrap(),
            dec!(1.26)
        );
        let mut used = pct.clone();
        used.periods_applied = 1;
        assert_eq!(
            used.discount(dec!(10), usd(), RoundingMode::HalfUp)
                .unwrap(),
            dec!(0)
        );
        used.frequency = Frequency::Recurring;
        used.frequency_duration = Some(3);
        assert!(used.is_active().unwrap());
        used.periods_applied = 3;
        assert!(!used.is_active().unwrap());
        used.frequency = Frequency::Forever;
        assert!(used.is_active().unwrap());
    }

    #[test]
    fn a_coupon_after_earlier_invoices() {
        let fixed = coupon(CouponType::FixedAmount, Some(dec!(50)), None);
        // 30.00 used on the first invoice: 20.00 left for the next, then nothing.
        let next = fixed.clone().after(&[dec!(30)]);
        assert_eq!(next.amount_remaining, Some(dec!(20)));
        assert_eq!(
            next.discount(dec!(100), usd(), RoundingMode::HalfUp)
                .unwrap(),
            dec!(20)
        );
        let spent = fixed.clone().after(&[dec!(30), dec!(20)]);
        assert_eq!(
            spent
                .discount(dec!(100), usd(), RoundingMode::HalfUp)
                .unwrap(),
            dec!(0)
        );
        // Recurring for 3 periods: 3 uses and it is over; a recurring fixed amount is whole each period.
        let mut recurring = fixed.clone();
        recurring.frequency = Frequency::Recurring;
        recurring.frequency_duration = Some(3);
        let twice = recurring.clone().after(&[dec!(50), dec!(50)]);
        assert_eq!(
            twice
                .discount(dec!(100), usd(), RoundingMode::HalfUp)
                .unwrap(),
            dec!(50)
        );
        assert!(!recurring.after(&[dec!(50); 3]).is_active().unwrap());
        let pct = coupon(CouponType::Percentage, None, Some(dec!(10)));
        assert!(!pct.after(&[dec!(1)]).is_active().unwrap());
    }

    #[test]
    fn a_scope_limits_the_lines() {
        let any = CouponScope::default();
        assert!(any.covers(Some("pro"), None, Some("s1")));
        let plans = CouponScope {
            plans: vec!["pro".into()],
            ..Default::default()
        };
        assert!(plans.covers(Some("pro"), Some("calls"), None));
        assert!(!plans.covers(Some("basic"), None, None));
        let metric = CouponScope {
            metrics: vec!["calls".into()],
            ..Default::default()
        };
        assert!(metric.covers(Some("pro"), Some("calls"), None));
        assert!(!metric.covers(Some("pro"), None, None), "not the fee");
        let sub = CouponScope {
            subscriptions: vec!["s1".into()],
            ..Default::default()
        };
        assert!(sub.covers(Some("pro"), None, Some("s1")));
        assert!(!sub.covers(Some("pro"), None, Some("s2")));
    }

    proptest! {
        #[test]
        fn allocation_always_adds_up(
            cents in prop::collection::vec(0i64..1_000_000, 1..12),
            share in 0u32..=100,
        ) {
            let bases: Vec<Decimal> = cents.iter().map(|c| Decimal::new(*c, 2)).collect();
            let sum: i64 = cents.iter().sum();
            let discount = Decimal::new(sum * i64::from(share) / 100, 2);
            let parts = allocate(discount, &bases, usd()).unwrap();
            prop_assert_eq!(parts.iter().sum::<Decimal>(), discount);
            for (p, b) in parts.iter().zip(&bases) {
                prop_assert!(*p <= *b && *p >= Decimal::ZERO);
            }
        }
    }
}
