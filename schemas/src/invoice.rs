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
    /// A credit note was issued on a finalized invoice (v3).
    CreditNoteCreated(Box<CreditNoteCreated>),
}

pub use billing_core::credit_note::CreditNoteKind;

/// A numbered credit note on a finalized invoice. Amounts are decimal strings rounded to the currency's minor
/// unit; `total = subtotal + tax_total`, each the sum of its lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditNoteCreated {
    /// Id given when it was requested.
    pub credit_note_id: String,
    /// Gap-free number (per tenant, its own sequence).
    pub number: String,
    /// The invoice credited.
    pub invoice_id: String,
    /// Its number.
    pub invoice_number: String,
    /// Customer.
    pub customer_id: String,
    /// ISO 4217 currency (the invoice's).
    pub currency: String,
    /// Credit to the balance, or refund.
    pub kind: CreditNoteKind,
    /// Why.
    pub reason: String,
    /// Free text.
    #[serde(default)]
    pub memo: Option<String>,
    /// Billing time of issue.
    #[serde(with = "crate::time")]
    pub issued_at: DateTime<Utc>,
    /// Lines credited.
    pub lines: Vec<CreditNoteLine>,
    /// Σ line amounts (before tax).
    pub subtotal: String,
    /// Σ line taxes.
    pub tax_total: String,
    /// subtotal + tax_total.
    pub total: String,
}

/// One invoice line credited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditNoteLine {
    /// Index of the invoice line.
    pub line_index: i32,
    /// The invoice line's description.
    pub description: String,
    /// Amount credited before tax.
    pub amount: String,
    /// Tax credited with it.
    pub tax: String,
    /// amount + tax.
    pub total: String,
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
    /// An add-on of a one-off invoice (v4).
    AddOn,
    /// Prepaid credits bought for a wallet (v4).
    PrepaidCredits,
}

/// One invoice line; every amount is already rounded to the currency's minor unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceLine {
    /// What the line bills.
    pub kind: LineKind,
    /// Human description.
    pub description: String,
    /// Subscription the line bills.
    #[serde(default)]
    pub subscription_id: Option<String>,
    /// Charge billed, for usage lines.
    #[serde(default)]
    pub charge_id: Option<String>,
    /// First instant the line covers.
    #[serde(default, with = "crate::time::option")]
    pub period_start: Option<DateTime<Utc>>,
    /// First instant after it.
    #[serde(default, with = "crate::time::option")]
    pub period_end: Option<DateTime<Utc>>,
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

/// A finalized invoice: one per customer and billing date, over every subscription billed on that date.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceFinalized {
    /// Invoice id.
    pub invoice_id: String,
    /// Gap-free number (per tenant, or per customer).
    pub number: String,
    /// Billed customer.
    pub customer_id: String,
    /// ISO 4217 currency.
    pub currency: String,
    /// Subscriptions billed.
    #[serde(default)]
    pub subscription_ids: Vec<String>,
    /// The billing date: the end of the periods billed in arrears, the start of those billed in advance.
    #[serde(default, with = "crate::time")]
    pub billing_date: DateTime<Utc>,
    /// Billing time of finalization.
    #[serde(default, with = "crate::time")]
    pub issued_at: DateTime<Utc>,
    /// Payment due (issued_at + net payment terms).
    #[serde(default, with = "crate::time")]
    pub due_date: DateTime<Utc>,
    /// Earliest instant any line covers.
    #[serde(with = "crate::time")]
    pub period_start: DateTime<Utc>,
    /// Latest instant any line covers (exclusive).
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
    /// The invoice's taxes, one per tax code (v4).
    #[serde(default)]
    pub applied_taxes: Vec<AppliedTax>,
    /// Legal mention of an exempt or reverse-charge customer (v4).
    #[serde(default)]
    pub tax_note: Option<String>,
    /// The coupons that discounted it (v4).
    #[serde(default)]
    pub coupons: Vec<InvoiceCoupon>,
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
    /// Its number, kept (v4).
    #[serde(default)]
    pub number: Option<String>,
}

/// A coupon on an invoice: what it took off (a decimal string).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceCoupon {
    /// Id of the coupon's application.
    pub applied_coupon_id: String,
    /// Coupon code.
    pub code: String,
    /// Discount.
    pub amount: String,
}

/// One tax of an invoice, over the lines it applies to. Amounts are decimal strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedTax {
    /// Tax code.
    pub code: String,
    /// Its name.
    pub name: String,
    /// Percent.
    pub rate: String,
    /// Included in the line amounts (extracted) or added on top.
    pub inclusive: bool,
    /// Σ of the taxed lines' amounts after discount, without inclusive taxes.
    pub taxable_amount: String,
    /// The tax.
    pub amount: String,
}
