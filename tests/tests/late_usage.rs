//! Late usage on the real stack (the API, rating, the invoicer, ClickHouse), on a test clock; every amount worked
//! out by hand here. Plan `metered`: 10.00 EUR a month in advance, `calls` at 0.50 each and `seats` (the latest
//! reading of the period) at 2.00 each, in arrears; the tenant's VAT of 20 % on every line.
//!
//! - Jan 1: January's fee, 10.00 + 2.00 = 12.00.
//! - Feb 1: February's fee 10.00, January's 10 calls 5.00 and 5 seats 10.00: 25.00 + 5.00 = 30.00.
//! - After Feb 1 is finalized, 4 more January calls arrive: the Mar 1 invoice carries an adjustment line for
//!   January's calls, priced now (14 calls, 7.00) less invoiced (5.00): +2.00. Mar 1: fee 10.00, February's 2 calls
//!   1.00, February's seats 0.00, adjustment 2.00: 13.00 + 2.60 = 15.60.
//! - After Mar 1, a corrected January seat count (3, read on Jan 28: the latest reading wins) and 2 more January
//!   calls: January's seats are priced 6.00 instead of 10.00, so a credit note of type credit on the Feb 1 invoice
//!   gives back 4.00 + 0.80 VAT = 4.80; January's 16 calls are priced 8.00, invoiced 5.00 + 2.00: adjustment +1.00 on
//!   the Apr 1 invoice: 10.00 + 0.00 + 0.00 + 1.00 = 11.00 + 2.20 = 13.20.
//!   The upcoming-invoice preview shows the adjustment before the bill run makes it.
//! - May 1: nothing late, no adjustment and no second credit note (a correction is made once).
//! - A year later (clock at 2027-02-01): a March 2026 call is still billed (adjustment on the Mar 2027 invoice:
//!   +0.50), while a January 2026 call, more than 12 months before the clock, is dead-lettered `period_closed`.
//!
//! Every invoice reconciles, and ClickHouse `invoice_lines` gives the API's totals, the adjustment lines included.

use std::time::Duration;

use billing_runtime::kafka::dlq_headers;
use billing_schemas::usage::UsageEvent;
use billing_tests::api::Api;
use billing_tests::invoices::{dec, issued_invoices, reconciles};
use billing_tests::{eventually, Services, TestEnv};
use rdkafka::message::{Headers, Message};
use rust_decimal::Decimal;
use serde_json::{json, Value};

const TENANT: &str = "acme";
const CUSTOMER: &str = "late-eur";
const WAIT: Duration = Duration::from_secs(90);

fn event(id: &str, metric: &str, when: &str, props: &[(&str, &str)]) -> UsageEvent {
    UsageEvent {
        tenant_id: TENANT.into(),
        event_id: id.into(),
        customer_id: CUSTOMER.into(),
        metric_code: metric.into(),
        timestamp: when.parse().unwrap(),
        properties: props
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

fn calls(prefix: &str, n: usize, when: &str) -> Vec<UsageEvent> {
    (0..n)
        .map(|i| event(&format!("{prefix}-{i}"), "calls", when, &[]))
        .collect()
}

/// The invoice's lines of one kind: (description, amount).
fn lines_of(inv: &Value, kind: &str) -> Vec<(String, String)> {
    inv["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["kind"] == kind)
        .map(|l| {
            (
                l["description"].as_str().unwrap().to_owned(),
                l["amount"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn totals(inv: &Value) -> (&str, &str, &str) {
    reconciles(inv);
    (
        inv["subtotal"].as_str().unwrap(),
        inv["tax_total"].as_str().unwrap(),
        inv["total"].as_str().unwrap(),
    )
}

async fn credit_notes_of(api: &Api, invoice_id: &str) -> Vec<Value> {
    api.get(&format!("/v1/invoices/{invoice_id}/credit_notes"))
        .await
        .body["data"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn late_usage_is_adjusted_credited_and_closed_after_the_horizon() {
    let mut env = TestEnv::new("late_usage").await;
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
        "/v1/billable_metrics",
        json!({"code": "seats", "aggregation": "latest_agg", "field_name": "seats"}),
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
        json!({"code": "metered", "interval": "monthly", "currency": "EUR", "amount": "10.00",
               "pay_in_advance": true, "charges": [
                   {"billable_metric_code": "calls", "charge_model": "standard",
                    "properties": {"amount": "0.50"}},
                   {"billable_metric_code": "seats", "charge_model": "standard",
                    "properties": {"amount": "2.00"}}]}),
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
        json!({"customer_id": CUSTOMER, "name": "Late", "currency": "EUR", "test_clock_id": clock}),
        201,
    )
    .await;
    api.created(
        "/v1/subscriptions",
        json!({"subscription_id": "sub-late", "customer_id": CUSTOMER, "plan_code": "metered",
               "started_at": "2026-01-01T00:00:00Z"}),
        201,
    )
    .await;

    // January, billed on Feb 1.
    env.produce_usage(calls("jan", 10, "2026-01-10T10:00:00Z"))
        .await;
    env.produce_usage(vec![event(
        "seats-jan-20",
        "seats",
        "2026-01-20T00:00:00Z",
        &[("seats", "5")],
    )])
    .await;
    api.advance_clock(&clock, "2026-02-01T01:00:00Z").await;
    let inv = issued_invoices(&api, CUSTOMER, 2, WAIT).await;
    assert_eq!(totals(&inv[0]), ("10.00", "2.00", "12.00"));
    assert_eq!(totals(&inv[1]), ("25.00", "5.00", "30.00"));
    let feb = inv[1].clone();
    let feb_id = feb["invoice_id"].as_str().unwrap().to_owned();
    let feb_number = feb["number"].as_str().unwrap().to_owned();

    // Four January calls after February's invoice was finalized, and February's usage.
    env.produce_usage(calls("jan-late", 4, "2026-01-25T10:00:00Z"))
        .await;
    env.produce_usage(calls("feb", 2, "2026-02-10T10:00:00Z"))
        .await;
    // The upcoming invoice shows the adjustment once rating has counted the late calls.
    let upcoming = eventually(WAIT, "the adjustment in the preview", || async {
        let r = api
            .post(
                &format!("/v1/customers/{CUSTOMER}/invoices/preview"),
                json!({}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        (r.body["subtotal"] == "13.00").then_some(r.body)
    })
    .await;
    assert_eq!(
        lines_of(&upcoming, "adjustment"),
        vec![(
            format!("Usage adjustment for calls, 2026-01-01 to 2026-01-31 (invoice {feb_number})"),
            "2.00".to_owned()
        )]
    );
    api.advance_clock(&clock, "2026-03-01T01:00:00Z").await;
    let inv = issued_invoices(&api, CUSTOMER, 3, WAIT).await;
    let mar = &inv[2];
    assert_eq!(totals(mar), ("13.00", "2.60", "15.60"));
    assert_eq!(
        lines_of(mar, "adjustment"),
        vec![(
            format!("Usage adjustment for calls, 2026-01-01 to 2026-01-31 (invoice {feb_number})"),
            "2.00".to_owned()
        )]
    );
    let adjustment = mar["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["kind"] == "adjustment")
        .unwrap();
    assert_eq!(adjustment["adjusts"], feb_id.as_str());
    assert_eq!(adjustment["tax"], "0.40");
    assert_eq!(
        mar["late_usage"],
        json!([{"invoice_id": feb_id, "subscription_id": "sub-late", "charge": "calls",
                "period_start": "2026-01-01T00:00:00Z", "amount": "2.00", "credit_notes": []}])
    );
    assert!(credit_notes_of(&api, &feb_id).await.is_empty());

    // A corrected January seat count (lower) and two more January calls.
    env.produce_usage(vec![event(
        "seats-jan-28",
        "seats",
        "2026-01-28T00:00:00Z",
        &[("seats", "3")],
    )])
    .await;
    env.produce_usage(calls("jan-later", 2, "2026-01-30T10:00:00Z"))
        .await;
    api.advance_clock(&clock, "2026-04-01T01:00:00Z").await;
    let inv = issued_invoices(&api, CUSTOMER, 4, WAIT).await;
    let apr = &inv[3];
    assert_eq!(totals(apr), ("11.00", "2.20", "13.20"));
    assert_eq!(
        lines_of(apr, "adjustment"),
        vec![(
            format!("Usage adjustment for calls, 2026-01-01 to 2026-01-31 (invoice {feb_number})"),
            "1.00".to_owned()
        )]
    );
    let notes = credit_notes_of(&api, &feb_id).await;
    assert_eq!(notes.len(), 1, "{notes:?}");
    let cn = &notes[0];
    assert_eq!(cn["kind"], "credit", "{cn}");
    assert_eq!(cn["status"], "issued", "{cn}");
    assert_eq!(
        (
            cn["subtotal"].as_str(),
            cn["tax_total"].as_str(),
            cn["total"].as_str()
        ),
        (Some("4.00"), Some("0.80"), Some("4.80")),
        "{cn}"
    );
    let seats_line = feb["lines"]
        .as_array()
        .unwrap()
        .iter()
        .position(|l| l["kind"] == "usage" && l["code"] == "seats")
        .unwrap();
    assert_eq!(cn["lines"][0]["line_index"], seats_line, "{cn}");
    let cn_id = cn["credit_note_id"].as_str().unwrap().to_owned();
    let recorded: Vec<(String, String, Vec<String>)> = apr["late_usage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["amount"].as_str().unwrap().to_owned(),
                u["invoice_id"].as_str().unwrap().to_owned(),
                u["credit_notes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c.as_str().unwrap().to_owned())
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        recorded,
        vec![
            ("1.00".to_owned(), feb_id.clone(), vec![]),
            ("-4.00".to_owned(), feb_id.clone(), vec![cn_id.clone()]),
        ]
    );

    // Nothing late: no adjustment, no new credit note.
    api.advance_clock(&clock, "2026-05-01T01:00:00Z").await;
    let inv = issued_invoices(&api, CUSTOMER, 5, WAIT).await;
    assert_eq!(totals(&inv[4]), ("10.00", "2.00", "12.00"));
    assert!(lines_of(&inv[4], "adjustment").is_empty());
    assert_eq!(credit_notes_of(&api, &feb_id).await.len(), 1);

    // A year on: March 2026 is still open to late usage, January 2026 is closed.
    api.advance_clock(&clock, "2027-02-01T01:00:00Z").await;
    let dlq_start = billing_tests::high_watermarks(&env.settings, &env.topics.usage_dlq).await;
    env.produce_usage(vec![
        event("closed", "calls", "2026-01-15T00:00:00Z", &[]),
        event("still-open", "calls", "2026-03-15T00:00:00Z", &[]),
    ])
    .await;
    let dead = env.read_topic(&env.topics.usage_dlq, 1, WAIT).await;
    assert!(
        dlq_start.iter().all(|(_, o)| *o == 0),
        "nothing was dead-lettered before: {dlq_start:?}"
    );
    assert_eq!(dead.len(), 1);
    let reason = dead[0]
        .headers()
        .and_then(|h| h.iter().find(|h| h.key == dlq_headers::REASON))
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default();
    assert!(reason.starts_with("period_closed"), "{reason}");
    assert!(
        String::from_utf8_lossy(dead[0].payload().unwrap()).contains("\"closed\""),
        "the closed event is the one dead-lettered"
    );
    api.advance_clock(&clock, "2027-03-01T01:00:00Z").await;
    let inv = issued_invoices(&api, CUSTOMER, 15, WAIT).await;
    let mar_2027 = &inv[14];
    let mar_2026_number = inv[3]["number"].as_str().unwrap();
    assert_eq!(
        lines_of(mar_2027, "adjustment"),
        vec![(
            format!(
                "Usage adjustment for calls, 2026-03-01 to 2026-03-31 (invoice {mar_2026_number})"
            ),
            "0.50".to_owned()
        )]
    );
    assert_eq!(totals(mar_2027), ("10.50", "2.10", "12.60"));

    // ClickHouse gives the API's totals, adjustment lines included.
    let ch = env.clickhouse();
    for i in [&inv[2], &inv[3], &inv[14]] {
        let id = i["invoice_id"].as_str().unwrap();
        let (total, adjusted): (String, String) =
            eventually(WAIT, "the invoice in ClickHouse", || async {
                ch.query(
                    "SELECT toString(sum(total)), toString(sumIf(amount, kind = 'adjustment')) \
                     FROM invoice_lines FINAL WHERE tenant_id = ? AND invoice_id = ? HAVING count() > 0",
                )
                .bind(TENANT)
                .bind(id)
                .fetch_optional::<(String, String)>()
                .await
                .unwrap()
            })
            .await;
        assert_eq!(total.parse::<Decimal>().unwrap(), dec(&i["total"]), "{id}");
        let expected: Decimal = lines_of(i, "adjustment")
            .iter()
            .map(|(_, a)| a.parse::<Decimal>().unwrap())
            .sum();
        assert_eq!(adjusted.parse::<Decimal>().unwrap(), expected, "{id}");
    }

    services.shutdown().await;
    env.cleanup().await;
}
