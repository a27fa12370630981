//! `billing.catalog` (compacted): billable metrics and plans (schema `catalog_event.avsc`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::registry::{Message, SchemaId};

/// One catalog entry, keyed by tenant/kind/code; the latest value per key wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogEvent {
    /// Owning tenant.
    pub tenant_id: String,
    /// Idempotency key.
    pub event_id: String,
    /// When the entry was published.
    #[serde(with = "crate::time")]
    pub occurred_at: DateTime<Utc>,
    /// The entry.
    pub payload: Catalog,
}

impl Message for CatalogEvent {
    const SCHEMA: SchemaId = SchemaId::Catalog;
}

/// Catalog entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Catalog {
    /// A metric usage events are aggregated into.
    BillableMetric(BillableMetric),
    /// A plan: fee, interval and usage charges.
    Plan(Plan),
    /// A retired entry.
    Deleted(Deleted),
    /// A tax rate (v3).
    TaxRate(TaxRate),
    /// A coupon (v3).
    Coupon(Coupon),
    /// An add-on (v3).
    AddOn(AddOn),
}

/// An add-on: an item with a price, invoiced at once outside any period (Lago's add-on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddOn {
    /// Code.
    pub code: String,
    /// Name shown on invoices.
    pub name: String,
    /// Price of one unit, decimal string.
    pub amount: String,
    /// ISO 4217 currency of `amount`.
    pub amount_currency: String,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
    /// Tax rates of its lines; empty: the customer's.
    #[serde(default)]
    pub tax_codes: Vec<String>,
}

/// Fixed amount or percentage, and how many invoices a coupon discounts: the core's own types (their serde names
/// are the Avro symbols).
pub use billing_core::discount::{CouponType, Frequency as CouponFrequency};

/// A coupon of the catalog (Lago's coupon object); applying it copies its terms onto the customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coupon {
    /// Code.
    pub code: String,
    /// Name shown on invoices.
    pub name: String,
    /// Fixed amount or percentage.
    pub coupon_type: CouponType,
    /// Amount off (fixed amount), decimal string.
    #[serde(default)]
    pub amount: Option<String>,
    /// ISO 4217 currency of `amount`.
    #[serde(default)]
    pub amount_currency: Option<String>,
    /// Percent off (percentage), decimal string.
    #[serde(default)]
    pub percentage_rate: Option<String>,
    /// Once, recurring or forever.
    pub frequency: CouponFrequency,
    /// Invoices discounted, when recurring.
    #[serde(default)]
    pub frequency_duration: Option<i32>,
    /// No application after this instant.
    #[serde(default, with = "crate::time::option")]
    pub expiration_at: Option<DateTime<Utc>>,
    /// A customer may have it applied more than once.
    #[serde(default = "yes")]
    pub reusable: bool,
    /// Applications allowed over all customers.
    #[serde(default)]
    pub max_redemptions: Option<i32>,
    /// Limited to these plans' lines.
    #[serde(default)]
    pub plan_codes: Vec<String>,
    /// Limited to these metrics' usage lines.
    #[serde(default)]
    pub metric_codes: Vec<String>,
}

fn yes() -> bool {
    true
}

/// A tax rate, referred to by its code from customers, plans and charges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaxRate {
    /// Code.
    pub code: String,
    /// Name shown on invoices.
    pub name: String,
    /// Percent, decimal string (20 = 20 %).
    pub rate: String,
    /// Line amounts already include it.
    #[serde(default)]
    pub inclusive: bool,
    /// Applies to every customer without tax codes of its own.
    #[serde(default)]
    pub applied_to_tenant: bool,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
}

/// How a metric's events become units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// Number of events.
    Count,
    /// Sum of `field_name`.
    Sum,
    /// Largest `field_name`.
    Max,
    /// Distinct values of `field_name`.
    UniqueCount,
    /// `field_name` of the latest event.
    Latest,
    /// Time-weighted sum of `field_name`.
    WeightedSum,
}

/// A property filter: the event matches when `key` has one of `values`.
impl Aggregation {
    /// The core aggregation this wire name stands for.
    pub fn core(self) -> billing_core::aggregation::AggregationType {
        use billing_core::aggregation::AggregationType as A;
        match self {
            Aggregation::Count => A::CountAgg,
            Aggregation::Sum => A::SumAgg,
            Aggregation::Max => A::MaxAgg,
            Aggregation::UniqueCount => A::UniqueCountAgg,
            Aggregation::Latest => A::LatestAgg,
            Aggregation::WeightedSum => A::WeightedSumAgg,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricFilter {
    /// Property name.
    pub key: String,
    /// Accepted values.
    pub values: Vec<String>,
}

/// A billable metric.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillableMetric {
    /// Code events refer to.
    pub code: String,
    /// Display name.
    pub name: String,
    /// Aggregation.
    pub aggregation: Aggregation,
    /// Property aggregated; `None` for count.
    #[serde(default)]
    pub field_name: Option<String>,
    /// Filters.
    #[serde(default)]
    pub filters: Vec<MetricFilter>,
}

/// Plan billing interval: the core's own type, so the wire and the billing math cannot drift apart (its serde
/// names are the Avro enum's symbols).
pub use billing_core::period::Interval;

/// Lago's charge models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChargeModel {
    /// Price per unit.
    Standard,
    /// Tiered, each tier priced on its own units.
    Graduated,
    /// Tiered, all units priced at the reached tier.
    Volume,
    /// Per package of units.
    Package,
    /// Percentage of a transacted amount.
    Percentage,
    /// Tiered percentage.
    GraduatedPercentage,
}

/// A usage charge of a plan.
impl ChargeModel {
    /// The Lago name of the model, as `billing_core::charge::ChargeModel::from_lago` takes it.
    pub fn lago_name(self) -> &'static str {
        match self {
            ChargeModel::Standard => "standard",
            ChargeModel::Graduated => "graduated",
            ChargeModel::Volume => "volume",
            ChargeModel::Package => "package",
            ChargeModel::Percentage => "percentage",
            ChargeModel::GraduatedPercentage => "graduated_percentage",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    /// Stable charge id.
    pub id: String,
    /// Metric charged.
    pub metric_code: String,
    /// Pricing model.
    pub charge_model: ChargeModel,
    /// Lago-compatible properties, as JSON text.
    pub properties: String,
    /// Minimum commitment per period, decimal string.
    #[serde(default)]
    pub min_amount: Option<String>,
    /// Property to group units by.
    #[serde(default)]
    pub group_by: Option<String>,
    /// Tax rates of this charge's lines; empty: the plan's (v3).
    #[serde(default)]
    pub tax_codes: Vec<String>,
}

/// A plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Code subscriptions refer to.
    pub code: String,
    /// Display name.
    pub name: String,
    /// Billing interval.
    pub interval: Interval,
    /// ISO 4217 currency.
    pub currency: String,
    /// Subscription fee per period, decimal string.
    pub amount: String,
    /// Fee billed at the start (true) or end (false) of the period.
    pub pay_in_advance: bool,
    /// Free trial length.
    #[serde(default)]
    pub trial_period_days: i32,
    /// Usage charges.
    #[serde(default)]
    pub charges: Vec<Charge>,
    /// 1, 2, …: each update of the plan is a new version.
    #[serde(default = "first_version")]
    pub version: i32,
    /// Subscriptions starting (or changing to the plan) at or after this instant use this version; `None`: every
    /// subscription, whenever it started (an edit of the plan, as Lago applies plan edits).
    #[serde(default, with = "crate::time::option")]
    pub effective_from: Option<DateTime<Utc>>,
    /// Tax rates of the fee and of the charges without their own; empty: the customer's (v3).
    #[serde(default)]
    pub tax_codes: Vec<String>,
}

fn first_version() -> i32 {
    1
}

/// A retired catalog entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    /// `billable_metric`, `plan`, `tax_rate`, `coupon` or `add_on`.
    pub kind: String,
    /// Its code.
    pub code: String,
}

impl CatalogEvent {
    /// The Kafka key: `tenant/kind/code`, so compaction keeps the latest value of each metric and plan; a plan's
    /// versions after the first are keyed `tenant/plan/code/v<N>`, so compaction keeps every version.
    pub fn key(&self) -> String {
        let (kind, code) = match &self.payload {
            Catalog::BillableMetric(m) => ("billable_metric", m.code.as_str()),
            Catalog::Plan(p) if p.version > 1 => {
                return format!("{}/plan/{}/v{}", self.tenant_id, p.code, p.version)
            }
            Catalog::Plan(p) => ("plan", p.code.as_str()),
            Catalog::Deleted(d) => (d.kind.as_str(), d.code.as_str()),
            Catalog::TaxRate(t) => ("tax_rate", t.code.as_str()),
            Catalog::Coupon(c) => ("coupon", c.code.as_str()),
            Catalog::AddOn(a) => ("add_on", a.code.as_str()),
        };
        format!("{}/{kind}/{code}", self.tenant_id)
    }

    /// A billable metric definition (event id `billable_metric-<code>`).
    pub fn metric(
        tenant: &str,
        occurred_at: DateTime<Utc>,
        code: &str,
        aggregation: Aggregation,
        field_name: Option<&str>,
        filters: Vec<MetricFilter>,
    ) -> Self {
        CatalogEvent {
            tenant_id: tenant.into(),
            event_id: format!("billable_metric-{code}"),
            occurred_at,
            payload: Catalog::BillableMetric(BillableMetric {
                code: code.into(),
                name: code.into(),
                aggregation,
                field_name: field_name.map(Into::into),
                filters,
            }),
        }
    }

    /// A plan definition (event id `plan-<code>`).
    pub fn plan(tenant: &str, occurred_at: DateTime<Utc>, plan: Plan) -> Self {
        CatalogEvent {
            tenant_id: tenant.into(),
            event_id: format!("plan-{}", plan.code),
            occurred_at,
            payload: Catalog::Plan(plan),
        }
    }
}

impl Charge {
    /// A charge on a metric without minimum or grouping; `properties` is the Lago properties JSON.
    pub fn on_metric(id: &str, metric_code: &str, model: ChargeModel, properties: &str) -> Self {
        Charge {
            id: id.into(),
            metric_code: metric_code.into(),
            charge_model: model,
            properties: properties.into(),
            min_amount: None,
            group_by: None,
            tax_codes: Vec::new(),
        }
    }
}
