-- Telnyx ingress (issue 5): inbound numbers, and an inbox that also keeps vendor events that
-- have no call (yet) or that the engine does not act on.

-- An inbox row may wait for its call: a fact that overtook the offer of its inbound call
-- waits under the carrier's leg id and is adopted when the call is created.
ALTER TABLE inbox ALTER COLUMN organization_id DROP NOT NULL;
ALTER TABLE inbox ALTER COLUMN call_id DROP NOT NULL;
-- An event type the engine does not act on has no fact (payload); it is stored processed.
ALTER TABLE inbox ALTER COLUMN payload DROP NOT NULL;
ALTER TABLE inbox ADD COLUMN event_type text;
ALTER TABLE inbox ADD COLUMN carrier_leg text;
-- The vendor's JSON as received, for the record (call quality stats, SIP causes, ...).
ALTER TABLE inbox ADD COLUMN raw jsonb;
-- A row either belongs to a call (and its organization) or to no one yet.
ALTER TABLE inbox ADD CONSTRAINT inbox_owner CHECK ((call_id IS NULL) = (organization_id IS NULL));
-- Only rows with a call and a fact are ever re-delivered by the sweep.
DROP INDEX inbox_pending;
CREATE INDEX inbox_pending ON inbox (received_at)
    WHERE processed_at IS NULL AND call_id IS NOT NULL;
CREATE INDEX inbox_waiting ON inbox (vendor, carrier_leg)
    WHERE call_id IS NULL AND processed_at IS NULL;

-- A number is answered by one agent; the carrier routes a number to exactly one place, so a
-- number is unique across organizations. Deleting the agent releases its numbers.
CREATE TABLE phone_number (
    id               uuid PRIMARY KEY,
    organization_id  uuid NOT NULL REFERENCES organization (id) ON DELETE CASCADE,
    agent_id         uuid NOT NULL REFERENCES agent (id) ON DELETE CASCADE,
    number           text NOT NULL UNIQUE,
    created_at       timestamptz NOT NULL
);
CREATE INDEX phone_number_org_created ON phone_number (organization_id, created_at DESC, id DESC);
CREATE INDEX phone_number_agent ON phone_number (agent_id);
