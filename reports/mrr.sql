-- MRR and its movements, per tenant, currency and month (UTC): docs/analytics.md, "MRR".
-- Run: clickhouse-client --database billing < reports/mrr.sql
-- Per customer and currency, a month's movement is one of: new (no MRR at the start, some at the end), expansion
-- (more at the end), contraction (less, not zero), churn (none left at the end). ending = starting + new +
-- expansion - contraction - churned.
SELECT
    tenant_id,
    month,
    currency,
    sum(start_mrr) AS starting_mrr,
    sumIf(end_mrr, start_mrr = 0 AND end_mrr > 0) AS new_mrr,
    sumIf(end_mrr - start_mrr, start_mrr > 0 AND end_mrr > start_mrr) AS expansion_mrr,
    sumIf(start_mrr - end_mrr, end_mrr > 0 AND end_mrr < start_mrr) AS contraction_mrr,
    sumIf(start_mrr, start_mrr > 0 AND end_mrr = 0) AS churned_mrr,
    sum(end_mrr) AS ending_mrr,
    countIf(end_mrr > 0) AS customers
FROM customer_mrr_monthly
GROUP BY tenant_id, month, currency
ORDER BY tenant_id, month, currency
