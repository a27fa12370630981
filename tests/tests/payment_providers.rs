//! The payment provider layer against real servers: the sandbox's ledger in Cassandra (one charge per idempotency
//! key under races and across a "crash"), and the Stripe adapter against stripe-mock (Stripe's official mock,
//! `deploy/local/stripe-mock up`, at `STRIPE_MOCK_URL` or 127.0.0.1:12111) and against a local capture server that
//! records exactly what the adapter sends. Without stripe-mock these tests fail; they never skip.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use billing_core::currency::Currency;
use billing_payments::provider::{
    AttachRequest, ChargeOutcome, ChargeRequest, CustomerRequest, PaymentMethodKind,
    PaymentProvider, ProviderError, RefundOutcome, RefundRequest, SandboxLedger, SandboxProvider,
    StripeConfig, StripeProvider,
};
use billing_store::sandbox_ledger::SandboxLedgerStore;
use billing_tests::{eventually, TestEnv};
use rust_decimal::Decimal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn currency(code: &str) -> Currency {
    Currency::parse(code).unwrap()
}

fn charge_req(tenant: &str, invoice: &str, method: &str, key: &str) -> ChargeRequest {
    ChargeRequest {
        tenant_id: tenant.into(),
        invoice_id: invoice.into(),
        provider_customer: format!("cus_sbx_{tenant}_c1"),
        payment_method: method.into(),
        amount: dec("12.50"),
        currency: currency("EUR"),
        idempotency_key: key.into(),
        description: Some(format!("invoice {invoice}")),
        metadata: BTreeMap::new(),
    }
}

fn succeeded(key: &str) -> ChargeOutcome {
    ChargeOutcome::Succeeded {
        provider_reference: format!("ch_sbx_{key}"),
    }
}

#[tokio::test]
async fn sandbox_ledger_in_cassandra_charges_a_key_once() {
    let env = TestEnv::new("payment_providers").await;
    let session = Arc::new(
        billing_runtime::cql::connect(&env.settings.cassandra)
            .await
            .unwrap(),
    );
    let store = Arc::new(
        SandboxLedgerStore::new(session, &env.settings.cassandra.keyspace)
            .await
            .unwrap(),
    );
    let tenant = format!("t-{}", env.id);
    let t = tenant.as_str();
    // Two sandboxes on one ledger: two payments processes.
    let a = SandboxProvider::new(store.clone(), Duration::from_millis(200));
    let b = SandboxProvider::new(store.clone(), Duration::from_millis(200));

    // Two concurrent calls with one key: one charge, both answered with it, two calls counted.
    let req = charge_req(t, "inv-1", "pm_card_visa", "att-race");
    let (x, y) = tokio::join!(a.charge(&req), b.charge(&req));
    assert_eq!(x, Ok(succeeded("att-race")));
    assert_eq!(y, Ok(succeeded("att-race")));
    assert_eq!(store.charges_for(t, "att-race").await.unwrap(), 1);
    assert_eq!(store.calls_for(t, "att-race").await.unwrap(), 2);

    // Eight at once, over four processes.
    let req = charge_req(t, "inv-2", "pm_card_visa", "att-eight");
    let sandboxes: Vec<_> = (0..4)
        .map(|_| Arc::new(SandboxProvider::new(store.clone(), Duration::ZERO)))
        .collect();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..8 {
        let (sandbox, req) = (sandboxes[i % 4].clone(), req.clone());
        calls.spawn(async move { sandbox.charge(&req).await });
    }
    let answers = calls.join_all().await;
    assert!(
        answers.iter().all(|o| *o == Ok(succeeded("att-eight"))),
        "{answers:?}"
    );
    assert_eq!(store.charges_for(t, "att-eight").await.unwrap(), 1);
    assert_eq!(store.calls_for(t, "att-eight").await.unwrap(), 8);

    // A process killed while pm_card_slow waits: the charge is in the ledger before the answer; the retry after the
    // restart gets it back at once and charges nothing.
    let slow = SandboxProvider::new(store.clone(), Duration::from_secs(60));
    let req = charge_req(t, "inv-3", "pm_card_slow", "att-slow");
    let killed = {
        let req = req.clone();
        tokio::spawn(async move { slow.charge(&req).await })
    };
    eventually(
        Duration::from_secs(10),
        "the slow charge in the ledger",
        || {
            let store = store.clone();
            async move { (store.charges_for(t, "att-slow").await.unwrap() == 1).then_some(()) }
        },
    )
    .await;
    killed.abort();
    assert!(killed.await.unwrap_err().is_cancelled());
    let restarted = SandboxProvider::new(store.clone(), Duration::from_secs(60));
    let started = std::time::Instant::now();
    assert_eq!(restarted.charge(&req).await, Ok(succeeded("att-slow")));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(store.charges_for(t, "att-slow").await.unwrap(), 1);
    assert_eq!(store.calls_for(t, "att-slow").await.unwrap(), 2);

    // An invoice that is declined once, then paid by its second attempt (a new key); a timeout charges nothing.
    let m = "pm_card_decline_then_succeed_1";
    assert_eq!(
        a.charge(&charge_req(t, "inv-4", m, "att-4a")).await,
        Ok(ChargeOutcome::Declined {
            code: "insufficient_funds".into(),
            message: "Your card has insufficient funds.".into(),
            retryable: true
        })
    );
    assert_eq!(
        b.charge(&charge_req(t, "inv-4", m, "att-4b")).await,
        Ok(succeeded("att-4b"))
    );
    let timeout = a
        .charge(&charge_req(t, "inv-5", "pm_card_timeout", "att-5"))
        .await
        .unwrap_err();
    assert_eq!(timeout.code(), Some("timeout"));
    assert_eq!(store.calls_for(t, "att-5").await.unwrap(), 1);
    assert_eq!(store.charges_for(t, "att-5").await.unwrap(), 0);

    // Exact decimals in and out (3-decimal currency).
    let mut kwd = charge_req(t, "inv-6", "pm_sepa_debit", "att-6");
    kwd.amount = dec("1.234");
    kwd.currency = currency("KWD");
    assert_eq!(a.charge(&kwd).await, Ok(succeeded("att-6")));

    // Every charge of the tenant: each invoice succeeded exactly once.
    let all = store.charges_of_tenant(t).await.unwrap();
    let keys: Vec<_> = all.iter().map(|c| c.idempotency_key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "att-4a",
            "att-4b",
            "att-6",
            "att-eight",
            "att-race",
            "att-slow"
        ]
    );
    let mut paid: HashMap<&str, usize> = HashMap::new();
    for c in &all {
        assert_eq!(c.charge_count, 1, "{c:?}");
        assert_eq!(c.kind, "charge");
        let outcome: ChargeOutcome = serde_json::from_str(&c.outcome).unwrap();
        if matches!(outcome, ChargeOutcome::Succeeded { .. }) {
            *paid.entry(c.invoice_id.as_str()).or_default() += 1;
        }
    }
    assert_eq!(
        paid,
        HashMap::from([
            ("inv-1", 1),
            ("inv-2", 1),
            ("inv-3", 1),
            ("inv-4", 1),
            ("inv-6", 1)
        ])
    );
    let k = all.iter().find(|c| c.idempotency_key == "att-6").unwrap();
    assert_eq!(
        (k.amount, k.currency.as_str(), k.target.as_str()),
        (dec("1.234"), "KWD", "pm_sepa_debit")
    );
    assert_eq!(all[0].customer_ref, format!("cus_sbx_{t}_c1"));

    // A refund through the same ledger, replayed by another process.
    let refund = RefundRequest {
        tenant_id: t.into(),
        charge_reference: "ch_sbx_att-race".into(),
        amount: dec("12.50"),
        currency: currency("EUR"),
        idempotency_key: "ref-1".into(),
        metadata: BTreeMap::new(),
    };
    let done = RefundOutcome::Succeeded {
        provider_reference: "re_sbx_ref-1".into(),
    };
    assert_eq!(a.refund(&refund).await, Ok(done.clone()));
    assert_eq!(b.refund(&refund).await, Ok(done));
    assert_eq!(store.charges_for(t, "ref-1").await.unwrap(), 1);
    assert_eq!(store.calls_for(t, "ref-1").await.unwrap(), 2);
    // The trait's view of the ledger reads the same rows.
    let ledger: Arc<dyn SandboxLedger> = store.clone();
    assert_eq!(ledger.charges_for(t, "att-race").await.unwrap(), 1);
    assert_eq!(ledger.calls_for(t, "att-race").await.unwrap(), 2);

    env.cleanup().await;
}

fn stripe_mock_url() -> String {
    std::env::var("STRIPE_MOCK_URL").unwrap_or_else(|_| "http://127.0.0.1:12111".to_owned())
}

/// stripe-mock must answer: a missing mock is a failure, not a skip.
async fn require_stripe_mock(url: &str) {
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let reachable = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::net::TcpStream::connect(&addr),
    )
    .await;
    assert!(
        matches!(reachable, Ok(Ok(_))),
        "stripe-mock is not reachable at {url}: start it with `deploy/local/stripe-mock up` (or `deploy/local/stack up`)"
    );
}

fn stripe(base_url: &str, secret_key: &str, timeout: Duration) -> StripeProvider {
    StripeProvider::new(StripeConfig {
        base_url: base_url.to_owned(),
        secret_key: secret_key.to_owned(),
        timeout,
    })
    .unwrap()
}

#[tokio::test]
async fn stripe_adapter_against_stripe_mock() {
    let url = stripe_mock_url();
    require_stripe_mock(&url).await;
    let s = stripe(&url, "sk_test_123", Duration::from_secs(10));
    assert_eq!(s.name(), "stripe");

    let customer = s
        .ensure_customer(&CustomerRequest {
            tenant_id: "acme".into(),
            customer_id: "c-1".into(),
            email: Some("billing@acme.example".into()),
            name: Some("Acme".into()),
            idempotency_key: "cust-acme-c-1".into(),
        })
        .await
        .unwrap();
    assert!(
        customer.provider_reference.starts_with("cus_"),
        "{customer:?}"
    );

    let method = s
        .attach_payment_method(&AttachRequest {
            tenant_id: "acme".into(),
            provider_customer: customer.provider_reference.clone(),
            token: "pm_card_visa".into(),
            kind: PaymentMethodKind::Card,
            idempotency_key: "attach-acme-c-1".into(),
        })
        .await
        .unwrap();
    // stripe-mock echoes the id from the path and answers its card fixture.
    assert_eq!(method.provider_reference, "pm_card_visa");
    assert_eq!(method.kind, PaymentMethodKind::Card);
    assert_eq!(method.brand.as_deref(), Some("visa"));
    assert_eq!(method.last4.as_deref(), Some("4242"));
    // A SEPA method is refused when the provider says it is a card.
    let e = s
        .attach_payment_method(&AttachRequest {
            tenant_id: "acme".into(),
            provider_customer: customer.provider_reference.clone(),
            token: "pm_card_visa".into(),
            kind: PaymentMethodKind::SepaDebit,
            idempotency_key: "attach-acme-c-1-sepa".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("payment_method_kind_mismatch"));

    let mut charge = charge_req("acme", "inv-1", "pm_card_visa", "att-stripe-1");
    charge.provider_customer = customer.provider_reference.clone();
    // stripe-mock is stateless: it validates the request against Stripe's OpenAPI spec and answers the
    // PaymentIntent fixture, whose status is `requires_payment_method` (a confirmation that did not take money).
    // The adapter reads that as a decline that names the PaymentIntent.
    match s.charge(&charge).await.unwrap() {
        ChargeOutcome::Declined {
            code,
            message,
            retryable,
        } => {
            assert_eq!(code, "requires_payment_method");
            assert!(message.starts_with("PaymentIntent pi_"), "{message}");
            assert!(
                message.ends_with(" requires a new payment method"),
                "{message}"
            );
            assert!(!retryable);
        }
        other => panic!("stripe-mock's fixture is requires_payment_method, got {other:?}"),
    }

    let refund = s
        .refund(&RefundRequest {
            tenant_id: "acme".into(),
            charge_reference: "pi_123".into(),
            amount: dec("5.00"),
            currency: currency("EUR"),
            idempotency_key: "refund-acme-1".into(),
            metadata: BTreeMap::from([("invoice_id".to_owned(), "inv-1".to_owned())]),
        })
        .await
        .unwrap();
    match refund {
        RefundOutcome::Succeeded { provider_reference } => {
            assert!(
                provider_reference.starts_with("re_"),
                "{provider_reference}"
            )
        }
        other => panic!("stripe-mock's refund fixture is succeeded, got {other:?}"),
    }

    // A 4xx that is not a decline is permanent, with Stripe's code (stripe-mock's errors carry only a type).
    let bad_key = stripe(&url, "not_a_secret_key", Duration::from_secs(10));
    let e = bad_key.charge(&charge).await.unwrap_err();
    match &e {
        ProviderError::Permanent { code, message } => {
            assert_eq!(code.as_deref(), Some("invalid_request_error"));
            assert!(message.starts_with("HTTP 401: "), "{message}");
            assert!(message.contains("authenticate"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

/// One request as the capture server saw it.
#[derive(Debug, Clone)]
struct Captured {
    request_line: String,
    headers: HashMap<String, String>,
    form: Vec<(String, String)>,
}

/// How the capture server answers: status, body and a delay before answering.
type Answer = (u16, &'static str, Duration);

/// A tiny HTTP/1.1 server on loopback that records each request and answers `answer`.
async fn capture_server(answer: Answer) -> (String, Arc<Mutex<Vec<Captured>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    let n = socket.read(&mut chunk).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let mut lines = head.split("\r\n");
                let request_line = lines.next().unwrap().to_owned();
                let headers: HashMap<String, String> = lines
                    .filter_map(|l| l.split_once(": "))
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
                    .collect();
                let length: usize = headers
                    .get("content-length")
                    .map_or(0, |l| l.parse().unwrap());
                while buf.len() < head_end + length {
                    let n = socket.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).to_string();
                let form = body
                    .split('&')
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once('=').unwrap_or((p, ""));
                        (form_decode(k), form_decode(v))
                    })
                    .collect();
                log.lock().unwrap().push(Captured {
                    request_line,
                    headers,
                    form,
                });
                let (status, body, delay) = answer;
                tokio::time::sleep(delay).await;
                let response = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    (url, seen)
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte.
fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

const SUCCEEDED_PI: &str =
    r#"{"id":"pi_capture","object":"payment_intent","status":"succeeded","amount":1234}"#;

#[tokio::test]
async fn stripe_adapter_sends_the_idempotency_key_auth_and_a_stripe_form() {
    let (url, seen) = capture_server((200, SUCCEEDED_PI, Duration::ZERO)).await;
    let s = stripe(&url, "sk_test_capture", Duration::from_secs(5));
    let mut req = charge_req("acme", "inv-42", "pm_1abc", "att-42-1");
    req.provider_customer = "cus_42".into();
    req.amount = dec("1.234");
    req.currency = currency("KWD");
    req.metadata = BTreeMap::from([("period".to_owned(), "2026-01".to_owned())]);
    assert_eq!(
        s.charge(&req).await,
        Ok(ChargeOutcome::Succeeded {
            provider_reference: "pi_capture".into()
        })
    );
    // The retry of the same attempt sends the same key.
    s.charge(&req).await.unwrap();
    let mut jpy = req.clone();
    jpy.amount = dec("1200");
    jpy.currency = currency("JPY");
    jpy.idempotency_key = "att-43-1".into();
    s.charge(&jpy).await.unwrap();

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    let first = &seen[0];
    assert_eq!(first.request_line, "POST /v1/payment_intents HTTP/1.1");
    assert_eq!(first.headers["idempotency-key"], "att-42-1");
    assert_eq!(first.headers["authorization"], "Bearer sk_test_capture");
    assert_eq!(
        first.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    let form: Vec<(&str, &str)> = first
        .form
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        form,
        [
            ("amount", "1234"),
            ("currency", "kwd"),
            ("customer", "cus_42"),
            ("payment_method", "pm_1abc"),
            ("confirm", "true"),
            ("off_session", "true"),
            ("description", "invoice inv-42"),
            ("metadata[attempt_id]", "att-42-1"),
            ("metadata[invoice_id]", "inv-42"),
            ("metadata[period]", "2026-01"),
            ("metadata[tenant_id]", "acme"),
        ]
    );
    assert_eq!(seen[1].headers["idempotency-key"], "att-42-1");
    assert_eq!(seen[1].form, first.form);
    assert_eq!(seen[2].headers["idempotency-key"], "att-43-1");
    assert!(seen[2].form.contains(&("amount".into(), "1200".into())));
    assert!(seen[2].form.contains(&("currency".into(), "jpy".into())));

    // The other calls carry their keys too.
    let (url, seen) = capture_server((
        200,
        r#"{"id":"re_1","object":"refund","status":"pending"}"#,
        Duration::ZERO,
    ))
    .await;
    let s = stripe(&url, "sk_test_capture", Duration::from_secs(5));
    let refund = s
        .refund(&RefundRequest {
            tenant_id: "acme".into(),
            charge_reference: "pi_capture".into(),
            amount: dec("0.50"),
            currency: currency("EUR"),
            idempotency_key: "refund-7".into(),
            metadata: BTreeMap::new(),
        })
        .await;
    assert_eq!(
        refund,
        Ok(RefundOutcome::Pending {
            provider_reference: "re_1".into()
        })
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[0].request_line, "POST /v1/refunds HTTP/1.1");
    assert_eq!(seen[0].headers["idempotency-key"], "refund-7");
    assert_eq!(
        seen[0].form[..2],
        [
            ("payment_intent".to_owned(), "pi_capture".to_owned()),
            ("amount".to_owned(), "50".to_owned())
        ]
    );
}

#[tokio::test]
async fn stripe_adapter_maps_declines_errors_and_timeouts() {
    let req = charge_req("acme", "inv-1", "pm_1abc", "att-1");
    let charge = |answer: Answer, timeout: Duration| {
        let req = req.clone();
        async move {
            let (url, seen) = capture_server(answer).await;
            let out = stripe(&url, "sk_test_capture", timeout).charge(&req).await;
            let n = seen.lock().unwrap().len();
            (out, n)
        }
    };
    let decline = r#"{"error":{"type":"card_error","code":"card_declined","decline_code":"lost_card","message":"Your card was declined."}}"#;
    assert_eq!(
        charge((402, decline, Duration::ZERO), Duration::from_secs(5)).await,
        (
            Ok(ChargeOutcome::Declined {
                code: "lost_card".into(),
                message: "Your card was declined.".into(),
                retryable: false
            }),
            1
        )
    );
    let invalid = r#"{"error":{"type":"invalid_request_error","code":"parameter_invalid_integer","param":"amount","message":"Invalid integer: x"}}"#;
    let (out, _) = charge((400, invalid, Duration::ZERO), Duration::from_secs(5)).await;
    assert_eq!(
        out,
        Err(ProviderError::Permanent {
            code: Some("parameter_invalid_integer".into()),
            message: "HTTP 400: Invalid integer: x".into()
        })
    );
    let (out, _) = charge((429, "{}", Duration::ZERO), Duration::from_secs(5)).await;
    assert_eq!(out.unwrap_err().code(), Some("rate_limited"));
    let (out, _) = charge((503, "unavailable", Duration::ZERO), Duration::from_secs(5)).await;
    let e = out.unwrap_err();
    assert!(e.is_transient());
    assert_eq!(e.code(), Some("server_error"));
    // No answer within the timeout: transient, so the caller retries with the same key.
    let started = std::time::Instant::now();
    let (out, n) = charge(
        (200, SUCCEEDED_PI, Duration::from_secs(5)),
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(n, 1, "the request reached the server");
    let e = out.unwrap_err();
    assert!(e.is_transient());
    assert_eq!(e.code(), Some("timeout"));
    assert!(started.elapsed() < Duration::from_secs(3));
    // Nobody listening: transient too.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let e = stripe(&url, "sk_test_capture", Duration::from_secs(2))
        .charge(&req)
        .await
        .unwrap_err();
    assert!(e.is_transient());
    assert_eq!(e.code(), Some("connection"));
    // An amount finer than the currency's minor unit never leaves the process.
    let (url, seen) = capture_server((200, SUCCEEDED_PI, Duration::ZERO)).await;
    let mut fine = req.clone();
    fine.amount = dec("12.345");
    let e = stripe(&url, "sk_test_capture", Duration::from_secs(2))
        .charge(&fine)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("amount_precision"));
    assert!(seen.lock().unwrap().is_empty());
}
