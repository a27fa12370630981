//! `billing pricing` as a user runs it: every documented example goes through the binary and gives exactly what
//! the core library gives (one code path), and bad input is a JSON error with exit code 2.

use std::path::PathBuf;
use std::process::Command;

fn examples() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/pricing");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_billing"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn every_documented_example_runs_through_the_binary() {
    let files = examples();
    assert!(files.len() >= 2, "examples exist: {files:?}");
    for file in files {
        let name = file.file_name().unwrap().to_str().unwrap().to_owned();
        let input = std::fs::read_to_string(&file).unwrap();
        let (sub, expected) = if name.starts_with("charge-") {
            let req = serde_json::from_str(&input).unwrap();
            (
                "charge",
                serde_json::to_value(billing_core::pricing_api::evaluate_charge(req).unwrap())
                    .unwrap(),
            )
        } else {
            let req = serde_json::from_str(&input).unwrap();
            (
                "preview",
                serde_json::to_value(billing_core::pricing_api::preview_invoice(req).unwrap())
                    .unwrap(),
            )
        };
        let (code, stdout, stderr) = run(&["pricing", sub, file.to_str().unwrap()]);
        assert_eq!(code, 0, "{name}: {stderr}");
        let got: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(got, expected, "{name}");
        assert!(got.get("total").is_some(), "{name} has a total");
    }
}

#[test]
fn bad_input_is_a_json_error_with_exit_code_2() {
    let dir = std::env::temp_dir().join(format!("billing-pricing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"currency": "XXX", "charge_model": "standard", "properties": {"amount": "1"}, "units": "1"}"#).unwrap();
    let (code, stdout, stderr) = run(&["pricing", "charge", bad.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(stdout.is_empty());
    let err: serde_json::Value = serde_json::from_str(stderr.trim()).unwrap();
    assert!(err["error"].as_str().unwrap().contains("XXX"), "{err}");

    let (code, _, stderr) = run(&[
        "pricing",
        "preview",
        dir.join("missing.json").to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(stderr.contains("reading"), "{stderr}");
}
