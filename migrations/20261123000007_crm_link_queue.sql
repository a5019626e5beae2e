-- HubSpot contacts that events named but no customer is linked to yet: looked up in the CRM
-- and linked by phone or email. Written in the same transaction as the events (a crash after
-- the webhook's 200 loses nothing), claimed with a lease, retried with backoff.
CREATE TABLE crm_link_queue (
    portal_id        bigint NOT NULL,
    contact_id       text NOT NULL,
    enqueued_at      timestamptz NOT NULL,
    next_attempt_at  timestamptz NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    last_error       text,
    PRIMARY KEY (portal_id, contact_id)
);
CREATE INDEX crm_link_queue_due ON crm_link_queue (next_attempt_at);
