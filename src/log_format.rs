//! `--log-format json`: one JSON object per line, for log shippers.
//!
//! `{"timestamp": "2026-12-01T10:00:00.000000Z", "level": "WARN", "target": "ext_plugin_runner::connection",
//! "message": "prepare_conf refused: …", "fields": {"key": "route#1#ext-plugin-pre-req#1", "hits": 1}}`:
//! the event's fields keep their order and their type where it is a number or a boolean;
//! anything else is its text.

use std::fmt::{self, Write as _};

use serde_json::Value;

use crate::log_fields::cut;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;

/// How the runner writes its log lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human text (what APISIX copies into its error.log).
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, target, message, fields.
    Json,
}

/// The JSON line formatter.
pub(crate) struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        writer.write_str(&line(
            &timestamp,
            meta.level().as_str(),
            meta.target(),
            &fields,
        ))
    }
}

/// An event's message and its other fields, in order.
#[derive(Default)]
struct Fields {
    message: String,
    others: Vec<(&'static str, Value)>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        // Values may come from the peer: cut, as in the text format (serde escapes them).
        let value = match value {
            Value::String(s) => Value::String(cut(s)),
            other => other,
        };
        match (field.name(), value) {
            ("message", Value::String(s)) => self.message = s,
            (name, value) => self.others.push((name, value)),
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::from(format!("{value:?}")));
    }
}

fn line(timestamp: &str, level: &str, target: &str, fields: &Fields) -> String {
    let string = |s: &str| Value::from(s).to_string();
    let mut out = format!(
        "{{\"timestamp\":{},\"level\":{},\"target\":{},\"message\":{},\"fields\":{{",
        string(timestamp),
        string(level),
        string(target),
        string(&fields.message),
    );
    for (i, (name, value)) in fields.others.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{}:{value}", string(name));
    }
    out.push_str("}}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_fields::Sink;

    #[test]
    fn events_become_one_json_object_per_line() {
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(JsonLines)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(key = "route#1", hits = 3u64, ok = true, path = %"/a \"b\"", "refused: {}", "bad\nconf");
            tracing::info!("plain");
        });
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let first: Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(first["level"], "WARN");
        assert_eq!(first["target"], module_path!());
        assert_eq!(first["message"], "refused: bad\nconf");
        assert_eq!(first["fields"]["key"], "route#1");
        assert_eq!(first["fields"]["hits"], 3);
        assert_eq!(first["fields"]["ok"], true);
        assert_eq!(first["fields"]["path"], "/a \"b\"");
        assert!(first["timestamp"].as_str().unwrap().contains('T'));
        let second: Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(second["message"], "plain");
        assert_eq!(second["fields"], serde_json::json!({}));
    }
}
