//! The billing tables together, as their writer (the invoicer) and their readers (query-api, the invoicer) use
//! them: every statement prepared once, each call bounded by the session's request timeout.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;

use crate::customers::{self, CustomerView};
use crate::invoices::{self, InvoiceView};
use crate::subscriptions::{self, SubscriptionView};
use crate::{api_idempotency, catalog_entries, invoice_numbers, materialized_offsets, test_clocks};

/// A stored catalog entry: when it was first published and its JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogEntry {
    /// Code.
    pub code: String,
    /// Billing time of its first version.
    pub created_at: DateTime<Utc>,
    /// The catalog payload as JSON (a `BillableMetric` or a `Plan` of `billing-schemas`).
    pub body: String,
}

/// (tenant, invoice, its JSON body) of a batched row write.
type RowWrite = (String, InvoiceView, String);
/// An invoice and the status its billing-date entry gets.
type StatusWrite<'a> = (&'a InvoiceView, &'a str);

/// A value to bind, left unset (no tombstone) when there is none.
fn unset_if_none<T>(v: Option<T>) -> scylla::value::MaybeUnset<T> {
    match v {
        Some(v) => scylla::value::MaybeUnset::Set(v),
        None => scylla::value::MaybeUnset::Unset,
    }
}

/// An invoice's entry under its billing date: (customer, invoice id, status, number, usage offset).
pub type DateEntry = (String, String, String, String, Option<i64>);

/// Requests a bulk write keeps in flight.
const WRITE_CONCURRENCY: usize = 64;
/// Rows in one unlogged batch (all of one partition).
const BATCH_ROWS: usize = 100;
/// JSON bytes in one batch of invoice rows, well below Cassandra's default `batch_size_fail_threshold` (50 KiB).
const BATCH_BYTES: usize = 24 * 1024;

/// What an `Idempotency-Key` already holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyClaim {
    /// The key was free and is now this request's.
    Claimed,
    /// Another request with this key is still running.
    InFlight {
        /// Hash of that request.
        request_hash: String,
    },
    /// A request with this key was answered.
    Answered {
        /// Hash of that request.
        request_hash: String,
        /// Its HTTP status.
        status: u16,
        /// Its body.
        body: String,
    },
}

/// Prepared statements over the billing tables.
pub struct BillingStore {
    session: Arc<Session>,
    upsert_customer: PreparedStatement,
    upsert_customer_index: PreparedStatement,
    select_customer: PreparedStatement,
    customers_first: PreparedStatement,
    customers_after: PreparedStatement,
    upsert_subscription: PreparedStatement,
    upsert_subscription_index: PreparedStatement,
    select_subscription: PreparedStatement,
    subscriptions_of: PreparedStatement,
    upsert_catalog: PreparedStatement,
    delete_catalog: PreparedStatement,
    select_catalog: PreparedStatement,
    select_catalog_kind: PreparedStatement,
    upsert_clock: PreparedStatement,
    select_clock: PreparedStatement,
    upsert_invoice: PreparedStatement,
    upsert_invoice_index: PreparedStatement,
    upsert_invoice_by_date: PreparedStatement,
    select_invoices_by_date: PreparedStatement,
    select_invoice: PreparedStatement,
    invoices_first: PreparedStatement,
    invoices_after: PreparedStatement,
    invoices_of: PreparedStatement,
    select_next_number: PreparedStatement,
    claim_numbers: PreparedStatement,
    select_number_blocks: PreparedStatement,
    upsert_materialized: PreparedStatement,
    select_materialized: PreparedStatement,
    claim_key: PreparedStatement,
    complete_key: PreparedStatement,
    release_key: PreparedStatement,
    select_key: PreparedStatement,
    customers_many: PreparedStatement,
    subscriptions_many: PreparedStatement,
    subscription_ids_of_customers: PreparedStatement,
    invoices_many: PreparedStatement,
    invoice_ids_of_customers: PreparedStatement,
}

/// The most keys one batched read names (ScyllaDB refuses more than 100 key restrictions per query by default):
/// longer lists are read this many at a time.
pub const IN_CHUNK: usize = 100;

/// Counts the statements a batched read runs (GraphQL reports them per request, and its tests bound them).
#[derive(Debug, Default)]
pub struct Queries(std::sync::atomic::AtomicUsize);

impl Queries {
    fn one(&self) {
        self.add(1);
    }

    /// Count `n` statements run elsewhere.
    pub fn add(&self, n: usize) {
        self.0.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Statements run so far.
    pub fn count(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl BillingStore {
    /// Prepare every statement once.
    pub async fn new(session: Arc<Session>, ks: &str) -> anyhow::Result<Self> {
        let prepare = |q: String, idempotent: bool| crate::prepare(&session, q, idempotent);
        Ok(BillingStore {
            upsert_customer: prepare(customers::upsert(ks), true).await?,
            upsert_customer_index: prepare(customers::upsert_index(ks), true).await?,
            select_customer: prepare(customers::select_one(ks), true).await?,
            customers_first: prepare(customers::select_page_first(ks), true).await?,
            customers_after: prepare(customers::select_page_after(ks), true).await?,
            upsert_subscription: prepare(subscriptions::upsert(ks), true).await?,
            upsert_subscription_index: prepare(subscriptions::upsert_index(ks), true).await?,
            select_subscription: prepare(subscriptions::select_one(ks), true).await?,
            subscriptions_of: prepare(subscriptions::select_of_customer(ks), true).await?,
            upsert_catalog: prepare(catalog_entries::upsert(ks), true).await?,
            delete_catalog: prepare(catalog_entries::delete(ks), true).await?,
            select_catalog: prepare(catalog_entries::select_one(ks), true).await?,
            select_catalog_kind: prepare(catalog_entries::select_kind(ks), true).await?,
            upsert_clock: prepare(test_clocks::upsert(ks), true).await?,
            select_clock: prepare(test_clocks::select_clock(ks), true).await?,
            upsert_invoice: prepare(invoices::upsert(ks), true).await?,
            upsert_invoice_index: prepare(invoices::upsert_index(ks), true).await?,
            upsert_invoice_by_date: prepare(invoices::upsert_by_date(ks), true).await?,
            select_invoices_by_date: prepare(invoices::select_by_date(ks), true).await?,
            select_invoice: prepare(invoices::select_one(ks), true).await?,
            invoices_first: prepare(invoices::select_page_first(ks), true).await?,
            invoices_after: prepare(invoices::select_page_after(ks), true).await?,
            invoices_of: prepare(invoices::select_customer_ids(ks), true).await?,
            select_next_number: prepare(invoice_numbers::select_next(ks), true).await?,
            // Not idempotent: a retried claim whose first attempt applied would claim a second block.
            claim_numbers: prepare(invoice_numbers::claim_batch(ks), false).await?,
            select_number_blocks: prepare(invoice_numbers::select_blocks(ks), true).await?,
            upsert_materialized: prepare(materialized_offsets::upsert(ks), true).await?,
            select_materialized: prepare(materialized_offsets::select_one(ks), true).await?,
            claim_key: prepare(api_idempotency::claim(ks), false).await?,
            complete_key: prepare(api_idempotency::complete(ks), true).await?,
            release_key: prepare(api_idempotency::release(ks), true).await?,
            select_key: prepare(api_idempotency::select_one(ks), true).await?,
            customers_many: prepare(customers::select_many(ks), true).await?,
            subscriptions_many: prepare(subscriptions::select_many(ks), true).await?,
            subscription_ids_of_customers: prepare(subscriptions::select_of_customers(ks), true)
                .await?,
            invoices_many: prepare(invoices::select_many(ks), true).await?,
            invoice_ids_of_customers: prepare(invoices::select_ids_of_customers(ks), true).await?,
            session,
        })
    }

    // ---- customers ----

    /// Write a customer and its list entry.
    pub async fn put_customer(&self, tenant: &str, c: &CustomerView) -> anyhow::Result<()> {
        let body = serde_json::to_string(c)?;
        let clock = c.test_clock_id.clone().unwrap_or_default();
        let (a, b) = futures::join!(
            self.session.execute_unpaged(
                &self.upsert_customer,
                (tenant, &c.customer_id, c.created_at, clock, body),
            ),
            self.session.execute_unpaged(
                &self.upsert_customer_index,
                (tenant, c.created_at, &c.customer_id),
            )
        );
        a?;
        b?;
        Ok(())
    }

    /// One customer.
    pub async fn customer(&self, tenant: &str, id: &str) -> anyhow::Result<Option<CustomerView>> {
        let row = self
            .session
            .execute_unpaged(&self.select_customer, (tenant, id))
            .await?
            .into_rows_result()?
            .maybe_first_row::<(DateTime<Utc>, String)>()?;
        row.map(|(_, body)| Ok(serde_json::from_str(&body)?))
            .transpose()
    }

    /// Customers newest first, after the customer `starting_after` (a customer id) when given.
    pub async fn customers(
        &self,
        tenant: &str,
        limit: i32,
        starting_after: Option<&str>,
    ) -> anyhow::Result<Vec<CustomerView>> {
        let ids: Vec<(String,)> = match starting_after {
            None => self.collect(&self.customers_first, (tenant, limit)).await?,
            Some(after) => {
                let Some(c) = self.customer(tenant, after).await? else {
                    return Ok(Vec::new());
                };
                self.collect(&self.customers_after, (tenant, c.created_at, after, limit))
                    .await?
            }
        };
        let mut out = Vec::with_capacity(ids.len());
        for (id,) in ids {
            if let Some(c) = self.customer(tenant, &id).await? {
                out.push(c);
            }
        }
        Ok(out)
    }

    // ---- subscriptions ----

    /// Write a subscription and its list entry.
    pub async fn put_subscription(&self, tenant: &str, s: &SubscriptionView) -> anyhow::Result<()> {
        let body = serde_json::to_string(s)?;
        let (a, b) = futures::join!(
            self.session.execute_unpaged(
                &self.upsert_subscription,
                (
                    tenant,
                    &s.subscription_id,
                    &s.customer_id,
                    s.created_at,
                    body
                ),
            ),
            self.session.execute_unpaged(
                &self.upsert_subscription_index,
                (tenant, &s.customer_id, s.created_at, &s.subscription_id),
            )
        );
        a?;
        b?;
        Ok(())
    }

    /// One subscription.
    pub async fn subscription(
        &self,
        tenant: &str,
        id: &str,
    ) -> anyhow::Result<Option<SubscriptionView>> {
        let row = self
            .session
            .execute_unpaged(&self.select_subscription, (tenant, id))
            .await?
            .into_rows_result()?
            .maybe_first_row::<(String,)>()?;
        row.map(|(body,)| Ok(serde_json::from_str(&body)?))
            .transpose()
    }

    /// A customer's subscriptions, newest first.
    pub async fn subscriptions_of(
        &self,
        tenant: &str,
        customer: &str,
    ) -> anyhow::Result<Vec<SubscriptionView>> {
        let ids: Vec<(String,)> = self
            .collect(&self.subscriptions_of, (tenant, customer))
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for (id,) in ids {
            if let Some(s) = self.subscription(tenant, &id).await? {
                out.push(s);
            }
        }
        Ok(out)
    }

    // ---- catalog ----

    /// Write the latest version of a catalog entry.
    pub async fn put_catalog_entry(
        &self,
        tenant: &str,
        kind: &str,
        entry: &CatalogEntry,
    ) -> anyhow::Result<()> {
        self.session
            .execute_unpaged(
                &self.upsert_catalog,
                (tenant, kind, &entry.code, entry.created_at, &entry.body),
            )
            .await?;
        Ok(())
    }

    /// Remove a retired catalog entry.
    pub async fn delete_catalog_entry(
        &self,
        tenant: &str,
        kind: &str,
        code: &str,
    ) -> anyhow::Result<()> {
        self.session
            .execute_unpaged(&self.delete_catalog, (tenant, kind, code))
            .await?;
        Ok(())
    }

    /// One catalog entry.
    pub async fn catalog_entry(
        &self,
        tenant: &str,
        kind: &str,
        code: &str,
    ) -> anyhow::Result<Option<CatalogEntry>> {
        let row = self
            .session
            .execute_unpaged(&self.select_catalog, (tenant, kind, code))
            .await?
            .into_rows_result()?
            .maybe_first_row::<(DateTime<Utc>, String)>()?;
        Ok(row.map(|(created_at, body)| CatalogEntry {
            code: code.into(),
            created_at,
            body,
        }))
    }

    /// Every entry of a kind, newest first (then by code).
    pub async fn catalog_entries(
        &self,
        tenant: &str,
        kind: &str,
    ) -> anyhow::Result<Vec<CatalogEntry>> {
        let rows: Vec<(String, DateTime<Utc>, String)> = self
            .collect(&self.select_catalog_kind, (tenant, kind))
            .await?;
        let mut out: Vec<CatalogEntry> = rows
            .into_iter()
            .map(|(code, created_at, body)| CatalogEntry {
                code,
                created_at,
                body,
            })
            .collect();
        out.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.code.cmp(&a.code)));
        Ok(out)
    }

    // ---- test clocks ----

    /// Record that the partition has finished processing the clock up to `now`.
    pub async fn put_test_clock(
        &self,
        tenant: &str,
        clock: &str,
        partition: i32,
        now: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        self.session
            .execute_unpaged(&self.upsert_clock, (tenant, clock, partition, now))
            .await?;
        Ok(())
    }

    /// Per partition, how far the clock has been processed.
    pub async fn test_clock(
        &self,
        tenant: &str,
        clock: &str,
    ) -> anyhow::Result<HashMap<i32, DateTime<Utc>>> {
        let rows: Vec<(i32, DateTime<Utc>)> =
            self.collect(&self.select_clock, (tenant, clock)).await?;
        Ok(rows.into_iter().collect())
    }

    // ---- invoices ----

    /// Write an invoice, its customer's list entry and its billing date's entry (the customer's lifecycle
    /// partition: the bill run's unit).
    pub async fn put_invoice(
        &self,
        tenant: &str,
        inv: &InvoiceView,
        partition: i32,
    ) -> anyhow::Result<()> {
        let body = serde_json::to_string(inv)?;
        let number = inv.number.clone().unwrap_or_default();
        let row = self.session.execute_unpaged(
            &self.upsert_invoice,
            (
                tenant,
                &inv.invoice_id,
                &inv.customer_id,
                inv.status.as_str(),
                &number,
                inv.billing_date,
                body,
            ),
        );
        let index = self.session.execute_unpaged(
            &self.upsert_invoice_index,
            (tenant, &inv.customer_id, &inv.invoice_id),
        );
        let by_date = self.mark_invoice(tenant, inv, partition, inv.status.as_str());
        let (a, b, c) = futures::join!(row, index, by_date);
        a?;
        b?;
        c?;
        Ok(())
    }

    /// Write many invoices: the rows of one tenant in unlogged batches (one partition each, at most
    /// [`BATCH_BYTES`] of JSON), the billing-date entries of one (tenant, date, partition) likewise, the customers'
    /// list entries one by one; [`WRITE_CONCURRENCY`] requests in flight.
    pub async fn put_invoices(
        &self,
        invoices: &[(String, InvoiceView)],
        partition: i32,
    ) -> anyhow::Result<()> {
        // Batches of (tenant, invoice, its JSON), with their JSON bytes.
        let mut rows: Vec<(Vec<RowWrite>, usize)> = Vec::new();
        let mut by_tenant: HashMap<&str, Vec<&(String, InvoiceView)>> = HashMap::new();
        for item in invoices {
            by_tenant.entry(item.0.as_str()).or_default().push(item);
        }
        for items in by_tenant.values() {
            for (t, inv) in items {
                let body = serde_json::to_string(inv)?;
                match rows.last_mut() {
                    Some((batch, bytes))
                        if batch[0].0 == *t
                            && *bytes + body.len() <= BATCH_BYTES
                            && batch.len() < BATCH_ROWS =>
                    {
                        *bytes += body.len();
                        batch.push((t.clone(), inv.clone(), body));
                    }
                    _ => {
                        let n = body.len();
                        rows.push((vec![(t.clone(), inv.clone(), body)], n));
                    }
                }
            }
        }
        let row_batches = rows.into_iter().map(|(batch, _)| {
            let mut b = Batch::new(BatchType::Unlogged);
            let mut values = Vec::with_capacity(batch.len());
            for (t, inv, body) in batch {
                b.append_statement(self.upsert_invoice.clone());
                let number = inv.number.clone().unwrap_or_default();
                values.push((
                    t,
                    inv.invoice_id.clone(),
                    inv.customer_id.clone(),
                    inv.status.as_str().to_owned(),
                    number,
                    inv.billing_date,
                    body,
                ));
            }
            async move { self.session.batch(&b, values).await.map(|_| ()) }
        });
        let status: Vec<(&(String, InvoiceView), &str)> =
            invoices.iter().map(|i| (i, i.1.status.as_str())).collect();
        let (a, b, c) = futures::join!(
            futures::stream::iter(row_batches.collect::<Vec<_>>())
                .buffer_unordered(WRITE_CONCURRENCY)
                .try_collect::<Vec<()>>(),
            self.mark_many(&status, partition),
            futures::stream::iter(
                invoices
                    .iter()
                    .map(|(t, inv)| {
                        self.session.execute_unpaged(
                            &self.upsert_invoice_index,
                            (
                                t.as_str(),
                                inv.customer_id.as_str(),
                                inv.invoice_id.as_str(),
                            ),
                        )
                    })
                    .collect::<Vec<_>>()
            )
            .buffer_unordered(WRITE_CONCURRENCY)
            .try_collect::<Vec<_>>(),
        );
        a?;
        b?;
        c?;
        Ok(())
    }

    /// Write the billing-date entries of many invoices with this status (e.g. [`invoices::NUMBERING`]), one
    /// unlogged batch per (tenant, date, partition) and [`BATCH_ROWS`] rows.
    pub async fn mark_invoices(
        &self,
        invoices: &[(String, InvoiceView)],
        partition: i32,
        status: &str,
    ) -> anyhow::Result<()> {
        let items: Vec<(&(String, InvoiceView), &str)> =
            invoices.iter().map(|i| (i, status)).collect();
        self.mark_many(&items, partition).await
    }

    async fn mark_many(
        &self,
        items: &[(&(String, InvoiceView), &str)],
        partition: i32,
    ) -> anyhow::Result<()> {
        let mut groups: HashMap<(&str, DateTime<Utc>), Vec<StatusWrite<'_>>> = HashMap::new();
        for ((t, inv), status) in items {
            groups
                .entry((t.as_str(), inv.billing_date))
                .or_default()
                .push((inv, status));
        }
        let mut batches = Vec::new();
        for ((t, date), rows) in groups {
            for chunk in rows.chunks(BATCH_ROWS) {
                let mut b = Batch::new(BatchType::Unlogged);
                let mut values = Vec::with_capacity(chunk.len());
                for (inv, status) in chunk {
                    b.append_statement(self.upsert_invoice_by_date.clone());
                    values.push((
                        t,
                        date,
                        partition,
                        inv.customer_id.as_str(),
                        inv.invoice_id.as_str(),
                        *status,
                        inv.number.clone().unwrap_or_default(),
                        unset_if_none(inv.usage_offset),
                    ));
                }
                batches.push(async move { self.session.batch(&b, values).await.map(|_| ()) });
            }
        }
        futures::stream::iter(batches)
            .buffer_unordered(WRITE_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Write only the billing date's entry of an invoice, with this status (e.g. [`invoices::NUMBERING`]).
    pub async fn mark_invoice(
        &self,
        tenant: &str,
        inv: &InvoiceView,
        partition: i32,
        status: &str,
    ) -> anyhow::Result<()> {
        self.session
            .execute_unpaged(
                &self.upsert_invoice_by_date,
                (
                    tenant,
                    inv.billing_date,
                    partition,
                    &inv.customer_id,
                    &inv.invoice_id,
                    status,
                    inv.number.clone().unwrap_or_default(),
                    unset_if_none(inv.usage_offset),
                ),
            )
            .await?;
        Ok(())
    }

    /// The invoices of one billing date for the customers of one lifecycle partition: (customer, invoice id,
    /// status, number, usage offset).
    pub async fn invoices_on(
        &self,
        tenant: &str,
        date: DateTime<Utc>,
        partition: i32,
    ) -> anyhow::Result<Vec<DateEntry>> {
        self.collect(&self.select_invoices_by_date, (tenant, date, partition))
            .await
    }

    /// One invoice.
    pub async fn invoice(&self, tenant: &str, id: &str) -> anyhow::Result<Option<InvoiceView>> {
        let row = self
            .session
            .execute_unpaged(&self.select_invoice, (tenant, id))
            .await?
            .into_rows_result()?
            .maybe_first_row::<(String,)>()?;
        row.map(|(body,)| Ok(serde_json::from_str(&body)?))
            .transpose()
    }

    /// The tenant's invoices newest first, after `starting_after` (an invoice id) when given, keeping those
    /// `keep` accepts, at most `limit`. Pages through the tenant's invoices until `limit` are kept.
    pub async fn invoices(
        &self,
        tenant: &str,
        limit: usize,
        starting_after: Option<&str>,
        keep: impl Fn(&InvoiceView) -> bool,
    ) -> anyhow::Result<Vec<InvoiceView>> {
        let mut out = Vec::new();
        let rows = match starting_after {
            None => {
                self.session
                    .execute_iter(self.invoices_first.clone(), (tenant,))
                    .await?
            }
            Some(after) => {
                self.session
                    .execute_iter(self.invoices_after.clone(), (tenant, after))
                    .await?
            }
        };
        let mut rows = rows.rows_stream::<(String,)>()?;
        while let Some((body,)) = rows.try_next().await? {
            let inv: InvoiceView = serde_json::from_str(&body)?;
            if keep(&inv) {
                out.push(inv);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Ids of a customer's invoices, newest first.
    pub async fn invoice_ids_of(
        &self,
        tenant: &str,
        customer: &str,
    ) -> anyhow::Result<Vec<String>> {
        let rows: Vec<(String,)> = self.collect(&self.invoices_of, (tenant, customer)).await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// Every stored invoice of a customer (drafts included), in billing-date order; [`WRITE_CONCURRENCY`] reads in
    /// flight.
    pub async fn invoices_of(
        &self,
        tenant: &str,
        customer: &str,
    ) -> anyhow::Result<Vec<InvoiceView>> {
        let ids = self.invoice_ids_of(tenant, customer).await?;
        let reads: Vec<_> = ids.iter().map(|id| self.invoice(tenant, id)).collect();
        let found: Vec<Option<InvoiceView>> = futures::stream::iter(reads)
            .buffered(WRITE_CONCURRENCY)
            .try_collect()
            .await?;
        let mut invoices: Vec<InvoiceView> = found.into_iter().flatten().collect();
        invoices.sort_by_key(|i| i.billing_date);
        Ok(invoices)
    }

    /// What a customer's coupons discounted on its issued invoices (finalized or void) billed before `before`, in
    /// billing-date order: the invoices are the record of a coupon's use (see
    /// [`billing_schemas::reference::PriorUse`]).
    pub async fn prior_use_before(
        &self,
        tenant: &str,
        customer: &str,
        before: DateTime<Utc>,
    ) -> anyhow::Result<billing_schemas::reference::PriorUse> {
        let invoices = self.invoices_of(tenant, customer).await?;
        Ok(invoices::prior_use(&invoices, before))
    }

    // ---- numbering ----

    /// Claim consecutive numbers for `ids`, in order, in the scope: returns the first number. Gap-free under
    /// concurrency (see [`crate::invoice_numbers`]); a lost race is retried.
    pub async fn claim_numbers(
        &self,
        tenant: &str,
        scope: &str,
        ids: &[String],
    ) -> anyhow::Result<i64> {
        anyhow::ensure!(!ids.is_empty(), "nothing to number");
        loop {
            let next = self
                .session
                .execute_unpaged(&self.select_next_number, (tenant, scope))
                .await?
                .into_rows_result()?
                .maybe_first_row::<(Option<i64>,)>()?
                .and_then(|(n,)| n);
            let first = next.unwrap_or(1);
            let new_next = first + ids.len() as i64;
            let result = self
                .session
                .execute_unpaged(
                    &self.claim_numbers,
                    (new_next, tenant, scope, next, tenant, scope, first, ids),
                )
                .await?
                .into_rows_result()?;
            if crate::lwt_applied(&result)? {
                return Ok(first);
            }
        }
    }

    /// The numbers already claimed for any of `ids` in the scope (a scan of the scope's blocks: used only to
    /// recover invoices left unnumbered by a crash).
    pub async fn claimed_numbers(
        &self,
        tenant: &str,
        scope: &str,
        ids: &[String],
    ) -> anyhow::Result<HashMap<String, i64>> {
        let mut found = HashMap::new();
        let mut rows = self
            .session
            .execute_iter(self.select_number_blocks.clone(), (tenant, scope))
            .await?
            .rows_stream::<(i64, Vec<String>)>()?;
        while let Some((first, block)) = rows.try_next().await? {
            for (i, id) in block.iter().enumerate() {
                if ids.contains(id) {
                    found.insert(id.clone(), first + i as i64);
                }
            }
            if found.len() == ids.len() {
                break;
            }
        }
        Ok(found)
    }

    // ---- materialization progress ----

    /// Record that everything below `next_offset` of the partition is materialized.
    pub async fn put_materialized(
        &self,
        topic: &str,
        partition: i32,
        next_offset: i64,
    ) -> anyhow::Result<()> {
        self.session
            .execute_unpaged(&self.upsert_materialized, (topic, partition, next_offset))
            .await?;
        Ok(())
    }

    /// The first offset of the partition not yet materialized (0 when nothing was).
    pub async fn materialized(&self, topic: &str, partition: i32) -> anyhow::Result<i64> {
        Ok(self
            .session
            .execute_unpaged(&self.select_materialized, (topic, partition))
            .await?
            .into_rows_result()?
            .maybe_first_row::<(i64,)>()?
            .map(|(n,)| n)
            .unwrap_or(0))
    }

    // ---- idempotency keys ----

    /// Claim an `Idempotency-Key` for a request, or say what the key already holds.
    pub async fn claim_idempotency_key(
        &self,
        tenant: &str,
        key: &str,
        request_hash: &str,
    ) -> anyhow::Result<IdempotencyClaim> {
        let result = self
            .session
            .execute_unpaged(&self.claim_key, (tenant, key, request_hash))
            .await?
            .into_rows_result()?;
        if crate::lwt_applied(&result)? {
            return Ok(IdempotencyClaim::Claimed);
        }
        let (hash, status, body) = self
            .session
            .execute_unpaged(&self.select_key, (tenant, key))
            .await?
            .into_rows_result()?
            .maybe_first_row::<(String, i32, String)>()?
            .ok_or_else(|| anyhow::anyhow!("idempotency key vanished"))?;
        Ok(if status == 0 {
            IdempotencyClaim::InFlight { request_hash: hash }
        } else {
            IdempotencyClaim::Answered {
                request_hash: hash,
                status: status as u16,
                body,
            }
        })
    }

    /// Store the answer given for a claimed key.
    pub async fn complete_idempotency_key(
        &self,
        tenant: &str,
        key: &str,
        status: u16,
        body: &str,
    ) -> anyhow::Result<()> {
        self.session
            .execute_unpaged(&self.complete_key, (i32::from(status), body, tenant, key))
            .await?;
        Ok(())
    }

    /// Free a claimed key whose request failed before publishing anything (the client may retry with it).
    pub async fn release_idempotency_key(&self, tenant: &str, key: &str) -> anyhow::Result<()> {
        self.session
            .execute_unpaged(&self.release_key, (tenant, key))
            .await?;
        Ok(())
    }

    // ---- batched reads (GraphQL): one statement per IN_CHUNK keys, whatever the number of keys ----

    /// Rows `(key, value)` of `statement` (`tenant_id = ? AND <key> IN ?`) for `keys`, IN_CHUNK keys a statement.
    async fn many(
        &self,
        statement: &PreparedStatement,
        tenant: &str,
        keys: &[String],
        queries: &Queries,
    ) -> anyhow::Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for chunk in keys.chunks(IN_CHUNK) {
            queries.one();
            let rows: Vec<(String, String)> = self.collect(statement, (tenant, chunk)).await?;
            out.extend(rows);
        }
        Ok(out)
    }

    /// Ids of customers newest first, after the customer `starting_after` when given (one statement, two with a
    /// cursor).
    pub async fn customer_ids(
        &self,
        tenant: &str,
        limit: usize,
        starting_after: Option<&str>,
        queries: &Queries,
    ) -> anyhow::Result<Vec<String>> {
        let limit = i32::try_from(limit)?;
        queries.one();
        let ids: Vec<(String,)> = match starting_after {
            None => self.collect(&self.customers_first, (tenant, limit)).await?,
            Some(after) => {
                let Some(c) = self.customer(tenant, after).await? else {
                    return Ok(Vec::new());
                };
                queries.one();
                self.collect(&self.customers_after, (tenant, c.created_at, after, limit))
                    .await?
            }
        };
        Ok(ids.into_iter().map(|(id,)| id).collect())
    }

    /// Customers by id (those that exist).
    pub async fn customers_by_ids(
        &self,
        tenant: &str,
        ids: &[String],
        queries: &Queries,
    ) -> anyhow::Result<HashMap<String, CustomerView>> {
        self.many(&self.customers_many, tenant, ids, queries)
            .await?
            .into_iter()
            .map(|(id, body)| Ok((id, serde_json::from_str(&body)?)))
            .collect()
    }

    /// Subscriptions by id (those that exist).
    pub async fn subscriptions_by_ids(
        &self,
        tenant: &str,
        ids: &[String],
        queries: &Queries,
    ) -> anyhow::Result<HashMap<String, SubscriptionView>> {
        self.many(&self.subscriptions_many, tenant, ids, queries)
            .await?
            .into_iter()
            .map(|(id, body)| Ok((id, serde_json::from_str(&body)?)))
            .collect()
    }

    /// Invoices by id (those that exist).
    pub async fn invoices_by_ids(
        &self,
        tenant: &str,
        ids: &[String],
        queries: &Queries,
    ) -> anyhow::Result<HashMap<String, InvoiceView>> {
        self.many(&self.invoices_many, tenant, ids, queries)
            .await?
            .into_iter()
            .map(|(id, body)| Ok((id, serde_json::from_str(&body)?)))
            .collect()
    }

    /// The subscription ids of each customer, newest first.
    pub async fn subscription_ids_of_customers(
        &self,
        tenant: &str,
        customers: &[String],
        queries: &Queries,
    ) -> anyhow::Result<HashMap<String, Vec<String>>> {
        let mut out: HashMap<String, Vec<String>> = HashMap::new();
        for (c, id) in self
            .many(
                &self.subscription_ids_of_customers,
                tenant,
                customers,
                queries,
            )
            .await?
        {
            out.entry(c).or_default().push(id);
        }
        Ok(out)
    }

    /// The invoice ids of each customer, newest first (ids sort by billing date).
    pub async fn invoice_ids_of_customers(
        &self,
        tenant: &str,
        customers: &[String],
        queries: &Queries,
    ) -> anyhow::Result<HashMap<String, Vec<String>>> {
        let mut out: HashMap<String, Vec<String>> = HashMap::new();
        for (c, id) in self
            .many(&self.invoice_ids_of_customers, tenant, customers, queries)
            .await?
        {
            out.entry(c).or_default().push(id);
        }
        Ok(out)
    }

    async fn collect<T>(
        &self,
        statement: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> anyhow::Result<Vec<T>>
    where
        T: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm> + Send + 'static,
    {
        Ok(self
            .session
            .execute_iter(statement.clone(), values)
            .await?
            .rows_stream::<T>()?
            .try_collect()
            .await?)
    }
}
