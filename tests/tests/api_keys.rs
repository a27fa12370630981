//! API keys, roles and tenant isolation on the real stack (`docs/api.md`, "Authentication"): every route of
//! query-api (read from `query-api/src/routes.rs`, so a new route is in the matrix at once) × {no key, revoked key,
//! a key of each role of tenant acme}, the paths naming globex's resources: the expected status, and no byte of
//! globex's data in any answer; a revoked key stops working within `auth.cache_ttl`; the ingest gateway takes usage only from the
//! roles that may send it and only for the key's tenant.

use std::time::{Duration, Instant};

use billing_runtime::auth::Role;
use billing_tests::{api_key, start_ingest, Services, TestEnv};
use rdkafka::message::Message;
use serde_json::{json, Value};

/// What only globex's data contains: no answer to acme's keys may include it.
const GLOBEX_MARKER: &str = "GLOBEX-PRIVATE-7f3a";

/// Every (method, path template) that `query-api/src/routes.rs` routes.
fn routes() -> Vec<(String, String)> {
    let src = include_str!("../../query-api/src/routes.rs");
    let body = &src[src.find("pub fn router").expect("router")..];
    let body = &body[..body.find(".method_not_allowed_fallback").expect("fallback")];
    let mut out = Vec::new();
    for chunk in body.split(".route(").skip(1) {
        let path = chunk.split('"').nth(1).expect("a quoted path");
        let rest = &chunk[chunk.find(path).unwrap() + path.len()..];
        for method in ["get", "post", "delete"] {
            let mut from = 0;
            while let Some(i) = rest[from..].find(&format!("{method}(")) {
                let at = from + i;
                let before = rest[..at].chars().last().unwrap_or(' ');
                if !before.is_alphanumeric() && before != '_' && before != ':' {
                    out.push((method.to_uppercase(), path.to_owned()));
                }
                from = at + method.len();
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The path with every parameter filled: ids of globex's resources where they exist, else ids nobody has.
fn concrete(template: &str, globex_endpoint: &str, globex_key: &str) -> String {
    let mut p = template.to_owned();
    for (param, value) in [
        ("{customer_id}", "cus-globex"),
        ("{endpoint_id}", globex_endpoint),
        ("{subscription_id}", "sub-nobody"),
        ("{code}", "code-nobody"),
        ("{invoice_id}", "inv-nobody"),
        ("{wallet_id}", "wal-nobody"),
        ("{applied_coupon_id}", "ac-nobody"),
        ("{clock_id}", "clock_0123456789abcdef0123456789abcdef"),
        ("{payment_method_id}", "pm-nobody"),
        ("{credit_note_id}", "cn-nobody"),
        ("{delivery_id}", "whd_nobody"),
        ("{key_id}", globex_key),
    ] {
        p = p.replace(param, value);
    }
    assert!(!p.contains('{'), "a parameter of {template} is not filled");
    p
}

/// The role a route needs, as `docs/api.md` states it (restated here, not read from the code).
fn allowed(role: Role, method: &str, path: &str) -> bool {
    let admin_only = path.starts_with("/v1/webhook_endpoints")
        || path.starts_with("/v1/api_keys")
        || path == "/v1/audit";
    let read = method == "GET" || path.ends_with("/invoices/preview") || path == "/graphql";
    let analytics = path.starts_with("/v1/analytics/");
    match role {
        Role::Admin => true,
        Role::Write => !admin_only && !analytics,
        Role::Read => read && !admin_only && !analytics,
        Role::Analyst => analytics,
        Role::Ingest => false,
    }
}

async fn call(
    http: &reqwest::Client,
    base: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
) -> (u16, String) {
    let url = format!("{base}{path}");
    let mut req = match method {
        "GET" => http.get(&url),
        "DELETE" => http.delete(&url),
        _ => http.post(&url).json(&json!({})),
    };
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_checks_the_key_its_role_and_its_tenant() {
    let mut env = TestEnv::new("api_keys").await;
    env.settings.auth.cache_ttl = Duration::from_secs(1);
    let services = Services::start(&env.settings).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();

    // globex's data: a customer and a webhook endpoint carrying the marker.
    let globex = services.api_for("globex").await;
    let made = globex
        .post(
            "/v1/customers",
            json!({"customer_id": "cus-globex", "name": GLOBEX_MARKER, "currency": "EUR"}),
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let endpoint = globex
        .post(
            "/v1/webhook_endpoints",
            json!({"url": "https://example.com/hook", "event_types": ["*"], "description": GLOBEX_MARKER}),
        )
        .await;
    assert_eq!(endpoint.status, 201, "{}", endpoint.body);
    let endpoint_id = endpoint.body["id"].as_str().unwrap().to_owned();
    let globex_key = format!(
        "bk_{}",
        billing_store::api_keys::key_id_of(&services.key("globex").await).unwrap()
    );
    // globex itself reads them back, so the marker is where the matrix looks.
    let own = globex.get("/v1/customers/cus-globex").await;
    assert!(own.body.to_string().contains(GLOBEX_MARKER), "{}", own.body);

    // acme's keys: one per role, and a revoked one.
    let mut acme = Vec::new();
    for role in Role::ALL {
        acme.push((role, api_key(&env.settings, "acme", role).await));
    }
    let session = std::sync::Arc::new(
        billing_runtime::cql::connect(&env.settings.cassandra)
            .await
            .unwrap(),
    );
    let store = billing_store::api_keys::ApiKeys::new(
        session,
        &env.settings.cassandra.keyspace,
        &env.settings.auth.key_hash_secret,
    )
    .await
    .unwrap();
    let revoked = api_key(&env.settings, "acme", Role::Admin).await;
    let revoked_id = billing_store::api_keys::key_id_of(&revoked)
        .unwrap()
        .to_owned();
    store.revoke(&revoked_id, chrono::Utc::now()).await.unwrap();

    let routes = routes();
    assert!(routes.len() >= 50, "routes.rs parsed: {routes:?}");
    let mut checked = 0;
    for (method, template) in &routes {
        let path = concrete(template, &endpoint_id, &globex_key);
        let mut cases: Vec<(String, Option<&str>, Vec<u16>)> = vec![
            ("no key".into(), None, vec![401]),
            ("revoked key".into(), Some(&revoked), vec![401]),
        ];
        for (role, key) in &acme {
            let expect = if allowed(*role, method, template) {
                vec![]
            } else {
                vec![403]
            };
            cases.push((format!("acme {}", role.as_str()), Some(key), expect));
        }
        for (who, key, expect) in cases {
            let (status, body) = call(&http, &services.api, method, &path, key).await;
            let what = format!("{method} {path} with {who}: {status} {body}");
            if expect.is_empty() {
                assert!(
                    ![401, 403, 429].contains(&status) && status < 500,
                    "allowed, so neither refused nor failed: {what}"
                );
            } else {
                assert!(expect.contains(&status), "expected {expect:?}: {what}");
                assert!(body.contains("\"status\""), "a problem+json: {what}");
            }
            assert!(
                !body.contains(GLOBEX_MARKER),
                "acme's key got globex's data: {what}"
            );
            checked += 1;
        }
    }
    eprintln!(
        "{} routes × 7 keys: {checked} answers checked",
        routes.len()
    );

    // acme's admin cannot reach globex's resources by their ids: 404, and they are unchanged.
    let acme_admin = &acme[0].1;
    for (method, path) in [
        ("GET", "/v1/customers/cus-globex".to_owned()),
        ("GET", format!("/v1/webhook_endpoints/{endpoint_id}")),
        (
            "POST",
            format!("/v1/webhook_endpoints/{endpoint_id}/rotate_secret"),
        ),
        ("DELETE", format!("/v1/webhook_endpoints/{endpoint_id}")),
        ("POST", format!("/v1/api_keys/{globex_key}/revoke")),
    ] {
        let (status, body) = call(&http, &services.api, method, &path, Some(acme_admin)).await;
        assert_eq!(status, 404, "{method} {path}: {body}");
    }
    let read = |path: &'static str| {
        let answer = call(&http, &services.api, "GET", path, Some(acme_admin));
        async move {
            let (status, text) = answer.await;
            assert_eq!(status, 200, "{path}: {text}");
            serde_json::from_str::<Value>(&text).unwrap()
        }
    };
    let list = read("/v1/customers").await;
    assert!(!list.to_string().contains("cus-globex"), "{list}");
    let keys = read("/v1/api_keys?limit=100").await;
    let listed: Vec<&str> = keys["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed.len(),
        6,
        "one key per role and the revoked one: {keys}"
    );
    assert!(!listed.contains(&globex_key.as_str()), "{keys}");
    assert!(keys.to_string().contains("\"revoked\""), "{keys}");
    for (_, key) in &acme {
        assert!(listed.contains(&&key[..19]), "{keys}");
        assert!(
            !keys.to_string().contains(&key[20..]),
            "a key's secret is listed: {keys}"
        );
    }
    let still = globex
        .get(&format!("/v1/webhook_endpoints/{endpoint_id}"))
        .await;
    assert_eq!(still.status, 200, "{}", still.body);
    assert_eq!(still.body["description"], GLOBEX_MARKER);

    // Revocation takes effect within auth.cache_ttl (1 s here), even for a key in use.
    let key = api_key(&env.settings, "acme", Role::Read).await;
    let usage = "/v1/customers/cus-acme/usage";
    assert_eq!(
        call(&http, &services.api, "GET", usage, Some(&key)).await.0,
        200
    );
    let at = Instant::now();
    let (status, body) = call(
        &http,
        &services.api,
        "POST",
        &format!("/v1/api_keys/{}/revoke", &key[..19]),
        Some(acme_admin),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"status\":\"revoked\""), "{body}");
    loop {
        let (status, _) = call(&http, &services.api, "GET", usage, Some(&key)).await;
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            at.elapsed() < Duration::from_millis(2_500),
            "a revoked key still works after {:?}",
            at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("revocation effective after {:?}", at.elapsed());
    services.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_takes_usage_from_its_roles_for_the_keys_tenant_only() {
    let env = TestEnv::new("ingest_keys").await;
    let (base, stop, task) = start_ingest(&env.settings).await;
    let http = reqwest::Client::new();
    let event = |id: &str, tenant: Option<&str>| {
        let mut e = json!({"event_id": id, "customer_id": "cus-1", "metric_code": "calls",
            "timestamp": chrono::Utc::now().to_rfc3339(), "properties": {}});
        if let Some(t) = tenant {
            e["tenant_id"] = json!(t);
        }
        e
    };
    let post = |key: Option<String>, body: Value| {
        let mut req = http.post(format!("{base}/v1/events")).json(&body);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };

    // Who may send: ingest, write and admin keys; not read or analyst keys, not without a key.
    let (status, p) = post(None, event("e-none", Some("acme"))).await;
    assert_eq!((status, p["status"].clone()), (401, json!(401)), "{p}");
    for role in [Role::Read, Role::Analyst] {
        let key = api_key(&env.settings, "acme", role).await;
        let (status, p) = post(Some(key), event("e-refused", Some("acme"))).await;
        assert_eq!(status, 403, "{role:?}: {p}");
    }
    let mut accepted = 0;
    for role in [Role::Ingest, Role::Write, Role::Admin] {
        let key = api_key(&env.settings, "acme", role).await;
        let id = format!("e-{}", role.as_str());
        let (status, answer) = post(Some(key), event(&id, Some("acme"))).await;
        assert_eq!(status, 200, "{role:?}: {answer}");
        assert_eq!(answer["accepted"], 1, "{answer}");
        accepted += 1;
    }

    // The tenant is the key's: an event naming another is refused on its own; one naming none is the key's.
    let globex = api_key(&env.settings, "globex", Role::Ingest).await;
    let (status, answer) = post(
        Some(globex),
        json!({"events": [event("g-1", Some("acme")), event("g-2", None), event("g-3", Some("globex"))]}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (answer["accepted"].clone(), answer["rejected"].clone()),
        (json!(2), json!(1))
    );
    let refused = &answer["results"][0];
    assert_eq!(refused["status"], "rejected");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("is not the API key's tenant"),
        "{refused}"
    );
    accepted += 2;

    let messages = env
        .read_topic(&env.topics.usage, accepted, Duration::from_secs(20))
        .await;
    let mut seen: Vec<(String, String)> = messages
        .iter()
        .map(|m| {
            let ev: billing_schemas::usage::UsageEvent =
                billing_schemas::decode(m.payload().unwrap(), Some(b"application/json")).unwrap();
            (ev.tenant_id, ev.event_id)
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("acme", "e-admin"),
            ("acme", "e-ingest"),
            ("acme", "e-write"),
            ("globex", "g-2"),
            ("globex", "g-3"),
        ]
        .map(|(t, e)| (t.to_owned(), e.to_owned()))
    );
    stop.cancel();
    task.await.unwrap().expect("ingest ended cleanly");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_is_in_the_audit_log_which_only_admins_read() {
    let env = TestEnv::new("audit").await;
    let services = Services::start(&env.settings).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let admin = services.key("acme").await;
    let write = api_key(&env.settings, "acme", Role::Write).await;
    let read = api_key(&env.settings, "acme", Role::Read).await;
    let prefix = |key: &str| format!("bk_{}", billing_store::api_keys::key_id_of(key).unwrap());
    let send = |method: &str, path: &str, key: &str, body: Option<Value>| {
        let url = format!("{}{path}", services.api);
        let mut req = match method {
            "GET" => http.get(&url),
            "DELETE" => http.delete(&url),
            _ => http.post(&url),
        }
        .bearer_auth(key)
        .header("x-request-id", format!("audit-{method}-{path}"));
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    // Four writes (two keys, one refused), and reads that are not writes.
    let customer = json!({"customer_id": "cus-a", "name": "Acme A", "currency": "EUR"});
    assert_eq!(
        send("POST", "/v1/customers", &admin, Some(customer))
            .await
            .0,
        201
    );
    let renamed = send(
        "POST",
        "/v1/customers/cus-a",
        &write,
        Some(json!({"name": "Acme Renamed"})),
    )
    .await;
    assert_eq!(renamed.0, 200, "{}", renamed.1);
    let bad = json!({"customer_id": "cus-b", "name": "B", "currency": "EURO"});
    assert_eq!(
        send("POST", "/v1/customers", &write, Some(bad)).await.0,
        422
    );
    let hook = json!({"url": "https://example.com/hook", "event_types": ["*"]});
    let (status, endpoint) = send("POST", "/v1/webhook_endpoints", &admin, Some(hook)).await;
    assert_eq!(status, 201, "{endpoint}");
    assert!(endpoint["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_eq!(send("GET", "/v1/customers/cus-a", &read, None).await.0, 200);
    let preview = send("POST", "/v1/customers/cus-a/invoices/preview", &read, None).await;
    assert!(preview.0 < 500, "{preview:?}");

    // Only admins read it; nobody changes it (and the attempts are in it too).
    for key in [&write, &read] {
        assert_eq!(send("GET", "/v1/audit", key, None).await.0, 403);
    }
    for method in ["POST", "DELETE"] {
        assert_eq!(
            send(method, "/v1/audit", &admin, None).await.0,
            405,
            "{method}"
        );
    }
    let (status, log) = send("GET", "/v1/audit?limit=100", &admin, None).await;
    assert_eq!(status, 200, "{log}");
    let entries = log["data"].as_array().unwrap();
    let summary: Vec<(String, String, String, u64, String)> = entries
        .iter()
        .map(|e| {
            (
                e["method"].as_str().unwrap().to_owned(),
                e["path"].as_str().unwrap().to_owned(),
                e["key"].as_str().unwrap().to_owned(),
                e["status"].as_u64().unwrap(),
                e["resource_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let (a, w) = (prefix(&admin), prefix(&write));
    assert_eq!(
        summary,
        vec![
            (
                "DELETE".into(),
                "/v1/audit".into(),
                a.clone(),
                405,
                String::new()
            ),
            (
                "POST".into(),
                "/v1/audit".into(),
                a.clone(),
                405,
                String::new()
            ),
            (
                "POST".into(),
                "/v1/webhook_endpoints".into(),
                a.clone(),
                201,
                endpoint["id"].as_str().unwrap().to_owned()
            ),
            (
                "POST".into(),
                "/v1/customers".into(),
                w.clone(),
                422,
                String::new()
            ),
            (
                "POST".into(),
                "/v1/customers/cus-a".into(),
                w.clone(),
                200,
                "cus-a".into()
            ),
            (
                "POST".into(),
                "/v1/customers".into(),
                a.clone(),
                201,
                "cus-a".into()
            ),
        ],
        "newest first: {log}"
    );
    let first = &entries[5];
    assert_eq!(first["role"], "admin");
    assert_eq!(first["request_id"], "audit-POST-/v1/customers");
    assert_eq!(first["request"]["name"], "Acme A");
    assert_eq!(first["response"]["customer_id"], "cus-a");
    assert!(
        first["remote_addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{first}"
    );
    assert_eq!(entries[3]["response"]["status"], 422);
    assert_eq!(entries[4]["role"], "write");
    assert_eq!(entries[2]["response"]["secret"], "[redacted]");
    assert!(
        !log.to_string().contains("whsec_"),
        "a signing secret in the log: {log}"
    );

    // Pages, and one key's writes.
    let (_, page) = send("GET", "/v1/audit?limit=3", &admin, None).await;
    assert_eq!(page["has_more"], true);
    let after = page["data"][2]["id"].as_str().unwrap();
    let (_, rest) = send(
        "GET",
        &format!("/v1/audit?limit=3&starting_after={after}"),
        &admin,
        None,
    )
    .await;
    assert_eq!(rest["data"].as_array().unwrap().len(), 3);
    assert_eq!(rest["data"][2]["id"], entries[5]["id"]);
    assert_eq!(rest["has_more"], false);
    let (_, mine) = send("GET", &format!("/v1/audit?key_id={w}"), &admin, None).await;
    assert_eq!(mine["data"].as_array().unwrap().len(), 2, "{mine}");
    let (status, bad_cursor) = send("GET", "/v1/audit?starting_after=nope", &admin, None).await;
    assert_eq!(status, 400, "{bad_cursor}");

    // Another tenant sees none of it; ClickHouse has exactly these rows.
    let globex = services.key("globex").await;
    let (_, theirs) = send("GET", "/v1/audit", &globex, None).await;
    assert_eq!(theirs["data"], json!([]));
    let rows: u64 = env
        .clickhouse()
        .query("SELECT count() FROM audit_log FINAL WHERE tenant_id = 'acme'")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(rows, 6);
    services.shutdown().await;
    env.cleanup().await;
}
