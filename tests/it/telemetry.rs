//! Telemetry end to end, with real parts: the `datashare` binary's roles as separate processes
//! (worker, the SFTP, API and e-mail sinks) on the fake-gcp stack and the partner stand-ins,
//! exporting OTLP http/protobuf to a real receiver (tests/py/otlp_receiver.py, the `otlp` venv
//! of scripts/setup.sh) on a free loopback port, and logging Cloud Logging JSON; and a worker's
//! tick exporting product freshness over OTLP/gRPC to the same receiver; and a push request
//! whose spans are exported before it is answered (Cloud Run throttles the CPU afterwards).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use chrono::NaiveDate;
use datashare::config::sinks::SmtpTls;
use datashare::gcp::Gcs;
use datashare::generate::{GenerateOptions, ObjectSink, ObjectWriter, generate_day};
use serde_json::Value;

use crate::harness::{
    SmtpEnv, Stack, api_env, local_contract, mails, partners, publisher, sftp_env, smtp_env, until,
    upload_day,
};

/// The receiver: a child process writing what it gets as JSON lines; killed on drop.
struct Receiver {
    child: Child,
    out: PathBuf,
    port: u16,
    grpc_port: Option<u16>,
}

impl Receiver {
    fn start(dir: &Path) -> Receiver {
        Self::start_with(dir, false)
    }

    /// With `grpc`, an OTLP/gRPC listener too.
    fn start_with(dir: &Path, grpc: bool) -> Receiver {
        let venv = std::env::var_os("DATASHARE_CACHE")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/datashare")))
            .expect("HOME or DATASHARE_CACHE")
            .join("venvs/otlp/bin/python");
        assert!(
            venv.exists(),
            "{} missing: run scripts/setup.sh",
            venv.display()
        );
        let out = dir.join("otlp.jsonl");
        let mut child = Command::new(venv)
            .arg(crate::root().join("tests/py/otlp_receiver.py"))
            .arg("--out")
            .arg(&out)
            .args(grpc.then_some("--grpc"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("the OTLP receiver starts");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let ports: Value = serde_json::from_str(&line).expect("the receiver's ports");
        let port = ports["port"].as_u64().unwrap() as u16;
        let grpc_port = ports["grpc_port"].as_u64().map(|p| p as u16);
        assert_eq!(grpc_port.is_some(), grpc, "{line}");
        Receiver {
            child,
            out,
            port,
            grpc_port,
        }
    }

    /// Every export received so far: (signal, request body).
    fn received(&self) -> Vec<(String, Value)> {
        self.received_by()
            .into_iter()
            .map(|(signal, _, body)| (signal, body))
            .collect()
    }

    /// Every export received so far: (signal, protocol, request body).
    fn received_by(&self) -> Vec<(String, String, Value)> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                (
                    v["signal"].as_str().unwrap().to_string(),
                    v["protocol"].as_str().unwrap().to_string(),
                    v["body"].clone(),
                )
            })
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A role's process; SIGKILLed on drop if still running.
struct Role {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Role {
    fn start(
        name: &'static str,
        args: &[&str],
        env: &BTreeMap<String, String>,
        dir: &Path,
    ) -> Role {
        let log = dir.join(format!("{name}.log"));
        let child = crate::datashare_cmd()
            .envs(env)
            .args(args)
            .args((!args.contains(&"--push")).then_some("--pull"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        Role { name, child, log }
    }

    /// SIGTERM, then waits for a clean exit (the exporters flush on the way out).
    async fn stop(&mut self) {
        // SAFETY: signals our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop on SIGTERM",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(status.success(), "{}: {}", self.name, self.logs());
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Discards generated objects (only the truth is wanted).
struct Discard;

struct Nothing;

impl std::io::Write for Nothing {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter for Nothing {
    fn finish(self: Box<Self>) -> std::io::Result<()> {
        Ok(())
    }
}

impl ObjectSink for Discard {
    fn create(&self, _: &str) -> std::io::Result<Box<dyn ObjectWriter>> {
        Ok(Box::new(Nothing))
    }
}

fn smtp_overrides(smtp: &SmtpEnv) -> Vec<(String, String)> {
    let s = &smtp.settings;
    let file = |p: &Option<PathBuf>| p.as_ref().unwrap().display().to_string();
    vec![
        ("DATASHARE_SMTP_HOST".into(), s.host.clone()),
        ("DATASHARE_SMTP_PORT".into(), s.port.to_string()),
        ("DATASHARE_SMTP_TLS".into(), "starttls".into()),
        ("DATASHARE_SMTP_FROM".into(), s.from.clone()),
        ("DATASHARE_SMTP_USER".into(), s.user.clone().unwrap()),
        (
            "DATASHARE_SMTP_PASSWORD_FILE".into(),
            file(&s.password.as_ref().unwrap().file),
        ),
        ("DATASHARE_SMTP_CA_FILE".into(), file(&s.ca_file)),
    ]
}

/// An exported span, flattened.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace: String,
    id: String,
    parent: String,
}

fn hex_of(b64: &Value) -> String {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.as_str().unwrap_or_default())
        .unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn service_of(resource: &Value) -> String {
    resource["attributes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["key"] == "service.name")
        .and_then(|a| a["value"]["stringValue"].as_str())
        .unwrap_or_default()
        .to_string()
}

fn spans(received: &[(String, Value)]) -> Vec<Span> {
    let mut out = Vec::new();
    for (_, body) in received.iter().filter(|(s, _)| s == "traces") {
        for rs in body["resourceSpans"].as_array().into_iter().flatten() {
            let service = service_of(&rs["resource"]);
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for s in ss["spans"].as_array().into_iter().flatten() {
                    out.push(Span {
                        service: service.clone(),
                        name: s["name"].as_str().unwrap().to_string(),
                        trace: hex_of(&s["traceId"]),
                        id: hex_of(&s["spanId"]),
                        parent: hex_of(&s["parentSpanId"]),
                    });
                }
            }
        }
    }
    out
}

/// The sum points of metric `name` in `service`'s last export: attributes → value.
fn last_sums(
    received: &[(String, Value)],
    service: &str,
    name: &str,
) -> BTreeMap<BTreeMap<String, String>, u64> {
    let mut last = BTreeMap::new();
    for (_, body) in received.iter().filter(|(s, _)| s == "metrics") {
        for rm in body["resourceMetrics"].as_array().into_iter().flatten() {
            if service_of(&rm["resource"]) != service {
                continue;
            }
            for sm in rm["scopeMetrics"].as_array().into_iter().flatten() {
                for m in sm["metrics"].as_array().into_iter().flatten() {
                    if m["name"] != name {
                        continue;
                    }
                    assert_eq!(
                        m["sum"]["aggregationTemporality"], "AGGREGATION_TEMPORALITY_CUMULATIVE",
                        "{name}"
                    );
                    let mut points = BTreeMap::new();
                    for p in m["sum"]["dataPoints"].as_array().into_iter().flatten() {
                        let attrs = p["attributes"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|a| {
                                (
                                    a["key"].as_str().unwrap().to_string(),
                                    a["value"]["stringValue"].as_str().unwrap().to_string(),
                                )
                            })
                            .collect();
                        let v = match &p["asInt"] {
                            Value::String(s) => s.parse().unwrap(),
                            v => v.as_u64().unwrap(),
                        };
                        points.insert(attrs, v);
                    }
                    // Cumulative: the latest export holds the totals.
                    last = points;
                }
            }
        }
    }
    last
}

/// The points of metric `name` (`kind`: `gauge` or `histogram`) in `service`'s exports, each
/// as (attributes, point).
fn points(
    received: &[(String, Value)],
    service: &str,
    name: &str,
    kind: &str,
) -> Vec<(BTreeMap<String, String>, Value)> {
    let mut out = Vec::new();
    for (_, body) in received.iter().filter(|(s, _)| s == "metrics") {
        for rm in body["resourceMetrics"].as_array().into_iter().flatten() {
            if service_of(&rm["resource"]) != service {
                continue;
            }
            for sm in rm["scopeMetrics"].as_array().into_iter().flatten() {
                for m in sm["metrics"].as_array().into_iter().flatten() {
                    if m["name"] != name {
                        continue;
                    }
                    for p in m[kind]["dataPoints"].as_array().into_iter().flatten() {
                        let attrs = p["attributes"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|a| {
                                (
                                    a["key"].as_str().unwrap().to_string(),
                                    a["value"]["stringValue"].as_str().unwrap().to_string(),
                                )
                            })
                            .collect();
                        out.push((attrs, p.clone()));
                    }
                }
            }
        }
    }
    out
}

/// A protobuf-JSON number (64-bit integers come as strings).
fn number(v: &Value) -> f64 {
    match v {
        Value::String(s) => s.parse().unwrap(),
        v => v.as_f64().unwrap(),
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_upload_is_one_exported_trace_across_processes_with_its_metrics_and_json_logs() {
    let stack = tokio::task::spawn_blocking(|| Stack::up(&[]))
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let sftp = sftp_env(work.path());
    let api = api_env(work.path());
    let smtp = smtp_env(work.path(), SmtpTls::Starttls);
    let partners = local_contract(work.path(), &sftp.config, &api.config);
    let receiver = Receiver::start(work.path());

    let mut env = stack.env.clone();
    env.insert(
        "DATASHARE_PARTNERS_DIR".into(),
        partners.display().to_string(),
    );
    env.extend(smtp_overrides(&smtp));
    let overrides: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| k.starts_with("DATASHARE_SMTP"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.extend([
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
            format!("http://127.0.0.1:{}", receiver.port),
        ),
        (
            "OTEL_EXPORTER_OTLP_PROTOCOL".to_string(),
            "http/protobuf".to_string(),
        ),
        (
            "OTEL_METRIC_EXPORT_INTERVAL".to_string(),
            "2000".to_string(),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY".to_string(), "500".to_string()),
        ("LOG_FORMAT".to_string(), "json".to_string()),
        (
            "RUST_LOG".to_string(),
            "info,h2=warn,tonic=warn,tower=warn,hyper=warn,hyper_util=warn".to_string(),
        ),
    ]);
    let dir = work.path();
    let mut roles = vec![
        Role::start("worker", &["worker"], &env, dir),
        Role::start("sftp", &["deliver", "--sink", "sftp"], &env, dir),
        Role::start("api", &["deliver", "--sink", "api"], &env, dir),
        Role::start("email", &["deliver", "--sink", "email"], &env, dir),
    ];

    let o: Vec<(&str, &str)> = overrides
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let cfg = stack.config(&partners, &o);
    let gcs = Gcs::connect(cfg.emulators.storage.as_deref())
        .await
        .unwrap();
    let dt = NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();
    let rows = 300;
    let uploading = Instant::now();
    upload_day(&gcs, &cfg, dt, rows, false).await;
    // The generator's truth for the same options (tests/it/worker.rs `generated`).
    let truth = generate_day(
        &GenerateOptions {
            rows,
            parts: 2,
            defect_rate: 0.02,
            bad_files: false,
            ..GenerateOptions::default()
        },
        dt,
        &Discard,
    )
    .unwrap();

    let mail_dir = PathBuf::from(smtp.server.field("mail"));
    let logs_now = |roles: &[Role]| {
        roles
            .iter()
            .map(|r| format!("--- {}\n{}", r.name, r.logs()))
            .collect::<String>()
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    while mails(&mail_dir).is_empty() {
        assert!(
            Instant::now() < deadline,
            "no partner e-mail: {}",
            logs_now(&roles)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(mails(&mail_dir).len(), 1);
    let upload_to_mail = uploading.elapsed();
    for r in &mut roles {
        r.stop().await;
    }

    // One trace: from the upload that completed the batch to the partner e-mail.
    let received = receiver.received();
    let all = spans(&received);
    let sftp_span = all
        .iter()
        .find(|s| s.name == "deliver sftp")
        .unwrap_or_else(|| panic!("a deliver sftp span: {all:#?}"));
    let trace: Vec<&Span> = all.iter().filter(|s| s.trace == sftp_span.trace).collect();
    let names: BTreeSet<(&str, &str)> = trace
        .iter()
        .map(|s| (s.service.as_str(), s.name.as_str()))
        .collect();
    for want in [
        ("datashare-worker", "handle extracts-worker"),
        ("datashare-worker", "handle batches-worker"),
        ("datashare-worker", "batch_step"),
        ("datashare-worker", "dedup"),
        ("datashare-worker", "curated_upload"),
        ("datashare-worker", "build ouchhungry daily"),
        ("datashare-worker", "privacy_gate"),
        ("datashare-sftp", "handle deliveries-sftp"),
        ("datashare-sftp", "deliver sftp"),
        ("datashare-api", "handle deliveries-api"),
        ("datashare-api", "deliver api"),
        ("datashare-email", "handle notify-email"),
        ("datashare-email", "deliver email"),
        ("datashare-email", "send_email"),
    ] {
        assert!(
            names.contains(&want),
            "{want:?} not in the trace: {names:#?}"
        );
    }
    assert!(
        all.iter()
            .any(|s| s.name == "stage_part" && s.service == "datashare-worker"),
        "stage_part spans"
    );
    assert!(
        trace.iter().any(|s| s.name == "notify"),
        "the notify span: {names:#?}"
    );
    // Parent links intact across the processes: one root, every other parent exported.
    let ids: BTreeSet<&str> = trace.iter().map(|s| s.id.as_str()).collect();
    let roots: Vec<&&Span> = trace.iter().filter(|s| s.parent.is_empty()).collect();
    assert_eq!(roots.len(), 1, "one root: {roots:#?}");
    assert_eq!(roots[0].name, "handle extracts-worker");
    for s in &trace {
        assert!(
            s.parent.is_empty() || ids.contains(s.parent.as_str()),
            "{s:?}: its parent is not in the trace"
        );
    }
    let handled = |name: &str| trace.iter().find(|s| s.name == name).unwrap();
    let deliver_email = handled("deliver email");
    assert_eq!(deliver_email.parent, handled("handle notify-email").id);
    eprintln!(
        "spans in the upload's trace: {} ({} exported in all)",
        trace.len(),
        all.len()
    );

    // Metrics: the generator's truth and the deliveries made.
    let read = last_sums(&received, "datashare-worker", "datashare.rows.read");
    let quarantined = last_sums(&received, "datashare-worker", "datashare.rows.quarantined");
    for (table, t) in &truth.tables {
        assert_eq!(
            read.get(&labels(&[("table", table)])).copied().unwrap_or(0),
            t.rows_read,
            "rows read of {table}: {read:?}"
        );
        for (reason, n) in &t.quarantined_by_reason {
            assert_eq!(
                quarantined
                    .get(&labels(&[("table", table), ("reason", reason)]))
                    .copied(),
                Some(*n),
                "{table} quarantined for {reason}: {quarantined:?}"
            );
        }
    }
    let total_quarantined: u64 = quarantined.values().sum();
    let truth_quarantined: u64 = truth
        .tables
        .values()
        .flat_map(|t| t.quarantined_by_reason.values())
        .sum();
    assert_eq!(total_quarantined, truth_quarantined);
    assert!(truth_quarantined > 0, "the generator injected defects");
    for sink in ["sftp", "api", "email"] {
        let d = last_sums(
            &received,
            &format!("datashare-{sink}"),
            "datashare.deliveries",
        );
        let want = labels(&[
            ("sink", sink),
            ("partner", "ouchhungry"),
            ("outcome", "delivered"),
        ]);
        assert_eq!(d.get(&want).copied(), Some(1), "{sink}: {d:?}");
        assert_eq!(d.values().sum::<u64>(), 1, "{sink}: one delivery, {d:?}");
    }
    let bytes = last_sums(&received, "datashare-sftp", "datashare.delivery.bytes");
    assert!(bytes.values().sum::<u64>() > 0, "{bytes:?}");

    // Marker upload → partner e-mail: one measure, within the time the test saw it take.
    let e2e = points(
        &received,
        "datashare-email",
        "datashare.e2e.latency",
        "histogram",
    );
    let (attrs, last) = e2e.last().expect("an e2e latency point");
    assert_eq!(
        *attrs,
        labels(&[("partner", "ouchhungry"), ("product", "daily")])
    );
    assert_eq!(number(&last["count"]), 1.0, "{last}");
    let secs = number(&last["sum"]);
    assert!(
        secs > 0.0 && secs <= upload_to_mail.as_secs_f64() + 1.0,
        "{secs} s, the test saw {upload_to_mail:?}"
    );
    eprintln!("e2e latency: {secs:.2} s");
    // The version is the product's last delivered one (what ticks read for the freshness).
    let (record, _) = gcs
        .read(
            &cfg.gcp.buckets.ops,
            "delivered/ouchhungry/daily.json",
            None,
        )
        .await
        .unwrap()
        .expect("the delivered record");
    let record: Value = serde_json::from_slice(&record).unwrap();
    assert_eq!(record["period"], dt.to_string(), "{record}");
    assert!(record["marker_generation"].is_i64(), "{record}");

    // Logs: every line a JSON object in Cloud Logging's form, none with a secret.
    let project = &stack.env["DATASHARE_GCP_PROJECT"];
    let trace_field = format!("projects/{project}/traces/{}", sftp_span.trace);
    let mut secrets: Vec<String> = sftp.secrets.clone();
    secrets.push(api.password.clone());
    secrets.push(smtp.password.clone());
    secrets.push(std::fs::read_to_string(work.path().join("hmac-key")).unwrap());
    let severities = ["DEBUG", "INFO", "WARNING", "ERROR"];
    for r in &roles {
        let text = r.logs();
        assert!(!text.is_empty(), "{} logged", r.name);
        let mut traced = 0;
        for line in text.lines() {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", r.name));
            assert!(
                severities.contains(&v["severity"].as_str().unwrap_or("")),
                "{line}"
            );
            assert!(v["message"].is_string(), "{line}");
            chrono::DateTime::parse_from_rfc3339(v["time"].as_str().unwrap()).unwrap();
            if let Some(t) = v.get("logging.googleapis.com/trace") {
                let t = t.as_str().unwrap();
                let id = t
                    .strip_prefix(&format!("projects/{project}/traces/"))
                    .unwrap_or_else(|| panic!("{line}"));
                assert!(
                    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
                    "{line}"
                );
                assert_eq!(
                    v["logging.googleapis.com/spanId"].as_str().unwrap().len(),
                    16
                );
                assert!(
                    v["logging.googleapis.com/trace_sampled"].is_boolean(),
                    "{line}"
                );
                traced += 1;
            }
            for s in secrets.iter().map(|s| s.trim()).filter(|s| s.len() >= 8) {
                assert!(
                    !line.contains(s),
                    "{}: a throwaway secret in the logs",
                    r.name
                );
            }
        }
        assert!(traced > 0, "{}: no line carries a trace", r.name);
        if r.name != "worker" {
            assert!(
                text.contains(&trace_field),
                "{}: no line in the upload's trace",
                r.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_tick_exports_product_freshness_over_grpc() {
    let stack = tokio::task::spawn_blocking(|| Stack::up(&[]))
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let partners = partners(work.path());
    let receiver = Receiver::start_with(work.path(), true);
    let cfg = stack.config(&partners, &[]);
    let gcs = Gcs::connect(cfg.emulators.storage.as_deref())
        .await
        .unwrap();
    // The daily product was last delivered two hours before the tick; the monthly never.
    let at = chrono::Utc::now();
    let record = serde_json::json!({
        "delivery_id": "d".repeat(64),
        "period": "2026-11-27",
        "delivered_at": (at - chrono::Duration::hours(2)).to_rfc3339(),
    });
    gcs.write(
        &cfg.gcp.buckets.ops,
        "delivered/ouchhungry/daily.json",
        record.to_string().into_bytes(),
        None,
    )
    .await
    .unwrap();

    let mut env = stack.env.clone();
    env.insert(
        "DATASHARE_PARTNERS_DIR".into(),
        partners.display().to_string(),
    );
    env.extend([
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
            format!("http://127.0.0.1:{}", receiver.grpc_port.unwrap()),
        ),
        (
            "OTEL_EXPORTER_OTLP_PROTOCOL".to_string(),
            "grpc".to_string(),
        ),
        (
            "OTEL_METRIC_EXPORT_INTERVAL".to_string(),
            "1000".to_string(),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY".to_string(), "200".to_string()),
        ("RUST_LOG".to_string(), "info".to_string()),
    ]);
    let mut worker = Role::start("worker", &["worker"], &env, work.path());
    let bus = publisher(&cfg, &cfg.gcp.topics.schedules).await;
    bus.publish(
        &cfg.gcp.topics.schedules,
        datashare::events::Schedule::Tick { at }.to_message(),
    )
    .await
    .unwrap();

    let freshness = |received: &[(String, Value)]| {
        points(
            received,
            "datashare-worker",
            "datashare.product.freshness",
            "gauge",
        )
    };
    until(
        "the tick's span and freshness over gRPC",
        Duration::from_secs(120),
        || {
            let received = receiver.received();
            let ticked = spans(&received)
                .iter()
                .any(|s| s.name == "handle schedules-worker");
            async move { (ticked && !freshness(&received).is_empty()).then_some(()) }
        },
    )
    .await;
    worker.stop().await;

    let by = receiver.received_by();
    assert!(
        by.iter().all(|(_, protocol, _)| protocol == "grpc"),
        "every export over gRPC"
    );
    let received = receiver.received();
    let points = freshness(&received);
    for (attrs, p) in &points {
        assert_eq!(
            *attrs,
            labels(&[("partner", "ouchhungry"), ("product", "daily")]),
            "only the delivered product has a freshness"
        );
        assert_eq!(number(&p["asDouble"]), 7200.0, "{p}");
    }
    let span = spans(&received)
        .into_iter()
        .find(|s| s.name == "handle schedules-worker")
        .unwrap();
    assert_eq!(span.service, "datashare-worker");
    assert!(span.parent.is_empty(), "a tick starts its own trace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_request_exports_its_spans_before_it_answers() {
    let stack = tokio::task::spawn_blocking(|| Stack::up(&[]))
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let partners = partners(work.path());
    let receiver = Receiver::start(work.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut env = stack.env.clone();
    env.insert(
        "DATASHARE_PARTNERS_DIR".into(),
        partners.display().to_string(),
    );
    env.extend([
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
            format!("http://127.0.0.1:{}", receiver.port),
        ),
        // Batches of a minute: only the request's own flush gets its spans out in time.
        ("OTEL_BSP_SCHEDULE_DELAY".to_string(), "60000".to_string()),
        (
            "OTEL_METRIC_EXPORT_INTERVAL".to_string(),
            "60000".to_string(),
        ),
        ("DATASHARE_PUSH_VERIFY".to_string(), "false".to_string()),
    ]);
    let port_arg = port.to_string();
    let mut worker = Role::start(
        "worker",
        &["worker", "--push", "--port", &port_arg],
        &env,
        work.path(),
    );
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    until("the push endpoint", Duration::from_secs(60), || {
        let get = http.get(format!("{base}/healthz")).send();
        async move { get.await.ok().filter(|r| r.status().is_success()) }
    })
    .await;

    let tick = datashare::events::Schedule::Tick {
        at: chrono::Utc::now(),
    }
    .to_message();
    let envelope = serde_json::json!({
        "message": {
            "data": base64::engine::general_purpose::STANDARD.encode(&tick.data),
            "messageId": "push-1",
        },
        "subscription": "projects/datashare-local/subscriptions/schedules-worker",
    });
    let answered = http
        .post(format!("{base}/push/schedules"))
        .json(&envelope)
        .send()
        .await
        .unwrap();
    assert_eq!(
        answered.status().as_u16(),
        204,
        "{:?}",
        answered.text().await
    );
    // Exported before the answer (the receiver writes before it replies); a second is slack
    // for the file, far below the minute the batch exporter would have waited.
    let deadline = Instant::now() + Duration::from_secs(1);
    let span = loop {
        let got = spans(&receiver.received());
        if let Some(s) = got
            .into_iter()
            .find(|s| s.name == "handle schedules-worker")
        {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the request's span was not exported before the answer: {}",
            worker.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(span.service, "datashare-worker");
    worker.stop().await;
}
