//! The schemas known to this build, each with the id it carries in the Confluent wire format.
//!
//! There is no schema registry server in the local stack: ids are fixed here and never reused. A new version of a
//! schema gets a new id.

use std::sync::LazyLock;

use apache_avro::Schema;
use serde::{de::DeserializeOwned, Serialize};

/// Schema ids of the Confluent wire format (4-byte big-endian after the magic byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum SchemaId {
    /// `usage_event.avsc`, v1.
    Usage = 1,
    /// `lifecycle_event.avsc`, v1.
    Lifecycle = 2,
    /// `catalog_event.avsc`, v1.
    Catalog = 3,
    /// `invoice_event.avsc`, v1.
    Invoice = 4,
    /// `payment_event.avsc`, v1.
    Payment = 5,
}

/// (id, file name, schema text) of every schema, in id order.
pub const SCHEMAS: [(SchemaId, &str, &str); 5] = [
    (
        SchemaId::Usage,
        "usage_event.avsc",
        include_str!("../avro/usage_event.avsc"),
    ),
    (
        SchemaId::Lifecycle,
        "lifecycle_event.avsc",
        include_str!("../avro/lifecycle_event.avsc"),
    ),
    (
        SchemaId::Catalog,
        "catalog_event.avsc",
        include_str!("../avro/catalog_event.avsc"),
    ),
    (
        SchemaId::Invoice,
        "invoice_event.avsc",
        include_str!("../avro/invoice_event.avsc"),
    ),
    (
        SchemaId::Payment,
        "payment_event.avsc",
        include_str!("../avro/payment_event.avsc"),
    ),
];

static PARSED: LazyLock<Vec<Schema>> = LazyLock::new(|| {
    SCHEMAS
        .iter()
        .map(|(_, file, text)| {
            Schema::parse_str(text).unwrap_or_else(|e| panic!("{file} does not parse: {e}"))
        })
        .collect()
});

/// The parsed schema for an id.
pub fn schema_for(id: SchemaId) -> &'static Schema {
    &PARSED[id as usize - 1]
}

/// A value type that travels on a topic under one schema.
pub trait Message: Serialize + DeserializeOwned {
    /// The schema the value is written with.
    const SCHEMA: SchemaId;
}
