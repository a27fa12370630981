//! Rating one usage message, as a pure step: decode → validate (the wire rules of `billing_schemas::validate`,
//! then rating's own) → attribute (the core's attribution over the reference data) → aggregate and price (the
//! core's `apply_and_price`) → the analytics row. No I/O: the pipeline loads the customer's stored usage first and
//! makes the result durable later. A rejection changes nothing, so the pipeline may rate a message again after
//! reading the reference topics further.

use billing_core::aggregation::{unique_key, AggregationType};
use billing_core::usage_pricing::apply_and_price;
use billing_schemas::usage::UsageEvent;
use billing_store::usage::CustomerUsage;
use billing_store::usage_aggregates::{aggregation_name, AggKeyRef, AggState, BLOCK_SUBSCRIPTION};
use billing_store::usage_dedup::IdHash;
use billing_store::usage_events::UsageEventRow;
use chrono::{DateTime, TimeZone, Utc};
use rust_decimal::Decimal;

use crate::validate::{check_time, decode_event, metric_value, numeric, Rejection};
use billing_schemas::reference::{AttributionMemo, Reference};

/// A Kafka message as rating sees it.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// Key (`tenant/customer`).
    pub key: Option<&'a [u8]>,
    /// Value.
    pub payload: &'a [u8],
    /// The `content-type` header, if any.
    pub content_type: Option<&'a [u8]>,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Kafka's timestamp (append time on `billing.usage`), millis.
    pub timestamp_ms: Option<i64>,
    /// Today by the wall clock (days since the epoch), the day its id is counted on if it is counted: read once per
    /// batch by the pipeline, not per event (clock reads were 4 % of rating's loop on this machine).
    pub today: u32,
}

/// Limits from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest payload accepted.
    pub max_event_bytes: usize,
    /// How far an event time may be after its append time.
    pub max_future: chrono::Duration,
    /// Partitions of `billing.usage` (`kafka.partitions`), to check each record is on its key's partition.
    pub partitions: i32,
    /// Usage older than this on its customer's clock is refused (`period_closed`).
    pub late_usage_horizon: chrono::Duration,
    /// Distinct values a unique-count aggregate counts at most (`unique_count_limit` past it).
    pub max_unique_values: usize,
}

/// A decoded, valid event and when Kafka received it.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// The event.
    pub event: UsageEvent,
    /// Kafka's append time (the event time when the message has none).
    pub received: DateTime<Utc>,
    /// The day its id is counted on ([`Message::today`]).
    pub today: u32,
}

/// What rating an event changed.
#[derive(Debug)]
pub enum Rated {
    /// Its id was already counted for the customer: nothing changed.
    Duplicate,
    /// Counted before a crash in at least one of its aggregates (which already include its offset): no new
    /// ClickHouse row. Aggregates the crash left behind are brought up to date and must be written.
    Replayed {
        /// Its id, as the next checkpoint stores it.
        counted: IdHash,
        /// Aggregates changed, by their index in the customer's
        /// [`billing_store::usage_aggregates::Aggregates`].
        touched: Vec<usize>,
        /// Unique values added, with their aggregate's index.
        new_unique: Vec<(usize, String)>,
    },
    /// Counted now.
    Accepted {
        /// Its id, as the next checkpoint stores it.
        counted: IdHash,
        /// The row for ClickHouse.
        row: Box<UsageEventRow>,
        /// Aggregates changed, by their index in the customer's
        /// [`billing_store::usage_aggregates::Aggregates`].
        touched: Vec<usize>,
        /// Unique values added, with their aggregate's index.
        new_unique: Vec<(usize, String)>,
        /// A charge it counts for cannot be priced from running usage (per-event options, or units the model
        /// refuses): its row's amount leaves that charge out; the invoice prices it from the events.
        unpriced: bool,
    },
}

/// Decode and validate what needs no reference data or state.
pub fn decode(m: &Message<'_>, limits: &Limits) -> Result<Decoded, Rejection> {
    let event = decode_event(m.key, m.payload, m.content_type, limits.max_event_bytes)?;
    // decode_event checked the key is the customer's.
    let key = m.key.unwrap_or_default();
    let expected = billing_runtime::kafka::partition_for_key(key, limits.partitions);
    if m.partition != expected {
        return Err(Rejection::WrongPartition {
            key: String::from_utf8_lossy(key).into_owned(),
            expected,
            found: m.partition,
        });
    }
    let received = m
        .timestamp_ms
        .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
        .unwrap_or(event.timestamp);
    check_time(&event, received, limits.max_future)?;
    Ok(Decoded {
        event,
        received,
        today: m.today,
    })
}

/// Attribute, aggregate and price one decoded event against the customer's usage (which must be the loaded
/// usage of the event's customer). On a rejection nothing has changed.
pub fn apply(
    d: &Decoded,
    reference: &Reference,
    usage: &mut CustomerUsage,
    memo: &mut Option<AttributionMemo>,
    partition: i32,
    offset: i64,
    limits: &Limits,
) -> Result<Rated, Rejection> {
    let horizon = limits.late_usage_horizon;
    let ev = &d.event;
    let counted = IdHash::of(&ev.event_id);
    // Applied by a checkpoint whose aggregates are stored but whose dedup ids a crash lost: counted already, whatever
    // the reference data attributes it to now (checked first, so it is neither re-attributed nor refused).
    if usage
        .window
        .as_ref()
        .is_some_and(|w| w.applied(partition, offset))
    {
        if usage.seen.contains(&counted) {
            return Ok(Rated::Duplicate);
        }
        usage.seen.insert_on(counted, d.today);
        return Ok(Rated::Replayed {
            counted,
            touched: Vec::new(),
            new_unique: Vec::new(),
        });
    }
    let metric = reference
        .metric(&ev.tenant_id, &ev.metric_code)
        .ok_or_else(|| Rejection::UnknownMetric(ev.metric_code.clone()))?;
    let attribution =
        reference.attribute_memo(&ev.tenant_id, &ev.customer_id, ev.timestamp, memo)?;
    // An empty subscription id is how a customer's dedup blocks are keyed in its aggregates partition: no aggregate
    // may have one (a lifecycle producer that sends one gets its usage dead-lettered, not mixed with the blocks).
    if attribution.subscription_id == BLOCK_SUBSCRIPTION {
        return Err(Rejection::Unaggregatable(
            "the subscription in force has an empty id".into(),
        ));
    }
    let agg_type = metric.aggregation_type;
    let raw = metric_value(ev, agg_type, metric.field_name.as_deref())?;
    if usage.seen.contains(&counted) {
        return Ok(Rated::Duplicate);
    }
    let period = attribution.period;
    let get = |k: &str| ev.properties.get(k).map(String::as_str);
    let passes = metric.passes_filters(get);
    let targets: Vec<_> = attribution
        .plan
        .charges
        .iter()
        .filter(|c| passes && c.charge.metric_code == ev.metric_code)
        .map(|charge| {
            let group_key = charge
                .charge
                .group_by
                .as_deref()
                .and_then(get)
                .unwrap_or_default();
            let key = AggKeyRef {
                subscription_id: &attribution.subscription_id,
                charge_id: &charge.charge.id,
                period_start: period.start,
                group_key,
            };
            // Found by its borrowed parts: one hash, no copy, for an aggregate the customer has.
            let found = usage.aggregates.get_index_of(&key);
            (charge, key, found)
        })
        .collect();
    // Refuse the event whole, before any state changes, if one of its aggregates would overflow. (This also says
    // whether a checkpoint counted the event already.)
    let mut counted_before = false;
    for (_, key, found) in &targets {
        let empty = Default::default();
        let state = found.map(|i| &usage.aggregates[i]);
        counted_before |=
            state.is_some_and(|s| s.last_partition == partition && offset <= s.last_offset);
        let running = state.map_or(&empty, |s| &s.running);
        if let Err(e) = running.check(agg_type, raw, ev.timestamp, &ev.event_id, period.end) {
            return Err(Rejection::Unaggregatable(e.to_string()));
        }
        // A unique-count set is exact and held whole in memory, up to the limit.
        if agg_type == AggregationType::UniqueCountAgg
            && running.unique.len() >= limits.max_unique_values
            && raw.is_some_and(|v| !running.unique.contains(&unique_key(v)))
        {
            return Err(Rejection::UniqueCountLimit {
                charge: key.charge_id.to_owned(),
                limit: limits.max_unique_values,
            });
        }
    }
    // Usage older than the horizon on its customer's clock is refused, unless a checkpoint already counted it (a
    // replay after a crash must not dead-letter what the aggregates hold). No clock is past the latest one, so usage
    // within the horizon of that one needs no look at its customer's clock.
    let maybe_closed = reference.latest_clock().is_some_and(|latest| {
        latest
            .checked_sub_signed(horizon)
            .is_some_and(|limit| ev.timestamp < limit)
    });
    if let Some(now) = maybe_closed
        .then(|| reference.clock_now(&ev.tenant_id, &ev.customer_id))
        .flatten()
    {
        let closed = now
            .checked_sub_signed(horizon)
            .is_some_and(|limit| ev.timestamp < limit);
        if closed && !counted_before {
            return Err(Rejection::PeriodClosed {
                timestamp: ev.timestamp,
                now,
                horizon_days: horizon.num_days(),
            });
        }
    }
    // Each aggregate was checked above, so applying cannot fail half-way: the event counts whole or not at all.
    usage.seen.insert_on(counted, d.today);
    let mut amount = Decimal::ZERO;
    let (mut touched, mut new_unique) = (Vec::new(), Vec::new());
    let (mut replayed, mut unpriced) = (false, false);
    for (charge, key, found) in targets {
        // The key is copied only for an aggregate new to the customer (looked up again: two charges of a plan may
        // not name the same aggregate, but if they did, they would share it as they always have).
        let index = match found.or_else(|| usage.aggregates.get_index_of(&key)) {
            Some(i) => i,
            None => {
                let state = AggState {
                    period_end: period.end,
                    metric_code: ev.metric_code.clone(),
                    aggregation: aggregation_name(agg_type).to_owned(),
                    charge_model: charge.model.name().to_owned(),
                    charge_properties: charge.charge.properties.clone(),
                    currency: attribution.plan.currency.code().to_owned(),
                    running: Default::default(),
                    last_partition: partition,
                    last_offset: -1,
                };
                usage.aggregates.insert_full(key.to_owned(), state).0
            }
        };
        let state = &mut usage.aggregates[index];
        if state.last_partition == partition && offset <= state.last_offset {
            replayed = true;
            continue;
        }
        let unique_before = state.running.unique.len();
        let marginal = apply_and_price(
            &charge.model,
            agg_type,
            &mut state.running,
            (raw, ev.timestamp, &ev.event_id),
            (period.start, period.end),
        )
        .map_err(|e| Rejection::Unaggregatable(e.to_string()))?;
        // A charge that cannot be priced from running usage (per-event options) adds 0 to the analytics amount,
        // and the event says so (counted by the pipeline).
        match marginal {
            Some(m) => amount += m,
            None => unpriced = true,
        }
        if state.running.unique.len() > unique_before {
            if let Some(v) = raw {
                new_unique.push((index, unique_key(v)));
            }
        }
        state.last_partition = partition;
        state.last_offset = offset;
        touched.push(index);
    }
    if replayed {
        return Ok(Rated::Replayed {
            counted,
            touched,
            new_unique,
        });
    }
    let row = UsageEventRow {
        tenant_id: ev.tenant_id.clone(),
        event_id: ev.event_id.clone(),
        customer_id: ev.customer_id.clone(),
        subscription_id: attribution.subscription_id.clone(),
        metric_code: ev.metric_code.clone(),
        timestamp: epoch_seconds(ev.timestamp.timestamp()),
        ingested_at: epoch_seconds(d.received.timestamp()),
        value: billing_runtime::clickhouse::to_decimal_38_9(numeric(raw)),
        amount: billing_runtime::clickhouse::to_decimal_38_9(amount),
        currency: attribution.plan.currency.code().to_owned(),
        properties: serde_json::to_string(&ev.properties)
            .map_err(|e| Rejection::Unaggregatable(e.to_string()))?,
        kafka_partition: u16::try_from(partition).unwrap_or(u16::MAX),
        kafka_offset: u64::try_from(offset).unwrap_or_default(),
        unpriced: u8::from(unpriced),
    };
    Ok(Rated::Accepted {
        counted,
        row: Box::new(row),
        touched,
        new_unique,
        unpriced,
    })
}

fn epoch_seconds(s: i64) -> u32 {
    u32::try_from(s).unwrap_or(if s < 0 { 0 } else { u32::MAX })
}

#[cfg(test)]
mod tests {
    use super::*;
    use billing_schemas::catalog::{
        Aggregation, CatalogEvent, Charge, ChargeModel, Interval, Plan,
    };
    use billing_schemas::lifecycle::{
        CustomerCreated, Lifecycle, LifecycleEvent, SubscriptionEffective,
    };
    use billing_store::usage_aggregates::AppliedWindow;
    use rust_decimal_macros::dec;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn reference() -> Reference {
        reference_with(vec![
            Charge::on_metric("c", "gb", ChargeModel::Standard, r#"{"amount":"0.5"}"#),
            Charge::on_metric("c2", "gb", ChargeModel::Standard, r#"{"amount":"0"}"#),
        ])
    }

    fn reference_with(charges: Vec<Charge>) -> Reference {
        reference_of(Aggregation::Sum, charges)
    }

    /// The customer `c1` subscribed to a plan of `charges`, on the metric `gb` aggregating `value` with
    /// `aggregation`.
    fn reference_of(aggregation: Aggregation, charges: Vec<Charge>) -> Reference {
        let mut r = Reference::for_attribution();
        let start = at("2026-01-01T00:00:00Z");
        r.apply_catalog(CatalogEvent::metric(
            "t",
            start,
            "gb",
            aggregation,
            Some("value"),
            vec![],
        ))
        .unwrap();
        r.apply_catalog(CatalogEvent::plan(
            "t",
            start,
            Plan {
                version: 1,
                effective_from: None,
                tax_codes: vec![],
                code: "p".into(),
                name: "P".into(),
                interval: Interval::Monthly,
                currency: "EUR".into(),
                amount: "10".into(),
                pay_in_advance: false,
                trial_period_days: 0,
                charges,
            },
        ))
        .unwrap();
        for ev in LifecycleEvent::customer_subscribed(
            "t",
            CustomerCreated::new("c1", "C", "EUR", "UTC"),
            "s1",
            "p",
            start,
        ) {
            r.apply_lifecycle(ev).unwrap();
        }
        for (pause, when) in [
            (true, "2026-01-10T00:00:00Z"),
            (false, "2026-01-20T00:00:00Z"),
        ] {
            let e = SubscriptionEffective {
                subscription_id: "s1".into(),
                customer_id: "c1".into(),
                effective_at: at(when),
            };
            r.apply_lifecycle(LifecycleEvent {
                tenant_id: "t".into(),
                event_id: format!("change-{when}"),
                occurred_at: at(when),
                payload: if pause {
                    Lifecycle::SubscriptionPaused(e)
                } else {
                    Lifecycle::SubscriptionResumed(e)
                },
            })
            .unwrap();
        }
        r
    }

    const LIMITS: Limits = Limits {
        max_event_bytes: 10_000,
        max_future: chrono::Duration::hours(24),
        partitions: 12,
        late_usage_horizon: chrono::Duration::days(365),
        max_unique_values: 3,
    };

    fn message(payload: &str, offset: i64) -> (Vec<u8>, i64) {
        (payload.as_bytes().to_vec(), offset)
    }

    fn rate_one(
        r: &Reference,
        usage: &mut CustomerUsage,
        id: &str,
        ts: &str,
        value: &str,
        offset: i64,
    ) -> Result<Rated, Rejection> {
        let ms = at(ts).timestamp_millis();
        let (payload, offset) = message(
            &format!(
                r#"{{"tenant_id":"t","event_id":"{id}","customer_id":"c1","metric_code":"gb","timestamp":{ms},"properties":{{"value":"{value}"}}}}"#
            ),
            offset,
        );
        let m = Message {
            key: Some(b"t/c1"),
            payload: &payload,
            content_type: None,
            partition: billing_runtime::kafka::partition_for_key(b"t/c1", 12),
            offset,
            timestamp_ms: Some(ms),
            today: billing_store::usage_dedup::day_of(Utc::now()),
        };
        let d = decode(&m, &LIMITS)?;
        apply(&d, r, usage, &mut None, m.partition, m.offset, &LIMITS)
    }

    #[test]
    fn usage_of_a_subscription_with_an_empty_id_is_refused_not_stored_as_a_dedup_block() {
        let mut r = reference();
        for ev in LifecycleEvent::customer_subscribed(
            "t",
            CustomerCreated::new("c9", "C", "EUR", "UTC"),
            BLOCK_SUBSCRIPTION,
            "p",
            at("2026-01-01T00:00:00Z"),
        ) {
            r.apply_lifecycle(ev).unwrap();
        }
        let ms = at("2026-01-05T00:00:00Z").timestamp_millis();
        let payload = format!(
            r#"{{"tenant_id":"t","event_id":"e","customer_id":"c9","metric_code":"gb","timestamp":{ms},"properties":{{"value":"1"}}}}"#
        );
        let m = Message {
            key: Some(b"t/c9"),
            payload: payload.as_bytes(),
            content_type: None,
            partition: billing_runtime::kafka::partition_for_key(b"t/c9", 12),
            offset: 3,
            timestamp_ms: Some(ms),
            today: billing_store::usage_dedup::day_of(Utc::now()),
        };
        let d = decode(&m, &LIMITS).unwrap();
        let mut usage = CustomerUsage::default();
        let err = apply(&d, &r, &mut usage, &mut None, m.partition, 3, &LIMITS).unwrap_err();
        assert!(matches!(err, Rejection::Unaggregatable(ref why) if why.contains("empty id")));
        assert!(usage.aggregates.is_empty() && usage.seen.is_empty());
        // The customer subscribed with an id is rated.
        assert!(rate_one(&r, &mut usage, "e1", "2026-01-05T00:00:00Z", "1", 4).is_ok());
    }

    #[test]
    fn a_record_on_another_partition_than_its_key_is_refused() {
        let payload = br#"{"tenant_id":"t","event_id":"e","customer_id":"c1","metric_code":"gb","timestamp":1767225600000,"properties":{"value":"1"}}"#;
        let home = billing_runtime::kafka::partition_for_key(b"t/c1", 12);
        let m = |partition| Message {
            key: Some(b"t/c1"),
            payload,
            content_type: None,
            partition,
            offset: 0,
            timestamp_ms: Some(1_767_225_600_000),
            today: billing_store::usage_dedup::day_of(Utc::now()),
        };
        assert!(decode(&m(home), &LIMITS).is_ok());
        let err = decode(&m((home + 1) % 12), &LIMITS).unwrap_err();
        assert!(matches!(err, Rejection::WrongPartition { expected, .. } if expected == home));
        assert!(err.to_string().starts_with("wrong_partition"));
    }

    #[test]
    fn an_event_a_charge_cannot_price_from_running_usage_is_counted_and_flagged() {
        let r = reference_with(vec![
            Charge::on_metric("c", "gb", ChargeModel::Standard, r#"{"amount":"0.5"}"#),
            Charge::on_metric(
                "fee",
                "gb",
                ChargeModel::Percentage,
                r#"{"rate":"1","per_transaction_max_amount":"0.02"}"#,
            ),
        ]);
        let mut usage = CustomerUsage::default();
        let Rated::Accepted { row, unpriced, .. } =
            rate_one(&r, &mut usage, "e1", "2026-01-05T00:00:00Z", "4", 7).unwrap()
        else {
            panic!("not accepted")
        };
        assert!(unpriced, "the percentage charge needs each event's value");
        assert_eq!(row.unpriced, 1, "and its ClickHouse row says so");
        // The row's amount is the standard charge's alone.
        assert_eq!(
            row.amount,
            billing_runtime::clickhouse::to_decimal_38_9(dec!(2))
        );
    }

    #[test]
    fn an_event_is_aggregated_priced_and_recorded_once() {
        let r = reference();
        let mut usage = CustomerUsage::default();
        let Rated::Accepted {
            row,
            touched,
            unpriced,
            ..
        } = rate_one(&r, &mut usage, "e1", "2026-01-05T00:00:00Z", "4", 7).unwrap()
        else {
            panic!("not accepted")
        };
        assert!(!unpriced);
        assert_eq!(row.unpriced, 0);
        assert_eq!(
            row.amount,
            billing_runtime::clickhouse::to_decimal_38_9(dec!(2))
        );
        assert_eq!(row.subscription_id, "s1");
        assert_eq!(touched.len(), 2);
        let state = &usage.aggregates[touched[0]];
        assert_eq!((state.running.sum, state.last_offset), (dec!(4), 7));
        assert!(matches!(
            rate_one(&r, &mut usage, "e1", "2026-01-05T00:00:00Z", "4", 8),
            Ok(Rated::Duplicate)
        ));
        // A new id at an offset the aggregate already includes is a replay after a crash: not counted again.
        assert!(matches!(
            rate_one(&r, &mut usage, "e0", "2026-01-05T00:00:00Z", "4", 6),
            Ok(Rated::Replayed { .. })
        ));
        assert_eq!(usage.aggregates[touched[0]].running.sum, dec!(4));
    }

    #[test]
    fn a_replay_brings_up_to_date_the_aggregates_a_crash_left_behind() {
        let r = reference();
        let mut usage = CustomerUsage::default();
        let Ok(Rated::Accepted { touched, .. }) =
            rate_one(&r, &mut usage, "e1", "2026-01-05T00:00:00Z", "4", 7)
        else {
            panic!("not accepted")
        };
        // A crash wrote one aggregate (and no dedup id) but not the other: reload that state.
        let key = |u: &CustomerUsage, i: usize| u.aggregates.get_index(i).unwrap().0.clone();
        let (written, lost) = (key(&usage, touched[0]), key(&usage, touched[1]));
        let mut reloaded = CustomerUsage::default();
        reloaded
            .aggregates
            .insert(written.clone(), usage.aggregates[&written].clone());
        let Ok(Rated::Replayed {
            touched: repaired, ..
        }) = rate_one(&r, &mut reloaded, "e1", "2026-01-05T00:00:00Z", "4", 7)
        else {
            panic!("not a replay")
        };
        assert_eq!(repaired.len(), 1);
        assert_eq!(key(&reloaded, repaired[0]), lost);
        assert_eq!(reloaded.aggregates[&lost].running.sum, dec!(4));
        assert_eq!(reloaded.aggregates[&written].running.sum, dec!(4));
        assert!(reloaded.seen.contains(&IdHash::of("e1")));
    }

    #[test]
    fn an_event_its_checkpoint_applied_is_not_counted_again_whatever_it_is_attributed_to_now() {
        let r = reference();
        let mut usage = CustomerUsage::default();
        for (id, value, offset) in [("e1", "4", 7), ("e2", "-1", 8), ("e3", "2", 9)] {
            let _ = rate_one(&r, &mut usage, id, "2026-01-05T00:00:00Z", value, offset);
        }
        let c = |u: &CustomerUsage, charge: &str| -> Decimal {
            u.aggregates
                .iter()
                .filter(|(k, _)| k.charge_id == charge)
                .map(|(_, s)| s.running.sum)
                .sum()
        };
        assert_eq!(c(&usage, "c"), dec!(6));
        // A crash after the checkpoint's aggregates (and its window) but before its dedup ids; meanwhile the plan's
        // charge was replaced, so the same events now land in another aggregate.
        let partition = billing_runtime::kafka::partition_for_key(b"t/c1", 12);
        let mut reloaded = CustomerUsage {
            aggregates: usage.aggregates.clone(),
            window: Some(AppliedWindow {
                partition,
                from: 7,
                to: 9,
                rejected: vec![8],
            }),
            ..Default::default()
        };
        let r = reference_with(vec![Charge::on_metric(
            "c3",
            "gb",
            ChargeModel::Standard,
            r#"{"amount":"1"}"#,
        )]);
        for (id, offset) in [("e1", 7), ("e3", 9)] {
            let Ok(Rated::Replayed { touched, .. }) =
                rate_one(&r, &mut reloaded, id, "2026-01-05T00:00:00Z", "4", offset)
            else {
                panic!("{id} not taken as applied")
            };
            assert!(touched.is_empty());
            assert!(reloaded.seen.contains(&IdHash::of(id)));
        }
        // The rejected one is rated again (and refused again); its id stays free for a corrected resend.
        assert!(matches!(
            rate_one(&r, &mut reloaded, "e2", "2026-01-05T00:00:00Z", "-1", 8),
            Err(Rejection::Negative { .. })
        ));
        assert!(matches!(
            rate_one(&r, &mut reloaded, "e1", "2026-01-05T00:00:00Z", "4", 10),
            Ok(Rated::Duplicate)
        ));
        for (id, value, offset) in [("e4", "5", 11), ("e2", "1", 12)] {
            assert!(matches!(
                rate_one(&r, &mut reloaded, id, "2026-01-05T00:00:00Z", value, offset),
                Ok(Rated::Accepted { .. })
            ));
        }
        assert_eq!((c(&reloaded, "c"), c(&reloaded, "c3")), (dec!(6), dec!(6)));
    }

    #[test]
    fn a_unique_count_counts_exactly_up_to_its_limit_then_refuses_new_values() {
        let r = reference_of(
            Aggregation::UniqueCount,
            vec![Charge::on_metric(
                "c",
                "gb",
                ChargeModel::Standard,
                r#"{"amount":"1"}"#,
            )],
        );
        let mut usage = CustomerUsage::default();
        // LIMITS allows 3 distinct values: "1.0" is the value "1" again.
        for (i, value) in ["1", "2", "3", "1.0", "2"].iter().enumerate() {
            let offset = i64::try_from(i).unwrap();
            assert!(matches!(
                rate_one(
                    &r,
                    &mut usage,
                    &format!("e{i}"),
                    "2026-01-05T00:00:00Z",
                    value,
                    offset
                ),
                Ok(Rated::Accepted { .. })
            ));
        }
        let refused = rate_one(&r, &mut usage, "e5", "2026-01-05T00:00:00Z", "4", 5);
        match refused {
            Err(e @ Rejection::UniqueCountLimit { .. }) => {
                assert!(e.to_string().starts_with("unique_count_limit: "), "{e}")
            }
            other => panic!("{other:?}"),
        }
        assert!(!usage.seen.contains(&IdHash::of("e5")));
        // A value already counted is still accepted.
        assert!(matches!(
            rate_one(&r, &mut usage, "e6", "2026-01-05T00:00:00Z", "3", 6),
            Ok(Rated::Accepted { .. })
        ));
        let state = usage.aggregates.values().next().unwrap();
        assert_eq!(
            (state.running.unique.len(), state.running.events_count),
            (3, 6)
        );
    }

    #[test]
    fn usage_during_a_pause_is_metered() {
        let r = reference();
        let mut usage = CustomerUsage::default();
        for (i, ts) in [
            "2026-01-05T00:00:00Z",
            "2026-01-15T00:00:00Z",
            "2026-01-25T00:00:00Z",
        ]
        .iter()
        .enumerate()
        {
            let offset = i64::try_from(i).unwrap();
            assert!(matches!(
                rate_one(&r, &mut usage, &format!("e{i}"), ts, "1", offset),
                Ok(Rated::Accepted { .. })
            ));
        }
        let total: Decimal = usage
            .aggregates
            .iter()
            .filter(|(k, _)| k.charge_id == "c")
            .map(|(_, s)| s.running.sum)
            .sum();
        assert_eq!(total, dec!(3));
    }

    #[test]
    fn rejections_change_nothing() {
        let r = reference();
        let mut usage = CustomerUsage::default();
        assert!(matches!(
            rate_one(&r, &mut usage, "e1", "2025-12-31T00:00:00Z", "1", 1),
            Err(Rejection::Attribution(_))
        ));
        assert!(matches!(
            rate_one(&r, &mut usage, "e2", "2026-01-05T00:00:00Z", "-1", 2),
            Err(Rejection::Negative { .. })
        ));
        assert!(usage.seen.is_empty() && usage.aggregates.is_empty());
    }

    #[test]
    fn usage_older_than_the_horizon_on_its_customers_clock_is_refused_unless_already_counted() {
        let mut r = reference();
        let mut usage = CustomerUsage::default();
        // No tick read yet: the clock is unknown, nothing is refused.
        assert!(matches!(
            rate_one(&r, &mut usage, "e1", "2026-01-05T00:00:00Z", "1", 1),
            Ok(Rated::Accepted { .. })
        ));
        let tick = |now: &str| LifecycleEvent {
            tenant_id: "*".into(),
            event_id: format!("tick-{now}"),
            occurred_at: at(now),
            payload: Lifecycle::ClockTick(billing_schemas::lifecycle::ClockTick {
                clock_id: "wall".into(),
                now: at(now),
            }),
        };
        r.apply_lifecycle(tick("2027-01-05T00:00:01Z")).unwrap();
        assert_eq!(r.clock_now("t", "c1"), Some(at("2027-01-05T00:00:01Z")));
        match rate_one(&r, &mut usage, "e2", "2026-01-05T00:00:00Z", "1", 2) {
            Err(e @ Rejection::PeriodClosed { .. }) => {
                assert!(e.to_string().starts_with("period_closed: "), "{e}")
            }
            other => panic!("{other:?}"),
        }
        // Just inside the horizon: accepted (billed later as an adjustment).
        assert!(matches!(
            rate_one(&r, &mut usage, "e3", "2026-01-05T00:00:01Z", "1", 3),
            Ok(Rated::Accepted { .. })
        ));
        // A replay of an event a checkpoint counted is not refused, however late the clock is now.
        r.apply_lifecycle(tick("2028-01-01T00:00:00Z")).unwrap();
        let mut reloaded = CustomerUsage {
            aggregates: usage.aggregates.clone(),
            ..Default::default()
        };
        assert!(matches!(
            rate_one(&r, &mut reloaded, "e3", "2026-01-05T00:00:01Z", "1", 3),
            Ok(Rated::Replayed { .. })
        ));
        // A tick that goes back does not move the clock back.
        r.apply_lifecycle(tick("2026-02-01T00:00:00Z")).unwrap();
        assert_eq!(r.clock_now("t", "c1"), Some(at("2028-01-01T00:00:00Z")));
    }
}
