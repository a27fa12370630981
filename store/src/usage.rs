//! The usage tables together, as their writer (rating) and their readers use them: prepared statements, the
//! load order that makes a customer's state consistent while another instance may still be writing it, and the
//! checkpoint writes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;

use crate::usage_aggregates::{self, AggKey, AggState, AggWrite, AggregateRow};
use crate::{usage_dedup, usage_unique_values};

/// Everything stored about one customer's usage.
#[derive(Debug, Default)]
pub struct CustomerUsage {
    /// Aggregates by key, unique values included.
    pub aggregates: HashMap<AggKey, AggState>,
    /// Event ids already counted (empty when loaded with [`UsageStore::aggregates`]).
    pub seen: HashSet<String>,
}

impl CustomerUsage {
    /// The usage of a subscription's billing period for the charges of its plans, as the core's input (what
    /// `Reference::invoice_on` asks for).
    pub fn for_subscription(
        &self,
        s: &billing_core::invoicing::BillableSubscription,
        period: &billing_core::period::BillingPeriod,
    ) -> Result<Vec<billing_core::invoicing::ChargeAggregate>, String> {
        let id = s.id.clone().unwrap_or_default();
        let has = |code: &str| {
            s.plans
                .iter()
                .any(|p| p.charges.iter().any(|c| c.code == code))
        };
        self.charge_aggregates(&id, period, has)
            .map_err(|e| e.to_string())
    }

    /// The usage of one subscription's billing period as the core's pre-aggregated input, for the charges
    /// `has_charge` knows (rows of charges no longer on the plan are left out).
    pub fn charge_aggregates(
        &self,
        subscription_id: &str,
        period: &billing_core::period::BillingPeriod,
        has_charge: impl Fn(&str) -> bool,
    ) -> anyhow::Result<Vec<billing_core::invoicing::ChargeAggregate>> {
        let mut out = Vec::new();
        for (k, st) in &self.aggregates {
            if k.subscription_id != subscription_id
                || k.period_start != period.start
                || !has_charge(&k.charge_id)
            {
                continue;
            }
            let aggregation = st.aggregation_type()?;
            let units = st
                .running
                .units(aggregation, None, period.start, st.period_end)?;
            out.push(billing_core::invoicing::ChargeAggregate {
                charge: k.charge_id.clone(),
                group: (!k.group_key.is_empty()).then(|| k.group_key.clone()),
                aggregate: billing_core::aggregation::Aggregate {
                    units,
                    events_count: st.running.events_count,
                    event_values: Vec::new(),
                },
            });
        }
        Ok(out)
    }
}

/// One aggregate to write: tenant, customer, key, state and the unique values added since the last write.
pub type AggregateWrite = (String, String, AggKey, AggState, Vec<String>);

/// How many CQL writes a checkpoint keeps in flight.
const WRITE_CONCURRENCY: usize = 64;

/// Prepared statements over `usage_aggregates`, `usage_unique_values` and `usage_dedup`.
pub struct UsageStore {
    session: Arc<Session>,
    select_aggregates: PreparedStatement,
    select_unique: PreparedStatement,
    select_dedup: PreparedStatement,
    upsert_aggregate: PreparedStatement,
    insert_unique: PreparedStatement,
    insert_dedup: PreparedStatement,
}

impl UsageStore {
    /// Prepare every statement once.
    pub async fn new(session: Arc<Session>, ks: &str) -> anyhow::Result<Self> {
        let prepare = |q: String, idempotent: bool| crate::prepare(&session, q, idempotent);
        Ok(UsageStore {
            select_aggregates: prepare(usage_aggregates::select_by_customer(ks), true).await?,
            select_unique: prepare(usage_unique_values::select_by_customer(ks), true).await?,
            select_dedup: prepare(usage_dedup::select_by_customer(ks), true).await?,
            upsert_aggregate: prepare(usage_aggregates::upsert(ks), true).await?,
            insert_unique: prepare(usage_unique_values::insert(ks), true).await?,
            insert_dedup: prepare(usage_dedup::insert(ks), true).await?,
            session,
        })
    }

    /// Everything stored about a customer (paged reads), in the reverse of the order a checkpoint writes it.
    /// Dedup ids come first: a checkpoint writes aggregates before ids, so every id read here is already included
    /// in the aggregates read next, even while another instance is still writing this customer's last checkpoint.
    pub async fn load(&self, tenant: &str, customer: &str) -> anyhow::Result<CustomerUsage> {
        let mut seen = HashSet::new();
        let mut rows = self
            .session
            .execute_iter(self.select_dedup.clone(), (tenant, customer))
            .await?
            .rows_stream::<(String,)>()?;
        while let Some((event_id,)) = rows.try_next().await? {
            seen.insert(event_id);
        }
        let mut usage = self.aggregates(tenant, customer).await?;
        usage.seen = seen;
        Ok(usage)
    }

    /// A customer's aggregates with their unique values (no dedup ids): what a reader needs to price usage.
    pub async fn aggregates(&self, tenant: &str, customer: &str) -> anyhow::Result<CustomerUsage> {
        self.aggregates_with(tenant, customer, true).await
    }

    /// A customer's aggregates, with their unique values only when `unique` (a reader whose charges count no
    /// unique values saves that read).
    pub async fn aggregates_with(
        &self,
        tenant: &str,
        customer: &str,
        unique: bool,
    ) -> anyhow::Result<CustomerUsage> {
        let mut usage = CustomerUsage::default();
        let mut rows = self
            .session
            .execute_iter(self.select_aggregates.clone(), (tenant, customer))
            .await?
            .rows_stream::<AggregateRow>()?;
        while let Some(r) = rows.try_next().await? {
            let (key, state) = r.into_state()?;
            usage.aggregates.insert(key, state);
        }
        if !unique {
            return Ok(usage);
        }
        let mut rows = self
            .session
            .execute_iter(self.select_unique.clone(), (tenant, customer))
            .await?
            .rows_stream::<(String, String, DateTime<Utc>, String, String)>()?;
        while let Some((subscription_id, charge_id, period_start, group_key, value)) =
            rows.try_next().await?
        {
            let key = AggKey {
                subscription_id,
                charge_id,
                period_start,
                group_key,
            };
            if let Some(state) = usage.aggregates.get_mut(&key) {
                state.running.unique.insert(value);
            }
        }
        Ok(usage)
    }

    /// Write aggregates as absolute values, stamped with their last offset, after their new unique values.
    pub async fn save_aggregates(&self, rows: &[AggregateWrite]) -> anyhow::Result<()> {
        // The futures are made first: a lazy `map` over borrowed rows is not `Send` for every lifetime, which a
        // spawned checkpoint needs.
        let writes: Vec<_> = rows.iter().map(|row| self.save_aggregate(row)).collect();
        futures::stream::iter(writes)
            .buffer_unordered(WRITE_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn save_aggregate(&self, row: &AggregateWrite) -> anyhow::Result<()> {
        let (tenant, customer, k, s, new_unique) = row;
        for value in new_unique {
            self.session
                .execute_unpaged(
                    &self.insert_unique,
                    (
                        tenant,
                        customer,
                        &k.subscription_id,
                        &k.charge_id,
                        k.period_start,
                        &k.group_key,
                        value,
                    ),
                )
                .await?;
        }
        self.session
            .execute_unpaged(
                &self.upsert_aggregate,
                AggWrite::new(tenant, customer, k, s),
            )
            .await?;
        Ok(())
    }

    /// Record counted event ids, one unlogged batch per customer (one partition each).
    pub async fn save_seen(&self, seen: &[((String, String), Vec<String>)]) -> anyhow::Result<()> {
        let writes: Vec<_> = seen
            .iter()
            .map(|(c, ids)| self.save_seen_of(&c.0, &c.1, ids))
            .collect();
        futures::stream::iter(writes)
            .buffer_unordered(WRITE_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn save_seen_of(
        &self,
        tenant: &str,
        customer: &str,
        ids: &[String],
    ) -> anyhow::Result<()> {
        for chunk in ids.chunks(200) {
            let mut batch = Batch::new(BatchType::Unlogged);
            let mut values = Vec::with_capacity(chunk.len());
            for id in chunk {
                batch.append_statement(self.insert_dedup.clone());
                values.push((tenant, customer, id.as_str()));
            }
            self.session.batch(&batch, values).await?;
        }
        Ok(())
    }
}
