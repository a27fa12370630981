//! A year in the life of three customers on a test clock (2025, so that every usage event is in the past), on the real stack (the API, rating, the invoicer, the
//! payments service on the sandbox provider, ClickHouse): every amount worked out by hand here, every invoice
//! reconciled, and ClickHouse's `invoice_lines` giving the API's totals.
//!
//! Catalog: metrics `calls` (count) and `seats` (latest reading); the tenant's VAT of 20 % (exclusive); JCT of 10 %
//! (inclusive, set on the JPY plan). Plans, monthly, fee in advance, usage in arrears: `team` 40.00 EUR with calls at
//! 0.50 and seats at 2.00; `pro-jpy` ¥5500 with calls at ¥110 (JCT); `pro-eur` 40.00 EUR with calls at 0.50.
//! Every month each customer makes 10 calls (on the 10th) and `alpha` reports 5 seats (on the 20th).
//!
//! - `alpha` (EUR, VAT, a card on the sandbox): coupon `three-months` (10 % for 3 invoices) and a wallet of 30.00
//!   granted + 20.00 paid credits (the paid ones get an invoice of their own: 20.00, untaxed, charged to the card).
//!   Jan 1: 40.00 − 4.00 = 36.00 + 7.20 = 43.20, all paid by credits (6.80 left). Feb 1: 40 + 5 + 10 = 55.00
//!   − 5.50 = 49.50 + 9.90 = 59.40; the wallet runs out mid-invoice: 6.80 of credits, 52.60 due. After February's
//!   invoice is paid, late January usage arrives: 4 calls (+2.00) and a corrected seat count of 3 (−4.00). Mar 1:
//!   40 + 5 + 10 + 2.00 adjustment = 57.00 − 5.70 = 51.30 + 10.26 = 61.56; the −4.00 is a credit note of type credit
//!   on February's invoice (4.00 + 0.80 VAT, the seats line's tax in proportion: 1.80 × 4.00 / 9.00), which the
//!   March invoice consumes: 4.80 from the balance, 56.76 charged to the card. Apr 1 to Jan 1: 55.00 + 11.00 = 66.00.
//! - `beta` (JPY, the plan's inclusive JCT): coupon `full` (100 % once). Jan 1: ¥5500 − ¥5500 = ¥0. Feb 1 to Jan 1:
//!   5500 + 1100 = ¥6600, of which ¥600 JCT (¥500 + ¥100 per line).
//! - `gamma` (EUR, reverse charge): coupon `calls-half` (50 % off the calls, forever). Jan 1: 40.00. Feb 1 to Jan 1:
//!   40 + 5.00 − 2.50 = 42.50, no tax, the reverse-charge mention on each. A one-off invoice of the `setup` add-on on
//!   March 15 (100.00), then voided (its number kept).

use std::time::Duration;

use billing_schemas::usage::UsageEvent;
use billing_tests::api::{columns, rows, Api};
use billing_tests::invoices::{dec, issued_invoices, reconciles};
use billing_tests::{eventually, Services, TestEnv};
use rust_decimal::Decimal;
use serde_json::{json, Value};

const TENANT: &str = "acme";
const WAIT: Duration = Duration::from_secs(120);

fn event(customer: &str, id: &str, metric: &str, when: &str, seats: Option<&str>) -> UsageEvent {
    UsageEvent {
        tenant_id: TENANT.into(),
        event_id: format!("{customer}-{id}"),
        customer_id: customer.into(),
        metric_code: metric.into(),
        timestamp: when.parse().unwrap(),
        properties: seats
            .map(|s| [("seats".to_owned(), s.to_owned())].into())
            .unwrap_or_default(),
    }
}

/// A month's usage: 10 calls for each customer on the 10th, 5 seats for alpha on the 20th.
fn month_usage(year: i32, month: u32) -> Vec<UsageEvent> {
    let mut out = Vec::new();
    for c in ["alpha", "beta", "gamma"] {
        for i in 0..10 {
            out.push(event(
                c,
                &format!("calls-{year}-{month:02}-{i}"),
                "calls",
                &format!("{year}-{month:02}-10T10:00:00Z"),
                None,
            ));
        }
    }
    out.push(event(
        "alpha",
        &format!("seats-{year}-{month:02}"),
        "seats",
        &format!("{year}-{month:02}-20T00:00:00Z"),
        Some("5"),
    ));
    out
}

/// (billing date, subtotal, discount, tax, total, credits, due) of each periodic invoice, oldest first.
fn figures(invoices: &[Value]) -> Vec<[String; 7]> {
    invoices
        .iter()
        .filter(|i| i["one_off"] != true)
        .map(|i| {
            reconciles(i);
            let s = |f: &str| i[f].as_str().unwrap().to_owned();
            [
                s("billing_date")[..10].to_owned(),
                s("subtotal"),
                s("discount_total"),
                s("tax_total"),
                s("total"),
                s("credits_total"),
                s("amount_due"),
            ]
        })
        .collect()
}

fn row(v: [&str; 7]) -> [String; 7] {
    v.map(str::to_owned)
}

/// The twelve first days of the month from `from` (year, month) on.
fn months_from(year: i32, month: u32, n: usize) -> Vec<String> {
    (0..n)
        .map(|k| {
            let m = month as usize - 1 + k;
            format!("{}-{:02}-01", year + (m / 12) as i32, m % 12 + 1)
        })
        .collect()
}

async fn invoice(api: &Api, id: &str) -> Value {
    api.get(&format!("/v1/invoices/{id}")).await.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_year_of_coupons_taxes_wallets_late_usage_one_offs_and_voids() {
    let mut env = TestEnv::new("year").await;
    env.settings.query_api.write_wait = Duration::from_secs(60);
    let services = Services::start(&env.settings).await;
    let payments = tokio::spawn(billing_payments::run(
        env.settings.clone(),
        services.stop.clone(),
    ));
    let api = services.api_for(TENANT).await;

    for body in [
        json!({"code": "calls", "aggregation": "count_agg"}),
        json!({"code": "seats", "aggregation": "latest_agg", "field_name": "seats"}),
    ] {
        api.created("/v1/billable_metrics", body, 201).await;
    }
    for body in [
        json!({"code": "vat", "name": "VAT", "rate": "20", "applied_to_tenant": true}),
        json!({"code": "jct", "name": "JCT", "rate": "10", "inclusive": true}),
    ] {
        api.created("/v1/taxes", body, 201).await;
    }
    let calls_at = |amount: &str| json!({"billable_metric_code": "calls", "charge_model": "standard", "properties": {"amount": amount}});
    for body in [
        json!({"code": "team", "interval": "monthly", "currency": "EUR", "amount": "40.00", "pay_in_advance": true,
               "charges": [calls_at("0.50"), {"billable_metric_code": "seats", "charge_model": "standard",
                           "properties": {"amount": "2.00"}}]}),
        json!({"code": "pro-jpy", "interval": "monthly", "currency": "JPY", "amount": "5500", "pay_in_advance": true,
               "tax_codes": ["jct"], "charges": [calls_at("110")]}),
        json!({"code": "pro-eur", "interval": "monthly", "currency": "EUR", "amount": "40.00", "pay_in_advance": true,
               "charges": [calls_at("0.50")]}),
    ] {
        api.created("/v1/plans", body, 201).await;
    }
    for body in [
        json!({"code": "three-months", "coupon_type": "percentage", "percentage_rate": "10",
               "frequency": "recurring", "frequency_duration": 3}),
        json!({"code": "full", "coupon_type": "percentage", "percentage_rate": "100"}),
        json!({"code": "calls-half", "coupon_type": "percentage", "percentage_rate": "50", "frequency": "forever",
               "applies_to": {"billable_metric_codes": ["calls"]}}),
    ] {
        api.created("/v1/coupons", body, 201).await;
    }
    api.created(
        "/v1/add_ons",
        json!({"code": "setup", "name": "Setup", "amount": "100.00", "amount_currency": "EUR"}),
        201,
    )
    .await;
    let clock = api
        .created(
            "/v1/test_clocks",
            json!({"frozen_time": "2025-01-01T00:00:00Z"}),
            201,
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (id, currency, plan, coupon, extra) in [
        ("alpha", "EUR", "team", "three-months", json!({})),
        ("beta", "JPY", "pro-jpy", "full", json!({})),
        (
            "gamma",
            "EUR",
            "pro-eur",
            "calls-half",
            json!({"tax_exempt": "reverse", "tax_ids": ["DE123456789"]}),
        ),
    ] {
        let mut body =
            json!({"customer_id": id, "name": id, "currency": currency, "test_clock_id": clock});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        api.created("/v1/customers", body, 201).await;
        api.created(
            "/v1/subscriptions",
            json!({"subscription_id": format!("sub-{id}"), "customer_id": id, "plan_code": plan,
                   "started_at": "2025-01-01T00:00:00Z"}),
            201,
        )
        .await;
        api.created(
            "/v1/applied_coupons",
            json!({"customer_id": id, "coupon_code": coupon}),
            201,
        )
        .await;
    }
    api.created(
        "/v1/customers/alpha/payment_methods",
        json!({"kind": "card", "token": "pm_card_visa"}),
        201,
    )
    .await;
    let wallet = api
        .created(
            "/v1/wallets",
            json!({"customer_id": "alpha", "name": "Prepaid", "granted_credits": "30.00",
                   "paid_credits": "20.00"}),
            201,
        )
        .await;
    let wallet_id = wallet["wallet_id"].as_str().unwrap().to_owned();

    // January 1, then each month's usage and the first of the next month.
    api.advance_clock(&clock, "2025-01-01T01:00:00Z").await;
    for (k, first) in months_from(2025, 2, 12).iter().enumerate() {
        let (year, month) = (2025 + (k / 12) as i32, (k % 12) as u32 + 1);
        env.produce_usage(month_usage(year, month)).await;
        if first == "2025-03-01" {
            // Late January usage, once February's invoice is paid: 4 calls and a corrected seat count.
            let feb = issued_invoices(&api, "alpha", 3, WAIT).await;
            let feb_id = feb[2]["invoice_id"].as_str().unwrap().to_owned();
            eventually(WAIT, "alpha's February invoice paid", || async {
                (invoice(&api, &feb_id).await["payment_status"] == "paid").then_some(())
            })
            .await;
            let mut late: Vec<UsageEvent> = (0..4)
                .map(|i| {
                    event(
                        "alpha",
                        &format!("late-{i}"),
                        "calls",
                        "2025-01-25T10:00:00Z",
                        None,
                    )
                })
                .collect();
            late.push(event(
                "alpha",
                "seats-corrected",
                "seats",
                "2025-01-28T00:00:00Z",
                Some("3"),
            ));
            env.produce_usage(late).await;
        }
        if first == "2025-04-01" {
            // A one-off invoice for gamma on March 15, then its void.
            api.advance_clock(&clock, "2025-03-15T00:00:00Z").await;
            let one_off = api
                .created(
                    "/v1/invoices",
                    json!({"customer_id": "gamma", "fees": [{"add_on_code": "setup"}]}),
                    201,
                )
                .await;
            assert_eq!(
                (one_off["total"].as_str(), one_off["one_off"].as_bool()),
                (Some("100.00"), Some(true)),
                "{one_off}"
            );
            reconciles(&one_off);
            let number = one_off["number"].clone();
            let id = one_off["invoice_id"].as_str().unwrap();
            let voided = api
                .post(&format!("/v1/invoices/{id}/void"), json!({}))
                .await;
            assert_eq!(voided.status, 200, "{}", voided.body);
            assert_eq!(voided.body["status"], "void");
            assert_eq!(voided.body["number"], number);
        }
        api.advance_clock(&clock, &format!("{first}T01:00:00Z"))
            .await;
    }

    // alpha: 13 periodic invoices and the paid credits' own.
    let alpha = issued_invoices(&api, "alpha", 14, WAIT).await;
    let mut want = vec![
        row([
            "2025-01-01",
            "40.00",
            "4.00",
            "7.20",
            "43.20",
            "43.20",
            "0.00",
        ]),
        row([
            "2025-02-01",
            "55.00",
            "5.50",
            "9.90",
            "59.40",
            "6.80",
            "52.60",
        ]),
        row([
            "2025-03-01",
            "57.00",
            "5.70",
            "10.26",
            "61.56",
            "0.00",
            "61.56",
        ]),
    ];
    for d in months_from(2025, 4, 10) {
        want.push(row([
            &d, "55.00", "0.00", "11.00", "66.00", "0.00", "66.00",
        ]));
    }
    assert_eq!(figures(&alpha), want);
    let purchase: Vec<&Value> = alpha.iter().filter(|i| i["one_off"] == true).collect();
    assert_eq!(purchase.len(), 1);
    assert_eq!(purchase[0]["lines"][0]["kind"], "prepaid_credits");
    assert_eq!(
        (
            purchase[0]["total"].as_str(),
            purchase[0]["tax_total"].as_str()
        ),
        (Some("20.00"), Some("0.00"))
    );
    let periodic: Vec<&Value> = alpha.iter().filter(|i| i["one_off"] != true).collect();
    let (feb, mar) = (periodic[1], periodic[2]);
    let adjustment: Vec<&Value> = mar["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["kind"] == "adjustment")
        .collect();
    assert_eq!(adjustment.len(), 1);
    assert_eq!(
        adjustment[0]["description"],
        format!(
            "Usage adjustment for calls, 2025-01-01 to 2025-01-31 (invoice {})",
            feb["number"].as_str().unwrap()
        )
    );
    assert_eq!(
        (
            adjustment[0]["amount"].as_str(),
            adjustment[0]["tax"].as_str()
        ),
        (Some("2.00"), Some("0.36"))
    );
    // The seats' correction: a credit note on February's invoice, consumed by March's.
    let feb_id = feb["invoice_id"].as_str().unwrap();
    let mar_id = mar["invoice_id"].as_str().unwrap();
    let notes = api
        .get(&format!("/v1/invoices/{feb_id}/credit_notes"))
        .await
        .body["data"]
        .as_array()
        .cloned()
        .unwrap();
    assert_eq!(notes.len(), 1, "{notes:?}");
    let cn_id = notes[0]["credit_note_id"].as_str().unwrap().to_owned();
    assert_eq!(
        (
            notes[0]["kind"].as_str(),
            notes[0]["subtotal"].as_str(),
            notes[0]["tax_total"].as_str(),
            notes[0]["total"].as_str()
        ),
        (Some("credit"), Some("4.00"), Some("0.80"), Some("4.80"))
    );
    let used = eventually(WAIT, "the credit note consumed", || async {
        let c = api.get(&format!("/v1/credit_notes/{cn_id}")).await.body;
        (c["credit"]["remaining"] == "0.00").then_some(c)
    })
    .await;
    assert_eq!(used["credit"]["applied"][0]["invoice_id"], mar_id);
    assert_eq!(used["credit"]["applied"][0]["amount"], "4.80");
    let paid = eventually(WAIT, "March paid", || async {
        let i = invoice(&api, mar_id).await;
        (i["payment_status"] == "paid").then_some(i)
    })
    .await;
    assert_eq!(paid["payment"]["amount_paid"], "61.56", "{paid}");
    let attempts = api
        .get(&format!("/v1/invoices/{mar_id}/payments"))
        .await
        .body;
    assert_eq!(attempts["attempts"][0]["amount"], "56.76", "{attempts}");
    // The wallet: 50.00 credited, 50.00 consumed.
    let w = api
        .get(&format!("/v1/customers/alpha/wallets/{wallet_id}"))
        .await
        .body;
    assert_eq!(w["balance"], "0.00", "{w}");

    // beta: ¥0 with the 100 % coupon, then ¥6600 with ¥600 of inclusive JCT.
    let beta = issued_invoices(&api, "beta", 13, WAIT).await;
    let mut want = vec![row(["2025-01-01", "5500", "5500", "0", "0", "0", "0"])];
    for d in months_from(2025, 2, 12) {
        want.push(row([&d, "6600", "0", "600", "6600", "0", "6600"]));
    }
    assert_eq!(figures(&beta), want);
    assert_eq!(beta[1]["applied_taxes"][0]["code"], "jct");
    assert_eq!(beta[1]["applied_taxes"][0]["inclusive"], true);
    assert_eq!(beta[1]["applied_taxes"][0]["taxable_amount"], "6000");

    // gamma: reverse charge, half off the calls; the void one-off invoice kept with its number.
    let gamma = issued_invoices(&api, "gamma", 14, WAIT).await;
    let mut want = vec![row([
        "2025-01-01",
        "40.00",
        "0.00",
        "0.00",
        "40.00",
        "0.00",
        "40.00",
    ])];
    for d in months_from(2025, 2, 12) {
        want.push(row([&d, "45.00", "2.50", "0.00", "42.50", "0.00", "42.50"]));
    }
    assert_eq!(figures(&gamma), want);
    assert!(gamma.iter().filter(|i| i["one_off"] != true).all(|i| {
        i["tax_note"] == "Reverse charge: the customer accounts for the tax (tax id DE123456789)"
    }));
    let void: Vec<&Value> = gamma.iter().filter(|i| i["one_off"] == true).collect();
    assert_eq!(void.len(), 1);
    assert_eq!(void[0]["status"], "void");

    // ClickHouse: the lines of every issued invoice add up to the API's totals, per currency.
    let mut api_totals: std::collections::BTreeMap<String, Decimal> = Default::default();
    for i in alpha.iter().chain(&beta).chain(&gamma) {
        *api_totals
            .entry(i["currency"].as_str().unwrap().to_owned())
            .or_default() += dec(&i["total"]);
    }
    let ch = env.clickhouse();
    let totals: Vec<(String, String, u64)> = eventually(WAIT, "every invoice in ClickHouse", || async {
        let totals = ch
            .query(
                "SELECT currency, toString(sum(total)), uniqExact(invoice_id) FROM invoice_lines FINAL \
                 WHERE tenant_id = ? GROUP BY currency ORDER BY currency",
            )
            .bind(TENANT)
            .fetch_all::<(String, String, u64)>()
            .await
            .unwrap();
        (totals.iter().map(|r| r.2).sum::<u64>() == 41).then_some(totals)
    })
    .await;
    let ch_totals: std::collections::BTreeMap<String, Decimal> = totals
        .into_iter()
        .map(|(c, t, _)| (c, t.parse().unwrap()))
        .collect();
    assert_eq!(ch_totals, api_totals);

    // Analytics (docs/analytics.md) for an analyst key, as they settle (the MRR task and the payment facts
    // consumer write asynchronously).
    let analyst = Api::new(
        &services.api,
        &billing_tests::api_key(&env.settings, TENANT, billing_runtime::auth::Role::Analyst).await,
    );
    let report = |path: &'static str, fields: &'static [&'static str], want: Vec<Vec<String>>| {
        let analyst = &analyst;
        async move {
            eventually(WAIT, path, || async {
                let r = analyst.get(path).await;
                assert_eq!(r.status, 200, "{path}: {}", r.body);
                let got = columns(&r.body, fields);
                if got != want {
                    eprintln!("{path}: {got:?}");
                }
                (got == want).then_some(())
            })
            .await
        }
    };
    // MRR: alpha's and gamma's 40.00 from January 1 (no usage, coupons or taxes in it), beta's ¥5500.
    const MRR: &[&str] = &[
        "month",
        "currency",
        "starting_mrr",
        "new_mrr",
        "churned_mrr",
        "ending_mrr",
        "customers",
    ];
    let mut want = rows(&[
        &["2025-01", "EUR", "0.00", "80.00", "0.00", "80.00", "2"],
        &["2025-01", "JPY", "0", "5500", "0", "5500", "1"],
    ]);
    for m in 2..=12 {
        let month = format!("2025-{m:02}");
        want.extend(rows(&[
            &[&month, "EUR", "80.00", "0.00", "0.00", "80.00", "2"],
            &[&month, "JPY", "5500", "0", "0", "5500", "1"],
        ]));
    }
    report("/v1/analytics/mrr?from=2025-01&to=2025-12", MRR, want).await;
    // Revenue by plan, without tax (JCT inclusive taken out) and after coupons; the voided one-off left out; the
    // March adjustment (2.00 less its 10 %) in team's usage.
    const REVENUE: &[&str] = &[
        "month",
        "currency",
        "plan_code",
        "subscription_fees",
        "usage",
        "other",
        "net_revenue",
        "discounts",
    ];
    report(
        "/v1/analytics/revenue?from=2025-01&to=2025-03",
        REVENUE,
        rows(&[
            &[
                "2025-01", "EUR", "null", "0.00", "0.00", "20.00", "20.00", "0.00",
            ],
            &[
                "2025-01", "EUR", "pro-eur", "40.00", "0.00", "0.00", "40.00", "0.00",
            ],
            &[
                "2025-01", "EUR", "team", "36.00", "0.00", "0.00", "36.00", "4.00",
            ],
            &["2025-01", "JPY", "pro-jpy", "0", "0", "0", "0", "5500"],
            &[
                "2025-02", "EUR", "pro-eur", "40.00", "2.50", "0.00", "42.50", "2.50",
            ],
            &[
                "2025-02", "EUR", "team", "36.00", "13.50", "0.00", "49.50", "5.50",
            ],
            &[
                "2025-02", "JPY", "pro-jpy", "5000", "1000", "0", "6000", "0",
            ],
            &[
                "2025-03", "EUR", "pro-eur", "40.00", "2.50", "0.00", "42.50", "2.50",
            ],
            &[
                "2025-03", "EUR", "team", "36.00", "15.30", "0.00", "51.30", "5.70",
            ],
            &[
                "2025-03", "JPY", "pro-jpy", "5000", "1000", "0", "6000", "0",
            ],
        ]),
    )
    .await;
    // Collections in EUR: alpha pays by card (its paid credits on January 1, then each invoice as it is issued, the
    // March one after the 4.80 credit note's balance); gamma has no payment method, so its invoices pile up, past
    // due at once (no payment terms); the one-off of March 15 is issued and voided the same day.
    const COLLECTIONS: &[&str] = &[
        "month",
        "invoiced",
        "collected",
        "paid_by_credit",
        "outstanding",
        "overdue",
        "uncollectible",
    ];
    report(
        "/v1/analytics/collections?from=2025-01&to=2025-03&currency=EUR",
        COLLECTIONS,
        rows(&[
            &[
                "2025-01", "60.00", "20.00", "0.00", "40.00", "40.00", "0.00",
            ],
            &[
                "2025-02", "95.10", "52.60", "0.00", "82.50", "82.50", "0.00",
            ],
            &[
                "2025-03", "204.06", "56.76", "4.80", "125.00", "125.00", "0.00",
            ],
        ]),
    )
    .await;

    services.stop.cancel();
    payments.await.unwrap().unwrap();
    services.shutdown().await;
    env.cleanup().await;
}
