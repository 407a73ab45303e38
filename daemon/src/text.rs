//! Peer text is data: what an upstream or a local client says reaches logs and `reason`s
//! only through [`escape`], so it can neither forge log lines nor drive a terminal.

/// Longest peer text kept in a reason or a log field, in characters.
pub const MAX_PEER_TEXT: usize = 200;

/// `text` with control characters (newlines and ANSI escapes included) written as `\n`,
/// `\r`, `\t` or `\u{..}`, backslashes doubled, and cut after `max_chars` characters (with
/// `…` to say so). Printable text, non-ASCII included, passes unchanged.
pub fn escape(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars * 2));
    for (n, c) in text.chars().enumerate() {
        if n == max_chars {
            out.push('…');
            break;
        }
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || is_invisible_format(c) => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

/// [`escape`] for bytes that may not be UTF-8: invalid sequences become U+FFFD first.
pub fn escape_bytes(bytes: &[u8], max_chars: usize) -> String {
    escape(&String::from_utf8_lossy(bytes), max_chars)
}

/// Unicode format characters that reorder or hide text (bidi overrides, zero-width joiners).
fn is_invisible_format(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_cannot_forge_lines_or_drive_a_terminal() {
        let forged = "bad token\n2026-01-01T00:00:00Z ERROR wsmuxd: forged\x1b[31mred\u{202e}";
        let e = escape(forged, MAX_PEER_TEXT);
        assert!(!e.chars().any(|c| c.is_control()), "{e}");
        assert_eq!(
            e,
            "bad token\\n2026-01-01T00:00:00Z ERROR wsmuxd: forged\\u{1b}[31mred\\u{202e}"
        );
    }

    #[test]
    fn printable_text_passes_and_long_text_is_cut() {
        assert_eq!(
            escape("Stale Connection — ok ü", 100),
            "Stale Connection — ok ü"
        );
        assert_eq!(escape("a\\b", 100), "a\\\\b");
        assert_eq!(escape("abcdef", 3), "abc…");
        assert_eq!(escape_bytes(b"ok\xff\n", 10), "ok\u{fffd}\\n");
    }
}
