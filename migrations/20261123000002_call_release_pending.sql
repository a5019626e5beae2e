-- A call that ended with our hangup command keeps `release_pending` until the carrier confirms
-- the leg is gone; such calls are recovered after a crash like live ones, so no phone line is
-- ever left open.
ALTER TABLE call ADD COLUMN release_pending boolean NOT NULL DEFAULT false;

CREATE INDEX call_release_pending ON call (shard) WHERE release_pending;
