//! `billing pricing`: the offline pricing simulator, the same code path as the invoicer.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

/// Pricing subcommands.
#[derive(Subcommand)]
pub enum Command {
    /// Evaluate one charge (model, properties, units) and print the amount with its breakdown.
    Charge {
        /// JSON input file, or `-` for stdin.
        file: PathBuf,
    },
    /// Preview an invoice (plan, subscription, usage, period) and print its lines and totals.
    Preview {
        /// JSON input file, or `-` for stdin.
        file: PathBuf,
    },
}

fn read(file: &PathBuf) -> Result<String, String> {
    let mut text = String::new();
    if file.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("reading stdin: {e}"))?;
    } else {
        text = std::fs::read_to_string(file)
            .map_err(|e| format!("reading {}: {e}", file.display()))?;
    }
    Ok(text)
}

fn evaluate(cmd: &Command) -> Result<serde_json::Value, String> {
    match cmd {
        Command::Charge { file } => {
            let req = serde_json::from_str(&read(file)?)
                .map_err(|e| format!("invalid charge request: {e}"))?;
            let resp =
                billing_core::pricing_api::evaluate_charge(req).map_err(|e| e.to_string())?;
            serde_json::to_value(resp).map_err(|e| e.to_string())
        }
        Command::Preview { file } => {
            let req = serde_json::from_str(&read(file)?)
                .map_err(|e| format!("invalid preview request: {e}"))?;
            let resp =
                billing_core::pricing_api::preview_invoice(req).map_err(|e| e.to_string())?;
            serde_json::to_value(resp).map_err(|e| e.to_string())
        }
    }
}

/// Print the result as pretty JSON, or `{"error": …}` on stderr with exit code 2.
pub fn run(cmd: &Command) -> ExitCode {
    match evaluate(cmd) {
        Ok(v) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&v).expect("JSON value serializes")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}", serde_json::json!({ "error": e }));
            ExitCode::from(2)
        }
    }
}
