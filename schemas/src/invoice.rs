//! `billing.invoices`: invoice lifecycle (schema `invoice_event.avsc`). Money is carried as exact decimal strings.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::registry::{Message, SchemaId};

/// One invoice event, keyed by tenant/customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceEvent {
    /// Owning tenant.
    pub tenant_id: String,
    /// Idempotency key.
    pub event_id: String,
    /// Billing time of the change.
    #[serde(with = "crate::time")]
    pub occurred_at: DateTime<Utc>,
    /// The change.
    pub payload: Invoice,
}

impl Message for InvoiceEvent {
    const SCHEMA: SchemaId = SchemaId::Invoice;
}

/// Invoice changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Invoice {
    /// An invoice was numbered and is now immutable.
    InvoiceFinalized(Box<InvoiceFinalized>),
    /// An invoice was voided.
    InvoiceVoided(InvoiceVoided),
}

/// What a line bills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    /// Plan fee.
    SubscriptionFee,
    /// Usage charge.
    Usage,
    /// Minimum-commitment true-up.
    TrueUp,
    /// Credit for unused time.
    ProrationCredit,
    /// Late usage for an earlier period.
    Adjustment,
}

/// One invoice line; every amount is already rounded to the currency's minor unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceLine {
    /// What the line bills.
    pub kind: LineKind,
    /// Human description.
    pub description: String,
    /// Charge billed, for usage lines.
    #[serde(default)]
    pub charge_id: Option<String>,
    /// Units billed.
    pub units: String,
    /// Amount before discount and tax.
    pub amount: String,
    /// Coupon discount on the line.
    pub discount: String,
    /// Tax on the discounted amount.
    pub tax: String,
    /// amount - discount + tax.
    pub total: String,
}

/// A finalized invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceFinalized {
    /// Invoice id.
    pub invoice_id: String,
    /// Gap-free per-tenant number.
    pub number: String,
    /// Billed customer.
    pub customer_id: String,
    /// Billed subscription.
    pub subscription_id: String,
    /// ISO 4217 currency.
    pub currency: String,
    /// Period start.
    #[serde(with = "crate::time")]
    pub period_start: DateTime<Utc>,
    /// Period end (exclusive).
    #[serde(with = "crate::time")]
    pub period_end: DateTime<Utc>,
    /// Lines.
    pub lines: Vec<InvoiceLine>,
    /// Sum of line amounts.
    pub subtotal: String,
    /// Sum of line discounts.
    pub discount_total: String,
    /// Sum of line taxes.
    pub tax_total: String,
    /// Credits applied after tax.
    pub credits_total: String,
    /// Amount due.
    pub total: String,
}

/// A voided invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceVoided {
    /// Invoice id.
    pub invoice_id: String,
    /// Its customer.
    pub customer_id: String,
    /// Why.
    pub reason: String,
}
