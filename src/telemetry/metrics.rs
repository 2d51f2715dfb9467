//! Every metric of operations.md ("Metrics"), defined here and only here: the names, units,
//! kinds and label keys of its table. The rest of the crate records through the functions
//! below, where the work happens; label values come from closed lists ([`Stage`],
//! [`DeliveryOutcome`]) or configuration (tables, sinks, partners, subscriptions, kinds),
//! never from data.
//!
//! Without an OTLP endpoint the global meter provider is OpenTelemetry's no-op one: every
//! call below is a few loads and a return.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter};

/// Histogram boundaries for durations, in seconds: 5 ms to one hour.
const SECONDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0, 7200.0,
];

/// Histogram boundaries for memory, in bytes: 32 MiB to 16 GiB.
const BYTES: &[f64] = &[
    33554432.0,
    67108864.0,
    134217728.0,
    268435456.0,
    536870912.0,
    1073741824.0,
    2147483648.0,
    4294967296.0,
    8589934592.0,
    17179869184.0,
];

/// The instruments, made once from the global meter provider (set before first use by
/// [`super::start`]).
struct Instruments {
    rows_read: Counter<u64>,
    rows_curated: Counter<u64>,
    rows_quarantined: Counter<u64>,
    stage_duration: Histogram<f64>,
    batch_cpu_time: Histogram<f64>,
    batch_peak_memory: Histogram<u64>,
    deliveries: Counter<u64>,
    delivery_duration: Histogram<f64>,
    delivery_bytes: Counter<u64>,
    delivery_retries: Counter<u64>,
    dead_letters: Counter<u64>,
    alerts_sent: Counter<u64>,
    product_freshness: Gauge<f64>,
    batch_lateness: Gauge<f64>,
    e2e_latency: Histogram<f64>,
    powerbi_refreshes: Counter<u64>,
    powerbi_freshness: Gauge<f64>,
}

fn meter() -> Meter {
    opentelemetry::global::meter_with_scope(
        opentelemetry::InstrumentationScope::builder("datashare")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build(),
    )
}

fn seconds(m: &Meter, name: &'static str, what: &'static str) -> Histogram<f64> {
    m.f64_histogram(name)
        .with_unit("s")
        .with_description(what)
        .with_boundaries(SECONDS.to_vec())
        .build()
}

fn counter(m: &Meter, name: &'static str, unit: &'static str, what: &'static str) -> Counter<u64> {
    m.u64_counter(name)
        .with_unit(unit)
        .with_description(what)
        .build()
}

fn gauge(m: &Meter, name: &'static str, what: &'static str) -> Gauge<f64> {
    m.f64_gauge(name)
        .with_unit("s")
        .with_description(what)
        .build()
}

fn instruments() -> &'static Instruments {
    static ONCE: OnceLock<Instruments> = OnceLock::new();
    ONCE.get_or_init(|| {
        let m = meter();
        Instruments {
            rows_read: counter(
                &m,
                "datashare.rows.read",
                "{row}",
                "Rows read from raw parts",
            ),
            rows_curated: counter(
                &m,
                "datashare.rows.curated",
                "{row}",
                "Rows written to the curated tables",
            ),
            rows_quarantined: counter(
                &m,
                "datashare.rows.quarantined",
                "{row}",
                "Rows set aside, by reason",
            ),
            stage_duration: seconds(
                &m,
                "datashare.stage.duration",
                "Duration of a stage of the pipeline",
            ),
            batch_cpu_time: seconds(
                &m,
                "datashare.batch.cpu_time",
                "CPU seconds of one batch step",
            ),
            batch_peak_memory: m
                .u64_histogram("datashare.batch.peak_memory")
                .with_unit("By")
                .with_description("Peak resident memory of one batch step")
                .with_boundaries(BYTES.to_vec())
                .build(),
            deliveries: counter(
                &m,
                "datashare.deliveries",
                "{delivery}",
                "Delivery attempts by outcome",
            ),
            delivery_duration: seconds(
                &m,
                "datashare.delivery.duration",
                "Duration of one delivery attempt",
            ),
            delivery_bytes: counter(
                &m,
                "datashare.delivery.bytes",
                "By",
                "Bytes delivered to partners",
            ),
            delivery_retries: counter(
                &m,
                "datashare.delivery.retries",
                "{retry}",
                "Delivery attempts after the first",
            ),
            dead_letters: counter(
                &m,
                "datashare.dead_letters",
                "{message}",
                "Messages dead-lettered",
            ),
            alerts_sent: counter(
                &m,
                "datashare.alerts.sent",
                "{email}",
                "Alert e-mails sent to the data team",
            ),
            product_freshness: gauge(
                &m,
                "datashare.product.freshness",
                "Age of the last delivered version of a product",
            ),
            batch_lateness: gauge(
                &m,
                "datashare.batch.lateness",
                "How far past its deadline the oldest incomplete batch is",
            ),
            e2e_latency: seconds(
                &m,
                "datashare.e2e.latency",
                "Marker upload to partner e-mail sent",
            ),
            powerbi_refreshes: counter(
                &m,
                "datashare.powerbi.refreshes",
                "{refresh}",
                "Power BI refreshes seen, by outcome",
            ),
            powerbi_freshness: gauge(
                &m,
                "datashare.powerbi.freshness",
                "Age of the last completed Power BI refresh",
            ),
        }
    })
}

fn kv(key: &'static str, value: &str) -> KeyValue {
    KeyValue::new(key, value.to_string())
}

/// A stage of the pipeline (`datashare.stage.duration`'s `stage` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Staging one raw part.
    StagePart,
    /// The whole batch step.
    BatchStep,
    /// Deduplication of the staged parts.
    Dedup,
    /// Writing the curated tables.
    CuratedUpload,
    /// Building one partner product.
    ProductBuild,
    /// The privacy gate of a product.
    PrivacyGate,
}

impl Stage {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::StagePart => "stage_part",
            Stage::BatchStep => "batch_step",
            Stage::Dedup => "dedup",
            Stage::CuratedUpload => "curated_upload",
            Stage::ProductBuild => "product_build",
            Stage::PrivacyGate => "privacy_gate",
        }
    }

    /// Starts timing this stage; the duration is recorded when the timer is dropped.
    pub fn timer(self) -> StageTimer {
        StageTimer {
            stage: self,
            started: Instant::now(),
        }
    }
}

/// Records a stage's duration when dropped (see [`Stage::timer`]).
#[derive(Debug)]
pub struct StageTimer {
    stage: Stage,
    started: Instant,
}

impl Drop for StageTimer {
    fn drop(&mut self) {
        stage_duration(self.stage, self.started.elapsed());
    }
}

/// `datashare.rows.read`: rows read from raw parts of `table`.
pub fn rows_read(table: &str, rows: u64) {
    instruments().rows_read.add(rows, &[kv("table", table)]);
}

/// `datashare.rows.curated`: rows of `table` written to the curated bucket.
pub fn rows_curated(table: &str, rows: u64) {
    instruments().rows_curated.add(rows, &[kv("table", table)]);
}

/// `datashare.rows.quarantined`: rows of `table` set aside for `reason`.
pub fn rows_quarantined(table: &str, reason: &str, rows: u64) {
    instruments()
        .rows_quarantined
        .add(rows, &[kv("table", table), kv("reason", reason)]);
}

/// `datashare.stage.duration`.
pub fn stage_duration(stage: Stage, took: Duration) {
    instruments()
        .stage_duration
        .record(took.as_secs_f64(), &[kv("stage", stage.as_str())]);
}

/// The outcome of one delivery attempt (`datashare.deliveries`' `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The files went out.
    Delivered,
    /// A receipt, or the content at the destination, showed it done before.
    AlreadyDelivered,
    /// Failed; will be retried.
    TransientError,
    /// Failed for good.
    PermanentError,
}

impl DeliveryOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryOutcome::Delivered => "delivered",
            DeliveryOutcome::AlreadyDelivered => "already_delivered",
            DeliveryOutcome::TransientError => "transient_error",
            DeliveryOutcome::PermanentError => "permanent_error",
        }
    }
}

/// One delivery attempt to `sink` for `partner`: `datashare.deliveries` by outcome,
/// `datashare.delivery.duration`, `datashare.delivery.retries` after a transient error (the
/// message comes again), and `datashare.delivery.bytes` when `bytes` went out.
pub fn delivery(sink: &str, partner: &str, outcome: DeliveryOutcome, took: Duration, bytes: u64) {
    let i = instruments();
    i.deliveries.add(
        1,
        &[
            kv("sink", sink),
            kv("partner", partner),
            kv("outcome", outcome.as_str()),
        ],
    );
    i.delivery_duration
        .record(took.as_secs_f64(), &[kv("sink", sink)]);
    if outcome == DeliveryOutcome::TransientError {
        i.delivery_retries.add(1, &[kv("sink", sink)]);
    }
    if bytes > 0 {
        i.delivery_bytes
            .add(bytes, &[kv("sink", sink), kv("partner", partner)]);
    }
}

/// `datashare.dead_letters`: one message of `subscription` dead-lettered as `error_kind`.
pub fn dead_letter(subscription: &str, error_kind: &str) {
    instruments().dead_letters.add(
        1,
        &[
            kv("subscription", subscription),
            kv("error_kind", error_kind),
        ],
    );
}

/// `datashare.alerts.sent`: one e-mail to the data team about `kind`.
pub fn alert_sent(kind: &str, severity: &str) {
    instruments()
        .alerts_sent
        .add(1, &[kv("kind", kind), kv("severity", severity)]);
}

/// `datashare.product.freshness`: age of the last delivered version of a partner's product.
pub fn product_freshness(partner: &str, product: &str, age: Duration) {
    instruments().product_freshness.record(
        age.as_secs_f64(),
        &[kv("partner", partner), kv("product", product)],
    );
}

/// `datashare.batch.lateness`: how far past its deadline the oldest incomplete batch is.
pub fn batch_lateness(late: Duration) {
    instruments().batch_lateness.record(late.as_secs_f64(), &[]);
}

/// `datashare.e2e.latency`: from the marker's upload to the partner e-mail sent.
pub fn e2e_latency(partner: &str, product: &str, took: Duration) {
    instruments().e2e_latency.record(
        took.as_secs_f64(),
        &[kv("partner", partner), kv("product", product)],
    );
}

/// `datashare.powerbi.refreshes`: one refresh of a monitored `item` seen with `outcome`
/// (`completed`, `failed`, `disabled`, `cancelled`, `throttled`).
pub fn powerbi_refresh(item: &str, outcome: &str) {
    instruments()
        .powerbi_refreshes
        .add(1, &[kv("item", item), kv("outcome", outcome)]);
}

/// `datashare.powerbi.freshness`: age of a monitored item's last completed refresh.
pub fn powerbi_freshness(item: &str, age: Duration) {
    instruments()
        .powerbi_freshness
        .record(age.as_secs_f64(), &[kv("item", item)]);
}

/// The CPU time and peak memory of one batch step (`datashare.batch.cpu_time`,
/// `datashare.batch.peak_memory`): the process's, so concurrent work of the same instance is
/// counted in (one batch step per instance on Cloud Run).
#[derive(Debug)]
pub struct BatchResources {
    cpu_at_start: Option<f64>,
}

impl BatchResources {
    /// Notes the CPU time so far and resets the peak-memory mark (Linux: `/proc/self/clear_refs`).
    pub fn start() -> BatchResources {
        // Best effort: without it the peak is the process's since it started.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        BatchResources {
            cpu_at_start: cpu_seconds(),
        }
    }

    /// Records the step's CPU seconds and peak resident memory.
    pub fn finish(self) {
        let i = instruments();
        if let (Some(start), Some(now)) = (self.cpu_at_start, cpu_seconds()) {
            i.batch_cpu_time.record((now - start).max(0.0), &[]);
        }
        if let Some(peak) = peak_rss_bytes() {
            i.batch_peak_memory.record(peak, &[]);
        }
    }
}

/// User + system CPU seconds of the process.
fn cpu_seconds() -> Option<f64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes into the zeroed struct it is given.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: initialised (zeroed, then filled by a successful getrusage).
    let u = unsafe { usage.assume_init() };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(secs(u.ru_utime) + secs(u.ru_stime))
}

/// Peak resident memory since the last reset (`VmHWM`), in bytes.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kb.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recording_without_a_provider_is_harmless_and_resources_are_read() {
        rows_read("orders", 3);
        rows_quarantined("orders", "bad_date", 1);
        delivery(
            "sftp",
            "ouchhungry",
            DeliveryOutcome::Delivered,
            Duration::from_millis(5),
            10,
        );
        drop(Stage::Dedup.timer());
        assert!(cpu_seconds().is_some_and(|s| s > 0.0));
        assert!(peak_rss_bytes().is_some_and(|b| b > 1024 * 1024));
        BatchResources::start().finish();
        assert_eq!(
            DeliveryOutcome::AlreadyDelivered.as_str(),
            "already_delivered"
        );
        assert_eq!(Stage::ProductBuild.as_str(), "product_build");
    }
}
