//! `POST /graphql`: the read models (customers, their subscriptions and invoices with lines, usage) as GraphQL, for
//! the same keys as the REST reads (role `read`, `write` or `admin`; the tenant is the key's).
//!
//! Lists are loaded in batches ([`DataLoader`]): every customer of a page asks for its invoices, the loader reads
//! the invoice ids of all of them in one statement and the invoices asked for in one more per 100, so a query costs
//! a few statements, not one per customer (no N+1). The answer's
//! `extensions.store_queries` says how many it took. Depth is limited to [`MAX_DEPTH`] and complexity to
//! [`MAX_COMPLEXITY`]: each field costs 1, a list `first` times what one item costs, a usage lookup 100 (it reads
//! one customer's aggregates), so 100 customers with 10 invoices each pass and 100 customers' usage does not.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::dataloader::{DataLoader, Loader};
use async_graphql::{
    Context, EmptyMutation, EmptySubscription, Object, Schema, SimpleObject, Variables,
};
use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use billing_runtime::http::Tenant;
use billing_store::billing::{BillingStore, Queries};
use billing_store::customers::CustomerView;
use billing_store::invoices::{InvoiceLineView, InvoiceView};
use billing_store::subscriptions::SubscriptionView;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::error::ApiError;
use crate::request::parse_json;
use crate::AppState;

/// Deepest query accepted.
pub const MAX_DEPTH: usize = 8;
/// Largest query complexity accepted.
pub const MAX_COMPLEXITY: usize = 10_000;
/// How long a loader gathers keys before it reads (a loaded machine spreads a page's resolvers over milliseconds).
const BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(20);
/// Most items of one list.
const MAX_FIRST: i32 = 100;

/// The schema (built once).
pub type BillingSchema = Schema<Query, EmptyMutation, EmptySubscription>;

/// Build the schema with its limits.
pub fn schema() -> BillingSchema {
    Schema::build(Query, EmptyMutation, EmptySubscription)
        .limit_depth(MAX_DEPTH)
        .limit_complexity(MAX_COMPLEXITY)
        .finish()
}

/// A GraphQL request (`application/json`).
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schema(example = json!({"query": "{ customers(first: 10) { nodes { id invoices(first: 3) { number total } } } }"}))]
pub struct GraphQlRequest {
    /// The query document.
    query: String,
    /// Its variables.
    #[serde(default)]
    #[schema(schema_with = crate::openapi::object)]
    variables: Option<Value>,
    /// Which operation of the document to run.
    #[serde(default)]
    operation_name: Option<String>,
}

/// What every resolver of one request shares: the caller's tenant and the statement counter.
struct Request {
    tenant: String,
    queries: Arc<Queries>,
}

/// `POST /graphql`.
pub async fn handle(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: GraphQlRequest = parse_json(&body)?;
    let queries = Arc::new(Queries::default());
    let loaders = Loaders {
        store: state.billing.clone(),
        tenant: tenant.clone(),
        queries: queries.clone(),
    };
    let mut request = async_graphql::Request::new(body.query)
        .variables(Variables::from_json(body.variables.unwrap_or(Value::Null)))
        .data(Request {
            tenant,
            queries: queries.clone(),
        })
        .data(DataLoader::new(InvoicesOf(loaders.clone()), tokio::spawn).delay(BATCH_WINDOW))
        .data(DataLoader::new(SubscriptionsOf(loaders), tokio::spawn).delay(BATCH_WINDOW))
        .data(state.clone());
    if let Some(name) = body.operation_name {
        request = request.operation_name(name);
    }
    let response = state.graphql.execute(request).await;
    let mut v = serde_json::to_value(&response).map_err(anyhow::Error::from)?;
    v["extensions"]["store_queries"] = Value::from(queries.count());
    Ok(Json(v))
}

fn name<T: Serialize>(t: &T) -> String {
    serde_json::to_value(t)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn store_error(e: anyhow::Error) -> async_graphql::Error {
    tracing::warn!(error = format!("{e:#}"), "GraphQL read failed");
    async_graphql::Error::new("the store did not answer; retry")
}

fn first(n: i32) -> async_graphql::Result<usize> {
    if (1..=MAX_FIRST).contains(&n) {
        Ok(n as usize)
    } else {
        Err(async_graphql::Error::new(format!(
            "first: {n} is not in 1..={MAX_FIRST}"
        )))
    }
}

/// The root of every query.
pub struct Query;

#[Object]
impl Query {
    /// Customers, newest first: `first` of them (1–100) after the customer `after`.
    #[graphql(complexity = "first.max(1) as usize * child_complexity + 1")]
    async fn customers(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 10)] first: i32,
        after: Option<String>,
    ) -> async_graphql::Result<CustomerPage> {
        let n = self::first(first)?;
        let r = ctx.data::<Request>()?;
        let state = ctx.data::<AppState>()?;
        let ids = state
            .billing
            .customer_ids(&r.tenant, n + 1, after.as_deref(), &r.queries)
            .await
            .map_err(store_error)?;
        let has_more = ids.len() > n;
        let ids: Vec<String> = ids.into_iter().take(n).collect();
        let mut found = state
            .billing
            .customers_by_ids(&r.tenant, &ids, &r.queries)
            .await
            .map_err(store_error)?;
        let nodes = ids
            .iter()
            .filter_map(|id| found.remove(id))
            .map(Customer)
            .collect();
        Ok(CustomerPage { nodes, has_more })
    }

    /// One customer.
    async fn customer(
        &self,
        ctx: &Context<'_>,
        id: String,
    ) -> async_graphql::Result<Option<Customer>> {
        let r = ctx.data::<Request>()?;
        let state = ctx.data::<AppState>()?;
        let mut found = state
            .billing
            .customers_by_ids(&r.tenant, std::slice::from_ref(&id), &r.queries)
            .await
            .map_err(store_error)?;
        Ok(found.remove(&id).map(Customer))
    }

    /// One subscription.
    async fn subscription(
        &self,
        ctx: &Context<'_>,
        id: String,
    ) -> async_graphql::Result<Option<Subscription>> {
        let r = ctx.data::<Request>()?;
        let state = ctx.data::<AppState>()?;
        let mut found = state
            .billing
            .subscriptions_by_ids(&r.tenant, std::slice::from_ref(&id), &r.queries)
            .await
            .map_err(store_error)?;
        Ok(found.remove(&id).map(Subscription))
    }

    /// One invoice.
    async fn invoice(
        &self,
        ctx: &Context<'_>,
        id: String,
    ) -> async_graphql::Result<Option<Invoice>> {
        let r = ctx.data::<Request>()?;
        let state = ctx.data::<AppState>()?;
        let mut found = state
            .billing
            .invoices_by_ids(&r.tenant, std::slice::from_ref(&id), &r.queries)
            .await
            .map_err(store_error)?;
        Ok(found.remove(&id).map(Invoice))
    }
}

/// A page of customers.
#[derive(SimpleObject)]
pub struct CustomerPage {
    /// The customers.
    nodes: Vec<Customer>,
    /// Whether more follow (ask again with `after` = the last one's id).
    has_more: bool,
}

/// A customer.
pub struct Customer(CustomerView);

#[Object]
impl Customer {
    /// Its id.
    async fn id(&self) -> &str {
        &self.0.customer_id
    }
    /// Its name.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// Its email.
    async fn email(&self) -> Option<&str> {
        self.0.email.as_deref()
    }
    /// ISO 4217 currency it is billed in.
    async fn currency(&self) -> &str {
        &self.0.currency
    }
    /// IANA timezone its periods are cut in.
    async fn timezone(&self) -> &str {
        &self.0.timezone
    }
    /// Its test clock, if any.
    async fn test_clock_id(&self) -> Option<&str> {
        self.0.test_clock_id.as_deref()
    }
    /// When it was created (billing time).
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    /// Its subscriptions, newest first.
    async fn subscriptions(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Subscription>> {
        let loader = ctx.data::<DataLoader<SubscriptionsOf>>()?;
        Ok(loader
            .load_one(self.0.customer_id.clone())
            .await?
            .unwrap_or_default()
            .into_iter()
            .map(Subscription)
            .collect())
    }
    /// Its latest `first` invoices (1–100), newest first, drafts included.
    #[graphql(complexity = "first.max(1) as usize * child_complexity + 1")]
    async fn invoices(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 10)] first: i32,
    ) -> async_graphql::Result<Vec<Invoice>> {
        let n = self::first(first)?;
        let loader = ctx.data::<DataLoader<InvoicesOf>>()?;
        Ok(loader
            .load_one((self.0.customer_id.clone(), n))
            .await?
            .unwrap_or_default()
            .into_iter()
            .map(Invoice)
            .collect())
    }
    /// Its usage in the billing periods containing `at` (default now), priced as the REST usage endpoint prices it:
    /// a JSON list of charges. One lookup per customer (complexity 100).
    #[graphql(complexity = 100)]
    async fn usage(
        &self,
        ctx: &Context<'_>,
        at: Option<DateTime<Utc>>,
    ) -> async_graphql::Result<async_graphql::Json<Value>> {
        let r = ctx.data::<Request>()?;
        let state = ctx.data::<AppState>()?;
        r.queries.add(1);
        let usage = state
            .store
            .usage(&r.tenant, &self.0.customer_id, at.unwrap_or_else(Utc::now))
            .await
            .map_err(store_error)?;
        Ok(async_graphql::Json(serde_json::to_value(usage)?))
    }
}

/// A subscription.
pub struct Subscription(SubscriptionView);

#[Object]
impl Subscription {
    /// Its id.
    async fn id(&self) -> &str {
        &self.0.subscription_id
    }
    /// Its customer's id.
    async fn customer_id(&self) -> &str {
        &self.0.customer_id
    }
    /// The plan in force now.
    async fn plan_code(&self) -> &str {
        &self.0.plan_code
    }
    /// `active`, `paused`, `suspended` or `canceled`.
    async fn status(&self) -> String {
        name(&self.0.status)
    }
    /// When it started.
    async fn started_at(&self) -> DateTime<Utc> {
        self.0.started_at
    }
    /// End of its free trial.
    async fn trial_ends_at(&self) -> Option<DateTime<Utc>> {
        self.0.trial_ends_at
    }
    /// When its cancellation takes effect.
    async fn canceled_at(&self) -> Option<DateTime<Utc>> {
        self.0.canceled_at
    }
}

/// An invoice; amounts are decimal strings in its currency.
pub struct Invoice(InvoiceView);

#[Object]
impl Invoice {
    /// Its id.
    async fn id(&self) -> &str {
        &self.0.invoice_id
    }
    /// Its number, once finalized.
    async fn number(&self) -> Option<&str> {
        self.0.number.as_deref()
    }
    /// `draft`, `finalized` or `void`.
    async fn status(&self) -> String {
        name(&self.0.status)
    }
    /// Its customer's id.
    async fn customer_id(&self) -> &str {
        &self.0.customer_id
    }
    /// ISO 4217 currency.
    async fn currency(&self) -> &str {
        &self.0.currency
    }
    /// Its billing date.
    async fn billing_date(&self) -> DateTime<Utc> {
        self.0.billing_date
    }
    /// When it was finalized.
    async fn issued_at(&self) -> Option<DateTime<Utc>> {
        self.0.issued_at
    }
    /// When payment is due.
    async fn due_date(&self) -> Option<DateTime<Utc>> {
        self.0.due_date
    }
    /// Σ line amounts.
    async fn subtotal(&self) -> String {
        self.0.subtotal.to_string()
    }
    /// Coupons.
    async fn discount_total(&self) -> String {
        self.0.discount_total.to_string()
    }
    /// Taxes.
    async fn tax_total(&self) -> String {
        self.0.tax_total.to_string()
    }
    /// Total.
    async fn total(&self) -> String {
        self.0.total.to_string()
    }
    /// What is left to pay after credits.
    async fn amount_due(&self) -> String {
        self.0.amount_due.to_string()
    }
    /// Its lines (stored with it: no further read).
    async fn lines(&self) -> Vec<InvoiceLine> {
        self.0.lines.iter().cloned().map(InvoiceLine).collect()
    }
}

/// A line of an invoice.
pub struct InvoiceLine(InvoiceLineView);

#[Object]
impl InvoiceLine {
    /// `subscription_fee`, `proration_credit`, `usage`, `true_up`, `add_on`, `prepaid_credits` or `adjustment`.
    async fn kind(&self) -> &str {
        &self.0.kind
    }
    /// What it bills.
    async fn description(&self) -> &str {
        &self.0.description
    }
    /// Plan code (fee lines) or charge id (usage lines).
    async fn code(&self) -> &str {
        &self.0.code
    }
    /// The subscription it bills.
    async fn subscription_id(&self) -> Option<&str> {
        self.0.subscription_id.as_deref()
    }
    /// Units billed (usage lines).
    async fn units(&self) -> Option<String> {
        self.0.units.map(|u| u.to_string())
    }
    /// Amount before discount and tax.
    async fn amount(&self) -> String {
        self.0.amount.to_string()
    }
    /// Coupon discount.
    async fn discount(&self) -> String {
        self.0.discount.to_string()
    }
    /// Tax.
    async fn tax(&self) -> String {
        self.0.tax.to_string()
    }
    /// Total.
    async fn total(&self) -> String {
        self.0.total.to_string()
    }
}

/// What the loaders of one request read with.
#[derive(Clone)]
struct Loaders {
    store: Arc<BillingStore>,
    tenant: String,
    queries: Arc<Queries>,
}

/// Each customer's latest invoices (key: the customer and how many), newest first: one statement for the ids of up
/// to 100 customers, then one per 100 invoices asked for.
pub struct InvoicesOf(Loaders);

impl Loader<(String, usize)> for InvoicesOf {
    type Value = Vec<InvoiceView>;
    type Error = Arc<anyhow::Error>;

    async fn load(
        &self,
        keys: &[(String, usize)],
    ) -> Result<HashMap<(String, usize), Self::Value>, Self::Error> {
        let l = &self.0;
        let mut customers: Vec<String> = keys.iter().map(|(c, _)| c.clone()).collect();
        customers.sort_unstable();
        customers.dedup();
        let ids = l
            .store
            .invoice_ids_of_customers(&l.tenant, &customers, &l.queries)
            .await?;
        let latest = |c: &str, n: usize| -> Vec<String> {
            ids.get(c)
                .map(|v| v.iter().take(n).cloned().collect())
                .unwrap_or_default()
        };
        let mut wanted: Vec<String> = keys.iter().flat_map(|(c, n)| latest(c, *n)).collect();
        wanted.sort_unstable();
        wanted.dedup();
        let found = l
            .store
            .invoices_by_ids(&l.tenant, &wanted, &l.queries)
            .await?;
        Ok(keys
            .iter()
            .map(|(c, n)| {
                let invoices = latest(c, *n)
                    .iter()
                    .filter_map(|id| found.get(id).cloned())
                    .collect();
                ((c.clone(), *n), invoices)
            })
            .collect())
    }
}

/// Each customer's subscriptions, newest first: two statements for up to 100 customers.
pub struct SubscriptionsOf(Loaders);

impl Loader<String> for SubscriptionsOf {
    type Value = Vec<SubscriptionView>;
    type Error = Arc<anyhow::Error>;

    async fn load(&self, keys: &[String]) -> Result<HashMap<String, Self::Value>, Self::Error> {
        let l = &self.0;
        let ids = l
            .store
            .subscription_ids_of_customers(&l.tenant, keys, &l.queries)
            .await?;
        let all: Vec<String> = ids.values().flatten().cloned().collect();
        let mut found = l
            .store
            .subscriptions_by_ids(&l.tenant, &all, &l.queries)
            .await?;
        Ok(ids
            .into_iter()
            .map(|(c, v)| (c, v.iter().filter_map(|id| found.remove(id)).collect()))
            .collect())
    }
}
