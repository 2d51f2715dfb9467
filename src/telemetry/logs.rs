//! Cloud Logging's structured JSON, one object a line: `severity`, `message`, `time`, the
//! trace (`logging.googleapis.com/trace` = `projects/<project>/traces/<trace id>`,
//! `logging.googleapis.com/spanId`, `logging.googleapis.com/trace_sampled`), then the fields of
//! the event's spans (outermost first) and of the event. A small layer of its own: the kept
//! crate (tracing-stackdriver 0.10) is built on opentelemetry 0.22, not this crate's 0.33.

use std::io::Write;
use std::sync::OnceLock;

use opentelemetry::trace::TraceContextExt;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Record};
use tracing::{Event, Id, Level, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// Cloud Logging's name for a level.
pub fn severity(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        _ => "DEBUG",
    }
}

/// The keys this layer writes itself.
const RESERVED: &[&str] = &[
    "severity",
    "time",
    "target",
    "span",
    "logging.googleapis.com/trace",
    "logging.googleapis.com/spanId",
    "logging.googleapis.com/trace_sampled",
];

/// The layer writing one JSON object a line to `writer`.
pub struct JsonLayer<W> {
    writer: W,
    project: Option<String>,
    dispatch: OnceLock<tracing::dispatcher::WeakDispatch>,
}

impl<W> JsonLayer<W> {
    /// Lines to `writer`; the trace field names `project` (without one, the bare trace id).
    pub fn new(writer: W, project: Option<String>) -> Self {
        JsonLayer {
            writer,
            project,
            dispatch: OnceLock::new(),
        }
    }
}

/// A span's fields, kept in its extensions.
struct SpanFields(Map<String, Value>);

struct Fields<'a>(&'a mut Map<String, Value>);

impl Fields<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        let name = field.name();
        // The OpenTelemetry layer's own fields (span name, kind, status) are not log fields.
        if name.starts_with("otel.") {
            return;
        }
        self.0.insert(name.to_string(), value);
    }
}

impl Visit for Fields<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
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
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::from(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, Value::from(format!("{value:?}")));
    }
}

impl<S, W> tracing_subscriber::Layer<S> for JsonLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        let _ = self.dispatch.set(subscriber.downgrade());
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut map = Map::new();
        attrs.record(&mut Fields(&mut map));
        span.extensions_mut().insert(SpanFields(map));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        if let Some(SpanFields(map)) = ext.get_mut::<SpanFields>() {
            values.record(&mut Fields(map));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        // Fields first (outermost span first, the event's last); Cloud Logging's own keys then
        // win, and a field that had one of their names is kept as `field.<name>`.
        let mut line = Map::new();
        let mut trace = None;
        let mut leaf_name = None;
        if let Some(scope) = ctx.event_scope(event) {
            let spans: Vec<_> = scope.collect();
            for span in spans.iter().rev() {
                if let Some(SpanFields(map)) = span.extensions().get::<SpanFields>() {
                    for (k, v) in map {
                        line.insert(k.clone(), v.clone());
                    }
                }
            }
            leaf_name = spans.first().map(|s| s.name());
            // The innermost span with an OpenTelemetry context (no extension borrowed here).
            let dispatch = self.dispatch.get().and_then(|d| d.upgrade());
            if let Some(dispatch) = dispatch {
                trace = spans.iter().find_map(|span| {
                    let cx = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch)?;
                    let sc = cx.span().span_context().clone();
                    sc.is_valid().then_some(sc)
                });
            }
        }
        let mut fields = Map::new();
        event.record(&mut Fields(&mut fields));
        let message = fields.remove("message").unwrap_or_else(|| "".into());
        line.extend(fields);
        for key in RESERVED {
            if let Some(v) = line.remove(*key) {
                line.insert(format!("field.{key}"), v);
            }
        }
        line.insert("severity".into(), severity(meta.level()).into());
        line.insert(
            "time".into(),
            chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .into(),
        );
        line.insert("target".into(), meta.target().into());
        if let Some(name) = leaf_name {
            line.insert("span".into(), name.into());
        }
        line.insert("message".into(), message);
        if let Some(sc) = trace {
            let id = sc.trace_id().to_string();
            let value = match &self.project {
                Some(p) => format!("projects/{p}/traces/{id}"),
                None => id,
            };
            line.insert("logging.googleapis.com/trace".into(), value.into());
            line.insert(
                "logging.googleapis.com/spanId".into(),
                sc.span_id().to_string().into(),
            );
            line.insert(
                "logging.googleapis.com/trace_sampled".into(),
                sc.is_sampled().into(),
            );
        }
        let mut bytes = match serde_json::to_vec(&Value::Object(line)) {
            Ok(b) => b,
            Err(_) => return,
        };
        bytes.push(b'\n');
        // One write per line, so lines of concurrent events do not interleave.
        let _ = self.writer.make_writer_for(meta).write_all(&bytes);
    }
}
