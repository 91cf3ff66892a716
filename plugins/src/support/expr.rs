//! APISIX `vars` expressions (the lua-resty-expr subset in docs/plugins/traffic.md), parsed once at
//! prepare time and evaluated against a request's variables.
//!
//! ```text
//! Expr::parse(&serde_json::Value) -> Result<Expr, ConfError>          // prepare time
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
use regex::{Regex, RegexBuilder};
use serde_json::Value;

use super::vars::Vars;
use ext_plugin_sdk::{ConfError, PluginError, RequestCall, Text};

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
    /// Parses a `vars` value. The error names the offending part.
    pub fn parse(value: &Value) -> Result<Expr, ConfError> {
        let mut vars = Vec::new();
        let root = parse_node(value, &mut vars)?;
        Ok(Expr { root, vars })
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

fn parse_node(value: &Value, vars: &mut Vec<Box<str>>) -> Result<Node, ConfError> {
    let items = value
        .as_array()
        .ok_or_else(|| bad(value, "an expression must be an array"))?;
    match items.first() {
        None => Ok(Node::All(Vec::new())),
        Some(Value::Array(_)) => parse_list(items, vars).map(Node::All),
        Some(Value::String(head)) => match head.as_str() {
            "AND" | "OR" | "!AND" | "!OR" => {
                let nodes = parse_list(&items[1..], vars)?;
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
            _ => parse_cmp(items, vars).map(Node::Cmp),
        },
        Some(_) => Err(bad(
            value,
            "an expression starts with a variable name or a list",
        )),
    }
}

fn parse_list(items: &[Value], vars: &mut Vec<Box<str>>) -> Result<Vec<Node>, ConfError> {
    items.iter().map(|v| parse_node(v, vars)).collect()
}

fn parse_cmp(items: &[Value], vars: &mut Vec<Box<str>>) -> Result<Cmp, ConfError> {
    let whole = Value::Array(items.to_vec());
    let text = |i: usize| items.get(i).and_then(Value::as_str);
    let name = text(0).unwrap_or_default();
    if name.is_empty() {
        return Err(bad(&whole, "the variable name must not be empty"));
    }
    let (negate, op_at) = if text(1) == Some("!") {
        (true, 2)
    } else {
        (false, 1)
    };
    if items.len() != op_at + 2 {
        return Err(bad(
            &whole,
            "expected [var, op, value] or [var, \"!\", op, value]",
        ));
    }
    let op_name = text(op_at).ok_or_else(|| bad(&whole, "the operator must be a string"))?;
    let arg = &items[op_at + 1];
    let op = parse_op(op_name, arg).map_err(|why| bad(&whole, &why))?;
    let var = match vars.iter().position(|v| **v == *name) {
        Some(i) => i,
        None => {
            vars.push(name.into());
            vars.len() - 1
        }
    };
    Ok(Cmp { var, negate, op })
}

fn parse_op(op: &str, arg: &Value) -> Result<Op, String> {
    let num = || {
        arg.as_f64()
            .or_else(|| arg.as_str().and_then(number))
            .ok_or_else(|| format!("`{op}` needs a number"))
    };
    let regex = |insensitive: bool| {
        let pattern = arg.as_str().ok_or("a regex must be a string")?;
        RegexBuilder::new(pattern)
            .case_insensitive(insensitive)
            .build()
            .map_err(|e| format!("bad regex {pattern:?}: {e}"))
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
        let e = Expr::parse(&expr).unwrap();
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
        let e = Expr::parse(&json!([
            "OR",
            ["arg_name", "==", "jack"],
            ["route_id", "==", "1"]
        ]))
        .unwrap();
        assert!(e.matches(&mut c.call()).await.unwrap());
        assert!(c.asked().is_empty());
    }

    #[tokio::test]
    async fn remote_variables_are_fetched_once() {
        let mut c = req().with_gateway_var("route_id", "7");
        let e = Expr::parse(&json!([
            ["route_id", "==", 7],
            ["route_id", "~=", "8"],
            ["arg_name", "==", "jack"]
        ]))
        .unwrap();
        assert!(e.matches(&mut c.call()).await.unwrap());
        assert_eq!(c.asked(), ["route_id"]);
    }

    #[test]
    fn bad_expressions_are_named() {
        for (bad, why) in [
            (json!({"a": 1}), "must be an array"),
            (json!([["arg_a", "=", "1"]]), "unknown operator"),
            (json!([["arg_a", "~~", "("]]), "bad regex"),
            (json!([["arg_a", ">", "x"]]), "needs a number"),
            (json!([["arg_a", "in", "x"]]), "needs an array"),
            (json!([["arg_a", "ipmatch", ["300.0.0.1"]]]), "not an IP"),
            (json!([["arg_a", "=="]]), "expected [var, op, value]"),
            (json!(["AND"]), "at least one operand"),
            (json!([1, 2]), "starts with a variable"),
        ] {
            let e = Expr::parse(&bad).unwrap_err();
            assert!(e.message().contains(why), "{bad}: {e}");
        }
    }
}
