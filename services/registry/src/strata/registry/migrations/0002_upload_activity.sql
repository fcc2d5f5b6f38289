-- When an upload last stored a part: uploads idle past their time to live are removed.
ALTER TABLE uploads ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();
