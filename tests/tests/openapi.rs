//! The OpenAPI document against the live API (`docs/api.md`, "OpenAPI"): Schemathesis (PyPI; `scripts/test.sh`
//! installs it and sets `SCHEMATHESIS`) generates requests for every operation of `/openapi.json` from its schemas
//! and calls rating, the invoicer and query-api running on the real stack with an admin key. It fails on any server
//! error and on any answer that contradicts the document: a status it does not list, another content type, a body
//! that does not match its schema.

use std::time::Duration;

use billing_runtime::config::Rate;
use billing_tests::{Services, TestEnv};

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_server_error_and_nothing_the_document_does_not_say() {
    let st = std::env::var("SCHEMATHESIS").unwrap_or_else(|_| {
        panic!("SCHEMATHESIS is not set: run the suite with scripts/test.sh (make test), which installs Schemathesis")
    });
    let mut env = TestEnv::new("openapi").await;
    // Writes answer 202 rather than wait long; the fuzzer's pace is not what the rate limits are tested for.
    env.settings.query_api.write_wait = Duration::from_secs(3);
    let plenty = Rate {
        per_second: 100_000,
        burst: 100_000,
    };
    env.settings.rate_limits.reads = plenty;
    env.settings.rate_limits.writes = plenty;
    let services = Services::start(&env.settings).await;
    let key = services.key("fuzz").await;

    // The document is public and names every operation (its own unit test checks it against the router).
    let doc: serde_json::Value = reqwest::get(format!("{}/openapi.json", services.api))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let docs = reqwest::get(format!("{}/docs", services.api))
        .await
        .unwrap();
    assert_eq!(docs.status(), 200);
    assert!(docs.text().await.unwrap().contains("/v1/customers"));

    // One worker (Schemathesis's threads once crashed with an internal IndexError and then deadlocked), a bound on
    // the whole run, and one more run when the tool itself crashes (its "internal error" is no verdict on the API).
    let mut stdout = String::new();
    let mut passed = false;
    for attempt in 1..=2 {
        let (ok, out) = schemathesis(&st, &services.api, &key).await;
        stdout = out;
        eprintln!("Schemathesis, run {attempt}:\n{stdout}");
        passed = ok;
        if ok || !stdout.contains("An internal error occurred") {
            break;
        }
    }
    assert!(
        passed,
        "Schemathesis found answers the document does not allow (above)"
    );
    // It really called every operation.
    let operations = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_object().unwrap().len())
        .sum::<usize>();
    assert!(
        stdout.contains(&format!(" {operations} passed in ")),
        "all {operations} operations expected to pass in the run"
    );

    services.shutdown().await;
    env.cleanup().await;
}

/// Run Schemathesis against the API: whether it passed, and what it printed. Killed after 10 minutes.
async fn schemathesis(st: &str, api: &str, key: &str) -> (bool, String) {
    let (st, api, key) = (st.to_owned(), api.to_owned(), key.to_owned());
    tokio::task::spawn_blocking(move || {
        let log = std::env::temp_dir().join(format!("schemathesis-{}.log", uuid::Uuid::new_v4().simple()));
        let file = std::fs::File::create(&log).unwrap();
        let mut child = std::process::Command::new(&st)
            .args(["run", &format!("{api}/openapi.json")])
            .arg("--experimental=openapi-3.1")
            .args(["--header", &format!("Authorization: Bearer {key}")])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            ])
            .args(["--hypothesis-max-examples", "12"])
            .args(["--hypothesis-phases", "explicit,generate"])
            .args(["--hypothesis-suppress-health-check", "all"])
            .args(["--hypothesis-seed", "20261201"])
            .args(["--request-timeout", "30000"])
            .args(["--workers", "1"])
            .args(["--no-color"])
            .env("SCHEMATHESIS_TELEMETRY", "false")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(600);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let mut out = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        if status.is_none() {
            out.push_str("\n(killed after 10 minutes)");
        }
        (status.is_some_and(|s| s.success()), out)
    })
    .await
    .unwrap()
}
