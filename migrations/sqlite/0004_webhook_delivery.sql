-- What the deliverer of webhooks needs beside 0003's table (see the
-- PostgreSQL migration of the same name for why).
ALTER TABLE user_sync_webhook_deliveries ADD COLUMN leased_until TEXT;
CREATE INDEX user_sync_webhook_deliveries_undelivered
    ON user_sync_webhook_deliveries (created_at)
    WHERE delivered_at IS NULL AND abandoned_at IS NULL;
