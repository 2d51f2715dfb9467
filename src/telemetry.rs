//! Logs and trace context: every process logs through [`init`], and the W3C trace context
//! travels in message attributes (`traceparent`), so one upload can be followed across every
//! service (worker, sinks, alerting) in one trace: each handled message's span continues the
//! trace of the message's `traceparent` (a GCS notification, which has none, starts one), every
//! message published while handling it carries the span's context on, and every log line
//! written while handling it shows the `trace_id`.

use std::collections::BTreeMap;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::prelude::*;

/// The message attribute carrying the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// Installs the process's subscriber: text logs to `writer` filtered by `RUST_LOG` (else
/// `default_filter`), and span contexts for the trace propagation, which sees this crate's
/// spans whatever the log filter; `false` when a subscriber was installed already.
pub fn init<W>(writer: W, default_filter: &str, ansi: bool) -> bool
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into());
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi)
        .with_filter(filter);
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("datashare"))
        .with_filter(
            Targets::new()
                .with_target("datashare", LevelFilter::INFO)
                .with_default(LevelFilter::OFF),
        );
    tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init()
        .is_ok()
}

struct Writing<'a>(&'a mut BTreeMap<String, String>);

impl Injector for Writing<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }
}

struct Reading<'a>(&'a BTreeMap<String, String>);

impl Extractor for Reading<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// Adds the current span's trace context to a message's attributes, unless they carry one
/// already (a republished message, a dead letter, keeps the trace it belongs to).
pub fn inject(attributes: &mut BTreeMap<String, String>) {
    if attributes.contains_key(TRACEPARENT) {
        return;
    }
    let cx = tracing::Span::current().context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut Writing(attributes));
    }
}

/// Makes `span` (not entered yet) continue the trace of a message's `traceparent`, or start
/// one, and records its `trace_id` field.
pub fn continue_trace(span: &tracing::Span, attributes: &BTreeMap<String, String>) {
    let parent = TraceContextPropagator::new().extract(&Reading(attributes));
    if span.set_parent(parent).is_err() {
        return;
    }
    let trace = span.context().span().span_context().trace_id();
    if trace != TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace));
    }
}

/// The trace id in a message's `traceparent` (`00-<trace id>-<span id>-<flags>`), if valid.
pub fn trace_id(attributes: &BTreeMap<String, String>) -> Option<String> {
    let cx = TraceContextPropagator::new().extract(&Reading(attributes));
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handled_message_continues_its_trace_into_what_it_publishes() {
        init(std::io::sink, "off", false);
        let incoming = BTreeMap::from([(
            TRACEPARENT.to_string(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string(),
        )]);
        let span = tracing::info_span!("message", trace_id = tracing::field::Empty);
        continue_trace(&span, &incoming);
        let mut out = BTreeMap::new();
        span.in_scope(|| inject(&mut out));
        assert_eq!(
            trace_id(&out).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_ne!(out[TRACEPARENT], incoming[TRACEPARENT], "a span of its own");

        // Without a traceparent a new trace starts; one already present is kept.
        let root = tracing::info_span!("message", trace_id = tracing::field::Empty);
        continue_trace(&root, &BTreeMap::new());
        let mut fresh = BTreeMap::new();
        root.in_scope(|| inject(&mut fresh));
        let id = trace_id(&fresh).expect("a new trace");
        assert_ne!(id, "4bf92f3577b34da6a3ce929d0e0e4736");
        let mut kept = incoming.clone();
        root.in_scope(|| inject(&mut kept));
        assert_eq!(kept, incoming);
        assert_eq!(trace_id(&BTreeMap::new()), None);
    }
}
