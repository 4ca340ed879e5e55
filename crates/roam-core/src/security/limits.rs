//! Defences against floods: per-source token buckets (bounded in number), and stateless
//! cookies (as WireGuard's cookie reply or QUIC's Retry) that a host under load demands
//! before it spends a Diffie-Hellman on a handshake.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use hmac::{Hmac, Mac};
use rand_core::RngCore;
use sha2::Sha256;

use crate::time::Instant;

/// Token buckets, one per key, at most `max_keys` of them (the least recently used is
/// forgotten first: a forgotten source starts with a full bucket, which is as generous
/// as the limit itself).
pub struct RateLimiter<K: Ord + Copy> {
    per_second: f64,
    burst: f64,
    max_keys: usize,
    buckets: BTreeMap<K, (f64, Instant)>,
}

impl<K: Ord + Copy> RateLimiter<K> {
    pub fn new(per_second: f64, burst: f64, max_keys: usize) -> RateLimiter<K> {
        RateLimiter {
            per_second,
            burst,
            max_keys,
            buckets: BTreeMap::new(),
        }
    }

    /// Takes a token for `key` if it has one.
    pub fn allow(&mut self, key: K, now: Instant) -> bool {
        if !self.buckets.contains_key(&key) && self.buckets.len() >= self.max_keys {
            let oldest = self.buckets.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.buckets.remove(&k);
            }
        }
        let (tokens, last) = self.buckets.entry(key).or_insert((self.burst, now));
        *tokens = (*tokens + (now - *last).as_secs_f64() * self.per_second).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// How long a cookie secret lives; the previous one is still accepted.
const COOKIE_ROTATION: Duration = Duration::from_secs(120);

/// Stateless cookies: an HMAC-SHA-256 (truncated to 16 bytes) of the initiator's source
/// address and port and its session index, under a secret that rotates.
pub struct CookieJar {
    secret: [u8; 32],
    previous: Option<[u8; 32]>,
    rotated: Instant,
}

type HmacSha256 = Hmac<Sha256>;

impl CookieJar {
    pub fn new(rng: &mut dyn RngCore, now: Instant) -> CookieJar {
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        CookieJar {
            secret,
            previous: None,
            rotated: now,
        }
    }

    fn rotate(&mut self, rng: &mut dyn RngCore, now: Instant) {
        if now - self.rotated >= COOKIE_ROTATION {
            let mut s = [0u8; 32];
            rng.fill_bytes(&mut s);
            self.previous = Some(std::mem::replace(&mut self.secret, s));
            self.rotated = now;
        }
    }

    fn mac(secret: &[u8; 32], src: SocketAddr, index: u32) -> HmacSha256 {
        let mut m = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
        match src.ip() {
            std::net::IpAddr::V4(a) => m.update(&a.octets()),
            std::net::IpAddr::V6(a) => m.update(&a.octets()),
        }
        m.update(&src.port().to_be_bytes());
        m.update(&index.to_be_bytes());
        m
    }

    pub fn make(&mut self, rng: &mut dyn RngCore, now: Instant, src: SocketAddr, index: u32) -> [u8; 16] {
        self.rotate(rng, now);
        let full = Self::mac(&self.secret, src, index).finalize().into_bytes();
        full[..16].try_into().expect("16 of 32 bytes")
    }

    /// Constant-time check against the current and the previous secret.
    pub fn check(&self, src: SocketAddr, index: u32, cookie: &[u8; 16]) -> bool {
        std::iter::once(&self.secret)
            .chain(self.previous.as_ref())
            .any(|s| Self::mac(s, src, index).verify_truncated_left(cookie).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate_and_forgets_the_oldest_source() {
        let mut l = RateLimiter::new(10.0, 3.0, 2);
        let t0 = Instant::from_millis(0);
        assert!((0..3).all(|_| l.allow(1u32, t0)));
        assert!(!l.allow(1, t0), "burst spent");
        assert!(
            l.allow(1, t0 + Duration::from_millis(100)),
            "one token per 100 ms"
        );
        assert!(l.allow(2, t0) && l.allow(3, t0));
        assert_eq!(l.len(), 2, "bounded");
    }

    #[test]
    fn a_cookie_binds_address_port_and_index_and_survives_one_rotation() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let t0 = Instant::from_millis(0);
        let mut jar = CookieJar::new(&mut rng, t0);
        let src: SocketAddr = "10.0.0.1:4791".parse().unwrap();
        let c = jar.make(&mut rng, t0, src, 7);
        assert!(jar.check(src, 7, &c));
        assert!(!jar.check("10.0.0.2:4791".parse().unwrap(), 7, &c));
        assert!(!jar.check("10.0.0.1:4792".parse().unwrap(), 7, &c));
        assert!(!jar.check(src, 8, &c));
        jar.make(&mut rng, t0 + COOKIE_ROTATION, src, 1);
        assert!(jar.check(src, 7, &c), "the previous secret still counts");
        jar.make(&mut rng, t0 + COOKIE_ROTATION * 2, src, 1);
        assert!(!jar.check(src, 7, &c), "two rotations later it does not");
    }
}
