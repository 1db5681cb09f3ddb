//! The progress bar and the log writer that keeps it intact.
//!
//! tracing writes to stderr, where the bar is drawn. Two writers on one terminal tear each
//! other's lines, so every log line goes through [`LogWriter`], which, while a bar is shown,
//! prints inside `ProgressBar::suspend` (the bar is cleared, the line printed, the bar redrawn).
//! No bar is created when stderr is not a terminal (CI, pipes, tests): logs stay plain lines.
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::sync::Mutex;

static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// `tracing_subscriber` writer: stderr, routed around the active bar.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = BAR.lock().ok().and_then(|b| b.clone());
        match bar {
            Some(b) => b.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Prints `text` and a newline to stderr in one `write(2)` (around the bar, if one is shown).
/// `eprintln!` writes each formatted piece separately, so the ranks of a data-parallel run,
/// which share one stderr pipe, could splice their messages together mid-line; a single
/// write of at most `PIPE_BUF` (4096) bytes is atomic on a pipe.
pub fn say_line(text: &str) {
    let mut line = String::with_capacity(text.len() + 1);
    line.push_str(text);
    line.push('\n');
    let _ = LogWriter.write_all(line.as_bytes());
}

/// `eprintln!` that writes the whole message at once: see [`say_line`].
macro_rules! say {
    ($($t:tt)*) => { $crate::progress::say_line(&format!($($t)*)) };
}
pub(crate) use say;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> Self::Writer {
        LogWriter
    }
}

/// A bar over `total` steps (epoch, step, loss, pairs/s, ETA), registered with [`LogWriter`];
/// hidden when stderr is not a terminal. Dropping the guard clears it.
pub struct Bar {
    bar: ProgressBar,
}

impl Bar {
    /// Starts a bar; `done` steps are already behind (resume).
    pub fn new(total: u64, done: u64) -> Self {
        let bar = if std::io::stderr().is_terminal() {
            ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_position(done);
        if let Ok(mut g) = BAR.lock() {
            *g = Some(bar.clone());
        }
        Self { bar }
    }
    /// Updates the position and the message.
    pub fn update(&self, pos: u64, prefix: String, msg: String) {
        self.bar.set_prefix(prefix);
        self.bar.set_message(msg);
        self.bar.set_position(pos);
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Ok(mut g) = BAR.lock() {
            *g = None;
        }
        self.bar.finish_and_clear();
    }
}
