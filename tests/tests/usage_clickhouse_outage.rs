//! A hung ClickHouse does not stop rating (issue 11, "store outages"): with ClickHouse stopped (SIGSTOP) for 120 s
//! mid-stream, rating's checkpoint (ClickHouse rows first) is retried with a timeout per attempt, its partitions are
//! paused while it waits, `/ready` answers red, `/health` turns red past `rating.stuck_timeout` and green again, and
//! once ClickHouse is back every event is counted exactly once, in the aggregates and in ClickHouse. Its own test
//! binary, so that stopping the shared ClickHouse does not disturb other tests.

use std::time::{Duration, Instant};

use billing_tests::{calls_reaching, clickhouse_pid, eventually, Services, Stopped, TestEnv};

const TENANT: &str = "acme";
const AT: &str = "2026-03-20T00:00:00Z";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rating_waits_for_a_hung_clickhouse_and_counts_everything_once() {
    let mut env = TestEnv::new("ch_outage").await;
    env.settings.rating.stuck_timeout = Duration::from_secs(60);
    env.publish_basic_catalog(TENANT, &["cus-a", "cus-b"]).await;
    let services = Services::start(&env.settings).await;
    env.produce_calls(TENANT, "cus-a", 0..100).await;
    calls_reaching(&services, TENANT, "cus-a", AT, 100).await;

    let rating = format!("http://{}", env.settings.rating.listen);
    let http = reqwest::Client::new();
    {
        let _stopped = Stopped::new(&clickhouse_pid());
        env.produce_calls(TENANT, "cus-a", 100..200).await;
        env.produce_calls(TENANT, "cus-b", 0..50).await;
        let until = Instant::now() + Duration::from_secs(120);
        let (mut red, mut stuck) = (false, false);
        while Instant::now() < until {
            let asked = Instant::now();
            let ready = http
                .get(format!("{rating}/ready"))
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .expect("/ready answers while ClickHouse is stopped");
            assert!(
                asked.elapsed() < Duration::from_secs(8),
                "/ready took {:?}",
                asked.elapsed()
            );
            red |= ready.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE;
            let health = http
                .get(format!("{rating}/health"))
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .expect("/health answers while ClickHouse is stopped");
            stuck |= health.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE;
            assert!(
                !services.rating_stopped(),
                "rating stopped during the outage"
            );
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        assert!(red, "/ready never reported the stopped ClickHouse");
        assert!(
            stuck,
            "/health never reported the wait longer than rating.stuck_timeout (60 s)"
        );
    }
    assert_eq!(
        calls_reaching(&services, TENANT, "cus-a", AT, 200).await,
        ("200".to_owned(), 200, "2.00".to_owned())
    );
    assert_eq!(
        calls_reaching(&services, TENANT, "cus-b", AT, 50).await,
        ("50".to_owned(), 50, "0.50".to_owned())
    );
    eventually(Duration::from_secs(30), "/health green again", || async {
        let r = http.get(format!("{rating}/health")).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    // ClickHouse: each event once (FINAL); an insert that timed out and was retried may be there twice without
    // FINAL until a merge (the same row: ReplacingMergeTree keeps one).
    let counts = eventually(
        Duration::from_secs(60),
        "every event in ClickHouse",
        || async {
            let c = env.usage_event_counts(TENANT, true).await?;
            (c.rows >= 250).then_some(c)
        },
    )
    .await;
    assert_eq!((counts.rows, counts.distinct), (250, 250));
    let raw = env.usage_event_counts(TENANT, false).await.unwrap();
    assert_eq!(raw.distinct, 250);
    eprintln!(
        "ClickHouse without FINAL: {} rows for 250 events after the outage",
        raw.rows
    );
    assert!(!services.rating_stopped());
    services.shutdown().await;
    env.cleanup().await;
}
