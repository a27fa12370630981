//! The pure step: a source event (lifecycle, invoice, payment) becomes at most one webhook event. Every variant of
//! every source schema is named in an exhaustive match, so a variant added to a schema does not compile until it
//! is given a webhook type here (or explicitly none), and is never dropped silently.

use billing_schemas::invoice::{Invoice, InvoiceEvent};
use billing_schemas::lifecycle::{Lifecycle, LifecycleEvent};
use billing_schemas::payment::{Payment, PaymentEvent};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// A webhook event, as POSTed (`docs/payments.md`, "Webhooks").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WebhookEvent {
    /// `evt_` and 32 hex digits derived from the source event's kind, tenant and id: the same on a replay.
    pub id: String,
    /// Always `event`.
    pub object: &'static str,
    /// One of `billing_store::webhook_endpoints::EVENT_TYPES`.
    #[serde(rename = "type")]
    pub event_type: &'static str,
    /// Unix seconds of the source event's `occurred_at` (billing time).
    pub created: i64,
    /// Tenant.
    pub tenant_id: String,
    /// `{"object": {...}}`: the source payload as on the topic's JSON encoding, with an `object` member naming
    /// what it is.
    pub data: Value,
}

impl WebhookEvent {
    /// The exact body sent (and signed).
    pub fn body(&self) -> String {
        serde_json::to_string(self).expect("a webhook event serializes")
    }
}

/// Which topic an event came from; part of the webhook event id, so ids of two topics never meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// `billing.lifecycle`.
    Lifecycle,
    /// `billing.invoices`.
    Invoice,
    /// `billing.payments`.
    Payment,
}

impl SourceKind {
    fn name(self) -> &'static str {
        match self {
            SourceKind::Lifecycle => "lifecycle",
            SourceKind::Invoice => "invoice",
            SourceKind::Payment => "payment",
        }
    }
}

/// The webhook event id of a source event.
pub fn event_id(kind: SourceKind, tenant: &str, source_event_id: &str) -> String {
    let mut h = Sha256::new();
    for part in [kind.name(), tenant, source_event_id] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    let hex: String = h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("evt_{hex}")
}

fn event(
    kind: SourceKind,
    tenant: &str,
    source_event_id: &str,
    occurred_at: DateTime<Utc>,
    event_type: &'static str,
    object: &'static str,
    payload: Value,
) -> WebhookEvent {
    let mut data = payload;
    if let Value::Object(m) = &mut data {
        m.insert("object".into(), Value::String(object.into()));
    }
    WebhookEvent {
        id: event_id(kind, tenant, source_event_id),
        object: "event",
        event_type,
        created: occurred_at.timestamp(),
        tenant_id: tenant.to_owned(),
        data: json!({ "object": data }),
    }
}

fn to_value(v: &impl Serialize) -> Value {
    serde_json::to_value(v).expect("schema types serialize")
}

/// A lifecycle event's webhook event; `None` for clock ticks, finalize, credit note, void and one-off invoice
/// requests (commands whose outcome is an event of its own: `invoice.finalized`, `credit_note.created`,
/// `invoice.voided`).
pub fn from_lifecycle(ev: &LifecycleEvent) -> Option<WebhookEvent> {
    let (event_type, object, payload) = match &ev.payload {
        Lifecycle::CustomerCreated(c) => ("customer.created", "customer", to_value(c)),
        Lifecycle::CustomerUpdated(c) => ("customer.updated", "customer", to_value(c)),
        Lifecycle::SubscriptionCreated(s) => ("subscription.created", "subscription", to_value(s)),
        Lifecycle::SubscriptionChanged(s) => ("subscription.updated", "subscription", to_value(s)),
        Lifecycle::SubscriptionPaused(s) => ("subscription.paused", "subscription", to_value(s)),
        Lifecycle::SubscriptionResumed(s) => ("subscription.resumed", "subscription", to_value(s)),
        Lifecycle::SubscriptionCanceled(s) => {
            ("subscription.canceled", "subscription", to_value(s))
        }
        Lifecycle::SubscriptionSuspended(s) => {
            ("subscription.suspended", "subscription", to_value(s))
        }
        Lifecycle::SubscriptionUnsuspended(s) => {
            ("subscription.unsuspended", "subscription", to_value(s))
        }
        Lifecycle::CouponApplied(c) => ("applied_coupon.created", "applied_coupon", to_value(c)),
        Lifecycle::CouponRemoved(c) => ("applied_coupon.removed", "applied_coupon", to_value(c)),
        Lifecycle::WalletCreated(w) => ("wallet.created", "wallet", to_value(w)),
        Lifecycle::WalletToppedUp(t) => (
            "wallet_transaction.created",
            "wallet_transaction",
            to_value(t),
        ),
        Lifecycle::ClockTick(_)
        | Lifecycle::InvoiceFinalizeRequested(_)
        | Lifecycle::CreditNoteRequested(_)
        | Lifecycle::InvoiceVoidRequested(_)
        | Lifecycle::OneOffInvoiceRequested(_) => return None,
    };
    Some(event(
        SourceKind::Lifecycle,
        &ev.tenant_id,
        &ev.event_id,
        ev.occurred_at,
        event_type,
        object,
        payload,
    ))
}

/// An invoice event's webhook event.
pub fn from_invoice(ev: &InvoiceEvent) -> Option<WebhookEvent> {
    let (event_type, object, payload) = match &ev.payload {
        Invoice::InvoiceFinalized(i) => ("invoice.finalized", "invoice", to_value(i)),
        Invoice::InvoiceVoided(i) => ("invoice.voided", "invoice", to_value(i)),
        Invoice::CreditNoteCreated(c) => ("credit_note.created", "credit_note", to_value(c)),
    };
    Some(event(
        SourceKind::Invoice,
        &ev.tenant_id,
        &ev.event_id,
        ev.occurred_at,
        event_type,
        object,
        payload,
    ))
}

/// A payment event's webhook event; `None` for retry requests (a command: its outcome is a `payment.*` event).
/// A payment method's provider token is not sent.
pub fn from_payment(ev: &PaymentEvent) -> Option<WebhookEvent> {
    let (event_type, object, payload) = match &ev.payload {
        Payment::PaymentAttempted(p) => ("payment.attempted", "payment", to_value(p)),
        Payment::PaymentSucceeded(p) => ("payment.succeeded", "payment", to_value(p)),
        Payment::PaymentFailed(p) => ("payment.failed", "payment", to_value(p)),
        Payment::PaymentMethodAdded(p) => (
            "payment_method.attached",
            "payment_method",
            json!({
                "customer_id": p.customer_id,
                "payment_method_id": p.payment_method_id,
                "kind": p.kind,
                "set_default": p.set_default,
            }),
        ),
        Payment::PaymentMethodRemoved(p) => {
            ("payment_method.detached", "payment_method", to_value(p))
        }
        Payment::DefaultPaymentMethodSet(p) => {
            ("payment_method.default_set", "payment_method", to_value(p))
        }
        Payment::PaymentRetryRequested(_) => return None,
        Payment::InvoicePaidOutOfBand(p) => ("invoice.paid_out_of_band", "invoice", to_value(p)),
        Payment::InvoiceUncollectible(p) => {
            ("invoice.marked_uncollectible", "invoice", to_value(p))
        }
        Payment::DunningReminder(p) => ("invoice.reminder", "invoice", to_value(p)),
        Payment::RefundSucceeded(p) => ("refund.succeeded", "refund", to_value(p)),
        Payment::RefundFailed(p) => ("refund.failed", "refund", to_value(p)),
        Payment::CreditApplied(p) => ("invoice.credit_applied", "invoice", to_value(p)),
    };
    Some(event(
        SourceKind::Payment,
        &ev.tenant_id,
        &ev.event_id,
        ev.occurred_at,
        event_type,
        object,
        payload,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use billing_schemas::lifecycle::{ClockTick, CustomerCreated};
    use billing_schemas::payment::{PaymentMethodAdded, PaymentSucceeded};
    use billing_store::webhook_endpoints::EVENT_TYPES;

    fn at() -> DateTime<Utc> {
        "2026-01-15T10:00:00Z".parse().unwrap()
    }

    fn lifecycle(payload: Lifecycle) -> LifecycleEvent {
        LifecycleEvent {
            tenant_id: "acme".into(),
            event_id: "evt_src_1".into(),
            occurred_at: at(),
            payload,
        }
    }

    #[test]
    fn a_customer_creation_becomes_customer_created() {
        let ev = lifecycle(Lifecycle::CustomerCreated(CustomerCreated::new(
            "cus_1", "Acme", "EUR", "UTC",
        )));
        let w = from_lifecycle(&ev).unwrap();
        assert_eq!(w.event_type, "customer.created");
        assert_eq!(w.created, 1_768_471_200);
        assert_eq!(w.tenant_id, "acme");
        assert_eq!(w.id, event_id(SourceKind::Lifecycle, "acme", "evt_src_1"));
        let body: Value = serde_json::from_str(&w.body()).unwrap();
        assert_eq!(body["object"], "event");
        assert_eq!(body["type"], "customer.created");
        assert_eq!(body["data"]["object"]["object"], "customer");
        assert_eq!(body["data"]["object"]["customer_id"], "cus_1");
        assert_eq!(body["data"]["object"]["currency"], "EUR");
    }

    #[test]
    fn ids_are_deterministic_and_kept_apart_by_kind_and_tenant() {
        let a = event_id(SourceKind::Lifecycle, "acme", "e1");
        assert_eq!(a, event_id(SourceKind::Lifecycle, "acme", "e1"));
        assert_eq!(a.len(), 4 + 32);
        assert_ne!(a, event_id(SourceKind::Payment, "acme", "e1"));
        assert_ne!(a, event_id(SourceKind::Lifecycle, "other", "e1"));
    }

    #[test]
    fn clock_ticks_are_not_webhook_events() {
        let ev = lifecycle(Lifecycle::ClockTick(ClockTick {
            clock_id: "wall".into(),
            now: at(),
        }));
        assert_eq!(from_lifecycle(&ev), None);
    }

    #[test]
    fn payments_map_and_tokens_stay_out() {
        let ev = |payload| PaymentEvent {
            tenant_id: "acme".into(),
            event_id: "p1".into(),
            occurred_at: at(),
            payload,
        };
        let w = from_payment(&ev(Payment::PaymentSucceeded(PaymentSucceeded {
            attempt_id: "att_1".into(),
            invoice_id: "inv_1".into(),
            customer_id: "cus_1".into(),
            currency: "EUR".into(),
            amount: "10.50".into(),
            provider_reference: "ch_1".into(),
            attempt_number: 1,
        })))
        .unwrap();
        assert_eq!(w.event_type, "payment.succeeded");
        assert_eq!(w.data["object"]["amount"], "10.50");
        let w = from_payment(&ev(Payment::PaymentMethodAdded(PaymentMethodAdded {
            customer_id: "cus_1".into(),
            payment_method_id: "pm_1".into(),
            kind: "card".into(),
            token: "tok_secret".into(),
            set_default: true,
        })))
        .unwrap();
        assert_eq!(w.event_type, "payment_method.attached");
        assert!(!w.body().contains("tok_secret"), "{}", w.body());
    }

    /// Every type this module can produce is one the API accepts, and the API accepts no type it cannot produce.
    #[test]
    fn produced_types_are_exactly_the_documented_list() {
        // The mapping above the tests: the type of every `("type.name", object, payload)` tuple it returns.
        let source = include_str!("event.rs")
            .split("#[cfg(test)]")
            .next()
            .unwrap();
        let mut produced: Vec<&str> = source
            .split('(')
            .skip(1)
            .filter_map(|s| s.trim_start().strip_prefix('"')?.split('"').next())
            .filter(|t| {
                t.contains('.')
                    && t.chars()
                        .all(|c| c.is_ascii_lowercase() || c == '.' || c == '_')
            })
            .collect();
        produced.sort();
        produced.dedup();
        let mut documented: Vec<&str> = EVENT_TYPES.to_vec();
        documented.sort();
        assert_eq!(produced, documented);
        let docs = include_str!("../../docs/payments.md");
        for t in EVENT_TYPES {
            assert!(
                docs.contains(&format!("`{t}`")),
                "{t} is not documented in docs/payments.md"
            );
        }
    }
}
