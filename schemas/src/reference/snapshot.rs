//! The lifecycle half of rating's reference state as bytes, so that a restart starts from a snapshot of it instead
//! of folding `billing.lifecycle` from its beginning: each customer's creation time, timezone, test clock and
//! subscriptions, and every clock's latest time. The catalog half is not in it: the catalog is small and read
//! whole.
//!
//! Only the state [`Reference::for_attribution`] keeps can be taken (the full state also holds customer profiles,
//! coupons and wallets, which this format leaves out), and only into such a state.
//!
//! Format (version 1): the magic `BRS1`, then the customers, then the clocks. Counts and indices are LEB128
//! varints, strings a varint length and UTF-8 bytes, an instant its seconds since the epoch (zigzag varint) and its
//! nanoseconds (varint), an option a byte 0 or 1 before its value, an enum its variant's number in one byte.

use billing_core::proration::ProrationConvention;
use billing_core::subscription::{Change, ChangeKind, Subscription as History};
use chrono::{DateTime, Utc};

use super::{BillingTime, Customer, CustomerKey, Pair, Reference, Subscription};

const MAGIC: &[u8; 4] = b"BRS1";

impl Reference {
    /// The lifecycle half of an attribution-only state (see the module), as bytes.
    pub fn encode_lifecycle_state(&self) -> Result<Vec<u8>, String> {
        if !self.attribution_only {
            return Err("only rating's attribution state is snapshotted".into());
        }
        let mut w = Writer(Vec::with_capacity(64 + self.customers.len() * 96));
        w.0.extend_from_slice(MAGIC);
        w.len(self.customers.len());
        for (key, c) in &self.customers {
            w.str(key.tenant());
            w.str(key.customer());
            w.opt(c.created_at.as_ref(), Writer::time);
            w.opt(c.timezone.as_ref(), |w, tz| w.str(tz.name()));
            w.opt(c.test_clock.as_deref(), Writer::str);
            w.len(c.subscriptions.len());
            for s in &c.subscriptions {
                w.subscription(s);
            }
        }
        w.len(self.clocks.len());
        for ((tenant, clock), at) in &self.clocks {
            w.str(tenant);
            w.str(clock);
            w.time(at);
        }
        Ok(w.0)
    }

    /// Replace the lifecycle half of an attribution-only state with the one `bytes` holds; returns how many
    /// customers it holds. On error the state is left as it was.
    pub fn restore_lifecycle_state(&mut self, bytes: &[u8]) -> Result<usize, String> {
        if !self.attribution_only {
            return Err("a snapshot restores only rating's attribution state".into());
        }
        let mut r = Reader { bytes, at: 0 };
        if r.take(4)? != MAGIC {
            return Err("not a reference snapshot of format 1".into());
        }
        let n = r.len()?;
        // Each customer takes at least 5 bytes: a count this large cannot be honest.
        if n > bytes.len() / 5 {
            return Err(format!("{n} customers in {} bytes", bytes.len()));
        }
        let mut customers = hashbrown::HashMap::with_capacity(n);
        for _ in 0..n {
            let (tenant, customer) = (r.str()?, r.str()?);
            let created_at = r.opt(Reader::time)?;
            let timezone = match r.opt(Reader::str)? {
                None => None,
                Some(name) => Some(
                    name.parse()
                        .map_err(|_| format!("unknown timezone {name:?}"))?,
                ),
            };
            let test_clock = r.opt(|r| r.str().map(str::to_owned))?;
            let subs = r.len()?;
            let mut subscriptions = Vec::with_capacity(subs.min(r.left()));
            for _ in 0..subs {
                subscriptions.push(r.subscription()?);
            }
            let key = CustomerKey::from(&Pair(tenant, customer));
            let c = Customer {
                record: None,
                created_at,
                timezone,
                test_clock,
                subscriptions,
                coupons: Vec::new(),
                wallets: Vec::new(),
            };
            if customers.insert(key, Box::new(c)).is_some() {
                return Err(format!("customer {tenant}/{customer} twice"));
            }
        }
        let n_clocks = r.len()?;
        let mut clocks = hashbrown::HashMap::with_capacity(n_clocks.min(r.left()));
        for _ in 0..n_clocks {
            let key = (r.str()?.to_owned(), r.str()?.to_owned());
            clocks.insert(key, r.time()?);
        }
        if r.left() != 0 {
            return Err(format!("{} bytes after the end", r.left()));
        }
        self.customers = customers;
        self.latest_clock = clocks.values().max().copied();
        self.clocks = clocks;
        self.revision += 1;
        Ok(n)
    }
}

struct Writer(Vec<u8>);

impl Writer {
    fn u64(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn len(&mut self, n: usize) {
        self.u64(n as u64);
    }

    fn str(&mut self, s: &str) {
        self.len(s.len());
        self.0.extend_from_slice(s.as_bytes());
    }

    fn time(&mut self, t: &DateTime<Utc>) {
        let s = t.timestamp();
        self.u64(((s << 1) ^ (s >> 63)) as u64);
        self.u64(u64::from(t.timestamp_subsec_nanos()));
    }

    fn opt<T: ?Sized>(&mut self, v: Option<&T>, put: impl FnOnce(&mut Self, &T)) {
        match v {
            None => self.0.push(0),
            Some(v) => {
                self.0.push(1);
                put(self, v);
            }
        }
    }

    fn subscription(&mut self, s: &Subscription) {
        self.str(&s.id);
        self.len(s.plans.len());
        for p in &s.plans {
            self.str(p);
        }
        self.0.push(match s.billing_time {
            BillingTime::Calendar => 0,
            BillingTime::Anniversary => 1,
        });
        self.opt(s.anchor_day.as_ref(), |w, d| w.u64(u64::from(*d)));
        self.0.push(match s.proration {
            ProrationConvention::Days => 0,
            ProrationConvention::DaysExclusiveEnd => 1,
            ProrationConvention::Seconds => 2,
            ProrationConvention::ThirtyDay => 3,
        });
        self.time(&s.created_at);
        let h = &s.history;
        self.time(&h.started_at);
        self.opt(h.trial_ends_at.as_ref(), Writer::time);
        self.len(h.plan);
        self.len(h.changes.len());
        for c in &h.changes {
            self.time(&c.at);
            match c.kind {
                ChangeKind::Upgrade { plan } => {
                    self.0.push(0);
                    self.len(plan);
                }
                ChangeKind::Downgrade { plan } => {
                    self.0.push(1);
                    self.len(plan);
                }
                ChangeKind::Cancel { immediate } => self.0.extend([2, u8::from(immediate)]),
                ChangeKind::Pause => self.0.push(3),
                ChangeKind::Resume => self.0.push(4),
                ChangeKind::Suspend => self.0.push(5),
                ChangeKind::Unsuspend => self.0.push(6),
            }
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.left() {
            return Err(format!("cut short at byte {}", self.at));
        }
        let out = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(out)
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!("a number too long at byte {}", self.at))
    }

    fn len(&mut self) -> Result<usize, String> {
        usize::try_from(self.u64()?).map_err(|e| e.to_string())
    }

    fn str(&mut self) -> Result<&'a str, String> {
        let n = self.len()?;
        std::str::from_utf8(self.take(n)?).map_err(|e| format!("a string: {e}"))
    }

    fn time(&mut self) -> Result<DateTime<Utc>, String> {
        let z = self.u64()?;
        let secs = ((z >> 1) as i64) ^ -((z & 1) as i64);
        let nanos = u32::try_from(self.u64()?).map_err(|e| e.to_string())?;
        DateTime::from_timestamp(secs, nanos).ok_or_else(|| format!("no instant {secs}.{nanos}"))
    }

    fn opt<T>(
        &mut self,
        get: impl FnOnce(&mut Self) -> Result<T, String>,
    ) -> Result<Option<T>, String> {
        match self.byte()? {
            0 => Ok(None),
            1 => get(self).map(Some),
            b => Err(format!("option tag {b}")),
        }
    }

    fn subscription(&mut self) -> Result<Subscription, String> {
        let id = self.str()?.to_owned();
        let n = self.len()?;
        let mut plans = Vec::with_capacity(n.min(self.left()));
        for _ in 0..n {
            plans.push(self.str()?.to_owned());
        }
        let billing_time = match self.byte()? {
            0 => BillingTime::Calendar,
            1 => BillingTime::Anniversary,
            b => return Err(format!("billing time {b}")),
        };
        let anchor_day = self.opt(|r| u32::try_from(r.u64()?).map_err(|e| e.to_string()))?;
        let proration = match self.byte()? {
            0 => ProrationConvention::Days,
            1 => ProrationConvention::DaysExclusiveEnd,
            2 => ProrationConvention::Seconds,
            3 => ProrationConvention::ThirtyDay,
            b => return Err(format!("proration {b}")),
        };
        let created_at = self.time()?;
        let started_at = self.time()?;
        let trial_ends_at = self.opt(Reader::time)?;
        let plan = self.len()?;
        let n = self.len()?;
        let mut changes = Vec::with_capacity(n.min(self.left()));
        for _ in 0..n {
            let at = self.time()?;
            let kind = match self.byte()? {
                0 => ChangeKind::Upgrade { plan: self.len()? },
                1 => ChangeKind::Downgrade { plan: self.len()? },
                2 => ChangeKind::Cancel {
                    immediate: match self.byte()? {
                        0 => false,
                        1 => true,
                        b => return Err(format!("cancel flag {b}")),
                    },
                },
                3 => ChangeKind::Pause,
                4 => ChangeKind::Resume,
                5 => ChangeKind::Suspend,
                6 => ChangeKind::Unsuspend,
                b => return Err(format!("change kind {b}")),
            };
            changes.push(Change { at, kind });
        }
        let plan_ok = plan < plans.len()
            && changes.iter().all(|c| match c.kind {
                ChangeKind::Upgrade { plan } | ChangeKind::Downgrade { plan } => plan < plans.len(),
                _ => true,
            });
        if !plan_ok {
            return Err(format!("subscription {id:?} names a plan it does not list"));
        }
        Ok(Subscription {
            id,
            plans,
            billing_time,
            anchor_day,
            proration,
            created_at,
            history: History {
                started_at,
                trial_ends_at,
                plan,
                changes,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::{
        ClockTick, CustomerCreated, Lifecycle, LifecycleEvent, SubscriptionCanceled,
        SubscriptionChanged, SubscriptionEffective,
    };

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    /// A state with every kind of change, a trial, an anchor day, a test clock, a nanosecond instant, a timezone
    /// and a clock tick.
    fn folded() -> Reference {
        let mut r = Reference::for_attribution();
        let start = at("2026-01-01T00:00:00.000000123Z");
        let mut created = CustomerCreated::new("c1", "C1", "EUR", "Europe/Paris");
        created.test_clock_id = Some("clk".into());
        let [c, s] = LifecycleEvent::customer_subscribed("t", created, "s1", "basic", start);
        r.apply_lifecycle(c).unwrap();
        r.apply_lifecycle(s).unwrap();
        let ev = |payload| LifecycleEvent {
            tenant_id: "t".into(),
            event_id: "e".into(),
            occurred_at: start,
            payload,
        };
        let effective = |when: &str| SubscriptionEffective {
            subscription_id: "s1".into(),
            customer_id: "c1".into(),
            effective_at: at(when),
        };
        let changed = |plan: &str, at_period_end, when: &str| {
            Lifecycle::SubscriptionChanged(SubscriptionChanged {
                subscription_id: "s1".into(),
                customer_id: "c1".into(),
                new_plan_code: plan.into(),
                effective_at: at(when),
                at_period_end,
            })
        };
        for ev in [
            ev(Lifecycle::SubscriptionPaused(effective(
                "2026-01-05T00:00:00Z",
            ))),
            ev(Lifecycle::SubscriptionResumed(effective(
                "2026-01-07T00:00:00Z",
            ))),
            ev(changed("pro", false, "2026-01-10T00:00:00Z")),
            ev(changed("basic", true, "2026-01-12T00:00:00Z")),
            ev(Lifecycle::SubscriptionCanceled(SubscriptionCanceled {
                subscription_id: "s1".into(),
                customer_id: "c1".into(),
                effective_at: at("2026-01-20T00:00:00Z"),
                at_period_end: false,
            })),
            ev(Lifecycle::ClockTick(ClockTick {
                clock_id: "clk".into(),
                now: at("2026-01-21T10:00:00Z"),
            })),
        ] {
            r.apply_lifecycle(ev).unwrap();
        }
        let [c, s] = LifecycleEvent::customer_subscribed(
            "u",
            CustomerCreated::new("c2", "C2", "USD", "not a zone"),
            "s2",
            "basic",
            start,
        );
        r.apply_lifecycle(c).unwrap();
        r.apply_lifecycle(s).unwrap();
        r
    }

    fn customers(r: &Reference) -> Vec<(String, String, String)> {
        let mut out: Vec<_> = r
            .customers()
            .map(|((t, c), v)| (t.to_owned(), c.to_owned(), format!("{v:?}")))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn a_restored_state_equals_the_folded_one() {
        let r = folded();
        let bytes = r.encode_lifecycle_state().unwrap();
        let mut back = Reference::for_attribution();
        assert_eq!(back.restore_lifecycle_state(&bytes), Ok(2));
        assert_eq!(customers(&back), customers(&r));
        assert_eq!(back.clocks, r.clocks);
        assert!(back.latest_clock.is_some());
        assert_eq!(back.latest_clock, r.latest_clock);
        let c1 = back.customer("t", "c1").unwrap();
        assert_eq!(c1.subscriptions[0].history.changes.len(), 5);
        assert_eq!(c1.tz().name(), "Europe/Paris");
        assert_eq!(back.customer("u", "c2").unwrap().timezone, None);
        // Encoding is a function of the state: the restored state encodes to the same bytes.
        assert_eq!(back.encode_lifecycle_state().unwrap().len(), bytes.len());
    }

    #[test]
    fn a_damaged_snapshot_is_refused_and_changes_nothing() {
        let r = folded();
        let bytes = r.encode_lifecycle_state().unwrap();
        let mut into = folded();
        let before = customers(&into);
        for cut in [0, 3, 4, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                into.restore_lifecycle_state(&bytes[..cut]).is_err(),
                "{cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(into.restore_lifecycle_state(&longer).is_err());
        let mut other = bytes.clone();
        other[0] = b'X';
        assert!(into.restore_lifecycle_state(&other).is_err());
        assert_eq!(customers(&into), before);
        // Nor does the full state take part.
        assert!(Reference::default().encode_lifecycle_state().is_err());
        assert!(Reference::default()
            .restore_lifecycle_state(&bytes)
            .is_err());
    }
}
