//! Rate-limited logging for paths a guest can trigger.
//!
//! A guest that hammers an unhandled MSR or port must not be able to flood the host's logs
//! or slow the VMM down by logging: each call site may log [`BURST`] messages per
//! [`WINDOW`], and says how many it suppressed when it logs again.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Messages a call site may log per window.
pub const BURST: u32 = 10;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(5);

/// Per-call-site state; one `static` of this per macro invocation.
#[derive(Debug)]
pub struct RateLimiter {
    state: Mutex<Option<(Instant, u32, u64)>>,
}

impl RateLimiter {
    /// A limiter that has not logged yet.
    pub const fn new() -> Self {
        RateLimiter {
            state: Mutex::new(None),
        }
    }

    /// Returns `Some(suppressed)` when the caller may log now, with the number of messages
    /// dropped since it last could.
    pub fn admit(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (start, count, suppressed) = state.get_or_insert((now, 0, 0));
        if now.duration_since(*start) >= WINDOW {
            *start = now;
            *count = 0;
        }
        if *count < BURST {
            *count += 1;
            Some(std::mem::take(suppressed))
        } else {
            *suppressed += 1;
            None
        }
    }
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

/// A `log` macro limited per call site; use it (through the named wrappers) for anything a
/// guest can trigger.
macro_rules! log_ratelimited {
    ($level:expr, $($arg:tt)*) => {{
        static LIMITER: $crate::ratelimit::RateLimiter = $crate::ratelimit::RateLimiter::new();
        if let Some(suppressed) = LIMITER.admit(std::time::Instant::now()) {
            if suppressed > 0 {
                log::log!($level, "({suppressed} similar messages suppressed)");
            }
            log::log!($level, $($arg)*);
        }
    }};
}
pub(crate) use log_ratelimited;

/// `log::warn!` limited per call site.
macro_rules! warn_ratelimited {
    ($($arg:tt)*) => { $crate::ratelimit::log_ratelimited!(log::Level::Warn, $($arg)*) };
}

/// `log::error!` limited per call site (a guest crash report, for example).
macro_rules! error_ratelimited {
    ($($arg:tt)*) => { $crate::ratelimit::log_ratelimited!(log::Level::Error, $($arg)*) };
}
pub(crate) use error_ratelimited;
pub(crate) use warn_ratelimited;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_a_burst_then_counts_suppressed() {
        let limiter = RateLimiter::new();
        let t0 = Instant::now();
        for _ in 0..BURST {
            assert_eq!(limiter.admit(t0), Some(0));
        }
        assert_eq!(limiter.admit(t0), None);
        assert_eq!(limiter.admit(t0), None);
        assert_eq!(limiter.admit(t0 + WINDOW), Some(2));
    }
}
