//! From request body to Kafka records, without I/O: split the body into elements, then parse, validate and
//! encode each element on its own so that one bad event gets its own precise reason and never fails the batch.

use std::time::Duration;

use billing_schemas::usage::UsageEvent;
use billing_schemas::{customer_key, encode, Encoding};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use billing_runtime::http::Problem;
use billing_schemas::validate;

/// The fields of a usage event; anything else in an element is rejected rather than silently dropped.
pub const FIELDS: [&str; 6] = [
    "tenant_id",
    "event_id",
    "customer_id",
    "metric_code",
    "timestamp",
    "properties",
];
const ID_FIELDS: [&str; 4] = ["tenant_id", "event_id", "customer_id", "metric_code"];

/// Limits that apply to a request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most events per request.
    pub max_batch: usize,
    /// Largest encoded event.
    pub max_event_bytes: usize,
    /// Furthest an event time may be ahead of the clock.
    pub max_future: Duration,
}

/// Split a body into its event elements: one event object, or `{"events": [...]}` with 1 to `max_batch`
/// elements. Elements are not looked at here.
pub fn split_body(body: &[u8], max_batch: usize) -> Result<Vec<Value>, Problem> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Problem::bad_request(
            "empty body: send one event object or {\"events\": [...]}",
        ));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Problem::bad_request(format!("body is not valid JSON: {e}")))?;
    let Value::Object(mut obj) = value else {
        return Err(Problem::bad_request(format!(
            "body must be one event object or {{\"events\": [...]}}, not {}",
            kind(&value)
        )));
    };
    let Some(events) = obj.remove("events") else {
        return Ok(vec![Value::Object(obj)]);
    };
    if let Some(other) = obj.keys().next() {
        return Err(Problem::bad_request(format!(
            "unknown field `{other}` next to `events`: a batch is {{\"events\": [...]}}"
        )));
    }
    let Value::Array(events) = events else {
        return Err(Problem::bad_request(format!(
            "`events` must be an array, not {}",
            kind(&events)
        )));
    };
    if events.is_empty() {
        return Err(Problem::bad_request(
            "`events` is empty: send 1 or more events",
        ));
    }
    if events.len() > max_batch {
        return Err(Problem::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} events in one request; at most {max_batch} are allowed",
                events.len()
            ),
        ));
    }
    Ok(events)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An event ready to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The parsed event.
    pub event: UsageEvent,
    /// Message key, `tenant/customer`.
    pub key: String,
    /// JSON value bytes.
    pub payload: Vec<u8>,
}

/// The `event_id` of an element, if it has a string one (for the result of a rejected element).
pub fn raw_event_id(element: &Value) -> Option<String> {
    element.get("event_id")?.as_str().map(str::to_owned)
}

/// An element as the key's `tenant` sends it: its `tenant_id` filled in when absent; refused when it names another
/// tenant (the API key decides the tenant, `docs/api.md`).
pub fn of_tenant(element: Value, tenant: &str) -> Result<Value, String> {
    let Value::Object(mut obj) = element else {
        return Ok(element);
    };
    match obj.get("tenant_id") {
        None => {
            obj.insert("tenant_id".into(), Value::String(tenant.to_owned()));
        }
        Some(Value::String(t)) if t == tenant => {}
        Some(other) => {
            return Err(format!(
                "tenant_id {other} is not the API key's tenant; a key sends usage of its own tenant only"
            ))
        }
    }
    Ok(Value::Object(obj))
}

/// Parse, validate and encode one element, with `now` as the clock reading for the future-time check.
pub fn prepare(element: Value, now: DateTime<Utc>, limits: &Limits) -> Result<Prepared, String> {
    let Value::Object(obj) = element else {
        return Err(format!(
            "an event must be an object, not {}",
            kind(&element)
        ));
    };
    check_shape(&obj)?;
    let event: UsageEvent =
        serde_json::from_value(Value::Object(obj)).map_err(|e| e.to_string())?;
    validate::validate_event(&event).map_err(|e| e.to_string())?;
    validate::check_not_in_future(&event, now, limits.max_future).map_err(|e| e.to_string())?;
    let payload = encode(&event, Encoding::Json).map_err(|e| e.to_string())?;
    validate::check_size(payload.len(), limits.max_event_bytes).map_err(|e| e.to_string())?;
    Ok(Prepared {
        key: customer_key(&event.tenant_id, &event.customer_id),
        event,
        payload,
    })
}

// serde's own messages name a missing field but not a mistyped one ("invalid type: integer `5`, expected a
// string"), so the field types are checked here first, by name.
fn check_shape(obj: &Map<String, Value>) -> Result<(), String> {
    if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "unknown field `{unknown}`; an event has {}",
            FIELDS.map(|f| format!("`{f}`")).join(", ")
        ));
    }
    for field in ID_FIELDS {
        match obj.get(field) {
            None | Some(Value::String(_)) => {}
            Some(other) => {
                return Err(format!("`{field}` must be a string, not {}", kind(other)));
            }
        }
    }
    match obj.get("properties") {
        None | Some(Value::Null | Value::Object(_)) => Ok(()),
        Some(other) => Err(format!(
            "`properties` must be an object, not {}",
            kind(other)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    const LIMITS: Limits = Limits {
        max_batch: 3,
        max_event_bytes: 1024,
        max_future: Duration::from_secs(86_400),
    };

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap()
    }

    // Parsed from text, as the gateway does: `json!` would turn 3.50 into an f64.
    fn good() -> Value {
        serde_json::from_str(
            r#"{"tenant_id": "acme", "event_id": "e-1", "customer_id": "cus-1", "metric_code": "api_calls",
                "timestamp": "2026-11-25T11:00:00Z", "properties": {"value": 3.50, "region": "eu", "ok": true}}"#,
        )
        .unwrap()
    }

    fn rejected(mut f: impl FnMut(&mut Map<String, Value>)) -> String {
        let mut v = good();
        f(v.as_object_mut().unwrap());
        prepare(v, now(), &LIMITS).unwrap_err()
    }

    #[test]
    fn fields_match_the_type() {
        let p = prepare(good(), now(), &LIMITS).unwrap();
        let encoded: Value = serde_json::from_slice(&p.payload).unwrap();
        let keys: Vec<&str> = encoded
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        let mut fields = FIELDS.to_vec();
        fields.sort_unstable();
        assert_eq!(keys, fields);
    }

    #[test]
    fn a_good_element_is_keyed_and_encoded_exactly() {
        let p = prepare(good(), now(), &LIMITS).unwrap();
        assert_eq!(p.key, "acme/cus-1");
        assert_eq!(
            p.event.properties["value"], "3.50",
            "numbers keep their text"
        );
        assert_eq!(p.event.properties["ok"], "true");
        let back: UsageEvent =
            billing_schemas::decode(&p.payload, Some(b"application/json")).unwrap();
        assert_eq!(back, p.event);
        let mut millis = good();
        millis["timestamp"] = json!(1_795_604_400_000_i64);
        assert_eq!(
            prepare(millis, now(), &LIMITS).unwrap().event.timestamp,
            p.event.timestamp
        );
    }

    #[test]
    fn each_element_problem_has_a_precise_reason() {
        assert_eq!(
            rejected(|o| {
                o.remove("customer_id");
            }),
            "missing field `customer_id`"
        );
        assert_eq!(
            rejected(|o| {
                o.insert("customer_id".into(), json!(5));
            }),
            "`customer_id` must be a string, not a number"
        );
        assert!(rejected(|o| {
            o.insert("customr".into(), json!("x"));
        })
        .starts_with("unknown field `customr`"));
        assert_eq!(
            rejected(|o| {
                o.insert("tenant_id".into(), json!("  "));
            }),
            "`tenant_id` must not be empty"
        );
        assert_eq!(
            rejected(|o| {
                o.insert("properties".into(), json!({"nested": {"a": 1}}));
            }),
            "property \"nested\" must be a string, number or boolean, not {\"a\":1}"
        );
        assert_eq!(
            rejected(|o| {
                o.insert("properties".into(), json!([1]));
            }),
            "`properties` must be an object, not an array"
        );
        assert!(rejected(|o| {
            o.insert("timestamp".into(), json!("yesterday"));
        })
        .starts_with("timestamp \"yesterday\" is not RFC 3339"));
        assert!(rejected(|o| {
            o.insert("timestamp".into(), json!("2026-11-26T12:00:00.001Z"));
        })
        .contains("more than 24h ahead"));
        assert!(rejected(|o| {
            o.insert("properties".into(), json!({"blob": "x".repeat(1024)}));
        })
        .starts_with("encoded event is 1"));
        assert_eq!(
            prepare(json!("e-1"), now(), &LIMITS).unwrap_err(),
            "an event must be an object, not a string"
        );
    }

    #[test]
    fn bodies_split_into_elements() {
        assert_eq!(
            split_body(good().to_string().as_bytes(), 3).unwrap(),
            vec![good()]
        );
        let batch = json!({"events": [good(), 1, null]}).to_string();
        assert_eq!(split_body(batch.as_bytes(), 3).unwrap().len(), 3);
    }

    #[test]
    fn unusable_bodies_are_problems() {
        let status = |body: &str| split_body(body.as_bytes(), 3).unwrap_err().status.as_u16();
        assert_eq!(status(""), 400);
        assert_eq!(status("{not json"), 400);
        assert_eq!(status("[1]"), 400);
        assert_eq!(status(r#"{"events": {}}"#), 400);
        assert_eq!(status(r#"{"events": []}"#), 400);
        assert_eq!(status(r#"{"events": [1], "x": 1}"#), 400);
        assert_eq!(status(r#"{"events": [1, 2, 3, 4]}"#), 413);
        assert_eq!(
            split_body(b"{\"events\": [1, 2, 3, 4]}", 3)
                .unwrap_err()
                .detail,
            "4 events in one request; at most 3 are allowed"
        );
    }
}
