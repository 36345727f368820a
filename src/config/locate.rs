//! Maps a key path such as `pools.web.servers[1].addr` back to its line in the TOML source, so that
//! every configuration error can say where to look. Walks as deep as the path exists and reports the
//! deepest line found (a missing key points at its parent table).

use toml::de::{DeTable, DeValue};

/// 1-based line of the deepest existing element of `path`, if any element exists.
pub(crate) fn line_of(src: &str, root: &DeTable<'_>, path: &str) -> Option<usize> {
    let mut offset = None;
    let mut current: Option<&DeValue<'_>> = None;
    for seg in segments(path) {
        let next = match (seg, current) {
            (Seg::Key(key), None) => find_key(root, key),
            (Seg::Key(key), Some(DeValue::Table(table))) => find_key(table, key),
            (Seg::Index(i), Some(DeValue::Array(array))) => {
                array.get(i).map(|v| (v.span().start, v.get_ref()))
            }
            _ => None,
        };
        match next {
            Some((start, value)) => {
                offset = Some(start);
                current = Some(value);
            }
            None => break,
        }
    }
    offset.map(|at| line_at(src, at))
}

/// The key path (`a.b[0].c`) of the deepest value whose span contains byte `offset`: names the key
/// of a type error, which toml reports only by position.
pub(crate) fn path_at(root: &DeTable<'_>, offset: usize) -> Option<String> {
    // Depth-first over everything: implicit tables (`pools` of a `[pools.web]` header) have spans
    // that do not cover their children, so a parent's span cannot prune the search.
    fn search(value: &DeValue<'_>, offset: usize, path: &mut String) -> bool {
        match value {
            DeValue::Table(table) => table.iter().any(|(k, v)| visit(k.get_ref(), v, offset, path, false)),
            DeValue::Array(array) => {
                array.iter().enumerate().any(|(i, v)| visit(&format!("[{i}]"), v, offset, path, true))
            }
            _ => false,
        }
    }
    fn visit(
        segment: &str,
        value: &toml::Spanned<DeValue<'_>>,
        offset: usize,
        path: &mut String,
        index: bool,
    ) -> bool {
        let len = path.len();
        if !path.is_empty() && !index {
            path.push('.');
        }
        path.push_str(segment);
        let leaf_hit = !matches!(value.get_ref(), DeValue::Table(_) | DeValue::Array(_))
            && value.span().contains(&offset);
        if leaf_hit || search(value.get_ref(), offset, path) {
            return true;
        }
        path.truncate(len);
        false
    }
    let mut path = String::new();
    root.iter().any(|(k, v)| visit(k.get_ref(), v, offset, &mut path, false)).then_some(path)
}

/// 1-based line containing byte `offset`.
pub(crate) fn line_at(src: &str, offset: usize) -> usize {
    let end = offset.min(src.len());
    src.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

fn find_key<'a, 'i>(table: &'a DeTable<'i>, key: &str) -> Option<(usize, &'a DeValue<'i>)> {
    table.iter().find(|(k, _)| k.get_ref().as_ref() == key).map(|(k, v)| (k.span().start, v.get_ref()))
}

#[derive(Debug, PartialEq)]
enum Seg<'p> {
    Key(&'p str),
    Index(usize),
}

/// Splits `a.b[2].c` into `Key(a) Key(b) Index(2) Key(c)`.
fn segments(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, rest) = part.split_once('[').unwrap_or((part, ""));
        if !key.is_empty() {
            out.push(Seg::Key(key));
        }
        for index in rest.split('[') {
            if let Ok(i) = index.trim_end_matches(']').parse() {
                out.push(Seg::Index(i));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_paths() {
        assert_eq!(
            segments("pools.web.servers[1].addr"),
            vec![Seg::Key("pools"), Seg::Key("web"), Seg::Key("servers"), Seg::Index(1), Seg::Key("addr")]
        );
    }

    #[test]
    fn finds_lines_of_nested_keys() {
        let src = "[pools.web]\nstrategy = \"x\"\n\n[[pools.web.servers]]\naddr = \"a\"\n\n[[pools.web.servers]]\naddr = \"b\"\n";
        let table = DeTable::parse(src).unwrap();
        let root = table.get_ref();
        assert_eq!(line_of(src, root, "pools.web.strategy"), Some(2));
        assert_eq!(line_of(src, root, "pools.web.servers[1].addr"), Some(8));
        // A missing key points at the deepest element that exists.
        assert_eq!(line_of(src, root, "pools.web.servers[1].weight"), Some(7));
        assert_eq!(line_of(src, root, "nothing.here"), None);
    }

    #[test]
    fn finds_the_path_of_an_offset() {
        let src = "[pools.web]\nservers = [{ addr = \"a\" }, { addr = \"b\", weight = \"5\" }]\n";
        let table = DeTable::parse(src).unwrap();
        let at = src.find("\"5\"").unwrap();
        assert_eq!(path_at(table.get_ref(), at).as_deref(), Some("pools.web.servers[1].weight"));
    }
}
