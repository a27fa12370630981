//! Versioned, idempotent schema migrations for Kafka topics, CQL and ClickHouse.
//!
//! Each store keeps a `schema_migrations` table. A migration runs only if its version is not recorded there, and
//! every statement is `IF NOT EXISTS`, so a run interrupted half-way is simply run again.

use scylla::client::session::Session;

use billing_runtime::config::Settings;

/// A numbered migration: statements separated by `;` at the end of a line.
struct Migration {
    version: i32,
    name: &'static str,
    body: &'static str,
}

const CQL: &[Migration] = &[
    Migration {
        version: 1,
        name: "usage",
        body: include_str!("../migrations/cql/0001_usage.cql"),
    },
    Migration {
        version: 2,
        name: "billing",
        body: include_str!("../migrations/cql/0002_billing.cql"),
    },
    Migration {
        version: 3,
        name: "invoices_by_date",
        body: include_str!("../migrations/cql/0003_invoices_by_date.cql"),
    },
    Migration {
        version: 4,
        name: "payments",
        body: include_str!("../migrations/cql/0004_payments.cql"),
    },
    Migration {
        version: 5,
        name: "sandbox_provider",
        body: include_str!("../migrations/cql/0005_sandbox_provider.cql"),
    },
    Migration {
        version: 6,
        name: "webhooks",
        body: include_str!("../migrations/cql/0006_webhooks.cql"),
    },
    Migration {
        version: 7,
        name: "credit_notes",
        body: include_str!("../migrations/cql/0007_credit_notes.cql"),
    },
    Migration {
        version: 8,
        name: "sandbox_ledger_buckets",
        body: include_str!("../migrations/cql/0008_sandbox_ledger_buckets.cql"),
    },
    Migration {
        version: 9,
        name: "invoice_usage_offsets",
        body: include_str!("../migrations/cql/0009_invoice_usage_offsets.cql"),
    },
    Migration {
        version: 10,
        name: "api_keys",
        body: include_str!("../migrations/cql/0010_api_keys.cql"),
    },
    Migration {
        version: 11,
        name: "usage_dedup_blocks",
        body: include_str!("../migrations/cql/0011_usage_dedup_blocks.cql"),
    },
    Migration {
        version: 12,
        name: "usage_applied_window",
        body: include_str!("../migrations/cql/0012_usage_applied_window.cql"),
    },
    Migration {
        version: 13,
        name: "usage_dedup_in_aggregates",
        body: include_str!("../migrations/cql/0013_usage_dedup_in_aggregates.cql"),
    },
    Migration {
        version: 14,
        name: "reference_snapshots",
        body: include_str!("../migrations/cql/0014_reference_snapshots.cql"),
    },
];

const CLICKHOUSE: &[Migration] = &[
    Migration {
        version: 1,
        name: "usage_events",
        body: include_str!("../migrations/clickhouse/0001_usage_events.sql"),
    },
    Migration {
        version: 2,
        name: "invoices",
        body: include_str!("../migrations/clickhouse/0002_invoices.sql"),
    },
    Migration {
        version: 3,
        name: "credit_notes",
        body: include_str!("../migrations/clickhouse/0003_credit_notes.sql"),
    },
    Migration {
        version: 4,
        name: "taxes_and_voids",
        body: include_str!("../migrations/clickhouse/0004_taxes_and_voids.sql"),
    },
    Migration {
        version: 5,
        name: "audit_log",
        body: include_str!("../migrations/clickhouse/0005_audit_log.sql"),
    },
    Migration {
        version: 6,
        name: "analytics",
        body: include_str!("../migrations/clickhouse/0006_analytics.sql"),
    },
    Migration {
        version: 7,
        name: "usage_events_unpriced",
        body: include_str!("../migrations/clickhouse/0007_usage_events_unpriced.sql"),
    },
];

fn statements(body: &str) -> impl Iterator<Item = String> + '_ {
    body.split(";\n")
        .map(|s| {
            s.lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .filter(|s| !s.trim().is_empty())
}

fn is_add_column(stmt: &str) -> bool {
    let s = stmt.trim_start().to_ascii_uppercase();
    s.starts_with("ALTER TABLE") && s.contains(" ADD ")
}

/// Cassandra's, ScyllaDB's and ClickHouse's refusals of a column that exists already.
fn already_added(error: &str) -> bool {
    error.contains("already exist") || error.contains("conflicts with an existing column")
}

/// What a migration run did.
#[derive(Debug, Default)]
pub struct Report {
    /// Kafka topics created.
    pub topics_created: Vec<String>,
    /// CQL migrations applied.
    pub cql_applied: Vec<String>,
    /// ClickHouse migrations applied.
    pub clickhouse_applied: Vec<String>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: &Vec<String>| {
            if v.is_empty() {
                "nothing new".to_owned()
            } else {
                v.join(", ")
            }
        };
        write!(
            f,
            "topics: {}; cql: {}; clickhouse: {}",
            list(&self.topics_created),
            list(&self.cql_applied),
            list(&self.clickhouse_applied)
        )
    }
}

/// Bring Kafka, CQL and ClickHouse up to the current schema.
pub async fn run(settings: &Settings) -> anyhow::Result<Report> {
    let topics_created = billing_runtime::kafka::ensure_topics(&settings.kafka).await?;
    let session = billing_runtime::cql::connect(&settings.cassandra).await?;
    let cql_applied = migrate_cql(&session, settings).await?;
    let clickhouse_applied = migrate_clickhouse(settings).await?;
    Ok(Report {
        topics_created,
        cql_applied,
        clickhouse_applied,
    })
}

async fn migrate_cql(session: &Session, settings: &Settings) -> anyhow::Result<Vec<String>> {
    let ks = &settings.cassandra.keyspace;
    session
        .query_unpaged(
            format!(
                "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {}",
                settings.cassandra.replication
            ),
            (),
        )
        .await?;
    session
        .query_unpaged(
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.schema_migrations \
                 (version int PRIMARY KEY, name text, applied_at timestamp)"
            ),
            (),
        )
        .await?;
    session.await_schema_agreement().await?;
    let rows = session
        .query_unpaged(format!("SELECT version FROM {ks}.schema_migrations"), ())
        .await?;
    let applied: Vec<i32> = rows
        .into_rows_result()?
        .rows::<(i32,)>()?
        .map(|r| r.map(|(v,)| v))
        .collect::<Result<_, _>>()?;
    let mut done = Vec::new();
    for m in CQL.iter().filter(|m| !applied.contains(&m.version)) {
        for stmt in statements(m.body) {
            let done = session
                .query_unpaged(stmt.replace("{keyspace}", ks), ())
                .await;
            if let Err(e) = done {
                // A column added by a run cut short before it recorded the migration: CQL has no `ADD IF NOT
                // EXISTS` everywhere (ScyllaDB), so adding it again is recognised by the error instead.
                if !(is_add_column(&stmt) && already_added(&e.to_string())) {
                    return Err(e.into());
                }
            }
        }
        session.await_schema_agreement().await?;
        session
            .query_unpaged(
                format!("INSERT INTO {ks}.schema_migrations (version, name, applied_at) VALUES (?, ?, toTimestamp(now()))"),
                (m.version, m.name),
            )
            .await?;
        done.push(format!("{:04}_{}", m.version, m.name));
    }
    Ok(done)
}

async fn migrate_clickhouse(settings: &Settings) -> anyhow::Result<Vec<String>> {
    let db = &settings.clickhouse.database;
    let server = billing_runtime::clickhouse::server_client(&settings.clickhouse);
    server
        .query(&format!("CREATE DATABASE IF NOT EXISTS {db}"))
        .execute()
        .await?;
    server
        .query(&format!(
            "CREATE TABLE IF NOT EXISTS {db}.schema_migrations (version UInt32, name String, applied_at DateTime) \
             ENGINE = MergeTree ORDER BY version"
        ))
        .execute()
        .await?;
    let applied: Vec<u32> = server
        .query(&format!("SELECT version FROM {db}.schema_migrations"))
        .fetch_all::<u32>()
        .await?;
    let mut done = Vec::new();
    for m in CLICKHOUSE
        .iter()
        .filter(|m| !applied.contains(&(m.version as u32)))
    {
        for stmt in statements(m.body) {
            let done = server
                .query(&stmt.replace("{database}", db))
                .execute()
                .await;
            if let Err(e) = done {
                // ClickHouse 18.16 has no `ADD COLUMN IF NOT EXISTS`: a column added by a run cut short before it
                // recorded the migration is recognised by the error ("column with this name already exists").
                if !(is_add_column(&stmt) && already_added(&e.to_string())) {
                    return Err(e.into());
                }
            }
        }
        server
            .query(&format!("INSERT INTO {db}.schema_migrations (version, name, applied_at) VALUES (?, ?, now())"))
            .bind(m.version as u32)
            .bind(m.name)
            .execute()
            .await?;
        done.push(format!("{:04}_{}", m.version, m.name));
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_split_into_statements_without_comments() {
        let stmts: Vec<String> = statements(CQL[0].body).collect();
        assert_eq!(stmts.len(), 3);
        for stmt in &stmts {
            assert!(
                stmt.trim_start()
                    .starts_with("CREATE TABLE IF NOT EXISTS {keyspace}.usage_"),
                "{stmt}"
            );
        }
        let versions: Vec<i32> = CQL.iter().chain(CLICKHOUSE).map(|m| m.version).collect();
        assert!(versions.iter().all(|v| *v >= 1));
        let add = statements(CQL[8].body).next().unwrap();
        assert!(is_add_column(&add), "{add}");
        assert!(!is_add_column(&stmts[0]));
        assert!(already_added(
            "Invalid query: Column with name 'usage_offset' already exists"
        ));
        assert!(already_added(
            "Invalid column name usage_offset because it conflicts with an existing column"
        ));
        assert!(!already_added("Undefined column name usage_offset"));
    }

    /// Every table a migration creates has one entry in `TABLES`, with its one writer, and every entry is created.
    #[test]
    fn every_table_is_registered_with_one_writer() {
        use crate::{Store, TABLES};
        let created = |ms: &[Migration], store: Store, prefix: &str| -> Vec<(String, Store)> {
            ms.iter()
                .flat_map(|m| statements(m.body))
                .filter_map(|s| {
                    let rest = s.split_once("CREATE TABLE IF NOT EXISTS ")?.1;
                    let name = rest.strip_prefix(prefix)?.split([' ', '(']).next()?;
                    Some((name.to_owned(), store))
                })
                .collect()
        };
        // A table a later migration drops is not there any more.
        let dropped = |ms: &[Migration], prefix: &str| -> Vec<String> {
            ms.iter()
                .flat_map(|m| statements(m.body))
                .filter_map(|s| {
                    let rest = s.split_once("DROP TABLE IF EXISTS ")?.1;
                    Some(
                        rest.strip_prefix(prefix)?
                            .trim()
                            .trim_end_matches(';')
                            .to_owned(),
                    )
                })
                .collect()
        };
        let gone = dropped(CQL, "{keyspace}.");
        let mut tables = created(CQL, Store::Cql, "{keyspace}.");
        tables.retain(|(name, _)| !gone.contains(name));
        tables.extend(created(CLICKHOUSE, Store::ClickHouse, "{database}."));
        tables.push(("schema_migrations".into(), Store::Cql));
        tables.push(("schema_migrations".into(), Store::ClickHouse));
        for (name, store) in &tables {
            let entries: Vec<_> = TABLES
                .iter()
                .filter(|(n, s, _)| n == name && s == store)
                .collect();
            assert_eq!(
                entries.len(),
                1,
                "{name} ({store:?}) must be in TABLES once"
            );
        }
        assert_eq!(
            tables.len(),
            TABLES.len(),
            "TABLES lists a table no migration creates"
        );
    }
}
