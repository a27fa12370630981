//! `billing.payments`: payment attempts and outcomes (schema `payment_event.avsc`).

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

/// Payment events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payment {
    /// A charge was sent to the provider.
    PaymentAttempted(PaymentAttempted),
    /// The provider confirmed the charge.
    PaymentSucceeded(PaymentSucceeded),
    /// The provider declined or failed the charge.
    PaymentFailed(PaymentFailed),
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
    /// When the next retry is scheduled, if any.
    #[serde(default, with = "crate::time::option")]
    pub next_retry_at: Option<DateTime<Utc>>,
}
