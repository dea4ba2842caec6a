//! Text that workers choose (names, devices, errors, artifact names, metric names) made safe for
//! each place it is written: a Markdown table cell or line of `report.md` (no line breaks, no
//! Markdown or HTML markup, no link targets), a link target (percent-encoded), a CSV cell (no
//! formula: a leading `=`, `+`, `-`, `@`, tab or carriage return gets a `'`), and a terminal
//! line (no control or escape sequences). Invisible characters that reorder or hide text (bidi
//! controls, zero-width characters) are shown as `<U+XXXX>` everywhere.

/// Whether `c` reorders or hides text when displayed: bidirectional controls (U+061C, U+200E,
/// U+200F, U+202A–U+202E, U+2066–U+2069), zero-width and invisible characters (U+00AD,
/// U+180E, U+200B–U+200D, U+2060–U+2064, U+FEFF).
pub fn is_invisible(c: char) -> bool {
    matches!(c, '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// `c` as the visible `<U+XXXX>`.
fn code_point(c: char) -> String {
    format!("<U+{:04X}>", c as u32)
}

/// Worker text as plain Markdown inline text: line breaks become spaces, other control and
/// invisible characters `<U+XXXX>`, `<`, `>` and `&` HTML entities, and the punctuation that
/// Markdown reads as markup within a line (emphasis, code spans, links and images, table
/// pipes) is backslash-escaped, so the text renders as itself.
pub fn md_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' | '\r' | '\t' => out.push(' '),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\\' | '`' | '*' | '_' | '[' | ']' | '!' | '#' | '|' | '~' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() || is_invisible(c) => out.push_str(&code_point(c)),
            c => out.push(c),
        }
    }
    out
}

/// A relative path as a Markdown link target: every byte but unreserved characters and `/`
/// percent-encoded (no `)`, space, `<` or scheme can end or redirect the link).
pub fn link_target(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A CSV cell that a spreadsheet will not run as a formula: one starting with `=`, `+`, `-`,
/// `@`, a tab or a carriage return is prefixed with `'` (OWASP's advice); control and
/// invisible characters become `<U+XXXX>`.
pub fn csv_cell(s: &str) -> String {
    let shown = terminal(s);
    if shown.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{shown}") } else { shown }
}

/// Text for a terminal line: control characters (escape sequences included) and invisible
/// characters become `<U+XXXX>`.
pub fn terminal(s: &str) -> String {
    if !s.chars().any(|c| c.is_control() || is_invisible(c)) {
        return s.to_string();
    }
    s.chars().map(|c| if c.is_control() || is_invisible(c) { code_point(c) } else { c.to_string() }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_text_cannot_start_a_section_a_link_or_html() {
        let evil = "cpu\n\n## Claims\n\n| fake | pass |<script>alert(1)</script>[x](javascript:alert(1)) `code` \u{202E}gnp.exe";
        let shown = md_text(evil);
        assert!(!shown.contains('\n') && !shown.contains("<script") && !shown.contains("[x](") && !shown.contains("\u{202E}"), "{shown}");
        assert!(shown.contains("\\#\\# Claims") && shown.contains("&lt;script&gt;") && shown.contains("\\[x\\](javascript:alert(1))") && shown.contains("<U+202E>"), "{shown}");
        // Plain words stay as they are.
        assert_eq!(md_text("cuda:0 (NVIDIA H100 80GB HBM3, 79.2 GiB)"), "cuda:0 (NVIDIA H100 80GB HBM3, 79.2 GiB)");
    }

    #[test]
    fn link_targets_csv_cells_and_terminal_lines() {
        assert_eq!(link_target("artifacts/ab/model v2).png"), "artifacts/ab/model%20v2%29.png");
        assert_eq!(link_target("javascript:x"), "javascript%3Ax");
        for (cell, want) in [("=1+1", "'=1+1"), ("+1", "'+1"), ("-2", "'-2"), ("@SUM(A1)", "'@SUM(A1)"), ("cpu", "cpu"), ("a=b", "a=b")] {
            assert_eq!(csv_cell(cell), want, "{cell}");
        }
        assert_eq!(terminal("w\u{1b}[2J\u{1b}]0;pwned\u{7}"), "w<U+001B>[2J<U+001B>]0;pwned<U+0007>");
        assert_eq!(terminal("a\u{200B}b"), "a<U+200B>b");
        assert!(is_invisible('\u{2067}') && !is_invisible('é'));
    }
}
