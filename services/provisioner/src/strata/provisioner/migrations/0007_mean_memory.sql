-- The memory each past attempt held on average (time-weighted over its agent's
-- samples), beside its peak: what placement reserves for a task that peaks only
-- briefly when sizing reserves means (STRATA_PROVISIONER_RESERVE_MEMORY_FROM=mean).
-- 0: not measured (an attempt recorded before, or an agent that does not report it).

ALTER TABLE task_usage ADD COLUMN mean_memory_bytes bigint NOT NULL DEFAULT 0;
