//! Logs, traces and metrics. Every process starts its telemetry through [`start`] (tests use
//! [`init`]); the W3C trace context travels in message attributes (`traceparent`), so one upload
//! can be followed across every service (worker, sinks, alerting) in one trace: each handled
//! message's span continues the trace of the message's `traceparent` (a GCS notification, which
//! has none, starts one), every message published while handling it carries the span's context
//! on, and every log line written while handling it shows the trace id.
//!
//! Export (operations.md, "Telemetry"): when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the per-signal
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `..._METRICS_ENDPOINT`) is set, spans and the metrics of
//! [`metrics`] go out over OTLP: http/protobuf by default (the protocol Terraform's collector
//! sidecar is given), gRPC with `OTEL_EXPORTER_OTLP_PROTOCOL=grpc` (or the per-signal
//! `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` / `..._METRICS_PROTOCOL`; plaintext `http://` endpoints
//! only: no TLS stack is built in for it); the other standard `OTEL_*` variables apply (`OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_METRIC_EXPORT_INTERVAL`, `OTEL_BSP_*`,
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SDK_DISABLED`, `OTEL_TRACES_EXPORTER=none`, ...). Without
//! an endpoint nothing is exported: spans stay in-process (for the trace ids in messages and
//! logs) and metric calls go to the no-op provider. Logs: text on a terminal, Cloud Logging's
//! JSON ([`logs`]) on Cloud Run (`K_SERVICE` set) or with `LOG_FORMAT=json`.

pub mod logs;
pub mod metrics;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::prelude::*;

/// The message attribute carrying the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Readable text, coloured when `ansi`.
    Text {
        /// ANSI colours.
        ansi: bool,
    },
    /// Cloud Logging's structured JSON, one object a line.
    Json,
}

impl LogFormat {
    /// JSON on Cloud Run (`K_SERVICE` set) or with `LOG_FORMAT=json`; text otherwise
    /// (`LOG_FORMAT=text` forces it), coloured when `ansi`.
    pub fn from_env(ansi: bool) -> LogFormat {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        match var("LOG_FORMAT").map(|v| v.trim().to_ascii_lowercase()) {
            Some(v) if v == "json" => LogFormat::Json,
            Some(v) if v == "text" => LogFormat::Text { ansi },
            _ if var("K_SERVICE").is_some() => LogFormat::Json,
            _ => LogFormat::Text { ansi },
        }
    }
}

/// The exporters of this process; [`Telemetry::shutdown`] (or dropping it) flushes them.
#[must_use = "dropping it flushes and stops the exporters"]
#[derive(Debug)]
pub struct Telemetry {
    exporting: bool,
}

impl Telemetry {
    /// Whether spans or metrics are exported (an OTLP endpoint is configured).
    pub fn exporting(&self) -> bool {
        self.exporting
    }

    /// Flushes what is buffered and stops the exporters; later spans and points are dropped.
    pub fn shutdown(&mut self) {
        shutdown();
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        shutdown();
    }
}

/// The providers that export, kept for [`flush`] and the shutdown.
static EXPORTERS: Mutex<Option<(Option<SdkTracerProvider>, Option<SdkMeterProvider>)>> =
    Mutex::new(None);

/// Whether [`EXPORTERS`] holds anything (read without the lock on every push request).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Exports what is buffered now (spans ended, metric points so far); waits for it. A no-op
/// when nothing is exported. Called when a role stops serving, before the process exits.
pub fn flush() {
    flush_signals(true, true);
}

/// The shortest time between two metric exports forced by [`flush_after_request`]: Cloud
/// Monitoring takes one point per series every 5 s at most, and a busy instance answers many
/// requests a second (the points in between are cumulative: nothing is lost, the periodic
/// export and the shutdown send the rest).
const METRICS_FLUSH_EVERY: Duration = Duration::from_secs(10);

/// Exports the spans of a push request before its response (Cloud Run throttles the CPU once
/// the response is sent, and the batch exporter's thread would stall until the next request),
/// and the metric points when the last forced metric export is [`METRICS_FLUSH_EVERY`] old.
/// Runs on a blocking thread; a no-op (one atomic load) when nothing is exported.
pub async fn flush_after_request() {
    if !EXPORTING.load(Ordering::Relaxed) {
        return;
    }
    let metrics = metrics_flush_due(Instant::now());
    if let Err(e) = tokio::task::spawn_blocking(move || flush_signals(true, metrics)).await {
        tracing::warn!("telemetry not flushed: {e}");
    }
}

/// Whether a forced metric export is due at `now` (and if so, notes it).
fn metrics_flush_due(now: Instant) -> bool {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    static LAST_MS: AtomicU64 = AtomicU64::new(0);
    let epoch = *EPOCH.get_or_init(|| now.checked_sub(METRICS_FLUSH_EVERY).unwrap_or(now));
    let now_ms = now.saturating_duration_since(epoch).as_millis() as u64;
    let last = LAST_MS.load(Ordering::Relaxed);
    now_ms.saturating_sub(last) >= METRICS_FLUSH_EVERY.as_millis() as u64
        && LAST_MS
            .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

fn flush_signals(spans: bool, points: bool) {
    let held = EXPORTERS.lock().map(|g| g.clone()).unwrap_or(None);
    if let Some((traces, metrics)) = held {
        if spans
            && let Some(t) = traces
            && let Err(e) = t.force_flush()
        {
            tracing::warn!("spans not flushed: {e}");
        }
        if points
            && let Some(m) = metrics
            && let Err(e) = m.force_flush()
        {
            tracing::warn!("metrics not flushed: {e}");
        }
    }
}

fn shutdown() {
    EXPORTING.store(false, Ordering::Relaxed);
    let held = EXPORTERS.lock().ok().and_then(|mut g| g.take());
    if let Some((traces, metrics)) = held {
        if let Some(t) = traces
            && let Err(e) = t.shutdown()
        {
            tracing::warn!("spans not exported at shutdown: {e}");
        }
        if let Some(m) = metrics
            && let Err(e) = m.shutdown()
        {
            tracing::warn!("metrics not exported at shutdown: {e}");
        }
    }
}

/// Starts the process's telemetry: logs to `writer` in `format`, filtered by `RUST_LOG` (else
/// `default_filter`); span contexts for the trace propagation, which sees this crate's spans
/// whatever the log filter; and, when an OTLP endpoint is set, the exporters of spans and
/// metrics, with `service.name` = `service` unless `OTEL_SERVICE_NAME` (or
/// `OTEL_RESOURCE_ATTRIBUTES`) names one. An exporter that cannot be built is reported on
/// stderr and left out: the program runs without it.
pub fn start<W>(service: &str, writer: W, default_filter: &str, format: LogFormat) -> Telemetry
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let mut problems = Vec::new();
    let exporters = Exporters::from_env(&env, &mut problems);
    let resource = exporters.any().then(|| resource(service, &env));
    let traces = match (&resource, exporters.traces) {
        (Some(r), Some(p)) => span_provider(r.clone(), p)
            .map_err(|e| problems.push(format!("spans not exported: {e}")))
            .ok(),
        _ => None,
    };
    let metrics = match (&resource, exporters.metrics) {
        (Some(r), Some(p)) => meter_provider(r.clone(), p)
            .map_err(|e| problems.push(format!("metrics not exported: {e}")))
            .ok(),
        _ => None,
    };
    if let Some(m) = &metrics {
        opentelemetry::global::set_meter_provider(m.clone());
    }
    let exporting = traces.is_some() || metrics.is_some();
    let tracer = traces
        .clone()
        .unwrap_or_else(|| SdkTracerProvider::builder().build());
    install(writer, default_filter, format, &tracer, project(&env));
    for p in problems {
        tracing::warn!("OTLP exporter: {p}");
    }
    if exporting && let Ok(mut g) = EXPORTERS.lock() {
        *g = Some((traces, metrics));
        EXPORTING.store(true, Ordering::Relaxed);
    }
    Telemetry { exporting }
}

/// Installs a subscriber without exporters (tests): text logs to `writer` filtered by
/// `RUST_LOG` (else `default_filter`), and span contexts for the trace propagation; `false` when
/// a subscriber was installed already.
pub fn init<W>(writer: W, default_filter: &str, ansi: bool) -> bool
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let provider = SdkTracerProvider::builder().build();
    install(
        writer,
        default_filter,
        LogFormat::Text { ansi },
        &provider,
        None,
    )
}

fn install<W>(
    writer: W,
    default_filter: &str,
    format: LogFormat,
    provider: &SdkTracerProvider,
    project: Option<String>,
) -> bool
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into());
    let logs = match format {
        LogFormat::Text { ansi } => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(ansi)
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => logs::JsonLayer::new(writer, project)
            .with_filter(filter)
            .boxed(),
    };
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

/// An OTLP transport (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// `http/protobuf` (the default).
    HttpProtobuf,
    /// `grpc` (tonic).
    Grpc,
}

/// Which signals are exported, and how, from the standard variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Exporters {
    traces: Option<Protocol>,
    metrics: Option<Protocol>,
}

impl Exporters {
    fn from_env(env: &dyn Fn(&str) -> Option<String>, problems: &mut Vec<String>) -> Exporters {
        let none = Exporters {
            traces: None,
            metrics: None,
        };
        if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return none;
        }
        let protocol = |signal: &str| {
            env(&format!("OTEL_EXPORTER_OTLP_{signal}_PROTOCOL"))
                .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
                .unwrap_or_else(|| "http/protobuf".into())
        };
        let mut wanted = |signal: &str, exporter_var: &str| {
            let endpoint = env("OTEL_EXPORTER_OTLP_ENDPOINT")
                .or_else(|| env(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")))
                .is_some();
            let off = env(exporter_var).is_some_and(|v| v.trim().eq_ignore_ascii_case("none"));
            if !endpoint || off {
                return None;
            }
            match protocol(signal).trim() {
                "http/protobuf" => Some(Protocol::HttpProtobuf),
                "grpc" => Some(Protocol::Grpc),
                p => {
                    problems.push(format!(
                        "protocol {p:?} is not supported (grpc or http/protobuf): {} not exported",
                        signal.to_ascii_lowercase()
                    ));
                    None
                }
            }
        };
        Exporters {
            traces: wanted("TRACES", "OTEL_TRACES_EXPORTER"),
            metrics: wanted("METRICS", "OTEL_METRICS_EXPORTER"),
        }
    }

    fn any(self) -> bool {
        self.traces.is_some() || self.metrics.is_some()
    }
}

/// The project of the trace field of JSON logs: `gcp.project_id` of `OTEL_RESOURCE_ATTRIBUTES`,
/// else `DATASHARE_GCP_PROJECT`, else `GOOGLE_CLOUD_PROJECT`.
fn project(env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    resource_attribute(env, "gcp.project_id")
        .or_else(|| env("DATASHARE_GCP_PROJECT"))
        .or_else(|| env("GOOGLE_CLOUD_PROJECT"))
        .map(|p| p.trim().to_string())
}

fn resource_attribute(env: &dyn Fn(&str) -> Option<String>, key: &str) -> Option<String> {
    env("OTEL_RESOURCE_ATTRIBUTES")?
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// `service.name` (unless the environment names one), `service.version`, and `gcp.project_id`
/// and `cloud.region` when known; the SDK adds `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_SERVICE_NAME`.
fn resource(service: &str, env: &dyn Fn(&str) -> Option<String>) -> Resource {
    let mut b = Resource::builder()
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if env("OTEL_SERVICE_NAME").is_none() && resource_attribute(env, "service.name").is_none() {
        b = b.with_service_name(service.to_string());
    }
    if resource_attribute(env, "gcp.project_id").is_none()
        && let Some(p) = project(env)
    {
        b = b.with_attribute(KeyValue::new("gcp.project_id", p));
    }
    if resource_attribute(env, "cloud.region").is_none()
        && let Some(r) = env("DATASHARE_REGION").or_else(|| env("GOOGLE_CLOUD_REGION"))
    {
        b = b.with_attribute(KeyValue::new("cloud.region", r));
    }
    b.build()
}

/// The runtime that drives the gRPC exporters' connections: the exporters are called from the
/// SDK's own threads, and the commands' runtimes come and go (one per command, dropped before
/// the final flush), so this one lives as long as the process.
fn grpc_runtime() -> Result<&'static tokio::runtime::Runtime, String> {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    if let Some(rt) = RT.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp-grpc")
        .enable_all()
        .build()
        .map_err(|e| format!("gRPC runtime: {e}"))?;
    Ok(RT.get_or_init(|| rt))
}

fn span_provider(resource: Resource, protocol: Protocol) -> Result<SdkTracerProvider, String> {
    let builder = opentelemetry_otlp::SpanExporter::builder();
    let exporter = match protocol {
        Protocol::HttpProtobuf => builder.with_http().build(),
        Protocol::Grpc => {
            let _in = grpc_runtime()?.enter();
            builder.with_tonic().build()
        }
    }
    .map_err(|e| e.to_string())?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

fn meter_provider(resource: Resource, protocol: Protocol) -> Result<SdkMeterProvider, String> {
    let builder = opentelemetry_otlp::MetricExporter::builder();
    let exporter = match protocol {
        Protocol::HttpProtobuf => builder.with_http().build(),
        Protocol::Grpc => {
            let _in = grpc_runtime()?.enter();
            builder.with_tonic().build()
        }
    }
    .map_err(|e| e.to_string())?;
    Ok(SdkMeterProvider::builder()
        .with_periodic_exporter(exporter)
        .with_resource(resource)
        .build())
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
    use std::sync::{Arc, Mutex as StdMutex};

    /// Lines written by the JSON layer, in memory.
    #[derive(Clone, Default)]
    struct Lines(Arc<StdMutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_logs_are_cloud_logging_lines_in_the_trace_of_their_span() {
        let lines = Lines::default();
        let writer = lines.clone();
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(logs::JsonLayer::new(
                move || writer.clone(),
                Some("my-project".into()),
            ))
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("t")));
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(severity = "critical", "outside any span");
            let incoming = BTreeMap::from([(
                TRACEPARENT.to_string(),
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string(),
            )]);
            let span = tracing::info_span!(
                "message",
                otel.name = "handle x",
                subscription = "x",
                trace_id = tracing::field::Empty
            );
            continue_trace(&span, &incoming);
            span.in_scope(|| {
                let inner = tracing::info_span!("stage_part", table = "orders");
                inner.in_scope(|| tracing::error!(rows = 3u64, "staged \"quoted\""));
            });
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let got: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        assert_eq!(got.len(), 2, "{text}");
        assert_eq!(got[0]["severity"], "WARNING");
        assert_eq!(got[0]["field.severity"], "critical");
        assert_eq!(got[0]["message"], "outside any span");
        assert!(got[0].get("logging.googleapis.com/trace").is_none());
        let l = &got[1];
        assert_eq!(l["severity"], "ERROR");
        assert_eq!(l["message"], "staged \"quoted\"");
        assert_eq!(l["rows"], 3);
        assert_eq!(l["table"], "orders");
        assert_eq!(l["subscription"], "x");
        assert_eq!(l["span"], "stage_part");
        assert!(l.get("otel.name").is_none());
        assert_eq!(
            l["logging.googleapis.com/trace"],
            "projects/my-project/traces/4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let span_id = l["logging.googleapis.com/spanId"].as_str().unwrap();
        assert_eq!(span_id.len(), 16);
        assert_ne!(span_id, "00f067aa0ba902b7", "the line's own span, a child");
        assert_eq!(l["logging.googleapis.com/trace_sampled"], true);
        chrono::DateTime::parse_from_rfc3339(l["time"].as_str().unwrap()).unwrap();
    }

    #[test]
    fn exporters_follow_the_standard_variables() {
        let run = |vars: &[(&str, &str)]| {
            let map: BTreeMap<String, String> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let mut problems = Vec::new();
            let e = Exporters::from_env(&|k| map.get(k).cloned(), &mut problems);
            (e.traces, e.metrics, problems.len())
        };
        let (http, grpc) = (Some(Protocol::HttpProtobuf), Some(Protocol::Grpc));
        assert_eq!(run(&[]), (None, None, 0));
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318");
        assert_eq!(run(&[endpoint]), (http, http, 0));
        assert_eq!(
            run(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]),
            (http, http, 0)
        );
        assert_eq!(
            run(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]),
            (grpc, grpc, 0)
        );
        assert_eq!(
            run(&[
                endpoint,
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf")
            ]),
            (grpc, http, 0)
        );
        assert_eq!(
            run(&[endpoint, ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")]),
            (grpc, http, 0)
        );
        assert_eq!(
            run(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]),
            (None, None, 2)
        );
        assert_eq!(
            run(&[endpoint, ("OTEL_METRICS_EXPORTER", "none")]),
            (http, None, 0)
        );
        assert_eq!(
            run(&[endpoint, ("OTEL_SDK_DISABLED", "true")]),
            (None, None, 0)
        );
        assert_eq!(
            run(&[(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://c:4318/v1/traces"
            )]),
            (http, None, 0)
        );
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let attrs = env(&[(
            "OTEL_RESOURCE_ATTRIBUTES",
            "gcp.project_id=p-1,cloud.region=southamerica-east1",
        )]);
        assert_eq!(project(&attrs).as_deref(), Some("p-1"));
        let r = resource(
            "datashare-worker",
            &env(&[("DATASHARE_GCP_PROJECT", "p-2")]),
        );
        let get = |k: &'static str| r.get(&opentelemetry::Key::from_static_str(k));
        assert_eq!(get("gcp.project_id").unwrap().as_str(), "p-2");
        assert_eq!(
            get("service.version").unwrap().as_str(),
            env!("CARGO_PKG_VERSION")
        );
    }

    #[test]
    fn forced_metric_exports_are_spaced() {
        let t0 = Instant::now();
        assert!(metrics_flush_due(t0), "the first one");
        assert!(!metrics_flush_due(t0 + Duration::from_secs(1)));
        assert!(!metrics_flush_due(t0 + METRICS_FLUSH_EVERY / 2));
        assert!(metrics_flush_due(t0 + METRICS_FLUSH_EVERY));
        assert!(!metrics_flush_due(
            t0 + METRICS_FLUSH_EVERY + Duration::from_secs(1)
        ));
    }

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
