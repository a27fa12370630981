//! The crate map's one rule: service crates depend only on the shared crates, never on each other, and shared
//! crates never on a service. `cli` and `tests` may use everything. What two services share moves down a floor.

use std::path::{Path, PathBuf};

const SERVICES: &[&str] = &[
    "ingest",
    "rating",
    "invoicer",
    "payments",
    "query-api",
    "webhooks",
];
const SHARED: &[&str] = &["core", "schemas", "store", "runtime"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `billing-*` crates a manifest names in any dependency table (normal, dev, build, target-specific).
fn billing_dependencies(manifest: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_deps = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_deps = line.trim_matches(['[', ']']).ends_with("dependencies");
            continue;
        }
        if in_deps {
            if let Some(name) = line.split(['=', '.', ' ']).next() {
                if let Some(krate) = name.strip_prefix("billing-") {
                    out.push(krate.to_owned());
                }
            }
        }
    }
    out
}

#[test]
fn services_depend_only_on_shared_crates() {
    let mut broken = Vec::new();
    for service in SERVICES {
        let manifest = std::fs::read_to_string(root().join(service).join("Cargo.toml")).unwrap();
        for dep in billing_dependencies(&manifest) {
            // Crate names are billing-<folder>.
            if !SHARED.contains(&dep.as_str()) {
                broken.push(format!("{service} depends on billing-{dep}"));
            }
        }
    }
    assert!(broken.is_empty(), "layering broken: {broken:?}");
}

#[test]
fn shared_crates_never_depend_on_a_service() {
    let mut broken = Vec::new();
    for shared in SHARED {
        let manifest = std::fs::read_to_string(root().join(shared).join("Cargo.toml")).unwrap();
        for dep in billing_dependencies(&manifest) {
            if SERVICES.contains(&dep.as_str()) {
                broken.push(format!("{shared} depends on billing-{dep}"));
            }
        }
    }
    assert!(broken.is_empty(), "layering broken: {broken:?}");
}

#[test]
fn every_workspace_member_is_classified() {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let members: Vec<&str> = manifest
        .split("members = [")
        .nth(1)
        .unwrap()
        .split(']')
        .next()
        .unwrap()
        .split(',')
        .map(|m| m.trim().trim_matches('"'))
        .filter(|m| !m.is_empty())
        .collect();
    for m in &members {
        assert!(
            SERVICES.contains(m) || SHARED.contains(m) || ["cli", "tests"].contains(m),
            "workspace member {m} is neither a service nor a shared crate: classify it here"
        );
    }
    assert_eq!(members.len(), SERVICES.len() + SHARED.len() + 2);
}

#[test]
fn the_check_catches_a_service_importing_another() {
    let bad = "[package]\nname = \"billing-rating\"\n\n[dependencies]\nbilling-core.workspace = true\n\
               billing-ingest = { path = \"../ingest\" }\n\n[dev-dependencies]\nbilling-query-api.workspace = true\n";
    assert_eq!(
        billing_dependencies(bad),
        vec![
            "core".to_owned(),
            "ingest".to_owned(),
            "query-api".to_owned()
        ]
    );
}
