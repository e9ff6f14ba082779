//! The remote command's text: how `${…}` references in an ssh task's `command` become shell
//! variables of the remote shell, so that no value is ever pasted into text a shell parses
//! (see the executor's docs). A scanner follows the command's quoting — quotes, `$(…)`,
//! backquotes, `${…}`, arithmetic, `case` patterns, comments, here-documents — to write each
//! reference the way its place reads it; the values themselves are only ever written inside
//! single quotes, which is what the safety rests on.

use std::fmt::Write as _;

use crate::expand::is_var_name;

/// The script the remote shell runs for `command`: every `${…}` reference becomes a shell
/// variable (`PICOFLOW_REF_1`, … in order of first use), assigned and exported before the
/// command, whose references are rewritten to them. `value` gives a reference's value
/// (`None`: empty). Without references the script is the command (with `$$` as `$`).
///
/// Values are written only inside single quotes, where a POSIX shell takes every byte
/// literally (a `'` is closed, escaped and reopened: `'\''`), so no value, whatever bytes
/// it holds, can end its quotes: the guarantee rests on that alone. Where the command
/// reads a reference, it is written for its quoting (see [`rewrite`]): a mistaken guess
/// there changes how a value is split, never whether it is run.
pub(super) fn remote_script(
    command: &str,
    value: impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut names: Vec<String> = Vec::new();
    let body = rewrite(command, |name| {
        let n = match names.iter().position(|x| x == name) {
            Some(i) => i + 1,
            None => {
                names.push(name.to_string());
                names.len()
            }
        };
        format!("PICOFLOW_REF_{n}")
    });
    if names.is_empty() {
        return Ok(body);
    }
    let mut script = String::with_capacity(body.len() + 64 * names.len());
    for (i, name) in names.iter().enumerate() {
        let v = value(name).unwrap_or_default();
        if v.contains('\0') {
            return Err(format!(
                "${{{name}}}: the value holds a NUL byte, which cannot be passed to a remote shell"
            ));
        }
        let _ = write!(
            script,
            "PICOFLOW_REF_{}='{}'; ",
            i + 1,
            v.replace('\'', r"'\''")
        );
    }
    script.push_str("export");
    for i in 1..=names.len() {
        let _ = write!(script, " PICOFLOW_REF_{i}");
    }
    script.push_str("; ");
    script.push_str(&body);
    Ok(script)
}

/// One piece of a command as written: a character (`$$` gives a `$`) or a `${…}` reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece<'a> {
    Char(char),
    Ref(&'a str),
}

/// The pieces of `text`, read the way `${VAR}` expansion reads it.
fn pieces(text: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if c == '$' {
            let after = &rest[1..];
            if let Some(tail) = after.strip_prefix('$') {
                out.push(Piece::Char('$'));
                rest = tail;
                continue;
            }
            if let Some(body) = after.strip_prefix('{') {
                if let Some(end) = body.find('}').filter(|&e| is_var_name(&body[..e])) {
                    out.push(Piece::Ref(&body[..end]));
                    rest = &body[end + 1..];
                    continue;
                }
            }
        }
        out.push(Piece::Char(c));
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// A here-document whose body is still to come or being read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HereDoc {
    delimiter: String,
    /// `<<-`: leading tabs are removed from its lines.
    strip_tabs: bool,
    /// Unquoted delimiter: `$…` and `` `…` `` are expanded in the body.
    expands: bool,
}

/// Where the shell is in the command's text.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Quoting {
    /// Unquoted: the command itself, `$(…)` (with its open parentheses), `` `…` ``, and
    /// `${…}` outside double quotes.
    Top,
    Paren(u32),
    /// A `case … esac` in an unquoted context: the `)` of a pattern closes nothing.
    Case,
    /// Arithmetic, with its open parentheses: `$((…))` (where a reference is written
    /// `${V}`: the expression is not split, and dash and busybox refuse quotes there) and
    /// bash's `((…))` command (`quote_refs`: written `"${V}"`, which bash accepts and which
    /// is right where a POSIX shell reads two subshells). No here-document, no comment.
    Arith {
        depth: u32,
        quote_refs: bool,
    },
    Backtick,
    Brace,
    /// `"…"`, and `${…}` inside it.
    Double,
    DoubleBrace,
    Single,
    /// `$'…'` (bash, ksh, zsh): single quotes with backslash escapes.
    Ansi,
    Comment,
    HereDoc(HereDoc),
}

impl Quoting {
    fn unquoted(&self) -> bool {
        matches!(
            self,
            Quoting::Top
                | Quoting::Paren(_)
                | Quoting::Case
                | Quoting::Backtick
                | Quoting::Brace
                | Quoting::Arith {
                    quote_refs: true,
                    ..
                }
        )
    }
}

/// `command` with `$$` as `$` and each reference `${name}` rewritten to the variable
/// `var(name)` names: `"${V}"` where the text is unquoted (one word, as the value was
/// before: no field splitting, no globbing), `${V}` inside double quotes and unquoted
/// here-documents (where it expands to the value) and in `$((…))`, and inside single quotes
/// or after a backslash (where it stays literal text, as in a local `sh -c`). `<<` in
/// `$((…))` and bash's `((…))` is a shift, not a here-document; the `)` of a `case`
/// pattern closes no `$(`. Where the reading is in doubt (bash's `((…))`), the quoted form.
fn rewrite(command: &str, var: impl FnMut(&str) -> String) -> String {
    let mut r = Rewriter {
        p: pieces(command),
        out: String::with_capacity(command.len() + 16),
        stack: vec![Quoting::Top],
        pending: Vec::new(),
        i: 0,
        var,
    };
    let mut line_start = true;
    while r.i < r.p.len() {
        line_start = r.step(line_start);
    }
    r.out
}

/// The state of [`rewrite`]: the pieces read, the text written, and where the shell is.
struct Rewriter<'a, F> {
    p: Vec<Piece<'a>>,
    out: String,
    /// The quoting contexts open at piece `i`, innermost last, `Top` at the bottom.
    stack: Vec<Quoting>,
    /// Here-documents whose operator was read on the current line; their bodies start on
    /// the next one.
    pending: Vec<HereDoc>,
    /// The next piece to read.
    i: usize,
    /// The variable a reference's name becomes.
    var: F,
}

impl<F: FnMut(&str) -> String> Rewriter<'_, F> {
    /// Reads one piece (or a here-document's whole closing line) at the start of a line or
    /// not; whether the next piece starts a line.
    fn step(&mut self, line_start: bool) -> bool {
        let ctx = self.stack.last().cloned().unwrap_or(Quoting::Top);
        if let (Quoting::HereDoc(h), true) = (&ctx, line_start) {
            if let Some(n) = delimiter_line(&self.p[self.i..], h) {
                for _ in 0..n {
                    self.raw();
                }
                self.stack.pop();
                return true;
            }
        }
        let c = match self.p[self.i] {
            Piece::Ref(name) => {
                let v = (self.var)(name);
                if ctx.unquoted() {
                    let _ = write!(self.out, "\"${{{v}}}\"");
                } else {
                    let _ = write!(self.out, "${{{v}}}");
                }
                self.i += 1;
                return false;
            }
            Piece::Char(c) => c,
        };
        let before = self.out.chars().last();
        self.out.push(c);
        self.i += 1;
        match &ctx {
            Quoting::Top
            | Quoting::Paren(_)
            | Quoting::Case
            | Quoting::Backtick
            | Quoting::Brace => self.unquoted(c, &ctx, before),
            Quoting::Double | Quoting::DoubleBrace => self.double_quoted(c, &ctx),
            Quoting::Arith { .. } => self.arithmetic(c),
            Quoting::Single => {
                if c == '\'' {
                    self.stack.pop();
                }
            }
            Quoting::Ansi => match c {
                '\\' => self.raw(),
                '\'' => {
                    self.stack.pop();
                }
                _ => {}
            },
            Quoting::Comment => {
                if c == '\n' {
                    self.stack.pop();
                    self.start_here_docs();
                }
            }
            Quoting::HereDoc(h) => {
                if h.expands {
                    match c {
                        '\\' => self.raw(),
                        '`' => self.stack.push(Quoting::Backtick),
                        '$' => self.opens(Quoting::DoubleBrace),
                        _ => {}
                    }
                }
            }
        }
        c == '\n'
    }

    /// After `c`, written in an unquoted context `ctx` (`before` is the character written
    /// before it): opens or closes what `c` opens or closes there.
    fn unquoted(&mut self, c: char, ctx: &Quoting, before: Option<char>) {
        let next = self.p.get(self.i).copied();
        // What was written before `c` (one byte long wherever this is asked).
        let before_c = self.out.len() - 1;
        match c {
            '\\' => self.raw(),
            '\'' => self.stack.push(Quoting::Single),
            '"' => self.stack.push(Quoting::Double),
            '`' if *ctx == Quoting::Backtick => {
                self.stack.pop();
            }
            '`' => self.stack.push(Quoting::Backtick),
            '$' if next == Some(Piece::Char('\'')) => {
                self.stack.push(Quoting::Ansi);
                self.raw();
            }
            '$' => self.opens(Quoting::Brace),
            '(' if next == Some(Piece::Char('('))
                && closes_twice(&self.p[self.i + 1..])
                && command_position(&self.out[..before_c]) =>
            {
                self.stack.push(Quoting::Arith {
                    depth: 2,
                    quote_refs: true,
                });
                self.raw();
            }
            '(' => {
                if let Some(Quoting::Paren(d)) = self.stack.last_mut() {
                    *d += 1;
                }
            }
            'c' if *ctx != Quoting::Brace
                && word_at(&self.p[self.i..], "ase")
                && command_position(&self.out[..before_c]) =>
            {
                self.stack.push(Quoting::Case);
            }
            'e' if *ctx == Quoting::Case
                && word_at(&self.p[self.i..], "sac")
                && before.is_none_or(|b| b.is_whitespace() || ";&|(".contains(b)) =>
            {
                self.stack.pop();
            }
            ')' => self.close_paren(),
            '}' if *ctx == Quoting::Brace => {
                self.stack.pop();
            }
            '#' if *ctx != Quoting::Brace && before.is_none_or(starts_comment) => {
                self.stack.push(Quoting::Comment);
            }
            '<' if *ctx != Quoting::Brace && next == Some(Piece::Char('<')) => {
                self.raw();
                if let Some(h) = here_doc_operator(&self.p, &mut self.i, &mut self.out) {
                    self.pending.push(h);
                }
            }
            '\n' => self.start_here_docs(),
            _ => {}
        }
    }

    /// After `c`, written inside `"…"` or a `${…}` in it (`ctx`).
    fn double_quoted(&mut self, c: char, ctx: &Quoting) {
        match c {
            '\\' => self.raw(),
            '"' if *ctx == Quoting::Double => {
                self.stack.pop();
            }
            '"' => self.stack.push(Quoting::Double),
            '`' => self.stack.push(Quoting::Backtick),
            '$' => self.opens(Quoting::DoubleBrace),
            '}' if *ctx == Quoting::DoubleBrace => {
                self.stack.pop();
            }
            _ => {}
        }
    }

    /// After `c`, written inside arithmetic, which counts its parentheses.
    fn arithmetic(&mut self, c: char) {
        match c {
            '\\' => self.raw(),
            '\'' => self.stack.push(Quoting::Single),
            '"' => self.stack.push(Quoting::Double),
            '`' => self.stack.push(Quoting::Backtick),
            '$' => self.opens(Quoting::DoubleBrace),
            '(' | ')' => {
                if let Some(Quoting::Arith { depth, .. }) = self.stack.last_mut() {
                    if c == '(' {
                        *depth += 1;
                    } else {
                        *depth -= 1;
                        if *depth == 0 {
                            self.stack.pop();
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// An unquoted `)`: closes one parenthesis of a `$(…)`.
    fn close_paren(&mut self) {
        if let Some(Quoting::Paren(d)) = self.stack.last_mut() {
            *d -= 1;
            if *d == 0 {
                self.stack.pop();
            }
        }
    }

    /// After a `$`: what the next piece opens — arithmetic `$((…))`, a command substitution
    /// `$(…)` or a parameter expansion `${…}` (as `brace`) — written as it is.
    fn opens(&mut self, brace: Quoting) {
        match self.p.get(self.i).copied() {
            Some(Piece::Char('('))
                if self.p.get(self.i + 1) == Some(&Piece::Char('('))
                    && closes_twice(&self.p[self.i + 2..]) =>
            {
                self.stack.push(Quoting::Arith {
                    depth: 2,
                    quote_refs: false,
                });
                self.raw();
            }
            Some(Piece::Char('(')) => self.stack.push(Quoting::Paren(1)),
            Some(Piece::Char('{')) => self.stack.push(brace),
            _ => return,
        }
        self.raw();
    }

    /// At a newline outside a comment or a here-document: the bodies of the here-documents
    /// opened on the line start, the first one innermost.
    fn start_here_docs(&mut self) {
        self.stack
            .extend(self.pending.drain(..).rev().map(Quoting::HereDoc));
    }

    /// Writes the next piece as it is (a reference unquoted) and moves past it.
    fn raw(&mut self) {
        match self.p.get(self.i).copied() {
            Some(Piece::Char(c)) => self.out.push(c),
            Some(Piece::Ref(name)) => {
                let v = (self.var)(name);
                let _ = write!(self.out, "${{{v}}}");
            }
            None => return,
        }
        self.i += 1;
    }
}

/// Whether a `#` after `before` starts a comment: at the start of a word.
fn starts_comment(before: char) -> bool {
    before.is_whitespace() || ";&|()<>".contains(before)
}

/// Whether the text after `((` closes it with `))`, as arithmetic does (`$((a) ; b)` is a
/// command substitution of a subshell, where references must be quoted).
fn closes_twice(p: &[Piece<'_>]) -> bool {
    let mut depth = 2u32;
    let mut pieces = p.iter().peekable();
    while let Some(piece) = pieces.next() {
        match piece {
            Piece::Char('(') => depth += 1,
            Piece::Char(')') if depth == 2 => {
                return pieces.peek() == Some(&&Piece::Char(')'));
            }
            Piece::Char(')') => depth -= 1,
            _ => {}
        }
    }
    false
}

/// The characters after which a command starts (a brace group's `{` among them).
const BEFORE_COMMAND: &str = "\n;&|({!";

/// Whether the text written so far ends where a command starts: at the start, after one of
/// [`BEFORE_COMMAND`], or after a keyword such as `then` or `do`.
fn command_position(before: &str) -> bool {
    let t = before.trim_end_matches([' ', '\t']);
    match t.chars().last() {
        None => true,
        Some(c) if BEFORE_COMMAND.contains(c) => true,
        Some(_) => {
            let word = t.trim_end_matches(|c: char| c.is_ascii_alphanumeric());
            let keyword = &t[word.len()..];
            ["then", "do", "else", "elif", "if", "while", "until", "time"].contains(&keyword)
                && word
                    .chars()
                    .last()
                    .is_none_or(|b| b.is_whitespace() || ";&|(".contains(b))
        }
    }
}

/// Whether `p` (just after a first letter) goes on with `rest` and ends a word there.
fn word_at(p: &[Piece<'_>], rest: &str) -> bool {
    let n = rest.chars().count();
    rest.chars()
        .zip(p)
        .all(|(c, piece)| *piece == Piece::Char(c))
        && p.len() >= n
        && match p.get(n) {
            None => true,
            Some(Piece::Char(c)) => c.is_whitespace() || ";&|)".contains(*c),
            Some(Piece::Ref(_)) => false,
        }
}

/// After `<<`: reads `-`, blanks and the delimiter word (copying them to `out`); the
/// here-document it starts, or `None` for `<<<` or a missing word.
fn here_doc_operator(p: &[Piece<'_>], i: &mut usize, out: &mut String) -> Option<HereDoc> {
    let take = |i: &mut usize, out: &mut String| -> Option<char> {
        match p.get(*i) {
            Some(Piece::Char(c)) => {
                out.push(*c);
                *i += 1;
                Some(*c)
            }
            _ => None,
        }
    };
    let peek = |i: usize| match p.get(i) {
        Some(Piece::Char(c)) => Some(*c),
        _ => None,
    };
    if peek(*i) == Some('<') {
        take(i, out);
        return None;
    }
    let strip_tabs = peek(*i) == Some('-');
    if strip_tabs {
        take(i, out);
    }
    while matches!(peek(*i), Some(' ' | '\t')) {
        take(i, out);
    }
    let mut delimiter = String::new();
    let mut quoted = false;
    let mut quote: Option<char> = None;
    while let Some(c) = peek(*i) {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => delimiter.push(c),
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                quoted = true;
            }
            None if c == '\\' => {
                quoted = true;
                take(i, out);
                match peek(*i) {
                    Some(e) => delimiter.push(e),
                    None => break,
                }
            }
            None if c.is_whitespace() || ";&|<>()".contains(c) => break,
            None => delimiter.push(c),
        }
        take(i, out);
    }
    (!delimiter.is_empty()).then_some(HereDoc {
        delimiter,
        strip_tabs,
        expands: !quoted,
    })
}

/// When the line starting `p` ends here-document `h`: how many pieces it has (its newline
/// included).
fn delimiter_line(p: &[Piece<'_>], h: &HereDoc) -> Option<usize> {
    let mut line = String::new();
    let mut n = 0;
    for piece in p {
        n += 1;
        match piece {
            Piece::Char('\n') => break,
            Piece::Char(c) => line.push(*c),
            Piece::Ref(_) => return None,
        }
    }
    let text = if h.strip_tabs {
        line.trim_start_matches('\t')
    } else {
        line.as_str()
    };
    (text == h.delimiter).then_some(n)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn script(command: &str, values: &[(&str, &str)]) -> String {
        remote_script(command, |n| {
            values
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        })
        .unwrap()
    }

    #[test]
    fn values_are_assigned_in_single_quotes_and_never_pasted_into_the_command() {
        assert_eq!(
            script("echo \"a ${V}\" '${V}' ${V} $$HOME ${W}", &[("V", "x'; rm -rf /; '")]),
            r"PICOFLOW_REF_1='x'\''; rm -rf /; '\'''; PICOFLOW_REF_2=''; export PICOFLOW_REF_1 PICOFLOW_REF_2; echo ${q}a ${PICOFLOW_REF_1}${q} '${PICOFLOW_REF_1}' ${q}${PICOFLOW_REF_1}${q} $HOME ${q}${PICOFLOW_REF_2}${q}"
                .replace("${q}", "\"")
        );
        // Without references the command is sent as written, `$$` as `$`.
        assert_eq!(
            script("echo $$HOME ${not-a-name}", &[]),
            "echo $HOME ${not-a-name}"
        );
        assert!(remote_script("echo ${V}", |_| Some("a\0b".into()))
            .unwrap_err()
            .contains("NUL"));
    }

    #[test]
    fn references_are_rewritten_for_their_quoting() {
        let r = |c: &str| rewrite(c, |n| n.to_uppercase());
        // Command substitution, backquotes, parameter expansion, nested double quotes.
        assert_eq!(r("echo $(cat ${f})"), "echo $(cat \"${F}\")");
        assert_eq!(
            r("echo \"$(cat \"${f}\") ${g}\""),
            "echo \"$(cat \"${F}\") ${G}\""
        );
        assert_eq!(
            r("echo `cat ${f}` $((1 + 2)) ${g}"),
            "echo `cat \"${F}\"` $((1 + 2)) \"${G}\""
        );
        assert_eq!(
            r("echo $${X:-${v}} \"$${X:-${v}}\""),
            "echo ${X:-\"${V}\"} \"${X:-${V}}\""
        );
        // Escaped, in $'…' and after a comment's quote: literal or unaffected.
        assert_eq!(
            r("echo \\${v} $'it\\'s ${v}' ${w}"),
            "echo \\${V} $'it\\'s ${V}' \"${W}\""
        );
        assert_eq!(r("# don't\necho ${v}"), "# don't\necho \"${V}\"");
        assert_eq!(r("echo a#b ${v}"), "echo a#b \"${V}\"");
        // Here-documents: expanding, quoted, with tabs stripped, two on one line.
        assert_eq!(
            r("cat <<EOF > f\n'${v}' \"x\"\nEOF\necho ${w}"),
            "cat <<EOF > f\n'${V}' \"x\"\nEOF\necho \"${W}\""
        );
        assert_eq!(
            r("cat <<-'E' # it's\n\t${v}\n\tE\necho ${w}"),
            "cat <<-'E' # it's\n\t${V}\n\tE\necho \"${W}\""
        );
        assert_eq!(
            r("cat <<A <<\"B\"\n${v}\nA\n${w}\nB\n${x}"),
            "cat <<A <<\"B\"\n${V}\nA\n${W}\nB\n\"${X}\""
        );
        assert_eq!(r("cat <<< ${v}"), "cat <<< \"${V}\"");
    }

    /// `<<` in arithmetic is a shift, not a here-document; a case pattern's `)` does not
    /// close a command substitution.
    #[test]
    fn arithmetic_and_case_patterns_do_not_confuse_the_quoting() {
        let r = |c: &str| rewrite(c, |n| n.to_uppercase());
        assert_eq!(
            r("x=$(( 1 << 2 ))\necho glob:${v}"),
            "x=$(( 1 << 2 ))\necho glob:\"${V}\""
        );
        assert_eq!(
            r("echo \"$(( (1 + 2) << 2 )) ${v}\" $(( ${v} + 1 )) ${w}"),
            "echo \"$(( (1 + 2) << 2 )) ${V}\" $(( ${V} + 1 )) \"${W}\""
        );
        // Not arithmetic: a subshell in a command substitution.
        assert_eq!(
            r("echo $((echo a) ; echo ${v}) ${w}"),
            "echo $((echo a) ; echo \"${V}\") \"${W}\""
        );
        assert_eq!(
            r("cat <<E\n$(( 1 << 2 )) ${v}\nE\necho ${w}"),
            "cat <<E\n$(( 1 << 2 )) ${V}\nE\necho \"${W}\""
        );
        // bash's arithmetic command (two subshells for a POSIX shell): quoted either way.
        assert_eq!(
            r("(( x << 2 )) && (( ${v} > 0 ))\necho ${w}"),
            "(( x << 2 )) && (( \"${V}\" > 0 ))\necho \"${W}\""
        );
        assert_eq!(
            r("if true; then ((x<<=1)); fi\necho ${w}"),
            "if true; then ((x<<=1)); fi\necho \"${W}\""
        );
        // `let` with a quoted expression (unquoted, `let x=1<<2` is a here-document in
        // bash too).
        assert_eq!(
            r("let \"x = 1 << 2\"\necho ${w}"),
            "let \"x = 1 << 2\"\necho \"${W}\""
        );
        // case … esac in a command substitution, both pattern forms; `case` as a word.
        assert_eq!(
            r("echo \"$(case x in a) echo ${v};; (b) echo;; esac) ${w}\" ${x}"),
            "echo \"$(case x in a) echo \"${V}\";; (b) echo;; esac) ${W}\" \"${X}\""
        );
        assert_eq!(
            r("echo \"$(echo case x in a) ${w}\" ${x}"),
            "echo \"$(echo case x in a) ${W}\" \"${X}\""
        );
        assert_eq!(
            r("y=$(if true; then case 1 in 1) echo ${v};; esac; fi) ${w}"),
            "y=$(if true; then case 1 in 1) echo \"${V}\";; esac; fi) \"${W}\""
        );
    }

    /// Places a command starts (after `{`, `while`, `do`), backquotes inside double quotes
    /// and an escaped newline: each reference is written for the quoting it is in.
    #[test]
    fn command_positions_backquotes_and_escaped_newlines() {
        let r = |c: &str| rewrite(c, |n| n.to_uppercase());
        assert_eq!(r("{ (( ${v} > 0 )); }"), "{ (( \"${V}\" > 0 )); }");
        assert_eq!(
            r("while (( ${v} )); do echo ${w}; done"),
            "while (( \"${V}\" )); do echo \"${W}\"; done"
        );
        // Not where a command starts: `((` is two subshells' text, the reference quoted.
        assert_eq!(r("echo x ((${v}))"), "echo x ((\"${V}\"))");
        assert_eq!(
            r("echo \"`echo ${v}` ${w}\" '`${x}`'"),
            "echo \"`echo \"${V}\"` ${W}\" '`${X}`'"
        );
        assert_eq!(r("echo \\\n${v}"), "echo \\\n\"${V}\"");
        assert_eq!(r("echo ${v}#${w} # ${x}"), "echo \"${V}\"#\"${W}\" # ${X}");
    }

    /// The same, run: a value with blanks and a glob stays one word, under every local
    /// POSIX shell (and bash's `((…))` under bash).
    #[test]
    fn arithmetic_and_case_scripts_keep_values_whole_under_every_local_shell() {
        let value = "-la /etc/host*  two";
        let command =
            "x=$(( 1 << 2 ))\nprintf '%s|' ${V} \"$(case x in x) printf %s ${V};; esac)\" \"$x\"";
        let bash_only = "(( y = 1 << 2 ))\nprintf '%s|' ${V} \"$y\"";
        for (sh, command, expected) in [
            ("/bin/sh", command, format!("{value}|{value}|4|")),
            ("/bin/dash", command, format!("{value}|{value}|4|")),
            ("/bin/bash", command, format!("{value}|{value}|4|")),
            ("/bin/busybox", command, format!("{value}|{value}|4|")),
            ("/bin/bash", bash_only, format!("{value}|4|")),
        ] {
            if !Path::new(sh).exists() {
                eprintln!("{sh} is not installed here: not tried");
                continue;
            }
            let script = remote_script(command, |_| Some(value.to_string())).unwrap();
            let mut cmd = std::process::Command::new(sh);
            if sh.ends_with("busybox") {
                cmd.arg("sh");
            }
            let out = cmd.arg("-c").arg(&script).output().unwrap();
            assert!(out.status.success(), "{sh}: {out:?}");
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                expected,
                "{sh}: {script}"
            );
        }
    }

    /// The script runs under the POSIX shells a remote host may have as login shell, with
    /// a hostile value arriving as data in every quoting and running nothing.
    #[test]
    fn the_script_is_safe_under_every_local_posix_shell() {
        let dir = std::env::temp_dir().join(format!("pf-script-{}", crate::events::new_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.display();
        let value = format!(
            "a'b\"c $(touch {d}/P1) `touch {d}/P2` x; touch {d}/P3 #\n'; touch {d}/P4; '\"\\ * $HOME"
        );
        let command =
            "printf '%s|' \"${V}\" ${V} '${V}' \"$(printf %s ${V})\"\ncat <<EOF\n${V}\nEOF";
        let script = remote_script(command, |_| Some(value.clone())).unwrap();
        let expected = format!("{value}|{value}|${{PICOFLOW_REF_1}}|{value}|{value}\n");
        let mut shells = vec!["/bin/sh"];
        for sh in ["/bin/dash", "/bin/bash", "/bin/busybox"] {
            if Path::new(sh).exists() {
                shells.push(sh);
            } else {
                eprintln!("{sh} is not installed here: not tried");
            }
        }
        for sh in shells {
            let mut cmd = std::process::Command::new(sh);
            if sh.ends_with("busybox") {
                cmd.arg("sh");
            }
            let out = cmd.arg("-c").arg(&script).output().unwrap();
            assert!(out.status.success(), "{sh}: {out:?}");
            assert_eq!(String::from_utf8_lossy(&out.stdout), expected, "{sh}");
            let made: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
            assert!(made.is_empty(), "{sh} ran injected code: {made:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
