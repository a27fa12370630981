//! ClickHouse client builder. Validation is off because the local server (18.16) lacks
//! `RowBinaryWithNamesAndTypes`; every Row struct therefore has an integration test of its own.

use clickhouse::Client;

use crate::config::ClickHouseConfig;

/// A client bound to the billing database.
pub fn client(cfg: &ClickHouseConfig) -> Client {
    server_client(cfg).with_database(&cfg.database)
}

/// A client with no database selected (to create it).
pub fn server_client(cfg: &ClickHouseConfig) -> Client {
    Client::default()
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
/// rounded half away from zero at the 9th decimal; quantities with more decimals are rejected before this.
pub fn to_decimal_38_9(d: rust_decimal::Decimal) -> i128 {
    let mut d = d.round_dp_with_strategy(9, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
    d.rescale(9);
    d.mantissa()
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
