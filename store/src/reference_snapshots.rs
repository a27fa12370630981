//! ScyllaDB `reference_snapshots` and `reference_snapshot_chunks` (migration `cql/0014_reference_snapshots.cql`):
//! snapshots of the reference state rating folds from `billing.lifecycle`, each with the lifecycle positions it
//! reflects, so that a restart reads the newest snapshot and only the events after it. The bytes are opaque here
//! (`billing_schemas::reference`'s snapshot format).
//!
//! A snapshot's head row is written first without its checksum (the snapshot is under way), then its chunks, then
//! the checksum that makes it complete; readers take complete heads only, so a snapshot cut short by a crash is
//! never read, and a later write deletes it and its chunks. Every instance of rating may write snapshots of the same
//! name: they are all valid states, and a reader takes the one that folded the most events.
//!
//! **Writer: rating.** Reader: rating (at start).

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Bytes per chunk row at most.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Chunks written or read at once.
const CONCURRENCY: usize = 4;

/// Complete snapshots of one name kept: the newest and the one before it (a reader may still be reading it).
const KEEP: usize = 2;

/// A snapshot still under way this long after it started was cut short: a write deletes it.
const ABANDONED_AFTER: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// The name of rating's snapshots of `lifecycle_topic`'s state: the format's version and the topic, so that a
/// snapshot never applies to another topic or format.
pub fn rating_snapshot_name(lifecycle_topic: &str) -> String {
    format!("rating-attribution-1:{lifecycle_topic}")
}

/// What a snapshot's head says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotHead {
    /// Lifecycle events the snapshot reflects, all partitions together (the sum of `positions`): newer is more.
    pub folded: i64,
    /// Its id.
    pub id: Uuid,
    /// Per lifecycle partition, the first offset the snapshot does not reflect.
    pub positions: BTreeMap<i32, i64>,
    /// Chunk rows.
    pub chunks: i32,
    /// Bytes of the whole.
    pub bytes: i64,
    /// SHA-256 of the whole; `None` while the snapshot is being written (or if its writer stopped).
    pub sha256: Option<Vec<u8>>,
    /// Customers it holds (for logs).
    pub customers: i64,
    /// When its writing started.
    pub written_at: DateTime<Utc>,
}

impl SnapshotHead {
    /// Whether the snapshot fits a lifecycle topic whose partitions end at `ends`: as many partitions, and none of
    /// its positions past the end (a topic deleted and made again under its name starts over).
    pub fn fits(&self, ends: &BTreeMap<i32, i64>) -> bool {
        self.positions.len() == ends.len()
            && self
                .positions
                .iter()
                .all(|(p, at)| ends.get(p).is_some_and(|end| at <= end))
    }
}

/// The snapshots' statements.
#[derive(Clone)]
pub struct ReferenceSnapshots {
    session: Arc<Session>,
    insert_chunk: PreparedStatement,
    insert_head: PreparedStatement,
    complete_head: PreparedStatement,
    select_heads: PreparedStatement,
    select_chunk: PreparedStatement,
    delete_chunks: PreparedStatement,
    delete_head: PreparedStatement,
}

type HeadRow = (
    i64,
    Uuid,
    Option<BTreeMap<i32, i64>>,
    i32,
    i64,
    Option<Vec<u8>>,
    i64,
    DateTime<Utc>,
);

impl ReferenceSnapshots {
    /// Prepare the statements on keyspace `ks`.
    pub async fn new(session: Arc<Session>, ks: &str) -> anyhow::Result<Self> {
        let prepare = |q: String| crate::prepare(&session, q, true);
        Ok(ReferenceSnapshots {
            insert_chunk: prepare(format!(
                "INSERT INTO {ks}.reference_snapshot_chunks (name, snapshot_id, chunk, data) VALUES (?, ?, ?, ?)"
            ))
            .await?,
            insert_head: prepare(format!(
                "INSERT INTO {ks}.reference_snapshots \
                 (name, folded, snapshot_id, positions, chunks, bytes, sha256, customers, written_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ))
            .await?,
            complete_head: prepare(format!(
                "UPDATE {ks}.reference_snapshots SET sha256 = ? WHERE name = ? AND folded = ? AND snapshot_id = ?"
            ))
            .await?,
            select_heads: prepare(format!(
                "SELECT folded, snapshot_id, positions, chunks, bytes, sha256, customers, written_at \
                 FROM {ks}.reference_snapshots WHERE name = ?"
            ))
            .await?,
            select_chunk: prepare(format!(
                "SELECT data FROM {ks}.reference_snapshot_chunks WHERE name = ? AND snapshot_id = ? AND chunk = ?"
            ))
            .await?,
            delete_chunks: prepare(format!(
                "DELETE FROM {ks}.reference_snapshot_chunks WHERE name = ? AND snapshot_id = ?"
            ))
            .await?,
            delete_head: prepare(format!(
                "DELETE FROM {ks}.reference_snapshots WHERE name = ? AND folded = ? AND snapshot_id = ?"
            ))
            .await?,
            session,
        })
    }

    /// Every head of `name`, newest first, complete or not.
    pub async fn heads(&self, name: &str) -> anyhow::Result<Vec<SnapshotHead>> {
        let rows = self
            .session
            .execute_unpaged(&self.select_heads, (name,))
            .await?
            .into_rows_result()?;
        rows.rows::<HeadRow>()?
            .map(|row| {
                let (folded, id, positions, chunks, bytes, sha256, customers, written_at) = row?;
                Ok(SnapshotHead {
                    folded,
                    id,
                    positions: positions.unwrap_or_default(),
                    chunks,
                    bytes,
                    sha256,
                    customers,
                    written_at,
                })
            })
            .collect()
    }

    /// A snapshot's bytes, checked against its head: `Ok(None)` if it is damaged (a chunk missing, or the whole not
    /// matching its size and SHA-256), which no later read can mend; `Err` if the store did not answer.
    pub async fn read(&self, name: &str, head: &SnapshotHead) -> anyhow::Result<Option<Vec<u8>>> {
        // The futures built first, then driven: a stream mapping to async blocks that borrow `self` is not `Send`
        // for every lifetime, which `tokio::spawn` asks of its callers.
        let reads: Vec<_> = (0..head.chunks)
            .map(|chunk| self.read_chunk(name, head.id, chunk))
            .collect();
        let chunks: Vec<Option<Vec<u8>>> = futures::stream::iter(reads)
            .buffered(CONCURRENCY)
            .try_collect()
            .await?;
        let Some(chunks) = chunks.into_iter().collect::<Option<Vec<_>>>() else {
            return Ok(None);
        };
        let data = chunks.concat();
        let whole = data.len() as i64 == head.bytes
            && head.sha256.as_deref() == Some(Sha256::digest(&data).as_slice());
        Ok(whole.then_some(data))
    }

    async fn read_chunk(
        &self,
        name: &str,
        id: Uuid,
        chunk: i32,
    ) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self
            .session
            .execute_unpaged(&self.select_chunk, (name, id, chunk))
            .await?
            .into_rows_result()?
            .maybe_first_row::<(Vec<u8>,)>()?
            .map(|(data,)| data))
    }

    /// Delete a snapshot, its head first (a reader never finds a head without its chunks).
    pub async fn delete(&self, name: &str, head: &SnapshotHead) -> anyhow::Result<()> {
        self.session
            .execute_unpaged(&self.delete_head, (name, head.folded, head.id))
            .await?;
        self.session
            .execute_unpaged(&self.delete_chunks, (name, head.id))
            .await?;
        Ok(())
    }

    /// Write a snapshot of `name` reflecting the lifecycle `positions`, then delete all but the newest [`KEEP`]
    /// complete ones, and those abandoned under way. A failed write leaves a snapshot under way, which no reader
    /// takes; writing again makes a new one.
    pub async fn write(
        &self,
        name: &str,
        positions: &BTreeMap<i32, i64>,
        customers: usize,
        data: &[u8],
    ) -> anyhow::Result<SnapshotHead> {
        let parts: Vec<&[u8]> = data.chunks(CHUNK_BYTES).collect();
        let mut head = SnapshotHead {
            folded: positions.values().sum(),
            id: Uuid::new_v4(),
            positions: positions.clone(),
            chunks: parts.len() as i32,
            bytes: data.len() as i64,
            sha256: None,
            customers: customers as i64,
            written_at: Utc::now(),
        };
        self.session
            .execute_unpaged(
                &self.insert_head,
                (
                    name,
                    head.folded,
                    head.id,
                    &head.positions,
                    head.chunks,
                    head.bytes,
                    &head.sha256,
                    head.customers,
                    head.written_at,
                ),
            )
            .await?;
        let id = head.id;
        let writes: Vec<_> = parts
            .iter()
            .enumerate()
            .map(|(i, part)| {
                self.session
                    .execute_unpaged(&self.insert_chunk, (name, id, i as i32, *part))
            })
            .collect();
        futures::stream::iter(writes)
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await?;
        let sha256 = Sha256::digest(data).to_vec();
        self.session
            .execute_unpaged(&self.complete_head, (&sha256, name, head.folded, head.id))
            .await?;
        head.sha256 = Some(sha256);
        let now = Utc::now();
        let mut complete = 0;
        for old in self.heads(name).await? {
            let drop = match old.sha256 {
                Some(_) => {
                    complete += 1;
                    complete > KEEP
                }
                None => now - old.written_at > ABANDONED_AFTER,
            };
            if drop {
                self.delete(name, &old).await?;
            }
        }
        Ok(head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(positions: &[(i32, i64)]) -> SnapshotHead {
        SnapshotHead {
            folded: positions.iter().map(|(_, o)| o).sum(),
            id: Uuid::nil(),
            positions: positions.iter().copied().collect(),
            chunks: 1,
            bytes: 4,
            sha256: None,
            customers: 0,
            written_at: Utc::now(),
        }
    }

    #[test]
    fn a_snapshot_fits_a_topic_with_its_partitions_and_no_position_past_an_end() {
        let ends: BTreeMap<i32, i64> = [(0, 10), (1, 5)].into();
        assert!(head(&[(0, 10), (1, 5)]).fits(&ends));
        assert!(head(&[(0, 3), (1, 0)]).fits(&ends));
        // A topic made again under its name: a position past its end.
        assert!(!head(&[(0, 11), (1, 5)]).fits(&ends));
        // Another partition count.
        assert!(!head(&[(0, 1)]).fits(&ends));
        assert!(!head(&[(0, 1), (1, 1), (2, 1)]).fits(&ends));
        assert!(!head(&[(0, 1), (2, 1)]).fits(&ends));
    }
}
