//! The OpenAPI 3.1 document of the API, built from the code: every operation of [`OPERATIONS`] (checked against the
//! router's routes by a test) with its parameters and request body schemas derived from the very structs the
//! handlers deserialize (`utoipa`), the errors as `application/problem+json` and the bearer API key scheme. Served
//! at `GET /openapi.json`, and as a browsable page at `GET /docs` (plain HTML, no script), both without a key.

mod answers;

use std::collections::BTreeMap;

use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::Router;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, ObjectBuilder, OpenApi, OpenApiBuilder,
    PathItem, PathsBuilder, Ref, RefOr, Required, ResponseBuilder, Schema, Type,
};
use utoipa::{IntoParams, ToSchema};

use crate::analytics::AnalyticsQuery;
use crate::audit::AuditQuery;
use crate::catalog::{
    CreateAddOn, CreateCoupon, CreateMetric, CreatePlan, CreateTax, UpdateAddOn, UpdateCoupon,
    UpdateMetric, UpdatePlan, UpdateTax,
};
use crate::clocks::{Advance, CreateClock};
use crate::coupons::ApplyCoupon;
use crate::credit_notes::NewCreditNote;
use crate::customers::{CreateCustomer, UpdateCustomer};
use crate::invoices::{CreateOneOff, CustomerInvoiceQuery, Finalize, InvoiceQuery, Void};
use crate::payments::{AddMethod, Empty, Pay};
use crate::request::{PageQuery, WriteQuery};
use crate::routes::UsageQuery;
use crate::subscriptions::{Cancel, ChangePlan, CreateSubscription, Effective};
use crate::wallets::{CreateWallet, TopUp};
use crate::webhooks::{CreateEndpoint, UpdateEndpoint};

/// A request body or query of an operation: its schema (and dependencies) or parameters, taken from a type.
#[derive(Clone, Copy)]
pub struct Shape {
    name: fn() -> String,
    schemas: fn(&mut Vec<(String, RefOr<Schema>)>),
    schema: fn() -> RefOr<Schema>,
}

fn shape<T: ToSchema>() -> Shape {
    Shape {
        name: || T::name().into_owned(),
        schemas: T::schemas,
        schema: T::schema,
    }
}

type Params = fn() -> Vec<utoipa::openapi::path::Parameter>;

fn params<T: IntoParams>() -> Params {
    || T::into_params(|| Some(ParameterIn::Query))
}

/// One operation: method, path template, tag, summary, success status, query parameters and JSON body.
pub struct Operation {
    /// `GET`, `POST` or `DELETE`.
    pub method: &'static str,
    /// The route's template, as the router has it.
    pub path: &'static str,
    tag: &'static str,
    summary: &'static str,
    ok: u16,
    query: Option<Params>,
    body: Option<fn() -> Shape>,
    /// The answer's schema (in `answers`), and whether it is a page of a list of them.
    answer: Option<(&'static str, bool)>,
    /// The schema of a `202 Accepted` write answer.
    accepted: &'static str,
}

const fn op(
    method: &'static str,
    path: &'static str,
    tag: &'static str,
    summary: &'static str,
    ok: u16,
) -> Operation {
    Operation {
        method,
        path,
        tag,
        summary,
        ok,
        query: None,
        body: None,
        answer: None,
        accepted: "Pending",
    }
}

impl Operation {
    const fn query(mut self, q: Params) -> Self {
        self.query = Some(q);
        self
    }

    const fn body(mut self, b: fn() -> Shape) -> Self {
        self.body = Some(b);
        self
    }

    /// Answers one `schema`.
    const fn answers(mut self, schema: &'static str) -> Self {
        self.answer = Some((schema, false));
        self
    }

    /// Answers a page of a list of `schema`.
    const fn lists(mut self, schema: &'static str) -> Self {
        self.answer = Some((schema, true));
        self
    }

    /// A write whose `202 Accepted` answers `schema` rather than `Pending`.
    const fn accepts(mut self, schema: &'static str) -> Self {
        self.accepted = schema;
        self
    }
}

/// Every operation of the API (`docs/api.md` describes them in words).
pub fn operations() -> Vec<Operation> {
    let write = params::<WriteQuery>;
    let page = params::<PageQuery>;
    vec![
        op(
            "GET",
            "/v1/customers/{customer_id}/usage",
            "usage",
            "The customer's usage and its price in the periods containing `at`",
            200,
        )
        .answers("Usage")
        .query(params::<UsageQuery>()),
        op(
            "POST",
            "/v1/customers",
            "customers",
            "Create a customer",
            201,
        )
        .answers("Customer")
        .query(write())
        .body(shape::<CreateCustomer>),
        op(
            "GET",
            "/v1/customers",
            "customers",
            "List customers, newest first",
            200,
        )
        .lists("Customer")
        .query(page()),
        op(
            "POST",
            "/v1/customers/{customer_id}",
            "customers",
            "Update a customer",
            200,
        )
        .answers("Customer")
        .query(write())
        .body(shape::<UpdateCustomer>),
        op(
            "GET",
            "/v1/customers/{customer_id}",
            "customers",
            "A customer",
            200,
        )
        .answers("Customer"),
        op(
            "GET",
            "/v1/customers/{customer_id}/subscriptions",
            "subscriptions",
            "A customer's subscriptions",
            200,
        )
        .lists("Subscription")
        .query(page()),
        op(
            "GET",
            "/v1/customers/{customer_id}/invoices",
            "invoices",
            "A customer's invoices",
            200,
        )
        .lists("Invoice")
        .query(params::<CustomerInvoiceQuery>()),
        op(
            "POST",
            "/v1/customers/{customer_id}/invoices/preview",
            "invoices",
            "Preview the customer's upcoming invoice (nothing stored)",
            200,
        )
        .answers("UpcomingInvoice"),
        op(
            "POST",
            "/v1/billable_metrics",
            "catalog",
            "Create a billable metric",
            201,
        )
        .answers("BillableMetric")
        .query(write())
        .body(shape::<CreateMetric>),
        op(
            "GET",
            "/v1/billable_metrics",
            "catalog",
            "List billable metrics",
            200,
        )
        .lists("BillableMetric")
        .query(page()),
        op(
            "POST",
            "/v1/billable_metrics/{code}",
            "catalog",
            "Update a billable metric",
            200,
        )
        .answers("BillableMetric")
        .query(write())
        .body(shape::<UpdateMetric>),
        op(
            "GET",
            "/v1/billable_metrics/{code}",
            "catalog",
            "A billable metric",
            200,
        )
        .answers("BillableMetric"),
        op("POST", "/v1/plans", "catalog", "Create a plan", 201)
            .answers("Plan")
            .query(write())
            .body(shape::<CreatePlan>),
        op("GET", "/v1/plans", "catalog", "List plans", 200)
            .lists("Plan")
            .query(page()),
        op(
            "POST",
            "/v1/plans/{code}",
            "catalog",
            "Update a plan (a new version)",
            200,
        )
        .answers("Plan")
        .query(write())
        .body(shape::<UpdatePlan>),
        op("GET", "/v1/plans/{code}", "catalog", "A plan", 200).answers("Plan"),
        op("POST", "/v1/add_ons", "catalog", "Create an add-on", 201)
            .answers("AddOn")
            .query(write())
            .body(shape::<CreateAddOn>),
        op("GET", "/v1/add_ons", "catalog", "List add-ons", 200)
            .lists("AddOn")
            .query(page()),
        op(
            "POST",
            "/v1/add_ons/{code}",
            "catalog",
            "Update an add-on",
            200,
        )
        .answers("AddOn")
        .query(write())
        .body(shape::<UpdateAddOn>),
        op("GET", "/v1/add_ons/{code}", "catalog", "An add-on", 200).answers("AddOn"),
        op("POST", "/v1/coupons", "catalog", "Create a coupon", 201)
            .answers("Coupon")
            .query(write())
            .body(shape::<CreateCoupon>),
        op("GET", "/v1/coupons", "catalog", "List coupons", 200)
            .lists("Coupon")
            .query(page()),
        op(
            "POST",
            "/v1/coupons/{code}",
            "catalog",
            "Update a coupon",
            200,
        )
        .answers("Coupon")
        .query(write())
        .body(shape::<UpdateCoupon>),
        op("GET", "/v1/coupons/{code}", "catalog", "A coupon", 200).answers("Coupon"),
        op(
            "POST",
            "/v1/applied_coupons",
            "coupons",
            "Apply a coupon to a customer",
            201,
        )
        .answers("AppliedCoupon")
        .query(write())
        .body(shape::<ApplyCoupon>),
        op(
            "POST",
            "/v1/wallets",
            "wallets",
            "Create a prepaid-credit wallet",
            201,
        )
        .answers("Wallet")
        .query(write())
        .body(shape::<CreateWallet>),
        op(
            "GET",
            "/v1/customers/{customer_id}/wallets",
            "wallets",
            "A customer's wallets",
            200,
        )
        .query(page())
        .lists("Wallet"),
        op(
            "GET",
            "/v1/customers/{customer_id}/wallets/{wallet_id}",
            "wallets",
            "A wallet",
            200,
        )
        .answers("Wallet"),
        op(
            "POST",
            "/v1/customers/{customer_id}/wallets/{wallet_id}/transactions",
            "wallets",
            "Top a wallet up",
            201,
        )
        .answers("Wallet")
        .query(write())
        .body(shape::<TopUp>),
        op(
            "GET",
            "/v1/customers/{customer_id}/applied_coupons",
            "coupons",
            "A customer's applied coupons",
            200,
        )
        .query(page())
        .lists("AppliedCoupon"),
        op(
            "DELETE",
            "/v1/customers/{customer_id}/applied_coupons/{applied_coupon_id}",
            "coupons",
            "Remove an applied coupon",
            200,
        )
        .answers("AppliedCoupon")
        .query(write()),
        op("POST", "/v1/taxes", "catalog", "Create a tax rate", 201)
            .answers("Tax")
            .query(write())
            .body(shape::<CreateTax>),
        op("GET", "/v1/taxes", "catalog", "List tax rates", 200)
            .lists("Tax")
            .query(page()),
        op(
            "POST",
            "/v1/taxes/{code}",
            "catalog",
            "Update a tax rate",
            200,
        )
        .answers("Tax")
        .query(write())
        .body(shape::<UpdateTax>),
        op("GET", "/v1/taxes/{code}", "catalog", "A tax rate", 200).answers("Tax"),
        op(
            "POST",
            "/v1/subscriptions",
            "subscriptions",
            "Create a subscription",
            201,
        )
        .answers("Subscription")
        .query(write())
        .body(shape::<CreateSubscription>),
        op(
            "GET",
            "/v1/subscriptions/{subscription_id}",
            "subscriptions",
            "A subscription",
            200,
        )
        .answers("Subscription"),
        op(
            "POST",
            "/v1/subscriptions/{subscription_id}/change",
            "subscriptions",
            "Change a subscription's plan",
            200,
        )
        .answers("Subscription")
        .query(write())
        .body(shape::<ChangePlan>),
        op(
            "POST",
            "/v1/subscriptions/{subscription_id}/pause",
            "subscriptions",
            "Pause a subscription",
            200,
        )
        .answers("Subscription")
        .query(write())
        .body(shape::<Effective>),
        op(
            "POST",
            "/v1/subscriptions/{subscription_id}/resume",
            "subscriptions",
            "Resume a subscription",
            200,
        )
        .answers("Subscription")
        .query(write())
        .body(shape::<Effective>),
        op(
            "POST",
            "/v1/subscriptions/{subscription_id}/cancel",
            "subscriptions",
            "Cancel a subscription",
            200,
        )
        .answers("Subscription")
        .query(write())
        .body(shape::<Cancel>),
        op(
            "POST",
            "/v1/test_clocks",
            "test clocks",
            "Create a test clock",
            201,
        )
        .answers("TestClock")
        .accepts("TestClock")
        .query(write())
        .body(shape::<CreateClock>),
        op(
            "GET",
            "/v1/test_clocks/{clock_id}",
            "test clocks",
            "A test clock",
            200,
        )
        .answers("TestClock"),
        op(
            "POST",
            "/v1/test_clocks/{clock_id}/advance",
            "test clocks",
            "Advance a test clock (and wait for its bill runs)",
            200,
        )
        .answers("TestClock")
        .accepts("TestClock")
        .query(write())
        .body(shape::<Advance>),
        op("GET", "/v1/invoices", "invoices", "List invoices", 200)
            .lists("Invoice")
            .query(params::<InvoiceQuery>()),
        op(
            "POST",
            "/v1/invoices",
            "invoices",
            "Issue a one-off invoice",
            201,
        )
        .answers("Invoice")
        .query(write())
        .body(shape::<CreateOneOff>),
        op(
            "GET",
            "/v1/invoices/{invoice_id}",
            "invoices",
            "An invoice (with an ETag)",
            200,
        )
        .answers("Invoice"),
        op(
            "POST",
            "/v1/invoices/{invoice_id}/pay",
            "payments",
            "Retry a payment now, or record a payment outside the provider",
            200,
        )
        .answers("Invoice")
        .query(write())
        .body(shape::<Pay>),
        op(
            "GET",
            "/v1/invoices/{invoice_id}/payments",
            "payments",
            "An invoice's payment attempts",
            200,
        )
        .answers("InvoicePayments"),
        op(
            "POST",
            "/v1/customers/{customer_id}/payment_methods",
            "payments",
            "Add a payment method",
            201,
        )
        .answers("PaymentMethod")
        .query(write())
        .body(shape::<AddMethod>),
        op(
            "GET",
            "/v1/customers/{customer_id}/payment_methods",
            "payments",
            "A customer's payment methods",
            200,
        )
        .query(page())
        .answers("PaymentMethods"),
        op(
            "DELETE",
            "/v1/customers/{customer_id}/payment_methods/{payment_method_id}",
            "payments",
            "Remove a payment method",
            200,
        )
        .answers("PaymentMethods")
        .query(write()),
        op(
            "POST",
            "/v1/customers/{customer_id}/payment_methods/{payment_method_id}/default",
            "payments",
            "Make a payment method the default",
            200,
        )
        .answers("PaymentMethods")
        .query(write())
        .body(shape::<Empty>),
        op(
            "POST",
            "/v1/invoices/{invoice_id}/finalize",
            "invoices",
            "Finalize a draft invoice now",
            200,
        )
        .answers("Invoice")
        .query(write())
        .body(shape::<Finalize>),
        op(
            "POST",
            "/v1/invoices/{invoice_id}/void",
            "invoices",
            "Void a finalized invoice",
            200,
        )
        .answers("Invoice")
        .query(write())
        .body(shape::<Void>),
        op(
            "POST",
            "/v1/invoices/{invoice_id}/credit_notes",
            "credit notes",
            "Issue a credit note",
            201,
        )
        .answers("CreditNote")
        .query(write())
        .body(shape::<NewCreditNote>),
        op(
            "GET",
            "/v1/invoices/{invoice_id}/credit_notes",
            "credit notes",
            "An invoice's credit notes",
            200,
        )
        .query(page())
        .lists("CreditNote"),
        op(
            "GET",
            "/v1/credit_notes/{credit_note_id}",
            "credit notes",
            "A credit note",
            200,
        )
        .answers("CreditNote"),
        op(
            "POST",
            "/v1/webhook_endpoints",
            "webhooks",
            "Create a webhook endpoint (its secret is shown once)",
            201,
        )
        .answers("WebhookEndpoint")
        .body(shape::<CreateEndpoint>),
        op(
            "GET",
            "/v1/webhook_endpoints",
            "webhooks",
            "List webhook endpoints",
            200,
        )
        .lists("WebhookEndpoint")
        .query(page()),
        op(
            "POST",
            "/v1/webhook_endpoints/{endpoint_id}",
            "webhooks",
            "Update a webhook endpoint",
            200,
        )
        .answers("WebhookEndpoint")
        .body(shape::<UpdateEndpoint>),
        op(
            "GET",
            "/v1/webhook_endpoints/{endpoint_id}",
            "webhooks",
            "A webhook endpoint",
            200,
        )
        .answers("WebhookEndpoint"),
        op(
            "DELETE",
            "/v1/webhook_endpoints/{endpoint_id}",
            "webhooks",
            "Delete a webhook endpoint",
            200,
        )
        .answers("DeletedWebhookEndpoint"),
        op(
            "POST",
            "/v1/webhook_endpoints/{endpoint_id}/rotate_secret",
            "webhooks",
            "Rotate an endpoint's signing secret",
            200,
        )
        .answers("WebhookEndpoint"),
        op(
            "GET",
            "/v1/webhook_endpoints/{endpoint_id}/deliveries",
            "webhooks",
            "An endpoint's delivery log",
            200,
        )
        .lists("WebhookDelivery")
        .query(page()),
        op(
            "POST",
            "/v1/webhook_endpoints/{endpoint_id}/deliveries/{delivery_id}/redeliver",
            "webhooks",
            "Deliver again",
            202,
        )
        .answers("WebhookRedelivery"),
        op(
            "GET",
            "/v1/audit",
            "audit",
            "The audit log of writes (admins)",
            200,
        )
        .lists("AuditEntry")
        .query(params::<AuditQuery>()),
        op(
            "GET",
            "/v1/api_keys",
            "api keys",
            "The tenant's API keys (admins)",
            200,
        )
        .lists("ApiKey")
        .query(page()),
        op(
            "POST",
            "/v1/api_keys/{key_id}/revoke",
            "api keys",
            "Revoke an API key (admins)",
            200,
        )
        .answers("ApiKey"),
        op(
            "POST",
            "/graphql",
            "graphql",
            "A GraphQL query over customers, subscriptions, invoices and usage (reads)",
            200,
        )
        .answers("GraphqlAnswer")
        .body(shape::<crate::graphql::GraphQlRequest>),
        op(
            "GET",
            "/v1/analytics/mrr",
            "analytics",
            "MRR and its movements per month (analysts)",
            200,
        )
        .lists("AnalyticsRow")
        .query(params::<AnalyticsQuery>()),
        op(
            "GET",
            "/v1/analytics/revenue",
            "analytics",
            "Invoiced revenue by plan and month (analysts)",
            200,
        )
        .lists("AnalyticsRow")
        .query(params::<AnalyticsQuery>()),
        op(
            "GET",
            "/v1/analytics/usage",
            "analytics",
            "Usage by metric and customer per month (analysts)",
            200,
        )
        .lists("AnalyticsRow")
        .query(params::<AnalyticsQuery>()),
        op(
            "GET",
            "/v1/analytics/churn",
            "analytics",
            "Customer and revenue churn per month (analysts)",
            200,
        )
        .lists("AnalyticsRow")
        .query(params::<AnalyticsQuery>()),
        op(
            "GET",
            "/v1/analytics/collections",
            "analytics",
            "Collections and overdue balance per month (analysts)",
            200,
        )
        .lists("AnalyticsRow")
        .query(params::<AnalyticsQuery>()),
    ]
}

/// The values of the enums the bodies take from other crates, as their serde names (a test deserializes each).
const INTERVALS: [&str; 5] = ["weekly", "monthly", "quarterly", "semiannual", "yearly"];
const CHARGE_MODELS: [&str; 6] = [
    "standard",
    "graduated",
    "volume",
    "package",
    "percentage",
    "graduated_percentage",
];
const COUPON_TYPES: [&str; 2] = ["fixed_amount", "percentage"];
const FREQUENCIES: [&str; 3] = ["once", "recurring", "forever"];
const TAX_EXEMPT: [&str; 3] = ["none", "exempt", "reverse"];
const BILLING_TIMES: [&str; 2] = ["calendar", "anniversary"];
const PRORATIONS: [&str; 4] = ["days", "days_exclusive_end", "seconds", "thirty_day"];

fn one_of(values: &[&str]) -> utoipa::openapi::Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values.iter().copied()))
        .build()
}

/// A plan's interval.
pub fn interval() -> utoipa::openapi::Object {
    one_of(&INTERVALS)
}

/// A charge model (Lago's names).
pub fn charge_model() -> utoipa::openapi::Object {
    one_of(&CHARGE_MODELS)
}

/// A coupon's type.
pub fn coupon_type() -> utoipa::openapi::Object {
    one_of(&COUPON_TYPES)
}

/// A coupon's frequency.
pub fn frequency() -> utoipa::openapi::Object {
    one_of(&FREQUENCIES)
}

/// A customer's tax exemption.
pub fn tax_exempt() -> utoipa::openapi::Object {
    one_of(&TAX_EXEMPT)
}

/// Calendar or anniversary billing.
pub fn billing_time() -> utoipa::openapi::Object {
    one_of(&BILLING_TIMES)
}

/// A proration convention.
pub fn proration() -> utoipa::openapi::Object {
    one_of(&PRORATIONS)
}

/// A JSON object (a charge's `properties`, as Lago's).
pub fn object() -> utoipa::openapi::Object {
    ObjectBuilder::new().schema_type(Type::Object).build()
}

/// A decimal: a string (`"12.50"`) or a JSON number, read exactly.
pub fn decimal() -> Schema {
    utoipa::openapi::schema::OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^-?[0-9]+(\\.[0-9]+)?$")),
        )
        .item(ObjectBuilder::new().schema_type(Type::Number))
        .into()
}

/// An RFC 3339 instant, or null (no trial).
pub fn nullable_instant() -> utoipa::openapi::Object {
    ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::SchemaType::from_iter([
            Type::String,
            Type::Null,
        ]))
        .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
            utoipa::openapi::KnownFormat::DateTime,
        )))
        .build()
}

/// `application/problem+json`, as every error is.
fn problem_schema() -> Schema {
    let params = ObjectBuilder::new()
        .property("name", ObjectBuilder::new().schema_type(Type::String))
        .property("reason", ObjectBuilder::new().schema_type(Type::String))
        .required("name")
        .required("reason");
    Schema::Object(
        ObjectBuilder::new()
            .description(Some(
                "RFC 9457 problem details; `invalid_params` names every refused field",
            ))
            .property("type", ObjectBuilder::new().schema_type(Type::String))
            .property("title", ObjectBuilder::new().schema_type(Type::String))
            .property("status", ObjectBuilder::new().schema_type(Type::Integer))
            .property("detail", ObjectBuilder::new().schema_type(Type::String))
            .property(
                "invalid_params",
                utoipa::openapi::schema::ArrayBuilder::new().items(params),
            )
            .required("type")
            .required("title")
            .required("status")
            .build(),
    )
}

/// What each status means, for every operation that may answer it.
fn errors(method: &str) -> Vec<(u16, &'static str)> {
    let mut out = vec![
        (400, "malformed: a parameter or the body, named in the problem"),
        (401, "no API key, or one that is unknown or revoked"),
        (403, "the key's role may not call this operation, or the request names another tenant"),
        (404, "no such resource for the key's tenant"),
        (409, "conflicts with the resource's state, or an Idempotency-Key reused with another request"),
        (422, "values that cannot be accepted, each named in `invalid_params`"),
        (429, "the key's rate limit: retry after `Retry-After` seconds"),
        (503, "a store did not answer in time: retry after `Retry-After` seconds"),
    ];
    if method == "POST" {
        out.push((413, "the body is larger than 1 MiB"));
        out.push((415, "the body is not application/json"));
    }
    out.sort_unstable();
    out
}

/// The document: utoipa's, with the answers' schemas (JSON Schema 2020-12 as OpenAPI 3.1 has it, which utoipa's
/// model does not hold whole: `const`, type lists) set in place.
pub fn document() -> serde_json::Value {
    let mut doc = serde_json::to_value(described()).expect("the document serializes");
    for o in operations() {
        let (answer, _) = answer_of(&o);
        let responses = &mut doc["paths"][o.path][o.method.to_ascii_lowercase()]["responses"];
        responses[o.ok.to_string()]["content"]["application/json"]["schema"] = answer;
        if o.method != "GET" && o.ok != 202 {
            responses["202"]["content"]["application/json"]["schema"] =
                answers::reference(o.accepted);
        }
    }
    for (name, schema) in answers::schemas() {
        doc["components"]["schemas"][name] = schema;
    }
    doc
}

/// The schema of an operation's success answer, and its description.
fn answer_of(o: &Operation) -> (serde_json::Value, &'static str) {
    match o.answer {
        Some((name, true)) => (
            answers::list_of(name),
            "a page of the list (`object: list`, `data`, `has_more`)",
        ),
        Some((name, false)) => (answers::reference(name), "the resource"),
        None => panic!("{} {} names no answer schema", o.method, o.path),
    }
}

/// The document as utoipa builds it; the answers' content is filled in by [`document`].
fn described() -> OpenApi {
    let mut paths = PathsBuilder::new();
    let mut schemas: Vec<(String, RefOr<Schema>)> = Vec::new();
    let mut by_path: BTreeMap<&str, Vec<(HttpMethod, utoipa::openapi::path::Operation)>> =
        BTreeMap::new();
    for o in operations() {
        let method = match o.method {
            "GET" => HttpMethod::Get,
            "POST" => HttpMethod::Post,
            _ => HttpMethod::Delete,
        };
        let mut b = OperationBuilder::new()
            .operation_id(Some(format!(
                "{}_{}",
                o.method.to_ascii_lowercase(),
                o.path
                    .trim_start_matches("/v1/")
                    .replace(['/', '{', '}'], "_")
                    .replace("__", "_")
                    .trim_end_matches('_')
            )))
            .tag(o.tag)
            .summary(Some(o.summary));
        for segment in o.path.split('/') {
            if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                b = b.parameter(
                    ParameterBuilder::new()
                        .name(name)
                        .parameter_in(ParameterIn::Path)
                        .required(Required::True)
                        .schema(Some(
                            ObjectBuilder::new()
                                .schema_type(Type::String)
                                .min_length(Some(1))
                                .max_length(Some(255))
                                .pattern(Some("^[^/\\s]+$")),
                        )),
                );
            }
        }
        if let Some(q) = o.query {
            for p in q() {
                b = b.parameter(p);
            }
        }
        if o.method == "POST" {
            b = b.parameter(
                ParameterBuilder::new()
                    .name("Idempotency-Key")
                    .parameter_in(ParameterIn::Header)
                    .required(Required::False)
                    .description(Some(
                        "Replays the first answer to a retried request for 24 hours",
                    ))
                    .schema(Some(
                        ObjectBuilder::new()
                            .schema_type(Type::String)
                            .pattern(Some("^[\\x21-\\x7e]{1,255}$")),
                    )),
            );
        }
        if let Some(body) = o.body {
            let s = body();
            (s.schemas)(&mut schemas);
            schemas.push(((s.name)(), (s.schema)()));
            b = b.request_body(Some(
                RequestBodyBuilder::new()
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name((s.name)())))
                            .build(),
                    )
                    .build(),
            ));
        }
        let (_, description) = answer_of(&o);
        b = b.response(
            o.ok.to_string(),
            ResponseBuilder::new()
                .description(description)
                .content("application/json", ContentBuilder::new().build())
                .build(),
        );
        if o.method != "GET" && o.ok != 202 {
            b = b.response(
                "202",
                ResponseBuilder::new()
                    .description(
                        "accepted: published, not yet visible within the wait (read-your-writes)",
                    )
                    .content("application/json", ContentBuilder::new().build())
                    .build(),
            );
        }
        for (status, why) in errors(o.method) {
            b = b.response(
                status.to_string(),
                ResponseBuilder::new()
                    .description(why)
                    .content(
                        "application/problem+json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("Problem")))
                            .build(),
                    )
                    .build(),
            );
        }
        by_path.entry(o.path).or_default().push((method, b.build()));
    }
    for (path, ops) in by_path {
        let mut item = PathItem::default();
        for (method, op) in ops {
            match method {
                HttpMethod::Get => item.get = Some(op),
                HttpMethod::Post => item.post = Some(op),
                _ => item.delete = Some(op),
            }
        }
        paths = paths.path(path, item);
    }
    let mut components = ComponentsBuilder::new().schema("Problem", problem_schema());
    components = components.security_scheme(
        "api_key",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("bk_<id>_<secret>")
                .description(Some(
                    "An API key: `Authorization: Bearer bk_…` (docs/api.md, Authentication)",
                ))
                .build(),
        ),
    );
    for (name, schema) in schemas {
        components = components.schema(name, schema);
    }
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Billing API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "The streaming billing pipeline's management, usage and analytics API (docs/api.md).",
                ))
                .build(),
        )
        .paths(paths.build())
        .components(Some(components.build()))
        .security(Some(vec![SecurityRequirement::new("api_key", Vec::<String>::new())]))
        .build()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The browsable page: every operation with its parameters, body schema and answers.
pub fn html(json: &serde_json::Value) -> String {
    let mut out = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Billing API</title><style>\
         body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em}\
         details{margin:.3em 0}summary{cursor:pointer}code,pre{background:#f4f4f4}\
         .m{display:inline-block;width:4.5em;font-weight:bold}</style></head><body>\
         <h1>Billing API</h1><p>The machine-readable document: <a href=\"/openapi.json\">/openapi.json</a> \
         (OpenAPI 3.1). Every call carries <code>Authorization: Bearer bk_…</code>.</p>",
    );
    for (path, item) in json["paths"].as_object().into_iter().flatten() {
        for (method, op) in item.as_object().into_iter().flatten() {
            out.push_str(&format!(
                "<details><summary><span class=\"m\">{}</span><code>{}</code> — {}</summary>",
                method.to_uppercase(),
                esc(path),
                esc(op["summary"].as_str().unwrap_or_default())
            ));
            if let Some(ps) = op["parameters"].as_array() {
                out.push_str("<p>Parameters:</p><ul>");
                for p in ps {
                    out.push_str(&format!(
                        "<li><code>{}</code> ({}){}</li>",
                        esc(p["name"].as_str().unwrap_or_default()),
                        esc(p["in"].as_str().unwrap_or_default()),
                        if p["required"] == true {
                            ", required"
                        } else {
                            ""
                        }
                    ));
                }
                out.push_str("</ul>");
            }
            if let Some(r) =
                op["requestBody"]["content"]["application/json"]["schema"]["$ref"].as_str()
            {
                let name = r.rsplit('/').next().unwrap_or_default();
                let schema = serde_json::to_string_pretty(&json["components"]["schemas"][name])
                    .unwrap_or_default();
                out.push_str(&format!(
                    "<p>Body <code>{}</code>:</p><pre>{}</pre>",
                    esc(name),
                    esc(&schema)
                ));
            }
            out.push_str("<p>Answers: ");
            let codes: Vec<String> = op["responses"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(c, r)| {
                    format!(
                        "<code>{}</code> {}",
                        c,
                        esc(r["description"].as_str().unwrap_or_default())
                    )
                })
                .collect();
            out.push_str(&codes.join("; "));
            out.push_str("</p></details>");
        }
    }
    out.push_str("</body></html>");
    out
}

/// `GET /openapi.json` and `GET /docs`, open to everyone.
pub fn router() -> Router {
    let doc = document();
    let page = html(&doc);
    let json = serde_json::to_string(&doc).unwrap_or_default();
    Router::new()
        .route(
            "/openapi.json",
            get(move || async move {
                ([(header::CONTENT_TYPE, "application/json")], json).into_response()
            }),
        )
        .route("/docs", get(move || async move { Html(page) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_answer_has_a_schema_and_every_reference_a_definition() {
        let doc = document();
        for o in operations() {
            let schema = &doc["paths"][o.path][o.method.to_ascii_lowercase()]["responses"]
                [o.ok.to_string()]["content"]["application/json"]["schema"];
            assert!(schema.is_object(), "{} {}", o.method, o.path);
        }
        let text = doc.to_string();
        for r in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = &r[..r.find('"').unwrap()];
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "{name} is referenced, not defined"
            );
        }
    }

    #[test]
    fn the_document_names_every_route_of_the_router_once() {
        let src = include_str!("routes.rs");
        let body = &src[src.find("pub fn router").unwrap()..];
        let body = &body[..body.find(".method_not_allowed_fallback").unwrap()];
        let mut routed = Vec::new();
        for chunk in body.split(".route(").skip(1) {
            let path = chunk.split('"').nth(1).unwrap();
            let rest = &chunk[chunk.find(path).unwrap() + path.len()..];
            let rest = &rest[..rest.find("\n        .route(").unwrap_or(rest.len())];
            for method in ["get", "post", "delete"] {
                let mut from = 0;
                while let Some(i) = rest[from..].find(&format!("{method}(")) {
                    let at = from + i;
                    let before = rest[..at].chars().last().unwrap_or(' ');
                    if !before.is_alphanumeric() && before != '_' && before != ':' {
                        routed.push((method.to_uppercase(), path.to_owned()));
                    }
                    from = at + method.len();
                }
            }
        }
        routed.sort();
        let mut documented: Vec<(String, String)> = operations()
            .iter()
            .map(|o| (o.method.to_owned(), o.path.to_owned()))
            .collect();
        documented.sort();
        let n = documented.len();
        documented.dedup();
        assert_eq!(n, documented.len(), "an operation listed twice");
        assert_eq!(documented, routed);
    }

    #[test]
    fn the_enums_values_are_their_serde_names() {
        fn all<T: serde::de::DeserializeOwned>(values: &[&str]) {
            for v in values {
                assert!(
                    serde_json::from_value::<T>(serde_json::json!(v)).is_ok(),
                    "{v} for {}",
                    std::any::type_name::<T>()
                );
            }
            assert!(serde_json::from_value::<T>(serde_json::json!("nope")).is_err());
        }
        all::<billing_core::period::Interval>(&INTERVALS);
        all::<billing_schemas::catalog::ChargeModel>(&CHARGE_MODELS);
        all::<billing_schemas::catalog::CouponType>(&COUPON_TYPES);
        all::<billing_schemas::catalog::CouponFrequency>(&FREQUENCIES);
        all::<billing_schemas::lifecycle::TaxExempt>(&TAX_EXEMPT);
        all::<billing_core::period::BillingTime>(&BILLING_TIMES);
        all::<billing_core::proration::ProrationConvention>(&PRORATIONS);
    }

    #[test]
    fn the_document_is_openapi_3_1_with_bodies_errors_and_the_key_scheme() {
        let v = serde_json::to_value(document()).unwrap();
        assert_eq!(v["openapi"], "3.1.0");
        assert_eq!(
            v["components"]["securitySchemes"]["api_key"]["scheme"],
            "bearer"
        );
        let create = &v["paths"]["/v1/customers"]["post"];
        assert_eq!(
            create["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/CreateCustomer"
        );
        let customer = &v["components"]["schemas"]["CreateCustomer"];
        assert!(
            customer["required"]
                .as_array()
                .unwrap()
                .contains(&"customer_id".into()),
            "{customer}"
        );
        assert_eq!(
            create["responses"]["422"]["content"]["application/problem+json"]["schema"]["$ref"],
            "#/components/schemas/Problem"
        );
        let get = &v["paths"]["/v1/invoices/{invoice_id}"]["get"];
        assert_eq!(get["parameters"][0]["in"], "path");
        let list = &v["paths"]["/v1/invoices"]["get"]["parameters"];
        assert!(
            list.as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "starting_after"),
            "{list}"
        );
        // Every schema a body refers to is in the document.
        let text = v.to_string();
        for r in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = &r[..r.find('"').unwrap()];
            assert!(
                v["components"]["schemas"][name].is_object(),
                "{name} is missing"
            );
        }
        assert!(html(&document()).contains("/v1/analytics/mrr"));
    }
}
