//! The Prometheus text exposition format, version 0.0.4: what `GET /metrics` answers with
//! `Content-Type: text/plain; version=0.0.4`, and what `promtool check metrics` validates.
//!
//! Every family gets `# HELP` and `# TYPE` lines, then its samples: `name{label="value"} 42`.
//! Histograms expand to cumulative `_bucket{le="…"}` samples ending with `le="+Inf"`, then
//! `_sum` and `_count`.

use std::fmt::Write as _;

use ext_plugin_sdk::metrics::{Kind, Snapshot, Value};

/// The `Content-Type` of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Appends every family of `snapshot` to `out`, each name prefixed with `prefix`.
pub fn encode(prefix: &str, snapshot: &Snapshot, out: &mut String) {
    for family in &snapshot.families {
        let name = family.name;
        out.push_str("# HELP ");
        out.push_str(prefix);
        out.push_str(name);
        out.push(' ');
        escape(family.help, false, out);
        out.push('\n');
        let _ = writeln!(out, "# TYPE {prefix}{name} {}", family.kind.as_str());
        for series in &family.series {
            let labels = &series.labels;
            match &series.value {
                Value::Counter(v) => sample(out, prefix, name, "", labels, None, &v.to_string()),
                Value::Gauge(v) => sample(out, prefix, name, "", labels, None, &v.to_string()),
                Value::Histogram(h) => {
                    debug_assert_eq!(family.kind, Kind::Histogram);
                    for &(bound, count) in &h.buckets {
                        let le = float(bound);
                        let value = count.to_string();
                        sample(out, prefix, name, "_bucket", labels, Some(&le), &value);
                    }
                    let sum = float(h.sum_seconds);
                    sample(out, prefix, name, "_sum", labels, None, &sum);
                    let count = h.count.to_string();
                    sample(out, prefix, name, "_count", labels, None, &count);
                }
            }
        }
    }
}

fn sample(
    out: &mut String,
    prefix: &str,
    name: &str,
    suffix: &str,
    labels: &[(&'static str, Box<str>)],
    le: Option<&str>,
    value: &str,
) {
    out.push_str(prefix);
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        let mut first = true;
        let le = le.map(|v| ("le", v));
        for (label, v) in labels.iter().map(|(n, v)| (*n, &**v)).chain(le) {
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(label);
            out.push_str("=\"");
            escape(v, true, out);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(value);
    out.push('\n');
}

/// Backslash and newline are escaped in help text; label values escape double quotes too.
fn escape(s: &str, quotes: bool, out: &mut String) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quotes => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// A float as the format writes it: `+Inf`, or Rust's shortest round-trip form.
fn float(v: f64) -> String {
    if v == f64::INFINITY {
        "+Inf".into()
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ext_plugin_sdk::metrics::Metrics;
    use std::time::Duration;

    #[test]
    fn families_render_with_help_type_escaped_labels_and_histogram_series() {
        let m = Metrics::new(10);
        m.counter(
            "hits_total",
            "Hits \\ with a\nnewline.",
            &[("route", "route#\"1\"\\\n")],
        )
        .add(3);
        m.gauge("level", "Level.", &[]).set(-2);
        m.histogram("wait_seconds", "Wait.", &[0.5, 1.0], &[("k", "v")])
            .observe(Duration::from_millis(700));
        let mut out = String::new();
        encode("p_", &m.snapshot(), &mut out);
        let expected = "\
# HELP p_hits_total Hits \\\\ with a\\nnewline.
# TYPE p_hits_total counter
p_hits_total{route=\"route#\\\"1\\\"\\\\\\n\"} 3
# HELP p_level Level.
# TYPE p_level gauge
p_level -2
# HELP p_wait_seconds Wait.
# TYPE p_wait_seconds histogram
p_wait_seconds_bucket{k=\"v\",le=\"0.5\"} 0
p_wait_seconds_bucket{k=\"v\",le=\"1\"} 1
p_wait_seconds_bucket{k=\"v\",le=\"+Inf\"} 1
p_wait_seconds_sum{k=\"v\"} 0.7
p_wait_seconds_count{k=\"v\"} 1
";
        assert_eq!(out, expected);
    }
}
