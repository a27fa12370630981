//! Issuing credit notes: a `CreditNoteRequested` from `billing.lifecycle` is checked against what remains
//! creditable on its invoice (and, for a refund, what the provider was paid), numbered in its own gap-free sequence
//! (scope `credit_notes` of the tenant), published as `credit_note.created` on `billing.invoices`, written to
//! ClickHouse and to the `credit_notes` read model; or refused, with the reason in the read model and the request
//! dead-lettered.
//!
//! Crash safety follows the invoices': the row is marked `numbering` before a number is claimed, so a restart finds
//! the number already claimed for the id instead of claiming another (no gap, no duplicate); publishing again after
//! a crash sends the same event id, which consumers dedupe. A request already issued or refused is left alone.

use billing_core::credit_note::{CreditNoteAmounts, CreditNoteKind};
use billing_schemas::invoice::{CreditNoteCreated, CreditNoteLine, Invoice, InvoiceEvent};
use billing_schemas::lifecycle::CreditNoteRequested;
use billing_store::billing::BillingStore;
use billing_store::credit_notes::{
    self, CreditBalanceView, CreditNoteLineView, CreditNoteStore, CreditNoteView, RefundView,
    ISSUED, NUMBERING, REJECTED,
};
pub use billing_store::credit_notes::{price, Creditable};
use billing_store::invoices::InvoiceView;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

/// The numbering scope of a tenant's credit notes.
pub const SCOPE: &str = "credit_notes";

/// The view of an issued (or being issued) credit note.
pub fn view(
    req: &CreditNoteRequested,
    inv: &InvoiceView,
    amounts: &CreditNoteAmounts,
    at: DateTime<Utc>,
) -> CreditNoteView {
    CreditNoteView {
        credit_note_id: req.credit_note_id.clone(),
        status: NUMBERING.into(),
        number: None,
        invoice_id: inv.invoice_id.clone(),
        invoice_number: inv.number.clone(),
        customer_id: inv.customer_id.clone(),
        currency: inv.currency.clone(),
        kind: req.kind.as_str().into(),
        reason: req.reason.clone(),
        memo: req.memo.clone(),
        issued_at: at,
        lines: amounts
            .lines
            .iter()
            .map(|l| CreditNoteLineView {
                line_index: l.line_index as i32,
                description: inv
                    .lines
                    .get(l.line_index)
                    .map(|x| x.description.clone())
                    .unwrap_or_default(),
                amount: l.amount,
                tax: l.tax,
                total: l.total,
            })
            .collect(),
        subtotal: amounts.subtotal,
        tax_total: amounts.tax_total,
        total: amounts.total,
        refund: (req.kind == CreditNoteKind::Refund).then(|| RefundView {
            status: "pending".into(),
            provider_reference: None,
            code: None,
            reason: None,
        }),
        credit: (req.kind == CreditNoteKind::Credit).then(|| CreditBalanceView {
            remaining: amounts.total,
            applied: Vec::new(),
        }),
        rejection_reason: None,
    }
}

/// The view of a refused request.
pub fn rejected(
    req: &CreditNoteRequested,
    inv: Option<&InvoiceView>,
    reason: &str,
    at: DateTime<Utc>,
) -> CreditNoteView {
    CreditNoteView {
        credit_note_id: req.credit_note_id.clone(),
        status: REJECTED.into(),
        number: None,
        invoice_id: req.invoice_id.clone(),
        invoice_number: inv.and_then(|i| i.number.clone()),
        customer_id: req.customer_id.clone(),
        currency: inv.map(|i| i.currency.clone()).unwrap_or_default(),
        kind: req.kind.as_str().into(),
        reason: req.reason.clone(),
        memo: req.memo.clone(),
        issued_at: at,
        lines: Vec::new(),
        subtotal: Decimal::ZERO,
        tax_total: Decimal::ZERO,
        total: Decimal::ZERO,
        refund: None,
        credit: None,
        rejection_reason: Some(reason.to_owned()),
    }
}

/// The `credit_note.created` event of an issued credit note (its id is the credit note's).
pub fn created_event(tenant: &str, cn: &CreditNoteView, kind: CreditNoteKind) -> InvoiceEvent {
    InvoiceEvent {
        tenant_id: tenant.to_owned(),
        event_id: cn.credit_note_id.clone(),
        occurred_at: cn.issued_at,
        payload: Invoice::CreditNoteCreated(Box::new(CreditNoteCreated {
            credit_note_id: cn.credit_note_id.clone(),
            number: cn.number.clone().unwrap_or_default(),
            invoice_id: cn.invoice_id.clone(),
            invoice_number: cn.invoice_number.clone().unwrap_or_default(),
            customer_id: cn.customer_id.clone(),
            currency: cn.currency.clone(),
            kind,
            reason: cn.reason.clone(),
            memo: cn.memo.clone(),
            issued_at: cn.issued_at,
            lines: cn
                .lines
                .iter()
                .map(|l| CreditNoteLine {
                    line_index: l.line_index,
                    description: l.description.clone(),
                    amount: l.amount.to_string(),
                    tax: l.tax.to_string(),
                    total: l.total.to_string(),
                })
                .collect(),
            subtotal: cn.subtotal.to_string(),
            tax_total: cn.tax_total.to_string(),
            total: cn.total.to_string(),
        })),
    }
}

/// The number of a credit note: claimed once (`was_numbering`: its row was found `numbering`, left by a crash, so a
/// number may already be claimed for it and is looked up instead).
pub async fn number(
    store: &BillingStore,
    credit_notes: &CreditNoteStore,
    tenant: &str,
    cn: &mut CreditNoteView,
    was_numbering: bool,
    prefix: &str,
    width: usize,
) -> anyhow::Result<()> {
    let ids = vec![cn.credit_note_id.clone()];
    let claimed = if was_numbering {
        store.claimed_numbers(tenant, SCOPE, &ids).await?
    } else {
        Default::default()
    };
    let n = match claimed.get(&cn.credit_note_id) {
        Some(n) => *n,
        None => {
            cn.status = NUMBERING.into();
            credit_notes.put(tenant, cn).await?;
            store.claim_numbers(tenant, SCOPE, &ids).await?
        }
    };
    cn.number = Some(billing_store::invoice_numbers::format_number(
        prefix, width, n,
    ));
    Ok(())
}

/// Record an issued credit note everywhere but Kafka: analytics first, then the read model (whose `issued`
/// status says everything is done).
pub async fn record(
    ch: &clickhouse::Client,
    credit_notes: &CreditNoteStore,
    tenant: &str,
    cn: &mut CreditNoteView,
) -> anyhow::Result<()> {
    credit_notes::insert_facts(ch, tenant, cn).await?;
    cn.status = ISSUED.into();
    credit_notes.put(tenant, cn).await
}
