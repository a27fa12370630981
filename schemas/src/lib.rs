//! The wire contract of the pipeline: the Avro schemas under `schemas/avro/`, the Rust types that mirror them,
//! and the codecs for the two value encodings a topic accepts (Confluent-framed Avro and JSON).
//!
//! A message's encoding is chosen by its `content-type` header (see [`codec::Encoding`]). Without the header, a
//! payload that starts with the Confluent magic byte `0x00` is read as Avro and anything else as JSON.

pub mod catalog;
pub mod codec;
mod datum;
pub mod invoice;
pub mod lifecycle;
pub mod payment;
pub mod reference;
mod registry;
pub mod time;
pub mod usage;
pub mod validate;

pub use codec::{decode, encode, DecodeError, EncodeError, Encoding, CONTENT_TYPE_HEADER};
pub use registry::{schema_for, Message, SchemaId, SCHEMAS};

/// The Kafka message key for everything about one customer: all per-customer topics are keyed alike so that one
/// consumer owns a customer's state.
pub fn customer_key(tenant_id: &str, customer_id: &str) -> String {
    format!("{tenant_id}/{customer_id}")
}
