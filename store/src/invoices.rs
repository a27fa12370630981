//! ScyllaDB `invoices` and `invoices_by_customer` (migration `cql/0002_billing.cql`): every invoice, draft or
//! finalized, as the API shows it. Invoice ids are deterministic, `inv_<billing date YYYYMMDD>_<16 hex>` (a hash
//! of tenant, customer and billing date), so a retry or a replay finds the same invoice, and id order is billing
//! date order (lists are newest first). `invoices_by_date` (migration `cql/0003_invoices_by_date.cql`) lists a
//! billing date's invoices per lifecycle partition, for the bill run.
//!
//! **Writer: invoicer.** Readers: query-api, invoicer.

use billing_core::tax::LineTax;
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
    /// Finalized, then voided before anything was paid on it (its number is kept); published as `invoice.voided`.
    Void,
}

impl InvoiceStatus {
    /// Whether a stored status name is an issued invoice (finalized, or finalized then voided): the bill run
    /// never bills its date again.
    pub fn issued(name: &str) -> bool {
        name == InvoiceStatus::Finalized.as_str() || name == InvoiceStatus::Void.as_str()
    }

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            InvoiceStatus::Draft => "draft",
            InvoiceStatus::Finalized => "finalized",
            InvoiceStatus::Void => "void",
        }
    }
}

/// One line of an invoice; amounts are rounded once to the currency's minor unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceLineView {
    /// `subscription_fee`, `proration_credit`, `usage`, `true_up`, `add_on`, `prepaid_credits` or `adjustment`.
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
    /// Σ of the line's taxes: its taxable amount + tax (amount − discount when its taxes are inclusive).
    pub total: Decimal,
    /// The tax base: amount − discount, without inclusive taxes.
    #[serde(default)]
    pub taxable_amount: Decimal,
    /// Each tax of the line (code, rate, inclusive, amount).
    #[serde(default)]
    pub taxes: Vec<LineTax>,
    /// The invoice a usage adjustment line corrects (`kind` `adjustment`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adjusts: Option<String>,
    /// The plan the line bills (subscription, usage, true-up and adjustment lines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_code: Option<String>,
    /// The billable metric of a usage or adjustment line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_code: Option<String>,
}

/// One tax of an invoice, over every line it applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedTaxView {
    /// Tax code.
    pub code: String,
    /// Its name when the invoice was assembled.
    pub name: String,
    /// Percent.
    pub rate: Decimal,
    /// Included in the line amounts.
    pub inclusive: bool,
    /// Σ of the taxed lines' taxable amounts.
    pub taxable_amount: Decimal,
    /// Σ of the lines' taxes of this code.
    pub amount: Decimal,
}

/// An invoice as the API serves it (stored as JSON in `invoices.body`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceView {
    /// Deterministic id (see the module documentation).
    pub invoice_id: String,
    /// Gap-free number, once finalized.
    pub number: Option<String>,
    /// Draft, finalized or void.
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
    /// The invoice's taxes, one per code and rate.
    #[serde(default)]
    pub applied_taxes: Vec<AppliedTaxView>,
    /// Legal mention of an exempt or reverse-charge customer.
    #[serde(default)]
    pub tax_note: Option<String>,
    /// Billing time of the void, once voided.
    #[serde(default)]
    pub voided_at: Option<DateTime<Utc>>,
    /// The coupons that discounted it.
    #[serde(default)]
    pub coupons: Vec<InvoiceCouponView>,
    /// A one-off invoice of add-ons (issued at once, outside any period), not a billing date's.
    #[serde(default)]
    pub one_off: bool,
    /// The prepaid credits that paid part of it after tax (`credits_total` is their sum): one per wallet.
    #[serde(default)]
    pub credits: Vec<InvoiceCreditView>,
    /// Late-usage corrections it carries: its adjustment lines and the credit notes issued with it.
    #[serde(default)]
    pub late_usage: Vec<crate::late_usage::LateUsageView>,
    /// Credit notes that carried its negative total (credits for unused time above its charges) to the customer's
    /// credit balance.
    #[serde(default)]
    pub carried_by: Vec<String>,
    /// The usage partition's end offset the bill run waited for: every usage event before it is billed here or
    /// earlier (see [`crate::late_usage`]).
    #[serde(default)]
    pub usage_offset: Option<i64>,
}

/// Prepaid credits of a wallet used on an invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceCreditView {
    /// The wallet.
    pub wallet_id: String,
    /// Credits used.
    pub amount: Decimal,
}

/// A coupon on an invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceCouponView {
    /// Id of the coupon's application to the customer.
    pub applied_coupon_id: String,
    /// Coupon code.
    pub code: String,
    /// What it took off (spread over the lines' `discount`).
    pub amount: Decimal,
}

impl InvoiceView {
    /// Add what this invoice's coupons discounted and the wallet credits it used to `used`.
    pub fn record_use(&self, used: &mut billing_schemas::reference::PriorUse) {
        for c in &self.coupons {
            used.record(&c.applied_coupon_id, c.amount);
        }
        for c in &self.credits {
            used.record_credit(&c.wallet_id, c.amount);
        }
    }
}

/// What a customer's coupons discounted and its wallets paid on its issued invoices (finalized or void) billed
/// before `before`, in billing-date order.
pub fn prior_use(
    invoices: &[InvoiceView],
    before: DateTime<Utc>,
) -> billing_schemas::reference::PriorUse {
    let mut issued: Vec<&InvoiceView> = invoices
        .iter()
        .filter(|inv| inv.status != InvoiceStatus::Draft && inv.billing_date < before)
        .collect();
    issued.sort_by_key(|i| i.billing_date);
    let mut used = billing_schemas::reference::PriorUse::default();
    for inv in issued {
        inv.record_use(&mut used);
    }
    used
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
    /// Draft, finalized or void.
    pub status: InvoiceStatus,
    /// Finalization time, when finalized.
    pub issued_at: Option<DateTime<Utc>>,
    /// Net payment terms.
    pub net_terms: chrono::Duration,
    /// Name of each tax code (a code without one shows its code).
    pub tax_names: &'a std::collections::BTreeMap<String, String>,
    /// Legal mention of an exempt or reverse-charge customer.
    pub tax_note: Option<String>,
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
                K::AddOn => "add_on",
                K::PrepaidCredits => "prepaid_credits",
                K::Adjustment => crate::late_usage::ADJUSTMENT,
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
                taxable_amount: l.taxable_amount,
                taxes: l.taxes.clone(),
                adjusts: l.adjusts.clone(),
                plan_code: l.plan.clone(),
                metric_code: l.metric.clone(),
            })
            .collect();
        let applied_taxes = billing_core::tax::summarize(
            inv.lines
                .iter()
                .map(|l| (l.taxable_amount, l.taxes.as_slice())),
        )
        .into_iter()
        .map(|t| AppliedTaxView {
            name: head
                .tax_names
                .get(&t.code)
                .cloned()
                .unwrap_or_else(|| t.code.clone()),
            code: t.code,
            rate: t.rate,
            inclusive: t.inclusive,
            taxable_amount: t.taxable_amount,
            amount: t.amount,
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
            applied_taxes,
            tax_note: head.tax_note,
            voided_at: None,
            coupons: inv
                .coupons
                .iter()
                .map(|c| InvoiceCouponView {
                    applied_coupon_id: c.id.clone().unwrap_or_else(|| c.code.clone()),
                    code: c.code.clone(),
                    amount: c.amount,
                })
                .collect(),
            one_off: false,
            credits: inv
                .credits
                .iter()
                .map(|c| InvoiceCreditView {
                    wallet_id: c.code.clone(),
                    amount: c.amount,
                })
                .collect(),
            late_usage: Vec::new(),
            carried_by: Vec::new(),
            usage_offset: None,
        }
    }
}

/// The view of the invoice the core assembled for a customer of `reference` on `billing_date` (no number yet):
/// the head from the customer's record (grace period, net terms, clock), the tax names and the tax note from
/// the tenant's tax rates and the customer's exemption. The invoicer and the API's preview both build it here.
pub fn customer_invoice(
    reference: &billing_schemas::reference::Reference,
    tenant: &str,
    customer_id: &str,
    billing_date: DateTime<Utc>,
    status: InvoiceStatus,
    issued_at: Option<DateTime<Utc>>,
    outcome: &billing_core::invoicing::InvoiceOutcome,
) -> Result<InvoiceView, String> {
    let record = reference
        .customer(tenant, customer_id)
        .and_then(|c| c.record.as_ref())
        .ok_or_else(|| format!("customer {customer_id} not created"))?;
    let taxes = reference.customer_taxes(tenant, record)?;
    let tax_names: std::collections::BTreeMap<String, String> = outcome
        .invoice
        .lines
        .iter()
        .flat_map(|l| &l.taxes)
        .filter_map(|t| {
            reference
                .tax_rate(tenant, &t.code)
                .map(|info| (t.code.clone(), info.name.clone()))
        })
        .collect();
    let days = |d: i32| chrono::Duration::days(i64::from(d.max(0)));
    Ok(InvoiceView::from_outcome(
        InvoiceHead {
            tenant,
            customer_id,
            test_clock_id: record.test_clock_id.clone(),
            currency: &record.currency,
            billing_date,
            finalizes_at: billing_date + days(record.invoice_grace_period_days),
            status,
            issued_at,
            net_terms: days(record.net_payment_term_days),
            tax_names: &tax_names,
            tax_note: taxes.note,
        },
        outcome,
    ))
}

/// Why an invoice cannot be voided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoidRefusal {
    /// It is void already (a repeated request: done).
    AlreadyVoid,
    /// Another state forbids it: (field, reason).
    Refused(&'static str, String),
}

/// Whether a customer's invoice may be voided (Stripe's and Lago's rule): it must be finalized, nothing paid on
/// it (by the provider, out of band or from a credit balance: `payment`; by a wallet's prepaid credits), and no
/// credit note issued on it (a paid or credited invoice is corrected by a credit note instead). The API checks it before it publishes the request,
/// the invoicer again when it voids.
pub fn void_refusal(
    inv: &InvoiceView,
    customer_id: &str,
    payment: Option<&crate::payments::InvoicePaymentView>,
    credit_notes: &[crate::credit_notes::CreditNoteView],
) -> Result<(), VoidRefusal> {
    let refuse = |field, reason: String| Err(VoidRefusal::Refused(field, reason));
    if inv.customer_id != customer_id {
        return refuse(
            "invoice_id",
            format!("invoice {} is not customer {customer_id}'s", inv.invoice_id),
        );
    }
    match inv.status {
        InvoiceStatus::Void => return Err(VoidRefusal::AlreadyVoid),
        InvoiceStatus::Draft => {
            return refuse(
                "invoice_id",
                format!(
                    "invoice {} is a draft; only a finalized invoice can be voided",
                    inv.invoice_id
                ),
            )
        }
        InvoiceStatus::Finalized => {}
    }
    if let Some(p) = payment.filter(|p| p.status == "paid" || p.amount_paid > Decimal::ZERO) {
        return refuse(
            "invoice_id",
            format!(
                "invoice {} is {} ({} {} received); correct it with a credit note instead",
                inv.invoice_id,
                if p.status == "paid" {
                    "paid"
                } else {
                    "partly paid"
                },
                p.amount_paid,
                p.currency
            ),
        );
    }
    if inv.lines.iter().any(|l| l.kind == "prepaid_credits") {
        return refuse(
            "invoice_id",
            format!(
                "invoice {} bought prepaid credits that are in the wallet; it cannot be voided",
                inv.invoice_id
            ),
        );
    }
    if inv.credits_total > Decimal::ZERO {
        return refuse(
            "invoice_id",
            format!(
                "prepaid credits paid {} {} of invoice {}; correct it with a credit note instead",
                inv.credits_total, inv.currency, inv.invoice_id
            ),
        );
    }
    let credited = credit_notes
        .iter()
        .filter(|c| c.status == crate::credit_notes::ISSUED)
        .count();
    if credited > 0 {
        return refuse(
            "invoice_id",
            format!(
                "invoice {} has {credited} credit note(s); correct it with a credit note instead",
                inv.invoice_id
            ),
        );
    }
    Ok(())
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
        "INSERT INTO {ks}.invoices_by_date (tenant_id, billing_date, partition, customer_id, invoice_id, status, number, \
         usage_offset) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    )
}

pub(crate) fn select_by_date(ks: &str) -> String {
    format!(
        "SELECT customer_id, invoice_id, status, number, usage_offset FROM {ks}.invoices_by_date \
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

pub(crate) fn select_many(ks: &str) -> String {
    format!("SELECT invoice_id, body FROM {ks}.invoices WHERE tenant_id = ? AND invoice_id IN ?")
}

pub(crate) fn select_ids_of_customers(ks: &str) -> String {
    format!(
        "SELECT customer_id, invoice_id FROM {ks}.invoices_by_customer WHERE tenant_id = ? AND customer_id IN ?"
    )
}

pub(crate) fn select_customer_ids(ks: &str) -> String {
    format!(
        "SELECT invoice_id FROM {ks}.invoices_by_customer WHERE tenant_id = ? AND customer_id = ?"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finalized(lines: &[&str]) -> InvoiceView {
        let at: DateTime<Utc> = "2026-02-01T00:00:00Z".parse().unwrap();
        let line = |kind: &&str| InvoiceLineView {
            kind: (*kind).into(),
            description: "x".into(),
            subscription_id: None,
            code: "x".into(),
            period_start: None,
            period_end: None,
            units: None,
            proration_factor: None,
            amount: Decimal::TEN,
            discount: Decimal::ZERO,
            tax: Decimal::ZERO,
            total: Decimal::TEN,
            taxable_amount: Decimal::TEN,
            taxes: vec![],
            adjusts: None,
            plan_code: None,
            metric_code: None,
        };
        InvoiceView {
            invoice_id: "inv_1".into(),
            number: Some("T-000001".into()),
            status: InvoiceStatus::Finalized,
            customer_id: "c1".into(),
            currency: "EUR".into(),
            test_clock_id: None,
            billing_date: at,
            finalizes_at: at,
            issued_at: Some(at),
            due_date: Some(at),
            period_start: at,
            period_end: at,
            subscription_ids: vec![],
            lines: lines.iter().map(line).collect(),
            subtotal: Decimal::TEN,
            discount_total: Decimal::ZERO,
            tax_total: Decimal::ZERO,
            credits_total: Decimal::ZERO,
            total: Decimal::TEN,
            amount_due: Decimal::TEN,
            applied_taxes: vec![],
            tax_note: None,
            voided_at: None,
            coupons: vec![],
            one_off: false,
            credits: vec![],
            late_usage: vec![],
            carried_by: vec![],
            usage_offset: None,
        }
    }

    #[test]
    fn only_a_finalized_unpaid_uncredited_invoice_is_voided() {
        use crate::payments::InvoicePaymentView;
        let refused = |r: Result<(), VoidRefusal>, what: &str| match r {
            Err(VoidRefusal::Refused("invoice_id", reason)) => {
                assert!(reason.contains(what), "{reason}")
            }
            other => panic!("{what}: {other:?}"),
        };
        let inv = finalized(&["subscription_fee"]);
        assert_eq!(void_refusal(&inv, "c1", None, &[]), Ok(()));
        let pending = InvoicePaymentView::pending("inv_1", "c1", "EUR");
        assert_eq!(void_refusal(&inv, "c1", Some(&pending), &[]), Ok(()));
        refused(void_refusal(&inv, "c2", None, &[]), "not customer c2");
        let mut draft = inv.clone();
        draft.status = InvoiceStatus::Draft;
        refused(void_refusal(&draft, "c1", None, &[]), "draft");
        let mut void = inv.clone();
        void.status = InvoiceStatus::Void;
        assert_eq!(
            void_refusal(&void, "c1", None, &[]),
            Err(VoidRefusal::AlreadyVoid)
        );
        let mut part = pending.clone();
        part.amount_paid = Decimal::ONE;
        refused(void_refusal(&inv, "c1", Some(&part), &[]), "partly paid");
        let mut paid = pending;
        paid.status = "paid".into();
        refused(void_refusal(&inv, "c1", Some(&paid), &[]), "is paid");
        let mut by_credits = inv.clone();
        by_credits.credits_total = Decimal::ONE;
        refused(
            void_refusal(&by_credits, "c1", None, &[]),
            "prepaid credits paid",
        );
        let purchase = finalized(&["prepaid_credits"]);
        refused(
            void_refusal(&purchase, "c1", None, &[]),
            "bought prepaid credits",
        );
    }

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
