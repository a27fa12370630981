//! Event validation shared by the gateway and rating: pure functions of the event (and, for the time window, of a
//! clock reading passed in), so rating can apply the same rules to what producers write to Kafka directly.

use std::time::Duration;

use crate::usage::UsageEvent;
use chrono::{DateTime, SecondsFormat, TimeZone, Utc};

/// Longest id (tenant, event, customer, metric), in characters.
pub const MAX_ID_CHARS: usize = 256;
/// Most properties on one event.
pub const MAX_PROPERTIES: usize = 100;

/// The earliest event time accepted: 2000-01-01T00:00:00Z. Older timestamps are almost always a unit mix-up
/// (seconds sent as milliseconds).
pub fn earliest_timestamp() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).unwrap()
}

/// Why an event is invalid. Every variant is permanent: resending the same event cannot succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// A required id is empty or only whitespace.
    #[error("`{field}` must not be empty")]
    Blank {
        /// Field name.
        field: &'static str,
    },
    /// An id is longer than [`MAX_ID_CHARS`].
    #[error("`{field}` is {chars} characters long; at most {MAX_ID_CHARS} are allowed")]
    TooLong {
        /// Field name.
        field: &'static str,
        /// Its length in characters.
        chars: usize,
    },
    /// An id contains a control character.
    #[error("`{field}` contains control character {ch:?} at character {position}")]
    ControlCharacter {
        /// Field name.
        field: &'static str,
        /// The character.
        ch: char,
        /// Its 0-based character position.
        position: usize,
    },
    /// More than [`MAX_PROPERTIES`] properties.
    #[error("{count} properties; at most {MAX_PROPERTIES} are allowed")]
    TooManyProperties {
        /// How many the event has.
        count: usize,
    },
    /// The timestamp is before [`earliest_timestamp`].
    #[error("timestamp {} is before 2000-01-01T00:00:00Z", rfc3339(.timestamp))]
    TooOld {
        /// The event time.
        timestamp: DateTime<Utc>,
    },
    /// The timestamp is further ahead of the clock than allowed.
    #[error(
        "timestamp {} is more than {} ahead of the gateway clock ({})",
        rfc3339(.timestamp), humanize(.max_future), rfc3339(.now)
    )]
    InFuture {
        /// The event time.
        timestamp: DateTime<Utc>,
        /// The clock reading it was checked against.
        now: DateTime<Utc>,
        /// The allowed lead.
        max_future: Duration,
    },
    /// The encoded event is larger than allowed.
    #[error("encoded event is {bytes} bytes; at most {max} are allowed")]
    TooLarge {
        /// Its encoded size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
}

// Milliseconds at most: event times have no finer precision on the wire.
fn rfc3339(t: &DateTime<Utc>) -> String {
    let ms = t.timestamp_subsec_millis();
    let format = if ms == 0 {
        SecondsFormat::Secs
    } else {
        SecondsFormat::Millis
    };
    t.to_rfc3339_opts(format, true)
}

fn humanize(d: &Duration) -> String {
    let (s, ns) = (d.as_secs(), d.subsec_nanos());
    match (s, ns) {
        (s, 0) if s > 0 && s % 3600 == 0 => format!("{}h", s / 3600),
        (s, 0) if s > 0 && s % 60 == 0 => format!("{}m", s / 60),
        (s, 0) => format!("{s}s"),
        _ => format!("{}ms", d.as_millis()),
    }
}

/// The structural rules, independent of any clock or configuration: every id non-blank, at most
/// [`MAX_ID_CHARS`] characters and free of control characters; at most [`MAX_PROPERTIES`] properties; a
/// timestamp not before 2000-01-01. (Property values are scalars by construction: [`UsageEvent`]'s
/// deserializer rejects objects, arrays and null.)
pub fn validate_event(ev: &UsageEvent) -> Result<(), Invalid> {
    for (field, value) in [
        ("tenant_id", &ev.tenant_id),
        ("event_id", &ev.event_id),
        ("customer_id", &ev.customer_id),
        ("metric_code", &ev.metric_code),
    ] {
        check_id(field, value)?;
    }
    if ev.properties.len() > MAX_PROPERTIES {
        return Err(Invalid::TooManyProperties {
            count: ev.properties.len(),
        });
    }
    if ev.timestamp < earliest_timestamp() {
        return Err(Invalid::TooOld {
            timestamp: ev.timestamp,
        });
    }
    Ok(())
}

fn check_id(field: &'static str, value: &str) -> Result<(), Invalid> {
    if value.trim().is_empty() {
        return Err(Invalid::Blank { field });
    }
    let chars = value.chars().count();
    if chars > MAX_ID_CHARS {
        return Err(Invalid::TooLong { field, chars });
    }
    if let Some((position, ch)) = value.chars().enumerate().find(|(_, c)| c.is_control()) {
        return Err(Invalid::ControlCharacter {
            field,
            ch,
            position,
        });
    }
    Ok(())
}

/// The time window: the event may be at most `max_future` ahead of `now` (the caller's clock reading).
pub fn check_not_in_future(
    ev: &UsageEvent,
    now: DateTime<Utc>,
    max_future: Duration,
) -> Result<(), Invalid> {
    let lead = chrono::TimeDelta::from_std(max_future).unwrap_or(chrono::TimeDelta::MAX);
    match now.checked_add_signed(lead) {
        Some(latest) if ev.timestamp > latest => Err(Invalid::InFuture {
            timestamp: ev.timestamp,
            now,
            max_future,
        }),
        _ => Ok(()),
    }
}

/// The size rule: `encoded` (the event's bytes on the topic) must not exceed `max`.
pub fn check_size(encoded: usize, max: usize) -> Result<(), Invalid> {
    if encoded > max {
        Err(Invalid::TooLarge {
            bytes: encoded,
            max,
        })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> UsageEvent {
        UsageEvent {
            tenant_id: "acme".into(),
            event_id: "e-1".into(),
            customer_id: "cus-1".into(),
            metric_code: "api_calls".into(),
            timestamp: Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap(),
            properties: [("value".to_owned(), "3.5".to_owned())].into(),
        }
    }

    #[test]
    fn a_plain_event_is_valid() {
        assert_eq!(validate_event(&event()), Ok(()));
    }

    #[test]
    fn every_id_must_be_non_blank() {
        for field in ["tenant_id", "event_id", "customer_id", "metric_code"] {
            for blank in ["", " ", "\t \n"] {
                let mut ev = event();
                *id_mut(&mut ev, field) = blank.into();
                assert_eq!(
                    validate_event(&ev),
                    Err(Invalid::Blank { field }),
                    "{blank:?}"
                );
            }
        }
    }

    fn id_mut<'a>(ev: &'a mut UsageEvent, field: &str) -> &'a mut String {
        match field {
            "tenant_id" => &mut ev.tenant_id,
            "event_id" => &mut ev.event_id,
            "customer_id" => &mut ev.customer_id,
            _ => &mut ev.metric_code,
        }
    }

    #[test]
    fn ids_are_limited_to_256_characters_not_bytes() {
        let mut ev = event();
        ev.customer_id = "é".repeat(MAX_ID_CHARS);
        assert_eq!(validate_event(&ev), Ok(()));
        ev.customer_id.push('x');
        assert_eq!(
            validate_event(&ev),
            Err(Invalid::TooLong {
                field: "customer_id",
                chars: 257
            })
        );
        assert_eq!(
            validate_event(&ev).unwrap_err().to_string(),
            "`customer_id` is 257 characters long; at most 256 are allowed"
        );
    }

    #[test]
    fn ids_reject_control_characters() {
        let mut ev = event();
        ev.event_id = "e-\u{0}1".into();
        assert_eq!(
            validate_event(&ev),
            Err(Invalid::ControlCharacter {
                field: "event_id",
                ch: '\0',
                position: 2
            })
        );
        ev.event_id = "e\u{7f}".into();
        assert!(matches!(
            validate_event(&ev),
            Err(Invalid::ControlCharacter { ch: '\u{7f}', .. })
        ));
        ev.event_id = "e 1 ünï".into();
        assert_eq!(validate_event(&ev), Ok(()), "spaces and letters are fine");
    }

    #[test]
    fn at_most_100_properties() {
        let mut ev = event();
        ev.properties = (0..100)
            .map(|i| (format!("p{i}"), "1".to_owned()))
            .collect();
        assert_eq!(validate_event(&ev), Ok(()));
        ev.properties.insert("one-more".into(), "1".into());
        assert_eq!(
            validate_event(&ev),
            Err(Invalid::TooManyProperties { count: 101 })
        );
    }

    #[test]
    fn timestamps_start_in_2000() {
        let mut ev = event();
        ev.timestamp = earliest_timestamp();
        assert_eq!(validate_event(&ev), Ok(()));
        ev.timestamp = earliest_timestamp() - chrono::TimeDelta::milliseconds(1);
        assert_eq!(
            validate_event(&ev).unwrap_err().to_string(),
            "timestamp 1999-12-31T23:59:59.999Z is before 2000-01-01T00:00:00Z"
        );
    }

    #[test]
    fn the_future_window_is_inclusive_and_uses_the_given_clock() {
        let now = Utc.with_ymd_and_hms(2026, 11, 25, 0, 0, 0).unwrap();
        let day = Duration::from_secs(86_400);
        let mut ev = event();
        ev.timestamp = now + chrono::TimeDelta::hours(24);
        assert_eq!(check_not_in_future(&ev, now, day), Ok(()));
        ev.timestamp += chrono::TimeDelta::milliseconds(1);
        let err = check_not_in_future(&ev, now, day).unwrap_err();
        assert_eq!(
            err.to_string(),
            "timestamp 2026-11-26T00:00:00.001Z is more than 24h ahead of the gateway clock \
             (2026-11-25T00:00:00Z)"
        );
        ev.timestamp = now - chrono::TimeDelta::days(400);
        assert_eq!(
            check_not_in_future(&ev, now, day),
            Ok(()),
            "the past is fine"
        );
        assert_eq!(
            check_not_in_future(&ev, now, Duration::MAX),
            Ok(()),
            "a huge window never overflows"
        );
    }

    #[test]
    fn size_limit_is_inclusive() {
        assert_eq!(check_size(65_536, 65_536), Ok(()));
        assert_eq!(
            check_size(65_537, 65_536).unwrap_err().to_string(),
            "encoded event is 65537 bytes; at most 65536 are allowed"
        );
    }

    #[test]
    fn durations_read_naturally() {
        let h = |ms: u64| humanize(&Duration::from_millis(ms));
        assert_eq!(h(86_400_000), "24h");
        assert_eq!(h(90_000), "90s");
        assert_eq!(h(120_000), "2m");
        assert_eq!(h(1_500), "1500ms");
    }
}
