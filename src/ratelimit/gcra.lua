-- One rate limit shared by every process of a deployment: GCRA on the Redis
-- server's clock, optionally with an AIMD-adapted rate.
--
-- KEYS[1]: the limiter's hash (tat, rate, slow, last_dec, pause_until)
-- ARGV[1]: "acquire" or "throttle" (a 429 was answered)
-- ARGV[2]: configured rate, requests per second (the start when adaptive)
-- ARGV[3]: burst
-- ARGV[4]: "1" when adaptive
-- ARGV[5], ARGV[6]: the adaptive rate's floor and ceiling
-- ARGV[7]: throttle only: pause everyone this many milliseconds
-- ARGV[8]: acquire only: the longest wait, in microseconds, worth reserving
-- Returns {wait in microseconds, rate * 1000, reserved}: when reserved is 1
-- the slot is taken and the caller goes after the wait; when 0 nothing is
-- taken and the wait says when to ask again.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local key = KEYS[1]
local s = redis.call('HMGET', key, 'tat', 'rate', 'slow', 'last_dec', 'pause_until')
local adaptive = ARGV[4] == '1'
local rate = tonumber(ARGV[2])
local slow = 0
if adaptive then
  rate = tonumber(s[2]) or rate
  slow = tonumber(s[3]) or 1
end
local tat = tonumber(s[1]) or now
local last_dec = tonumber(s[4]) or 0
local pause_until = tonumber(s[5]) or 0
local burst = tonumber(ARGV[3])
local floor_rate = tonumber(ARGV[5])
local ceiling_rate = tonumber(ARGV[6])

local function save()
  redis.call('HSET', key,
    'tat', string.format('%.0f', tat),
    'rate', string.format('%.6f', rate),
    'slow', slow,
    'last_dec', string.format('%.0f', last_dec),
    'pause_until', string.format('%.0f', pause_until))
  redis.call('PEXPIRE', key, 600000)
end

if ARGV[1] == 'throttle' then
  -- One decrease per second however many processes saw the 429s: the
  -- effect of a cut shows only after the API's window has moved.
  if adaptive and now - last_dec > 1000000 then
    if slow == 1 then
      rate = rate / 2
      slow = 0
    else
      rate = rate * 0.8
    end
    if rate < floor_rate then rate = floor_rate end
    last_dec = now
  end
  if not adaptive then
    -- A fixed limit slows everyone by one slot.
    if tat < now then tat = now end
    tat = tat + 1000000 / rate
  end
  local pause = tonumber(ARGV[7]) * 1000
  if pause > 0 and now + pause > pause_until then pause_until = now + pause end
  save()
  return {0, math.floor(rate * 1000), 0}
end

if pause_until > now then
  return {math.ceil(pause_until - now), math.floor(rate * 1000), 0}
end
local interval = 1000000 / rate
if tat < now then tat = now end
local allow_at = tat - interval * (burst - 1)
local wait = 0
if allow_at > now then wait = math.ceil(allow_at - now) end
if wait > tonumber(ARGV[8]) then
  return {wait, math.floor(rate * 1000), 0}
end
-- Reserve: callers queue on the schedule instead of racing for each slot.
tat = tat + interval
if adaptive then
  -- Slow start doubles the rate each saturated second; after the first
  -- 429, two more requests per second each second.
  if slow == 1 then rate = rate + 1 else rate = rate + 2 / rate end
  if rate > ceiling_rate then rate = ceiling_rate end
end
save()
return {wait, math.floor(rate * 1000), 1}
