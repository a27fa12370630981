//! Getting paid on the real stack: the API, the invoicer, the payments service and the sandbox provider (its ledger
//! in Cassandra), on a test clock. Four customers on a 20.00 EUR plan paid in advance, retries after 1, 2 and 2
//! days (four tries), a reminder 3 days after the due date, dunning that suspends:
//!
//! - `c-ok` (pm_card_visa) is paid by its first attempt;
//! - `c-retry` (declines its first three charges) is declined three times and paid by the fourth attempt (the third
//!   retry), on day 6;
//! - `c-fail` (insufficient funds) is declined four times; on day 6 its invoice is uncollectible and its
//!   subscription suspended; a bank transfer then pays it, and the suspension is lifted;
//! - `c-bank` has no payment method and pays by bank transfer, recorded with `POST /v1/invoices/{id}/pay`;
//! - `c-ok` is refunded 5.00, then the 15.00 left, by two credit notes of type refund (numbered in their own
//!   sequence); what is not creditable or refundable is refused with a 422 and nothing published;
//! - `c-retry` gets a credit note of type credit of 8.00 on its January invoice: its February invoice is paid 8.00
//!   from that balance and 12.00 by card.
//!
//! And a SIGKILL of the payments process between the provider's charge and the state write, three times: each
//! invoice is charged exactly once (the sandbox counts calls and charges per idempotency key).

use std::time::Duration;

use billing_runtime::config::{DunningAction, RetryPreset, Settings};
use billing_store::sandbox_ledger::SandboxLedgerStore;
use billing_tests::api::Api;
use billing_tests::{eventually, spawn_service, Services, TestEnv};
use serde_json::{json, Value};

const TENANT: &str = "acme";
const WAIT: Duration = Duration::from_secs(90);

fn env_settings(env: &mut TestEnv) {
    let p = &mut env.settings.payments;
    p.retry_schedule = RetryPreset::Custom;
    p.retry_delays = [1u64, 2, 2]
        .iter()
        .map(|d| Duration::from_secs(d * 86_400).into())
        .collect();
    p.reminder_days = vec![3];
    p.dunning_action = DunningAction::Suspend;
    p.provider.sandbox_slow_delay = Duration::from_secs(5);
    env.settings.query_api.write_wait = Duration::from_secs(60);
}

async fn ledger(settings: &Settings) -> SandboxLedgerStore {
    let session = std::sync::Arc::new(
        billing_runtime::cql::connect(&settings.cassandra)
            .await
            .unwrap(),
    );
    SandboxLedgerStore::new(session, &settings.cassandra.keyspace)
        .await
        .unwrap()
}

/// Create the clock, the plan and the customers with their subscriptions (and methods when given).
async fn setup(api: &Api, customers: &[(&str, Option<&str>)]) -> String {
    let clock = api
        .created(
            "/v1/test_clocks",
            json!({"frozen_time": "2026-01-01T00:00:00Z"}),
            201,
        )
        .await;
    let clock = clock["id"].as_str().unwrap().to_owned();
    api.created(
        "/v1/plans",
        json!({"code": "basic", "name": "Basic", "interval": "monthly", "currency": "EUR",
               "amount": "20.00", "pay_in_advance": true, "charges": []}),
        201,
    )
    .await;
    for (id, method) in customers {
        api.created(
            "/v1/customers",
            json!({"customer_id": id, "name": id, "currency": "EUR", "test_clock_id": clock}),
            201,
        )
        .await;
        if let Some(token) = method {
            let m = api
                .created(
                    &format!("/v1/customers/{id}/payment_methods"),
                    json!({"kind": "card", "token": token}),
                    201,
                )
                .await;
            assert_eq!(m["is_default"], true, "{m}");
        }
        api.created(
            "/v1/subscriptions",
            json!({"subscription_id": format!("sub-{id}"), "customer_id": id, "plan_code": "basic",
                   "started_at": "2026-01-01T00:00:00Z"}),
            201,
        )
        .await;
    }
    clock
}

/// The customer's one invoice, once it exists.
async fn invoice_of(api: &Api, customer: &str) -> Value {
    eventually(WAIT, &format!("the invoice of {customer}"), || async {
        let r = api.get(&format!("/v1/customers/{customer}/invoices")).await;
        r.body["data"]
            .as_array()
            .and_then(|d| d.first().cloned())
            .filter(|i| i["status"] == "finalized")
    })
    .await
}

/// Wait until the invoice's payment satisfies `check`; the invoice then.
async fn payment_becomes(
    api: &Api,
    invoice: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    eventually(WAIT, what, || async {
        let r = api.get(&format!("/v1/invoices/{invoice}")).await;
        check(&r.body["payment"]).then_some(r.body)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_month_of_payments_retries_dunning_and_a_bank_transfer() {
    let mut env = TestEnv::new("payments").await;
    env_settings(&mut env);
    let services = Services::start(&env.settings).await;
    let payments = tokio::spawn(billing_payments::run(
        env.settings.clone(),
        services.stop.clone(),
    ));
    let api = services.api_for(TENANT).await;
    let clock = setup(
        &api,
        &[
            ("c-ok", Some("pm_card_visa")),
            ("c-retry", Some("pm_card_decline_then_succeed_3")),
            ("c-fail", Some("pm_card_chargeDeclinedInsufficientFunds")),
            ("c-bank", None),
        ],
    )
    .await;

    // Day 1: the invoices in advance are finalized and charged at once.
    api.advance_clock(&clock, "2026-01-01T01:00:00Z").await;
    let ok = invoice_of(&api, "c-ok").await;
    assert_eq!(ok["amount_due"], "20.00");
    let ok_id = ok["invoice_id"].as_str().unwrap().to_owned();
    let paid = payment_becomes(&api, &ok_id, "c-ok paid", |p| p["status"] == "paid").await;
    assert_eq!(paid["payment_status"], "paid");
    assert_eq!(paid["payment"]["amount_paid"], "20.00");
    assert_eq!(paid["payment"]["amount_remaining"], "0");
    assert_eq!(paid["payment"]["attempt_count"], 1);
    assert_eq!(paid["payment"]["paid_at"], "2026-01-01T00:00:00Z");

    let retry_id = invoice_of(&api, "c-retry").await["invoice_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let fail_id = invoice_of(&api, "c-fail").await["invoice_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let bank_id = invoice_of(&api, "c-bank").await["invoice_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for id in [&retry_id, &fail_id] {
        // The attempt's outcome, not only its start.
        let inv = payment_becomes(&api, id, "first decline", |p| {
            p["attempt_count"] == 1 && !p["next_payment_attempt"].is_null()
        })
        .await;
        assert_eq!(inv["payment_status"], "pending");
        assert_eq!(
            inv["payment"]["last_payment_error"]["code"],
            "insufficient_funds"
        );
        assert_eq!(
            inv["payment"]["next_payment_attempt"],
            "2026-01-02T00:00:00Z"
        );
        assert_eq!(inv["payment"]["amount_remaining"], "20.00");
    }
    // No payment method: nothing is tried.
    let bank = api.get(&format!("/v1/invoices/{bank_id}")).await.body;
    assert_eq!(bank["payment"]["status"], "pending");
    assert_eq!(bank["payment"]["attempt_count"], 0);

    // Day 2: the first retry, declined again; the next is two days later.
    api.advance_clock(&clock, "2026-01-02T01:00:00Z").await;
    for id in [&retry_id, &fail_id] {
        payment_becomes(&api, id, "second decline, next attempt on day 4", |p| {
            p["attempt_count"] == 2 && p["next_payment_attempt"] == "2026-01-04T00:00:00Z"
        })
        .await;
    }
    // Day 3: nothing is due.
    api.advance_clock(&clock, "2026-01-03T01:00:00Z").await;
    // Day 4: the second retry, declined; and the reminder 3 days after the due date (day 1).
    api.advance_clock(&clock, "2026-01-04T01:00:00Z").await;
    for id in [&retry_id, &fail_id] {
        payment_becomes(&api, id, "third decline, next attempt on day 6", |p| {
            p["attempt_count"] == 3 && p["next_payment_attempt"] == "2026-01-06T00:00:00Z"
        })
        .await;
    }
    let reminders = reminders_of(&env).await;
    let mut expected = vec![bank_id.clone(), fail_id.clone(), retry_id.clone()];
    expected.sort();
    assert_eq!(reminders, expected, "one reminder per unpaid invoice");

    // The bank transfer arrives: recorded outside the provider.
    let r = api
        .post(
            &format!("/v1/invoices/{bank_id}/pay"),
            json!({"paid_out_of_band": true, "reference": "SEPA-2026-0001"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["payment_status"], "paid");
    assert_eq!(r.body["payment"]["reference"], "SEPA-2026-0001");
    assert_eq!(r.body["payment"]["attempt_count"], 0);
    // Paid is paid: a second payment is refused.
    api.post(
        &format!("/v1/invoices/{bank_id}/pay"),
        json!({"paid_out_of_band": true}),
    )
    .await
    .problem(409, "already paid");

    // Day 6: the third retry pays c-retry; c-fail's last attempt fails and dunning suspends its subscription.
    api.advance_clock(&clock, "2026-01-06T01:00:00Z").await;
    let inv = payment_becomes(&api, &retry_id, "c-retry paid", |p| p["status"] == "paid").await;
    assert_eq!(inv["payment"]["attempt_count"], 4);
    assert_eq!(inv["payment"]["paid_at"], "2026-01-06T00:00:00Z");
    let inv = payment_becomes(&api, &fail_id, "c-fail uncollectible", |p| {
        p["status"] == "uncollectible"
    })
    .await;
    assert_eq!(inv["payment"]["attempt_count"], 4);
    assert_eq!(inv["payment"]["next_payment_attempt"], Value::Null);
    let sub = eventually(WAIT, "c-fail's subscription suspended", || async {
        let s = api.get("/v1/subscriptions/sub-c-fail").await.body;
        (s["status"] == "suspended").then_some(s)
    })
    .await;
    assert_eq!(sub["changes"][0]["kind"], "suspend", "{sub}");
    assert_eq!(sub["changes"][0]["effective_at"], "2026-01-06T00:00:00Z");
    assert_eq!(
        api.get("/v1/subscriptions/sub-c-ok").await.body["status"],
        "active"
    );
    // Suspended by dunning: not paused or resumed by hand.
    api.post("/v1/subscriptions/sub-c-fail/pause", json!({}))
        .await
        .problem(409, "suspended by dunning");
    // c-fail pays by bank transfer: the invoice is paid and the suspension lifted at the payment's time.
    let r = api
        .post(
            &format!("/v1/invoices/{fail_id}/pay"),
            json!({"paid_out_of_band": true, "reference": "SEPA-2026-0002"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["payment_status"], "paid");
    let sub = eventually(WAIT, "c-fail's suspension lifted", || async {
        let s = api.get("/v1/subscriptions/sub-c-fail").await.body;
        (s["status"] == "active").then_some(s)
    })
    .await;
    assert_eq!(sub["changes"][1]["kind"], "unsuspend", "{sub}");
    assert_eq!(sub["changes"][1]["effective_at"], "2026-01-06T01:00:00Z");

    refunds_from_credit_notes(&env, &api, &ok_id, &bank_id).await;

    // The attempts, as the payments service recorded them around each provider call.
    let attempts = api
        .get(&format!("/v1/invoices/{retry_id}/payments"))
        .await
        .body;
    let statuses: Vec<&str> = attempts["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["failed", "failed", "failed", "succeeded"]);
    assert_eq!(
        attempts["attempts"][3]["started_at"],
        "2026-01-06T00:00:00Z"
    );

    // The provider saw each attempt once: one charge per key, and money taken twice in all (c-ok, c-retry).
    let ledger = ledger(&env.settings).await;
    let charges = ledger.charges_of_tenant(TENANT).await.unwrap();
    let succeeded: Vec<&str> = charges
        .iter()
        .filter(|c| c.kind == "charge" && c.outcome.contains("succeeded"))
        .map(|c| c.invoice_id.as_str())
        .collect();
    let mut want = vec![ok_id.as_str(), retry_id.as_str()];
    want.sort();
    let mut got = succeeded.clone();
    got.sort();
    assert_eq!(got, want, "{charges:?}");
    assert!(charges.iter().all(|c| c.charge_count == 1), "{charges:?}");
    // 1 + 4 + 4 attempts.
    assert_eq!(charges.iter().filter(|c| c.kind == "charge").count(), 9);
    // And two refunds of c-ok's charge, each once.
    let refunds: Vec<_> = charges.iter().filter(|c| c.kind == "refund").collect();
    assert_eq!(refunds.len(), 2, "{charges:?}");
    let mut amounts: Vec<String> = refunds.iter().map(|r| r.amount.to_string()).collect();
    amounts.sort();
    assert_eq!(amounts, ["15.00", "5.00"]);
    assert!(refunds
        .iter()
        .all(|r| r.charge_count == 1 && r.invoice_id == ok_id));

    credit_balance(&api, &clock, &retry_id).await;

    services.stop.cancel();
    payments.await.unwrap().expect("payments ended cleanly");
    services.shutdown().await;
    env.cleanup().await;
}

/// Credit notes of type refund on c-ok's paid invoice (20.00, one line), and the ones refused.
async fn refunds_from_credit_notes(env: &TestEnv, api: &Api, ok_id: &str, bank_id: &str) {
    let path = format!("/v1/invoices/{ok_id}/credit_notes");
    let published_before = env
        .read_topic(&env.topics.invoices, 1000, Duration::from_secs(2))
        .await
        .len();
    // Refused: above the line, a type not available, an unknown reason, a refund of a bank transfer.
    let refused = [
        (
            json!({"type": "refund", "reason": "duplicate", "lines": [{"line_index": 0, "amount": "20.01"}]}),
            "lines[0].amount",
        ),
        (
            json!({"type": "refund", "reason": "duplicate", "lines": [{"line_index": 1, "amount": "1.00"}]}),
            "lines[0].line_index",
        ),
        (
            json!({"type": "refund", "reason": "duplicate", "lines": [{"line_index": 0, "amount": "-1"}]}),
            "lines[0].amount",
        ),
        (
            json!({"type": "gift", "reason": "duplicate", "lines": [{"line_index": 0, "amount": "1.00"}]}),
            "type",
        ),
        (
            json!({"type": "refund", "reason": "because", "lines": [{"line_index": 0, "amount": "1.00"}]}),
            "reason",
        ),
    ];
    for (body, field) in refused {
        api.post(&path, body).await.problem(422, field);
    }
    api.post(
        &format!("/v1/invoices/{bank_id}/credit_notes"),
        json!({"type": "refund", "reason": "duplicate", "lines": [{"line_index": 0, "amount": "1.00"}]}),
    )
    .await
    .problem(422, "type");

    // 5.00 back, then the 15.00 left.
    let mut numbers = Vec::new();
    for amount in ["5.00", "15.00"] {
        let r = api
            .post(
                &path,
                json!({"type": "refund", "reason": "product_unsatisfactory", "memo": "Outage",
                       "lines": [{"line_index": 0, "amount": amount}]}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let cn = &r.body;
        assert_eq!(cn["status"], "issued");
        assert_eq!(cn["invoice_id"], ok_id);
        assert_eq!(cn["kind"], "refund");
        assert_eq!(cn["total"], amount);
        assert_eq!(cn["lines"][0]["amount"], amount);
        assert_eq!(cn["lines"][0]["tax"], "0.00");
        numbers.push(cn["number"].as_str().unwrap().to_owned());
        let id = cn["credit_note_id"].as_str().unwrap().to_owned();
        let refunded = eventually(WAIT, "the refund", || async {
            let c = api.get(&format!("/v1/credit_notes/{id}")).await.body;
            (c["refund"]["status"] != "pending").then_some(c)
        })
        .await;
        assert_eq!(refunded["refund"]["status"], "succeeded", "{refunded}");
        assert!(refunded["refund"]["provider_reference"]
            .as_str()
            .is_some_and(|r| !r.is_empty()));
    }
    // Gap-free, in their own sequence.
    assert!(numbers[0].ends_with("-CN-000001"), "{numbers:?}");
    assert!(numbers[1].ends_with("-CN-000002"), "{numbers:?}");
    // Nothing left to credit.
    api.post(
        &path,
        json!({"type": "refund", "reason": "duplicate", "lines": [{"line_index": 0, "amount": "0.01"}]}),
    )
    .await
    .problem(422, "lines[0].amount");
    let listed = api.get(&path).await.body;
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(2), "{listed}");
    // Exactly the two credit notes were published (the refused requests published nothing).
    let created = env
        .read_topic(&env.topics.invoices, 1000, Duration::from_secs(2))
        .await
        .len();
    assert_eq!(created, published_before + 2);
}

/// A credit note of type credit on c-retry's paid January invoice pays part of its February invoice.
async fn credit_balance(api: &Api, clock: &str, january: &str) {
    let r = api
        .post(
            &format!("/v1/invoices/{january}/credit_notes"),
            json!({"type": "credit", "reason": "order_change",
                   "lines": [{"line_index": 0, "amount": "8.00"}]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["kind"], "credit");
    assert_eq!(r.body["credit"]["remaining"], "8.00", "{}", r.body);
    assert_eq!(r.body["refund"], Value::Null);
    assert!(r.body["number"].as_str().unwrap().ends_with("-CN-000003"));
    let cn = r.body["credit_note_id"].as_str().unwrap().to_owned();

    api.advance_clock(clock, "2026-02-01T01:00:00Z").await;
    let february = eventually(WAIT, "c-retry's February invoice", || async {
        let r = api.get("/v1/customers/c-retry/invoices").await;
        r.body["data"].as_array().and_then(|d| {
            d.iter()
                .find(|i| i["billing_date"] == "2026-02-01T00:00:00Z" && i["status"] == "finalized")
                .cloned()
        })
    })
    .await;
    let id = february["invoice_id"].as_str().unwrap().to_owned();
    assert_eq!(february["amount_due"], "20.00");
    let paid = payment_becomes(api, &id, "February paid", |p| p["status"] == "paid").await;
    assert_eq!(paid["payment"]["amount_paid"], "20.00", "{paid}");
    let attempts = api.get(&format!("/v1/invoices/{id}/payments")).await.body;
    let attempts = attempts["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(attempts[0]["amount"], "12.00");
    assert_eq!(attempts[0]["status"], "succeeded");
    let credit = eventually(WAIT, "the credit note used up", || async {
        let c = api.get(&format!("/v1/credit_notes/{cn}")).await.body;
        (c["credit"]["remaining"] == "0.00").then_some(c)
    })
    .await;
    assert_eq!(credit["credit"]["applied"][0]["invoice_id"], id.as_str());
    assert_eq!(credit["credit"]["applied"][0]["amount"], "8.00");
    assert_eq!(
        credit["credit"]["applied"].as_array().map(Vec::len),
        Some(1)
    );
}

fn child_alive(child: &mut std::process::Child) -> bool {
    matches!(child.try_wait(), Ok(None))
}

/// Invoice ids of the `DunningReminder` events on `billing.payments`, sorted.
async fn reminders_of(env: &TestEnv) -> Vec<String> {
    eventually(WAIT, "three reminders", || async {
        let msgs = env
            .read_topic(&env.topics.payments, 1000, Duration::from_secs(3))
            .await;
        let mut ids: Vec<String> = msgs
            .iter()
            .filter_map(|m| {
                use rdkafka::Message;
                let ev: billing_schemas::payment::PaymentEvent =
                    billing_schemas::decode(m.payload()?, billing_runtime::kafka::content_type(m))
                        .ok()?;
                match ev.payload {
                    billing_schemas::payment::Payment::DunningReminder(r) => {
                        assert_eq!(r.days_after_due, 3);
                        Some(r.invoice_id)
                    }
                    _ => None,
                }
            })
            .collect();
        ids.sort();
        (ids.len() >= 3).then_some(ids)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sigkill_between_the_charge_and_the_state_write_never_charges_twice() {
    let mut env = TestEnv::new("payments_kill").await;
    env_settings(&mut env);
    let services = Services::start(&env.settings).await;
    let api = services.api_for(TENANT).await;
    let customers = ["k-1", "k-2", "k-3"];
    let with: Vec<(&str, Option<&str>)> = customers
        .iter()
        .map(|c| (*c, Some("pm_card_slow")))
        .collect();
    let clock = setup(&api, &with).await;
    let ledger = ledger(&env.settings).await;
    let spawn = || {
        spawn_service(
            &env.settings,
            "payments",
            &[
                (
                    "BILLING__PAYMENTS__GROUP_ID",
                    env.settings.payments.group_id.clone(),
                ),
                (
                    "BILLING__PAYMENTS__LISTEN",
                    billing_tests::free_addr().to_string(),
                ),
                ("BILLING__PAYMENTS__CONCURRENCY", "1".into()),
            ],
        )
    };
    let child = std::sync::Mutex::new(spawn());
    api.advance_clock(&clock, "2026-01-01T01:00:00Z").await;
    let mut ids = Vec::new();
    for c in customers {
        ids.push(
            invoice_of(&api, c).await["invoice_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    // Three times: wait until the sandbox has charged an invoice whose outcome is not written yet (the slow card
    // sleeps 5 s after charging), kill the process, start it again.
    let mut killed = Vec::new();
    for round in 0..3 {
        let victim = eventually(WAIT, "a charge in flight", || async {
            // (A child that exited on its own is a failure, not something to wait for.)
            assert!(
                child_alive(&mut child.lock().unwrap()),
                "billing payments exited by itself"
            );
            for id in &ids {
                if killed.contains(id) {
                    continue;
                }
                let key = format!("{TENANT}.{id}.1");
                let charged = ledger.charges_for(TENANT, &key).await.ok()? == 1;
                let payment = api.get(&format!("/v1/invoices/{id}")).await.body;
                if charged && payment["payment"]["status"] == "pending" {
                    return Some(id.clone());
                }
            }
            None
        })
        .await;
        {
            let mut c = child.lock().unwrap();
            c.kill().unwrap();
            c.wait().unwrap();
        }
        // The killed member leaves the group only when its session times out (10 s): the next process starts
        // after that, so it gets every partition at once. (Started earlier, it would get some, then all in a
        // second rebalance that aborts its workers and resumes them at once, closing the window this test
        // watches.)
        tokio::time::sleep(Duration::from_secs(11)).await;
        *child.lock().unwrap() = spawn();
        killed.push(victim);
        eprintln!(
            "round {round}: killed payments while {} was being charged",
            killed[round]
        );
    }
    for id in &ids {
        payment_becomes(&api, id, "paid after the restarts", |p| {
            p["status"] == "paid"
        })
        .await;
        let key = format!("{TENANT}.{id}.1");
        assert_eq!(
            ledger.charges_for(TENANT, &key).await.unwrap(),
            1,
            "{id} charged once"
        );
    }
    for id in &killed {
        let key = format!("{TENANT}.{id}.1");
        assert!(
            ledger.calls_for(TENANT, &key).await.unwrap() >= 2,
            "{id}: the restarted process called the provider again with the same key"
        );
    }
    let charges = ledger.charges_of_tenant(TENANT).await.unwrap();
    assert_eq!(
        charges.iter().filter(|c| c.kind == "charge").count(),
        3,
        "{charges:?}"
    );
    let mut c = child.into_inner().unwrap();
    c.kill().unwrap();
    c.wait().unwrap();
    services.shutdown().await;
    env.cleanup().await;
}
