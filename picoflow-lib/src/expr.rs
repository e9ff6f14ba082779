//! The conditions of `when:`: a small expression language over `${…}` values and literals.
//!
//! ```text
//! ${tasks.dump.outputs.changed} == 'yes' && !(${tasks.dump.outputs.size} > 1000)
//! ${item} in ['a.txt', "b.txt"] || ${tasks.check.status} not in 'failed timeout'
//! ```
//!
//! * Values: strings in single or double quotes (`\\`, `\'`, `\"`, `\n`, `\t` escapes), numbers
//!   (`3`, `-1.5`), `true`, `false`, and references `${NAME}` (an undefined one is empty; see
//!   [`is_reference_name`]). Lists `[a, b]` only on the right of `in`.
//! * Operators, loosest first: `||`, `&&`, `!`, then one comparison — `==`, `!=`, `<`, `<=`,
//!   `>`, `>=`, `in`, `not in` — and parentheses.
//! * Every value is text (`true` is `"true"`, a number is as written). Two values that both
//!   read as plain decimal numbers (`-12.5`, surrounding blanks ignored) compare as numbers
//!   (`"10" > "9"`, `"1.0" == "1"`); otherwise as text, byte by byte. `x in [..]` is membership
//!   by that equality; `x in y` is membership when `y` is a reference whose value is a JSON
//!   array of strings, numbers and booleans (`["a", 3]`: the lists `iterate_over` reads), else
//!   substring.
//!   A value alone is true unless it is empty, `false`, `0` or `no` (any case, blanks ignored).
//! * A reference's value is data: it is never parsed as an expression, so a value such as
//!   `' || true` or `$(rm -rf /)` is only text.
//! * Limits: 4096 bytes of text, parentheses and `!` nested at most 64 deep.
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
    /// Parses `text`. The message says what is wrong and where (`column N: …`, counted in
    /// characters from 1), except for faults of the whole text (empty, longer than 4096
    /// bytes).
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
            Some((Token::Close, col)) => Err(format!("column {col}: ')' without its '('")),
            Some((t, col)) => Err(format!(
                "column {col}: expected '&&', '||' or the end, found {}",
                t.describe()
            )),
        }
    }

    /// Every `${…}` name the condition reads, in order of first appearance, each once.
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
                    // Only a reference's value can be a list; a quoted literal is text.
                    let items = match v {
                        Value::Reference(_) => json_items(&hay),
                        Value::Literal(_) => None,
                    };
                    match items {
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

/// The items of a JSON array of strings, numbers and booleans (as `iterate_over` reads them),
/// as text; `None` for anything else.
fn json_items(s: &str) -> Option<Vec<String>> {
    json_list(s).and_then(Result::ok)
}

/// The items of `text` as text when it is a JSON array of strings, numbers or booleans; `None`
/// when it does not start with `[`. Shared by loops and by conditions' `in`.
pub(crate) fn json_list(text: &str) -> Option<Result<Vec<String>, String>> {
    let trimmed = text.trim();
    if !trimmed.starts_with('[') {
        return None;
    }
    let parsed: Vec<serde_json::Value> = match serde_json::from_str(trimmed) {
        Ok(p) => p,
        Err(e) => return Some(Err(format!("the value is not a JSON array: {e}"))),
    };
    Some(
        parsed
            .into_iter()
            .map(|v| match v {
                serde_json::Value::String(s) => Ok(s),
                serde_json::Value::Number(_) | serde_json::Value::Bool(_) => Ok(v.to_string()),
                other => Err(format!("items must be strings or numbers, not {other}")),
            })
            .collect(),
    )
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
                // `-?[0-9]+(.[0-9]+)?`: the leading digit is checked above.
                let plain = s.matches('.').count() <= 1 && !s.ends_with('.');
                if !plain || number(&s).is_none() {
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

    fn expected(&self, what: &str) -> String {
        match self.peek() {
            Some((t, col)) => format!("column {col}: expected {what}, found {}", t.describe()),
            None => format!("column {}: expected {what} at the end", self.end),
        }
    }

    /// Runs `f` one level deeper, for the `(` or `!` just read (the error names its column).
    fn nested<T>(&mut self, f: impl FnOnce(&mut Parser) -> Result<T, String>) -> Result<T, String> {
        if self.depth >= MAX_DEPTH {
            let col = self
                .at
                .checked_sub(1)
                .and_then(|i| self.tokens.get(i))
                .map_or(self.end, |(_, c)| *c);
            return Err(format!("column {col}: nested more than {MAX_DEPTH} deep"));
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
    fn every_operator() {
        let v = [("a", "apple"), ("b", "banana"), ("n", "5"), ("m", " 5.0 ")];
        let cases = [
            ("${n} == 5", true),
            ("${n} == ${m}", true),
            ("${a} == 'apple'", true),
            ("${a} == ${b}", false),
            ("${n} != 6", true),
            ("${n} != ${m}", false),
            ("${a} != 'apple'", false),
            ("${n} < 6", true),
            ("${n} < 5", false),
            ("${a} < ${b}", true),
            ("${n} <= 5", true),
            ("${a} <= 'apple'", true),
            ("${b} <= ${a}", false),
            ("${n} > -10", true),
            ("${n} > 10", false),
            ("${b} > ${a}", true),
            ("${n} >= 5.0", true),
            ("${a} >= 'b'", false),
            ("${a} in ['x', 'apple']", true),
            ("${a} not in ['x', 'apple']", false),
            ("'nan' in ${b}", true),
            ("'nan' not in ${b}", false),
            ("${a} && ${b}", true),
            ("${a} && ${missing}", false),
            ("${missing} || ${b}", true),
            ("${missing} || false", false),
            ("!${missing}", true),
            ("!${a}", false),
            ("true", true),
            ("false", false),
            ("1", true),
            ("0", false),
            ("-0.0", true),
            ("'no'", false),
        ];
        for (text, want) in cases {
            assert_eq!(check(text, &v), want, "{text}");
        }
    }

    #[test]
    fn comparisons_of_numbers_and_text() {
        let v = [
            ("n", "10"),
            ("s", "abc"),
            ("f", "1.0"),
            ("v", "1.10"),
            ("w", "1.9"),
            ("x", "1e3"),
        ];
        assert!(check("${n} > 9", &v), "numbers compare as numbers");
        assert!(check("'10' > '9'", &v));
        assert!(check("${f} == 1", &v));
        assert!(check("${v} < ${w}", &v), "1.10 < 1.9 as numbers");
        assert!(check("'-2' < '-1'", &v));
        assert!(check("-1 < 0", &v));
        assert!(
            check("' 7 ' == 7", &v),
            "blanks around a number are ignored"
        );
        assert!(check("${n} >= 10 && ${n} <= 10 && ${n} != 11", &v));
        assert!(check("${s} < 'abd'", &v), "text compares as text");
        assert!(
            check("'10' < 'a9'", &v),
            "text when one side is not a number"
        );
        assert!(check("'v1.10' < 'v1.9'", &v), "text compares byte by byte");
        assert!(check("${s} == \"abc\"", &v));
        assert!(!check("${s} == 'ABC'", &v));
        assert!(check("${missing} == ''", &v), "undefined is empty");
        assert!(!check("${missing} == 0", &v), "empty is not a number");
        assert!(check("${missing} < 0", &v), "'' sorts before '0' as text");
        assert!(
            check("'1e3' != 1000", &v) && check("${x} != 1000", &v),
            "only plain decimals are numbers"
        );
        assert!(check("'inf' != 'infinity'", &v));
        assert!(check("'NaN' == 'NaN'", &v), "text, so equal to itself");
    }

    #[test]
    fn logic_precedence_and_parentheses() {
        let v = [("t", "yes"), ("f", "no")];
        // && binds tighter than ||: a || (b && c).
        assert!(check("${t} || ${f} && ${f}", &v));
        assert!(check("${f} && ${f} || ${t}", &v));
        assert!(!check("(${t} || ${f}) && ${f}", &v));
        // ! binds tighter than && and ||, looser than a comparison: !(a == b).
        assert!(!check("!${t} && ${t}", &v));
        assert!(check("!${f} || ${f}", &v));
        assert!(check("!${t} == 'no'", &v));
        assert!(!check("!${f} == 'no'", &v));
        assert!(check("!${f}", &v));
        assert!(check("!!${t}", &v));
        assert!(check("!(${t} == 'no')", &v));
        assert!(check("true && !false", &v));
        assert!(check("((((${t}))))", &v));
        assert!(check("!(${f} || !(${t} && (${t} != ${f})))", &v));
    }

    #[test]
    fn truthiness_of_a_value_alone() {
        for falsy in ["", " ", "false", "FALSE", " False\n", "0", "no", "No"] {
            assert!(!check("${x}", &[("x", falsy)]), "{falsy:?}");
        }
        for truthy in ["yes", "1", "true", "anything", "0.0", "nope"] {
            assert!(check("${x}", &[("x", truthy)]), "{truthy:?}");
        }
        assert!(!check("${undefined}", &[]));
        assert!(check("!${undefined}", &[]));
    }

    #[test]
    fn membership() {
        let v = [
            ("x", "b"),
            ("n", "3.0"),
            ("status", "failed"),
            ("list", "[\"a\", \"b\", 3]"),
            ("pair", "[1,2]"),
            ("padded", "  [\"x\"]  "),
            ("empty_list", "[]"),
            ("objects", "[{\"a\": 1}]"),
            ("bools", "[true]"),
            ("broken", "[1, 2"),
        ];
        // List literals, by the same equality as ==.
        assert!(check("${x} in ['a', 'b']", &v));
        assert!(check("${x} not in ['c']", &v));
        assert!(!check("${x} in []", &v));
        assert!(check("${n} in [1, 3]", &v), "with numeric equality");
        assert!(
            check("${status} in [1, ${status}]", &v),
            "items may be references"
        );
        // Another value: a substring.
        assert!(check("'ail' in 'failed timeout'", &v));
        assert!(check("'timeout' not in 'success'", &v));
        assert!(check("${status} not in 'success skipped'", &v));
        // A reference holding a JSON array of strings and numbers: that list.
        assert!(check("${x} in ${list}", &v));
        assert!(check("${n} in ${list}", &v), "with numeric equality");
        assert!(check("2 in ${pair}", &v));
        assert!(check("'2.0' in ${pair}", &v));
        assert!(check("3 not in ${pair}", &v));
        assert!(
            !check("',' in ${pair}", &v),
            "a JSON array is not searched as text"
        );
        assert!(!check("'[' in ${list}", &v));
        assert!(check("'x' in ${padded}", &v));
        assert!(!check("'' in ${empty_list}", &v));
        assert!(check("true in ${bools}", &v));
        assert!(!check("'rue]' in ${bools}", &v));
        // Anything else is text.
        assert!(check("'a' in ${objects}", &v), "not only scalars");
        assert!(check("', 2' in ${broken}", &v), "not JSON");
        assert!(
            check("'[' in '[\"a\"]'", &v),
            "a quoted literal is always text"
        );
        // Undefined values are empty.
        assert!(check("${undefined} in ['', 'x']", &v));
        assert!(
            check("'' in ${undefined}", &v),
            "the empty text is in any text"
        );
        assert!(check("'a' not in ${undefined}", &v));
    }

    #[test]
    fn references_are_listed_once_in_order() {
        let e =
            Expr::parse("${b} == ${a} || ${b} in [${c}, 'x'] && ${tasks.my-t.outputs.k}").unwrap();
        assert_eq!(e.references(), ["b", "a", "c", "tasks.my-t.outputs.k"]);
        let e = Expr::parse(
            "!(${tasks.my-task.status} != 'x') && ${item} not in [${A}, ${item}] || 1 in ${BACKUP_DIR}",
        )
        .unwrap();
        assert_eq!(
            e.references(),
            ["tasks.my-task.status", "item", "A", "BACKUP_DIR"]
        );
        let quoted = Expr::parse("'${x}' == \"${y}\"").unwrap();
        assert!(quoted.references().is_empty(), "text in quotes is text");
    }

    #[test]
    fn reference_names() {
        for ok in [
            "a",
            "_x",
            "BACKUP_DIR",
            "item",
            "tasks.dump.outputs.changed",
            "tasks.my-task.status",
            "tasks.t.outputs.1",
            "a.-",
        ] {
            assert!(is_reference_name(ok), "{ok}");
        }
        for bad in [
            "", "1a", "-a", "my-task", "a.", ".a", "a..b", "a.b c", "é", "a.é", "a$", "a}",
        ] {
            assert!(!is_reference_name(bad), "{bad}");
        }
    }

    #[test]
    fn hostile_values_are_only_text() {
        let v = [
            ("quote", "' || true"),
            ("x", "' || true || '"),
            ("dquote", "\" || \"\" == \""),
            ("cmd", "$(rm -rf /)"),
            ("ref", "${tasks.a.status}"),
            ("list", "['a']"),
            ("a", "failed"),
        ];
        assert!(check("${quote} == \"' || true\"", &v));
        assert!(!check("${quote} == ''", &v));
        assert!(!check("${x} == 'a'", &v));
        assert!(!check("${dquote} == ''", &v));
        assert!(check("${cmd} == '$(rm -rf /)'", &v));
        assert!(
            check("${ref} == '${tasks.a.status}'", &v),
            "not expanded again"
        );
        assert!(check("${ref} != ${a}", &v));
        assert!(check("\"['a']\" == ${list}", &v), "not JSON, so text");
        assert!(
            check("${q}", &[("q", "' || false")]),
            "a value alone: only its text decides"
        );
        let e = Expr::parse("${quote} == 'x'").unwrap();
        let calls = std::cell::Cell::new(0);
        e.eval(&|n: &str| {
            calls.set(calls.get() + 1);
            assert_eq!(n, "quote");
            Some("${quote}".into())
        });
        assert_eq!(calls.get(), 1, "each reference is looked up once");
    }

    #[test]
    fn escapes_in_strings() {
        assert!(check(r#"'it\'s' == "it's""#, &[]));
        assert!(check(r#""say \"hi\"" == 'say "hi"'"#, &[]));
        assert!(check(r#"${x} == 'a\nb\t\\'"#, &[("x", "a\nb\t\\")]));
    }

    #[test]
    fn errors_say_what_and_where() {
        let cases = [
            // Empty.
            ("", "the condition is empty"),
            ("   ", "the condition is empty"),
            // Strings.
            ("'open", "column 1: string without its closing '"),
            ("\"open", "column 1: string without its closing \""),
            ("'ends in \\", "column 1: string without its closing '"),
            ("'\\q'", "column 2: unknown escape"),
            // Unknown characters and words.
            ("${a} = 1", "column 6: unexpected character '='"),
            ("${a} & ${b}", "column 6: unexpected character '&'"),
            ("${a} == 1 ;", "column 11: unexpected character ';'"),
            ("${a} == -", "column 9: unexpected character '-'"),
            ("$a == 1", "column 1: unexpected character '$'"),
            ("'é' == é", "column 8: unexpected character 'é'"), // characters, not bytes
            ("a == 1", "column 1: unknown word 'a'"),
            ("yes", "column 1: unknown word 'yes'"),
            ("TRUE", "column 1: unknown word 'TRUE'"),
            ("${x} not ['a']", "column 6: 'not' is only used as 'not in'"),
            ("1.2.3 > 0", "column 1: '1.2.3' is not a number"),
            ("1. == 1", "column 1: '1.' is not a number"),
            // References.
            ("${a", "column 1: '${' without its closing '}'"),
            ("${a} == ${b", "column 9: '${' without its closing '}'"),
            ("${1a} == 1", "column 1: '${1a}' is not a valid reference"),
            ("${} == 1", "column 1: '${}' is not a valid reference"),
            ("${a..b}", "column 1: '${a..b}' is not a valid reference"),
            ("${a b} == 1", "column 1: '${a b}' is not a valid reference"),
            // Missing operands.
            (
                "${a} ==",
                "column 8: expected a value after '==' at the end",
            ),
            (
                "${a} >= && ${b}",
                "column 9: expected a value after '>=', found '&&'",
            ),
            (
                "${x} in",
                "column 8: expected a list or a value after 'in' at the end",
            ),
            (
                "${x} not in",
                "column 12: expected a list or a value after 'in' at the end",
            ),
            (
                "&& ${a}",
                "column 1: expected a condition or a value, found '&&'",
            ),
            (
                "${a} ||",
                "column 8: expected a condition or a value at the end",
            ),
            ("!", "column 2: expected a condition or a value at the end"),
            ("()", "column 2: expected a condition or a value, found ')'"),
            // Trailing tokens, chained comparisons.
            (
                "${a} ${b}",
                "column 6: expected '&&', '||' or the end, found a value",
            ),
            (
                "${a} == 'x' 'y'",
                "column 13: expected '&&', '||' or the end",
            ),
            ("${a} == 1 == 2", "column 11: comparisons do not chain"),
            (
                "${a} in ['x'] == 'y'",
                "column 15: comparisons do not chain",
            ),
            ("${a} < ${b} in 'c'", "column 13: comparisons do not chain"),
            // Lists.
            ("['a'] == ${x}", "column 1: a list can only follow 'in'"),
            ("['a']", "column 1: a list can only follow 'in'"),
            ("${a} == ['a']", "column 9: a list can only follow 'in'"),
            ("${x} in [['a']]", "column 10: a list can only follow 'in'"),
            (
                "${x} in ['a' 'b']",
                "column 14: expected ',' or ']', found a value",
            ),
            (
                "${x} in ['a',]",
                "column 14: expected a list item, found ']'",
            ),
            ("${x} in ['a'", "column 13: expected ',' or ']' at the end"),
            // Parentheses.
            ("(${a}", "column 6: expected ')' at the end"),
            ("((${a})", "column 8: expected ')' at the end"),
            ("(${a} ${b})", "column 7: expected ')', found a value"),
            ("${a})", "column 5: ')' without its '('"),
            ("(${a}))", "column 7: ')' without its '('"),
        ];
        for (text, want) in cases {
            let got = error(text);
            assert!(got.contains(want), "{text:?}: {got}");
        }
    }

    #[test]
    fn limits() {
        // Length, in bytes.
        let at_limit = format!("'{}'", "x".repeat(MAX_LEN - 2));
        assert!(Expr::parse(&at_limit).is_ok());
        let over = format!("'{}'", "x".repeat(MAX_LEN - 1));
        assert!(error(&over).contains("4097 bytes long, at most 4096"));
        assert!(error(&format!("'{}'", "é".repeat(MAX_LEN / 2))).contains("at most 4096"));
        assert!(error(&"1 ".repeat(3000)).contains("at most 4096"));
        // Nesting: an error at the ( or ! one too deep, never a stack overflow.
        let ok = format!("{}${{a}}{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert!(Expr::parse(&ok).is_ok());
        let deep = format!("{}${{a}}{}", "(".repeat(65), ")".repeat(65));
        assert!(error(&deep).contains("column 65: nested more than 64 deep"));
        let nots = format!("{}${{a}}", "!".repeat(65));
        assert!(error(&nots).contains("column 65: nested more than 64 deep"));
        assert!(error(&"!(".repeat(2000)).contains("nested more than 64 deep"));
        assert!(error(&"(".repeat(4096)).contains("nested more than 64 deep"));
        // Long chains are flat, not deep.
        let text = vec!["${a}"; 500].join(" && ");
        assert!(check(&text, &[("a", "yes")]));
        let text = vec!["${a} == 1"; 300].join(" || ");
        assert!(check(&text, &[("a", "1.0")]));
    }
}
