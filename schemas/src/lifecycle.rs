//! `billing.lifecycle`: customers, subscriptions and billing clock ticks (schema `lifecycle_event.avsc`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::registry::{Message, SchemaId};

/// One lifecycle event, keyed by tenant/customer (clock ticks by tenant/clock).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleEvent {
    /// Tenant the event belongs to.
    pub tenant_id: String,
    /// Idempotency key.
    pub event_id: String,
    /// When the change happened, in billing time.
    #[serde(with = "crate::time")]
    pub occurred_at: DateTime<Utc>,
    /// What happened.
    pub payload: Lifecycle,
}

impl Message for LifecycleEvent {
    const SCHEMA: SchemaId = SchemaId::Lifecycle;
}

/// The lifecycle changes; each variant is a record of the Avro union, named alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Lifecycle {
    /// A customer was created.
    CustomerCreated(CustomerCreated),
    /// Some of a customer's attributes changed.
    CustomerUpdated(CustomerUpdated),
    /// A subscription started (or will start) on a plan.
    SubscriptionCreated(SubscriptionCreated),
    /// A subscription moved to another plan.
    SubscriptionChanged(SubscriptionChanged),
    /// A subscription stops accruing fees from `effective_at`.
    SubscriptionPaused(SubscriptionEffective),
    /// A paused subscription accrues fees again from `effective_at`.
    SubscriptionResumed(SubscriptionEffective),
    /// A subscription ends.
    SubscriptionCanceled(SubscriptionCanceled),
    /// Billing time advanced.
    ClockTick(ClockTick),
    /// End a draft invoice's grace period now.
    InvoiceFinalizeRequested(InvoiceFinalizeRequested),
    /// Dunning suspended a subscription: no fee and no usage charge from `effective_at` (v3).
    SubscriptionSuspended(SubscriptionEffective),
    /// A suspension ended: fees and usage charges again from `effective_at` (v3).
    SubscriptionUnsuspended(SubscriptionEffective),
    /// A credit note asked for on a finalized invoice (v3); the invoicer issues or refuses it.
    CreditNoteRequested(CreditNoteRequested),
    /// Void a finalized, unpaid invoice (v4); the invoicer voids it or refuses.
    InvoiceVoidRequested(InvoiceVoidRequested),
    /// A coupon applied to a customer (v4).
    CouponApplied(CouponApplied),
    /// An applied coupon removed (v4).
    CouponRemoved(CouponRemoved),
    /// Add-ons to invoice at once (v4); the invoicer issues the invoice or refuses.
    OneOffInvoiceRequested(OneOffInvoiceRequested),
    /// A prepaid-credit wallet created (v4).
    WalletCreated(WalletCreated),
    /// Credits added to a wallet (v4).
    WalletToppedUp(WalletToppedUp),
}

/// A postal address; every part is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    /// First line.
    #[serde(default)]
    pub line1: Option<String>,
    /// Second line.
    #[serde(default)]
    pub line2: Option<String>,
    /// City.
    #[serde(default)]
    pub city: Option<String>,
    /// Postal code.
    #[serde(default)]
    pub postal_code: Option<String>,
    /// State or region.
    #[serde(default)]
    pub state: Option<String>,
    /// ISO 3166-1 alpha-2 country.
    #[serde(default)]
    pub country: Option<String>,
}

/// A new customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerCreated {
    /// External id chosen by the tenant.
    pub customer_id: String,
    /// Display name.
    pub name: String,
    /// Contact email.
    #[serde(default)]
    pub email: Option<String>,
    /// ISO 4217 code the customer is billed in.
    pub currency: String,
    /// IANA timezone for period boundaries.
    #[serde(default = "utc")]
    pub timezone: String,
    /// ISO 3166 country, for tax.
    #[serde(default)]
    pub billing_country: Option<String>,
    /// Billing address.
    #[serde(default)]
    pub address: Option<Address>,
    /// Tax identifiers (VAT numbers...).
    #[serde(default)]
    pub tax_ids: Vec<String>,
    /// Days an invoice stays a draft after its billing date (0: finalized at once).
    #[serde(default)]
    pub invoice_grace_period_days: i32,
    /// Days from finalization to the due date.
    #[serde(default)]
    pub net_payment_term_days: i32,
    /// Free-form key/values of the tenant.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// The test clock the customer lives on (`None`: the wall clock).
    #[serde(default)]
    pub test_clock_id: Option<String>,
    /// Tax rates of its lines that have none at their plan or charge; empty: the tenant's (v4).
    #[serde(default)]
    pub tax_codes: Vec<String>,
    /// Taxed, exempt or reverse charge (v4).
    #[serde(default)]
    pub tax_exempt: TaxExempt,
}

/// Whether a customer pays tax (Stripe's `tax_exempt`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaxExempt {
    /// Taxed.
    #[default]
    None,
    /// No tax.
    Exempt,
    /// No tax; the customer accounts for it (reverse charge), and the invoice says so.
    Reverse,
}

fn utc() -> String {
    "UTC".to_owned()
}

/// Changed customer attributes; `None` keeps the old value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerUpdated {
    /// External id.
    pub customer_id: String,
    /// New display name.
    #[serde(default)]
    pub name: Option<String>,
    /// New email.
    #[serde(default)]
    pub email: Option<String>,
    /// New timezone.
    #[serde(default)]
    pub timezone: Option<String>,
    /// New country.
    #[serde(default)]
    pub billing_country: Option<String>,
    /// New address.
    #[serde(default)]
    pub address: Option<Address>,
    /// New tax ids.
    #[serde(default)]
    pub tax_ids: Option<Vec<String>>,
    /// New grace period.
    #[serde(default)]
    pub invoice_grace_period_days: Option<i32>,
    /// New net payment terms.
    #[serde(default)]
    pub net_payment_term_days: Option<i32>,
    /// New metadata (replaces the old map whole).
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    /// New tax codes (v4).
    #[serde(default)]
    pub tax_codes: Option<Vec<String>>,
    /// New tax exemption (v4).
    #[serde(default)]
    pub tax_exempt: Option<TaxExempt>,
}

/// Calendar or anniversary billing periods: the core's own type (its serde names are the Avro symbols).
pub use billing_core::period::BillingTime;

/// A subscription to a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionCreated {
    /// External subscription id.
    pub subscription_id: String,
    /// Subscribed customer.
    pub customer_id: String,
    /// Plan subscribed to.
    pub plan_code: String,
    /// Start of service.
    #[serde(with = "crate::time")]
    pub started_at: DateTime<Utc>,
    /// End of the free trial, if any.
    #[serde(default, with = "crate::time::option")]
    pub trial_ends_at: Option<DateTime<Utc>>,
    /// Calendar or anniversary periods.
    pub billing_time: BillingTime,
    /// Periods start on this day of the month (1–31, clamped to short months) instead; the stretch before the
    /// first one is prorated.
    #[serde(default)]
    pub billing_anchor_day: Option<i32>,
    /// How partial periods of the subscription fee are prorated.
    #[serde(default)]
    pub proration: ProrationConvention,
}

/// Proration conventions: the core's own type (its serde names are the Avro symbols).
pub use billing_core::proration::ProrationConvention;

/// A plan change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionChanged {
    /// Subscription changed.
    pub subscription_id: String,
    /// Its customer.
    pub customer_id: String,
    /// The plan from `effective_at`.
    pub new_plan_code: String,
    /// When the new plan takes effect.
    #[serde(with = "crate::time")]
    pub effective_at: DateTime<Utc>,
    /// Take effect at the end of the period containing `effective_at` (a downgrade) instead of at once.
    #[serde(default)]
    pub at_period_end: bool,
}

/// A pause or a resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionEffective {
    /// Subscription paused or resumed.
    pub subscription_id: String,
    /// Its customer.
    pub customer_id: String,
    /// When it takes effect.
    #[serde(with = "crate::time")]
    pub effective_at: DateTime<Utc>,
}

/// A cancellation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionCanceled {
    /// Subscription canceled.
    pub subscription_id: String,
    /// Its customer.
    pub customer_id: String,
    /// When it takes effect.
    #[serde(with = "crate::time")]
    pub effective_at: DateTime<Utc>,
    /// Cancel at the end of the current period instead of at `effective_at`.
    #[serde(default)]
    pub at_period_end: bool,
}

/// Billing time for a clock (the wall clock, or a test clock).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockTick {
    /// `wall` in production, or a test clock's id.
    pub clock_id: String,
    /// The new billing time.
    #[serde(with = "crate::time")]
    pub now: DateTime<Utc>,
}

/// A request to finalize a draft invoice now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceFinalizeRequested {
    /// The invoice's customer (the event's key).
    pub customer_id: String,
    /// The draft invoice.
    pub invoice_id: String,
}

pub use billing_core::credit_note::CreditNoteKind;

/// A credit note asked for on a finalized invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditNoteRequested {
    /// Id given by the API (the credit note keeps it).
    pub credit_note_id: String,
    /// The invoice's customer (the event's key).
    pub customer_id: String,
    /// The finalized invoice credited.
    pub invoice_id: String,
    /// Credit to the customer's balance, or refund through the payment provider.
    pub kind: CreditNoteKind,
    /// Why (`duplicate`, `fraudulent`, `order_change`, `product_unsatisfactory`, `other`).
    pub reason: String,
    /// Free text shown on the credit note.
    #[serde(default)]
    pub memo: Option<String>,
    /// What is credited, per invoice line.
    pub lines: Vec<CreditNoteLineRequest>,
}

/// One invoice line credited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditNoteLineRequest {
    /// Index of the line on the invoice.
    pub line_index: i32,
    /// Amount credited before tax, decimal string.
    pub amount: String,
}

impl Lifecycle {
    /// The customer the payload is about (`None` for a clock tick).
    pub fn customer_id(&self) -> Option<&str> {
        Some(match self {
            Lifecycle::CustomerCreated(c) => &c.customer_id,
            Lifecycle::CustomerUpdated(c) => &c.customer_id,
            Lifecycle::SubscriptionCreated(s) => &s.customer_id,
            Lifecycle::SubscriptionChanged(s) => &s.customer_id,
            Lifecycle::SubscriptionPaused(s)
            | Lifecycle::SubscriptionResumed(s)
            | Lifecycle::SubscriptionSuspended(s)
            | Lifecycle::SubscriptionUnsuspended(s) => &s.customer_id,
            Lifecycle::SubscriptionCanceled(s) => &s.customer_id,
            Lifecycle::InvoiceFinalizeRequested(r) => &r.customer_id,
            Lifecycle::CreditNoteRequested(r) => &r.customer_id,
            Lifecycle::InvoiceVoidRequested(r) => &r.customer_id,
            Lifecycle::CouponApplied(c) => &c.customer_id,
            Lifecycle::CouponRemoved(c) => &c.customer_id,
            Lifecycle::OneOffInvoiceRequested(r) => &r.customer_id,
            Lifecycle::WalletCreated(w) => &w.customer_id,
            Lifecycle::WalletToppedUp(w) => &w.customer_id,
            Lifecycle::ClockTick(_) => return None,
        })
    }
}

impl LifecycleEvent {
    /// The Kafka key: the customer's key (`tenant/customer`), so a customer's lifecycle stays in order with its
    /// usage; a clock tick is keyed by its clock.
    pub fn key(&self) -> String {
        match (&self.payload, self.payload.customer_id()) {
            (_, Some(customer)) => crate::customer_key(&self.tenant_id, customer),
            (Lifecycle::ClockTick(t), None) => format!("{}/clock/{}", self.tenant_id, t.clock_id),
            (_, None) => self.tenant_id.clone(),
        }
    }

    /// A customer's creation and its subscription to a plan from `started_at` (calendar billing, no trial): what
    /// every integration publishes before the customer's usage. Event ids are `customer-<id>` and
    /// `subscription-<id>`.
    pub fn customer_subscribed(
        tenant: &str,
        customer: CustomerCreated,
        subscription_id: &str,
        plan_code: &str,
        started_at: DateTime<Utc>,
    ) -> [LifecycleEvent; 2] {
        let customer_id = customer.customer_id.clone();
        let event = |event_id: String, payload| LifecycleEvent {
            tenant_id: tenant.into(),
            event_id,
            occurred_at: started_at,
            payload,
        };
        [
            event(
                format!("customer-{customer_id}"),
                Lifecycle::CustomerCreated(customer),
            ),
            event(
                format!("subscription-{subscription_id}"),
                Lifecycle::SubscriptionCreated(SubscriptionCreated {
                    subscription_id: subscription_id.into(),
                    customer_id,
                    plan_code: plan_code.into(),
                    started_at,
                    trial_ends_at: None,
                    billing_time: BillingTime::Calendar,
                    billing_anchor_day: None,
                    proration: ProrationConvention::Days,
                }),
            ),
        ]
    }

    /// A subscription paused from `at` (event id `pause-<customer id>`).
    pub fn subscription_paused(
        tenant: &str,
        customer_id: &str,
        subscription_id: &str,
        at: DateTime<Utc>,
    ) -> LifecycleEvent {
        LifecycleEvent {
            tenant_id: tenant.into(),
            event_id: format!("pause-{customer_id}"),
            occurred_at: at,
            payload: Lifecycle::SubscriptionPaused(SubscriptionEffective {
                subscription_id: subscription_id.into(),
                customer_id: customer_id.into(),
                effective_at: at,
            }),
        }
    }
}

impl CustomerCreated {
    /// A customer with a name, a currency and a timezone, and nothing else.
    pub fn new(customer_id: &str, name: &str, currency: &str, timezone: &str) -> Self {
        CustomerCreated {
            customer_id: customer_id.into(),
            name: name.into(),
            email: None,
            currency: currency.into(),
            timezone: timezone.into(),
            billing_country: None,
            address: None,
            tax_ids: Vec::new(),
            invoice_grace_period_days: 0,
            net_payment_term_days: 0,
            metadata: BTreeMap::new(),
            test_clock_id: None,
            tax_codes: Vec::new(),
            tax_exempt: TaxExempt::None,
        }
    }
}

/// A request to void a finalized invoice that nothing was paid on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceVoidRequested {
    /// The invoice's customer.
    pub customer_id: String,
    /// The invoice.
    pub invoice_id: String,
    /// Why.
    #[serde(default)]
    pub reason: Option<String>,
}

/// A coupon applied to a customer, with the terms it keeps whatever later happens to the catalog's coupon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CouponApplied {
    /// Id of this application.
    pub applied_coupon_id: String,
    /// The customer.
    pub customer_id: String,
    /// Only this subscription's lines, when set.
    #[serde(default)]
    pub subscription_id: Option<String>,
    /// The catalog coupon.
    pub coupon_code: String,
    /// Fixed amount or percentage.
    pub coupon_type: crate::catalog::CouponType,
    /// Amount off, decimal string.
    #[serde(default)]
    pub amount: Option<String>,
    /// Its currency.
    #[serde(default)]
    pub amount_currency: Option<String>,
    /// Percent off, decimal string.
    #[serde(default)]
    pub percentage_rate: Option<String>,
    /// Once, recurring or forever.
    pub frequency: crate::catalog::CouponFrequency,
    /// Invoices discounted, when recurring.
    #[serde(default)]
    pub frequency_duration: Option<i32>,
    /// Limited to these plans' lines.
    #[serde(default)]
    pub plan_codes: Vec<String>,
    /// Limited to these metrics' usage lines.
    #[serde(default)]
    pub metric_codes: Vec<String>,
}

/// An applied coupon removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CouponRemoved {
    /// Id of the application.
    pub applied_coupon_id: String,
    /// The customer.
    pub customer_id: String,
}

/// Add-ons to invoice to a customer now, outside any period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OneOffInvoiceRequested {
    /// Id of the invoice to issue.
    pub invoice_id: String,
    /// The customer.
    pub customer_id: String,
    /// Its lines.
    pub fees: Vec<OneOffFee>,
}

/// One add-on on a one-off invoice, with the terms it is invoiced at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OneOffFee {
    /// The catalog add-on.
    pub add_on_code: String,
    /// Name shown on the invoice.
    pub name: String,
    /// Units, decimal string.
    pub units: String,
    /// Price of one unit in the customer's currency, decimal string.
    pub unit_amount: String,
    /// Shown on the line instead of the name.
    #[serde(default)]
    pub description: Option<String>,
    /// Tax rates of the line; empty: the customer's.
    #[serde(default)]
    pub tax_codes: Vec<String>,
}

/// A prepaid-credit wallet, in its customer's currency (1 credit = 1 unit of it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletCreated {
    /// Id.
    pub wallet_id: String,
    /// The customer.
    pub customer_id: String,
    /// Display name.
    #[serde(default)]
    pub name: Option<String>,
    /// Credits left at this instant expire.
    #[serde(default, with = "crate::time::option")]
    pub expiration_at: Option<DateTime<Utc>>,
}

/// Credits added to a wallet: granted (free) and paid (bought with the invoice `invoice_id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletToppedUp {
    /// Id of the transaction.
    pub transaction_id: String,
    /// The wallet.
    pub wallet_id: String,
    /// Its customer.
    pub customer_id: String,
    /// Free credits, decimal string.
    pub granted_credits: String,
    /// Bought credits, decimal string.
    pub paid_credits: String,
    /// The invoice of the paid credits.
    #[serde(default)]
    pub invoice_id: Option<String>,
}
