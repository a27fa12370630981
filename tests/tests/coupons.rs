//! Coupons on the real stack (the API, rating, the invoicer, ClickHouse), over four months of a test clock; every
//! amount worked out by hand here. Plan `pro`: 40.00 EUR a month in advance and 0.50 per call in arrears; the
//! tenant's VAT of 20 % applies after the coupons.
//!
//! - `c-rec`, 10 % recurring for 3 invoices: Jan, Feb, Mar 40.00 − 4.00 = 36.00 + 7.20 = 43.20; Apr 48.00;
//! - `c-full`, 100 % once: Jan 0.00 (issued, so the coupon's use is on record); Feb 48.00;
//! - `c-welcome`, 50.00 EUR once, the rest carried over: Jan 40.00 off (0.00), Feb 10.00 off: 30.00 + 6.00 =
//!   36.00; Mar 48.00;
//! - `c-calls`, 50 % forever on the `calls` metric only: Feb (January's 10 calls, 5.00) 40.00 + 2.50 = 42.50 +
//!   8.50 = 51.00; removed on Feb 15, so Mar (February's 4 calls, 2.00) 42.00 + 8.40 = 50.40.
//!
//! Each invoice reconciles (Σ lines = subtotal; subtotal − discounts + tax = total) and ClickHouse `invoice_lines`
//! gives the API's discount and total. Refused with a problem+json naming the field, nothing published: a coupon
//! in another currency, an expired coupon, a non-reusable coupon applied twice, a coupon past its redemptions, a
//! rate above 100 %, a recurring coupon without a duration, a limit to an unknown plan.

use std::time::Duration;

use billing_schemas::usage::UsageEvent;
use billing_tests::api::Api;
use billing_tests::invoices::{dec, reconciles};
use billing_tests::{eventually, high_watermarks, Services, TestEnv};
use rust_decimal::Decimal;
use serde_json::{json, Value};

const TENANT: &str = "acme";
const WAIT: Duration = Duration::from_secs(90);

/// The customer's invoices, oldest first, once there are `n` finalized ones.
async fn invoices_of(api: &Api, customer: &str, n: usize) -> Vec<Value> {
    eventually(WAIT, &format!("{n} invoice(s) of {customer}"), || async {
        let r = api
            .get(&format!("/v1/customers/{customer}/invoices?limit=100"))
            .await;
        let mut data: Vec<Value> = r.body["data"].as_array().cloned().unwrap_or_default();
        data.reverse();
        (data.len() >= n && data.iter().all(|i| i["status"] == "finalized")).then_some(data)
    })
    .await
}

fn calls(customer: &str, n: usize, when: &str) -> Vec<UsageEvent> {
    (0..n)
        .map(|i| UsageEvent {
            tenant_id: TENANT.into(),
            event_id: format!("{customer}-{when}-{i}"),
            customer_id: customer.into(),
            metric_code: "calls".into(),
            timestamp: when.parse().unwrap(),
            properties: Default::default(),
        })
        .collect()
}

/// (total, discount_total) of each invoice, oldest first.
fn figures(invoices: &[Value]) -> Vec<(String, String)> {
    invoices
        .iter()
        .map(|i| {
            reconciles(i);
            (
                i["total"].as_str().unwrap().to_owned(),
                i["discount_total"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_months_of_coupons() {
    let mut env = TestEnv::new("coupons").await;
    env.settings.query_api.write_wait = Duration::from_secs(60);
    let services = Services::start(&env.settings).await;
    let api = services.api_for(TENANT).await;

    api.created(
        "/v1/billable_metrics",
        json!({"code": "calls", "aggregation": "count_agg"}),
        201,
    )
    .await;
    api.created(
        "/v1/taxes",
        json!({"code": "vat", "rate": "20", "applied_to_tenant": true}),
        201,
    )
    .await;
    api.created(
        "/v1/plans",
        json!({"code": "pro", "interval": "monthly", "currency": "EUR", "amount": "40.00",
               "pay_in_advance": true, "charges": [{"billable_metric_code": "calls",
               "charge_model": "standard", "properties": {"amount": "0.50"}}]}),
        201,
    )
    .await;

    // Refused coupons: nothing published.
    let catalog_end = high_watermarks(&env.settings, &env.topics.catalog).await;
    let refused = [
        (
            json!({"code": "x", "coupon_type": "percentage", "percentage_rate": "150"}),
            "percentage_rate",
        ),
        (
            json!({"code": "x", "coupon_type": "percentage", "percentage_rate": "5", "frequency": "recurring"}),
            "frequency_duration",
        ),
        (
            json!({"code": "x", "coupon_type": "fixed_amount", "amount": "5"}),
            "amount_currency",
        ),
        (
            json!({"code": "x", "coupon_type": "percentage", "percentage_rate": "5",
                   "applies_to": {"plan_codes": ["nope"]}}),
            "applies_to.plan_codes[0]",
        ),
    ];
    for (body, field) in refused {
        api.post("/v1/coupons", body).await.problem(422, field);
    }
    assert_eq!(
        high_watermarks(&env.settings, &env.topics.catalog).await,
        catalog_end
    );

    let coupons = [
        json!({"code": "three-months", "coupon_type": "percentage", "percentage_rate": "10",
               "frequency": "recurring", "frequency_duration": 3}),
        json!({"code": "full", "coupon_type": "percentage", "percentage_rate": "100"}),
        json!({"code": "welcome", "coupon_type": "fixed_amount", "amount": "50.00", "amount_currency": "EUR",
               "reusable": false}),
        json!({"code": "calls-half", "coupon_type": "percentage", "percentage_rate": "50", "frequency": "forever",
               "applies_to": {"billable_metric_codes": ["calls"]}}),
        json!({"code": "usd-off", "coupon_type": "fixed_amount", "amount": "5", "amount_currency": "USD"}),
        json!({"code": "old", "coupon_type": "percentage", "percentage_rate": "5",
               "expiration_at": "2025-12-31"}),
        json!({"code": "single", "coupon_type": "percentage", "percentage_rate": "1", "max_redemptions": 1}),
    ];
    for c in coupons {
        api.created("/v1/coupons", c, 201).await;
    }
    let got = api.get("/v1/coupons/calls-half").await;
    assert_eq!(
        got.body["applies_to"]["billable_metric_codes"],
        json!(["calls"])
    );

    let clock = api
        .created(
            "/v1/test_clocks",
            json!({"frozen_time": "2026-01-01T00:00:00Z"}),
            201,
        )
        .await;
    let clock = clock["id"].as_str().unwrap().to_owned();
    let assignments = [
        ("c-rec", "three-months"),
        ("c-full", "full"),
        ("c-welcome", "welcome"),
        ("c-calls", "calls-half"),
    ];
    let mut applied = std::collections::BTreeMap::new();
    for (id, coupon) in assignments {
        api.created(
            "/v1/customers",
            json!({"customer_id": id, "name": id, "currency": "EUR", "test_clock_id": clock}),
            201,
        )
        .await;
        api.created(
            "/v1/subscriptions",
            json!({"subscription_id": format!("sub-{id}"), "customer_id": id, "plan_code": "pro",
                   "started_at": "2026-01-01T00:00:00Z"}),
            201,
        )
        .await;
        let a = api
            .created(
                "/v1/applied_coupons",
                json!({"customer_id": id, "coupon_code": coupon}),
                201,
            )
            .await;
        assert_eq!(a["status"], "active", "{a}");
        assert_eq!(a["coupon_code"], coupon);
        applied.insert(id, a["applied_coupon_id"].as_str().unwrap().to_owned());
    }

    // Refused applications: nothing published.
    let lifecycle_end = high_watermarks(&env.settings, &env.topics.lifecycle).await;
    let apply =
        |customer: &str, coupon: &str| json!({"customer_id": customer, "coupon_code": coupon});
    let r = api
        .post("/v1/applied_coupons", apply("c-rec", "usd-off"))
        .await;
    r.problem(422, "coupon_code");
    assert!(
        r.body["detail"].as_str().unwrap().contains("USD"),
        "{}",
        r.body
    );
    api.post("/v1/applied_coupons", apply("c-rec", "old"))
        .await
        .problem(422, "coupon_code");
    api.post("/v1/applied_coupons", apply("c-welcome", "welcome"))
        .await
        .problem(409, "coupon_code");
    api.post("/v1/applied_coupons", apply("nobody", "full"))
        .await
        .problem(422, "customer_id");
    assert_eq!(
        high_watermarks(&env.settings, &env.topics.lifecycle).await,
        lifecycle_end
    );
    api.created("/v1/applied_coupons", apply("c-rec", "single"), 201)
        .await;
    // c-rec's 1 % "single" coupon is removed at once, before any invoice: it never discounts.
    let single_id = api.get("/v1/customers/c-rec/applied_coupons").await.body["data"][1]
        ["applied_coupon_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let removed = api
        .delete(&format!("/v1/customers/c-rec/applied_coupons/{single_id}"))
        .await;
    assert_eq!(removed.status, 200, "{}", removed.body);
    assert_eq!(removed.body["status"], "removed");
    api.post("/v1/applied_coupons", apply("c-full", "single"))
        .await
        .problem(409, "coupon_code");

    env.produce_usage(calls("c-calls", 10, "2026-01-20T10:00:00Z"))
        .await;
    api.advance_clock(&clock, "2026-01-01T01:00:00Z").await;
    // The upcoming invoice of c-welcome (Feb 1), as the bill run will make it: the 10.00 left of its coupon.
    let upcoming = api
        .post("/v1/customers/c-welcome/invoices/preview", json!({}))
        .await;
    assert_eq!(upcoming.status, 200, "{}", upcoming.body);
    assert_eq!(
        (
            upcoming.body["discount_total"].as_str(),
            upcoming.body["total"].as_str()
        ),
        (Some("10.00"), Some("36.00")),
        "{}",
        upcoming.body
    );
    api.advance_clock(&clock, "2026-02-01T01:00:00Z").await;
    env.produce_usage(calls("c-calls", 4, "2026-02-20T10:00:00Z"))
        .await;
    api.advance_clock(&clock, "2026-02-15T01:00:00Z").await;
    let removed = api
        .delete(&format!(
            "/v1/customers/c-calls/applied_coupons/{}",
            applied["c-calls"]
        ))
        .await;
    assert_eq!(removed.status, 200, "{}", removed.body);
    api.advance_clock(&clock, "2026-03-01T01:00:00Z").await;
    api.advance_clock(&clock, "2026-04-01T01:00:00Z").await;

    let rec = invoices_of(&api, "c-rec", 4).await;
    assert_eq!(
        figures(&rec),
        pairs(&[
            ("43.20", "4.00"),
            ("43.20", "4.00"),
            ("43.20", "4.00"),
            ("48.00", "0.00")
        ])
    );
    assert_eq!(rec[0]["coupons"][0]["applied_coupon_id"], applied["c-rec"]);
    assert_eq!(
        rec[0]["coupons"].as_array().unwrap().len(),
        1,
        "the removed coupon never applied"
    );
    let full = invoices_of(&api, "c-full", 4).await;
    assert_eq!(
        figures(&full)[..2],
        pairs(&[("0.00", "40.00"), ("48.00", "0.00")])
    );
    assert_eq!(full[0]["tax_total"], "0.00");
    let welcome = invoices_of(&api, "c-welcome", 4).await;
    assert_eq!(
        figures(&welcome)[..3],
        pairs(&[("0.00", "40.00"), ("36.00", "10.00"), ("48.00", "0.00")])
    );
    let calls = invoices_of(&api, "c-calls", 3).await;
    assert_eq!(
        figures(&calls)[..3],
        pairs(&[("48.00", "0.00"), ("51.00", "2.50"), ("50.40", "0.00")])
    );
    let feb = &calls[1];
    let usage_line = feb["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["kind"] == "usage")
        .unwrap();
    assert_eq!(
        (
            usage_line["amount"].as_str(),
            usage_line["discount"].as_str()
        ),
        (Some("5.00"), Some("2.50"))
    );

    // ClickHouse has each invoice's discount and total as the API shows them.
    let ch = env.clickhouse();
    for inv in rec.iter().chain(&full).chain(&welcome).chain(&calls) {
        let id = inv["invoice_id"].as_str().unwrap();
        let (discount, total): (String, String) =
            eventually(WAIT, "the invoice in ClickHouse", || async {
                ch.query(
                "SELECT toString(sum(discount)), toString(sum(total)) FROM invoice_lines FINAL \
                 WHERE tenant_id = ? AND invoice_id = ? HAVING count() > 0",
            )
            .bind(TENANT)
            .bind(id)
            .fetch_optional::<(String, String)>()
            .await
            .unwrap()
            })
            .await;
        assert_eq!(
            discount.parse::<Decimal>().unwrap(),
            dec(&inv["discount_total"]),
            "{id}"
        );
        assert_eq!(
            total.parse::<Decimal>().unwrap(),
            dec(&inv["total"]),
            "{id}"
        );
    }

    services.shutdown().await;
    env.cleanup().await;
}

/// A wallet's credits pay invoices after tax and run out mid-invoice; its ledger and balance; bought credits have
/// an invoice of their own; a top-up sent twice with one `Idempotency-Key` is applied once. Plan `pro` (40.00 +
/// 20 % VAT = 48.00 a month), wallet of 30.00 granted + 50.00 bought on Jan 1:
///
/// - Jan 1 invoice 48.00: 48.00 of credits, nothing due (32.00 left);
/// - a top-up of 5.00 granted on Jan 10 (sent twice, applied once): 37.00 left;
/// - Feb 1 invoice 48.00: the 37.00 left, 11.00 due, charged to the card;
/// - Mar 1 invoice 48.00: no credit left, 48.00 due.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wallets_pay_invoices_after_tax_and_run_out() {
    let mut env = TestEnv::new("wallets").await;
    env.settings.query_api.write_wait = Duration::from_secs(60);
    let services = Services::start(&env.settings).await;
    let payments = tokio::spawn(billing_payments::run(
        env.settings.clone(),
        services.stop.clone(),
    ));
    let api = services.api_for(TENANT).await;
    api.created(
        "/v1/taxes",
        json!({"code": "vat", "rate": "20", "applied_to_tenant": true}),
        201,
    )
    .await;
    api.created(
        "/v1/plans",
        json!({"code": "pro", "interval": "monthly", "currency": "EUR", "amount": "40.00",
               "pay_in_advance": true}),
        201,
    )
    .await;
    let clock = api
        .created(
            "/v1/test_clocks",
            json!({"frozen_time": "2026-01-01T00:00:00Z"}),
            201,
        )
        .await;
    let clock = clock["id"].as_str().unwrap().to_owned();
    api.created(
        "/v1/customers",
        json!({"customer_id": "c-wallet", "name": "W", "currency": "EUR", "test_clock_id": clock}),
        201,
    )
    .await;
    api.created(
        "/v1/customers/c-wallet/payment_methods",
        json!({"kind": "card", "token": "pm_card_visa"}),
        201,
    )
    .await;
    api.created(
        "/v1/subscriptions",
        json!({"subscription_id": "sub-w", "customer_id": "c-wallet", "plan_code": "pro",
               "started_at": "2026-01-01T00:00:00Z"}),
        201,
    )
    .await;
    // Refused, nothing published: negative credits, another currency.
    let lifecycle_end = high_watermarks(&env.settings, &env.topics.lifecycle).await;
    api.post(
        "/v1/wallets",
        json!({"customer_id": "c-wallet", "granted_credits": "-5"}),
    )
    .await
    .problem(422, "granted_credits");
    api.post(
        "/v1/wallets",
        json!({"customer_id": "c-wallet", "currency": "USD"}),
    )
    .await
    .problem(422, "currency");
    assert_eq!(
        high_watermarks(&env.settings, &env.topics.lifecycle).await,
        lifecycle_end
    );
    let w = api
        .created(
            "/v1/wallets",
            json!({"customer_id": "c-wallet", "name": "Prepaid", "granted_credits": "30",
                   "paid_credits": "50.00"}),
            201,
        )
        .await;
    let wallet = w["wallet_id"].as_str().unwrap().to_owned();
    assert_eq!(w["balance"], "80.00", "{w}");
    api.post("/v1/wallets", json!({"customer_id": "c-wallet"}))
        .await
        .problem(409, "customer_id");
    // The bought credits' invoice: 50.00, not taxed, numbered and collected like any invoice.
    let purchase_id = w["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "purchased")
        .unwrap()["invoice_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let purchase = eventually(WAIT, "the credits' invoice", || async {
        let r = api.get(&format!("/v1/invoices/{purchase_id}")).await;
        (r.status == 200 && r.body["number"].is_string()).then_some(r.body)
    })
    .await;
    assert_eq!(purchase["lines"][0]["kind"], "prepaid_credits");
    assert_eq!(
        (purchase["total"].as_str(), purchase["tax_total"].as_str()),
        (Some("50.00"), Some("0.00"))
    );

    api.advance_clock(&clock, "2026-01-01T01:00:00Z").await;
    let path = format!("/v1/customers/c-wallet/wallets/{wallet}/transactions");
    api.post(&path, json!({"granted_credits": "-1"}))
        .await
        .problem(422, "granted_credits");
    api.post(&path, json!({}))
        .await
        .problem(422, "paid_credits");
    api.advance_clock(&clock, "2026-01-10T00:00:00Z").await;
    let first = api
        .post_keyed(&path, "top-up-1", json!({"granted_credits": "5"}))
        .await;
    assert_eq!(first.status, 201, "{}", first.body);
    let again = api
        .post_keyed(&path, "top-up-1", json!({"granted_credits": "5"}))
        .await;
    assert_eq!(again.status, 201);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.body["transaction_id"], first.body["transaction_id"]);
    // The upcoming invoice (Feb 1) already takes the 37.00 of credits left.
    let upcoming = api
        .post("/v1/customers/c-wallet/invoices/preview", json!({}))
        .await;
    assert_eq!(upcoming.status, 200, "{}", upcoming.body);
    assert_eq!(
        (
            upcoming.body["total"].as_str(),
            upcoming.body["credits_total"].as_str(),
            upcoming.body["amount_due"].as_str()
        ),
        (Some("48.00"), Some("37.00"), Some("11.00")),
        "{}",
        upcoming.body
    );
    api.advance_clock(&clock, "2026-02-01T01:00:00Z").await;
    api.advance_clock(&clock, "2026-03-01T01:00:00Z").await;

    // Subscription invoices (the credits' invoice is the one-off among them), oldest first.
    let all = invoices_of(&api, "c-wallet", 4).await;
    let subs: Vec<&Value> = all.iter().filter(|i| i["one_off"] != true).collect();
    let due: Vec<(&str, &str, &str)> = subs
        .iter()
        .map(|i| {
            (
                i["total"].as_str().unwrap(),
                i["credits_total"].as_str().unwrap(),
                i["amount_due"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        due,
        [
            ("48.00", "48.00", "0.00"),
            ("48.00", "37.00", "11.00"),
            ("48.00", "0.00", "48.00")
        ]
    );
    assert_eq!(subs[1]["credits"][0]["wallet_id"], wallet.as_str());
    // February's 11.00 is charged to the card, not the invoice's 48.00.
    let feb_id = subs[1]["invoice_id"].as_str().unwrap().to_owned();
    let paid = eventually(WAIT, "February's invoice paid", || async {
        let r = api.get(&format!("/v1/invoices/{feb_id}")).await;
        (r.body["payment_status"] == "paid").then_some(r.body)
    })
    .await;
    assert_eq!(paid["payment"]["amount_paid"], "11.00", "{paid}");
    // An invoice paid in part by credits cannot be voided.
    let jan_id = subs[0]["invoice_id"].as_str().unwrap();
    let v = api
        .post(&format!("/v1/invoices/{jan_id}/void"), json!({}))
        .await;
    v.problem(409, "invoice_id");

    let ledger = api
        .get(&format!("/v1/customers/c-wallet/wallets/{wallet}"))
        .await;
    assert_eq!(ledger.status, 200, "{}", ledger.body);
    assert_eq!(ledger.body["balance"], "0.00", "{}", ledger.body);
    let kinds: Vec<(&str, &str)> = ledger.body["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["type"].as_str().unwrap(), t["amount"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("granted", "30"),
            ("purchased", "50.00"),
            ("consumed", "48.00"),
            ("granted", "5"),
            ("consumed", "37.00")
        ]
    );

    services.shutdown().await;
    payments.await.unwrap().expect("payments ended cleanly");
    env.cleanup().await;
}
