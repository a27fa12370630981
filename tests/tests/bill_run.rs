//! The bill run on the real stack: customers and subscriptions published on `billing.lifecycle`, usage rated by
//! rating, a test clock advanced, and the invoicer's invoices checked amount by amount (computed by hand in the
//! comments), with gap-free numbers, `invoice.finalized` on `billing.invoices` and the rows in ClickHouse.

use std::collections::BTreeMap;
use std::time::Duration;

use billing_runtime::publish::Publisher;
use billing_schemas::catalog::{Aggregation, CatalogEvent, Charge, ChargeModel, Interval, Plan};
use billing_schemas::invoice::{Invoice, InvoiceEvent};
use billing_schemas::lifecycle::{
    BillingTime, CustomerCreated, Lifecycle, LifecycleEvent, ProrationConvention,
    SubscriptionChanged, SubscriptionCreated,
};
use billing_schemas::usage::UsageEvent;
use billing_schemas::{encode, Encoding};
use billing_store::billing::BillingStore;
use billing_store::invoices::{InvoiceStatus, InvoiceView};
use billing_tests::{Services, TestEnv};
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
            version: 1,
            effective_from: None,
            tax_codes: vec![],
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

async fn advance(env: &TestEnv, store: &BillingStore, to: &str) {
    env.advance(store, TENANT, CLOCK, to).await;
}

async fn invoices_of(store: &BillingStore, customer: &str) -> BTreeMap<DateTime<Utc>, InvoiceView> {
    billing_tests::billing::invoices_of(store, TENANT, customer).await
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
    let store = env.billing_store().await;
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

    // The upcoming invoice, now (clock at Feb 1): March 1 will bill February's usage so far (the 4 calls of Feb 20
    // are rated: 2.00) and March's fee in advance (100.00). Nothing is stored.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let preview: InvoiceView = http
        .post(format!(
            "{}/v1/customers/cal/invoices/preview",
            services.api
        ))
        .bearer_auth(services.key(TENANT).await)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(preview.billing_date, at("2026-03-01T00:00:00Z"));
    assert_eq!(preview.status, InvoiceStatus::Draft);
    assert_eq!(preview.number, None);
    assert_eq!(
        amounts(&preview),
        vec![("usage", dec("2.00")), ("subscription_fee", dec("100.00"))]
    );
    assert!(store
        .invoice(TENANT, &preview.invoice_id)
        .await
        .unwrap()
        .is_none());

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

fn sub_with(
    customer: &str,
    id: &str,
    plan: &str,
    start: &str,
    edit: impl FnOnce(&mut SubscriptionCreated),
) -> LifecycleEvent {
    let mut ev = subscription(customer, id, plan, start, BillingTime::Calendar);
    if let Lifecycle::SubscriptionCreated(s) = &mut ev.payload {
        edit(s);
    }
    ev
}

fn customer_with(id: &str, edit: impl FnOnce(&mut CustomerCreated)) -> LifecycleEvent {
    let mut ev = customer(id);
    if let Lifecycle::CustomerCreated(c) = &mut ev.payload {
        edit(c);
    }
    ev
}

fn change(
    customer: &str,
    sub: &str,
    at_: &str,
    payload: impl FnOnce(String, String, DateTime<Utc>) -> Lifecycle,
) -> LifecycleEvent {
    LifecycleEvent {
        tenant_id: TENANT.into(),
        event_id: format!("{sub}-change-{at_}"),
        occurred_at: at(at_),
        payload: payload(sub.into(), customer.into(), at(at_)),
    }
}

fn usage(customer: &str, id: &str, metric: &str, when: &str, props: &[(&str, &str)]) -> UsageEvent {
    UsageEvent {
        tenant_id: TENANT.into(),
        event_id: id.into(),
        customer_id: customer.into(),
        metric_code: metric.into(),
        timestamp: at(when),
        properties: props
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
    }
}

fn plan_in(
    code: &str,
    currency: &str,
    fee: &str,
    advance: bool,
    charges: Vec<Charge>,
) -> CatalogEvent {
    let mut ev = plan(code, fee, advance, charges);
    if let billing_schemas::catalog::Catalog::Plan(p) = &mut ev.payload {
        p.currency = currency.into();
    }
    ev
}

/// A month in the life of fifteen customers on one test clock: every amount below is computed by hand in the
/// comment beside it. Plans are monthly; `basic` 100, `pro` 200 and `lite` 50 EUR in advance; January has 31
/// days and February 28.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_month_in_the_life() {
    use Lifecycle as L;
    let env = TestEnv::new("month_in_life").await;
    let services = Services::start(&env.settings).await;
    let store = env.billing_store().await;
    let publisher = env.publisher();
    let t0 = at("2026-01-01T00:00:00Z");
    let metric = |code: &str, agg, field: Option<&str>| {
        CatalogEvent::metric(TENANT, t0, code, agg, field, vec![])
    };
    let std_calls = || {
        Charge::on_metric(
            "calls-std",
            "calls",
            ChargeModel::Standard,
            r#"{"amount":"0.5"}"#,
        )
    };
    let with_min = Charge {
        min_amount: Some("20".into()),
        ..std_calls()
    };
    let volume = Charge::on_metric(
        "calls-volume",
        "calls",
        ChargeModel::Volume,
        r#"{"volume_ranges":[{"from_value":0,"to_value":100,"per_unit_amount":"1","flat_amount":"0"},{"from_value":100,"to_value":null,"per_unit_amount":"0.5","flat_amount":"0"}]}"#,
    );
    let graduated = Charge::on_metric(
        "gb-graduated",
        "gb",
        ChargeModel::Graduated,
        r#"{"graduated_ranges":[{"from_value":0,"to_value":10,"per_unit_amount":"0","flat_amount":"0"},{"from_value":10,"to_value":null,"per_unit_amount":"2","flat_amount":"0"}]}"#,
    );
    let package = Charge::on_metric(
        "files-package",
        "files",
        ChargeModel::Package,
        r#"{"amount":"10","free_units":100,"package_size":1000}"#,
    );
    for ev in [
        metric("calls", Aggregation::Count, None),
        metric("gb", Aggregation::Sum, Some("gb")),
        metric("files", Aggregation::Sum, Some("n")),
        plan("basic", "100", true, vec![]),
        plan("pro", "200", true, vec![]),
        plan("lite", "50", true, vec![]),
        plan("metered", "0", false, vec![volume, graduated, package]),
        plan("commit", "0", false, vec![with_min]),
        plan("payg", "0", false, vec![std_calls()]),
        plan_in("jp", "JPY", "1000", true, vec![]),
        plan_in("kw", "KWD", "10", true, vec![]),
    ] {
        publisher.catalog(&ev, Encoding::Json).await.unwrap();
    }
    advance(&env, &store, "2026-01-01T00:00:00Z").await;

    let jan1 = "2026-01-01T00:00:00Z";
    let jan15 = "2026-01-15T00:00:00Z";
    let mut lifecycle = Vec::new();
    for c in [
        "anchor",
        "up-days",
        "up-excl",
        "up-secs",
        "down",
        "pause",
        "cancel-now",
        "cancel-end",
        "trial",
        "metered",
        "commit",
        "two",
    ] {
        lifecycle.push(customer(c));
    }
    lifecycle.push(customer_with("jpy", |c| c.currency = "JPY".into()));
    lifecycle.push(customer_with("kwd", |c| c.currency = "KWD".into()));
    lifecycle.push(customer_with("grace", |c| c.invoice_grace_period_days = 3));
    lifecycle.extend([
        sub_with("anchor", "anchor-1", "basic", jan15, |s| {
            s.billing_time = BillingTime::Anniversary;
            s.billing_anchor_day = Some(1);
        }),
        sub_with("up-days", "up-days-1", "basic", jan1, |_| {}),
        sub_with("up-excl", "up-excl-1", "basic", jan1, |s| {
            s.proration = ProrationConvention::DaysExclusiveEnd
        }),
        sub_with("up-secs", "up-secs-1", "basic", jan1, |s| {
            s.proration = ProrationConvention::Seconds
        }),
        sub_with("down", "down-1", "basic", jan1, |_| {}),
        sub_with("pause", "pause-1", "basic", jan1, |_| {}),
        sub_with("cancel-now", "cancel-now-1", "basic", jan1, |_| {}),
        sub_with("cancel-end", "cancel-end-1", "basic", jan1, |_| {}),
        sub_with("trial", "trial-1", "basic", jan1, |s| {
            s.trial_ends_at = Some(at(jan15))
        }),
        sub_with("metered", "metered-1", "metered", jan1, |_| {}),
        sub_with("commit", "commit-1", "commit", jan1, |_| {}),
        sub_with("two", "two-a", "basic", jan1, |_| {}),
        sub_with("two", "two-b", "lite", jan1, |_| {}),
        sub_with("jpy", "jpy-1", "jp", jan15, |_| {}),
        sub_with("kwd", "kwd-1", "kw", jan15, |_| {}),
        sub_with("grace", "grace-1", "payg", jan1, |_| {}),
    ]);
    let upgrade = |c: &str, s: &str, when: &str| {
        change(c, s, when, |sub, cus, t| {
            L::SubscriptionChanged(SubscriptionChanged {
                subscription_id: sub,
                customer_id: cus,
                new_plan_code: "pro".into(),
                effective_at: t,
                at_period_end: false,
            })
        })
    };
    let effective =
        |sub: String, cus: String, t| billing_schemas::lifecycle::SubscriptionEffective {
            subscription_id: sub,
            customer_id: cus,
            effective_at: t,
        };
    let cancel = |c: &str, s: &str, when: &str, at_period_end: bool| {
        change(c, s, when, move |sub, cus, t| {
            L::SubscriptionCanceled(billing_schemas::lifecycle::SubscriptionCanceled {
                subscription_id: sub,
                customer_id: cus,
                effective_at: t,
                at_period_end,
            })
        })
    };
    lifecycle.extend([
        upgrade("up-days", "up-days-1", "2026-01-15T12:00:00Z"),
        upgrade("up-excl", "up-excl-1", "2026-01-15T12:00:00Z"),
        upgrade("up-secs", "up-secs-1", "2026-01-15T12:00:00Z"),
        change("down", "down-1", "2026-01-20T00:00:00Z", |sub, cus, t| {
            L::SubscriptionChanged(SubscriptionChanged {
                subscription_id: sub,
                customer_id: cus,
                new_plan_code: "lite".into(),
                effective_at: t,
                at_period_end: true,
            })
        }),
        change("pause", "pause-1", "2026-01-11T00:00:00Z", |s, c, t| {
            L::SubscriptionPaused(effective(s, c, t))
        }),
        change("pause", "pause-1", "2026-01-21T00:00:00Z", |s, c, t| {
            L::SubscriptionResumed(effective(s, c, t))
        }),
        cancel("cancel-now", "cancel-now-1", "2026-01-20T00:00:00Z", false),
        cancel("cancel-end", "cancel-end-1", "2026-01-20T00:00:00Z", true),
    ]);
    for ev in &lifecycle {
        publisher.lifecycle(ev, Encoding::Avro).await.unwrap();
    }
    let mut events = Vec::new();
    for i in 0..150 {
        events.push(usage(
            "metered",
            &format!("m-call-{i}"),
            "calls",
            "2026-01-10T00:00:00Z",
            &[],
        ));
    }
    events.push(usage(
        "metered",
        "m-gb-1",
        "gb",
        "2026-01-10T00:00:00Z",
        &[("gb", "20")],
    ));
    events.push(usage(
        "metered",
        "m-gb-2",
        "gb",
        "2026-01-11T00:00:00Z",
        &[("gb", "5.5")],
    ));
    events.push(usage(
        "metered",
        "m-files",
        "files",
        "2026-01-12T00:00:00Z",
        &[("n", "2350")],
    ));
    for i in 0..10 {
        events.push(usage(
            "commit",
            &format!("c-call-{i}"),
            "calls",
            "2026-01-10T00:00:00Z",
            &[],
        ));
        events.push(usage(
            "grace",
            &format!("g-call-{i}"),
            "calls",
            "2026-01-10T00:00:00Z",
            &[],
        ));
    }
    env.produce_usage(events).await;

    // Feb 1 with a 3-day grace period: the grace customer's January invoice is a draft (10 × 0.5 = 5.00).
    advance(&env, &store, "2026-02-01T00:00:00Z").await;
    let grace = invoices_of(&store, "grace").await;
    let draft = &grace[&at("2026-02-01T00:00:00Z")];
    assert_eq!(draft.status, InvoiceStatus::Draft);
    assert_eq!(draft.number, None);
    assert_eq!(draft.total, dec("5.00"));
    // Late usage for January, inside the grace period, refreshes the draft: 14 × 0.5 = 7.00.
    env.produce_usage(
        (0..4)
            .map(|i| {
                usage(
                    "grace",
                    &format!("g-late-{i}"),
                    "calls",
                    "2026-01-31T23:00:00Z",
                    &[],
                )
            })
            .collect(),
    )
    .await;
    advance(&env, &store, "2026-02-02T00:00:00Z").await;
    let draft = &invoices_of(&store, "grace").await[&at("2026-02-01T00:00:00Z")];
    assert_eq!(
        (draft.status, draft.total),
        (InvoiceStatus::Draft, dec("7.00"))
    );
    // The grace period ends on Feb 4: finalized and numbered, with what the draft said.
    advance(&env, &store, "2026-02-04T00:00:00Z").await;
    let fin = &invoices_of(&store, "grace").await[&at("2026-02-01T00:00:00Z")];
    assert_eq!(
        (fin.status, fin.total),
        (InvoiceStatus::Finalized, dec("7.00"))
    );
    assert!(fin.number.is_some());
    assert_eq!(fin.issued_at, Some(at("2026-02-04T00:00:00Z")));

    advance(&env, &store, "2026-03-01T00:00:00Z").await;
    let totals = |invs: &BTreeMap<DateTime<Utc>, InvoiceView>| -> Vec<(String, Decimal)> {
        invs.iter()
            .map(|(d, i)| (d.format("%m-%d").to_string(), i.total))
            .collect()
    };
    let expect = |c: &str, want: &[(&str, &str)]| {
        let want: Vec<(String, Decimal)> =
            want.iter().map(|(d, t)| ((*d).into(), dec(t))).collect();
        (c.to_owned(), want)
    };
    let cases = [
        // Start Jan 15 anchored on the 1st: Jan 15..=31 is 17/31 × 100 = 54.84, then full months.
        expect(
            "anchor",
            &[("01-15", "54.84"), ("02-01", "100.00"), ("03-01", "100.00")],
        ),
        // Upgrade on Jan 15 at noon, `days`: the day belongs to the new plan. Credit 17/31 × 100 = −54.84, pro
        // 17/31 × 200 = 109.68, February's pro fee 200: 254.84 on Feb 1.
        expect(
            "up-days",
            &[
                ("01-01", "100.00"),
                ("02-01", "254.84"),
                ("03-01", "200.00"),
            ],
        ),
        // `days_exclusive_end`: Jan 15 to Feb 1 exclusive, 17/31 = 0.548387097 → the same −54.84 and 109.68.
        expect(
            "up-excl",
            &[
                ("01-01", "100.00"),
                ("02-01", "254.84"),
                ("03-01", "200.00"),
            ],
        ),
        // `seconds`: 16.5 of 31 days left at noon: −53.23 (53.2258…) + 106.45 (106.4516…) + 200 = 253.22.
        expect(
            "up-secs",
            &[
                ("01-01", "100.00"),
                ("02-01", "253.22"),
                ("03-01", "200.00"),
            ],
        ),
        // Downgrade to lite at the end of January: February and March at 50.
        expect(
            "down",
            &[("01-01", "100.00"), ("02-01", "50.00"), ("03-01", "50.00")],
        ),
        // Paused Jan 11–20: credit Jan 11..=31 (21/31 × 100 = −67.74), resumed Jan 21..=31 (11/31 × 100 =
        // 35.48), February 100: 67.74.
        expect(
            "pause",
            &[("01-01", "100.00"), ("02-01", "67.74"), ("03-01", "100.00")],
        ),
        // Canceled at once on Jan 20 (`days`: Jan 20 is the last day served): credit Jan 21..=31, 11/31 × 100
        // = −35.48; nothing after.
        expect("cancel-now", &[("01-01", "100.00"), ("02-01", "-35.48")]),
        // Canceled at the end of January: January was paid in advance; nothing after.
        expect("cancel-end", &[("01-01", "100.00")]),
        // Trial until Jan 15: nothing on Jan 1; Jan 15..=31 (54.84) with February's 100 on Feb 1.
        expect("trial", &[("02-01", "154.84"), ("03-01", "100.00")]),
        // Volume: 150 calls all at the second tier, 0.5 → 75.00; graduated: 25.5 GB, 10 free then 15.5 × 2 =
        // 31.00; package: 2,350 files, 100 free, ⌈2,250 / 1,000⌉ = 3 packages × 10 = 30.00. 136.00 for January;
        // February has no usage: 0.00, still issued.
        expect("metered", &[("02-01", "136.00"), ("03-01", "0.00")]),
        // 10 calls × 0.5 = 5.00, lifted to the 20.00 minimum by a 15.00 true-up; February: 0 + 20.00 true-up.
        expect("commit", &[("02-01", "20.00"), ("03-01", "20.00")]),
        // Two subscriptions, one invoice per billing date: 100 + 50.
        expect(
            "two",
            &[
                ("01-01", "150.00"),
                ("02-01", "150.00"),
                ("03-01", "150.00"),
            ],
        ),
        // JPY has no minor unit: 17/31 × 1000 = 548.38… → 548.
        expect(
            "jpy",
            &[("01-15", "548"), ("02-01", "1000"), ("03-01", "1000")],
        ),
        // KWD has three decimals: 17/31 × 10 = 5.4838… → 5.484.
        expect(
            "kwd",
            &[("01-15", "5.484"), ("02-01", "10.000"), ("03-01", "10.000")],
        ),
    ];
    let mut numbers = Vec::new();
    for (c, want) in &cases {
        let invs = invoices_of(&store, c).await;
        assert_eq!(&totals(&invs), want, "{c}");
        for i in invs.values() {
            assert_eq!(i.status, InvoiceStatus::Finalized, "{c} {}", i.invoice_id);
            numbers.push(i.number.clone().unwrap());
        }
    }
    // Line by line where the total could hide a mistake.
    let two = invoices_of(&store, "two").await;
    let jan = &two[&at(jan1)];
    assert_eq!(
        jan.subscription_ids,
        vec!["two-a".to_owned(), "two-b".to_owned()]
    );
    assert_eq!(
        amounts(jan),
        vec![
            ("subscription_fee", dec("100.00")),
            ("subscription_fee", dec("50.00"))
        ]
    );
    let commit = invoices_of(&store, "commit").await;
    assert_eq!(
        amounts(&commit[&at("2026-02-01T00:00:00Z")]),
        vec![("usage", dec("5.00")), ("true_up", dec("15.00"))]
    );
    let metered = invoices_of(&store, "metered").await;
    assert_eq!(
        amounts(&metered[&at("2026-02-01T00:00:00Z")]),
        vec![
            ("usage", dec("75.00")),
            ("usage", dec("31.00")),
            ("usage", dec("30.00"))
        ]
    );
    // The grace customer's February invoice is a draft until Mar 4; every finalized invoice has its own number
    // and together they are 1..N.
    let grace = invoices_of(&store, "grace").await;
    assert_eq!(
        grace[&at("2026-03-01T00:00:00Z")].status,
        InvoiceStatus::Draft
    );
    numbers.push(grace[&at("2026-02-01T00:00:00Z")].number.clone().unwrap());
    // The canceled customer's negative February total is carried to its credit balance: a credit note of type
    // `credit` on January's invoice, crediting 35.48 of its fee line.
    let cancel = invoices_of(&store, "cancel-now").await;
    let feb = &cancel[&at("2026-02-01T00:00:00Z")];
    let paid_jan = &cancel[&at(jan1)];
    let notes = env
        .credit_note_store()
        .await
        .of_invoice(TENANT, &paid_jan.invoice_id)
        .await
        .unwrap();
    assert_eq!(notes.len(), 1, "{notes:?}");
    let cn = &notes[0];
    assert_eq!(feb.carried_by, vec![cn.credit_note_id.clone()]);
    assert_eq!(
        (cn.status.as_str(), cn.kind.as_str(), cn.total),
        ("issued", "credit", dec("35.48"))
    );
    assert_eq!(
        cn.lines
            .iter()
            .map(|l| (l.line_index, l.amount))
            .collect::<Vec<_>>(),
        vec![(0, dec("35.48"))]
    );
    assert_eq!(cn.credit.as_ref().map(|c| c.remaining), Some(dec("35.48")));
    numbers.sort();
    let n = numbers.len();
    assert_eq!(
        numbers,
        (1..=n).map(|k| format!("ACME-{k:06}")).collect::<Vec<_>>()
    );

    assert!(!services.invoicer_stopped());
    services.shutdown().await;
    env.cleanup().await;
}

/// A plan updated through the API with a date: subscriptions started before keep the old version, those started
/// after bill the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plan_versions_apply_from_their_date() {
    let env = TestEnv::new("plan_versions").await;
    let services = Services::start(&env.settings).await;
    let store = env.billing_store().await;
    env.publisher()
        .catalog(&plan("p", "100", true, vec![]), Encoding::Json)
        .await
        .unwrap();
    advance(&env, &store, "2026-01-01T00:00:00Z").await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let updated: serde_json::Value = http
        .post(format!("{}/v1/plans/p", services.api))
        .bearer_auth(services.key(TENANT).await)
        .json(&serde_json::json!({"amount": "200", "effective_from": "2026-02-01"}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(updated["version"], 2);
    for ev in [
        customer("old"),
        subscription(
            "old",
            "old-1",
            "p",
            "2026-01-01T00:00:00Z",
            BillingTime::Calendar,
        ),
        customer("new"),
        subscription(
            "new",
            "new-1",
            "p",
            "2026-02-05T00:00:00Z",
            BillingTime::Calendar,
        ),
    ] {
        env.publish_lifecycle(&ev).await;
    }
    advance(&env, &store, "2026-03-01T00:00:00Z").await;
    let totals = |invs: BTreeMap<DateTime<Utc>, InvoiceView>| -> Vec<Decimal> {
        invs.values().map(|i| i.total).collect()
    };
    // Started on January 1 under version 1: 100 every month.
    assert_eq!(
        totals(invoices_of(&store, "old").await),
        vec![dec("100.00"), dec("100.00"), dec("100.00")]
    );
    // Started on February 5 under version 2: Feb 5..=28 is 24/28 × 200 = 171.43, then 200.
    assert_eq!(
        totals(invoices_of(&store, "new").await),
        vec![dec("171.43"), dec("200.00")]
    );
    services.shutdown().await;
    env.cleanup().await;
}
