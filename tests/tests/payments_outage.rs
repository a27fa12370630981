//! The payments service when Cassandra stops answering (SIGSTOP for 20 s) just as it must charge: writing the
//! attempts times out and is tried again (and an action that still fails is started again at the next sweep); once Cassandra is back every invoice is paid,
//! each charged exactly once, and the service never stopped. (Its own test binary: the other tests would stall
//! with Cassandra.)

use std::sync::Arc;
use std::time::Duration;

use billing_runtime::publish::Publisher;
use billing_schemas::payment::{Payment, PaymentEvent, PaymentMethodAdded};
use billing_schemas::Encoding;
use billing_store::sandbox_ledger::SandboxLedgerStore;
use billing_tests::{cassandra_pid, eventually, Services, Stopped, TestEnv};
use chrono::{DateTime, Utc};
use serde_json::json;

const TENANT: &str = "acme";
const WAIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payments_wait_for_a_stopped_cassandra_and_charge_once() {
    let mut env = TestEnv::new("payments_outage").await;
    env.settings.query_api.write_wait = Duration::from_secs(60);
    let services = Services::start(&env.settings).await;
    let payments = tokio::spawn(billing_payments::run(
        env.settings.clone(),
        services.stop.clone(),
    ));
    let api = services.api_for(TENANT).await;
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
        "/v1/plans",
        json!({"code": "basic", "name": "Basic", "interval": "monthly", "currency": "EUR",
               "amount": "20.00", "pay_in_advance": true, "charges": []}),
        201,
    )
    .await;
    let customers = ["o-1", "o-2", "o-3"];
    for id in customers {
        api.created(
            "/v1/customers",
            json!({"customer_id": id, "name": id, "currency": "EUR", "test_clock_id": clock}),
            201,
        )
        .await;
        api.created(
            "/v1/subscriptions",
            json!({"subscription_id": format!("sub-{id}"), "customer_id": id, "plan_code": "basic",
                   "started_at": "2026-01-01T00:00:00Z"}),
            201,
        )
        .await;
    }
    // The invoices are finalized; nobody has a payment method yet, so nothing is charged.
    let r = api
        .post(
            &format!("/v1/test_clocks/{clock}/advance?wait_seconds=90"),
            json!({"frozen_time": "2026-01-01T01:00:00Z"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let mut invoices = Vec::new();
    for c in customers {
        let inv = eventually(WAIT, "an invoice", || async {
            let r = api.get(&format!("/v1/customers/{c}/invoices")).await;
            r.body["data"][0]["invoice_id"].as_str().map(str::to_owned)
        })
        .await;
        invoices.push(inv);
    }

    // Cassandra stops; the cards arrive through Kafka (the API would need Cassandra), and the service must charge.
    let publisher = Publisher::new(&env.settings.kafka).unwrap();
    let at: DateTime<Utc> = "2026-01-01T01:00:00Z".parse().unwrap();
    {
        let _stopped = Stopped::new(&cassandra_pid());
        for c in customers {
            let ev = PaymentEvent {
                tenant_id: TENANT.into(),
                event_id: format!("card-{c}"),
                occurred_at: at,
                payload: Payment::PaymentMethodAdded(PaymentMethodAdded {
                    customer_id: c.into(),
                    payment_method_id: format!("pm-{c}"),
                    kind: "card".into(),
                    token: "pm_card_visa".into(),
                    set_default: true,
                }),
            };
            publisher.payment_at(&ev, Encoding::Json).await.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(
            !payments.is_finished(),
            "payments stopped during the outage"
        );
    }

    for id in &invoices {
        eventually(WAIT, "paid after the outage", || async {
            let r = api.get(&format!("/v1/invoices/{id}")).await;
            (r.body["payment_status"] == "paid").then_some(())
        })
        .await;
    }
    let session = Arc::new(
        billing_runtime::cql::connect(&env.settings.cassandra)
            .await
            .unwrap(),
    );
    let ledger = SandboxLedgerStore::new(session, &env.settings.cassandra.keyspace)
        .await
        .unwrap();
    for id in &invoices {
        assert_eq!(
            ledger
                .charges_for(TENANT, &format!("{TENANT}.{id}.1"))
                .await
                .unwrap(),
            1,
            "{id} charged once"
        );
    }
    let charges = ledger.charges_of_tenant(TENANT).await.unwrap();
    assert_eq!(charges.len(), 3, "one charge per invoice: {charges:?}");
    assert!(!payments.is_finished(), "payments still running");
    // The outage was felt: writes timed out and were tried again.
    let metrics = reqwest::get(format!("http://{}/metrics", env.settings.payments.listen))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let failures: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("billing_payments_io_retries_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no failure counter in {metrics}"));
    assert!(failures >= 1, "no write was retried during the outage");

    services.stop.cancel();
    payments.await.unwrap().expect("payments ended cleanly");
    services.shutdown().await;
    env.cleanup().await;
}
