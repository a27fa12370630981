//! ScyllaDB / Cassandra: session builder and exact decimal conversion.

use rust_decimal::Decimal;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::value::CqlDecimal;

use crate::config::CassandraConfig;

/// Connect to the cluster (no keyspace selected; statements name it).
pub async fn connect(cfg: &CassandraConfig) -> anyhow::Result<Session> {
    Ok(SessionBuilder::new()
        .known_nodes(&cfg.nodes)
        .build()
        .await?)
}

/// Answer a trivial query: proves the node serves CQL.
pub async fn ping(session: &Session) -> Result<(), String> {
    session
        .query_unpaged("SELECT release_version FROM system.local", ())
        .await
        .map(|_| ())
        .map_err(|e| format!("cql: {e}"))
}

/// A `rust_decimal` as a CQL `decimal`, exactly.
pub fn to_cql_decimal(d: Decimal) -> CqlDecimal {
    let bytes = d.mantissa().to_be_bytes();
    // Minimal two's-complement encoding: drop leading bytes that only repeat the sign.
    let mut start = 0;
    while start < bytes.len() - 1 {
        let (b, next) = (bytes[start], bytes[start + 1]);
        if (b == 0x00 && next & 0x80 == 0) || (b == 0xff && next & 0x80 != 0) {
            start += 1;
        } else {
            break;
        }
    }
    CqlDecimal::from_signed_be_bytes_slice_and_exponent(&bytes[start..], d.scale() as i32)
}

/// A CQL `decimal` as a `rust_decimal`; `None` when it does not fit (more than 28 digits).
pub fn from_cql_decimal(d: &CqlDecimal) -> Option<Decimal> {
    let (bytes, scale) = d.as_signed_be_bytes_slice_and_exponent();
    if bytes.len() > 16 || !(0..=28).contains(&scale) {
        return None;
    }
    let fill = if bytes.first().is_some_and(|b| b & 0x80 != 0) {
        0xff
    } else {
        0x00
    };
    let mut buf = [fill; 16];
    buf[16 - bytes.len()..].copy_from_slice(bytes);
    Decimal::try_from_i128_with_scale(i128::from_be_bytes(buf), scale as u32).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn decimals_round_trip_exactly() {
        for s in [
            "0",
            "1",
            "-1",
            "127",
            "128",
            "-128",
            "-129",
            "255",
            "0.000000001",
            "-12.5",
            "79228162514264337593543950335",
        ] {
            let d = Decimal::from_str(s).unwrap();
            assert_eq!(from_cql_decimal(&to_cql_decimal(d)), Some(d), "{s}");
        }
        let cql = to_cql_decimal(Decimal::from_str("1.28").unwrap());
        let (bytes, scale) = cql.as_signed_be_bytes_slice_and_exponent();
        assert_eq!((bytes.to_vec(), scale), (vec![0x00, 0x80], 2));
    }
}
