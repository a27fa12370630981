//! `billing tenant` and `billing api-key`: the tenants that may use the API and their keys (`docs/api.md`,
//! "Authentication"). They write the store directly; query-api and ingest see a change within `auth.cache_ttl`.

use std::sync::Arc;

use anyhow::Context;
use billing_runtime::auth::{Rate, Role, TenantLimits};
use billing_runtime::{cql, Settings};
use billing_store::api_keys::{ApiKey, ApiKeys, TenantRow};
use clap::{Args, Subcommand};

/// `billing tenant`.
#[derive(Subcommand)]
pub enum TenantCommand {
    /// Create a tenant (an id of 1 to 128 letters, digits, '-', '_' or '.'); it fails if the tenant exists.
    Create(TenantArgs),
    /// Replace a tenant's own rate limits (those not given fall back to `[rate_limits]`).
    Update(TenantArgs),
    /// Show a tenant and its keys.
    Show {
        /// The tenant.
        tenant: String,
    },
}

/// A tenant and its settings.
#[derive(Args)]
pub struct TenantArgs {
    /// The tenant id.
    tenant: String,
    /// Display name.
    #[arg(long, default_value = "")]
    name: String,
    /// A rate limit of the tenant's keys: `<class>=<per second>/<burst>`, class `reads`, `writes` or `ingest`;
    /// repeat for several classes.
    #[arg(long = "limit", value_name = "CLASS=RATE/BURST")]
    limits: Vec<String>,
}

/// `billing api-key`.
#[derive(Subcommand)]
pub enum ApiKeyCommand {
    /// Create a key and print it, once: only a keyed hash of it is stored.
    Create {
        /// Its tenant (which must exist).
        #[arg(long)]
        tenant: String,
        /// admin, write, read, analyst or ingest.
        #[arg(long)]
        role: String,
        /// What the key is for.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// A tenant's keys (their visible prefixes, never the keys).
    List {
        /// The tenant.
        #[arg(long)]
        tenant: String,
    },
    /// Revoke a key (by id or `bk_<id>` prefix): every instance refuses it within `auth.cache_ttl`.
    Revoke {
        /// The key's id or prefix.
        key: String,
    },
}

fn parse_limits(raw: &[String]) -> anyhow::Result<TenantLimits> {
    let mut limits = TenantLimits::default();
    for item in raw {
        let parse = || -> Option<(&str, Rate)> {
            let (class, rate) = item.split_once('=')?;
            let (per_second, burst) = rate.split_once('/')?;
            let rate = Rate {
                per_second: per_second.trim().parse().ok().filter(|v| *v > 0)?,
                burst: burst.trim().parse().ok().filter(|v| *v > 0)?,
            };
            Some((class.trim(), rate))
        };
        let (class, rate) = parse().with_context(|| {
            format!("--limit {item:?}: expected <class>=<per second>/<burst>, both at least 1")
        })?;
        let slot = match class {
            "reads" => &mut limits.reads,
            "writes" => &mut limits.writes,
            "ingest" => &mut limits.ingest,
            other => {
                anyhow::bail!("--limit {item:?}: unknown class {other:?} (reads, writes or ingest)")
            }
        };
        *slot = Some(rate);
    }
    Ok(limits)
}

async fn store(settings: &Settings) -> anyhow::Result<ApiKeys> {
    let session = Arc::new(cql::connect(&settings.cassandra).await?);
    ApiKeys::new(
        session,
        &settings.cassandra.keyspace,
        &settings.auth.key_hash_secret,
    )
    .await
}

fn show_limit(r: Option<Rate>) -> String {
    r.map_or("default".to_owned(), |r| {
        format!("{}/s, burst {}", r.per_second, r.burst)
    })
}

fn show_key(k: &ApiKey) {
    let status = k.revoked_at.map_or("active".to_owned(), |t| {
        format!("revoked {}", t.to_rfc3339())
    });
    println!(
        "{}  {:<7}  {}  {}  {}",
        k.prefix(),
        k.role.as_str(),
        k.created_at.to_rfc3339(),
        status,
        k.name
    );
}

/// Run a `billing tenant` command.
pub async fn tenant(settings: Settings, cmd: TenantCommand) -> anyhow::Result<()> {
    let keys = store(&settings).await?;
    match cmd {
        TenantCommand::Create(a) => {
            let row = TenantRow {
                tenant_id: a.tenant.clone(),
                name: a.name,
                created_at: chrono::Utc::now(),
                limits: parse_limits(&a.limits)?,
            };
            anyhow::ensure!(
                keys.create_tenant(&row).await?,
                "tenant {:?} exists already (billing tenant update changes its limits)",
                a.tenant
            );
            println!("tenant {} created", a.tenant);
            println!(
                "next: billing api-key create --tenant {} --role admin",
                a.tenant
            );
        }
        TenantCommand::Update(a) => {
            anyhow::ensure!(
                keys.set_limits(&a.tenant, parse_limits(&a.limits)?).await?,
                "there is no tenant {:?}",
                a.tenant
            );
            println!("tenant {} updated", a.tenant);
        }
        TenantCommand::Show { tenant } => {
            let t = keys
                .tenant(&tenant)
                .await?
                .with_context(|| format!("there is no tenant {tenant:?}"))?;
            println!(
                "tenant {} ({}), created {}",
                t.tenant_id,
                t.name,
                t.created_at.to_rfc3339()
            );
            println!(
                "rate limits: reads {}; writes {}; ingest {}",
                show_limit(t.limits.reads),
                show_limit(t.limits.writes),
                show_limit(t.limits.ingest)
            );
            for k in keys.keys_of(&tenant).await? {
                show_key(&k);
            }
        }
    }
    Ok(())
}

/// Run a `billing api-key` command.
pub async fn api_key(settings: Settings, cmd: ApiKeyCommand) -> anyhow::Result<()> {
    let keys = store(&settings).await?;
    match cmd {
        ApiKeyCommand::Create { tenant, role, name } => {
            let role = Role::parse(&role).with_context(|| {
                format!("unknown role {role:?}: admin, write, read, analyst or ingest")
            })?;
            let (secret, key) = keys
                .create_key(&tenant, role, &name, chrono::Utc::now())
                .await?;
            eprintln!(
                "key {} ({} of tenant {}): shown once, store it now",
                key.prefix(),
                role.as_str(),
                tenant
            );
            println!("{secret}");
        }
        ApiKeyCommand::List { tenant } => {
            for k in keys.keys_of(&tenant).await? {
                show_key(&k);
            }
        }
        ApiKeyCommand::Revoke { key } => {
            let k = keys
                .revoke(&key, chrono::Utc::now())
                .await?
                .with_context(|| format!("there is no key {key:?}"))?;
            show_key(&k);
        }
    }
    Ok(())
}

/// An admin key for `tenant`, created with the tenant when it does not exist: what the demo calls the API with.
pub async fn demo_key(settings: &Settings, tenant: &str) -> anyhow::Result<String> {
    admin_key(settings, tenant, TenantLimits::default()).await
}

/// Rate limits no benchmark reaches.
pub fn unlimited() -> TenantLimits {
    let r = Some(Rate {
        per_second: 1_000_000,
        burst: 1_000_000,
    });
    TenantLimits {
        reads: r,
        writes: r,
        ingest: r,
    }
}

/// A new admin key for `tenant`, whose rate limits become `limits` (the tenant is created if absent).
pub async fn admin_key(
    settings: &Settings,
    tenant: &str,
    limits: TenantLimits,
) -> anyhow::Result<String> {
    let keys = store(settings).await?;
    let now = chrono::Utc::now();
    let row = TenantRow {
        tenant_id: tenant.to_owned(),
        name: tenant.to_owned(),
        created_at: now,
        limits,
    };
    if !keys.create_tenant(&row).await? {
        keys.set_limits(tenant, limits).await?;
    }
    let (secret, _) = keys.create_key(tenant, Role::Admin, "demo", now).await?;
    Ok(secret)
}

/// `Authorization: Bearer <key>`, as default headers of an HTTP client.
pub fn bearer_headers(key: &str) -> anyhow::Result<reqwest::header::HeaderMap> {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {key}").parse()?,
    );
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_or_say_what_is_wrong() {
        let l = parse_limits(&["reads=10/20".into(), "ingest=5/5".into()]).unwrap();
        assert_eq!(
            l.reads,
            Some(Rate {
                per_second: 10,
                burst: 20
            })
        );
        assert_eq!(l.writes, None);
        assert_eq!(l.ingest.unwrap().burst, 5);
        for bad in ["reads=10", "reads=0/5", "admin=1/1", "reads=a/b"] {
            assert!(parse_limits(&[bad.into()]).is_err(), "{bad}");
        }
    }
}
