//! The pure parts of a delivery: the `Billing-Signature` header and the retry schedule.

use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "Billing-Signature";
/// The webhook event id header (receivers deduplicate on it).
pub const EVENT_ID_HEADER: &str = "Billing-Event-Id";

/// Hex HMAC-SHA256 of `"<t>.<body>"` with `secret`.
pub fn v1(secret: &str, t: i64, body: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `t=<t>,v1=<hex>[,v1=<hex>]`: one `v1` per secret (two during a rotation's overlap).
pub fn header(secrets: &[&str], t: i64, body: &str) -> String {
    let mut out = format!("t={t}");
    for s in secrets {
        out.push_str(",v1=");
        out.push_str(&v1(s, t, body));
    }
    out
}

/// The retry schedule of a delivery.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Wait after the first failure.
    pub base: Duration,
    /// Longest wait.
    pub cap: Duration,
    /// No attempt later than this after the schedule started.
    pub give_up_after: Duration,
}

impl Schedule {
    /// The wait after the `failures`-th failed attempt (1-based): `base × 2^(failures-1)`, at most `cap`.
    pub fn backoff(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1));
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// When to try again after `failures` failed attempts since `started`, the latest at `now`; `None`: give up
    /// (the next attempt would come after the retry window).
    pub fn next_attempt(
        &self,
        started: DateTime<Utc>,
        failures: u32,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let next = now + chrono::Duration::from_std(self.backoff(failures)).ok()?;
        let deadline = started + chrono::Duration::from_std(self.give_up_after).ok()?;
        (next <= deadline).then_some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // RFC 4231 test case 2 ("Jefe" / "what do ya want for nothing?"), split as "<t>.<body>" would be.
        assert_eq!(
            {
                let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
                mac.update(b"what do ya want for nothing?");
                mac.finalize()
                    .into_bytes()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            },
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let sig = v1("whsec_test", 1_700_000_000, r#"{"id":"evt_1"}"#);
        assert_eq!(sig.len(), 64);
        assert_ne!(sig, v1("whsec_test", 1_700_000_001, r#"{"id":"evt_1"}"#));
        assert_ne!(sig, v1("whsec_other", 1_700_000_000, r#"{"id":"evt_1"}"#));
    }

    #[test]
    fn one_v1_per_secret() {
        let h = header(&["a", "b"], 42, "{}");
        let parts: Vec<&str> = h.split(',').collect();
        assert_eq!(parts[0], "t=42");
        assert_eq!(parts[1], format!("v1={}", v1("a", 42, "{}")));
        assert_eq!(parts[2], format!("v1={}", v1("b", 42, "{}")));
        assert_eq!(header(&["a"], 42, "{}").matches("v1=").count(), 1);
    }

    #[test]
    fn the_default_schedule_doubles_from_a_minute_to_six_hours_over_three_days() {
        let s = Schedule {
            base: Duration::from_secs(60),
            cap: Duration::from_secs(6 * 3600),
            give_up_after: Duration::from_secs(3 * 86400),
        };
        assert_eq!(s.backoff(1), Duration::from_secs(60));
        assert_eq!(s.backoff(2), Duration::from_secs(120));
        assert_eq!(s.backoff(9), Duration::from_secs(60 * 256));
        assert_eq!(s.backoff(10), Duration::from_secs(6 * 3600));
        assert_eq!(s.backoff(1000), Duration::from_secs(6 * 3600));
        // Walk the schedule as a dead endpoint would see it.
        let start: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let (mut now, mut failures) = (start, 0);
        while let Some(next) = s.next_attempt(start, failures + 1, now) {
            failures += 1;
            now = next;
        }
        let attempts = failures + 1;
        // 0, 1, 3, 7, … 511 minutes (nine doubling waits), then every 6 hours up to 4,111 minutes (68.5 h).
        assert_eq!(attempts, 20, "attempts within 3 days");
        assert!(now <= start + chrono::Duration::days(3));
        assert!(now > start + chrono::Duration::days(3) - chrono::Duration::hours(6));
    }
}
