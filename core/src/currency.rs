//! ISO 4217 currencies and their minor units.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// A known ISO 4217 currency; it can only be built from the table below, so its minor units are always right.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency {
    code: &'static str,
    minor_units: u32,
}

/// (code, minor units) from ISO 4217; the most used currencies plus every 0- and 3-decimal one we expect.
const TABLE: &[(&str, u32)] = &[
    ("AED", 2),
    ("ARS", 2),
    ("AUD", 2),
    ("BDT", 2),
    ("BGN", 2),
    ("BHD", 3),
    ("BIF", 0),
    ("BRL", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("CLF", 4),
    ("CLP", 0),
    ("CNY", 2),
    ("COP", 2),
    ("CZK", 2),
    ("DJF", 0),
    ("DKK", 2),
    ("EGP", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("GNF", 0),
    ("HKD", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("IQD", 3),
    ("ISK", 0),
    ("JOD", 3),
    ("JPY", 0),
    ("KES", 2),
    ("KMF", 0),
    ("KRW", 0),
    ("KWD", 3),
    ("LYD", 3),
    ("MAD", 2),
    ("MXN", 2),
    ("MYR", 2),
    ("NGN", 2),
    ("NOK", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PEN", 2),
    ("PHP", 2),
    ("PKR", 2),
    ("PLN", 2),
    ("PYG", 0),
    ("QAR", 2),
    ("RON", 2),
    ("RUB", 2),
    ("RWF", 0),
    ("SAR", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("THB", 2),
    ("TND", 3),
    ("TRY", 2),
    ("TWD", 2),
    ("UAH", 2),
    ("UGX", 0),
    ("USD", 2),
    ("UYU", 2),
    ("VND", 0),
    ("VUV", 0),
    ("XAF", 0),
    ("XOF", 0),
    ("XPF", 0),
    ("ZAR", 2),
];

impl Currency {
    /// Parses an ISO 4217 code (case-insensitive, surrounding spaces ignored).
    pub fn parse(code: &str) -> Result<Self> {
        let upper = code.trim().to_ascii_uppercase();
        TABLE
            .binary_search_by(|(c, _)| (*c).cmp(upper.as_str()))
            .map(|i| Currency {
                code: TABLE[i].0,
                minor_units: TABLE[i].1,
            })
            .map_err(|_| Error::UnknownCurrency(code.to_string()))
    }

    /// The three-letter ISO code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// Number of decimals of the minor unit (USD 2, JPY 0, KWD 3).
    pub fn minor_units(&self) -> u32 {
        self.minor_units
    }

    /// Every currency the core knows, sorted by code.
    pub fn all() -> impl Iterator<Item = Currency> {
        TABLE.iter().map(|(code, minor_units)| Currency {
            code,
            minor_units: *minor_units,
        })
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code)
    }
}

impl FromStr for Currency {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Currency::parse(s)
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.code)
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Currency::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_unique_so_binary_search_works() {
        for w in TABLE.windows(2) {
            assert!(w[0].0 < w[1].0, "{} before {}", w[0].0, w[1].0);
        }
        assert!(TABLE.len() >= 40);
    }

    #[test]
    fn minor_units_of_well_known_currencies() {
        assert_eq!(Currency::parse("USD").unwrap().minor_units(), 2);
        assert_eq!(Currency::parse("eur").unwrap().minor_units(), 2);
        assert_eq!(Currency::parse(" JPY ").unwrap().minor_units(), 0);
        assert_eq!(Currency::parse("KWD").unwrap().minor_units(), 3);
        assert_eq!(Currency::parse("BHD").unwrap().minor_units(), 3);
        assert_eq!(Currency::parse("TND").unwrap().minor_units(), 3);
        assert_eq!(Currency::parse("CHF").unwrap().minor_units(), 2);
        assert_eq!(Currency::parse("GBP").unwrap().code(), "GBP");
    }

    #[test]
    fn unknown_codes_are_rejected() {
        assert!(matches!(
            Currency::parse("XXX"),
            Err(Error::UnknownCurrency(_))
        ));
        assert!(Currency::parse("").is_err());
        assert!(Currency::parse("US").is_err());
    }

    #[test]
    fn serde_round_trip_uses_the_code() {
        let c: Currency = serde_json::from_str("\"kwd\"").unwrap();
        assert_eq!(serde_json::to_string(&c).unwrap(), "\"KWD\"");
        assert!(serde_json::from_str::<Currency>("\"ABC\"").is_err());
    }
}
