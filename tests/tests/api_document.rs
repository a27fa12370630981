//! Every answer matches the OpenAPI document (`/openapi.json`): on the real stack (rating, the invoicer, payments
//! and query-api), one tenant's catalog, customers, subscriptions, clocks, invoices, payments, credit notes,
//! wallets, coupons, webhooks, keys, audit, analytics and GraphQL are created and read through **every operation of
//! the document**; each answer, success or problem, is validated (JSON Schema 2020-12, the `jsonschema` crate)
//! against the schema the document gives for its operation, status and content type. Schemathesis checks the answers
//! it provokes with generated requests; this checks the answers of real resources.

use std::collections::BTreeSet;
use std::time::Duration;

use billing_runtime::auth::Role;
use billing_tests::{api_key, Services, TestEnv};
use serde_json::{json, Value};

/// A client that checks every answer against the document and records which operations it called.
struct Checked {
    http: reqwest::Client,
    base: String,
    key: String,
    doc: Value,
    called: BTreeSet<(String, String)>,
    checked: usize,
}

impl Checked {
    /// Calls `method template` (its `{…}` filled with `args` in order) and checks the answer; returns status and
    /// body.
    async fn call(
        &mut self,
        method: &str,
        template: &str,
        args: &[&str],
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut path = String::new();
        let mut args = args.iter();
        for (i, segment) in template.split('/').enumerate() {
            if i > 0 {
                path.push('/');
            }
            if segment.starts_with('{') {
                path.push_str(args.next().expect("an argument per parameter"));
            } else {
                path.push_str(segment);
            }
        }
        let url = format!("{}{path}", self.base);
        let mut req = match method {
            "GET" => self.http.get(&url),
            "POST" => self.http.post(&url).json(&body.unwrap_or(json!({}))),
            _ => self.http.delete(&url),
        };
        req = req.bearer_auth(&self.key);
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let answer: Value = resp.json().await.unwrap();
        let template_path = template.split('?').next().unwrap();
        self.check(method, template_path, status, &content_type, &answer);
        self.called
            .insert((method.to_owned(), template_path.to_owned()));
        (status, answer)
    }

    /// Calls and asserts the status.
    async fn expect(
        &mut self,
        status: u16,
        method: &str,
        template: &str,
        args: &[&str],
        body: Option<Value>,
    ) -> Value {
        let (got, answer) = self.call(method, template, args, body).await;
        assert_eq!(got, status, "{method} {template} {args:?}: {answer}");
        answer
    }

    /// The answer against the document's schema for the operation, status and content type.
    fn check(
        &mut self,
        method: &str,
        template: &str,
        status: u16,
        content_type: &str,
        answer: &Value,
    ) {
        let operation = &self.doc["paths"][template][method.to_ascii_lowercase()];
        assert!(
            operation.is_object(),
            "{method} {template} is not in the document"
        );
        let response = &operation["responses"][status.to_string()];
        assert!(
            response.is_object(),
            "{method} {template} answered {status}, which the document does not list: {answer}"
        );
        let schema = &response["content"][content_type]["schema"];
        assert!(
            schema.is_object(),
            "{method} {template} {status}: no schema for {content_type:?} in the document"
        );
        let mut root = schema.clone();
        root["components"] = self.doc["components"].clone();
        let validator = jsonschema::draft202012::new(&root).unwrap_or_else(|e| {
            panic!("{method} {template} {status}: the schema does not compile: {e}")
        });
        let errors: Vec<String> = validator
            .iter_errors(answer)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{method} {template} {status}: the answer contradicts the document:\n{}\n{answer:#}",
            errors.join("\n")
        );
        self.checked += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_operation_answers_what_the_document_says() {
    let mut env = TestEnv::new("api_document").await;
    env.settings.query_api.write_wait = Duration::from_secs(60);
    let services = Services::start(&env.settings).await;
    let payments = tokio::spawn(billing_payments::run(
        env.settings.clone(),
        services.stop.clone(),
    ));
    let key = services.key("acme").await;
    let doc: Value = reqwest::get(format!("{}/openapi.json", services.api))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut api = Checked {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap(),
        base: services.api.clone(),
        key,
        doc,
        called: BTreeSet::new(),
        checked: 0,
    };

    // The catalog: each resource created, updated, read and listed.
    api.expect(
        201,
        "POST",
        "/v1/taxes",
        &[],
        Some(json!({"code": "vat", "name": "VAT", "rate": "20"})),
    )
    .await;
    api.expect(
        200,
        "POST",
        "/v1/taxes/{code}",
        &["vat"],
        Some(json!({"name": "TVA"})),
    )
    .await;
    api.expect(200, "GET", "/v1/taxes/{code}", &["vat"], None)
        .await;
    api.expect(200, "GET", "/v1/taxes", &[], None).await;
    api.expect(
        201,
        "POST",
        "/v1/billable_metrics",
        &[],
        Some(json!({"code": "calls", "name": "API calls", "aggregation": "count"})),
    )
    .await;
    api.expect(
        200,
        "POST",
        "/v1/billable_metrics/{code}",
        &["calls"],
        Some(json!({"name": "Calls"})),
    )
    .await;
    api.expect(200, "GET", "/v1/billable_metrics/{code}", &["calls"], None)
        .await;
    api.expect(200, "GET", "/v1/billable_metrics", &[], None)
        .await;
    let plan = json!({"code": "basic", "name": "Basic", "interval": "monthly", "currency": "EUR",
        "amount": "10.00", "pay_in_advance": true, "tax_codes": ["vat"],
        "charges": [{"billable_metric_code": "calls", "charge_model": "standard",
                     "properties": {"amount": "0.01"}}]});
    api.expect(201, "POST", "/v1/plans", &[], Some(plan)).await;
    api.expect(
        201,
        "POST",
        "/v1/plans",
        &[],
        Some(json!({"code": "pro", "interval": "monthly", "currency": "EUR", "amount": "30.00"})),
    )
    .await;
    api.expect(
        200,
        "POST",
        "/v1/plans/{code}",
        &["pro"],
        Some(json!({"amount": "35.00"})),
    )
    .await;
    api.expect(200, "GET", "/v1/plans/{code}", &["basic"], None)
        .await;
    api.expect(200, "GET", "/v1/plans", &[], None).await;
    api.expect(
        201,
        "POST",
        "/v1/add_ons",
        &[],
        Some(
            json!({"code": "setup", "name": "Setup", "amount": "25.00", "amount_currency": "EUR"}),
        ),
    )
    .await;
    api.expect(
        200,
        "POST",
        "/v1/add_ons/{code}",
        &["setup"],
        Some(json!({"description": "One-time setup"})),
    )
    .await;
    api.expect(200, "GET", "/v1/add_ons/{code}", &["setup"], None)
        .await;
    api.expect(200, "GET", "/v1/add_ons", &[], None).await;
    api.expect(
        201,
        "POST",
        "/v1/coupons",
        &[],
        Some(
            json!({"code": "welcome", "coupon_type": "percentage", "percentage_rate": "10",
                    "frequency": "recurring", "frequency_duration": 3}),
        ),
    )
    .await;
    api.expect(
        200,
        "POST",
        "/v1/coupons/{code}",
        &["welcome"],
        Some(json!({"name": "Welcome"})),
    )
    .await;
    api.expect(200, "GET", "/v1/coupons/{code}", &["welcome"], None)
        .await;
    api.expect(200, "GET", "/v1/coupons", &[], None).await;

    // A clock, a customer on it with a card, a subscription and its changes.
    let clock = api
        .expect(
            201,
            "POST",
            "/v1/test_clocks",
            &[],
            Some(json!({"frozen_time": "2026-01-01T00:00:00Z", "name": "doc"})),
        )
        .await;
    let clock_id = clock["id"].as_str().unwrap().to_owned();
    api.expect(200, "GET", "/v1/test_clocks/{clock_id}", &[&clock_id], None)
        .await;
    api.expect(
        201,
        "POST",
        "/v1/customers",
        &[],
        Some(json!({"customer_id": "cus-1", "name": "One", "currency": "EUR", "email": "one@example.com",
                    "test_clock_id": clock_id, "address": {"line1": "1 rue de la Paix", "city": "Paris",
                    "country": "FR"}, "metadata": {"crm": "42"}})),
    )
    .await;
    api.expect(
        200,
        "POST",
        "/v1/customers/{customer_id}",
        &["cus-1"],
        Some(json!({"name": "One SA"})),
    )
    .await;
    api.expect(200, "GET", "/v1/customers/{customer_id}", &["cus-1"], None)
        .await;
    api.expect(200, "GET", "/v1/customers", &[], None).await;
    let method = api
        .expect(
            201,
            "POST",
            "/v1/customers/{customer_id}/payment_methods",
            &["cus-1"],
            Some(json!({"kind": "card", "token": "tok_visa"})),
        )
        .await;
    let method_id = method["id"].as_str().unwrap().to_owned();
    api.expect(
        200,
        "POST",
        "/v1/customers/{customer_id}/payment_methods/{payment_method_id}/default",
        &["cus-1", &method_id],
        None,
    )
    .await;
    api.expect(
        200,
        "GET",
        "/v1/customers/{customer_id}/payment_methods",
        &["cus-1"],
        None,
    )
    .await;
    api.expect(
        201,
        "POST",
        "/v1/subscriptions",
        &[],
        Some(json!({"subscription_id": "sub-1", "customer_id": "cus-1", "plan_code": "basic"})),
    )
    .await;
    api.expect(
        200,
        "GET",
        "/v1/subscriptions/{subscription_id}",
        &["sub-1"],
        None,
    )
    .await;
    api.expect(
        200,
        "GET",
        "/v1/customers/{customer_id}/subscriptions",
        &["cus-1"],
        None,
    )
    .await;
    let applied = api
        .expect(
            201,
            "POST",
            "/v1/applied_coupons",
            &[],
            Some(json!({"customer_id": "cus-1", "coupon_code": "welcome"})),
        )
        .await;
    let applied_id = applied["applied_coupon_id"].as_str().unwrap().to_owned();
    api.expect(
        200,
        "GET",
        "/v1/customers/{customer_id}/applied_coupons",
        &["cus-1"],
        None,
    )
    .await;
    let wallet = api
        .expect(
            201,
            "POST",
            "/v1/wallets",
            &[],
            Some(json!({"customer_id": "cus-1", "name": "Prepaid", "granted_credits": "5"})),
        )
        .await;
    let wallet_id = wallet["wallet_id"].as_str().unwrap().to_owned();
    api.expect(
        201,
        "POST",
        "/v1/customers/{customer_id}/wallets/{wallet_id}/transactions",
        &["cus-1", &wallet_id],
        Some(json!({"granted_credits": "1"})),
    )
    .await;
    api.expect(
        200,
        "GET",
        "/v1/customers/{customer_id}/wallets/{wallet_id}",
        &["cus-1", &wallet_id],
        None,
    )
    .await;
    api.expect(
        200,
        "GET",
        "/v1/customers/{customer_id}/wallets",
        &["cus-1"],
        None,
    )
    .await;
    api.expect(
        200,
        "POST",
        "/v1/customers/{customer_id}/invoices/preview",
        &["cus-1"],
        None,
    )
    .await;
    api.expect(
        200,
        "GET",
        "/v1/customers/{customer_id}/usage",
        &["cus-1"],
        None,
    )
    .await;

    // A month on: the bill run's draft (grace period 0: finalized), then one-off invoices paid, voided, credited.
    api.expect(
        200,
        "POST",
        "/v1/test_clocks/{clock_id}/advance",
        &[&clock_id],
        Some(json!({"frozen_time": "2026-02-01T00:00:00Z", "wait_seconds": 120})),
    )
    .await;
    api.expect(
        200,
        "POST",
        "/v1/subscriptions/{subscription_id}/change",
        &["sub-1"],
        Some(json!({"plan_code": "pro"})),
    )
    .await;
    api.expect(
        200,
        "POST",
        "/v1/subscriptions/{subscription_id}/pause",
        &["sub-1"],
        None,
    )
    .await;
    api.expect(
        200,
        "POST",
        "/v1/subscriptions/{subscription_id}/resume",
        &["sub-1"],
        None,
    )
    .await;
    api.expect(
        200,
        "POST",
        "/v1/subscriptions/{subscription_id}/cancel",
        &["sub-1"],
        Some(json!({"at_period_end": true})),
    )
    .await;
    api.expect(
        200,
        "DELETE",
        "/v1/customers/{customer_id}/applied_coupons/{applied_coupon_id}",
        &["cus-1", &applied_id],
        None,
    )
    .await;
    let mut one_offs = Vec::new();
    for _ in 0..3 {
        let inv = api
            .expect(
                201,
                "POST",
                "/v1/invoices",
                &[],
                Some(json!({"customer_id": "cus-1", "fees": [{"add_on_code": "setup"}]})),
            )
            .await;
        one_offs.push(inv["invoice_id"].as_str().unwrap().to_owned());
    }
    api.expect(200, "GET", "/v1/invoices", &[], None).await;
    api.expect(
        200,
        "GET",
        "/v1/customers/{customer_id}/invoices",
        &["cus-1"],
        None,
    )
    .await;
    api.expect(
        200,
        "GET",
        "/v1/invoices/{invoice_id}",
        &[&one_offs[0]],
        None,
    )
    .await;
    // Finalizing an issued invoice is a conflict: its problem is checked too.
    api.expect(
        409,
        "POST",
        "/v1/invoices/{invoice_id}/finalize",
        &[&one_offs[0]],
        None,
    )
    .await;
    api.expect(
        200,
        "POST",
        "/v1/invoices/{invoice_id}/pay",
        &[&one_offs[0]],
        Some(json!({"paid_out_of_band": true, "reference": "SEPA-1"})),
    )
    .await;
    api.expect(
        200,
        "GET",
        "/v1/invoices/{invoice_id}/payments",
        &[&one_offs[0]],
        None,
    )
    .await;
    api.expect(
        200,
        "POST",
        "/v1/invoices/{invoice_id}/void",
        &[&one_offs[1]],
        None,
    )
    .await;
    let note = api
        .expect(
            201,
            "POST",
            "/v1/invoices/{invoice_id}/credit_notes",
            &[&one_offs[2]],
            Some(json!({"type": "credit", "reason": "order_change",
                        "lines": [{"line_index": 0, "amount": "5.00"}]})),
        )
        .await;
    let note_id = note["credit_note_id"].as_str().unwrap().to_owned();
    api.expect(
        200,
        "GET",
        "/v1/credit_notes/{credit_note_id}",
        &[&note_id],
        None,
    )
    .await;
    api.expect(
        200,
        "GET",
        "/v1/invoices/{invoice_id}/credit_notes",
        &[&one_offs[2]],
        None,
    )
    .await;
    api.expect(
        200,
        "DELETE",
        "/v1/customers/{customer_id}/payment_methods/{payment_method_id}",
        &["cus-1", &method_id],
        None,
    )
    .await;

    // Webhook endpoints.
    let endpoint = api
        .expect(
            201,
            "POST",
            "/v1/webhook_endpoints",
            &[],
            Some(json!({"url": "https://example.com/hooks", "event_types": ["invoice.finalized"]})),
        )
        .await;
    let endpoint_id = endpoint["id"].as_str().unwrap().to_owned();
    api.expect(
        200,
        "POST",
        "/v1/webhook_endpoints/{endpoint_id}",
        &[&endpoint_id],
        Some(json!({"description": "billing"})),
    )
    .await;
    api.expect(
        200,
        "GET",
        "/v1/webhook_endpoints/{endpoint_id}",
        &[&endpoint_id],
        None,
    )
    .await;
    api.expect(200, "GET", "/v1/webhook_endpoints", &[], None)
        .await;
    api.expect(
        200,
        "POST",
        "/v1/webhook_endpoints/{endpoint_id}/rotate_secret",
        &[&endpoint_id],
        None,
    )
    .await;
    api.expect(
        200,
        "GET",
        "/v1/webhook_endpoints/{endpoint_id}/deliveries",
        &[&endpoint_id],
        None,
    )
    .await;
    // No delivery exists (no webhooks service runs here): the redelivery's 404 problem is what is checked.
    api.expect(
        404,
        "POST",
        "/v1/webhook_endpoints/{endpoint_id}/deliveries/{delivery_id}/redeliver",
        &[&endpoint_id, "dlv_none"],
        None,
    )
    .await;
    api.expect(
        200,
        "DELETE",
        "/v1/webhook_endpoints/{endpoint_id}",
        &[&endpoint_id],
        None,
    )
    .await;

    // Keys, audit, analytics, GraphQL.
    let reader = api_key(&env.settings, "acme", Role::Read).await;
    let reader_id: String = reader.split('_').take(2).collect::<Vec<_>>().join("_");
    let keys = api.expect(200, "GET", "/v1/api_keys", &[], None).await;
    assert!(
        keys["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["id"] == reader_id.as_str()),
        "{keys}"
    );
    api.expect(
        200,
        "POST",
        "/v1/api_keys/{key_id}/revoke",
        &[&reader_id],
        None,
    )
    .await;
    let audit = api.expect(200, "GET", "/v1/audit", &[], None).await;
    assert!(!audit["data"].as_array().unwrap().is_empty(), "{audit}");
    for report in ["mrr", "revenue", "usage", "churn", "collections"] {
        api.expect(
            200,
            "GET",
            &format!("/v1/analytics/{report}?from=2026-01&to=2026-03"),
            &[],
            None,
        )
        .await;
    }
    api.expect(
        200,
        "POST",
        "/graphql",
        &[],
        Some(json!({"query": "{ customers(first: 5) { nodes { id invoices(first: 5) { id total } } } }"})),
    )
    .await;
    // A refused body: its problem+json is checked against the document's `Problem`.
    api.expect(
        422,
        "POST",
        "/v1/customers",
        &[],
        Some(json!({"customer_id": "cus-2", "currency": "EURO"})),
    )
    .await;

    // Every operation of the document was called, and each answer matched.
    let documented: BTreeSet<(String, String)> = api.doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(|m| (m.to_ascii_uppercase(), path.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let missed: Vec<_> = documented.difference(&api.called).collect();
    assert!(missed.is_empty(), "operations never called: {missed:?}");
    eprintln!(
        "{} answers of {} operations matched the document",
        api.checked,
        documented.len()
    );

    services.shutdown().await;
    payments.await.unwrap().expect("payments ended cleanly");
    env.cleanup().await;
}
