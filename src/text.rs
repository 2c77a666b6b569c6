//! Text that crosses a boundary: into PostgreSQL (which stores no NUL character and only
//! valid UTF-8 in `text`), into a process environment (bounded by the kernel), and onto a
//! person's terminal (where control characters would move the cursor, rename the window
//! or hide lines).

use std::borrow::Cow;
use std::fmt::Write as _;

/// What replaced bytes that PostgreSQL cannot store.
pub const REPLACEMENT: char = char::REPLACEMENT_CHARACTER;

/// Bytes as text PostgreSQL can store: invalid UTF-8 and NUL characters become U+FFFD,
/// and when anything was replaced a last line says so, so that a reader of the result
/// knows it is not byte for byte what the program wrote.
pub fn storable_from_bytes(bytes: &[u8]) -> String {
    let lossy = String::from_utf8_lossy(bytes);
    let invalid = matches!(lossy, Cow::Owned(_));
    let nuls = lossy.bytes().filter(|b| *b == 0).count();
    let mut text = if nuls > 0 {
        lossy.replace('\0', "\u{FFFD}")
    } else {
        lossy.into_owned()
    };
    note_replacements(&mut text, nuls, invalid);
    text
}

/// Text as PostgreSQL can store it: NUL characters become U+FFFD, with a note when any
/// were replaced. Text without NUL is returned as it is.
pub fn storable(text: String) -> String {
    let nuls = text.bytes().filter(|b| *b == 0).count();
    if nuls == 0 {
        return text;
    }
    let mut out = text.replace('\0', "\u{FFFD}");
    note_replacements(&mut out, nuls, false);
    out
}

fn note_replacements(text: &mut String, nuls: usize, invalid_utf8: bool) {
    let what = match (nuls, invalid_utf8) {
        (0, false) => return,
        (0, true) => "bytes that are not UTF-8".to_string(),
        (n, false) => format!("{n} NUL byte(s)"),
        (n, true) => format!("{n} NUL byte(s) and bytes that are not UTF-8"),
    };
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    let _ = write!(
        text,
        "[jrq: {what} replaced with U+FFFD: PostgreSQL cannot store them]"
    );
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn truncate_bytes(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Text for a terminal: control characters (ESC, CR, BEL, backspace, C1 controls, ...)
/// are shown escaped (`\e`, `\r`, `\x07`, `\u{9b}`), so that a title cannot move the
/// cursor, rewrite a line or set the window title. Newlines and tabs stay when
/// `keep_newlines` is set (multi-line results), else they are escaped too.
pub fn for_terminal(s: &str, keep_newlines: bool) -> Cow<'_, str> {
    let bad = |c: char| {
        (c.is_control() && !(keep_newlines && (c == '\n' || c == '\t'))) || is_bidi_control(c)
    };
    if !s.chars().any(bad) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !bad(c) {
            out.push(c);
            continue;
        }
        match c {
            '\x1b' => out.push_str("\\e"),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
        }
    }
    Cow::Owned(out)
}

/// The Unicode controls that reorder text (right-to-left overrides and isolates): shown
/// raw, they make a terminal display a line other than the one printed.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// A time in the local zone (`TZ`, else the system's) with its zone: `UTC`, or the offset
/// (`+01:00`). `fmt` is chrono's format of the rest.
pub fn local_time(t: chrono::DateTime<chrono::Utc>, fmt: &str) -> String {
    let l = t.with_timezone(&chrono::Local);
    if l.offset().local_minus_utc() == 0 {
        format!("{} UTC", l.format(fmt))
    } else {
        format!("{} {}", l.format(fmt), l.format("%:z"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storable_text_has_no_nul_and_says_what_changed() {
        assert_eq!(storable_from_bytes(b"plain\n"), "plain\n");
        let t = storable_from_bytes(b"a\0b\n");
        assert_eq!(
            t,
            "a\u{FFFD}b\n[jrq: 1 NUL byte(s) replaced with U+FFFD: PostgreSQL cannot store them]"
        );
        let t = storable_from_bytes(b"x\xff\0");
        assert!(!t.contains('\0'));
        assert!(
            t.contains("1 NUL byte(s) and bytes that are not UTF-8"),
            "{t}"
        );
        assert_eq!(storable("fine".into()), "fine");
        assert!(!storable("a\0".into()).contains('\0'));
    }

    #[test]
    fn truncation_keeps_characters_whole() {
        assert_eq!(truncate_bytes("héllo", 2), "h");
        assert_eq!(truncate_bytes("héllo", 3), "hé");
        assert_eq!(truncate_bytes("abc", 10), "abc");
    }

    #[test]
    fn terminal_text_is_escaped() {
        assert_eq!(for_terminal("ok", false), "ok");
        assert_eq!(
            for_terminal("a\x1b]0;pwned\x07b\rc", false),
            "a\\e]0;pwned\\x07b\\rc"
        );
        assert_eq!(for_terminal("l1\nl2", true), "l1\nl2");
        assert_eq!(for_terminal("l1\nl2", false), "l1\\nl2");
        assert_eq!(for_terminal("\u{9b}2J", false), "\\u{9b}2J");
        assert_eq!(for_terminal("abc\u{202e}fed", true), "abc\\u{202e}fed");
    }
}
