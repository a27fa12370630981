//! Reading invoices through the API and checking that they reconcile.

use std::time::Duration;

use rust_decimal::Decimal;
use serde_json::Value;

use crate::api::Api;
use crate::eventually;

/// A decimal string of an API answer.
#[track_caller]
pub fn dec(v: &Value) -> Decimal {
    v.as_str()
        .unwrap_or_else(|| panic!("{v} is not a decimal string"))
        .parse()
        .unwrap()
}

/// The customer's invoices, oldest first, once there are at least `n` and none is a draft.
pub async fn issued_invoices(api: &Api, customer: &str, n: usize, wait: Duration) -> Vec<Value> {
    eventually(wait, &format!("{n} invoice(s) of {customer}"), || async {
        let r = api
            .get(&format!("/v1/customers/{customer}/invoices?limit=100"))
            .await;
        let mut data: Vec<Value> = r.body["data"].as_array().cloned().unwrap_or_default();
        data.reverse();
        (data.len() >= n && data.iter().all(|i| i["status"] != "draft")).then_some(data)
    })
    .await
}

/// Every total of an invoice reconciles: Σ line amounts = subtotal, Σ discounts = discount total = Σ coupons,
/// Σ taxes = tax total = Σ applied taxes, Σ line totals = total = subtotal − discounts + exclusive taxes, and
/// amount due = total − credits (never below zero).
#[track_caller]
pub fn reconciles(inv: &Value) {
    let lines = inv["lines"].as_array().unwrap();
    let sum = |f: &str| lines.iter().map(|l| dec(&l[f])).sum::<Decimal>();
    assert_eq!(sum("amount"), dec(&inv["subtotal"]), "{inv}");
    assert_eq!(sum("discount"), dec(&inv["discount_total"]), "{inv}");
    assert_eq!(sum("tax"), dec(&inv["tax_total"]), "{inv}");
    assert_eq!(sum("total"), dec(&inv["total"]), "{inv}");
    let exclusive: Decimal = lines
        .iter()
        .flat_map(|l| l["taxes"].as_array().unwrap().clone())
        .filter(|t| t["inclusive"] == false)
        .map(|t| dec(&t["amount"]))
        .sum();
    assert_eq!(
        dec(&inv["subtotal"]) - dec(&inv["discount_total"]) + exclusive,
        dec(&inv["total"]),
        "{inv}"
    );
    let of = |list: &str| -> Decimal {
        inv[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| dec(&t["amount"]))
            .sum()
    };
    assert_eq!(of("applied_taxes"), dec(&inv["tax_total"]), "{inv}");
    assert_eq!(of("coupons"), dec(&inv["discount_total"]), "{inv}");
    assert_eq!(
        (dec(&inv["total"]) - dec(&inv["credits_total"])).max(Decimal::ZERO),
        dec(&inv["amount_due"]),
        "{inv}"
    );
}
