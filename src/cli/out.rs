//! Everything `lmx` writes to a person or a pipe goes through here, so that:
//!
//! - a closed pipe never panics (`println!` does): a reader that went away (`lmx ls | head -1`)
//!   ends the command quietly with status 0, the way `yes | head -1` ends without a message;
//!   stderr errors are ignored (there is nobody left to tell);
//! - text that came from the network (keys, lock ids, client names, peers) is shown with its
//!   control characters escaped, so a client named `"\u{1b}[2J\u{1b}]52;c;...\u{7}"` cannot
//!   clear the operator's screen or write their clipboard (OSC 52);
//! - colour follows `--color` and `NO_COLOR` (<https://no-color.org>).

use std::borrow::Cow;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU8, Ordering};

/// Writes to stdout; a closed pipe ends the process with status 0.
macro_rules! say {
    ($($t:tt)*) => { $crate::cli::out::stdout(format_args!($($t)*), true) };
}

/// [`say!`] without the newline.
macro_rules! say_raw {
    ($($t:tt)*) => { $crate::cli::out::stdout(format_args!($($t)*), false) };
}

/// Writes a line to stderr, ignoring failure.
macro_rules! tell {
    ($($t:tt)*) => { $crate::cli::out::stderr(format_args!($($t)*)) };
}

pub(crate) use {say, say_raw, tell};

pub(crate) fn stdout(args: std::fmt::Arguments<'_>, newline: bool) {
    let mut o = std::io::stdout().lock();
    let r = o
        .write_fmt(args)
        .and_then(|()| if newline { o.write_all(b"\n") } else { Ok(()) })
        .and_then(|()| o.flush());
    if let Err(e) = r {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            // The reader has all it wanted.
            std::process::exit(0);
        }
        let _ = writeln!(std::io::stderr(), "lmx: writing to stdout: {e}");
        std::process::exit(super::EXIT_FAIL);
    }
}

pub(crate) fn stderr(args: std::fmt::Arguments<'_>) {
    let mut e = std::io::stderr().lock();
    let _ = e.write_fmt(args).and_then(|()| e.write_all(b"\n"));
}

/// `s` with every control or invisible formatting character (C0, DEL, C1, bidi overrides,
/// zero-width marks) written as a Rust-style escape (`\u{1b}`, `\n`); printable text,
/// including non-ASCII letters, is left alone.
pub(crate) fn safe(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut o = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if needs_escape(c) {
            o.extend(c.escape_default());
        } else {
            o.push(c);
        }
    }
    Cow::Owned(o)
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200b}'..='\u{200f}' // zero-width space/joiners, LRM, RLM
            | '\u{2028}'..='\u{202e}' // line/paragraph separators, bidi embeddings/overrides
            | '\u{2060}'..='\u{2069}' // word joiner, invisible operators, bidi isolates
            | '\u{feff}')
}

/// `--color` as given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ColorChoice {
    /// Colour when writing to a terminal and `NO_COLOR` is unset or empty
    Auto,
    Always,
    Never,
}

static COLOR: AtomicU8 = AtomicU8::new(0);

/// Records `--color` for [`color_on`].
pub(crate) fn set_color(c: ColorChoice) {
    COLOR.store(c as u8, Ordering::Relaxed);
}

/// Whether to colour output going to `stream`: `--color always|never` decide; with `auto`, a
/// non-empty `NO_COLOR` turns colour off, else a terminal turns it on.
pub(crate) fn color_on(stream: &impl IsTerminal) -> bool {
    let choice = match COLOR.load(Ordering::Relaxed) {
        x if x == ColorChoice::Always as u8 => ColorChoice::Always,
        x if x == ColorChoice::Never as u8 => ColorChoice::Never,
        _ => ColorChoice::Auto,
    };
    decide(choice, std::env::var_os("NO_COLOR"), || {
        stream.is_terminal()
    })
}

/// The rule of [`color_on`], without the environment.
fn decide(
    choice: ColorChoice,
    no_color: Option<std::ffi::OsString>,
    tty: impl FnOnce() -> bool,
) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => no_color.is_none_or(|v| v.is_empty()) && tty(),
    }
}

/// `text` in bold when colour is on for stdout.
pub(crate) fn bold(text: &str) -> Cow<'_, str> {
    if color_on(&std::io::stdout()) {
        Cow::Owned(format!("\x1b[1m{text}\x1b[0m"))
    } else {
        Cow::Borrowed(text)
    }
}

#[cfg(test)]
mod tests {
    use super::{ColorChoice, decide, safe};

    #[test]
    fn no_color_and_the_flag() {
        let set = || Some("1".into());
        assert!(decide(ColorChoice::Auto, None, || true));
        assert!(!decide(ColorChoice::Auto, None, || false), "not a terminal");
        assert!(!decide(ColorChoice::Auto, set(), || true), "NO_COLOR=1");
        assert!(
            decide(ColorChoice::Auto, Some("".into()), || true),
            "NO_COLOR empty"
        );
        assert!(decide(ColorChoice::Always, set(), || false));
        assert!(!decide(ColorChoice::Never, None, || true));
    }

    #[test]
    fn escapes_control_and_invisible_characters_only() {
        assert_eq!(safe("plain-key/ü"), "plain-key/ü");
        assert_eq!(
            safe("\u{1b}[2J\u{1b}]52;c;aGk=\u{7}"),
            "\\u{1b}[2J\\u{1b}]52;c;aGk=\\u{7}"
        );
        assert_eq!(safe("a\nb\u{202e}c"), "a\\nb\\u{202e}c");
        assert_eq!(safe("\u{9b}31m"), "\\u{9b}31m");
    }
}
