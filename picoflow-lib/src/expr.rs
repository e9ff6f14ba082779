//! The conditions of `when:`: a small expression language over `${…}` values and literals.
//!
//! ```text
//! ${tasks.dump.outputs.changed} == 'yes' && !(${tasks.dump.outputs.size} > 1000)
//! ${item} in ['a.txt', "b.txt"] || ${tasks.check.status} not in 'failed timeout'
//! ```
//!
//! * Values: strings in single or double quotes (`\\`, `\'`, `\"`, `\n`, `\t` escapes), numbers
//!   (`-1.5`), `true`, `false`, and references `${NAME}` (an undefined one is empty). Lists
//!   `[a, b]` only on the right of `in`.
//! * Operators, loosest first: `||`, `&&`, `!`, then one comparison — `==`, `!=`, `<`, `<=`,
//!   `>`, `>=`, `in`, `not in` — and parentheses.
//! * Every value is text. Two values that both read as numbers compare as numbers (`"10" > "9"`,
//!   `"1.0" == "1"`); otherwise as text. `x in [..]` is membership, `x in y` is membership when
//!   `y` holds a JSON array, else substring. A value alone is true unless it is empty, `false`,
//!   `0` or `no` (any case).
//! * A reference's value is data: it is never parsed as an expression.
//!
//! ```
//! use picoflow_lib::expr::Expr;
//!
//! let e = Expr::parse("${size} > 9 && ${mode} in ['prod', 'staging']").unwrap();
//! assert_eq!(e.references(), ["size", "mode"]);
//! let values = |name: &str| match name {
//!     "size" => Some("10".to_string()),
//!     "mode" => Some("prod".to_string()),
//!     _ => None,
//! };
//! assert!(e.eval(&values));
//! assert!(Expr::parse("${size} >").unwrap_err().contains("column 10"));
//! ```

use std::cmp::Ordering;

/// Longest condition accepted, in bytes.
const MAX_LEN: usize = 4096;
/// Deepest nesting of parentheses and `!`.
const MAX_DEPTH: usize = 64;

/// A parsed condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    root: Node,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Any(Vec<Node>),
    All(Vec<Node>),
    Not(Box<Node>),
    Compare(Cmp, Value, Value),
    In {
        negated: bool,
        needle: Value,
        haystack: Haystack,
    },
    Value(Value),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Literal(String),
    Reference(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Haystack {
    List(Vec<Value>),
    Value(Value),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Open,
    Close,
    OpenList,
    CloseList,
    Comma,
    And,
    Or,
    Not,
    Cmp(Cmp),
    In,
    NotIn,
    Value(Value),
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::Open => "'('".into(),
            Token::Close => "')'".into(),
            Token::OpenList => "'['".into(),
            Token::CloseList => "']'".into(),
            Token::Comma => "','".into(),
            Token::And => "'&&'".into(),
            Token::Or => "'||'".into(),
            Token::Not => "'!'".into(),
            Token::Cmp(c) => format!("'{}'", c.as_str()),
            Token::In => "'in'".into(),
            Token::NotIn => "'not in'".into(),
            Token::Value(_) => "a value".into(),
        }
    }
}

impl Cmp {
    fn as_str(self) -> &'static str {
        match self {
            Cmp::Eq => "==",
            Cmp::Ne => "!=",
            Cmp::Lt => "<",
            Cmp::Le => "<=",
            Cmp::Gt => ">",
            Cmp::Ge => ">=",
        }
    }
}

/// Whether `name` can be referenced as `${name}`: `[A-Za-z_][A-Za-z0-9_]*`, optionally
/// followed by dot-separated parts of `[A-Za-z0-9_-]` (`tasks.my-task.outputs.size`).
pub fn is_reference_name(name: &str) -> bool {
    crate::expand::is_var_name(name)
}

impl Expr {
    /// Parses `text`. The message says what is wrong and where (`column N`, counted in
    /// characters from 1).
    pub fn parse(text: &str) -> Result<Expr, String> {
        if text.len() > MAX_LEN {
            return Err(format!(
                "the condition is {} bytes long, at most {MAX_LEN}",
                text.len()
            ));
        }
        let tokens = tokenize(text)?;
        if tokens.is_empty() {
            return Err("the condition is empty".into());
        }
        let mut p = Parser {
            tokens,
            at: 0,
            end: text.chars().count() + 1,
            depth: 0,
        };
        let root = p.any()?;
        match p.peek() {
            None => Ok(Expr { root }),
            Some((t, col)) => Err(format!(
                "column {col}: unexpected {} after a complete condition",
                t.describe()
            )),
        }
    }

    /// Every `${…}` name the condition reads, in order of first appearance.
    pub fn references(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        collect(&self.root, &mut names);
        names
    }

    /// Evaluates the condition; `lookup` gives a reference's value (`None`: empty).
    pub fn eval(&self, lookup: &dyn Fn(&str) -> Option<String>) -> bool {
        eval(&self.root, lookup)
    }
}

fn collect<'a>(node: &'a Node, names: &mut Vec<&'a str>) {
    let value = |v: &'a Value, names: &mut Vec<&'a str>| {
        if let Value::Reference(r) = v {
            if !names.contains(&r.as_str()) {
                names.push(r);
            }
        }
    };
    match node {
        Node::Any(list) | Node::All(list) => list.iter().for_each(|n| collect(n, names)),
        Node::Not(n) => collect(n, names),
        Node::Compare(_, a, b) => {
            value(a, names);
            value(b, names);
        }
        Node::In {
            needle, haystack, ..
        } => {
            value(needle, names);
            match haystack {
                Haystack::List(l) => l.iter().for_each(|v| value(v, names)),
                Haystack::Value(v) => value(v, names),
            }
        }
        Node::Value(v) => value(v, names),
    }
}

fn text(v: &Value, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    match v {
        Value::Literal(s) => s.clone(),
        Value::Reference(r) => lookup(r).unwrap_or_default(),
    }
}

fn eval(node: &Node, lookup: &dyn Fn(&str) -> Option<String>) -> bool {
    match node {
        Node::Any(list) => list.iter().any(|n| eval(n, lookup)),
        Node::All(list) => list.iter().all(|n| eval(n, lookup)),
        Node::Not(n) => !eval(n, lookup),
        Node::Value(v) => truthy(&text(v, lookup)),
        Node::Compare(cmp, a, b) => {
            let ord = compare(&text(a, lookup), &text(b, lookup));
            match cmp {
                Cmp::Eq => ord == Some(Ordering::Equal),
                Cmp::Ne => ord != Some(Ordering::Equal),
                Cmp::Lt => ord == Some(Ordering::Less),
                Cmp::Le => matches!(ord, Some(Ordering::Less | Ordering::Equal)),
                Cmp::Gt => ord == Some(Ordering::Greater),
                Cmp::Ge => matches!(ord, Some(Ordering::Greater | Ordering::Equal)),
            }
        }
        Node::In {
            negated,
            needle,
            haystack,
        } => {
            let needle = text(needle, lookup);
            let found = match haystack {
                Haystack::List(l) => l
                    .iter()
                    .any(|v| compare(&needle, &text(v, lookup)) == Some(Ordering::Equal)),
                Haystack::Value(v) => {
                    let hay = text(v, lookup);
                    match json_items(&hay) {
                        Some(items) => items
                            .iter()
                            .any(|i| compare(&needle, i) == Some(Ordering::Equal)),
                        None => hay.contains(&needle),
                    }
                }
            };
            found != *negated
        }
    }
}

/// Numbers compare as numbers, anything else as text. `None` for NaN-like cases.
fn compare(a: &str, b: &str) -> Option<Ordering> {
    match (number(a), number(b)) {
        (Some(x), Some(y)) => x.partial_cmp(&y),
        _ => Some(a.cmp(b)),
    }
}

fn number(s: &str) -> Option<f64> {
    let t = s.trim();
    // Only plain decimal numbers: "inf", "nan" and "1e5" stay text.
    let plain = !t.is_empty()
        && t.bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-' || b == b'+');
    plain
        .then(|| t.parse::<f64>().ok())
        .flatten()
        .filter(|f| f.is_finite())
}

fn truthy(s: &str) -> bool {
    let t = s.trim();
    !(t.is_empty()
        || ["false", "0", "no"]
            .iter()
            .any(|f| t.eq_ignore_ascii_case(f)))
}

/// The items of a JSON array of scalars, as text.
fn json_items(s: &str) -> Option<Vec<String>> {
    let t = s.trim();
    if !t.starts_with('[') {
        return None;
    }
    let items: Vec<serde_json::Value> = serde_json::from_str(t).ok()?;
    items
        .into_iter()
        .map(|v| match v {
            serde_json::Value::String(s) => Some(s),
            serde_json::Value::Number(_) | serde_json::Value::Bool(_) => Some(v.to_string()),
            _ => None,
        })
        .collect()
}

/// Splits the text into tokens, each with its column.
fn tokenize(text: &str) -> Result<Vec<(Token, usize)>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        let next = chars.get(i + 1).copied();
        let (token, len) = match c {
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            '(' => (Token::Open, 1),
            ')' => (Token::Close, 1),
            '[' => (Token::OpenList, 1),
            ']' => (Token::CloseList, 1),
            ',' => (Token::Comma, 1),
            '&' if next == Some('&') => (Token::And, 2),
            '|' if next == Some('|') => (Token::Or, 2),
            '=' if next == Some('=') => (Token::Cmp(Cmp::Eq), 2),
            '!' if next == Some('=') => (Token::Cmp(Cmp::Ne), 2),
            '!' => (Token::Not, 1),
            '<' if next == Some('=') => (Token::Cmp(Cmp::Le), 2),
            '<' => (Token::Cmp(Cmp::Lt), 1),
            '>' if next == Some('=') => (Token::Cmp(Cmp::Ge), 2),
            '>' => (Token::Cmp(Cmp::Gt), 1),
            '\'' | '"' => {
                let (s, len) = string(&chars[i..], col)?;
                (Token::Value(Value::Literal(s)), len)
            }
            '$' if next == Some('{') => {
                let close = chars[i..]
                    .iter()
                    .position(|&c| c == '}')
                    .ok_or_else(|| format!("column {col}: '${{' without its closing '}}'"))?;
                let name: String = chars[i + 2..i + close].iter().collect();
                if !is_reference_name(&name) {
                    return Err(format!(
                        "column {col}: '${{{name}}}' is not a valid reference (such as ${{tasks.NAME.outputs.KEY}} or ${{VAR}})"
                    ));
                }
                (Token::Value(Value::Reference(name)), close + 1)
            }
            c if c.is_ascii_digit() || (c == '-' && next.is_some_and(|n| n.is_ascii_digit())) => {
                let len = 1 + chars[i + 1..]
                    .iter()
                    .take_while(|c| c.is_ascii_digit() || **c == '.')
                    .count();
                let s: String = chars[i..i + len].iter().collect();
                if number(&s).is_none() {
                    return Err(format!("column {col}: '{s}' is not a number"));
                }
                (Token::Value(Value::Literal(s)), len)
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let len = chars[i..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                    .count();
                let word: String = chars[i..i + len].iter().collect();
                match word.as_str() {
                    "true" | "false" => (Token::Value(Value::Literal(word)), len),
                    "in" => (Token::In, len),
                    "not" => {
                        // `not in`: the next word must be `in`.
                        let rest = &chars[i + len..];
                        let gap = rest.iter().take_while(|c| c.is_whitespace()).count();
                        let after = &rest[gap..];
                        let is_in = gap > 0
                            && after.len() >= 2
                            && after[0] == 'i'
                            && after[1] == 'n'
                            && !after
                                .get(2)
                                .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_');
                        if !is_in {
                            return Err(format!(
                                "column {col}: 'not' is only used as 'not in'; negate with '!'"
                            ));
                        }
                        (Token::NotIn, len + gap + 2)
                    }
                    _ => {
                        return Err(format!(
                        "column {col}: unknown word '{word}' (quote text, write references as ${{{word}}})"
                    ))
                    }
                }
            }
            other => return Err(format!("column {col}: unexpected character '{other}'")),
        };
        tokens.push((token, col));
        i += len;
    }
    Ok(tokens)
}

/// A quoted string starting at `chars[0]`: its value and its length in characters.
fn string(chars: &[char], col: usize) -> Result<(String, usize), String> {
    let quote = chars[0];
    let mut out = String::new();
    let mut i = 1;
    while i < chars.len() {
        match chars[i] {
            c if c == quote => return Ok((out, i + 1)),
            '\\' => {
                let escaped = match chars.get(i + 1) {
                    Some('n') => '\n',
                    Some('t') => '\t',
                    Some(c @ ('\\' | '\'' | '"')) => *c,
                    Some(c) => {
                        return Err(format!(
                            "column {}: unknown escape '\\{c}' (\\\\, \\', \\\", \\n, \\t)",
                            col + i
                        ))
                    }
                    None => break,
                };
                out.push(escaped);
                i += 2;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Err(format!("column {col}: string without its closing {quote}"))
}

struct Parser {
    tokens: Vec<(Token, usize)>,
    at: usize,
    /// The column just past the text, for "expected … at the end".
    end: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<(&Token, usize)> {
        self.tokens.get(self.at).map(|(t, c)| (t, *c))
    }

    fn eat(&mut self, want: &Token) -> bool {
        let hit = self.peek().is_some_and(|(t, _)| t == want);
        if hit {
            self.at += 1;
        }
        hit
    }

    fn column(&self) -> usize {
        self.peek().map_or(self.end, |(_, c)| c)
    }

    fn expected(&self, what: &str) -> String {
        match self.peek() {
            Some((t, col)) => format!("column {col}: expected {what}, found {}", t.describe()),
            None => format!("column {}: expected {what} at the end", self.end),
        }
    }

    fn nested<T>(&mut self, f: impl FnOnce(&mut Parser) -> Result<T, String>) -> Result<T, String> {
        if self.depth >= MAX_DEPTH {
            return Err(format!(
                "column {}: nested more than {MAX_DEPTH} deep",
                self.column()
            ));
        }
        self.depth += 1;
        let r = f(self);
        self.depth -= 1;
        r
    }

    fn any(&mut self) -> Result<Node, String> {
        let mut list = vec![self.all()?];
        while self.eat(&Token::Or) {
            list.push(self.all()?);
        }
        Ok(match list.len() {
            1 => list.pop().expect("one"),
            _ => Node::Any(list),
        })
    }

    fn all(&mut self) -> Result<Node, String> {
        let mut list = vec![self.unary()?];
        while self.eat(&Token::And) {
            list.push(self.unary()?);
        }
        Ok(match list.len() {
            1 => list.pop().expect("one"),
            _ => Node::All(list),
        })
    }

    fn unary(&mut self) -> Result<Node, String> {
        if self.eat(&Token::Not) {
            return self.nested(|p| Ok(Node::Not(Box::new(p.unary()?))));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Node, String> {
        if self.eat(&Token::Open) {
            let inner = self.nested(|p| p.any())?;
            if !self.eat(&Token::Close) {
                return Err(self.expected("')'"));
            }
            return Ok(inner);
        }
        let left = self.value("a condition or a value")?;
        let node = match self.peek() {
            Some((Token::Cmp(c), _)) => {
                let c = *c;
                self.at += 1;
                let right = self.value(&format!("a value after '{}'", c.as_str()))?;
                Node::Compare(c, left, right)
            }
            Some((Token::In | Token::NotIn, _)) => {
                let negated = self.peek().is_some_and(|(t, _)| *t == Token::NotIn);
                self.at += 1;
                let haystack = match self.eat(&Token::OpenList) {
                    true => Haystack::List(self.list()?),
                    false => Haystack::Value(self.value("a list or a value after 'in'")?),
                };
                Node::In {
                    negated,
                    needle: left,
                    haystack,
                }
            }
            _ => Node::Value(left),
        };
        if let Some((Token::Cmp(_) | Token::In | Token::NotIn, col)) = self.peek() {
            return Err(format!(
                "column {col}: comparisons do not chain; join them with && or ||"
            ));
        }
        Ok(node)
    }

    /// The items of a list whose `[` was just read.
    fn list(&mut self) -> Result<Vec<Value>, String> {
        let mut items = Vec::new();
        if self.eat(&Token::CloseList) {
            return Ok(items);
        }
        loop {
            items.push(self.value("a list item")?);
            if self.eat(&Token::CloseList) {
                return Ok(items);
            }
            if !self.eat(&Token::Comma) {
                return Err(self.expected("',' or ']'"));
            }
        }
    }

    fn value(&mut self, what: &str) -> Result<Value, String> {
        match self.peek() {
            Some((Token::Value(v), _)) => {
                let v = v.clone();
                self.at += 1;
                Ok(v)
            }
            Some((Token::OpenList, col)) => Err(format!(
                "column {col}: a list can only follow 'in' or 'not in'"
            )),
            _ => Err(self.expected(what)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, values: &[(&str, &str)]) -> bool {
        let e = Expr::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        e.eval(&|n: &str| {
            values
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        })
    }

    fn error(text: &str) -> String {
        Expr::parse(text).expect_err(text)
    }

    #[test]
    fn comparisons_of_numbers_and_text() {
        let v = [("n", "10"), ("s", "abc"), ("f", "1.0")];
        assert!(check("${n} > 9", &v), "numbers compare as numbers");
        assert!(check("'10' > '9'", &v));
        assert!(check("${f} == 1", &v));
        assert!(check("${n} >= 10 && ${n} <= 10 && ${n} != 11", &v));
        assert!(check("${s} < 'abd'", &v), "text compares as text");
        assert!(check("${s} == \"abc\"", &v));
        assert!(!check("${s} == 'ABC'", &v));
        assert!(check("-1 < 0", &v));
        assert!(check("${missing} == ''", &v), "undefined is empty");
        assert!(
            check("'1e3' != 1000", &v),
            "only plain decimals are numbers"
        );
    }

    #[test]
    fn logic_precedence_and_parentheses() {
        let v = [("t", "yes"), ("f", "no")];
        // && binds tighter than ||.
        assert!(check("${t} || ${f} && ${f}", &v));
        assert!(!check("(${t} || ${f}) && ${f}", &v));
        assert!(check("!${f}", &v));
        assert!(check("!!${t}", &v));
        assert!(check("!(${t} == 'no')", &v));
        assert!(check("true && !false", &v));
    }

    #[test]
    fn truthiness_of_a_value_alone() {
        for falsy in ["", " ", "false", "FALSE", "0", "no", "No"] {
            assert!(!check("${x}", &[("x", falsy)]), "{falsy:?}");
        }
        for truthy in ["yes", "1", "true", "anything", "0.0"] {
            assert!(check("${x}", &[("x", truthy)]), "{truthy:?}");
        }
        assert!(!check("${undefined}", &[]));
    }

    #[test]
    fn membership() {
        let v = [("x", "b"), ("list", "[\"a\", \"b\", 3]"), ("n", "3.0")];
        assert!(check("${x} in ['a', 'b']", &v));
        assert!(check("${x} not in ['c']", &v));
        assert!(!check("${x} in []", &v));
        assert!(check("${x} in ${list}", &v), "a JSON array value is a list");
        assert!(check("${n} in ${list}", &v), "with numeric equality");
        assert!(
            check("'ail' in 'failed timeout'", &v),
            "otherwise a substring"
        );
        assert!(check("'timeout' not in 'success'", &v));
        assert!(
            !check("'[' in ${list}", &v),
            "a JSON array is not searched as text"
        );
    }

    #[test]
    fn references_are_listed_once_in_order() {
        let e =
            Expr::parse("${b} == ${a} || ${b} in [${c}, 'x'] && ${tasks.my-t.outputs.k}").unwrap();
        assert_eq!(e.references(), ["b", "a", "c", "tasks.my-t.outputs.k"]);
    }

    #[test]
    fn hostile_values_are_only_text() {
        let v = [("x", "' || true || '"), ("y", "$(rm -rf /)"), ("z", "${x}")];
        assert!(!check("${x} == 'a'", &v));
        assert!(check("${y} == '$(rm -rf /)'", &v));
        assert!(check("${z} == '${x}'", &v), "a value is not expanded again");
    }

    #[test]
    fn escapes_in_strings() {
        assert!(check(r#"'it\'s' == "it's""#, &[]));
        assert!(check(r#"${x} == 'a\nb\t\\'"#, &[("x", "a\nb\t\\")]));
    }

    #[test]
    fn errors_say_what_and_where() {
        let cases = [
            ("", "empty"),
            ("   ", "empty"),
            (
                "${a} ==",
                "column 8: expected a value after '==' at the end",
            ),
            ("'open", "column 1: string without its closing '"),
            ("${a", "column 1: '${' without its closing '}'"),
            ("${1a} == 1", "column 1: '${1a}' is not a valid reference"),
            ("${a} = 1", "column 6: unexpected character '='"),
            ("a == 1", "column 1: unknown word 'a'"),
            ("(${a}", "column 6: expected ')' at the end"),
            (
                "${a})",
                "column 5: unexpected ')' after a complete condition",
            ),
            ("${a} == 1 == 2", "column 11: comparisons do not chain"),
            ("['a'] == ${x}", "column 1: a list can only follow 'in'"),
            ("${x} in ['a' 'b']", "column 14: expected ',' or ']'"),
            ("${x} not ['a']", "column 6: 'not' is only used as 'not in'"),
            (
                "&& ${a}",
                "column 1: expected a condition or a value, found '&&'",
            ),
            (
                "${a} ||",
                "column 8: expected a condition or a value at the end",
            ),
            ("'\\q'", "column 2: unknown escape"),
            ("1.2.3 > 0", "column 1: '1.2.3' is not a number"),
        ];
        for (text, want) in cases {
            let got = error(text);
            assert!(got.contains(want), "{text:?}: {got}");
        }
        let deep = format!("{}${{a}}{}", "(".repeat(100), ")".repeat(100));
        assert!(error(&deep).contains("nested more than 64 deep"));
        assert!(error(&"!".repeat(1000)).contains("nested more than 64 deep"));
        assert!(error(&"1 ".repeat(3000)).contains("at most 4096"));
        // Columns count characters, not bytes.
        assert!(
            error("'é' == é").contains("column 8"),
            "{}",
            error("'é' == é")
        );
    }

    #[test]
    fn long_flat_chains_are_fine() {
        let text = vec!["${a}"; 500].join(" && ");
        assert!(check(&text, &[("a", "yes")]));
    }
}
