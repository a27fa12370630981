//! Analytics on the real stack (`docs/analytics.md`).
//!
//! - `reports_give_the_known_figures_through_clickhouse_client_and_the_api`: a known data set written straight into
//!   ClickHouse's tables (two tenants); each report of `reports/` run by `clickhouse-client` as an analyst would and
//!   through `GET /v1/analytics/*` with an analyst key, every figure worked out by hand below; roles, tenant
//!   isolation, filters, pages, refused parameters, and a 503 within the report timeout while ClickHouse hangs; the
//!   `billing analytics mrr-chart` command draws the same MRR.
//! - `the_invoicer_keeps_every_subscriptions_mrr`: subscriptions changed through the API (trial, upgrade to a yearly
//!   plan, pause, resume, cancellation at period end, a plan's price edited); the invoicer writes their MRR and the
//!   API's MRR report follows, month by month.
//!
//! The known data set (tenant `acme`, EUR unless said; `other` has one customer at 999.00):
//! - MRR: `c1` 100 from Jan 1, 150 from Mar 15 (an upgrade: its second version); `c2` 50 from Feb 1 to Apr 1
//!   (churns in April: at the end of March it still pays); `c3` 80 from Feb 10 to May 1, then 40 (another
//!   subscription: contraction in May); `c5` ¥5000 whose latest version has no MRR (nothing in JPY).
//!   Jan: new 100 → 100 (1 customer). Feb: new 50 + 80 → 230 (3). Mar: expansion 50 → 280. Apr: churn 50 → 230 (2).
//!   May: contraction 40 → 190. Jun: 190. Churn in April: 1 of 3 customers (0.3333), 50 / 280 = 0.1785 (truncated);
//!   in May 40 / 230 = 0.1739.
//! - Revenue (lines net of coupons): Jan `basic` fee 100 − 10 and calls 20 − 2 → fees 90.00, usage 18.00, net 108.00,
//!   discounts 12.00. Feb `basic` fee 50.00; an add-on of 30.00 without a plan (other); `big` 80.00 on a voided
//!   invoice (left out). Mar `basic` −51.61 proration credit and a 5.00 usage adjustment (−46.61), `pro` 82.26.
//! - Collections: i1 129.60 due Jan 15, paid Jan 20 (10.00 refunded Feb 15); i2 70.00 due (80.00 − 10.00 credits)
//!   on Feb 1, 20.00 paid by credit Feb 5, 50.00 out of band Apr 10; i3 80.00 due Feb 24, voided Mar 5; i4 35.65
//!   due Apr 14, uncollectible May 20. Jan: invoiced = collected = 129.60, nothing owed. Feb: invoiced 150.00, credit
//!   20.00, refunded 10.00, outstanding = overdue = 50 + 80 = 130.00. Mar: invoiced 35.65, outstanding 85.65, overdue
//!   50.00 (i4 not due yet). Apr: collected 50.00, outstanding = overdue = 35.65. May and June: the same 35.65, now
//!   uncollectible (still owed).
//! - Usage: `c1` calls on Jan 10 (value 1, amount 0.50, inserted twice: a replay) and Jan 11 (2.5, 1.25); `c2`
//!   seats 5 (10.00) on Feb 20 → Jan c1 calls: 2 events, 3.5 units, 1.75; Feb c2 seats: 1, 5, 10.

use std::time::{Duration, Instant};

use billing_runtime::auth::Role;
use billing_tests::api::{columns, rows, Api};
use billing_tests::{
    api_key, billing_binary, clickhouse_pid, eventually, Services, Stopped, TestEnv,
};
use serde_json::{json, Value};

const RUNNING: &str = "2100-01-01 00:00:00";

async fn execute(ch: &clickhouse::Client, sql: &str) {
    ch.query(sql)
        .execute()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn known_data_set(ch: &clickhouse::Client) {
    let mrr = format!(
        "INSERT INTO subscription_mrr VALUES \
         ('acme','s1','c1',1,0,'basic','EUR','2025-01-01 00:00:00','{RUNNING}',100), \
         ('acme','s1','c1',2,0,'basic','EUR','2025-01-01 00:00:00','2025-03-15 00:00:00',100), \
         ('acme','s1','c1',2,1,'pro','EUR','2025-03-15 00:00:00','{RUNNING}',150), \
         ('acme','s2','c2',1,0,'basic','EUR','2025-02-01 00:00:00','2025-04-01 00:00:00',50), \
         ('acme','s3','c3',1,0,'big','EUR','2025-02-10 00:00:00','2025-05-01 00:00:00',80), \
         ('acme','s4','c3',1,0,'small','EUR','2025-05-01 00:00:00','{RUNNING}',40), \
         ('acme','s5','c5',1,0,'pro-jpy','JPY','2025-01-01 00:00:00','{RUNNING}',5000), \
         ('acme','s5','c5',2,0,'','JPY','1970-01-01 00:00:00','1970-01-01 00:00:00',0), \
         ('other','sx','cx',1,0,'basic','EUR','2025-01-01 00:00:00','{RUNNING}',999)"
    );
    execute(ch, &mrr).await;
    // (tenant, invoice, customer, billing date, lines: (kind, plan, metric, amount, discount)).
    execute(
        ch,
        "INSERT INTO invoice_lines (tenant_id, invoice_id, line_no, customer_id, subscription_id, kind, description, \
         charge_id, period_start, period_end, units, amount, discount, tax, total, currency, billing_date, plan_code, \
         metric_code) VALUES \
         ('acme','i1',0,'c1','s1','subscription_fee','','basic',0,0,0,100,10,18,108,'EUR','2025-01-01 00:00:00','basic',''), \
         ('acme','i1',1,'c1','s1','usage','','calls',0,0,40,20,2,3.6,21.6,'EUR','2025-01-01 00:00:00','basic','calls'), \
         ('acme','i2',0,'c2','s2','subscription_fee','','basic',0,0,0,50,0,0,50,'EUR','2025-02-01 00:00:00','basic',''), \
         ('acme','i2',1,'c2','','add_on','','setup',0,0,1,30,0,0,30,'EUR','2025-02-01 00:00:00','',''), \
         ('acme','i3',0,'c3','s3','subscription_fee','','big',0,0,0,80,0,0,80,'EUR','2025-02-10 00:00:00','big',''), \
         ('acme','i4',0,'c1','s1','proration_credit','','basic',0,0,0,-51.61,0,0,-51.61,'EUR','2025-03-15 00:00:00','basic',''), \
         ('acme','i4',1,'c1','s1','subscription_fee','','pro',0,0,0,82.26,0,0,82.26,'EUR','2025-03-15 00:00:00','pro',''), \
         ('acme','i4',2,'c1','s1','adjustment','','calls',0,0,10,5,0,0,5,'EUR','2025-03-15 00:00:00','basic','calls'), \
         ('acme','i4',2,'c1','s1','adjustment','','calls',0,0,10,5,0,0,5,'EUR','2025-03-15 00:00:00','basic','calls'), \
         ('other','ix',0,'cx','sx','subscription_fee','','basic',0,0,0,999,0,0,999,'EUR','2025-01-01 00:00:00','basic','')",
    )
    .await;
    execute(
        ch,
        "INSERT INTO invoices VALUES \
         ('acme','i1','A-1','c1','EUR','2025-01-01 00:00:00','2025-01-01 00:00:00','2025-01-15 00:00:00','2025-01-01 00:00:00','2025-02-01 00:00:00',120,12,21.6,0,129.6), \
         ('acme','i2','A-2','c2','EUR','2025-02-01 00:00:00','2025-02-01 00:00:00','2025-02-01 00:00:00','2025-02-01 00:00:00','2025-03-01 00:00:00',80,0,0,10,80), \
         ('acme','i3','A-3','c3','EUR','2025-02-10 00:00:00','2025-02-10 00:00:00','2025-02-24 00:00:00','2025-02-10 00:00:00','2025-03-01 00:00:00',80,0,0,0,80), \
         ('acme','i4','A-4','c1','EUR','2025-03-15 00:00:00','2025-03-15 00:00:00','2025-04-14 00:00:00','2025-03-15 00:00:00','2025-04-01 00:00:00',35.65,0,0,0,35.65), \
         ('other','ix','O-1','cx','EUR','2025-01-01 00:00:00','2025-01-01 00:00:00','2025-01-01 00:00:00','2025-01-01 00:00:00','2025-02-01 00:00:00',999,0,0,0,999)",
    )
    .await;
    execute(
        ch,
        "INSERT INTO invoice_voids VALUES ('acme','i3','A-3','c3','duplicate','2025-03-05 00:00:00')",
    )
    .await;
    execute(
        ch,
        "INSERT INTO payments VALUES \
         ('acme','p1','i1','c1','succeeded',129.6,'EUR','2025-01-20 00:00:00'), \
         ('acme','p1','i1','c1','succeeded',129.6,'EUR','2025-01-20 00:00:00'), \
         ('acme','p2','i2','c2','credit',20,'EUR','2025-02-05 00:00:00'), \
         ('acme','p3','i1','c1','refund',10,'EUR','2025-02-15 00:00:00'), \
         ('acme','p4','i2','c2','out_of_band',50,'EUR','2025-04-10 00:00:00'), \
         ('acme','p5','i4','c1','uncollectible',0,'','2025-05-20 00:00:00')",
    )
    .await;
    execute(
        ch,
        "INSERT INTO usage_events VALUES \
         ('acme','e1','c1','s1','calls','2025-01-10 00:00:00','2025-01-10 00:00:01',1,0.5,'EUR','{}',0,1,0), \
         ('acme','e1','c1','s1','calls','2025-01-10 00:00:00','2025-01-10 00:00:01',1,0.5,'EUR','{}',0,1,0), \
         ('acme','e2','c1','s1','calls','2025-01-11 00:00:00','2025-01-11 00:00:01',2.5,1.25,'EUR','{}',0,2,1), \
         ('acme','e3','c2','s2','seats','2025-02-20 00:00:00','2025-02-20 00:00:01',5,10,'EUR','{}',1,1,0), \
         ('other','ex','cx','sx','calls','2025-01-10 00:00:00','2025-01-10 00:00:01',7,7,'EUR','{}',2,1,0)",
    )
    .await;
}

/// The rows of `tenant` a report gives when `clickhouse-client` runs its file, as an analyst would.
fn clickhouse_client(database: &str, report: &str, tenant: &str) -> Vec<String> {
    let file = std::fs::File::open(format!(
        "{}/../reports/{report}.sql",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let port = std::env::var("CH_TCP_PORT").unwrap_or_else(|_| "9000".into());
    let out = std::process::Command::new("clickhouse-client")
        .args(["--port", &port, "--database", database])
        .stdin(file)
        .output()
        .expect("clickhouse-client (deploy/local/stack installs it)");
    assert!(
        out.status.success(),
        "{report}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with(&format!("{tenant}\t")))
        .map(str::to_owned)
        .collect()
}

async fn ok(api: &Api, path: &str) -> Value {
    let r = api.get(path).await;
    assert_eq!(r.status, 200, "{path}: {}", r.body);
    r.body
}

#[tokio::test(flavor = "multi_thread")]
async fn reports_give_the_known_figures_through_clickhouse_client_and_the_api() {
    let env = TestEnv::new("analytics").await;
    let ch = env.clickhouse();
    known_data_set(&ch).await;
    let db = env.settings.clickhouse.database.clone();

    // As an analyst runs them.
    assert_eq!(
        clickhouse_client(&db, "mrr", "acme")[3],
        "acme\t2025-04-01\tEUR\t280.000000000\t0.000000000\t0.000000000\t0.000000000\t50.000000000\t230.000000000\t2"
    );
    assert!(clickhouse_client(&db, "mrr", "acme")
        .iter()
        .all(|l| l.contains("\tEUR\t")));
    assert_eq!(
        clickhouse_client(&db, "churn", "acme")[3],
        "acme\t2025-04-01\tEUR\t3\t0\t1\t2\t280.000000000\t50.000000000\t0.000000000\t0.3333\t0.1785"
    );
    assert_eq!(
        clickhouse_client(&db, "revenue", "acme")[..2],
        [
            "acme\t2025-01-01\tEUR\tbasic\t90.000000000\t18.000000000\t0.000000000\t108.000000000\t12.000000000\t1",
            "acme\t2025-02-01\tEUR\t\t0.000000000\t0.000000000\t30.000000000\t30.000000000\t0.000000000\t1",
        ]
    );
    assert_eq!(
        clickhouse_client(&db, "usage", "acme"),
        [
            "acme\t2025-01-01\tc1\tcalls\tEUR\t2\t3.500000000\t1.750000000\t1",
            "acme\t2025-02-01\tc2\tseats\tEUR\t1\t5.000000000\t10.000000000\t0",
        ]
    );
    assert_eq!(
        clickhouse_client(&db, "collections", "acme")[2],
        "acme\t2025-03-01\tEUR\t35.650000000\t0.000000000\t0.000000000\t0.000000000\t85.650000000\t50.000000000\t0.000000000"
    );

    // The chart command draws the same figures.
    let svg = std::env::temp_dir().join(format!("mrr-{}.svg", env.id));
    let out = std::process::Command::new(billing_binary())
        .args([
            "analytics",
            "mrr-chart",
            "--tenant",
            "acme",
            "--currency",
            "EUR",
        ])
        .args(["--from", "2025-01", "--to", "2025-06", "--out"])
        .arg(&svg)
        .env("BILLING__CLICKHOUSE__DATABASE", &db)
        .env("BILLING__TELEMETRY__FILTER", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let drawn = std::fs::read_to_string(&svg).unwrap();
    std::fs::remove_file(&svg).unwrap();
    let bars: Vec<&str> = drawn
        .split("data-mrr=\"")
        .skip(1)
        .map(|s| &s[..s.find('"').unwrap()])
        .collect();
    assert_eq!(bars, ["100", "230", "280", "230", "190", "190"], "{drawn}");

    // Through the API.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let stop = billing_runtime::Shutdown::new();
    let query_api = tokio::spawn(billing_query_api::run(
        env.settings.clone(),
        stop.clone(),
        move |a| {
            let _ = tx.send(a);
        },
    ));
    let base = format!("http://{}", rx.await.unwrap());
    let analyst = Api::new(&base, &api_key(&env.settings, "acme", Role::Analyst).await);

    let mrr = ok(&analyst, "/v1/analytics/mrr?from=2025-01&to=2025-06").await;
    let mrr_fields = [
        "id",
        "month",
        "currency",
        "starting_mrr",
        "new_mrr",
        "expansion_mrr",
        "contraction_mrr",
        "churned_mrr",
        "ending_mrr",
        "customers",
    ];
    assert_eq!(
        columns(&mrr, &mrr_fields),
        rows(&[
            &[
                "2025-01/EUR",
                "2025-01",
                "EUR",
                "0.00",
                "100.00",
                "0.00",
                "0.00",
                "0.00",
                "100.00",
                "1"
            ],
            &[
                "2025-02/EUR",
                "2025-02",
                "EUR",
                "100.00",
                "130.00",
                "0.00",
                "0.00",
                "0.00",
                "230.00",
                "3"
            ],
            &[
                "2025-03/EUR",
                "2025-03",
                "EUR",
                "230.00",
                "0.00",
                "50.00",
                "0.00",
                "0.00",
                "280.00",
                "3"
            ],
            &[
                "2025-04/EUR",
                "2025-04",
                "EUR",
                "280.00",
                "0.00",
                "0.00",
                "0.00",
                "50.00",
                "230.00",
                "2"
            ],
            &[
                "2025-05/EUR",
                "2025-05",
                "EUR",
                "230.00",
                "0.00",
                "0.00",
                "40.00",
                "0.00",
                "190.00",
                "2"
            ],
            &[
                "2025-06/EUR",
                "2025-06",
                "EUR",
                "190.00",
                "0.00",
                "0.00",
                "0.00",
                "0.00",
                "190.00",
                "2"
            ],
        ])
    );
    assert_eq!(mrr["has_more"], false);
    assert_eq!(mrr["data"][0]["object"], "analytics.mrr");
    // Pages: four rows, then the two after the fourth.
    let first = ok(
        &analyst,
        "/v1/analytics/mrr?from=2025-01&to=2025-06&limit=4",
    )
    .await;
    assert_eq!(
        (first["data"].as_array().unwrap().len(), &first["has_more"]),
        (4, &json!(true))
    );
    let next = ok(
        &analyst,
        "/v1/analytics/mrr?from=2025-01&to=2025-06&limit=4&starting_after=2025-04/EUR",
    )
    .await;
    assert_eq!(
        columns(&next, &["id"]),
        rows(&[&["2025-05/EUR"], &["2025-06/EUR"]])
    );
    assert_eq!(next["has_more"], false);
    // No JPY: the subscription's latest version has no MRR.
    let jpy = ok(
        &analyst,
        "/v1/analytics/mrr?from=2025-01&to=2025-06&currency=JPY",
    )
    .await;
    assert_eq!(jpy["data"], json!([]));

    let churn = ok(&analyst, "/v1/analytics/churn?from=2025-04&to=2025-05").await;
    assert_eq!(
        columns(
            &churn,
            &[
                "month",
                "customers_at_start",
                "new_customers",
                "churned_customers",
                "customers_at_end",
                "starting_mrr",
                "churned_mrr",
                "contraction_mrr",
                "logo_churn_rate",
                "revenue_churn_rate"
            ]
        ),
        rows(&[
            &["2025-04", "3", "0", "1", "2", "280.00", "50.00", "0.00", "0.3333", "0.1785"],
            &["2025-05", "2", "0", "0", "2", "230.00", "0.00", "40.00", "0.0000", "0.1739"],
        ])
    );

    let revenue = ok(&analyst, "/v1/analytics/revenue?from=2025-01&to=2025-03").await;
    let revenue_fields = [
        "month",
        "plan_code",
        "subscription_fees",
        "usage",
        "other",
        "net_revenue",
        "discounts",
        "invoices",
    ];
    assert_eq!(
        columns(&revenue, &revenue_fields),
        rows(&[
            &["2025-01", "basic", "90.00", "18.00", "0.00", "108.00", "12.00", "1"],
            &["2025-02", "null", "0.00", "0.00", "30.00", "30.00", "0.00", "1"],
            &["2025-02", "basic", "50.00", "0.00", "0.00", "50.00", "0.00", "1"],
            &["2025-03", "basic", "-51.61", "5.00", "0.00", "-46.61", "0.00", "1"],
            &["2025-03", "pro", "82.26", "0.00", "0.00", "82.26", "0.00", "1"],
        ])
    );
    let pro = ok(
        &analyst,
        "/v1/analytics/revenue?from=2025-01&to=2025-03&plan_code=pro",
    )
    .await;
    assert_eq!(columns(&pro, &["id"]), rows(&[&["2025-03/EUR/pro"]]));

    let usage = ok(&analyst, "/v1/analytics/usage?from=2025-01&to=2025-03").await;
    assert_eq!(
        columns(
            &usage,
            &[
                "id",
                "customer_id",
                "metric_code",
                "events",
                "units",
                "rated_amount",
                "unpriced_events"
            ]
        ),
        rows(&[
            &[
                "2025-01/EUR/calls/c1",
                "c1",
                "calls",
                "2",
                "3.5",
                "1.75",
                "1"
            ],
            &["2025-02/EUR/seats/c2", "c2", "seats", "1", "5", "10", "0"],
        ])
    );
    let c2 = ok(
        &analyst,
        "/v1/analytics/usage?from=2025-01&to=2025-03&customer_id=c2",
    )
    .await;
    assert_eq!(columns(&c2, &["customer_id"]), rows(&[&["c2"]]));

    let collections = ok(
        &analyst,
        "/v1/analytics/collections?from=2025-01&to=2025-06",
    )
    .await;
    assert_eq!(
        columns(
            &collections,
            &[
                "month",
                "invoiced",
                "collected",
                "paid_by_credit",
                "refunded",
                "outstanding",
                "overdue",
                "uncollectible"
            ]
        ),
        rows(&[
            &["2025-01", "129.60", "129.60", "0.00", "0.00", "0.00", "0.00", "0.00"],
            &["2025-02", "150.00", "0.00", "20.00", "10.00", "130.00", "130.00", "0.00"],
            &["2025-03", "35.65", "0.00", "0.00", "0.00", "85.65", "50.00", "0.00"],
            &["2025-04", "0.00", "50.00", "0.00", "0.00", "35.65", "35.65", "0.00"],
            &["2025-05", "0.00", "0.00", "0.00", "0.00", "35.65", "35.65", "35.65"],
            &["2025-06", "0.00", "0.00", "0.00", "0.00", "35.65", "35.65", "35.65"],
        ])
    );

    // Roles: analysts and admins read reports; read and write keys do not; an analyst reads nothing else.
    let admin = Api::new(&base, &api_key(&env.settings, "acme", Role::Admin).await);
    assert_eq!(admin.get("/v1/analytics/churn").await.status, 200);
    for role in [Role::Read, Role::Write, Role::Ingest] {
        let k = Api::new(&base, &api_key(&env.settings, "acme", role).await);
        assert_eq!(k.get("/v1/analytics/mrr").await.status, 403, "{role:?}");
    }
    assert_eq!(analyst.get("/v1/customers").await.status, 403);
    assert_eq!(
        analyst.post("/v1/analytics/mrr", json!({})).await.status,
        405
    );
    // Another tenant's analyst sees its own figures only.
    let other = Api::new(&base, &api_key(&env.settings, "other", Role::Analyst).await);
    let theirs = ok(&other, "/v1/analytics/mrr?from=2025-01&to=2025-01").await;
    assert_eq!(
        columns(&theirs, &["ending_mrr", "customers"]),
        rows(&[&["999.00", "1"]])
    );
    for report in ["mrr", "revenue", "usage", "churn", "collections"] {
        let body = ok(
            &other,
            &format!("/v1/analytics/{report}?from=2025-01&to=2025-06"),
        )
        .await;
        let text = body.to_string();
        assert!(
            !text.contains("c1") && !text.contains("129.6") && !text.contains("230.00"),
            "{report}: {text}"
        );
    }

    // Refused parameters name themselves.
    analyst
        .get("/v1/analytics/mrr?from=2025-13")
        .await
        .problem(400, "from");
    analyst
        .get("/v1/analytics/mrr?from=2025-06&to=2025-01")
        .await
        .problem(400, "from");
    analyst
        .get("/v1/analytics/mrr?from=2010-01&to=2025-01")
        .await
        .problem(400, "to");
    analyst
        .get("/v1/analytics/mrr?plan_code=pro")
        .await
        .problem(400, "plan_code");
    analyst
        .get("/v1/analytics/churn?customer_id=c1")
        .await
        .problem(400, "customer_id");
    analyst
        .get("/v1/analytics/mrr?currency=EURO")
        .await
        .problem(400, "currency");
    analyst
        .get("/v1/analytics/mrr?limit=0")
        .await
        .problem(400, "limit");
    analyst
        .get("/v1/analytics/mrr?window=3")
        .await
        .problem(400, "window");
    analyst
        .get("/v1/analytics/revenue?starting_after=2025-03")
        .await
        .problem(400, "starting_after");

    // ClickHouse hung: the report answers 503 with Retry-After within its timeout, then works again.
    {
        let _stopped = Stopped::new(&clickhouse_pid());
        // Stopped for sure: its own ping no longer answers (once, in CI, a report still did right after the signal).
        let ping = reqwest::Client::builder()
            .timeout(Duration::from_millis(500))
            .build()
            .unwrap();
        let url = format!("{}/ping", env.settings.clickhouse.url);
        let deadline = Instant::now() + Duration::from_secs(10);
        while ping.get(&url).send().await.is_ok() {
            assert!(
                Instant::now() < deadline,
                "ClickHouse still answers under SIGSTOP"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let t = Instant::now();
        let r = analyst
            .get("/v1/analytics/mrr?from=2025-01&to=2025-06")
            .await;
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.headers["retry-after"], "5");
        assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    }
    let again = eventually(Duration::from_secs(30), "ClickHouse back", || async {
        let r = analyst
            .get("/v1/analytics/mrr?from=2025-01&to=2025-06")
            .await;
        (r.status == 200).then_some(r.body)
    })
    .await;
    assert_eq!(again, mrr);

    stop.cancel();
    query_api.await.unwrap().unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_invoicer_keeps_every_subscriptions_mrr() {
    let env = TestEnv::new("mrr").await;
    let services = Services::start(&env.settings).await;
    let api = services.api_for("acme").await;
    let analyst = Api::new(
        &services.api,
        &api_key(&env.settings, "acme", Role::Analyst).await,
    );
    for body in [
        json!({"code": "basic", "interval": "monthly", "currency": "EUR", "amount": "50.00", "pay_in_advance": true}),
        json!({"code": "yearly", "interval": "yearly", "currency": "EUR", "amount": "1200.00", "pay_in_advance": true}),
        json!({"code": "weekly", "interval": "weekly", "currency": "EUR", "amount": "10.00", "pay_in_advance": true}),
    ] {
        api.created("/v1/plans", body, 201).await;
    }
    for c in ["c1", "c2", "c3"] {
        api.created(
            "/v1/customers",
            json!({"customer_id": c, "name": c, "currency": "EUR"}),
            201,
        )
        .await;
    }
    // c1: trial to Jan 15, upgraded to the yearly plan on Mar 10, paused in May, canceled at period end in July (the
    // yearly period started on the upgrade: it ends on 2026-03-10).
    api.created(
        "/v1/subscriptions",
        json!({"subscription_id": "s1", "customer_id": "c1", "plan_code": "basic",
               "started_at": "2025-01-01T00:00:00Z", "trial_ends_at": "2025-01-15T00:00:00Z"}),
        201,
    )
    .await;
    for (path, body) in [
        (
            "change",
            json!({"plan_code": "yearly", "timing": "immediate", "effective_at": "2025-03-10T00:00:00Z"}),
        ),
        ("pause", json!({"effective_at": "2025-05-01T00:00:00Z"})),
        ("resume", json!({"effective_at": "2025-06-01T00:00:00Z"})),
        (
            "cancel",
            json!({"at_period_end": true, "effective_at": "2025-07-20T00:00:00Z"}),
        ),
    ] {
        let r = api
            .post(&format!("/v1/subscriptions/s1/{path}"), body)
            .await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
    // c2: basic from Feb 1; c3: weekly from Feb 1 (10 × 52 / 12 = 43.33 a month).
    for (s, c, plan) in [("s2", "c2", "basic"), ("s3", "c3", "weekly")] {
        api.created(
            "/v1/subscriptions",
            json!({"subscription_id": s, "customer_id": c, "plan_code": plan,
                   "started_at": "2025-02-01T00:00:00Z"}),
            201,
        )
        .await;
    }
    let fields = [
        "month",
        "starting_mrr",
        "new_mrr",
        "expansion_mrr",
        "contraction_mrr",
        "churned_mrr",
        "ending_mrr",
        "customers",
    ];
    let want = rows(&[
        &[
            "2025-01", "0.00", "50.00", "0.00", "0.00", "0.00", "50.00", "1",
        ],
        &[
            "2025-02", "50.00", "93.33", "0.00", "0.00", "0.00", "143.33", "3",
        ],
        &[
            "2025-03", "143.33", "0.00", "50.00", "0.00", "0.00", "193.33", "3",
        ],
        &[
            "2025-04", "193.33", "0.00", "0.00", "0.00", "0.00", "193.33", "3",
        ],
        &[
            "2025-05", "193.33", "0.00", "0.00", "0.00", "100.00", "93.33", "2",
        ],
        &[
            "2025-06", "93.33", "100.00", "0.00", "0.00", "0.00", "193.33", "3",
        ],
        &[
            "2025-07", "193.33", "0.00", "0.00", "0.00", "0.00", "193.33", "3",
        ],
    ]);
    let path = "/v1/analytics/mrr?from=2025-01&to=2025-07";
    // Not yet 200 while the other test of this file holds ClickHouse stopped.
    let settled = |want: Vec<Vec<String>>, path: &'static str| {
        let analyst = &analyst;
        async move {
            eventually(Duration::from_secs(60), path, || async {
                let r = analyst.get(path).await;
                (r.status == 200 && columns(&r.body, &fields) == want).then_some(())
            })
            .await
        }
    };
    settled(want, path).await;

    // The basic plan's price edited for everyone: its subscriptions' MRR follows (c1's basic months and c2).
    let r = api
        .post(
            "/v1/plans/basic",
            json!({"interval": "monthly", "currency": "EUR", "amount": "60.00", "pay_in_advance": true}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let want = rows(&[
        &[
            "2025-01", "0.00", "60.00", "0.00", "0.00", "0.00", "60.00", "1",
        ],
        &[
            "2025-02", "60.00", "103.33", "0.00", "0.00", "0.00", "163.33", "3",
        ],
        &[
            "2025-03", "163.33", "0.00", "40.00", "0.00", "0.00", "203.33", "3",
        ],
    ]);
    let path = "/v1/analytics/mrr?from=2025-01&to=2025-03";
    settled(want, path).await;

    services.shutdown().await;
    env.cleanup().await;
}
