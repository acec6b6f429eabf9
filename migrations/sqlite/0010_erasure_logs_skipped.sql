-- Why an erasure left the workflow logs (see the PostgreSQL migration of the
-- same name).
ALTER TABLE user_sync_erasures ADD COLUMN logs_skipped TEXT;
