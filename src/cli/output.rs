//! Output of the CLI's reading commands: `-o table|wide|json|yaml`, and progress shown on long
//! work (indicatif) only when a person watches stderr.

use std::io::IsTerminal;
use std::time::Duration;

use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How a command prints what it found.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq, Default)]
pub enum Format {
    /// calicoctl's tables.
    #[default]
    Table,
    /// The tables with more columns.
    Wide,
    /// JSON (for scripts; the fields are documented with each command).
    Json,
    /// YAML, the same fields as JSON.
    Yaml,
}

impl Format {
    pub fn is_table(self) -> bool {
        matches!(self, Format::Table | Format::Wide)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("encoding output: {0}")]
pub struct EncodeError(String);

/// `v` as JSON or YAML; `None` for the table formats (the caller renders those).
pub fn encode<T: serde::Serialize>(v: &T, f: Format) -> Result<Option<String>, EncodeError> {
    match f {
        Format::Json => serde_json::to_string_pretty(v)
            .map(|s| Some(s + "\n"))
            .map_err(|e| EncodeError(e.to_string())),
        Format::Yaml => serde_saphyr::to_string(v)
            .map(Some)
            .map_err(|e| EncodeError(e.to_string())),
        Format::Table | Format::Wide => Ok(None),
    }
}

/// Whether progress is drawn: stderr is a terminal, and not a dumb one.
/// Never in pipes, files, CI logs or tests.
pub fn progress_wanted() -> bool {
    std::io::stderr().is_terminal() && std::env::var("TERM").map_or(true, |t| t != "dumb")
}

fn target() -> ProgressDrawTarget {
    if progress_wanted() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    }
}

/// A spinner for work of unknown length (a LIST of many objects); hidden off a terminal.
pub fn spinner(msg: impl Into<String>) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(None, target());
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.set_message(msg.into());
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// A bar counting `len` steps; hidden off a terminal.
pub fn bar(len: u64, msg: impl Into<String>) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(len), target());
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({eta} left)")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(msg.into());
    pb
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_rendered_by_the_caller_and_data_is_encoded() {
        #[derive(serde::Serialize)]
        struct V {
            a: u32,
        }
        assert_eq!(encode(&V { a: 1 }, Format::Table).unwrap(), None);
        assert_eq!(encode(&V { a: 1 }, Format::Wide).unwrap(), None);
        assert_eq!(
            encode(&V { a: 1 }, Format::Json).unwrap().unwrap(),
            "{\n  \"a\": 1\n}\n"
        );
        assert_eq!(encode(&V { a: 1 }, Format::Yaml).unwrap().unwrap(), "a: 1\n");
    }
}
