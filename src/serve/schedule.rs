//! When `serve` runs next, and whether it is alive: pure functions of the interval and of
//! instants passed in (no clock read here).
//!
//! Invariants:
//! - The first run is due at start; each next one an interval after the one before was due,
//!   so runs keep to a fixed grid whatever each takes.
//! - Runs never overlap: a run still going when the next was due delays it to the moment it
//!   ends (the next runs at once), and the grid starts again from there; missed ticks are not
//!   made up with a burst of runs.
//! - Liveness ([`health`]) fails only when no run is in progress and the next is overdue by
//!   more than three intervals: a run in progress, however long, is alive, and so is a
//!   scheduler whose runs fail (a Batch outage must not get the process restarted).

use std::time::{Duration, Instant};

/// How many intervals a run may be overdue, with none in progress, before `/healthz` fails.
pub const OVERDUE_INTERVALS: u32 = 3;

/// Parses `--every`: a duration as the config writes them, more than zero.
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let d = crate::config::parse_duration(text).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err(format!(
            "{text:?} is no interval: runs need time between them; write it like \"15m\""
        ));
    }
    Ok(d)
}

/// The next run's due time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    interval: Duration,
    next: Instant,
}

impl Schedule {
    /// A schedule whose first run is due at `start`.
    pub fn new(interval: Duration, start: Instant) -> Schedule {
        Schedule {
            interval,
            next: start,
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// When the next run is due.
    pub fn next(&self) -> Instant {
        self.next
    }

    /// Moves on past the run that was due at [`Schedule::next`] and ended at `ended`.
    pub fn ran(&mut self, ended: Instant) {
        self.next = (self.next + self.interval).max(ended);
    }
}

/// What `/healthz` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Alive,
    /// No run in progress, and the next one was due this long ago.
    Overdue(Duration),
}

/// Liveness at `now`, with a run in progress or not, the next run due at `next`.
pub fn health(now: Instant, running: bool, next: Instant, interval: Duration) -> Health {
    let late = now.saturating_duration_since(next);
    if running || late <= interval.saturating_mul(OVERDUE_INTERVALS) {
        Health::Alive
    } else {
        Health::Overdue(late)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn runs_keep_to_the_grid_and_a_long_run_delays_the_next_without_a_burst() {
        let t0 = Instant::now();
        let at = |mins: f64| t0 + Duration::from_secs_f64(mins * 60.0);
        let mut s = Schedule::new(15 * MIN, t0);
        assert_eq!(s.next(), t0, "the first run is due at start");
        s.ran(at(2.0));
        assert_eq!(s.next(), at(15.0), "a short run: the next is on the grid");
        s.ran(at(15.5));
        assert_eq!(s.next(), at(30.0));
        // The run due at 30 takes 50 minutes: the runs due at 45 and 60 are not made up.
        s.ran(at(80.0));
        assert_eq!(
            s.next(),
            at(80.0),
            "the delayed run starts when the long one ends"
        );
        s.ran(at(81.0));
        assert_eq!(
            s.next(),
            at(95.0),
            "the grid starts again from the delayed run"
        );
    }

    #[rstest]
    #[case::on_time(0, false, true)]
    #[case::late_but_within_three_intervals(45, false, true)]
    #[case::just_over_three_intervals(46, false, false)]
    #[case::a_long_run_in_progress(600, true, true)]
    fn healthz_fails_only_when_no_run_is_in_progress_and_the_next_is_overdue_by_three_intervals(
        #[case] late_minutes: u32,
        #[case] running: bool,
        #[case] alive: bool,
    ) {
        let next = Instant::now();
        let now = next + late_minutes * MIN;
        let h = health(now, running, next, 15 * MIN);
        assert_eq!(h == Health::Alive, alive, "{h:?}");
    }

    #[test]
    fn a_run_not_yet_due_is_alive() {
        let now = Instant::now();
        assert_eq!(health(now, false, now + MIN, MIN), Health::Alive);
    }

    #[rstest]
    #[case("15m", Some(900))]
    #[case("1s", Some(1))]
    #[case("90", Some(90))]
    #[case("0s", None)]
    #[case("0", None)]
    #[case("often", None)]
    fn every_takes_a_config_duration_above_zero(#[case] text: &str, #[case] secs: Option<u64>) {
        assert_eq!(
            parse_interval(text).ok(),
            secs.map(Duration::from_secs),
            "{text}"
        );
    }
}
