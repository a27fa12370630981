//! Aggregation of a period's usage events into units.
//!
//! Every aggregation sorts the events by (timestamp, event id) first, so the result never depends on
//! the order the events arrived in.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::money::parse_decimal;

/// A usage event, in Lago's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Unique id of the event (the dedup key and the final tie-break).
    pub transaction_id: String,
    /// Code of the billable metric.
    pub code: String,
    /// Event time (RFC 3339).
    pub timestamp: DateTime<Utc>,
    /// Free-form properties; numbers may be JSON numbers or decimal strings.
    #[serde(default)]
    pub properties: serde_json::Map<String, Value>,
}

/// How events are aggregated (Lago names; the `_agg` suffix is optional).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggregationType {
    /// Number of events.
    #[serde(alias = "count")]
    CountAgg,
    /// Sum of `field_name`.
    #[serde(alias = "sum")]
    SumAgg,
    /// Largest `field_name` (0 without events).
    #[serde(alias = "max")]
    MaxAgg,
    /// Number of distinct values of `field_name`.
    #[serde(alias = "unique_count")]
    UniqueCountAgg,
    /// `field_name` of the latest event (by timestamp, then event id; 0 without events).
    #[serde(alias = "latest")]
    LatestAgg,
    /// Time-weighted sum: each event's `field_name` is an increment to a running total, and the result
    /// is Σ(running total × seconds it held) / seconds of the window.
    #[serde(alias = "weighted_sum")]
    WeightedSumAgg,
}

/// A billable metric: what to count and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metric {
    /// Code the events carry.
    pub code: String,
    /// Aggregation.
    pub aggregation_type: AggregationType,
    /// Property holding the value (all but count).
    #[serde(default)]
    pub field_name: Option<String>,
    /// Only events whose property equals one of the listed values count (all filters must match).
    #[serde(default)]
    pub filters: BTreeMap<String, Vec<String>>,
    /// Property whose value splits the usage into groups, each billed on its own line.
    #[serde(default)]
    pub group_by: Option<String>,
    /// Running total at the start of the window (weighted sum only).
    #[serde(default)]
    pub initial_value: Option<Decimal>,
}

/// The aggregated usage of one group.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Aggregate {
    /// Aggregated units.
    pub units: Decimal,
    /// Number of matching events.
    pub events_count: u64,
    /// Per-event values in billing order (1 per event for count).
    pub event_values: Vec<Decimal>,
}

/// Text form of a property, used by filters, grouping and unique counts.
fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn number(e: &Event, field: &str) -> Result<Decimal> {
    let raw = e.properties.get(field).and_then(text).ok_or_else(|| {
        Error::InvalidRequest(format!(
            "event {} has no numeric property {field:?}",
            e.transaction_id
        ))
    })?;
    parse_decimal(field, &raw)
}

impl Metric {
    /// Checks the metric: every aggregation but count needs a field.
    pub fn validate(&self) -> Result<()> {
        if self.aggregation_type != AggregationType::CountAgg && self.field_name.is_none() {
            return Err(Error::InvalidRequest(format!(
                "metric {}: {:?} needs field_name",
                self.code, self.aggregation_type
            )));
        }
        Ok(())
    }

    fn matches(&self, e: &Event, from: DateTime<Utc>, to: DateTime<Utc>) -> bool {
        e.code == self.code
            && from <= e.timestamp
            && e.timestamp < to
            && self.filters.iter().all(|(k, allowed)| {
                e.properties
                    .get(k)
                    .and_then(text)
                    .is_some_and(|v| allowed.contains(&v))
            })
    }

    /// Aggregates the events in `[from, to)` per group (the key is `None` without `group_by`, or for
    /// events that lack the grouping property).
    pub fn aggregate(
        &self,
        events: &[Event],
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<BTreeMap<Option<String>, Aggregate>> {
        self.validate()?;
        let mut selected: Vec<&Event> = events
            .iter()
            .filter(|e| self.matches(e, from, to))
            .collect();
        selected.sort_by(|a, b| {
            (a.timestamp, &a.transaction_id).cmp(&(b.timestamp, &b.transaction_id))
        });
        let mut groups: BTreeMap<Option<String>, Vec<&Event>> = BTreeMap::new();
        for e in selected {
            let key = self
                .group_by
                .as_ref()
                .and_then(|g| e.properties.get(g).and_then(text));
            groups.entry(key).or_default().push(e);
        }
        if groups.is_empty() && self.group_by.is_none() {
            groups.insert(None, Vec::new());
        }
        groups
            .into_iter()
            .map(|(k, evs)| Ok((k, self.aggregate_sorted(&evs, from, to)?)))
            .collect()
    }

    fn aggregate_sorted(
        &self,
        evs: &[&Event],
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Aggregate> {
        let field = self.field_name.as_deref().unwrap_or_default();
        let values: Vec<Decimal> = match self.aggregation_type {
            AggregationType::CountAgg | AggregationType::UniqueCountAgg => {
                vec![Decimal::ONE; evs.len()]
            }
            _ => evs
                .iter()
                .map(|e| number(e, field))
                .collect::<Result<_>>()?,
        };
        let sum = |vs: &[Decimal]| -> Result<Decimal> {
            vs.iter()
                .try_fold(Decimal::ZERO, |a, v| a.checked_add(*v))
                .ok_or(Error::Overflow("aggregation"))
        };
        let units = match self.aggregation_type {
            AggregationType::CountAgg => Decimal::from(evs.len()),
            AggregationType::SumAgg => sum(&values)?,
            AggregationType::MaxAgg => values.iter().copied().max().unwrap_or_default(),
            AggregationType::LatestAgg => values.last().copied().unwrap_or_default(),
            AggregationType::UniqueCountAgg => {
                let distinct: BTreeSet<String> = evs
                    .iter()
                    .filter_map(|e| e.properties.get(field).and_then(text))
                    // 1, 1.0 and "1.00" are the same value.
                    .map(|s| unique_key(&s))
                    .collect();
                Decimal::from(distinct.len())
            }
            AggregationType::WeightedSumAgg => weighted_sum(
                evs,
                &values,
                self.initial_value.unwrap_or_default(),
                from,
                to,
            )?,
        };
        Ok(Aggregate {
            units,
            events_count: evs.len() as u64,
            event_values: values,
        })
    }
}

/// The form under which unique counts compare values: 1, 1.0 and "1.00" are the same value.
pub fn unique_key(raw: &str) -> String {
    raw.parse::<Decimal>()
        .map_or_else(|_| raw.to_owned(), |d| d.normalize().to_string())
}

impl Metric {
    /// Whether an event's properties pass every filter (`get` looks a property up as text).
    pub fn passes_filters<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.filters
            .iter()
            .all(|(k, allowed)| get(k).is_some_and(|v| allowed.iter().any(|a| a == v)))
    }
}

/// The latest event seen by a running aggregate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latest {
    /// Its time.
    pub timestamp: DateTime<Utc>,
    /// Its id (the tie-break).
    pub event_id: String,
    /// Its value.
    pub value: Decimal,
}

/// The state of one aggregation kept while events stream in, one event at a time and in any order.
/// [`RunningAggregate::units`] equals [`Metric::aggregate`] over the same events: a property test proves it.
///
/// Every field is order-independent: sums, a maximum, a set, the greatest (timestamp, event id), and for the
/// time-weighted sum the integral Σ increment × (period end − event second), which is what the batch
/// computation adds up once the initial value is set aside.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RunningAggregate {
    /// Events applied.
    pub events_count: u64,
    /// Sum of values.
    pub sum: Decimal,
    /// Largest value.
    pub max: Option<Decimal>,
    /// Latest event.
    pub latest: Option<Latest>,
    /// Distinct values, in [`unique_key`] form.
    pub unique: BTreeSet<String>,
    /// Σ increment × seconds from the event's second to the period end.
    pub weighted_integral: Decimal,
}

impl RunningAggregate {
    /// Apply one event: `raw` is the text of the metric's field (ignored by count), `period_end` the end of the
    /// event's billing period.
    pub fn apply(
        &mut self,
        aggregation: AggregationType,
        raw: Option<&str>,
        timestamp: DateTime<Utc>,
        event_id: &str,
        period_end: DateTime<Utc>,
    ) -> Result<()> {
        let overflow = Error::Overflow("aggregation");
        let value = || -> Result<Decimal> {
            let raw =
                raw.ok_or_else(|| Error::InvalidRequest(format!("event {event_id} has no value")))?;
            parse_decimal("value", raw)
        };
        match aggregation {
            AggregationType::CountAgg => {}
            AggregationType::SumAgg => self.sum = self.sum.checked_add(value()?).ok_or(overflow)?,
            AggregationType::MaxAgg => {
                let v = value()?;
                self.max = Some(self.max.map_or(v, |m| m.max(v)));
            }
            AggregationType::LatestAgg => {
                let v = value()?;
                let newer = self
                    .latest
                    .as_ref()
                    .is_none_or(|l| (timestamp, event_id) > (l.timestamp, l.event_id.as_str()));
                if newer {
                    self.latest = Some(Latest {
                        timestamp,
                        event_id: event_id.to_owned(),
                        value: v,
                    });
                }
            }
            AggregationType::UniqueCountAgg => {
                let raw = raw.ok_or_else(|| {
                    Error::InvalidRequest(format!("event {event_id} has no value"))
                })?;
                self.unique.insert(unique_key(raw));
            }
            AggregationType::WeightedSumAgg => {
                let held = Decimal::from(period_end.timestamp() - timestamp.timestamp());
                let w = value()?.checked_mul(held).ok_or(overflow.clone())?;
                self.weighted_integral = self.weighted_integral.checked_add(w).ok_or(overflow)?;
            }
        }
        self.events_count += 1;
        Ok(())
    }

    /// Whether [`RunningAggregate::apply`] would succeed, without changing anything: the value parses and no sum
    /// overflows. Lets a caller that updates several aggregates for one event refuse the event whole.
    pub fn check(
        &self,
        aggregation: AggregationType,
        raw: Option<&str>,
        timestamp: DateTime<Utc>,
        event_id: &str,
        period_end: DateTime<Utc>,
    ) -> Result<()> {
        let mut scratch = RunningAggregate {
            sum: self.sum,
            weighted_integral: self.weighted_integral,
            ..Default::default()
        };
        // Unique values and the latest event cannot overflow; only their raw value needs to be present.
        let aggregation = match aggregation {
            AggregationType::UniqueCountAgg
            | AggregationType::LatestAgg
            | AggregationType::MaxAgg => {
                if aggregation != AggregationType::UniqueCountAgg {
                    parse_decimal("value", raw.unwrap_or_default())?;
                }
                return Ok(());
            }
            other => other,
        };
        scratch.apply(aggregation, raw, timestamp, event_id, period_end)
    }

    /// The aggregated units over `[from, to)`; `initial` is the running total at `from` (weighted sum only).
    pub fn units(
        &self,
        aggregation: AggregationType,
        initial: Option<Decimal>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Decimal> {
        Ok(match aggregation {
            AggregationType::CountAgg => Decimal::from(self.events_count),
            AggregationType::SumAgg => self.sum,
            AggregationType::MaxAgg => self.max.unwrap_or_default(),
            AggregationType::LatestAgg => self.latest.as_ref().map(|l| l.value).unwrap_or_default(),
            AggregationType::UniqueCountAgg => Decimal::from(self.unique.len()),
            AggregationType::WeightedSumAgg => {
                let total = (to - from).num_seconds();
                if total <= 0 {
                    return Ok(Decimal::ZERO);
                }
                let w = Decimal::from(total);
                let base = initial
                    .unwrap_or_default()
                    .checked_mul(w)
                    .ok_or(Error::Overflow("weighted sum"))?;
                base.checked_add(self.weighted_integral)
                    .ok_or(Error::Overflow("weighted sum"))?
                    / w
            }
        })
    }
}

/// Σ(running total × whole seconds held) / seconds of `[from, to)`; timestamps are truncated to the
/// second so that events in the same second weigh the same whatever their order.
fn weighted_sum(
    evs: &[&Event],
    increments: &[Decimal],
    initial: Decimal,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Decimal> {
    let total = (to - from).num_seconds();
    if total <= 0 {
        return Ok(Decimal::ZERO);
    }
    let secs = |t: DateTime<Utc>| t.timestamp();
    let (mut running, mut cursor, mut acc) = (initial, secs(from), Decimal::ZERO);
    let overflow = Error::Overflow("weighted sum");
    for (e, inc) in evs.iter().zip(increments) {
        let t = secs(e.timestamp);
        let held = running
            .checked_mul(Decimal::from(t - cursor))
            .ok_or(overflow.clone())?;
        acc = acc.checked_add(held).ok_or(overflow.clone())?;
        running = running.checked_add(*inc).ok_or(overflow.clone())?;
        cursor = t;
    }
    let held = running
        .checked_mul(Decimal::from(secs(to) - cursor))
        .ok_or(overflow.clone())?;
    acc = acc.checked_add(held).ok_or(overflow)?;
    Ok(acc / Decimal::from(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rust_decimal_macros::dec;
    use serde_json::json;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn ev(id: &str, ts: &str, props: Value) -> Event {
        Event {
            transaction_id: id.into(),
            code: "m".into(),
            timestamp: utc(ts),
            properties: props.as_object().unwrap().clone(),
        }
    }

    fn metric(agg: AggregationType, field: Option<&str>) -> Metric {
        Metric {
            code: "m".into(),
            aggregation_type: agg,
            field_name: field.map(String::from),
            filters: BTreeMap::new(),
            group_by: None,
            initial_value: None,
        }
    }

    fn events() -> Vec<Event> {
        vec![
            ev(
                "a",
                "2026-01-02T00:00:00Z",
                json!({"gb": 3, "region": "eu", "user": "u1"}),
            ),
            ev(
                "b",
                "2026-01-03T00:00:00Z",
                json!({"gb": "1.5", "region": "us", "user": "u2"}),
            ),
            ev(
                "c",
                "2026-01-03T00:00:00Z",
                json!({"gb": 2, "region": "eu", "user": "u1"}),
            ),
            ev(
                "z",
                "2026-02-01T00:00:00Z",
                json!({"gb": 100, "region": "eu", "user": "u3"}),
            ),
        ]
    }

    fn run(m: &Metric) -> Decimal {
        let all = m
            .aggregate(
                &events(),
                utc("2026-01-01T00:00:00Z"),
                utc("2026-02-01T00:00:00Z"),
            )
            .unwrap();
        all[&None].units
    }

    #[test]
    fn count_sum_max_latest_unique() {
        assert_eq!(run(&metric(AggregationType::CountAgg, None)), dec!(3));
        assert_eq!(run(&metric(AggregationType::SumAgg, Some("gb"))), dec!(6.5));
        assert_eq!(run(&metric(AggregationType::MaxAgg, Some("gb"))), dec!(3));
        // b and c share a timestamp; the larger event id wins.
        assert_eq!(
            run(&metric(AggregationType::LatestAgg, Some("gb"))),
            dec!(2)
        );
        assert_eq!(
            run(&metric(AggregationType::UniqueCountAgg, Some("user"))),
            dec!(2)
        );
    }

    #[test]
    fn no_events_give_zero() {
        let m = metric(AggregationType::MaxAgg, Some("gb"));
        let r = m
            .aggregate(
                &[],
                utc("2026-01-01T00:00:00Z"),
                utc("2026-02-01T00:00:00Z"),
            )
            .unwrap();
        assert_eq!(r[&None], Aggregate::default());
        assert!(metric(AggregationType::SumAgg, None).validate().is_err());
    }

    #[test]
    fn filters_and_grouping() {
        let mut m = metric(AggregationType::SumAgg, Some("gb"));
        m.filters.insert("region".into(), vec!["eu".into()]);
        assert_eq!(run(&m), dec!(5));
        m.filters.clear();
        m.group_by = Some("region".into());
        let r = m
            .aggregate(
                &events(),
                utc("2026-01-01T00:00:00Z"),
                utc("2026-02-01T00:00:00Z"),
            )
            .unwrap();
        assert_eq!(r[&Some("eu".to_string())].units, dec!(5));
        assert_eq!(r[&Some("us".to_string())].units, dec!(1.5));
        assert_eq!(
            r[&Some("eu".to_string())].event_values,
            vec![dec!(3), dec!(2)]
        );
    }

    #[test]
    fn weighted_sum_weights_the_running_total_by_seconds() {
        // Window of 10 days; initial 2; +3 after 2 days; -4 after 7 days.
        // 2×2d + 5×5d + 1×3d = 4 + 25 + 3 = 32 unit-days over 10 days = 3.2.
        let mut m = metric(AggregationType::WeightedSumAgg, Some("v"));
        m.initial_value = Some(dec!(2));
        let evs = vec![
            ev("1", "2026-01-03T00:00:00Z", json!({"v": 3})),
            ev("2", "2026-01-08T00:00:00Z", json!({"v": -4})),
        ];
        let r = m
            .aggregate(
                &evs,
                utc("2026-01-01T00:00:00Z"),
                utc("2026-01-11T00:00:00Z"),
            )
            .unwrap();
        assert_eq!(r[&None].units, dec!(3.2));
    }

    #[test]
    fn check_refuses_what_would_overflow_without_changing_anything() {
        let t = utc("2026-01-02T00:00:00Z");
        let end = utc("2026-02-01T00:00:00Z");
        let max = "79228162514264337593543950335";
        let mut r = RunningAggregate::default();
        r.apply(AggregationType::SumAgg, Some(max), t, "a", end)
            .unwrap();
        let before = r.clone();
        assert!(r
            .check(AggregationType::SumAgg, Some("1"), t, "b", end)
            .is_err());
        assert!(r
            .check(AggregationType::SumAgg, Some("abc"), t, "b", end)
            .is_err());
        assert!(r
            .check(AggregationType::MaxAgg, Some(max), t, "b", end)
            .is_ok());
        assert!(r
            .check(AggregationType::WeightedSumAgg, Some(max), t, "b", end)
            .is_err());
        assert!(r
            .check(
                AggregationType::UniqueCountAgg,
                Some("anything"),
                t,
                "b",
                end
            )
            .is_ok());
        assert_eq!(r, before);
    }

    proptest! {
        #[test]
        fn results_do_not_depend_on_event_order(
            vals in prop::collection::vec((0i64..1000, 0u32..5, 0u32..3), 0..30),
            seed in any::<u64>(),
        ) {
            let base = utc("2026-01-01T00:00:00Z");
            let evs: Vec<Event> = vals.iter().enumerate().map(|(i, (v, day, region))| Event {
                transaction_id: format!("e{i}"),
                code: "m".into(),
                timestamp: base + chrono::Duration::days(i64::from(*day)),
                properties: json!({"v": v, "r": region.to_string()}).as_object().unwrap().clone(),
            }).collect();
            let mut shuffled = evs.clone();
            // Deterministic shuffle driven by the seed.
            let n = shuffled.len();
            let mut s = seed;
            for i in (1..n).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (s >> 33) as usize % (i + 1));
            }
            for agg in [AggregationType::CountAgg, AggregationType::SumAgg, AggregationType::MaxAgg,
                        AggregationType::UniqueCountAgg, AggregationType::LatestAgg, AggregationType::WeightedSumAgg] {
                let mut m = metric(agg, Some("v"));
                m.group_by = Some("r".into());
                let to = base + chrono::Duration::days(10);
                prop_assert_eq!(m.aggregate(&evs, base, to).unwrap(), m.aggregate(&shuffled, base, to).unwrap());
            }
        }

        #[test]
        fn running_aggregate_equals_the_batch_aggregate_in_any_order(
            vals in prop::collection::vec((-500i64..1000, 0u32..3, 0u32..86_400, 0u32..4), 0..40),
            seed in any::<u64>(),
            initial in 0i64..50,
        ) {
            let base = utc("2026-01-01T00:00:00Z");
            let to = base + chrono::Duration::days(3);
            let evs: Vec<Event> = vals.iter().enumerate().map(|(i, (v, day, sec, u))| Event {
                // Ids repeat timestamps often enough to exercise the tie-break.
                transaction_id: format!("e{:02}", (i * 7) % 40),
                code: "m".into(),
                timestamp: base + chrono::Duration::days(i64::from(*day)) + chrono::Duration::seconds(i64::from(*sec / 3600 * 3600)),
                properties: json!({"v": format!("{}.{:02}", v, u * 25), "u": u.to_string()}).as_object().unwrap().clone(),
            }).collect();
            let mut order: Vec<usize> = (0..evs.len()).collect();
            let mut s = seed;
            for i in (1..order.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                order.swap(i, (s >> 33) as usize % (i + 1));
            }
            for (agg, field) in [(AggregationType::CountAgg, "v"), (AggregationType::SumAgg, "v"), (AggregationType::MaxAgg, "v"),
                        (AggregationType::UniqueCountAgg, "u"), (AggregationType::LatestAgg, "v"), (AggregationType::WeightedSumAgg, "v")] {
                let mut m = metric(agg, Some(field));
                m.initial_value = Some(Decimal::from(initial));
                let batch = m.aggregate(&evs, base, to).unwrap()[&None].units;
                let mut running = RunningAggregate::default();
                for &i in &order {
                    let e = &evs[i];
                    let raw = e.properties.get(field).and_then(text);
                    running.apply(agg, raw.as_deref(), e.timestamp, &e.transaction_id, to).unwrap();
                }
                prop_assert_eq!(running.units(agg, m.initial_value, base, to).unwrap(), batch, "{:?}", agg);
            }
        }
    }
}
