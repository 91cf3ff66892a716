//! Field values in log lines: escaped and cut, because many of them come from the peer.
//!
//! Route keys, plugin names and conf error messages (which quote the conf) are written by
//! whoever can configure a route. Written raw, a `\n` in a route key starts a line the runner
//! never wrote (a forged log line in the gateway's error log), and a 1 MiB key makes a 1 MiB
//! line. So every value the text format writes — the message too — has its control characters
//! escaped (`\n`, `\r`, `\t`, `\u{1b}`, ...) and is cut after [`MAX_FIELD`] bytes with a note
//! of how much was left out. The JSON format escapes by itself; it cuts the same way.
//!
//! This is done in the formatter, not at each log call, so a line added later cannot forget it.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::FormatFields;

/// The longest value (in bytes) a log line carries for one field, the message included.
pub const MAX_FIELD: usize = 1024;

/// Appends `value` to `out`, cut after [`MAX_FIELD`] bytes (at a character boundary) with a
/// note of the bytes left out; control characters escaped when `escape` is set.
pub(crate) fn push_safe(out: &mut String, value: &str, escape: bool) {
    let start = out.len();
    for (i, c) in value.char_indices() {
        if out.len() - start >= MAX_FIELD {
            let _ = write!(out, "…[{} more bytes]", value.len() - i);
            return;
        }
        match c {
            '\n' if escape => out.push_str("\\n"),
            '\r' if escape => out.push_str("\\r"),
            '\t' if escape => out.push_str("\\t"),
            c if escape && c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// `value` cut (not escaped) as [`push_safe`] does; for formats that escape by themselves.
pub(crate) fn cut(value: String) -> String {
    if value.len() <= MAX_FIELD {
        return value;
    }
    let mut out = String::with_capacity(MAX_FIELD + 32);
    push_safe(&mut out, &value, false);
    out
}

/// The text format's field formatter: `message key=value ...`, every value made safe.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SafeFields;

impl<'w> FormatFields<'w> for SafeFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut line = SafeLine::default();
        fields.record(&mut line);
        writer.write_str(&line.out)
    }
}

#[derive(Default)]
struct SafeLine {
    out: String,
    /// Scratch for rendering one value before it is made safe.
    value: String,
}

impl SafeLine {
    fn push(&mut self, field: &Field, render: impl FnOnce(&mut String)) {
        if !self.out.is_empty() {
            self.out.push(' ');
        }
        if field.name() != "message" {
            self.out.push_str(field.name());
            self.out.push('=');
        }
        self.value.clear();
        render(&mut self.value);
        push_safe(&mut self.out, &self.value, true);
    }
}

impl Visit for SafeLine {
    fn record_str(&mut self, field: &Field, value: &str) {
        // Quoted like tracing's own formatter does for string fields.
        self.push(field, |out| {
            let _ = write!(out, "{value:?}");
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.push(field, |out| {
            let _ = write!(out, "{value:?}");
        });
    }
}

/// Collects what a test's subscriber writes.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct Sink(pub(crate) std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(test)]
impl std::io::Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn safe(value: &str) -> String {
        let mut out = String::new();
        push_safe(&mut out, value, true);
        out
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(safe("a\nb\r\tc\u{1b}[31m"), "a\\nb\\r\\tc\\u{1b}[31m");
        assert_eq!(safe("route#1 é"), "route#1 é");
    }

    #[test]
    fn long_values_are_cut_at_a_char_boundary_with_the_count() {
        let long = "é".repeat(MAX_FIELD); // 2 bytes each
        let out = safe(&long);
        assert!(out.starts_with(&"é".repeat(MAX_FIELD / 2)));
        assert!(
            out.ends_with(&format!("…[{} more bytes]", MAX_FIELD)),
            "{out}"
        );
        assert_eq!(cut("short".into()), "short");
        assert!(cut("x".repeat(MAX_FIELD + 5)).ends_with("…[5 more bytes]"));
    }

    #[test]
    fn a_text_line_stays_one_line_whatever_its_fields_hold() {
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(SafeFields)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let key = "route#1\nFORGED ERROR something";
        let huge = "y".repeat(10 * MAX_FIELD);
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(key = %key, plugin = key, hits = 1u64, "refused: {}", huge);
        });
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.contains("key=route#1\\nFORGED ERROR something"),
            "{text}"
        );
        assert!(text.contains("plugin=\"route#1\\nFORGED"), "{text}");
        assert!(text.contains("hits=1"), "{text}");
        assert!(text.len() < 4 * MAX_FIELD, "cut: {} bytes", text.len());
        assert!(text.contains("more bytes]"), "{text}");
    }
}
