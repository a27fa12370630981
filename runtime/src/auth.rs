//! API keys at the HTTP edge, for every service that serves `/v1` (query-api and ingest): who a request acts for
//! (a [`Principal`], decided by the key alone), whether its role may call the route ([`Access`]), and the rate limit
//! of its key per route class ([`RateLimiters`]). How keys are stored and verified is the store's
//! (`billing_store::api_keys`), behind [`Authenticator`]. The rules are in `docs/api.md`, "Authentication".

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

pub use crate::config::Rate;
use crate::config::RateLimitsConfig;
use crate::http::{Problem, TENANT_HEADER};

/// What every API key starts with; the next part, up to the second `_`, is its id (shown in lists and logs).
pub const KEY_PREFIX: &str = "bk_";

/// What a key may do. A key has one role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including API keys and webhook endpoints.
    Admin,
    /// The management API (reads and writes) and usage.
    Write,
    /// Reads only.
    Read,
    /// Analytics only.
    Analyst,
    /// Usage events only (the ingest gateway).
    Ingest,
}

impl Role {
    /// Every role, in documentation order.
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Write,
        Role::Read,
        Role::Analyst,
        Role::Ingest,
    ];

    /// Its name (`admin`, `write`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Write => "write",
            Role::Read => "read",
            Role::Analyst => "analyst",
            Role::Ingest => "ingest",
        }
    }

    /// The role of this name.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether a key of this role may call a route that needs `access`.
    pub fn allows(self, access: Access) -> bool {
        matches!(
            (self, access),
            (Role::Admin, _)
                | (Role::Write, Access::Read | Access::Write | Access::Ingest)
                | (Role::Read, Access::Read)
                | (Role::Analyst, Access::Analytics)
                | (Role::Ingest, Access::Ingest)
        )
    }
}

/// What a route needs of the key that calls it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// Reading the tenant's billing data.
    Read,
    /// Changing it (customers, subscriptions, catalog, invoices, wallets, payments, test clocks).
    Write,
    /// Sending usage events.
    Ingest,
    /// Analytics reports.
    Analytics,
    /// Administration: API keys and webhook endpoints.
    Admin,
}

impl Access {
    /// The rate-limit class of such routes.
    pub fn rate_class(self) -> RateClass {
        match self {
            Access::Read | Access::Analytics => RateClass::Reads,
            Access::Write | Access::Admin => RateClass::Writes,
            Access::Ingest => RateClass::Ingest,
        }
    }
}

/// A rate-limit class: each key has a budget per class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateClass {
    /// Reads.
    Reads,
    /// Writes.
    Writes,
    /// Usage ingestion.
    Ingest,
}

/// A tenant's own rate limits, where they differ from the configured defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TenantLimits {
    /// Reads.
    pub reads: Option<Rate>,
    /// Writes.
    pub writes: Option<Rate>,
    /// Ingest.
    pub ingest: Option<Rate>,
}

impl TenantLimits {
    fn of(&self, class: RateClass) -> Option<Rate> {
        match class {
            RateClass::Reads => self.reads,
            RateClass::Writes => self.writes,
            RateClass::Ingest => self.ingest,
        }
    }
}

/// Who a request acts for: decided by its API key, and by nothing the request says otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The key's tenant.
    pub tenant_id: String,
    /// The key's id (its visible prefix, `bk_<id>`, without `bk_`).
    pub key_id: String,
    /// The key's role.
    pub role: Role,
    /// The tenant's own rate limits.
    pub limits: TenantLimits,
}

/// Verifies a presented key: `Ok(None)` for an unknown, revoked or wrong one; `Err` when the store cannot say.
pub trait Authenticator: Send + Sync + 'static {
    /// The principal of this bearer token, if it is a valid key.
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<Option<Principal>>>;
}

/// The longest a key verification may take before the request is answered 503.
pub const VERIFY_TIMEOUT: Duration = Duration::from_secs(5);

/// How a service decides the [`Access`] of a route: from the method and the route's path template
/// (`/v1/invoices/{invoice_id}`); `None` for a route it does not know, which is refused (fail closed).
pub type AccessOf = fn(&Method, &str) -> Option<Access>;

/// Everything the authentication middleware needs.
#[derive(Clone)]
pub struct Gate {
    authenticator: Arc<dyn Authenticator>,
    limiters: Arc<RateLimiters>,
    access_of: AccessOf,
}

impl Gate {
    /// A gate verifying keys with `authenticator`, deciding routes with `access_of`, limiting with `limits`.
    pub fn new(
        authenticator: Arc<dyn Authenticator>,
        limits: RateLimitsConfig,
        access_of: AccessOf,
    ) -> Self {
        Gate {
            authenticator,
            limiters: Arc::new(RateLimiters::new(limits)),
            access_of,
        }
    }
}

fn unauthorized(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::UNAUTHORIZED, detail).with_header(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"billing\""),
    )
}

fn forbidden(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::FORBIDDEN, detail)
}

/// The bearer token of a request.
fn bearer(req: &Request) -> Result<&str, Problem> {
    let raw = req.headers().get(header::AUTHORIZATION).ok_or_else(|| {
        unauthorized("an API key is required: send `Authorization: Bearer <key>`")
    })?;
    let raw = raw
        .to_str()
        .map_err(|_| unauthorized("the Authorization header must be ASCII"))?;
    let (scheme, token) = raw.split_once(' ').unwrap_or((raw, ""));
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(unauthorized(
            "the Authorization header must be `Bearer <key>`",
        ));
    }
    Ok(token.trim())
}

/// Middleware for the `/v1` routes (as a route layer, so that the route's template is known): verify the key,
/// check its role against the route, refuse an `X-Tenant-Id` naming another tenant, apply the key's rate limit,
/// and hand the [`Principal`] to the handlers. Answers carry `RateLimit-*` headers.
pub async fn gate(
    axum::extract::State(gate): axum::extract::State<Gate>,
    mut req: Request,
    next: Next,
) -> Response {
    let presented = bearer(&req).map(str::to_owned);
    let named_tenant = req.headers().get(TENANT_HEADER).cloned();
    let principal = match authorize(&gate, presented, named_tenant).await {
        Ok(p) => p,
        Err(problem) => return problem.into_response(),
    };
    let access = req
        .extensions()
        .get::<MatchedPath>()
        .and_then(|m| (gate.access_of)(req.method(), m.as_str()));
    let Some(access) = access else {
        tracing::error!(method = %req.method(), path = %req.uri().path(), "a route without an access rule");
        return forbidden("no API key may call this route").into_response();
    };
    if !principal.role.allows(access) {
        return forbidden(format!(
            "a key with the {} role cannot call {} {}",
            principal.role.as_str(),
            req.method(),
            req.uri().path()
        ))
        .into_response();
    }
    let limit = match gate.limiters.check(&principal, access.rate_class()) {
        Ok(state) => state,
        Err(problem) => return problem.into_response(),
    };
    tracing::Span::current().record("tenant", principal.tenant_id.as_str());
    req.extensions_mut().insert(principal);
    let mut response = next.run(req).await;
    limit.write(response.headers_mut());
    response
}

async fn authorize(
    gate: &Gate,
    presented: Result<String, Problem>,
    named_tenant: Option<HeaderValue>,
) -> Result<Principal, Problem> {
    let token = presented?;
    let verified = tokio::time::timeout(VERIFY_TIMEOUT, gate.authenticator.authenticate(&token))
        .await
        .map_err(|_| anyhow::anyhow!("timed out after {VERIFY_TIMEOUT:?}"))
        .and_then(|r| r);
    let principal = match verified {
        Ok(Some(p)) => p,
        Ok(None) => return Err(unauthorized("the API key is unknown or revoked")),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "API key verification failed");
            let mut p = Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the API key could not be verified now; retry",
            );
            p.retry_after = Some(1);
            return Err(p);
        }
    };
    if let Some(named) = named_tenant {
        if named.as_bytes() != principal.tenant_id.as_bytes() {
            return Err(forbidden(format!(
                "the {TENANT_HEADER} header names another tenant than the API key's; the key decides the tenant"
            )));
        }
    }
    Ok(principal)
}

type Limiter =
    RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

/// One keyed limiter per (class, rate) in use: keys of tenants with the default limits share one, a tenant with
/// its own rate gets its own. Keyed by key id, so one key at its limit never slows another. Idle keys' state is
/// pruned every minute.
pub struct RateLimiters {
    defaults: RateLimitsConfig,
    limiters: Mutex<HashMap<(RateClass, Rate), Arc<Limiter>>>,
    pruned: Mutex<Instant>,
    clock: DefaultClock,
}

const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// What a rate-limit check leaves to say in the answer's headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitState {
    /// The burst.
    pub limit: u32,
    /// Requests left at once.
    pub remaining: u32,
    /// Seconds until the full burst is available again.
    pub reset: u64,
}

impl LimitState {
    /// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`.
    pub fn write(&self, headers: &mut axum::http::HeaderMap) {
        for (name, value) in self.headers() {
            headers.insert(name, value);
        }
    }

    fn headers(&self) -> [(HeaderName, HeaderValue); 3] {
        [
            (
                HeaderName::from_static("ratelimit-limit"),
                HeaderValue::from(self.limit),
            ),
            (
                HeaderName::from_static("ratelimit-remaining"),
                HeaderValue::from(self.remaining),
            ),
            (
                HeaderName::from_static("ratelimit-reset"),
                HeaderValue::from(self.reset),
            ),
        ]
    }
}

impl RateLimiters {
    /// Limiters with these defaults.
    pub fn new(defaults: RateLimitsConfig) -> Self {
        RateLimiters {
            defaults,
            limiters: Mutex::default(),
            pruned: Mutex::new(Instant::now()),
            clock: DefaultClock::default(),
        }
    }

    fn default_of(&self, class: RateClass) -> Rate {
        match class {
            RateClass::Reads => self.defaults.reads,
            RateClass::Writes => self.defaults.writes,
            RateClass::Ingest => self.defaults.ingest,
        }
    }

    /// Take one request of `class` from the principal's key: its state, or a 429 saying when to retry.
    pub fn check(&self, p: &Principal, class: RateClass) -> Result<LimitState, Problem> {
        let rate = p.limits.of(class).unwrap_or_else(|| self.default_of(class));
        let per_second = NonZeroU32::new(rate.per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
        let limiter = {
            let mut all = self.limiters.lock().expect("limiters lock");
            all.entry((class, rate))
                .or_insert_with(|| {
                    Arc::new(
                        RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst))
                            .with_middleware::<StateInformationMiddleware>(),
                    )
                })
                .clone()
        };
        self.prune();
        let reset = |remaining: u32| {
            u64::from(burst.get() - remaining.min(burst.get()))
                .div_ceil(u64::from(per_second.get()))
        };
        match limiter.check_key(&p.key_id) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                Ok(LimitState {
                    limit: burst.get(),
                    remaining,
                    reset: reset(remaining),
                })
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                let mut problem = Problem::rate_limited(secs);
                let state = LimitState {
                    limit: burst.get(),
                    remaining: 0,
                    reset: reset(0),
                };
                for (name, value) in state.headers() {
                    problem = problem.with_header(name, value);
                }
                Err(problem)
            }
        }
    }

    /// Forget keys idle long enough to have their full burst back, and limiters nobody uses any more.
    fn prune(&self) {
        {
            let mut last = self.pruned.lock().expect("prune lock");
            if last.elapsed() < PRUNE_EVERY {
                return;
            }
            *last = Instant::now();
        }
        let mut all = self.limiters.lock().expect("limiters lock");
        all.retain(|_, l| {
            l.retain_recent();
            l.shrink_to_fit();
            !l.is_empty()
        });
    }

    /// Keys with state in some limiter (for tests and metrics).
    pub fn tracked_keys(&self) -> usize {
        let all = self.limiters.lock().expect("limiters lock");
        all.values().map(|l| l.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_second: u32, burst: u32) -> RateLimitsConfig {
        let r = Rate { per_second, burst };
        RateLimitsConfig {
            reads: r,
            writes: r,
            ingest: r,
        }
    }

    fn principal(key: &str, limits: TenantLimits) -> Principal {
        Principal {
            tenant_id: "t".into(),
            key_id: key.into(),
            role: Role::Read,
            limits,
        }
    }

    #[test]
    fn roles_allow_what_the_docs_say() {
        use Access::*;
        let table = [
            (Role::Admin, [true, true, true, true, true]),
            (Role::Write, [true, true, true, false, false]),
            (Role::Read, [true, false, false, false, false]),
            (Role::Analyst, [false, false, false, true, false]),
            (Role::Ingest, [false, false, true, false, false]),
        ];
        for (role, allowed) in table {
            for (access, ok) in [Read, Write, Ingest, Analytics, Admin]
                .into_iter()
                .zip(allowed)
            {
                assert_eq!(role.allows(access), ok, "{role:?} {access:?}");
            }
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn a_key_at_its_limit_does_not_slow_another_and_a_tenant_may_have_its_own() {
        let l = RateLimiters::new(limits(1, 2));
        let a = principal("a", TenantLimits::default());
        let first = l.check(&a, RateClass::Reads).unwrap();
        assert_eq!((first.limit, first.remaining), (2, 1));
        assert_eq!(first.reset, 1);
        assert_eq!(l.check(&a, RateClass::Reads).unwrap().remaining, 0);
        let refused = l.check(&a, RateClass::Reads).unwrap_err();
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.retry_after, Some(1));
        assert!(refused
            .headers
            .iter()
            .any(|(n, v)| n == "ratelimit-remaining" && v == "0"));
        // Another class of the same key, and another key, are untouched.
        assert!(l.check(&a, RateClass::Writes).is_ok());
        assert_eq!(
            l.check(&principal("b", TenantLimits::default()), RateClass::Reads)
                .unwrap()
                .remaining,
            1
        );
        // A tenant with its own limit.
        let big = TenantLimits {
            reads: Some(Rate {
                per_second: 10,
                burst: 5,
            }),
            ..Default::default()
        };
        let c = principal("c", big);
        for left in (0..5).rev() {
            assert_eq!(l.check(&c, RateClass::Reads).unwrap().remaining, left);
        }
        assert!(l.check(&c, RateClass::Reads).is_err());
        assert_eq!(l.tracked_keys(), 4);
    }
}
