//! Reference data rating needs to attribute usage: the catalog (metrics, plans) from `billing.catalog` and
//! customers and subscriptions from `billing.lifecycle`. Every rating instance reads both topics whole (they are
//! small next to usage) with its own non-group consumer, and a barrier makes usage wait until everything produced
//! to them before the barrier was taken has been applied.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use billing_core::aggregation::{AggregationType, Metric};
use billing_core::charge::ChargeModel;
use billing_core::period::{BillingPeriod, BillingTime, Interval, Schedule};
use billing_core::Currency;
use billing_runtime::kafka::Topics;
use billing_runtime::Shutdown;
use billing_schemas::catalog::{self, Catalog, CatalogEvent};
use billing_schemas::lifecycle::{self, Lifecycle, LifecycleEvent};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// A charge ready to aggregate and price.
#[derive(Debug)]
pub struct ChargeInfo {
    /// The catalog charge.
    pub charge: catalog::Charge,
    /// Its parsed Lago model.
    pub model: ChargeModel,
}

/// A plan with parsed charges.
#[derive(Debug)]
pub struct PlanInfo {
    /// The catalog plan.
    pub plan: catalog::Plan,
    /// Currency.
    pub currency: Currency,
    /// Charges, parsed.
    pub charges: Vec<ChargeInfo>,
}

/// A metric in core form plus its catalog definition.
#[derive(Debug)]
pub struct MetricInfo {
    /// Core metric (filters; group_by is per charge).
    pub metric: Metric,
}

#[derive(Debug, Clone)]
struct Subscription {
    id: String,
    plan_code: String,
    started_at: DateTime<Utc>,
    billing_time: BillingTime,
    changes: Vec<(DateTime<Utc>, String)>,
    pauses: Vec<(DateTime<Utc>, Option<DateTime<Utc>>)>,
    canceled: Option<(DateTime<Utc>, bool)>,
}

#[derive(Debug, Default)]
struct Customer {
    known: bool,
    timezone: Option<Tz>,
    subscriptions: Vec<Subscription>,
}

/// The subscription, plan and billing period an event falls in.
#[derive(Debug)]
pub struct Attribution {
    /// Subscription id.
    pub subscription_id: String,
    /// Plan in force at the event's time.
    pub plan: Arc<PlanInfo>,
    /// Billing period containing the event.
    pub period: BillingPeriod,
}

/// Why an event cannot be attributed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttributionError {
    /// No `CustomerCreated` for this customer.
    #[error("unknown customer {0:?}")]
    UnknownCustomer(String),
    /// No subscription in force at the event's time.
    #[error("no active subscription for customer {customer:?} at {at}")]
    NoActiveSubscription {
        /// Customer.
        customer: String,
        /// Event time.
        at: DateTime<Utc>,
    },
}

/// Everything read from the catalog and lifecycle topics.
#[derive(Debug, Default)]
pub struct Reference {
    metrics: HashMap<(String, String), Arc<MetricInfo>>,
    plans: HashMap<(String, String), Arc<PlanInfo>>,
    customers: HashMap<(String, String), Customer>,
}

fn interval(i: catalog::Interval) -> Interval {
    match i {
        catalog::Interval::Weekly => Interval::Weekly,
        catalog::Interval::Monthly => Interval::Monthly,
        catalog::Interval::Quarterly => Interval::Quarterly,
        catalog::Interval::Semiannual => Interval::Semiannual,
        catalog::Interval::Yearly => Interval::Yearly,
    }
}

/// The core aggregation type of a catalog aggregation.
pub fn aggregation(a: catalog::Aggregation) -> AggregationType {
    match a {
        catalog::Aggregation::Count => AggregationType::CountAgg,
        catalog::Aggregation::Sum => AggregationType::SumAgg,
        catalog::Aggregation::Max => AggregationType::MaxAgg,
        catalog::Aggregation::UniqueCount => AggregationType::UniqueCountAgg,
        catalog::Aggregation::Latest => AggregationType::LatestAgg,
        catalog::Aggregation::WeightedSum => AggregationType::WeightedSumAgg,
    }
}

fn charge_model_name(m: catalog::ChargeModel) -> &'static str {
    match m {
        catalog::ChargeModel::Standard => "standard",
        catalog::ChargeModel::Graduated => "graduated",
        catalog::ChargeModel::Volume => "volume",
        catalog::ChargeModel::Package => "package",
        catalog::ChargeModel::Percentage => "percentage",
        catalog::ChargeModel::GraduatedPercentage => "graduated_percentage",
    }
}

/// Parse a plan's charges; a plan with an invalid charge is refused whole.
pub fn plan_info(plan: catalog::Plan) -> Result<PlanInfo, String> {
    let currency = Currency::parse(&plan.currency).map_err(|e| e.to_string())?;
    let mut charges = Vec::with_capacity(plan.charges.len());
    for c in &plan.charges {
        let props: serde_json::Value = serde_json::from_str(&c.properties)
            .map_err(|e| format!("charge {}: properties: {e}", c.id))?;
        let model = ChargeModel::from_lago(charge_model_name(c.charge_model), &props)
            .map_err(|e| format!("charge {}: {e}", c.id))?;
        charges.push(ChargeInfo {
            charge: c.clone(),
            model,
        });
    }
    Ok(PlanInfo {
        plan,
        currency,
        charges,
    })
}

impl Reference {
    /// Apply a catalog event.
    pub fn apply_catalog(&mut self, ev: CatalogEvent) {
        let tenant = ev.tenant_id;
        match ev.payload {
            Catalog::BillableMetric(m) => {
                let metric = Metric {
                    code: m.code.clone(),
                    aggregation_type: aggregation(m.aggregation),
                    field_name: m.field_name.clone(),
                    filters: m
                        .filters
                        .iter()
                        .map(|f| (f.key.clone(), f.values.clone()))
                        .collect(),
                    group_by: None,
                    initial_value: None,
                };
                if let Err(e) = metric.validate() {
                    tracing::warn!(tenant, code = m.code, error = %e, "ignoring invalid billable metric");
                    return;
                }
                self.metrics
                    .insert((tenant, m.code), Arc::new(MetricInfo { metric }));
            }
            Catalog::Plan(p) => {
                let code = p.code.clone();
                match plan_info(p) {
                    Ok(info) => {
                        self.plans.insert((tenant, code), Arc::new(info));
                    }
                    Err(e) => tracing::warn!(tenant, code, error = %e, "ignoring invalid plan"),
                }
            }
            Catalog::Deleted(d) => match d.kind.as_str() {
                "billable_metric" => {
                    self.metrics.remove(&(tenant, d.code));
                }
                "plan" => {
                    self.plans.remove(&(tenant, d.code));
                }
                other => tracing::warn!(kind = other, "unknown catalog kind deleted"),
            },
        }
    }

    /// Apply a lifecycle event.
    pub fn apply_lifecycle(&mut self, ev: LifecycleEvent) {
        let tenant = ev.tenant_id;
        match ev.payload {
            Lifecycle::CustomerCreated(c) => {
                let entry = self.customers.entry((tenant, c.customer_id)).or_default();
                entry.known = true;
                entry.timezone = c.timezone.parse().ok();
            }
            Lifecycle::CustomerUpdated(c) => {
                if let Some(tz) = c.timezone {
                    self.customers
                        .entry((tenant, c.customer_id))
                        .or_default()
                        .timezone = tz.parse().ok();
                }
            }
            Lifecycle::SubscriptionCreated(s) => {
                let entry = self.customers.entry((tenant, s.customer_id)).or_default();
                entry.subscriptions.retain(|x| x.id != s.subscription_id);
                entry.subscriptions.push(Subscription {
                    id: s.subscription_id,
                    plan_code: s.plan_code,
                    started_at: s.started_at,
                    billing_time: match s.billing_time {
                        lifecycle::BillingTime::Calendar => BillingTime::Calendar,
                        lifecycle::BillingTime::Anniversary => BillingTime::Anniversary,
                    },
                    changes: Vec::new(),
                    pauses: Vec::new(),
                    canceled: None,
                });
            }
            Lifecycle::SubscriptionChanged(s) => {
                if let Some(sub) = self.subscription(&tenant, &s.customer_id, &s.subscription_id) {
                    sub.changes.push((s.effective_at, s.new_plan_code));
                    sub.changes.sort();
                }
            }
            Lifecycle::SubscriptionPaused(s) => {
                if let Some(sub) = self.subscription(&tenant, &s.customer_id, &s.subscription_id) {
                    sub.pauses.push((s.effective_at, None));
                }
            }
            Lifecycle::SubscriptionResumed(s) => {
                if let Some(sub) = self.subscription(&tenant, &s.customer_id, &s.subscription_id) {
                    if let Some(open) = sub.pauses.iter_mut().rev().find(|p| p.1.is_none()) {
                        open.1 = Some(s.effective_at);
                    }
                }
            }
            Lifecycle::SubscriptionCanceled(s) => {
                if let Some(sub) = self.subscription(&tenant, &s.customer_id, &s.subscription_id) {
                    sub.canceled = Some((s.effective_at, s.at_period_end));
                }
            }
            Lifecycle::ClockTick(_) => {}
        }
    }

    fn subscription(
        &mut self,
        tenant: &str,
        customer: &str,
        id: &str,
    ) -> Option<&mut Subscription> {
        self.customers
            .get_mut(&(tenant.to_owned(), customer.to_owned()))
            .and_then(|c| c.subscriptions.iter_mut().find(|s| s.id == id))
    }

    /// The metric with this code, if the tenant defined it.
    pub fn metric(&self, tenant: &str, code: &str) -> Option<Arc<MetricInfo>> {
        self.metrics
            .get(&(tenant.to_owned(), code.to_owned()))
            .cloned()
    }

    /// Attribute an event time to the subscription, plan and period in force.
    pub fn attribute(
        &self,
        tenant: &str,
        customer: &str,
        at: DateTime<Utc>,
    ) -> Result<Attribution, AttributionError> {
        let c = self
            .customers
            .get(&(tenant.to_owned(), customer.to_owned()))
            .filter(|c| c.known)
            .ok_or_else(|| AttributionError::UnknownCustomer(customer.to_owned()))?;
        let tz = c.timezone.unwrap_or(Tz::UTC);
        let none = || AttributionError::NoActiveSubscription {
            customer: customer.to_owned(),
            at,
        };
        // The most recently started subscription in force wins.
        let mut candidates: Vec<&Subscription> = c
            .subscriptions
            .iter()
            .filter(|s| s.started_at <= at)
            .collect();
        candidates.sort_by_key(|s| std::cmp::Reverse(s.started_at));
        for sub in candidates {
            if sub
                .pauses
                .iter()
                .any(|(from, to)| *from <= at && to.is_none_or(|t| at < t))
            {
                continue;
            }
            let plan_code = sub
                .changes
                .iter()
                .rev()
                .find(|(t, _)| *t <= at)
                .map(|(_, p)| p)
                .unwrap_or(&sub.plan_code);
            let Some(plan) = self
                .plans
                .get(&(tenant.to_owned(), plan_code.clone()))
                .cloned()
            else {
                continue;
            };
            let schedule = Schedule::new(
                interval(plan.plan.interval),
                sub.billing_time,
                sub.started_at,
                tz,
            )
            .map_err(|_| none())?;
            if let Some((effective, at_period_end)) = sub.canceled {
                let end = if at_period_end {
                    schedule
                        .period_containing(effective)
                        .map(|p| p.end)
                        .unwrap_or(effective)
                } else {
                    effective
                };
                if at >= end {
                    continue;
                }
            }
            let period = schedule.period_containing(at).map_err(|_| none())?;
            return Ok(Attribution {
                subscription_id: sub.id.clone(),
                plan,
                period,
            });
        }
        Err(none())
    }
}

/// Shared reference data plus how far the reader has read each partition.
#[derive(Clone, Default)]
pub struct SharedReference {
    /// The data.
    pub data: Arc<RwLock<Reference>>,
    /// Next offset to read per (topic, partition).
    positions: Arc<Mutex<HashMap<(String, i32), i64>>>,
}

impl SharedReference {
    /// Read the catalog and lifecycle topics from the beginning until shutdown.
    pub fn spawn_reader(
        &self,
        kafka: &billing_runtime::config::KafkaConfig,
        topics: &Topics,
        shutdown: Shutdown,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        // A BaseConsumer polled on a blocking thread: with a StreamConsumer, messages fetched right after
        // `assign` could sit unnoticed until another message arrived, and reference topics are often quiet.
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &kafka.brokers)
            .set(
                "group.id",
                format!("rating-reference-{}", uuid::Uuid::new_v4().simple()),
            )
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "20")
            // If resolving "beginning" fails (e.g. a leader moves), fall back to the start too, never the end.
            .set("auto.offset.reset", "earliest")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for topic in [&topics.catalog, &topics.lifecycle] {
            for p in 0..kafka.partitions {
                // An explicit offset, not Offset::Beginning: the logical offset is resolved asynchronously and a
                // failed resolution silently falls back to auto.offset.reset.
                let (low, _) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
                tpl.add_partition_offset(topic, p, Offset::Offset(low))?;
            }
        }
        consumer.assign(&tpl)?;
        let (catalog_topic, this) = (topics.catalog.clone(), self.clone());
        Ok(tokio::task::spawn_blocking(move || {
            while !shutdown.is_cancelled() {
                let polled = consumer.poll(Duration::from_millis(100));
                let m = match polled {
                    None => continue,
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "reference reader error");
                        continue;
                    }
                };
                let content_type = m.headers().and_then(|h| {
                    h.iter()
                        .find(|h| {
                            h.key
                                .eq_ignore_ascii_case(billing_schemas::CONTENT_TYPE_HEADER)
                        })
                        .and_then(|h| h.value)
                });
                let payload = m.payload().unwrap_or_default();
                {
                    let mut data = this.data.write().expect("reference lock");
                    if m.topic() == catalog_topic {
                        match billing_schemas::decode::<CatalogEvent>(payload, content_type) {
                            Ok(ev) => data.apply_catalog(ev),
                            Err(e) => {
                                tracing::warn!(offset = m.offset(), error = %e, "undecodable catalog event skipped")
                            }
                        }
                    } else {
                        match billing_schemas::decode::<LifecycleEvent>(payload, content_type) {
                            Ok(ev) => data.apply_lifecycle(ev),
                            Err(e) => {
                                tracing::warn!(offset = m.offset(), error = %e, "undecodable lifecycle event skipped")
                            }
                        }
                    }
                }
                this.positions
                    .lock()
                    .expect("positions lock")
                    .insert((m.topic().to_owned(), m.partition()), m.offset() + 1);
            }
        }))
    }

    /// Wait until everything produced to the reference topics before this call has been applied.
    pub async fn catch_up(
        &self,
        client: &Arc<BaseConsumer>,
        partitions: i32,
        topics: &Topics,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let (client, t) = (client.clone(), topics.clone());
        let targets: Vec<((String, i32), (i64, i64))> =
            tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
                let mut out = Vec::new();
                for topic in [&t.catalog, &t.lifecycle] {
                    for p in 0..partitions {
                        let (low, high) =
                            client.fetch_watermarks(topic, p, Duration::from_secs(5))?;
                        out.push(((topic.clone(), p), (low, high)));
                    }
                }
                Ok(out)
            })
            .await??;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let behind: Vec<String> = {
                let pos = self.positions.lock().expect("positions lock");
                targets
                    .iter()
                    .filter_map(|((topic, p), (low, high))| {
                        // A partition whose records all expired (low = high) has nothing to read.
                        let at = pos.get(&(topic.clone(), *p)).copied().unwrap_or(*low);
                        (at < *high).then(|| format!("{topic}/{p} at {at} of {high}"))
                    })
                    .collect()
            };
            if behind.is_empty() {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "reference topics not caught up in {timeout:?}: {}",
                behind.join(", ")
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
