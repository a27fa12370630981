//! ClickHouse `invoices` and `invoice_lines` (migration `clickhouse/0002_invoices.sql`), `invoice_line_taxes` and
//! `invoice_voids` (`clickhouse/0004_taxes_and_voids.sql`): finalized invoices for analysts. `ReplacingMergeTree`s
//! keyed by invoice id (and line number, tax code), so a retried insert collapses.
//!
//! **Writer: invoicer.** Readers: analysts' SQL.

use billing_runtime::clickhouse::{bounded, to_decimal_38_9, WRITE_TIMEOUT};
use serde::Serialize;

use crate::invoices::InvoiceView;

/// An invoice row; field order is the table's column order.
#[derive(Debug, Clone, clickhouse::Row, Serialize)]
#[allow(missing_docs)]
pub struct InvoiceRow {
    pub tenant_id: String,
    pub invoice_id: String,
    pub number: String,
    pub customer_id: String,
    pub currency: String,
    pub billing_date: u32,
    pub issued_at: u32,
    pub due_date: u32,
    pub period_start: u32,
    pub period_end: u32,
    pub subtotal: i128,
    pub discount_total: i128,
    pub tax_total: i128,
    pub credits_total: i128,
    pub total: i128,
}

/// A line row; field order is the table's column order.
#[derive(Debug, Clone, clickhouse::Row, Serialize)]
#[allow(missing_docs)]
pub struct InvoiceLineRow {
    pub tenant_id: String,
    pub invoice_id: String,
    pub line_no: u32,
    pub customer_id: String,
    pub subscription_id: String,
    pub kind: String,
    pub description: String,
    pub charge_id: String,
    pub period_start: u32,
    pub period_end: u32,
    pub units: i128,
    pub amount: i128,
    pub discount: i128,
    pub tax: i128,
    pub total: i128,
    pub currency: String,
    pub billing_date: u32,
    /// Added by migration 0006 ('' when the line has none).
    pub plan_code: String,
    pub metric_code: String,
}

/// One tax of a line; field order is the table's column order.
#[derive(Debug, Clone, clickhouse::Row, Serialize)]
#[allow(missing_docs)]
pub struct InvoiceLineTaxRow {
    pub tenant_id: String,
    pub invoice_id: String,
    pub line_no: u32,
    pub tax_code: String,
    pub rate: i128,
    pub inclusive: u8,
    pub taxable_amount: i128,
    pub amount: i128,
    pub currency: String,
    pub billing_date: u32,
}

/// A voided invoice; field order is the table's column order.
#[derive(Debug, Clone, clickhouse::Row, Serialize)]
#[allow(missing_docs)]
pub struct InvoiceVoidRow {
    pub tenant_id: String,
    pub invoice_id: String,
    pub number: String,
    pub customer_id: String,
    pub reason: String,
    pub voided_at: u32,
}

fn secs(t: chrono::DateTime<chrono::Utc>) -> u32 {
    u32::try_from(t.timestamp()).unwrap_or(0)
}

/// The rows of a finalized invoice.
pub fn rows(tenant: &str, inv: &InvoiceView) -> (InvoiceRow, Vec<InvoiceLineRow>) {
    let head = InvoiceRow {
        tenant_id: tenant.into(),
        invoice_id: inv.invoice_id.clone(),
        number: inv.number.clone().unwrap_or_default(),
        customer_id: inv.customer_id.clone(),
        currency: inv.currency.clone(),
        billing_date: secs(inv.billing_date),
        issued_at: inv.issued_at.map(secs).unwrap_or(0),
        due_date: inv.due_date.map(secs).unwrap_or(0),
        period_start: secs(inv.period_start),
        period_end: secs(inv.period_end),
        subtotal: to_decimal_38_9(inv.subtotal),
        discount_total: to_decimal_38_9(inv.discount_total),
        tax_total: to_decimal_38_9(inv.tax_total),
        credits_total: to_decimal_38_9(inv.credits_total),
        total: to_decimal_38_9(inv.total),
    };
    let lines = inv
        .lines
        .iter()
        .enumerate()
        .map(|(i, l)| InvoiceLineRow {
            tenant_id: tenant.into(),
            invoice_id: inv.invoice_id.clone(),
            line_no: i as u32,
            customer_id: inv.customer_id.clone(),
            subscription_id: l.subscription_id.clone().unwrap_or_default(),
            kind: l.kind.clone(),
            description: l.description.clone(),
            charge_id: l.code.clone(),
            period_start: l.period_start.map(secs).unwrap_or(0),
            period_end: l.period_end.map(secs).unwrap_or(0),
            units: to_decimal_38_9(l.units.unwrap_or_default()),
            amount: to_decimal_38_9(l.amount),
            discount: to_decimal_38_9(l.discount),
            tax: to_decimal_38_9(l.tax),
            total: to_decimal_38_9(l.total),
            currency: inv.currency.clone(),
            billing_date: secs(inv.billing_date),
            plan_code: l.plan_code.clone().unwrap_or_default(),
            metric_code: l.metric_code.clone().unwrap_or_default(),
        })
        .collect();
    (head, lines)
}

/// Insert finalized invoices, their lines and their taxes (three INSERTs, bounded together by [`WRITE_TIMEOUT`]).
pub async fn insert(
    ch: &clickhouse::Client,
    tenant_invoices: &[(String, InvoiceView)],
) -> anyhow::Result<()> {
    if tenant_invoices.is_empty() {
        return Ok(());
    }
    bounded(
        WRITE_TIMEOUT,
        "insert of invoices",
        insert_unbounded(ch, tenant_invoices),
    )
    .await
}

async fn insert_unbounded(
    ch: &clickhouse::Client,
    tenant_invoices: &[(String, InvoiceView)],
) -> anyhow::Result<()> {
    let mut heads = ch.insert::<InvoiceRow>("invoices").await?;
    let mut all_lines = Vec::new();
    for (tenant, inv) in tenant_invoices {
        let (head, lines) = rows(tenant, inv);
        heads.write(&head).await?;
        all_lines.extend(lines);
    }
    heads.end().await?;
    let mut lines = ch.insert::<InvoiceLineRow>("invoice_lines").await?;
    for l in &all_lines {
        lines.write(l).await?;
    }
    lines.end().await?;
    let taxes: Vec<InvoiceLineTaxRow> = tenant_invoices
        .iter()
        .flat_map(|(tenant, inv)| tax_rows(tenant, inv))
        .collect();
    if !taxes.is_empty() {
        let mut insert = ch.insert::<InvoiceLineTaxRow>("invoice_line_taxes").await?;
        for t in &taxes {
            insert.write(t).await?;
        }
        insert.end().await?;
    }
    Ok(())
}

/// The tax rows of a finalized invoice's lines.
pub fn tax_rows(tenant: &str, inv: &InvoiceView) -> Vec<InvoiceLineTaxRow> {
    inv.lines
        .iter()
        .enumerate()
        .flat_map(|(i, l)| {
            l.taxes.iter().map(move |t| InvoiceLineTaxRow {
                tenant_id: tenant.into(),
                invoice_id: inv.invoice_id.clone(),
                line_no: i as u32,
                tax_code: t.code.clone(),
                rate: to_decimal_38_9(t.rate),
                inclusive: u8::from(t.inclusive),
                taxable_amount: to_decimal_38_9(l.taxable_amount),
                amount: to_decimal_38_9(t.amount),
                currency: inv.currency.clone(),
                billing_date: secs(inv.billing_date),
            })
        })
        .collect()
}

/// Record a voided invoice.
pub async fn insert_void(
    ch: &clickhouse::Client,
    tenant: &str,
    inv: &InvoiceView,
    reason: &str,
) -> anyhow::Result<()> {
    let row = InvoiceVoidRow {
        tenant_id: tenant.into(),
        invoice_id: inv.invoice_id.clone(),
        number: inv.number.clone().unwrap_or_default(),
        customer_id: inv.customer_id.clone(),
        reason: reason.into(),
        voided_at: inv.voided_at.map(secs).unwrap_or(0),
    };
    bounded(WRITE_TIMEOUT, "insert into invoice_voids", async {
        let mut insert = ch.insert::<InvoiceVoidRow>("invoice_voids").await?;
        insert.write(&row).await?;
        insert.end().await?;
        Ok(())
    })
    .await
}
