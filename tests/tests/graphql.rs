//! `POST /graphql` on the real stack (`docs/api.md`, "GraphQL"): 30 customers of `acme`, each with a subscription
//! and two one-off invoices (and one customer of `globex`), made through the REST API; then customers with their
//! subscriptions and invoices with lines, read in one query whose store statements (`extensions.store_queries`) do
//! not grow with the number of customers; the depth and complexity limits; the keys and roles of the REST reads;
//! no byte of another tenant's data.

use std::time::Duration;

use billing_runtime::auth::Role;
use billing_tests::api::Api;
use billing_tests::{api_key, Services, TestEnv};
use serde_json::{json, Value};

async fn graphql(api: &Api, query: &str) -> (u16, Value) {
    let r = api.post("/graphql", json!({ "query": query })).await;
    (r.status, r.body)
}

fn customers_query(first: usize) -> String {
    format!(
        "{{ customers(first: {first}) {{ hasMore nodes {{ id name currency subscriptions {{ id planCode status }} \
         invoices(first: 5) {{ id number status currency total lines {{ kind description amount total }} }} }} }} }}"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn customers_with_invoices_cost_a_bounded_number_of_store_queries() {
    let mut env = TestEnv::new("graphql").await;
    env.settings.query_api.write_wait = Duration::from_secs(60);
    let services = Services::start(&env.settings).await;
    let api = services.api_for("acme").await;
    let globex = services.api_for("globex").await;
    api.created(
        "/v1/plans",
        json!({"code": "basic", "interval": "monthly", "currency": "EUR", "amount": "10.00", "pay_in_advance": true}),
        201,
    )
    .await;
    api.created(
        "/v1/add_ons",
        json!({"code": "setup", "name": "Setup", "amount": "25.00", "amount_currency": "EUR"}),
        201,
    )
    .await;
    for i in 0..30 {
        let id = format!("cus-{i:02}");
        api.created(
            "/v1/customers",
            json!({"customer_id": id, "name": format!("Customer {i}"), "currency": "EUR"}),
            201,
        )
        .await;
        api.created(
            "/v1/subscriptions",
            json!({"subscription_id": format!("sub-{i:02}"), "customer_id": id, "plan_code": "basic",
                   "started_at": "2026-01-01T00:00:00Z"}),
            201,
        )
        .await;
        for _ in 0..2 {
            api.created(
                "/v1/invoices",
                json!({"customer_id": id, "fees": [{"add_on_code": "setup"}]}),
                201,
            )
            .await;
        }
    }
    globex
        .created(
            "/v1/customers",
            json!({"customer_id": "cus-globex", "name": "GLOBEX-SECRET", "currency": "EUR"}),
            201,
        )
        .await;

    // Ten customers, then thirty: the same statements (customer ids, customers, invoice ids, invoices,
    // subscription ids, subscriptions), whatever the number of customers.
    let mut counts = Vec::new();
    for n in [10, 30] {
        let (status, body) = graphql(&api, &customers_query(n)).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.get("errors").is_none(), "{body}");
        let nodes = body["data"]["customers"]["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), n, "{body}");
        for c in nodes {
            assert_eq!(c["subscriptions"].as_array().unwrap().len(), 1, "{c}");
            assert_eq!(c["subscriptions"][0]["planCode"], "basic");
            let invoices = c["invoices"].as_array().unwrap();
            assert_eq!(invoices.len(), 2, "{c}");
            for inv in invoices {
                assert_eq!(
                    (inv["total"].as_str(), inv["status"].as_str()),
                    (Some("25.00"), Some("finalized")),
                    "{inv}"
                );
                assert_eq!(inv["lines"][0]["kind"], "add_on", "{inv}");
                assert_eq!(inv["lines"][0]["amount"], "25.00", "{inv}");
            }
        }
        assert_eq!(body["data"]["customers"]["hasMore"], n < 30, "{body}");
        counts.push(body["extensions"]["store_queries"].as_u64().unwrap());
    }
    // No statement per customer (N+1 would be over 60 for 30 customers); a loaded machine may split a batch.
    assert!(counts.iter().all(|c| *c <= 12), "{counts:?}");
    eprintln!(
        "store statements for 10 and 30 customers with subscriptions and invoices: {counts:?}"
    );

    // One customer, one invoice by id, the page after a cursor.
    let (_, one) = graphql(
        &api,
        r#"{ customer(id: "cus-07") { id name invoices(first: 1) { id } } }"#,
    )
    .await;
    assert_eq!(one["data"]["customer"]["name"], "Customer 7", "{one}");
    let invoice_id = one["data"]["customer"]["invoices"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, inv) = graphql(
        &api,
        &format!(r#"{{ invoice(id: "{invoice_id}") {{ id customerId total }} }}"#),
    )
    .await;
    assert_eq!(inv["data"]["invoice"]["customerId"], "cus-07", "{inv}");
    let (_, page) = graphql(
        &api,
        r#"{ customers(first: 5, after: "cus-05") { nodes { id } } }"#,
    )
    .await;
    let ids: Vec<&str> = page["data"]["customers"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["cus-04", "cus-03", "cus-02", "cus-01", "cus-00"],
        "{page}"
    );

    // Limits: too deep, too complex, a list too long, a malformed body.
    let (status, deep) = graphql(
        &api,
        "{ __schema { types { fields { type { ofType { ofType { ofType { ofType { ofType { name } } } } } } } } } }",
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        deep["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("nested too deep"),
        "{deep}"
    );
    let (_, complex) = graphql(&api, "{ customers(first: 100) { nodes { usage } } }").await;
    assert!(
        complex["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("too complex"),
        "{complex}"
    );
    let (_, long) = graphql(&api, "{ customers(first: 101) { nodes { id } } }").await;
    assert!(
        long["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("first"),
        "{long}"
    );
    let bad = api
        .post(
            "/graphql",
            json!({"query": "{ customers { nodes { id } } }", "extra": 1}),
        )
        .await;
    bad.problem(400, "extra");

    // Keys and roles as for the REST reads; another tenant sees only its own.
    for (role, allowed) in [
        (Role::Read, true),
        (Role::Write, true),
        (Role::Analyst, false),
        (Role::Ingest, false),
    ] {
        let k = Api::new(&services.api, &api_key(&env.settings, "acme", role).await);
        let (status, body) = graphql(&k, "{ customers(first: 1) { nodes { id } } }").await;
        assert_eq!(status == 200, allowed, "{role:?}: {status} {body}");
    }
    let nobody = Api::new(&services.api, "bk_0000000000000000_0000");
    assert_eq!(
        graphql(&nobody, "{ customers { nodes { id } } }").await.0,
        401
    );
    let (_, theirs) = graphql(&globex, &customers_query(100)).await;
    let text = theirs.to_string();
    assert!(
        text.contains("GLOBEX-SECRET") && !text.contains("cus-0"),
        "{text}"
    );
    let (_, ours) = graphql(&api, &customers_query(100)).await;
    assert!(!ours.to_string().contains("GLOBEX-SECRET"));
    let (_, cross) = graphql(&globex, r#"{ customer(id: "cus-07") { id } }"#).await;
    assert_eq!(cross["data"]["customer"], Value::Null, "{cross}");

    services.shutdown().await;
    env.cleanup().await;
}
