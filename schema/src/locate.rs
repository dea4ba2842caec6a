//! Line and column of a byte offset or of a dotted key in TOML source, so that every error
//! about a file names the place to fix.

use toml::de::{DeTable, DeValue};

/// 1-based line and column of a byte offset.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let before = &src[..offset.min(src.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map(|i| before[i + 1..].chars().count() + 1).unwrap_or(before.chars().count() + 1);
    (line, col)
}

/// 1-based (line, column) of a dotted key (segments may end in `[i]`) in TOML source: the key
/// itself, or the deepest enclosing key that exists. None if the source does not parse or no
/// segment is found.
pub fn locate(src: &str, dotted_key: &str) -> Option<(usize, usize)> {
    let segments: Vec<&str> = dotted_key.split('.').filter(|s| !s.is_empty()).collect();
    locate_path(src, &segments)
}

/// As [`locate`], with the key path given as literal segments (a segment may itself contain
/// dots, as the quoted keys of a sweep's `[grid]` do).
pub fn locate_path(src: &str, segments: &[&str]) -> Option<(usize, usize)> {
    let doc = DeTable::parse(src).ok()?;
    let mut table = doc.get_ref();
    let mut found: Option<usize> = None;
    for &seg in segments {
        let (name, index) = match seg.find('[') {
            Some(i) => (&seg[..i], seg[i + 1..].trim_end_matches(']').parse::<usize>().ok()),
            None => (seg, None),
        };
        let Some((k, v)) = table.iter().find(|(k, _)| k.get_ref().as_ref() == name) else { break };
        found = Some(k.span().start);
        let mut value = v;
        if let (Some(i), DeValue::Array(arr)) = (index, value.get_ref()) {
            let items: &[toml::Spanned<DeValue>] = std::borrow::Borrow::borrow(arr);
            if let Some(item) = items.get(i) {
                found = Some(item.span().start);
                value = item;
            }
        }
        match value.get_ref() {
            DeValue::Table(t) => table = t,
            _ => break,
        }
    }
    found.map(|o| line_col(src, o))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_finds_nested_and_indexed_keys() {
        let src = "a = 1\n[b]\nc = { d = [1, 2, 3] }\n";
        assert_eq!(locate(src, "b.c.d"), Some((3, 7)));
        assert_eq!(locate(src, "b.c.d[2]"), Some((3, 18)));
        assert_eq!(locate(src, "b.zzz"), Some((2, 2)));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }
}
