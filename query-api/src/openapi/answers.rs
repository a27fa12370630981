//! The schemas of the API's answers, one per resource the handlers show (`docs/api.md` describes each field). They
//! say what every answer of that resource carries: the fields always present (required) and their types; an answer
//! may carry more. `tests/tests/api_document.rs` checks every answer of a run touching every operation against
//! them, and Schemathesis checks the answers it provokes.

use serde_json::{json, Value};

/// A string.
fn string() -> Value {
    json!({"type": "string"})
}

fn nullable(t: &str) -> Value {
    json!({"type": [t, "null"]})
}

/// A string or null.
fn string_or_null() -> Value {
    nullable("string")
}

/// An exact decimal, as a string (`"12.50"`, `"-3"`).
fn decimal() -> Value {
    json!({"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?$"})
}

fn decimal_or_null() -> Value {
    json!({"type": ["string", "null"], "pattern": "^-?[0-9]+(\\.[0-9]+)?$"})
}

/// An RFC 3339 instant.
fn time() -> Value {
    json!({"type": "string", "format": "date-time"})
}

fn time_or_null() -> Value {
    json!({"type": ["string", "null"], "format": "date-time"})
}

fn integer() -> Value {
    json!({"type": "integer"})
}

fn integer_or_null() -> Value {
    nullable("integer")
}

fn boolean() -> Value {
    json!({"type": "boolean"})
}

/// Any JSON object.
fn object() -> Value {
    json!({"type": "object"})
}

fn object_or_null() -> Value {
    nullable("object")
}

fn array(items: Value) -> Value {
    json!({"type": "array", "items": items})
}

fn strings() -> Value {
    array(string())
}

fn one_of(values: &[&str]) -> Value {
    json!({"type": "string", "enum": values})
}

fn constant(value: &str) -> Value {
    json!({"const": value})
}

/// A reference to another answer schema.
pub fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// An object whose fields are all present.
fn resource(description: &str, fields: &[(&str, Value)]) -> Value {
    with_optional(description, fields, &[])
}

/// An object whose `fields` are always present and `optional` ones sometimes.
fn with_optional(description: &str, fields: &[(&str, Value)], optional: &[(&str, Value)]) -> Value {
    let mut properties = serde_json::Map::new();
    for (name, schema) in fields.iter().chain(optional) {
        properties.insert((*name).to_owned(), schema.clone());
    }
    json!({
        "type": "object",
        "description": description,
        "properties": properties,
        "required": fields.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
    })
}

/// A page of a list: `object: list`, `data` (items of `item`), `has_more`.
pub fn list_of(item: &str) -> Value {
    resource(
        "a page of a list, in the list's order; `has_more` says whether another page follows",
        &[
            ("object", constant("list")),
            ("data", array(reference(item))),
            ("has_more", boolean()),
        ],
    )
}

/// Every answer schema, by name.
pub fn schemas() -> Vec<(&'static str, Value)> {
    vec![
        (
            "Pending",
            resource(
                "a write published but not yet visible within its wait: its event id and the resource it names",
                &[
                    ("event_id", string()),
                    ("status", constant("pending")),
                    ("object", string()),
                    ("id", string()),
                ],
            ),
        ),
        (
            "Customer",
            with_optional(
                "a customer",
                &[
                    ("customer_id", string()),
                    ("name", string()),
                    ("email", string_or_null()),
                    ("currency", string()),
                    ("timezone", string()),
                    ("billing_country", string_or_null()),
                    ("address", object_or_null()),
                    ("tax_ids", strings()),
                    ("invoice_grace_period_days", integer()),
                    ("net_payment_term_days", integer()),
                    ("metadata", object()),
                    ("test_clock_id", string_or_null()),
                    ("tax_codes", strings()),
                    ("tax_exempt", one_of(&["none", "exempt", "reverse"])),
                    ("created_at", time()),
                    ("applied_coupons", array(object())),
                    ("wallets", array(object())),
                ],
                &[],
            ),
        ),
        (
            "Subscription",
            resource(
                "a subscription",
                &[
                    ("subscription_id", string()),
                    ("customer_id", string()),
                    ("initial_plan_code", string()),
                    ("plan_code", string()),
                    (
                        "status",
                        one_of(&["trialing", "active", "paused", "suspended", "canceled"]),
                    ),
                    ("billing_time", one_of(&["calendar", "anniversary"])),
                    ("billing_anchor_day", integer_or_null()),
                    ("proration", string()),
                    ("started_at", time()),
                    ("trial_ends_at", time_or_null()),
                    ("canceled_at", time_or_null()),
                    ("cancel_at_period_end", boolean()),
                    (
                        "changes",
                        array(resource(
                            "a change, as requested",
                            &[
                                ("kind", string()),
                                ("plan_code", string_or_null()),
                                ("effective_at", time()),
                                ("at_period_end", boolean()),
                            ],
                        )),
                    ),
                    ("created_at", time()),
                ],
            ),
        ),
        ("InvoiceLine", invoice_line()),
        ("Invoice", invoice(true)),
        ("UpcomingInvoice", invoice(false)),
        ("InvoicePayment", invoice_payment()),
        (
            "InvoicePayments",
            resource(
                "an invoice's payment and every attempt, first first",
                &[
                    ("invoice_id", string()),
                    ("payment", payment_or_null()),
                    ("attempts", array(object())),
                ],
            ),
        ),
        (
            "CreditNote",
            resource(
                "a credit note (or the request of one the invoicer refused: `status` rejected)",
                &[
                    ("credit_note_id", string()),
                    ("status", one_of(&["numbering", "issued", "rejected"])),
                    ("number", string_or_null()),
                    ("invoice_id", string()),
                    ("invoice_number", string_or_null()),
                    ("customer_id", string()),
                    ("currency", string()),
                    ("kind", one_of(&["credit", "refund"])),
                    ("reason", string()),
                    ("memo", string_or_null()),
                    ("issued_at", time()),
                    (
                        "lines",
                        array(resource(
                            "a credited invoice line",
                            &[
                                ("line_index", integer()),
                                ("description", string()),
                                ("amount", decimal()),
                                ("tax", decimal()),
                                ("total", decimal()),
                            ],
                        )),
                    ),
                    ("subtotal", decimal()),
                    ("tax_total", decimal()),
                    ("total", decimal()),
                    ("refund", object_or_null()),
                    ("credit", object_or_null()),
                    ("rejection_reason", string_or_null()),
                ],
            ),
        ),
        (
            "Usage",
            resource(
                "a customer's usage in the billing periods containing `at`, priced",
                &[
                    ("tenant_id", string()),
                    ("customer_id", string()),
                    ("at", time()),
                    (
                        "charges",
                        array(with_optional(
                            "the usage of one charge (and group) in one billing period",
                            &[
                                ("subscription_id", string()),
                                ("charge_id", string()),
                                ("metric_code", string()),
                                ("aggregation", string()),
                                ("group", string()),
                                ("period_start", time()),
                                ("period_end", time()),
                                ("units", decimal()),
                                ("events_count", integer()),
                                ("currency", string()),
                                ("amount", decimal_or_null()),
                            ],
                            &[("pricing_error", string())],
                        )),
                    ),
                    (
                        "totals",
                        json!({"type": "object", "additionalProperties": decimal()}),
                    ),
                ],
            ),
        ),
        (
            "BillableMetric",
            resource(
                "a billable metric",
                &[
                    ("object", constant("billable_metric")),
                    ("code", string()),
                    ("name", string_or_null()),
                    ("aggregation", string()),
                    ("field_name", string_or_null()),
                    ("filters", json!({"type": ["array", "object", "null"]})),
                    ("created_at", time()),
                ],
            ),
        ),
        (
            "Plan",
            resource(
                "a plan, at its latest version",
                &[
                    ("object", constant("plan")),
                    ("code", string()),
                    ("name", string_or_null()),
                    ("interval", string()),
                    ("currency", string()),
                    ("amount", decimal()),
                    ("pay_in_advance", boolean()),
                    ("trial_period_days", integer_or_null()),
                    ("version", integer()),
                    ("effective_from", time_or_null()),
                    (
                        "charges",
                        array(resource(
                            "a usage charge",
                            &[
                                ("id", string()),
                                ("billable_metric_code", string()),
                                ("charge_model", string()),
                                ("properties", json!({"type": ["object", "string"]})),
                                ("min_amount", decimal_or_null()),
                                ("group_by", string_or_null()),
                                ("tax_codes", strings()),
                            ],
                        )),
                    ),
                    ("tax_codes", strings()),
                    ("created_at", time()),
                ],
            ),
        ),
        (
            "AddOn",
            resource(
                "an add-on",
                &[
                    ("object", constant("add_on")),
                    ("code", string()),
                    ("name", string()),
                    ("amount", decimal()),
                    ("amount_currency", string()),
                    ("description", string_or_null()),
                    ("tax_codes", strings()),
                    ("created_at", time()),
                ],
            ),
        ),
        (
            "Coupon",
            resource(
                "a coupon",
                &[
                    ("object", constant("coupon")),
                    ("code", string()),
                    ("name", string_or_null()),
                    ("coupon_type", one_of(&["fixed_amount", "percentage"])),
                    ("amount", decimal_or_null()),
                    ("amount_currency", string_or_null()),
                    ("percentage_rate", decimal_or_null()),
                    ("frequency", one_of(&["once", "recurring", "forever"])),
                    ("frequency_duration", integer_or_null()),
                    ("expiration_at", time_or_null()),
                    ("reusable", boolean()),
                    ("max_redemptions", integer_or_null()),
                    (
                        "applies_to",
                        resource(
                            "what it discounts (both empty: everything)",
                            &[
                                ("plan_codes", strings()),
                                ("billable_metric_codes", strings()),
                            ],
                        ),
                    ),
                    ("created_at", time()),
                ],
            ),
        ),
        (
            "Tax",
            resource(
                "a tax rate",
                &[
                    ("object", constant("tax")),
                    ("code", string()),
                    ("name", string()),
                    ("rate", decimal()),
                    ("inclusive", boolean()),
                    ("applied_to_tenant", boolean()),
                    ("description", string_or_null()),
                    ("created_at", time()),
                ],
            ),
        ),
        (
            "AppliedCoupon",
            resource(
                "a coupon applied to a customer",
                &[
                    ("object", constant("applied_coupon")),
                    ("applied_coupon_id", string()),
                    ("status", one_of(&["active", "removed"])),
                    ("applied_at", time()),
                    ("removed_at", time_or_null()),
                ],
            ),
        ),
        (
            "Wallet",
            resource(
                "a prepaid-credit wallet, its balance and transactions",
                &[
                    ("object", constant("wallet")),
                    ("wallet_id", string()),
                    ("customer_id", string()),
                    ("name", string_or_null()),
                    ("currency", string()),
                    ("status", one_of(&["active", "expired"])),
                    ("expiration_at", time_or_null()),
                    ("created_at", time()),
                    ("balance", decimal()),
                    (
                        "transactions",
                        array(with_optional(
                            "a credit or debit of the wallet",
                            &[
                                (
                                    "type",
                                    one_of(&["granted", "purchased", "consumed", "expired"]),
                                ),
                                ("amount", decimal()),
                                ("at", time()),
                            ],
                            &[
                                ("transaction_id", string_or_null()),
                                ("invoice_id", string_or_null()),
                                ("invoice_number", string_or_null()),
                            ],
                        )),
                    ),
                ],
            ),
        ),
        (
            "TestClock",
            with_optional(
                "a test clock and how far the lifecycle partitions have processed it",
                &[
                    ("object", constant("test_clock")),
                    ("id", string()),
                    ("frozen_time", time()),
                    ("status", one_of(&["ready", "advancing"])),
                ],
                &[
                    ("now", time()),
                    ("partitions", integer()),
                    ("partitions_at_frozen_time", integer()),
                    ("event_id", string()),
                ],
            ),
        ),
        (
            "PaymentMethod",
            resource(
                "a payment method of a customer",
                &[
                    ("object", constant("payment_method")),
                    ("id", string()),
                    ("customer_id", string()),
                    ("kind", string()),
                    ("token", string()),
                    ("created_at", time()),
                    ("is_default", boolean()),
                ],
            ),
        ),
        (
            "PaymentMethods",
            resource(
                "a customer's payment methods, oldest first, and its default",
                &[
                    ("object", constant("list")),
                    ("data", array(reference("PaymentMethod"))),
                    ("default_payment_method", string_or_null()),
                    ("has_more", boolean()),
                ],
            ),
        ),
        (
            "WebhookEndpoint",
            with_optional(
                "a webhook endpoint (`secret` only in the answers of its creation and rotation)",
                &[
                    ("id", string()),
                    ("object", constant("webhook_endpoint")),
                    ("url", string()),
                    ("event_types", strings()),
                    ("description", string_or_null()),
                    ("enabled", boolean()),
                    ("secret_prefix", string()),
                    ("previous_secret_expires_at", time_or_null()),
                    ("created_at", time()),
                    ("updated_at", time()),
                ],
                &[("secret", string())],
            ),
        ),
        (
            "DeletedWebhookEndpoint",
            resource(
                "a deleted webhook endpoint",
                &[
                    ("id", string()),
                    ("object", constant("webhook_endpoint")),
                    ("deleted", json!({"const": true})),
                ],
            ),
        ),
        (
            "WebhookDelivery",
            resource(
                "a delivery of an event to an endpoint",
                &[
                    ("id", string()),
                    ("object", constant("webhook_delivery")),
                    ("endpoint_id", string()),
                    ("event_id", string()),
                    ("event_type", string()),
                    ("status", string()),
                    ("created_at", time()),
                    ("next_attempt_at", time_or_null()),
                    ("attempts", integer()),
                ],
            ),
        ),
        (
            "WebhookRedelivery",
            resource(
                "a redelivery request",
                &[
                    ("id", string()),
                    ("object", constant("webhook_redelivery")),
                    ("endpoint_id", string()),
                    ("delivery_id", string()),
                    ("event_id", string()),
                    ("requested_at", time()),
                    ("status", constant("pending")),
                ],
            ),
        ),
        (
            "ApiKey",
            resource(
                "an API key, by its visible prefix (never its secret)",
                &[
                    ("id", string()),
                    ("object", constant("api_key")),
                    ("role", one_of(&["admin", "write", "read", "analyst", "ingest"])),
                    ("name", string_or_null()),
                    ("created_at", time()),
                    ("revoked_at", time_or_null()),
                    ("status", one_of(&["active", "revoked"])),
                ],
            ),
        ),
        (
            "AuditEntry",
            resource(
                "a write as the audit log keeps it",
                &[
                    ("id", string()),
                    ("at", time()),
                    ("request_id", string()),
                    ("key", string()),
                    ("role", string()),
                    ("method", string()),
                    ("path", string()),
                    ("route", string()),
                    ("resource_id", string()),
                    ("status", integer()),
                    ("remote_addr", string()),
                    ("request", json!({})),
                    ("response", json!({})),
                ],
            ),
        ),
        (
            "AnalyticsRow",
            with_optional(
                "a row of an analytics report (`docs/analytics.md` lists each report's columns)",
                &[("id", string()), ("object", string())],
                &[
                    ("month", string()),
                    ("currency", string()),
                ],
            ),
        ),
        (
            "GraphqlAnswer",
            with_optional(
                "a GraphQL answer",
                &[],
                &[
                    ("data", object_or_null()),
                    ("errors", array(object())),
                    ("extensions", object()),
                ],
            ),
        ),
    ]
}

/// An issued invoice (`with_payment`) or the upcoming one.
fn invoice(with_payment: bool) -> Value {
    let mut fields = vec![
        ("invoice_id", string()),
        ("number", string_or_null()),
        ("status", one_of(&["draft", "finalized", "void"])),
        ("customer_id", string()),
        ("currency", string()),
        ("test_clock_id", string_or_null()),
        ("billing_date", time()),
        ("finalizes_at", time()),
        ("issued_at", time_or_null()),
        ("due_date", time_or_null()),
        ("period_start", time()),
        ("period_end", time()),
        ("subscription_ids", strings()),
        ("lines", array(reference("InvoiceLine"))),
        ("subtotal", decimal()),
        ("discount_total", decimal()),
        ("tax_total", decimal()),
        ("credits_total", decimal()),
        ("total", decimal()),
        ("amount_due", decimal()),
        (
            "applied_taxes",
            array(resource(
                "one tax of the invoice, over every line it applies to",
                &[
                    ("code", string()),
                    ("name", string()),
                    ("rate", decimal()),
                    ("inclusive", boolean()),
                    ("taxable_amount", decimal()),
                    ("amount", decimal()),
                ],
            )),
        ),
        ("tax_note", string_or_null()),
        ("voided_at", time_or_null()),
        (
            "coupons",
            array(resource(
                "a coupon that discounted it",
                &[
                    ("applied_coupon_id", string()),
                    ("code", string()),
                    ("amount", decimal()),
                ],
            )),
        ),
        ("one_off", boolean()),
        (
            "credits",
            array(resource(
                "prepaid credits of a wallet used on it",
                &[("wallet_id", string()), ("amount", decimal())],
            )),
        ),
        ("late_usage", array(object())),
        ("carried_by", strings()),
        ("usage_offset", integer_or_null()),
    ];
    if with_payment {
        fields.push(("payment", payment_or_null()));
        fields.push(("payment_status", string_or_null()));
        resource(
            "an invoice (`payment` is null unless it is finalized)",
            &fields,
        )
    } else {
        resource(
            "the invoice the customer's next billing date would issue, as a draft",
            &fields,
        )
    }
}

/// An invoice's payment: null unless the invoice is finalized.
fn payment_or_null() -> Value {
    json!({"oneOf": [reference("InvoicePayment"), {"type": "null"}]})
}

fn invoice_line() -> Value {
    with_optional(
        "one line of an invoice; amounts are rounded once to the currency's minor unit",
        &[
            (
                "kind",
                one_of(&[
                    "subscription_fee",
                    "proration_credit",
                    "usage",
                    "true_up",
                    "add_on",
                    "prepaid_credits",
                    "adjustment",
                ]),
            ),
            ("description", string()),
            ("subscription_id", string_or_null()),
            ("code", string()),
            ("period_start", time_or_null()),
            ("period_end", time_or_null()),
            ("units", decimal_or_null()),
            ("proration_factor", decimal_or_null()),
            ("amount", decimal()),
            ("discount", decimal()),
            ("tax", decimal()),
            ("total", decimal()),
            ("taxable_amount", decimal()),
            ("taxes", array(object())),
        ],
        &[
            ("adjusts", string()),
            ("plan_code", string()),
            ("metric_code", string()),
        ],
    )
}

fn invoice_payment() -> Value {
    resource(
        "where the payment of a finalized invoice stands",
        &[
            ("status", string()),
            ("amount_paid", decimal()),
            ("amount_remaining", decimal()),
            ("attempt_count", integer()),
            ("next_payment_attempt", time_or_null()),
            (
                "last_payment_error",
                json!({"oneOf": [
                    {"type": "null"},
                    resource("the provider's refusal", &[("code", string()), ("message", string_or_null())]),
                ]}),
            ),
            ("paid_at", time_or_null()),
            ("reference", string_or_null()),
        ],
    )
}
