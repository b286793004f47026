//! The halt rule of `spark-fleet rollout` (`--halt-when`): its grammar, the
//! parser with typed errors, and evaluation over one wave's figures.
//!
//! Owns only the language. Pure: no IO, no clock. What the figures mean and
//! where they come from is `fleet::rollout`'s business.
//!
//! ```text
//! rule       := and ( "||" and )*
//! and        := term ( "&&" term )*
//! term       := "(" rule ")" | comparison
//! comparison := metric op threshold
//! metric     := rolled_back | failed | fallback | offline | agreement
//! op         := ">" | ">=" | "<" | "<="
//! threshold  := number "%"          (rolled_back, failed, fallback, offline: share of the wave)
//!             | number ["%"]        (agreement: 0..1, or a percentage)
//! ```
//!
//! Evaluation is three-valued: a comparison whose metric no device reported
//! (`agreement` until a device of the wave sent a shadow report) is *unknown*. `||` is
//! true when any side is true, `&&` false when any side is false; otherwise
//! unknown propagates. Only a rule that is *true* halts.

use std::fmt;

/// Longest rule accepted (a rule is typed by an operator, not generated).
pub const MAX_RULE_BYTES: usize = 1024;
/// Deepest nesting of parentheses accepted.
const MAX_DEPTH: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    RolledBack,
    Failed,
    Fallback,
    Offline,
    /// Shadow agreement: the wave's shadow reports, weighted by frames compared.
    Agreement,
}

impl Metric {
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::RolledBack => "rolled_back",
            Metric::Failed => "failed",
            Metric::Fallback => "fallback",
            Metric::Offline => "offline",
            Metric::Agreement => "agreement",
        }
    }

    fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "rolled_back" => Metric::RolledBack,
            "failed" => Metric::Failed,
            "fallback" => Metric::Fallback,
            "offline" => Metric::Offline,
            "agreement" => Metric::Agreement,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Gt,
    Ge,
    Lt,
    Le,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
        }
    }

    fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Op::Gt => a > b,
            Op::Ge => a >= b,
            Op::Lt => a < b,
            Op::Le => a <= b,
        }
    }
}

/// A parsed rule. Thresholds are stored as fractions (`2%` → 0.02).
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    Cmp { metric: Metric, op: Op, threshold: f64 },
    Or(Box<Rule>, Box<Rule>),
    And(Box<Rule>, Box<Rule>),
}

/// Why a rule does not parse; `at` is the byte offset in the rule.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuleError {
    #[error("the halt rule is empty")]
    Empty,
    #[error("the halt rule is {0} bytes (limit {MAX_RULE_BYTES})")]
    TooLong(usize),
    #[error("unexpected {found:?} at byte {at}: expected {expected}")]
    Unexpected { at: usize, found: String, expected: &'static str },
    #[error("unknown metric {name:?} at byte {at} (known: rolled_back, failed, fallback, offline, agreement)")]
    UnknownMetric { at: usize, name: String },
    #[error(
        "{metric} is a share of the wave: write its threshold as a percentage (e.g. `{metric} > 2%`), at byte {at}"
    )]
    PercentRequired { at: usize, metric: &'static str },
    #[error("threshold {value} at byte {at} is outside 0..=100%")]
    OutOfRange { at: usize, value: String },
    #[error("parentheses nested deeper than {MAX_DEPTH}")]
    TooDeep,
}

/// The figures of one wave a rule reads: shares in 0..=1, `None` when not
/// available (no judged device, or no device reported the metric).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Shares {
    pub rolled_back: Option<f64>,
    pub failed: Option<f64>,
    pub fallback: Option<f64>,
    pub offline: Option<f64>,
    pub agreement: Option<f64>,
}

impl Shares {
    fn get(&self, m: Metric) -> Option<f64> {
        match m {
            Metric::RolledBack => self.rolled_back,
            Metric::Failed => self.failed,
            Metric::Fallback => self.fallback,
            Metric::Offline => self.offline,
            Metric::Agreement => self.agreement,
        }
    }
}

/// Three-valued result of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truth {
    True,
    False,
    Unknown,
}

impl Rule {
    pub fn parse(text: &str) -> Result<Rule, RuleError> {
        if text.len() > MAX_RULE_BYTES {
            return Err(RuleError::TooLong(text.len()));
        }
        let toks = lex(text)?;
        if toks.is_empty() {
            return Err(RuleError::Empty);
        }
        let mut p = Parser { toks, pos: 0, end: text.len() };
        let rule = p.rule(0)?;
        match p.toks.get(p.pos) {
            None => Ok(rule),
            Some(t) => Err(t.unexpected("`||`, `&&` or the end")),
        }
    }

    pub fn eval(&self, s: &Shares) -> Truth {
        match self {
            Rule::Cmp { metric, op, threshold } => match s.get(*metric) {
                Some(v) if op.holds(v, *threshold) => Truth::True,
                Some(_) => Truth::False,
                None => Truth::Unknown,
            },
            Rule::Or(a, b) => match (a.eval(s), b.eval(s)) {
                (Truth::True, _) | (_, Truth::True) => Truth::True,
                (Truth::False, Truth::False) => Truth::False,
                _ => Truth::Unknown,
            },
            Rule::And(a, b) => match (a.eval(s), b.eval(s)) {
                (Truth::False, _) | (_, Truth::False) => Truth::False,
                (Truth::True, Truth::True) => Truth::True,
                _ => Truth::Unknown,
            },
        }
    }

    /// The metrics the rule reads, in order of appearance.
    pub fn metrics(&self) -> Vec<Metric> {
        let mut out = Vec::new();
        self.collect(&mut out);
        out
    }

    fn collect(&self, out: &mut Vec<Metric>) {
        match self {
            Rule::Cmp { metric, .. } => {
                if !out.contains(metric) {
                    out.push(*metric)
                }
            }
            Rule::Or(a, b) | Rule::And(a, b) => {
                a.collect(out);
                b.collect(out);
            }
        }
    }
}

impl fmt::Display for Rule {
    /// The canonical text (parses back to the same rule).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Cmp { metric, op, threshold } => {
                write!(f, "{} {} {}%", metric.as_str(), op.as_str(), threshold * 100.0)
            }
            Rule::Or(a, b) => write!(f, "{a} || {b}"),
            Rule::And(a, b) => {
                let side = |r: &Rule, f: &mut fmt::Formatter<'_>| match r {
                    Rule::Or(..) => write!(f, "({r})"),
                    _ => write!(f, "{r}"),
                };
                side(a, f)?;
                write!(f, " && ")?;
                side(b, f)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Num { text: String, percent: bool },
    Op(Op),
    Or,
    And,
    Open,
    Close,
}

#[derive(Debug, Clone)]
struct Spanned {
    tok: Tok,
    at: usize,
}

impl Spanned {
    fn unexpected(&self, expected: &'static str) -> RuleError {
        let found = match &self.tok {
            Tok::Ident(s) => s.clone(),
            Tok::Num { text, percent } => format!("{text}{}", if *percent { "%" } else { "" }),
            Tok::Op(o) => o.as_str().into(),
            Tok::Or => "||".into(),
            Tok::And => "&&".into(),
            Tok::Open => "(".into(),
            Tok::Close => ")".into(),
        };
        RuleError::Unexpected { at: self.at, found, expected }
    }
}

fn lex(text: &str) -> Result<Vec<Spanned>, RuleError> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let at = i;
        let two = b.get(i..i + 2);
        let tok = match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'(' => Tok::Open,
            b')' => Tok::Close,
            _ if two == Some(b"||") => Tok::Or,
            _ if two == Some(b"&&") => Tok::And,
            _ if two == Some(b">=") => Tok::Op(Op::Ge),
            _ if two == Some(b"<=") => Tok::Op(Op::Le),
            b'>' => Tok::Op(Op::Gt),
            b'<' => Tok::Op(Op::Lt),
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => {
                let end =
                    b[i..].iter().position(|c| !(c.is_ascii_alphanumeric() || *c == b'_')).map_or(b.len(), |n| i + n);
                out.push(Spanned { tok: Tok::Ident(text[i..end].to_string()), at });
                i = end;
                continue;
            }
            b'0'..=b'9' | b'.' => {
                let end = b[i..].iter().position(|c| !(c.is_ascii_digit() || *c == b'.')).map_or(b.len(), |n| i + n);
                let percent = b.get(end) == Some(&b'%');
                out.push(Spanned { tok: Tok::Num { text: text[i..end].to_string(), percent }, at });
                i = end + usize::from(percent);
                continue;
            }
            _ => {
                let found: String = text[i..].chars().next().map(String::from).unwrap_or_default();
                return Err(RuleError::Unexpected {
                    at,
                    found,
                    expected: "a metric, a number, an operator or a parenthesis",
                });
            }
        };
        i += if matches!(tok, Tok::Or | Tok::And | Tok::Op(Op::Ge | Op::Le)) { 2 } else { 1 };
        out.push(Spanned { tok, at });
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Spanned>,
    pos: usize,
    end: usize,
}

impl Parser {
    fn next(&mut self, expected: &'static str) -> Result<Spanned, RuleError> {
        let t = self.toks.get(self.pos).cloned().ok_or(RuleError::Unexpected {
            at: self.end,
            found: "the end".into(),
            expected,
        })?;
        self.pos += 1;
        Ok(t)
    }

    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.tok)
    }

    fn rule(&mut self, depth: usize) -> Result<Rule, RuleError> {
        let mut left = self.and(depth)?;
        while self.peek() == Some(&Tok::Or) {
            self.pos += 1;
            left = Rule::Or(Box::new(left), Box::new(self.and(depth)?));
        }
        Ok(left)
    }

    fn and(&mut self, depth: usize) -> Result<Rule, RuleError> {
        let mut left = self.term(depth)?;
        while self.peek() == Some(&Tok::And) {
            self.pos += 1;
            left = Rule::And(Box::new(left), Box::new(self.term(depth)?));
        }
        Ok(left)
    }

    fn term(&mut self, depth: usize) -> Result<Rule, RuleError> {
        let t = self.next("a metric or `(`")?;
        let name = match t.tok {
            Tok::Open => {
                if depth >= MAX_DEPTH {
                    return Err(RuleError::TooDeep);
                }
                let inner = self.rule(depth + 1)?;
                let close = self.next("`)`")?;
                if close.tok != Tok::Close {
                    return Err(close.unexpected("`)`"));
                }
                return Ok(inner);
            }
            Tok::Ident(ref name) => name.clone(),
            _ => return Err(t.unexpected("a metric or `(`")),
        };
        let metric = Metric::from_name(&name).ok_or(RuleError::UnknownMetric { at: t.at, name })?;
        let o = self.next("a comparison (`>`, `>=`, `<`, `<=`)")?;
        let Tok::Op(op) = o.tok else { return Err(o.unexpected("a comparison (`>`, `>=`, `<`, `<=`)")) };
        let n = self.next("a threshold")?;
        let Tok::Num { ref text, percent } = n.tok else { return Err(n.unexpected("a threshold")) };
        let value: f64 = text.parse().map_err(|_| n.unexpected("a threshold"))?;
        let threshold = match (metric, percent) {
            (_, true) => value / 100.0,
            (Metric::Agreement, false) => value,
            (m, false) => return Err(RuleError::PercentRequired { at: n.at, metric: m.as_str() }),
        };
        if !(0.0..=1.0).contains(&threshold) {
            return Err(RuleError::OutOfRange { at: n.at, value: format!("{text}{}", if percent { "%" } else { "" }) });
        }
        Ok(Rule::Cmp { metric, op, threshold })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(rb: f64, fb: f64, off: f64) -> Shares {
        Shares { rolled_back: Some(rb), failed: Some(0.0), fallback: Some(fb), offline: Some(off), agreement: None }
    }

    #[test]
    fn the_issues_rule_parses_and_halts_on_any_side() {
        let r = Rule::parse("rolled_back > 2% || fallback > 5% || offline > 5%").unwrap();
        assert_eq!(r.metrics(), [Metric::RolledBack, Metric::Fallback, Metric::Offline]);
        assert_eq!(r.eval(&shares(0.0, 0.0, 0.0)), Truth::False);
        assert_eq!(r.eval(&shares(0.02, 0.05, 0.05)), Truth::False, "thresholds are strict with >");
        assert_eq!(r.eval(&shares(0.1, 0.0, 0.0)), Truth::True);
        assert_eq!(r.eval(&shares(0.0, 0.0, 0.06)), Truth::True);
        assert_eq!(Rule::parse(&r.to_string()).unwrap(), r);
    }

    #[test]
    fn and_binds_tighter_than_or_and_parentheses_group() {
        let r = Rule::parse("rolled_back>=10% && offline>1% || failed > 50%").unwrap();
        assert!(matches!(r, Rule::Or(..)));
        let p = Rule::parse("rolled_back >= 10% && (offline > 1% || failed > 50%)").unwrap();
        assert!(matches!(p, Rule::And(..)));
        assert_eq!(Rule::parse(&p.to_string()).unwrap(), p);
        let s = Shares { failed: Some(0.6), ..shares(0.0, 0.0, 0.0) };
        assert_eq!((r.eval(&s), p.eval(&s)), (Truth::True, Truth::False));
    }

    #[test]
    fn agreement_parses_and_is_unknown_until_reported() {
        let r = Rule::parse("agreement < 0.8").unwrap();
        assert_eq!(r, Rule::parse("agreement < 80%").unwrap());
        assert_eq!(r.eval(&shares(0.0, 0.0, 0.0)), Truth::Unknown);
        assert_eq!(r.eval(&Shares { agreement: Some(0.5), ..Shares::default() }), Truth::True);
        let either = Rule::parse("agreement < 0.8 || rolled_back > 2%").unwrap();
        assert_eq!(either.eval(&shares(0.0, 0.0, 0.0)), Truth::Unknown);
        assert_eq!(either.eval(&shares(0.5, 0.0, 0.0)), Truth::True, "a true side halts whatever is unknown");
        let both = Rule::parse("agreement < 0.8 && rolled_back > 2%").unwrap();
        assert_eq!(both.eval(&shares(0.0, 0.0, 0.0)), Truth::False, "a false side settles `&&`");
    }

    #[test]
    fn bad_rules_are_refused_with_their_reason() {
        type Check = fn(&RuleError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| *e == RuleError::Empty),
            ("   ", |e| *e == RuleError::Empty),
            ("rolled_back > 2", |e| matches!(e, RuleError::PercentRequired { metric: "rolled_back", .. })),
            ("crashes > 2%", |e| matches!(e, RuleError::UnknownMetric { at: 0, .. })),
            ("rolled_back > 200%", |e| matches!(e, RuleError::OutOfRange { .. })),
            ("agreement < 1.5", |e| matches!(e, RuleError::OutOfRange { .. })),
            ("rolled_back > 2% ||", |e| matches!(e, RuleError::Unexpected { at: 19, .. })),
            ("rolled_back 2%", |e| matches!(e, RuleError::Unexpected { at: 12, .. })),
            ("rolled_back = 2%", |e| matches!(e, RuleError::Unexpected { at: 12, .. })),
            ("(rolled_back > 2%", |e| matches!(e, RuleError::Unexpected { .. })),
            ("rolled_back > 2%)", |e| matches!(e, RuleError::Unexpected { at: 16, .. })),
            ("rolled_back > 1.2.3%", |e| matches!(e, RuleError::Unexpected { .. })),
            ("rolled_back > 2% | offline > 1%", |e| matches!(e, RuleError::Unexpected { .. })),
            ("rolled_back > 2% offline > 1%", |e| matches!(e, RuleError::Unexpected { .. })),
        ];
        for (text, ok) in cases {
            let e = Rule::parse(text).expect_err(text);
            assert!(ok(&e), "{text:?}: {e:?}");
        }
        assert_eq!(Rule::parse(&"(".repeat(40)), Err(RuleError::TooDeep));
        assert!(matches!(Rule::parse(&" ".repeat(MAX_RULE_BYTES + 1)), Err(RuleError::TooLong(_))));
        // Non-ASCII never panics on a char boundary.
        assert!(Rule::parse("rolled_back > 2% || é").is_err());
    }

    proptest::proptest! {
        /// Whatever an operator types, the parser answers (never panics),
        /// and a rule it accepts prints back to the same rule.
        #[test]
        fn any_text_parses_or_is_refused_and_accepted_rules_round_trip(text in "[a-z_ ()|&<>=0-9.%é]{0,60}") {
            if let Ok(r) = Rule::parse(&text) {
                proptest::prop_assert_eq!(Rule::parse(&r.to_string()), Ok(r));
            }
        }

        #[test]
        fn generated_rules_round_trip(parts in proptest::collection::vec((0usize..5, 0usize..4, 0u32..=100, proptest::bool::ANY), 1..6)) {
            let metrics = ["rolled_back", "failed", "fallback", "offline", "agreement"];
            let ops = [">", ">=", "<", "<="];
            let text = parts
                .iter()
                .enumerate()
                .map(|(i, (m, o, v, and))| {
                    let join = if i == 0 { "" } else if *and { " && " } else { " || " };
                    format!("{join}{} {} {v}%", metrics[*m], ops[*o])
                })
                .collect::<String>();
            let r = Rule::parse(&text).expect("a generated rule parses");
            proptest::prop_assert_eq!(Rule::parse(&r.to_string()), Ok(r));
        }
    }
}
