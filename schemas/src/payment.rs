//! `billing.payments`: payment methods, payment attempts and outcomes, dunning and refunds (schema
//! `payment_event.avsc`, v3; datums of v1 and v2 decode to these types, fields added later taking their defaults).
//!
//! The API publishes what a customer or an operator asks for (a payment method, a retry, a payment outside the
//! provider); the payments service publishes what happened (attempts, outcomes, uncollectible invoices, reminders,
//! refunds, credit balance applied). Everything is keyed by tenant/customer, so a customer's payment events are ordered.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::registry::{Message, SchemaId};

/// One payment event, keyed by tenant/customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentEvent {
    /// Owning tenant.
    pub tenant_id: String,
    /// Idempotency key.
    pub event_id: String,
    /// Billing time of the event.
    #[serde(with = "crate::time")]
    pub occurred_at: DateTime<Utc>,
    /// What happened.
    pub payload: Payment,
}

impl Message for PaymentEvent {
    const SCHEMA: SchemaId = SchemaId::Payment;
}

impl PaymentEvent {
    /// The customer the event is about (its key).
    pub fn customer_id(&self) -> &str {
        match &self.payload {
            Payment::PaymentAttempted(p) => &p.customer_id,
            Payment::PaymentSucceeded(p) => &p.customer_id,
            Payment::PaymentFailed(p) => &p.customer_id,
            Payment::PaymentMethodAdded(p) => &p.customer_id,
            Payment::PaymentMethodRemoved(p) => &p.customer_id,
            Payment::DefaultPaymentMethodSet(p) => &p.customer_id,
            Payment::PaymentRetryRequested(p) => &p.customer_id,
            Payment::InvoicePaidOutOfBand(p) => &p.customer_id,
            Payment::InvoiceUncollectible(p) => &p.customer_id,
            Payment::DunningReminder(p) => &p.customer_id,
            Payment::RefundSucceeded(p) => &p.customer_id,
            Payment::RefundFailed(p) => &p.customer_id,
            Payment::CreditApplied(p) => &p.customer_id,
        }
    }
}

/// Payment events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payment {
    /// A charge was sent to the provider.
    PaymentAttempted(PaymentAttempted),
    /// The provider confirmed the charge.
    PaymentSucceeded(PaymentSucceeded),
    /// The provider declined or failed the charge.
    PaymentFailed(PaymentFailed),
    /// A customer gave a payment method (a provider token).
    PaymentMethodAdded(PaymentMethodAdded),
    /// A payment method is no longer to be used.
    PaymentMethodRemoved(PaymentMethodRef),
    /// The method charged from now on.
    DefaultPaymentMethodSet(PaymentMethodRef),
    /// Try an open invoice again now (manual retry).
    PaymentRetryRequested(InvoiceRef),
    /// An invoice was paid outside the provider (a bank transfer).
    InvoicePaidOutOfBand(InvoicePaidOutOfBand),
    /// Dunning gave up on an invoice.
    InvoiceUncollectible(InvoiceUncollectible),
    /// A reminder about an unpaid invoice, some days before or after its due date.
    DunningReminder(DunningReminder),
    /// The provider refunded a credit note.
    RefundSucceeded(RefundSucceeded),
    /// The provider refused a refund.
    RefundFailed(RefundFailed),
    /// Part of the customer's credit balance paid (part of) an invoice (v3).
    CreditApplied(CreditApplied),
}

/// A charge attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentAttempted {
    /// Idempotency key sent to the provider.
    pub attempt_id: String,
    /// Invoice paid.
    pub invoice_id: String,
    /// Paying customer.
    pub customer_id: String,
    /// ISO 4217 currency.
    pub currency: String,
    /// Amount, decimal string.
    pub amount: String,
    /// 1 for the first try.
    pub attempt_number: i32,
    /// The method charged (empty in v1 datums).
    #[serde(default)]
    pub payment_method_id: String,
}

/// A successful charge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentSucceeded {
    /// Attempt that succeeded.
    pub attempt_id: String,
    /// Invoice paid.
    pub invoice_id: String,
    /// Paying customer.
    pub customer_id: String,
    /// ISO 4217 currency.
    pub currency: String,
    /// Amount, decimal string.
    pub amount: String,
    /// Provider's id for the charge.
    pub provider_reference: String,
    /// 1 for the first try (0 in v1 datums).
    #[serde(default)]
    pub attempt_number: i32,
}

/// A failed charge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentFailed {
    /// Attempt that failed.
    pub attempt_id: String,
    /// Invoice.
    pub invoice_id: String,
    /// Customer.
    pub customer_id: String,
    /// Provider's reason.
    pub reason: String,
    /// When the next retry is scheduled; `None` after the last attempt of the schedule.
    #[serde(default, with = "crate::time::option")]
    pub next_retry_at: Option<DateTime<Utc>>,
    /// The provider's decline or error code.
    #[serde(default)]
    pub code: String,
    /// 1 for the first try (0 in v1 datums).
    #[serde(default)]
    pub attempt_number: i32,
    /// ISO 4217 currency (empty in v1 datums).
    #[serde(default)]
    pub currency: String,
    /// Amount tried, decimal string (empty in v1 datums).
    #[serde(default)]
    pub amount: String,
}

/// A payment method given by a customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentMethodAdded {
    /// Customer.
    pub customer_id: String,
    /// Our id of the method.
    pub payment_method_id: String,
    /// `card` or `sepa_debit`.
    pub kind: String,
    /// The provider's token or payment method id (never a card number).
    pub token: String,
    /// Charge it from now on.
    pub set_default: bool,
}

/// A customer's payment method.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentMethodRef {
    /// Customer.
    pub customer_id: String,
    /// Our id of the method.
    pub payment_method_id: String,
}

/// An invoice of a customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceRef {
    /// Invoice.
    pub invoice_id: String,
    /// Customer.
    pub customer_id: String,
}

/// A payment received outside the provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoicePaidOutOfBand {
    /// Invoice.
    pub invoice_id: String,
    /// Customer.
    pub customer_id: String,
    /// ISO 4217 currency.
    pub currency: String,
    /// Amount received, decimal string.
    pub amount: String,
    /// The payer's reference (a bank transfer's).
    pub reference: String,
}

/// Dunning's decision after the last failed attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceUncollectible {
    /// Invoice.
    pub invoice_id: String,
    /// Customer.
    pub customer_id: String,
    /// The last failure.
    pub reason: String,
    /// What was done to the invoice's subscriptions: `none`, `pause` or `cancel`.
    pub action: String,
}

/// A reminder about an unpaid invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DunningReminder {
    /// Invoice.
    pub invoice_id: String,
    /// Customer.
    pub customer_id: String,
    /// The invoice's due date.
    #[serde(with = "crate::time")]
    pub due_date: DateTime<Utc>,
    /// Days after the due date (negative before it).
    pub days_after_due: i32,
}

/// A refund the provider made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundSucceeded {
    /// Idempotency key sent to the provider.
    pub refund_id: String,
    /// Invoice refunded.
    pub invoice_id: String,
    /// Customer.
    pub customer_id: String,
    /// The credit note refunded.
    pub credit_note_id: String,
    /// ISO 4217 currency.
    pub currency: String,
    /// Amount, decimal string.
    pub amount: String,
    /// Provider's id for the refund.
    pub provider_reference: String,
}

/// A refund the provider refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundFailed {
    /// Idempotency key sent to the provider.
    pub refund_id: String,
    /// Invoice.
    pub invoice_id: String,
    /// Customer.
    pub customer_id: String,
    /// The credit note.
    pub credit_note_id: String,
    /// The provider's code.
    pub code: String,
    /// The provider's message.
    pub reason: String,
}

/// Part of a customer's credit balance (a credit note of type `credit`) applied to an open invoice before it is
/// charged: the invoice's remaining amount goes down by `amount`, and so does what the credit note has left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditApplied {
    /// Invoice paid with it.
    pub invoice_id: String,
    /// Customer.
    pub customer_id: String,
    /// The credit note the balance comes from.
    pub credit_note_id: String,
    /// ISO 4217 currency (the invoice's and the credit note's).
    pub currency: String,
    /// Amount applied, decimal string.
    pub amount: String,
}
