//! Fault injection: what to do with the next API request.
//!
//! - Scripted steps come first, in FIFO order, one per API request that passed routing and
//!   authentication; random faults apply only when the script is empty.
//! - Random faults draw one number per request from a seeded `StdRng`, so a given seed and a
//!   given request order always give the same faults. The draw is split into consecutive
//!   shares: drop before, error, throttle, drop after, then normal processing. Shares that add
//!   up to more than 1 are cut in that order.
//! - Injected errors alternate 500 and 503, starting with 500.
//! - Pure apart from the generator it owns: no clock, no I/O.
//! - The content-based faults (`reject_custom_ids`, `bad_request_custom_ids`) are kept here
//!   with the others but applied by `api`, which sees the operations.

use std::collections::VecDeque;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Faults, Scripted};

/// What the server does with one API request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Process normally; answer after this extra delay.
    Process { delay: Duration },
    /// Answer this status without processing.
    Answer {
        status: u16,
        retry_after: Option<u64>,
    },
    /// Close the connection without processing or answering.
    DropBefore,
    /// Process and record, then close the connection without answering.
    DropAfter,
}

impl From<Scripted> for Action {
    fn from(step: Scripted) -> Self {
        match step {
            Scripted::Ok => Action::Process {
                delay: Duration::ZERO,
            },
            Scripted::Status {
                status,
                retry_after,
            } => Action::Answer {
                status,
                retry_after,
            },
            Scripted::DropBefore => Action::DropBefore,
            Scripted::DropAfter => Action::DropAfter,
            Scripted::Delay { ms } => Action::Process {
                delay: Duration::from_millis(ms),
            },
        }
    }
}

#[derive(Debug)]
pub(crate) struct FaultState {
    faults: Faults,
    script: VecDeque<Scripted>,
    rng: StdRng,
    next_error_is_503: bool,
}

impl FaultState {
    pub(crate) fn new(faults: Faults, seed: u64) -> Self {
        FaultState {
            faults,
            script: VecDeque::new(),
            rng: StdRng::seed_from_u64(seed),
            next_error_is_503: false,
        }
    }

    pub(crate) fn faults(&self) -> &Faults {
        &self.faults
    }

    pub(crate) fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
    }

    pub(crate) fn script(&mut self, steps: impl IntoIterator<Item = Scripted>) {
        self.script.extend(steps);
    }

    /// The latency added before every API answer.
    pub(crate) fn latency(&self) -> Duration {
        Duration::from_millis(self.faults.latency_ms)
    }

    /// Decides the fate of the next API request.
    pub(crate) fn decide(&mut self) -> Action {
        if let Some(step) = self.script.pop_front() {
            return step.into();
        }
        let draw: f64 = self.rng.gen();
        let f = &self.faults;
        let mut threshold = 0.0;
        let mut falls_in = |share: f64| {
            threshold += share.max(0.0);
            draw < threshold
        };
        if falls_in(f.drop_before_rate) {
            Action::DropBefore
        } else if falls_in(f.error_rate) {
            let status = if self.next_error_is_503 { 503 } else { 500 };
            self.next_error_is_503 = !self.next_error_is_503;
            Action::Answer {
                status,
                retry_after: None,
            }
        } else if falls_in(f.throttle_rate) {
            Action::Answer {
                status: 429,
                retry_after: f.retry_after,
            }
        } else if falls_in(f.drop_after_rate) {
            Action::DropAfter
        } else {
            Action::Process {
                delay: Duration::ZERO,
            }
        }
    }
}

impl Faults {
    /// Checks that every rate is a share between 0 and 1.
    pub(crate) fn check(&self) -> Result<(), String> {
        let rates = [
            ("error_rate", self.error_rate),
            ("throttle_rate", self.throttle_rate),
            ("drop_before_rate", self.drop_before_rate),
            ("drop_after_rate", self.drop_after_rate),
        ];
        for (name, rate) in rates {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be between 0 and 1, got {rate}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    fn counts(state: &mut FaultState, n: usize) -> [usize; 5] {
        let mut c = [0; 5];
        for _ in 0..n {
            let slot = match state.decide() {
                Action::DropBefore => 0,
                Action::Answer { status: 429, .. } => 2,
                Action::Answer { .. } => 1,
                Action::DropAfter => 3,
                Action::Process { .. } => 4,
            };
            c[slot] += 1;
        }
        c
    }

    #[test]
    fn no_faults_means_every_request_is_processed() {
        let mut state = FaultState::new(Faults::default(), 7);
        assert_eq!(counts(&mut state, 1_000), [0, 0, 0, 0, 1_000]);
    }

    #[test]
    fn scripted_steps_come_first_in_order_then_random_faults() {
        let faults = Faults {
            error_rate: 1.0,
            ..Faults::default()
        };
        let mut state = FaultState::new(faults, 7);
        state.script([
            Scripted::Delay { ms: 5 },
            Scripted::DropAfter,
            Scripted::Status {
                status: 429,
                retry_after: Some(2),
            },
        ]);
        assert_eq!(
            state.decide(),
            Action::Process {
                delay: Duration::from_millis(5)
            }
        );
        assert_eq!(state.decide(), Action::DropAfter);
        assert_eq!(
            state.decide(),
            Action::Answer {
                status: 429,
                retry_after: Some(2)
            }
        );
        assert_eq!(
            state.decide(),
            Action::Answer {
                status: 500,
                retry_after: None
            }
        );
        assert_eq!(
            state.decide(),
            Action::Answer {
                status: 503,
                retry_after: None
            }
        );
    }

    #[rstest]
    #[case::drop_before(Faults { drop_before_rate: 0.2, ..Faults::default() }, 0)]
    #[case::errors(Faults { error_rate: 0.2, ..Faults::default() }, 1)]
    #[case::throttles(Faults { throttle_rate: 0.2, ..Faults::default() }, 2)]
    #[case::drop_after(Faults { drop_after_rate: 0.2, ..Faults::default() }, 3)]
    fn a_rate_gives_about_that_share_of_requests(#[case] faults: Faults, #[case] slot: usize) {
        let mut state = FaultState::new(faults, 42);
        let c = counts(&mut state, 10_000);
        assert!((1_800..=2_200).contains(&c[slot]), "{c:?}");
        assert_eq!(c[slot] + c[4], 10_000, "{c:?}");
    }

    #[test]
    fn the_same_seed_gives_the_same_faults() {
        let faults = Faults {
            error_rate: 0.3,
            drop_after_rate: 0.3,
            ..Faults::default()
        };
        let run = |seed| {
            let mut state = FaultState::new(faults.clone(), seed);
            (0..200).map(|_| state.decide()).collect::<Vec<_>>()
        };
        assert_eq!(run(9), run(9));
        assert_ne!(run(9), run(10));
    }

    #[test]
    fn injected_throttles_carry_the_configured_retry_after() {
        let faults = Faults {
            throttle_rate: 1.0,
            retry_after: Some(3),
            ..Faults::default()
        };
        let mut state = FaultState::new(faults, 1);
        assert_eq!(
            state.decide(),
            Action::Answer {
                status: 429,
                retry_after: Some(3)
            }
        );
    }

    #[rstest]
    #[case::negative(-0.1)]
    #[case::above_one(1.5)]
    #[case::nan(f64::NAN)]
    fn a_rate_outside_zero_to_one_is_refused(#[case] rate: f64) {
        let faults = Faults {
            throttle_rate: rate,
            ..Faults::default()
        };
        assert!(faults.check().unwrap_err().contains("throttle_rate"));
    }
}
