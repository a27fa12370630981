//! ScyllaDB `customers` and `customers_by_created` (migration `cql/0002_billing.cql`): every customer as the API
//! shows it, and the newest-first index used for cursor pagination.
//!
//! **Writer: invoicer** (from `billing.lifecycle`). Readers: query-api, invoicer.

use std::collections::BTreeMap;

use billing_schemas::lifecycle::{
    Address, CouponApplied, CustomerCreated, TaxExempt, WalletCreated, WalletToppedUp,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A customer as the API serves it (stored as JSON in `customers.body`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerView {
    /// External id chosen by the tenant.
    pub customer_id: String,
    /// Display name.
    pub name: String,
    /// Contact email.
    pub email: Option<String>,
    /// ISO 4217 currency the customer is billed in.
    pub currency: String,
    /// IANA timezone of its billing periods.
    pub timezone: String,
    /// ISO 3166 country, for tax.
    pub billing_country: Option<String>,
    /// Billing address.
    pub address: Option<Address>,
    /// Tax identifiers.
    pub tax_ids: Vec<String>,
    /// Days an invoice stays a draft after its billing date.
    pub invoice_grace_period_days: i32,
    /// Days from finalization to the due date.
    pub net_payment_term_days: i32,
    /// Tenant's key/values.
    pub metadata: BTreeMap<String, String>,
    /// Test clock the customer lives on (`null`: the wall clock).
    pub test_clock_id: Option<String>,
    /// Tax rates of its lines without rates at their plan or charge (empty: the tenant's).
    #[serde(default)]
    pub tax_codes: Vec<String>,
    /// `none`, `exempt` or `reverse` (reverse charge).
    #[serde(default)]
    pub tax_exempt: TaxExempt,
    /// Billing time of creation.
    pub created_at: DateTime<Utc>,
    /// Coupons applied to it, in application order (removed ones included, with their removal time).
    #[serde(default)]
    pub applied_coupons: Vec<AppliedCouponView>,
    /// Its prepaid-credit wallets, with their top-ups (what invoices used is on the invoices).
    #[serde(default)]
    pub wallets: Vec<WalletView>,
}

/// A wallet as created, with its top-ups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletView {
    /// The wallet as created.
    #[serde(flatten)]
    pub created: WalletCreated,
    /// Billing time of its creation.
    pub created_at: DateTime<Utc>,
    /// Its top-ups, in order.
    pub top_ups: Vec<TopUpView>,
}

/// A top-up of a wallet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopUpView {
    /// The top-up as published.
    #[serde(flatten)]
    pub top_up: WalletToppedUp,
    /// Billing time: its credits pay the invoices billed from then on.
    pub at: DateTime<Utc>,
}

/// A coupon applied to a customer, with the terms it keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedCouponView {
    /// The application as published (id, coupon code, terms, scope).
    #[serde(flatten)]
    pub applied: CouponApplied,
    /// Billing time of the application: it discounts invoices whose billing date is at or after it.
    pub applied_at: DateTime<Utc>,
    /// Billing time of its removal.
    pub removed_at: Option<DateTime<Utc>>,
}

impl CustomerView {
    /// The view of a customer record created at `created_at`.
    pub fn new(c: &CustomerCreated, created_at: DateTime<Utc>) -> Self {
        CustomerView {
            customer_id: c.customer_id.clone(),
            name: c.name.clone(),
            email: c.email.clone(),
            currency: c.currency.clone(),
            timezone: c.timezone.clone(),
            billing_country: c.billing_country.clone(),
            address: c.address.clone(),
            tax_ids: c.tax_ids.clone(),
            invoice_grace_period_days: c.invoice_grace_period_days,
            net_payment_term_days: c.net_payment_term_days,
            metadata: c.metadata.clone(),
            test_clock_id: c.test_clock_id.clone(),
            tax_codes: c.tax_codes.clone(),
            tax_exempt: c.tax_exempt,
            created_at,
            applied_coupons: Vec::new(),
            wallets: Vec::new(),
        }
    }
}

impl CustomerView {
    /// The customer record this view shows (what `CustomerCreated` would carry to create it as it is now).
    pub fn record(&self) -> CustomerCreated {
        CustomerCreated {
            customer_id: self.customer_id.clone(),
            name: self.name.clone(),
            email: self.email.clone(),
            currency: self.currency.clone(),
            timezone: self.timezone.clone(),
            billing_country: self.billing_country.clone(),
            address: self.address.clone(),
            tax_ids: self.tax_ids.clone(),
            invoice_grace_period_days: self.invoice_grace_period_days,
            net_payment_term_days: self.net_payment_term_days,
            metadata: self.metadata.clone(),
            test_clock_id: self.test_clock_id.clone(),
            tax_codes: self.tax_codes.clone(),
            tax_exempt: self.tax_exempt,
        }
    }
}

pub(crate) fn upsert(ks: &str) -> String {
    format!(
        "INSERT INTO {ks}.customers (tenant_id, customer_id, created_at, clock_id, body) VALUES (?, ?, ?, ?, ?)"
    )
}

pub(crate) fn upsert_index(ks: &str) -> String {
    format!("INSERT INTO {ks}.customers_by_created (tenant_id, created_at, customer_id) VALUES (?, ?, ?)")
}

pub(crate) fn select_one(ks: &str) -> String {
    format!("SELECT created_at, body FROM {ks}.customers WHERE tenant_id = ? AND customer_id = ?")
}

pub(crate) fn select_many(ks: &str) -> String {
    format!("SELECT customer_id, body FROM {ks}.customers WHERE tenant_id = ? AND customer_id IN ?")
}

pub(crate) fn select_page_first(ks: &str) -> String {
    format!("SELECT customer_id FROM {ks}.customers_by_created WHERE tenant_id = ? LIMIT ?")
}

pub(crate) fn select_page_after(ks: &str) -> String {
    format!(
        "SELECT customer_id FROM {ks}.customers_by_created WHERE tenant_id = ? AND (created_at, customer_id) < (?, ?) LIMIT ?"
    )
}
