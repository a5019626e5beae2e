-- Post-call analysis: answered calls of agents with an `analysis` configuration are queued in
-- the transaction that ends them; the result is kept per call (at most one), written with its
-- job's end and its call.analyzed webhook event in one transaction.
CREATE TABLE analysis_queue (
    call_id          uuid PRIMARY KEY REFERENCES call (id) ON DELETE CASCADE,
    organization_id  uuid NOT NULL REFERENCES organization (id) ON DELETE CASCADE,
    enqueued_at      timestamptz NOT NULL,
    -- Not before: the conversation's last records land just after the call ends.
    next_attempt_at  timestamptz NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    last_error       text
);
CREATE INDEX analysis_queue_due ON analysis_queue (next_attempt_at);

CREATE TABLE call_analysis (
    call_id          uuid PRIMARY KEY REFERENCES call (id) ON DELETE CASCADE,
    organization_id  uuid NOT NULL REFERENCES organization (id) ON DELETE CASCADE,
    status           text NOT NULL CHECK (status IN ('ok', 'invalid', 'failed')),
    summary          text,
    data             jsonb,
    success          boolean,
    success_reason   text,
    error            text,
    model            text NOT NULL,
    evaluated_at     timestamptz NOT NULL
);
CREATE INDEX call_analysis_success ON call_analysis (organization_id, success);
