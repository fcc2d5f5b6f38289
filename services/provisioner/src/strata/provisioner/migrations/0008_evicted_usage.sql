-- Whether a past attempt was evicted under node memory pressure: the next attempt
-- of its task reserves from peaks rather than means, so a retry is not evicted at
-- its next peak again (strata.provisioner.domain.sizing).

ALTER TABLE task_usage ADD COLUMN evicted boolean NOT NULL DEFAULT false;
