-- What each task asked for, and for its latest attempt what placement gave it (hard
-- limit, reservation learned from past attempts) and what it used at its peak, so a
-- run shows requested, reserved and used side by side. JSON objects of the domain's
-- Resources / Usage fields; NULL while unknown (not placed yet, not ended yet, or a
-- run recorded before this migration).

ALTER TABLE task_instances
    ADD COLUMN requested jsonb,
    ADD COLUMN limits jsonb,
    ADD COLUMN reserved jsonb,
    ADD COLUMN peak_usage jsonb;
