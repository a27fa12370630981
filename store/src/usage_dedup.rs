//! Event ids already counted, per customer, kept 40 days (the dedup window is at least 35 days): as blocks in the
//! customer's `usage_aggregates` partition (migration `cql/0013_usage_dedup_in_aggregates.cql`, written and read
//! by `crate::usage`), formerly in `usage_dedup_blocks` (`cql/0011_usage_dedup_blocks.cql`) and before that one row
//! per id in `usage_dedup` (`cql/0001_usage.cql`); both older tables are only read, and only while they still held
//! a row when the store was opened (their rows expire 40 days after the last write).
//!
//! An id is kept as the first 16 bytes of its SHA-256 ([`IdHash`]): two different ids share one with a probability
//! of about n²/2¹²⁹ (for a customer with a billion ids in its window: 1.5·10⁻²¹), and a block of a checkpoint holds
//! every id that checkpoint counted for the customer, so a checkpoint writes one row per changed customer however
//! many events it counted. Ids kept in memory ([`SeenIds`]) carry the day they were counted and expire after the
//! same 40 days as the stored ones.
//!
//! **Writer: rating.** Reader: rating (on load).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

/// How long a counted id is remembered, in days: the tables' TTL (3,456,000 s).
pub const RETENTION_DAYS: i64 = 40;

/// Ids per stored block row at most (16 bytes each: 64 KiB): a checkpoint that counted more for one customer
/// writes several rows.
pub const MAX_IDS_PER_BLOCK: usize = 4_096;

/// A counted event id as kept: the first 16 bytes of its SHA-256.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdHash([u8; 16]);

impl IdHash {
    /// The kept form of an event id.
    pub fn of(event_id: &str) -> Self {
        let digest = Sha256::digest(event_id.as_bytes());
        let mut out = [0u8; 16];
        out.copy_from_slice(&digest[..16]);
        IdHash(out)
    }
}

/// Hashes an [`IdHash`] by its first eight bytes: they are already uniformly distributed, so a second hash over
/// them would only cost time.
#[derive(Default)]
pub struct PrefixHasher(u64);

impl Hasher for PrefixHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes.iter().take(8) {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
}

/// Days since the Unix epoch, the unit ids are dated in.
pub fn day_of(at: DateTime<Utc>) -> u32 {
    u32::try_from(at.timestamp().div_euclid(86_400)).unwrap_or(0)
}

/// The ids of one customer counted within the retention, with the day each was counted.
#[derive(Debug, Default, Clone)]
pub struct SeenIds {
    ids: HashMap<IdHash, u32, BuildHasherDefault<PrefixHasher>>,
    /// The earliest day among `ids` (0 when empty).
    oldest: u32,
}

impl SeenIds {
    /// Whether this id was counted.
    pub fn contains(&self, id: &IdHash) -> bool {
        self.ids.contains_key(id)
    }

    /// Record an id counted today.
    pub fn insert(&mut self, id: IdHash) {
        self.insert_on(id, day_of(Utc::now()));
    }

    /// Record a kept id counted on `day` (days since the epoch), e.g. one read back from a stored block.
    pub fn insert_on(&mut self, id: IdHash, day: u32) {
        if self.ids.is_empty() || day < self.oldest {
            self.oldest = day;
        }
        let kept = self.ids.entry(id).or_insert(day);
        *kept = (*kept).max(day);
    }

    /// Forget the ids counted more than [`RETENTION_DAYS`] before `today`, as the store's TTL does; how many.
    pub fn expire(&mut self, today: u32) -> usize {
        let limit = i64::from(today) - RETENTION_DAYS;
        if self.ids.is_empty() || i64::from(self.oldest) >= limit {
            return 0;
        }
        let before = self.ids.len();
        self.ids.retain(|_, day| i64::from(*day) >= limit);
        self.oldest = self.ids.values().copied().min().unwrap_or(0);
        before - self.ids.len()
    }

    /// How many ids are kept.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// About how many bytes of memory the kept ids take (the table's slots and their control bytes).
    pub fn approx_bytes(&self) -> usize {
        self.ids.capacity() * (std::mem::size_of::<(IdHash, u32)>() + 1)
    }
}

/// A block's `ids` column: the kept ids one after the other.
pub fn encode_block(ids: &[IdHash]) -> Vec<u8> {
    ids.iter().flat_map(|id| id.0).collect()
}

/// Read back a block's `ids` column; a length that is not a multiple of 16 is an error (a foreign write).
pub fn decode_block(bytes: &[u8]) -> anyhow::Result<Vec<IdHash>> {
    anyhow::ensure!(
        bytes.len().is_multiple_of(16),
        "a stored dedup block holds {} bytes, not a multiple of 16",
        bytes.len()
    );
    Ok(bytes
        .chunks_exact(16)
        .map(|c| {
            let mut id = [0u8; 16];
            id.copy_from_slice(c);
            IdHash(id)
        })
        .collect())
}

/// Every block of some customers of one tenant (`customer_id IN ?`) in the legacy `usage_dedup_blocks`, with the
/// customer each belongs to.
pub fn select_blocks_by_customers(ks: &str) -> String {
    format!(
        "SELECT customer_id, written_at, ids FROM {ks}.usage_dedup_blocks WHERE tenant_id = ? AND customer_id IN ?"
    )
}

/// Every id of some customers of one tenant (`customer_id IN ?`) in the legacy one-row-per-id table (written before
/// blocks; TTL 40 days), with the customer each belongs to.
pub fn select_legacy_by_customers(ks: &str) -> String {
    format!(
        "SELECT customer_id, event_id FROM {ks}.usage_dedup WHERE tenant_id = ? AND customer_id IN ?"
    )
}

/// Any one row of the legacy `usage_dedup_blocks`: none (a keyspace created after blocks moved into
/// `usage_aggregates`, or one whose legacy blocks have all expired) means loads need not read it.
pub fn select_any_legacy_block(ks: &str) -> String {
    format!("SELECT block_id FROM {ks}.{LEGACY_BLOCKS_TABLE} LIMIT 1")
}

/// The legacy table of dedup blocks.
pub const LEGACY_BLOCKS_TABLE: &str = "usage_dedup_blocks";

/// The legacy table of one row per id.
pub const LEGACY_IDS_TABLE: &str = "usage_dedup";

/// Any one row of the legacy table: none (a keyspace created after blocks, or one whose legacy rows have all
/// expired) means loads need not read it.
pub fn select_any_legacy(ks: &str) -> String {
    format!("SELECT event_id FROM {ks}.{LEGACY_IDS_TABLE} LIMIT 1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_the_first_sixteen_bytes_of_its_sha256() {
        // SHA-256("abc") = ba7816bf 8f01cfea 414140de 5dae2223 b00361a3 96177a9c b410ff61 f20015ad
        let id = IdHash::of("abc");
        assert_eq!(
            encode_block(&[id]),
            [
                0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae,
                0x22, 0x23
            ]
        );
        assert_ne!(IdHash::of("abd"), id);
    }

    #[test]
    fn blocks_round_trip_and_a_torn_block_is_refused() {
        let ids = vec![IdHash::of("e1"), IdHash::of("e2"), IdHash::of("e3")];
        let bytes = encode_block(&ids);
        assert_eq!(bytes.len(), 48);
        assert_eq!(decode_block(&bytes).unwrap(), ids);
        assert!(decode_block(&bytes[..47]).is_err());
        assert!(decode_block(&[]).unwrap().is_empty());
    }

    #[test]
    fn ids_expire_after_the_retention_like_stored_ones() {
        let mut seen = SeenIds::default();
        seen.insert_on(IdHash::of("old"), 100);
        seen.insert_on(IdHash::of("mid"), 120);
        seen.insert_on(IdHash::of("new"), 140);
        assert_eq!(seen.expire(140), 0, "day 100 is exactly 40 days before 140");
        let has = |seen: &SeenIds, id: &str| seen.contains(&IdHash::of(id));
        assert!(has(&seen, "old"));
        assert_eq!(seen.expire(141), 1);
        assert!(!has(&seen, "old") && has(&seen, "mid") && has(&seen, "new"));
        assert_eq!(seen.expire(161), 1);
        assert!(!has(&seen, "mid") && has(&seen, "new"));
        // Counted again later: the later day is kept.
        seen.insert_on(IdHash::of("new"), 170);
        assert_eq!(seen.expire(181), 0);
        assert_eq!(seen.len(), 1);
        assert_eq!(seen.expire(211), 1);
        assert!(seen.is_empty());
    }

    #[test]
    fn today_is_counted_in_days_since_the_epoch() {
        let at = DateTime::parse_from_rfc3339("1970-01-02T23:59:59Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(day_of(at), 1);
        let mut seen = SeenIds::default();
        seen.insert(IdHash::of("x"));
        assert_eq!(seen.oldest, day_of(Utc::now()));
    }
}
