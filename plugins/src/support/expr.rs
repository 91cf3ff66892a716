//! APISIX `vars` expressions (the lua-resty-expr subset in docs/plugins/traffic.md), parsed once at
//! prepare time and evaluated against a request's variables.
//!
//! ```text
//! Expr::parse(&serde_json::Value, &mut Budget) -> Result<Expr, ConfError>  // prepare time
//! Expr::matches(&self, &mut RequestCall<'_>) -> Result<bool, PluginError>  // per request (async)
//! ```
//!
//! Shapes accepted (JSON):
//! * `[var, op, value]` and `[var, "!", op, value]` (negated): one comparison.
//! * `[expr, expr, ...]`: all must match (an empty list always matches).
//! * `["AND", expr, ...]`, `["OR", expr, ...]`, `["!AND", ...]`, `["!OR", ...]`: logic, nestable.
//!
//! Operators: `==` `~=` (string equality, or numeric when the value is a JSON number), `>` `>=`
//! `<` `<=` (numeric; a variable that is not a number never matches), `~~` / `~*` (regex /
//! case-insensitive regex, Rust `regex` syntax: RE2-like, linear time, no look-around or
//! back-references), `in` (value is an array), `has` (the variable, read as the `, `-joined list
//! nginx makes of repeated headers, contains the value), `ipmatch` (value is an IP/CIDR or an
//! array of them).
//!
//! A nil variable matches only `~=` (nil is not equal to anything), as in lua-resty-expr; `!`
//! inverts whatever the comparison gives.
//!
//! Variables are fetched lazily, in evaluation order, so `OR` and `AND` short-circuit before a
//! variable that costs an `extra_info` round trip is asked for.

use std::net::IpAddr;

use ipnet::IpNet;
use regex::Regex;
use serde_json::Value;

use super::patterns::Budget;
use super::vars::Vars;
use ext_plugin_sdk::{ConfError, PluginError, RequestCall, Text};

/// Most comparisons one expression may hold. lua-resty-expr has no bound; an audit's conf with
/// 60 000 made prepare take 14 s. Real expressions hold a handful.
pub const MAX_COMPARISONS: usize = 256;

/// A parsed expression.
#[derive(Debug)]
pub struct Expr {
    root: Node,
    /// Distinct variable names, indexed by [`Cmp::var`].
    vars: Vec<Box<str>>,
}

#[derive(Debug)]
enum Node {
    All(Vec<Node>),
    Any(Vec<Node>),
    Not(Box<Node>),
    Cmp(Cmp),
}

#[derive(Debug)]
struct Cmp {
    var: usize,
    negate: bool,
    op: Op,
}

#[derive(Debug)]
enum Op {
    Eq(Scalar),
    Ne(Scalar),
    Gt(f64),
    Ge(f64),
    Lt(f64),
    Le(f64),
    Regex(Regex),
    In(Vec<Scalar>),
    Has(Box<str>),
    IpMatch(Vec<IpNet>),
}

/// A literal from the conf: numbers compare numerically, everything else as text.
#[derive(Debug)]
enum Scalar {
    Str(Box<str>),
    Num(f64),
}

/// Why one evaluation pass stopped: variable `n` has not been fetched yet.
struct NeedVar(usize);

impl Expr {
    /// Parses a `vars` value. The error names the offending part. Its regexes count against
    /// `budget`, the conf's.
    pub fn parse(value: &Value, budget: &mut Budget) -> Result<Expr, ConfError> {
        let mut p = Parser {
            vars: Vec::new(),
            comparisons: 0,
            budget,
        };
        let root = p.node(value)?;
        Ok(Expr { root, vars: p.vars })
    }

    /// Whether the request matches. Variables come from [`RequestCall::var`]: free for request
    /// data, one cached `extra_info` round trip for the others.
    pub async fn matches(&self, call: &mut RequestCall<'_>) -> Result<bool, PluginError> {
        self.matches_vars(call).await
    }

    /// [`Expr::matches`] against any source of variables (the response phase's too).
    pub async fn matches_vars(&self, call: &mut impl Vars) -> Result<bool, PluginError> {
        if self.vars.is_empty() {
            return Ok(self.root.eval(&[]).unwrap_or(false));
        }
        // One slot per distinct variable; an evaluation pass that reaches an unfetched variable
        // stops, the variable is fetched, and the pass restarts. Expressions are a handful of
        // comparisons, so restarting is cheaper than boxing a recursive async evaluator.
        let mut values: Vec<Option<Option<Text>>> = vec![None; self.vars.len()];
        loop {
            match self.root.eval(&values) {
                Ok(matched) => return Ok(matched),
                Err(NeedVar(i)) => values[i] = Some(call.var(&self.vars[i]).await?),
            }
        }
    }
}

impl Node {
    fn eval(&self, values: &[Option<Option<Text>>]) -> Result<bool, NeedVar> {
        Ok(match self {
            Node::All(nodes) => {
                for n in nodes {
                    if !n.eval(values)? {
                        return Ok(false);
                    }
                }
                true
            }
            Node::Any(nodes) => {
                for n in nodes {
                    if n.eval(values)? {
                        return Ok(true);
                    }
                }
                false
            }
            Node::Not(node) => !node.eval(values)?,
            Node::Cmp(cmp) => {
                let value = values.get(cmp.var).and_then(|v| v.as_ref());
                let value = value.ok_or(NeedVar(cmp.var))?;
                cmp.op.test(value.as_deref()) != cmp.negate
            }
        })
    }
}

impl Op {
    fn test(&self, value: Option<&str>) -> bool {
        let Some(v) = value else {
            return matches!(self, Op::Ne(_));
        };
        match self {
            Op::Eq(s) => s.equals(v),
            Op::Ne(s) => !s.equals(v),
            Op::Gt(n) => number(v).is_some_and(|x| x > *n),
            Op::Ge(n) => number(v).is_some_and(|x| x >= *n),
            Op::Lt(n) => number(v).is_some_and(|x| x < *n),
            Op::Le(n) => number(v).is_some_and(|x| x <= *n),
            Op::Regex(re) => re.is_match(v),
            Op::In(set) => set.iter().any(|s| s.equals(v)),
            Op::Has(item) => v.split(',').any(|part| part.trim() == &**item),
            Op::IpMatch(nets) => v
                .trim()
                .parse::<IpAddr>()
                .is_ok_and(|ip| nets.iter().any(|n| n.contains(&ip.to_canonical()))),
        }
    }
}

impl Scalar {
    fn equals(&self, v: &str) -> bool {
        match self {
            Scalar::Str(s) => **s == *v,
            Scalar::Num(n) => number(v) == Some(*n),
        }
    }
}

fn number(v: &str) -> Option<f64> {
    v.trim().parse().ok()
}

/// The state of one parse: the distinct variables, the comparisons so far, the regex budget.
struct Parser<'b> {
    vars: Vec<Box<str>>,
    comparisons: usize,
    budget: &'b mut Budget,
}

impl Parser<'_> {
    fn node(&mut self, value: &Value) -> Result<Node, ConfError> {
        let items = value
            .as_array()
            .ok_or_else(|| bad(value, "an expression must be an array"))?;
        match items.first() {
            None => Ok(Node::All(Vec::new())),
            Some(Value::Array(_)) => self.list(items).map(Node::All),
            Some(Value::String(head)) => match head.as_str() {
                "AND" | "OR" | "!AND" | "!OR" => {
                    let nodes = self.list(&items[1..])?;
                    if nodes.is_empty() {
                        return Err(bad(value, "a logical operator needs at least one operand"));
                    }
                    let node = if head.ends_with("AND") {
                        Node::All(nodes)
                    } else {
                        Node::Any(nodes)
                    };
                    Ok(if head.starts_with('!') {
                        Node::Not(Box::new(node))
                    } else {
                        node
                    })
                }
                _ => self.cmp(items).map(Node::Cmp),
            },
            Some(_) => Err(bad(
                value,
                "an expression starts with a variable name or a list",
            )),
        }
    }

    fn list(&mut self, items: &[Value]) -> Result<Vec<Node>, ConfError> {
        items.iter().map(|v| self.node(v)).collect()
    }

    fn cmp(&mut self, items: &[Value]) -> Result<Cmp, ConfError> {
        self.comparisons += 1;
        if self.comparisons > MAX_COMPARISONS {
            return Err(ConfError::new(format!(
                "a `vars` expression holds more than {MAX_COMPARISONS} comparisons"
            )));
        }
        // Built only for an error message: cloning every comparison would cost as much as the
        // parse.
        let whole = || Value::Array(items.to_vec());
        let text = |i: usize| items.get(i).and_then(Value::as_str);
        let name = text(0).unwrap_or_default();
        if name.is_empty() {
            return Err(bad(&whole(), "the variable name must not be empty"));
        }
        let (negate, op_at) = if text(1) == Some("!") {
            (true, 2)
        } else {
            (false, 1)
        };
        if items.len() != op_at + 2 {
            return Err(bad(
                &whole(),
                "expected [var, op, value] or [var, \"!\", op, value]",
            ));
        }
        let op_name = text(op_at).ok_or_else(|| bad(&whole(), "the operator must be a string"))?;
        let arg = &items[op_at + 1];
        let op = parse_op(op_name, arg, self.budget).map_err(|why| bad(&whole(), &why))?;
        // A linear search: at most MAX_COMPARISONS names.
        let var = match self.vars.iter().position(|v| **v == *name) {
            Some(i) => i,
            None => {
                self.vars.push(name.into());
                self.vars.len() - 1
            }
        };
        Ok(Cmp { var, negate, op })
    }
}

fn parse_op(op: &str, arg: &Value, budget: &mut Budget) -> Result<Op, String> {
    let num = || {
        arg.as_f64()
            .or_else(|| arg.as_str().and_then(number))
            .ok_or_else(|| format!("`{op}` needs a number"))
    };
    let mut regex = |insensitive: bool| {
        let pattern = arg.as_str().ok_or("a regex must be a string")?;
        budget
            .regex("vars", pattern, insensitive)
            .map_err(|e| e.message().to_owned())
    };
    Ok(match op {
        "==" => Op::Eq(scalar(arg)?),
        "~=" => Op::Ne(scalar(arg)?),
        ">" => Op::Gt(num()?),
        ">=" => Op::Ge(num()?),
        "<" => Op::Lt(num()?),
        "<=" => Op::Le(num()?),
        "~~" => Op::Regex(regex(false)?),
        "~*" => Op::Regex(regex(true)?),
        "in" => Op::In(
            arg.as_array()
                .ok_or("`in` needs an array")?
                .iter()
                .map(scalar)
                .collect::<Result<_, _>>()?,
        ),
        "has" => Op::Has(match scalar(arg)? {
            Scalar::Str(s) => s,
            Scalar::Num(_) => arg.to_string().into(),
        }),
        "ipmatch" => {
            let list = match arg {
                Value::Array(a) => a.iter().collect(),
                other => vec![other],
            };
            Op::IpMatch(list.into_iter().map(ip_net).collect::<Result<_, _>>()?)
        }
        other => return Err(format!("unknown operator {other:?}")),
    })
}

fn scalar(v: &Value) -> Result<Scalar, String> {
    match v {
        Value::String(s) => Ok(Scalar::Str(s.as_str().into())),
        Value::Number(n) => n
            .as_f64()
            .map(Scalar::Num)
            .ok_or_else(|| format!("{n} is not a usable number")),
        Value::Bool(b) => Ok(Scalar::Str(b.to_string().into())),
        other => Err(format!("{other} cannot be compared with a variable")),
    }
}

fn ip_net(v: &Value) -> Result<IpNet, String> {
    let s = v.as_str().ok_or("`ipmatch` needs IP or CIDR strings")?;
    s.parse::<IpNet>()
        .map(|n| n.trunc())
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not an IP address or CIDR"))
}

fn bad(at: &Value, why: &str) -> ConfError {
    ConfError::new(format!("bad `vars` expression {at}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ext_plugin_sdk::harness::request;
    use ext_plugin_sdk::harness::TestCall;
    use serde_json::json;

    use ext_plugin_sdk::Method;

    async fn check(expr: Value, call: &mut TestCall) -> bool {
        let e = Expr::parse(&expr, &mut Budget::default()).unwrap();
        e.matches(&mut call.call()).await.unwrap()
    }

    fn req() -> TestCall {
        TestCall::new(
            request(Method::Get, "/index.html")
                .with_arg("name", "jack")
                .with_arg("age", "18")
                .with_header("x-tags", "a, b")
                .with_header("user-agent", "Mozilla/5.0 Firefox")
                .with_src_ip("10.1.2.3"),
        )
    }

    #[tokio::test]
    async fn comparisons() {
        let mut c = req();
        assert!(check(json!([["arg_name", "==", "jack"]]), &mut c).await);
        assert!(!check(json!([["arg_name", "==", "rose"]]), &mut c).await);
        assert!(check(json!([["arg_name", "~=", "rose"]]), &mut c).await);
        assert!(
            check(json!([["arg_age", "==", 18]]), &mut c).await,
            "numeric equality"
        );
        assert!(check(json!([["arg_age", ">", 17]]), &mut c).await);
        assert!(check(json!([["arg_age", ">=", 18]]), &mut c).await);
        assert!(!check(json!([["arg_age", "<", 18]]), &mut c).await);
        assert!(check(json!([["arg_age", "<=", "18"]]), &mut c).await);
        assert!(
            !check(json!([["arg_name", ">", 1]]), &mut c).await,
            "not a number"
        );
        assert!(check(json!([["uri", "~~", "^/index"]]), &mut c).await);
        assert!(!check(json!([["http_user_agent", "~~", "firefox"]]), &mut c).await);
        assert!(check(json!([["http_user_agent", "~*", "firefox"]]), &mut c).await);
        assert!(check(json!([["arg_name", "in", ["rose", "jack"]]]), &mut c).await);
        assert!(!check(json!([["arg_name", "in", ["rose"]]]), &mut c).await);
        assert!(check(json!([["http_x_tags", "has", "b"]]), &mut c).await);
        assert!(!check(json!([["http_x_tags", "has", "c"]]), &mut c).await);
        assert!(check(json!([["remote_addr", "ipmatch", ["10.0.0.0/8"]]]), &mut c).await);
        assert!(check(json!([["remote_addr", "ipmatch", "10.1.2.3"]]), &mut c).await);
        assert!(
            !check(
                json!([["remote_addr", "ipmatch", ["192.168.0.0/16"]]]),
                &mut c
            )
            .await
        );
    }

    #[tokio::test]
    async fn negation_and_nil() {
        let mut c = req();
        assert!(!check(json!([["arg_name", "!", "==", "jack"]]), &mut c).await);
        assert!(check(json!([["arg_name", "!", "~~", "^r"]]), &mut c).await);
        assert!(!check(json!([["arg_missing", "==", "x"]]), &mut c).await);
        assert!(check(json!([["arg_missing", "~=", "x"]]), &mut c).await);
        assert!(!check(json!([["arg_missing", ">", 1]]), &mut c).await);
        assert!(check(json!([["arg_missing", "!", "==", "x"]]), &mut c).await);
    }

    #[tokio::test]
    async fn logic_nests_and_short_circuits() {
        let mut c = req();
        assert!(check(json!([]), &mut c).await, "an empty list matches");
        assert!(
            !check(
                json!([["arg_name", "==", "jack"], ["arg_age", "==", 1]]),
                &mut c
            )
            .await
        );
        let or = json!([
            "OR",
            ["arg_name", "==", "rose"],
            ["AND", ["arg_age", ">", 1], ["uri", "~~", "html$"]]
        ]);
        assert!(check(or, &mut c).await);
        assert!(
            !check(
                json!(["!OR", ["arg_name", "==", "jack"], ["arg_x", "==", 1]]),
                &mut c
            )
            .await
        );
        assert!(
            check(
                json!(["!AND", ["arg_name", "==", "jack"], ["arg_age", "==", 1]]),
                &mut c
            )
            .await
        );

        // The first operand decides: the remote variable is never asked for.
        let e = Expr::parse(
            &json!(["OR", ["arg_name", "==", "jack"], ["route_id", "==", "1"]]),
            &mut Budget::default(),
        )
        .unwrap();
        assert!(e.matches(&mut c.call()).await.unwrap());
        assert!(c.asked().is_empty());
    }

    #[tokio::test]
    async fn remote_variables_are_fetched_once() {
        let mut c = req().with_gateway_var("route_id", "7");
        let e = Expr::parse(
            &json!([
                ["route_id", "==", 7],
                ["route_id", "~=", "8"],
                ["arg_name", "==", "jack"]
            ]),
            &mut Budget::default(),
        )
        .unwrap();
        assert!(e.matches(&mut c.call()).await.unwrap());
        assert_eq!(c.asked(), ["route_id"]);
    }

    #[test]
    fn bad_expressions_are_named() {
        for (bad, why) in [
            (json!({"a": 1}), "must be an array"),
            (json!([["arg_a", "=", "1"]]), "unknown operator"),
            (json!([["arg_a", "~~", "("]]), "not a valid regex"),
            (json!([["arg_a", "~~", "\\w{200}"]]), "more than"),
            (json!([["arg_a", ">", "x"]]), "needs a number"),
            (json!([["arg_a", "in", "x"]]), "needs an array"),
            (json!([["arg_a", "ipmatch", ["300.0.0.1"]]]), "not an IP"),
            (json!([["arg_a", "=="]]), "expected [var, op, value]"),
            (json!(["AND"]), "at least one operand"),
            (json!([1, 2]), "starts with a variable"),
        ] {
            let e = Expr::parse(&bad, &mut Budget::default()).unwrap_err();
            assert!(e.message().contains(why), "{bad}: {e}");
        }
    }

    /// Issue 11 #1: an expression of 60 000 distinct comparisons once took 14 s to parse
    /// (a quadratic variable dedupe); past [`MAX_COMPARISONS`] it is refused.
    #[test]
    fn comparisons_are_bounded() {
        let many = |n: usize| {
            Value::Array(
                (0..n)
                    .map(|i| json!([format!("arg_{i}"), "==", "1"]))
                    .collect(),
            )
        };
        let e = Expr::parse(&many(60_000), &mut Budget::default()).unwrap_err();
        assert!(e.message().contains("more than 256 comparisons"), "{e}");
        let e = Expr::parse(&many(MAX_COMPARISONS), &mut Budget::default()).unwrap();
        assert_eq!(e.vars.len(), MAX_COMPARISONS);
        // Regexes share the conf's budget.
        let regexes = Value::Array((0..40).map(|_| json!(["arg_a", "~~", "a"])).collect());
        let e = Expr::parse(&regexes, &mut Budget::default()).unwrap_err();
        assert!(e.message().contains("more than 32 regexes"), "{e}");
    }
}
