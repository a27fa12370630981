//! The payments loop: one group consumer on `billing.invoices`, `billing.payments` and `billing.lifecycle` with the
//! range assignor, so an instance owns the same partitions of all three, that is whole customers.
//!
//! State is the fold of those partitions ([`Book`]), rebuilt at every assignment by reading them from their start
//! (the group never commits). Decisions are taken only once a partition has caught up with the end offsets it had
//! when it was assigned, so history is never acted on twice. An action runs in a worker task (at most
//! `payments.concurrency` at once) and its effects come back through the fold: the loop keeps an action "in
//! flight" until it reads the event that ends it, so an action is not started twice; a worker that fails (a store,
//! the broker or the provider unavailable) releases it, and the next sweep starts it again.
//!
//! A charge: write the attempt `started` to `payment_attempts`, publish `PaymentAttempted`, call the provider with
//! the attempt id as idempotency key (transient errors retried with the same key), write the outcome, publish
//! `PaymentSucceeded` or `PaymentFailed` (with the next attempt's time from the schedule). A process killed
//! anywhere in between starts the same attempt number again, with the same key, and the provider answers the first
//! outcome without charging twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use billing_core::currency::Currency;
use billing_runtime::config::{DunningAction, Settings};
use billing_runtime::kafka::{self, Revocations, Topics};
use billing_runtime::publish::Publisher;
use billing_runtime::Shutdown;
use billing_schemas::invoice::InvoiceEvent;
use billing_schemas::lifecycle::{
    Lifecycle, LifecycleEvent, SubscriptionCanceled, SubscriptionEffective,
};
use billing_schemas::payment::{
    CreditApplied, DunningReminder, InvoiceUncollectible, Payment, PaymentAttempted, PaymentEvent,
    PaymentFailed, PaymentSucceeded, RefundFailed, RefundSucceeded,
};
use billing_schemas::{decode, Encoding};
use billing_store::payments::{PaymentAttemptRow, PaymentStore};
use chrono::{DateTime, Utc};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::Offset;
use rust_decimal::Decimal;
use tokio::sync::{mpsc, Semaphore};

use crate::book::{attempt_id, Action, Book, Due, Payer, Policy};
use crate::metrics::Metrics;
use crate::provider::{
    AttachRequest, ChargeOutcome, ChargeRequest, CustomerRequest, PaymentMethodKind,
    PaymentProvider, ProviderError, RefundOutcome, RefundRequest,
};

/// How often every caught-up partition is looked at for due work (after a failure, for instance).
const SWEEP: Duration = Duration::from_secs(1);
/// Tries of a provider call that answers a transient error, with the same idempotency key.
const PROVIDER_TRIES: u32 = 3;
/// Tries of a store write or a publish inside one action.
const IO_TRIES: u32 = 3;
/// The longest wait for one store write or publish (the store's own request timeout is longer).
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// One owned partition (of all three topics).
struct Part {
    book: Book,
    /// End offset of each topic's partition when it was assigned: below them, history is replayed.
    ends: HashMap<String, i64>,
    caught_up: bool,
}

/// What a worker reports when it ends.
struct Done {
    action: String,
    ok: bool,
}

/// (tenant, customer, our payment method id).
type MethodKey = (String, String, String);
/// (the provider's customer, the provider's payment method).
type ProviderRefs = (String, String);

/// What the workers share.
struct Ctx {
    store: Arc<PaymentStore>,
    provider: Arc<dyn PaymentProvider>,
    publisher: Publisher,
    policy: Policy,
    dunning: DunningAction,
    /// What this process attached at the provider.
    attached: Mutex<HashMap<MethodKey, ProviderRefs>>,
    metrics: Metrics,
}

/// The payments service.
pub struct Payments {
    topics: Topics,
    consumer: StreamConsumer<Revocations>,
    revocations: Revocations,
    parts: HashMap<i32, Part>,
    /// Action id → partition, for actions started and not yet ended in the fold.
    inflight: HashMap<String, i32>,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    permits: Arc<Semaphore>,
    ctx: Arc<Ctx>,
}

impl Payments {
    /// Connect everything.
    pub fn new(
        settings: &Settings,
        store: Arc<PaymentStore>,
        provider: Arc<dyn PaymentProvider>,
        metrics: Metrics,
    ) -> anyhow::Result<Self> {
        let topics = Topics::new(&settings.kafka);
        let revocations = Revocations::default();
        let consumer = kafka::co_partitioned_consumer(
            &settings.kafka,
            &settings.payments.group_id,
            revocations.clone(),
        )?;
        consumer.subscribe(&[&topics.invoices, &topics.payments, &topics.lifecycle])?;
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let cfg = &settings.payments;
        Ok(Payments {
            consumer,
            revocations,
            parts: HashMap::new(),
            inflight: HashMap::new(),
            done_tx,
            done_rx,
            permits: Arc::new(Semaphore::new(cfg.concurrency.max(1))),
            ctx: Arc::new(Ctx {
                store,
                provider,
                publisher: Publisher::new(&settings.kafka)?,
                policy: Policy {
                    retry_delays: cfg.retry_delays(),
                    reminder_days: cfg.reminder_days.clone(),
                },
                dunning: cfg.dunning_action,
                attached: Mutex::new(HashMap::new()),
                metrics,
            }),
            topics,
        })
    }

    /// Run until shutdown.
    pub async fn run(mut self, shutdown: Shutdown) -> anyhow::Result<()> {
        let mut sweep = tokio::time::interval(SWEEP);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = sweep.tick() => {
                    self.forget_revoked();
                    self.check_caught_up();
                    let parts: Vec<i32> = self.parts.keys().copied().collect();
                    for p in parts {
                        self.evaluate_all(p);
                    }
                }
                Some(done) = self.done_rx.recv() => {
                    if !done.ok {
                        self.inflight.remove(&done.action);
                    }
                }
                m = self.consumer.recv() => {
                    let m = match m {
                        Ok(m) => m.detach(),
                        Err(e) => {
                            tracing::warn!(error = %e, "payments consumer error");
                            continue;
                        }
                    };
                    self.forget_revoked();
                    self.handle(&m);
                }
            }
        }
        Ok(())
    }

    fn forget_revoked(&mut self) {
        for p in self.revocations.take() {
            if self.parts.remove(&p).is_some() {
                tracing::info!(partition = p, "payments partition revoked");
            }
            self.inflight.retain(|_, part| *part != p);
        }
    }

    fn handle(&mut self, m: &OwnedMessage) {
        let p = m.partition();
        if !self.parts.contains_key(&p) {
            let mut ends = HashMap::new();
            let topics = [
                self.topics.invoices.clone(),
                self.topics.payments.clone(),
                self.topics.lifecycle.clone(),
            ];
            for topic in &topics {
                match self
                    .consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                {
                    // A partition whose messages are all gone (retention) has nothing to read.
                    Ok((low, high)) => {
                        ends.insert(topic.clone(), if high > low { high } else { 0 });
                    }
                    Err(e) => {
                        // Without the ends the partition cannot know when history ends; start it again.
                        tracing::warn!(partition = p, error = %e, "watermarks unavailable; re-reading the partition");
                        self.rewind(p);
                        return;
                    }
                }
            }
            tracing::info!(partition = p, ?ends, "payments partition assigned");
            self.parts.insert(
                p,
                Part {
                    book: Book::default(),
                    ends,
                    caught_up: false,
                },
            );
        }
        let payload = m.payload().unwrap_or_default();
        let ct = kafka::content_type(m);
        let topic = m.topic();
        let policy = self.ctx.policy.clone();
        let part = self.parts.get_mut(&p).expect("present");
        let touched: Vec<(String, String)> = if topic == self.topics.invoices {
            match decode::<InvoiceEvent>(payload, ct) {
                Ok(ev) => part.book.apply_invoice(&ev).into_iter().collect(),
                Err(e) => {
                    self.ctx.metrics.skipped.inc();
                    tracing::warn!(partition = p, offset = m.offset(), error = %e, "undecodable invoice event skipped");
                    Vec::new()
                }
            }
        } else if topic == self.topics.payments {
            match decode::<PaymentEvent>(payload, ct) {
                Ok(ev) => {
                    if let Some(action) = ends_action(&ev) {
                        self.inflight.remove(&action);
                    }
                    let (tenant, customer) = part.book.apply_payment(&ev, &policy);
                    // An event about an invoice touches that invoice; a payment method, the customer's open ones.
                    match Book::invoice_of(&ev) {
                        Some(key) => vec![key],
                        None => part.book.open_invoices_of(&tenant, &customer),
                    }
                }
                Err(e) => {
                    self.ctx.metrics.skipped.inc();
                    tracing::warn!(partition = p, offset = m.offset(), error = %e, "undecodable payment event skipped");
                    Vec::new()
                }
            }
        } else {
            match decode::<LifecycleEvent>(payload, ct) {
                Ok(ev) => {
                    if let Lifecycle::SubscriptionUnsuspended(s) = &ev.payload {
                        self.inflight
                            .remove(&unsuspend_id(&ev.tenant_id, &s.subscription_id));
                    }
                    match part.book.apply_lifecycle(&ev) {
                        Some((tenant, clock)) => part.book.open_invoices_on(&tenant, &clock),
                        None => Vec::new(),
                    }
                }
                // The invoicer dead-letters what it cannot decode.
                Err(_) => Vec::new(),
            }
        };
        if !part.caught_up {
            self.check_caught_up();
            return;
        }
        for key in touched {
            self.evaluate(p, &key);
        }
    }

    /// Seek every topic's partition `p` back to its start and forget its state.
    fn rewind(&mut self, p: i32) {
        self.parts.remove(&p);
        for topic in [
            &self.topics.invoices,
            &self.topics.payments,
            &self.topics.lifecycle,
        ] {
            if let Err(e) = self
                .consumer
                .seek(topic, p, Offset::Beginning, Duration::from_secs(10))
            {
                tracing::warn!(partition = p, topic, error = %e, "seek failed");
            }
        }
    }

    /// Mark partitions caught up once their position in every topic reached the end it had when assigned; then
    /// everything due in them is started.
    fn check_caught_up(&mut self) {
        let waiting: Vec<i32> = self
            .parts
            .iter()
            .filter(|(_, s)| !s.caught_up)
            .map(|(p, _)| *p)
            .collect();
        if waiting.is_empty() {
            return;
        }
        let Ok(positions) = self.consumer.position() else {
            return;
        };
        let position = |topic: &str, p: i32| -> i64 {
            positions
                .find_partition(topic, p)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                })
                .unwrap_or(0)
        };
        for p in waiting {
            let part = self.parts.get_mut(&p).expect("present");
            let done = part
                .ends
                .iter()
                .all(|(topic, end)| *end == 0 || position(topic, p) >= *end);
            if done {
                part.caught_up = true;
                tracing::info!(
                    partition = p,
                    invoices = part.book.invoices.len(),
                    "payments partition caught up"
                );
                self.evaluate_all(p);
            }
        }
    }

    fn evaluate_all(&mut self, p: i32) {
        let Some(part) = self.parts.get(&p) else {
            return;
        };
        if !part.caught_up {
            return;
        }
        let keys: Vec<(String, String)> = part
            .book
            .invoices
            .iter()
            .filter(|((t, _), d)| {
                d.status == crate::book::Collection::Open
                    || d.refunds.values().any(|r| r.refunded.is_none())
                    || part
                        .book
                        .payers
                        .get(&(t.clone(), d.customer_id.clone()))
                        .is_some_and(|p| !p.suspended.is_empty())
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            self.evaluate(p, &key);
        }
    }

    fn evaluate(&mut self, p: i32, key: &(String, String)) {
        let Some(part) = self.parts.get(&p) else {
            return;
        };
        let actions = part.book.actions_for(key, &self.ctx.policy);
        for action in actions {
            let id = action_id(&action);
            if self.inflight.contains_key(&id) {
                continue;
            }
            let Some(due) = part.book.invoices.get(key).cloned() else {
                continue;
            };
            let payer = part
                .book
                .payers
                .get(&(key.0.clone(), due.customer_id.clone()))
                .cloned()
                .unwrap_or_default();
            self.inflight.insert(id.clone(), p);
            let ctx = self.ctx.clone();
            let tx = self.done_tx.clone();
            let permits = self.permits.clone();
            tokio::spawn(async move {
                let _permit = permits.acquire_owned().await;
                let result = run_action(&ctx, &action, &due, &payer).await;
                if let Err(e) = &result {
                    ctx.metrics.failures.inc();
                    tracing::warn!(action = %id, error = %e, "payment action failed; it runs again at the next sweep");
                }
                let _ = tx.send(Done {
                    action: id,
                    ok: result.is_ok(),
                });
            });
        }
    }
}

/// The id of an action, as long as it runs.
fn action_id(a: &Action) -> String {
    match a {
        Action::Charge {
            tenant,
            invoice_id,
            number,
            ..
        } => attempt_id(tenant, invoice_id, *number),
        Action::GiveUp {
            tenant, invoice_id, ..
        } => format!("giveup.{tenant}.{invoice_id}"),
        Action::Remind {
            tenant,
            invoice_id,
            days,
            ..
        } => format!("remind.{tenant}.{invoice_id}.{days}"),
        Action::Refund {
            tenant,
            credit_note_id,
            ..
        } => refund_id(tenant, credit_note_id),
        Action::Unsuspend {
            tenant,
            subscription_id,
            ..
        } => unsuspend_id(tenant, subscription_id),
        Action::ApplyCredit {
            tenant,
            invoice_id,
            credit_note_id,
            ..
        } => credit_id(tenant, invoice_id, credit_note_id),
    }
}

/// The event id of a credit note's balance applied to an invoice (one application per pair).
fn credit_id(tenant: &str, invoice: &str, credit_note: &str) -> String {
    format!("credit.{tenant}.{invoice}.{credit_note}")
}

/// The provider's idempotency key of a credit note's refund (one refund per credit note).
fn refund_id(tenant: &str, credit_note: &str) -> String {
    format!("{tenant}.{credit_note}.refund")
}

fn unsuspend_id(tenant: &str, subscription: &str) -> String {
    format!("unsuspend.{tenant}.{subscription}")
}

/// The action a payment event ends, if any.
fn ends_action(ev: &PaymentEvent) -> Option<String> {
    let t = &ev.tenant_id;
    match &ev.payload {
        Payment::PaymentSucceeded(s) => Some(s.attempt_id.clone()),
        Payment::PaymentFailed(f) => Some(f.attempt_id.clone()),
        Payment::InvoiceUncollectible(u) => Some(format!("giveup.{t}.{}", u.invoice_id)),
        Payment::DunningReminder(r) => {
            Some(format!("remind.{t}.{}.{}", r.invoice_id, r.days_after_due))
        }
        Payment::RefundSucceeded(r) => Some(r.refund_id.clone()),
        Payment::CreditApplied(c) => Some(credit_id(t, &c.invoice_id, &c.credit_note_id)),
        Payment::RefundFailed(r) => Some(r.refund_id.clone()),
        _ => None,
    }
}

/// Retry an I/O step (a store write, a publish) a few times with backoff, each try bounded by [`IO_TIMEOUT`].
async fn retrying<T, F, Fut>(ctx: &Ctx, what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut wait = Duration::from_millis(100);
    let mut tries = 0;
    loop {
        tries += 1;
        let result = match tokio::time::timeout(IO_TIMEOUT, f()).await {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!("no answer within {IO_TIMEOUT:?}")),
        };
        match result {
            Ok(v) => return Ok(v),
            Err(e) => {
                ctx.metrics.io_retries.inc();
                if tries >= IO_TRIES {
                    return Err(e.context(format!("{what} failed")));
                }
                tracing::debug!(error = %e, what, "retrying");
                tokio::time::sleep(wait).await;
                wait *= 4;
            }
        }
    }
}

async fn publish_payment(ctx: &Ctx, ev: PaymentEvent) -> anyhow::Result<()> {
    retrying(ctx, "publishing a payment event", || {
        ctx.publisher.payment_at(&ev, Encoding::Avro)
    })
    .await
    .map(|_| ())
}

async fn run_action(ctx: &Ctx, action: &Action, due: &Due, payer: &Payer) -> anyhow::Result<()> {
    match action {
        Action::Charge {
            tenant,
            invoice_id,
            number,
            at,
            amount,
            method,
        } => {
            let attempt = Attempt {
                tenant,
                invoice_id,
                number: *number,
                at: *at,
                amount: *amount,
                method,
            };
            charge(ctx, &attempt, due, payer).await
        }
        Action::GiveUp {
            tenant,
            invoice_id,
            at,
        } => give_up(ctx, tenant, invoice_id, *at, due, payer).await,
        Action::Refund {
            tenant,
            invoice_id,
            credit_note_id,
            amount,
            at,
        } => refund(ctx, tenant, invoice_id, credit_note_id, *amount, *at, due).await,
        Action::ApplyCredit {
            tenant,
            invoice_id,
            credit_note_id,
            amount,
            at,
        } => {
            ctx.metrics.credits_applied.inc();
            publish_payment(
                ctx,
                PaymentEvent {
                    tenant_id: tenant.clone(),
                    event_id: credit_id(tenant, invoice_id, credit_note_id),
                    occurred_at: *at,
                    payload: Payment::CreditApplied(CreditApplied {
                        invoice_id: invoice_id.clone(),
                        customer_id: due.customer_id.clone(),
                        credit_note_id: credit_note_id.clone(),
                        currency: due.currency.clone(),
                        amount: amount.to_string(),
                    }),
                },
            )
            .await
        }
        Action::Unsuspend {
            tenant,
            customer_id,
            subscription_id,
            at,
        } => {
            let ev = LifecycleEvent {
                tenant_id: tenant.clone(),
                event_id: format!(
                    "{}.{}",
                    unsuspend_id(tenant, subscription_id),
                    at.timestamp_millis()
                ),
                occurred_at: *at,
                payload: Lifecycle::SubscriptionUnsuspended(SubscriptionEffective {
                    subscription_id: subscription_id.clone(),
                    customer_id: customer_id.clone(),
                    effective_at: *at,
                }),
            };
            retrying(ctx, "publishing an unsuspension", || {
                ctx.publisher.lifecycle_at(&ev, Encoding::Avro)
            })
            .await
            .map(|_| ())
        }
        Action::Remind {
            tenant,
            invoice_id,
            days,
            at,
        } => {
            publish_payment(
                ctx,
                PaymentEvent {
                    tenant_id: tenant.clone(),
                    event_id: format!("remind.{tenant}.{invoice_id}.{days}"),
                    occurred_at: *at,
                    payload: Payment::DunningReminder(DunningReminder {
                        invoice_id: invoice_id.clone(),
                        customer_id: due.customer_id.clone(),
                        due_date: due.due_date,
                        days_after_due: *days,
                    }),
                },
            )
            .await
        }
    }
}

/// A provider call, retried with the same idempotency key while it answers a transient error.
async fn with_provider<T, F, Fut>(ctx: &Ctx, mut f: F) -> Result<T, ProviderError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ProviderError>>,
{
    let mut wait = Duration::from_millis(200);
    let mut tries = 0;
    loop {
        tries += 1;
        ctx.metrics.provider_calls.inc();
        match f().await {
            Err(e) if e.is_transient() && tries < PROVIDER_TRIES => {
                tracing::debug!(error = %e, "provider call failed; retrying with the same key");
                tokio::time::sleep(wait).await;
                wait *= 4;
            }
            other => return other,
        }
    }
}

/// The provider's customer and method for one of ours (created and attached once per process; the idempotency
/// keys make a repeat harmless).
async fn provider_method(
    ctx: &Ctx,
    tenant: &str,
    customer: &str,
    method: &(String, String, String),
    payer: &Payer,
) -> Result<(String, String), ProviderError> {
    let key = (tenant.to_owned(), customer.to_owned(), method.0.clone());
    if let Some(found) = ctx.attached.lock().expect("lock").get(&key) {
        return Ok(found.clone());
    }
    let req = CustomerRequest {
        tenant_id: tenant.to_owned(),
        customer_id: customer.to_owned(),
        email: payer.email.clone(),
        name: payer.name.clone(),
        idempotency_key: format!("customer.{tenant}.{customer}"),
    };
    let pc = with_provider(ctx, || ctx.provider.ensure_customer(&req)).await?;
    let attach = AttachRequest {
        tenant_id: tenant.to_owned(),
        provider_customer: pc.provider_reference.clone(),
        token: method.2.clone(),
        kind: PaymentMethodKind::parse(&method.1)?,
        idempotency_key: format!("attach.{tenant}.{customer}.{}", method.0),
    };
    let pm = with_provider(ctx, || ctx.provider.attach_payment_method(&attach)).await?;
    let found = (pc.provider_reference, pm.provider_reference);
    ctx.attached
        .lock()
        .expect("lock")
        .insert(key, found.clone());
    Ok(found)
}

/// One charge attempt, as the book decided it.
struct Attempt<'a> {
    tenant: &'a str,
    invoice_id: &'a str,
    number: i32,
    at: DateTime<Utc>,
    amount: Decimal,
    method: &'a (String, String, String),
}

async fn charge(ctx: &Ctx, a: &Attempt<'_>, due: &Due, payer: &Payer) -> anyhow::Result<()> {
    let Attempt {
        tenant,
        invoice_id,
        number,
        at,
        amount,
        method,
    } = *a;
    let id = attempt_id(tenant, invoice_id, number);
    let mut row = PaymentAttemptRow {
        invoice_id: invoice_id.to_owned(),
        attempt_number: number,
        attempt_id: id.clone(),
        customer_id: due.customer_id.clone(),
        payment_method_id: method.0.clone(),
        currency: due.currency.clone(),
        amount,
        status: "started".into(),
        code: None,
        reason: None,
        provider_reference: None,
        started_at: at,
        finished_at: None,
    };
    retrying(ctx, "writing the attempt", || {
        ctx.store.put_attempt(tenant, &row)
    })
    .await?;
    publish_payment(
        ctx,
        PaymentEvent {
            tenant_id: tenant.to_owned(),
            event_id: format!("{id}.attempted"),
            occurred_at: at,
            payload: Payment::PaymentAttempted(PaymentAttempted {
                attempt_id: id.clone(),
                invoice_id: invoice_id.to_owned(),
                customer_id: due.customer_id.clone(),
                currency: due.currency.clone(),
                amount: amount.to_string(),
                attempt_number: number,
                payment_method_id: method.0.clone(),
            }),
        },
    )
    .await?;
    let outcome = async {
        let currency = Currency::parse(&due.currency)
            .map_err(|e| ProviderError::permanent("currency", format!("{}: {e}", due.currency)))?;
        let (customer_ref, method_ref) =
            provider_method(ctx, tenant, &due.customer_id, method, payer).await?;
        let req = ChargeRequest {
            tenant_id: tenant.to_owned(),
            invoice_id: invoice_id.to_owned(),
            provider_customer: customer_ref,
            payment_method: method_ref,
            amount,
            currency,
            idempotency_key: id.clone(),
            description: Some(format!("Invoice {invoice_id}")),
            metadata: BTreeMap::from([
                ("tenant_id".to_owned(), tenant.to_owned()),
                ("invoice_id".to_owned(), invoice_id.to_owned()),
                ("attempt".to_owned(), number.to_string()),
            ]),
        };
        with_provider(ctx, || ctx.provider.charge(&req)).await
    }
    .await;
    let (payload, status) = match outcome {
        Ok(ChargeOutcome::Succeeded { provider_reference }) => {
            row.provider_reference = Some(provider_reference.clone());
            (
                Payment::PaymentSucceeded(PaymentSucceeded {
                    attempt_id: id.clone(),
                    invoice_id: invoice_id.to_owned(),
                    customer_id: due.customer_id.clone(),
                    currency: due.currency.clone(),
                    amount: amount.to_string(),
                    provider_reference,
                    attempt_number: number,
                }),
                "succeeded",
            )
        }
        Ok(ChargeOutcome::Pending { provider_reference }) => {
            // Asynchronous methods (SEPA at Stripe) settle days later through the provider's webhooks, which
            // this service does not receive yet: the attempt stays pending and is never tried again.
            row.provider_reference = Some(provider_reference);
            row.status = "pending".into();
            retrying(ctx, "writing the attempt", || {
                ctx.store.put_attempt(tenant, &row)
            })
            .await?;
            tracing::warn!(attempt = %id, "payment pending at the provider; its settlement is not followed yet");
            return Ok(());
        }
        Ok(ChargeOutcome::Declined { code, message, .. }) => (
            failed(
                &id,
                invoice_id,
                due,
                number,
                at,
                ctx,
                code.clone(),
                message.clone(),
                amount,
            ),
            "failed",
        ),
        // A refusal for good (a 4xx that is not a decline, an amount the provider cannot take): the attempt
        // failed, the schedule goes on.
        Err(e @ ProviderError::Permanent { .. }) => {
            let code = e.code().unwrap_or("provider_error").to_owned();
            (
                failed(
                    &id,
                    invoice_id,
                    due,
                    number,
                    at,
                    ctx,
                    code,
                    e.to_string(),
                    amount,
                ),
                "failed",
            )
        }
        // No definite answer (timeout, 5xx, the same key still running elsewhere): the provider may have
        // charged. Never an outcome: the action is released and the same attempt, same key, runs again at the
        // next sweep until the provider answers.
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("attempt {id}: no definite answer")))
        }
    };
    if let Payment::PaymentFailed(f) = &payload {
        row.code = Some(f.code.clone());
        row.reason = Some(f.reason.clone());
    }
    row.status = status.into();
    row.finished_at = Some(at);
    retrying(ctx, "writing the attempt", || {
        ctx.store.put_attempt(tenant, &row)
    })
    .await?;
    ctx.metrics.attempts.with_label_values(&[status]).inc();
    publish_payment(
        ctx,
        PaymentEvent {
            tenant_id: tenant.to_owned(),
            event_id: format!("{id}.outcome"),
            occurred_at: at,
            payload,
        },
    )
    .await
}

#[allow(clippy::too_many_arguments)]
fn failed(
    id: &str,
    invoice_id: &str,
    due: &Due,
    number: i32,
    at: DateTime<Utc>,
    ctx: &Ctx,
    code: String,
    reason: String,
    amount: Decimal,
) -> Payment {
    Payment::PaymentFailed(PaymentFailed {
        attempt_id: id.to_owned(),
        invoice_id: invoice_id.to_owned(),
        customer_id: due.customer_id.clone(),
        reason,
        next_retry_at: Book::next_attempt_at(&ctx.policy, number, at),
        code,
        attempt_number: number,
        currency: due.currency.clone(),
        amount: amount.to_string(),
    })
}

/// A credit note's refund: the invoice's provider charge refunded by the credit note's total, with the credit
/// note's refund id as idempotency key (a refund resumed after a crash is the same refund). An invoice paid
/// outside the provider has nothing to refund here: the refund fails with `no_provider_charge`.
#[allow(clippy::too_many_arguments)]
async fn refund(
    ctx: &Ctx,
    tenant: &str,
    invoice_id: &str,
    credit_note_id: &str,
    amount: Decimal,
    at: DateTime<Utc>,
    due: &Due,
) -> anyhow::Result<()> {
    let id = refund_id(tenant, credit_note_id);
    let failed = |code: &str, reason: String| {
        Payment::RefundFailed(RefundFailed {
            refund_id: id.clone(),
            invoice_id: invoice_id.to_owned(),
            customer_id: due.customer_id.clone(),
            credit_note_id: credit_note_id.to_owned(),
            code: code.to_owned(),
            reason,
        })
    };
    let payload = match &due.charge {
        None => failed(
            "no_provider_charge",
            "the invoice was not paid through the provider; refund it the way it was paid".into(),
        ),
        Some((reference, charged)) if amount > *charged => failed(
            "amount_too_large",
            format!("{amount} is more than the charge {reference} of {charged}"),
        ),
        Some((reference, _)) => {
            let currency = Currency::parse(&due.currency)?;
            let req = RefundRequest {
                tenant_id: tenant.to_owned(),
                charge_reference: reference.clone(),
                amount,
                currency,
                idempotency_key: id.clone(),
                metadata: BTreeMap::from([
                    ("invoice_id".to_owned(), invoice_id.to_owned()),
                    ("credit_note_id".to_owned(), credit_note_id.to_owned()),
                ]),
            };
            match with_provider(ctx, || ctx.provider.refund(&req)).await {
                // A pending refund was accepted by the provider: the money is on its way back.
                Ok(RefundOutcome::Succeeded { provider_reference })
                | Ok(RefundOutcome::Pending { provider_reference }) => {
                    Payment::RefundSucceeded(RefundSucceeded {
                        refund_id: id.clone(),
                        invoice_id: invoice_id.to_owned(),
                        customer_id: due.customer_id.clone(),
                        credit_note_id: credit_note_id.to_owned(),
                        currency: due.currency.clone(),
                        amount: amount.to_string(),
                        provider_reference,
                    })
                }
                Ok(RefundOutcome::Failed { code, message, .. }) => failed(&code, message),
                Err(e @ ProviderError::Permanent { .. }) => {
                    failed(e.code().unwrap_or("provider_error"), e.to_string())
                }
                Err(e) => {
                    return Err(
                        anyhow::Error::new(e).context(format!("refund {id}: no definite answer"))
                    )
                }
            }
        }
    };
    let status = if matches!(payload, Payment::RefundSucceeded(_)) {
        "succeeded"
    } else {
        "failed"
    };
    ctx.metrics.refunds.with_label_values(&[status]).inc();
    publish_payment(
        ctx,
        PaymentEvent {
            tenant_id: tenant.to_owned(),
            event_id: format!("{id}.outcome"),
            occurred_at: at,
            payload,
        },
    )
    .await
}

/// Dunning's end: the invoice's live subscriptions are paused or canceled (lifecycle events with deterministic
/// ids), then the invoice is marked uncollectible.
async fn give_up(
    ctx: &Ctx,
    tenant: &str,
    invoice_id: &str,
    at: DateTime<Utc>,
    due: &Due,
    payer: &Payer,
) -> anyhow::Result<()> {
    for sub in &due.subscription_ids {
        let Some(paused) = payer.subscriptions.get(sub) else {
            continue;
        };
        let payload = match ctx.dunning {
            DunningAction::None => continue,
            DunningAction::Suspend if payer.suspended.contains(sub) => continue,
            DunningAction::Suspend => Lifecycle::SubscriptionSuspended(SubscriptionEffective {
                subscription_id: sub.clone(),
                customer_id: due.customer_id.clone(),
                effective_at: at,
            }),
            DunningAction::Pause if *paused => continue,
            DunningAction::Pause => Lifecycle::SubscriptionPaused(SubscriptionEffective {
                subscription_id: sub.clone(),
                customer_id: due.customer_id.clone(),
                effective_at: at,
            }),
            DunningAction::Cancel => Lifecycle::SubscriptionCanceled(SubscriptionCanceled {
                subscription_id: sub.clone(),
                customer_id: due.customer_id.clone(),
                effective_at: at,
                at_period_end: false,
            }),
        };
        let ev = LifecycleEvent {
            tenant_id: tenant.to_owned(),
            event_id: format!("dunning.{tenant}.{invoice_id}.{}.{sub}", due.attempts),
            occurred_at: at,
            payload,
        };
        retrying(ctx, "publishing a dunning lifecycle event", || {
            ctx.publisher.lifecycle_at(&ev, Encoding::Avro)
        })
        .await?;
    }
    ctx.metrics.uncollectible.inc();
    publish_payment(
        ctx,
        PaymentEvent {
            tenant_id: tenant.to_owned(),
            // With the attempt count: an invoice reopened by a manual retry can be given up again.
            event_id: format!("giveup.{tenant}.{invoice_id}.{}", due.attempts),
            occurred_at: at,
            payload: Payment::InvoiceUncollectible(InvoiceUncollectible {
                invoice_id: invoice_id.to_owned(),
                customer_id: due.customer_id.clone(),
                reason: due.last_reason.clone(),
                action: ctx.dunning.as_str().to_owned(),
            }),
        },
    )
    .await
}
