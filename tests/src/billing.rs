//! Helpers for bill-run tests: test clocks and invoices as the invoicer leaves them.

use std::collections::BTreeMap;
use std::time::Duration;

use billing_schemas::lifecycle::{ClockTick, Lifecycle, LifecycleEvent};
use billing_schemas::Encoding;
use billing_store::billing::BillingStore;
use billing_store::invoices::InvoiceView;
use chrono::{DateTime, Utc};

use crate::{eventually, TestEnv};

impl TestEnv {
    /// A `BillingStore` on this test's keyspace.
    pub async fn billing_store(&self) -> BillingStore {
        let session = std::sync::Arc::new(
            billing_runtime::cql::connect(&self.settings.cassandra)
                .await
                .unwrap(),
        );
        BillingStore::new(session, &self.settings.cassandra.keyspace)
            .await
            .unwrap()
    }

    /// A `CreditNoteStore` on this test's keyspace.
    pub async fn credit_note_store(&self) -> billing_store::credit_notes::CreditNoteStore {
        let session = std::sync::Arc::new(
            billing_runtime::cql::connect(&self.settings.cassandra)
                .await
                .unwrap(),
        );
        billing_store::credit_notes::CreditNoteStore::new(
            session,
            &self.settings.cassandra.keyspace,
        )
        .await
        .unwrap()
    }

    /// Publish a test clock's time to every lifecycle partition.
    pub async fn tick(&self, tenant: &str, clock: &str, to: DateTime<Utc>) {
        let tick = LifecycleEvent {
            tenant_id: tenant.into(),
            event_id: format!("tick-{clock}-{}", to.timestamp_millis()),
            occurred_at: to,
            payload: Lifecycle::ClockTick(ClockTick {
                clock_id: clock.into(),
                now: to,
            }),
        };
        self.publisher()
            .tick_everywhere(&tick, Encoding::Avro, self.settings.kafka.partitions)
            .await
            .unwrap();
    }

    /// Wait until every partition's invoicer has billed the clock up to `to`.
    pub async fn clock_reached(
        &self,
        store: &BillingStore,
        tenant: &str,
        clock: &str,
        to: DateTime<Utc>,
        timeout: Duration,
    ) {
        let partitions = self.settings.kafka.partitions;
        eventually(
            timeout,
            &format!("clock {clock} at {to} everywhere"),
            || async {
                let at = store.test_clock(tenant, clock).await.ok()?;
                (0..partitions)
                    .all(|p| at.get(&p).is_some_and(|t| *t >= to))
                    .then_some(())
            },
        )
        .await;
    }

    /// Move a test clock to `to` and wait until it is billed everywhere.
    pub async fn advance(&self, store: &BillingStore, tenant: &str, clock: &str, to: &str) {
        let to: DateTime<Utc> = to.parse().unwrap();
        self.tick(tenant, clock, to).await;
        self.clock_reached(store, tenant, clock, to, Duration::from_secs(120))
            .await;
    }
}

/// A customer's invoices by billing date.
pub async fn invoices_of(
    store: &BillingStore,
    tenant: &str,
    customer: &str,
) -> BTreeMap<DateTime<Utc>, InvoiceView> {
    let mut out = BTreeMap::new();
    for id in store.invoice_ids_of(tenant, customer).await.unwrap() {
        let inv = store.invoice(tenant, &id).await.unwrap().unwrap();
        out.insert(inv.billing_date, inv);
    }
    out
}

/// Every invoice of a tenant, by id.
pub async fn all_invoices(store: &BillingStore, tenant: &str) -> BTreeMap<String, InvoiceView> {
    store
        .invoices(tenant, usize::MAX, None, |_| true)
        .await
        .unwrap()
        .into_iter()
        .map(|i| (i.invoice_id.clone(), i))
        .collect()
}
