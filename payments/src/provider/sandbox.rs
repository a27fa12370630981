//! The sandbox provider: deterministic, in-process, with Stripe-like test tokens, for tests and demos.
//!
//! | Token | Charge |
//! |---|---|
//! | `pm_card_visa` | succeeds |
//! | `pm_card_chargeDeclinedInsufficientFunds` | declined `insufficient_funds`, retryable |
//! | `pm_card_chargeDeclinedLostCard` | declined `lost_card`, not retryable |
//! | `pm_card_timeout` | `Transient` `timeout` error, nothing charged |
//! | `pm_card_slow` | charges, then waits `slow_delay` (5 s) before answering |
//! | `pm_card_decline_then_succeed_<N>` | declined `insufficient_funds` for the first N distinct keys, then succeeds |
//! | `pm_sepa_debit` | succeeds (kind `sepa_debit`) |
//!
//! Like Stripe, it is idempotent per key: the first call with a key records its outcome in the [`SandboxLedger`]
//! with insert-if-absent and answers it; every later call with that key answers the recorded outcome without
//! charging again (and without the slow token's wait). Every call is counted per key. With the Cassandra ledger
//! ([`billing_store::sandbox_ledger`]) this holds across a SIGKILL of the payments process and between processes.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use billing_store::sandbox_ledger::{SandboxCharge, SandboxLedgerStore};
use chrono::Utc;
use rust_decimal::Decimal;

use super::{
    to_minor_units, AttachRequest, AttachedMethod, ChargeOutcome, ChargeRequest, CustomerRequest,
    PaymentMethodKind, PaymentProvider, ProviderCustomer, ProviderError, ProviderFuture,
    RefundOutcome, RefundRequest,
};

/// What a ledger call returns.
pub type LedgerFuture<'a, T> = Pin<Box<dyn Future<Output = anyhow::Result<T>> + Send + 'a>>;

/// Where the sandbox keeps what it answered per (tenant, idempotency key), so that it outlives the process.
pub trait SandboxLedger: Send + Sync {
    /// Count one call made with the key.
    fn count_call<'a>(&'a self, tenant: &'a str, key: &'a str) -> LedgerFuture<'a, ()>;
    /// What the key holds.
    fn get<'a>(&'a self, tenant: &'a str, key: &'a str) -> LedgerFuture<'a, Option<SandboxCharge>>;
    /// Record `charge` unless its key holds one already: (whether this call recorded it, what the key holds now).
    fn record<'a>(&'a self, charge: &'a SandboxCharge) -> LedgerFuture<'a, (bool, SandboxCharge)>;
    /// Every charge and refund of the tenant.
    fn charges_of_tenant<'a>(&'a self, tenant: &'a str) -> LedgerFuture<'a, Vec<SandboxCharge>>;
    /// Calls made with the key.
    fn calls_for<'a>(&'a self, tenant: &'a str, key: &'a str) -> LedgerFuture<'a, i64>;
    /// Times the operation of the key was executed (0 or 1).
    fn charges_for<'a>(&'a self, tenant: &'a str, key: &'a str) -> LedgerFuture<'a, i32> {
        Box::pin(async move { Ok(self.get(tenant, key).await?.map_or(0, |c| c.charge_count)) })
    }
}

/// The ledger in Cassandra (`sandbox_ledger`, `sandbox_ledger_calls`).
impl SandboxLedger for SandboxLedgerStore {
    fn count_call<'a>(&'a self, tenant: &'a str, key: &'a str) -> LedgerFuture<'a, ()> {
        Box::pin(SandboxLedgerStore::count_call(self, tenant, key))
    }
    fn get<'a>(&'a self, tenant: &'a str, key: &'a str) -> LedgerFuture<'a, Option<SandboxCharge>> {
        Box::pin(self.charge(tenant, key))
    }
    fn record<'a>(&'a self, charge: &'a SandboxCharge) -> LedgerFuture<'a, (bool, SandboxCharge)> {
        Box::pin(SandboxLedgerStore::record(self, charge))
    }
    fn charges_of_tenant<'a>(&'a self, tenant: &'a str) -> LedgerFuture<'a, Vec<SandboxCharge>> {
        Box::pin(SandboxLedgerStore::charges_of_tenant(self, tenant))
    }
    fn calls_for<'a>(&'a self, tenant: &'a str, key: &'a str) -> LedgerFuture<'a, i64> {
        Box::pin(SandboxLedgerStore::calls_for(self, tenant, key))
    }
}

/// A ledger in memory, for unit tests (it dies with the process).
#[derive(Debug, Default)]
pub struct InMemoryLedger {
    charges: Mutex<HashMap<(String, String), SandboxCharge>>,
    calls: Mutex<HashMap<(String, String), i64>>,
}

impl InMemoryLedger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }
}

fn id(tenant: &str, key: &str) -> (String, String) {
    (tenant.to_owned(), key.to_owned())
}

impl SandboxLedger for InMemoryLedger {
    fn count_call<'a>(&'a self, tenant: &'a str, key: &'a str) -> LedgerFuture<'a, ()> {
        let mut calls = self.calls.lock().expect("ledger lock");
        *calls.entry(id(tenant, key)).or_default() += 1;
        Box::pin(async { Ok(()) })
    }
    fn get<'a>(&'a self, tenant: &'a str, key: &'a str) -> LedgerFuture<'a, Option<SandboxCharge>> {
        let found = self
            .charges
            .lock()
            .expect("ledger lock")
            .get(&id(tenant, key))
            .cloned();
        Box::pin(async { Ok(found) })
    }
    fn record<'a>(&'a self, charge: &'a SandboxCharge) -> LedgerFuture<'a, (bool, SandboxCharge)> {
        let mut charges = self.charges.lock().expect("ledger lock");
        let k = id(&charge.tenant_id, &charge.idempotency_key);
        let answer = match charges.get(&k) {
            Some(existing) => (false, existing.clone()),
            None => {
                charges.insert(k, charge.clone());
                (true, charge.clone())
            }
        };
        Box::pin(async { Ok(answer) })
    }
    fn charges_of_tenant<'a>(&'a self, tenant: &'a str) -> LedgerFuture<'a, Vec<SandboxCharge>> {
        let mut all: Vec<SandboxCharge> = self
            .charges
            .lock()
            .expect("ledger lock")
            .values()
            .filter(|c| c.tenant_id == tenant)
            .cloned()
            .collect();
        all.sort_by(|a, b| a.idempotency_key.cmp(&b.idempotency_key));
        Box::pin(async { Ok(all) })
    }
    fn calls_for<'a>(&'a self, tenant: &'a str, key: &'a str) -> LedgerFuture<'a, i64> {
        let n = self
            .calls
            .lock()
            .expect("ledger lock")
            .get(&id(tenant, key))
            .copied()
            .unwrap_or(0);
        Box::pin(async move { Ok(n) })
    }
}

/// A sandbox test token and what it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Visa,
    InsufficientFunds,
    LostCard,
    Timeout,
    Slow,
    DeclineThenSucceed(u32),
    SepaDebit,
}

const DECLINE_THEN_SUCCEED: &str = "pm_card_decline_then_succeed_";

impl Token {
    fn parse(token: &str) -> Option<Token> {
        Some(match token {
            "pm_card_visa" => Token::Visa,
            "pm_card_chargeDeclinedInsufficientFunds" => Token::InsufficientFunds,
            "pm_card_chargeDeclinedLostCard" => Token::LostCard,
            "pm_card_timeout" => Token::Timeout,
            "pm_card_slow" => Token::Slow,
            "pm_sepa_debit" => Token::SepaDebit,
            other => {
                let n = other.strip_prefix(DECLINE_THEN_SUCCEED)?;
                // Digits only: `+3` or `03` would be a second spelling of one token.
                if n.is_empty()
                    || !n.bytes().all(|b| b.is_ascii_digit())
                    || (n.len() > 1 && n.starts_with('0'))
                {
                    return None;
                }
                Token::DeclineThenSucceed(n.parse().ok()?)
            }
        })
    }

    fn kind(self) -> PaymentMethodKind {
        match self {
            Token::SepaDebit => PaymentMethodKind::SepaDebit,
            _ => PaymentMethodKind::Card,
        }
    }

    /// Brand and last four digits, as Stripe's test cards have them.
    fn details(self) -> (Option<&'static str>, &'static str) {
        match self {
            Token::SepaDebit => (None, "3000"),
            Token::InsufficientFunds => (Some("visa"), "9995"),
            Token::LostCard => (Some("visa"), "9987"),
            _ => (Some("visa"), "4242"),
        }
    }
}

fn unknown_token(token: &str) -> ProviderError {
    ProviderError::permanent(
        "unknown_payment_method",
        format!(
            "the sandbox knows no payment method {token:?}: use pm_card_visa, \
             pm_card_chargeDeclinedInsufficientFunds, pm_card_chargeDeclinedLostCard, pm_card_timeout, \
             pm_card_slow, {DECLINE_THEN_SUCCEED}<N> or pm_sepa_debit"
        ),
    )
}

fn ledger_down(e: anyhow::Error) -> ProviderError {
    ProviderError::transient(
        "sandbox_ledger_unavailable",
        format!("sandbox ledger: {e:#}"),
    )
}

const CHARGE_PREFIX: &str = "ch_sbx_";
const REFUND_PREFIX: &str = "re_sbx_";

/// The sandbox provider.
pub struct SandboxProvider {
    ledger: Arc<dyn SandboxLedger>,
    slow_delay: Duration,
    /// Serializes the count-then-record of `decline_then_succeed` charges in this process, so that concurrent
    /// distinct keys on one method are counted exactly (two processes racing on one method are not).
    sequence: tokio::sync::Mutex<()>,
}

impl SandboxProvider {
    /// A sandbox over `ledger`; `pm_card_slow` waits `slow_delay` after charging.
    pub fn new(ledger: Arc<dyn SandboxLedger>, slow_delay: Duration) -> Self {
        SandboxProvider {
            ledger,
            slow_delay,
            sequence: tokio::sync::Mutex::new(()),
        }
    }

    /// Its ledger (tests read charges and calls from it).
    pub fn ledger(&self) -> &Arc<dyn SandboxLedger> {
        &self.ledger
    }

    async fn charge_inner(&self, req: &ChargeRequest) -> Result<ChargeOutcome, ProviderError> {
        let (tenant, key) = (req.tenant_id.as_str(), req.idempotency_key.as_str());
        if key.is_empty() {
            return Err(ProviderError::permanent(
                "idempotency_key_missing",
                "every charge needs an idempotency key",
            ));
        }
        self.ledger
            .count_call(tenant, key)
            .await
            .map_err(ledger_down)?;
        if let Some(done) = self.ledger.get(tenant, key).await.map_err(ledger_down)? {
            return replay(&done, req);
        }
        to_minor_units(req.amount, req.currency)?;
        let token =
            Token::parse(&req.payment_method).ok_or_else(|| unknown_token(&req.payment_method))?;
        let _sequence = match token {
            Token::DeclineThenSucceed(_) => Some(self.sequence.lock().await),
            _ => None,
        };
        let reference = format!("{CHARGE_PREFIX}{key}");
        let outcome = match token {
            Token::Timeout => {
                return Err(ProviderError::transient(
                    "timeout",
                    "the sandbox's pm_card_timeout never answers in time (nothing was charged)",
                ))
            }
            Token::Visa | Token::Slow | Token::SepaDebit => ChargeOutcome::Succeeded {
                provider_reference: reference.clone(),
            },
            Token::InsufficientFunds => insufficient_funds(),
            Token::LostCard => ChargeOutcome::Declined {
                code: "lost_card".into(),
                message: "Your card has been declined (reported lost).".into(),
                retryable: false,
            },
            Token::DeclineThenSucceed(n) => {
                let earlier = self
                    .ledger
                    .charges_of_tenant(tenant)
                    .await
                    .map_err(ledger_down)?
                    .iter()
                    .filter(|c| {
                        c.kind == "charge"
                            && c.target == req.payment_method
                            && c.customer_ref == req.provider_customer
                    })
                    .count();
                if earlier < n as usize {
                    insufficient_funds()
                } else {
                    ChargeOutcome::Succeeded {
                        provider_reference: reference.clone(),
                    }
                }
            }
        };
        let row = SandboxCharge {
            tenant_id: tenant.to_owned(),
            idempotency_key: key.to_owned(),
            kind: "charge".into(),
            reference,
            target: req.payment_method.clone(),
            customer_ref: req.provider_customer.clone(),
            invoice_id: req.invoice_id.clone(),
            amount: req.amount,
            currency: req.currency.code().to_owned(),
            outcome: serde_json::to_string(&outcome).map_err(|e| {
                ProviderError::permanent("sandbox_bug", format!("outcome to JSON: {e}"))
            })?,
            charge_count: 1,
            created_at: Utc::now(),
        };
        let (recorded, stored) = self.ledger.record(&row).await.map_err(ledger_down)?;
        if !recorded {
            // Another call with this key won the race and charged: answer what it answered.
            return replay(&stored, req);
        }
        tracing::debug!(tenant, key, outcome = %row.outcome, "sandbox charge");
        if token == Token::Slow {
            tokio::time::sleep(self.slow_delay).await;
        }
        Ok(outcome)
    }

    async fn refund_inner(&self, req: &RefundRequest) -> Result<RefundOutcome, ProviderError> {
        let (tenant, key) = (req.tenant_id.as_str(), req.idempotency_key.as_str());
        if key.is_empty() {
            return Err(ProviderError::permanent(
                "idempotency_key_missing",
                "every refund needs an idempotency key",
            ));
        }
        self.ledger
            .count_call(tenant, key)
            .await
            .map_err(ledger_down)?;
        if let Some(done) = self.ledger.get(tenant, key).await.map_err(ledger_down)? {
            check_same(
                &done,
                "refund",
                &req.charge_reference,
                req.amount,
                req.currency.code(),
            )?;
            return parse_outcome(&done.outcome);
        }
        to_minor_units(req.amount, req.currency)?;
        let charge_key = req
            .charge_reference
            .strip_prefix(CHARGE_PREFIX)
            .ok_or_else(|| no_such_charge(&req.charge_reference))?;
        let charge = self
            .ledger
            .get(tenant, charge_key)
            .await
            .map_err(ledger_down)?
            .filter(|c| c.kind == "charge")
            .ok_or_else(|| no_such_charge(&req.charge_reference))?;
        if !matches!(
            parse_outcome::<ChargeOutcome>(&charge.outcome)?,
            ChargeOutcome::Succeeded { .. }
        ) {
            return Err(ProviderError::permanent(
                "charge_not_succeeded",
                format!("{} was not a successful charge", req.charge_reference),
            ));
        }
        if charge.currency != req.currency.code() {
            return Err(ProviderError::permanent(
                "currency_mismatch",
                format!(
                    "{} was charged in {}, not {}",
                    req.charge_reference, charge.currency, req.currency
                ),
            ));
        }
        let refunded: Decimal = self
            .ledger
            .charges_of_tenant(tenant)
            .await
            .map_err(ledger_down)?
            .iter()
            .filter(|c| c.kind == "refund" && c.target == req.charge_reference)
            .filter(|c| {
                matches!(
                    parse_outcome::<RefundOutcome>(&c.outcome),
                    Ok(RefundOutcome::Succeeded { .. })
                )
            })
            .map(|c| c.amount)
            .sum();
        let reference = format!("{REFUND_PREFIX}{key}");
        let outcome = if refunded + req.amount > charge.amount {
            RefundOutcome::Failed {
                provider_reference: None,
                code: "amount_too_large".into(),
                message: format!(
                    "refund of {} {} exceeds what is left of {} ({} of {} refunded)",
                    req.amount, req.currency, req.charge_reference, refunded, charge.amount
                ),
            }
        } else {
            RefundOutcome::Succeeded {
                provider_reference: reference.clone(),
            }
        };
        let row = SandboxCharge {
            tenant_id: tenant.to_owned(),
            idempotency_key: key.to_owned(),
            kind: "refund".into(),
            reference,
            target: req.charge_reference.clone(),
            customer_ref: String::new(),
            invoice_id: req.metadata.get("invoice_id").cloned().unwrap_or_default(),
            amount: req.amount,
            currency: req.currency.code().to_owned(),
            outcome: serde_json::to_string(&outcome).map_err(|e| {
                ProviderError::permanent("sandbox_bug", format!("outcome to JSON: {e}"))
            })?,
            charge_count: 1,
            created_at: Utc::now(),
        };
        let (_, stored) = self.ledger.record(&row).await.map_err(ledger_down)?;
        parse_outcome(&stored.outcome)
    }
}

fn insufficient_funds() -> ChargeOutcome {
    ChargeOutcome::Declined {
        code: "insufficient_funds".into(),
        message: "Your card has insufficient funds.".into(),
        retryable: true,
    }
}

fn no_such_charge(reference: &str) -> ProviderError {
    ProviderError::permanent(
        "resource_missing",
        format!("the sandbox made no charge {reference:?}"),
    )
}

fn parse_outcome<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, ProviderError> {
    serde_json::from_str(json).map_err(|e| {
        ProviderError::permanent(
            "sandbox_bug",
            format!("ledger outcome {json:?} does not parse: {e}"),
        )
    })
}

/// Like Stripe, a key reused with other parameters is an error, not a replay.
fn check_same(
    done: &SandboxCharge,
    kind: &str,
    target: &str,
    amount: Decimal,
    currency: &str,
) -> Result<(), ProviderError> {
    if done.kind != kind
        || done.target != target
        || done.amount != amount
        || done.currency != currency
    {
        return Err(ProviderError::permanent(
            "idempotency_key_reused",
            format!(
                "idempotency key {:?} was used for a {} of {} {} on {:?}",
                done.idempotency_key, done.kind, done.amount, done.currency, done.target
            ),
        ));
    }
    Ok(())
}

fn replay(done: &SandboxCharge, req: &ChargeRequest) -> Result<ChargeOutcome, ProviderError> {
    check_same(
        done,
        "charge",
        &req.payment_method,
        req.amount,
        req.currency.code(),
    )?;
    parse_outcome(&done.outcome)
}

impl PaymentProvider for SandboxProvider {
    fn name(&self) -> &'static str {
        "sandbox"
    }

    fn ensure_customer<'a>(
        &'a self,
        req: &'a CustomerRequest,
    ) -> ProviderFuture<'a, ProviderCustomer> {
        Box::pin(async move {
            if req.customer_id.is_empty() {
                return Err(ProviderError::permanent(
                    "parameter_missing",
                    "customer id is empty",
                ));
            }
            // Derived from the ids, so the same customer always gets the same reference (nothing to store).
            Ok(ProviderCustomer {
                provider_reference: format!("cus_sbx_{}_{}", req.tenant_id, req.customer_id),
            })
        })
    }

    fn attach_payment_method<'a>(
        &'a self,
        req: &'a AttachRequest,
    ) -> ProviderFuture<'a, AttachedMethod> {
        Box::pin(async move {
            let token = Token::parse(&req.token).ok_or_else(|| unknown_token(&req.token))?;
            if token.kind() != req.kind {
                return Err(ProviderError::permanent(
                    "payment_method_kind_mismatch",
                    format!("{} is a {}, not a {}", req.token, token.kind(), req.kind),
                ));
            }
            let (brand, last4) = token.details();
            // The token is its own id: the charge reads the behaviour from it, with nothing stored at attach.
            Ok(AttachedMethod {
                provider_reference: req.token.clone(),
                kind: token.kind(),
                brand: brand.map(str::to_owned),
                last4: Some(last4.to_owned()),
            })
        })
    }

    fn charge<'a>(&'a self, req: &'a ChargeRequest) -> ProviderFuture<'a, ChargeOutcome> {
        Box::pin(self.charge_inner(req))
    }

    fn refund<'a>(&'a self, req: &'a RefundRequest) -> ProviderFuture<'a, RefundOutcome> {
        Box::pin(self.refund_inner(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use billing_core::currency::Currency;
    use rust_decimal_macros::dec;
    use std::collections::BTreeMap;

    fn sandbox() -> SandboxProvider {
        SandboxProvider::new(Arc::new(InMemoryLedger::new()), Duration::from_millis(300))
    }

    fn charge_req(method: &str, key: &str) -> ChargeRequest {
        ChargeRequest {
            tenant_id: "t1".into(),
            invoice_id: format!("inv-{key}"),
            provider_customer: "cus_sbx_t1_c1".into(),
            payment_method: method.into(),
            amount: dec!(12.50),
            currency: Currency::parse("EUR").unwrap(),
            idempotency_key: key.into(),
            description: None,
            metadata: BTreeMap::new(),
        }
    }

    fn declined(code: &str, retryable: bool) -> ChargeOutcome {
        let message = match code {
            "lost_card" => "Your card has been declined (reported lost).",
            _ => "Your card has insufficient funds.",
        };
        ChargeOutcome::Declined {
            code: code.into(),
            message: message.into(),
            retryable,
        }
    }

    fn succeeded(key: &str) -> ChargeOutcome {
        ChargeOutcome::Succeeded {
            provider_reference: format!("ch_sbx_{key}"),
        }
    }

    async fn counts(s: &SandboxProvider, key: &str) -> (i32, i64) {
        (
            s.ledger().charges_for("t1", key).await.unwrap(),
            s.ledger().calls_for("t1", key).await.unwrap(),
        )
    }

    #[tokio::test]
    async fn every_token_does_what_its_name_says() {
        let s = sandbox();
        assert_eq!(
            s.charge(&charge_req("pm_card_visa", "a1")).await,
            Ok(succeeded("a1"))
        );
        assert_eq!(
            s.charge(&charge_req("pm_sepa_debit", "a2")).await,
            Ok(succeeded("a2"))
        );
        assert_eq!(
            s.charge(&charge_req("pm_card_chargeDeclinedInsufficientFunds", "a3"))
                .await,
            Ok(declined("insufficient_funds", true))
        );
        assert_eq!(
            s.charge(&charge_req("pm_card_chargeDeclinedLostCard", "a4"))
                .await,
            Ok(declined("lost_card", false))
        );
        let timeout = s
            .charge(&charge_req("pm_card_timeout", "a5"))
            .await
            .unwrap_err();
        assert!(timeout.is_transient());
        assert_eq!(timeout.code(), Some("timeout"));
        // A timeout charges nothing, but the call is counted; its retry times out again.
        assert_eq!(counts(&s, "a5").await, (0, 1));
        assert!(s
            .charge(&charge_req("pm_card_timeout", "a5"))
            .await
            .is_err());
        assert_eq!(counts(&s, "a5").await, (0, 2));
        let unknown = s
            .charge(&charge_req("pm_card_bogus", "a6"))
            .await
            .unwrap_err();
        assert_eq!(unknown.code(), Some("unknown_payment_method"));
        assert_eq!(counts(&s, "a6").await, (0, 1));
        // Declines are recorded as the key's outcome, like successes.
        let all = s.ledger().charges_of_tenant("t1").await.unwrap();
        let keys: Vec<_> = all.iter().map(|c| c.idempotency_key.as_str()).collect();
        assert_eq!(keys, ["a1", "a2", "a3", "a4"]);
        assert_eq!(all[0].amount, dec!(12.50));
        assert_eq!(all[0].currency, "EUR");
        assert_eq!(all[0].invoice_id, "inv-a1");
        assert!(all
            .iter()
            .all(|c| c.charge_count == 1 && c.kind == "charge"));
    }

    #[tokio::test]
    async fn a_key_charges_once_and_replays_its_first_outcome() {
        let s = sandbox();
        let req = charge_req("pm_card_visa", "k1");
        let first = s.charge(&req).await.unwrap();
        assert_eq!(first, succeeded("k1"));
        assert_eq!(s.charge(&req).await.unwrap(), first);
        assert_eq!(s.charge(&req).await.unwrap(), first);
        assert_eq!(counts(&s, "k1").await, (1, 3));
        // A decline is replayed too, never turned into a second try.
        let d = charge_req("pm_card_chargeDeclinedLostCard", "k2");
        assert_eq!(s.charge(&d).await, Ok(declined("lost_card", false)));
        assert_eq!(s.charge(&d).await, Ok(declined("lost_card", false)));
        assert_eq!(counts(&s, "k2").await, (1, 2));
        // The same key with another amount is refused, as Stripe does.
        let mut other = req.clone();
        other.amount = dec!(13);
        let e = s.charge(&other).await.unwrap_err();
        assert_eq!(e.code(), Some("idempotency_key_reused"));
        assert_eq!(counts(&s, "k1").await, (1, 4));
    }

    #[tokio::test]
    async fn concurrent_calls_with_one_key_charge_once() {
        let s = Arc::new(sandbox());
        let req = charge_req("pm_card_slow", "race");
        let (a, b) = tokio::join!(s.charge(&req), s.charge(&req));
        assert_eq!(a, Ok(succeeded("race")));
        assert_eq!(b, Ok(succeeded("race")));
        assert_eq!(counts(&s, "race").await, (1, 2));
    }

    #[tokio::test]
    async fn slow_charges_first_then_waits_and_its_replay_does_not_wait() {
        let s = sandbox();
        let req = charge_req("pm_card_slow", "slow");
        let call = s.charge(&req);
        tokio::pin!(call);
        // Killed during the wait: the charge is already in the ledger.
        let early = tokio::time::timeout(Duration::from_millis(150), &mut call).await;
        assert!(early.is_err(), "answered before the delay");
        assert_eq!(counts(&s, "slow").await, (1, 1));
        let retry_started = std::time::Instant::now();
        let fresh = SandboxProvider::new(s.ledger().clone(), Duration::from_secs(60));
        assert_eq!(fresh.charge(&req).await, Ok(succeeded("slow")));
        assert!(retry_started.elapsed() < Duration::from_secs(1));
        assert_eq!(call.await, Ok(succeeded("slow")));
        assert_eq!(counts(&s, "slow").await, (1, 2));
    }

    #[tokio::test]
    async fn decline_then_succeed_counts_distinct_keys_per_method() {
        let s = sandbox();
        let m = "pm_card_decline_then_succeed_2";
        assert_eq!(
            s.charge(&charge_req(m, "d1")).await,
            Ok(declined("insufficient_funds", true))
        );
        // A retry of the same attempt is a replay, not a new key.
        assert_eq!(
            s.charge(&charge_req(m, "d1")).await,
            Ok(declined("insufficient_funds", true))
        );
        assert_eq!(
            s.charge(&charge_req(m, "d2")).await,
            Ok(declined("insufficient_funds", true))
        );
        assert_eq!(s.charge(&charge_req(m, "d3")).await, Ok(succeeded("d3")));
        assert_eq!(s.charge(&charge_req(m, "d4")).await, Ok(succeeded("d4")));
        // Another customer's method starts its own count.
        let mut other = charge_req(m, "e1");
        other.provider_customer = "cus_sbx_t1_c2".into();
        assert_eq!(
            s.charge(&other).await,
            Ok(declined("insufficient_funds", true))
        );
        // N = 0 never declines; a leading zero is not a second spelling of a token.
        assert_eq!(
            s.charge(&charge_req("pm_card_decline_then_succeed_0", "z"))
                .await,
            Ok(succeeded("z"))
        );
        assert_eq!(
            s.charge(&charge_req("pm_card_decline_then_succeed_01", "y"))
                .await
                .unwrap_err()
                .code(),
            Some("unknown_payment_method")
        );
        assert_eq!(
            s.charge(&charge_req("pm_card_decline_then_succeed_1", "f1"))
                .await,
            Ok(declined("insufficient_funds", true))
        );
    }

    #[tokio::test]
    async fn attach_knows_the_tokens_and_refuses_others() {
        let s = sandbox();
        let attach = |token: &str, kind| AttachRequest {
            tenant_id: "t1".into(),
            provider_customer: "cus_sbx_t1_c1".into(),
            token: token.into(),
            kind,
            idempotency_key: format!("attach-{token}"),
        };
        let visa = s
            .attach_payment_method(&attach("pm_card_visa", PaymentMethodKind::Card))
            .await
            .unwrap();
        assert_eq!(
            visa,
            AttachedMethod {
                provider_reference: "pm_card_visa".into(),
                kind: PaymentMethodKind::Card,
                brand: Some("visa".into()),
                last4: Some("4242".into()),
            }
        );
        let sepa = s
            .attach_payment_method(&attach("pm_sepa_debit", PaymentMethodKind::SepaDebit))
            .await
            .unwrap();
        assert_eq!(
            (sepa.kind, sepa.brand, sepa.last4.as_deref()),
            (PaymentMethodKind::SepaDebit, None, Some("3000"))
        );
        for token in [
            "pm_card_chargeDeclinedInsufficientFunds",
            "pm_card_chargeDeclinedLostCard",
            "pm_card_timeout",
            "pm_card_slow",
            "pm_card_decline_then_succeed_3",
        ] {
            assert!(s
                .attach_payment_method(&attach(token, PaymentMethodKind::Card))
                .await
                .is_ok());
        }
        let e = s
            .attach_payment_method(&attach("pm_card_mastercard", PaymentMethodKind::Card))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some("unknown_payment_method"));
        assert!(e.to_string().contains("pm_card_visa"), "{e}");
        assert!(!e.is_transient());
        for bad in [
            "pm_card_decline_then_succeed_",
            "pm_card_decline_then_succeed_x",
            "pm_card_decline_then_succeed_+1",
        ] {
            assert!(
                s.attach_payment_method(&attach(bad, PaymentMethodKind::Card))
                    .await
                    .is_err(),
                "{bad}"
            );
        }
        let e = s
            .attach_payment_method(&attach("pm_sepa_debit", PaymentMethodKind::Card))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some("payment_method_kind_mismatch"));
    }

    #[tokio::test]
    async fn customers_are_derived_from_their_ids() {
        let s = sandbox();
        let req = CustomerRequest {
            tenant_id: "t1".into(),
            customer_id: "c1".into(),
            email: Some("a@example.com".into()),
            name: None,
            idempotency_key: "cust-c1".into(),
        };
        let a = s.ensure_customer(&req).await.unwrap();
        assert_eq!(a.provider_reference, "cus_sbx_t1_c1");
        assert_eq!(s.ensure_customer(&req).await.unwrap(), a);
    }

    #[tokio::test]
    async fn refunds_are_idempotent_and_bounded_by_the_charge() {
        let s = sandbox();
        s.charge(&charge_req("pm_card_visa", "paid")).await.unwrap();
        let refund = |key: &str, amount: Decimal| RefundRequest {
            tenant_id: "t1".into(),
            charge_reference: "ch_sbx_paid".into(),
            amount,
            currency: Currency::parse("EUR").unwrap(),
            idempotency_key: key.into(),
            metadata: BTreeMap::from([("invoice_id".to_owned(), "inv-paid".to_owned())]),
        };
        let ok = RefundOutcome::Succeeded {
            provider_reference: "re_sbx_r1".into(),
        };
        assert_eq!(s.refund(&refund("r1", dec!(10))).await, Ok(ok.clone()));
        assert_eq!(s.refund(&refund("r1", dec!(10))).await, Ok(ok));
        assert_eq!(counts(&s, "r1").await, (1, 2));
        match s.refund(&refund("r2", dec!(2.51))).await.unwrap() {
            RefundOutcome::Failed { code, .. } => assert_eq!(code, "amount_too_large"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            s.refund(&refund("r3", dec!(2.50))).await,
            Ok(RefundOutcome::Succeeded {
                provider_reference: "re_sbx_r3".into()
            })
        );
        let mut missing = refund("r4", dec!(1));
        missing.charge_reference = "ch_sbx_nope".into();
        assert_eq!(
            s.refund(&missing).await.unwrap_err().code(),
            Some("resource_missing")
        );
        s.charge(&charge_req("pm_card_chargeDeclinedLostCard", "lost"))
            .await
            .unwrap();
        let mut declined_charge = refund("r5", dec!(1));
        declined_charge.charge_reference = "ch_sbx_lost".into();
        assert_eq!(
            s.refund(&declined_charge).await.unwrap_err().code(),
            Some("charge_not_succeeded")
        );
    }

    #[tokio::test]
    async fn amounts_are_checked_before_charging() {
        let s = sandbox();
        let mut req = charge_req("pm_card_visa", "p");
        req.amount = dec!(12.345);
        assert_eq!(
            s.charge(&req).await.unwrap_err().code(),
            Some("amount_precision")
        );
        assert_eq!(counts(&s, "p").await, (0, 1));
    }
}
