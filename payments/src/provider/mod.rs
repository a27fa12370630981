//! The payment provider layer: one object-safe trait, [`PaymentProvider`], with a deterministic in-process
//! [`sandbox`] (its ledger in Cassandra, so it survives a crash) and a [`stripe`] adapter over Stripe's HTTP API.
//!
//! Every operation that moves money takes the caller's idempotency key, which the provider honours: a retry with
//! the same key after a [`ProviderError::Transient`] (timeout, 5xx, 429, lost connection) never charges twice. A
//! definite decline is an `Ok` outcome, not an error.

pub mod sandbox;
pub mod stripe;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use billing_core::currency::Currency;
use billing_runtime::config::{ProviderConfig, ProviderKind};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

pub use sandbox::{InMemoryLedger, SandboxLedger, SandboxProvider};
pub use stripe::{StripeConfig, StripeProvider};

/// What every provider call returns: a boxed future, so that the trait stays object safe (`Arc<dyn
/// PaymentProvider>`) without a macro crate.
pub type ProviderFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, ProviderError>> + Send + 'a>>;

/// A payment provider: customers, payment methods, charges and refunds.
pub trait PaymentProvider: Send + Sync {
    /// Short name for logs and metrics (`sandbox`, `stripe`).
    fn name(&self) -> &'static str;

    /// Create the provider's customer for one of ours (idempotent per `req.idempotency_key`).
    fn ensure_customer<'a>(
        &'a self,
        req: &'a CustomerRequest,
    ) -> ProviderFuture<'a, ProviderCustomer>;

    /// Attach a payment method token to a provider customer.
    fn attach_payment_method<'a>(
        &'a self,
        req: &'a AttachRequest,
    ) -> ProviderFuture<'a, AttachedMethod>;

    /// Charge a payment method off-session. A decline is `Ok(ChargeOutcome::Declined)`.
    fn charge<'a>(&'a self, req: &'a ChargeRequest) -> ProviderFuture<'a, ChargeOutcome>;

    /// Refund (part of) a charge.
    fn refund<'a>(&'a self, req: &'a RefundRequest) -> ProviderFuture<'a, RefundOutcome>;
}

/// Create (or find again, by idempotency key) the provider's customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerRequest {
    /// Owning tenant.
    pub tenant_id: String,
    /// Our customer id.
    pub customer_id: String,
    /// Billing email, if known.
    pub email: Option<String>,
    /// Display name, if known.
    pub name: Option<String>,
    /// Sent as the provider's idempotency key.
    pub idempotency_key: String,
}

/// The provider's customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderCustomer {
    /// The provider's id (`cus_...`).
    pub provider_reference: String,
}

/// The kind of a payment method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentMethodKind {
    /// A card.
    Card,
    /// A SEPA Direct Debit mandate.
    SepaDebit,
}

impl PaymentMethodKind {
    /// `card` or `sepa_debit`, as in the payment events and in Stripe.
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentMethodKind::Card => "card",
            PaymentMethodKind::SepaDebit => "sepa_debit",
        }
    }

    /// Parse `card` or `sepa_debit`.
    pub fn parse(s: &str) -> Result<Self, ProviderError> {
        match s {
            "card" => Ok(PaymentMethodKind::Card),
            "sepa_debit" => Ok(PaymentMethodKind::SepaDebit),
            other => Err(ProviderError::permanent(
                "unknown_payment_method_kind",
                format!("payment method kind {other:?} is neither card nor sepa_debit"),
            )),
        }
    }
}

impl fmt::Display for PaymentMethodKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Attach a token (`pm_card_visa`, a SEPA payment method) to a provider customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachRequest {
    /// Owning tenant.
    pub tenant_id: String,
    /// The provider's customer ([`ProviderCustomer::provider_reference`]).
    pub provider_customer: String,
    /// The provider's token or payment method id (never a card number).
    pub token: String,
    /// What the token is expected to be.
    pub kind: PaymentMethodKind,
    /// Sent as the provider's idempotency key.
    pub idempotency_key: String,
}

/// A payment method attached to a provider customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachedMethod {
    /// The provider's payment method id: what [`ChargeRequest::payment_method`] takes.
    pub provider_reference: String,
    /// Card or SEPA debit.
    pub kind: PaymentMethodKind,
    /// Card brand (`visa`), when the provider says.
    pub brand: Option<String>,
    /// Last four digits of the card or IBAN, when the provider says.
    pub last4: Option<String>,
}

/// Charge an attached payment method, off-session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRequest {
    /// Owning tenant (sent as metadata).
    pub tenant_id: String,
    /// The invoice paid (sent as metadata).
    pub invoice_id: String,
    /// The provider's customer.
    pub provider_customer: String,
    /// The provider's payment method id ([`AttachedMethod::provider_reference`]).
    pub payment_method: String,
    /// Amount in major units (`12.50`); it must be a whole number of the currency's minor units.
    pub amount: Decimal,
    /// ISO 4217 currency.
    pub currency: Currency,
    /// Our attempt id: sent as the provider's idempotency key, so a retry of the same attempt charges once.
    pub idempotency_key: String,
    /// Statement description shown in the provider's dashboard.
    pub description: Option<String>,
    /// More metadata (the provider's limits apply: Stripe takes 50 keys of 40 characters).
    pub metadata: BTreeMap<String, String>,
}

/// What a charge did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ChargeOutcome {
    /// The money was taken.
    Succeeded {
        /// The provider's id of the payment (`pi_...` at Stripe).
        provider_reference: String,
    },
    /// Accepted but not final yet (a SEPA debit takes days at Stripe: status `processing`); the result comes later
    /// through the provider's webhooks.
    Pending {
        /// The provider's id of the payment.
        provider_reference: String,
    },
    /// The provider refused the payment: a definite answer, the money was not taken.
    Declined {
        /// The provider's decline code (`insufficient_funds`, `lost_card`, ...).
        code: String,
        /// The provider's message.
        message: String,
        /// Whether trying again later (with a new attempt and key) may succeed.
        retryable: bool,
    },
}

/// Refund (part of) a charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    /// Owning tenant.
    pub tenant_id: String,
    /// The provider's reference of the payment ([`ChargeOutcome::Succeeded`]'s).
    pub charge_reference: String,
    /// Amount in major units; at most what is left of the charge.
    pub amount: Decimal,
    /// ISO 4217 currency of the charge.
    pub currency: Currency,
    /// Our refund id: sent as the provider's idempotency key.
    pub idempotency_key: String,
    /// Metadata (the invoice, the credit note).
    pub metadata: BTreeMap<String, String>,
}

/// What a refund did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RefundOutcome {
    /// The money is on its way back.
    Succeeded {
        /// The provider's id of the refund (`re_...`).
        provider_reference: String,
    },
    /// Accepted, not final yet.
    Pending {
        /// The provider's id of the refund.
        provider_reference: String,
    },
    /// The provider could not refund.
    Failed {
        /// The provider's id of the refund, when it made one.
        provider_reference: Option<String>,
        /// The provider's code.
        code: String,
        /// The provider's message.
        message: String,
    },
}

/// A provider call that did not give a definite answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Timeout, connection failure, 5xx, 429 or a lock conflict: retry later **with the same idempotency key**.
    #[error("transient provider error ({}): {message}", code.as_deref().unwrap_or("no code"))]
    Transient {
        /// The provider's error code, or ours (`timeout`, `connection`, `rate_limited`, ...).
        code: Option<String>,
        /// What happened.
        message: String,
    },
    /// A request the provider refuses for good (a 4xx that is not a decline) or bad configuration: retrying does
    /// not help.
    #[error("permanent provider error ({}): {message}", code.as_deref().unwrap_or("no code"))]
    Permanent {
        /// The provider's error code, or ours.
        code: Option<String>,
        /// What happened.
        message: String,
    },
}

impl ProviderError {
    /// A transient error with a code.
    pub fn transient(code: &str, message: impl Into<String>) -> Self {
        ProviderError::Transient {
            code: Some(code.to_owned()),
            message: message.into(),
        }
    }

    /// A permanent error with a code.
    pub fn permanent(code: &str, message: impl Into<String>) -> Self {
        ProviderError::Permanent {
            code: Some(code.to_owned()),
            message: message.into(),
        }
    }

    /// Whether the caller should retry with the same idempotency key.
    pub fn is_transient(&self) -> bool {
        matches!(self, ProviderError::Transient { .. })
    }

    /// The provider's (or our) error code.
    pub fn code(&self) -> Option<&str> {
        match self {
            ProviderError::Transient { code, .. } | ProviderError::Permanent { code, .. } => {
                code.as_deref()
            }
        }
    }
}

/// An amount in the currency's minor units, exactly: `12.50 EUR` is 1250, `1200 JPY` is 1200, `1.234 KWD` is 1234.
/// An amount with more decimals than the currency has (`12.505 EUR`), a negative or zero amount, or one too large
/// is refused: the provider is never sent a rounded amount.
pub fn to_minor_units(amount: Decimal, currency: Currency) -> Result<i64, ProviderError> {
    let scaled = amount
        .checked_mul(Decimal::from(10i64.pow(currency.minor_units())))
        .ok_or_else(|| {
            ProviderError::permanent("amount_too_large", format!("{amount} {currency}"))
        })?;
    if !scaled.fract().is_zero() {
        return Err(ProviderError::permanent(
            "amount_precision",
            format!(
                "{amount} {currency} is not a whole number of minor units ({} decimals)",
                currency.minor_units()
            ),
        ));
    }
    if scaled <= Decimal::ZERO {
        return Err(ProviderError::permanent(
            "amount_not_positive",
            format!("{amount} {currency} must be positive"),
        ));
    }
    scaled
        .to_i64()
        .ok_or_else(|| ProviderError::permanent("amount_too_large", format!("{amount} {currency}")))
}

/// The provider `cfg` names. The sandbox keeps its ledger in `ledger` (the Cassandra one in production, see
/// [`sandbox::SandboxLedger`]); Stripe ignores it.
pub fn from_config(
    cfg: &ProviderConfig,
    ledger: Arc<dyn SandboxLedger>,
) -> Result<Arc<dyn PaymentProvider>, ProviderError> {
    Ok(match cfg.kind {
        ProviderKind::Sandbox => Arc::new(SandboxProvider::new(ledger, cfg.sandbox_slow_delay)),
        ProviderKind::Stripe => Arc::new(StripeProvider::new(StripeConfig {
            base_url: cfg.stripe_base_url.clone(),
            secret_key: cfg.stripe_secret_key.clone(),
            timeout: cfg.timeout,
        })?),
    })
}

/// The default timeout of one provider HTTP call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    fn cur(code: &str) -> Currency {
        Currency::parse(code).unwrap()
    }

    #[test]
    fn minor_units_follow_the_currency() {
        assert_eq!(to_minor_units(dec!(12.50), cur("EUR")), Ok(1250));
        assert_eq!(to_minor_units(dec!(12.5), cur("USD")), Ok(1250));
        assert_eq!(to_minor_units(dec!(0.01), cur("USD")), Ok(1));
        assert_eq!(to_minor_units(dec!(1200), cur("JPY")), Ok(1200));
        assert_eq!(to_minor_units(dec!(1200.000), cur("JPY")), Ok(1200));
        assert_eq!(to_minor_units(dec!(1.234), cur("KWD")), Ok(1234));
        assert_eq!(to_minor_units(dec!(10), cur("BHD")), Ok(10_000));
    }

    #[test]
    fn amounts_finer_than_the_minor_unit_are_refused_not_rounded() {
        let e = to_minor_units(dec!(12.505), cur("EUR")).unwrap_err();
        assert_eq!(e.code(), Some("amount_precision"));
        assert!(!e.is_transient());
        assert_eq!(
            to_minor_units(dec!(100.5), cur("JPY")).unwrap_err().code(),
            Some("amount_precision")
        );
        assert_eq!(
            to_minor_units(dec!(1.2345), cur("KWD")).unwrap_err().code(),
            Some("amount_precision")
        );
        assert_eq!(
            to_minor_units(Decimal::ZERO, cur("EUR"))
                .unwrap_err()
                .code(),
            Some("amount_not_positive")
        );
        assert_eq!(
            to_minor_units(dec!(-1), cur("EUR")).unwrap_err().code(),
            Some("amount_not_positive")
        );
        assert_eq!(
            to_minor_units(Decimal::MAX, cur("EUR")).unwrap_err().code(),
            Some("amount_too_large")
        );
    }

    #[test]
    fn outcomes_serialize_with_a_status_tag() {
        let o = ChargeOutcome::Declined {
            code: "lost_card".into(),
            message: "m".into(),
            retryable: false,
        };
        let json = serde_json::to_string(&o).unwrap();
        assert_eq!(
            json,
            r#"{"status":"declined","code":"lost_card","message":"m","retryable":false}"#
        );
        assert_eq!(serde_json::from_str::<ChargeOutcome>(&json).unwrap(), o);
    }

    #[test]
    fn errors_say_whether_to_retry() {
        let t = ProviderError::transient("timeout", "no answer in 10s");
        assert!(t.is_transient());
        assert_eq!(t.code(), Some("timeout"));
        assert_eq!(
            t.to_string(),
            "transient provider error (timeout): no answer in 10s"
        );
        let p = ProviderError::Permanent {
            code: None,
            message: "x".into(),
        };
        assert!(!p.is_transient());
        assert_eq!(p.to_string(), "permanent provider error (no code): x");
    }
}
