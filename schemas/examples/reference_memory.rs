//! Memory of rating's reference state per customer: folds N customers (default 1,000,000) into
//! [`Reference::for_attribution`] with the lifecycle events `billing bench-usage --restart-customers` publishes
//! (created, subscribed, paused) and prints the growth of the process's resident memory (glibc malloc; the billing
//! binary uses mimalloc). `cargo run --release -p billing-schemas --example reference_memory [-- N]`

use billing_schemas::lifecycle::{CustomerCreated, LifecycleEvent};
use billing_schemas::reference::{Customer, Reference, Subscription};
use chrono::TimeZone;

fn resident_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<usize>().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("a number of customers"))
        .unwrap_or(1_000_000);
    let tenant = "bench-tenant";
    let start = chrono::Utc
        .with_ymd_and_hms(2026, 11, 1, 0, 0, 0)
        .single()
        .expect("a valid date");
    let mut reference = Reference::for_attribution();
    let before = resident_bytes();
    for c in 0..n {
        let customer = format!("rst-{c:07}");
        let subscription = format!("sub-{customer}");
        let [created, subscribed] = LifecycleEvent::customer_subscribed(
            tenant,
            CustomerCreated::new(&customer, &customer, "EUR", "UTC"),
            &subscription,
            "bench",
            start,
        );
        let paused = LifecycleEvent::subscription_paused(
            tenant,
            &customer,
            &subscription,
            start + chrono::Duration::days(2),
        );
        for ev in [created, subscribed, paused] {
            reference
                .apply_lifecycle(ev)
                .expect("a valid lifecycle event");
        }
    }
    let grown = resident_bytes().saturating_sub(before);
    println!(
        "{n} customers (3 lifecycle events each): resident memory +{} MiB, {} bytes per customer \
         (size_of Customer {}, Subscription {})",
        grown >> 20,
        grown / n.max(1),
        std::mem::size_of::<Customer>(),
        std::mem::size_of::<Subscription>(),
    );
    std::hint::black_box(&reference);
}
