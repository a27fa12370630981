//! The invoicer's read models of `billing.payments`: a customer's payment methods (`payment_methods`) and where
//! each invoice's payment stands (`invoice_payments`: pending, paid, partially paid, uncollectible).
//!
//! A group consumer of its own (`<invoicer group>.payments`) applies each event in log order, records
//! `materialized_offsets` for the API's read-your-writes, then commits. Every write is idempotent: amounts are
//! added once per event id (`invoice_payments.applied`), everything else is an upsert, so a replay after a crash
//! changes nothing. A store failure is retried with backoff; the events after it wait.

use std::sync::Arc;
use std::time::Duration;

use billing_runtime::config::Settings;
use billing_runtime::kafka::{self, Topics};
use billing_runtime::Shutdown;
use billing_schemas::decode;
use billing_schemas::payment::{Payment, PaymentEvent};
use billing_store::billing::BillingStore;
use billing_store::credit_notes::{
    CreditApplicationView, CreditBalanceView, CreditNoteStore, RefundView, ISSUED,
};
use billing_store::payments::{InvoicePaymentView, PaymentMethodView, PaymentStore};
use rdkafka::consumer::{CommitMode, Consumer, DefaultConsumerContext, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rust_decimal::Decimal;

use crate::metrics::Metrics;

/// Why an event's amount cannot be read, if it cannot.
fn bad_amount(ev: &PaymentEvent) -> Option<String> {
    let amount = match &ev.payload {
        Payment::PaymentSucceeded(s) => &s.amount,
        Payment::InvoicePaidOutOfBand(o) => &o.amount,
        Payment::CreditApplied(c) => &c.amount,
        _ => return None,
    };
    amount
        .parse::<Decimal>()
        .err()
        .map(|e| format!("amount {amount:?}: {e}"))
}

/// Materializes `billing.payments`.
pub struct PaymentViews {
    topics: Topics,
    consumer: StreamConsumer<DefaultConsumerContext>,
    billing: Arc<BillingStore>,
    payments: Arc<PaymentStore>,
    credit_notes: Arc<CreditNoteStore>,
    metrics: Metrics,
}

impl PaymentViews {
    /// Subscribe.
    pub fn new(
        settings: &Settings,
        billing: Arc<BillingStore>,
        payments: Arc<PaymentStore>,
        credit_notes: Arc<CreditNoteStore>,
        metrics: Metrics,
    ) -> anyhow::Result<Self> {
        let topics = Topics::new(&settings.kafka);
        let consumer = kafka::consumer(
            &settings.kafka,
            &format!("{}.payments", settings.invoicer.group_id),
            DefaultConsumerContext,
        )?;
        consumer.subscribe(&[&topics.payments])?;
        Ok(PaymentViews {
            topics,
            consumer,
            billing,
            payments,
            credit_notes,
            metrics,
        })
    }

    /// Run until shutdown.
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        loop {
            let m = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                m = self.consumer.recv() => m,
            };
            let m = match m {
                Ok(m) => m.detach(),
                Err(e) => {
                    tracing::warn!(error = %e, "payments consumer error");
                    continue;
                }
            };
            let mut backoff = Duration::from_millis(200);
            while let Err(e) = self.handle(&m).await {
                tracing::warn!(partition = m.partition(), offset = m.offset(), error = %e, "payment event failed; retrying");
                self.metrics.retries.inc();
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }

    async fn handle(&self, m: &OwnedMessage) -> anyhow::Result<()> {
        match decode::<PaymentEvent>(m.payload().unwrap_or_default(), kafka::content_type(m)) {
            // An event that can never apply (an amount that is not a decimal) is skipped, not retried forever.
            Ok(ev) => match bad_amount(&ev) {
                Some(why) => {
                    tracing::warn!(
                        partition = m.partition(),
                        offset = m.offset(),
                        why,
                        "payment event refused"
                    );
                    self.metrics.lifecycle.with_label_values(&["refused"]).inc();
                }
                None => self.apply(&ev).await?,
            },
            Err(e) => {
                // Nothing in it can be shown; the payments service skips it too.
                tracing::warn!(partition = m.partition(), offset = m.offset(), error = %e, "undecodable payment event skipped");
                self.metrics.lifecycle.with_label_values(&["refused"]).inc();
            }
        }
        self.billing
            .put_materialized(&self.topics.payments, m.partition(), m.offset() + 1)
            .await?;
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(
            &self.topics.payments,
            m.partition(),
            rdkafka::Offset::Offset(m.offset() + 1),
        )?;
        self.consumer.commit(&tpl, CommitMode::Async)?;
        Ok(())
    }

    async fn apply(&self, ev: &PaymentEvent) -> anyhow::Result<()> {
        let t = ev.tenant_id.as_str();
        match &ev.payload {
            Payment::PaymentMethodAdded(a) => {
                let (_, default) = self.payments.payment_methods(t, &a.customer_id).await?;
                let view = PaymentMethodView {
                    payment_method_id: a.payment_method_id.clone(),
                    kind: a.kind.clone(),
                    token: a.token.clone(),
                    created_at: ev.occurred_at,
                    is_default: a.set_default || default.is_none(),
                };
                self.payments
                    .put_payment_method(t, &a.customer_id, &view)
                    .await
            }
            Payment::PaymentMethodRemoved(r) => {
                self.payments
                    .remove_payment_method(t, &r.customer_id, &r.payment_method_id)
                    .await
            }
            Payment::DefaultPaymentMethodSet(d) => {
                let (methods, _) = self.payments.payment_methods(t, &d.customer_id).await?;
                if methods
                    .iter()
                    .any(|m| m.payment_method_id == d.payment_method_id)
                {
                    self.payments
                        .set_default_method(t, &d.customer_id, Some(&d.payment_method_id))
                        .await?;
                }
                Ok(())
            }
            Payment::PaymentAttempted(a) => {
                self.update(ev, &a.invoice_id, &a.customer_id, |p, _| {
                    p.attempts = p.attempts.max(a.attempt_number);
                })
                .await
            }
            Payment::PaymentFailed(f) => {
                self.update(ev, &f.invoice_id, &f.customer_id, |p, _| {
                    p.attempts = p.attempts.max(f.attempt_number);
                    if p.status == "paid" {
                        // Paid meanwhile (outside the provider): no retry is coming.
                        return;
                    }
                    p.last_code = Some(f.code.clone());
                    p.last_reason = Some(f.reason.clone());
                    p.next_retry_at = f.next_retry_at;
                })
                .await
            }
            Payment::PaymentSucceeded(s) => {
                let amount = s.amount.parse::<Decimal>()?;
                // The payments service charges what remains: a success pays the invoice in full.
                self.update(ev, &s.invoice_id, &s.customer_id, |p, _| {
                    p.attempts = p.attempts.max(s.attempt_number);
                    p.amount_paid += amount;
                    p.reference = Some(s.provider_reference.clone());
                    p.next_retry_at = None;
                    p.status = "paid".into();
                    p.paid_at = Some(ev.occurred_at);
                })
                .await
            }
            Payment::InvoicePaidOutOfBand(o) => {
                let amount = o.amount.parse::<Decimal>()?;
                self.update(ev, &o.invoice_id, &o.customer_id, |p, due| {
                    p.amount_paid += amount;
                    p.reference = Some(o.reference.clone());
                    if p.amount_paid >= due {
                        p.status = "paid".into();
                        p.paid_at = Some(ev.occurred_at);
                        p.next_retry_at = None;
                    }
                })
                .await
            }
            Payment::InvoiceUncollectible(u) => {
                self.update(ev, &u.invoice_id, &u.customer_id, |p, _| {
                    if p.status != "paid" {
                        p.status = "uncollectible".into();
                        p.next_retry_at = None;
                    }
                })
                .await
            }
            Payment::PaymentRetryRequested(r) => {
                self.update(ev, &r.invoice_id, &r.customer_id, |p, _| {
                    if p.status == "uncollectible" {
                        p.status = "pending".into();
                    }
                })
                .await
            }
            Payment::RefundSucceeded(r) => {
                self.refund(t, &r.credit_note_id, |v| {
                    v.status = "succeeded".into();
                    v.provider_reference = Some(r.provider_reference.clone());
                })
                .await
            }
            Payment::RefundFailed(r) => {
                self.refund(t, &r.credit_note_id, |v| {
                    v.status = "failed".into();
                    v.code = Some(r.code.clone());
                    v.reason = Some(r.reason.clone());
                })
                .await
            }
            Payment::CreditApplied(c) => {
                let amount = c.amount.parse::<Decimal>()?;
                self.update(ev, &c.invoice_id, &c.customer_id, |p, due| {
                    p.amount_paid += amount;
                    if p.amount_paid >= due && p.status != "paid" {
                        p.status = "paid".into();
                        p.paid_at = Some(ev.occurred_at);
                        p.next_retry_at = None;
                        if p.reference.is_none() {
                            p.reference = Some(c.credit_note_id.clone());
                        }
                    }
                })
                .await?;
                let mut cn = self
                    .credit_notes
                    .get(t, &c.credit_note_id)
                    .await?
                    .filter(|x| x.status == ISSUED)
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "credit note {t}/{} is not materialized yet",
                            c.credit_note_id
                        )
                    })?;
                let total = cn.total;
                let credit = cn.credit.get_or_insert_with(|| CreditBalanceView {
                    remaining: total,
                    applied: Vec::new(),
                });
                if credit.applied.iter().all(|a| a.invoice_id != c.invoice_id) {
                    credit.applied.push(CreditApplicationView {
                        invoice_id: c.invoice_id.clone(),
                        amount,
                        applied_at: ev.occurred_at,
                    });
                    credit.remaining = (credit.remaining - amount).max(Decimal::ZERO);
                    self.credit_notes.put(t, &cn).await?;
                }
                Ok(())
            }
            Payment::DunningReminder(_) => Ok(()),
        }
    }

    /// Record a credit note's refund outcome (the same outcome written twice is the same row).
    async fn refund(
        &self,
        tenant: &str,
        credit_note: &str,
        change: impl FnOnce(&mut RefundView),
    ) -> anyhow::Result<()> {
        // The credit note's row is marked issued right after `credit_note.created` is published, and the refund
        // may be read first: wait for it (retried with backoff), never write over a row being issued.
        let mut cn = self
            .credit_notes
            .get(tenant, credit_note)
            .await?
            .filter(|c| c.status == ISSUED)
            .ok_or_else(|| {
                anyhow::anyhow!("credit note {tenant}/{credit_note} is not materialized yet")
            })?;
        let refund = cn.refund.get_or_insert_with(|| RefundView {
            status: "pending".into(),
            provider_reference: None,
            code: None,
            reason: None,
        });
        change(refund);
        self.credit_notes.put(tenant, &cn).await
    }

    /// Read, change and write an invoice's payment row, once per event.
    async fn update(
        &self,
        ev: &PaymentEvent,
        invoice_id: &str,
        customer_id: &str,
        change: impl FnOnce(&mut InvoicePaymentView, Decimal),
    ) -> anyhow::Result<()> {
        let t = ev.tenant_id.as_str();
        let mut p = match self.payments.invoice_payment(t, invoice_id).await? {
            Some(p) => p,
            None => InvoicePaymentView::pending(invoice_id, customer_id, ""),
        };
        if p.applied.contains(&ev.event_id) {
            return Ok(());
        }
        // The numbered invoice row is written right after `invoice.finalized` is published, so a payment may be
        // read first: wait for the row (retried with backoff).
        let invoice =
            self.billing.invoice(t, invoice_id).await?.ok_or_else(|| {
                anyhow::anyhow!("invoice {t}/{invoice_id} is not materialized yet")
            })?;
        p.currency = invoice.currency.clone();
        change(&mut p, invoice.amount_due);
        p.applied.insert(ev.event_id.clone());
        self.payments.put_invoice_payment(t, &p).await
    }
}
