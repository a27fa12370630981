//! Credit notes: `POST /v1/invoices/{id}/credit_notes` checks the request against what remains creditable (the same
//! check the invoicer makes when it issues it, `billing_store::credit_notes::price`), publishes a
//! `CreditNoteRequested` on `billing.lifecycle` and answers the numbered credit note once the invoicer issued it;
//! `GET /v1/credit_notes/{id}` and `GET /v1/invoices/{id}/credit_notes` read them back.
//!
//! Type `refund` gives the money back through the payment provider (the payments service refunds the invoice's
//! charge); type `credit` adds it to the customer's credit balance, which the payments service applies to the
//! customer's open invoices before charging them.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use billing_runtime::http::Tenant;
use billing_schemas::lifecycle::{
    CreditNoteKind, CreditNoteLineRequest, CreditNoteRequested, Lifecycle, LifecycleEvent,
};
use billing_store::credit_notes::{price, CreditNoteView, Creditable, ISSUED, REJECTED};
use billing_store::invoices::InvoiceStatus;

use crate::error::ApiError;
use crate::request::{
    after_cursor, page, page_limit, ApiJson, ApiQuery, Check, PageQuery, WriteQuery,
};
use crate::wait::{answer, event_id, pending, Answer};
use crate::{customers, AppState};

/// Reasons a credit note may give (Stripe's, and Lago's `order_cancellation` and `other`).
pub const REASONS: [&str; 6] = [
    "duplicate",
    "fraudulent",
    "order_change",
    "order_cancellation",
    "product_unsatisfactory",
    "other",
];

/// Most lines on one credit note.
const MAX_LINES: usize = 500;

/// Body of `POST /v1/invoices/{id}/credit_notes`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCreditNote {
    /// `refund` or `credit`.
    #[serde(rename = "type")]
    kind: String,
    /// One of [`REASONS`].
    reason: String,
    /// Free text shown on the credit note.
    #[serde(default)]
    memo: Option<String>,
    /// The invoice lines credited.
    lines: Vec<NewLine>,
}

/// One invoice line credited.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewLine {
    /// Index of the line on the invoice (as `GET /v1/invoices/{id}` lists them, from 0).
    line_index: i64,
    /// Amount before tax, a decimal string; the tax is credited in proportion.
    #[schema(schema_with = crate::openapi::decimal)]
    amount: serde_json::Value,
}

fn json(cn: &CreditNoteView) -> Result<serde_json::Value, ApiError> {
    Ok(serde_json::to_value(cn).map_err(anyhow::Error::from)?)
}

/// `POST /v1/invoices/{id}/credit_notes`.
pub async fn create(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<WriteQuery>,
    ApiJson(body): ApiJson<NewCreditNote>,
) -> Result<Answer, ApiError> {
    let deadline = state.deadline(&q)?;
    let mut c = Check::new();
    let kind = match body.kind.as_str() {
        "refund" => Some(CreditNoteKind::Refund),
        "credit" => Some(CreditNoteKind::Credit),
        other => {
            c.fail("type", format!("{other:?} is not \"refund\" or \"credit\""));
            None
        }
    };
    if !REASONS.contains(&body.reason.as_str()) {
        c.fail(
            "reason",
            format!("{:?} is not one of {}", body.reason, REASONS.join(", ")),
        );
    }
    if let Some(m) = &body.memo {
        c.text("memo", m, 1000);
    }
    if body.lines.is_empty() || body.lines.len() > MAX_LINES {
        c.fail("lines", format!("must list 1 to {MAX_LINES} invoice lines"));
    }
    let mut lines = Vec::with_capacity(body.lines.len());
    for (k, l) in body.lines.iter().enumerate() {
        let index = i32::try_from(l.line_index).ok().filter(|i| *i >= 0);
        if index.is_none() {
            c.fail(
                format!("lines[{k}].line_index"),
                format!("{} is not a line index", l.line_index),
            );
        }
        let amount = c.amount(&format!("lines[{k}].amount"), &l.amount);
        if let (Some(line_index), Some(amount)) = (index, amount) {
            lines.push(CreditNoteLineRequest {
                line_index,
                amount: amount.to_string(),
            });
        }
    }
    c.finish()?;
    let kind = kind.expect("checked");
    let inv = crate::invoices::existing(&state, &tenant, &id).await?;
    if inv.status != InvoiceStatus::Finalized {
        let state = if inv.status == InvoiceStatus::Void {
            "void"
        } else {
            "a draft"
        };
        return Err(ApiError::conflict_field(
            "invoice_id",
            format!("invoice {id:?} is {state}; only a finalized invoice can be credited"),
        ));
    }
    let req = CreditNoteRequested {
        credit_note_id: format!("cn_{}", uuid::Uuid::new_v4().simple()),
        customer_id: inv.customer_id.clone(),
        invoice_id: id.clone(),
        kind,
        reason: body.reason.clone(),
        memo: body.memo.clone(),
        lines,
    };
    let issued = state.credit_notes.of_invoice(&tenant, &id).await?;
    let paid_by_provider = state.payments.paid_by_provider(&tenant, &id).await?;
    price(
        &req,
        &Creditable {
            invoice: &inv,
            issued: &issued,
            paid_by_provider,
        },
    )
    .map_err(|r| ApiError::field(StatusCode::UNPROCESSABLE_ENTITY, r.field, r.reason))?;
    let customer = customers::existing(&state, &tenant, &inv.customer_id).await?;
    let now = state.customer_now(&tenant, &customer).await?;
    let ev = LifecycleEvent {
        tenant_id: tenant.clone(),
        event_id: event_id(),
        occurred_at: now,
        payload: Lifecycle::CreditNoteRequested(req.clone()),
    };
    let at = state.publish_lifecycle(&ev).await?;
    if state.lifecycle_visible(at, deadline).await {
        let done = state
            .poll(deadline, || async {
                Ok(state
                    .credit_notes
                    .get(&tenant, &req.credit_note_id)
                    .await?
                    .filter(|c| c.status == ISSUED || c.status == REJECTED))
            })
            .await;
        match done {
            Some(cn) if cn.status == ISSUED => return answer(StatusCode::CREATED, json(&cn)?),
            // Another credit note took what this one asked for between the check and the invoicer.
            Some(cn) => {
                return Err(ApiError::Conflict(format!(
                    "credit note refused: {}",
                    cn.rejection_reason.unwrap_or_default()
                )))
            }
            None => {}
        }
    }
    Ok(pending(&ev.event_id, "credit_note", &req.credit_note_id))
}

/// `GET /v1/credit_notes/{id}`.
pub async fn get(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let cn = state
        .credit_notes
        .get(&tenant, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no credit note {id:?}")))?;
    Ok(Json(json(&cn)?))
}

/// `GET /v1/invoices/{id}/credit_notes?limit=&starting_after=`: the invoice's issued credit notes, oldest first.
pub async fn of_invoice(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = page_limit(q.limit)?;
    crate::invoices::existing(&state, &tenant, &id).await?;
    let mut issued: Vec<CreditNoteView> = state
        .credit_notes
        .of_invoice(&tenant, &id)
        .await?
        .into_iter()
        .filter(|c| c.status == ISSUED)
        .collect();
    issued.sort_by(|a, b| (&a.number, &a.credit_note_id).cmp(&(&b.number, &b.credit_note_id)));
    let issued = after_cursor(issued, q.starting_after.as_deref(), |c| {
        c.credit_note_id.as_str()
    })?;
    let data = issued
        .iter()
        .take(limit + 1)
        .map(json)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(page(data, limit)?))
}
