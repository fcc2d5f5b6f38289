-- Why a placed attempt was asked to stop (TaskCancelRequested); NULL while it was not.
-- The agent's Connect session sends the TaskCancellation from it.
ALTER TABLE placements ADD COLUMN cancel_reason text;
