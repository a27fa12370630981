//! The Stripe adapter: Stripe's HTTP API with `reqwest`, form-encoded (`metadata[key]=value`), `Authorization:
//! Bearer <secret key>`, and the caller's key as `Idempotency-Key` on every POST, so a retry after a timeout never
//! charges twice. Only the fields we use are parsed.
//!
//! Error mapping: HTTP 402 or `type=card_error` → [`ChargeOutcome::Declined`] with `decline_code`, else `code`; 429,
//! 409 (a concurrent request with the same key), 5xx, timeouts and connection failures → [`ProviderError::Transient`];
//! any other 4xx → [`ProviderError::Permanent`] with Stripe's `error.code` (its `error.type` when it has no code).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::{
    to_minor_units, AttachRequest, AttachedMethod, ChargeOutcome, ChargeRequest, CustomerRequest,
    PaymentMethodKind, PaymentProvider, ProviderCustomer, ProviderError, ProviderFuture,
    RefundOutcome, RefundRequest, DEFAULT_TIMEOUT,
};

/// How to reach Stripe.
#[derive(Clone)]
pub struct StripeConfig {
    /// `https://api.stripe.com`, or stripe-mock's `http://127.0.0.1:12111`.
    pub base_url: String,
    /// Secret key (`sk_live_...`, `sk_test_...`).
    pub secret_key: String,
    /// Timeout of one HTTP call, connection included.
    pub timeout: Duration,
}

impl Default for StripeConfig {
    fn default() -> Self {
        StripeConfig {
            base_url: "https://api.stripe.com".into(),
            secret_key: String::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// Stripe's API.
pub struct StripeProvider {
    http: reqwest::Client,
    base_url: String,
    secret_key: String,
}

/// Form fields, in order (Stripe's nested syntax is in the names: `metadata[invoice_id]`).
type Form = Vec<(String, String)>;

fn field(form: &mut Form, name: &str, value: impl Into<String>) {
    form.push((name.to_owned(), value.into()));
}

/// Stripe's metadata limits: 50 keys, a key at most 40 characters, a value at most 500. A bracket in a key would
/// change the form's structure, so it is refused too.
fn metadata(form: &mut Form, entries: &BTreeMap<String, String>) -> Result<(), ProviderError> {
    if entries.len() > 50 {
        return Err(ProviderError::permanent(
            "invalid_metadata",
            format!("{} metadata keys, Stripe takes 50", entries.len()),
        ));
    }
    for (k, v) in entries {
        let key_ok = !k.is_empty() && k.chars().count() <= 40 && !k.contains(['[', ']']);
        if !key_ok || v.chars().count() > 500 {
            return Err(ProviderError::permanent(
                "invalid_metadata",
                format!("metadata {k:?}: keys are 1 to 40 characters without brackets, values at most 500"),
            ));
        }
        form.push((format!("metadata[{k}]"), v.clone()));
    }
    Ok(())
}

/// Stripe's error object (`{"error": {...}}`).
#[derive(Debug, Default, Deserialize)]
struct StripeError {
    #[serde(rename = "type")]
    kind: Option<String>,
    code: Option<String>,
    decline_code: Option<String>,
    message: Option<String>,
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: StripeError,
}

#[derive(Deserialize)]
struct Customer {
    id: String,
}

#[derive(Deserialize)]
struct PaymentMethod {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    card: Option<Card>,
    sepa_debit: Option<SepaDebit>,
}

#[derive(Deserialize)]
struct Card {
    brand: Option<String>,
    last4: Option<String>,
}

#[derive(Deserialize)]
struct SepaDebit {
    last4: Option<String>,
}

#[derive(Deserialize)]
struct PaymentIntent {
    id: String,
    status: String,
    last_payment_error: Option<StripeError>,
}

#[derive(Deserialize)]
struct Refund {
    id: String,
    status: Option<String>,
    failure_reason: Option<String>,
}

/// What a non-2xx answer means.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// A card error: a definite decline.
    Declined {
        code: String,
        message: String,
    },
    Error(ProviderError),
}

/// Decline codes worth another try later (Stripe's "try again" codes, and the soft declines dunning retries).
/// Everything else (lost, stolen, expired, fraudulent, incorrect number, `do_not_try_again`, ...) is final until
/// the customer gives another payment method.
const RETRYABLE_DECLINES: &[&str] = &[
    "insufficient_funds",
    "generic_decline",
    "do_not_honor",
    "try_again_later",
    "processing_error",
    "issuer_not_available",
    "reenter_transaction",
    "approve_with_id",
    "card_velocity_exceeded",
    "withdrawal_count_limit_exceeded",
    "service_not_allowed",
];

fn retryable_decline(code: &str) -> bool {
    RETRYABLE_DECLINES.contains(&code)
}

/// Map a non-2xx answer from its status and body.
fn classify(status: u16, body: &str) -> Failure {
    let error = serde_json::from_str::<ErrorEnvelope>(body)
        .map(|e| e.error)
        .unwrap_or_default();
    let message = error
        .message
        .clone()
        .unwrap_or_else(|| format!("HTTP {status} from Stripe"));
    if status == 402 || error.kind.as_deref() == Some("card_error") {
        let code = error
            .decline_code
            .or(error.code)
            .unwrap_or_else(|| "card_declined".to_owned());
        return Failure::Declined { code, message };
    }
    let code = error.code.or(error.kind);
    let message = format!("HTTP {status}: {message}");
    Failure::Error(match status {
        429 => ProviderError::Transient {
            code: code.or(Some("rate_limited".to_owned())),
            message,
        },
        // A request with the same idempotency key is still running at Stripe.
        409 => ProviderError::Transient { code, message },
        s if s >= 500 => ProviderError::Transient {
            code: code.or(Some("server_error".to_owned())),
            message,
        },
        _ => ProviderError::Permanent { code, message },
    })
}

fn transport(e: reqwest::Error) -> ProviderError {
    if e.is_timeout() {
        ProviderError::transient("timeout", format!("Stripe did not answer in time: {e}"))
    } else if e.is_connect() {
        ProviderError::transient("connection", format!("cannot reach Stripe: {e}"))
    } else if e.is_builder() {
        ProviderError::permanent("bad_request", format!("request to Stripe: {e}"))
    } else {
        // The connection broke mid-request or mid-answer: we do not know what Stripe did; the same key makes the
        // retry safe.
        ProviderError::transient("connection", format!("Stripe call failed: {e}"))
    }
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, body: &str) -> Result<T, ProviderError> {
    serde_json::from_str(body)
        .map_err(|e| ProviderError::permanent("invalid_response", format!("Stripe {what}: {e}")))
}

/// A PaymentIntent after a confirmation that Stripe answered with 2xx.
fn charge_outcome(pi: PaymentIntent) -> Result<ChargeOutcome, ProviderError> {
    match pi.status.as_str() {
        "succeeded" => Ok(ChargeOutcome::Succeeded {
            provider_reference: pi.id,
        }),
        "processing" => Ok(ChargeOutcome::Pending {
            provider_reference: pi.id,
        }),
        // Off-session, the customer is not there to authenticate.
        "requires_action" => Ok(ChargeOutcome::Declined {
            code: "authentication_required".into(),
            message: format!("PaymentIntent {} requires customer action", pi.id),
            retryable: false,
        }),
        "requires_payment_method" => {
            let e = pi.last_payment_error.unwrap_or_default();
            let code = e
                .decline_code
                .or(e.code)
                .unwrap_or_else(|| "requires_payment_method".to_owned());
            let message = e.message.unwrap_or_else(|| {
                format!("PaymentIntent {} requires a new payment method", pi.id)
            });
            Ok(ChargeOutcome::Declined {
                retryable: retryable_decline(&code),
                code,
                message,
            })
        }
        other => Err(ProviderError::permanent(
            "unexpected_status",
            format!(
                "PaymentIntent {} is {other:?} after an off-session confirmation",
                pi.id
            ),
        )),
    }
}

fn refund_outcome(r: Refund) -> RefundOutcome {
    match r.status.as_deref() {
        Some("succeeded") => RefundOutcome::Succeeded {
            provider_reference: r.id,
        },
        Some("pending") | Some("requires_action") | None => RefundOutcome::Pending {
            provider_reference: r.id,
        },
        Some(status) => RefundOutcome::Failed {
            code: r
                .failure_reason
                .clone()
                .unwrap_or_else(|| status.to_owned()),
            message: format!("refund {} is {status}", r.id),
            provider_reference: Some(r.id),
        },
    }
}

impl StripeProvider {
    /// A client for `cfg` (refuses an empty key or base URL).
    pub fn new(cfg: StripeConfig) -> Result<Self, ProviderError> {
        if cfg.secret_key.is_empty() {
            return Err(ProviderError::permanent(
                "missing_secret_key",
                "the Stripe secret key is empty",
            ));
        }
        let base_url = cfg.base_url.trim_end_matches('/').to_owned();
        if !(base_url.starts_with("https://") || base_url.starts_with("http://")) {
            return Err(ProviderError::permanent(
                "bad_base_url",
                format!("Stripe base URL {:?} is not http(s)", cfg.base_url),
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .build()
            .map_err(|e| ProviderError::permanent("http_client", e.to_string()))?;
        Ok(StripeProvider {
            http,
            base_url,
            secret_key: cfg.secret_key,
        })
    }

    /// POST a form with the idempotency key: the body of a 2xx answer, or what the failure means.
    async fn post(
        &self,
        path: &str,
        idempotency_key: &str,
        form: &Form,
    ) -> Result<Result<String, Failure>, ProviderError> {
        if idempotency_key.is_empty() {
            return Err(ProviderError::permanent(
                "idempotency_key_missing",
                format!("POST {path} needs an idempotency key"),
            ));
        }
        let response = self
            .http
            .post(format!("{}{path}", self.base_url))
            .bearer_auth(&self.secret_key)
            .header("Idempotency-Key", idempotency_key)
            .form(form)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status().as_u16();
        let body = response.text().await.map_err(transport)?;
        tracing::debug!(path, status, idempotency_key, "stripe");
        if (200..300).contains(&status) {
            Ok(Ok(body))
        } else {
            Ok(Err(classify(status, &body)))
        }
    }

    /// POST where a decline is not an answer (everything but a charge): a card error becomes permanent.
    async fn post_ok(
        &self,
        path: &str,
        idempotency_key: &str,
        form: &Form,
    ) -> Result<String, ProviderError> {
        match self.post(path, idempotency_key, form).await? {
            Ok(body) => Ok(body),
            Err(Failure::Error(e)) => Err(e),
            Err(Failure::Declined { code, message }) => Err(ProviderError::Permanent {
                code: Some(code),
                message,
            }),
        }
    }

    async fn ensure_customer_inner(
        &self,
        req: &CustomerRequest,
    ) -> Result<ProviderCustomer, ProviderError> {
        let mut form = Form::new();
        if let Some(email) = &req.email {
            field(&mut form, "email", email);
        }
        if let Some(name) = &req.name {
            field(&mut form, "name", name);
        }
        metadata(
            &mut form,
            &BTreeMap::from([
                ("tenant_id".to_owned(), req.tenant_id.clone()),
                ("customer_id".to_owned(), req.customer_id.clone()),
            ]),
        )?;
        let body = self
            .post_ok("/v1/customers", &req.idempotency_key, &form)
            .await?;
        let c: Customer = parse("customer", &body)?;
        Ok(ProviderCustomer {
            provider_reference: c.id,
        })
    }

    async fn attach_inner(&self, req: &AttachRequest) -> Result<AttachedMethod, ProviderError> {
        let valid_id = !req.token.is_empty()
            && req
                .token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid_id {
            return Err(ProviderError::permanent(
                "invalid_payment_method",
                format!("{:?} is not a Stripe payment method id", req.token),
            ));
        }
        let mut form = Form::new();
        field(&mut form, "customer", &req.provider_customer);
        let path = format!("/v1/payment_methods/{}/attach", req.token);
        let body = self.post_ok(&path, &req.idempotency_key, &form).await?;
        let pm: PaymentMethod = parse("payment method", &body)?;
        let kind = PaymentMethodKind::parse(&pm.kind)?;
        if kind != req.kind {
            return Err(ProviderError::permanent(
                "payment_method_kind_mismatch",
                format!("{} is a {}, not a {}", pm.id, kind, req.kind),
            ));
        }
        let (brand, last4) = match kind {
            PaymentMethodKind::Card => pm.card.map(|c| (c.brand, c.last4)).unwrap_or((None, None)),
            PaymentMethodKind::SepaDebit => (None, pm.sepa_debit.and_then(|s| s.last4)),
        };
        Ok(AttachedMethod {
            provider_reference: pm.id,
            kind,
            brand,
            last4,
        })
    }

    async fn charge_inner(&self, req: &ChargeRequest) -> Result<ChargeOutcome, ProviderError> {
        let amount = to_minor_units(req.amount, req.currency)?;
        let mut form = Form::new();
        field(&mut form, "amount", amount.to_string());
        field(
            &mut form,
            "currency",
            req.currency.code().to_ascii_lowercase(),
        );
        field(&mut form, "customer", &req.provider_customer);
        field(&mut form, "payment_method", &req.payment_method);
        field(&mut form, "confirm", "true");
        field(&mut form, "off_session", "true");
        if let Some(d) = &req.description {
            field(&mut form, "description", d);
        }
        let mut meta = req.metadata.clone();
        meta.insert("tenant_id".into(), req.tenant_id.clone());
        meta.insert("invoice_id".into(), req.invoice_id.clone());
        meta.insert("attempt_id".into(), req.idempotency_key.clone());
        metadata(&mut form, &meta)?;
        match self
            .post("/v1/payment_intents", &req.idempotency_key, &form)
            .await?
        {
            Ok(body) => charge_outcome(parse("payment intent", &body)?),
            Err(Failure::Declined { code, message }) => Ok(ChargeOutcome::Declined {
                retryable: retryable_decline(&code),
                code,
                message,
            }),
            Err(Failure::Error(e)) => Err(e),
        }
    }

    async fn refund_inner(&self, req: &RefundRequest) -> Result<RefundOutcome, ProviderError> {
        let amount = to_minor_units(req.amount, req.currency)?;
        let mut form = Form::new();
        field(&mut form, "payment_intent", &req.charge_reference);
        field(&mut form, "amount", amount.to_string());
        let mut meta = req.metadata.clone();
        meta.insert("tenant_id".into(), req.tenant_id.clone());
        meta.insert("refund_id".into(), req.idempotency_key.clone());
        metadata(&mut form, &meta)?;
        let body = self
            .post_ok("/v1/refunds", &req.idempotency_key, &form)
            .await?;
        Ok(refund_outcome(parse("refund", &body)?))
    }
}

impl PaymentProvider for StripeProvider {
    fn name(&self) -> &'static str {
        "stripe"
    }

    fn ensure_customer<'a>(
        &'a self,
        req: &'a CustomerRequest,
    ) -> ProviderFuture<'a, ProviderCustomer> {
        Box::pin(self.ensure_customer_inner(req))
    }

    fn attach_payment_method<'a>(
        &'a self,
        req: &'a AttachRequest,
    ) -> ProviderFuture<'a, AttachedMethod> {
        Box::pin(self.attach_inner(req))
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

    fn transient(code: &str) -> Failure {
        Failure::Error(ProviderError::Transient {
            code: Some(code.into()),
            message: String::new(),
        })
    }

    /// The failure with its message blanked, to compare kinds and codes.
    fn kind(f: Failure) -> Failure {
        match f {
            Failure::Error(ProviderError::Transient { code, .. }) => {
                Failure::Error(ProviderError::Transient {
                    code,
                    message: String::new(),
                })
            }
            Failure::Error(ProviderError::Permanent { code, .. }) => {
                Failure::Error(ProviderError::Permanent {
                    code,
                    message: String::new(),
                })
            }
            d => d,
        }
    }

    #[test]
    fn card_errors_are_declines_with_the_decline_code() {
        let body = r#"{"error":{"type":"card_error","code":"card_declined","decline_code":"insufficient_funds",
            "message":"Your card has insufficient funds.","payment_intent":{"id":"pi_1"}}}"#;
        assert_eq!(
            classify(402, body),
            Failure::Declined {
                code: "insufficient_funds".into(),
                message: "Your card has insufficient funds.".into()
            }
        );
        let body = r#"{"error":{"type":"card_error","code":"expired_card","message":"Your card has expired."}}"#;
        assert_eq!(
            classify(402, body),
            Failure::Declined {
                code: "expired_card".into(),
                message: "Your card has expired.".into()
            }
        );
        assert_eq!(
            classify(402, "not json"),
            Failure::Declined {
                code: "card_declined".into(),
                message: "HTTP 402 from Stripe".into()
            }
        );
        assert!(retryable_decline("insufficient_funds"));
        assert!(!retryable_decline("lost_card"));
        assert!(!retryable_decline("expired_card"));
    }

    #[test]
    fn other_errors_are_transient_or_permanent_by_status() {
        let invalid = r#"{"error":{"type":"invalid_request_error","code":"parameter_missing","param":"amount",
            "message":"Missing required param: amount."}}"#;
        match classify(400, invalid) {
            Failure::Error(ProviderError::Permanent { code, message }) => {
                assert_eq!(code.as_deref(), Some("parameter_missing"));
                assert_eq!(message, "HTTP 400: Missing required param: amount.");
            }
            other => panic!("{other:?}"),
        }
        // No code: the type stands in (stripe-mock's validation errors have only a type).
        let no_code = r#"{"error":{"type":"invalid_request_error","message":"bad"}}"#;
        assert_eq!(
            kind(classify(401, no_code)),
            Failure::Error(ProviderError::Permanent {
                code: Some("invalid_request_error".into()),
                message: String::new()
            })
        );
        let rate = r#"{"error":{"type":"invalid_request_error","code":"rate_limit","message":"slow down"}}"#;
        assert_eq!(kind(classify(429, rate)), transient("rate_limit"));
        assert_eq!(kind(classify(429, "")), transient("rate_limited"));
        assert_eq!(kind(classify(500, "")), transient("server_error"));
        assert_eq!(kind(classify(503, "<html>")), transient("server_error"));
        let api = r#"{"error":{"type":"api_error","message":"boom"}}"#;
        assert_eq!(kind(classify(500, api)), transient("api_error"));
        let lock = r#"{"error":{"type":"idempotency_error","code":"idempotency_key_in_use","message":"in use"}}"#;
        assert_eq!(
            kind(classify(409, lock)),
            transient("idempotency_key_in_use")
        );
        assert_eq!(
            kind(classify(
                404,
                r#"{"error":{"type":"invalid_request_error","code":"resource_missing"}}"#
            )),
            Failure::Error(ProviderError::Permanent {
                code: Some("resource_missing".into()),
                message: String::new()
            })
        );
    }

    fn pi(status: &str, error: Option<StripeError>) -> PaymentIntent {
        PaymentIntent {
            id: "pi_1".into(),
            status: status.into(),
            last_payment_error: error,
        }
    }

    #[test]
    fn payment_intent_statuses_map_to_outcomes() {
        assert_eq!(
            charge_outcome(pi("succeeded", None)),
            Ok(ChargeOutcome::Succeeded {
                provider_reference: "pi_1".into()
            })
        );
        assert_eq!(
            charge_outcome(pi("processing", None)),
            Ok(ChargeOutcome::Pending {
                provider_reference: "pi_1".into()
            })
        );
        match charge_outcome(pi("requires_action", None)).unwrap() {
            ChargeOutcome::Declined {
                code, retryable, ..
            } => {
                assert_eq!(
                    (code.as_str(), retryable),
                    ("authentication_required", false)
                )
            }
            other => panic!("{other:?}"),
        }
        let e = StripeError {
            decline_code: Some("insufficient_funds".into()),
            message: Some("no money".into()),
            ..StripeError::default()
        };
        assert_eq!(
            charge_outcome(pi("requires_payment_method", Some(e))),
            Ok(ChargeOutcome::Declined {
                code: "insufficient_funds".into(),
                message: "no money".into(),
                retryable: true
            })
        );
        assert_eq!(
            charge_outcome(pi("requires_capture", None))
                .unwrap_err()
                .code(),
            Some("unexpected_status")
        );
    }

    #[test]
    fn refund_statuses_map_to_outcomes() {
        let r = |status: Option<&str>, reason: Option<&str>| Refund {
            id: "re_1".into(),
            status: status.map(str::to_owned),
            failure_reason: reason.map(str::to_owned),
        };
        assert_eq!(
            refund_outcome(r(Some("succeeded"), None)),
            RefundOutcome::Succeeded {
                provider_reference: "re_1".into()
            }
        );
        assert_eq!(
            refund_outcome(r(Some("pending"), None)),
            RefundOutcome::Pending {
                provider_reference: "re_1".into()
            }
        );
        assert_eq!(
            refund_outcome(r(Some("failed"), Some("expired_or_canceled_card"))),
            RefundOutcome::Failed {
                provider_reference: Some("re_1".into()),
                code: "expired_or_canceled_card".into(),
                message: "refund re_1 is failed".into()
            }
        );
    }

    #[test]
    fn metadata_uses_stripes_nested_names_and_limits() {
        let mut form = Form::new();
        let entries = BTreeMap::from([
            ("invoice_id".to_owned(), "inv-1".to_owned()),
            ("tenant_id".to_owned(), "acme".to_owned()),
        ]);
        metadata(&mut form, &entries).unwrap();
        assert_eq!(
            form,
            [
                ("metadata[invoice_id]".to_owned(), "inv-1".to_owned()),
                ("metadata[tenant_id]".to_owned(), "acme".to_owned())
            ]
        );
        for bad in ["a][b", "", &"k".repeat(41)] {
            let entries = BTreeMap::from([(bad.to_owned(), "v".to_owned())]);
            assert_eq!(
                metadata(&mut Form::new(), &entries).unwrap_err().code(),
                Some("invalid_metadata"),
                "{bad}"
            );
        }
        let long = BTreeMap::from([("k".to_owned(), "v".repeat(501))]);
        assert!(metadata(&mut Form::new(), &long).is_err());
    }

    #[test]
    fn configuration_is_checked() {
        assert_eq!(
            StripeProvider::new(StripeConfig::default())
                .err()
                .unwrap()
                .code(),
            Some("missing_secret_key")
        );
        let cfg = StripeConfig {
            base_url: "api.stripe.com".into(),
            secret_key: "sk_test_1".into(),
            ..StripeConfig::default()
        };
        assert_eq!(
            StripeProvider::new(cfg).err().unwrap().code(),
            Some("bad_base_url")
        );
    }
}
