-- Accounts and security: users, refresh-token families, richer API keys, plans, and the
-- billing/CRM webhook events (deduplicated by the vendor's event id, stored before the 200).

ALTER TABLE organization
    ADD COLUMN plan                text NOT NULL DEFAULT 'free'
                                   CHECK (plan IN ('free', 'pro', 'enterprise')),
    -- When the first unpaid invoice was reported; the plan falls back to `free` once the
    -- grace period after it has passed (computed when read; a paid invoice clears it).
    ADD COLUMN past_due_since      timestamptz,
    -- `created` of the newest Stripe event applied to the plan: older deliveries (Stripe does
    -- not order them) never overwrite newer state.
    ADD COLUMN plan_event_at       timestamptz,
    ADD COLUMN stripe_customer_id  text UNIQUE,
    ADD COLUMN hubspot_portal_id   bigint UNIQUE;

CREATE TABLE app_user (
    id               uuid PRIMARY KEY,
    organization_id  uuid NOT NULL REFERENCES organization (id) ON DELETE CASCADE,
    email            text NOT NULL UNIQUE CHECK (email = lower(email)),
    password_hash    text NOT NULL,                 -- argon2id PHC string
    role             text NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'read_only')),
    created_at       timestamptz NOT NULL,
    disabled_at      timestamptz
);
CREATE INDEX app_user_org ON app_user (organization_id);

-- One row per refresh token ever issued. A login starts a family; each refresh rotates the
-- presented token (rotated_at) and issues the next one in the same family. Presenting a
-- rotated token again is reuse: the whole family is revoked.
CREATE TABLE refresh_token (
    id               uuid PRIMARY KEY,
    family_id        uuid NOT NULL,
    user_id          uuid NOT NULL REFERENCES app_user (id) ON DELETE CASCADE,
    organization_id  uuid NOT NULL REFERENCES organization (id) ON DELETE CASCADE,
    token_hash       text NOT NULL UNIQUE,          -- SHA-256 hex; the token itself is never stored
    issued_at        timestamptz NOT NULL,
    expires_at       timestamptz NOT NULL,
    rotated_at       timestamptz,
    revoked_at       timestamptz,
    revoke_reason    text CHECK (revoke_reason IN ('logout', 'logout_all', 'reuse', 'user_disabled'))
);
CREATE INDEX refresh_token_family ON refresh_token (family_id);
CREATE INDEX refresh_token_user_live ON refresh_token (user_id) WHERE revoked_at IS NULL;

ALTER TABLE api_key
    ADD COLUMN name          text NOT NULL DEFAULT 'default',
    ADD COLUMN role          text NOT NULL DEFAULT 'owner'  -- keys made before roles could do everything
                             CHECK (role IN ('owner', 'admin', 'member', 'read_only')),
    ADD COLUMN tier          text NOT NULL DEFAULT 'standard'
                             CHECK (tier IN ('low', 'standard', 'high')),
    ADD COLUMN last_used_at  timestamptz,
    ADD COLUMN created_by    uuid;
CREATE INDEX api_key_org_created ON api_key (organization_id, created_at DESC, id DESC);

CREATE TABLE account_event (
    vendor           text NOT NULL CHECK (vendor IN ('stripe', 'hubspot')),
    event_id         text NOT NULL,
    event_type       text NOT NULL,
    organization_id  uuid REFERENCES organization (id) ON DELETE SET NULL,
    payload          jsonb NOT NULL,
    -- What applying it did (`applied`, `ignored: <why>`, `stale`, `no_match`).
    outcome          text NOT NULL,
    received_at      timestamptz NOT NULL,
    PRIMARY KEY (vendor, event_id)
);

-- Concurrent-call limits count an organization's live calls.
CREATE INDEX call_org_live ON call (organization_id)
    WHERE status IN ('pending', 'ringing', 'in_progress');
