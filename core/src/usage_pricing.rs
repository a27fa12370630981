//! Pricing of usage as it accumulates: the one place where a running aggregate becomes money. Rating calls
//! [`apply_and_price`] for each event (the marginal amount it records in analytics) and the usage API calls
//! [`price_running`] to show the period so far; both therefore price a value the same way.
//!
//! A running aggregate keeps no per-event values, so the percentage options that need them (per-transaction
//! minimum and maximum, free units per events) cannot be priced from it: [`price_running`] then returns
//! [`Error::MissingInput`](crate::Error::MissingInput), and [`apply_and_price`] returns no marginal amount. The
//! invoice prices such charges from the events themselves.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

use crate::aggregation::{AggregationType, RunningAggregate};
use crate::charge::{ChargeModel, Usage};
use crate::currency::Currency;
use crate::error::Result;
use crate::money::{round_to_minor, RoundingMode};

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

/// The billing period a running aggregate covers, as instants: `[start, end)`.
pub type Span = (DateTime<Utc>, DateTime<Utc>);

/// Prices the usage a running aggregate holds for its period under a charge model.
pub fn price_running(
    model: &ChargeModel,
    aggregation: AggregationType,
    running: &RunningAggregate,
    (start, end): Span,
) -> Result<PricedUsage> {
    let units = running.units(aggregation, None, start, end)?;
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
/// minus its price before, or `None` when the charge cannot be priced from a running aggregate (it needs per-event
/// values, or pricing overflows); the aggregate is updated either way, as it is the record of usage and the
/// amount only its analytics view. An error means the event cannot be aggregated (no value, overflow) and nothing
/// changed: [`RunningAggregate::apply`] fails before it changes anything. The aggregate is updated in place, never
/// copied, so a large unique-count set costs nothing per event.
pub fn apply_and_price(
    model: &ChargeModel,
    aggregation: AggregationType,
    running: &mut RunningAggregate,
    event: (Option<&str>, DateTime<Utc>, &str),
    period: Span,
) -> Result<Option<Decimal>> {
    let (raw, timestamp, event_id) = event;
    let price = |r: &RunningAggregate| price_running(model, aggregation, r, period).ok();
    let before = price(running);
    running.apply(aggregation, raw, timestamp, event_id, period.1)?;
    let after = price(running);
    Ok(before
        .zip(after)
        .and_then(|(b, a)| a.amount.checked_sub(b.amount)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::period::{BillingTime, Interval, Schedule};
    use chrono_tz::Tz;
    use rust_decimal_macros::dec;
    use serde_json::json;

    fn january() -> Span {
        let t: DateTime<Utc> = "2026-01-10T00:00:00Z".parse().unwrap();
        let p = Schedule::new(Interval::Monthly, BillingTime::Calendar, t, Tz::UTC)
            .unwrap()
            .period_containing(t)
            .unwrap();
        (p.start, p.end)
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
                period,
            )
            .unwrap()
            .unwrap();
        }
        // 16 units: 6 above the free tier → 3.00.
        assert_eq!(total, dec!(3.0));
        let whole = price_running(&model, AggregationType::SumAgg, &running, period).unwrap();
        assert_eq!(
            (whole.units, whole.events_count, whole.amount),
            (dec!(16), 4, total)
        );
        let eur = Currency::parse("EUR").unwrap();
        assert_eq!(whole.rounded(eur, RoundingMode::HalfUp).to_string(), "3.00");
    }

    #[test]
    fn a_charge_that_needs_per_event_values_counts_usage_without_a_marginal_amount() {
        // Lago's per-transaction minimum needs each event's value, which a running aggregate does not keep.
        let model = ChargeModel::from_lago(
            "percentage",
            &json!({"rate": "1", "per_transaction_min_amount": "0.5"}),
        )
        .unwrap();
        let mut running = RunningAggregate::default();
        let ts: DateTime<Utc> = "2026-01-11T00:00:00Z".parse().unwrap();
        let marginal = apply_and_price(
            &model,
            AggregationType::SumAgg,
            &mut running,
            (Some("10"), ts, "e"),
            january(),
        )
        .unwrap();
        assert_eq!(marginal, None);
        assert_eq!((running.sum, running.events_count), (dec!(10), 1));
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
            january()
        )
        .is_err());
        assert_eq!(running, RunningAggregate::default());
    }
}
