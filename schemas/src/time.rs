//! Timestamps on the wire are Avro `timestamp-millis`: integer milliseconds since the Unix epoch, UTC.
//! JSON producers may also send an RFC 3339 string; it is normalised to milliseconds.

use chrono::{DateTime, TimeZone, Utc};
use serde::{de, Deserialize, Deserializer, Serializer};

// Read through `serde_json::Value` rather than an untagged enum: untagged enums mis-handle numbers when
// serde_json's `arbitrary_precision` feature is on, which the workspace needs for exact decimals.
fn from_raw<E: de::Error>(raw: serde_json::Value) -> Result<DateTime<Utc>, E> {
    match raw {
        serde_json::Value::Number(n) => {
            let ms = n.as_i64().ok_or_else(|| {
                E::custom(format!("timestamp {n} is not whole epoch milliseconds"))
            })?;
            Utc.timestamp_millis_opt(ms)
                .single()
                .ok_or_else(|| E::custom(format!("timestamp {ms} ms is out of range")))
        }
        serde_json::Value::String(s) => DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| {
                E::custom(format!(
                    "timestamp {s:?} is not RFC 3339 or epoch milliseconds: {e}"
                ))
            }),
        other => Err(E::custom(format!(
            "timestamp must be epoch milliseconds or an RFC 3339 string, not {other}"
        ))),
    }
}

/// Serialize as epoch milliseconds.
pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_i64(t.timestamp_millis())
}

/// Deserialize from epoch milliseconds or an RFC 3339 string.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    from_raw(serde_json::Value::deserialize(d)?)
}

/// The same, for optional timestamps (Avro `["null", timestamp-millis]`).
pub mod option {
    use super::*;

    /// Serialize as epoch milliseconds or null.
    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_some(&t.timestamp_millis()),
            None => s.serialize_none(),
        }
    }

    /// Deserialize from epoch milliseconds, an RFC 3339 string, or null.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Null => Ok(None),
            v => from_raw(v).map(Some),
        }
    }
}
