//! The one escaper for everything a person reads: every string the text
//! output, `cleartap tail --format text` and warnings on stderr show comes
//! from untrusted processes or peers (a process name, an HTTP header, a
//! shell line), and a terminal obeys the control sequences in it (set the
//! title, write the clipboard with OSC 52, move the cursor, rewrite the
//! line with `\r`). What could act on the terminal, or hide or reorder
//! what is shown, is written visibly instead:
//!
//! - `\\` for a backslash, so that nothing else reads as an escape;
//! - `\n`, `\t`, `\r` for those characters (`\n` and `\t` only in a
//!   single-line field: a block of text keeps its lines and tabs);
//! - `\xNN` for a byte: the other C0 controls, DEL, and each byte that is
//!   not part of valid UTF-8 (`\x1b`, `\x7f`, `\xff`);
//! - `\u{NN}` for a character: the C1 controls U+0080-U+009F encoded as
//!   UTF-8 (`\u{9b}`, a CSI to some terminals) and the bidirectional
//!   formatting characters (U+061C, U+200E, U+200F, U+202A-U+202E,
//!   U+2066-U+2069), which reorder what follows them on screen;
//! - `\"` for a double quote, only in `Layout::Quoted` (exec's argv).
//!
//! `\xNN` always stands for one byte, `\u{..}` for one character, so a lone
//! 0x9b byte (`\x9b`) and the character U+009B (`\u{9b}`) read differently.
//! Everything else, printable ASCII and printable Unicode, is shown as it is.
//!
//! Hand-written (short) because no crate does exactly this: `str::escape_debug`
//! and `bstr`'s `Debug` always escape newlines and print `\u{1b}` rather than a
//! byte, `std::ascii::escape_default` escapes all non-ASCII text, and
//! `strip-ansi-escapes` deletes sequences (hiding that they were there)
//! instead of showing them.

use std::borrow::Cow;
use std::fmt;
use std::io;

/// Where the escaped text goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One field on a line: newlines and tabs are escaped too.
    Line,
    /// Lines of text (a payload, a shell command, a statement): newlines
    /// and tabs are kept.
    Block,
    /// A field the output puts in double quotes: as `Line`, and `"` too.
    Quoted,
}

/// A single-line field (a process name, a path, a header, a host name).
pub fn line(text: &str) -> Cow<'_, str> {
    escape(text.as_bytes(), Layout::Line)
}

/// Lines of text: newlines and tabs kept, everything else as `line`.
pub fn block(text: &str) -> Cow<'_, str> {
    escape(text.as_bytes(), Layout::Block)
}

/// For code printing a warning or error on stderr that names something a
/// process or a peer controls (a path, a process name, a host). A message
/// of several lines (an error chain quoting a file) takes `block`.
pub fn for_terminal(text: &str) -> Cow<'_, str> {
    line(text)
}

/// `eprintln!` that never panics: cleartap's stderr can go away under it
/// (`cleartap tls ... 2>&1 | head` closes the pipe), and `eprintln!` then
/// panics in whichever thread speaks next, a drain or discovery thread
/// included. A line that cannot be written is dropped; the capture goes on,
/// or stops through its output, as it would have anyway.
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `note!` for a message that quotes host-controlled text (a path, a
/// name, an error from a library or a server): the whole line is escaped.
#[macro_export]
macro_rules! eprintln_escaped {
    ($($arg:tt)*) => {
        $crate::note!("{}", $crate::output::escape::for_terminal(&format!($($arg)*)))
    };
}

/// `bytes` (not necessarily UTF-8) as text, escaped for `layout`. Borrows
/// when nothing needs escaping.
pub fn escape(bytes: &[u8], layout: Layout) -> Cow<'_, str> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        if !text.chars().any(|c| escaped_char(c, layout)) {
            return Cow::Borrowed(text);
        }
    }
    let mut out = String::with_capacity(bytes.len() + 16);
    write_fmt(&mut out, bytes, layout).expect("writing to a String");
    Cow::Owned(out)
}

/// `bytes` in double quotes, escaped (`Layout::Quoted`).
pub fn quoted(bytes: &[u8]) -> String {
    format!("\"{}\"", escape(bytes, Layout::Quoted))
}

/// `bytes` escaped for `layout` onto `out`, without building a copy (for
/// payloads, which may be megabytes).
pub fn write(out: &mut impl io::Write, bytes: &[u8], layout: Layout) -> io::Result<()> {
    struct Adapter<'a, W: io::Write> {
        out: &'a mut W,
        error: Option<io::Error>,
    }
    impl<W: io::Write> fmt::Write for Adapter<'_, W> {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            self.out.write_all(s.as_bytes()).map_err(|e| {
                self.error = Some(e);
                fmt::Error
            })
        }
    }
    let mut adapter = Adapter { out, error: None };
    match write_fmt(&mut adapter, bytes, layout) {
        Ok(()) => Ok(()),
        Err(_) => Err(adapter.error.unwrap_or_else(|| io::Error::other("formatting failed"))),
    }
}

fn write_fmt(out: &mut impl fmt::Write, bytes: &[u8], layout: Layout) -> fmt::Result {
    for chunk in bytes.utf8_chunks() {
        let valid = chunk.valid();
        let mut start = 0;
        for (i, c) in valid.char_indices() {
            if !escaped_char(c, layout) {
                continue;
            }
            out.write_str(&valid[start..i])?;
            start = i + c.len_utf8();
            match c {
                '\\' => out.write_str("\\\\")?,
                '"' => out.write_str("\\\"")?,
                '\n' => out.write_str("\\n")?,
                '\t' => out.write_str("\\t")?,
                '\r' => out.write_str("\\r")?,
                '\0'..='\x7f' => write!(out, "\\x{:02x}", c as u32)?,
                _ => write!(out, "\\u{{{:x}}}", c as u32)?,
            }
        }
        out.write_str(&valid[start..])?;
        for b in chunk.invalid() {
            write!(out, "\\x{b:02x}")?;
        }
    }
    Ok(())
}

/// Whether `c` is shown escaped in `layout`.
fn escaped_char(c: char, layout: Layout) -> bool {
    match c {
        ' '..='~' => c == '\\' || (c == '"' && layout == Layout::Quoted),
        '\n' | '\t' => layout != Layout::Block,
        '\0'..='\x1f' | '\x7f' | '\u{80}'..='\u{9f}' => true,
        '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both(bytes: &[u8], layout: Layout) -> String {
        let cow = escape(bytes, layout).into_owned();
        let mut streamed = Vec::new();
        write(&mut streamed, bytes, layout).unwrap();
        assert_eq!(String::from_utf8(streamed).unwrap(), cow, "write and escape agree");
        cow
    }

    #[test]
    fn clean_text_is_borrowed() {
        for text in ["", "curl", "GET /index.html?q=1 HTTP/1.1", "naïve — 日本語 ✓", "a\u{fffd}b"] {
            assert!(matches!(line(text), Cow::Borrowed(t) if t == text), "{text}");
        }
        assert!(matches!(block("for i in 1 2; do\n\techo $i\ndone"), Cow::Borrowed(_)));
    }

    #[test]
    fn c0_controls_del_and_cr() {
        assert_eq!(line("\x1b]0;x\x07"), "\\x1b]0;x\\x07");
        assert_eq!(line("\x00\x01\x08\x0b\x0c\x1f\x7f"), "\\x00\\x01\\x08\\x0b\\x0c\\x1f\\x7f");
        assert_eq!(line("over\rwrite"), "over\\rwrite");
        assert_eq!(block("over\rwrite\r\n"), "over\\rwrite\\r\n");
        assert_eq!(line("\x1b[2J\x1b[H"), "\\x1b[2J\\x1b[H");
    }

    #[test]
    fn newlines_and_tabs_by_layout() {
        assert_eq!(line("a\nb\tc"), "a\\nb\\tc");
        assert_eq!(block("a\nb\tc"), "a\nb\tc");
        assert_eq!(both(b"a\nb\tc", Layout::Quoted), "a\\nb\\tc");
    }

    #[test]
    fn c1_controls_as_characters_and_bytes() {
        // U+009B (CSI) and U+0085 (NEL) encoded as UTF-8.
        assert_eq!(line("\u{9b}31m\u{85}"), "\\u{9b}31m\\u{85}");
        assert_eq!(both("\u{80}\u{9f}\u{a0}".as_bytes(), Layout::Line), "\\u{80}\\u{9f}\u{a0}");
        // A lone 0x9b byte is not UTF-8: a byte.
        assert_eq!(both(b"\x9b31m", Layout::Line), "\\x9b31m");
    }

    #[test]
    fn invalid_utf8_as_bytes_valid_text_kept() {
        assert_eq!(both(b"bin\xffary", Layout::Line), "bin\\xffary");
        assert_eq!(both(b"\xc3\xa9\xc3", Layout::Block), "é\\xc3");
        assert_eq!(both(b"\xe2\x82", Layout::Line), "\\xe2\\x82");
        assert_eq!(both(b"\xed\xa0\x80", Layout::Line), "\\xed\\xa0\\x80"); // a surrogate
    }

    #[test]
    fn backslash_and_quotes() {
        assert_eq!(line("C:\\x1b"), "C:\\\\x1b");
        assert_eq!(line("say \"hi\""), "say \"hi\"");
        assert_eq!(quoted(b"-l \"x\" \\"), "\"-l \\\"x\\\" \\\\\"");
    }

    #[test]
    fn bidi_controls() {
        assert_eq!(line("invoice\u{202e}fdp.exe"), "invoice\\u{202e}fdp.exe");
        assert_eq!(line("\u{2066}a\u{2069}\u{200f}\u{61c}"), "\\u{2066}a\\u{2069}\\u{200f}\\u{61c}");
    }

    #[test]
    fn output_never_holds_a_control_character() {
        let all: Vec<u8> = (0..=255u8).collect();
        let mut utf8 = String::new();
        for c in (0..0x800u32).filter_map(char::from_u32) {
            utf8.push(c);
        }
        for layout in [Layout::Line, Layout::Block, Layout::Quoted] {
            for input in [&all[..], utf8.as_bytes()] {
                let out = both(input, layout);
                for c in out.chars() {
                    let kept_layout = layout == Layout::Block && (c == '\n' || c == '\t');
                    assert!(kept_layout || !(c.is_control()), "{layout:?}: {c:?} in {out:?}");
                }
            }
        }
    }

    #[test]
    fn for_terminal_is_single_line() {
        assert_eq!(for_terminal("/tmp/\x1b]52;c;aGk=\x07\nlib.so"), "/tmp/\\x1b]52;c;aGk=\\x07\\nlib.so");
    }
}
