//! The Rust types match the `.avsc` files: every golden fixture has exactly the schema's shape, round-trips
//! through both encodings unchanged, and encodes to the committed golden Avro bytes.
//!
//! Regenerate the golden bytes after a deliberate schema change with `UPDATE_GOLDEN=1 cargo test -p billing-schemas`.

use std::path::PathBuf;

use billing_schemas::catalog::CatalogEvent;
use billing_schemas::codec::check_json_shape;
use billing_schemas::invoice::InvoiceEvent;
use billing_schemas::lifecycle::LifecycleEvent;
use billing_schemas::payment::PaymentEvent;
use billing_schemas::usage::UsageEvent;
use billing_schemas::{decode, encode, Encoding, Message, SCHEMAS};

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn check<T: Message + PartialEq + std::fmt::Debug>(stem: &str) {
    let text = std::fs::read_to_string(fixture_path(&format!("{stem}.json"))).unwrap();
    let fixtures: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert!(!fixtures.is_empty(), "{stem}: no fixtures");
    let mut encoded = Vec::new();
    for (i, json) in fixtures.iter().enumerate() {
        check_json_shape(T::SCHEMA, json)
            .unwrap_or_else(|e| panic!("{stem}[{i}] does not fit the schema: {e}"));
        let value: T =
            serde_json::from_value(json.clone()).unwrap_or_else(|e| panic!("{stem}[{i}]: {e}"));
        // The Rust type writes back exactly the fixture's fields.
        let back = serde_json::to_value(&value).unwrap();
        assert_eq!(
            &back, json,
            "{stem}[{i}]: Rust type drops or renames a field"
        );
        check_json_shape(T::SCHEMA, &back).unwrap();

        let avro = encode(&value, Encoding::Avro).unwrap();
        assert_eq!(
            &avro[..5],
            &[0, 0, 0, 0, T::SCHEMA as u8],
            "{stem}[{i}]: Confluent header"
        );
        assert_eq!(
            decode::<T>(&avro, Some(b"application/vnd.confluent.avro")).unwrap(),
            value
        );
        assert_eq!(
            decode::<T>(&avro, None).unwrap(),
            value,
            "{stem}[{i}]: sniffed Avro"
        );
        let json_bytes = encode(&value, Encoding::Json).unwrap();
        assert_eq!(
            decode::<T>(&json_bytes, Some(b"application/json")).unwrap(),
            value
        );
        assert_eq!(
            decode::<T>(&json_bytes, None).unwrap(),
            value,
            "{stem}[{i}]: sniffed JSON"
        );
        encoded.push(to_hex(&avro));
    }
    // Golden bytes must keep decoding to the fixtures: that is the wire compatibility the files pin down.
    // (Byte-for-byte equality of a fresh encoding is not required: Avro leaves the order of map entries open.)
    let golden_path = fixture_path(&format!("{stem}.avro.hex"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden_path, encoded.join("\n") + "\n").unwrap();
    }
    let golden = std::fs::read_to_string(&golden_path).unwrap_or_else(|_| {
        panic!(
            "{} is missing; run with UPDATE_GOLDEN=1",
            golden_path.display()
        )
    });
    let lines: Vec<&str> = golden.lines().collect();
    assert_eq!(
        lines.len(),
        fixtures.len(),
        "{stem}: one golden datum per fixture"
    );
    for (i, (hex, json)) in lines.iter().zip(&fixtures).enumerate() {
        let bytes = from_hex(hex);
        assert_eq!(
            bytes.len(),
            encoded[i].len() / 2,
            "{stem}[{i}]: golden datum length"
        );
        let want: T = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(
            decode::<T>(&bytes, None).unwrap(),
            want,
            "{stem}[{i}]: golden bytes decode to the fixture"
        );
    }
}

#[test]
fn usage_events_match_schema() {
    check::<UsageEvent>("usage_event");
}

#[test]
fn lifecycle_events_match_schema() {
    check::<LifecycleEvent>("lifecycle_event");
}

/// Datums written with an older version of a schema (its golden bytes, under its old id) still decode, resolved
/// to the current type: every field the new version added takes its default.
fn check_older_version<T: Message + PartialEq + std::fmt::Debug>(stem: &str) {
    let fixtures: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(fixture_path(&format!("{stem}.json"))).unwrap(),
    )
    .unwrap();
    let golden = std::fs::read_to_string(fixture_path(&format!("{stem}.avro.hex"))).unwrap();
    let lines: Vec<&str> = golden.lines().collect();
    assert_eq!(
        lines.len(),
        fixtures.len(),
        "{stem}: one golden datum per fixture"
    );
    for (i, (hex, json)) in lines.iter().zip(&fixtures).enumerate() {
        let bytes = from_hex(hex);
        let old_id = u32::from_be_bytes(bytes[1..5].try_into().unwrap());
        assert_ne!(
            old_id,
            T::SCHEMA as u32,
            "{stem}[{i}] is not an older version"
        );
        let want: T = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(
            decode::<T>(&bytes, None).unwrap(),
            want,
            "{stem}[{i}]: old bytes resolve to the current type"
        );
    }
}

#[test]
fn lifecycle_events_of_v1_still_decode() {
    check_older_version::<LifecycleEvent>("lifecycle_event.v1");
}

#[test]
fn catalog_events_of_v1_still_decode() {
    check_older_version::<CatalogEvent>("catalog_event.v1");
}

#[test]
fn invoice_events_of_v1_still_decode() {
    check_older_version::<InvoiceEvent>("invoice_event.v1");
}

#[test]
fn lifecycle_events_of_v2_still_decode() {
    check_older_version::<LifecycleEvent>("lifecycle_event.v2");
}

#[test]
fn invoice_events_of_v2_still_decode() {
    check_older_version::<InvoiceEvent>("invoice_event.v2");
}

#[test]
fn payment_events_of_v2_still_decode() {
    check_older_version::<PaymentEvent>("payment_event.v2");
}

#[test]
fn catalog_events_of_v2_still_decode() {
    check_older_version::<CatalogEvent>("catalog_event.v2");
}

#[test]
fn lifecycle_events_of_v3_still_decode() {
    check_older_version::<LifecycleEvent>("lifecycle_event.v3");
}

#[test]
fn invoice_events_of_v3_still_decode() {
    check_older_version::<InvoiceEvent>("invoice_event.v3");
}

#[test]
fn payment_events_of_v1_still_decode() {
    check_older_version::<PaymentEvent>("payment_event.v1");
}

#[test]
fn catalog_events_match_schema() {
    check::<CatalogEvent>("catalog_event");
}

#[test]
fn invoice_events_match_schema() {
    check::<InvoiceEvent>("invoice_event");
}

#[test]
fn payment_events_match_schema() {
    check::<PaymentEvent>("payment_event");
}

#[test]
fn every_avsc_file_is_registered_and_has_a_fixture() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("avro");
    let mut on_disk: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".avsc"))
        .collect();
    on_disk.sort();
    let mut registered: Vec<String> = SCHEMAS.iter().map(|(_, f, _)| f.to_string()).collect();
    registered.sort();
    assert_eq!(on_disk, registered);
    for f in registered {
        let stem = f.trim_end_matches(".avsc");
        assert!(
            fixture_path(&format!("{stem}.json")).exists(),
            "{stem} has no fixture"
        );
    }
}

#[test]
fn json_numbers_in_properties_keep_their_exact_text() {
    let raw = br#"{"tenant_id":"t","event_id":"e","customer_id":"c","metric_code":"m",
        "timestamp":"2026-01-01T00:00:00Z","properties":{"value":0.1000000000000000000001,"n":3,"ok":true}}"#;
    let ev: UsageEvent = decode(raw, Some(b"application/json")).unwrap();
    assert_eq!(ev.properties["value"], "0.1000000000000000000001");
    assert_eq!(ev.properties["n"], "3");
    assert_eq!(ev.properties["ok"], "true");
    assert_eq!(ev.timestamp.timestamp_millis(), 1_767_225_600_000);
}
