//! Pure billing domain. No I/O, no clock, no async.
//!
//! Money is exact (`rust_decimal`), every line keeps its precise value and is rounded once to the
//! currency's minor unit, and time always comes in as arguments.

#![warn(missing_docs)]

pub mod aggregation;
pub mod attribution;
pub mod charge;
pub mod credit_note;
pub mod currency;
pub mod discount;
pub mod error;
pub mod invoice;
pub mod invoicing;
pub mod money;
pub mod mrr;
pub mod period;
pub mod pricing_api;
pub mod proration;
pub mod subscription;
pub mod tax;
pub mod usage_pricing;

pub use currency::Currency;
pub use error::{Error, Result};
pub use money::{Money, Quantity, RoundingMode};
pub use period::{BillingAnchor, BillingPeriod, BillingTime, Interval, Schedule};
pub use pricing_api::{
    evaluate_charge, preview_invoice, ChargeRequest, ChargeResponse, PreviewRequest,
    PreviewResponse,
};
pub use proration::ProrationConvention;
