-- Collections and the overdue balance, per tenant, currency and month (UTC): docs/analytics.md, "Collections".
-- Run: clickhouse-client --database billing < reports/collections.sql
-- In the month: invoiced (amount due of the invoices issued), collected (paid through the provider or outside it),
-- paid_by_credit (credit notes' balance), refunded (credit notes refunded through the provider). At the month's end:
-- outstanding (due on issued invoices, less payments and credits; voided invoices taken out), overdue (the part of
-- it past its due date) and uncollectible (the part of it on invoices dunning gave up on: still owed, until paid or
-- voided).
SELECT
    tenant_id,
    month,
    currency,
    sumIf(amount, kind = 'invoiced' AND toStartOfMonth(at) = month) AS invoiced,
    sumIf(-amount, kind IN ('succeeded', 'out_of_band') AND toStartOfMonth(at) = month) AS collected,
    sumIf(-amount, kind = 'credit' AND toStartOfMonth(at) = month) AS paid_by_credit,
    sumIf(amount, kind = 'refund' AND toStartOfMonth(at) = month) AS refunded,
    sumIf(amount, kind IN ('invoiced', 'voided', 'succeeded', 'out_of_band', 'credit')) AS outstanding,
    sumIf(amount, kind IN ('invoiced', 'voided', 'succeeded', 'out_of_band', 'credit')
                  AND due_date < toDateTime(addMonths(month, 1), 'UTC')) AS overdue,
    sumIf(amount, kind IN ('invoiced', 'voided', 'succeeded', 'out_of_band', 'credit')
                  AND toUInt32(uncollectible_at) > 0
                  AND uncollectible_at < toDateTime(addMonths(month, 1), 'UTC')) AS uncollectible
FROM (
    -- Each fact counts in the month it happened and in every month after it (the balances at month ends).
    SELECT tenant_id, currency, kind, amount, at, due_date, uncollectible_at,
           arrayJoin(arrayMap(i -> addMonths(toStartOfMonth(at), i),
               range(toUInt32(greatest(0, dateDiff('month', toStartOfMonth(at), toStartOfMonth(now()))) + 1)))) AS month
    FROM (
        SELECT tenant_id, invoice_id, currency, 'invoiced' AS kind,
               if(total > credits_total, total - credits_total, toDecimal128(0, 9)) AS amount,
               issued_at AS at, due_date
        FROM invoices FINAL
        UNION ALL
        SELECT tenant_id, invoice_id, currency, 'voided' AS kind, -due AS amount, voided_at AS at, due_date
        FROM invoice_voids FINAL
        ANY INNER JOIN (
            SELECT tenant_id, invoice_id, currency, due_date,
                   if(total > credits_total, total - credits_total, toDecimal128(0, 9)) AS due
            FROM invoices FINAL
        ) USING tenant_id, invoice_id
        UNION ALL
        SELECT tenant_id, invoice_id, currency, kind,
               if(kind = 'refund', amount, -amount) AS amount,
               occurred_at AS at, due_date
        FROM payments FINAL
        ANY LEFT JOIN (SELECT tenant_id, invoice_id, due_date FROM invoices FINAL) USING tenant_id, invoice_id
        WHERE kind IN ('succeeded', 'out_of_band', 'credit', 'refund')
    )
    ANY LEFT JOIN (
        SELECT tenant_id, invoice_id, min(occurred_at) AS uncollectible_at
        FROM payments FINAL
        WHERE kind = 'uncollectible'
        GROUP BY tenant_id, invoice_id
    ) USING tenant_id, invoice_id
)
WHERE month <= toStartOfMonth(now())
GROUP BY tenant_id, month, currency
ORDER BY tenant_id, month, currency
