//! Bounds on what unauthenticated callers can make the node do: per-client rate limits (token buckets keyed by
//! the client's IP address, in a table that is itself bounded) and counted slots for scarce work (connections,
//! TLS handshakes, snapshot downloads).
//!
//! Time enters as an argument (`now_ms`), so the limiter is tested without a clock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Clients tracked at once by one [`RateLimiter`]; past it, the buckets that are full again (clients idle long
/// enough to have earned their whole burst back) are forgotten first, then the least recently seen.
pub const RATE_CLIENTS_MAX: usize = 4096;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Tokens in thousandths, so that slow refill rates need no floating point.
    milli_tokens: u64,
    updated_ms: u64,
}

/// Token buckets per client IP: `burst` actions at once, refilled at `per_minute` actions a minute.
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: u64,
    burst: u64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl RateLimiter {
    /// A limiter allowing `burst` actions at once and `per_minute` a minute after that (0: nothing is allowed).
    pub fn new(per_minute: u64, burst: u64) -> RateLimiter {
        RateLimiter {
            per_minute,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn refill(&self, b: &mut Bucket, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(b.updated_ms);
        // per_minute tokens per 60_000 ms = per_minute milli-tokens per 60 ms.
        let earned = elapsed.saturating_mul(self.per_minute) / 60;
        b.milli_tokens = b.milli_tokens.saturating_add(earned).min(self.burst * 1000);
        b.updated_ms = now_ms;
    }

    /// Takes one token for `client`: `Ok` if it had one, else `Err(seconds until it will have one)`.
    pub fn take(&self, client: IpAddr, now_ms: u64) -> Result<(), u32> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !buckets.contains_key(&client) && buckets.len() >= RATE_CLIENTS_MAX {
            self.evict(&mut buckets, now_ms);
        }
        let full = Bucket {
            milli_tokens: self.burst * 1000,
            updated_ms: now_ms,
        };
        let bucket = buckets.entry(client).or_insert(full);
        self.refill(bucket, now_ms);
        if bucket.milli_tokens >= 1000 {
            bucket.milli_tokens -= 1000;
            return Ok(());
        }
        let missing = 1000 - bucket.milli_tokens;
        let wait_ms = if self.per_minute == 0 {
            u64::from(u32::MAX)
        } else {
            (missing * 60).div_ceil(self.per_minute)
        };
        Err(u32::try_from(wait_ms.div_ceil(1000)).unwrap_or(u32::MAX).max(1))
    }

    fn evict(&self, buckets: &mut HashMap<IpAddr, Bucket>, now_ms: u64) {
        // Forgetting a client whose bucket is full again changes nothing: it would start full anyway.
        let burst = self.burst * 1000;
        let per_minute = self.per_minute;
        buckets.retain(|_, b| {
            let earned = now_ms.saturating_sub(b.updated_ms).saturating_mul(per_minute) / 60;
            b.milli_tokens.saturating_add(earned) < burst
        });
        // Still full of clients that are all short of tokens: forget the least recently seen one. A client can
        // regain a burst this way only by making RATE_CLIENTS_MAX other addresses act in between.
        if buckets.len() >= RATE_CLIENTS_MAX {
            if let Some(oldest) = buckets
                .iter()
                .min_by_key(|(_, b)| b.updated_ms)
                .map(|(ip, _)| *ip)
            {
                buckets.remove(&oldest);
            }
        }
    }

    /// Clients tracked now.
    pub fn clients(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// A counted resource (connections, downloads): [`Slots::try_take`] hands out at most `max` [`Slot`]s at once; a
/// slot frees itself when dropped.
#[derive(Clone, Debug)]
pub struct Slots {
    max: usize,
    taken: Arc<Mutex<usize>>,
}

/// One taken slot of [`Slots`], returned on drop.
#[derive(Debug)]
pub struct Slot {
    taken: Arc<Mutex<usize>>,
}

impl Slots {
    /// At most `max` slots at once.
    pub fn new(max: usize) -> Slots {
        Slots {
            max,
            taken: Arc::new(Mutex::new(0)),
        }
    }

    /// A slot, or `None` if all `max` are taken.
    pub fn try_take(&self) -> Option<Slot> {
        let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        if *taken >= self.max {
            return None;
        }
        *taken += 1;
        Some(Slot {
            taken: self.taken.clone(),
        })
    }

    /// Slots taken now.
    pub fn in_use(&self) -> usize {
        *self.taken.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bound.
    pub fn max(&self) -> usize {
        self.max
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        *taken = taken.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn a_client_gets_its_burst_then_waits_for_the_refill() {
        let limiter = RateLimiter::new(6, 3); // one token every 10 s
        for _ in 0..3 {
            assert_eq!(limiter.take(ip(1), 0), Ok(()));
        }
        assert_eq!(limiter.take(ip(1), 0), Err(10));
        assert_eq!(limiter.take(ip(1), 5_000), Err(5));
        assert_eq!(limiter.take(ip(1), 10_000), Ok(()));
        assert_eq!(limiter.take(ip(1), 10_000), Err(10));
        // Another client is not affected.
        assert_eq!(limiter.take(ip(2), 10_000), Ok(()));
    }

    #[test]
    fn the_refill_never_exceeds_the_burst() {
        let limiter = RateLimiter::new(60, 2);
        assert_eq!(limiter.take(ip(1), 0), Ok(()));
        // An hour idle earns 3600 tokens but keeps only 2.
        for _ in 0..2 {
            assert_eq!(limiter.take(ip(1), 3_600_000), Ok(()));
        }
        assert!(limiter.take(ip(1), 3_600_000).is_err());
    }

    #[test]
    fn a_zero_rate_allows_only_the_burst() {
        let limiter = RateLimiter::new(0, 1);
        assert_eq!(limiter.take(ip(1), 0), Ok(()));
        assert!(limiter.take(ip(1), u64::MAX / 2).is_err());
    }

    #[test]
    fn the_client_table_is_bounded_and_forgets_idle_clients_first() {
        let limiter = RateLimiter::new(1, 1);
        for i in 0..RATE_CLIENTS_MAX as u32 {
            let client = IpAddr::from(i.to_be_bytes());
            assert_eq!(limiter.take(client, 0), Ok(()));
        }
        assert_eq!(limiter.clients(), RATE_CLIENTS_MAX);
        // Every tracked client is empty: a newcomer evicts the least recently seen, never grows the table.
        let newcomer = IpAddr::from([255, 255, 255, 255]);
        assert_eq!(limiter.take(newcomer, 1), Ok(()));
        assert_eq!(limiter.clients(), RATE_CLIENTS_MAX);
        // A minute later all are full again and are forgotten at once.
        assert_eq!(limiter.take(ip(9), 120_000), Ok(()));
        assert!(limiter.clients() < 10);
    }

    #[test]
    fn slots_are_bounded_and_freed_on_drop() {
        let slots = Slots::new(2);
        let a = slots.try_take().expect("first");
        let _b = slots.try_take().expect("second");
        assert!(slots.try_take().is_none());
        drop(a);
        assert_eq!(slots.in_use(), 1);
        assert!(slots.try_take().is_some());
    }
}
