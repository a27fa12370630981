-- The facts analysts' reports need beyond invoices (docs/analytics.md).
--
-- subscription_mrr: each subscription's monthly recurring revenue over its life (billing_core::mrr), as segments
-- [starts_at, ends_at) with a constant MRR; a segment that lasts has ends_at = 2100-01-01 00:00:00 (`analytics::RUNNING`).
-- Written by the invoicer whenever the subscription (or its plan) changes, and when a partition's history has been
-- read again and what is stored differs: all its segments again, under a new `version` (the write's millisecond),
-- so readers keep each subscription's highest version. A version with no
-- segment (no MRR at all) is one row with mrr 0 and an empty range. ReplacingMergeTree: a retried insert collapses.
CREATE TABLE IF NOT EXISTS {database}.subscription_mrr (
    tenant_id       String,
    subscription_id String,
    customer_id     String,
    version         UInt64,
    segment_no      UInt32,
    plan_code       String,
    currency        String,
    starts_at       DateTime('UTC'),
    ends_at         DateTime('UTC'),
    mrr             Decimal(38, 9)
) ENGINE = ReplacingMergeTree
ORDER BY (tenant_id, subscription_id, version, segment_no);

-- payments: the money movements of billing.payments, one row per event (its id): `succeeded` (the provider
-- charged), `out_of_band` (paid outside the provider), `credit` (a credit note's balance paid it), `refund` (a credit
-- note refunded through the provider), `uncollectible` (dunning gave up on the invoice; amount 0, currency '').
-- Written by the invoicer's payment-facts consumer (its own consumer group, committing after each insert);
-- ReplacingMergeTree by event id, so an event inserted again after a crash collapses.
CREATE TABLE IF NOT EXISTS {database}.payments (
    tenant_id   String,
    event_id    String,
    invoice_id  String,
    customer_id String,
    kind        String,
    amount      Decimal(38, 9),
    currency    String,
    occurred_at DateTime('UTC')
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (tenant_id, event_id);

-- The plan and the billable metric of each invoice line ('' for lines without), for revenue by plan.
ALTER TABLE {database}.invoice_lines ADD COLUMN plan_code String DEFAULT '';
ALTER TABLE {database}.invoice_lines ADD COLUMN metric_code String DEFAULT '';

-- The reports' views (plain views, evaluated when read: a materialized view would count a retried insert twice,
-- where FINAL and the latest version collapse it).
-- Each subscription's current MRR segments: the rows of its latest version that carry an MRR.
CREATE VIEW IF NOT EXISTS {database}.subscription_mrr_current AS
SELECT tenant_id, subscription_id, customer_id, plan_code, currency, starts_at, ends_at, mrr
FROM {database}.subscription_mrr
WHERE mrr > 0
  AND (tenant_id, subscription_id, version) IN (
      SELECT tenant_id, subscription_id, max(version) FROM {database}.subscription_mrr
      GROUP BY tenant_id, subscription_id);

-- Each customer's MRR at the start and at the end of every month (UTC) from its first segment's month to the month
-- after its last one (the current month for a running one): start_mrr is the run rate just before the month's first
-- instant, end_mrr just before the next month's, so a subscription ending at a month's first instant counts in the
-- month before and churns in that month.
CREATE VIEW IF NOT EXISTS {database}.customer_mrr_monthly AS
SELECT tenant_id, customer_id, currency, month,
       sumIf(mrr, starts_at < toDateTime(month, 'UTC') AND ends_at >= toDateTime(month, 'UTC')) AS start_mrr,
       sumIf(mrr, starts_at < toDateTime(addMonths(month, 1), 'UTC')
                  AND ends_at >= toDateTime(addMonths(month, 1), 'UTC')) AS end_mrr
FROM (
    SELECT tenant_id, customer_id, currency, starts_at, ends_at, mrr,
           arrayJoin(arrayMap(i -> addMonths(toStartOfMonth(starts_at), i),
               range(toUInt32(greatest(0, dateDiff('month', toStartOfMonth(starts_at),
                   toStartOfMonth(least(ends_at, now()))) + 2))))) AS month
    FROM {database}.subscription_mrr_current
)
WHERE month <= toStartOfMonth(now())
GROUP BY tenant_id, customer_id, currency, month;
