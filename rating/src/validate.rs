//! Turning a Kafka message into a usage event and the metric value it carries, or into a precise rejection
//! reason for the dead-letter topic.

use std::str::FromStr;

use billing_core::aggregation::AggregationType;
use billing_schemas::usage::UsageEvent;
use billing_schemas::{customer_key, decode, DecodeError};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use billing_schemas::reference::AttributionError;

/// Why an event was dead-lettered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Rejection {
    /// Larger than `rating.max_event_bytes`.
    #[error("payload of {size} bytes exceeds the limit of {limit}")]
    Oversized {
        /// Payload size.
        size: usize,
        /// Limit.
        limit: usize,
    },
    /// Not a usage event in any accepted encoding.
    #[error("undecodable: {0}")]
    Decode(#[from] DecodeError),
    /// Structurally invalid: the same rules as the ingest gateway's (blank or overlong ids, control characters,
    /// too many properties, a timestamp before 2000).
    #[error("invalid event: {0}")]
    Invalid(#[from] billing_schemas::validate::Invalid),
    /// The key does not route the event to its customer's partition.
    #[error("message key {found:?} must be {expected:?} (tenant_id/customer_id)")]
    WrongKey {
        /// tenant/customer.
        expected: String,
        /// What the message had.
        found: String,
    },
    /// The record is not on the partition its key belongs to (a producer with another partitioner): its customer's
    /// state lives elsewhere, so counting it here would split the customer.
    #[error("wrong_partition: key {key:?} belongs to partition {expected} (murmur2, as the Java client), found on {found}")]
    WrongPartition {
        /// The key.
        key: String,
        /// Its partition under `billing_runtime::kafka::PARTITIONER`.
        expected: i32,
        /// Where it was found.
        found: i32,
    },
    /// Event time too far after the time Kafka appended it.
    #[error("timestamp {timestamp} is more than {max_future_secs} s after the event was received ({received})")]
    FromTheFuture {
        /// Event time.
        timestamp: DateTime<Utc>,
        /// Kafka append time.
        received: DateTime<Utc>,
        /// Allowed skew.
        max_future_secs: i64,
    },
    /// Usage older than the late-usage horizon on its customer's clock: its period is closed for good.
    #[error("period_closed: timestamp {timestamp} is more than {horizon_days} days before the customer's clock ({now}); usage that late is not billed (rating.late_usage_horizon)")]
    PeriodClosed {
        /// Event time.
        timestamp: DateTime<Utc>,
        /// The customer's clock.
        now: DateTime<Utc>,
        /// The horizon.
        horizon_days: i64,
    },
    /// The metric is not in the tenant's catalog.
    #[error("unique_count_limit: charge {charge:?} already counts {limit} distinct values this period (rating.max_unique_values)")]
    UniqueCountLimit {
        /// The charge whose aggregate is full.
        charge: String,
        /// The limit.
        limit: usize,
    },
    #[error("unknown metric {0:?}")]
    UnknownMetric(String),
    /// Customer or subscription missing.
    #[error("{0}")]
    Attribution(#[from] AttributionError),
    /// The metric's field is absent.
    #[error("property {0:?} is missing")]
    MissingProperty(String),
    /// The metric's field is not a decimal.
    #[error("property {field:?} = {value:?} is not a plain decimal number (digits, an optional point and at most 9 decimals, no exponent or separators, at most about 7.9e28)")]
    NotANumber {
        /// Field.
        field: String,
        /// Its text.
        value: String,
    },
    /// The value cannot be added to its aggregate (it would overflow 28 significant digits).
    #[error("value cannot be aggregated: {0}")]
    Unaggregatable(String),
    /// A negative value where the aggregation forbids it.
    #[error("property {field:?} = {value} must not be negative for {aggregation} metrics")]
    Negative {
        /// Field.
        field: String,
        /// Value.
        value: Decimal,
        /// Aggregation name.
        aggregation: &'static str,
    },
}

/// Decode a message and check what needs no reference data.
pub fn decode_event(
    key: Option<&[u8]>,
    payload: &[u8],
    content_type: Option<&[u8]>,
    max_bytes: usize,
) -> Result<UsageEvent, Rejection> {
    if payload.len() > max_bytes {
        return Err(Rejection::Oversized {
            size: payload.len(),
            limit: max_bytes,
        });
    }
    let event: UsageEvent = decode(payload, content_type)?;
    billing_schemas::validate::validate_event(&event)?;
    // Compared in place: the expected key is built only to name it in a rejection.
    let (tenant, customer) = (event.tenant_id.as_bytes(), event.customer_id.as_bytes());
    let matches = key.is_some_and(|k| {
        k.len() == tenant.len() + 1 + customer.len()
            && k.starts_with(tenant)
            && k[tenant.len()] == b'/'
            && k.ends_with(customer)
    });
    if !matches {
        let expected = customer_key(&event.tenant_id, &event.customer_id);
        let found = key
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default();
        return Err(Rejection::WrongKey { expected, found });
    }
    Ok(event)
}

/// Reject an event time more than `max_future` after the Kafka append time. Using the append time, not the
/// wall clock, keeps a replay's decisions identical to the first run's.
pub fn check_time(
    event: &UsageEvent,
    received: DateTime<Utc>,
    max_future: chrono::Duration,
) -> Result<(), Rejection> {
    if event.timestamp > received + max_future {
        return Err(Rejection::FromTheFuture {
            timestamp: event.timestamp,
            received,
            max_future_secs: max_future.num_seconds(),
        });
    }
    Ok(())
}

/// The text of the metric's field, checked for the aggregation: numeric aggregations need an exact decimal with
/// at most 9 decimals (ClickHouse keeps 9), and sum, max and latest refuse negatives. Count needs no field.
pub fn metric_value<'a>(
    event: &'a UsageEvent,
    aggregation: AggregationType,
    field: Option<&str>,
) -> Result<Option<&'a str>, Rejection> {
    let Some(field) = field.filter(|_| aggregation != AggregationType::CountAgg) else {
        return Ok(None);
    };
    let raw = event
        .properties
        .get(field)
        .ok_or_else(|| Rejection::MissingProperty(field.to_owned()))?;
    if aggregation == AggregationType::UniqueCountAgg {
        return Ok(Some(raw));
    }
    // Exact parsing: `1_000`, `1e3`, ` 3` and more than 9 decimals (what ClickHouse keeps) are refused, not read.
    let value = billing_core::money::parse_exact_decimal(field, raw, 9).map_err(|_| {
        Rejection::NotANumber {
            field: field.to_owned(),
            value: raw.clone(),
        }
    })?;
    let name = match aggregation {
        AggregationType::SumAgg => Some("sum"),
        AggregationType::MaxAgg => Some("max"),
        // The latest value is the period's units, and a charge cannot price negative units.
        AggregationType::LatestAgg => Some("latest"),
        _ => None,
    };
    if let (Some(aggregation), true) = (name, value.is_sign_negative() && !value.is_zero()) {
        return Err(Rejection::Negative {
            field: field.to_owned(),
            value,
            aggregation,
        });
    }
    Ok(Some(raw.as_str()))
}

/// The numeric value of a field for ClickHouse (zero for count and unique count).
pub fn numeric(raw: Option<&str>) -> Decimal {
    raw.and_then(|r| Decimal::from_str(r.trim()).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"t/c";

    fn json(value: &str) -> Vec<u8> {
        format!(
            r#"{{"tenant_id":"t","event_id":"e","customer_id":"c","metric_code":"m","timestamp":1767225600000,"properties":{{"value":{value}}}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn decoding_rejections() {
        assert!(matches!(
            decode_event(None, &json("1"), None, 1000).unwrap_err(),
            Rejection::WrongKey { .. }
        ));
        // The key must be exactly `tenant/customer`.
        assert!(decode_event(Some(KEY), &json("1"), None, 1000).is_ok());
        for other in [
            &b"t/cc"[..],
            b"tt/c",
            b"t:c",
            b"t/",
            b"/c",
            b"t/c/",
            b"",
            b"T/c",
        ] {
            assert_eq!(
                decode_event(Some(other), &json("1"), None, 1000).unwrap_err(),
                Rejection::WrongKey {
                    expected: "t/c".into(),
                    found: String::from_utf8_lossy(other).into_owned()
                },
                "{other:?}"
            );
        }
        assert!(matches!(
            decode_event(Some(KEY), b"\xff\x00", None, 1000).unwrap_err(),
            Rejection::Decode(_)
        ));
        assert_eq!(
            decode_event(Some(KEY), &json("1"), None, 10).unwrap_err(),
            Rejection::Oversized {
                size: json("1").len(),
                limit: 10
            }
        );
        let empty = br#"{"tenant_id":"t","event_id":" ","customer_id":"c","metric_code":"m","timestamp":1}"#;
        assert_eq!(
            decode_event(Some(KEY), empty, None, 1000).unwrap_err(),
            Rejection::Invalid(billing_schemas::validate::Invalid::Blank { field: "event_id" })
        );
    }

    #[test]
    fn values_are_checked_per_aggregation() {
        let ev = |v: &str| decode_event(Some(KEY), &json(v), None, 1000).unwrap();
        let e = ev("\"-2.5\"");
        assert_eq!(
            metric_value(&e, AggregationType::WeightedSumAgg, Some("value")).unwrap(),
            Some("-2.5")
        );
        for refused in [
            AggregationType::SumAgg,
            AggregationType::MaxAgg,
            AggregationType::LatestAgg,
        ] {
            assert!(matches!(
                metric_value(&e, refused, Some("value")),
                Err(Rejection::Negative { .. })
            ));
        }
        let e = ev("\"abc\"");
        assert!(matches!(
            metric_value(&e, AggregationType::MaxAgg, Some("value")),
            Err(Rejection::NotANumber { .. })
        ));
        assert_eq!(
            metric_value(&e, AggregationType::UniqueCountAgg, Some("value")).unwrap(),
            Some("abc")
        );
        assert_eq!(
            metric_value(&e, AggregationType::CountAgg, Some("value")).unwrap(),
            None
        );
        assert_eq!(
            metric_value(&e, AggregationType::SumAgg, Some("gb")).unwrap_err(),
            Rejection::MissingProperty("gb".into())
        );
        // Decimal edges: each is refused with a reason, never read approximately.
        for bad in [
            "\"0.0000000001\"",
            "\"1_000\"",
            "\"1.1234567891\"",
            "1e400",
            "\"1e3\"",
            "\" 3\"",
            "\"100000000000000000000000000000\"",
        ] {
            let e = ev(bad);
            assert!(
                matches!(
                    metric_value(&e, AggregationType::SumAgg, Some("value")),
                    Err(Rejection::NotANumber { .. })
                ),
                "{bad}"
            );
        }
        let e = ev("\"79228162514264337593543950335\"");
        assert!(metric_value(&e, AggregationType::SumAgg, Some("value")).is_ok());
    }

    #[test]
    fn future_is_measured_from_the_append_time() {
        let e = decode_event(Some(KEY), &json("1"), None, 1000).unwrap();
        let received = e.timestamp - chrono::Duration::hours(25);
        assert!(check_time(&e, received, chrono::Duration::hours(24)).is_err());
        assert!(check_time(
            &e,
            received + chrono::Duration::hours(1),
            chrono::Duration::hours(24)
        )
        .is_ok());
    }
}
