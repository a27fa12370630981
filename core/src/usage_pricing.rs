//! Pricing of usage as it accumulates: the one place where a running aggregate becomes money. Rating calls
//! [`apply_and_price`] for each event (the marginal amount it records in analytics) and the usage API calls
//! [`price_running`] to show the period so far; both therefore price a value the same way.
//!
//! A running aggregate keeps no per-event values, so the percentage options that need them (per-transaction
//! minimum and maximum, free units per events) cannot be priced from it: [`price_running`] then returns
//! [`Error::MissingInput`](crate::Error::MissingInput), and [`apply_and_price`] records the event at a marginal
//! amount of zero. The invoice prices such charges from the events themselves.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

use crate::aggregation::{AggregationType, RunningAggregate};
use crate::charge::{ChargeModel, Usage};
use crate::currency::Currency;
use crate::error::{Error, Result};
use crate::money::{round_to_minor, RoundingMode};
use crate::period::BillingPeriod;

/// A charge's usage so far, priced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PricedUsage {
    /// Aggregated units.
    pub units: Decimal,
    /// Events counted.
    pub events_count: u64,
    /// Precise amount, not rounded.
    pub amount: Decimal,
}

impl PricedUsage {
    /// The amount rounded once to the currency's minor unit.
    pub fn rounded(&self, currency: Currency, mode: RoundingMode) -> Decimal {
        round_to_minor(self.amount, currency, mode)
    }
}

/// Prices the usage a running aggregate holds for `period` under a charge model.
pub fn price_running(
    model: &ChargeModel,
    aggregation: AggregationType,
    running: &RunningAggregate,
    period: &BillingPeriod,
) -> Result<PricedUsage> {
    let units = running.units(aggregation, None, period.start, period.end)?;
    let amount = model
        .evaluate(&Usage {
            units,
            events_count: Some(running.events_count),
            event_values: None,
        })?
        .amount;
    Ok(PricedUsage {
        units,
        events_count: running.events_count,
        amount,
    })
}

/// Applies one event to a running aggregate and returns its marginal amount: the charge's price after the event
/// minus its price before. The marginal amount is zero for a charge that needs per-event values (see the module
/// documentation). An error means the event cannot be aggregated (no value, overflow) and nothing changed.
pub fn apply_and_price(
    model: &ChargeModel,
    aggregation: AggregationType,
    running: &mut RunningAggregate,
    event: (Option<&str>, DateTime<Utc>, &str),
    period: &BillingPeriod,
) -> Result<Decimal> {
    let (raw, timestamp, event_id) = event;
    let price = |r: &RunningAggregate| match price_running(model, aggregation, r, period) {
        Ok(p) => Ok(Some(p.amount)),
        Err(Error::MissingInput(_)) => Ok(None),
        Err(e) => Err(e),
    };
    let before = price(running)?;
    let mut next = running.clone();
    next.apply(aggregation, raw, timestamp, event_id, period.end)?;
    let after = price(&next)?;
    let marginal = match (before, after) {
        (Some(b), Some(a)) => a.checked_sub(b).ok_or(Error::Overflow("marginal amount"))?,
        _ => Decimal::ZERO,
    };
    *running = next;
    Ok(marginal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::period::{BillingTime, Interval, Schedule};
    use chrono_tz::Tz;
    use rust_decimal_macros::dec;
    use serde_json::json;

    fn january() -> BillingPeriod {
        let t: DateTime<Utc> = "2026-01-10T00:00:00Z".parse().unwrap();
        Schedule::new(Interval::Monthly, BillingTime::Calendar, t, Tz::UTC)
            .unwrap()
            .period_containing(t)
            .unwrap()
    }

    #[test]
    fn marginal_amounts_add_up_to_the_price_of_the_whole() {
        // 10 free units, then 0.5 per unit.
        let model = ChargeModel::from_lago(
            "graduated",
            &json!({"graduated_ranges": [
                {"from_value": 0, "to_value": 10, "per_unit_amount": "0", "flat_amount": "0"},
                {"from_value": 10, "to_value": null, "per_unit_amount": "0.5", "flat_amount": "0"}]}),
        )
        .unwrap();
        let period = january();
        let ts: DateTime<Utc> = "2026-01-11T00:00:00Z".parse().unwrap();
        let mut running = RunningAggregate::default();
        let mut total = Decimal::ZERO;
        for (i, v) in ["4", "4", "4", "4"].iter().enumerate() {
            total += apply_and_price(
                &model,
                AggregationType::SumAgg,
                &mut running,
                (Some(v), ts, &format!("e{i}")),
                &period,
            )
            .unwrap();
        }
        // 16 units: 6 above the free tier → 3.00.
        assert_eq!(total, dec!(3.0));
        let whole = price_running(&model, AggregationType::SumAgg, &running, &period).unwrap();
        assert_eq!(
            (whole.units, whole.events_count, whole.amount),
            (dec!(16), 4, total)
        );
        let eur = Currency::parse("EUR").unwrap();
        assert_eq!(whole.rounded(eur, RoundingMode::HalfUp).to_string(), "3.00");
    }

    #[test]
    fn an_event_that_cannot_be_aggregated_changes_nothing() {
        let model = ChargeModel::from_lago("standard", &json!({"amount": "1"})).unwrap();
        let mut running = RunningAggregate::default();
        let ts: DateTime<Utc> = "2026-01-11T00:00:00Z".parse().unwrap();
        assert!(apply_and_price(
            &model,
            AggregationType::SumAgg,
            &mut running,
            (None, ts, "e"),
            &january()
        )
        .is_err());
        assert_eq!(running, RunningAggregate::default());
    }
}
