//! A cheap monotonic clock, for callers that read the time on every operation (expiry
//! checks on a cache hit) and can live with a few milliseconds of resolution.
//!
//! On Linux it reads `CLOCK_MONOTONIC_COARSE` through the vDSO: a few nanoseconds, against
//! tens for [`std::time::Instant::now`] on some virtual machines, with the resolution of
//! the kernel tick (1 to 4 ms). Elsewhere, and under miri, it falls back to `Instant`.

use core::time::Duration;

/// Time since an arbitrary fixed point (the same for the whole process), from a coarse
/// monotonic clock: it never goes backwards, and advances in steps of the kernel tick
/// (1 to 4 ms on Linux; [`std::time::Instant`]'s resolution elsewhere).
///
/// ```
/// let a = deferred_core::time::coarse_now();
/// let b = deferred_core::time::coarse_now();
/// assert!(b >= a);
/// ```
#[inline]
pub fn coarse_now() -> Duration {
    imp::now()
}

#[cfg(all(target_os = "linux", target_pointer_width = "64", not(miri)))]
mod imp {
    use core::time::Duration;

    /// `struct timespec` on 64-bit Linux: `time_t` and `long` are both 64 bits.
    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }

    /// `CLOCK_MONOTONIC` and `CLOCK_MONOTONIC_COARSE` in `<linux/time.h>`: two views of
    /// one clock (same origin), the coarse one cheaper.
    const CLOCK_MONOTONIC: i32 = 1;
    const CLOCK_MONOTONIC_COARSE: i32 = 6;

    extern "C" {
        fn clock_gettime(clock: i32, out: *mut Timespec) -> i32;
    }

    #[inline]
    pub(super) fn now() -> Duration {
        read(CLOCK_MONOTONIC_COARSE)
            .or_else(|| read(CLOCK_MONOTONIC))
            .unwrap_or_default()
    }

    #[inline]
    fn read(clock: i32) -> Option<Duration> {
        let mut ts = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `clock_gettime` (in the C library std links) writes one `timespec`
        // through a valid, exclusive pointer to a live local of that layout, and keeps no
        // reference to it.
        let rc = unsafe { clock_gettime(clock, &mut ts) };
        // Both clocks exist since Linux 2.6.32; `CLOCK_MONOTONIC` cannot fail there.
        (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }
}

#[cfg(not(all(target_os = "linux", target_pointer_width = "64", not(miri))))]
mod imp {
    #[inline]
    pub(super) fn now() -> core::time::Duration {
        super::fallback()
    }
}

/// `Instant` against a process-wide origin.
#[cfg(not(all(target_os = "linux", target_pointer_width = "64", not(miri))))]
fn fallback() -> Duration {
    use std::{sync::OnceLock, time::Instant};
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed()
}
