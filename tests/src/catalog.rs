//! Publishing catalog and lifecycle events the way operators and the API will, for tests: through the shared
//! `billing_runtime::publish::Publisher` and the schema's own event builders.

use billing_runtime::publish::Publisher;
use billing_schemas::catalog::{
    Aggregation, CatalogEvent, Charge, ChargeModel, Interval, MetricFilter, Plan,
};
use billing_schemas::lifecycle::{CustomerCreated, LifecycleEvent};
use billing_schemas::Encoding;
use chrono::{DateTime, Utc};

use crate::TestEnv;

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

impl TestEnv {
    /// A publisher on this test's topics, over the test's one producer.
    pub fn publisher(&self) -> Publisher {
        Publisher::with_producer(self.producer(), self.topics.clone())
    }

    /// Publish a billable metric.
    pub async fn publish_metric(
        &self,
        tenant: &str,
        code: &str,
        aggregation: Aggregation,
        field: Option<&str>,
        filters: &[(&str, &[&str])],
    ) {
        let filters = filters
            .iter()
            .map(|(k, v)| MetricFilter {
                key: (*k).into(),
                values: v.iter().map(|s| (*s).into()).collect(),
            })
            .collect();
        let ev = CatalogEvent::metric(
            tenant,
            at("2026-01-01T00:00:00Z"),
            code,
            aggregation,
            field,
            filters,
        );
        self.publisher().catalog(&ev, Encoding::Avro).await.unwrap();
    }

    /// Publish a monthly plan with usage charges `(id, metric, model, properties JSON, group_by)`.
    pub async fn publish_plan(
        &self,
        tenant: &str,
        code: &str,
        currency: &str,
        charges: &[(&str, &str, ChargeModel, &str, Option<&str>)],
    ) {
        let plan = Plan {
            version: 1,
            effective_from: None,
            tax_codes: vec![],
            code: code.into(),
            name: code.into(),
            interval: Interval::Monthly,
            currency: currency.into(),
            amount: "10.00".into(),
            pay_in_advance: true,
            trial_period_days: 0,
            charges: charges
                .iter()
                .map(|(id, metric, model, props, group_by)| Charge {
                    group_by: group_by.map(Into::into),
                    ..Charge::on_metric(id, metric, *model, props)
                })
                .collect(),
        };
        let ev = CatalogEvent::plan(tenant, at("2026-01-01T00:00:00Z"), plan);
        self.publisher().catalog(&ev, Encoding::Json).await.unwrap();
    }

    /// Create a customer and subscribe it (subscription `sub-<customer>`) to a plan from `started_at` (calendar
    /// billing).
    pub async fn subscribe(&self, tenant: &str, customer: &str, plan: &str, started_at: &str) {
        let publisher = self.publisher();
        for ev in LifecycleEvent::customer_subscribed(
            tenant,
            CustomerCreated::new(customer, customer, "EUR", "UTC"),
            &format!("sub-{customer}"),
            plan,
            at(started_at),
        ) {
            publisher.lifecycle(&ev, Encoding::Avro).await.unwrap();
        }
    }

    /// The catalog most tests need: a metric `api_calls` (sum of `value`) charged 0.01 per unit on the monthly
    /// plan `basic` (EUR), and each customer subscribed to it (`sub-<customer>`) from 2026-03-01.
    pub async fn publish_basic_catalog(&self, tenant: &str, customers: &[&str]) {
        self.publish_metric(tenant, "api_calls", Aggregation::Sum, Some("value"), &[])
            .await;
        self.publish_plan(
            tenant,
            "basic",
            "EUR",
            &[(
                "calls",
                "api_calls",
                ChargeModel::Standard,
                r#"{"amount":"0.01"}"#,
                None,
            )],
        )
        .await;
        for c in customers {
            self.subscribe(tenant, c, "basic", "2026-03-01T00:00:00Z")
                .await;
        }
    }

    /// Publish one lifecycle event (a pause, a cancellation, …).
    pub async fn publish_lifecycle(&self, ev: &LifecycleEvent) {
        self.publisher()
            .lifecycle(ev, Encoding::Avro)
            .await
            .unwrap();
    }
}
