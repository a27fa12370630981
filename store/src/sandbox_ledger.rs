//! ScyllaDB `sandbox_ledger` and `sandbox_ledger_calls` (migration `cql/0008_sandbox_ledger_buckets.cql`): the
//! ledger of the sandbox payment provider. One row per (tenant, idempotency key) holds the outcome of the charge or
//! refund made with that key; it is written with a lightweight transaction (`INSERT ... IF NOT EXISTS`), so two
//! racing calls with one key execute the operation once and the loser answers with the winner's outcome. A counter
//! per key counts every call, replays included. The ledger outlives the payments process, so a retry after a
//! SIGKILL gets the first outcome back instead of a second charge, as with Stripe's idempotency keys.
//!
//! Partitioned by tenant and [`bucket`] of the key (see the migration): a tenant's lightweight transactions spread
//! over [`BUCKETS`] Paxos partitions instead of contending in one; "every charge of a tenant" reads them all.
//!
//! **Writer: payments** (the sandbox provider). Readers: payments, tests.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::Consistency;
use scylla::value::{Counter, CqlDecimal};

use billing_runtime::cql::to_cql_decimal;
use rust_decimal::Decimal;

/// What the sandbox did with one idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxCharge {
    /// Owning tenant.
    pub tenant_id: String,
    /// The caller's idempotency key (the payments service's attempt id).
    pub idempotency_key: String,
    /// `charge` or `refund`.
    pub kind: String,
    /// The sandbox's id of the charge or refund.
    pub reference: String,
    /// The payment method charged, or the charge refunded.
    pub target: String,
    /// The provider customer charged (empty for a refund).
    pub customer_ref: String,
    /// The invoice paid or refunded (empty when the caller gave none).
    pub invoice_id: String,
    /// Amount in major units, exact.
    pub amount: Decimal,
    /// ISO 4217 code.
    pub currency: String,
    /// The outcome answered, as JSON (the provider's type; opaque here).
    pub outcome: String,
    /// How many times the operation was executed for this key (1 once recorded).
    pub charge_count: i32,
    /// When the sandbox recorded it (bookkeeping only).
    pub created_at: DateTime<Utc>,
}

/// Partitions per tenant.
pub const BUCKETS: i32 = 16;

/// The bucket of an idempotency key: FNV-1a of its bytes, modulo [`BUCKETS`] (stable across processes and builds).
pub fn bucket(key: &str) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in key.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h % BUCKETS as u32) as i32
}

/// A row as selected, in the column order of [`COLUMNS`].
type Row = (
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    CqlDecimal,
    String,
    String,
    i32,
    DateTime<Utc>,
);

const COLUMNS: &str =
    "tenant_id, idempotency_key, kind, reference, target, customer_ref, invoice_id, amount, \
                       currency, outcome, charge_count, created_at";

impl SandboxCharge {
    fn from_row(r: Row) -> anyhow::Result<Self> {
        let amount = crate::dec(Some(r.7))?.unwrap_or_default();
        Ok(SandboxCharge {
            tenant_id: r.0,
            idempotency_key: r.1,
            kind: r.2,
            reference: r.3,
            target: r.4,
            customer_ref: r.5,
            invoice_id: r.6,
            amount,
            currency: r.8,
            outcome: r.9,
            charge_count: r.10,
            created_at: r.11,
        })
    }
}

pub(crate) fn insert_if_absent(ks: &str) -> String {
    format!(
        "INSERT INTO {ks}.sandbox_ledger (bucket, {COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         IF NOT EXISTS"
    )
}

pub(crate) fn select_one(ks: &str) -> String {
    format!(
        "SELECT {COLUMNS} FROM {ks}.sandbox_ledger WHERE tenant_id = ? AND bucket = ? AND idempotency_key = ?"
    )
}

pub(crate) fn select_bucket(ks: &str) -> String {
    format!("SELECT {COLUMNS} FROM {ks}.sandbox_ledger WHERE tenant_id = ? AND bucket = ?")
}

pub(crate) fn count_call(ks: &str) -> String {
    format!(
        "UPDATE {ks}.sandbox_ledger_calls SET calls = calls + 1 \
         WHERE tenant_id = ? AND bucket = ? AND idempotency_key = ?"
    )
}

pub(crate) fn select_calls(ks: &str) -> String {
    format!(
        "SELECT calls FROM {ks}.sandbox_ledger_calls WHERE tenant_id = ? AND bucket = ? AND idempotency_key = ?"
    )
}

/// Prepared statements over the sandbox ledger.
pub struct SandboxLedgerStore {
    session: Arc<Session>,
    insert_if_absent: PreparedStatement,
    select_one: PreparedStatement,
    select_one_serial: PreparedStatement,
    select_bucket: PreparedStatement,
    count_call: PreparedStatement,
    select_calls: PreparedStatement,
}

impl SandboxLedgerStore {
    /// Prepare every statement once.
    pub async fn new(session: Arc<Session>, ks: &str) -> anyhow::Result<Self> {
        let prepare = |q: String, idempotent: bool| crate::prepare(&session, q, idempotent);
        // Read after a lost race at SERIAL, so the winner's row is seen even if its write has not reached every
        // replica yet.
        let mut select_one_serial = prepare(select_one(ks), true).await?;
        select_one_serial.set_consistency(Consistency::Serial);
        Ok(Self {
            insert_if_absent: prepare(insert_if_absent(ks), false).await?,
            select_one: prepare(select_one(ks), true).await?,
            select_one_serial,
            select_bucket: prepare(select_bucket(ks), true).await?,
            // A counter increment is not idempotent: the driver must not retry it.
            count_call: prepare(count_call(ks), false).await?,
            select_calls: prepare(select_calls(ks), true).await?,
            session,
        })
    }

    /// Record `charge` unless its key already holds one: returns whether this call recorded it, and the row the key
    /// holds now (`charge` itself, or the earlier one).
    pub async fn record(&self, charge: &SandboxCharge) -> anyhow::Result<(bool, SandboxCharge)> {
        let c = charge;
        let result = self
            .session
            .execute_unpaged(
                &self.insert_if_absent,
                (
                    bucket(&c.idempotency_key),
                    &c.tenant_id,
                    &c.idempotency_key,
                    &c.kind,
                    &c.reference,
                    &c.target,
                    &c.customer_ref,
                    &c.invoice_id,
                    to_cql_decimal(c.amount),
                    &c.currency,
                    &c.outcome,
                    c.charge_count,
                    c.created_at,
                ),
            )
            .await?
            .into_rows_result()?;
        if crate::lwt_applied(&result)? {
            return Ok((true, charge.clone()));
        }
        let stored = self
            .select(&self.select_one_serial, &c.tenant_id, &c.idempotency_key)
            .await?
            .ok_or_else(|| anyhow::anyhow!("sandbox ledger: key lost its row after a lost race"))?;
        Ok((false, stored))
    }

    /// What the key holds, if anything.
    pub async fn charge(&self, tenant: &str, key: &str) -> anyhow::Result<Option<SandboxCharge>> {
        self.select(&self.select_one, tenant, key).await
    }

    async fn select(
        &self,
        statement: &PreparedStatement,
        tenant: &str,
        key: &str,
    ) -> anyhow::Result<Option<SandboxCharge>> {
        self.session
            .execute_unpaged(statement, (tenant, bucket(key), key))
            .await?
            .into_rows_result()?
            .maybe_first_row::<Row>()?
            .map(SandboxCharge::from_row)
            .transpose()
    }

    /// How many times an operation was executed for the key (0 or 1 unless the sandbox is broken).
    pub async fn charges_for(&self, tenant: &str, key: &str) -> anyhow::Result<i32> {
        Ok(self
            .charge(tenant, key)
            .await?
            .map(|c| c.charge_count)
            .unwrap_or(0))
    }

    /// Count one call made with the key.
    pub async fn count_call(&self, tenant: &str, key: &str) -> anyhow::Result<()> {
        self.session
            .execute_unpaged(&self.count_call, (tenant, bucket(key), key))
            .await?;
        Ok(())
    }

    /// Calls made with the key, replays and failures included.
    pub async fn calls_for(&self, tenant: &str, key: &str) -> anyhow::Result<i64> {
        Ok(self
            .session
            .execute_unpaged(&self.select_calls, (tenant, bucket(key), key))
            .await?
            .into_rows_result()?
            .maybe_first_row::<(Option<Counter>,)>()?
            .and_then(|(n,)| n)
            .map_or(0, |c| c.0))
    }

    /// Every charge and refund of a tenant, by idempotency key (every bucket, paged).
    pub async fn charges_of_tenant(&self, tenant: &str) -> anyhow::Result<Vec<SandboxCharge>> {
        let mut out = Vec::new();
        for b in 0..BUCKETS {
            let mut rows = self
                .session
                .execute_iter(self.select_bucket.clone(), (tenant, b))
                .await?
                .rows_stream::<Row>()?;
            while let Some(r) = rows.try_next().await? {
                out.push(SandboxCharge::from_row(r)?);
            }
        }
        out.sort_by(|a, b| a.idempotency_key.cmp(&b.idempotency_key));
        Ok(out)
    }
}
