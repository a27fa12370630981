//! The payments ledger of one partition: the pure fold of its `billing.invoices`, `billing.payments` and
//! `billing.lifecycle` events, and the decisions taken from it. No I/O and no clock: "now" is the billing time of
//! the customer's clock, as its ticks tell.
//!
//! An invoice's attempts are numbered 1, 2, …; attempt `n` has the deterministic id `{tenant}.{invoice}.{n}`, the
//! provider's idempotency key, so an attempt resumed after a crash is the same attempt. Attempt 1 is due at the
//! invoice's `issued_at`, attempt `n + 1` at the time attempt `n` was due plus the `n`-th wait of the schedule (or at
//! a manual retry's time). After the last attempt of the schedule fails, the invoice is given up (dunning).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use billing_schemas::invoice::{CreditNoteKind, Invoice, InvoiceEvent};
use billing_schemas::lifecycle::{Lifecycle, LifecycleEvent};
use billing_schemas::payment::{Payment, PaymentEvent};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

/// The clock of customers without a test clock.
pub const WALL: &str = "wall";

/// The provider's idempotency key of attempt `n` on an invoice.
pub fn attempt_id(tenant: &str, invoice: &str, n: i32) -> String {
    format!("{tenant}.{invoice}.{n}")
}

/// Where collecting an invoice stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collection {
    /// Not paid yet.
    Open,
    /// Paid in full.
    Paid,
    /// Dunning gave up.
    Uncollectible,
    /// Voided: nothing to collect.
    Void,
}

/// An invoice being collected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// Customer.
    pub customer_id: String,
    /// ISO 4217 currency.
    pub currency: String,
    /// What the invoice asks for.
    pub amount_due: Decimal,
    /// Received so far.
    pub paid: Decimal,
    /// Billing time of finalization: attempt 1 is due then.
    pub issued_at: DateTime<Utc>,
    /// Payment due date (reminders count from it).
    pub due_date: DateTime<Utc>,
    /// Subscriptions billed (dunning acts on them).
    pub subscription_ids: Vec<String>,
    /// Highest attempt number started.
    pub attempts: i32,
    /// An attempt started whose outcome is not known yet: its number, amount and method. It is resumed with
    /// exactly these (the provider's idempotency key binds them), whatever changed since.
    pub pending: Option<(i32, Decimal, String)>,
    /// When the next attempt is due (billing time); `None` when nothing is scheduled.
    pub next_at: Option<DateTime<Utc>>,
    /// The schedule is exhausted: the last attempt failed.
    pub exhausted: bool,
    /// The last failure's message.
    pub last_reason: String,
    /// Billing time of the last failed attempt (dunning's decision takes its time).
    pub last_failed_at: Option<DateTime<Utc>>,
    /// Reminders already sent (days after due).
    pub reminded: BTreeSet<i32>,
    /// Status.
    pub status: Collection,
    /// Billing time it was paid in full or voided.
    pub settled_at: Option<DateTime<Utc>>,
    /// The provider's successful charge: its reference and amount (what refunds draw on).
    pub charge: Option<(String, Decimal)>,
    /// Refunds asked for by credit notes of kind `refund`, by credit note id.
    pub refunds: BTreeMap<String, Refund>,
}

/// A refund a credit note asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    /// Amount to give back.
    pub amount: Decimal,
    /// Billing time of the credit note.
    pub at: DateTime<Utc>,
    /// `None` until the provider answered; then whether it refunded.
    pub refunded: Option<bool>,
}

impl Due {
    /// Still to collect.
    pub fn remaining(&self) -> Decimal {
        (self.amount_due - self.paid).max(Decimal::ZERO)
    }
}

/// A payer: its clock, payment methods and live subscriptions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Payer {
    /// `wall` or a test clock id.
    pub clock: String,
    /// Email and name, for the provider's customer.
    pub email: Option<String>,
    /// Display name.
    pub name: Option<String>,
    /// Payment methods: id → (kind, token); removed ones stay (an attempt in flight may still use one).
    pub methods: BTreeMap<String, (String, String)>,
    /// Methods removed: never chosen again.
    pub removed: BTreeSet<String>,
    /// The method charged.
    pub default_method: Option<String>,
    /// Subscriptions created and not canceled, with whether they are paused.
    pub subscriptions: BTreeMap<String, bool>,
    /// Subscriptions suspended by dunning.
    pub suspended: BTreeSet<String>,
    /// The credit balance: credit notes of type `credit` by (issue time, id), with their currency and what is left.
    pub credits: BTreeMap<(DateTime<Utc>, String), (String, Decimal)>,
}

/// Something the service must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Charge attempt `number`, due at `at` (billing time), with this method.
    Charge {
        /// Tenant.
        tenant: String,
        /// Invoice.
        invoice_id: String,
        /// Attempt number.
        number: i32,
        /// Billing time of the attempt.
        at: DateTime<Utc>,
        /// Amount charged.
        amount: Decimal,
        /// Method id, kind and token.
        method: (String, String, String),
    },
    /// Give up on the invoice: mark it uncollectible and apply the dunning action.
    GiveUp {
        /// Tenant.
        tenant: String,
        /// Invoice.
        invoice_id: String,
        /// Billing time of the decision (the last attempt's).
        at: DateTime<Utc>,
    },
    /// Refund a credit note of kind `refund` through the provider.
    Refund {
        /// Tenant.
        tenant: String,
        /// Invoice whose charge is refunded.
        invoice_id: String,
        /// The credit note.
        credit_note_id: String,
        /// Amount.
        amount: Decimal,
        /// Billing time of the credit note.
        at: DateTime<Utc>,
    },
    /// Pay (part of) an open invoice with the customer's credit balance, from one credit note.
    ApplyCredit {
        /// Tenant.
        tenant: String,
        /// Invoice.
        invoice_id: String,
        /// The credit note the balance comes from.
        credit_note_id: String,
        /// Amount applied.
        amount: Decimal,
        /// Billing time: the later of the invoice's issue and the credit note's.
        at: DateTime<Utc>,
    },
    /// Lift dunning's suspension of a subscription whose customer has nothing left unpaid on it.
    Unsuspend {
        /// Tenant.
        tenant: String,
        /// Customer.
        customer_id: String,
        /// The subscription.
        subscription_id: String,
        /// Billing time of the payment that settled it.
        at: DateTime<Utc>,
    },
    /// Send a reminder.
    Remind {
        /// Tenant.
        tenant: String,
        /// Invoice.
        invoice_id: String,
        /// Days after the due date.
        days: i32,
        /// Billing time of the reminder.
        at: DateTime<Utc>,
    },
}

/// The fold of one partition.
#[derive(Debug, Default)]
pub struct Book {
    /// (tenant, customer) → payer.
    pub payers: HashMap<(String, String), Payer>,
    /// (tenant, invoice) → invoice being collected.
    pub invoices: BTreeMap<(String, String), Due>,
    /// (tenant, clock) → latest billing time (`("*", "wall")` for wall ticks).
    pub clocks: HashMap<(String, String), DateTime<Utc>>,
    /// (tenant, customer) → its invoices' ids.
    by_customer: HashMap<(String, String), BTreeSet<String>>,
    /// Payment events already applied (a retried publish can deliver one twice).
    seen: std::collections::HashSet<String>,
}

/// The policy the decisions follow.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Waits after each failed attempt.
    pub retry_delays: Vec<Duration>,
    /// Reminder days relative to the due date.
    pub reminder_days: Vec<i32>,
}

impl Book {
    /// Billing time of a (tenant, clock) on this partition.
    pub fn now(&self, tenant: &str, clock: &str) -> Option<DateTime<Utc>> {
        let own = self
            .clocks
            .get(&(tenant.to_owned(), clock.to_owned()))
            .copied();
        let wall = (clock == WALL)
            .then(|| self.clocks.get(&("*".to_owned(), WALL.to_owned())).copied())
            .flatten();
        own.max(wall)
    }

    /// Apply a lifecycle event; returns the (tenant, clock) a tick moved.
    pub fn apply_lifecycle(&mut self, ev: &LifecycleEvent) -> Option<(String, String)> {
        let t = ev.tenant_id.clone();
        match &ev.payload {
            Lifecycle::CustomerCreated(c) => {
                let p = self.payers.entry((t, c.customer_id.clone())).or_default();
                p.clock = c.test_clock_id.clone().unwrap_or_else(|| WALL.to_owned());
                p.email = c.email.clone();
                p.name = Some(c.name.clone());
            }
            Lifecycle::SubscriptionCreated(s) => {
                self.payer(&t, &s.customer_id)
                    .subscriptions
                    .insert(s.subscription_id.clone(), false);
            }
            Lifecycle::SubscriptionPaused(s) => {
                if let Some(p) = self
                    .payer(&t, &s.customer_id)
                    .subscriptions
                    .get_mut(&s.subscription_id)
                {
                    *p = true;
                }
            }
            Lifecycle::SubscriptionResumed(s) => {
                if let Some(p) = self
                    .payer(&t, &s.customer_id)
                    .subscriptions
                    .get_mut(&s.subscription_id)
                {
                    *p = false;
                }
            }
            Lifecycle::SubscriptionCanceled(s) => {
                let p = self.payer(&t, &s.customer_id);
                p.subscriptions.remove(&s.subscription_id);
                p.suspended.remove(&s.subscription_id);
            }
            Lifecycle::SubscriptionSuspended(s) => {
                self.payer(&t, &s.customer_id)
                    .suspended
                    .insert(s.subscription_id.clone());
            }
            Lifecycle::SubscriptionUnsuspended(s) => {
                self.payer(&t, &s.customer_id)
                    .suspended
                    .remove(&s.subscription_id);
            }
            Lifecycle::ClockTick(tick) => {
                let key = (t, tick.clock_id.clone());
                let now = self.clocks.entry(key.clone()).or_insert(tick.now);
                *now = (*now).max(tick.now);
                return Some(key);
            }
            Lifecycle::CustomerUpdated(_)
            | Lifecycle::SubscriptionChanged(_)
            | Lifecycle::InvoiceFinalizeRequested(_)
            | Lifecycle::CreditNoteRequested(_)
            | Lifecycle::InvoiceVoidRequested(_)
            | Lifecycle::CouponApplied(_)
            | Lifecycle::CouponRemoved(_)
            | Lifecycle::OneOffInvoiceRequested(_)
            | Lifecycle::WalletCreated(_)
            | Lifecycle::WalletToppedUp(_) => {}
        }
        None
    }

    fn payer(&mut self, tenant: &str, customer: &str) -> &mut Payer {
        self.payers
            .entry((tenant.to_owned(), customer.to_owned()))
            .or_insert_with(|| Payer {
                clock: WALL.to_owned(),
                ..Payer::default()
            })
    }

    /// Apply an invoice event; returns the invoices it concerns (the one it opened, closed or refunds; for a credit
    /// to the balance, the customer's open invoices).
    pub fn apply_invoice(&mut self, ev: &InvoiceEvent) -> Vec<(String, String)> {
        self.apply_invoice_event(ev).unwrap_or_default()
    }

    fn apply_invoice_event(&mut self, ev: &InvoiceEvent) -> Option<Vec<(String, String)>> {
        let key = |id: &str| (ev.tenant_id.clone(), id.to_owned());
        match &ev.payload {
            Invoice::InvoiceFinalized(inv) => {
                // What is left to collect: the total less the prepaid credits the invoice used.
                let total = inv.total.parse::<Decimal>().unwrap_or_default();
                let credits = inv.credits_total.parse::<Decimal>().unwrap_or_default();
                let amount_due = (total - credits).max(Decimal::ZERO);
                let k = key(&inv.invoice_id);
                self.by_customer
                    .entry((ev.tenant_id.clone(), inv.customer_id.clone()))
                    .or_default()
                    .insert(inv.invoice_id.clone());
                self.invoices.entry(k.clone()).or_insert_with(|| Due {
                    customer_id: inv.customer_id.clone(),
                    currency: inv.currency.clone(),
                    amount_due,
                    paid: Decimal::ZERO,
                    issued_at: inv.issued_at,
                    due_date: inv.due_date,
                    subscription_ids: inv.subscription_ids.clone(),
                    attempts: 0,
                    pending: None,
                    next_at: Some(inv.issued_at),
                    exhausted: false,
                    last_reason: String::new(),
                    last_failed_at: None,
                    reminded: BTreeSet::new(),
                    status: if amount_due.is_zero() {
                        Collection::Paid
                    } else {
                        Collection::Open
                    },
                    settled_at: None,
                    charge: None,
                    refunds: BTreeMap::new(),
                });
                Some(vec![k])
            }
            Invoice::CreditNoteCreated(cn) if cn.kind == CreditNoteKind::Credit => {
                let total = cn.total.parse::<Decimal>().unwrap_or_default();
                self.payer(&ev.tenant_id, &cn.customer_id)
                    .credits
                    .entry((cn.issued_at, cn.credit_note_id.clone()))
                    .or_insert((cn.currency.clone(), total));
                Some(self.open_invoices_of(&ev.tenant_id, &cn.customer_id))
            }
            Invoice::CreditNoteCreated(cn) => {
                let k = key(&cn.invoice_id);
                let d = self.invoices.get_mut(&k)?;
                d.refunds
                    .entry(cn.credit_note_id.clone())
                    .or_insert_with(|| Refund {
                        amount: cn.total.parse().unwrap_or_default(),
                        at: cn.issued_at,
                        refunded: None,
                    });
                Some(vec![k])
            }
            Invoice::InvoiceVoided(v) => {
                let k = key(&v.invoice_id);
                if let Some(d) = self.invoices.get_mut(&k) {
                    // An uncollectible invoice can be voided too (Stripe's rule); a suspension it caused is lifted.
                    if matches!(d.status, Collection::Open | Collection::Uncollectible) {
                        d.status = Collection::Void;
                        d.settled_at = Some(ev.occurred_at);
                    }
                }
                Some(vec![k])
            }
        }
    }

    /// Apply a payment event; returns the customer it concerns.
    pub fn apply_payment(&mut self, ev: &PaymentEvent, policy: &Policy) -> (String, String) {
        let t = ev.tenant_id.clone();
        let customer = (t.clone(), ev.customer_id().to_owned());
        if !self.seen.insert(ev.event_id.clone()) {
            return customer;
        }
        fn inv<'a>(book: &'a mut Book, t: &str, id: &str) -> Option<&'a mut Due> {
            book.invoices.get_mut(&(t.to_owned(), id.to_owned()))
        }
        match &ev.payload {
            Payment::PaymentMethodAdded(m) => {
                let p = self.payer(&t, &m.customer_id);
                p.methods.insert(
                    m.payment_method_id.clone(),
                    (m.kind.clone(), m.token.clone()),
                );
                if m.set_default || p.default_method.is_none() {
                    p.default_method = Some(m.payment_method_id.clone());
                }
            }
            Payment::PaymentMethodRemoved(m) => {
                let p = self.payer(&t, &m.customer_id);
                p.removed.insert(m.payment_method_id.clone());
                if p.default_method.as_deref() == Some(m.payment_method_id.as_str()) {
                    p.default_method = None;
                }
            }
            Payment::DefaultPaymentMethodSet(m) => {
                let p = self.payer(&t, &m.customer_id);
                if p.methods.contains_key(&m.payment_method_id)
                    && !p.removed.contains(&m.payment_method_id)
                {
                    p.default_method = Some(m.payment_method_id.clone());
                }
            }
            Payment::PaymentAttempted(a) => {
                if let Some(d) = inv(self, &t, &a.invoice_id) {
                    d.attempts = d.attempts.max(a.attempt_number);
                    d.pending = Some((
                        a.attempt_number,
                        a.amount.parse().unwrap_or_default(),
                        a.payment_method_id.clone(),
                    ));
                }
            }
            Payment::PaymentSucceeded(s) => {
                if let Some(d) = inv(self, &t, &s.invoice_id) {
                    d.pending = None;
                    let amount = s.amount.parse::<Decimal>().unwrap_or_default();
                    d.paid += amount;
                    d.charge = Some((s.provider_reference.clone(), amount));
                    d.next_at = None;
                    if d.remaining().is_zero() {
                        d.status = Collection::Paid;
                        d.settled_at = Some(ev.occurred_at);
                    }
                }
            }
            Payment::PaymentFailed(f) => {
                if let Some(d) = inv(self, &t, &f.invoice_id) {
                    d.pending = None;
                    d.last_reason = f.reason.clone();
                    d.last_failed_at = Some(ev.occurred_at);
                    d.next_at = f.next_retry_at;
                    d.exhausted = f.next_retry_at.is_none()
                        && f.attempt_number as usize > policy.retry_delays.len();
                }
            }
            Payment::PaymentRetryRequested(r) => {
                let at = ev.occurred_at;
                if let Some(d) = inv(self, &t, &r.invoice_id) {
                    // A manual retry also reopens an invoice dunning gave up.
                    if matches!(d.status, Collection::Open | Collection::Uncollectible) {
                        d.status = Collection::Open;
                        d.next_at = Some(at);
                        d.exhausted = false;
                    }
                }
            }
            Payment::InvoicePaidOutOfBand(p) => {
                if let Some(d) = inv(self, &t, &p.invoice_id) {
                    d.paid += p.amount.parse::<Decimal>().unwrap_or_default();
                    if d.remaining().is_zero() {
                        d.status = Collection::Paid;
                        d.settled_at = Some(ev.occurred_at);
                        d.next_at = None;
                    }
                }
            }
            Payment::InvoiceUncollectible(u) => {
                if let Some(d) = inv(self, &t, &u.invoice_id) {
                    if d.status == Collection::Open {
                        d.status = Collection::Uncollectible;
                    }
                    d.next_at = None;
                }
            }
            Payment::DunningReminder(r) => {
                if let Some(d) = inv(self, &t, &r.invoice_id) {
                    d.reminded.insert(r.days_after_due);
                }
            }
            Payment::RefundSucceeded(r) => {
                if let Some(refund) =
                    inv(self, &t, &r.invoice_id).and_then(|d| d.refunds.get_mut(&r.credit_note_id))
                {
                    refund.refunded = Some(true);
                }
            }
            Payment::RefundFailed(r) => {
                if let Some(refund) =
                    inv(self, &t, &r.invoice_id).and_then(|d| d.refunds.get_mut(&r.credit_note_id))
                {
                    refund.refunded = Some(false);
                }
            }
            Payment::CreditApplied(c) => {
                let amount = c.amount.parse::<Decimal>().unwrap_or_default();
                if let Some(d) = inv(self, &t, &c.invoice_id) {
                    d.paid += amount;
                    if d.remaining().is_zero() && d.status == Collection::Open {
                        d.status = Collection::Paid;
                        d.settled_at = Some(ev.occurred_at);
                        d.next_at = None;
                    }
                }
                let p = self.payer(&t, &c.customer_id);
                if let Some((_, left)) = p
                    .credits
                    .iter_mut()
                    .find(|((_, id), _)| *id == c.credit_note_id)
                    .map(|(_, v)| v)
                {
                    *left = (*left - amount).max(Decimal::ZERO);
                }
            }
        }
        customer
    }

    /// What is due for one invoice now (`None` when its customer's clock has not started).
    pub fn actions_for(&self, key: &(String, String), policy: &Policy) -> Vec<Action> {
        let Some(d) = self.invoices.get(key) else {
            return Vec::new();
        };
        let (tenant, invoice_id) = key;
        let payer = self.payers.get(&(tenant.clone(), d.customer_id.clone()));
        // A refund waits until the charge it refunds is read (the API allows it once the attempt row says
        // succeeded, which is written just before `PaymentSucceeded` is published).
        let refundable = d.charge.is_some() || d.status != Collection::Open;
        let mut out: Vec<Action> = d
            .refunds
            .iter()
            .filter(|(_, r)| refundable && r.refunded.is_none())
            .map(|(cn, r)| Action::Refund {
                tenant: tenant.clone(),
                invoice_id: invoice_id.clone(),
                credit_note_id: cn.clone(),
                amount: r.amount,
                at: r.at,
            })
            .collect();
        if d.status != Collection::Open {
            if let Some(payer) = payer {
                out.extend(self.unsuspensions(tenant, &d.customer_id, payer));
            }
            return out;
        }
        // The credit balance pays first; the rest is charged once the credit is applied.
        if d.pending.is_none() {
            if let Some(payer) = payer {
                let credits = self.credit_allocation(tenant, &d.customer_id, payer, invoice_id);
                if !credits.is_empty() {
                    out.extend(credits);
                    return out;
                }
            }
        }
        let clock = payer.map(|p| p.clock.as_str()).unwrap_or(WALL);
        let now = self.now(tenant, clock);
        if d.exhausted {
            out.push(Action::GiveUp {
                tenant: tenant.clone(),
                invoice_id: invoice_id.clone(),
                at: d.last_failed_at.unwrap_or(d.issued_at),
            });
            return out;
        }
        let method_by_id = |id: &str| {
            let (kind, token) = payer?.methods.get(id)?;
            Some((id.to_owned(), kind.clone(), token.clone()))
        };
        let default_method = payer
            .and_then(|p| p.default_method.as_deref())
            .and_then(method_by_id);
        // The first attempt does not wait for a tick: finalization is its time.
        let due_at = d.next_at;
        let charge = match (&d.pending, due_at) {
            // An attempt started and not finished: resumed as it was started.
            (Some((number, amount, method)), _) => {
                method_by_id(method).map(|m| (*number, *amount, m))
            }
            (None, Some(at)) if d.attempts == 0 || now.is_some_and(|n| n >= at) => {
                default_method.map(|m| (d.attempts + 1, d.remaining(), m))
            }
            (None, _) => None,
        };
        if let Some((number, amount, method)) = charge {
            out.push(Action::Charge {
                tenant: tenant.clone(),
                invoice_id: invoice_id.clone(),
                number,
                at: due_at.unwrap_or(d.issued_at),
                amount,
                method,
            });
        }
        if let Some(now) = now {
            for days in &policy.reminder_days {
                let at = d.due_date + chrono::Duration::days(i64::from(*days));
                if at <= now && !d.reminded.contains(days) {
                    out.push(Action::Remind {
                        tenant: tenant.clone(),
                        invoice_id: invoice_id.clone(),
                        days: *days,
                        at,
                    });
                }
            }
        }
        out
    }

    /// The credit applications due on one invoice: the customer's credit balance allocated over its open invoices
    /// in issue order (credit notes in issue order, same currency only), so every invoice of the customer computes
    /// the same allocation from the same fold and a credit is never applied twice.
    fn credit_allocation(
        &self,
        tenant: &str,
        customer: &str,
        payer: &Payer,
        invoice_id: &str,
    ) -> Vec<Action> {
        if payer.credits.values().all(|(_, left)| left.is_zero()) {
            return Vec::new();
        }
        let mut left: Vec<((DateTime<Utc>, String), String, Decimal)> = payer
            .credits
            .iter()
            .filter(|(_, (_, l))| *l > Decimal::ZERO)
            .map(|(k, (cur, l))| (k.clone(), cur.clone(), *l))
            .collect();
        let mut open: Vec<(DateTime<Utc>, String, &Due)> = self
            .open_invoices_of(tenant, customer)
            .into_iter()
            .filter_map(|(_, id)| {
                let d = self.invoices.get(&(tenant.to_owned(), id.clone()))?;
                Some((d.issued_at, id, d))
            })
            .collect();
        open.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        for (issued_at, id, d) in open {
            let mut due = d.remaining();
            let mut mine = Vec::new();
            for ((cn_at, cn), cur, l) in left.iter_mut() {
                if due.is_zero() {
                    break;
                }
                if *cur != d.currency || l.is_zero() {
                    continue;
                }
                let take = (*l).min(due);
                *l -= take;
                due -= take;
                mine.push(Action::ApplyCredit {
                    tenant: tenant.to_owned(),
                    invoice_id: id.clone(),
                    credit_note_id: cn.clone(),
                    amount: take,
                    at: issued_at.max(*cn_at),
                });
            }
            if id == invoice_id {
                return mine;
            }
        }
        Vec::new()
    }

    /// The customer's suspended subscriptions that no unsettled invoice (open or uncollectible) bills any more:
    /// dunning's suspension ends when what caused it is paid (or voided), at the latest settlement's time.
    fn unsuspensions(&self, tenant: &str, customer: &str, payer: &Payer) -> Vec<Action> {
        let Some(ids) = self
            .by_customer
            .get(&(tenant.to_owned(), customer.to_owned()))
        else {
            return Vec::new();
        };
        let invoices: Vec<&Due> = ids
            .iter()
            .filter_map(|id| self.invoices.get(&(tenant.to_owned(), id.clone())))
            .collect();
        let now = self.now(tenant, &payer.clock);
        payer
            .suspended
            .iter()
            .filter(|sub| {
                !invoices.iter().any(|d| {
                    matches!(d.status, Collection::Open | Collection::Uncollectible)
                        && d.subscription_ids.contains(sub)
                })
            })
            .filter_map(|sub| {
                let at = invoices
                    .iter()
                    .filter(|d| d.subscription_ids.contains(sub))
                    .filter_map(|d| d.settled_at)
                    .max()
                    .or(now)?;
                Some(Action::Unsuspend {
                    tenant: tenant.to_owned(),
                    customer_id: customer.to_owned(),
                    subscription_id: sub.clone(),
                    at,
                })
            })
            .collect()
    }

    /// When attempt `number` (due at `at`) failed, when the next one is due; `None` after the last.
    pub fn next_attempt_at(
        policy: &Policy,
        number: i32,
        at: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let wait = policy.retry_delays.get(usize::try_from(number).ok()? - 1)?;
        Some(at + chrono::Duration::from_std(*wait).ok()?)
    }

    /// Open invoices of a customer.
    pub fn open_invoices_of(&self, tenant: &str, customer: &str) -> Vec<(String, String)> {
        let Some(ids) = self
            .by_customer
            .get(&(tenant.to_owned(), customer.to_owned()))
        else {
            return Vec::new();
        };
        ids.iter()
            .map(|id| (tenant.to_owned(), id.clone()))
            .filter(|k| {
                self.invoices
                    .get(k)
                    .is_some_and(|d| d.status == Collection::Open)
            })
            .collect()
    }

    /// The invoice a payment event is about, if it names one.
    pub fn invoice_of(ev: &PaymentEvent) -> Option<(String, String)> {
        let id = match &ev.payload {
            Payment::PaymentAttempted(p) => &p.invoice_id,
            Payment::PaymentSucceeded(p) => &p.invoice_id,
            Payment::PaymentFailed(p) => &p.invoice_id,
            Payment::PaymentRetryRequested(p) => &p.invoice_id,
            Payment::InvoicePaidOutOfBand(p) => &p.invoice_id,
            Payment::InvoiceUncollectible(p) => &p.invoice_id,
            Payment::DunningReminder(p) => &p.invoice_id,
            Payment::RefundSucceeded(p) => &p.invoice_id,
            Payment::RefundFailed(p) => &p.invoice_id,
            Payment::CreditApplied(p) => &p.invoice_id,
            Payment::PaymentMethodAdded(_)
            | Payment::PaymentMethodRemoved(_)
            | Payment::DefaultPaymentMethodSet(_) => return None,
        };
        Some((ev.tenant_id.clone(), id.clone()))
    }

    /// Open invoices whose customer lives on this clock (`tenant` `*` and clock `wall`: every wall customer).
    pub fn open_invoices_on(&self, tenant: &str, clock: &str) -> Vec<(String, String)> {
        self.invoices
            .iter()
            .filter(|(_, d)| d.status == Collection::Open)
            .filter(|((t, _), d)| {
                let c = self
                    .payers
                    .get(&(t.clone(), d.customer_id.clone()))
                    .map(|p| p.clock.as_str())
                    .unwrap_or(WALL);
                c == clock && (tenant == "*" || t == tenant)
            })
            .map(|(k, _)| k.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use billing_schemas::invoice::InvoiceFinalized;
    use billing_schemas::lifecycle::{ClockTick, CustomerCreated};
    use billing_schemas::payment::{PaymentAttempted, PaymentFailed, PaymentMethodAdded};
    use chrono::TimeZone;

    fn t(d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, d, 0, 0, 0).unwrap()
    }

    fn policy() -> Policy {
        Policy {
            retry_delays: vec![Duration::from_secs(86_400), Duration::from_secs(2 * 86_400)],
            reminder_days: vec![3],
        }
    }

    fn lifecycle(payload: Lifecycle) -> LifecycleEvent {
        LifecycleEvent {
            tenant_id: "acme".into(),
            event_id: uuid_like(),
            occurred_at: t(1),
            payload,
        }
    }

    fn uuid_like() -> String {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        format!("ev{}", N.fetch_add(1, Ordering::Relaxed))
    }

    fn pay(payload: Payment, at: DateTime<Utc>) -> PaymentEvent {
        PaymentEvent {
            tenant_id: "acme".into(),
            event_id: uuid_like(),
            occurred_at: at,
            payload,
        }
    }

    fn book_with_invoice(total: &str) -> (Book, (String, String)) {
        let mut b = Book::default();
        let mut c: CustomerCreated = serde_json::from_value(serde_json::json!({
            "customer_id": "c1", "name": "C", "email": null, "currency": "EUR", "timezone": "UTC",
            "billing_country": null, "address": null, "tax_ids": [], "invoice_grace_period_days": 0,
            "net_payment_term_days": 0, "metadata": {}, "test_clock_id": "clk"
        }))
        .unwrap();
        c.test_clock_id = Some("clk".into());
        b.apply_lifecycle(&lifecycle(Lifecycle::CustomerCreated(c)));
        let inv: InvoiceFinalized = serde_json::from_value(serde_json::json!({
            "invoice_id": "inv1", "number": "1", "customer_id": "c1", "currency": "EUR",
            "subscription_ids": ["s1"], "billing_date": 1767225600000i64, "issued_at": 1767225600000i64,
            "due_date": 1767225600000i64, "period_start": 1767225600000i64, "period_end": 1767225600000i64,
            "lines": [], "subtotal": total, "discount_total": "0", "tax_total": "0", "credits_total": "0",
            "total": total
        }))
        .unwrap();
        let key = b
            .apply_invoice(&InvoiceEvent {
                tenant_id: "acme".into(),
                event_id: "i1".into(),
                occurred_at: t(1),
                payload: Invoice::InvoiceFinalized(Box::new(inv)),
            })
            .remove(0);
        (b, key)
    }

    fn add_card(b: &mut Book) {
        b.apply_payment(
            &pay(
                Payment::PaymentMethodAdded(PaymentMethodAdded {
                    customer_id: "c1".into(),
                    payment_method_id: "pm1".into(),
                    kind: "card".into(),
                    token: "pm_card_visa".into(),
                    set_default: true,
                }),
                t(1),
            ),
            &policy(),
        );
    }

    #[test]
    fn a_refund_credit_note_is_refunded_once_and_a_suspension_ends_when_paid() {
        use billing_schemas::invoice::CreditNoteCreated;
        use billing_schemas::lifecycle::SubscriptionEffective;
        use billing_schemas::payment::{InvoicePaidOutOfBand, RefundSucceeded};
        let p = policy();
        let (mut b, key) = book_with_invoice("12.00");
        let suspended = |at| {
            lifecycle(Lifecycle::SubscriptionSuspended(SubscriptionEffective {
                subscription_id: "s1".into(),
                customer_id: "c1".into(),
                effective_at: at,
            }))
        };
        b.apply_lifecycle(&lifecycle(Lifecycle::SubscriptionCreated(
            serde_json::from_value(serde_json::json!({
                "subscription_id": "s1", "customer_id": "c1", "plan_code": "p",
                "started_at": 1767225600000i64, "trial_ends_at": null, "billing_time": "anniversary",
                "billing_anchor_day": null
            }))
            .unwrap(),
        )));
        b.apply_lifecycle(&suspended(t(5)));
        // Unpaid: the suspension stays.
        assert!(b
            .actions_for(&key, &p)
            .iter()
            .all(|a| !matches!(a, Action::Unsuspend { .. })));
        b.apply_payment(
            &pay(
                Payment::InvoicePaidOutOfBand(InvoicePaidOutOfBand {
                    invoice_id: "inv1".into(),
                    customer_id: "c1".into(),
                    currency: "EUR".into(),
                    amount: "12.00".into(),
                    reference: "wire".into(),
                }),
                t(7),
            ),
            &p,
        );
        assert_eq!(
            b.actions_for(&key, &p),
            vec![Action::Unsuspend {
                tenant: "acme".into(),
                customer_id: "c1".into(),
                subscription_id: "s1".into(),
                at: t(7),
            }]
        );
        b.apply_lifecycle(&lifecycle(Lifecycle::SubscriptionUnsuspended(
            SubscriptionEffective {
                subscription_id: "s1".into(),
                customer_id: "c1".into(),
                effective_at: t(7),
            },
        )));
        assert!(b.actions_for(&key, &p).is_empty());

        // A credit note of type refund is refunded until its outcome is read; a credit is not.
        let cn = |id: &str, kind: CreditNoteKind| InvoiceEvent {
            tenant_id: "acme".into(),
            event_id: id.into(),
            occurred_at: t(8),
            payload: Invoice::CreditNoteCreated(Box::new(CreditNoteCreated {
                credit_note_id: id.into(),
                number: "CN-1".into(),
                invoice_id: "inv1".into(),
                invoice_number: "1".into(),
                customer_id: "c1".into(),
                currency: "EUR".into(),
                kind,
                reason: "other".into(),
                memo: None,
                issued_at: t(8),
                lines: vec![],
                subtotal: "5.00".into(),
                tax_total: "0.00".into(),
                total: "5.00".into(),
            })),
        };
        b.apply_invoice(&cn("cn1", CreditNoteKind::Refund));
        b.apply_invoice(&cn("cn2", CreditNoteKind::Credit));
        let refund = Action::Refund {
            tenant: "acme".into(),
            invoice_id: "inv1".into(),
            credit_note_id: "cn1".into(),
            amount: Decimal::new(500, 2),
            at: t(8),
        };
        assert_eq!(b.actions_for(&key, &p), vec![refund]);
        b.apply_payment(
            &pay(
                Payment::RefundSucceeded(RefundSucceeded {
                    refund_id: "acme.cn1.refund".into(),
                    invoice_id: "inv1".into(),
                    customer_id: "c1".into(),
                    credit_note_id: "cn1".into(),
                    currency: "EUR".into(),
                    amount: "5.00".into(),
                    provider_reference: "re_1".into(),
                }),
                t(8),
            ),
            &p,
        );
        assert!(b.actions_for(&key, &p).is_empty());
    }

    #[test]
    fn a_credit_balance_pays_open_invoices_in_order_once() {
        use billing_schemas::invoice::{CreditNoteCreated, InvoiceFinalized};
        use billing_schemas::payment::CreditApplied;
        let p = policy();
        let (mut b, first) = book_with_invoice("12.00");
        add_card(&mut b);
        // A second open invoice, issued later.
        let mut inv: InvoiceFinalized = serde_json::from_value(serde_json::json!({
            "invoice_id": "inv2", "number": "2", "customer_id": "c1", "currency": "EUR",
            "subscription_ids": [], "billing_date": 1767312000000i64, "issued_at": 1767312000000i64,
            "due_date": 1767312000000i64, "period_start": 1767312000000i64, "period_end": 1767312000000i64,
            "lines": [], "subtotal": "10.00", "discount_total": "0", "tax_total": "0", "credits_total": "0",
            "total": "10.00"
        }))
        .unwrap();
        inv.issued_at = t(2);
        let second = b
            .apply_invoice(&InvoiceEvent {
                tenant_id: "acme".into(),
                event_id: "i2".into(),
                occurred_at: t(2),
                payload: Invoice::InvoiceFinalized(Box::new(inv)),
            })
            .remove(0);
        // 15.00 of credit: 12.00 to the first invoice, 3.00 to the second; no charge before they are applied.
        let touched = b.apply_invoice(&InvoiceEvent {
            tenant_id: "acme".into(),
            event_id: "cn1".into(),
            occurred_at: t(3),
            payload: Invoice::CreditNoteCreated(Box::new(CreditNoteCreated {
                credit_note_id: "cn1".into(),
                number: "CN-1".into(),
                invoice_id: "inv0".into(),
                invoice_number: "0".into(),
                customer_id: "c1".into(),
                currency: "EUR".into(),
                kind: CreditNoteKind::Credit,
                reason: "other".into(),
                memo: None,
                issued_at: t(3),
                lines: vec![],
                subtotal: "15.00".into(),
                tax_total: "0.00".into(),
                total: "15.00".into(),
            })),
        });
        assert_eq!(touched.len(), 2);
        let apply = |invoice: &str, amount: Decimal| Action::ApplyCredit {
            tenant: "acme".into(),
            invoice_id: invoice.into(),
            credit_note_id: "cn1".into(),
            amount,
            at: t(3),
        };
        assert_eq!(
            b.actions_for(&first, &p),
            vec![apply("inv1", Decimal::new(1200, 2))]
        );
        assert_eq!(
            b.actions_for(&second, &p),
            vec![apply("inv2", Decimal::new(300, 2))]
        );
        // Once the first application is read, the second invoice's share is the same: nothing applied twice.
        b.apply_payment(
            &pay(
                Payment::CreditApplied(CreditApplied {
                    invoice_id: "inv1".into(),
                    customer_id: "c1".into(),
                    credit_note_id: "cn1".into(),
                    currency: "EUR".into(),
                    amount: "12.00".into(),
                }),
                t(3),
            ),
            &p,
        );
        assert_eq!(b.invoices[&first].status, Collection::Paid);
        assert!(b.actions_for(&first, &p).is_empty());
        assert_eq!(
            b.actions_for(&second, &p),
            vec![apply("inv2", Decimal::new(300, 2))]
        );
        b.apply_payment(
            &pay(
                Payment::CreditApplied(CreditApplied {
                    invoice_id: "inv2".into(),
                    customer_id: "c1".into(),
                    credit_note_id: "cn1".into(),
                    currency: "EUR".into(),
                    amount: "3.00".into(),
                }),
                t(3),
            ),
            &p,
        );
        // The rest (7.00) is charged.
        match b.actions_for(&second, &p).as_slice() {
            [Action::Charge { amount, .. }] => assert_eq!(*amount, Decimal::new(700, 2)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_invoice_waits_for_a_method_then_is_charged_at_its_issue_time() {
        let (mut b, key) = book_with_invoice("12.00");
        assert!(b.actions_for(&key, &policy()).is_empty(), "no method yet");
        add_card(&mut b);
        let a = b.actions_for(&key, &policy());
        assert_eq!(
            a,
            vec![Action::Charge {
                tenant: "acme".into(),
                invoice_id: "inv1".into(),
                number: 1,
                at: t(1),
                amount: Decimal::new(1200, 2),
                method: ("pm1".into(), "card".into(), "pm_card_visa".into()),
            }]
        );
    }

    #[test]
    fn retries_follow_the_schedule_on_the_customers_clock_and_end_in_giving_up() {
        let p = policy();
        let (mut b, key) = book_with_invoice("12.00");
        add_card(&mut b);
        let fail = |b: &mut Book, n: i32, at: DateTime<Utc>| {
            b.apply_payment(
                &pay(
                    Payment::PaymentAttempted(PaymentAttempted {
                        attempt_id: attempt_id("acme", "inv1", n),
                        invoice_id: "inv1".into(),
                        customer_id: "c1".into(),
                        currency: "EUR".into(),
                        amount: "12.00".into(),
                        attempt_number: n,
                        payment_method_id: "pm1".into(),
                    }),
                    at,
                ),
                &p,
            );
            // An attempt in flight is resumed, never replaced by the next one.
            let charges: Vec<i32> = b
                .actions_for(&key, &p)
                .iter()
                .filter_map(|a| match a {
                    Action::Charge { number, .. } => Some(*number),
                    _ => None,
                })
                .collect();
            assert_eq!(charges, [n]);
            b.apply_payment(
                &pay(
                    Payment::PaymentFailed(PaymentFailed {
                        attempt_id: attempt_id("acme", "inv1", n),
                        invoice_id: "inv1".into(),
                        customer_id: "c1".into(),
                        reason: "declined".into(),
                        next_retry_at: Book::next_attempt_at(&p, n, at),
                        code: "insufficient_funds".into(),
                        attempt_number: n,
                        currency: "EUR".into(),
                        amount: "12.00".into(),
                    }),
                    at,
                ),
                &p,
            );
        };
        fail(&mut b, 1, t(1));
        assert_eq!(b.invoices[&key].next_at, Some(t(2)));
        let tick = |b: &mut Book, d: u32| {
            b.apply_lifecycle(&lifecycle(Lifecycle::ClockTick(ClockTick {
                clock_id: "clk".into(),
                now: t(d),
            })));
        };
        tick(&mut b, 1);
        assert!(
            b.actions_for(&key, &p).is_empty(),
            "retry not due before day 2"
        );
        tick(&mut b, 2);
        assert!(matches!(
            b.actions_for(&key, &p)[..],
            [Action::Charge { number: 2, at, .. }] if at == t(2)
        ));
        fail(&mut b, 2, t(2));
        assert_eq!(b.invoices[&key].next_at, Some(t(4)));
        tick(&mut b, 4);
        fail(&mut b, 3, t(4));
        assert!(b.invoices[&key].exhausted, "three attempts, two waits");
        assert!(matches!(
            b.actions_for(&key, &p)[..],
            [Action::GiveUp { at, .. }] if at == t(4)
        ));
    }

    #[test]
    fn an_attempt_in_flight_is_resumed_as_it_started_whatever_changed_since() {
        use billing_schemas::payment::{InvoicePaidOutOfBand, PaymentMethodRef};
        let p = policy();
        let (mut b, key) = book_with_invoice("12.00");
        add_card(&mut b);
        let started = |n: i32| {
            pay(
                Payment::PaymentAttempted(PaymentAttempted {
                    attempt_id: attempt_id("acme", "inv1", n),
                    invoice_id: "inv1".into(),
                    customer_id: "c1".into(),
                    currency: "EUR".into(),
                    amount: "12.00".into(),
                    attempt_number: n,
                    payment_method_id: "pm1".into(),
                }),
                t(1),
            )
        };
        b.apply_payment(&started(1), &p);
        // Meanwhile (the process died): part paid by transfer, the card removed.
        b.apply_payment(
            &pay(
                Payment::InvoicePaidOutOfBand(InvoicePaidOutOfBand {
                    invoice_id: "inv1".into(),
                    customer_id: "c1".into(),
                    currency: "EUR".into(),
                    amount: "5.00".into(),
                    reference: "r".into(),
                }),
                t(1),
            ),
            &p,
        );
        b.apply_payment(
            &pay(
                Payment::PaymentMethodRemoved(PaymentMethodRef {
                    customer_id: "c1".into(),
                    payment_method_id: "pm1".into(),
                }),
                t(1),
            ),
            &p,
        );
        // The same key with the same amount and card: the provider answers the first outcome.
        assert!(matches!(
            &b.actions_for(&key, &p)[..],
            [Action::Charge { number: 1, amount, method, .. }]
                if *amount == Decimal::new(1200, 2) && method.0 == "pm1"
        ));
        // Once it failed, nothing new starts without a method.
        b.apply_payment(
            &pay(
                Payment::PaymentFailed(PaymentFailed {
                    attempt_id: attempt_id("acme", "inv1", 1),
                    invoice_id: "inv1".into(),
                    customer_id: "c1".into(),
                    reason: "declined".into(),
                    next_retry_at: Book::next_attempt_at(&p, 1, t(1)),
                    code: "insufficient_funds".into(),
                    attempt_number: 1,
                    currency: "EUR".into(),
                    amount: "12.00".into(),
                }),
                t(1),
            ),
            &p,
        );
        assert_eq!(b.invoices[&key].remaining(), Decimal::new(700, 2));
        assert!(b.actions_for(&key, &p).is_empty());
    }

    #[test]
    fn reminders_are_due_once_from_the_due_date() {
        let p = policy();
        let (mut b, key) = book_with_invoice("12.00");
        b.apply_lifecycle(&lifecycle(Lifecycle::ClockTick(ClockTick {
            clock_id: "clk".into(),
            now: t(4),
        })));
        assert_eq!(
            b.actions_for(&key, &p),
            vec![Action::Remind {
                tenant: "acme".into(),
                invoice_id: "inv1".into(),
                days: 3,
                at: t(4),
            }]
        );
    }

    #[test]
    fn zero_invoices_are_paid_and_never_charged() {
        let (mut b, key) = book_with_invoice("0.00");
        add_card(&mut b);
        assert_eq!(b.invoices[&key].status, Collection::Paid);
        assert!(b.actions_for(&key, &policy()).is_empty());
    }
}
