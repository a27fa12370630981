//! `billing analytics mrr-chart`: a tenant's MRR over a range of months as an SVG chart (ending MRR per month, with
//! the month's movements), from the same report as `GET /v1/analytics/mrr` and `reports/mrr.sql`.
//!
//! Pixel sizes are computed with decimals and rounded to whole pixels: money never goes through a float.

use std::path::PathBuf;

use anyhow::Context;
use billing_runtime::Settings;
use billing_store::analytics::{self, decimal, MrrReportRow, Report, Selection};
use chrono::{Months, NaiveDate};
use rust_decimal::Decimal;

/// `billing analytics`.
#[derive(clap::Subcommand)]
pub enum AnalyticsCommand {
    /// Draw a tenant's MRR month by month (SVG).
    MrrChart(ChartArgs),
}

/// `billing analytics mrr-chart`.
#[derive(clap::Args)]
pub struct ChartArgs {
    /// The tenant.
    #[arg(long)]
    tenant: String,
    /// The currency charted (MRR is never converted between currencies).
    #[arg(long, default_value = "EUR")]
    currency: String,
    /// First month, YYYY-MM.
    #[arg(long)]
    from: String,
    /// Last month, YYYY-MM.
    #[arg(long)]
    to: String,
    /// Where to write the SVG.
    #[arg(long)]
    out: PathBuf,
}

fn month(name: &str, raw: &str) -> anyhow::Result<NaiveDate> {
    NaiveDate::parse_from_str(&format!("{raw}-01"), "%Y-%m-%d")
        .ok()
        .filter(|_| raw.len() == 7)
        .with_context(|| format!("--{name} {raw:?} is not a month (YYYY-MM)"))
}

/// Run a subcommand.
pub async fn run(settings: Settings, cmd: AnalyticsCommand) -> anyhow::Result<()> {
    let AnalyticsCommand::MrrChart(args) = cmd;
    let (from, to) = (month("from", &args.from)?, month("to", &args.to)?);
    anyhow::ensure!(from <= to, "--from is after --to");
    let months = months_of(from, to);
    anyhow::ensure!(months.len() <= 120, "at most 120 months");
    let currency = args.currency.to_ascii_uppercase();
    let ch = billing_runtime::clickhouse::client(&settings.clickhouse);
    let sel = Selection {
        tenant: &args.tenant,
        from,
        to,
        filters: vec![("currency", currency.clone())],
        after: None,
        limit: 1000,
    };
    let rows: Vec<MrrReportRow> = billing_runtime::clickhouse::bounded(
        std::time::Duration::from_secs(30),
        "the MRR report",
        analytics::run(&ch, Report::Mrr, &sel),
    )
    .await?;
    let points: Vec<Point> = months
        .iter()
        .map(|m| {
            let r = rows.iter().find(|r| analytics::date(r.month) == *m);
            Point {
                month: *m,
                ending: r.map_or(Decimal::ZERO, |r| decimal(r.ending_mrr)),
                new: r.map_or(Decimal::ZERO, |r| decimal(r.new_mrr)),
                expansion: r.map_or(Decimal::ZERO, |r| decimal(r.expansion_mrr)),
                contraction: r.map_or(Decimal::ZERO, |r| decimal(r.contraction_mrr)),
                churned: r.map_or(Decimal::ZERO, |r| decimal(r.churned_mrr)),
                customers: r.map_or(0, |r| r.customers),
            }
        })
        .collect();
    let title = format!("MRR of {} ({currency})", args.tenant);
    std::fs::write(&args.out, svg(&title, &currency, &points))
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "{}: {} months, ending MRR {} {currency}",
        args.out.display(),
        points.len(),
        points
            .last()
            .map_or(Decimal::ZERO, |p| p.ending)
            .normalize()
    );
    Ok(())
}

fn months_of(from: NaiveDate, to: NaiveDate) -> Vec<NaiveDate> {
    let mut out = Vec::new();
    let mut m = from;
    while m <= to {
        out.push(m);
        m = m + Months::new(1);
    }
    out
}

/// One month of the chart.
#[derive(Debug, Clone)]
pub struct Point {
    /// First day of the month.
    pub month: NaiveDate,
    /// MRR at the month's end.
    pub ending: Decimal,
    /// Movements of the month.
    pub new: Decimal,
    /// Expansion.
    pub expansion: Decimal,
    /// Contraction.
    pub contraction: Decimal,
    /// Churn.
    pub churned: Decimal,
    /// Customers with MRR at the month's end.
    pub customers: u64,
}

const WIDTH: i64 = 760;
const HEIGHT: i64 = 360;
const LEFT: i64 = 70;
const TOP: i64 = 50;
const PLOT_HEIGHT: i64 = 220;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `v / max` of `span` pixels, rounded to a whole pixel (0 when `max` is 0).
fn pixels(v: Decimal, max: Decimal, span: i64) -> i64 {
    if max <= Decimal::ZERO || v <= Decimal::ZERO {
        return 0;
    }
    let px = (v * Decimal::from(span) / max).round();
    i64::try_from(px.mantissa() / 10i128.pow(px.scale())).unwrap_or(span)
}

/// The chart: a bar of ending MRR per month (its value above it), the month and its movements below.
pub fn svg(title: &str, currency: &str, points: &[Point]) -> String {
    let max = points
        .iter()
        .map(|p| p.ending)
        .max()
        .unwrap_or(Decimal::ZERO);
    let n = points.len().max(1) as i64;
    let slot = (WIDTH - LEFT - 20) / n;
    let bar = (slot * 3 / 5).max(4);
    let base = TOP + PLOT_HEIGHT;
    let mut out = String::new();
    out.push_str(&format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"sans-serif\" font-size=\"11\">\n"
    ));
    out.push_str(&format!(
        "<rect width=\"{WIDTH}\" height=\"{HEIGHT}\" fill=\"#ffffff\"/>\n<text x=\"{LEFT}\" y=\"24\" font-size=\"15\" font-weight=\"bold\">{}</text>\n",
        esc(title)
    ));
    out.push_str(&format!(
        "<line x1=\"{LEFT}\" y1=\"{base}\" x2=\"{}\" y2=\"{base}\" stroke=\"#333333\"/>\n<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n<text x=\"{}\" y=\"{}\" text-anchor=\"end\">0</text>\n",
        WIDTH - 20,
        LEFT - 6,
        TOP + 4,
        esc(&format!("{} {currency}", max.normalize())),
        LEFT - 6,
        base + 4,
    ));
    for (i, p) in points.iter().enumerate() {
        let x = LEFT + slot * i as i64 + (slot - bar) / 2;
        let h = pixels(p.ending, max, PLOT_HEIGHT);
        let cx = x + bar / 2;
        out.push_str(&format!(
            "<rect class=\"mrr\" data-month=\"{}\" data-mrr=\"{}\" x=\"{x}\" y=\"{}\" width=\"{bar}\" height=\"{h}\" fill=\"#3b6ea5\"/>\n",
            p.month.format("%Y-%m"),
            p.ending.normalize(),
            base - h
        ));
        out.push_str(&format!(
            "<text x=\"{cx}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n<text x=\"{cx}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
            base - h - 5,
            p.ending.normalize(),
            base + 16,
            p.month.format("%Y-%m"),
        ));
        let moves = [
            ("+", p.new + p.expansion, "#2e7d32"),
            ("-", p.contraction + p.churned, "#c62828"),
        ];
        for (k, (sign, v, colour)) in moves.iter().enumerate() {
            if !v.is_zero() {
                out.push_str(&format!(
                    "<text x=\"{cx}\" y=\"{}\" text-anchor=\"middle\" fill=\"{colour}\">{sign}{}</text>\n",
                    base + 32 + 14 * k as i64,
                    v.normalize()
                ));
            }
        }
        out.push_str(&format!(
            "<text x=\"{cx}\" y=\"{}\" text-anchor=\"middle\" fill=\"#666666\">{} cust.</text>\n",
            base + 62,
            p.customers
        ));
    }
    out.push_str(&format!(
        "<text x=\"{LEFT}\" y=\"{}\" fill=\"#666666\">Bars: MRR at the month's end. Green: new + expansion; red: contraction + churn (docs/analytics.md).</text>\n</svg>\n",
        HEIGHT - 10
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn bars_are_proportional_and_labelled() {
        let p = |m: u32, ending: &str, new: &str, churned: &str| Point {
            month: NaiveDate::from_ymd_opt(2026, m, 1).unwrap(),
            ending: d(ending),
            new: d(new),
            expansion: Decimal::ZERO,
            contraction: Decimal::ZERO,
            churned: d(churned),
            customers: 2,
        };
        let s = svg(
            "MRR of a<b",
            "EUR",
            &[
                p(1, "100", "100", "0"),
                p(2, "50", "0", "50"),
                p(3, "0", "0", "50"),
            ],
        );
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert!(s.contains("MRR of a&lt;b"));
        // The tallest bar is the plot's height; the others in proportion.
        assert!(s.contains("data-month=\"2026-01\" data-mrr=\"100\" x=\"115\" y=\"50\" width=\"133\" height=\"220\""), "{s}");
        assert!(s.contains("data-month=\"2026-02\" data-mrr=\"50\" x=\"338\" y=\"160\" width=\"133\" height=\"110\""), "{s}");
        assert!(s.contains("data-month=\"2026-03\" data-mrr=\"0\""));
        assert!(s.contains(">+100<") && s.contains(">-50<"));
        assert_eq!(s.matches("<rect class=\"mrr\"").count(), 3);
        assert_eq!(pixels(d("1"), d("3"), 220), 73);
        assert_eq!(pixels(d("2"), d("3"), 220), 147);
        assert_eq!(pixels(d("5"), Decimal::ZERO, 220), 0);
        assert_eq!(
            months_of(
                NaiveDate::from_ymd_opt(2025, 11, 1).unwrap(),
                NaiveDate::from_ymd_opt(2026, 2, 1).unwrap()
            )
            .len(),
            4
        );
    }
}
