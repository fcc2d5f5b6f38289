-- How many attempts of each task run were evicted for node memory pressure: they
-- spend none of the task's retries, and a task run may be evicted only so often.

ALTER TABLE task_instances ADD COLUMN evictions integer NOT NULL DEFAULT 0;
