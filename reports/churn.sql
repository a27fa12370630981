-- Customer (logo) and revenue churn, per tenant, currency and month (UTC): docs/analytics.md, "Churn".
-- Run: clickhouse-client --database billing < reports/churn.sql
-- A customer is active when it has MRR; it churns in the month its MRR drops to zero. Rates are over the customers
-- and the MRR at the month's start (0 when there were none), to 4 decimals, truncated:
-- logo_churn_rate = churned_customers / customers_at_start, revenue_churn_rate = (churned + contraction) / starting.
SELECT
    tenant_id,
    month,
    currency,
    countIf(start_mrr > 0) AS customers_at_start,
    countIf(start_mrr = 0 AND end_mrr > 0) AS new_customers,
    countIf(start_mrr > 0 AND end_mrr = 0) AS churned_customers,
    countIf(end_mrr > 0) AS customers_at_end,
    sum(start_mrr) AS starting_mrr,
    sumIf(start_mrr, start_mrr > 0 AND end_mrr = 0) AS churned_mrr,
    sumIf(start_mrr - end_mrr, end_mrr > 0 AND end_mrr < start_mrr) AS contraction_mrr,
    -- (x = 0) added to a divisor keeps it above zero: ClickHouse evaluates both branches of if().
    if(customers_at_start = 0, toDecimal64(0, 4),
       toDecimal64(churned_customers, 4) / toDecimal64(customers_at_start + (customers_at_start = 0), 4))
        AS logo_churn_rate,
    if(starting_mrr = 0, toDecimal64(0, 4),
       toDecimal64(churned_mrr + contraction_mrr, 4) / toDecimal64(starting_mrr + (starting_mrr = 0), 4))
        AS revenue_churn_rate
FROM customer_mrr_monthly
GROUP BY tenant_id, month, currency
ORDER BY tenant_id, month, currency
