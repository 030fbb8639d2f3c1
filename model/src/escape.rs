//! Names made safe for where they are shown. Names come from span data — anyone who can send a
//! span can choose them — so a terminal must never receive their control characters (an `ESC[2J`
//! clears the screen, OSC 52 writes the clipboard, a newline fakes a table row), and Mermaid and DOT
//! must never read them as syntax.
//!
//! [`terminal`] escapes what `ls` and `kubectl` escape: C0 and C1 controls and DEL as `\xNN`, and
//! the Unicode bidirectional and invisible formatting characters (which reorder or hide text, the
//! "Trojan Source" trick) as `\u{NNNN}`. A backslash is doubled only where an escape follows it, so
//! common names read as before. [`dot`] and [`mermaid`] apply it and then each format's quoting.
//! [`prometheus_label`] quotes a label value for the Prometheus text format (the agent's and the
//! collector's `/metrics`).

use std::borrow::Cow;

fn formatting(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

fn needs(c: char) -> bool {
    c.is_control() || formatting(c)
}

/// `s` with every control and formatting character escaped; borrowed when there is none.
pub fn terminal(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_control() && (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if needs(c) => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
            '\\' if chars.peek().is_some_and(|&n| needs(n)) => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A DOT quoted string (`"…"`) holding `s`, escaped for the terminal first.
pub fn dot(s: &str) -> String {
    format!("\"{}\"", terminal(s).replace('\\', "\\\\").replace('"', "\\\""))
}

/// Text for inside a Mermaid `"…"` label: escaped for the terminal, then every character that
/// Mermaid reads as syntax (`"`, `%` — which starts `%%` directives and comments —, `#`, `<`, `>`,
/// `` ` ``, `|`, brackets and braces) as its `#NNN;` entity.
pub fn mermaid(s: &str) -> String {
    let safe = terminal(s);
    let mut out = String::with_capacity(safe.len());
    for c in safe.chars() {
        match c {
            '"' | '%' | '#' | '<' | '>' | '`' | '|' | '[' | ']' | '{' | '}' | '(' | ')' | ';' => {
                out.push_str(&format!("#{};", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

/// A Prometheus label value's escapes (backslash, double quote, newline), for the text and
/// OpenMetrics exposition formats.
pub fn prometheus_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_escapes_controls_and_keeps_ordinary_names() {
        assert!(matches!(terminal("shop/reviews/v2"), Cow::Borrowed(_)));
        assert_eq!(terminal("a\u{1b}[2Jb"), "a\\x1b[2Jb");
        assert_eq!(terminal("x\ny"), "x\\x0ay");
        assert_eq!(terminal("\u{1b}]52;c;aGk=\u{7}"), "\\x1b]52;c;aGk=\\x07");
        assert_eq!(terminal("\u{9b}31m"), "\\x9b31m", "C1 CSI");
        assert_eq!(terminal("admin\u{202e}gpj.exe"), "admin\\u{202e}gpj.exe");
        assert_eq!(terminal("caf\u{e9} \u{1F512}"), "caf\u{e9} \u{1F512}", "printable Unicode stays");
        assert_eq!(terminal("a\\\u{1b}"), "a\\\\\\x1b", "a backslash before an escape is doubled");
        assert_eq!(terminal("a\\b"), "a\\b");
    }

    #[test]
    fn dot_and_mermaid_survive_every_character() {
        assert_eq!(dot("a\"b\\c\nd"), "\"a\\\"b\\\\c\\\\x0ad\"");
        let m = mermaid("x\"]\n%%{init: {'theme':'dark'}}%%");
        assert!(!m.contains('"') && !m.contains('\n') && !m.contains("%%") && !m.contains('{'), "{m}");
        assert_eq!(mermaid("reviews"), "reviews");
    }
}
