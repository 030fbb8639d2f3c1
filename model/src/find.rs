//! The find/hide expression language of the web view (and the console): `app = reviews`,
//! `error > 1`, `rps < 0.1`, `version = v3 and error > 0`, `not (ns = shop or app ~ pay)`.
//!
//! Fields: `app`, `version`, `namespace` (`ns`), `cluster`, `id`, `kind`, `health` (text), and `rps`,
//! `error` (error %), `success` (success %), `requests`, `p50`, `p95`, `p99`, `mtls` (mTLS %)
//! (numbers). Operators: `=`, `!=`, `~` (contains), `<`, `<=`, `>`, `>=`; `and`, `or`, `not`,
//! parentheses. A node is judged by its inbound stats (outbound for a node that only calls); an edge
//! by its own stats, and a text field matches an edge when it matches either end.

use crate::graph::{Edge, Node};
use crate::stats::Stats;

/// A parsed expression over the fields `F` (the graph's [`Field`] unless said otherwise; a tap's
/// are [`crate::tap::TapField`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Expr<F = Field> {
    /// `a and b`.
    And(Box<Expr<F>>, Box<Expr<F>>),
    /// `a or b`.
    Or(Box<Expr<F>>, Box<Expr<F>>),
    /// `not a`.
    Not(Box<Expr<F>>),
    /// `field op value`.
    Cmp(F, Op, Value),
}

/// The fields an expression can name: one parser serves the graph's find/hide and the tap's
/// `--find`.
pub trait Fields: Copy {
    /// The field a (lower-case) word names.
    fn parse(word: &str) -> Option<Self>;
    /// Whether it takes numbers (and `<`, `>`), else text.
    fn numeric(self) -> bool;
    /// The fields, for the error that names an unknown one.
    const EXPECTED: &'static str;
}

/// A field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// App name.
    App,
    /// Version label (empty when none).
    Version,
    /// Namespace of the node.
    Namespace,
    /// Cluster (empty in a one-cluster mesh).
    Cluster,
    /// Node id.
    Id,
    /// Node kind.
    Kind,
    /// `healthy`, `warning`, `failing` or `idle`.
    Health,
    /// Requests per second.
    Rps,
    /// Error percent.
    Error,
    /// Success percent.
    Success,
    /// Requests in the window.
    Requests,
    /// Median latency, ms.
    P50,
    /// 95th percentile, ms.
    P95,
    /// 99th percentile, ms.
    P99,
    /// mTLS percent.
    Mtls,
}

impl Fields for Field {
    const EXPECTED: &'static str =
        "app, version, namespace, cluster, id, kind, health, rps, error, success, requests, p50, p95, p99 or mtls";

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "app" | "service" => Field::App,
            "version" => Field::Version,
            "namespace" | "ns" => Field::Namespace,
            "cluster" => Field::Cluster,
            "id" | "node" => Field::Id,
            "kind" => Field::Kind,
            "health" => Field::Health,
            "rps" => Field::Rps,
            "error" | "errors" => Field::Error,
            "success" => Field::Success,
            "requests" => Field::Requests,
            "p50" => Field::P50,
            "p95" => Field::P95,
            "p99" => Field::P99,
            "mtls" => Field::Mtls,
            _ => return None,
        })
    }

    fn numeric(self) -> bool {
        !matches!(
            self,
            Field::App | Field::Version | Field::Namespace | Field::Cluster | Field::Id | Field::Kind | Field::Health
        )
    }
}

/// An operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `=`.
    Eq,
    /// `!=`.
    Ne,
    /// `~`: contains.
    Contains,
    /// `<`.
    Lt,
    /// `<=`.
    Le,
    /// `>`.
    Gt,
    /// `>=`.
    Ge,
}

/// A literal.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A number.
    Num(f64),
    /// A word or a quoted string.
    Text(String),
}

/// A parse error with the character position it is at.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("at {at}: {message}")]
pub struct FindError {
    /// Character offset.
    pub at: usize,
    /// What was expected.
    pub message: String,
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Word(String),
    Quoted(String),
    Op(Op),
    Open,
    Close,
}

fn lex(s: &str) -> Result<Vec<(usize, Tok)>, FindError> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        match c {
            ' ' | '\t' | '\n' => i += 1,
            '(' => {
                out.push((start, Tok::Open));
                i += 1;
            }
            ')' => {
                out.push((start, Tok::Close));
                i += 1;
            }
            '=' | '~' => {
                out.push((start, Tok::Op(if c == '=' { Op::Eq } else { Op::Contains })));
                i += if chars.get(i + 1) == Some(&'=') && c == '=' { 2 } else { 1 };
            }
            '!' | '<' | '>' => {
                let eq = chars.get(i + 1) == Some(&'=');
                let op = match (c, eq) {
                    ('!', true) => Op::Ne,
                    ('<', true) => Op::Le,
                    ('<', false) => Op::Lt,
                    ('>', true) => Op::Ge,
                    ('>', false) => Op::Gt,
                    _ => return Err(FindError { at: start, message: "expected != ".into() }),
                };
                out.push((start, Tok::Op(op)));
                i += if eq { 2 } else { 1 };
            }
            '"' | '\'' => {
                let end = chars[i + 1..]
                    .iter()
                    .position(|&d| d == c)
                    .ok_or_else(|| FindError { at: start, message: "unterminated quote".into() })?;
                out.push((start, Tok::Quoted(chars[i + 1..i + 1 + end].iter().collect())));
                i += end + 2;
            }
            _ => {
                let len = chars[i..].iter().take_while(|d| !" \t\n()=~!<>\"'".contains(**d)).count();
                out.push((start, Tok::Word(chars[i..i + len].iter().collect())));
                i += len;
            }
        }
    }
    Ok(out)
}

struct Parser<F> {
    toks: Vec<(usize, Tok)>,
    pos: usize,
    end: usize,
    fields: std::marker::PhantomData<F>,
}

impl<F: Fields> Parser<F> {
    fn at(&self) -> usize {
        self.toks.get(self.pos).map_or(self.end, |t| t.0)
    }

    fn keyword(&mut self, k: &str) -> bool {
        if let Some((_, Tok::Word(w))) = self.toks.get(self.pos)
            && w.eq_ignore_ascii_case(k)
        {
            self.pos += 1;
            return true;
        }
        false
    }

    fn or(&mut self) -> Result<Expr<F>, FindError> {
        let mut e = self.and()?;
        while self.keyword("or") {
            e = Expr::Or(Box::new(e), Box::new(self.and()?));
        }
        Ok(e)
    }

    fn and(&mut self) -> Result<Expr<F>, FindError> {
        let mut e = self.unary()?;
        while self.keyword("and") {
            e = Expr::And(Box::new(e), Box::new(self.unary()?));
        }
        Ok(e)
    }

    fn unary(&mut self) -> Result<Expr<F>, FindError> {
        if self.keyword("not") {
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        if let Some((_, Tok::Open)) = self.toks.get(self.pos) {
            self.pos += 1;
            let e = self.or()?;
            return match self.toks.get(self.pos) {
                Some((_, Tok::Close)) => {
                    self.pos += 1;
                    Ok(e)
                }
                _ => Err(FindError { at: self.at(), message: "expected )".into() }),
            };
        }
        self.cmp()
    }

    fn cmp(&mut self) -> Result<Expr<F>, FindError> {
        let at = self.at();
        let field = match self.toks.get(self.pos) {
            Some((_, Tok::Word(w))) => F::parse(&w.to_ascii_lowercase())
                .ok_or_else(|| FindError { at, message: format!("unknown field {w:?}: expected {}", F::EXPECTED) })?,
            _ => return Err(FindError { at, message: format!("expected a field: {}", F::EXPECTED) }),
        };
        self.pos += 1;
        let op = match self.toks.get(self.pos) {
            Some((_, Tok::Op(op))) => *op,
            _ => return Err(FindError { at: self.at(), message: "expected an operator: = != ~ < <= > >=".into() }),
        };
        self.pos += 1;
        let at = self.at();
        let raw = match self.toks.get(self.pos) {
            Some((_, Tok::Word(w))) | Some((_, Tok::Quoted(w))) => w.clone(),
            _ => return Err(FindError { at, message: "expected a value".into() }),
        };
        self.pos += 1;
        let value = if field.numeric() {
            let n: f64 = raw
                .trim_end_matches('%')
                .trim_end_matches("ms")
                .parse()
                .map_err(|_| FindError { at, message: format!("{raw:?} is not a number") })?;
            Value::Num(n)
        } else {
            if matches!(op, Op::Lt | Op::Le | Op::Gt | Op::Ge) {
                return Err(FindError { at, message: "text fields take = != or ~".into() });
            }
            Value::Text(raw)
        };
        Ok(Expr::Cmp(field, op, value))
    }
}

/// Parses an expression over the graph's fields.
pub fn parse(s: &str) -> Result<Expr, FindError> {
    parse_fields(s)
}

/// Parses an expression over the fields `F`.
pub fn parse_fields<F: Fields>(s: &str) -> Result<Expr<F>, FindError> {
    let toks = lex(s)?;
    let end = s.chars().count();
    if toks.is_empty() {
        return Err(FindError { at: 0, message: "empty expression".into() });
    }
    let mut p = Parser { toks, pos: 0, end, fields: std::marker::PhantomData };
    let e = p.or()?;
    if p.pos < p.toks.len() {
        return Err(FindError { at: p.at(), message: "expected and, or, or the end".into() });
    }
    Ok(e)
}

fn num(stats: &Stats, f: Field) -> f64 {
    let lat = |g: fn(&crate::stats::LatencyMs) -> f64| stats.latency_ms.as_ref().map_or(0.0, g);
    match f {
        Field::Rps => stats.rps,
        Field::Error => stats.error_pct.unwrap_or(0.0),
        Field::Success => stats.success_pct.unwrap_or(100.0),
        Field::Requests => stats.requests as f64,
        Field::P50 => lat(|l| l.p50),
        Field::P95 => lat(|l| l.p95),
        Field::P99 => lat(|l| l.p99),
        Field::Mtls => stats.mtls_pct.unwrap_or(0.0),
        _ => 0.0,
    }
}

fn text(n: &Node, f: Field) -> String {
    match f {
        Field::App => n.app.clone(),
        Field::Version => n.version.clone().unwrap_or_default(),
        Field::Namespace => n.namespace.clone(),
        Field::Cluster => n.cluster.clone().unwrap_or_default(),
        Field::Id => n.id.clone(),
        Field::Kind => format!("{:?}", n.kind).to_lowercase(),
        Field::Health => format!("{:?}", n.health).to_lowercase(),
        _ => String::new(),
    }
}

/// `a op b` for numbers (`~` is never true of them).
pub fn compare_num(a: f64, op: Op, b: f64) -> bool {
    match op {
        Op::Eq => (a - b).abs() < 1e-9,
        Op::Ne => (a - b).abs() >= 1e-9,
        Op::Lt => a < b,
        Op::Le => a <= b,
        Op::Gt => a > b,
        Op::Ge => a >= b,
        Op::Contains => false,
    }
}

/// `a op b` for text: `=` and `!=` ignore case, `~` is a case-blind "contains".
pub fn compare_text(a: &str, op: Op, b: &str) -> bool {
    match op {
        Op::Eq => a.eq_ignore_ascii_case(b),
        Op::Ne => !a.eq_ignore_ascii_case(b),
        Op::Contains => a.to_lowercase().contains(&b.to_lowercase()),
        _ => false,
    }
}

impl<F: Copy> Expr<F> {
    /// Evaluates the expression, each comparison by `cmp(field, op, value)`.
    pub fn eval_by(&self, cmp: &impl Fn(F, Op, &Value) -> bool) -> bool {
        match self {
            Expr::And(a, b) => a.eval_by(cmp) && b.eval_by(cmp),
            Expr::Or(a, b) => a.eval_by(cmp) || b.eval_by(cmp),
            Expr::Not(a) => !a.eval_by(cmp),
            Expr::Cmp(f, op, v) => cmp(*f, *op, v),
        }
    }
}

impl Expr {
    fn eval(&self, stats: &Stats, ends: &[&Node]) -> bool {
        self.eval_by(&|f, op, v| match v {
            Value::Num(v) => compare_num(num(stats, f), op, *v),
            Value::Text(v) if op == Op::Ne => ends.iter().all(|n| compare_text(&text(n, f), op, v)),
            Value::Text(v) => ends.iter().any(|n| compare_text(&text(n, f), op, v)),
        })
    }

    /// Whether a node matches.
    pub fn matches_node(&self, n: &Node) -> bool {
        let stats = if n.inbound.requests == 0 && n.outbound.requests > 0 { &n.outbound } else { &n.inbound };
        self.eval(stats, &[n])
    }

    /// Whether a row of the workloads table matches (judged as its workload node).
    pub fn matches_row(&self, w: &crate::api::WorkloadRow) -> bool {
        let node = Node {
            id: w.id.clone(),
            namespace: w.namespace.clone(),
            app: w.app.clone(),
            version: w.version.clone(),
            kind: crate::graph::NodeKind::Workload,
            cluster: w.cluster.clone(),
            group: None,
            health: w.health,
            inbound: w.inbound.clone(),
            outbound: w.outbound.clone(),
        };
        self.matches_node(&node)
    }

    /// Whether an edge matches (text fields against either end).
    pub fn matches_edge(&self, e: &Edge, source: &Node, target: &Node) -> bool {
        self.eval(&e.stats, &[source, target])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::NodeKind;
    use crate::stats::Health;

    fn node(app: &str, version: &str, rps: f64, error: f64) -> Node {
        Node {
            id: format!("shop/{app}/{version}"),
            namespace: "shop".into(),
            app: app.into(),
            version: Some(version.into()),
            kind: NodeKind::Workload,
            cluster: None,
            group: None,
            health: Health::Healthy,
            inbound: Stats { requests: 10, rps, error_pct: Some(error), ..Stats::default() },
            outbound: Stats::default(),
        }
    }

    #[test]
    fn the_examples_match_what_they_say() {
        let v3 = node("reviews", "v3", 5.0, 2.0);
        let v1 = node("reviews", "v1", 0.05, 0.0);
        let pay = node("payments", "v1", 3.0, 0.0);
        let m = |e: &str, n: &Node| parse(e).unwrap().matches_node(n);
        assert!(m("app = reviews", &v3) && !m("app = reviews", &pay));
        assert!(m("error > 1", &v3) && !m("error > 1", &v1));
        assert!(m("rps < 0.1", &v1) && !m("rps < 0.1", &v3));
        assert!(m("version = v3 and error > 0", &v3) && !m("version = v3 and error > 0", &v1));
        assert!(m("(app = payments or version = v1) and rps >= 1", &pay));
        assert!(!m("(app = payments or version = v1) and rps >= 1", &v1));
        assert!(m("not app ~ rev", &pay) && m("APP = 'reviews'", &v1) && m("error >= 2%", &v3));
    }

    #[test]
    fn errors_say_where_and_what() {
        for (e, at, needle) in [
            ("", 0, "empty"),
            ("colour = red", 0, "unknown field"),
            ("app reviews", 4, "operator"),
            ("error >", 7, "expected a value"),
            ("rps > fast", 6, "not a number"),
            ("(app = a", 8, "expected )"),
            ("app = a b", 8, "the end"),
            ("app > a", 6, "text fields"),
            ("app = \"a", 6, "unterminated"),
        ] {
            let err = parse(e).unwrap_err();
            assert_eq!(err.at, at, "{e}: {err}");
            assert!(err.message.contains(needle), "{e}: {err}");
        }
    }
}
