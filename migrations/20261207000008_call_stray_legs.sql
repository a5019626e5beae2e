-- Second legs of a call (a repeated dial the carrier did not deduplicate) that the call has
-- heard of, each with whether it ended: a repeated fact about such a leg changes nothing and is
-- journaled once, like every other carrier fact. A JSON array of {"leg", "ended"}; almost
-- always empty.
ALTER TABLE call ADD COLUMN stray_legs jsonb NOT NULL DEFAULT '[]';
