//! Errors of the billing core.

use thiserror::Error;

/// Every error the pure billing core can return.
///
/// The core does no I/O, so none of these is retryable: the same input always gives the same error.
/// Callers should dead-letter (or reject) the input that caused it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    /// The currency code is not a known ISO 4217 code.
    #[error("unknown currency code {0:?}")]
    UnknownCurrency(String),
    /// Two amounts in different currencies met; the core never converts.
    #[error("currency mismatch: expected {expected}, found {found}")]
    CurrencyMismatch {
        /// The currency of the invoice or first amount.
        expected: String,
        /// The other currency.
        found: String,
    },
    /// A number could not be parsed or is out of its allowed range.
    #[error("invalid number for {field}: {reason}")]
    InvalidNumber {
        /// The field that holds the number.
        field: String,
        /// Why it is invalid.
        reason: String,
    },
    /// Charge properties are inconsistent (missing tiers, bad bounds...).
    #[error("invalid charge properties: {0}")]
    InvalidProperties(String),
    /// A period, date or timezone is invalid.
    #[error("invalid period: {0}")]
    InvalidPeriod(String),
    /// The IANA timezone name is unknown.
    #[error("unknown timezone {0:?}")]
    UnknownTimezone(String),
    /// The charge model needs input that was not given (e.g. per-event values).
    #[error("missing input: {0}")]
    MissingInput(String),
    /// Any other invalid request (subscription changes out of order, bad coupon...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The arithmetic overflowed the 96-bit decimal range.
    #[error("arithmetic overflow in {0}")]
    Overflow(&'static str),
}

impl Error {
    /// Always false: a pure function gives the same error on retry, so the input is permanently bad.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Result alias of the billing core.
pub type Result<T> = std::result::Result<T, Error>;
