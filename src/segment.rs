//! One escaping of election names into a single path segment, shared by the stores whose keys
//! are paths (Consul KV keys, Cloud Storage object names).

use crate::error::{Error, Result};

/// `name` as one path segment, injectively: ASCII letters, digits, `-`, `_`, `.`, `~` and
/// non-ASCII characters stand for themselves; every other byte — `/`, `%`, spaces, controls —
/// becomes `%XX`, and so does a leading `.` (no segment is `.`, `..` or `.lock`). An empty
/// name is [`Error::InvalidName`] for `store`.
pub(crate) fn escape_segment(store: &'static str, name: &str) -> Result<String> {
    if name.is_empty() {
        return Err(Error::InvalidName {
            store,
            name: String::new(),
            reason: "the name is empty".to_owned(),
        });
    }
    let mut out = String::with_capacity(name.len());
    for (i, c) in name.char_indices() {
        let plain = (c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '~' | '.'))
            && !(i == 0 && c == '.');
        if plain || !c.is_ascii() {
            out.push(c);
        } else {
            let mut buf = [0; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    Ok(out)
}
