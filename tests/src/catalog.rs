//! Publishing catalog and lifecycle events the way operators and the API will, for tests.

use billing_schemas::catalog::{
    Aggregation, BillableMetric, Catalog, CatalogEvent, Charge, ChargeModel, Interval,
    MetricFilter, Plan,
};
use billing_schemas::lifecycle::{
    BillingTime, CustomerCreated, Lifecycle, LifecycleEvent, SubscriptionCreated,
};
use billing_schemas::{customer_key, encode, Encoding};
use chrono::{DateTime, Utc};

use crate::TestEnv;

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

impl TestEnv {
    /// Publish a billable metric.
    pub async fn publish_metric(
        &self,
        tenant: &str,
        code: &str,
        aggregation: Aggregation,
        field: Option<&str>,
        filters: &[(&str, &[&str])],
    ) {
        let ev = CatalogEvent {
            tenant_id: tenant.into(),
            event_id: format!("metric-{code}"),
            occurred_at: at("2026-01-01T00:00:00Z"),
            payload: Catalog::BillableMetric(BillableMetric {
                code: code.into(),
                name: code.into(),
                aggregation,
                field_name: field.map(Into::into),
                filters: filters
                    .iter()
                    .map(|(k, v)| MetricFilter {
                        key: (*k).into(),
                        values: v.iter().map(|s| (*s).into()).collect(),
                    })
                    .collect(),
            }),
        };
        let payload = encode(&ev, Encoding::Avro).unwrap();
        self.produce(
            &self.topics.catalog,
            &format!("{tenant}/billable_metric/{code}"),
            &payload,
            None,
        )
        .await;
    }

    /// Publish a monthly plan with usage charges `(id, metric, model, properties JSON, group_by)`.
    pub async fn publish_plan(
        &self,
        tenant: &str,
        code: &str,
        currency: &str,
        charges: &[(&str, &str, ChargeModel, &str, Option<&str>)],
    ) {
        let ev = CatalogEvent {
            tenant_id: tenant.into(),
            event_id: format!("plan-{code}"),
            occurred_at: at("2026-01-01T00:00:00Z"),
            payload: Catalog::Plan(Plan {
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
                        id: (*id).into(),
                        metric_code: (*metric).into(),
                        charge_model: *model,
                        properties: (*props).into(),
                        min_amount: None,
                        group_by: group_by.map(Into::into),
                    })
                    .collect(),
            }),
        };
        let payload = encode(&ev, Encoding::Json).unwrap();
        self.produce(
            &self.topics.catalog,
            &format!("{tenant}/plan/{code}"),
            &payload,
            Some("application/json"),
        )
        .await;
    }

    /// Create a customer and subscribe it to a plan from `started_at` (calendar billing).
    pub async fn subscribe(&self, tenant: &str, customer: &str, plan: &str, started_at: &str) {
        let key = customer_key(tenant, customer);
        let created = LifecycleEvent {
            tenant_id: tenant.into(),
            event_id: format!("cus-{customer}"),
            occurred_at: at(started_at),
            payload: Lifecycle::CustomerCreated(CustomerCreated {
                customer_id: customer.into(),
                name: customer.into(),
                email: None,
                currency: "EUR".into(),
                timezone: "UTC".into(),
                billing_country: None,
            }),
        };
        let sub = LifecycleEvent {
            tenant_id: tenant.into(),
            event_id: format!("sub-{customer}"),
            occurred_at: at(started_at),
            payload: Lifecycle::SubscriptionCreated(SubscriptionCreated {
                subscription_id: format!("sub-{customer}"),
                customer_id: customer.into(),
                plan_code: plan.into(),
                started_at: at(started_at),
                trial_ends_at: None,
                billing_time: BillingTime::Calendar,
            }),
        };
        for ev in [created, sub] {
            let payload = encode(&ev, Encoding::Avro).unwrap();
            self.produce(&self.topics.lifecycle, &key, &payload, None)
                .await;
        }
    }
}
