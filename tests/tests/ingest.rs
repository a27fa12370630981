//! The ingest gateway against the real Kafka: per-event answers for a mixed batch, accepted events durable in
//! `billing.usage` before the answer arrives, and problem+json for bodies that cannot be used.

use std::collections::HashMap;
use std::time::Duration;

use billing_runtime::auth::Role;
use billing_schemas::usage::UsageEvent;
use billing_tests::{high_watermarks, start_ingest, TestEnv};
use rdkafka::message::{Headers, Message};
use serde_json::{json, Value};

fn event(event_id: &str, customer: &str) -> Value {
    json!({"tenant_id": "acme", "event_id": event_id, "customer_id": customer, "metric_code": "api_calls",
           "timestamp": "2026-01-15T10:00:00Z", "properties": {"value": 1}})
}

fn with(mut v: Value, field: &str, value: Value) -> Value {
    v[field] = value;
    v
}

async fn post(base: &str, key: &str, body: String) -> (u16, Option<String>, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/events"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, ct, resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn ingest_batch_answers_per_event_and_is_in_kafka_before_the_response() {
    let env = TestEnv::new("ingest_batch").await;
    let (base, stop, task) = start_ingest(&env.settings).await;
    let key = billing_tests::api_key(&env.settings, "acme", Role::Ingest).await;

    let mut missing_customer = event("bad-missing", "x");
    missing_customer
        .as_object_mut()
        .unwrap()
        .remove("customer_id");
    let many_props: serde_json::Map<String, Value> =
        (0..101).map(|i| (format!("p{i}"), json!(i))).collect();
    let future = (chrono::Utc::now() + chrono::TimeDelta::hours(25)).to_rfc3339();
    let exact: Value = serde_json::from_str(
        r#"{"tenant_id": "acme", "event_id": "good-2", "customer_id": "cus-c", "metric_code": "api_calls",
            "timestamp": 1768471200000, "properties": {"value": 3.50, "region": "eu", "ok": true}}"#,
    )
    .unwrap();
    // (element, expected error: None = accepted)
    let cases: Vec<(Value, Option<&str>)> = vec![
        (event("good-0", "cus-a"), None),
        (missing_customer, Some("missing field `customer_id`")),
        (
            with(event("bad-blank", "x"), "tenant_id", json!("   ")),
            Some("tenant_id \"   \" is not the API key's tenant"),
        ),
        (
            with(event("bad-tenant", "x"), "tenant_id", json!("globex")),
            Some("tenant_id \"globex\" is not the API key's tenant"),
        ),
        (
            event(&"e".repeat(257), "x"),
            Some("`event_id` is 257 characters long; at most 256 are allowed"),
        ),
        (event("good-1", "cus-b"), None),
        (
            event("bad-control", "cus\u{1}x"),
            Some("`customer_id` contains control character '\\u{1}' at character 3"),
        ),
        (
            with(
                event("bad-props", "x"),
                "properties",
                Value::Object(many_props),
            ),
            Some("101 properties; at most 100 are allowed"),
        ),
        (
            with(event("bad-nested", "x"), "properties", json!({"v": [1]})),
            Some("property \"v\" must be a string, number or boolean, not [1]"),
        ),
        (
            with(event("bad-ts", "x"), "timestamp", json!("15/01/2026")),
            Some("timestamp \"15/01/2026\" is not RFC 3339 or epoch milliseconds"),
        ),
        (
            with(event("bad-future", "x"), "timestamp", json!(future)),
            Some("ahead of the gateway clock"),
        ),
        (
            with(
                event("bad-old", "x"),
                "timestamp",
                json!(946_684_799_999_i64),
            ),
            Some("timestamp 1999-12-31T23:59:59.999Z is before 2000-01-01T00:00:00Z"),
        ),
        (
            with(
                event("bad-big", "x"),
                "properties",
                json!({"blob": "x".repeat(70_000)}),
            ),
            Some("bytes; at most 65536 are allowed"),
        ),
        (
            with(event("bad-unknown", "x"), "value", json!(1)),
            Some("unknown field `value`"),
        ),
        (
            with(event("bad-type", "x"), "metric_code", json!(7)),
            Some("`metric_code` must be a string, not a number"),
        ),
        (
            json!("not an object"),
            Some("an event must be an object, not a string"),
        ),
        (exact, None),
    ];
    let body = json!({"events": cases.iter().map(|(v, _)| v.clone()).collect::<Vec<_>>()});
    let (status, _, answer) = post(&base, &key, body.to_string()).await;

    // Right after the answer, before any consumer could have waited: the broker already has every accepted event.
    let ends = high_watermarks(&env.settings, &env.topics.usage).await;
    assert_eq!(status, 200, "{answer:#}");
    assert_eq!(answer["accepted"], 3, "{answer:#}");
    assert_eq!(answer["rejected"], cases.len() - 3);
    assert_eq!(answer["failed"], 0);
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), cases.len());
    let mut positions = HashMap::new();
    for (i, ((element, expected), result)) in cases.iter().zip(results).enumerate() {
        assert_eq!(result["index"], i, "{result}");
        if element["event_id"].is_string() {
            assert_eq!(result["event_id"], element["event_id"], "{result}");
        } else {
            assert!(result.get("event_id").is_none(), "{result}");
        }
        match expected {
            None => {
                assert_eq!(result["status"], "accepted", "{result}");
                let at = (
                    result["partition"].as_i64().unwrap() as i32,
                    result["offset"].as_i64().unwrap(),
                );
                positions.insert(at, element.clone());
            }
            Some(reason) => {
                assert_eq!(result["status"], "rejected", "{result}");
                let error = result["error"].as_str().unwrap();
                assert!(
                    error.contains(reason),
                    "element {i}: {error:?} should say {reason:?}"
                );
            }
        }
    }
    assert_eq!(
        ends.iter().map(|(_, high)| high).sum::<i64>(),
        3,
        "exactly the accepted events are in the topic: {ends:?}"
    );
    for (partition, offset) in positions.keys() {
        let high = ends.iter().find(|(p, _)| p == partition).unwrap().1;
        assert!(
            *offset < high,
            "offset {offset} of partition {partition} is below {high}"
        );
    }

    let messages = env
        .read_topic(&env.topics.usage, 3, Duration::from_secs(20))
        .await;
    assert_eq!(messages.len(), 3);
    for m in &messages {
        let element = &positions[&(m.partition(), m.offset())];
        let ev: UsageEvent =
            billing_schemas::decode(m.payload().unwrap(), Some(b"application/json"))
                .expect("the value is a decodable JSON usage event");
        let expected: UsageEvent = serde_json::from_value(element.clone()).unwrap();
        assert_eq!(ev, expected);
        assert_eq!(
            m.key().unwrap(),
            format!("acme/{}", element["customer_id"].as_str().unwrap()).as_bytes()
        );
        let headers = m.headers().expect("headers");
        let ct = headers.iter().find(|h| h.key == "content-type").unwrap();
        assert_eq!(ct.value, Some(b"application/json".as_slice()));
        if ev.event_id == "good-2" {
            assert_eq!(
                ev.properties["value"], "3.50",
                "numbers keep their exact text"
            );
            assert_eq!(ev.timestamp.to_rfc3339(), "2026-01-15T10:00:00+00:00");
        }
    }

    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("billing_ingest_events_total{outcome=\"accepted\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "billing_ingest_events_total{{outcome=\"rejected\"}} {}",
        cases.len() - 3
    )));
    assert!(metrics.contains("billing_ingest_request_seconds_count 1"));

    stop.cancel();
    task.await.unwrap().expect("ingest ended cleanly");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ingest_unusable_bodies_get_problem_json() {
    let mut env = TestEnv::new("ingest_problems").await;
    env.settings.ingest.max_event_bytes = 1024; // body limit 1000 × 1 KiB
    let (base, stop, task) = start_ingest(&env.settings).await;
    let key = billing_tests::api_key(&env.settings, "acme", Role::Ingest).await;

    let problem = |(status, ct, body): (u16, Option<String>, Value), want: u16, detail: &str| {
        assert_eq!(status, want, "{body:#}");
        assert_eq!(ct.as_deref(), Some("application/problem+json"));
        assert_eq!(body["status"], want);
        assert_eq!(body["type"], "about:blank");
        assert!(body["title"].is_string());
        let d = body["detail"].as_str().unwrap();
        assert!(d.contains(detail), "{d:?} should say {detail:?}");
    };
    problem(
        post(&base, &key, "{oops".into()).await,
        400,
        "body is not valid JSON",
    );
    problem(post(&base, &key, "".into()).await, 400, "empty body");
    problem(
        post(&base, &key, r#"{"events": []}"#.into()).await,
        400,
        "`events` is empty",
    );
    problem(
        post(&base, &key, r#"{"events": {}}"#.into()).await,
        400,
        "must be an array",
    );
    problem(post(&base, &key, "[]".into()).await, 400, "not an array");
    let many: Vec<Value> = (0..1001).map(|i| event(&format!("e-{i}"), "c")).collect();
    problem(
        post(&base, &key, json!({ "events": many }).to_string()).await,
        413,
        "1001 events in one request; at most 1000 are allowed",
    );
    let huge = format!(r#"{{"events": ["{}"]}}"#, "x".repeat(1_100_000));
    problem(
        post(&base, &key, huge).await,
        413,
        "body is larger than the 1024000 bytes",
    );

    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/events"))
        .bearer_auth(&key)
        .header("content-type", "text/plain")
        .body(event("e", "c").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);

    // A single event object is a batch of one; a well-formed body with only bad events is still a 200.
    let (status, _, answer) = post(&base, &key, event("single", "cus-1").to_string()).await;
    assert_eq!(status, 200, "{answer:#}");
    assert_eq!(answer["accepted"], 1);
    assert_eq!(answer["results"][0]["status"], "accepted");
    let (status, _, answer) = post(
        &base,
        &key,
        json!({"events": [with(event("x", "c"), "tenant_id", json!(""))]}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{answer:#}");
    assert_eq!(answer["rejected"], 1);

    for path in ["/health", "/ready"] {
        let resp = reqwest::get(format!("{base}{path}")).await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    stop.cancel();
    task.await.unwrap().expect("ingest ended cleanly");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ingest_broker_failure_is_a_503_with_failed_results() {
    let env = TestEnv::new("ingest_failure").await;
    // A topic name Kafka refuses: the broker answers, but cannot take the events.
    let mut settings = env.settings.clone();
    settings.kafka.topic_prefix = format!("it.{} invalid!.", env.id);
    let (base, stop, task) = start_ingest(&settings).await;
    let key = billing_tests::api_key(&env.settings, "acme", Role::Ingest).await;

    let started = std::time::Instant::now();
    let body = json!({"events": [event("ok-but-unwritable", "cus-1"), with(event("bad", "c"), "tenant_id", json!(""))]});
    let (status, _, answer) = post(&base, &key, body.to_string()).await;
    assert_eq!(status, 503, "{answer:#}");
    assert_eq!(answer["failed"], 1);
    assert_eq!(answer["rejected"], 1);
    assert_eq!(answer["accepted"], 0);
    let failed = &answer["results"][0];
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["event_id"], "ok-but-unwritable");
    assert!(
        failed["error"].as_str().unwrap().contains("retry"),
        "{failed}"
    );
    assert_eq!(answer["results"][1]["status"], "rejected");
    eprintln!("failure answered in {:?}: {answer}", started.elapsed());

    stop.cancel();
    task.await.unwrap().expect("ingest ended cleanly");
    env.cleanup().await;
}
