//! The limit shared by every process through Redis.
//!
//! One GCRA state per deployment (`{namespace}.ratelimit`), kept on the
//! Redis server's clock by a Lua script, so processes may start and stop at
//! any time without breaking the limit. Each process also announces itself
//! every second in `{namespace}.ratelimit.members`: when Redis does not
//! answer, a process falls back to its share of the last known rate (the
//! rate divided by the processes last seen), never to no limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use super::pacer::LocalPacer;

/// What a limit answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// A slot is taken: go after this wait.
    After(Duration),
    /// Nothing taken: ask again after this wait.
    Retry(Duration),
}

impl Slot {
    /// A local pacer takes a slot only when it is free now.
    pub fn from_local(wait: Duration) -> Self {
        if wait.is_zero() {
            Self::After(Duration::ZERO)
        } else {
            Self::Retry(wait)
        }
    }
}

/// A Redis answer slower than this counts as Redis being away. Generous:
/// a busy machine delays answers by hundreds of milliseconds, and a false
/// alarm puts this process on its local share, out of step with the others.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a process says it is alive, and how long it counts after.
const MEMBER_HEARTBEAT: Duration = Duration::from_secs(1);
const MEMBER_TTL: Duration = Duration::from_secs(3);

/// The parameters the script needs on every call.
#[derive(Debug, Clone, Copy)]
pub struct SharedParams {
    pub rate: f64,
    pub burst: u32,
    pub adaptive: bool,
    pub floor: f64,
    pub ceiling: f64,
}

pub struct SharedLimit {
    conn: ConnectionManager,
    script: Script,
    key: String,
    members_key: String,
    member: String,
    params: SharedParams,
    /// The rate the shared state last reported, times 1000.
    rate_milli: AtomicU64,
    /// Processes seen in the last [`MEMBER_TTL`] (at least 1).
    members: AtomicU64,
    /// Serves while Redis is away: this process's share of the rate.
    fallback: LocalPacer,
    degraded: AtomicBool,
}

impl std::fmt::Debug for SharedLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLimit")
            .field("key", &self.key)
            .field("params", &self.params)
            .field("degraded", &self.degraded.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl SharedLimit {
    pub fn new(
        conn: ConnectionManager,
        namespace: &str,
        member: String,
        params: SharedParams,
    ) -> Arc<Self> {
        Arc::new(Self {
            conn,
            script: Script::new(include_str!("gcra.lua")),
            key: format!("{namespace}.ratelimit"),
            members_key: format!("{namespace}.ratelimit.members"),
            member,
            params,
            rate_milli: AtomicU64::new((params.rate * 1000.0) as u64),
            members: AtomicU64::new(1),
            fallback: LocalPacer::fixed(params.rate, 1),
            degraded: AtomicBool::new(false),
        })
    }

    /// The rate in force across processes, requests per second.
    pub fn rate(&self) -> f64 {
        self.rate_milli.load(Ordering::Relaxed) as f64 / 1000.0
    }

    /// Takes a slot at most `max_wait` away ([`Slot::After`]), or says how
    /// long until one may be ([`Slot::Retry`]).
    pub async fn reserve(&self, max_wait: Duration) -> Slot {
        if self.degraded.load(Ordering::Relaxed) {
            // The membership heartbeat finds out when Redis is back; callers
            // never wait on a Redis that may not answer.
            return Slot::from_local(self.fallback.reserve());
        }
        let max_us = u64::try_from(max_wait.as_micros()).unwrap_or(u64::MAX);
        match self.call("acquire", 0, max_us).await {
            Ok((wait_us, true)) => Slot::After(Duration::from_micros(wait_us)),
            Ok((wait_us, false)) => Slot::Retry(Duration::from_micros(wait_us)),
            Err(error) => {
                self.degrade(&error);
                Slot::from_local(self.fallback.reserve())
            }
        }
    }

    /// A 429: every process slows down (and pauses for `pause`, if any).
    pub async fn on_throttle(&self, pause: Duration) {
        let millis = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX);
        if let Err(error) = self.call("throttle", millis, 0).await {
            self.degrade(&error);
            self.fallback.set_rate(self.fallback.rate() * 0.5);
        }
    }

    async fn call(&self, op: &str, pause_ms: u64, max_wait_us: u64) -> anyhow::Result<(u64, bool)> {
        let mut conn = self.conn.clone();
        let p = self.params;
        let mut invocation = self.script.key(&self.key);
        invocation
            .arg(op)
            .arg(p.rate)
            .arg(p.burst)
            .arg(if p.adaptive { "1" } else { "0" })
            .arg(p.floor)
            .arg(p.ceiling)
            .arg(pause_ms)
            .arg(max_wait_us);
        let (wait_us, rate_milli, reserved): (i64, i64, i64) =
            tokio::time::timeout(REDIS_TIMEOUT, invocation.invoke_async(&mut conn))
                .await
                .map_err(|_| anyhow::anyhow!("Redis did not answer within {REDIS_TIMEOUT:?}"))??;
        let rate_milli = u64::try_from(rate_milli).unwrap_or(0);
        self.rate_milli.store(rate_milli, Ordering::Relaxed);
        if self.degraded.swap(false, Ordering::Relaxed) {
            tracing::warn!("Redis answers again: the shared rate limit is back");
        }
        Ok((u64::try_from(wait_us).unwrap_or(0), reserved == 1))
    }

    fn degrade(&self, error: &anyhow::Error) {
        let share = self.rate() / self.members.load(Ordering::Relaxed).max(1) as f64;
        self.fallback.set_rate(share.max(0.1));
        if !self.degraded.swap(true, Ordering::Relaxed) {
            metrics::counter!("user_sync_rate_limit_degraded_total").increment(1);
            tracing::warn!(
                error = %format!("{error:#}"),
                fallback_rps = share,
                "the shared rate limit is unreachable: this process keeps to its share locally"
            );
        }
    }

    /// Announces this process every second until `shutdown`, and learns how
    /// many others share the limit.
    pub async fn keep_membership(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            match self.announce().await {
                Ok(count) => {
                    self.members.store(count.max(1), Ordering::Relaxed);
                    if self.degraded.swap(false, Ordering::Relaxed) {
                        tracing::warn!("Redis answers again: the shared rate limit is back");
                    }
                }
                Err(error) => self.degrade(&error),
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(MEMBER_HEARTBEAT) => {}
            }
        }
        let mut conn = self.conn.clone();
        let _ = tokio::time::timeout(
            REDIS_TIMEOUT,
            redis::cmd("ZREM")
                .arg(&self.members_key)
                .arg(&self.member)
                .query_async::<i64>(&mut conn),
        )
        .await;
    }

    async fn announce(&self) -> anyhow::Result<u64> {
        let mut conn = self.conn.clone();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let stale = now.saturating_sub(MEMBER_TTL.as_millis() as u64);
        let (_, _, count, _): (i64, i64, u64, i64) = tokio::time::timeout(
            REDIS_TIMEOUT,
            redis::pipe()
                .atomic()
                .zadd(&self.members_key, &self.member, now)
                .zrembyscore(&self.members_key, 0, stale)
                .zcard(&self.members_key)
                .pexpire(&self.members_key, 60_000)
                .query_async(&mut conn),
        )
        .await
        .map_err(|_| anyhow::anyhow!("Redis did not answer"))??;
        Ok(count)
    }
}
