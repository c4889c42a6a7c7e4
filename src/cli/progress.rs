//! Progress of long commands, on stderr: a bar with the rate and the time left when stderr is
//! a terminal (indicatif), a plain line every few seconds when it is not (a log, a pipe), and
//! nothing with `--json` or `--quiet`. Results stay on stdout, unchanged.

use super::CliError;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often a plain progress line is written, in milliseconds (default 5000).
pub const INTERVAL_ENV: &str = "SHAREVAULT_PROGRESS_INTERVAL_MS";
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renderer {
    /// A bar redrawn in place (stderr is a terminal).
    Bar,
    /// A line now and then (stderr is a file or a pipe).
    Lines,
    /// Nothing (`--json` or `--quiet`).
    Off,
}

impl Renderer {
    /// Nothing when `silent`, a bar on a terminal, else plain lines.
    pub fn choose(silent: bool, stderr_is_terminal: bool) -> Self {
        match (silent, stderr_is_terminal) {
            (true, _) => Renderer::Off,
            (false, true) => Renderer::Bar,
            (false, false) => Renderer::Lines,
        }
    }
}

enum Shown {
    Bar(ProgressBar),
    Lines { every: Duration, last: Instant },
    Off,
}

/// The progress of one operation: `what` (`verify`) counts `unit` (`records`).
pub struct Progress {
    what: &'static str,
    unit: &'static str,
    start: Instant,
    shown: Shown,
}

impl Progress {
    /// Progress shown as [`Renderer::choose`] decides for this process's stderr.
    pub fn new(what: &'static str, unit: &'static str, silent: bool) -> Result<Self, CliError> {
        let start = Instant::now();
        let shown = match Renderer::choose(silent, std::io::stderr().is_terminal()) {
            Renderer::Off => Shown::Off,
            Renderer::Lines => Shown::Lines {
                every: interval()?,
                last: start,
            },
            Renderer::Bar => Shown::Bar(bar(what, unit)),
        };
        Ok(Self {
            what,
            unit,
            start,
            shown,
        })
    }

    /// Ends this progress and starts that of the next step, shown the same way.
    pub fn restart(&mut self, what: &'static str, unit: &'static str) {
        let start = Instant::now();
        match &mut self.shown {
            Shown::Off => {}
            Shown::Bar(old) => {
                old.finish_and_clear();
                *old = bar(what, unit);
            }
            Shown::Lines { last, .. } => *last = start,
        }
        (self.what, self.unit, self.start) = (what, unit, start);
    }

    /// `done` of `total` units are done (a `total` of 0: not known).
    pub fn set(&mut self, done: u64, total: u64) {
        match &mut self.shown {
            Shown::Off => {}
            Shown::Bar(bar) => {
                bar.set_length(total.max(done));
                bar.set_position(done);
            }
            Shown::Lines { every, last } => {
                let now = Instant::now();
                if now.duration_since(*last) >= *every {
                    *last = now;
                    let text = line(
                        self.what,
                        self.unit,
                        done,
                        total,
                        now.duration_since(self.start),
                    );
                    let _ = writeln!(std::io::stderr().lock(), "{text}");
                }
            }
        }
    }

    /// Removes the bar, if any, before the result is printed.
    pub fn finish(self) {
        if let Shown::Bar(bar) = self.shown {
            bar.finish_and_clear();
        }
    }
}

/// A bar on stderr: `what: [====>    ] 1.2M/12M unit (10 %), 51k/s, 4m left`.
fn bar(what: &'static str, unit: &str) -> ProgressBar {
    // The template is fixed (and tested); the default style is only a fallback.
    let style = ProgressStyle::with_template(&bar_template(unit))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr())
        .with_style(style)
        .with_prefix(what)
}

fn bar_template(unit: &str) -> String {
    format!(
        "{{prefix}}: [{{bar:20}}] {{human_pos}}/{{human_len}} {unit} \
         ({{percent}} %), {{per_sec}}, {{eta}} left"
    )
}

/// The plain line's interval, from [`INTERVAL_ENV`].
fn interval() -> Result<Duration, CliError> {
    match std::env::var(INTERVAL_ENV) {
        Err(std::env::VarError::NotPresent) => Ok(DEFAULT_INTERVAL),
        Ok(value) => value
            .trim()
            .parse()
            .map(Duration::from_millis)
            .map_err(|_| {
                CliError::Local(format!(
                    "{INTERVAL_ENV}: `{value}` is not a number of milliseconds"
                ))
            }),
        Err(_) => Err(CliError::Local(format!("{INTERVAL_ENV}: must be UTF-8"))),
    }
}

/// One plain progress line, e.g. `verify: 1,234,000 of 12,000,000 records (10 %), 51,000/s,
/// about 3 min left`. Without a total, only the count and the rate.
pub fn line(what: &str, unit: &str, done: u64, total: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
    let mut out = if total >= done && total > 0 {
        format!(
            "{what}: {} of {} {unit} ({} %)",
            grouped(done),
            grouped(total),
            done * 100 / total
        )
    } else {
        format!("{what}: {} {unit}", grouped(done))
    };
    if rate >= 1.0 {
        out.push_str(&format!(", {}/s", grouped(rate as u64)));
        if total > done {
            let left = ((total - done) as f64 / rate).ceil() as u64;
            out.push_str(&format!(", about {} left", human(left)));
        }
    }
    out
}

/// `1234567` as `1,234,567`.
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A time left, rounded up: `40 s`, `3 min`, `2 h 5 min`.
fn human(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min", secs.div_ceil(60)),
        _ => {
            let mins = secs.div_ceil(60);
            format!("{} h {} min", mins / 60, mins % 60)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_terminal_gets_the_bar_a_pipe_gets_lines_and_silence_gets_nothing() {
        assert_eq!(Renderer::choose(false, true), Renderer::Bar);
        assert_eq!(Renderer::choose(false, false), Renderer::Lines);
        assert_eq!(Renderer::choose(true, true), Renderer::Off);
        assert_eq!(Renderer::choose(true, false), Renderer::Off);
    }

    #[test]
    fn a_line_says_how_far_how_fast_and_how_long_is_left() {
        let line = line(
            "verify",
            "records",
            1_234_000,
            12_000_000,
            Duration::from_secs(24),
        );
        // 51,416/s; 10,766,000 left at that rate is 209.4 s: about 4 min.
        assert_eq!(
            line,
            "verify: 1,234,000 of 12,000,000 records (10 %), 51,416/s, about 4 min left"
        );
    }

    #[test]
    fn a_line_without_a_total_or_a_rate_says_what_it_knows() {
        assert_eq!(
            line("audit export", "events", 0, 500, Duration::ZERO),
            "audit export: 0 of 500 events (0 %)"
        );
        assert_eq!(
            line("snapshot", "records", 2_000, 0, Duration::from_secs(2)),
            "snapshot: 2,000 records, 1,000/s"
        );
        assert_eq!(
            line("verify", "records", 10, 10, Duration::from_secs(1)),
            "verify: 10 of 10 records (100 %), 10/s"
        );
    }

    #[test]
    fn the_bar_shows_the_count_the_rate_and_the_time_left() {
        let template = bar_template("records");
        assert!(
            ProgressStyle::with_template(&template).is_ok(),
            "{template}"
        );
        assert_eq!(
            template,
            "{prefix}: [{bar:20}] {human_pos}/{human_len} records ({percent} %), {per_sec}, \
             {eta} left"
        );
    }

    #[test]
    fn times_left_are_rounded_up_in_readable_units() {
        assert_eq!(human(40), "40 s");
        assert_eq!(human(61), "2 min");
        assert_eq!(human(3_600), "1 h 0 min");
        assert_eq!(human(7_500), "2 h 5 min");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1_000), "1,000");
        assert_eq!(grouped(12_000_000), "12,000,000");
    }
}
