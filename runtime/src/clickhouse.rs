//! ClickHouse client builder. Validation is off because the local server (18.16) lacks
//! `RowBinaryWithNamesAndTypes`; every Row struct therefore has an integration test of its own.

use clickhouse::Client;

use crate::config::ClickHouseConfig;

/// A client bound to the billing database.
pub fn client(cfg: &ClickHouseConfig) -> Client {
    server_client(cfg).with_database(&cfg.database)
}

/// A client with no database selected (to create it).
///
/// Its HTTP transport is the crate's default (keep-alive probes, pooled connections idle at most 2 s, below the
/// server's 3 s) plus `TCP_NODELAY`. Without it an insert, whose body goes out in several small writes, waits on
/// Nagle's algorithm for the server's delayed ACK: about 40 ms per insert on Linux, most of a small checkpoint's
/// time (the bench's freshness probe measured 48 ms per insert of a few rows, where `curl`, which sets the option,
/// inserts the same in under 10 ms).
pub fn server_client(cfg: &ClickHouseConfig) -> Client {
    use hyper_util::client::legacy::{connect::HttpConnector, Client as HyperClient};
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_keepalive(Some(std::time::Duration::from_secs(60)));
    let http = HyperClient::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(std::time::Duration::from_secs(2))
        .build(connector);
    Client::with_http_client(http)
        .with_url(&cfg.url)
        .with_user(&cfg.user)
        .with_password(&cfg.password)
        .with_validation(false)
        .with_compression(clickhouse::Compression::None)
}

/// Run `SELECT 1`: proves the server answers queries.
pub async fn ping(client: &Client) -> Result<(), String> {
    client
        .query("SELECT 1")
        .fetch_one::<u8>()
        .await
        .map(|_| ())
        .map_err(|e| format!("clickhouse: {e}"))
}

/// A decimal as ClickHouse `Decimal(38, 9)` in RowBinary: the value scaled by 10^9 as an i128. Values are
/// rounded half away from zero at the 9th decimal; quantities with more decimals are rejected before this. Every
/// `Decimal` fits: its mantissa is below 2^96 ≈ 7.9·10^28, so scaled by at most 10^9 it stays below 10^38. (The
/// mantissa is scaled here, in i128: `Decimal::rescale(9)` cannot hold values above ≈ 7.9·10^19 at scale 9 and keeps
/// a smaller scale for them, which read as scale 9 would store them 10^k too small.)
pub fn to_decimal_38_9(d: rust_decimal::Decimal) -> i128 {
    let d = d.round_dp_with_strategy(9, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
    d.mantissa() * 10i128.pow(9 - d.scale())
}

/// How long one ClickHouse write may take before its caller gives up on it and retries (a hung server must not
/// hold a service: every write of the services is idempotent, on `ReplacingMergeTree`s).
pub const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// `request` bounded by `limit`: past it, an error naming `what`.
pub async fn bounded<T>(
    limit: std::time::Duration,
    what: &str,
    request: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(limit, request).await {
        Ok(r) => r,
        Err(_) => Err(anyhow::anyhow!(
            "clickhouse: {what} took longer than {limit:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::to_decimal_38_9;
    use rust_decimal::Decimal;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn decimals_are_scaled_to_nine_places_exactly_whatever_their_size() {
        assert_eq!(to_decimal_38_9(d("1.5")), 1_500_000_000);
        assert_eq!(to_decimal_38_9(d("-25.00")), -25_000_000_000);
        assert_eq!(to_decimal_38_9(d("0.123456789")), 123_456_789);
        // Half away from zero at the 9th decimal.
        assert_eq!(to_decimal_38_9(d("0.0000000005")), 1);
        assert_eq!(to_decimal_38_9(d("-0.0000000005")), -1);
        // Too large for scale 9 inside a Decimal: still exact in i128.
        assert_eq!(
            to_decimal_38_9(d("100000000000000000000")),
            100_000_000_000_000_000_000_000_000_000
        );
        assert_eq!(
            to_decimal_38_9(Decimal::MAX),
            79_228_162_514_264_337_593_543_950_335 * 1_000_000_000
        );
        assert_eq!(
            to_decimal_38_9(Decimal::MIN),
            -79_228_162_514_264_337_593_543_950_335 * 1_000_000_000
        );
        assert!(
            to_decimal_38_9(Decimal::MAX) < 10i128.pow(38),
            "fits Decimal(38, 9)"
        );
    }
}
