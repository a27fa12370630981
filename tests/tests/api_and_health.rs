//! HTTP behaviour on the real stack: health, readiness and metrics endpoints, problem+json errors, rate limits,
//! and idempotent migrations.

use std::time::Duration;

use billing_tests::{Services, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_and_metrics_answer_on_rating_and_query_api() {
    let env = TestEnv::new("health").await;
    let services = Services::start(&env.settings).await;
    let http = reqwest::Client::new();
    let rating = format!("http://{}", env.settings.rating.listen);
    // rating binds its port asynchronously; wait for it.
    let mut ready = None;
    for _ in 0..100 {
        if let Ok(r) = http.get(format!("{rating}/ready")).send().await {
            ready = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = ready.expect("rating serves /ready");
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(
        body["checks"],
        serde_json::json!({"kafka": "ok", "cassandra": "ok", "clickhouse": "ok", "consumer": "ok"})
    );
    assert_eq!(
        http.get(format!("{rating}/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let metrics = http
        .get(format!("{rating}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("billing_rating_checkpoint_seconds"),
        "{metrics}"
    );

    let api = &services.api;
    let body: serde_json::Value = http
        .get(format!("{api}/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["ready"], true);
    services.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_problem_json_and_floods_get_429() {
    let mut env = TestEnv::new("problems").await;
    let reads = billing_runtime::config::Rate {
        per_second: 1,
        burst: 3,
    };
    env.settings.rate_limits.reads = reads;
    let services = Services::start(&env.settings).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/customers/nobody/usage", services.api);

    // No key, a key of the wrong shape, a well-formed key nobody issued: 401 with a Bearer challenge.
    let fake = format!("bk_0123456789abcdef_{}", "0".repeat(64));
    for auth in [
        None,
        Some("Basic YWxpY2U6c2VjcmV0"),
        Some("Bearer nope"),
        Some(&*format!("Bearer {fake}")),
    ] {
        let mut req = http.get(&url);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        assert!(r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer"));
        let p: serde_json::Value = r.json().await.unwrap();
        assert_eq!(p["status"], 401);
        assert!(p["detail"].as_str().unwrap().contains("key"), "{p}");
    }

    let acme = services.key("acme").await;
    let r = http
        .get(&url)
        .query(&[("at", "yesterday")])
        .bearer_auth(&acme)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let p: serde_json::Value = r.json().await.unwrap();
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .starts_with("at=\"yesterday\" is not an RFC 3339 time"),
        "{p}"
    );

    // Burst of 3 per key (the request above took one): two pass, then 429 with Retry-After, each answer saying
    // what is left. Another key of the same tenant, and another tenant's key, are unaffected.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let r = http.get(&url).bearer_auth(&acme).send().await.unwrap();
        statuses.push((
            r.status().as_u16(),
            r.headers()["ratelimit-remaining"]
                .to_str()
                .unwrap()
                .to_owned(),
        ));
        assert_eq!(r.headers()["ratelimit-limit"], "3");
        if r.status() == 429 {
            assert!(
                r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
                    >= 1
            );
            assert_eq!(r.headers()["content-type"], "application/problem+json");
        }
    }
    assert_eq!(
        statuses,
        vec![(200, "1".into()), (200, "0".into()), (429, "0".into())]
    );
    let second_acme_key =
        billing_tests::api_key(&env.settings, "acme", billing_runtime::auth::Role::Read).await;
    for key in [second_acme_key, services.key("globex").await] {
        let r = http.get(&url).bearer_auth(&key).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["ratelimit-remaining"], "2");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["charges"], serde_json::json!([]));
    }
    // The tenant is the key's: an X-Tenant-Id naming another one is refused, naming its own is accepted.
    let globex = services.key("globex").await;
    for (named, status) in [("acme", 403), ("globex", 200)] {
        let r = http
            .get(&url)
            .bearer_auth(&globex)
            .header("x-tenant-id", named)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{named}");
    }
    services.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent() {
    let env = TestEnv::new("migrate").await;
    let again = billing_store::migrate::run(&env.settings).await.unwrap();
    assert!(
        again.topics_created.is_empty()
            && again.cql_applied.is_empty()
            && again.clickhouse_applied.is_empty(),
        "{again}"
    );
    let versions: Vec<u32> = env
        .clickhouse()
        .query("SELECT version FROM schema_migrations ORDER BY version")
        .fetch_all::<u32>()
        .await
        .unwrap();
    // One version per migration file, each recorded once.
    let files = std::fs::read_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../store/migrations/clickhouse"
    ))
    .unwrap()
    .count();
    let all: Vec<u32> = (1..=u32::try_from(files).unwrap()).collect();
    assert!(
        files >= 7,
        "the ClickHouse migrations are where the test looks"
    );
    assert_eq!(versions, all, "each migration recorded once");
    env.cleanup().await;
}
