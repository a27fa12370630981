-- 1 when the event counts for a charge that running usage cannot price (a percentage charge with per-transaction
-- bounds, a fixed fee per transaction or free units): its `amount` leaves that charge out, and the invoice prices
-- the charge from the events. Rows written before this column read 0.
ALTER TABLE {database}.usage_events ADD COLUMN unpriced UInt8 DEFAULT 0;
