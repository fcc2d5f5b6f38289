-- When a node was declared lost (NodeLost published, its placements freed as
-- TaskLost); NULL while it is not, and again once it registers anew.
ALTER TABLE nodes ADD COLUMN lost_at timestamptz;
CREATE INDEX nodes_by_last_seen ON nodes (last_seen_at) WHERE lost_at IS NULL;
