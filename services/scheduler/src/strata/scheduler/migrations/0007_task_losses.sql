-- How many attempts of each task run were lost with their node (agent gone, pod
-- deleted): like evictions, they spend none of the task's retries, and a task run
-- may lose attempts only so often (STRATA_SCHEDULER_MAX_LOSSES).

ALTER TABLE task_instances ADD COLUMN losses integer NOT NULL DEFAULT 0;
