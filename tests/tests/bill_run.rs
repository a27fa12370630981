//! The bill run on the real stack: customers and subscriptions published on `billing.lifecycle`, usage rated by
//! rating, a test clock advanced, and the invoicer's invoices checked amount by amount (computed by hand in the
//! comments), with gap-free numbers, `invoice.finalized` on `billing.invoices` and the rows in ClickHouse.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use billing_runtime::publish::Publisher;
use billing_schemas::catalog::{Aggregation, CatalogEvent, Charge, ChargeModel, Interval, Plan};
use billing_schemas::invoice::{Invoice, InvoiceEvent};
use billing_schemas::lifecycle::{
    BillingTime, ClockTick, CustomerCreated, Lifecycle, LifecycleEvent, ProrationConvention,
    SubscriptionChanged, SubscriptionCreated,
};
use billing_schemas::usage::UsageEvent;
use billing_schemas::{encode, Encoding};
use billing_store::billing::BillingStore;
use billing_store::invoices::{InvoiceStatus, InvoiceView};
use billing_tests::{eventually, Services, TestEnv};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

const TENANT: &str = "acme";
const CLOCK: &str = "clk";

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn dec(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn plan(code: &str, fee: &str, advance: bool, charges: Vec<Charge>) -> CatalogEvent {
    CatalogEvent::plan(
        TENANT,
        at("2026-01-01T00:00:00Z"),
        Plan {
            code: code.into(),
            name: code.into(),
            interval: Interval::Monthly,
            currency: "EUR".into(),
            amount: fee.into(),
            pay_in_advance: advance,
            trial_period_days: 0,
            charges,
        },
    )
}

fn customer(id: &str) -> LifecycleEvent {
    LifecycleEvent {
        tenant_id: TENANT.into(),
        event_id: format!("customer-{id}"),
        occurred_at: at("2026-01-01T00:00:00Z"),
        payload: Lifecycle::CustomerCreated(CustomerCreated {
            test_clock_id: Some(CLOCK.into()),
            ..CustomerCreated::new(id, id, "EUR", "UTC")
        }),
    }
}

fn subscription(
    customer: &str,
    id: &str,
    plan: &str,
    start: &str,
    billing_time: BillingTime,
) -> LifecycleEvent {
    LifecycleEvent {
        tenant_id: TENANT.into(),
        event_id: format!("subscription-{id}"),
        occurred_at: at(start),
        payload: Lifecycle::SubscriptionCreated(SubscriptionCreated {
            subscription_id: id.into(),
            customer_id: customer.into(),
            plan_code: plan.into(),
            started_at: at(start),
            trial_ends_at: None,
            billing_time,
            billing_anchor_day: None,
            proration: ProrationConvention::Days,
        }),
    }
}

fn calls(customer: &str, n: usize, when: &str) -> Vec<UsageEvent> {
    (0..n)
        .map(|i| UsageEvent {
            tenant_id: TENANT.into(),
            event_id: format!("{customer}-{when}-{i}"),
            customer_id: customer.into(),
            metric_code: "calls".into(),
            timestamp: at(when),
            properties: Default::default(),
        })
        .collect()
}

/// Move the test clock to `to` on every partition and wait until every partition's invoicer has billed up to it.
async fn advance(env: &TestEnv, store: &BillingStore, to: &str) {
    let tick = LifecycleEvent {
        tenant_id: TENANT.into(),
        event_id: format!("tick-{to}"),
        occurred_at: at(to),
        payload: Lifecycle::ClockTick(ClockTick {
            clock_id: CLOCK.into(),
            now: at(to),
        }),
    };
    env.publisher()
        .tick_everywhere(&tick, Encoding::Avro, env.settings.kafka.partitions)
        .await
        .unwrap();
    let partitions = env.settings.kafka.partitions;
    eventually(
        Duration::from_secs(90),
        &format!("clock at {to} everywhere"),
        || async {
            let clock = store.test_clock(TENANT, CLOCK).await.unwrap();
            (0..partitions)
                .all(|p| clock.get(&p).is_some_and(|t| *t >= at(to)))
                .then_some(())
        },
    )
    .await;
}

async fn invoices_of(store: &BillingStore, customer: &str) -> BTreeMap<DateTime<Utc>, InvoiceView> {
    let mut out = BTreeMap::new();
    for id in store.invoice_ids_of(TENANT, customer).await.unwrap() {
        let inv = store.invoice(TENANT, &id).await.unwrap().unwrap();
        out.insert(inv.billing_date, inv);
    }
    out
}

fn amounts(inv: &InvoiceView) -> Vec<(&str, Decimal)> {
    inv.lines
        .iter()
        .map(|l| (l.kind.as_str(), l.amount))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn billing_dates_become_numbered_invoices() {
    let env = TestEnv::new("bill_run").await;
    let services = Services::start(&env.settings).await;
    let session = Arc::new(
        billing_runtime::cql::connect(&env.settings.cassandra)
            .await
            .unwrap(),
    );
    let store = BillingStore::new(session, &env.settings.cassandra.keyspace)
        .await
        .unwrap();
    let publisher: Publisher = env.publisher();
    let std_calls = || {
        Charge::on_metric(
            "calls-std",
            "calls",
            ChargeModel::Standard,
            r#"{"amount":"0.5"}"#,
        )
    };
    for ev in [
        CatalogEvent::metric(
            TENANT,
            at("2026-01-01T00:00:00Z"),
            "calls",
            Aggregation::Count,
            None,
            vec![],
        ),
        plan("basic", "100", true, vec![std_calls()]),
        plan("pro", "200", true, vec![std_calls()]),
        plan("arrears", "31", false, vec![]),
    ] {
        publisher.catalog(&ev, Encoding::Json).await.unwrap();
    }
    // The clock starts on Jan 1.
    advance(&env, &store, "2026-01-01T00:00:00Z").await;
    for ev in [
        customer("cal"),
        subscription(
            "cal",
            "cal-1",
            "basic",
            "2026-01-15T00:00:00Z",
            BillingTime::Calendar,
        ),
        customer("anniv"),
        subscription(
            "anniv",
            "anniv-1",
            "arrears",
            "2026-01-10T00:00:00Z",
            BillingTime::Anniversary,
        ),
    ] {
        publisher.lifecycle(&ev, Encoding::Avro).await.unwrap();
    }
    for e in calls("cal", 10, "2026-01-20T10:00:00Z")
        .into_iter()
        .chain(calls("cal", 4, "2026-02-20T10:00:00Z"))
    {
        let key = billing_schemas::customer_key(TENANT, &e.customer_id);
        env.produce(
            &env.topics.usage,
            &key,
            &encode(&e, Encoding::Json).unwrap(),
            Some("application/json"),
        )
        .await;
    }

    advance(&env, &store, "2026-02-01T00:00:00Z").await;
    let cal = invoices_of(&store, "cal").await;
    // Jan 15: the advance fee for Jan 15..=31, 100 × 17/31 = 54.838… → 54.84.
    let jan15 = &cal[&at("2026-01-15T00:00:00Z")];
    assert_eq!(amounts(jan15), vec![("subscription_fee", dec("54.84"))]);
    assert_eq!(jan15.total, dec("54.84"));
    // Feb 1: January's 10 calls × 0.5 = 5.00, and February's fee in advance, 100.00.
    let feb1 = &cal[&at("2026-02-01T00:00:00Z")];
    assert_eq!(
        amounts(feb1),
        vec![("usage", dec("5.00")), ("subscription_fee", dec("100.00"))]
    );
    assert_eq!(feb1.total, dec("105.00"));
    assert!(cal.values().all(|i| i.status == InvoiceStatus::Finalized));
    // The anniversary customer in arrears has nothing to pay before its first period closes on Feb 10.
    assert!(invoices_of(&store, "anniv").await.is_empty());

    // An upgrade to `pro` on Feb 15, billed in advance: February's invoice on Mar 1 carries its prorations.
    publisher
        .lifecycle(
            &LifecycleEvent {
                tenant_id: TENANT.into(),
                event_id: "upgrade-cal-1".into(),
                occurred_at: at("2026-02-15T00:00:00Z"),
                payload: Lifecycle::SubscriptionChanged(SubscriptionChanged {
                    subscription_id: "cal-1".into(),
                    customer_id: "cal".into(),
                    new_plan_code: "pro".into(),
                    effective_at: at("2026-02-15T00:00:00Z"),
                    at_period_end: false,
                }),
            },
            Encoding::Avro,
        )
        .await
        .unwrap();
    advance(&env, &store, "2026-03-01T00:00:00Z").await;
    let cal = invoices_of(&store, "cal").await;
    let mar1 = &cal[&at("2026-03-01T00:00:00Z")];
    // Credit of basic for Feb 15..=28: −100 × 14/28 = −50.00; pro for the same 14 days: 200 × 14/28 = 100.00;
    // February's 4 calls × 0.5 = 2.00; March's pro fee in advance 200.00. Total 252.00.
    assert_eq!(
        amounts(mar1),
        vec![
            ("proration_credit", dec("-50.00")),
            ("subscription_fee", dec("100.00")),
            ("usage", dec("2.00")),
            ("subscription_fee", dec("200.00")),
        ]
    );
    assert_eq!(mar1.total, dec("252.00"));
    // Arrears: the period Jan 10 – Feb 9 (31 days) closes on Feb 10: 31.00.
    let anniv = invoices_of(&store, "anniv").await;
    let feb10 = &anniv[&at("2026-02-10T00:00:00Z")];
    assert_eq!(amounts(feb10), vec![("subscription_fee", dec("31.00"))]);

    // Five invoices, numbered ACME-000001..5 without a gap, each published once as invoice.finalized.
    let all: Vec<InvoiceView> = cal.values().chain(anniv.values()).cloned().collect();
    assert_eq!(all.len(), 4, "{all:#?}");
    let mut numbers: Vec<String> = all.iter().map(|i| i.number.clone().unwrap()).collect();
    numbers.sort();
    assert_eq!(
        numbers,
        (1..=4).map(|n| format!("ACME-{n:06}")).collect::<Vec<_>>()
    );
    let published = env
        .read_topic(&env.topics.invoices, 4, Duration::from_secs(30))
        .await;
    let mut seen = BTreeMap::new();
    for m in &published {
        let ev: InvoiceEvent = billing_schemas::decode(
            rdkafka::Message::payload(m).unwrap(),
            billing_runtime::kafka::content_type(m),
        )
        .unwrap();
        let Invoice::InvoiceFinalized(f) = ev.payload else {
            panic!("unexpected invoice event");
        };
        seen.insert(f.invoice_id.clone(), (f.number.clone(), f.total.clone()));
    }
    for inv in &all {
        assert_eq!(
            seen.get(&inv.invoice_id),
            Some(&(inv.number.clone().unwrap(), inv.total.to_string())),
            "{} published with its number and total",
            inv.invoice_id
        );
    }
    // ClickHouse has the same totals.
    let ch_total: Decimal = env
        .clickhouse()
        .query("SELECT toString(sum(total)) FROM invoices FINAL")
        .fetch_one::<String>()
        .await
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        ch_total,
        dec("54.84") + dec("105.00") + dec("252.00") + dec("31.00")
    );

    assert!(!services.invoicer_stopped());
    services.shutdown().await;
    env.cleanup().await;
}
