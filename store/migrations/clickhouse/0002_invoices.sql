-- Finalized invoices and their lines, for analysts. Written by the invoicer only, when it publishes
-- invoice.finalized. A retried write inserts the same row again; ReplacingMergeTree collapses rows with the same
-- key, and reports use FINAL. Money is Decimal(38, 9) holding the exact amounts of the invoice (already rounded to
-- the currency's minor unit).
CREATE TABLE IF NOT EXISTS {database}.invoices (
    tenant_id      String,
    invoice_id     String,
    number         String,
    customer_id    String,
    currency       String,
    billing_date   DateTime('UTC'),
    issued_at      DateTime('UTC'),
    due_date       DateTime('UTC'),
    period_start   DateTime('UTC'),
    period_end     DateTime('UTC'),
    subtotal       Decimal(38, 9),
    discount_total Decimal(38, 9),
    tax_total      Decimal(38, 9),
    credits_total  Decimal(38, 9),
    total          Decimal(38, 9)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(billing_date)
ORDER BY (tenant_id, invoice_id);

CREATE TABLE IF NOT EXISTS {database}.invoice_lines (
    tenant_id       String,
    invoice_id      String,
    line_no         UInt32,
    customer_id     String,
    subscription_id String,
    kind            String,
    description     String,
    charge_id       String,
    period_start    DateTime('UTC'),
    period_end      DateTime('UTC'),
    units           Decimal(38, 9),
    amount          Decimal(38, 9),
    discount        Decimal(38, 9),
    tax             Decimal(38, 9),
    total           Decimal(38, 9),
    currency        String,
    billing_date    DateTime('UTC')
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(billing_date)
ORDER BY (tenant_id, invoice_id, line_no);
