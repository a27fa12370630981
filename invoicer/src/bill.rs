//! The bill run: for the customers of one lifecycle partition on one clock, every billing date the clock has
//! passed becomes one invoice per customer (over all its subscriptions billed that day), assembled by the core
//! from the subscription histories and the usage rating has checkpointed; a draft during the customer's grace
//! period, then finalized: numbered, stored, published on `billing.invoices` and written to ClickHouse.

use std::collections::{BTreeMap, HashMap, HashSet};

use billing_core::aggregation::Aggregate;
use billing_core::invoice::{Adjustments, Invoice, LineKind};
use billing_core::invoicing::{
    billing_dates, closing_period, invoice_billing_date, BillableSubscription, BillingDateInput,
    ChargeAggregate, InvoiceOutcome,
};
use billing_core::money::RoundingMode;
use billing_core::Currency;
use billing_schemas::invoice::{self as wire, InvoiceEvent};
use billing_schemas::reference::{Customer, Reference};
use billing_store::invoices::{invoice_id, InvoiceLineView, InvoiceStatus, InvoiceView};
use billing_store::usage::CustomerUsage;
use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;

/// The wall clock's id; customers without a test clock live on it.
pub const WALL: &str = "wall";

/// The clock a customer lives on.
pub fn clock_of(c: &Customer) -> &str {
    c.record
        .as_ref()
        .and_then(|r| r.test_clock_id.as_deref())
        .unwrap_or(WALL)
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
    let Some(record) = c.record.as_ref() else {
        return (Vec::new(), Vec::new());
    };
    let Ok(currency) = Currency::parse(&record.currency) else {
        tracing::warn!(
            tenant,
            customer = customer_id,
            currency = record.currency,
            "customer currency unknown; not billed"
        );
        return (Vec::new(), Vec::new());
    };
    let tz = c.tz();
    let mut subs = Vec::new();
    let mut dates = Vec::new();
    for s in &c.subscriptions {
        match reference.billable(tenant, s, currency).and_then(|b| {
            billing_dates(&b, tz, now)
                .map(|d| (b, d))
                .map_err(|e| e.to_string())
        }) {
            Ok((b, d)) => {
                dates.extend(d);
                subs.push(b);
            }
            Err(e) => {
                tracing::warn!(tenant, customer = customer_id, subscription = s.id, error = %e, "subscription not billed")
            }
        }
    }
    dates.sort();
    dates.dedup();
    (subs, dates)
}

/// Usage of the period closing at `date`, per subscription, from the stored aggregates.
fn with_usage(
    subs: &[BillableSubscription],
    usage: &CustomerUsage,
    c: &Customer,
    date: DateTime<Utc>,
) -> anyhow::Result<Vec<BillableSubscription>> {
    let tz = c.tz();
    let mut out = Vec::with_capacity(subs.len());
    for s in subs {
        let mut s = s.clone();
        if let Some(period) = closing_period(&s, tz, date)? {
            let id = s.id.clone().unwrap_or_default();
            for (k, st) in &usage.aggregates {
                if k.subscription_id != id || k.period_start != period.start {
                    continue;
                }
                let known = s
                    .plans
                    .iter()
                    .any(|p| p.charges.iter().any(|ch| ch.code == k.charge_id));
                if !known {
                    continue;
                }
                let aggregation = st.aggregation_type()?;
                let units = st
                    .running
                    .units(aggregation, None, period.start, st.period_end)?;
                s.aggregates.push(ChargeAggregate {
                    charge: k.charge_id.clone(),
                    group: (!k.group_key.is_empty()).then(|| k.group_key.clone()),
                    aggregate: Aggregate {
                        units,
                        events_count: st.running.events_count,
                        event_values: Vec::new(),
                    },
                });
            }
        }
        out.push(s);
    }
    Ok(out)
}

/// The customer's invoice for one billing date, as a view (number not given yet), or `None` when no
/// subscription has the date.
#[allow(clippy::too_many_arguments)]
pub fn invoice_for(
    tenant: &str,
    customer_id: &str,
    c: &Customer,
    subs: &[BillableSubscription],
    usage: &CustomerUsage,
    date: DateTime<Utc>,
    status: InvoiceStatus,
    issued_at: Option<DateTime<Utc>>,
) -> anyhow::Result<Option<InvoiceView>> {
    let record = c
        .record
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("customer {customer_id} not created"))?;
    let currency = Currency::parse(&record.currency)?;
    let subs = with_usage(subs, usage, c, date)?;
    let outcome = invoice_billing_date(&BillingDateInput {
        currency,
        rounding: RoundingMode::HalfUp,
        timezone: c.tz(),
        billing_date: date,
        subscriptions: &subs,
        adjustments: Adjustments {
            coupons: &[],
            taxes: &[],
            customer_tax_exempt: false,
            credit_notes: &[],
            prepaid_credits: Decimal::ZERO,
        },
    })?;
    let Some(outcome) = outcome else {
        return Ok(None);
    };
    let grace = Duration::days(i64::from(record.invoice_grace_period_days.max(0)));
    let net = Duration::days(i64::from(record.net_payment_term_days.max(0)));
    Ok(Some(view(
        tenant,
        customer_id,
        record.test_clock_id.clone(),
        &record.currency,
        date,
        date + grace,
        status,
        issued_at,
        net,
        &outcome,
    )))
}

#[allow(clippy::too_many_arguments)]
fn view(
    tenant: &str,
    customer_id: &str,
    clock: Option<String>,
    currency: &str,
    date: DateTime<Utc>,
    finalizes_at: DateTime<Utc>,
    status: InvoiceStatus,
    issued_at: Option<DateTime<Utc>>,
    net: Duration,
    outcome: &InvoiceOutcome,
) -> InvoiceView {
    let inv: &Invoice = &outcome.invoice;
    let lines: Vec<InvoiceLineView> = inv
        .lines
        .iter()
        .map(|l| InvoiceLineView {
            kind: line_kind(l.kind).into(),
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
    let period_start = outcome
        .periods
        .iter()
        .map(|p| p.period.start)
        .min()
        .unwrap_or(date);
    let period_end = outcome
        .periods
        .iter()
        .map(|p| p.period.end)
        .max()
        .unwrap_or(date);
    let mut subscription_ids: Vec<String> = outcome
        .periods
        .iter()
        .filter_map(|p| p.subscription.clone())
        .collect();
    subscription_ids.dedup();
    InvoiceView {
        invoice_id: invoice_id(tenant, customer_id, date),
        number: None,
        status,
        customer_id: customer_id.into(),
        currency: currency.into(),
        test_clock_id: clock,
        billing_date: date,
        finalizes_at,
        issued_at,
        due_date: issued_at.map(|t| t + net),
        period_start,
        period_end,
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

fn line_kind(k: LineKind) -> &'static str {
    match k {
        LineKind::Subscription => "subscription_fee",
        LineKind::SubscriptionCredit => "proration_credit",
        LineKind::Charge => "usage",
        LineKind::TrueUp => "true_up",
    }
}

fn wire_kind(k: &str) -> wire::LineKind {
    match k {
        "subscription_fee" => wire::LineKind::SubscriptionFee,
        "proration_credit" => wire::LineKind::ProrationCredit,
        "true_up" => wire::LineKind::TrueUp,
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
                    charge_id: matches!(l.kind.as_str(), "usage" | "true_up")
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
        })),
    }
}

/// What the invoicer knows of its customers' invoices: billing date → status (read from the store once per
/// billing date and partition, then kept up to date by the invoicer itself).
#[derive(Debug, Default)]
pub struct Issued {
    by_customer: HashMap<(String, String), BTreeMap<DateTime<Utc>, InvoiceStatus>>,
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
