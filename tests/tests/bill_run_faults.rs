//! The bill run under faults, on the real stack: an invoicer process killed with SIGKILL three times during a
//! bill run of 10,000 subscriptions, three times while it issues 900 credit notes, and three times while it bills
//! three months of 5,000 customers whose coupons and wallets pay their invoices; the invoicer's tables wiped
//! and rebuilt from the topics; malformed and inconsistent lifecycle events dead-lettered while the invoicer goes on.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use billing_runtime::kafka::dlq_headers;
use billing_schemas::catalog::{CatalogEvent, Interval, Plan};
use billing_schemas::invoice::{Invoice, InvoiceEvent};
use billing_schemas::lifecycle::{
    BillingTime, CustomerCreated, Lifecycle, LifecycleEvent, ProrationConvention,
    SubscriptionCreated, SubscriptionEffective,
};
use billing_schemas::Encoding;
use billing_store::invoices::InvoiceStatus;
use billing_tests::billing::{all_invoices, invoices_of};
use billing_tests::{eventually, high_watermarks, spawn_service, Services, TestEnv};
use chrono::{DateTime, Duration as Days, Utc};
use rust_decimal::{Decimal, RoundingStrategy};

const TENANT: &str = "acme";
const CLOCK: &str = "clk";

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn basic_plan() -> CatalogEvent {
    CatalogEvent::plan(
        TENANT,
        at("2026-01-01T00:00:00Z"),
        Plan {
            version: 1,
            effective_from: None,
            tax_codes: vec![],
            code: "basic".into(),
            name: "Basic".into(),
            interval: Interval::Monthly,
            currency: "EUR".into(),
            amount: "100".into(),
            pay_in_advance: true,
            trial_period_days: 0,
            charges: vec![],
        },
    )
}

/// A customer on the test clock and its subscription to `basic` from `start`.
fn customer_and_subscription(id: &str, start: DateTime<Utc>) -> [LifecycleEvent; 2] {
    let ev = |event_id: String, payload| LifecycleEvent {
        tenant_id: TENANT.into(),
        event_id,
        occurred_at: start,
        payload,
    };
    [
        ev(
            format!("customer-{id}"),
            Lifecycle::CustomerCreated(CustomerCreated {
                test_clock_id: Some(CLOCK.into()),
                ..CustomerCreated::new(id, id, "EUR", "UTC")
            }),
        ),
        ev(
            format!("subscription-{id}"),
            Lifecycle::SubscriptionCreated(SubscriptionCreated {
                subscription_id: format!("sub-{id}"),
                customer_id: id.into(),
                plan_code: "basic".into(),
                started_at: start,
                trial_ends_at: None,
                billing_time: BillingTime::Calendar,
                billing_anchor_day: None,
                proration: ProrationConvention::Days,
            }),
        ),
    ]
}

async fn invoices_published(env: &TestEnv) -> i64 {
    high_watermarks(&env.settings, &env.topics.invoices)
        .await
        .iter()
        .map(|(_, h)| h)
        .sum()
}

/// `n` customers `c0000`… on `basic` from January 1, billed for January by two `billing invoicer` processes (returned,
/// running).
async fn january_billed(
    env: &TestEnv,
    store: &billing_store::billing::BillingStore,
    n: usize,
) -> [std::process::Child; 2] {
    let publisher = env.publisher();
    publisher
        .catalog(&basic_plan(), Encoding::Json)
        .await
        .unwrap();
    let jan1 = at("2026-01-01T00:00:00Z");
    env.tick(TENANT, CLOCK, jan1).await;
    let mut sends = Vec::new();
    for i in 0..n {
        for ev in customer_and_subscription(&format!("c{i:04}"), jan1) {
            sends.push(publisher.send_lifecycle(&ev, Encoding::Avro).unwrap());
        }
    }
    for d in sends {
        billing_runtime::publish::ack(d).await.unwrap();
    }
    let spawn = || spawn_service(&env.settings, "invoicer", &[]);
    let children = [spawn(), spawn()];
    env.clock_reached(store, TENANT, CLOCK, jan1, Duration::from_secs(120))
        .await;
    eventually(Duration::from_secs(120), "the January invoices", || async {
        (invoices_published(env).await >= n as i64).then_some(())
    })
    .await;
    children
}

/// What `billing.invoices` says, read from its start: for each id `pick` finds in an event, every number it was
/// published with.
async fn published_numbers(
    env: &TestEnv,
    pick: impl Fn(Invoice) -> Option<(String, Option<String>)>,
) -> BTreeMap<String, BTreeSet<Option<String>>> {
    let published = env
        .read_topic(&env.topics.invoices, usize::MAX, Duration::from_secs(20))
        .await;
    let mut out: BTreeMap<String, BTreeSet<Option<String>>> = BTreeMap::new();
    for m in &published {
        let ev: InvoiceEvent = billing_schemas::decode(
            rdkafka::Message::payload(m).unwrap(),
            billing_runtime::kafka::content_type(m),
        )
        .unwrap();
        if let Some((id, number)) = pick(ev.payload) {
            out.entry(id).or_default().insert(number);
        }
    }
    out
}

/// Kill one of the two invoicer processes with SIGKILL three times, alternately, each time once `step` more messages
/// than at the previous kill (`published` at first) are on `billing.invoices`; each kill must land before all `total`
/// are, and the killed process is started again.
async fn sigkill_three_times(
    env: &TestEnv,
    children: &mut [std::process::Child; 2],
    mut published: i64,
    step: i64,
    total: i64,
    what: &str,
) {
    for kill in 0..3 {
        let target = published + step;
        eventually(
            Duration::from_secs(180),
            &format!("{what} before the kill"),
            || async { (invoices_published(env).await >= target).then_some(()) },
        )
        .await;
        children[kill % 2].kill().unwrap(); // SIGKILL
        children[kill % 2].wait().unwrap();
        published = invoices_published(env).await;
        if published >= total {
            // The kill came too late: stop the other process too before failing, so none outlives the test.
            for c in children.iter_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        assert!(
            published < total,
            "kill {} must land while {what} are published ({published} published)",
            kill + 1
        );
        children[kill % 2] = spawn_service(&env.settings, "invoicer", &[]);
    }
}

/// 10,000 customers start on January 1 + (i mod 28) days: each gets its start-date invoice, 100 × (32 − day)/31
/// rounded half-up to the cent, and its February 1 invoice of 100.00: 20,000 invoices. Two `billing invoicer`
/// processes share the partitions (and so claim numbers of the one tenant sequence at the same time); one of them
/// is killed with SIGKILL three times while they bill, and started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkilled_invoicer_issues_every_invoice_once_with_gap_free_numbers() {
    const CUSTOMERS: usize = 10_000;
    let env = TestEnv::new("bill_crash").await;
    let store = env.billing_store().await;
    let publisher = env.publisher();
    publisher
        .catalog(&basic_plan(), Encoding::Json)
        .await
        .unwrap();
    let jan1 = at("2026-01-01T00:00:00Z");
    env.tick(TENANT, CLOCK, jan1).await;
    let mut sends = Vec::new();
    let mut expected: BTreeMap<(String, DateTime<Utc>), Decimal> = BTreeMap::new();
    for i in 0..CUSTOMERS {
        let id = format!("c{i:05}");
        let day = (i % 28) as i64 + 1;
        let start = jan1 + Days::days(day - 1);
        // Days start..=Jan 31 inclusive, of 31.
        let jan = (Decimal::from(100 * (32 - day)) / Decimal::from(31))
            .round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
        expected.insert((id.clone(), start), jan);
        expected.insert((id.clone(), at("2026-02-01T00:00:00Z")), Decimal::from(100));
        for ev in customer_and_subscription(&id, start) {
            sends.push(publisher.send_lifecycle(&ev, Encoding::Avro).unwrap());
        }
    }
    for d in sends {
        billing_runtime::publish::ack(d).await.unwrap();
    }
    let spawn = || spawn_service(&env.settings, "invoicer", &[]);
    let mut children = [spawn(), spawn()];
    env.clock_reached(&store, TENANT, CLOCK, jan1, Duration::from_secs(120))
        .await;
    // Advance past February 1: the run bills all 20,000.
    let feb1 = at("2026-02-01T00:00:00Z");
    env.tick(TENANT, CLOCK, feb1).await;
    sigkill_three_times(
        &env,
        &mut children,
        0,
        1_000,
        2 * CUSTOMERS as i64,
        "invoices",
    )
    .await;
    env.clock_reached(&store, TENANT, CLOCK, feb1, Duration::from_secs(300))
        .await;
    for child in &mut children {
        child.kill().unwrap();
        child.wait().unwrap();
    }

    // Every billing date invoiced once, finalized, with the amount computed above.
    let invoices = all_invoices(&store, TENANT).await;
    assert_eq!(invoices.len(), 2 * CUSTOMERS);
    let mut numbers = BTreeSet::new();
    for inv in invoices.values() {
        assert_eq!(inv.status, InvoiceStatus::Finalized, "{}", inv.invoice_id);
        let want = expected[&(inv.customer_id.clone(), inv.billing_date)];
        assert_eq!(inv.total, want, "{} of {}", inv.invoice_id, inv.customer_id);
        assert!(
            numbers.insert(inv.number.clone().unwrap()),
            "duplicate number"
        );
    }
    // Numbers 1..=20,000: no gap, no duplicate.
    let want: BTreeSet<String> = (1..=2 * CUSTOMERS)
        .map(|n| format!("ACME-{n:06}"))
        .collect();
    assert_eq!(numbers, want);
    // Published: each invoice at least once (a kill between publishing and recording publishes again), always
    // with the same number.
    let by_id = published_numbers(&env, |ev| match ev {
        Invoice::InvoiceFinalized(f) => Some((f.invoice_id, Some(f.number))),
        _ => None,
    })
    .await;
    assert_eq!(by_id.len(), 2 * CUSTOMERS);
    for (id, nums) in &by_id {
        assert_eq!(nums.len(), 1, "{id} published with numbers {nums:?}");
        assert_eq!(nums.iter().next(), Some(&invoices[id].number));
    }
    // Analytics: one row per invoice, the same grand total.
    let (rows, total): (u64, String) = env
        .clickhouse()
        .query("SELECT count(), toString(sum(total)) FROM invoices FINAL")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(rows, 2 * CUSTOMERS as u64);
    assert_eq!(
        total.parse::<Decimal>().unwrap(),
        expected.values().sum::<Decimal>()
    );
    env.cleanup().await;
}

/// Coupons and wallet credits used, and credit notes issued, while the invoicer is killed: 5,000 customers on `basic`
/// (100.00 a month in advance) from January 1, each with a coupon of 150.00 applied once (the rest carried over) and a
/// wallet of 150.00 granted credits; one in ten cancels at once on February 15. January is billed first; then the
/// clock jumps to April 1 and one of two invoicer processes is killed with SIGKILL three times while they bill
/// February to April (14,500 invoices, chained per customer: each invoice's coupon and credits depend on the ones
/// before; and 500 credit notes). Expected per customer: Jan 100.00 − 100.00 coupon = 0.00; Feb 100.00 − 50.00 coupon
/// = 50.00, paid by 50.00 of credits; Mar 100.00, paid by the 100.00 of credits left; Apr 100.00 due in full. So the
/// coupon is used for 150.00 and the credits for 150.00, exactly, whatever the kills. A canceled customer's March 1
/// invoice credits February 16–28, 13/28 × 100 = −46.43, carried to its balance by one credit note of 46.43 on its
/// February invoice; the credit notes are numbered 1..=500 without a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkilled_invoicer_uses_every_coupon_and_credit_once() {
    use billing_schemas::catalog::{CouponFrequency, CouponType};
    use billing_schemas::lifecycle::{
        CouponApplied, SubscriptionCanceled, WalletCreated, WalletToppedUp,
    };
    const CUSTOMERS: usize = 5_000;
    let canceled = |i: usize| i.is_multiple_of(10);
    let feb15 = at("2026-02-15T00:00:00Z");
    let env = TestEnv::new("wallet_crash").await;
    let store = env.billing_store().await;
    let publisher = env.publisher();
    publisher
        .catalog(&basic_plan(), Encoding::Json)
        .await
        .unwrap();
    let jan1 = at("2026-01-01T00:00:00Z");
    env.tick(TENANT, CLOCK, jan1).await;
    let mut sends = Vec::new();
    for i in 0..CUSTOMERS {
        let id = format!("c{i:04}");
        let ev = |event_id: String, payload| LifecycleEvent {
            tenant_id: TENANT.into(),
            event_id,
            occurred_at: jan1,
            payload,
        };
        let extra = [
            ev(
                format!("coupon-{id}"),
                Lifecycle::CouponApplied(CouponApplied {
                    applied_coupon_id: format!("ac-{id}"),
                    customer_id: id.clone(),
                    subscription_id: None,
                    coupon_code: "big-welcome".into(),
                    coupon_type: CouponType::FixedAmount,
                    amount: Some("150.00".into()),
                    amount_currency: Some("EUR".into()),
                    percentage_rate: None,
                    frequency: CouponFrequency::Once,
                    frequency_duration: None,
                    plan_codes: vec![],
                    metric_codes: vec![],
                }),
            ),
            ev(
                format!("wallet-{id}"),
                Lifecycle::WalletCreated(WalletCreated {
                    wallet_id: format!("w-{id}"),
                    customer_id: id.clone(),
                    name: None,
                    expiration_at: None,
                }),
            ),
            ev(
                format!("top-up-{id}"),
                Lifecycle::WalletToppedUp(WalletToppedUp {
                    transaction_id: format!("wt-{id}"),
                    wallet_id: format!("w-{id}"),
                    customer_id: id.clone(),
                    granted_credits: "150.00".into(),
                    paid_credits: "0".into(),
                    invoice_id: None,
                }),
            ),
        ];
        let cancel = canceled(i).then(|| {
            ev(
                format!("cancel-{id}"),
                Lifecycle::SubscriptionCanceled(SubscriptionCanceled {
                    subscription_id: format!("sub-{id}"),
                    customer_id: id.clone(),
                    effective_at: feb15,
                    at_period_end: false,
                }),
            )
        });
        for ev in customer_and_subscription(&id, jan1)
            .into_iter()
            .chain(extra)
            .chain(cancel)
        {
            sends.push(publisher.send_lifecycle(&ev, Encoding::Avro).unwrap());
        }
    }
    for d in sends {
        billing_runtime::publish::ack(d).await.unwrap();
    }
    let spawn = || spawn_service(&env.settings, "invoicer", &[]);
    let mut children = [spawn(), spawn()];
    env.clock_reached(&store, TENANT, CLOCK, jan1, Duration::from_secs(120))
        .await;
    eventually(Duration::from_secs(120), "the January invoices", || async {
        (invoices_published(&env).await >= CUSTOMERS as i64).then_some(())
    })
    .await;
    let apr1 = at("2026-04-01T00:00:00Z");
    env.tick(TENANT, CLOCK, apr1).await;
    sigkill_three_times(
        &env,
        &mut children,
        CUSTOMERS as i64,
        300,
        4 * CUSTOMERS as i64,
        "invoices",
    )
    .await;
    env.clock_reached(&store, TENANT, CLOCK, apr1, Duration::from_secs(300))
        .await;
    for child in &mut children {
        child.kill().unwrap();
        child.wait().unwrap();
    }

    let d = |s: &str| s.parse::<Decimal>().unwrap();
    // (billing date, total, coupon, credits, due)
    let want = [
        ("2026-01-01T00:00:00Z", "0.00", "100.00", "0.00", "0.00"),
        ("2026-02-01T00:00:00Z", "50.00", "50.00", "50.00", "0.00"),
        ("2026-03-01T00:00:00Z", "100.00", "0.00", "100.00", "0.00"),
        ("2026-04-01T00:00:00Z", "100.00", "0.00", "0.00", "100.00"),
    ];
    let invoices = all_invoices(&store, TENANT).await;
    let n_canceled = (0..CUSTOMERS).filter(|i| canceled(*i)).count();
    assert_eq!(invoices.len(), 4 * CUSTOMERS - n_canceled);
    let notes = env.credit_note_store().await;
    let mut note_numbers = BTreeSet::new();
    let mut by_customer: BTreeMap<
        &str,
        BTreeMap<DateTime<Utc>, &billing_store::invoices::InvoiceView>,
    > = BTreeMap::new();
    for inv in invoices.values() {
        by_customer
            .entry(inv.customer_id.as_str())
            .or_default()
            .insert(inv.billing_date, inv);
    }
    let mut numbers = BTreeSet::new();
    for i in (0..CUSTOMERS).filter(|i| canceled(*i)) {
        let id = format!("c{i:04}");
        let mine = &by_customer[id.as_str()];
        let got: Vec<(Decimal, Decimal, Decimal, Decimal)> = mine
            .values()
            .map(|inv| {
                assert!(
                    numbers.insert(inv.number.clone().unwrap()),
                    "duplicate number"
                );
                (
                    inv.total,
                    inv.discount_total,
                    inv.credits_total,
                    inv.amount_due,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (d("0.00"), d("100.00"), d("0.00"), d("0.00")),
                (d("50.00"), d("50.00"), d("50.00"), d("0.00")),
                (d("-46.43"), d("0.00"), d("0.00"), d("0.00")),
            ],
            "{id}"
        );
        let feb = &mine[&at("2026-02-01T00:00:00Z")];
        let issued = notes.of_invoice(TENANT, &feb.invoice_id).await.unwrap();
        assert_eq!(issued.len(), 1, "{id}: one credit note");
        let cn = &issued[0];
        assert_eq!(
            (
                cn.kind.as_str(),
                cn.total,
                cn.lines.len(),
                cn.lines[0].line_index
            ),
            ("credit", d("46.43"), 1, 0),
            "{id}"
        );
        assert_eq!(
            mine[&at("2026-03-01T00:00:00Z")].carried_by,
            vec![cn.credit_note_id.clone()]
        );
        assert!(
            note_numbers.insert(cn.number.clone().unwrap()),
            "duplicate credit note number"
        );
    }
    let want_notes: BTreeSet<String> = (1..=n_canceled)
        .map(|n| format!("ACME-CN-{n:06}"))
        .collect();
    assert_eq!(
        note_numbers, want_notes,
        "credit note numbers without a gap"
    );
    for i in (0..CUSTOMERS).filter(|i| !canceled(*i)) {
        let id = format!("c{i:04}");
        let mine = &by_customer[id.as_str()];
        assert_eq!(mine.len(), 4, "{id}");
        let (mut coupon, mut credits) = (Decimal::ZERO, Decimal::ZERO);
        for (date, total, discount, used, due) in want {
            let inv = &mine[&at(date)];
            assert_eq!(inv.status, InvoiceStatus::Finalized);
            let got = (
                inv.total,
                inv.discount_total,
                inv.credits_total,
                inv.amount_due,
            );
            assert_eq!(got, (d(total), d(discount), d(used), d(due)), "{id} {date}");
            coupon += inv.coupons.iter().map(|c| c.amount).sum::<Decimal>();
            credits += inv.credits.iter().map(|c| c.amount).sum::<Decimal>();
            assert!(
                numbers.insert(inv.number.clone().unwrap()),
                "duplicate number"
            );
        }
        assert_eq!(
            (coupon, credits),
            (d("150.00"), d("150.00")),
            "{id}: used once"
        );
    }
    let all: BTreeSet<String> = (1..=4 * CUSTOMERS - n_canceled)
        .map(|n| format!("ACME-{n:06}"))
        .collect();
    assert_eq!(numbers, all, "numbers without a gap");
    env.cleanup().await;
}

/// Credit notes issued while the invoicer is killed: 300 customers with a 100.00 January invoice, then three credit
/// notes of type credit of 10.00 per invoice requested at once (900); two `billing invoicer` processes share the
/// partitions and one is killed with SIGKILL three times while they issue them. Every credit note is issued once, the
/// numbers are 1..=900 with no gap, each was published with one number only, and ClickHouse has each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkilled_invoicer_issues_every_credit_note_once_with_gap_free_numbers() {
    use billing_schemas::lifecycle::{CreditNoteKind, CreditNoteLineRequest, CreditNoteRequested};
    use billing_store::credit_notes::ISSUED;
    const CUSTOMERS: usize = 300;
    const PER_INVOICE: usize = 3;
    const NOTES: usize = CUSTOMERS * PER_INVOICE;
    let env = TestEnv::new("cn_crash").await;
    let store = env.billing_store().await;
    let notes = env.credit_note_store().await;
    let publisher = env.publisher();
    let jan1 = at("2026-01-01T00:00:00Z");
    let mut children = january_billed(&env, &store, CUSTOMERS).await;
    let mut sends = Vec::new();
    for k in 0..PER_INVOICE {
        for i in 0..CUSTOMERS {
            let customer = format!("c{i:04}");
            let ev = LifecycleEvent {
                tenant_id: TENANT.into(),
                event_id: format!("request-{i}-{k}"),
                occurred_at: jan1,
                payload: Lifecycle::CreditNoteRequested(CreditNoteRequested {
                    credit_note_id: format!("cn-{i:04}-{k}"),
                    invoice_id: billing_store::invoices::invoice_id(TENANT, &customer, jan1),
                    customer_id: customer,
                    kind: CreditNoteKind::Credit,
                    reason: "other".into(),
                    memo: None,
                    lines: vec![CreditNoteLineRequest {
                        line_index: 0,
                        amount: "10.00".into(),
                    }],
                }),
            };
            sends.push(publisher.send_lifecycle(&ev, Encoding::Avro).unwrap());
        }
    }
    for d in sends {
        billing_runtime::publish::ack(d).await.unwrap();
    }
    sigkill_three_times(
        &env,
        &mut children,
        CUSTOMERS as i64,
        60,
        (CUSTOMERS + NOTES) as i64,
        "credit notes",
    )
    .await;
    let ids: Vec<String> = (0..CUSTOMERS)
        .flat_map(|i| (0..PER_INVOICE).map(move |k| format!("cn-{i:04}-{k}")))
        .collect();
    let issued = eventually(
        Duration::from_secs(300),
        "every credit note issued",
        || async {
            let mut out = Vec::with_capacity(NOTES);
            for id in &ids {
                match notes.get(TENANT, id).await.unwrap() {
                    Some(cn) if cn.status == ISSUED => out.push(cn),
                    _ => return None,
                }
            }
            Some(out)
        },
    )
    .await;
    for child in &mut children {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let numbers: BTreeSet<String> = issued
        .iter()
        .map(|cn| {
            assert_eq!(cn.total, Decimal::new(1000, 2), "{}", cn.credit_note_id);
            cn.number.clone().unwrap()
        })
        .collect();
    let want: BTreeSet<String> = (1..=NOTES).map(|n| format!("ACME-CN-{n:06}")).collect();
    assert_eq!(numbers, want, "gap-free, no duplicate");
    let by_id = published_numbers(&env, |ev| match ev {
        Invoice::CreditNoteCreated(c) => Some((c.credit_note_id, Some(c.number))),
        _ => None,
    })
    .await;
    assert_eq!(by_id.len(), NOTES);
    for cn in &issued {
        let nums = &by_id[&cn.credit_note_id];
        assert_eq!(
            nums.len(),
            1,
            "{} published with {nums:?}",
            cn.credit_note_id
        );
        assert_eq!(nums.iter().next(), Some(&cn.number));
    }
    let (rows, total): (u64, String) = env
        .clickhouse()
        .query("SELECT count(), toString(sum(total)) FROM credit_notes FINAL")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(rows, NOTES as u64);
    assert_eq!(total.parse::<Decimal>().unwrap(), Decimal::from(10 * NOTES));
    env.cleanup().await;
}

/// Wiping every table the invoicer owns and running it again from the topics rebuilds the same invoices, byte for
/// byte (their JSON), with the same numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replaying_the_topics_rebuilds_the_same_invoices() {
    let env = TestEnv::new("bill_replay").await;
    let store = env.billing_store().await;
    let publisher = env.publisher();
    publisher
        .catalog(&basic_plan(), Encoding::Json)
        .await
        .unwrap();
    let services = Services::start(&env.settings).await;
    env.advance(&store, TENANT, CLOCK, "2026-01-01T00:00:00Z")
        .await;
    for i in 0..30 {
        let start = at("2026-01-01T00:00:00Z") + Days::days(i % 20);
        for ev in customer_and_subscription(&format!("r{i:02}"), start) {
            publisher.lifecycle(&ev, Encoding::Avro).await.unwrap();
        }
    }
    // One pause, so the rebuilt invoices have prorations too.
    publisher
        .lifecycle(
            &LifecycleEvent {
                tenant_id: TENANT.into(),
                event_id: "pause-r00".into(),
                occurred_at: at("2026-02-10T00:00:00Z"),
                payload: Lifecycle::SubscriptionPaused(SubscriptionEffective {
                    subscription_id: "sub-r00".into(),
                    customer_id: "r00".into(),
                    effective_at: at("2026-02-10T00:00:00Z"),
                }),
            },
            Encoding::Avro,
        )
        .await
        .unwrap();
    env.advance(&store, TENANT, CLOCK, "2026-02-01T00:00:00Z")
        .await;
    env.advance(&store, TENANT, CLOCK, "2026-03-01T00:00:00Z")
        .await;
    let before = all_invoices(&store, TENANT).await;
    assert_eq!(
        before.len(),
        90,
        "30 start invoices, 30 on Feb 1, 30 on Mar 1"
    );
    services.shutdown().await;

    let session = billing_runtime::cql::connect(&env.settings.cassandra)
        .await
        .unwrap();
    for (table, kind, writer) in billing_store::TABLES {
        if *writer == "invoicer" && *kind == billing_store::Store::Cql {
            let _ = session
                .query_unpaged(
                    format!("TRUNCATE {}.{table}", env.settings.cassandra.keyspace),
                    (),
                )
                .await;
        }
    }
    assert!(
        all_invoices(&store, TENANT).await.is_empty(),
        "tables wiped"
    );
    let services = Services::start(&env.settings).await;
    env.clock_reached(
        &store,
        TENANT,
        CLOCK,
        at("2026-03-01T00:00:00Z"),
        Duration::from_secs(120),
    )
    .await;
    let after = all_invoices(&store, TENANT).await;
    assert_eq!(after.len(), before.len());
    for (id, inv) in &before {
        assert_eq!(
            serde_json::to_string(&after[id]).unwrap(),
            serde_json::to_string(inv).unwrap(),
            "{id} rebuilt differently"
        );
    }
    services.shutdown().await;
    env.cleanup().await;
}

/// A lifecycle record that is not an event, and an event the subscription's history refuses (a resume of a
/// subscription that is not paused), go to `billing.lifecycle.dlq` with their reason; the invoicer bills on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_lifecycle_events_are_dead_lettered_and_the_invoicer_goes_on() {
    let env = TestEnv::new("bill_dlq").await;
    let store = env.billing_store().await;
    let services = Services::start(&env.settings).await;
    env.publisher()
        .catalog(&basic_plan(), Encoding::Json)
        .await
        .unwrap();
    env.advance(&store, TENANT, CLOCK, "2026-01-01T00:00:00Z")
        .await;
    let key = billing_schemas::customer_key(TENANT, "d1");
    env.produce(
        &env.topics.lifecycle,
        &key,
        b"{not json",
        Some("application/json"),
    )
    .await;
    for ev in customer_and_subscription("d1", at("2026-01-01T00:00:00Z")) {
        env.publish_lifecycle(&ev).await;
    }
    env.publish_lifecycle(&LifecycleEvent {
        tenant_id: TENANT.into(),
        event_id: "resume-d1".into(),
        occurred_at: at("2026-01-05T00:00:00Z"),
        payload: Lifecycle::SubscriptionResumed(SubscriptionEffective {
            subscription_id: "sub-d1".into(),
            customer_id: "d1".into(),
            effective_at: at("2026-01-05T00:00:00Z"),
        }),
    })
    .await;
    let dead = env
        .read_topic(&env.topics.lifecycle_dlq, 2, Duration::from_secs(60))
        .await;
    assert_eq!(dead.len(), 2);
    let reason = |m: &rdkafka::message::OwnedMessage| {
        use rdkafka::message::{Headers, Message};
        m.headers()
            .and_then(|h| h.iter().find(|h| h.key == dlq_headers::REASON))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    };
    assert!(
        reason(&dead[0]).contains("undecodable"),
        "{}",
        reason(&dead[0])
    );
    assert!(
        reason(&dead[1]).contains("inconsistent change"),
        "{}",
        reason(&dead[1])
    );
    // The customer is billed as if the bad events had not been sent.
    env.advance(&store, TENANT, CLOCK, "2026-02-01T00:00:00Z")
        .await;
    let invs = invoices_of(&store, TENANT, "d1").await;
    let totals: Vec<Decimal> = invs.values().map(|i| i.total).collect();
    assert_eq!(totals, vec![Decimal::from(100), Decimal::from(100)]);
    assert!(!services.invoicer_stopped());
    services.shutdown().await;
    env.cleanup().await;
}

/// The bill run waits for rating: with rating down, the usage of a closing period is not checkpointed, so the
/// invoicer neither bills without it nor stops; once rating is back, the invoice carries the usage.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bill_run_waits_for_rating_instead_of_billing_without_usage() {
    use billing_schemas::catalog::{Aggregation, Charge, ChargeModel};
    let mut env = TestEnv::new("bill_waits").await;
    env.settings.invoicer.usage_wait = Duration::from_secs(1);
    let store = env.billing_store().await;
    let publisher = env.publisher();
    let jan1 = at("2026-01-01T00:00:00Z");
    publisher
        .catalog(
            &CatalogEvent::metric(TENANT, jan1, "calls", Aggregation::Count, None, vec![]),
            Encoding::Json,
        )
        .await
        .unwrap();
    let mut plan = basic_plan();
    if let billing_schemas::catalog::Catalog::Plan(p) = &mut plan.payload {
        p.charges = vec![Charge::on_metric(
            "calls",
            "calls",
            ChargeModel::Standard,
            r#"{"amount":"1"}"#,
        )];
    }
    publisher.catalog(&plan, Encoding::Json).await.unwrap();
    let stop = billing_runtime::Shutdown::new();
    let invoicer = tokio::spawn(billing_invoicer::run(env.settings.clone(), stop.clone()));
    env.advance(&store, TENANT, CLOCK, "2026-01-01T00:00:00Z")
        .await;
    for ev in customer_and_subscription("w1", jan1) {
        env.publish_lifecycle(&ev).await;
    }
    for i in 0..3 {
        let e = billing_schemas::usage::UsageEvent {
            tenant_id: TENANT.into(),
            event_id: format!("w1-{i}"),
            customer_id: "w1".into(),
            metric_code: "calls".into(),
            timestamp: at("2026-01-10T00:00:00Z"),
            properties: Default::default(),
        };
        let key = billing_schemas::customer_key(TENANT, "w1");
        env.produce(
            &env.topics.usage,
            &key,
            &billing_schemas::encode(&e, Encoding::Json).unwrap(),
            Some("application/json"),
        )
        .await;
    }
    let feb1 = at("2026-02-01T00:00:00Z");
    env.tick(TENANT, CLOCK, feb1).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(!invoicer.is_finished(), "the invoicer keeps running");
    let invs = invoices_of(&store, TENANT, "w1").await;
    assert!(
        !invs.contains_key(&feb1),
        "January is not billed before its usage is rated: {invs:?}"
    );
    let rating = tokio::spawn(billing_rating::run(env.settings.clone(), stop.clone()));
    env.clock_reached(&store, TENANT, CLOCK, feb1, Duration::from_secs(120))
        .await;
    let invs = invoices_of(&store, TENANT, "w1").await;
    // 3 calls × 1.00, and February's fee of 100.00.
    let lines: Vec<(String, Decimal)> = invs[&feb1]
        .lines
        .iter()
        .map(|l| (l.kind.clone(), l.amount))
        .collect();
    assert_eq!(
        lines,
        vec![
            ("usage".into(), Decimal::from(3)),
            ("subscription_fee".into(), Decimal::from(100))
        ]
    );
    stop.cancel();
    invoicer.await.unwrap().unwrap();
    rating.await.unwrap().unwrap();
    env.cleanup().await;
}

/// One-off invoices issued while the invoicer is killed: 300 customers with a 100.00 January invoice, then three
/// one-off invoices of a 25.00 add-on each requested at once (900); two `billing invoicer` processes share the
/// partitions and one is killed with SIGKILL three times while they issue them. Every one-off invoice is issued
/// once, with its own number: together with January's, the numbers are 1..=1,200 without a gap, each published with
/// one number only; ClickHouse has each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkilled_invoicer_issues_every_one_off_invoice_once_with_gap_free_numbers() {
    use billing_schemas::lifecycle::{OneOffFee, OneOffInvoiceRequested};
    const CUSTOMERS: usize = 300;
    const PER_CUSTOMER: usize = 3;
    const ONE_OFFS: usize = CUSTOMERS * PER_CUSTOMER;
    let env = TestEnv::new("one_off_crash").await;
    let store = env.billing_store().await;
    let publisher = env.publisher();
    let jan1 = at("2026-01-01T00:00:00Z");
    let mut children = january_billed(&env, &store, CUSTOMERS).await;
    let id = |i: usize, k: usize| format!("inv_20260101_oneoff{i:04}{k}");
    let mut sends = Vec::new();
    for k in 0..PER_CUSTOMER {
        for i in 0..CUSTOMERS {
            let ev = LifecycleEvent {
                tenant_id: TENANT.into(),
                event_id: format!("one-off-{i}-{k}"),
                occurred_at: jan1,
                payload: Lifecycle::OneOffInvoiceRequested(OneOffInvoiceRequested {
                    invoice_id: id(i, k),
                    customer_id: format!("c{i:04}"),
                    fees: vec![OneOffFee {
                        add_on_code: "support".into(),
                        name: "Support".into(),
                        units: "1".into(),
                        unit_amount: "25.00".into(),
                        description: None,
                        tax_codes: vec![],
                    }],
                }),
            };
            sends.push(publisher.send_lifecycle(&ev, Encoding::Avro).unwrap());
        }
    }
    for d in sends {
        billing_runtime::publish::ack(d).await.unwrap();
    }
    sigkill_three_times(
        &env,
        &mut children,
        CUSTOMERS as i64,
        60,
        (CUSTOMERS + ONE_OFFS) as i64,
        "one-off invoices",
    )
    .await;
    let invoices = eventually(
        Duration::from_secs(300),
        "every one-off invoice issued",
        || async {
            let all = all_invoices(&store, TENANT).await;
            let done = all
                .values()
                .filter(|i| i.one_off && i.status == InvoiceStatus::Finalized)
                .count();
            (done == ONE_OFFS).then_some(all)
        },
    )
    .await;
    for child in &mut children {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    assert_eq!(invoices.len(), CUSTOMERS + ONE_OFFS);
    for i in 0..CUSTOMERS {
        for k in 0..PER_CUSTOMER {
            let inv = &invoices[&id(i, k)];
            assert!(inv.one_off, "{}", inv.invoice_id);
            assert_eq!(inv.total, Decimal::new(2500, 2), "{}", inv.invoice_id);
        }
    }
    let numbers: BTreeSet<String> = invoices
        .values()
        .map(|i| i.number.clone().unwrap())
        .collect();
    let want: BTreeSet<String> = (1..=CUSTOMERS + ONE_OFFS)
        .map(|n| format!("ACME-{n:06}"))
        .collect();
    assert_eq!(numbers, want, "gap-free, no duplicate");
    let by_id = published_numbers(&env, |ev| match ev {
        Invoice::InvoiceFinalized(f) => Some((f.invoice_id, Some(f.number))),
        _ => None,
    })
    .await;
    assert_eq!(by_id.len(), CUSTOMERS + ONE_OFFS);
    for (id, nums) in &by_id {
        assert_eq!(nums.len(), 1, "{id} published with numbers {nums:?}");
        assert_eq!(nums.iter().next(), Some(&invoices[id].number));
    }
    let (rows, total): (u64, String) = env
        .clickhouse()
        .query("SELECT count(), toString(sum(total)) FROM invoices FINAL WHERE invoice_id LIKE '%oneoff%'")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(rows, ONE_OFFS as u64);
    assert_eq!(
        total.parse::<Decimal>().unwrap(),
        Decimal::from(25 * ONE_OFFS)
    );
    env.cleanup().await;
}

/// Voids while the invoicer is killed: 300 customers with a 100.00 January invoice, all voided at once; two `billing
/// invoicer` processes share the partitions and one is killed with SIGKILL three times while they void them. Every
/// invoice ends void with its number kept (still 1..=300), `invoice.voided` is published for each with that number
/// (again after a kill, never with another), and ClickHouse `invoice_voids` has each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkilled_invoicer_voids_every_invoice_once_and_keeps_its_number() {
    use billing_schemas::lifecycle::InvoiceVoidRequested;
    const CUSTOMERS: usize = 300;
    let env = TestEnv::new("void_crash").await;
    let store = env.billing_store().await;
    let publisher = env.publisher();
    let jan1 = at("2026-01-01T00:00:00Z");
    let mut children = january_billed(&env, &store, CUSTOMERS).await;
    let numbered: BTreeMap<String, String> = all_invoices(&store, TENANT)
        .await
        .into_values()
        .map(|i| (i.invoice_id, i.number.unwrap()))
        .collect();
    assert_eq!(numbered.len(), CUSTOMERS);
    let mut sends = Vec::new();
    for i in 0..CUSTOMERS {
        let customer = format!("c{i:04}");
        let ev = LifecycleEvent {
            tenant_id: TENANT.into(),
            event_id: format!("void-{i}"),
            occurred_at: jan1,
            payload: Lifecycle::InvoiceVoidRequested(InvoiceVoidRequested {
                invoice_id: billing_store::invoices::invoice_id(TENANT, &customer, jan1),
                customer_id: customer,
                reason: Some("test".into()),
            }),
        };
        sends.push(publisher.send_lifecycle(&ev, Encoding::Avro).unwrap());
    }
    for d in sends {
        billing_runtime::publish::ack(d).await.unwrap();
    }
    sigkill_three_times(
        &env,
        &mut children,
        CUSTOMERS as i64,
        30,
        2 * CUSTOMERS as i64,
        "voids",
    )
    .await;
    let invoices = eventually(Duration::from_secs(300), "every invoice void", || async {
        let all = all_invoices(&store, TENANT).await;
        all.values()
            .all(|i| i.status == InvoiceStatus::Void)
            .then_some(all)
    })
    .await;
    for child in &mut children {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    assert_eq!(invoices.len(), CUSTOMERS);
    for inv in invoices.values() {
        assert_eq!(inv.number.as_ref(), Some(&numbered[&inv.invoice_id]));
        assert!(inv.voided_at.is_some(), "{}", inv.invoice_id);
    }
    let voided = published_numbers(&env, |ev| match ev {
        Invoice::InvoiceVoided(v) => Some((v.invoice_id, v.number)),
        _ => None,
    })
    .await;
    assert_eq!(voided.len(), CUSTOMERS);
    for (id, nums) in &voided {
        assert_eq!(
            nums.iter().collect::<Vec<_>>(),
            vec![&Some(numbered[id].clone())],
            "{id}"
        );
    }
    let rows: u64 = env
        .clickhouse()
        .query("SELECT count() FROM invoice_voids FINAL")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(rows, CUSTOMERS as u64);
    env.cleanup().await;
}
