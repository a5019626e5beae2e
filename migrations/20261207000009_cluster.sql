-- Cluster membership: one row per node id, refreshed by the node's heartbeat. Every time in
-- this table and in shard_lease.expires_at is the database's clock (clock_timestamp()), never
-- a node's: nodes with skewed clocks must agree on who is alive and whose lease lapsed.
CREATE TABLE cluster_node (
    node_id       text PRIMARY KEY CHECK (node_id <> ''),
    -- The base URL other nodes forward to and the carrier streams media to.
    url           text NOT NULL CHECK (url <> ''),
    -- The process registered under this id: a process that registers later supersedes it
    -- (its heartbeats are refused from then on).
    incarnation   uuid NOT NULL,
    -- When the node's process started: a restart under the same id shows as a new value.
    started_at    timestamptz NOT NULL,
    heartbeat_at  timestamptz NOT NULL,
    -- A draining node takes no new work and is assigned no shard.
    draining      boolean NOT NULL DEFAULT false,
    -- Set by a graceful exit, cleared by the next heartbeat: a node that left is not a member
    -- even though its last heartbeat is recent.
    left_at       timestamptz
);

-- A released shard has no owner (it keeps its epoch: the next claim bumps it).
ALTER TABLE shard_lease ALTER COLUMN owner DROP NOT NULL;

-- Leases carry a TTL: the lease lapses at expires_at unless renewed. Rows that exist already
-- expire now, so the first claim after this migration takes them as lapsed.
ALTER TABLE shard_lease ADD COLUMN expires_at timestamptz NOT NULL DEFAULT now();
