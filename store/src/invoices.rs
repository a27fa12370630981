//! ScyllaDB `invoices` and `invoices_by_customer` (migration `cql/0002_billing.cql`): every invoice, draft or
//! finalized, as the API shows it. Invoice ids are deterministic, `inv_<billing date YYYYMMDD>_<16 hex>` (a hash
//! of tenant, customer and billing date), so a retry or a replay finds the same invoice, and id order is billing
//! date order (lists are newest first). `invoices_by_date` (migration `cql/0003_invoices_by_date.cql`) lists a
//! billing date's invoices per lifecycle partition, for the bill run.
//!
//! **Writer: invoicer.** Readers: query-api, invoicer.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Where an invoice is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvoiceStatus {
    /// Within the customer's grace period: refreshed when late usage arrives, no number yet.
    Draft,
    /// Frozen and numbered; published as `invoice.finalized`.
    Finalized,
}

impl InvoiceStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            InvoiceStatus::Draft => "draft",
            InvoiceStatus::Finalized => "finalized",
        }
    }
}

/// One line of an invoice; amounts are rounded once to the currency's minor unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceLineView {
    /// `subscription_fee`, `proration_credit`, `usage` or `true_up`.
    pub kind: String,
    /// Human description.
    pub description: String,
    /// Subscription billed.
    pub subscription_id: Option<String>,
    /// Plan code (fee lines) or charge id (usage and true-up lines).
    pub code: String,
    /// First instant covered.
    pub period_start: Option<DateTime<Utc>>,
    /// First instant after it.
    pub period_end: Option<DateTime<Utc>>,
    /// Units billed (usage lines).
    pub units: Option<Decimal>,
    /// Share of a full period's fee (fee lines).
    pub proration_factor: Option<Decimal>,
    /// Amount before discount and tax.
    pub amount: Decimal,
    /// Coupon discount.
    pub discount: Decimal,
    /// Tax on the discounted amount.
    pub tax: Decimal,
    /// amount − discount + tax.
    pub total: Decimal,
}

/// An invoice as the API serves it (stored as JSON in `invoices.body`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceView {
    /// Deterministic id (see the module documentation).
    pub invoice_id: String,
    /// Gap-free number, once finalized.
    pub number: Option<String>,
    /// Draft or finalized.
    pub status: InvoiceStatus,
    /// Billed customer.
    pub customer_id: String,
    /// ISO 4217 currency.
    pub currency: String,
    /// Clock the customer lives on (`None`: wall clock).
    pub test_clock_id: Option<String>,
    /// The billing date.
    pub billing_date: DateTime<Utc>,
    /// When the draft becomes final (billing date + the customer's grace period).
    pub finalizes_at: DateTime<Utc>,
    /// Billing time of finalization.
    pub issued_at: Option<DateTime<Utc>>,
    /// Payment due date (issued_at + net payment terms).
    pub due_date: Option<DateTime<Utc>>,
    /// Earliest instant a line covers.
    pub period_start: DateTime<Utc>,
    /// Latest instant a line covers (exclusive).
    pub period_end: DateTime<Utc>,
    /// Subscriptions billed.
    pub subscription_ids: Vec<String>,
    /// Lines.
    pub lines: Vec<InvoiceLineView>,
    /// Σ line amounts.
    pub subtotal: Decimal,
    /// Σ discounts.
    pub discount_total: Decimal,
    /// Σ taxes.
    pub tax_total: Decimal,
    /// Credits applied after tax.
    pub credits_total: Decimal,
    /// Σ line totals; negative when credits for unused time exceed the charges.
    pub total: Decimal,
    /// What the customer owes: total − credits, never below zero (a negative total is owed to the customer;
    /// it is not carried to a later invoice yet).
    pub amount_due: Decimal,
}

/// What an invoice is about besides its lines: who, when, in which state.
#[derive(Debug, Clone)]
pub struct InvoiceHead<'a> {
    /// Tenant.
    pub tenant: &'a str,
    /// Customer.
    pub customer_id: &'a str,
    /// The customer's test clock.
    pub test_clock_id: Option<String>,
    /// ISO currency.
    pub currency: &'a str,
    /// Billing date.
    pub billing_date: DateTime<Utc>,
    /// End of the grace period.
    pub finalizes_at: DateTime<Utc>,
    /// Draft or finalized.
    pub status: InvoiceStatus,
    /// Finalization time, when finalized.
    pub issued_at: Option<DateTime<Utc>>,
    /// Net payment terms.
    pub net_terms: chrono::Duration,
}

impl InvoiceView {
    /// The view of an invoice the core assembled (no number yet).
    pub fn from_outcome(
        head: InvoiceHead<'_>,
        outcome: &billing_core::invoicing::InvoiceOutcome,
    ) -> Self {
        let inv = &outcome.invoice;
        let kind = |k: billing_core::invoice::LineKind| {
            use billing_core::invoice::LineKind as K;
            match k {
                K::Subscription => "subscription_fee",
                K::SubscriptionCredit => "proration_credit",
                K::Charge => "usage",
                K::TrueUp => "true_up",
            }
        };
        let lines = inv
            .lines
            .iter()
            .map(|l| InvoiceLineView {
                kind: kind(l.kind).into(),
                description: l.description.clone(),
                subscription_id: l.subscription.clone(),
                code: l.code.clone(),
                period_start: l.from,
                period_end: l.to,
                units: l.units,
                proration_factor: l.proration_factor,
                amount: l.amount,
                discount: l.discount,
                tax: l.tax_amount,
                total: l.total,
            })
            .collect();
        let date = head.billing_date;
        let starts = outcome.periods.iter().map(|p| p.period.start);
        let ends = outcome.periods.iter().map(|p| p.period.end);
        let mut subscription_ids: Vec<String> = outcome
            .periods
            .iter()
            .filter_map(|p| p.subscription.clone())
            .collect();
        subscription_ids.dedup();
        InvoiceView {
            invoice_id: invoice_id(head.tenant, head.customer_id, date),
            number: None,
            status: head.status,
            customer_id: head.customer_id.into(),
            currency: head.currency.into(),
            test_clock_id: head.test_clock_id,
            billing_date: date,
            finalizes_at: head.finalizes_at,
            issued_at: head.issued_at,
            due_date: head.issued_at.map(|t| t + head.net_terms),
            period_start: starts.min().unwrap_or(date),
            period_end: ends.max().unwrap_or(date),
            subscription_ids,
            lines,
            subtotal: inv.subtotal,
            discount_total: inv.discount_total,
            tax_total: inv.tax_total,
            credits_total: inv.credits_total,
            total: inv.total,
            amount_due: inv.amount_due,
        }
    }
}

/// The deterministic id of a customer's invoice for one billing date.
pub fn invoice_id(tenant: &str, customer: &str, billing_date: DateTime<Utc>) -> String {
    let mut h = Sha256::new();
    for part in [tenant, customer, &billing_date.timestamp().to_string()] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    let digest = h.finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("inv_{}_{hex}", billing_date.format("%Y%m%d"))
}

pub(crate) fn upsert(ks: &str) -> String {
    format!(
        "INSERT INTO {ks}.invoices (tenant_id, invoice_id, customer_id, status, number, billing_date, body) \
         VALUES (?, ?, ?, ?, ?, ?, ?)"
    )
}

pub(crate) fn upsert_index(ks: &str) -> String {
    format!("INSERT INTO {ks}.invoices_by_customer (tenant_id, customer_id, invoice_id) VALUES (?, ?, ?)")
}

pub(crate) fn select_one(ks: &str) -> String {
    format!("SELECT body FROM {ks}.invoices WHERE tenant_id = ? AND invoice_id = ?")
}

pub(crate) fn upsert_by_date(ks: &str) -> String {
    format!(
        "INSERT INTO {ks}.invoices_by_date (tenant_id, billing_date, partition, customer_id, invoice_id, status, number) \
         VALUES (?, ?, ?, ?, ?, ?, ?)"
    )
}

pub(crate) fn select_by_date(ks: &str) -> String {
    format!(
        "SELECT customer_id, invoice_id, status, number FROM {ks}.invoices_by_date \
         WHERE tenant_id = ? AND billing_date = ? AND partition = ?"
    )
}

/// Status of an invoice whose number may have been claimed by a bill run cut short (`invoices_by_date` only).
pub const NUMBERING: &str = "numbering";

pub(crate) fn select_page_first(ks: &str) -> String {
    format!("SELECT body FROM {ks}.invoices WHERE tenant_id = ?")
}

pub(crate) fn select_page_after(ks: &str) -> String {
    format!("SELECT body FROM {ks}.invoices WHERE tenant_id = ? AND invoice_id < ?")
}

pub(crate) fn select_customer_ids(ks: &str) -> String {
    format!(
        "SELECT invoice_id FROM {ks}.invoices_by_customer WHERE tenant_id = ? AND customer_id = ?"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_and_sort_by_billing_date() {
        let jan: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let feb: DateTime<Utc> = "2026-02-01T00:00:00Z".parse().unwrap();
        let a = invoice_id("t", "c", jan);
        assert_eq!(a, invoice_id("t", "c", jan));
        assert_ne!(a, invoice_id("t", "c2", jan));
        assert!(a.starts_with("inv_20260101_") && a.len() == "inv_20260101_".len() + 16);
        assert!(invoice_id("t", "c", feb) > invoice_id("t", "zzz", jan));
    }
}
