-- Every write of the management API (docs/api.md, "Audit log"): who (API key id and role), what (method, path,
-- route, resource, status, request and answer bodies with secrets redacted), when and from where. Written by
-- query-api before it answers the write; read by GET /v1/audit (admins) and analysts. Append-only: no API changes or
-- deletes a row; `billing retention run` drops monthly partitions older than retention.audit_log. `at_ms` keeps the
-- millisecond (no DateTime64 on the local server) and, with the request id, orders the log. A ReplacingMergeTree on
-- that order: an append retried after a timeout (whose first try the server may still apply) collapses into one
-- row; readers use FINAL.
CREATE TABLE IF NOT EXISTS {database}.audit_log (
    tenant_id   String,
    at          DateTime('UTC'),
    at_ms       UInt64,
    request_id  String,
    key_id      String,
    role        String,
    method      String,
    path        String,
    route       String,
    resource_id String,
    status      UInt16,
    remote_addr String,
    request     String,
    response    String
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (tenant_id, at_ms, request_id);
