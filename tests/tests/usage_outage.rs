//! A store outage does not stop rating: with Cassandra stopped (SIGSTOP) for longer than the driver's 30 s request
//! timeout, rating retries its checkpoint and the loads of customers it has not seen yet instead of exiting (its
//! partitions paused, the consumer polling), `/ready` keeps answering (red), `/health` turns red once the wait passes
//! `rating.stuck_timeout` and green again after, and once Cassandra is back every event is counted exactly once.
//! Its own test binary, so that stopping the shared Cassandra does not disturb other tests.

use std::time::{Duration, Instant};

use billing_tests::{api_usage, cassandra_pid, eventually, Services, Stopped, TestEnv};

const TENANT: &str = "acme";
const AT: &str = "2026-03-20T00:00:00Z";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rating_waits_for_a_stopped_cassandra_and_loses_nothing() {
    let mut env = TestEnv::new("outage").await;
    env.settings.rating.stuck_timeout = Duration::from_secs(15);
    env.publish_basic_catalog(TENANT, &["cus-o", "cus-new"])
        .await;
    let services = Services::start(&env.settings).await;
    env.produce_calls(TENANT, "cus-o", 0..100).await;
    let wait = Duration::from_secs(60);
    eventually(wait, "the first 100 events", || async {
        api_usage(
            &services.api,
            &services.key(TENANT).await,
            "cus-o",
            "calls",
            AT,
        )
        .await
        .filter(|u| u.1 == 100)
    })
    .await;

    let ready = format!("http://{}/ready", env.settings.rating.listen);
    let health = format!("http://{}/health", env.settings.rating.listen);
    let http = reqwest::Client::new();
    {
        let _stopped = Stopped::new(&cassandra_pid());
        env.produce_calls(TENANT, "cus-o", 100..200).await;
        // A customer rating has not loaded yet: its load waits for Cassandra too.
        env.produce_calls(TENANT, "cus-new", 0..50).await;
        // Longer than the driver's 30 s request timeout, which used to end the process.
        let until = Instant::now() + Duration::from_secs(40);
        let (mut red, mut stuck) = (false, false);
        while Instant::now() < until {
            let live = http
                .get(&health)
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .expect("/health answers while Cassandra is stopped");
            stuck |= live.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE;
            let asked = Instant::now();
            let answer = http
                .get(&ready)
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .expect("/ready answers while Cassandra is stopped");
            assert!(
                asked.elapsed() < Duration::from_secs(8),
                "/ready took {:?}",
                asked.elapsed()
            );
            red |= answer.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE;
            assert!(
                !services.rating_stopped(),
                "rating stopped during the outage"
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        assert!(red, "/ready never reported the stopped Cassandra");
        assert!(
            stuck,
            "/health never reported the wait longer than rating.stuck_timeout (15 s)"
        );
    }
    let usage = eventually(
        Duration::from_secs(120),
        "all 200 events after the outage",
        || async {
            api_usage(
                &services.api,
                &services.key(TENANT).await,
                "cus-o",
                "calls",
                AT,
            )
            .await
            .filter(|u| u.1 >= 200)
        },
    )
    .await;
    assert_eq!(usage, ("200".to_owned(), 200, "2.00".to_owned()));
    let fresh = eventually(Duration::from_secs(60), "cus-new's 50 events", || async {
        api_usage(
            &services.api,
            &services.key(TENANT).await,
            "cus-new",
            "calls",
            AT,
        )
        .await
        .filter(|u| u.1 >= 50)
    })
    .await;
    assert_eq!(fresh, ("50".to_owned(), 50, "0.50".to_owned()));
    let live = http.get(&health).send().await.unwrap();
    assert_eq!(
        live.status(),
        reqwest::StatusCode::OK,
        "/health after the outage"
    );
    assert!(!services.rating_stopped());
    services.shutdown().await;
    env.cleanup().await;
}
