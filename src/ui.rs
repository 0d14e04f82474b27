//! Progress on stderr: an indicatif bar on a terminal, plain periodic log lines otherwise (or
//! nothing with `--quiet`). stdout stays for `--json`.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct Ui {
    fancy: bool,
    quiet: bool,
}

const LOG_EVERY: Duration = Duration::from_secs(10);

impl Ui {
    /// Bars on a terminal, unless `quiet` or the command prints `--json`; periodic log lines
    /// otherwise, unless `quiet`.
    pub fn new(quiet: bool, json: bool) -> Ui {
        Ui {
            fancy: !quiet && !json && std::io::stderr().is_terminal(),
            quiet,
        }
    }

    /// A step without a count of its own (the database's stage statement, the diff and commit
    /// after a read): a spinner with the time it has taken, on a terminal.
    pub fn step(&self, what: &str) -> StepSpinner {
        let bar = self.fancy.then(|| {
            let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("template"),
            );
            b.set_message(what.to_string());
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        StepSpinner { bar }
    }

    pub fn silent() -> Ui {
        Ui {
            fancy: false,
            quiet: true,
        }
    }

    pub fn reading(&self, what: &str) -> Reading {
        let bar = self.fancy.then(|| {
            let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} reading {msg}: {human_pos} rows ({per_sec}) {elapsed}",
                )
                .expect("template"),
            );
            b.set_message(what.to_string());
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        Reading {
            bar,
            quiet: self.quiet,
            what: what.to_string(),
            start: Instant::now(),
            last_log: Instant::now(),
        }
    }

    /// `rate`: the configured pace, in updates per second; the ETA assumes it (one event an
    /// update at worst), not the pace seen so far, which a burst of retries would distort.
    /// With no events pending (profile updates alone), progress counts requests, and the ETA
    /// is the pace seen so far.
    pub fn shipping(&self, pending: crate::state::Pending, rate: f64) -> Shipping {
        let by_requests = pending.events == 0;
        let total = if by_requests {
            pending.requests
        } else {
            pending.events
        };
        let unit = if by_requests { "requests" } else { "events" };
        let bar = self.fancy.then(|| {
            let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template(&format!(
                    "{{bar:30}} {{human_pos}}/{{human_len}} {unit} sent ({{per_sec}}) {{msg}}"
                ))
                .expect("template"),
            );
            b
        });
        Shipping {
            bar,
            quiet: self.quiet,
            by_requests,
            total,
            rate,
            start: Instant::now(),
            last_log: Instant::now(),
        }
    }
}

/// The time left for `remaining` events at `rate` per second, for people: `2m 05s`.
pub fn eta_at(remaining: u64, rate: f64) -> String {
    if rate <= 0.0 || !rate.is_finite() {
        return "?".into();
    }
    let secs = (remaining as f64 / rate).ceil() as u64;
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {:02}s", s / 60, s % 60),
        s => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

pub struct StepSpinner {
    bar: Option<ProgressBar>,
}

impl StepSpinner {
    pub fn done(self) {
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}

pub struct Reading {
    bar: Option<ProgressBar>,
    quiet: bool,
    what: String,
    start: Instant,
    last_log: Instant,
}

impl Reading {
    pub fn rows(&mut self, rows: u64) {
        if let Some(b) = &self.bar {
            b.set_position(rows);
        } else if !self.quiet && self.last_log.elapsed() >= LOG_EVERY {
            self.last_log = Instant::now();
            let rate = rows as f64 / self.start.elapsed().as_secs_f64().max(1e-3);
            tracing::info!(source = %self.what, rows, rows_per_s = rate as u64, "reading");
        }
    }

    pub fn done(self) {
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}

pub struct Shipping {
    bar: Option<ProgressBar>,
    quiet: bool,
    /// Progress counts requests (no events pending: profile updates alone).
    by_requests: bool,
    total: u64,
    rate: f64,
    start: Instant,
    last_log: Instant,
}

impl crate::ship::Progress for Shipping {
    fn shipped(&mut self, events: u64, requests: u64) {
        let done = if self.by_requests { requests } else { events };
        let secs = self.start.elapsed().as_secs_f64().max(1e-3);
        let seen = done as f64 / secs;
        let left = self.total.saturating_sub(done);
        if let Some(b) = &self.bar {
            b.set_position(done);
            b.set_message(if self.by_requests {
                format!("ETA {} at the pace so far", eta_at(left, seen))
            } else {
                format!(
                    "{requests} requests, ETA {} at {}/s",
                    eta_at(left, self.rate),
                    self.rate
                )
            });
        } else if !self.quiet && self.last_log.elapsed() >= LOG_EVERY {
            self.last_log = Instant::now();
            let eta = if seen > 0.0 {
                left as f64 / seen
            } else {
                f64::NAN
            };
            if self.by_requests {
                tracing::info!(
                    requests,
                    total = self.total,
                    requests_per_s = seen as u64,
                    eta_s = eta as u64,
                    "shipping (profile updates alone: counted in requests)"
                );
            } else {
                tracing::info!(
                    events,
                    total = self.total,
                    requests,
                    events_per_s = seen as u64,
                    eta_s = eta as u64,
                    "shipping"
                );
            }
        }
    }
}

impl Shipping {
    pub fn done(self) {
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}

/// Values as a sparkline, one bar per value, scaled to the largest (all bars low when every
/// value is zero): how `status` shows the last runs at a glance.
pub fn sparkline(values: &[u64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = values.iter().copied().max().unwrap_or(0);
    values
        .iter()
        .map(|&v| {
            if max == 0 || v == 0 {
                BARS[0]
            } else {
                // 1..=7 for any value above zero, so a small one still shows.
                BARS[1 + ((v as u128 * 6) / max as u128) as usize]
            }
        })
        .collect()
}

/// A count and its noun, singular for exactly one: "1 request", "3 requests", "0 retries".
pub fn counted(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Whether stdout is a terminal (sparklines and tables meant for people).
pub fn stdout_is_terminal() -> bool {
    std::io::stdout().is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eta_is_the_time_left_at_the_configured_rate() {
        assert_eq!(eta_at(0, 300.0), "0s");
        assert_eq!(eta_at(3000, 300.0), "10s");
        assert_eq!(eta_at(37_500, 300.0), "2m 05s");
        assert_eq!(eta_at(3_600_000, 300.0), "3h 20m");
        assert_eq!(eta_at(10, 0.0), "?");
    }

    #[test]
    fn a_sparkline_scales_to_its_largest_value_and_shows_any_nonzero() {
        assert_eq!(sparkline(&[]), "");
        assert_eq!(sparkline(&[0, 0]), "▁▁");
        assert_eq!(sparkline(&[0, 1, 1000, 500]), "▁▂█▅");
        assert_eq!(sparkline(&[7]), "█");
    }

    #[test]
    fn a_count_of_one_takes_the_singular() {
        assert_eq!(counted(1, "request", "requests"), "1 request");
        assert_eq!(counted(0, "request", "requests"), "0 requests");
        assert_eq!(counted(2, "retry", "retries"), "2 retries");
    }
}
