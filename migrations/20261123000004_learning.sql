-- Learning and customer memory (issue 9, DESIGN.md section 7).
--
-- Every vector is 768-d and L2-normalised, stored with the model that made it: searches filter
-- on the model, so vectors of different models are never compared. HNSW indexes use cosine
-- distance (`<=>`).

-- Patterns learned from finished calls: what an agent did and how it went.
CREATE TABLE learned_pattern (
    id               uuid PRIMARY KEY,
    organization_id  uuid NOT NULL REFERENCES organization (id) ON DELETE CASCADE,
    agent_id         uuid NOT NULL REFERENCES agent (id) ON DELETE CASCADE,
    source_call_id   uuid REFERENCES call (id) ON DELETE SET NULL,
    pattern_type     text NOT NULL CHECK (pattern_type IN ('persona_usage', 'turn_sequence',
                        'tool_sequence', 'escalation_trigger', 'objection_handling', 'resolution')),
    pattern_data     jsonb NOT NULL,
    description      text NOT NULL CHECK (description <> ''),
    embedding        vector(768) NOT NULL,
    embedding_model  text NOT NULL,
    usage_count      integer NOT NULL DEFAULT 0 CHECK (usage_count >= 0),
    success_count    integer NOT NULL DEFAULT 0 CHECK (success_count >= 0 AND success_count <= usage_count),
    success_rate     double precision GENERATED ALWAYS AS
                        (CASE WHEN usage_count = 0 THEN 0 ELSE success_count::double precision / usage_count END) STORED,
    last_used_at     timestamptz,
    created_at       timestamptz NOT NULL
);
CREATE INDEX learned_pattern_embedding ON learned_pattern USING hnsw (embedding vector_cosine_ops);
CREATE INDEX learned_pattern_agent ON learned_pattern (organization_id, agent_id, success_rate DESC);
CREATE INDEX learned_pattern_call ON learned_pattern (source_call_id);

-- What the engine remembers of a customer.
CREATE TABLE customer_memory (
    id               uuid PRIMARY KEY,
    organization_id  uuid NOT NULL REFERENCES organization (id) ON DELETE CASCADE,
    customer_id      uuid NOT NULL REFERENCES customer (id) ON DELETE CASCADE,
    source_call_id   uuid REFERENCES call (id) ON DELETE SET NULL,
    kind             text NOT NULL CHECK (kind IN ('issue', 'preference', 'commitment',
                        'sentiment_summary', 'call_summary')),
    content          text NOT NULL CHECK (content <> ''),
    embedding        vector(768) NOT NULL,
    embedding_model  text NOT NULL,
    importance       real NOT NULL CHECK (importance >= 0 AND importance <= 1),
    created_at       timestamptz NOT NULL
);
CREATE INDEX customer_memory_embedding ON customer_memory USING hnsw (embedding vector_cosine_ops);
CREATE INDEX customer_memory_customer ON customer_memory (organization_id, customer_id, created_at DESC);

-- Calls waiting to be learned from. A row is written in the same transaction as the call's
-- `completed` transition, so no finished call is ever missed; it stays until its learning
-- committed (a crash or an embedding outage leaves it for the next attempt).
CREATE TABLE learning_queue (
    call_id          uuid PRIMARY KEY REFERENCES call (id) ON DELETE CASCADE,
    organization_id  uuid NOT NULL REFERENCES organization (id) ON DELETE CASCADE,
    enqueued_at      timestamptz NOT NULL,
    -- Not before: the conversation's last records land just after the call ends.
    next_attempt_at  timestamptz NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    last_error       text,
    done_at          timestamptz
);
CREATE INDEX learning_queue_due ON learning_queue (next_attempt_at) WHERE done_at IS NULL;

-- Identical texts are embedded once per model.
CREATE TABLE embedding_cache (
    model       text NOT NULL,
    text_hash   bytea NOT NULL,          -- SHA-256 of the text
    embedding   vector(768) NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model, text_hash)
);

-- One active learning worker per deployment: whoever holds this lease works the queue; the
-- others stand by and take over when it expires.
CREATE TABLE singleton_lease (
    name        text PRIMARY KEY,
    holder      text NOT NULL,
    expires_at  timestamptz NOT NULL
);
