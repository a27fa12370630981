//! The management API on the real stack (query-api publishing, the invoicer materializing): customers, the
//! catalog, subscriptions, test clocks and invoices read back right after they are written; every bad request
//! answered with a problem+json naming the field and nothing published for it (the topics' end offsets do not
//! move); Idempotency-Key replays and conflicts.

use std::time::Duration;

use billing_tests::{eventually, high_watermarks, Services, TestEnv};
use serde_json::{json, Value};

const TENANT: &str = "acme";

/// Test settings: writes may wait for the invoicer's first group join.
async fn env(name: &str) -> TestEnv {
    let mut env = TestEnv::new(name).await;
    env.settings.query_api.write_wait = Duration::from_secs(60);
    env
}

fn metric() -> Value {
    json!({"code": "api_calls", "name": "API calls", "aggregation": "count_agg"})
}

fn plan(code: &str, currency: &str, amount: &str) -> Value {
    json!({
        "code": code,
        "name": code,
        "interval": "monthly",
        "currency": currency,
        "amount": amount,
        "pay_in_advance": true,
        "charges": [{
            "billable_metric_code": "api_calls",
            "charge_model": "graduated",
            "properties": {"graduated_ranges": [
                {"from_value": 0, "to_value": 100, "per_unit_amount": "0", "flat_amount": "0"},
                {"from_value": 101, "to_value": null, "per_unit_amount": "0.01", "flat_amount": "0"}
            ]}
        }]
    })
}

fn customer(id: &str, currency: &str) -> Value {
    json!({"customer_id": id, "name": format!("Customer {id}"), "currency": currency})
}

/// End offsets of the lifecycle and catalog topics.
async fn ends(env: &TestEnv) -> (Vec<(i32, i64)>, Vec<(i32, i64)>) {
    (
        high_watermarks(&env.settings, &env.topics.lifecycle).await,
        high_watermarks(&env.settings, &env.topics.catalog).await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_are_read_back_at_once() {
    let env = env("mgmt_ryw").await;
    let services = Services::start(&env.settings).await;
    let api = services.api_for(TENANT).await;

    // Customers: created, read back, listed newest first with a cursor.
    let c = api
        .created(
            "/v1/customers",
            json!({
                "customer_id": "cus-1", "name": "Acme SA", "email": "billing@acme.test", "currency": "eur",
                "timezone": "Europe/Paris", "billing_country": "fr",
                "address": {"line1": "1 rue de la Paix", "city": "Paris", "postal_code": "75002", "country": "FR"},
                "tax_ids": ["FR123"], "invoice_grace_period_days": 3, "net_payment_term_days": 30,
                "metadata": {"crm": "42"}
            }),
            201,
        )
        .await;
    assert_eq!(c["customer_id"], "cus-1");
    assert_eq!(c["currency"], "EUR");
    assert_eq!(c["billing_country"], "FR");
    assert_eq!(c["metadata"]["crm"], "42");
    let got = api.get("/v1/customers/cus-1").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, c);
    for id in ["cus-2", "cus-3"] {
        api.created("/v1/customers", customer(id, "EUR"), 201).await;
    }
    let page = api.get("/v1/customers?limit=2").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let ids: Vec<&str> = page.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["customer_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["cus-3", "cus-2"]);
    assert_eq!(page.body["has_more"], true);
    let rest = api.get("/v1/customers?limit=2&starting_after=cus-2").await;
    assert_eq!(rest.body["data"][0]["customer_id"], "cus-1");
    assert_eq!(rest.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(rest.body["has_more"], false);
    // An update changes the fields given; the currency cannot change.
    let updated = api
        .created(
            "/v1/customers/cus-1",
            json!({"name": "Acme SAS", "net_payment_term_days": 45}),
            200,
        )
        .await;
    assert_eq!(updated["name"], "Acme SAS");
    assert_eq!(updated["net_payment_term_days"], 45);
    assert_eq!(updated["email"], "billing@acme.test");

    // Without waiting: 202 with the event id, visible a moment later.
    let later = api
        .post("/v1/customers?wait_seconds=0", customer("cus-later", "EUR"))
        .await;
    assert_eq!(later.status, 202, "{}", later.body);
    assert_eq!(later.body["status"], "pending");
    assert!(later.body["event_id"].as_str().unwrap().starts_with("evt_"));
    eventually(Duration::from_secs(60), "the pending customer", || async {
        (api.get("/v1/customers/cus-later").await.status == 200).then_some(())
    })
    .await;

    // The catalog: a metric and plans, Lago-style charge properties served back as objects.
    let m = api.created("/v1/billable_metrics", metric(), 201).await;
    assert_eq!(m["aggregation"], "count");
    let basic = api
        .created("/v1/plans", plan("basic", "EUR", "10.00"), 201)
        .await;
    assert_eq!(
        basic["charges"][0]["properties"]["graduated_ranges"][1]["per_unit_amount"],
        "0.01"
    );
    assert_eq!(basic["charges"][0]["id"], "api_calls");
    api.created("/v1/plans", plan("pro", "EUR", "20.00"), 201)
        .await;
    let updated = api
        .created("/v1/plans/pro", json!({"amount": "25.00"}), 200)
        .await;
    assert_eq!(updated["amount"], "25.00");
    let plans = api.get("/v1/plans").await;
    assert_eq!(plans.body["data"].as_array().unwrap().len(), 2);
    assert_eq!(api.get("/v1/billable_metrics/api_calls").await.status, 200);

    // A subscription, then an upgrade (immediate by default), a pause, a resume and a cancellation.
    let s = api
        .created(
            "/v1/subscriptions",
            json!({"subscription_id": "sub-1", "customer_id": "cus-1", "plan_code": "basic",
                   "started_at": "2026-01-01T00:00:00Z", "billing_anchor_day": 15}),
            201,
        )
        .await;
    assert_eq!(s["status"], "active");
    assert_eq!(s["billing_anchor_day"], 15);
    let s = api
        .created(
            "/v1/subscriptions/sub-1/change",
            json!({"plan_code": "pro", "effective_at": "2026-01-10T00:00:00Z"}),
            200,
        )
        .await;
    assert_eq!(s["plan_code"], "pro");
    assert_eq!(s["changes"][0]["at_period_end"], false);
    let s = api
        .created(
            "/v1/subscriptions/sub-1/pause",
            json!({"effective_at": "2026-01-20T00:00:00Z"}),
            200,
        )
        .await;
    assert_eq!(s["status"], "paused");
    let s = api
        .created(
            "/v1/subscriptions/sub-1/resume",
            json!({"effective_at": "2026-01-25T00:00:00Z"}),
            200,
        )
        .await;
    assert_eq!(s["status"], "active");
    let s = api
        .created(
            "/v1/subscriptions/sub-1/cancel",
            json!({"at_period_end": true, "effective_at": "2026-02-01T00:00:00Z"}),
            200,
        )
        .await;
    assert_eq!(s["status"], "canceled");
    assert_eq!(s["cancel_at_period_end"], true);
    assert_eq!(api.get("/v1/subscriptions/sub-1").await.body, s);
    let subs = api.get("/v1/customers/cus-1/subscriptions").await;
    assert_eq!(subs.body["data"][0]["subscription_id"], "sub-1");

    // A test clock, a customer on it, a bill run: a draft during the grace period, finalized on request.
    let clock = api
        .created(
            "/v1/test_clocks",
            json!({"frozen_time": "2026-01-01T00:00:00Z", "name": "january"}),
            201,
        )
        .await;
    assert_eq!(clock["status"], "ready", "{clock}");
    let clock_id = clock["id"].as_str().unwrap().to_owned();
    assert!(clock_id.starts_with("clock_"));
    api.created(
        "/v1/customers",
        json!({"customer_id": "clocked", "currency": "EUR", "test_clock_id": clock_id,
               "invoice_grace_period_days": 3}),
        201,
    )
    .await;
    let s = api
        .created(
            "/v1/subscriptions",
            json!({"subscription_id": "sub-clocked", "customer_id": "clocked", "plan_code": "basic"}),
            201,
        )
        .await;
    assert_eq!(s["started_at"], "2026-01-01T00:00:00Z", "the clock's now");
    let advanced = api
        .created(
            &format!("/v1/test_clocks/{clock_id}/advance"),
            json!({"frozen_time": "2026-01-02T00:00:00Z", "wait_seconds": 120}),
            200,
        )
        .await;
    assert_eq!(advanced["status"], "ready");
    let behind = api
        .post(
            &format!("/v1/test_clocks/{clock_id}/advance"),
            json!({"frozen_time": "2026-01-01T12:00:00Z"}),
        )
        .await;
    behind.problem(422, "frozen_time");
    let got = api.get(&format!("/v1/test_clocks/{clock_id}")).await;
    assert_eq!(got.body["frozen_time"], "2026-01-02T00:00:00Z");
    assert_eq!(got.body["status"], "ready");

    let invoices = api.get("/v1/customers/clocked/invoices").await;
    assert_eq!(invoices.status, 200, "{}", invoices.body);
    let drafts = invoices.body["data"].as_array().unwrap();
    assert_eq!(drafts.len(), 1, "{}", invoices.body);
    assert_eq!(drafts[0]["status"], "draft");
    let invoice_id = drafts[0]["invoice_id"].as_str().unwrap().to_owned();
    let filtered = api
        .get("/v1/invoices?customer_id=clocked&status=draft&period_from=2026-01-01&period_to=2026-01-31")
        .await;
    assert_eq!(filtered.body["data"][0]["invoice_id"], invoice_id.as_str());
    let none = api.get("/v1/invoices?status=finalized").await;
    assert_eq!(none.body["data"], json!([]));
    let finalized = api
        .created(
            &format!("/v1/invoices/{invoice_id}/finalize"),
            json!({}),
            200,
        )
        .await;
    assert_eq!(finalized["status"], "finalized");
    assert!(finalized["number"].is_string(), "{finalized}");
    api.post(&format!("/v1/invoices/{invoice_id}/finalize"), json!({}))
        .await
        .problem(409, "finalized");
    assert_eq!(
        api.get(&format!("/v1/invoices/{invoice_id}")).await.body,
        finalized
    );

    services.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_name_the_field_and_publish_nothing() {
    let env = env("mgmt_bad").await;
    let services = Services::start(&env.settings).await;
    let api = services.api_for(TENANT).await;
    api.created("/v1/customers", customer("eur-1", "EUR"), 201)
        .await;
    api.created("/v1/billable_metrics", metric(), 201).await;
    api.created("/v1/plans", plan("basic", "EUR", "10"), 201)
        .await;
    api.created("/v1/plans", plan("dollar", "USD", "10"), 201)
        .await;
    let sub =
        |id: &str| json!({"subscription_id": id, "customer_id": "eur-1", "plan_code": "basic"});
    api.created("/v1/subscriptions", sub("live"), 201).await;
    api.created("/v1/subscriptions", sub("gone"), 201).await;
    api.created("/v1/subscriptions/gone/cancel", json!({}), 200)
        .await;

    let before = ends(&env).await;
    // Unknown customer (a reference in the body).
    api.post(
        "/v1/subscriptions",
        json!({"subscription_id": "s1", "customer_id": "nobody", "plan_code": "basic"}),
    )
    .await
    .problem(422, "customer_id");
    // A plan in another currency than the customer's.
    api.post(
        "/v1/subscriptions",
        json!({"subscription_id": "s1", "customer_id": "eur-1", "plan_code": "dollar"}),
    )
    .await
    .problem(422, "plan_code");
    // Anchor day out of 1..=31.
    api.post(
        "/v1/subscriptions",
        json!({"subscription_id": "s1", "customer_id": "eur-1", "plan_code": "basic", "billing_anchor_day": 32}),
    )
    .await
    .problem(422, "billing_anchor_day");
    // Changes of a canceled subscription; resume of one that is not paused.
    api.post(
        "/v1/subscriptions/gone/change",
        json!({"plan_code": "basic"}),
    )
    .await
    .problem(409, "canceled");
    api.post("/v1/subscriptions/gone/pause", json!({}))
        .await
        .problem(409, "canceled");
    api.post("/v1/subscriptions/live/resume", json!({}))
        .await
        .problem(409, "not paused");
    api.post("/v1/subscriptions/nothing/pause", json!({}))
        .await
        .problem(404, "nothing");
    // Duplicate ids.
    api.post("/v1/customers", customer("eur-1", "EUR"))
        .await
        .problem(409, "customer_id");
    api.post("/v1/subscriptions", sub("live"))
        .await
        .problem(409, "subscription_id");
    api.post("/v1/plans", plan("basic", "EUR", "10"))
        .await
        .problem(409, "code");
    // Unknown fields and malformed JSON.
    api.post(
        "/v1/customers",
        json!({"customer_id": "x", "currency": "EUR", "colour": "blue"}),
    )
    .await
    .problem(400, "colour");
    api.post(
        "/v1/customers",
        json!({"customer_id": "x", "currency": "EUR", "address": {"town": "Lyon"}}),
    )
    .await
    .problem(400, "address.town");
    api.post_raw("/v1/customers", r#"{"customer_id": "x", "currency": "#)
        .await
        .problem(400, "body");
    api.post(
        "/v1/customers",
        json!({"customer_id": "x", "currency": "EUR", "invoice_grace_period_days": "3"}),
    )
    .await
    .problem(400, "invoice_grace_period_days");
    // Values that cannot be accepted.
    api.post(
        "/v1/customers",
        json!({"customer_id": "x", "currency": "EUR", "timezone": "Mars/Olympus"}),
    )
    .await
    .problem(422, "timezone");
    api.post(
        "/v1/customers",
        json!({"customer_id": "x", "currency": "EURO"}),
    )
    .await
    .problem(422, "currency");
    api.post(
        "/v1/customers",
        json!({"customer_id": "x", "currency": "EUR", "invoice_grace_period_days": -1}),
    )
    .await
    .problem(422, "invoice_grace_period_days");
    api.post(
        "/v1/customers",
        json!({"customer_id": "x", "currency": "EUR", "net_payment_term_days": -30}),
    )
    .await
    .problem(422, "net_payment_term_days");
    api.post("/v1/customers/eur-1", json!({"currency": "USD"}))
        .await
        .problem(422, "currency");
    let mut bad_plan = plan("p2", "EUR", "10");
    bad_plan["charges"][0]["billable_metric_code"] = json!("unknown_metric");
    api.post("/v1/plans", bad_plan)
        .await
        .problem(422, "charges[0].billable_metric_code");
    let mut bad_plan = plan("p2", "EUR", "-1");
    bad_plan["charges"][0]["properties"] = json!({"graduated_ranges": []});
    let r = api.post("/v1/plans", bad_plan).await;
    r.problem(422, "amount");
    r.problem(422, "charges[0].properties");
    api.post("/v1/customers?limit=1", customer("y", "EUR"))
        .await
        .problem(400, "limit");
    api.get("/v1/customers?limit=1000")
        .await
        .problem(400, "limit");

    api.post("/v1/customers?wait_seconds=301", customer("z", "EUR"))
        .await
        .problem(400, "wait_seconds");
    let r = api.get("/v1/subscriptions").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["content-type"], "application/problem+json");

    let after = ends(&env).await;
    assert_eq!(before, after, "a refused request published nothing");
    services.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_keys_replay_answers_and_refuse_other_requests() {
    let env = env("mgmt_idem").await;
    let services = Services::start(&env.settings).await;
    let api = services.api_for(TENANT).await;

    let first = api
        .post_keyed("/v1/customers", "key-1", customer("cus-1", "EUR"))
        .await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert!(first.headers.get("idempotent-replayed").is_none());
    let before = ends(&env).await;
    let again = api
        .post_keyed("/v1/customers", "key-1", customer("cus-1", "EUR"))
        .await;
    assert_eq!(again.status, 201);
    assert_eq!(again.body, first.body);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    // The same key with another body, or on another path.
    api.post_keyed("/v1/customers", "key-1", customer("cus-2", "EUR"))
        .await
        .problem(409, "Idempotency-Key");
    api.post_keyed("/v1/billable_metrics", "key-1", metric())
        .await
        .problem(409, "Idempotency-Key");
    assert_eq!(
        before,
        ends(&env).await,
        "replays and conflicts publish nothing"
    );

    // A refused request frees its key: the client fixes the body and retries with the same key.
    api.post_keyed("/v1/customers", "key-2", customer("cus-2", "EURO"))
        .await
        .problem(422, "currency");
    let fixed = api
        .post_keyed("/v1/customers", "key-2", customer("cus-2", "EUR"))
        .await;
    assert_eq!(fixed.status, 201, "{}", fixed.body);
    // Keys belong to a tenant: another tenant's identical key is its own.
    let other = reqwest::Client::builder()
        .timeout(Duration::from_secs(90))
        .build()
        .unwrap()
        .post(format!("{}/v1/customers", services.api))
        .bearer_auth(services.key("globex").await)
        .header("idempotency-key", "key-1")
        .json(&customer("cus-1", "EUR"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 201);
    assert!(other.headers().get("idempotent-replayed").is_none());

    // Two concurrent creations of one id: one publishes, the other is refused.
    let (a, b) = tokio::join!(
        api.post("/v1/customers", customer("race", "EUR")),
        api.post("/v1/customers", customer("race", "EUR")),
    );
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [201, 409], "{} {}", a.body, b.body);

    services.shutdown().await;
    env.cleanup().await;
}
