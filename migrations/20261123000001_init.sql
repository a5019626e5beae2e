-- IACE initial schema: tenants, catalog, calls (snapshot + journal), inbox, shard leases.
-- Every tenant-owned row carries organization_id.

CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE organization (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL
);

CREATE TABLE api_key (
    id               uuid PRIMARY KEY,
    organization_id  uuid NOT NULL REFERENCES organization (id) ON DELETE CASCADE,
    key_hash         text NOT NULL UNIQUE,          -- SHA-256 hex; the key itself is never stored
    key_prefix       text NOT NULL,                 -- shown in listings to tell keys apart
    created_at       timestamptz NOT NULL DEFAULT now(),
    revoked_at       timestamptz
);
CREATE INDEX api_key_org ON api_key (organization_id);

CREATE TABLE agent (
    id               uuid PRIMARY KEY,
    organization_id  uuid NOT NULL REFERENCES organization (id) ON DELETE CASCADE,
    name             text NOT NULL,
    persona_config   jsonb NOT NULL DEFAULT '{}',
    voice_config     jsonb NOT NULL DEFAULT '{}',
    status           text NOT NULL CHECK (status IN ('active', 'inactive', 'archived')),
    agent_type       text NOT NULL CHECK (agent_type IN ('outbound', 'inbound', 'both')),
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);
CREATE INDEX agent_org_created ON agent (organization_id, created_at DESC, id DESC);

CREATE TABLE customer (
    id               uuid PRIMARY KEY,
    organization_id  uuid NOT NULL REFERENCES organization (id) ON DELETE CASCADE,
    phone            text NOT NULL,
    email            text,
    name             text,
    segment          text,
    metadata         jsonb NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    UNIQUE (organization_id, phone)
);
CREATE INDEX customer_org_created ON customer (organization_id, created_at DESC, id DESC);
CREATE INDEX customer_metadata ON customer USING gin (metadata);

CREATE TABLE call (
    id                  uuid PRIMARY KEY,
    organization_id     uuid NOT NULL REFERENCES organization (id) ON DELETE CASCADE,
    shard               smallint NOT NULL CHECK (shard >= 0 AND shard < 256),
    direction           text NOT NULL CHECK (direction IN ('outbound', 'inbound')),
    from_number         text NOT NULL,
    to_number           text NOT NULL,
    agent_id            uuid NOT NULL REFERENCES agent (id),
    customer_id         uuid REFERENCES customer (id) ON DELETE SET NULL,
    metadata            jsonb NOT NULL DEFAULT '{}',
    status              text NOT NULL CHECK (status IN
                          ('pending', 'ringing', 'in_progress', 'completed', 'failed', 'canceled')),
    end_reason          text,
    carrier_call_id     text,
    version             bigint NOT NULL CHECK (version >= 1),
    owner_epoch         bigint NOT NULL,
    next_deadline_at    timestamptz,
    next_deadline_kind  text CHECK (next_deadline_kind IN ('ring_timeout', 'max_duration')),
    ring_timeout_secs   integer NOT NULL,
    max_duration_secs   integer NOT NULL,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    ringing_at          timestamptz,
    answered_at         timestamptz,
    ended_at            timestamptz,
    idempotency_key     text,
    request_hash        text,
    CHECK ((end_reason IS NULL) = (status IN ('pending', 'ringing', 'in_progress'))),
    CHECK ((next_deadline_at IS NULL) = (next_deadline_kind IS NULL))
);
CREATE UNIQUE INDEX call_idempotency ON call (organization_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX call_customer_created ON call (customer_id, created_at);
CREATE INDEX call_agent_status ON call (agent_id, status);
CREATE INDEX call_org_created ON call (organization_id, created_at DESC, id DESC);
CREATE INDEX call_live_shard ON call (shard) WHERE status IN ('pending', 'ringing', 'in_progress');
CREATE INDEX call_carrier ON call (carrier_call_id) WHERE carrier_call_id IS NOT NULL;

CREATE TABLE call_event (
    organization_id  uuid NOT NULL REFERENCES organization (id) ON DELETE CASCADE,
    call_id          uuid NOT NULL REFERENCES call (id) ON DELETE CASCADE,
    seq              bigint NOT NULL CHECK (seq >= 1),
    kind             text NOT NULL,
    at               timestamptz NOT NULL,
    data             jsonb NOT NULL,
    PRIMARY KEY (call_id, seq)
);

CREATE TABLE inbox (
    vendor           text NOT NULL,
    event_id         text NOT NULL,
    organization_id  uuid NOT NULL REFERENCES organization (id) ON DELETE CASCADE,
    call_id          uuid NOT NULL REFERENCES call (id) ON DELETE CASCADE,
    occurred_at      timestamptz NOT NULL,
    payload          jsonb NOT NULL,
    received_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    processed_at     timestamptz,
    PRIMARY KEY (vendor, event_id)
);
CREATE INDEX inbox_pending ON inbox (received_at) WHERE processed_at IS NULL;

CREATE TABLE shard_lease (
    shard        smallint PRIMARY KEY CHECK (shard >= 0 AND shard < 256),
    owner        text NOT NULL,
    epoch        bigint NOT NULL DEFAULT 0,
    acquired_at  timestamptz NOT NULL DEFAULT now(),
    renewed_at   timestamptz NOT NULL DEFAULT now()
);
