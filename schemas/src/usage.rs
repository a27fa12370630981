//! `billing.usage`: usage events (schema `usage_event.avsc`).

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use serde::{de, Deserialize, Deserializer, Serialize};

use crate::codec::DecodeError;
use crate::datum::AvroReader;
use crate::registry::{Message, SchemaId};

/// One usage event. `(tenant_id, event_id)` is its idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEvent {
    /// Tenant that owns the customer.
    pub tenant_id: String,
    /// Producer-chosen idempotency key, unique per tenant.
    pub event_id: String,
    /// The customer's external id.
    pub customer_id: String,
    /// Code of the billable metric this event feeds.
    pub metric_code: String,
    /// Event time.
    #[serde(with = "crate::time")]
    pub timestamp: DateTime<Utc>,
    /// Event properties. JSON numbers and booleans are kept as their exact text.
    #[serde(default, deserialize_with = "properties")]
    pub properties: BTreeMap<String, String>,
}

impl Message for UsageEvent {
    const SCHEMA: SchemaId = SchemaId::Usage;

    fn read_current_avro(datum: &[u8]) -> Option<Result<Self, DecodeError>> {
        Some(read_avro(datum))
    }
}

/// Read a datum of `usage_event.avsc` field by field (rating reads every usage event; the generic path of the
/// time, an Avro value turned into JSON and then into the struct, cost a fifth of its time). What it accepts and
/// refuses is the generic path's (and apache-avro's), checked by a test over random events and corruptions of them.
fn read_avro(datum: &[u8]) -> Result<UsageEvent, DecodeError> {
    let mut r = AvroReader::new(datum);
    let tenant_id = r.string()?;
    let event_id = r.string()?;
    let customer_id = r.string()?;
    let metric_code = r.string()?;
    let ms = r.long()?;
    let timestamp = Utc
        .timestamp_millis_opt(ms)
        .single()
        .ok_or_else(|| DecodeError::Json(format!("timestamp {ms} ms is out of range")))?;
    let mut properties = BTreeMap::new();
    loop {
        let count = r.long()?;
        if count == 0 {
            break;
        }
        if count < 0 {
            // A negative count is followed by the block's size in bytes.
            r.long()?;
        }
        for _ in 0..count.unsigned_abs() {
            let key = r.string()?;
            let value = r.string()?;
            properties.insert(key, value);
        }
    }
    if r.remaining() != 0 {
        return Err(DecodeError::Avro(format!(
            "{} trailing bytes after the datum",
            r.remaining()
        )));
    }
    Ok(UsageEvent {
        tenant_id,
        event_id,
        customer_id,
        metric_code,
        timestamp,
        properties,
    })
}

fn properties<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = Option::<BTreeMap<String, serde_json::Value>>::deserialize(d)?;
    raw.unwrap_or_default()
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                other => {
                    return Err(de::Error::custom(format!(
                        "property {k:?} must be a string, number or boolean, not {other}"
                    )))
                }
            };
            Ok((k, text))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode_avro_value, decode_avro_value_via_json, encode, Encoding};

    /// A deterministic pseudo-random sequence (no dependency needed for a test's variety).
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self, below: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % below.max(1)
        }

        fn text(&mut self) -> String {
            const PIECES: [&str; 8] = ["a", "Z", "9", "-", "é", "€", "😀", " "];
            (0..self.next(12))
                .map(|_| PIECES[self.next(8) as usize])
                .collect()
        }
    }

    fn event(r: &mut Lcg) -> UsageEvent {
        UsageEvent {
            tenant_id: r.text(),
            event_id: r.text(),
            customer_id: r.text(),
            metric_code: r.text(),
            timestamp: Utc
                .timestamp_millis_opt(r.next(4_000_000_000_000) as i64 - 1_000_000_000_000)
                .unwrap(),
            properties: (0..r.next(6)).map(|_| (r.text(), r.text())).collect(),
        }
    }

    fn both(
        datum: &[u8],
    ) -> (
        Result<UsageEvent, DecodeError>,
        Result<UsageEvent, DecodeError>,
    ) {
        // The generic path, and apache-avro's reader it replaced, must agree too.
        let generic = decode_avro_value::<UsageEvent>(SchemaId::Usage, datum);
        let apache = decode_avro_value_via_json::<UsageEvent>(SchemaId::Usage, datum);
        assert_eq!(generic.as_ref().ok(), apache.as_ref().ok(), "{datum:?}");
        (read_avro(datum), generic)
    }

    #[test]
    fn the_direct_reader_gives_what_the_generic_path_gives_and_refuses_what_it_refuses() {
        let mut r = Lcg(7);
        let (mut corrupted_ok, mut corrupted_err) = (0, 0);
        for _ in 0..2_000 {
            let ev = event(&mut r);
            let framed = encode(&ev, Encoding::Avro).unwrap();
            let datum = &framed[5..];
            let (fast, generic) = both(datum);
            assert_eq!(fast.as_ref().unwrap(), &ev);
            assert_eq!(generic.as_ref().unwrap(), &ev);
            // Every truncation, and trailing bytes, are refused by both.
            for cut in 0..datum.len() {
                let (fast, generic) = both(&datum[..cut]);
                assert!(fast.is_err() && generic.is_err(), "cut at {cut}");
            }
            let mut longer = datum.to_vec();
            longer.push(0);
            let (fast, generic) = both(&longer);
            assert!(fast.is_err() && generic.is_err());
            // A byte changed anywhere: both accept the same event, or both refuse.
            let mut bad = datum.to_vec();
            let at = r.next(bad.len() as u64) as usize;
            bad[at] = r.next(256) as u8;
            match both(&bad) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a, b);
                    corrupted_ok += 1;
                }
                (Err(_), Err(_)) => corrupted_err += 1,
                (a, b) => panic!("{bad:?}: direct {a:?}, generic {b:?}"),
            }
        }
        assert!(
            corrupted_ok > 100 && corrupted_err > 100,
            "{corrupted_ok} / {corrupted_err}"
        );
    }

    #[test]
    fn the_direct_reader_handles_blocks_overlong_numbers_and_bad_text_like_the_generic_path() {
        // tenant "t", event "e", customer "c", metric "m", timestamp 0, then a map block written with a negative
        // count and its byte size (-1 → zig-zag 1), one entry k → v, then the end.
        let datum = [
            2, b't', 2, b'e', 2, b'c', 2, b'm', 0, 1, 8, 2, b'k', 2, b'v', 0,
        ];
        let (fast, generic) = both(&datum);
        assert_eq!(fast.unwrap(), generic.unwrap());
        // Eleven continuation bytes for the timestamp.
        let mut overlong = vec![2, b't', 2, b'e', 2, b'c', 2, b'm'];
        overlong.extend([0xff; 10]);
        overlong.extend([0x01, 0]);
        let (fast, generic) = both(&overlong);
        assert!(fast.is_err() && generic.is_err());
        // Invalid UTF-8 in a string, and a negative length.
        for datum in [
            vec![2, 0xff, 2, b'e', 2, b'c', 2, b'm', 0, 0],
            vec![1, b't', 2, b'e', 2, b'c', 2, b'm', 0, 0],
        ] {
            let (fast, generic) = both(&datum);
            assert!(fast.is_err() && generic.is_err(), "{datum:?}");
        }
        // A timestamp out of chrono's range.
        let mut far = vec![2, b't', 2, b'e', 2, b'c', 2, b'm'];
        far.extend([
            0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0,
        ]);
        let (fast, generic) = both(&far);
        assert!(fast.is_err() && generic.is_err());
    }
}
