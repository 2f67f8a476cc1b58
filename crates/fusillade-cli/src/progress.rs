//! Progress while a batch runs (a bar on a terminal, a plain line every few seconds otherwise)
//! and the summary at the end.

use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use fusillade::model::Batch;
use indicatif::{ProgressBar, ProgressStyle};

/// How often a terminal bar refreshes.
const BAR_INTERVAL: Duration = Duration::from_millis(200);
/// How often a plain progress line is printed when stderr is not a terminal.
const LINE_INTERVAL: Duration = Duration::from_secs(10);

/// Reports progress of one batch.
pub struct Progress {
    bar: Option<ProgressBar>,
    plain: bool,
    started: Instant,
    last_line: Instant,
    start_done: u64,
}

impl Progress {
    /// Starts reporting on `batch`; `quiet` reports nothing.
    pub fn new(batch: &Batch, quiet: bool) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let bar = (!quiet && terminal).then(|| {
            let bar = ProgressBar::new(batch.counts.total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:40.cyan/blue} {pos}/{len} {msg} [{elapsed_precise}, eta {eta}]",
                )
                .expect("valid template"),
            );
            bar.set_position(batch.counts.finished());
            bar
        });
        Self {
            bar,
            plain: !quiet && !terminal,
            started: Instant::now(),
            last_line: Instant::now(),
            start_done: batch.counts.finished(),
        }
    }

    /// How long to wait between updates.
    pub fn interval(&self) -> Duration {
        BAR_INTERVAL
    }

    /// Shows the batch's current counts.
    pub fn update(&mut self, batch: &Batch) {
        let c = &batch.counts;
        let rate = (c.finished().saturating_sub(self.start_done)) as f64
            / self.started.elapsed().as_secs_f64().max(0.001);
        if let Some(bar) = &self.bar {
            bar.set_position(c.finished());
            bar.set_message(format!(
                "{} ok, {} failed, {} running, {rate:.0}/s",
                c.completed, c.failed, c.running
            ));
        } else if self.plain && self.last_line.elapsed() >= LINE_INTERVAL {
            self.last_line = Instant::now();
            eprintln!(
                "progress: {}/{} finished ({} completed, {} failed, {} running), {rate:.0} requests/s",
                c.finished(),
                c.total,
                c.completed,
                c.failed,
                c.running
            );
        }
    }

    /// Prints a message without breaking the bar.
    pub fn note(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.println(message),
            None => eprintln!("{message}"),
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Prints what happened and where the results are.
pub fn summary(
    batch: &Batch,
    elapsed: Duration,
    done_before: u64,
    output: &Path,
    outputs: u64,
    errors_path: &Path,
    errors: u64,
) {
    let c = &batch.counts;
    let now_done = c.finished().saturating_sub(done_before);
    let rate = now_done as f64 / elapsed.as_secs_f64().max(0.001);
    eprintln!(
        "{}: {} requests, {} completed, {} failed, {} expired, {} cancelled, {} not finished \
         ({now_done} finished in {:.1}s, {rate:.0} requests/s)",
        batch.status.as_str(),
        c.total,
        c.completed,
        c.failed,
        c.expired,
        c.cancelled,
        c.pending + c.running,
        elapsed.as_secs_f64()
    );
    eprintln!("Output: {} ({outputs} lines)", output.display());
    eprintln!("Errors: {} ({errors} lines)", errors_path.display());
}
