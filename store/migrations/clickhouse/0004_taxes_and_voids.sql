-- The taxes of each finalized invoice line (one row per line and tax code), and the invoices voided after they
-- were finalized. Written by the invoicer: the taxes with the invoice's lines when it publishes invoice.finalized,
-- a void when it publishes invoice.voided. ReplacingMergeTrees, so a retried insert collapses (reports use
-- FINAL); a voided invoice keeps its rows in `invoices`: reports leave out those found in `invoice_voids`.
CREATE TABLE IF NOT EXISTS {database}.invoice_line_taxes (
    tenant_id      String,
    invoice_id     String,
    line_no        UInt32,
    tax_code       String,
    rate           Decimal(38, 9),
    inclusive      UInt8,
    taxable_amount Decimal(38, 9),
    amount         Decimal(38, 9),
    currency       String,
    billing_date   DateTime('UTC')
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(billing_date)
ORDER BY (tenant_id, invoice_id, line_no, tax_code);

CREATE TABLE IF NOT EXISTS {database}.invoice_voids (
    tenant_id   String,
    invoice_id  String,
    number      String,
    customer_id String,
    reason      String,
    voided_at   DateTime('UTC')
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(voided_at)
ORDER BY (tenant_id, invoice_id);
