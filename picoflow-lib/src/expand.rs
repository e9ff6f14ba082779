//! `${VAR}` expansion of workflow values (API reference, "Variable Expansion").
//!
//! `${NAME}` is replaced by the variable's value (a name may have dotted parts, as the
//! values of a run have: `${tasks.dump.outputs.size}`), an undefined variable by the empty string,
//! and `$$` by a single `$`. A `$` followed by anything else is kept as it is. Expansion is
//! applied to values handed to programs directly (arguments, environment values, HTTP
//! headers); a command line run by `/bin/sh -c` is never expanded by PicoFlow — the shell
//! expands it from the task's environment, so a value cannot inject shell syntax
//! (`DECISIONS.md` 3).

use std::collections::HashMap;

/// Where `${VAR}` values come from: fixed values first, then (optionally) the process
/// environment.
#[derive(Debug, Clone, Default)]
pub struct Vars {
    fixed: HashMap<String, String>,
    no_env: bool,
}

impl Vars {
    /// Values from the process environment.
    pub fn from_env() -> Self {
        Vars::default()
    }

    /// Only the values set with [`Vars::set`]; the environment is not consulted.
    pub fn isolated() -> Self {
        Vars {
            fixed: HashMap::new(),
            no_env: true,
        }
    }

    /// Sets a value that takes precedence over the environment.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.fixed.insert(name.into(), value.into());
        self
    }

    /// Looks a variable up.
    pub fn get(&self, name: &str) -> Option<String> {
        if let Some(v) = self.fixed.get(name) {
            return Some(v.clone());
        }
        if self.no_env || crate::config::PRIVATE_VARS.contains(&name) {
            None
        } else {
            std::env::var(name).ok()
        }
    }

    /// [`Vars::expand`], also giving where each inserted value lies in the result.
    #[cfg(feature = "http")]
    pub(crate) fn expand_marked(&self, text: &str) -> (String, Vec<std::ops::Range<usize>>) {
        expand_marked(text, |n| self.get(n))
    }

    /// Expands `${VAR}` and `$$` in `text`.
    pub fn expand(&self, text: &str) -> String {
        expand_with(text, |n| self.get(n))
    }

    /// The names referenced as `${VAR}` in `text` (for passing them to a remote shell).
    pub fn referenced(text: &str) -> Vec<String> {
        let mut names = Vec::new();
        expand_with(text, |n| {
            if !names.iter().any(|x: &String| x == n) {
                names.push(n.to_string());
            }
            None
        });
        names
    }
}

/// Expands `${VAR}` using `lookup`, `$$` to `$`.
pub fn expand_with(text: &str, lookup: impl FnMut(&str) -> Option<String>) -> String {
    expand_marked(text, lookup).0
}

/// [`expand_with`], also giving where in the result each inserted value lies (byte ranges,
/// in order), for showing the text with the values masked.
pub(crate) fn expand_marked(
    text: &str,
    mut lookup: impl FnMut(&str) -> Option<String>,
) -> (String, Vec<std::ops::Range<usize>>) {
    let mut spans = Vec::new();
    if !text.contains('$') {
        return (text.to_string(), spans);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            match body.find('}') {
                Some(end) if is_var_name(&body[..end]) => {
                    if let Some(v) = lookup(&body[..end]).filter(|v| !v.is_empty()) {
                        spans.push(out.len()..out.len() + v.len());
                        out.push_str(&v);
                    }
                    rest = &body[end + 1..];
                }
                _ => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    (out, spans)
}

/// Whether `s` can be named in `${…}`: a variable name (`[A-Za-z_][A-Za-z0-9_]*`), or one
/// followed by dot-separated parts of `[A-Za-z0-9_-]` (`tasks.dump.outputs.size`).
pub(crate) fn is_var_name(s: &str) -> bool {
    let mut parts = s.split('.');
    let head = parts.next().unwrap_or_default();
    let mut bytes = head.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && parts.all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        let mut v = Vars::isolated();
        v.set("NAME", "world").set("EVIL", "$(rm -rf /)");
        v
    }

    #[test]
    fn expands_defined_and_undefined() {
        let v = vars();
        assert_eq!(v.expand("hello ${NAME}!"), "hello world!");
        assert_eq!(v.expand("[${MISSING}]"), "[]");
        assert_eq!(v.expand("cost: $$5"), "cost: $5");
        assert_eq!(v.expand("$$${NAME}"), "$world");
        assert_eq!(v.expand("$HOME stays"), "$HOME stays");
        assert_eq!(v.expand("${not closed"), "${not closed");
        assert_eq!(v.expand("${1BAD}"), "${1BAD}");
        assert_eq!(v.expand("${a..b}"), "${a..b}");
        assert_eq!(v.expand("[${tasks.my-task.outputs.x}]"), "[]");
        assert_eq!(v.expand("trailing $"), "trailing $");
    }

    #[test]
    fn values_are_not_re_expanded() {
        let mut v = Vars::isolated();
        v.set("A", "${B}").set("B", "no");
        assert_eq!(v.expand("${A}"), "${B}");
        assert_eq!(vars().expand("${EVIL}"), "$(rm -rf /)");
    }

    #[test]
    fn lists_references() {
        assert_eq!(Vars::referenced("${A} $$ ${B} ${A}"), vec!["A", "B"]);
    }
}
