//! Turning a Kafka message into a usage event, or into a precise rejection reason for the dead-letter topic.

use std::str::FromStr;

use billing_schemas::usage::UsageEvent;
use billing_schemas::{customer_key, decode, DecodeError};
use rust_decimal::Decimal;

/// The property summed by the usage totals until billable metrics drive aggregation.
pub const VALUE_PROPERTY: &str = "value";

/// Why an event was dead-lettered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Rejection {
    /// Not a usage event in any accepted encoding.
    #[error("undecodable: {0}")]
    Decode(#[from] DecodeError),
    /// A required identifier is empty.
    #[error("field {0} must not be empty")]
    EmptyField(&'static str),
    /// The key does not route the event to its customer's partition.
    #[error("message key {found:?} must be {expected:?} (tenant_id/customer_id)")]
    WrongKey {
        /// tenant/customer.
        expected: String,
        /// What the message had.
        found: String,
    },
    /// The value property is not an exact decimal.
    #[error("property {VALUE_PROPERTY:?} = {0:?} is not a decimal number with at most 9 decimals")]
    BadValue(String),
}

/// A decoded, valid event and the quantity it adds.
#[derive(Debug)]
pub struct Valid {
    /// The event.
    pub event: UsageEvent,
    /// Its `value` property, or zero when absent.
    pub value: Decimal,
}

/// Decode and validate one message.
pub fn validate(
    key: Option<&[u8]>,
    payload: &[u8],
    content_type: Option<&[u8]>,
) -> Result<Valid, Rejection> {
    let event: UsageEvent = decode(payload, content_type)?;
    for (name, v) in [
        ("tenant_id", &event.tenant_id),
        ("event_id", &event.event_id),
        ("customer_id", &event.customer_id),
        ("metric_code", &event.metric_code),
    ] {
        if v.trim().is_empty() {
            return Err(Rejection::EmptyField(name));
        }
    }
    let expected = customer_key(&event.tenant_id, &event.customer_id);
    if key != Some(expected.as_bytes()) {
        let found = key
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default();
        return Err(Rejection::WrongKey { expected, found });
    }
    let value = match event.properties.get(VALUE_PROPERTY) {
        None => Decimal::ZERO,
        Some(raw) => Decimal::from_str(raw)
            .ok()
            .filter(|d| d.scale() <= 9)
            .ok_or_else(|| Rejection::BadValue(raw.clone()))?,
    };
    Ok(Valid { event, value })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"t/c";

    fn json(value: &str) -> Vec<u8> {
        format!(
            r#"{{"tenant_id":"t","event_id":"e","customer_id":"c","metric_code":"m","timestamp":1,"properties":{{"value":{value}}}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn accepts_exact_decimal_values() {
        let v = validate(Some(KEY), &json("\"12.000000001\""), None).unwrap();
        assert_eq!(v.value, Decimal::from_str("12.000000001").unwrap());
        let v = validate(Some(KEY), &json("3"), None).unwrap();
        assert_eq!(v.value, Decimal::from(3));
    }

    #[test]
    fn rejects_each_reason() {
        assert_eq!(
            validate(Some(KEY), &json("\"abc\""), None).unwrap_err(),
            Rejection::BadValue("abc".into())
        );
        assert_eq!(
            validate(Some(KEY), &json("\"0.0000000001\""), None).unwrap_err(),
            Rejection::BadValue("0.0000000001".into())
        );
        assert!(matches!(
            validate(None, &json("1"), None).unwrap_err(),
            Rejection::WrongKey { .. }
        ));
        assert!(matches!(
            validate(Some(KEY), b"\xff\x00", None).unwrap_err(),
            Rejection::Decode(_)
        ));
        let empty = br#"{"tenant_id":"t","event_id":" ","customer_id":"c","metric_code":"m","timestamp":1}"#;
        assert_eq!(
            validate(Some(KEY), empty, None).unwrap_err(),
            Rejection::EmptyField("event_id")
        );
    }
}
