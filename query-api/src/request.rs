//! Reading requests: JSON bodies and query strings whose errors are problem+json naming the field, the checks
//! every write shares (ids, currencies, timezones, decimals), and cursor pagination.

use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::header;
use axum::http::request::Parts;
use axum::http::StatusCode;
use billing_core::Currency;
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, InvalidParam};

/// Largest request body accepted.
pub const MAX_BODY: usize = 1 << 20;

/// A JSON body. Unknown fields, wrong types and malformed JSON are 400 problems naming the field; an empty body
/// reads as `{}` (for the writes whose fields are all optional).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
            let ct = ct.to_str().unwrap_or_default().to_ascii_lowercase();
            let media = ct.split(';').next().unwrap_or_default().trim();
            if media != "application/json" && !media.ends_with("+json") {
                return Err(ApiError::Problem(billing_runtime::http::Problem::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!("the body must be application/json, not {media:?}"),
                )));
            }
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| {
                ApiError::Problem(billing_runtime::http::Problem::new(
                    e.status(),
                    e.body_text(),
                ))
            })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Deserialize a body, naming the field that fails.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: Result<T, _> = serde_path_to_error::deserialize(&mut de);
    if value.is_ok() {
        de.end().map_err(|e| {
            ApiError::malformed(
                "body",
                format!("malformed JSON: {}", strip_position(&e.to_string())),
            )
        })?;
    }
    value.map_err(|e| {
        let inner = e.inner();
        if inner.is_syntax() || inner.is_eof() || inner.is_io() {
            let reason = strip_position(&inner.to_string());
            return ApiError::malformed("body", format!("malformed JSON: {reason}"));
        }
        let message = inner.to_string();
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let named = named_field(&message);
        let name = match named {
            Some(field) if !path.ends_with(&field) => {
                if path.is_empty() {
                    field
                } else {
                    format!("{path}.{field}")
                }
            }
            _ if path.is_empty() => "body".to_owned(),
            _ => path,
        };
        ApiError::malformed(name, strip_position(&message))
    })
}

/// serde names an unknown or a missing field in its message (the path is the object holding it).
fn named_field(message: &str) -> Option<String> {
    ["unknown field `", "missing field `"]
        .iter()
        .find_map(|p| message.split_once(p))
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(field, _)| field.to_owned())
}

/// `... at line 1 column 12` says little to a client that sent one line.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// A query string; a bad parameter is a 400 problem.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(q)| ApiQuery(q))
            .map_err(|e| {
                let text = e.body_text();
                let text = text
                    .strip_prefix("Failed to deserialize query string: ")
                    .unwrap_or(&text);
                let name = named_field(text).unwrap_or_else(|| "query".to_owned());
                ApiError::malformed(name, text.to_owned())
            })
    }
}

/// The query of a write: how long to wait for its effect (default: `query_api.write_wait`).
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WriteQuery {
    /// Seconds to wait, 0 to 300.
    pub wait_seconds: Option<u64>,
}

/// Longest wait a client may ask for.
pub const MAX_WAIT_SECONDS: u64 = 300;

/// Accumulates refused fields, so a client learns every problem of a request at once.
#[derive(Debug, Default)]
pub struct Check {
    params: Vec<InvalidParam>,
}

/// Most characters of an id or a code.
pub const MAX_ID_CHARS: usize = 255;

impl Check {
    /// A check with nothing refused yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Refuse a field.
    pub fn fail(&mut self, name: impl Into<String>, reason: impl Into<String>) {
        self.params.push(InvalidParam::new(name, reason));
    }

    /// Whether everything so far passed.
    #[cfg(test)]
    pub fn is_ok(&self) -> bool {
        self.params.is_empty()
    }

    /// Whether nothing was refused yet (checks that need the others to have passed run after it).
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    /// An external id or a code: 1 to 255 characters, no `/`, no whitespace or control characters.
    pub fn id(&mut self, name: &str, value: &str) {
        if value.is_empty() || value.chars().count() > MAX_ID_CHARS {
            self.fail(name, format!("must be 1 to {MAX_ID_CHARS} characters"));
        } else if value
            .chars()
            .any(|c| c == '/' || c.is_whitespace() || c.is_control())
        {
            self.fail(
                name,
                format!("{value:?} may not contain '/', whitespace or control characters"),
            );
        }
    }

    /// A non-empty text of at most `max` characters.
    pub fn text(&mut self, name: &str, value: &str, max: usize) {
        if value.trim().is_empty() || value.chars().count() > max {
            self.fail(name, format!("must be 1 to {max} characters"));
        }
    }

    /// An ISO 4217 currency code, returned in upper case.
    pub fn currency(&mut self, name: &str, value: &str) -> Option<Currency> {
        if value.trim() != value {
            self.fail(name, format!("{value:?} has surrounding spaces"));
            return None;
        }
        match Currency::parse(value) {
            Ok(c) => Some(c),
            Err(e) => {
                self.fail(name, e.to_string());
                None
            }
        }
    }

    /// An IANA timezone.
    pub fn timezone(&mut self, name: &str, value: &str) {
        if let Err(e) = billing_core::period::parse_timezone(value) {
            self.fail(name, e.to_string());
        }
    }

    /// Zero or more days, at most ten years.
    pub fn days(&mut self, name: &str, value: i32) {
        if !(0..=3650).contains(&value) {
            self.fail(name, format!("{value} is not in 0..=3650 days"));
        }
    }

    /// A day of the month, 1 to 31.
    pub fn anchor_day(&mut self, name: &str, value: i32) {
        if !(1..=31).contains(&value) {
            self.fail(name, format!("{value} is not a day of the month (1..=31)"));
        }
    }

    /// An exact, non-negative decimal with at most 9 decimals (a JSON string or number).
    pub fn amount(&mut self, name: &str, value: &serde_json::Value) -> Option<Decimal> {
        let text = match value {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            other => {
                self.fail(name, format!("must be a decimal string, not {other}"));
                return None;
            }
        };
        let parsed = billing_core::money::parse_exact_decimal(name, &text, 9)
            .and_then(|d| billing_core::money::non_negative(name, d));
        match parsed {
            Ok(d) => Some(d),
            Err(e) => {
                self.fail(name, strip_field(&e.to_string(), name));
                None
            }
        }
    }

    /// 422 with every refused field, or nothing.
    pub fn finish(self) -> Result<(), ApiError> {
        self.finish_with(StatusCode::UNPROCESSABLE_ENTITY)
    }

    /// Every refused field with this status, or nothing.
    pub fn finish_with(self, status: StatusCode) -> Result<(), ApiError> {
        if self.params.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Fields {
                status,
                params: self.params,
            })
        }
    }
}

/// The core says `invalid number for amount: ...`; the field is named beside the reason already.
fn strip_field(message: &str, name: &str) -> String {
    message
        .strip_prefix(&format!("invalid number for {name}: "))
        .unwrap_or(message)
        .to_owned()
}

/// Cursor pagination of a list: `limit` (default 10, 1 to 100) and `starting_after` (the id of the last item
/// of the previous page).
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size.
    pub limit: Option<i64>,
    /// Cursor.
    pub starting_after: Option<String>,
}

/// Default page size.
pub const DEFAULT_LIMIT: usize = 10;
/// Largest page.
pub const MAX_LIMIT: usize = 100;

/// A checked page size.
pub fn page_limit(limit: Option<i64>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT as i64).contains(&n) => Ok(n as usize),
        Some(n) => Err(ApiError::malformed(
            "limit",
            format!("{n} is not in 1..={MAX_LIMIT}"),
        )),
    }
}

/// One page: `data` and whether more follow (Stripe's list shape). `items` holds up to `limit + 1` items
/// fetched, the extra one only telling that more exist.
pub fn page<T: serde::Serialize>(
    mut items: Vec<T>,
    limit: usize,
) -> Result<serde_json::Value, ApiError> {
    let has_more = items.len() > limit;
    items.truncate(limit);
    Ok(serde_json::json!({
        "object": "list",
        "data": serde_json::to_value(items).map_err(anyhow::Error::from)?,
        "has_more": has_more,
    }))
}

/// The items after the one whose key is `after` (the list is in page order), or an error naming the cursor when
/// no item has that key.
pub fn after_cursor<T>(
    items: Vec<T>,
    after: Option<&str>,
    key: impl Fn(&T) -> &str,
) -> Result<Vec<T>, ApiError> {
    let Some(after) = after else {
        return Ok(items);
    };
    match items.iter().position(|i| key(i) == after) {
        Some(i) => Ok(items.into_iter().skip(i + 1).collect()),
        None => Err(unknown_cursor(after)),
    }
}

/// The 400 of a cursor that names nothing.
pub fn unknown_cursor(after: &str) -> ApiError {
    ApiError::malformed(
        "starting_after",
        format!("{after:?} is not an item of this list"),
    )
}

/// An instant given as RFC 3339, or a date (`YYYY-MM-DD`, midnight UTC; with `end_of_day`, the last instant of
/// that day).
pub fn parse_instant(name: &str, raw: &str, end_of_day: bool) -> Result<DateTime<Utc>, ApiError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Ok(t.with_timezone(&Utc));
    }
    match NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        Ok(d) => {
            let start = d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc();
            Ok(if end_of_day {
                start + chrono::Duration::days(1) - chrono::Duration::nanoseconds(1)
            } else {
                start
            })
        }
        Err(_) => Err(ApiError::malformed(
            name,
            format!("{raw:?} is neither an RFC 3339 time nor a YYYY-MM-DD date"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        city: Option<String>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        customer_id: String,
        #[serde(default)]
        days: Option<i32>,
        #[serde(default)]
        address: Option<Inner>,
    }

    fn field_of(e: ApiError) -> (StatusCode, String) {
        match e {
            ApiError::Fields { status, params } => (status, params[0].name.clone()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn json_errors_are_400_and_name_the_field() {
        let e = parse_json::<Body>(br#"{"customer_id": "c", "colour": 1}"#).unwrap_err();
        assert_eq!(field_of(e), (StatusCode::BAD_REQUEST, "colour".into()));
        let e = parse_json::<Body>(br#"{"days": 1}"#).unwrap_err();
        assert_eq!(field_of(e), (StatusCode::BAD_REQUEST, "customer_id".into()));
        let e = parse_json::<Body>(br#"{"customer_id": "c", "days": "x"}"#).unwrap_err();
        assert_eq!(field_of(e), (StatusCode::BAD_REQUEST, "days".into()));
        let e =
            parse_json::<Body>(br#"{"customer_id": "c", "address": {"town": "x"}}"#).unwrap_err();
        assert_eq!(
            field_of(e),
            (StatusCode::BAD_REQUEST, "address.town".into())
        );
        let e = parse_json::<Body>(br#"{"customer_id": "c""#).unwrap_err();
        assert_eq!(field_of(e), (StatusCode::BAD_REQUEST, "body".into()));
        let e = parse_json::<Body>(br#"{"customer_id": "c"} trailing"#).unwrap_err();
        assert_eq!(field_of(e), (StatusCode::BAD_REQUEST, "body".into()));
        let e = parse_json::<Body>(b"[1]").unwrap_err();
        assert_eq!(field_of(e).0, StatusCode::BAD_REQUEST);
        assert!(parse_json::<Body>(br#"{"customer_id": "c", "days": null}"#).is_ok());
    }

    #[test]
    fn an_empty_body_is_an_empty_object() {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Optional {
            #[serde(default)]
            at_period_end: bool,
        }
        assert!(!parse_json::<Optional>(b"").unwrap().at_period_end);
        assert!(!parse_json::<Optional>(b" \n").unwrap().at_period_end);
    }

    #[test]
    fn checks_collect_every_refused_field() {
        let mut c = Check::new();
        c.id("customer_id", "ok-id_1.x");
        c.currency("currency", "eur");
        c.timezone("timezone", "Europe/Paris");
        c.days("invoice_grace_period_days", 0);
        c.anchor_day("billing_anchor_day", 31);
        assert!(c.is_ok());
        c.id("customer_id", "");
        c.id("subscription_id", "a/b");
        c.currency("currency", "XXY");
        c.timezone("timezone", "Mars/Olympus");
        c.days("net_payment_term_days", -1);
        c.anchor_day("billing_anchor_day", 32);
        c.anchor_day("billing_anchor_day", 0);
        let names: Vec<String> = match c.finish().unwrap_err() {
            ApiError::Fields { status, params } => {
                assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
                params.into_iter().map(|p| p.name).collect()
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(
            names,
            [
                "customer_id",
                "subscription_id",
                "currency",
                "timezone",
                "net_payment_term_days",
                "billing_anchor_day",
                "billing_anchor_day"
            ]
        );
    }

    #[test]
    fn amounts_are_exact_and_non_negative() {
        let mut c = Check::new();
        assert_eq!(
            c.amount("amount", &serde_json::json!("10.50")),
            Some(Decimal::new(1050, 2))
        );
        assert_eq!(
            c.amount("amount", &serde_json::json!(3)),
            Some(Decimal::from(3))
        );
        assert!(c.is_ok());
        for bad in [
            serde_json::json!("-1"),
            serde_json::json!("1e3"),
            serde_json::json!("1_000"),
            serde_json::json!(true),
            serde_json::json!("0.0000000001"),
        ] {
            let mut c = Check::new();
            assert_eq!(c.amount("amount", &bad), None, "{bad}");
            assert!(!c.is_ok());
        }
    }

    #[test]
    fn limits_and_cursors() {
        assert_eq!(page_limit(None).unwrap(), 10);
        assert_eq!(page_limit(Some(100)).unwrap(), 100);
        assert!(page_limit(Some(0)).is_err());
        assert!(page_limit(Some(101)).is_err());
        let items = vec!["c", "b", "a"];
        assert_eq!(
            after_cursor(items.clone(), Some("c"), |s| s).unwrap(),
            ["b", "a"]
        );
        assert!(after_cursor(items.clone(), Some("z"), |s| s).is_err());
        let p = page(vec![1, 2, 3], 2).unwrap();
        assert_eq!(p["data"], serde_json::json!([1, 2]));
        assert_eq!(p["has_more"], true);
        let p = page(vec![1, 2], 2).unwrap();
        assert_eq!(p["has_more"], false);
    }

    #[test]
    fn instants_and_dates() {
        let t = parse_instant("period_from", "2026-01-01", false).unwrap();
        assert_eq!(t.to_rfc3339(), "2026-01-01T00:00:00+00:00");
        let t = parse_instant("period_to", "2026-01-01", true).unwrap();
        assert!(t < "2026-01-02T00:00:00Z".parse::<DateTime<Utc>>().unwrap());
        assert!(t > "2026-01-01T23:59:59Z".parse::<DateTime<Utc>>().unwrap());
        let t = parse_instant("x", "2026-01-01T01:00:00+01:00", false).unwrap();
        assert_eq!(t.to_rfc3339(), "2026-01-01T00:00:00+00:00");
        assert!(parse_instant("x", "yesterday", false).is_err());
    }
}
