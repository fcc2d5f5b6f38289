-- How long attempts run, learned like their memory: each past attempt's run time
-- (placement to end), and each placement's expected run time (the median of its
-- task's past ones; NULL: too few known). Placement keeps attempts that end
-- together on the same nodes (strata.provisioner.domain.placement, "When").

ALTER TABLE task_usage ADD COLUMN run_seconds double precision NOT NULL DEFAULT 0;
ALTER TABLE placements ADD COLUMN expected_seconds double precision;
