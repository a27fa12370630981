//! A store outage during a bill run: with Cassandra stopped (SIGSTOP) for longer than the driver's 30 s request
//! timeout while a billing date passes, the invoicer neither stops nor skips the run; once Cassandra is back, every
//! invoice is there, once, numbered without a gap. Its own test binary: nothing else runs while Cassandra is stopped.

use std::time::Duration;

use billing_schemas::catalog::{CatalogEvent, Interval, Plan};
use billing_schemas::lifecycle::{
    BillingTime, CustomerCreated, Lifecycle, LifecycleEvent, ProrationConvention,
    SubscriptionCreated,
};
use billing_schemas::Encoding;
use billing_store::invoices::InvoiceStatus;
use billing_tests::billing::all_invoices;
use billing_tests::{cassandra_pid, Services, Stopped, TestEnv};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

const TENANT: &str = "acme";
const CLOCK: &str = "clk";

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cassandra_outage_during_a_bill_run_delays_it_and_loses_nothing() {
    let env = TestEnv::new("bill_outage").await;
    let store = env.billing_store().await;
    let services = Services::start(&env.settings).await;
    let jan1 = at("2026-01-01T00:00:00Z");
    env.publisher()
        .catalog(
            &CatalogEvent::plan(
                TENANT,
                jan1,
                Plan {
                    code: "basic".into(),
                    name: "Basic".into(),
                    interval: Interval::Monthly,
                    currency: "EUR".into(),
                    amount: "100".into(),
                    pay_in_advance: true,
                    trial_period_days: 0,
                    charges: vec![],
                    version: 1,
                    effective_from: None,
                    tax_codes: vec![],
                },
            ),
            Encoding::Json,
        )
        .await
        .unwrap();
    env.advance(&store, TENANT, CLOCK, "2026-01-01T00:00:00Z")
        .await;
    for i in 0..5 {
        let id = format!("o{i}");
        let ev = |event_id: String, payload| LifecycleEvent {
            tenant_id: TENANT.into(),
            event_id,
            occurred_at: jan1,
            payload,
        };
        env.publish_lifecycle(&ev(
            format!("customer-{id}"),
            Lifecycle::CustomerCreated(CustomerCreated {
                test_clock_id: Some(CLOCK.into()),
                ..CustomerCreated::new(&id, &id, "EUR", "UTC")
            }),
        ))
        .await;
        env.publish_lifecycle(&ev(
            format!("subscription-{id}"),
            Lifecycle::SubscriptionCreated(SubscriptionCreated {
                subscription_id: format!("sub-{id}"),
                customer_id: id.clone(),
                plan_code: "basic".into(),
                started_at: jan1,
                trial_ends_at: None,
                billing_time: BillingTime::Calendar,
                billing_anchor_day: None,
                proration: ProrationConvention::Days,
            }),
        ))
        .await;
    }
    // The January 1 invoices, before the outage.
    env.advance(&store, TENANT, CLOCK, "2026-01-01T01:00:00Z")
        .await;
    assert_eq!(all_invoices(&store, TENANT).await.len(), 5);

    let feb1 = at("2026-02-01T00:00:00Z");
    {
        let _stopped = Stopped::new(&cassandra_pid());
        env.tick(TENANT, CLOCK, feb1).await;
        tokio::time::sleep(Duration::from_secs(40)).await;
        assert!(
            !services.invoicer_stopped(),
            "the invoicer waits out the outage"
        );
    }
    env.clock_reached(&store, TENANT, CLOCK, feb1, Duration::from_secs(180))
        .await;
    let invoices = all_invoices(&store, TENANT).await;
    assert_eq!(invoices.len(), 10, "5 customers × (Jan 1, Feb 1)");
    let mut numbers: Vec<String> = invoices
        .values()
        .map(|i| {
            assert_eq!(i.status, InvoiceStatus::Finalized);
            assert_eq!(i.total, Decimal::from(100));
            i.number.clone().unwrap()
        })
        .collect();
    numbers.sort();
    assert_eq!(
        numbers,
        (1..=10).map(|n| format!("ACME-{n:06}")).collect::<Vec<_>>()
    );
    assert!(!services.invoicer_stopped());
    services.shutdown().await;
    env.cleanup().await;
}
