//! The bill run: for the customers of one lifecycle partition on one clock, every billing date the clock has
//! passed becomes one invoice per customer (over all its subscriptions billed that day), assembled by the core
//! from the subscription histories and the usage rating has checkpointed; a draft during the customer's grace
//! period, then finalized: numbered, stored, published on `billing.invoices` and written to ClickHouse.

use std::collections::{BTreeMap, HashMap, HashSet};

use billing_core::invoice::DraftLine;
use billing_core::invoicing::{billing_dates, BillableSubscription};
use billing_schemas::invoice::{self as wire, InvoiceEvent};
use billing_schemas::reference::{Customer, PriorUse, Reference};
use billing_store::invoices::{InvoiceStatus, InvoiceView};
use billing_store::usage::CustomerUsage;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

/// The wall clock's id; customers without a test clock live on it.
pub const WALL: &str = "wall";

/// The clock a customer lives on.
pub fn clock_of(c: &Customer) -> &str {
    c.test_clock.as_deref().unwrap_or(WALL)
}

/// Every billing date of the customer's subscriptions up to `now`, with the subscriptions as the core bills them
/// (those that cannot be billed are logged and left out).
pub fn due_dates(
    reference: &Reference,
    tenant: &str,
    customer_id: &str,
    c: &Customer,
    now: DateTime<Utc>,
) -> (Vec<BillableSubscription>, Vec<DateTime<Utc>>) {
    let (subs, refused) = reference.billable_subscriptions(tenant, customer_id);
    for (id, reason) in refused {
        tracing::warn!(
            tenant,
            customer = customer_id,
            subscription = id,
            reason,
            "subscription not billed"
        );
    }
    let tz = c.tz();
    let mut billed = Vec::with_capacity(subs.len());
    let mut dates = Vec::new();
    for b in subs {
        match billing_dates(&b, tz, now) {
            Ok(d) => {
                dates.extend(d);
                billed.push(b);
            }
            Err(e) => {
                tracing::warn!(tenant, customer = customer_id, subscription = ?b.id, error = %e, "subscription not billed")
            }
        }
    }
    dates.sort();
    dates.dedup();
    (billed, dates)
}

/// The customer's invoice for one billing date, as a view (number not given yet), or `None` when nothing is
/// billed on it. Usage comes from rating's checkpointed aggregates.
#[allow(clippy::too_many_arguments)]
pub fn invoice_for(
    reference: &Reference,
    tenant: &str,
    customer_id: &str,
    subs: &[BillableSubscription],
    usage: &CustomerUsage,
    prior_use: &PriorUse,
    extra: &[DraftLine],
    date: DateTime<Utc>,
    status: InvoiceStatus,
    issued_at: Option<DateTime<Utc>>,
) -> anyhow::Result<Option<InvoiceView>> {
    let outcome = reference
        .invoice_on(tenant, customer_id, subs, date, prior_use, extra, |s, p| {
            usage.for_subscription(s, p)
        })
        .map_err(|e| anyhow::anyhow!(e))?;
    let Some(outcome) = outcome else {
        return Ok(None);
    };
    billing_store::invoices::customer_invoice(
        reference,
        tenant,
        customer_id,
        date,
        status,
        issued_at,
        &outcome,
    )
    .map(Some)
    .map_err(|e| anyhow::anyhow!(e))
}

fn wire_kind(k: &str) -> wire::LineKind {
    match k {
        "subscription_fee" => wire::LineKind::SubscriptionFee,
        "proration_credit" => wire::LineKind::ProrationCredit,
        "true_up" => wire::LineKind::TrueUp,
        "add_on" => wire::LineKind::AddOn,
        "prepaid_credits" => wire::LineKind::PrepaidCredits,
        billing_store::late_usage::ADJUSTMENT => wire::LineKind::Adjustment,
        _ => wire::LineKind::Usage,
    }
}

/// The `invoice.finalized` event of a numbered invoice; its event id is the invoice id, so a re-publication
/// after a crash is recognisable as the same event.
pub fn finalized_event(tenant: &str, inv: &InvoiceView) -> InvoiceEvent {
    let issued = inv.issued_at.unwrap_or(inv.billing_date);
    InvoiceEvent {
        tenant_id: tenant.into(),
        event_id: inv.invoice_id.clone(),
        occurred_at: issued,
        payload: wire::Invoice::InvoiceFinalized(Box::new(wire::InvoiceFinalized {
            invoice_id: inv.invoice_id.clone(),
            number: inv.number.clone().unwrap_or_default(),
            customer_id: inv.customer_id.clone(),
            currency: inv.currency.clone(),
            subscription_ids: inv.subscription_ids.clone(),
            billing_date: inv.billing_date,
            issued_at: issued,
            due_date: inv.due_date.unwrap_or(issued),
            period_start: inv.period_start,
            period_end: inv.period_end,
            lines: inv
                .lines
                .iter()
                .map(|l| wire::InvoiceLine {
                    kind: wire_kind(&l.kind),
                    description: l.description.clone(),
                    subscription_id: l.subscription_id.clone(),
                    charge_id: matches!(l.kind.as_str(), "usage" | "true_up" | "adjustment")
                        .then(|| l.code.clone()),
                    period_start: l.period_start,
                    period_end: l.period_end,
                    units: l.units.unwrap_or(Decimal::ONE).to_string(),
                    amount: l.amount.to_string(),
                    discount: l.discount.to_string(),
                    tax: l.tax.to_string(),
                    total: l.total.to_string(),
                })
                .collect(),
            subtotal: inv.subtotal.to_string(),
            discount_total: inv.discount_total.to_string(),
            tax_total: inv.tax_total.to_string(),
            credits_total: inv.credits_total.to_string(),
            total: inv.total.to_string(),
            applied_taxes: inv
                .applied_taxes
                .iter()
                .map(|t| wire::AppliedTax {
                    code: t.code.clone(),
                    name: t.name.clone(),
                    rate: t.rate.to_string(),
                    inclusive: t.inclusive,
                    taxable_amount: t.taxable_amount.to_string(),
                    amount: t.amount.to_string(),
                })
                .collect(),
            tax_note: inv.tax_note.clone(),
            coupons: inv
                .coupons
                .iter()
                .map(|c| wire::InvoiceCoupon {
                    applied_coupon_id: c.applied_coupon_id.clone(),
                    code: c.code.clone(),
                    amount: c.amount.to_string(),
                })
                .collect(),
        })),
    }
}

/// What the invoicer knows of its customers' invoices: billing date → status (read from the store once per
/// billing date and partition, then kept up to date by the invoicer itself).
#[derive(Debug, Default)]
pub struct Issued {
    by_customer: HashMap<(String, String), BTreeMap<DateTime<Utc>, InvoiceStatus>>,
    /// The usage offset of each finalized invoice (see `billing_store::late_usage`).
    usage_offsets: HashMap<(String, String), BTreeMap<DateTime<Utc>, i64>>,
    /// Drafts asked to be finalized before their grace period ends.
    pub finalize_early: HashSet<String>,
}

impl Issued {
    /// The known invoices of a customer, if loaded.
    pub fn of(
        &self,
        tenant: &str,
        customer: &str,
    ) -> Option<&BTreeMap<DateTime<Utc>, InvoiceStatus>> {
        self.by_customer
            .get(&(tenant.to_owned(), customer.to_owned()))
    }

    /// Forget the customers `keep` refuses.
    pub fn retain(&mut self, keep: impl Fn(&str, &str) -> bool) {
        self.by_customer.retain(|(t, c), _| keep(t, c));
        self.usage_offsets.retain(|(t, c), _| keep(t, c));
    }

    /// Record the usage offset of a finalized invoice.
    pub fn set_usage_offset(
        &mut self,
        tenant: &str,
        customer: &str,
        date: DateTime<Utc>,
        offset: Option<i64>,
    ) {
        let key = (tenant.to_owned(), customer.to_owned());
        match offset {
            Some(o) => {
                self.usage_offsets.entry(key).or_default().insert(date, o);
            }
            None => {
                if let Some(m) = self.usage_offsets.get_mut(&key) {
                    m.remove(&date);
                }
            }
        }
    }

    /// The customer's last finalized billing date before `before`, with its invoice's usage offset when known.
    pub fn last_finalized_before(
        &self,
        tenant: &str,
        customer: &str,
        before: DateTime<Utc>,
    ) -> Option<(DateTime<Utc>, Option<i64>)> {
        let key = (tenant.to_owned(), customer.to_owned());
        let (date, _) = self
            .by_customer
            .get(&key)?
            .range(..before)
            .rev()
            .find(|(_, s)| **s == InvoiceStatus::Finalized)?;
        let offset = self
            .usage_offsets
            .get(&key)
            .and_then(|m| m.get(date))
            .copied();
        Some((*date, offset))
    }

    /// Record one invoice's status.
    pub fn set(
        &mut self,
        tenant: &str,
        customer: &str,
        date: DateTime<Utc>,
        status: InvoiceStatus,
    ) {
        self.by_customer
            .entry((tenant.to_owned(), customer.to_owned()))
            .or_default()
            .insert(date, status);
    }
}
