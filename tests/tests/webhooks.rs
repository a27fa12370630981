//! Signed webhooks end to end: endpoints created through the API, source events published on `billing.lifecycle`,
//! the webhooks service in-process, and local receivers that fail, hang or answer. Signatures are checked by the
//! Python verifier of `docs/payments.md`, run with `python3`, so the documented snippet is the one tested.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use billing_runtime::publish::Publisher;
use billing_runtime::{Settings, Shutdown};
use billing_schemas::lifecycle::{CustomerCreated, Lifecycle, LifecycleEvent};
use billing_schemas::Encoding;
use billing_tests::{eventually, free_addr, TestEnv};
use billing_webhooks::event::{event_id, SourceKind};
use chrono::Utc;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

// ---- a local receiver ----

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Received {
    headers: HashMap<String, String>,
    body: Vec<u8>,
    at: Instant,
}

/// What a receiver does with its n-th request (0-based).
#[derive(Debug, Clone, Copy)]
enum Reply {
    Status(u16),
    /// Read the request, never answer, keep the connection open.
    Hang,
}

struct Receiver {
    url: String,
    requests: Arc<Mutex<Vec<Received>>>,
    /// Event ids processed (answered 2xx) once each: the receiver's own dedup by `Billing-Event-Id`.
    processed: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    fn requests(&self) -> Vec<Received> {
        self.requests.lock().unwrap().clone()
    }

    fn processed(&self) -> Vec<String> {
        self.processed.lock().unwrap().clone()
    }
}

/// A bare HTTP/1.1 server on a free port whose answers `reply` decides.
async fn receiver(reply: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Receiver {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    let requests: Arc<Mutex<Vec<Received>>> = Arc::default();
    let processed: Arc<Mutex<Vec<String>>> = Arc::default();
    let (reqs, done) = (requests.clone(), processed.clone());
    let reply = Arc::new(reply);
    let count = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let (reqs, done, reply, count) =
                (reqs.clone(), done.clone(), reply.clone(), count.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // Headers.
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i;
                        }
                        let mut chunk = [0u8; 4096];
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let headers: HashMap<String, String> = head
                        .lines()
                        .skip(1)
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                        .collect();
                    let len: usize = headers
                        .get("content-length")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    buf.drain(..end + 4);
                    while buf.len() < len {
                        let mut chunk = [0u8; 4096];
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body: Vec<u8> = buf.drain(..len).collect();
                    let n = count.fetch_add(1, Ordering::SeqCst);
                    let event = headers.get("billing-event-id").cloned().unwrap_or_default();
                    reqs.lock().unwrap().push(Received {
                        headers,
                        body,
                        at: Instant::now(),
                    });
                    match reply(n) {
                        Reply::Hang => {
                            // Hold the connection until the client gives up.
                            let mut sink = [0u8; 1];
                            let _ = socket.read(&mut sink).await;
                            return;
                        }
                        Reply::Status(code) => {
                            if (200..300).contains(&code) {
                                let mut seen = done.lock().unwrap();
                                if !seen.contains(&event) {
                                    seen.push(event);
                                }
                            }
                            let answer = format!(
                                "HTTP/1.1 {code} X\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok"
                            );
                            if socket.write_all(answer.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    Receiver {
        url,
        requests,
        processed,
    }
}

// ---- the documented verifier ----

/// `verify(body, header, secret)` of the Python snippet in `docs/payments.md`, run by `python3`.
fn python_verify(body: &[u8], header: &str, secret: &str) -> bool {
    let docs = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/payments.md"),
    )
    .unwrap();
    let snippet = docs
        .split("<!-- webhook-verify:start -->")
        .nth(1)
        .and_then(|s| s.split("<!-- webhook-verify:end -->").next())
        .expect("the verifier's markers in docs/payments.md");
    let code = snippet
        .trim()
        .strip_prefix("```python")
        .and_then(|s| s.strip_suffix("```"))
        .expect("a python code block between the markers");
    let dir =
        std::env::temp_dir().join(format!("webhook-verify-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("verify.py");
    std::fs::write(
        &script,
        format!(
            "{code}\n\nimport sys\nwith open(sys.argv[1], 'rb') as f:\n    body = f.read()\n\
             print('valid' if verify(body, sys.argv[2], sys.argv[3]) else 'invalid')\n"
        ),
    )
    .unwrap();
    let body_file = dir.join("body.json");
    std::fs::write(&body_file, body).unwrap();
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(&body_file)
        .arg(header)
        .arg(secret)
        .output()
        .expect("python3 runs");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    match String::from_utf8_lossy(&out.stdout).trim() {
        "valid" => true,
        "invalid" => false,
        other => panic!("verifier printed {other:?}"),
    }
}

// ---- harness ----

struct Running {
    api: String,
    stop_api: Shutdown,
    stop_webhooks: Shutdown,
    webhooks: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn webhook_settings(env: &TestEnv) -> Settings {
    let mut s = env.settings.clone();
    s.webhooks.group_id = format!("it-{}-webhooks", env.id);
    s.webhooks.listen = free_addr();
    s.webhooks.retry_base = Duration::from_millis(100);
    s.webhooks.retry_cap = Duration::from_secs(2);
    s.webhooks.request_timeout = Duration::from_secs(2);
    s.webhooks.redeliver_poll = Duration::from_millis(200);
    s
}

async fn start(settings: &Settings) -> Running {
    let stop_api = Shutdown::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(billing_query_api::run(
        settings.clone(),
        stop_api.clone(),
        move |a| {
            let _ = tx.send(a);
        },
    ));
    let addr = rx.await.expect("query-api bound");
    let (stop_webhooks, webhooks) = start_webhooks(settings);
    Running {
        api: format!("http://{addr}"),
        stop_api,
        stop_webhooks,
        webhooks,
    }
}

fn start_webhooks(settings: &Settings) -> (Shutdown, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let stop = Shutdown::new();
    let mut s = settings.clone();
    s.webhooks.listen = free_addr();
    (stop.clone(), tokio::spawn(billing_webhooks::run(s, stop)))
}

/// The admin key of each tenant of these tests, made at their start ([`register`]).
static KEYS: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, String>>> =
    std::sync::LazyLock::new(Default::default);

/// Create `tenant` and an admin key for [`call`] to use.
async fn register(settings: &Settings, tenant: &str) {
    let key = billing_tests::api_key(settings, tenant, billing_runtime::auth::Role::Admin).await;
    KEYS.lock().unwrap().insert(tenant.to_owned(), key);
}

/// Call the API with `tenant`'s key.
async fn call(method: &str, url: &str, tenant: &str, body: Option<Value>) -> (u16, Value, String) {
    let key = KEYS.lock().unwrap()[tenant].clone();
    let client = reqwest::Client::new();
    let mut req = match method {
        "GET" => client.get(url),
        "DELETE" => client.delete(url),
        _ => client.post(url),
    }
    .bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        ct,
    )
}

async fn create_endpoint(api: &str, tenant: &str, url: &str, types: &[&str]) -> (String, String) {
    let (status, body, _) = call(
        "POST",
        &format!("{api}/v1/webhook_endpoints"),
        tenant,
        Some(json!({"url": url, "event_types": types, "description": "test receiver"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let secret = body["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{body}");
    (body["id"].as_str().unwrap().to_owned(), secret)
}

/// Publish a customer's creation; returns the source event id.
async fn publish_customer(publisher: &Publisher, tenant: &str, customer: &str) -> String {
    let ev = LifecycleEvent {
        tenant_id: tenant.into(),
        event_id: format!("src-{customer}-{}", uuid::Uuid::new_v4().simple()),
        occurred_at: Utc::now(),
        payload: Lifecycle::CustomerCreated(CustomerCreated::new(
            customer, "Test Co", "EUR", "UTC",
        )),
    };
    publisher.lifecycle_at(&ev, Encoding::Avro).await.unwrap();
    ev.event_id
}

async fn deliveries(api: &str, tenant: &str, endpoint: &str, query: &str) -> Value {
    let (status, body, _) = call(
        "GET",
        &format!("{api}/v1/webhook_endpoints/{endpoint}/deliveries{query}"),
        tenant,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The `v1` values of a signature header.
fn v1s(header: &str) -> Vec<&str> {
    header
        .split(',')
        .filter_map(|p| p.strip_prefix("v1="))
        .collect()
}

// ---- tests ----

/// A receiver that fails five times then succeeds gets the event six times, processes it once, and the log shows
/// the six attempts; the documented Python verifier accepts the signatures; a rotation signs with both secrets; a
/// redeliver sends it again; bad endpoints are 400 naming the field and store nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_receiver_gets_the_event_after_retries_signed_and_logged() {
    let env = TestEnv::new("webhooks_retry").await;
    let settings = webhook_settings(&env);
    let run = start(&settings).await;
    let api = run.api.clone();
    let tenant = format!("t-{}", env.id);
    register(&settings, &tenant).await;

    // Bad requests: 400 problem+json naming the field, nothing stored.
    let endpoints_url = format!("{api}/v1/webhook_endpoints");
    for (body, field) in [
        (
            json!({"url": "ftp://example.com/x", "event_types": ["*"]}),
            "url",
        ),
        (json!({"url": "/relative", "event_types": ["*"]}), "url"),
        (
            json!({"url": "https://example.com/x", "event_types": ["invoice.finalized", "invoice.exploded"]}),
            "event_types[1]",
        ),
    ] {
        let (status, problem, ct) = call("POST", &endpoints_url, &tenant, Some(body.clone())).await;
        assert_eq!(status, 400, "{body} -> {problem}");
        assert_eq!(ct, "application/problem+json");
        assert_eq!(problem["status"], 400);
        assert_eq!(problem["invalid_params"][0]["name"], field, "{problem}");
    }
    let (status, list, _) = call("GET", &endpoints_url, &tenant, None).await;
    assert_eq!(status, 200);
    assert_eq!(list["data"], json!([]), "nothing stored: {list}");

    // Fails five times, then answers 200.
    let rx = receiver(|n| Reply::Status(if n < 5 { 500 } else { 200 })).await;
    let (endpoint, secret) = create_endpoint(&api, &tenant, &rx.url, &["customer.created"]).await;
    let (status, read, _) =
        call("GET", &format!("{endpoints_url}/{endpoint}"), &tenant, None).await;
    assert_eq!(status, 200);
    assert!(
        read.get("secret").is_none(),
        "reads never show the secret: {read}"
    );
    assert_eq!(read["secret_prefix"], secret[..10]);
    assert_eq!(read["event_types"], json!(["customer.created"]));

    let publisher = Publisher::new(&settings.kafka).unwrap();
    let source_id = publish_customer(&publisher, &tenant, "cus_webhook_1").await;
    let expected_id = event_id(SourceKind::Lifecycle, &tenant, &source_id);
    let published = Instant::now();

    eventually(
        Duration::from_secs(60),
        "the sixth attempt to succeed",
        || async { (rx.processed().len() == 1).then_some(()) },
    )
    .await;
    let got = rx.requests();
    assert_eq!(got.len(), 6, "five failures and one success");
    assert_eq!(rx.processed(), vec![expected_id.clone()], "processed once");
    for r in &got {
        assert_eq!(r.headers["billing-event-id"], expected_id);
        assert_eq!(r.headers["content-type"], "application/json");
        let sig = &r.headers["billing-signature"];
        assert_eq!(v1s(sig).len(), 1, "one secret, one v1: {sig}");
        assert!(python_verify(&r.body, sig, &secret), "{sig}");
    }
    // The verifier refuses a wrong secret and a changed body.
    let last = got.last().unwrap();
    let sig = &last.headers["billing-signature"];
    assert!(!python_verify(&last.body, sig, "whsec_wrong"));
    let mut tampered = last.body.clone();
    tampered.extend_from_slice(b" ");
    assert!(!python_verify(&tampered, sig, &secret));
    let body: Value = serde_json::from_slice(&last.body).unwrap();
    assert_eq!(body["id"], expected_id);
    assert_eq!(body["object"], "event");
    assert_eq!(body["type"], "customer.created");
    assert_eq!(body["tenant_id"], tenant);
    assert_eq!(body["data"]["object"]["object"], "customer");
    assert_eq!(body["data"]["object"]["customer_id"], "cus_webhook_1");
    assert_eq!(body["data"]["object"]["currency"], "EUR");
    // Exponential backoff from 100 ms: the gaps between attempts grow (100, 200, 400, 800, 1600 ms at least).
    for (i, pair) in got.windows(2).enumerate() {
        let gap = pair[1].at - pair[0].at;
        let floor = Duration::from_millis(100 << i) - Duration::from_millis(20);
        assert!(
            gap >= floor,
            "gap {i} is {gap:?}, expected at least {floor:?}"
        );
    }
    assert!(published.elapsed() < Duration::from_secs(30));

    // The delivery log: one delivery, six attempts with their status codes.
    let log = eventually(
        Duration::from_secs(10),
        "the delivery log to show delivered",
        || async {
            let log = deliveries(&api, &tenant, &endpoint, "").await;
            (log["data"][0]["status"] == "delivered").then_some(log)
        },
    )
    .await;
    assert_eq!(log["data"].as_array().unwrap().len(), 1, "{log}");
    let d = &log["data"][0];
    assert_eq!(d["event_id"], expected_id);
    assert_eq!(d["event_type"], "customer.created");
    let attempts = d["attempts"].as_array().unwrap();
    let codes: Vec<u64> = attempts
        .iter()
        .map(|a| a["status_code"].as_u64().unwrap())
        .collect();
    assert_eq!(codes, [500, 500, 500, 500, 500, 200]);
    let numbers: Vec<u64> = attempts
        .iter()
        .map(|a| a["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 2, 3, 4, 5, 6]);
    assert_eq!(attempts[0]["error"], "HTTP 500");
    assert_eq!(attempts[5]["error"], Value::Null);
    assert!(attempts
        .iter()
        .all(|a| a["latency_ms"].as_u64().unwrap() < 2_000));
    let delivery_id = d["id"].as_str().unwrap().to_owned();

    // Rotation: the next delivery carries two v1 values, one per secret, and both verify.
    let (status, rotated, _) = call(
        "POST",
        &format!("{endpoints_url}/{endpoint}/rotate_secret"),
        &tenant,
        None,
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, secret);
    assert!(
        rotated["previous_secret_expires_at"].is_string(),
        "{rotated}"
    );
    let source_2 = publish_customer(&publisher, &tenant, "cus_webhook_2").await;
    let id_2 = event_id(SourceKind::Lifecycle, &tenant, &source_2);
    eventually(
        Duration::from_secs(30),
        "the event after the rotation",
        || async { rx.processed().contains(&id_2).then_some(()) },
    )
    .await;
    let after = rx
        .requests()
        .into_iter()
        .find(|r| r.headers["billing-event-id"] == id_2)
        .unwrap();
    let sig = &after.headers["billing-signature"];
    assert_eq!(v1s(sig).len(), 2, "two secrets, two v1: {sig}");
    assert!(python_verify(&after.body, sig, &new_secret));
    assert!(python_verify(&after.body, sig, &secret));
    // Each v1 is the signature of one of the two secrets, alone.
    let t = sig.split(',').next().unwrap();
    for (i, s) in [&new_secret, &secret].into_iter().enumerate() {
        let single = format!("{t},v1={}", v1s(sig)[i]);
        assert!(python_verify(&after.body, &single, s));
    }

    // Redeliver the first delivery: a seventh attempt.
    let (status, accepted, _) = call(
        "POST",
        &format!("{endpoints_url}/{endpoint}/deliveries/{delivery_id}/redeliver"),
        &tenant,
        None,
    )
    .await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["delivery_id"], delivery_id);
    eventually(Duration::from_secs(30), "the redelivery", || async {
        let n = rx
            .requests()
            .iter()
            .filter(|r| r.headers["billing-event-id"] == expected_id)
            .count();
        (n == 7).then_some(())
    })
    .await;
    let log = eventually(
        Duration::from_secs(10),
        "the seventh attempt in the log",
        || async {
            let page = deliveries(&api, &tenant, &endpoint, "?limit=1").await;
            let second = deliveries(
                &api,
                &tenant,
                &endpoint,
                &format!(
                    "?limit=1&starting_after={}",
                    page["data"][0]["id"].as_str()?
                ),
            )
            .await;
            let d = second["data"][0].clone();
            (d["id"] == delivery_id.as_str() && d["attempts"].as_array()?.len() == 7)
                .then_some((page, second))
        },
    )
    .await;
    // Newest first: the event after the rotation, then the first one.
    assert_eq!(log.0["data"][0]["event_id"], id_2);
    assert_eq!(log.0["has_more"], true);
    assert_eq!(log.1["has_more"], false);
    assert_eq!(log.1["data"][0]["attempts"][6]["status_code"], 200);
    assert_eq!(
        rx.processed().len(),
        2,
        "the receiver's dedup saw each event once"
    );

    // An unknown cursor is a 400 naming it.
    let (status, problem, _) = call(
        "GET",
        &format!("{endpoints_url}/{endpoint}/deliveries?starting_after=whd_nope"),
        &tenant,
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(problem["invalid_params"][0]["name"], "starting_after");

    run.stop_webhooks.cancel();
    run.webhooks.await.unwrap().unwrap();
    run.stop_api.cancel();
    env.cleanup().await;
}

/// A receiver that never answers holds only its own queue: another endpoint of the tenant and an endpoint of
/// another tenant get every event at once while the hung one keeps retrying. The hung one's pending deliveries
/// survive a restart of the service and are delivered once it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_endpoint_does_not_delay_the_others_and_pending_deliveries_survive_a_restart() {
    let env = TestEnv::new("webhooks_hung").await;
    let settings = webhook_settings(&env);
    let run = start(&settings).await;
    let api = run.api.clone();
    let (tenant_a, tenant_b) = (format!("a-{}", env.id), format!("b-{}", env.id));
    register(&settings, &tenant_a).await;
    register(&settings, &tenant_b).await;

    let hang = Arc::new(AtomicBool::new(true));
    let h = hang.clone();
    let hung = receiver(move |_| {
        if h.load(Ordering::SeqCst) {
            Reply::Hang
        } else {
            Reply::Status(204)
        }
    })
    .await;
    let fast_a = receiver(|_| Reply::Status(200)).await;
    let fast_b = receiver(|_| Reply::Status(200)).await;
    let (hung_id, _) = create_endpoint(&api, &tenant_a, &hung.url, &["*"]).await;
    let (fast_a_id, _) = create_endpoint(&api, &tenant_a, &fast_a.url, &["*"]).await;
    let (fast_b_id, _) = create_endpoint(&api, &tenant_b, &fast_b.url, &["customer.created"]).await;

    let publisher = Publisher::new(&settings.kafka).unwrap();
    let started = Instant::now();
    let mut ids_a = HashSet::new();
    for i in 0..8 {
        let src = publish_customer(&publisher, &tenant_a, &format!("cus_a_{i}")).await;
        ids_a.insert(event_id(SourceKind::Lifecycle, &tenant_a, &src));
    }
    let src_b = publish_customer(&publisher, &tenant_b, "cus_b_0").await;
    let id_b = event_id(SourceKind::Lifecycle, &tenant_b, &src_b);

    eventually(
        Duration::from_secs(20),
        "the fast endpoints' events",
        || async {
            (fast_a.processed().len() == 8 && fast_b.processed() == [id_b.clone()]).then_some(())
        },
    )
    .await;
    assert_eq!(
        fast_a.processed().into_iter().collect::<HashSet<_>>(),
        ids_a
    );
    // The hung endpoint holds four requests for the 2 s timeout: the other endpoints got everything before the
    // first of those timed out.
    let first_hung = hung
        .requests()
        .first()
        .expect("the hung endpoint was called")
        .at;
    let last_fast = fast_a
        .requests()
        .last()
        .unwrap()
        .at
        .max(fast_b.requests().last().unwrap().at);
    assert!(
        last_fast < first_hung + Duration::from_millis(1_500),
        "the fast endpoints finished {:?} after the hung one was first called",
        last_fast.saturating_duration_since(first_hung)
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(hung.processed().is_empty());
    let fast_log = deliveries(&api, &tenant_a, &fast_a_id, "?limit=100").await;
    let fast = fast_log["data"].as_array().unwrap();
    assert_eq!(fast.len(), 8);
    for d in fast {
        assert_eq!(d["status"], "delivered", "{d}");
        assert_eq!(d["attempts"].as_array().unwrap().len(), 1);
        let latency = d["attempts"][0]["latency_ms"].as_u64().unwrap();
        assert!(latency < 500, "fast endpoint latency {latency} ms: {d}");
    }
    let b_log = deliveries(&api, &tenant_b, &fast_b_id, "").await;
    assert_eq!(b_log["data"][0]["status"], "delivered");

    // Meanwhile the hung endpoint is still retrying: timeouts in its log, deliveries pending.
    let hung_log = eventually(
        Duration::from_secs(20),
        "the hung endpoint's timeouts",
        || async {
            let log = deliveries(&api, &tenant_a, &hung_id, "?limit=100").await;
            let timed_out = log["data"]
                .as_array()?
                .iter()
                .filter(|d| d["attempts"].as_array().is_some_and(|a| !a.is_empty()))
                .count();
            (timed_out >= 4).then_some(log)
        },
    )
    .await;
    let hung_deliveries = hung_log["data"].as_array().unwrap();
    assert_eq!(hung_deliveries.len(), 8);
    for d in hung_deliveries {
        assert_eq!(d["status"], "pending", "{d}");
        for a in d["attempts"].as_array().unwrap() {
            assert_eq!(a["status_code"], Value::Null);
            assert_eq!(a["error"], "no answer within 2000 ms");
            assert!(a["latency_ms"].as_u64().unwrap() >= 1_900);
        }
    }

    // Restart the service while they are pending; the endpoint recovers; the new instance reloads and sends them.
    run.stop_webhooks.cancel();
    run.webhooks.await.unwrap().unwrap();
    hang.store(false, Ordering::SeqCst);
    let (stop, task) = start_webhooks(&settings);
    eventually(
        Duration::from_secs(60),
        "the pending deliveries after the restart",
        || async { (hung.processed().len() == 8).then_some(()) },
    )
    .await;
    assert_eq!(hung.processed().into_iter().collect::<HashSet<_>>(), ids_a);
    let log = eventually(
        Duration::from_secs(10),
        "every hung delivery delivered",
        || async {
            let log = deliveries(&api, &tenant_a, &hung_id, "?limit=100").await;
            log["data"]
                .as_array()?
                .iter()
                .all(|d| d["status"] == "delivered")
                .then_some(log)
        },
    )
    .await;
    for d in log["data"].as_array().unwrap() {
        let attempts = d["attempts"].as_array().unwrap();
        assert_eq!(attempts.last().unwrap()["status_code"], 204);
    }
    stop.cancel();
    task.await.unwrap().unwrap();
    run.stop_api.cancel();
    env.cleanup().await;
}
