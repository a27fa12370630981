//! Value codecs. Avro values use the Confluent wire format: magic byte `0x00`, the schema id as a 4-byte
//! big-endian integer, then the Avro binary datum. JSON values are the same records as JSON objects; a union of
//! records is written `{"RecordName": {...}}` (the Avro JSON encoding, with short names), and a nullable field (a
//! nullable record too) is the value or `null`.
//!
//! Avro datums are converted through `serde_json::Value` guided by the schema, so the Rust types, the JSON form
//! and the Avro form cannot drift apart: a field the schema lacks, or a required field the value lacks, is an
//! error in both directions.

use std::collections::HashMap;

use apache_avro::schema::{Schema, UnionSchema};
use apache_avro::types::Value as Avro;
#[cfg(test)]
use serde_json::Map;
use serde_json::Value as Json;

use crate::registry::{schema_for, Message, SchemaId};

/// Header that names a value's encoding.
pub const CONTENT_TYPE_HEADER: &str = "content-type";

const MAGIC: u8 = 0;

/// A value's encoding on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// UTF-8 JSON object.
    Json,
    /// Confluent-framed Avro binary.
    Avro,
}

impl Encoding {
    /// The `content-type` header value for this encoding.
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Json => "application/json",
            Encoding::Avro => "application/vnd.confluent.avro",
        }
    }

    /// The encoding named by a `content-type` header, or, without one, sniffed from the first byte.
    pub fn detect(content_type: Option<&[u8]>, payload: &[u8]) -> Result<Self, DecodeError> {
        match content_type {
            Some(b"application/json") => Ok(Encoding::Json),
            Some(b"application/vnd.confluent.avro" | b"avro/binary") => Ok(Encoding::Avro),
            Some(other) => Err(DecodeError::UnknownContentType(
                String::from_utf8_lossy(other).into_owned(),
            )),
            None if payload.first() == Some(&MAGIC) => Ok(Encoding::Avro),
            None => Ok(Encoding::Json),
        }
    }
}

/// Why a value could not be decoded. Every variant is permanent: the message goes to the dead-letter topic.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Empty value.
    #[error("empty payload")]
    Empty,
    /// The header names an encoding we do not read.
    #[error("unsupported content-type {0:?}")]
    UnknownContentType(String),
    /// Avro content without the Confluent magic byte or a full header.
    #[error("not Confluent-framed Avro: {0}")]
    BadFraming(String),
    /// The schema id is not the one this topic carries.
    #[error("schema id {found} is not accepted here (expected {expected})")]
    WrongSchemaId {
        /// Id this topic expects.
        expected: u32,
        /// Id in the message.
        found: u32,
    },
    /// The bytes are not a datum of the schema.
    #[error("invalid Avro datum: {0}")]
    Avro(String),
    /// The JSON is malformed or does not match the record (missing or mistyped field).
    #[error("invalid JSON value: {0}")]
    Json(String),
}

/// Why a value could not be encoded: the Rust value and the schema disagree, which is a programming error.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode as {schema}: {reason}")]
pub struct EncodeError {
    schema: String,
    reason: String,
}

/// Decode a value of type `T` from a Kafka payload and its `content-type` header.
pub fn decode<T: Message>(payload: &[u8], content_type: Option<&[u8]>) -> Result<T, DecodeError> {
    if payload.is_empty() {
        return Err(DecodeError::Empty);
    }
    match Encoding::detect(content_type, payload)? {
        Encoding::Json => {
            let json = serde_json::from_slice::<Json>(payload)
                .map_err(|e| DecodeError::Json(e.to_string()))?;
            serde_json::from_value(json).map_err(|e| DecodeError::Json(e.to_string()))
        }
        Encoding::Avro => {
            let (id, datum) = split_frame(payload)?;
            // The current id, or an older version of the same schema, read with its own (writer's) schema and
            // resolved to the current one.
            let writer = SchemaId::from_u32(id)
                .filter(|w| w.current() == T::SCHEMA)
                .ok_or(DecodeError::WrongSchemaId {
                    expected: T::SCHEMA as u32,
                    found: id,
                })?;
            if writer == T::SCHEMA {
                if let Some(read) = T::read_current_avro(datum) {
                    return read;
                }
            }
            decode_avro_value(writer, datum)
        }
    }
}

/// The generic Avro path: the datum read with its writer's schema straight into `T`, shown to it as its JSON form
/// (see [`crate::datum`]).
pub(crate) fn decode_avro_value<T: Message>(
    writer: SchemaId,
    datum: &[u8],
) -> Result<T, DecodeError> {
    // Resolution goes by field and record names, as JSON would (apache-avro's own union resolution matches records
    // by shape, not by name), and the Rust types default what a newer version added.
    crate::datum::from_datum(schema_for(writer), datum)
}

/// The path [`decode_avro_value`] replaced, kept to check it against: apache-avro reads the datum into an Avro
/// value, which is turned into JSON, then into `T`.
#[cfg(test)]
pub(crate) fn decode_avro_value_via_json<T: Message>(
    writer: SchemaId,
    datum: &[u8],
) -> Result<T, DecodeError> {
    let schema = schema_for(writer);
    let mut cursor = std::io::Cursor::new(datum);
    let value = crate::registry::reader_for(writer)
        .read_value(&mut cursor)
        .map_err(|e| DecodeError::Avro(e.to_string()))?;
    let read = cursor.position();
    if read != datum.len() as u64 {
        return Err(DecodeError::Avro(format!(
            "{} trailing bytes after the datum",
            datum.len() as u64 - read
        )));
    }
    let json = avro_to_json(schema, &value);
    serde_json::from_value(json).map_err(|e| DecodeError::Json(e.to_string()))
}

/// Encode a value in the given encoding.
pub fn encode<T: Message>(value: &T, encoding: Encoding) -> Result<Vec<u8>, EncodeError> {
    let schema = schema_for(T::SCHEMA);
    let err = |reason: String| EncodeError {
        schema: format!("{:?}", T::SCHEMA),
        reason,
    };
    let json = serde_json::to_value(value).map_err(|e| err(e.to_string()))?;
    match encoding {
        Encoding::Json => serde_json::to_vec(&json).map_err(|e| err(e.to_string())),
        Encoding::Avro => {
            let datum = json_to_avro(schema, &json, "$").map_err(err)?;
            let body = apache_avro::to_avro_datum(schema, datum).map_err(|e| err(e.to_string()))?;
            let mut out = Vec::with_capacity(5 + body.len());
            out.push(MAGIC);
            out.extend_from_slice(&(T::SCHEMA as u32).to_be_bytes());
            out.extend_from_slice(&body);
            Ok(out)
        }
    }
}

/// Check that a JSON value has exactly the shape of a schema (used by the schema-conformance tests).
pub fn check_json_shape(id: SchemaId, json: &Json) -> Result<(), String> {
    json_to_avro(schema_for(id), json, "$").map(|_| ())
}

fn split_frame(payload: &[u8]) -> Result<(u32, &[u8]), DecodeError> {
    match payload {
        [MAGIC, a, b, c, d, datum @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), datum)),
        [MAGIC, ..] => Err(DecodeError::BadFraming(format!(
            "{} bytes is shorter than the 5-byte header",
            payload.len()
        ))),
        [first, ..] => Err(DecodeError::BadFraming(format!(
            "magic byte is {first:#04x}, not 0x00"
        ))),
        [] => Err(DecodeError::Empty),
    }
}

/// A union with more than one non-null branch is written tagged (`{"Record": {...}}`); a nullable value
/// (`["null", T]`, T a record too) is written as the value or `null`.
pub(crate) fn is_tagged(u: &UnionSchema) -> bool {
    u.variants()
        .iter()
        .filter(|s| !matches!(s, Schema::Null))
        .count()
        > 1
}

fn union_branch_name(s: &Schema) -> Option<String> {
    match s {
        Schema::Record(r) => Some(r.name.name.clone()),
        _ => None,
    }
}

#[cfg(test)]
fn avro_to_json(schema: &Schema, value: &Avro) -> Json {
    match (schema, value) {
        (_, Avro::Null) => Json::Null,
        (_, Avro::Boolean(b)) => Json::Bool(*b),
        (_, Avro::Int(i)) => Json::from(*i),
        (_, Avro::Long(i) | Avro::TimestampMillis(i)) => Json::from(*i),
        (_, Avro::String(s) | Avro::Enum(_, s)) => Json::String(s.clone()),
        (Schema::Union(u), Avro::Union(idx, inner)) => {
            let branch = &u.variants()[*idx as usize];
            let v = avro_to_json(branch, inner);
            match union_branch_name(branch).filter(|_| is_tagged(u)) {
                Some(name) => Json::Object(Map::from_iter([(name, v)])),
                None => v,
            }
        }
        (Schema::Array(a), Avro::Array(items)) => {
            Json::Array(items.iter().map(|i| avro_to_json(&a.items, i)).collect())
        }
        (Schema::Map(m), Avro::Map(entries)) => {
            let mut sorted: Vec<_> = entries.iter().collect();
            sorted.sort_by(|a, b| a.0.cmp(b.0));
            Json::Object(
                sorted
                    .into_iter()
                    .map(|(k, v)| (k.clone(), avro_to_json(&m.types, v)))
                    .collect(),
            )
        }
        (Schema::Record(r), Avro::Record(fields)) => Json::Object(
            fields
                .iter()
                .zip(&r.fields)
                .map(|((name, v), f)| (name.clone(), avro_to_json(&f.schema, v)))
                .collect(),
        ),
        // Our schemas use no other types; keep the datum visible rather than dropping it.
        (_, other) => Json::String(format!("{other:?}")),
    }
}

fn json_to_avro(schema: &Schema, json: &Json, path: &str) -> Result<Avro, String> {
    let mismatch = || format!("{path}: expected {}, found {json}", schema_kind(schema));
    match schema {
        Schema::Null => json.is_null().then_some(Avro::Null).ok_or_else(mismatch),
        Schema::Boolean => json.as_bool().map(Avro::Boolean).ok_or_else(mismatch),
        Schema::Int => json
            .as_i64()
            .and_then(|i| i32::try_from(i).ok())
            .map(Avro::Int)
            .ok_or_else(mismatch),
        Schema::Long => json.as_i64().map(Avro::Long).ok_or_else(mismatch),
        Schema::TimestampMillis => json
            .as_i64()
            .map(Avro::TimestampMillis)
            .ok_or_else(mismatch),
        Schema::String => json
            .as_str()
            .map(|s| Avro::String(s.to_owned()))
            .ok_or_else(mismatch),
        Schema::Enum(e) => {
            let s = json.as_str().ok_or_else(mismatch)?;
            let idx = e
                .symbols
                .iter()
                .position(|x| x == s)
                .ok_or_else(|| format!("{path}: {s:?} is not one of {:?}", e.symbols))?;
            Ok(Avro::Enum(idx as u32, s.to_owned()))
        }
        Schema::Array(a) => {
            let items = json.as_array().ok_or_else(mismatch)?;
            items
                .iter()
                .enumerate()
                .map(|(i, v)| json_to_avro(&a.items, v, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()
                .map(Avro::Array)
        }
        Schema::Map(m) => {
            let obj = json.as_object().ok_or_else(mismatch)?;
            obj.iter()
                .map(|(k, v)| {
                    Ok((
                        k.clone(),
                        json_to_avro(&m.types, v, &format!("{path}.{k}"))?,
                    ))
                })
                .collect::<Result<HashMap<_, _>, String>>()
                .map(Avro::Map)
        }
        Schema::Union(u) => json_to_union(u, json, path),
        Schema::Record(r) => {
            let obj = json.as_object().ok_or_else(mismatch)?;
            if let Some(extra) = obj.keys().find(|k| !r.fields.iter().any(|f| &f.name == *k)) {
                return Err(format!(
                    "{path}: field {extra:?} is not in record {}",
                    r.name.name
                ));
            }
            let mut fields = Vec::with_capacity(r.fields.len());
            for f in &r.fields {
                let sub = format!("{path}.{}", f.name);
                let v = match (obj.get(&f.name), &f.default) {
                    (Some(v), _) => json_to_avro(&f.schema, v, &sub)?,
                    (None, Some(default)) => json_to_avro(&f.schema, default, &sub)?,
                    (None, None) => return Err(format!("{sub}: required field is missing")),
                };
                fields.push((f.name.clone(), v));
            }
            Ok(Avro::Record(fields))
        }
        other => Err(format!(
            "{path}: schema type {} is not used by billing schemas",
            schema_kind(other)
        )),
    }
}

fn json_to_union(u: &UnionSchema, json: &Json, path: &str) -> Result<Avro, String> {
    let variants = u.variants();
    if json.is_null() {
        let idx = variants.iter().position(|s| matches!(s, Schema::Null));
        return idx
            .map(|i| Avro::Union(i as u32, Box::new(Avro::Null)))
            .ok_or_else(|| format!("{path}: null is not allowed"));
    }
    // A union of records is tagged with the record's name; other unions are nullable scalars.
    if let Some(obj) = json.as_object().filter(|o| o.len() == 1) {
        let (tag, inner) = obj.iter().next().expect("one entry");
        if let Some(i) = variants
            .iter()
            .position(|s| union_branch_name(s).as_deref() == Some(tag))
        {
            let v = json_to_avro(&variants[i], inner, &format!("{path}.{tag}"))?;
            return Ok(Avro::Union(i as u32, Box::new(v)));
        }
    }
    let mut errors = Vec::new();
    for (i, s) in variants.iter().enumerate() {
        if matches!(s, Schema::Null) || (union_branch_name(s).is_some() && is_tagged(u)) {
            continue;
        }
        match json_to_avro(s, json, path) {
            Ok(v) => return Ok(Avro::Union(i as u32, Box::new(v))),
            Err(e) => errors.push(e),
        }
    }
    let names: Vec<_> = variants.iter().filter_map(union_branch_name).collect();
    if errors.is_empty() {
        Err(format!(
            "{path}: expected an object tagged with one of {names:?}"
        ))
    } else {
        Err(errors.join("; "))
    }
}

fn schema_kind(s: &Schema) -> &'static str {
    match s {
        Schema::Null => "null",
        Schema::Boolean => "boolean",
        Schema::Int => "int",
        Schema::Long => "long",
        Schema::TimestampMillis => "timestamp-millis",
        Schema::String => "string",
        Schema::Enum(_) => "enum",
        Schema::Array(_) => "array",
        Schema::Map(_) => "map",
        Schema::Union(_) => "union",
        Schema::Record(_) => "record",
        _ => "another Avro type",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::UsageEvent;

    fn good() -> Vec<u8> {
        br#"{"tenant_id":"t","event_id":"e","customer_id":"c","metric_code":"m","timestamp":1,"properties":{}}"#.to_vec()
    }

    #[test]
    fn random_bytes_are_rejected_with_a_reason() {
        let err = decode::<UsageEvent>(&[0x9f, 0x13, 0x77], None).unwrap_err();
        assert!(matches!(err, DecodeError::Json(_)), "{err}");
        let err = decode::<UsageEvent>(&[0x9f, 0x13], Some(b"application/vnd.confluent.avro"))
            .unwrap_err();
        assert_eq!(
            err,
            DecodeError::BadFraming("magic byte is 0x9f, not 0x00".into())
        );
    }

    #[test]
    fn wrong_schema_id_is_rejected() {
        let ev: UsageEvent = decode(&good(), None).unwrap();
        let mut avro = encode(&ev, Encoding::Avro).unwrap();
        avro[4] = 42;
        assert_eq!(
            decode::<UsageEvent>(&avro, None).unwrap_err(),
            DecodeError::WrongSchemaId {
                expected: 1,
                found: 42
            }
        );
    }

    #[test]
    fn missing_field_is_named() {
        let raw = br#"{"tenant_id":"t","event_id":"e","metric_code":"m","timestamp":1}"#;
        let err = decode::<UsageEvent>(raw, Some(b"application/json")).unwrap_err();
        assert!(
            err.to_string().contains("missing field `customer_id`"),
            "{err}"
        );
    }

    #[test]
    fn truncated_and_padded_avro_are_rejected() {
        let ev: UsageEvent = decode(&good(), None).unwrap();
        let avro = encode(&ev, Encoding::Avro).unwrap();
        assert!(matches!(
            decode::<UsageEvent>(&avro[..avro.len() - 2], None),
            Err(DecodeError::Avro(_))
        ));
        let mut padded = avro.clone();
        padded.push(7);
        assert!(matches!(
            decode::<UsageEvent>(&padded, None),
            Err(DecodeError::Avro(_))
        ));
        assert!(matches!(
            decode::<UsageEvent>(&avro[..3], None),
            Err(DecodeError::BadFraming(_))
        ));
    }

    #[test]
    fn unknown_content_type_and_empty_payload() {
        assert_eq!(
            decode::<UsageEvent>(&good(), Some(b"text/csv")).unwrap_err(),
            DecodeError::UnknownContentType("text/csv".into())
        );
        assert_eq!(
            decode::<UsageEvent>(&[], None).unwrap_err(),
            DecodeError::Empty
        );
    }

    #[test]
    fn avro_encoding_rejects_fields_the_schema_lacks() {
        let json: Json = serde_json::from_slice(&good()).unwrap();
        let mut extra = json.clone();
        extra["colour"] = Json::from("red");
        assert!(check_json_shape(SchemaId::Usage, &json).is_ok());
        let err = check_json_shape(SchemaId::Usage, &extra).unwrap_err();
        assert!(err.contains("colour"), "{err}");
    }
}
