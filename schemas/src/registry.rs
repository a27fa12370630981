//! The schemas known to this build, each with the id it carries in the Confluent wire format.
//!
//! There is no schema registry server in the local stack: ids are fixed here and never reused. A new version of a
//! schema gets a new id, and the file of the version it replaces stays (as `<name>.v<N>.avsc`) so that datums
//! written with it keep decoding: they are read with their writer's schema and resolved to the current one (Avro
//! schema resolution: a field the new version added takes its default).

use std::sync::LazyLock;

use apache_avro::Schema;
use serde::{de::DeserializeOwned, Serialize};

/// Schema ids of the Confluent wire format (4-byte big-endian after the magic byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum SchemaId {
    /// `usage_event.avsc`, v1.
    Usage = 1,
    /// `lifecycle_event.v1.avsc`: read only (resolved to [`SchemaId::Lifecycle`]).
    LifecycleV1 = 2,
    /// `catalog_event.v1.avsc`: read only (resolved to [`SchemaId::Catalog`]).
    CatalogV1 = 3,
    /// `invoice_event.v1.avsc`: read only (resolved to [`SchemaId::Invoice`]).
    InvoiceV1 = 4,
    /// `payment_event.v1.avsc`: read only (resolved to [`SchemaId::Payment`]).
    PaymentV1 = 5,
    /// `lifecycle_event.v2.avsc`: read only (resolved to [`SchemaId::Lifecycle`]).
    LifecycleV2 = 6,
    /// `invoice_event.v2.avsc`: read only (resolved to [`SchemaId::Invoice`]).
    InvoiceV2 = 7,
    /// `catalog_event.v2.avsc`: read only (resolved to [`SchemaId::Catalog`]).
    CatalogV2 = 8,
    /// `payment_event.v2.avsc`: read only (resolved to [`SchemaId::Payment`]).
    PaymentV2 = 9,
    /// `lifecycle_event.v3.avsc`: read only (resolved to [`SchemaId::Lifecycle`]).
    LifecycleV3 = 10,
    /// `invoice_event.v3.avsc`: read only (resolved to [`SchemaId::Invoice`]).
    InvoiceV3 = 11,
    /// `payment_event.avsc`, v3.
    Payment = 12,
    /// `catalog_event.avsc`, v3.
    Catalog = 13,
    /// `lifecycle_event.avsc`, v4.
    Lifecycle = 14,
    /// `invoice_event.avsc`, v4.
    Invoice = 15,
}

impl SchemaId {
    /// Every id, in id order.
    pub const ALL: [SchemaId; 15] = [
        SchemaId::Usage,
        SchemaId::LifecycleV1,
        SchemaId::CatalogV1,
        SchemaId::InvoiceV1,
        SchemaId::PaymentV1,
        SchemaId::LifecycleV2,
        SchemaId::InvoiceV2,
        SchemaId::CatalogV2,
        SchemaId::PaymentV2,
        SchemaId::LifecycleV3,
        SchemaId::InvoiceV3,
        SchemaId::Payment,
        SchemaId::Catalog,
        SchemaId::Lifecycle,
        SchemaId::Invoice,
    ];

    /// The id of a number read from the wire.
    pub fn from_u32(id: u32) -> Option<SchemaId> {
        SchemaId::ALL.into_iter().find(|s| *s as u32 == id)
    }

    /// The current schema whose older version this is (itself when it is current).
    pub fn current(self) -> SchemaId {
        match self {
            SchemaId::LifecycleV1 | SchemaId::LifecycleV2 | SchemaId::LifecycleV3 => {
                SchemaId::Lifecycle
            }
            SchemaId::InvoiceV1 | SchemaId::InvoiceV2 | SchemaId::InvoiceV3 => SchemaId::Invoice,
            SchemaId::CatalogV1 | SchemaId::CatalogV2 => SchemaId::Catalog,
            SchemaId::PaymentV1 | SchemaId::PaymentV2 => SchemaId::Payment,
            other => other,
        }
    }
}

/// (id, file name, schema text) of every schema, in id order.
pub const SCHEMAS: [(SchemaId, &str, &str); 15] = [
    (
        SchemaId::Usage,
        "usage_event.avsc",
        include_str!("../avro/usage_event.avsc"),
    ),
    (
        SchemaId::LifecycleV1,
        "lifecycle_event.v1.avsc",
        include_str!("../avro/lifecycle_event.v1.avsc"),
    ),
    (
        SchemaId::CatalogV1,
        "catalog_event.v1.avsc",
        include_str!("../avro/catalog_event.v1.avsc"),
    ),
    (
        SchemaId::InvoiceV1,
        "invoice_event.v1.avsc",
        include_str!("../avro/invoice_event.v1.avsc"),
    ),
    (
        SchemaId::PaymentV1,
        "payment_event.v1.avsc",
        include_str!("../avro/payment_event.v1.avsc"),
    ),
    (
        SchemaId::LifecycleV2,
        "lifecycle_event.v2.avsc",
        include_str!("../avro/lifecycle_event.v2.avsc"),
    ),
    (
        SchemaId::InvoiceV2,
        "invoice_event.v2.avsc",
        include_str!("../avro/invoice_event.v2.avsc"),
    ),
    (
        SchemaId::CatalogV2,
        "catalog_event.v2.avsc",
        include_str!("../avro/catalog_event.v2.avsc"),
    ),
    (
        SchemaId::PaymentV2,
        "payment_event.v2.avsc",
        include_str!("../avro/payment_event.v2.avsc"),
    ),
    (
        SchemaId::LifecycleV3,
        "lifecycle_event.v3.avsc",
        include_str!("../avro/lifecycle_event.v3.avsc"),
    ),
    (
        SchemaId::InvoiceV3,
        "invoice_event.v3.avsc",
        include_str!("../avro/invoice_event.v3.avsc"),
    ),
    (
        SchemaId::Payment,
        "payment_event.avsc",
        include_str!("../avro/payment_event.avsc"),
    ),
    (
        SchemaId::Catalog,
        "catalog_event.avsc",
        include_str!("../avro/catalog_event.avsc"),
    ),
    (
        SchemaId::Lifecycle,
        "lifecycle_event.avsc",
        include_str!("../avro/lifecycle_event.avsc"),
    ),
    (
        SchemaId::Invoice,
        "invoice_event.avsc",
        include_str!("../avro/invoice_event.avsc"),
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

#[cfg(test)]
/// No header: the datum alone (a registry frame is split off before reading).
struct NoHeader;

#[cfg(test)]
impl apache_avro::headers::HeaderBuilder for NoHeader {
    fn build_header(&self) -> Vec<u8> {
        Vec::new()
    }
}

/// apache-avro's reader per schema, for the tests that check [`crate::datum`] against it.
#[cfg(test)]
static READERS: LazyLock<Vec<apache_avro::GenericSingleObjectReader>> = LazyLock::new(|| {
    PARSED
        .iter()
        .map(|schema| {
            apache_avro::GenericSingleObjectReader::new_with_header_builder(
                schema.clone(),
                NoHeader,
            )
            .unwrap_or_else(|e| panic!("a parsed schema does not resolve: {e}"))
        })
        .collect()
});

/// apache-avro's datum reader for an id's schema.
#[cfg(test)]
pub(crate) fn reader_for(id: SchemaId) -> &'static apache_avro::GenericSingleObjectReader {
    &READERS[id as usize - 1]
}

/// A value type that travels on a topic under one schema.
pub trait Message: Serialize + DeserializeOwned {
    /// The schema the value is written with.
    const SCHEMA: SchemaId;

    /// Read a datum written with the current schema by hand, if the type has such a reader (the generic path is
    /// `crate::datum`, guided by the schema); it must give what the generic path gives, and refuse what it refuses.
    fn read_current_avro(_datum: &[u8]) -> Option<Result<Self, crate::codec::DecodeError>> {
        None
    }
}
