//! Avro binary datums read straight into the Rust types, guided by the writer's schema: a serde `Deserializer`
//! over the bytes that presents each datum exactly as the JSON encoding of `codec` writes it (a record is a map of
//! its fields, a union of records is a one-entry map tagged with the record's name, a nullable value is the value or
//! null, an enum is its symbol, a timestamp is epoch milliseconds). The Rust types' own `Deserialize` impls then do
//! what they do for JSON: defaults for fields an older schema lacks, the same checks, the same errors.
//!
//! It replaces reading an Avro value and turning it into JSON first (two trees allocated per datum), which was
//! most of the time a restart spent reading `billing.lifecycle`. A test checks it against that path over every
//! golden datum of every schema version and over corruptions of them.

use std::fmt;

use apache_avro::schema::{RecordField, Schema, UnionSchema};
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

use crate::codec::{is_tagged, DecodeError};

/// Avro's binary encoding, read front to back.
pub(crate) struct AvroReader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> AvroReader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        AvroReader { bytes, at: 0 }
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    /// A zig-zag varint of at most ten bytes.
    pub(crate) fn long(&mut self) -> Result<i64, DecodeError> {
        let mut raw: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.bytes.get(self.at) else {
                return Err(DecodeError::Avro("the datum ends inside a number".into()));
            };
            self.at += 1;
            raw |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64));
            }
        }
        Err(DecodeError::Avro(
            "a number is longer than ten bytes".into(),
        ))
    }

    /// An `int`: a varint that fits 32 bits.
    fn int(&mut self) -> Result<i32, DecodeError> {
        let v = self.long()?;
        i32::try_from(v).map_err(|_| DecodeError::Avro(format!("int {v} is out of range")))
    }

    /// A length-prefixed UTF-8 string, borrowed from the datum.
    pub(crate) fn str(&mut self) -> Result<&'a str, DecodeError> {
        let len = self.long()?;
        let len = usize::try_from(len)
            .map_err(|_| DecodeError::Avro(format!("negative string length {len}")))?;
        let end = self
            .at
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| {
                DecodeError::Avro(format!("a string of {len} bytes overruns the datum"))
            })?;
        let text = std::str::from_utf8(&self.bytes[self.at..end])
            .map_err(|e| DecodeError::Avro(format!("a string is not UTF-8: {e}")))?;
        self.at = end;
        Ok(text)
    }

    /// A length-prefixed UTF-8 string.
    pub(crate) fn string(&mut self) -> Result<String, DecodeError> {
        self.str().map(str::to_owned)
    }

    fn boolean(&mut self) -> Result<bool, DecodeError> {
        let Some(&b) = self.bytes.get(self.at) else {
            return Err(DecodeError::Avro("the datum ends inside a boolean".into()));
        };
        self.at += 1;
        match b {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(DecodeError::Avro(format!(
                "boolean byte {other:#04x} is neither 0 nor 1"
            ))),
        }
    }

    /// The item count of the next block of an array or a map (0: the end).
    fn block(&mut self) -> Result<usize, DecodeError> {
        let count = self.long()?;
        if count < 0 {
            // A negative count is followed by the block's size in bytes.
            self.long()?;
        }
        let count = count.unsigned_abs();
        // Every item of our schemas takes at least one byte: a count beyond what is left is corrupt, and is not
        // allowed to drive a loop.
        usize::try_from(count)
            .ok()
            .filter(|c| *c <= self.remaining())
            .ok_or_else(|| {
                DecodeError::Avro(format!("a block of {count} items overruns the datum"))
            })
    }
}

/// Read a whole datum of `schema` as a `T`; trailing bytes are an error.
pub(crate) fn from_datum<T: de::DeserializeOwned>(
    schema: &Schema,
    datum: &[u8],
) -> Result<T, DecodeError> {
    let mut reader = AvroReader::new(datum);
    let value = T::deserialize(Datum {
        schema,
        tag: None,
        r: &mut reader,
    })
    .map_err(|e| match e {
        Error::Bytes(d) => d,
        Error::Shape(s) => DecodeError::Json(s),
    })?;
    if reader.remaining() != 0 {
        return Err(DecodeError::Avro(format!(
            "{} trailing bytes after the datum",
            reader.remaining()
        )));
    }
    Ok(value)
}

/// Why a datum could not be read: its bytes are not a datum of the schema, or the value does not fit the type
/// (the JSON path's error).
#[derive(Debug)]
enum Error {
    Bytes(DecodeError),
    Shape(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Bytes(e) => e.fmt(f),
            Error::Shape(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error::Shape(msg.to_string())
    }
}

impl From<DecodeError> for Error {
    fn from(e: DecodeError) -> Self {
        Error::Bytes(e)
    }
}

/// The value at the reader's position, of `schema`; `tag`: the record name of a union branch already read, which
/// the JSON form shows as a one-entry map around the record.
struct Datum<'s, 'a, 'r> {
    schema: &'s Schema,
    tag: Option<&'s str>,
    r: &'r mut AvroReader<'a>,
}

impl<'s, 'a, 'r> Datum<'s, 'a, 'r> {
    fn of(schema: &'s Schema, r: &'r mut AvroReader<'a>) -> Self {
        Datum {
            schema,
            tag: None,
            r,
        }
    }

    /// Read a union's branch index: the branch, tagged when the JSON form tags it.
    fn branch(self, u: &'s UnionSchema) -> Result<Datum<'s, 'a, 'r>, Error> {
        let idx = self.r.long()?;
        let branch = usize::try_from(idx)
            .ok()
            .and_then(|i| u.variants().get(i))
            .ok_or_else(|| {
                DecodeError::Avro(format!(
                    "union index {idx} is not one of {} branches",
                    u.variants().len()
                ))
            })?;
        let tag = match branch {
            Schema::Record(rec) if is_tagged(u) => Some(rec.name.name.as_str()),
            _ => None,
        };
        Ok(Datum {
            schema: branch,
            tag,
            r: self.r,
        })
    }
}

impl<'de> de::Deserializer<'de> for Datum<'_, '_, '_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if let Some(tag) = self.tag {
            return visitor.visit_map(Tagged {
                tag: Some(tag),
                value: Some(Datum { tag: None, ..self }),
            });
        }
        match self.schema {
            Schema::Null => visitor.visit_unit(),
            Schema::Boolean => visitor.visit_bool(self.r.boolean()?),
            Schema::Int => visitor.visit_i32(self.r.int()?),
            Schema::Long | Schema::TimestampMillis => visitor.visit_i64(self.r.long()?),
            Schema::String => visitor.visit_str(self.r.str()?),
            Schema::Enum(e) => {
                let symbol = enum_symbol(e, self.r)?;
                visitor.visit_str(symbol)
            }
            Schema::Array(a) => visitor.visit_seq(Blocks::new(&a.items, self.r)),
            Schema::Map(m) => visitor.visit_map(Blocks::new(&m.types, self.r)),
            Schema::Record(rec) => visitor.visit_map(Fields {
                fields: &rec.fields,
                next: 0,
                r: self.r,
            }),
            Schema::Union(u) => self.branch(u)?.deserialize_any(visitor),
            other => Err(unused(other)),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.schema {
            Schema::Union(u) if self.tag.is_none() => self.branch(u)?.deserialize_option(visitor),
            Schema::Null if self.tag.is_none() => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        if let Some(tag) = self.tag {
            return visitor.visit_enum(Variant {
                tag,
                value: Datum { tag: None, ..self },
            });
        }
        match self.schema {
            Schema::Enum(e) => {
                let symbol = enum_symbol(e, self.r)?;
                visitor.visit_enum(symbol.into_deserializer())
            }
            Schema::String => visitor.visit_enum(self.r.str()?.into_deserializer()),
            Schema::Union(u) => self.branch(u)?.deserialize_enum(_name, _variants, visitor),
            // What JSON would refuse too: an enum is a string or a one-entry object.
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf unit unit_struct seq
        tuple tuple_struct map struct identifier ignored_any
    }
}

fn enum_symbol<'s>(
    e: &'s apache_avro::schema::EnumSchema,
    r: &mut AvroReader<'_>,
) -> Result<&'s str, Error> {
    let idx = r.int()?;
    usize::try_from(idx)
        .ok()
        .and_then(|i| e.symbols.get(i))
        .map(String::as_str)
        .ok_or_else(|| {
            Error::Bytes(DecodeError::Avro(format!(
                "enum index {idx} is not one of {} symbols",
                e.symbols.len()
            )))
        })
}

fn unused(schema: &Schema) -> Error {
    Error::Shape(format!(
        "schema type {schema:?} is not used by billing schemas"
    ))
}

/// A record's fields as a map from field name to value, in schema order.
struct Fields<'s, 'a, 'r> {
    fields: &'s [RecordField],
    next: usize,
    r: &'r mut AvroReader<'a>,
}

impl<'de> de::MapAccess<'de> for Fields<'_, '_, '_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        match self.fields.get(self.next) {
            Some(f) => seed
                .deserialize(f.name.as_str().into_deserializer())
                .map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let f = &self.fields[self.next];
        self.next += 1;
        seed.deserialize(Datum::of(&f.schema, self.r))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.fields.len() - self.next)
    }
}

/// A union branch that is a record, as the one-entry map `{"Record": {...}}`.
struct Tagged<'s, 'a, 'r> {
    tag: Option<&'s str>,
    value: Option<Datum<'s, 'a, 'r>>,
}

impl<'de> de::MapAccess<'de> for Tagged<'_, '_, '_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        match self.tag.take() {
            Some(tag) => seed.deserialize(tag.into_deserializer()).map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let value = self
            .value
            .take()
            .ok_or_else(|| Error::Shape("a tagged union has one value".into()))?;
        seed.deserialize(value)
    }
}

/// A tagged union branch as an enum variant named after the record.
struct Variant<'s, 'a, 'r> {
    tag: &'s str,
    value: Datum<'s, 'a, 'r>,
}

impl<'de, 's, 'a, 'r> de::EnumAccess<'de> for Variant<'s, 'a, 'r> {
    type Error = Error;
    type Variant = Datum<'s, 'a, 'r>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), Error> {
        let tag: de::value::StrDeserializer<'_, Error> = self.tag.into_deserializer();
        let name = seed.deserialize(tag)?;
        Ok((name, self.value))
    }
}

impl<'de> de::VariantAccess<'de> for Datum<'_, '_, '_> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        de::Deserialize::deserialize(self)
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_any(self, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_any(self, visitor)
    }
}

/// The items of an array or the entries of a map, block by block.
struct Blocks<'s, 'a, 'r> {
    /// The items' (the values') schema.
    schema: &'s Schema,
    /// Items left in the current block.
    left: usize,
    /// The final, empty block was read.
    done: bool,
    r: &'r mut AvroReader<'a>,
}

impl<'s, 'a, 'r> Blocks<'s, 'a, 'r> {
    fn new(schema: &'s Schema, r: &'r mut AvroReader<'a>) -> Self {
        Blocks {
            schema,
            left: 0,
            done: false,
            r,
        }
    }

    /// Whether another item follows (reading the next block's count when the current one is used up).
    fn another(&mut self) -> Result<bool, Error> {
        if self.done {
            return Ok(false);
        }
        if self.left == 0 {
            self.left = self.r.block()?;
            if self.left == 0 {
                self.done = true;
                return Ok(false);
            }
        }
        self.left -= 1;
        Ok(true)
    }
}

/// An array's items.
impl<'de> de::SeqAccess<'de> for Blocks<'_, '_, '_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        if !self.another()? {
            return Ok(None);
        }
        seed.deserialize(Datum::of(self.schema, self.r)).map(Some)
    }
}

/// A map's entries (keys are strings).
impl<'de> de::MapAccess<'de> for Blocks<'_, '_, '_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        if !self.another()? {
            return Ok(None);
        }
        let key = self.r.str()?;
        seed.deserialize(key.into_deserializer()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        seed.deserialize(Datum::of(self.schema, self.r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::CatalogEvent;
    use crate::codec::{decode_avro_value, decode_avro_value_via_json};
    use crate::invoice::InvoiceEvent;
    use crate::lifecycle::LifecycleEvent;
    use crate::payment::PaymentEvent;
    use crate::registry::{Message, SchemaId, SCHEMAS};
    use crate::usage::UsageEvent;

    /// The golden datums of a schema file (frame split off), as the conformance tests pin them.
    fn golden(file: &str) -> Vec<Vec<u8>> {
        let stem = file.trim_end_matches(".avsc");
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(format!("{stem}.avro.hex"));
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .lines()
            .map(|hex| {
                (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                    .skip(5)
                    .collect()
            })
            .collect()
    }

    /// Both paths on one datum: the same value, or both refuse. Returns whether it was read.
    fn agree<T: Message + PartialEq + fmt::Debug>(id: SchemaId, datum: &[u8], what: &str) -> bool {
        let direct = decode_avro_value::<T>(id, datum);
        let apache = decode_avro_value_via_json::<T>(id, datum);
        match (&direct, &apache) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{what}"),
            (Err(_), Err(_)) => {}
            // apache-avro takes the end of the datum, where a block count is due, for a count of 0.
            (Err(DecodeError::Avro(e)), Ok(_))
                if e.contains("ends inside") || e.contains("overruns the datum") => {}
            _ => panic!("{what}: direct {direct:?}, apache-avro {apache:?}"),
        }
        direct.is_ok()
    }

    /// Every golden datum, every truncation of it, one byte more, and every byte replaced by a few others.
    fn check<T: Message + PartialEq + fmt::Debug>(id: SchemaId, file: &str) -> (usize, usize) {
        let (mut read, mut refused) = (0, 0);
        let datums = golden(file);
        assert!(!datums.is_empty(), "{file}: no golden datum");
        for (n, datum) in datums.iter().enumerate() {
            assert!(
                agree::<T>(id, datum, &format!("{file}[{n}]")),
                "{file}[{n}] is not read"
            );
            // Cut short, it is refused. (apache-avro reads a datum that ends where an array's or a map's block
            // count is due as if the count were 0; a producer's datum is never cut there on purpose.)
            for cut in 0..datum.len() {
                let cut_short = decode_avro_value::<T>(id, &datum[..cut]);
                assert!(
                    cut_short.is_err(),
                    "{file}[{n}] cut at {cut}: {cut_short:?}"
                );
            }
            let mut longer = datum.clone();
            longer.push(0);
            assert!(!agree::<T>(
                id,
                &longer,
                &format!("{file}[{n}] with a byte more")
            ));
            for at in 0..datum.len() {
                for b in [0x00, 0x01, 0x02, 0x7f, 0x80, 0xff, datum[at] ^ 0x01] {
                    let mut bad = datum.clone();
                    bad[at] = b;
                    let what = format!("{file}[{n}] byte {at} = {b:#04x}");
                    if agree::<T>(id, &bad, &what) {
                        read += 1;
                    } else {
                        refused += 1;
                    }
                }
            }
        }
        (read, refused)
    }

    #[test]
    fn every_golden_datum_and_its_corruptions_read_as_apache_avro_reads_them() {
        let (mut read, mut refused) = (0, 0);
        for (id, file, _) in SCHEMAS {
            let (r, f) = match id.current() {
                SchemaId::Usage => check::<UsageEvent>(id, file),
                SchemaId::Lifecycle => check::<LifecycleEvent>(id, file),
                SchemaId::Catalog => check::<CatalogEvent>(id, file),
                SchemaId::Invoice => check::<InvoiceEvent>(id, file),
                SchemaId::Payment => check::<PaymentEvent>(id, file),
                other => panic!("{other:?} is not a current schema"),
            };
            read += r;
            refused += f;
        }
        // Corruptions both accept (a changed letter) and both refuse must each be common, or the comparison
        // proves little.
        assert!(
            read > 1_000 && refused > 1_000,
            "{read} read / {refused} refused"
        );
    }
}
