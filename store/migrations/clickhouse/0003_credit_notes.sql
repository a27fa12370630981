-- Issued credit notes and their lines, for analysts. Written by the invoicer when it publishes credit_note.created;
-- ReplacingMergeTrees keyed by credit note id (and line), so a retried insert collapses (reports use FINAL). Money
-- is Decimal(38, 9), positive: what the credit note gives back.
CREATE TABLE IF NOT EXISTS {database}.credit_notes (
    tenant_id      String,
    credit_note_id String,
    number         String,
    invoice_id     String,
    customer_id    String,
    currency       String,
    kind           LowCardinality(String),
    reason         String,
    issued_at      DateTime('UTC'),
    subtotal       Decimal(38, 9),
    tax_total      Decimal(38, 9),
    total          Decimal(38, 9)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(issued_at)
ORDER BY (tenant_id, credit_note_id);

CREATE TABLE IF NOT EXISTS {database}.credit_note_lines (
    tenant_id      String,
    credit_note_id String,
    line_index     UInt32,
    invoice_id     String,
    description    String,
    amount         Decimal(38, 9),
    tax            Decimal(38, 9),
    total          Decimal(38, 9),
    currency       String,
    issued_at      DateTime('UTC')
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(issued_at)
ORDER BY (tenant_id, credit_note_id, line_index);
