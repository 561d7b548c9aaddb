//! The terminal progress bar (indicatif, on stderr) that foreground jobs report to.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::jobs::ProgressSink;

pub struct TerminalProgress {
    bar: ProgressBar,
}

impl TerminalProgress {
    pub fn bytes(label: &str) -> TerminalProgress {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {bytes}/{total_bytes} {msg}")
                .expect("valid progress template")
                .progress_chars("=> "),
        );
        bar.set_prefix(label.to_string());
        TerminalProgress { bar }
    }

    /// A bar over items (traces, steps) rather than bytes.
    pub fn count(label: &str) -> TerminalProgress {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({per_sec})")
                .expect("valid progress template")
                .progress_chars("=> "),
        );
        bar.set_prefix(label.to_string());
        TerminalProgress { bar }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// A bar that goes out of scope (a pipeline stage ends, an error returns early) is cleared.
impl Drop for TerminalProgress {
    fn drop(&mut self) {
        self.finish();
    }
}

impl ProgressSink for TerminalProgress {
    fn progress(&self, done: u64, total: Option<u64>, message: &str) {
        if let Some(total) = total {
            self.bar.set_length(total);
        }
        self.bar.set_position(done);
        self.bar.set_message(message.to_string());
    }
}
