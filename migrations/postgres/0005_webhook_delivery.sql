-- What the deliverer of webhooks needs beside 0004's table.

-- An attempt under way: set when a process claims the delivery, cleared when
-- the attempt ends. `user-sync webhooks --redeliver` skips a delivery whose
-- lease has not run out, so that a running worker and the command never send
-- one webhook at once (a crashed attempt's lease runs out by itself).
ALTER TABLE user_sync.webhook_deliveries ADD COLUMN IF NOT EXISTS leased_until TIMESTAMPTZ;

-- The oldest undelivered webhook (the metric of delivery lag), read every
-- poll: the first entry of this index, not a scan of every waiting delivery.
CREATE INDEX IF NOT EXISTS webhook_deliveries_undelivered
    ON user_sync.webhook_deliveries (created_at)
    WHERE delivered_at IS NULL AND abandoned_at IS NULL;
