//! `/v1/test_clocks` (Stripe's test clocks): a clock is a stream of `ClockTick`s on every lifecycle partition.
//! Customers created with its id live on its time; advancing it runs their bill runs. The clock is `ready` at T
//! once every partition has processed T, `advancing` before.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use billing_runtime::http::Tenant;
use billing_schemas::lifecycle::{ClockTick, Lifecycle, LifecycleEvent};
use chrono::{DateTime, SubsecRound, Utc};

use crate::error::ApiError;
use crate::request::{ApiJson, ApiQuery, Check, WriteQuery};
use crate::wait::{answer, event_id, Answer, ClockState};
use crate::AppState;

/// Body of `POST /v1/test_clocks`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"frozen_time": "2026-01-01T00:00:00Z"}))]
pub struct CreateClock {
    frozen_time: DateTime<Utc>,
    #[serde(default)]
    name: Option<String>,
}

/// Body of `POST /v1/test_clocks/{id}/advance`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Advance {
    frozen_time: DateTime<Utc>,
    /// Seconds to wait for the bill runs (0 to 300); the query parameter of the same name also works.
    #[serde(default)]
    wait_seconds: Option<u64>,
}

/// A new clock id.
pub fn clock_id() -> String {
    format!("clock_{}", uuid::Uuid::new_v4().simple())
}

/// Times travel as epoch milliseconds: a clock is at the millisecond its tick carries.
fn on_the_wire(t: DateTime<Utc>) -> DateTime<Utc> {
    t.trunc_subsecs(3)
}

/// A clock as the API shows it.
fn view(id: &str, s: &ClockState) -> serde_json::Value {
    serde_json::json!({
        "object": "test_clock",
        "id": id,
        "frozen_time": s.frozen_time,
        "status": s.status(),
        "now": s.now,
        "partitions": s.partitions,
        "partitions_at_frozen_time": s.partitions_at_frozen_time,
    })
}

/// The answer after ticking the clock to `t`: 200/201 when every partition processed it, else 202 advancing.
fn ticked(
    id: &str,
    t: DateTime<Utc>,
    state: Option<&ClockState>,
    ready: bool,
    done: StatusCode,
    event_id: &str,
) -> Result<Answer, ApiError> {
    let mut body = match state {
        Some(s) => view(id, s),
        None => serde_json::json!({"object": "test_clock", "id": id}),
    };
    body["frozen_time"] = serde_json::json!(t);
    body["event_id"] = serde_json::json!(event_id);
    if ready {
        body["status"] = "ready".into();
        answer(done, body)
    } else {
        body["status"] = "advancing".into();
        answer(StatusCode::ACCEPTED, body)
    }
}

/// Publish a tick of the clock to every lifecycle partition and wait until they have all processed it.
async fn tick(
    state: &AppState,
    tenant: &str,
    id: &str,
    t: DateTime<Utc>,
    deadline: tokio::time::Instant,
    done: StatusCode,
) -> Result<Answer, ApiError> {
    let ev = LifecycleEvent {
        tenant_id: tenant.to_owned(),
        event_id: event_id(),
        occurred_at: t,
        payload: Lifecycle::ClockTick(ClockTick {
            clock_id: id.to_owned(),
            now: t,
        }),
    };
    state
        .publisher
        .tick_everywhere(&ev, billing_schemas::Encoding::Json, state.partitions)
        .await?;
    let (seen, ready) = state.clock_ready(tenant, id, t, deadline).await;
    ticked(id, t, seen.as_ref(), ready, done, &ev.event_id)
}

/// `POST /v1/test_clocks`.
pub async fn create(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    ApiQuery(q): ApiQuery<WriteQuery>,
    ApiJson(body): ApiJson<CreateClock>,
) -> Result<Answer, ApiError> {
    let deadline = state.deadline(&q)?;
    let mut c = Check::new();
    if let Some(n) = &body.name {
        c.text("name", n, 255);
    }
    c.finish()?;
    let id = clock_id();
    let frozen_time = on_the_wire(body.frozen_time);
    let mut answer = tick(
        &state,
        &tenant,
        &id,
        frozen_time,
        deadline,
        StatusCode::CREATED,
    )
    .await?;
    if let Some(n) = body.name {
        answer.1 .0["name"] = n.into();
    }
    Ok(answer)
}

/// `GET /v1/test_clocks/{id}`.
pub async fn get(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    match state.clock(&tenant, &id).await? {
        Some(s) => Ok(Json(view(&id, &s))),
        None => Err(ApiError::NotFound(format!("no test clock {id:?}"))),
    }
}

/// `POST /v1/test_clocks/{id}/advance`: `frozen_time` must be later than the clock's current time (the time every
/// partition has processed; ticking a partition to a time it has passed changes nothing there, so an advance that
/// was cut short can be repeated).
pub async fn advance(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<WriteQuery>,
    ApiJson(body): ApiJson<Advance>,
) -> Result<Answer, ApiError> {
    let wait = WriteQuery {
        wait_seconds: body.wait_seconds.or(q.wait_seconds),
    };
    let deadline = state.deadline(&wait)?;
    let Some(current) = state.clock(&tenant, &id).await? else {
        return Err(ApiError::NotFound(format!("no test clock {id:?}")));
    };
    let frozen_time = on_the_wire(body.frozen_time);
    if frozen_time <= current.now {
        return Err(ApiError::invalid(
            "frozen_time",
            format!(
                "{} is not later than the clock's time {}",
                frozen_time, current.now
            ),
        ));
    }
    tick(&state, &tenant, &id, frozen_time, deadline, StatusCode::OK).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::parse_json;
    use std::collections::HashMap;

    #[test]
    fn clock_ids_and_bodies() {
        let id = clock_id();
        assert!(id.starts_with("clock_") && id.len() == 6 + 32, "{id}");
        let b: CreateClock = parse_json(br#"{"frozen_time": "2026-01-01T00:00:00Z"}"#).unwrap();
        assert_eq!(b.frozen_time.to_rfc3339(), "2026-01-01T00:00:00+00:00");
        assert!(parse_json::<CreateClock>(br#"{"frozen_time": "tomorrow"}"#).is_err());
        assert!(
            parse_json::<Advance>(br#"{"frozen_time": "2026-01-01T00:00:00Z", "speed": 2}"#)
                .is_err()
        );
    }

    #[test]
    fn ticking_answers_ready_or_advancing() {
        let t: DateTime<Utc> = "2026-02-01T00:00:00Z".parse().unwrap();
        let progress: HashMap<i32, DateTime<Utc>> = (0..3).map(|p| (p, t)).collect();
        let s = ClockState::new(&progress, 3).unwrap();
        let (status, Json(body)) =
            ticked("clock_x", t, Some(&s), true, StatusCode::OK, "evt_1").unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "ready");
        let (status, Json(body)) =
            ticked("clock_x", t, None, false, StatusCode::CREATED, "evt_1").unwrap();
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(body["status"], "advancing");
        assert_eq!(body["id"], "clock_x");
    }
}
