-- Usage by metric and customer, per tenant and month (UTC, of the event's timestamp): docs/analytics.md, "Usage".
-- Every accepted event once (FINAL collapses a replayed insert); units = Σ values; rated_amount = Σ of each event's
-- marginal amount as rating priced it (what the running usage shows; the invoice may differ for charges priced at
-- the period's end, such as minimum commitments); unpriced_events = events whose amount leaves out a charge that
-- running usage cannot price (percentage charges with per-transaction bounds: the invoice prices them).
-- Run: clickhouse-client --database billing < reports/usage.sql
SELECT
    tenant_id,
    toStartOfMonth(timestamp) AS month,
    customer_id,
    metric_code,
    currency,
    count() AS events,
    sum(value) AS units,
    sum(amount) AS rated_amount,
    sum(unpriced) AS unpriced_events
FROM usage_events FINAL
GROUP BY tenant_id, month, customer_id, metric_code, currency
ORDER BY tenant_id, month, customer_id, metric_code, currency
