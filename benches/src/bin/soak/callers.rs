//! Faults of the callers: every caller runs in its own task and is awaited normally, dropped
//! by a timeout, or stalled ([`Style`]); each is counted as started, then as finished, dropped
//! on purpose, or panicked, and joined with a time limit ([`join`]) that reports a hang.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::counters::{violation, Ctx, Layer, BOOKS};
use crate::loaders::DeliberatePanic;
use crate::rng::Rng;
use crate::HANG_AFTER;

#[derive(Clone, Copy, Debug)]
pub enum Style {
    Normal,
    /// Dropped if not done within this many microseconds.
    Timeout(u64),
    /// Polled once, then left alone for `ms`, then dropped or (if `resume`) awaited.
    Stall {
        ms: u64,
        resume: bool,
    },
}

pub fn style(rng: &mut Rng) -> Style {
    match rng.percent() {
        0..=69 => Style::Normal,
        70..=84 => Style::Timeout(rng.below(5000)),
        _ => Style::Stall {
            ms: 1 + rng.below(30),
            resume: rng.below(2) == 0,
        },
    }
}

/// Awaits `fut` in `style`; `None` if it was dropped on purpose.
async fn drive<F: Future>(style: Style, fut: F) -> Option<F::Output> {
    match style {
        Style::Normal => Some(fut.await),
        Style::Timeout(us) => tokio::time::timeout(Duration::from_micros(us), fut)
            .await
            .ok(),
        Style::Stall { ms, resume } => {
            let mut fut = pin!(fut);
            if let Poll::Ready(out) = poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await {
                return Some(out);
            }
            tokio::time::sleep(Duration::from_millis(ms)).await;
            if resume {
                Some(fut.await)
            } else {
                None
            }
        }
    }
}

enum CallerEnd {
    Pending,
    Finished,
    Dropped,
}

struct CallerGuard {
    layer: Layer,
    end: CallerEnd,
}

impl Drop for CallerGuard {
    fn drop(&mut self) {
        let counter = match self.end {
            CallerEnd::Finished => &BOOKS.finished,
            CallerEnd::Dropped => &BOOKS.dropped,
            CallerEnd::Pending if std::thread::panicking() => &BOOKS.panicked,
            CallerEnd::Pending => &BOOKS.aborted,
        };
        counter.add(self.layer, 1);
    }
}

/// One caller: `fut` awaited in `style`, counted as started, and then as finished, dropped on
/// purpose, or panicked.
pub async fn caller<F: Future>(layer: Layer, style: Style, fut: F) -> Option<F::Output> {
    BOOKS.started.add(layer, 1);
    let mut guard = CallerGuard {
        layer,
        end: CallerEnd::Pending,
    };
    let out = drive(style, fut).await;
    guard.end = if out.is_some() {
        CallerEnd::Finished
    } else {
        CallerEnd::Dropped
    };
    out
}

/// Joins a caller task: its output, or `None` if it panicked (on purpose; anything else is a
/// violation) or hung (reported, then aborted).
pub async fn join<R>(ctx: &Ctx, handle: JoinHandle<R>) -> Option<R> {
    let abort = handle.abort_handle();
    match tokio::time::timeout(HANG_AFTER, handle).await {
        Ok(Ok(out)) => Some(out),
        Ok(Err(e)) if e.is_panic() => {
            let payload = e.into_panic();
            if !payload.is::<DeliberatePanic>() {
                let text = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(non-string payload)".into());
                violation(ctx, format!("a caller panicked: {text}"));
            }
            None
        }
        Ok(Err(e)) => {
            violation(ctx, format!("a caller task was cancelled: {e}"));
            None
        }
        Err(_) => {
            BOOKS.hung.fetch_add(1, Relaxed);
            violation(
                ctx,
                format!("a caller did not finish within {HANG_AFTER:?}: hung (aborted)"),
            );
            abort.abort();
            None
        }
    }
}

/// A short pause: nothing, a yield, or a millisecond or two.
pub async fn pause(rng: &mut Rng) {
    match rng.percent() {
        0..=29 => {}
        30..=79 => tokio::task::yield_now().await,
        _ => tokio::time::sleep(Duration::from_millis(1 + rng.below(2))).await,
    }
}
