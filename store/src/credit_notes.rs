//! ScyllaDB `credit_notes` and `credit_notes_by_invoice` (migration `cql/0007_credit_notes.cql`), and ClickHouse
//! `credit_notes` and `credit_note_lines` (migration `clickhouse/0003_credit_notes.sql`): credit notes on finalized
//! invoices, as the API shows them and for analysts.
//!
//! **Writer: invoicer** (from `CreditNoteRequested` on `billing.lifecycle`, and refunds from `billing.payments`).
//! Readers: query-api, invoicer.

use std::sync::Arc;

use billing_runtime::clickhouse::to_decimal_38_9;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use rust_decimal::Decimal;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use serde::{Deserialize, Serialize};

use billing_core::credit_note::{
    credit_note_amounts, CreditNoteAmounts, CreditNoteKind, CreditableLine,
};
use billing_core::currency::Currency;
use billing_core::money::{parse_exact_decimal, RoundingMode};
use billing_schemas::lifecycle::CreditNoteRequested;

use crate::invoices::{InvoiceStatus, InvoiceView};
use crate::prepare;

/// Status of a credit note being issued: a number may have been claimed for it.
pub const NUMBERING: &str = "numbering";
/// Status of an issued credit note.
pub const ISSUED: &str = "issued";
/// Status of a request the invoicer refused.
pub const REJECTED: &str = "rejected";

/// One credited invoice line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditNoteLineView {
    /// Index of the invoice line.
    pub line_index: i32,
    /// The invoice line's description.
    pub description: String,
    /// Credited before tax.
    pub amount: Decimal,
    /// Tax credited.
    pub tax: Decimal,
    /// amount + tax.
    pub total: Decimal,
}

/// Where a credit note's refund stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundView {
    /// `pending` (not executed yet), `succeeded` or `failed`.
    pub status: String,
    /// The provider's refund id.
    pub provider_reference: Option<String>,
    /// The provider's code, when it failed.
    pub code: Option<String>,
    /// The provider's message, when it failed.
    pub reason: Option<String>,
}

/// What a credit note of type `credit` has given so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditBalanceView {
    /// Still available to later invoices.
    pub remaining: Decimal,
    /// Invoices paid with it, in the order it was applied.
    pub applied: Vec<CreditApplicationView>,
}

/// One application of a credit note to an invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditApplicationView {
    /// Invoice paid with it.
    pub invoice_id: String,
    /// Amount.
    pub amount: Decimal,
    /// Billing time.
    pub applied_at: DateTime<Utc>,
}

/// A credit note as the API serves it (stored as JSON in `credit_notes.body`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditNoteView {
    /// Id given when it was requested.
    pub credit_note_id: String,
    /// `numbering`, `issued` or `rejected`.
    pub status: String,
    /// Gap-free number, once issued.
    pub number: Option<String>,
    /// Invoice credited.
    pub invoice_id: String,
    /// Its number.
    pub invoice_number: Option<String>,
    /// Customer.
    pub customer_id: String,
    /// ISO 4217 currency.
    pub currency: String,
    /// `credit` or `refund`.
    pub kind: String,
    /// Why.
    pub reason: String,
    /// Free text.
    pub memo: Option<String>,
    /// Billing time of issue (of the request, for a rejection).
    pub issued_at: DateTime<Utc>,
    /// Lines.
    pub lines: Vec<CreditNoteLineView>,
    /// Σ amounts.
    pub subtotal: Decimal,
    /// Σ taxes.
    pub tax_total: Decimal,
    /// subtotal + tax_total.
    pub total: Decimal,
    /// The refund, for kind `refund`.
    pub refund: Option<RefundView>,
    /// The balance it gave, for kind `credit`.
    #[serde(default)]
    pub credit: Option<CreditBalanceView>,
    /// Why the invoicer refused the request.
    pub rejection_reason: Option<String>,
}

/// What a tenant's invoices and payments say about an invoice, for checking a credit note on it.
pub struct Creditable<'a> {
    /// The invoice.
    pub invoice: &'a InvoiceView,
    /// Credit notes already issued on it.
    pub issued: &'a [CreditNoteView],
    /// Paid through the payment provider (what a refund can give back).
    pub paid_by_provider: Decimal,
}

/// Why a credit note request is refused: the request field at fault and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The request field (`invoice_id`, `kind`, `lines[1].amount`...).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

fn refuse(field: &str, reason: impl Into<String>) -> Refusal {
    Refusal {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The lines and totals of a requested credit note (see [`billing_core::credit_note`] for the rules), or why it is
/// refused: an invoice of another customer or not finalized, a line that is not there, an amount that is not a
/// positive amount of the currency or is above what remains creditable, or a refund above what the payment
/// provider was paid and has not refunded yet. The API checks a request with it before publishing, and the invoicer
/// again when it issues the credit note.
pub fn price(req: &CreditNoteRequested, on: &Creditable<'_>) -> Result<CreditNoteAmounts, Refusal> {
    let inv = on.invoice;
    if inv.customer_id != req.customer_id {
        return Err(refuse(
            "invoice_id",
            format!(
                "invoice {} is not customer {}'s",
                inv.invoice_id, req.customer_id
            ),
        ));
    }
    if inv.status != InvoiceStatus::Finalized || inv.number.is_none() {
        return Err(refuse(
            "invoice_id",
            format!(
                "invoice {} is {}; only a finalized invoice can be credited",
                inv.invoice_id,
                if inv.status == InvoiceStatus::Void {
                    "void"
                } else {
                    "a draft"
                }
            ),
        ));
    }
    let currency =
        Currency::parse(&inv.currency).map_err(|e| refuse("invoice_id", e.to_string()))?;
    let mut lines: Vec<CreditableLine> = inv
        .lines
        .iter()
        .map(|l| CreditableLine {
            // Before tax: a line with an inclusive tax is credited on its amount without that tax.
            amount: if l.taxes.is_empty() {
                l.amount
            } else {
                l.taxable_amount + l.discount
            },
            discount: l.discount,
            tax: l.tax,
            credited: Decimal::ZERO,
            credited_tax: Decimal::ZERO,
        })
        .collect();
    for cn in on.issued.iter().filter(|c| c.status == ISSUED) {
        for l in &cn.lines {
            if let Some(line) = usize::try_from(l.line_index)
                .ok()
                .and_then(|i| lines.get_mut(i))
            {
                line.credited += l.amount;
                line.credited_tax += l.tax;
            }
        }
    }
    let mut requested = Vec::with_capacity(req.lines.len());
    for (k, l) in req.lines.iter().enumerate() {
        let index = usize::try_from(l.line_index)
            .map_err(|_| refuse(&format!("lines[{k}].line_index"), "must be 0 or more"))?;
        let field = format!("lines[{k}].amount");
        let amount = parse_exact_decimal(&field, &l.amount, 28).map_err(|e| {
            refuse(
                &field,
                format!("{:?} is not a plain decimal amount ({e})", l.amount),
            )
        })?;
        requested.push((index, amount));
    }
    let amounts =
        credit_note_amounts(currency, RoundingMode::HalfUp, &lines, &requested).map_err(|e| {
            // The core names the field first: "lines[k].amount: ...".
            let text = match e {
                billing_core::Error::InvalidRequest(t) => t,
                other => other.to_string(),
            };
            match text.split_once(": ") {
                Some((field, reason)) if field.starts_with("lines") => refuse(field, reason),
                _ => refuse("lines", text),
            }
        })?;
    if req.kind == CreditNoteKind::Refund {
        let refunded: Decimal = on
            .issued
            .iter()
            .filter(|c| c.status == ISSUED && c.kind == CreditNoteKind::Refund.as_str())
            .map(|c| c.total)
            .sum();
        let refundable = (on.paid_by_provider - refunded).max(Decimal::ZERO);
        if amounts.total > refundable {
            return Err(refuse(
                "type",
                format!(
                    "a refund of {} {} is more than what the payment provider was paid and has not refunded \
                     yet ({refundable}); an invoice paid outside the provider, or not paid, is credited with type \
                     \"credit\"",
                    amounts.total, inv.currency
                ),
            ));
        }
    }
    Ok(amounts)
}

/// What issued credit notes took back from each line of their invoices, before tax: (invoice id, line index) →
/// amount; the credit note `except` is left out (one a restart is issuing again).
pub fn credited_lines(
    notes: &[CreditNoteView],
    except: impl Fn(&CreditNoteView) -> bool,
) -> std::collections::HashMap<(String, usize), Decimal> {
    let mut out: std::collections::HashMap<(String, usize), Decimal> = Default::default();
    for cn in notes.iter().filter(|c| c.status == ISSUED && !except(c)) {
        for l in &cn.lines {
            *out.entry((cn.invoice_id.clone(), l.line_index.max(0) as usize))
                .or_default() += l.amount;
        }
    }
    out
}

/// The id of the credit note that carries the negative total of the invoice of `billing_date` to the customer's
/// balance, on the invoice `credited` (fixed, so a restart issues it once).
pub fn unused_time_credit_note_id(credited: &str, billing_date: DateTime<Utc>) -> String {
    format!("{credited}-unused-{}", billing_date.format("%Y%m%d%H%M%S"))
}

/// How a finalized invoice whose total is negative (credits for unused time of fees paid in advance, after an
/// immediate upgrade, downgrade or cancellation, exceed its charges) carries the excess to the customer's credit
/// balance, as Lago does: credit notes of type `credit` on the invoices that charged those fees, crediting their fee
/// lines. The excess before tax (−Σ taxable amounts) is spread over the invoice's proration credits in order, each
/// on the latest earlier finalized invoice whose fee line of the same subscription covers the credited days, up to
/// what remains creditable there (`credited`: what credit notes took back from a line already). Returns (invoice,
/// line index, amount before tax).
pub fn unused_time_credits(
    inv: &InvoiceView,
    invoices: &[InvoiceView],
    credited: impl Fn(&str, usize) -> Decimal,
) -> Vec<(String, usize, Decimal)> {
    let taxable: Decimal = inv.lines.iter().map(|l| l.taxable_amount).sum();
    let mut left = -taxable;
    let mut out: Vec<(String, usize, Decimal)> = Vec::new();
    for credit in inv.lines.iter().filter(|l| l.kind == "proration_credit") {
        if left <= Decimal::ZERO {
            break;
        }
        let (Some(from), Some(to)) = (credit.period_start, credit.period_end) else {
            continue;
        };
        let charged = invoices
            .iter()
            .filter(|p| {
                p.customer_id == inv.customer_id
                    && p.invoice_id != inv.invoice_id
                    && p.status == InvoiceStatus::Finalized
                    && p.number.is_some()
                    && p.billing_date < inv.billing_date
            })
            .flat_map(|p| p.lines.iter().enumerate().map(move |(i, l)| (p, i, l)))
            .filter(|(_, _, l)| {
                l.kind == "subscription_fee"
                    && l.subscription_id == credit.subscription_id
                    && l.period_start.is_some_and(|s| s <= from)
                    && l.period_end.is_some_and(|e| e >= to)
            })
            .max_by_key(|(p, _, _)| p.billing_date);
        let Some((p, i, line)) = charged else {
            continue;
        };
        let taken: Decimal = out
            .iter()
            .filter(|(id, k, _)| *id == p.invoice_id && *k == i)
            .map(|(_, _, a)| *a)
            .sum();
        let creditable =
            (line.taxable_amount - credited(&p.invoice_id, i) - taken).max(Decimal::ZERO);
        let amount = left.min(-credit.taxable_amount).min(creditable);
        if amount > Decimal::ZERO {
            left -= amount;
            out.push((p.invoice_id.clone(), i, amount));
        }
    }
    out
}

/// Prepared statements over the credit note tables.
pub struct CreditNoteStore {
    session: Arc<Session>,
    upsert: PreparedStatement,
    upsert_index: PreparedStatement,
    select_one: PreparedStatement,
    select_of_invoice: PreparedStatement,
}

impl CreditNoteStore {
    /// Prepare every statement.
    pub async fn new(session: Arc<Session>, ks: &str) -> anyhow::Result<Self> {
        Ok(CreditNoteStore {
            upsert: prepare(
                &session,
                format!(
                    "INSERT INTO {ks}.credit_notes (tenant_id, credit_note_id, invoice_id, customer_id, status, \
                     body) VALUES (?, ?, ?, ?, ?, ?)"
                ),
                true,
            )
            .await?,
            upsert_index: prepare(
                &session,
                format!(
                    "INSERT INTO {ks}.credit_notes_by_invoice (tenant_id, invoice_id, credit_note_id) \
                     VALUES (?, ?, ?)"
                ),
                true,
            )
            .await?,
            select_one: prepare(
                &session,
                format!(
                    "SELECT body FROM {ks}.credit_notes WHERE tenant_id = ? AND credit_note_id = ?"
                ),
                true,
            )
            .await?,
            select_of_invoice: prepare(
                &session,
                format!(
                    "SELECT credit_note_id FROM {ks}.credit_notes_by_invoice \
                     WHERE tenant_id = ? AND invoice_id = ?"
                ),
                true,
            )
            .await?,
            session,
        })
    }

    /// Write a credit note (index entry first, so a listed id always has a row or is being written).
    pub async fn put(&self, tenant: &str, cn: &CreditNoteView) -> anyhow::Result<()> {
        self.session
            .execute_unpaged(
                &self.upsert_index,
                (tenant, &cn.invoice_id, &cn.credit_note_id),
            )
            .await?;
        let body = serde_json::to_string(cn)?;
        self.session
            .execute_unpaged(
                &self.upsert,
                (
                    tenant,
                    &cn.credit_note_id,
                    &cn.invoice_id,
                    &cn.customer_id,
                    &cn.status,
                    body,
                ),
            )
            .await?;
        Ok(())
    }

    /// One credit note.
    pub async fn get(&self, tenant: &str, id: &str) -> anyhow::Result<Option<CreditNoteView>> {
        let row = self
            .session
            .execute_unpaged(&self.select_one, (tenant, id))
            .await?
            .into_rows_result()?
            .maybe_first_row::<(Option<String>,)>()?;
        row.and_then(|(b,)| b)
            .map(|b| Ok(serde_json::from_str(&b)?))
            .transpose()
    }

    /// Every credit note of an invoice (any status), in id order.
    pub async fn of_invoice(
        &self,
        tenant: &str,
        invoice: &str,
    ) -> anyhow::Result<Vec<CreditNoteView>> {
        let ids: Vec<(String,)> = self
            .session
            .execute_iter(self.select_of_invoice.clone(), (tenant, invoice))
            .await?
            .rows_stream::<(String,)>()?
            .try_collect()
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for (id,) in ids {
            if let Some(cn) = self.get(tenant, &id).await? {
                out.push(cn);
            }
        }
        Ok(out)
    }
}

/// A credit note row for ClickHouse; field order is the table's column order.
#[derive(Debug, Clone, clickhouse::Row, Serialize)]
#[allow(missing_docs)]
pub struct CreditNoteRow {
    pub tenant_id: String,
    pub credit_note_id: String,
    pub number: String,
    pub invoice_id: String,
    pub customer_id: String,
    pub currency: String,
    pub kind: String,
    pub reason: String,
    pub issued_at: u32,
    pub subtotal: i128,
    pub tax_total: i128,
    pub total: i128,
}

/// A credit note line row for ClickHouse; field order is the table's column order.
#[derive(Debug, Clone, clickhouse::Row, Serialize)]
#[allow(missing_docs)]
pub struct CreditNoteLineRow {
    pub tenant_id: String,
    pub credit_note_id: String,
    pub line_index: u32,
    pub invoice_id: String,
    pub description: String,
    pub amount: i128,
    pub tax: i128,
    pub total: i128,
    pub currency: String,
    pub issued_at: u32,
}

/// Insert an issued credit note and its lines into ClickHouse (two INSERTs; a retry collapses).
pub async fn insert_facts(
    ch: &clickhouse::Client,
    tenant: &str,
    cn: &CreditNoteView,
) -> anyhow::Result<()> {
    let issued_at = u32::try_from(cn.issued_at.timestamp()).unwrap_or(0);
    let mut head = ch.insert::<CreditNoteRow>("credit_notes").await?;
    head.write(&CreditNoteRow {
        tenant_id: tenant.into(),
        credit_note_id: cn.credit_note_id.clone(),
        number: cn.number.clone().unwrap_or_default(),
        invoice_id: cn.invoice_id.clone(),
        customer_id: cn.customer_id.clone(),
        currency: cn.currency.clone(),
        kind: cn.kind.clone(),
        reason: cn.reason.clone(),
        issued_at,
        subtotal: to_decimal_38_9(cn.subtotal),
        tax_total: to_decimal_38_9(cn.tax_total),
        total: to_decimal_38_9(cn.total),
    })
    .await?;
    head.end().await?;
    let mut lines = ch.insert::<CreditNoteLineRow>("credit_note_lines").await?;
    for l in &cn.lines {
        lines
            .write(&CreditNoteLineRow {
                tenant_id: tenant.into(),
                credit_note_id: cn.credit_note_id.clone(),
                line_index: u32::try_from(l.line_index).unwrap_or(0),
                invoice_id: cn.invoice_id.clone(),
                description: l.description.clone(),
                amount: to_decimal_38_9(l.amount),
                tax: to_decimal_38_9(l.tax),
                total: to_decimal_38_9(l.total),
                currency: cn.currency.clone(),
                issued_at,
            })
            .await?;
    }
    lines.end().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invoices::InvoiceLineView;
    use billing_schemas::lifecycle::CreditNoteLineRequest;
    use rust_decimal_macros::dec;

    fn invoice() -> InvoiceView {
        let at: DateTime<Utc> = "2026-02-01T00:00:00Z".parse().unwrap();
        let line = |amount: Decimal, tax: Decimal| InvoiceLineView {
            kind: "subscription_fee".into(),
            description: "Pro".into(),
            subscription_id: None,
            code: "pro".into(),
            period_start: None,
            period_end: None,
            units: None,
            proration_factor: None,
            amount,
            discount: Decimal::ZERO,
            tax,
            total: amount + tax,
            taxable_amount: amount,
            taxes: vec![],
            adjusts: None,
            plan_code: None,
            metric_code: None,
        };
        InvoiceView {
            invoice_id: "inv_1".into(),
            number: Some("T-000001".into()),
            status: InvoiceStatus::Finalized,
            customer_id: "c1".into(),
            currency: "EUR".into(),
            test_clock_id: None,
            billing_date: at,
            finalizes_at: at,
            issued_at: Some(at),
            due_date: Some(at),
            period_start: at,
            period_end: at,
            subscription_ids: vec![],
            lines: vec![line(dec!(30.00), dec!(6.00)), line(dec!(10.00), dec!(2.00))],
            subtotal: dec!(40.00),
            discount_total: Decimal::ZERO,
            tax_total: dec!(8.00),
            credits_total: Decimal::ZERO,
            total: dec!(48.00),
            amount_due: dec!(48.00),
            applied_taxes: vec![],
            tax_note: None,
            voided_at: None,
            coupons: vec![],
            one_off: false,
            credits: vec![],
            late_usage: vec![],
            carried_by: vec![],
            usage_offset: None,
        }
    }

    fn request(kind: CreditNoteKind, lines: &[(i32, &str)]) -> CreditNoteRequested {
        CreditNoteRequested {
            credit_note_id: "cn_1".into(),
            customer_id: "c1".into(),
            invoice_id: "inv_1".into(),
            kind,
            reason: "other".into(),
            memo: None,
            lines: lines
                .iter()
                .map(|(i, a)| CreditNoteLineRequest {
                    line_index: *i,
                    amount: (*a).into(),
                })
                .collect(),
        }
    }

    #[test]
    fn earlier_credit_notes_reduce_what_remains_and_refunds_stop_at_what_was_paid() {
        let inv = invoice();
        let first = price(
            &request(CreditNoteKind::Refund, &[(0, "20.00")]),
            &Creditable {
                invoice: &inv,
                issued: &[],
                paid_by_provider: dec!(48.00),
            },
        )
        .unwrap();
        assert_eq!((first.total, first.lines[0].tax), (dec!(24.00), dec!(4.00)));
        let issued = CreditNoteView {
            credit_note_id: "cn_0".into(),
            status: ISSUED.into(),
            number: Some("T-CN-000001".into()),
            invoice_id: "inv_1".into(),
            invoice_number: inv.number.clone(),
            customer_id: "c1".into(),
            currency: "EUR".into(),
            kind: "refund".into(),
            reason: "other".into(),
            memo: None,
            issued_at: inv.billing_date,
            lines: vec![CreditNoteLineView {
                line_index: 0,
                description: "Pro".into(),
                amount: dec!(20.00),
                tax: dec!(4.00),
                total: dec!(24.00),
            }],
            subtotal: dec!(20.00),
            tax_total: dec!(4.00),
            total: dec!(24.00),
            refund: None,
            credit: None,
            rejection_reason: None,
        };
        let on = Creditable {
            invoice: &inv,
            issued: std::slice::from_ref(&issued),
            paid_by_provider: dec!(48.00),
        };
        // 10.00 left on line 0.
        let err = price(&request(CreditNoteKind::Credit, &[(0, "10.01")]), &on).unwrap_err();
        assert_eq!(err.field, "lines[0].amount");
        assert!(err.reason.contains("left to credit (10.00)"), "{err}");
        // 24.00 of 48.00 refunded: a refund of 10.00 + 2.00 tax on line 1 fits, one of all that is left does not.
        assert!(price(&request(CreditNoteKind::Refund, &[(1, "10.00")]), &on).is_ok());
        let mut paid_less = on;
        paid_less.paid_by_provider = dec!(30.00);
        let err = price(
            &request(CreditNoteKind::Refund, &[(0, "10.00"), (1, "10.00")]),
            &paid_less,
        )
        .unwrap_err();
        assert_eq!(err.field, "type");
        assert!(err.reason.contains("(6.00)"), "{err}");
        // A credit is not bounded by payments.
        assert!(price(
            &request(CreditNoteKind::Credit, &[(0, "10.00"), (1, "10.00")]),
            &paid_less
        )
        .is_ok());
        let err = price(&request(CreditNoteKind::Credit, &[(0, "1e3")]), &paid_less).unwrap_err();
        assert_eq!(err.field, "lines[0].amount");
    }

    /// A negative total is carried on the fee line of the invoice that charged the credited days, up to what is left.
    #[test]
    fn a_negative_total_is_credited_on_the_fee_it_gives_back() {
        let jan: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let jan21: DateTime<Utc> = "2026-01-21T00:00:00Z".parse().unwrap();
        let feb: DateTime<Utc> = "2026-02-01T00:00:00Z".parse().unwrap();
        let line = |kind: &str, amount: Decimal, from, to| InvoiceLineView {
            kind: kind.into(),
            subscription_id: Some("s1".into()),
            period_start: Some(from),
            period_end: Some(to),
            amount,
            taxable_amount: amount,
            tax: Decimal::ZERO,
            total: amount,
            ..invoice().lines[0].clone()
        };
        let mut paid = invoice();
        paid.invoice_id = "inv_jan".into();
        paid.billing_date = jan;
        paid.lines = vec![line("subscription_fee", dec!(100.00), jan, feb)];
        let mut negative = invoice();
        negative.invoice_id = "inv_feb".into();
        negative.number = None;
        negative.billing_date = feb;
        negative.lines = vec![line("proration_credit", dec!(-35.48), jan21, feb)];
        negative.total = dec!(-35.48);
        let invoices = vec![paid.clone(), negative.clone()];
        assert_eq!(
            unused_time_credits(&negative, &invoices, |_, _| Decimal::ZERO),
            vec![("inv_jan".to_owned(), 0, dec!(35.48))]
        );
        // 80.00 of the fee credited already: 20.00 is all that can be carried.
        assert_eq!(
            unused_time_credits(&negative, &invoices, |_, _| dec!(80.00)),
            vec![("inv_jan".to_owned(), 0, dec!(20.00))]
        );
        // A charge on the same invoice lowers what is carried to the negative total: −35.48 + 30.00 = −5.48.
        negative.lines.push(line("usage", dec!(30.00), jan, feb));
        assert_eq!(
            unused_time_credits(&negative, &invoices, |_, _| Decimal::ZERO),
            vec![("inv_jan".to_owned(), 0, dec!(5.48))]
        );
        // No earlier invoice charged those days: nothing.
        assert!(
            unused_time_credits(&negative, &[negative.clone()], |_, _| Decimal::ZERO).is_empty()
        );
    }
}
