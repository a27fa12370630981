-- Invoiced revenue by plan and month (UTC, of the billing date), per tenant and currency: docs/analytics.md,
-- "Revenue". Finalized invoices that were not voided; amounts after coupons and without tax, inclusive taxes taken
-- out too (a line's total - tax: its taxable amount).
-- Lines without a plan (one-off add-ons, prepaid credits bought) have plan_code ''. Credit notes are not deducted
-- here: reports/collections.sql has them.
-- Run: clickhouse-client --database billing < reports/revenue.sql
SELECT
    tenant_id,
    toStartOfMonth(billing_date) AS month,
    currency,
    plan_code,
    sumIf(total - tax, kind IN ('subscription_fee', 'proration_credit')) AS subscription_fees,
    sumIf(total - tax, kind IN ('usage', 'true_up', 'adjustment')) AS usage,
    sumIf(total - tax, kind NOT IN ('subscription_fee', 'proration_credit', 'usage', 'true_up', 'adjustment')) AS other,
    sum(total - tax) AS net_revenue,
    sum(discount) AS discounts,
    uniqExact(invoice_id) AS invoices
FROM invoice_lines FINAL
WHERE (tenant_id, invoice_id) NOT IN (SELECT tenant_id, invoice_id FROM invoice_voids)
GROUP BY tenant_id, month, currency, plan_code
ORDER BY tenant_id, month, currency, plan_code
