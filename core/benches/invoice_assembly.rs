//! Invoice assembly throughput on one core, with a bare-arithmetic baseline measured in the same run.
//!
//! Run: `cargo bench -p billing-core --bench invoice_assembly`

use std::hint::black_box;
use std::time::{Duration, Instant};

use billing_core::charge::{ChargeModel, Usage};
use billing_core::discount::{Coupon, CouponType, Frequency};
use billing_core::invoice::{assemble, Adjustments, DraftLine, LineKind};
use billing_core::tax::TaxRate;
use billing_core::{
    preview_invoice, BillingTime, Currency, Interval, Money, PreviewRequest, ProrationConvention,
    RoundingMode, Schedule,
};
use rust_decimal::Decimal;
use serde_json::json;

/// Runs `f` repeatedly for about `target` and returns calls per second (integer maths: the workspace
/// lints forbid float arithmetic).
fn rate(target: Duration, mut f: impl FnMut()) -> u128 {
    // Warm-up so that caches and branch predictors settle.
    for _ in 0..1_000 {
        f();
    }
    let mut n: u64 = 0;
    let start = Instant::now();
    while start.elapsed() < target {
        for _ in 0..1_000 {
            f();
        }
        n += 1_000;
    }
    u128::from(n) * 1_000_000_000 / start.elapsed().as_nanos().max(1)
}

fn main() {
    let usd = Currency::parse("USD").unwrap();
    let graduated = ChargeModel::from_lago(
        "graduated",
        &json!({"graduated_ranges": [
            {"from_value": 0, "to_value": 1000, "per_unit_amount": "0.01", "flat_amount": "0"},
            {"from_value": 1001, "to_value": 10000, "per_unit_amount": "0.008", "flat_amount": "5"},
            {"from_value": 10001, "to_value": null, "per_unit_amount": "0.005", "flat_amount": "10"}]}),
    )
    .unwrap();
    let volume = ChargeModel::from_lago(
        "volume",
        &json!({"volume_ranges": [
            {"from_value": 0, "to_value": 100, "per_unit_amount": "0.10", "flat_amount": "0"},
            {"from_value": 101, "to_value": null, "per_unit_amount": "0.08", "flat_amount": "1"}]}),
    )
    .unwrap();
    let package = ChargeModel::from_lago(
        "package",
        &json!({"amount": "5", "free_units": 100, "package_size": 50}),
    )
    .unwrap();
    let coupons = [Coupon {
        code: "TEN".into(),
        id: None,
        applies_to: None,
        coupon_type: CouponType::Percentage,
        amount: None,
        percentage_rate: Some(Decimal::TEN),
        frequency: Frequency::Forever,
        frequency_duration: None,
        periods_applied: 0,
        amount_remaining: None,
    }];
    let taxes = [TaxRate {
        code: "vat".into(),
        rate: Decimal::new(20, 0),
        inclusive: false,
    }];
    let tz = chrono_tz::America::New_York;
    let start = "2026-01-10T15:00:00Z".parse().unwrap();
    let schedule = Schedule::new(Interval::Monthly, BillingTime::Calendar, start, tz).unwrap();
    let period = schedule
        .period_containing("2026-03-15T12:00:00Z".parse().unwrap())
        .unwrap();
    let joined = "2026-03-09T00:00:00Z".parse().unwrap();
    let fee = Decimal::new(4900, 2);
    let units = [
        Decimal::new(12_345, 0),
        Decimal::new(150, 0),
        Decimal::new(777, 0),
    ];
    let line = |kind, code: &str, amount: Decimal| DraftLine {
        kind,
        code: code.to_string(),
        description: String::new(),
        amount: Money::new(amount, usd),
        from: None,
        to: None,
        units: None,
        proration_factor: None,
        tax_exempt: false,
        taxes: None,
        breakdown: Vec::new(),
        subscription: None,
        plan: None,
        metric: None,
        adjusts: None,
    };

    // One invoice: prorated fee + 3 usage charges (graduated, volume, package) + coupon + tax.
    let assemble_one = || {
        let u = black_box(&units);
        let f = ProrationConvention::Days
            .factor(&period, black_box(joined), period.end, tz)
            .unwrap();
        let drafts = vec![
            line(LineKind::Subscription, "plan", fee * f),
            line(
                LineKind::Charge,
                "calls",
                graduated.evaluate(&usage(u[0])).unwrap().amount,
            ),
            line(
                LineKind::Charge,
                "storage",
                volume.evaluate(&usage(u[1])).unwrap().amount,
            ),
            line(
                LineKind::Charge,
                "seats",
                package.evaluate(&usage(u[2])).unwrap().amount,
            ),
        ];
        let adj = Adjustments {
            coupons: &coupons,
            taxes: &taxes,
            customer_tax_exempt: false,
            credit_notes: &[],
            prepaid_credits: Decimal::ZERO,
        };
        black_box(assemble(usd, RoundingMode::HalfUp, drafts, &adj).unwrap());
    };

    // Baseline: the bare rust_decimal multiply-adds of the same 4 lines (price × quantity, summed),
    // plus one discount and one tax multiply: what any implementation has to compute at least.
    let prices = [
        Decimal::new(4900, 2),
        Decimal::new(8, 3),
        Decimal::new(8, 2),
        Decimal::new(5, 0),
    ];
    let quantities = [Decimal::new(71, 2), units[0], units[1], Decimal::new(14, 0)];
    let baseline_one = || {
        let (p, q) = (black_box(&prices), black_box(&quantities));
        let mut total = Decimal::ZERO;
        for i in 0..4 {
            total += p[i] * q[i];
        }
        let discounted = total - total * Decimal::new(10, 2);
        black_box(discounted + discounted * Decimal::new(20, 2));
    };

    // Full preview from a deserialized request (parses charge properties and computes periods each time).
    let request: PreviewRequest = serde_json::from_value(json!({
        "currency": "USD",
        "timezone": "America/New_York",
        "plan": {"code": "startup", "amount": "49", "interval": "monthly", "charges": [
            {"code": "calls", "billable_metric": {"code": "call", "aggregation_type": "count_agg"},
             "charge_model": "graduated", "properties": {"graduated_ranges": [
                {"from_value": 0, "to_value": 1000, "per_unit_amount": "0.01", "flat_amount": "0"},
                {"from_value": 1001, "to_value": null, "per_unit_amount": "0.008", "flat_amount": "5"}]}},
            {"code": "storage", "billable_metric": {"code": "gb", "aggregation_type": "max_agg", "field_name": "gb"},
             "charge_model": "volume", "properties": {"volume_ranges": [
                {"from_value": 0, "to_value": 100, "per_unit_amount": "0.10", "flat_amount": "0"},
                {"from_value": 101, "to_value": null, "per_unit_amount": "0.08", "flat_amount": "1"}]}},
            {"code": "seats", "billable_metric": {"code": "seat", "aggregation_type": "sum_agg", "field_name": "n"},
             "charge_model": "package", "properties": {"amount": "5", "free_units": 100, "package_size": 50}}]},
        "subscription": {"started_at": "2026-03-09T15:00:00Z"},
        "period_containing": "2026-03-15T12:00:00Z",
        "aggregates": [
            {"charge": "calls", "units": "12345"},
            {"charge": "storage", "units": "150"},
            {"charge": "seats", "units": "777"}],
        "coupons": [{"code": "TEN", "coupon_type": "percentage", "percentage_rate": "10", "frequency": "forever"}],
        "taxes": [{"code": "vat", "rate": "20"}]
    }))
    .unwrap();
    let preview_one = || {
        black_box(preview_invoice(black_box(request.clone())).unwrap());
    };

    let target = Duration::from_secs(2);
    let baseline = rate(target, baseline_one);
    let assembly = rate(target, assemble_one);
    let preview = rate(target, preview_one);
    println!("invoice_assembly (1 core, 4 lines: prorated fee + graduated + volume + package, 10% coupon, 20% tax)");
    println!("  baseline: bare Decimal multiply-adds      {baseline:>12} invoices/s");
    let ratio = |r: u128| {
        let tenths = baseline * 10 / r.max(1);
        format!("{}.{}", tenths / 10, tenths % 10)
    };
    println!(
        "  assemble: charges + proration + assemble  {assembly:>12} invoices/s  ({}x baseline time)",
        ratio(assembly)
    );
    println!(
        "  preview:  preview_invoice from request    {preview:>12} invoices/s  ({}x baseline time)",
        ratio(preview)
    );
}

fn usage(units: Decimal) -> Usage<'static> {
    Usage {
        units,
        events_count: None,
        event_values: None,
    }
}
