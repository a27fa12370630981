//! Taxes and voids on the real stack (the API, the invoicer, payments, ClickHouse), on a test clock; every amount
//! worked out by hand here.
//!
//! Tax rates: `vat_fr` 20 % exclusive for the whole tenant (`applied_to_tenant`), `vat_de` 19 %, `vat_fr_reduced`
//! 5.5 %, `jct` 10 % inclusive. The most specific level wins (charge, plan, customer, tenant):
//!
//! - `c-fr` (no tax codes, plan `plain` 50.00 EUR in advance): the tenant's 20 %: 50.00 + 10.00 = 60.00; after
//!   `vat_fr` is raised to 21 %, its February invoice is 50.00 + 10.50 = 60.50 (January's keeps 20 %);
//! - `c-de` (customer codes `vat_de`, plan `plain`): 50.00 + 9.50 = 59.50;
//! - `c-mix` (customer codes `vat_de`, plan `reduced` with codes `vat_fr_reduced`): the plan's rate wins,
//!   50.00 + 2.75 = 52.75;
//! - `c-rc` (reverse charge, tax id DE123456789): 50.00, no tax, and the invoice's legal mention names the id;
//! - `c-jp` (JPY, plan `jp` 11000 with the inclusive `jct`): 11000 includes 1000 of tax: taxable 10000, total
//!   11000.
//!
//! Every invoice's totals reconcile (Σ lines = subtotal; subtotal − discounts + exclusive taxes = total), and
//! ClickHouse `invoice_lines` / `invoice_line_taxes` give the API's tax totals.
//!
//! Voids: `c-void`'s January invoice (nothing paid) is voided: status `void`, its number kept, `invoice.voided`
//! published, a row in ClickHouse `invoice_voids`, and no payment collected; a second void, a void of `c-fr`'s
//! invoice once paid by bank transfer, and a credit note on the void invoice are refused, nothing published.
//! Bad tax input (a rate of 150, unknown codes on a plan or a customer, an unknown exemption) is refused with a
//! problem+json naming the field.

use std::time::Duration;

use billing_tests::api::Api;
use billing_tests::invoices::{dec, reconciles};
use billing_tests::{eventually, high_watermarks, Services, TestEnv};
use rust_decimal::Decimal;
use serde_json::{json, Value};

const TENANT: &str = "acme";
const WAIT: Duration = Duration::from_secs(90);

/// The customer's finalized invoices, newest first, once there are `n`.
async fn invoices_of(api: &Api, customer: &str, n: usize) -> Vec<Value> {
    eventually(WAIT, &format!("{n} invoice(s) of {customer}"), || async {
        let r = api.get(&format!("/v1/customers/{customer}/invoices")).await;
        let data: Vec<Value> = r.body["data"].as_array().cloned().unwrap_or_default();
        (data.len() >= n && data.iter().all(|i| i["status"] != "draft")).then_some(data)
    })
    .await
}

/// A customer's January invoice: (customer, subtotal, tax_total, total, [(code, rate, taxable, amount)]).
type Expected = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str, &'static str, &'static str)],
);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn taxes_at_every_level_and_voids() {
    let mut env = TestEnv::new("taxes_voids").await;
    env.settings.query_api.write_wait = Duration::from_secs(60);
    let services = Services::start(&env.settings).await;
    let api = services.api_for(TENANT).await;

    // Bad tax input first: nothing may be published for it.
    let catalog_end = high_watermarks(&env.settings, &env.topics.catalog).await;
    api.post("/v1/taxes", json!({"code": "bad", "rate": "150"}))
        .await
        .problem(422, "rate");
    api.post("/v1/taxes", json!({"code": "bad", "rate": "1_000"}))
        .await
        .problem(422, "rate");
    let r = api
        .post(
            "/v1/taxes",
            json!({"code": "bad", "rate": "5", "kind": "vat"}),
        )
        .await;
    assert!(r.status == 400 || r.status == 422, "{}", r.body);
    api.post(
        "/v1/plans",
        json!({"code": "p", "interval": "monthly", "currency": "EUR", "amount": "1", "tax_codes": ["nope"]}),
    )
    .await
    .problem(422, "tax_codes[0]");
    assert_eq!(
        high_watermarks(&env.settings, &env.topics.catalog).await,
        catalog_end,
        "nothing published for refused catalog writes"
    );

    let tax = |code: &str, rate: &str, inclusive: bool, tenant: bool| {
        json!({"code": code, "name": code.to_uppercase(), "rate": rate, "inclusive": inclusive,
               "applied_to_tenant": tenant})
    };
    let t = api
        .created("/v1/taxes", tax("vat_fr", "20", false, true), 201)
        .await;
    assert_eq!(
        (t["object"].as_str(), t["rate"].as_str()),
        (Some("tax"), Some("20"))
    );
    api.created("/v1/taxes", tax("vat_de", "19", false, false), 201)
        .await;
    api.created("/v1/taxes", tax("vat_fr_reduced", "5.5", false, false), 201)
        .await;
    api.created("/v1/taxes", tax("jct", "10", true, false), 201)
        .await;
    api.post("/v1/taxes", tax("jct", "8", true, false))
        .await
        .problem(409, "code");
    let listed = api.get("/v1/taxes").await;
    assert_eq!(listed.body["data"].as_array().unwrap().len(), 4);

    let plan = |code: &str, currency: &str, amount: &str, codes: &[&str]| {
        json!({"code": code, "name": code, "interval": "monthly", "currency": currency, "amount": amount,
               "pay_in_advance": true, "tax_codes": codes})
    };
    api.created("/v1/plans", plan("plain", "EUR", "50.00", &[]), 201)
        .await;
    let reduced = api
        .created(
            "/v1/plans",
            plan("reduced", "EUR", "50.00", &["vat_fr_reduced"]),
            201,
        )
        .await;
    assert_eq!(reduced["tax_codes"], json!(["vat_fr_reduced"]));
    api.created("/v1/plans", plan("jp", "JPY", "11000", &["jct"]), 201)
        .await;

    let clock = api
        .created(
            "/v1/test_clocks",
            json!({"frozen_time": "2026-01-01T00:00:00Z"}),
            201,
        )
        .await;
    let clock = clock["id"].as_str().unwrap().to_owned();
    let lifecycle_end = high_watermarks(&env.settings, &env.topics.lifecycle).await;
    api.post(
        "/v1/customers",
        json!({"customer_id": "x", "currency": "EUR", "tax_codes": ["vat_it"]}),
    )
    .await
    .problem(422, "tax_codes[0]");
    let r = api
        .post(
            "/v1/customers",
            json!({"customer_id": "x", "currency": "EUR", "tax_exempt": "maybe"}),
        )
        .await;
    assert!(r.status == 400 || r.status == 422, "{}", r.body);
    assert_eq!(
        high_watermarks(&env.settings, &env.topics.lifecycle).await,
        lifecycle_end,
        "nothing published for refused customers"
    );

    let customers = [
        ("c-fr", "EUR", json!({}), "plain"),
        ("c-de", "EUR", json!({"tax_codes": ["vat_de"]}), "plain"),
        ("c-mix", "EUR", json!({"tax_codes": ["vat_de"]}), "reduced"),
        (
            "c-rc",
            "EUR",
            json!({"tax_exempt": "reverse", "tax_ids": ["DE123456789"]}),
            "plain",
        ),
        ("c-jp", "JPY", json!({}), "jp"),
        ("c-void", "EUR", json!({}), "plain"),
    ];
    for (id, currency, extra, plan) in &customers {
        let mut body =
            json!({"customer_id": id, "name": id, "currency": currency, "test_clock_id": clock});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let c = api.created("/v1/customers", body, 201).await;
        if *id == "c-rc" {
            assert_eq!(c["tax_exempt"], "reverse");
        }
        api.created(
            "/v1/subscriptions",
            json!({"subscription_id": format!("sub-{id}"), "customer_id": id, "plan_code": plan,
                   "started_at": "2026-01-01T00:00:00Z"}),
            201,
        )
        .await;
    }
    api.advance_clock(&clock, "2026-01-01T01:00:00Z").await;

    let expected: [Expected; 5] = [
        (
            "c-fr",
            "50.00",
            "10.00",
            "60.00",
            &[("vat_fr", "20", "50.00", "10.00")],
        ),
        (
            "c-de",
            "50.00",
            "9.50",
            "59.50",
            &[("vat_de", "19", "50.00", "9.50")],
        ),
        (
            "c-mix",
            "50.00",
            "2.75",
            "52.75",
            &[("vat_fr_reduced", "5.5", "50.00", "2.75")],
        ),
        ("c-rc", "50.00", "0.00", "50.00", &[]),
        (
            "c-jp",
            "11000",
            "1000",
            "11000",
            &[("jct", "10", "10000", "1000")],
        ),
    ];
    let mut january = std::collections::BTreeMap::new();
    for (id, subtotal, tax_total, total, taxes) in expected {
        let inv = invoices_of(&api, id, 1).await.remove(0);
        assert_eq!(inv["subtotal"], subtotal, "{id}: {inv}");
        assert_eq!(inv["tax_total"], tax_total, "{id}: {inv}");
        assert_eq!(inv["total"], total, "{id}: {inv}");
        let applied = inv["applied_taxes"].as_array().unwrap();
        assert_eq!(applied.len(), taxes.len(), "{id}: {inv}");
        for (a, (code, rate, taxable, amount)) in applied.iter().zip(taxes) {
            assert_eq!(a["code"], *code);
            assert_eq!(dec(&a["rate"]), rate.parse::<Decimal>().unwrap());
            assert_eq!(a["taxable_amount"], *taxable, "{id}: {inv}");
            assert_eq!(a["amount"], *amount, "{id}: {inv}");
            assert_eq!(a["name"], code.to_uppercase());
        }
        reconciles(&inv);
        january.insert(id, inv);
    }
    assert_eq!(january["c-jp"]["applied_taxes"][0]["inclusive"], true);
    assert_eq!(
        january["c-rc"]["tax_note"],
        "Reverse charge: the customer accounts for the tax (tax id DE123456789)"
    );
    assert_eq!(january["c-fr"]["tax_note"], Value::Null);

    // ClickHouse gives the API's figures: the lines' tax and total, and one tax row per line and code.
    let ch = env.clickhouse();
    for (id, inv) in &january {
        let invoice_id = inv["invoice_id"].as_str().unwrap();
        let (tax, total): (String, String) =
            eventually(WAIT, "the invoice in ClickHouse", || async {
                ch.query(
                    "SELECT toString(sum(tax)), toString(sum(total)) FROM invoice_lines FINAL \
                 WHERE tenant_id = ? AND invoice_id = ? HAVING count() > 0",
                )
                .bind(TENANT)
                .bind(invoice_id)
                .fetch_optional::<(String, String)>()
                .await
                .unwrap()
            })
            .await;
        assert_eq!(
            tax.parse::<Decimal>().unwrap(),
            dec(&inv["tax_total"]),
            "{id}"
        );
        assert_eq!(
            total.parse::<Decimal>().unwrap(),
            dec(&inv["total"]),
            "{id}"
        );
        let taxes: String = ch
            .query(
                "SELECT toString(sum(amount)) FROM invoice_line_taxes FINAL \
                 WHERE tenant_id = ? AND invoice_id = ?",
            )
            .bind(TENANT)
            .bind(invoice_id)
            .fetch_one()
            .await
            .unwrap();
        assert_eq!(
            taxes.parse::<Decimal>().unwrap(),
            dec(&inv["tax_total"]),
            "{id}"
        );
    }

    // The void of c-void's invoice: nothing was paid (it has no payment method).
    let void_id = january_invoice(&api, "c-void").await;
    // Invoice reads carry an ETag; asked again with it, the answer is 304 without a body. Every answer has a request
    // id: the caller's when it sends one.
    let path = format!("/v1/invoices/{void_id}");
    let first = api.get(&path).await;
    let etag = first.headers["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.len() == 34, "{etag}");
    assert!(first.headers["x-request-id"]
        .to_str()
        .unwrap()
        .starts_with("req_"));
    let again = api
        .get_with(
            &path,
            &[("if-none-match", &etag), ("x-request-id", "trace-42")],
        )
        .await;
    assert_eq!(again.status, 304);
    assert_eq!(again.body, Value::String(String::new()));
    assert_eq!(again.headers["etag"].to_str().unwrap(), etag);
    assert_eq!(again.headers["x-request-id"], "trace-42");
    assert_eq!(
        api.get_with(&path, &[("if-none-match", "\"other\"")])
            .await
            .status,
        200
    );
    let invoices_before = env
        .read_topic(&env.topics.invoices, 1000, Duration::from_secs(2))
        .await
        .len();
    let voided = api
        .post(
            &format!("/v1/invoices/{void_id}/void"),
            json!({"reason": "issued by mistake"}),
        )
        .await;
    let changed = api.get_with(&path, &[("if-none-match", &etag)]).await;
    assert_eq!(
        changed.status, 200,
        "a void changes the invoice, so its ETag"
    );
    assert_ne!(changed.headers["etag"].to_str().unwrap(), etag);
    assert_eq!(voided.status, 200, "{}", voided.body);
    assert_eq!(voided.body["status"], "void");
    assert!(voided.body["number"].as_str().unwrap().starts_with("ACME-"));
    assert_eq!(voided.body["payment_status"], Value::Null);
    let published = env
        .read_topic(&env.topics.invoices, 1000, Duration::from_secs(2))
        .await;
    assert_eq!(published.len(), invoices_before + 1, "one invoice.voided");
    let voids_published: Vec<billing_schemas::invoice::InvoiceVoided> = published
        .iter()
        .filter_map(|m| {
            let ev = billing_schemas::decode::<billing_schemas::invoice::InvoiceEvent>(
                rdkafka::Message::payload(m).unwrap(),
                None,
            )
            .unwrap();
            match ev.payload {
                billing_schemas::invoice::Invoice::InvoiceVoided(v) => Some(v),
                _ => None,
            }
        })
        .collect();
    assert_eq!(voids_published.len(), 1, "{voids_published:?}");
    let v = &voids_published[0];
    assert_eq!(v.invoice_id, void_id);
    assert_eq!(v.number.as_deref(), voided.body["number"].as_str());
    assert_eq!(v.reason, "issued by mistake");
    let voids: u64 = eventually(WAIT, "the void in ClickHouse", || async {
        let n: u64 = ch
            .query("SELECT count() FROM invoice_voids FINAL WHERE tenant_id = ? AND invoice_id = ?")
            .bind(TENANT)
            .bind(void_id.as_str())
            .fetch_one()
            .await
            .unwrap();
        (n > 0).then_some(n)
    })
    .await;
    assert_eq!(voids, 1);

    // Refused, nothing published: a second void, a credit note on the void invoice, a void of a paid invoice.
    let lifecycle_end = high_watermarks(&env.settings, &env.topics.lifecycle).await;
    let again = api
        .post(&format!("/v1/invoices/{void_id}/void"), json!({}))
        .await;
    again.problem(409, "invoice_id");
    assert!(again.body["detail"]
        .as_str()
        .unwrap()
        .contains("already void"));
    let credited = api.post(
        &format!("/v1/invoices/{void_id}/credit_notes"),
        json!({"type": "credit", "reason": "other", "lines": [{"line_index": 0, "amount": "1.00"}]}),
    )
    .await;
    credited.problem(409, "invoice_id");
    assert!(credited.body["detail"]
        .as_str()
        .unwrap()
        .contains("is void"));
    let fr_id = january["c-fr"]["invoice_id"].as_str().unwrap().to_owned();
    assert_eq!(
        lifecycle_end,
        high_watermarks(&env.settings, &env.topics.lifecycle).await
    );
    let paid = api
        .post(
            &format!("/v1/invoices/{fr_id}/pay"),
            json!({"paid_out_of_band": true, "reference": "SEPA-1"}),
        )
        .await;
    assert_eq!(paid.status, 200, "{}", paid.body);
    let paid = eventually(WAIT, "c-fr's invoice paid", || async {
        let r = api.get(&format!("/v1/invoices/{fr_id}")).await;
        (r.body["payment_status"] == "paid").then_some(())
    })
    .await;
    let () = paid;
    let lifecycle_end = high_watermarks(&env.settings, &env.topics.lifecycle).await;
    let paid_void = api
        .post(&format!("/v1/invoices/{fr_id}/void"), json!({}))
        .await;
    paid_void.problem(409, "invoice_id");
    assert!(paid_void.body["detail"]
        .as_str()
        .unwrap()
        .contains("correct it with a credit note instead"));
    assert_eq!(
        high_watermarks(&env.settings, &env.topics.lifecycle).await,
        lifecycle_end,
        "nothing published for refused voids"
    );
    let listed = api.get("/v1/invoices?status=void").await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let ids: Vec<&str> = listed.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["invoice_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [void_id.as_str()]);

    // A one-off invoice of add-ons for c-de: the add-on's own 5.5 % beats the customer's 19 %. 2 × 100.00 =
    // 200.00 + 11.00 = 211.00, and an add-on priced in USD at 30.00 given in EUR (19 %: 5.70) = 246.70.
    api.created(
        "/v1/add_ons",
        json!({"code": "setup", "name": "Setup", "amount": "100.00", "amount_currency": "EUR",
               "tax_codes": ["vat_fr_reduced"]}),
        201,
    )
    .await;
    api.created(
        "/v1/add_ons",
        json!({"code": "usd-audit", "amount": "35", "amount_currency": "USD"}),
        201,
    )
    .await;
    let lifecycle_end = high_watermarks(&env.settings, &env.topics.lifecycle).await;
    let bad = [
        (
            json!({"customer_id": "c-de", "fees": [{"add_on_code": "nope"}]}),
            "fees[0].add_on_code",
        ),
        (
            json!({"customer_id": "c-de", "fees": [{"add_on_code": "usd-audit"}]}),
            "fees[0].add_on_code",
        ),
        (
            json!({"customer_id": "c-de", "fees": [{"add_on_code": "setup", "units": "0"}]}),
            "fees[0].units",
        ),
        (
            json!({"customer_id": "c-de", "currency": "USD", "fees": [{"add_on_code": "setup"}]}),
            "currency",
        ),
    ];
    for (body, field) in bad {
        api.post("/v1/invoices", body).await.problem(422, field);
    }
    assert_eq!(
        high_watermarks(&env.settings, &env.topics.lifecycle).await,
        lifecycle_end,
        "nothing published for refused one-off invoices"
    );
    let one_off = api
        .created(
            "/v1/invoices",
            json!({"customer_id": "c-de", "fees": [
                {"add_on_code": "setup", "units": 2},
                {"add_on_code": "usd-audit", "unit_amount": "30.00", "description": "Audit (EUR price)"}]}),
            201,
        )
        .await;
    assert_eq!(one_off["one_off"], true, "{one_off}");
    assert_eq!(one_off["status"], "finalized");
    assert!(one_off["number"].as_str().unwrap().starts_with("ACME-"));
    assert_eq!(one_off["lines"][0]["kind"], "add_on");
    assert_eq!(one_off["lines"][0]["units"], "2");
    assert_eq!(one_off["lines"][1]["description"], "Audit (EUR price)");
    assert_eq!(one_off["subtotal"], "230.00");
    assert_eq!(one_off["tax_total"], "16.70");
    assert_eq!(one_off["total"], "246.70");
    reconciles(&one_off);
    assert_eq!(one_off["payment_status"], "pending");
    // A one-off invoice can be voided like any other.
    let one_off_id = one_off["invoice_id"].as_str().unwrap();
    let voided = api
        .post(&format!("/v1/invoices/{one_off_id}/void"), json!({}))
        .await;
    assert_eq!(voided.status, 200, "{}", voided.body);
    assert_eq!(voided.body["status"], "void");

    // A new rate applies to the invoices finalized after it; January's keeps its 20 %.
    let raised = api
        .created("/v1/taxes/vat_fr", json!({"rate": "21"}), 200)
        .await;
    assert_eq!(raised["rate"], "21");
    api.advance_clock(&clock, "2026-02-01T01:00:00Z").await;
    let fr = invoices_of(&api, "c-fr", 2).await;
    assert_eq!(fr[0]["tax_total"], "10.50", "{}", fr[0]);
    assert_eq!(fr[0]["total"], "60.50");
    assert_eq!(fr[0]["applied_taxes"][0]["rate"], "21");
    reconciles(&fr[0]);
    assert_eq!(
        fr[1]["tax_total"], "10.00",
        "January's invoice is unchanged"
    );
    // c-de's one-off invoice (voided) did not take the place of a billing date: its February invoice is there.
    let de = invoices_of(&api, "c-de", 3).await;
    let mut kinds: Vec<(bool, &str, &str)> = de
        .iter()
        .map(|i| {
            (
                i["one_off"] == true,
                i["status"].as_str().unwrap(),
                i["total"].as_str().unwrap(),
            )
        })
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            (false, "finalized", "59.50"),
            (false, "finalized", "59.50"),
            (true, "void", "246.70")
        ]
    );
    // The void invoice's date is not billed again; February's is.
    let void_customer = invoices_of(&api, "c-void", 2).await;
    assert_eq!(void_customer[1]["status"], "void");
    assert_eq!(void_customer[0]["status"], "finalized");

    services.shutdown().await;
    env.cleanup().await;
}

/// The id of the customer's one January invoice.
async fn january_invoice(api: &Api, customer: &str) -> String {
    invoices_of(api, customer, 1).await[0]["invoice_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Requests the API would refuse, published straight to `billing.lifecycle` (another producer, or a state that changed
/// between the API's check and the invoicer's): the invoicer checks again, dead-letters each with its reason, records
/// a refused credit note as `rejected`, and goes on: a valid one-off invoice after them is issued.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_the_api_would_refuse_are_dead_lettered_by_the_invoicer() {
    use billing_runtime::kafka::dlq_headers;
    use billing_schemas::lifecycle::{
        CreditNoteKind, CreditNoteLineRequest, CreditNoteRequested, InvoiceVoidRequested,
        Lifecycle, LifecycleEvent, OneOffFee, OneOffInvoiceRequested,
    };
    use billing_schemas::Encoding;
    use rdkafka::message::{Headers, Message};

    let mut env = TestEnv::new("invoicer_refusals").await;
    env.settings.query_api.write_wait = Duration::from_secs(60);
    let services = Services::start(&env.settings).await;
    let api = services.api_for(TENANT).await;
    api.created(
        "/v1/plans",
        json!({"code": "basic", "interval": "monthly", "currency": "EUR", "amount": "50.00",
               "pay_in_advance": true, "charges": []}),
        201,
    )
    .await;
    api.created(
        "/v1/add_ons",
        json!({"code": "setup", "name": "Setup", "amount": "100.00", "amount_currency": "EUR"}),
        201,
    )
    .await;
    let clock = api
        .created(
            "/v1/test_clocks",
            json!({"frozen_time": "2026-01-01T00:00:00Z"}),
            201,
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    api.created(
        "/v1/customers",
        json!({"customer_id": "c-r", "name": "R", "currency": "EUR", "test_clock_id": clock}),
        201,
    )
    .await;
    api.created(
        "/v1/subscriptions",
        json!({"subscription_id": "sub-r", "customer_id": "c-r", "plan_code": "basic",
               "started_at": "2026-01-01T00:00:00Z"}),
        201,
    )
    .await;
    api.advance_clock(&clock, "2026-01-01T01:00:00Z").await;
    let january = january_invoice(&api, "c-r").await;
    // A credit note the API accepts, so that the invoice can no longer be voided.
    api.created(
        &format!("/v1/invoices/{january}/credit_notes"),
        json!({"type": "credit", "reason": "other", "lines": [{"line_index": 0, "amount": "10.00"}]}),
        201,
    )
    .await;

    let ev = |id: &str, payload| LifecycleEvent {
        tenant_id: TENANT.into(),
        event_id: id.into(),
        occurred_at: "2026-01-01T01:00:00Z".parse().unwrap(),
        payload,
    };
    let fee = |units: &str| OneOffFee {
        add_on_code: "setup".into(),
        name: "Setup".into(),
        units: units.into(),
        unit_amount: "100.00".into(),
        description: None,
        tax_codes: vec![],
    };
    let refused = [
        (
            ev(
                "void-unknown",
                Lifecycle::InvoiceVoidRequested(InvoiceVoidRequested {
                    customer_id: "c-r".into(),
                    invoice_id: "inv_nope".into(),
                    reason: None,
                }),
            ),
            "invoice_id: no invoice inv_nope",
        ),
        (
            ev(
                "void-credited",
                Lifecycle::InvoiceVoidRequested(InvoiceVoidRequested {
                    customer_id: "c-r".into(),
                    invoice_id: january.clone(),
                    reason: None,
                }),
            ),
            "credit note",
        ),
        (
            ev(
                "credit-too-much",
                Lifecycle::CreditNoteRequested(CreditNoteRequested {
                    credit_note_id: "cn-too-much".into(),
                    customer_id: "c-r".into(),
                    invoice_id: january.clone(),
                    kind: CreditNoteKind::Credit,
                    reason: "other".into(),
                    memo: None,
                    lines: vec![CreditNoteLineRequest {
                        line_index: 0,
                        amount: "45.00".into(),
                    }],
                }),
            ),
            "lines[0].amount",
        ),
        (
            ev(
                "one-off-bad-units",
                Lifecycle::OneOffInvoiceRequested(OneOffInvoiceRequested {
                    invoice_id: "inv_20260101_bad".into(),
                    customer_id: "c-r".into(),
                    fees: vec![fee("1_000")],
                }),
            ),
            "fees[0].units",
        ),
        (
            ev(
                "one-off-nobody",
                Lifecycle::OneOffInvoiceRequested(OneOffInvoiceRequested {
                    invoice_id: "inv_20260101_nobody".into(),
                    customer_id: "nobody".into(),
                    fees: vec![fee("1")],
                }),
            ),
            "unknown customer",
        ),
    ];
    let publisher = env.publisher();
    for (e, _) in &refused {
        publisher.lifecycle(e, Encoding::Avro).await.unwrap();
    }
    let dead = env
        .read_topic(&env.topics.lifecycle_dlq, refused.len(), WAIT)
        .await;
    assert_eq!(dead.len(), refused.len());
    let mut reasons: Vec<String> = dead
        .iter()
        .map(|m| {
            m.headers()
                .and_then(|h| h.iter().find(|h| h.key == dlq_headers::REASON))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        })
        .collect();
    for (_, want) in &refused {
        let k = reasons
            .iter()
            .position(|r| r.contains(want))
            .unwrap_or_else(|| panic!("no dead letter says {want:?}: {reasons:?}"));
        reasons.remove(k);
    }
    // The refused credit note is recorded as such; the invoice is neither void nor credited again.
    let cn = api.get("/v1/credit_notes/cn-too-much").await;
    assert_eq!(cn.body["status"], "rejected", "{}", cn.body);
    assert!(cn.body["rejection_reason"]
        .as_str()
        .unwrap()
        .contains("lines[0].amount"));
    let inv = api.get(&format!("/v1/invoices/{january}")).await.body;
    assert_eq!(inv["status"], "finalized");
    let notes = api
        .get(&format!("/v1/invoices/{january}/credit_notes"))
        .await
        .body;
    assert_eq!(notes["data"].as_array().map(Vec::len), Some(1), "{notes}");
    // The invoicer went on.
    let one_off = api
        .created(
            "/v1/invoices",
            json!({"customer_id": "c-r", "fees": [{"add_on_code": "setup"}]}),
            201,
        )
        .await;
    assert_eq!(one_off["total"], "100.00", "{one_off}");
    assert_eq!(one_off["status"], "finalized");
    services.shutdown().await;
    env.cleanup().await;
}
