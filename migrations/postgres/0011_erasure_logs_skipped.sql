-- Why an erasure left the workflow logs of a user that existed: 'disabled'
-- (gdpr.delete_workflow_logs is off) or 'no_logs_call' (the API version the
-- worker speaks, 2021-12, has no workflow-logs call). NULL when the logs
-- were deleted (logs_deleted_at) or no user was ever created. Part of the
-- proof: without it, a NULL logs_deleted_at could not say why.
ALTER TABLE user_sync.erasures ADD COLUMN logs_skipped TEXT;
