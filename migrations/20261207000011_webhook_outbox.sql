-- The webhook outbox. A call's events are written in the same transaction as the journal
-- entry that causes them, one webhook_delivery per subscribed endpoint; the delivery workers
-- (one per endpoint at a time, by lease) post them in order per call and record every attempt.

CREATE TABLE webhook_event (
    -- The webhook-id: stable for the event, the receiver's dedupe key.
    id               text PRIMARY KEY,
    organization_id  uuid NOT NULL REFERENCES organization (id) ON DELETE CASCADE,
    call_id          uuid,
    type             text NOT NULL,
    occurred_at      timestamptz NOT NULL,
    -- NULL until made at the first attempt (call.transcript_ready), then kept.
    payload          jsonb
);

CREATE TABLE webhook_delivery (
    id               uuid PRIMARY KEY,
    -- Commit order: a call's deliveries go out in this order.
    position         bigserial NOT NULL,
    endpoint_id      uuid NOT NULL REFERENCES webhook_endpoint (id) ON DELETE CASCADE,
    event_id         text NOT NULL REFERENCES webhook_event (id) ON DELETE CASCADE,
    organization_id  uuid NOT NULL,
    call_id          uuid,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL,
    next_attempt_at  timestamptz,
    last_attempt_at  timestamptz,
    last_status_code integer,
    last_latency_ms  integer,
    last_error       text,
    delivered_at     timestamptz,
    UNIQUE (endpoint_id, event_id)
);
CREATE INDEX webhook_delivery_due ON webhook_delivery (next_attempt_at, endpoint_id)
    WHERE status = 'pending';
CREATE INDEX webhook_delivery_call ON webhook_delivery (endpoint_id, call_id, position)
    WHERE status = 'pending';
CREATE INDEX webhook_delivery_list ON webhook_delivery (endpoint_id, created_at DESC, id DESC);
CREATE INDEX webhook_delivery_event ON webhook_delivery (event_id);

-- Every attempt, as made.
CREATE TABLE webhook_attempt (
    delivery_id  uuid NOT NULL REFERENCES webhook_delivery (id) ON DELETE CASCADE,
    attempt      integer NOT NULL,
    at           timestamptz NOT NULL,
    outcome      text NOT NULL,
    status_code  integer,
    latency_ms   integer NOT NULL,
    error        text,
    PRIMARY KEY (delivery_id, attempt)
);

-- One delivery worker per endpoint at a time; failing_since: the first failure since the last
-- success (an endpoint failing for days is disabled).
ALTER TABLE webhook_endpoint
    ADD COLUMN lease_owner   text,
    ADD COLUMN lease_until   timestamptz,
    ADD COLUMN failing_since timestamptz;

-- What the server did on an organization's behalf that its people should know.
CREATE TABLE organization_log (
    id               uuid PRIMARY KEY,
    organization_id  uuid NOT NULL REFERENCES organization (id) ON DELETE CASCADE,
    at               timestamptz NOT NULL,
    kind             text NOT NULL,
    data             jsonb NOT NULL
);
CREATE INDEX organization_log_by_org ON organization_log (organization_id, at DESC, id DESC);

-- Wakes the delivery workers of every node when deliveries are committed (one notification
-- per transaction: Postgres folds identical ones).
CREATE FUNCTION webhook_delivery_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('webhook_delivery', '');
    RETURN NULL;
END;
$$;
CREATE TRIGGER webhook_delivery_notify AFTER INSERT ON webhook_delivery
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_delivery_notify();
