//! The invoice cache of query-api (`GET /v1/invoices/{id}`) on the real stack, with two query-api instances: an
//! instance serves an issued invoice from its cache (its `invoice_cache_lookups_total{result="hit"}` grows), and a
//! change made through the other instance, or through itself, is in its very next answer.

use std::time::Duration;

use billing_tests::api::Api;
use billing_tests::{free_addr, Services, TestEnv};
use serde_json::{json, Value};

/// The instance's cache hits so far, from its `/metrics`.
async fn hits(base: &str) -> u64 {
    billing_tests::metric(
        base,
        "billing_query_api_invoice_cache_lookups_total{result=\"hit\"}",
    )
    .await as u64
}

/// Reads the invoice through `api` until its answer comes from the cache (the cache serves once its change consumer
/// is positioned), and returns the answer.
async fn cached(api: &Api, base: &str, id: &str) -> Value {
    let path = format!("/v1/invoices/{id}");
    for _ in 0..100 {
        let before = hits(base).await;
        let r = api.get(&path).await;
        assert_eq!(r.status, 200, "{}", r.body);
        if hits(base).await > before {
            return r.body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("invoice {id} never served from the cache of {base}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_through_either_instance_is_in_the_next_answer_of_the_other() {
    let mut env = TestEnv::new("invoice_cache").await;
    env.settings.query_api.write_wait = Duration::from_secs(60);
    let services = Services::start(&env.settings).await;
    let a = services.api_for("acme").await;
    // A second query-api on the same stack.
    let mut settings = env.settings.clone();
    settings.query_api.listen = free_addr();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let second = tokio::spawn(billing_query_api::run(
        settings,
        services.stop.clone(),
        move |addr| {
            let _ = tx.send(addr);
        },
    ));
    let b_base = format!("http://{}", rx.await.unwrap());
    let b = Api::new(&b_base, &services.key("acme").await);

    a.created(
        "/v1/add_ons",
        json!({"code": "setup", "name": "Setup", "amount": "25.00", "amount_currency": "EUR"}),
        201,
    )
    .await;
    a.created(
        "/v1/customers",
        json!({"customer_id": "cus-1", "name": "One", "currency": "EUR"}),
        201,
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let inv = a
            .created(
                "/v1/invoices",
                json!({"customer_id": "cus-1", "fees": [{"add_on_code": "setup"}]}),
                201,
            )
            .await;
        assert_eq!(inv["status"], "finalized", "{inv}");
        ids.push(inv["invoice_id"].as_str().unwrap().to_owned());
    }

    // Voided through the other instance: the cached answer is not served again.
    let before = cached(&b, &b_base, &ids[0]).await;
    assert_eq!(before["status"], "finalized", "{before}");
    assert_eq!(before["total"], "25.00", "{before}");
    let r = a
        .post(&format!("/v1/invoices/{}/void", ids[0]), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let after = b.get(&format!("/v1/invoices/{}", ids[0])).await;
    assert_eq!(after.body["status"], "void", "{}", after.body);
    assert_ne!(after.headers["etag"], "", "{:?}", after.headers);

    // Voided through the instance that cached it.
    let before = cached(&b, &b_base, &ids[1]).await;
    assert_eq!(before["status"], "finalized", "{before}");
    let r = b
        .post(&format!("/v1/invoices/{}/void", ids[1]), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let after = b.get(&format!("/v1/invoices/{}", ids[1])).await;
    assert_eq!(after.body["status"], "void", "{}", after.body);

    // Both answers come from the cache again once the changes are old, and are the new ones.
    for id in &ids {
        let again = cached(&b, &b_base, id).await;
        assert_eq!(again["status"], "void", "{again}");
    }

    services.shutdown().await;
    second
        .await
        .unwrap()
        .expect("second query-api ended cleanly");
    env.cleanup().await;
}
