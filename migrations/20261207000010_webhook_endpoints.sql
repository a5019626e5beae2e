-- Webhook endpoints: where an organization's call events are delivered (signed with the
-- Standard Webhooks scheme). The secret is stored to sign with; the API shows it only at
-- creation and at rotation. During a rotation the previous secret signs too, until
-- previous_secret_until.
CREATE TABLE webhook_endpoint (
    id                     uuid PRIMARY KEY,
    organization_id        uuid NOT NULL REFERENCES organization (id) ON DELETE CASCADE,
    url                    text NOT NULL CHECK (url <> '' AND length(url) <= 2048),
    description            text NOT NULL DEFAULT '',
    event_types            text[] NOT NULL CHECK (cardinality(event_types) > 0),
    enabled                boolean NOT NULL DEFAULT true,
    -- Set when the server disabled the endpoint (410 Gone, failing for days).
    disabled_reason        text,
    secret                 text NOT NULL CHECK (secret LIKE 'whsec\_%'),
    previous_secret        text,
    previous_secret_until  timestamptz,
    created_at             timestamptz NOT NULL,
    updated_at             timestamptz NOT NULL
);

CREATE INDEX webhook_endpoint_by_org ON webhook_endpoint (organization_id, created_at DESC, id DESC);
