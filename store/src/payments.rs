//! The payment tables (migration `cql/0004_payments.cql`), as their writers and readers use them, every statement
//! prepared once and each call bounded by the session's request timeout:
//!
//! - `payment_methods`: a customer's payment methods and the default one. **Writer: invoicer** (materialized from
//!   `billing.payments`). Readers: query-api.
//! - `invoice_payments`: where the payment of a finalized invoice stands. **Writer: invoicer** (materialized from
//!   `billing.payments`). Readers: query-api.
//! - `payment_attempts`: every charge sent to a provider, written before and after the call. **Writer: payments.**
//!   Readers: payments (after a restart), query-api.

use std::collections::HashSet;
use std::sync::Arc;

use billing_runtime::cql::to_cql_decimal;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlDecimal;
use serde::Serialize;

use crate::{dec, prepare};

/// A customer's payment method as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PaymentMethodView {
    /// Our id.
    pub payment_method_id: String,
    /// `card` or `sepa_debit`.
    pub kind: String,
    /// The provider's token (never a card number).
    pub token: String,
    /// Billing time it was added.
    pub created_at: DateTime<Utc>,
    /// The one charged.
    pub is_default: bool,
}

/// Payment status of an invoice: `pending` until paid in full, `paid`, or `uncollectible` once dunning gave up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InvoicePaymentView {
    /// Invoice.
    pub invoice_id: String,
    /// Customer.
    pub customer_id: String,
    /// `pending`, `paid` or `uncollectible`.
    pub status: String,
    /// ISO 4217 currency.
    pub currency: String,
    /// Received so far.
    pub amount_paid: Decimal,
    /// Charges tried.
    pub attempts: i32,
    /// The last failure's code.
    pub last_code: Option<String>,
    /// The last failure's message.
    pub last_reason: Option<String>,
    /// When the next retry is scheduled (billing time).
    pub next_retry_at: Option<DateTime<Utc>>,
    /// When it was paid (billing time).
    pub paid_at: Option<DateTime<Utc>>,
    /// The provider's charge id or the payer's transfer reference.
    pub reference: Option<String>,
    /// Ids of the payment events already applied (so a replayed event counts once).
    #[serde(skip)]
    pub applied: HashSet<String>,
}

impl InvoicePaymentView {
    /// A finalized invoice nothing has happened to yet: pending, nothing paid, no attempt.
    pub fn pending(invoice_id: &str, customer_id: &str, currency: &str) -> Self {
        InvoicePaymentView {
            invoice_id: invoice_id.to_owned(),
            customer_id: customer_id.to_owned(),
            status: "pending".into(),
            currency: currency.to_owned(),
            amount_paid: Decimal::ZERO,
            attempts: 0,
            last_code: None,
            last_reason: None,
            next_retry_at: None,
            paid_at: None,
            reference: None,
            applied: HashSet::new(),
        }
    }
}

/// One charge sent to a provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PaymentAttemptRow {
    /// Invoice.
    pub invoice_id: String,
    /// 1 for the first try.
    pub attempt_number: i32,
    /// Our attempt id: the provider's idempotency key.
    pub attempt_id: String,
    /// Customer.
    pub customer_id: String,
    /// Method charged.
    pub payment_method_id: String,
    /// ISO 4217 currency.
    pub currency: String,
    /// Amount.
    pub amount: Decimal,
    /// `started`, `succeeded` or `failed`.
    pub status: String,
    /// Decline or error code.
    pub code: Option<String>,
    /// Decline or error message.
    pub reason: Option<String>,
    /// The provider's id of the charge.
    pub provider_reference: Option<String>,
    /// Billing time of the attempt.
    pub started_at: DateTime<Utc>,
    /// Billing time of its outcome.
    pub finished_at: Option<DateTime<Utc>>,
}

type MethodRow = (
    String,
    Option<String>,
    Option<String>,
    Option<DateTime<Utc>>,
    Option<bool>,
    Option<String>,
);

type InvoicePaymentRow = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<CqlDecimal>,
    Option<i32>,
    Option<String>,
    Option<String>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<String>,
    Option<HashSet<String>>,
);

type AttemptCols = (
    i32,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<CqlDecimal>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
);

/// Prepared statements over the payment tables.
pub struct PaymentStore {
    session: Arc<Session>,
    upsert_method: PreparedStatement,
    remove_method: PreparedStatement,
    set_default: PreparedStatement,
    select_methods: PreparedStatement,
    upsert_invoice_payment: PreparedStatement,
    select_invoice_payment: PreparedStatement,
    upsert_attempt: PreparedStatement,
    select_attempts: PreparedStatement,
}

impl PaymentStore {
    /// Prepare every statement.
    pub async fn new(session: Arc<Session>, ks: &str) -> anyhow::Result<Self> {
        Ok(PaymentStore {
            upsert_method: prepare(
                &session,
                format!(
                    "INSERT INTO {ks}.payment_methods (tenant_id, customer_id, payment_method_id, kind, provider_token, \
                     created_at, removed) VALUES (?, ?, ?, ?, ?, ?, false)"
                ),
                true,
            )
            .await?,
            remove_method: prepare(
                &session,
                format!(
                    "UPDATE {ks}.payment_methods SET removed = true \
                     WHERE tenant_id = ? AND customer_id = ? AND payment_method_id = ?"
                ),
                true,
            )
            .await?,
            set_default: prepare(
                &session,
                format!(
                    "UPDATE {ks}.payment_methods SET default_method = ? WHERE tenant_id = ? AND customer_id = ?"
                ),
                true,
            )
            .await?,
            select_methods: prepare(
                &session,
                format!(
                    "SELECT payment_method_id, kind, provider_token, created_at, removed, default_method \
                     FROM {ks}.payment_methods WHERE tenant_id = ? AND customer_id = ?"
                ),
                true,
            )
            .await?,
            upsert_invoice_payment: prepare(
                &session,
                format!(
                    "INSERT INTO {ks}.invoice_payments (tenant_id, invoice_id, customer_id, status, currency, \
                     amount_paid, attempts, last_code, last_reason, next_retry_at, paid_at, reference, applied) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                ),
                true,
            )
            .await?,
            select_invoice_payment: prepare(
                &session,
                format!(
                    "SELECT invoice_id, customer_id, status, currency, amount_paid, attempts, last_code, \
                     last_reason, next_retry_at, paid_at, reference, applied \
                     FROM {ks}.invoice_payments WHERE tenant_id = ? AND invoice_id = ?"
                ),
                true,
            )
            .await?,
            upsert_attempt: prepare(
                &session,
                format!(
                    "INSERT INTO {ks}.payment_attempts (tenant_id, invoice_id, attempt_number, attempt_id, \
                     customer_id, payment_method_id, currency, amount, status, code, reason, provider_reference, \
                     started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                ),
                true,
            )
            .await?,
            select_attempts: prepare(
                &session,
                format!(
                    "SELECT attempt_number, attempt_id, customer_id, payment_method_id, currency, amount, status, \
                     code, reason, provider_reference, started_at, finished_at \
                     FROM {ks}.payment_attempts WHERE tenant_id = ? AND invoice_id = ?"
                ),
                true,
            )
            .await?,
            session,
        })
    }

    // ---- payment methods (invoicer writes) ----

    /// Add a payment method (and make it the default when asked).
    pub async fn put_payment_method(
        &self,
        tenant: &str,
        customer: &str,
        m: &PaymentMethodView,
    ) -> anyhow::Result<()> {
        self.session
            .execute_unpaged(
                &self.upsert_method,
                (
                    tenant,
                    customer,
                    &m.payment_method_id,
                    &m.kind,
                    &m.token,
                    m.created_at,
                ),
            )
            .await?;
        if m.is_default {
            self.set_default_method(tenant, customer, Some(&m.payment_method_id))
                .await?;
        }
        Ok(())
    }

    /// Stop using a payment method (it stays listed as removed; a default removed leaves no default).
    pub async fn remove_payment_method(
        &self,
        tenant: &str,
        customer: &str,
        id: &str,
    ) -> anyhow::Result<()> {
        self.session
            .execute_unpaged(&self.remove_method, (tenant, customer, id))
            .await?;
        let (_, default) = self.payment_methods(tenant, customer).await?;
        if default.as_deref() == Some(id) {
            self.set_default_method(tenant, customer, None).await?;
        }
        Ok(())
    }

    /// Set (or clear) the default method.
    pub async fn set_default_method(
        &self,
        tenant: &str,
        customer: &str,
        id: Option<&str>,
    ) -> anyhow::Result<()> {
        self.session
            .execute_unpaged(&self.set_default, (id, tenant, customer))
            .await?;
        Ok(())
    }

    /// A customer's methods not removed, oldest first, and the default method's id.
    pub async fn payment_methods(
        &self,
        tenant: &str,
        customer: &str,
    ) -> anyhow::Result<(Vec<PaymentMethodView>, Option<String>)> {
        let rows: Vec<MethodRow> = self
            .session
            .execute_unpaged(&self.select_methods, (tenant, customer))
            .await?
            .into_rows_result()?
            .rows::<MethodRow>()?
            .collect::<Result<_, _>>()?;
        let default = rows.iter().find_map(|r| r.5.clone());
        let mut methods: Vec<PaymentMethodView> = rows
            .into_iter()
            .filter(|r| r.4 != Some(true) && r.1.is_some())
            .map(|(id, kind, token, created_at, _, _)| PaymentMethodView {
                is_default: default.as_deref() == Some(id.as_str()),
                payment_method_id: id,
                kind: kind.unwrap_or_default(),
                token: token.unwrap_or_default(),
                created_at: created_at.unwrap_or_default(),
            })
            .collect();
        methods.sort_by(|a, b| {
            (a.created_at, &a.payment_method_id).cmp(&(b.created_at, &b.payment_method_id))
        });
        Ok((methods, default))
    }

    // ---- invoice payments (invoicer writes) ----

    /// Write where an invoice's payment stands.
    pub async fn put_invoice_payment(
        &self,
        tenant: &str,
        p: &InvoicePaymentView,
    ) -> anyhow::Result<()> {
        self.session
            .execute_unpaged(
                &self.upsert_invoice_payment,
                (
                    tenant,
                    &p.invoice_id,
                    &p.customer_id,
                    &p.status,
                    &p.currency,
                    to_cql_decimal(p.amount_paid),
                    p.attempts,
                    &p.last_code,
                    &p.last_reason,
                    p.next_retry_at,
                    p.paid_at,
                    &p.reference,
                    &p.applied,
                ),
            )
            .await?;
        Ok(())
    }

    /// Where an invoice's payment stands, if anything happened to it.
    pub async fn invoice_payment(
        &self,
        tenant: &str,
        invoice: &str,
    ) -> anyhow::Result<Option<InvoicePaymentView>> {
        let row = self
            .session
            .execute_unpaged(&self.select_invoice_payment, (tenant, invoice))
            .await?
            .into_rows_result()?
            .maybe_first_row::<InvoicePaymentRow>()?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(InvoicePaymentView {
            invoice_id: r.0,
            customer_id: r.1.unwrap_or_default(),
            status: r.2.unwrap_or_default(),
            currency: r.3.unwrap_or_default(),
            amount_paid: dec(r.4)?.unwrap_or_default(),
            attempts: r.5.unwrap_or(0),
            last_code: r.6,
            last_reason: r.7,
            next_retry_at: r.8,
            paid_at: r.9,
            reference: r.10,
            applied: r.11.unwrap_or_default(),
        }))
    }

    // ---- attempts (payments writes) ----

    /// Write an attempt: before the provider call (`started`) and again with its outcome.
    pub async fn put_attempt(&self, tenant: &str, a: &PaymentAttemptRow) -> anyhow::Result<()> {
        self.session
            .execute_unpaged(
                &self.upsert_attempt,
                (
                    tenant,
                    &a.invoice_id,
                    a.attempt_number,
                    &a.attempt_id,
                    &a.customer_id,
                    &a.payment_method_id,
                    &a.currency,
                    to_cql_decimal(a.amount),
                    &a.status,
                    &a.code,
                    &a.reason,
                    &a.provider_reference,
                    a.started_at,
                    a.finished_at,
                ),
            )
            .await?;
        Ok(())
    }

    /// What the customer paid for an invoice through the provider: its succeeded attempts (what a refund can give
    /// back; payments outside the provider and credit applied are not in it).
    pub async fn paid_by_provider(&self, tenant: &str, invoice: &str) -> anyhow::Result<Decimal> {
        Ok(self
            .attempts_of(tenant, invoice)
            .await?
            .iter()
            .filter(|a| a.status == "succeeded")
            .map(|a| a.amount)
            .sum())
    }

    /// Every attempt on an invoice, first first.
    pub async fn attempts_of(
        &self,
        tenant: &str,
        invoice: &str,
    ) -> anyhow::Result<Vec<PaymentAttemptRow>> {
        let rows: Vec<AttemptCols> = self
            .session
            .execute_unpaged(&self.select_attempts, (tenant, invoice))
            .await?
            .into_rows_result()?
            .rows::<AttemptCols>()?
            .collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(|r| {
                Ok(PaymentAttemptRow {
                    invoice_id: invoice.to_owned(),
                    attempt_number: r.0,
                    attempt_id: r.1.unwrap_or_default(),
                    customer_id: r.2.unwrap_or_default(),
                    payment_method_id: r.3.unwrap_or_default(),
                    currency: r.4.unwrap_or_default(),
                    amount: dec(r.5)?.unwrap_or_default(),
                    status: r.6.unwrap_or_default(),
                    code: r.7,
                    reason: r.8,
                    provider_reference: r.9,
                    started_at: r.10.unwrap_or_default(),
                    finished_at: r.11,
                })
            })
            .collect()
    }
}
