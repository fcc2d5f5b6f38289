-- Why a node drains (NULL: it does not), whether its agent should exit once
-- empty, and whether the drain outlives the session: an operator's or the
-- fleet's drain holds when the agent registers again (until the node is lost);
-- an agent's own leaving holds for its session only.
ALTER TABLE nodes
    ADD COLUMN drain_reason text,
    ADD COLUMN drain_shutdown boolean NOT NULL DEFAULT false,
    ADD COLUMN drain_kept boolean NOT NULL DEFAULT false;
