//! ScyllaDB `tenants`, `api_keys` and `api_keys_by_tenant` (migration `cql/0010_api_keys.cql`): who may call the
//! API, and for which tenant. A key reads `bk_<id>_<secret>`: `<id>` (16 hex) finds its row, and the row keeps only
//! a keyed hash of the whole key (HMAC-SHA256 under `auth.key_hash_secret`), so the store never holds a usable key.
//! [`KeyVerifier`] is the [`Authenticator`] of query-api and ingest: it trusts a verified key for
//! `auth.cache_ttl`, so a revocation takes effect on every instance within that long.
//!
//! **Writer: query-api** (revocations by admins, `POST /v1/api_keys/{id}/revoke`), and the operator's `billing tenant`
//! and `billing api-key` commands, which create tenants and keys (the first admin key cannot come from the API).
//! Readers: query-api, ingest.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use billing_runtime::auth::{Authenticator, Principal, Rate, Role, TenantLimits, KEY_PREFIX};
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::TryStreamExt;
use hmac::{Hmac, Mac};
use rand::RngCore;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

/// A tenant as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRow {
    /// Its id: what every other table calls `tenant_id`.
    pub tenant_id: String,
    /// Display name.
    pub name: String,
    /// Creation (wall clock).
    pub created_at: DateTime<Utc>,
    /// Its own rate limits.
    pub limits: TenantLimits,
}

/// A key as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ApiKey {
    /// Id: `bk_<key_id>` is the key's visible prefix.
    pub key_id: String,
    /// Its tenant.
    pub tenant_id: String,
    /// Its role.
    pub role: Role,
    /// Free text: what the key is for.
    pub name: String,
    /// Creation (wall clock).
    pub created_at: DateTime<Utc>,
    /// Revocation, if revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    /// What support may see of the key: `bk_<key_id>`.
    pub fn prefix(&self) -> String {
        format!("{KEY_PREFIX}{}", self.key_id)
    }
}

/// A tenant id: 1 to 128 letters, digits, `-`, `_` or `.`.
pub fn valid_tenant_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The key id a presented token names, if it has the shape of a key.
pub fn key_id_of(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hex_of = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex_of(id, 16) && hex_of(secret, 64)).then_some(id)
}

/// The keyed hash a key is stored as.
pub fn key_hash(hash_secret: &str, token: &str) -> Vec<u8> {
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(hash_secret.as_bytes()).expect("HMAC takes any key");
    mac.update(token.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

fn verify_hash(hash_secret: &str, token: &str, stored: &[u8]) -> bool {
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(hash_secret.as_bytes()).expect("HMAC takes any key");
    mac.update(token.as_bytes());
    // Constant-time comparison.
    mac.verify_slice(stored).is_ok()
}

type TenantRowTuple = (
    String,
    Option<String>,
    DateTime<Utc>,
    Option<i32>,
    Option<i32>,
    Option<i32>,
    Option<i32>,
    Option<i32>,
    Option<i32>,
);

type KeyRow = (
    String,
    String,
    String,
    Option<String>,
    Vec<u8>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
);

fn rate(per_second: Option<i32>, burst: Option<i32>) -> Option<Rate> {
    Some(Rate {
        per_second: u32::try_from(per_second?).ok()?,
        burst: u32::try_from(burst?).ok()?,
    })
}

fn columns(r: Option<Rate>) -> (Option<i32>, Option<i32>) {
    let to = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
    (r.map(|r| to(r.per_second)), r.map(|r| to(r.burst)))
}

fn tenant_from(r: TenantRowTuple) -> TenantRow {
    TenantRow {
        tenant_id: r.0,
        name: r.1.unwrap_or_default(),
        created_at: r.2,
        limits: TenantLimits {
            reads: rate(r.3, r.4),
            writes: rate(r.5, r.6),
            ingest: rate(r.7, r.8),
        },
    }
}

fn key_from(r: KeyRow) -> anyhow::Result<(ApiKey, Vec<u8>)> {
    let role = Role::parse(&r.2)
        .ok_or_else(|| anyhow::anyhow!("key {} has an unknown role {:?}", r.0, r.2))?;
    Ok((
        ApiKey {
            key_id: r.0,
            tenant_id: r.1,
            role,
            name: r.3.unwrap_or_default(),
            created_at: r.5,
            revoked_at: r.6,
        },
        r.4,
    ))
}

const TENANT_COLUMNS: &str = "tenant_id, name, created_at, reads_per_second, reads_burst, \
     writes_per_second, writes_burst, ingest_per_second, ingest_burst";
const KEY_COLUMNS: &str = "key_id, tenant_id, role, name, secret_hash, created_at, revoked_at";

/// Prepared statements over the three tables.
pub struct ApiKeys {
    session: Arc<Session>,
    hash_secret: String,
    insert_tenant: PreparedStatement,
    update_limits: PreparedStatement,
    select_tenant: PreparedStatement,
    insert_key: PreparedStatement,
    insert_key_of_tenant: PreparedStatement,
    select_key: PreparedStatement,
    keys_of_tenant: PreparedStatement,
    revoke: PreparedStatement,
}

impl ApiKeys {
    /// Prepare every statement once; keys are hashed under `hash_secret` (`auth.key_hash_secret`).
    pub async fn new(session: Arc<Session>, ks: &str, hash_secret: &str) -> anyhow::Result<Self> {
        let prepare = |q: String, idempotent: bool| crate::prepare(&session, q, idempotent);
        Ok(ApiKeys {
            insert_tenant: prepare(
                format!(
                    "INSERT INTO {ks}.tenants ({TENANT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
                     IF NOT EXISTS"
                ),
                false,
            )
            .await?,
            update_limits: prepare(
                format!(
                    "UPDATE {ks}.tenants SET reads_per_second = ?, reads_burst = ?, writes_per_second = ?, \
                     writes_burst = ?, ingest_per_second = ?, ingest_burst = ? WHERE tenant_id = ? IF EXISTS"
                ),
                false,
            )
            .await?,
            select_tenant: prepare(
                format!("SELECT {TENANT_COLUMNS} FROM {ks}.tenants WHERE tenant_id = ?"),
                true,
            )
            .await?,
            insert_key: prepare(
                format!("INSERT INTO {ks}.api_keys ({KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"),
                true,
            )
            .await?,
            insert_key_of_tenant: prepare(
                format!("INSERT INTO {ks}.api_keys_by_tenant (tenant_id, key_id) VALUES (?, ?)"),
                true,
            )
            .await?,
            select_key: prepare(
                format!("SELECT {KEY_COLUMNS} FROM {ks}.api_keys WHERE key_id = ?"),
                true,
            )
            .await?,
            keys_of_tenant: prepare(
                format!("SELECT key_id FROM {ks}.api_keys_by_tenant WHERE tenant_id = ?"),
                true,
            )
            .await?,
            revoke: prepare(
                format!("UPDATE {ks}.api_keys SET revoked_at = ? WHERE key_id = ? IF EXISTS"),
                false,
            )
            .await?,
            hash_secret: hash_secret.to_owned(),
            session,
        })
    }

    /// Create a tenant; false when it exists already (nothing changed).
    pub async fn create_tenant(&self, t: &TenantRow) -> anyhow::Result<bool> {
        anyhow::ensure!(
            valid_tenant_id(&t.tenant_id),
            "tenant id {:?} must be 1 to 128 letters, digits, '-', '_' or '.'",
            t.tenant_id
        );
        let (rp, rb) = columns(t.limits.reads);
        let (wp, wb) = columns(t.limits.writes);
        let (ip, ib) = columns(t.limits.ingest);
        let result = self
            .session
            .execute_unpaged(
                &self.insert_tenant,
                (&t.tenant_id, &t.name, t.created_at, rp, rb, wp, wb, ip, ib),
            )
            .await?
            .into_rows_result()?;
        crate::lwt_applied(&result)
    }

    /// Replace a tenant's own rate limits; false when there is no such tenant.
    pub async fn set_limits(&self, tenant: &str, limits: TenantLimits) -> anyhow::Result<bool> {
        let (rp, rb) = columns(limits.reads);
        let (wp, wb) = columns(limits.writes);
        let (ip, ib) = columns(limits.ingest);
        let result = self
            .session
            .execute_unpaged(&self.update_limits, (rp, rb, wp, wb, ip, ib, tenant))
            .await?
            .into_rows_result()?;
        crate::lwt_applied(&result)
    }

    /// One tenant.
    pub async fn tenant(&self, tenant: &str) -> anyhow::Result<Option<TenantRow>> {
        Ok(self
            .session
            .execute_unpaged(&self.select_tenant, (tenant,))
            .await?
            .into_rows_result()?
            .maybe_first_row::<TenantRowTuple>()?
            .map(tenant_from))
    }

    /// Create a key of `role` for an existing tenant: the key (`bk_<id>_<secret>`, to show once) and its row.
    pub async fn create_key(
        &self,
        tenant: &str,
        role: Role,
        name: &str,
        now: DateTime<Utc>,
    ) -> anyhow::Result<(String, ApiKey)> {
        anyhow::ensure!(
            self.tenant(tenant).await?.is_some(),
            "there is no tenant {tenant:?}: create it first (billing tenant create {tenant})"
        );
        let mut id = [0u8; 8];
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut id);
        rand::rng().fill_bytes(&mut secret);
        let key_id = hex(&id);
        let token = format!("{KEY_PREFIX}{key_id}_{}", hex(&secret));
        let hash = key_hash(&self.hash_secret, &token);
        // The listing entry first: a key that exists is always listed (and so can be found and revoked).
        self.session
            .execute_unpaged(&self.insert_key_of_tenant, (tenant, &key_id))
            .await?;
        self.session
            .execute_unpaged(
                &self.insert_key,
                (
                    &key_id,
                    tenant,
                    role.as_str(),
                    name,
                    &hash,
                    now,
                    None::<DateTime<Utc>>,
                ),
            )
            .await?;
        let key = ApiKey {
            key_id,
            tenant_id: tenant.to_owned(),
            role,
            name: name.to_owned(),
            created_at: now,
            revoked_at: None,
        };
        Ok((token, key))
    }

    async fn key_row(&self, key_id: &str) -> anyhow::Result<Option<(ApiKey, Vec<u8>)>> {
        self.session
            .execute_unpaged(&self.select_key, (key_id,))
            .await?
            .into_rows_result()?
            .maybe_first_row::<KeyRow>()?
            .map(key_from)
            .transpose()
    }

    /// One key (by id, with or without its `bk_` prefix).
    pub async fn key(&self, key_id: &str) -> anyhow::Result<Option<ApiKey>> {
        let id = key_id.strip_prefix(KEY_PREFIX).unwrap_or(key_id);
        Ok(self.key_row(id).await?.map(|(k, _)| k))
    }

    /// Every key of a tenant, oldest first.
    pub async fn keys_of(&self, tenant: &str) -> anyhow::Result<Vec<ApiKey>> {
        let ids: Vec<(String,)> = self
            .session
            .execute_iter(self.keys_of_tenant.clone(), (tenant,))
            .await?
            .rows_stream::<(String,)>()?
            .try_collect()
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for (id,) in ids {
            if let Some((k, _)) = self.key_row(&id).await? {
                out.push(k);
            }
        }
        out.sort_by(|a, b| (a.created_at, &a.key_id).cmp(&(b.created_at, &b.key_id)));
        Ok(out)
    }

    /// Revoke a key (by id, with or without its `bk_` prefix): the key as it is now, or `None` when there is no
    /// such key. Revoking a revoked key keeps its first revocation time.
    pub async fn revoke(&self, key_id: &str, now: DateTime<Utc>) -> anyhow::Result<Option<ApiKey>> {
        let id = key_id.strip_prefix(KEY_PREFIX).unwrap_or(key_id);
        let Some(key) = self.key(id).await? else {
            return Ok(None);
        };
        if key.revoked_at.is_some() {
            return Ok(Some(key));
        }
        let result = self
            .session
            .execute_unpaged(&self.revoke, (now, id))
            .await?
            .into_rows_result()?;
        anyhow::ensure!(crate::lwt_applied(&result)?, "key {id} vanished");
        self.key(id).await
    }

    /// The principal of a presented key: `None` unless it is a well-formed, known, unrevoked key whose hash matches.
    pub async fn verify(&self, token: &str) -> anyhow::Result<Option<Principal>> {
        let Some(id) = key_id_of(token) else {
            return Ok(None);
        };
        let Some((key, hash)) = self.key_row(id).await? else {
            return Ok(None);
        };
        if key.revoked_at.is_some() || !verify_hash(&self.hash_secret, token, &hash) {
            return Ok(None);
        }
        let limits = self
            .tenant(&key.tenant_id)
            .await?
            .map(|t| t.limits)
            .unwrap_or_default();
        Ok(Some(Principal {
            tenant_id: key.tenant_id,
            key_id: key.key_id,
            role: key.role,
            limits,
        }))
    }
}

/// Most keys [`KeyVerifier`] remembers (valid or not); beyond it, it forgets them all and reads again.
const CACHE_CAPACITY: usize = 100_000;

/// When a presented key was verified, and its principal (`None`: not a valid key).
type Verified = (Instant, Option<Principal>);

/// Verifies keys against the store, trusting each answer (valid or not) for `ttl`. Keyed by the hash of the presented
/// key, so a wrong secret never rides on a right key's entry.
pub struct KeyVerifier {
    keys: Arc<ApiKeys>,
    ttl: Duration,
    cache: Mutex<HashMap<Vec<u8>, Verified>>,
}

impl KeyVerifier {
    /// A verifier over `keys`, trusting answers for `ttl` (`auth.cache_ttl`).
    pub fn new(keys: Arc<ApiKeys>, ttl: Duration) -> Self {
        KeyVerifier {
            keys,
            ttl,
            cache: Mutex::default(),
        }
    }

    async fn verify_cached(&self, token: &str) -> anyhow::Result<Option<Principal>> {
        let entry = key_hash(&self.keys.hash_secret, token);
        {
            let cache = self.cache.lock().expect("key cache lock");
            if let Some((at, p)) = cache.get(&entry) {
                if at.elapsed() < self.ttl {
                    return Ok(p.clone());
                }
            }
        }
        let verified = self.keys.verify(token).await?;
        let mut cache = self.cache.lock().expect("key cache lock");
        if cache.len() >= CACHE_CAPACITY {
            let ttl = self.ttl;
            cache.retain(|_, (at, _)| at.elapsed() < ttl);
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
        }
        cache.insert(entry, (Instant::now(), verified.clone()));
        Ok(verified)
    }
}

impl Authenticator for KeyVerifier {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<Option<Principal>>> {
        Box::pin(self.verify_cached(token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_a_shape_and_a_keyed_hash() {
        let token = format!("bk_0123456789abcdef_{}", "ab".repeat(32));
        assert_eq!(key_id_of(&token), Some("0123456789abcdef"));
        for bad in [
            "0123456789abcdef",
            "bk_0123456789abcdef",
            "bk_0123456789abcdeg_00",
            &format!("bk_0123456789abcdef_{}", "ab".repeat(31)),
            &format!("sk_0123456789abcdef_{}", "ab".repeat(32)),
        ] {
            assert_eq!(key_id_of(bad), None, "{bad}");
        }
        let h = key_hash("a secret of sixteen", &token);
        assert!(verify_hash("a secret of sixteen", &token, &h));
        assert!(!verify_hash("another secret....", &token, &h));
        assert!(!verify_hash(
            "a secret of sixteen",
            &token.replace("ab", "ba"),
            &h
        ));
        assert!(valid_tenant_id("acme-eu.prod_1"));
        assert!(!valid_tenant_id("acme eu") && !valid_tenant_id("") && !valid_tenant_id("a/b"));
    }
}
