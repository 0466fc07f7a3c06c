//! Restart policy for the node daemon: exponential backoff, reset after a healthy run.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// A run at least this long resets the delay.
    pub healthy_after: Duration,
    next: Duration,
    pub restarts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(
            Duration::from_secs(1),
            Duration::from_secs(30),
            Duration::from_secs(60),
        )
    }
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration, healthy_after: Duration) -> Self {
        Backoff {
            initial,
            max,
            healthy_after,
            next: initial,
            restarts: 0,
        }
    }

    /// The daemon exited after running for `ran`: how long to wait before starting it again.
    pub fn on_exit(&mut self, ran: Duration) -> Duration {
        if ran >= self.healthy_after {
            self.next = self.initial;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        self.restarts += 1;
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_caps_and_resets() {
        let s = Duration::from_secs;
        let mut b = Backoff::new(s(1), s(8), s(60));
        let delays: Vec<_> = (0..5).map(|_| b.on_exit(s(1))).collect();
        assert_eq!(delays, vec![s(1), s(2), s(4), s(8), s(8)]);
        assert_eq!(b.on_exit(s(120)), s(1));
        assert_eq!(b.on_exit(s(0)), s(2));
        assert_eq!(b.restarts, 7);
    }
}
