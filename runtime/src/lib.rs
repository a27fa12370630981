//! What every billing service shares: configuration, telemetry, shutdown, Kafka/CQL/ClickHouse clients,
//! and the health/readiness/metrics endpoints.

pub mod auth;
pub mod clickhouse;
pub mod config;
pub mod cql;
pub mod health;
pub mod http;
pub mod kafka;
pub mod process;
pub mod publish;
pub mod shutdown;
pub mod telemetry;

pub use config::Settings;
pub use shutdown::Shutdown;
