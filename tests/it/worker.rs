//! The worker on the real emulators (fake-gcp/stack.py: Pub/Sub emulator and fake-gcs-server),
//! one stack per test on free ports, stopped by a guard even when the test panics.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use chrono::NaiveDate;
use datashare::clean::QualityReport;
use datashare::config::{BATCHES_SUBSCRIPTION, Config, EXTRACTS_SUBSCRIPTION};
use datashare::events::batch::BATCH_READY_VERSION;
use datashare::events::{
    BatchReady, DeliveryRequest, Incoming, ObjectGeneration, Outgoing, Schedule,
};
use datashare::gcp::{Bus, Gcs};
use datashare::generate::{GenerateOptions, ObjectSink, ObjectWriter, generate_day};
use datashare::pipeline::{Worker, names};
use datashare::products::manifest::sha256_hex;
use datashare::service::claim::{self, Claim};
use datashare::service::{Outcome, pull, push};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde_json::{Value, json};
use tokio::sync::watch;

/// A running fake-gcp stack; `down` runs on drop.
pub(crate) struct Stack {
    _dir: tempfile::TempDir,
    state: PathBuf,
    pub(crate) env: BTreeMap<String, String>,
    http: reqwest::Client,
}

/// Logs of the code under test, shown for failing tests (`RUST_LOG` to change the level).
fn init_tracing() {
    // One subscriber for the whole test binary: the sinks' capture (the secret checks read it).
    crate::sinks::capture_logs();
}

impl Stack {
    pub(crate) fn up(extra: &[String]) -> Stack {
        init_tracing();
        let dir = tempfile::tempdir().expect("temp dir");
        let state = dir.path().join("stack.json");
        let out = Command::new("python3")
            .arg(crate::root().join("fake-gcp/stack.py"))
            .arg("--state")
            .arg(&state)
            .args(["up", "--json", "--retry-backoff-cap", "1", "--no-partners"])
            .args(extra)
            .output()
            .expect("python3 runs fake-gcp/stack.py");
        // From here on, the guard stops whatever was started.
        let mut stack = Stack {
            _dir: dir,
            state,
            env: BTreeMap::new(),
            http: reqwest::Client::new(),
        };
        assert!(
            out.status.success(),
            "stack.py up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        stack.env = serde_json::from_slice(&out.stdout).expect("stack env is JSON");
        stack
    }

    pub(crate) fn project(&self) -> &str {
        &self.env["GOOGLE_CLOUD_PROJECT"]
    }

    pub(crate) fn pubsub(&self, path: &str) -> String {
        format!(
            "http://{}/v1/projects/{}/{path}",
            self.env["PUBSUB_EMULATOR_HOST"],
            self.project()
        )
    }

    /// Creates a pull subscription on `topic` for the test to watch.
    pub(crate) async fn watch(&self, topic: &str, name: &str) {
        let body = json!({
            "topic": format!("projects/{}/topics/{topic}", self.project()),
            "ackDeadlineSeconds": 60
        });
        let r = self
            .http
            .put(self.pubsub(&format!("subscriptions/{name}")))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "create subscription {name}: {}",
            r.status()
        );
    }

    /// Pulls (and acknowledges) what a subscription has now.
    pub(crate) async fn pull(&self, name: &str) -> Vec<Incoming> {
        let r: Value = self
            .http
            .post(self.pubsub(&format!("subscriptions/{name}:pull")))
            .json(&json!({"maxMessages": 100, "returnImmediately": true}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let received = r["receivedMessages"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let ids: Vec<Value> = received.iter().map(|m| m["ackId"].clone()).collect();
        if !ids.is_empty() {
            self.http
                .post(self.pubsub(&format!("subscriptions/{name}:acknowledge")))
                .json(&json!({ "ackIds": ids }))
                .send()
                .await
                .unwrap();
        }
        received
            .iter()
            .map(|m| {
                let msg = &m["message"];
                Incoming {
                    id: msg["messageId"].as_str().unwrap_or_default().to_string(),
                    data: base64::engine::general_purpose::STANDARD
                        .decode(msg["data"].as_str().unwrap_or_default())
                        .unwrap(),
                    attributes: serde_json::from_value(msg["attributes"].clone())
                        .unwrap_or_default(),
                    delivery_attempt: None,
                }
            })
            .collect()
    }

    /// Pulls until `enough` holds for what was received, then until nothing more comes for a
    /// few polls; fails after `limit`.
    pub(crate) async fn drain(
        &self,
        name: &str,
        limit: Duration,
        enough: impl Fn(&[Incoming]) -> bool,
    ) -> Vec<Incoming> {
        let deadline = Instant::now() + limit;
        let mut got = Vec::new();
        let mut quiet = 0;
        loop {
            let batch = self.pull(name).await;
            if batch.is_empty() {
                quiet += 1;
            } else {
                quiet = 0;
                got.extend(batch);
            }
            if enough(&got) && quiet >= 5 {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: gave up with {} messages",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Drops every message of `subscription` published so far, acknowledged or not (a seek to
    /// now): as if Pub/Sub had given up on them.
    pub(crate) async fn forget(&self, subscription: &str) {
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let r = self
            .http
            .post(self.pubsub(&format!("subscriptions/{subscription}:seek")))
            .json(&json!({ "time": time }))
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "seek {subscription}: {}",
            r.status()
        );
    }

    /// Deletes an object on fake-gcs-server (what the code under test never does).
    pub(crate) async fn delete_object(&self, bucket: &str, name: &str) {
        let host = self.env["STORAGE_EMULATOR_HOST"].trim_end_matches('/');
        let url = format!(
            "{host}/storage/v1/b/{bucket}/o/{}",
            datashare::gcp::storage::encode(name)
        );
        let r = self.http.delete(url).send().await.unwrap();
        assert!(r.status().is_success(), "delete {name}: {}", r.status());
    }

    /// Sets a subscription's ack deadline (the topology's are minutes long).
    pub(crate) async fn ack_deadline(&self, subscription: &str, secs: u32) {
        let body = json!({"subscription": {"ackDeadlineSeconds": secs}, "updateMask": "ackDeadlineSeconds"});
        let r = self
            .http
            .patch(self.pubsub(&format!("subscriptions/{subscription}")))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "patch {subscription}: {}",
            r.status()
        );
    }

    pub(crate) fn config(&self, partners: &Path, overrides: &[(&str, &str)]) -> Config {
        let mut env = self.env.clone();
        env.insert(
            "DATASHARE_PARTNERS_DIR".into(),
            partners.display().to_string(),
        );
        for (k, v) in overrides {
            env.insert(k.to_string(), v.to_string());
        }
        Config::load_with(None, &move |k| env.get(k).cloned()).expect("test config is valid")
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = Command::new("python3")
            .arg(crate::root().join("fake-gcp/stack.py"))
            .arg("--state")
            .arg(&self.state)
            .arg("down")
            .output();
    }
}

/// The OuchHungry contract with a throwaway key in a file.
pub(crate) fn partners(dir: &Path) -> PathBuf {
    let p = dir.join("partners");
    std::fs::create_dir_all(&p).unwrap();
    let key = dir.join("hmac-key");
    let bytes: [u8; 32] = rand::random();
    std::fs::write(
        &key,
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>(),
    )
    .unwrap();
    let text = crate::shipped_contract_with_hmac_file(&key);
    std::fs::write(p.join("ouchhungry.toml"), text).unwrap();
    p
}

/// An object: name and bytes.
pub(crate) type Object = (String, Vec<u8>);

/// Objects collected in memory, shared with their writers.
type Objects = Arc<Mutex<Vec<Object>>>;

/// Collects generated objects in memory.
#[derive(Clone, Default)]
struct MemSink(Objects);

struct MemObject {
    name: String,
    buf: Vec<u8>,
    out: Objects,
}

impl Write for MemObject {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter for MemObject {
    fn finish(self: Box<Self>) -> std::io::Result<()> {
        self.out.lock().unwrap().push((self.name, self.buf));
        Ok(())
    }
}

impl ObjectSink for MemSink {
    fn create(&self, name: &str) -> std::io::Result<Box<dyn ObjectWriter>> {
        Ok(Box::new(MemObject {
            name: name.to_string(),
            buf: Vec::new(),
            out: self.0.clone(),
        }))
    }
}

/// A generated day: (marker, parts) as (name, bytes), and the truth's rows read per table.
pub(crate) fn generated(
    dt: NaiveDate,
    rows: u64,
    bad_files: bool,
) -> (Object, Vec<Object>, BTreeMap<String, u64>) {
    let sink = MemSink::default();
    let opts = GenerateOptions {
        rows,
        parts: 2,
        defect_rate: 0.02,
        bad_files,
        ..GenerateOptions::default()
    };
    let truth = generate_day(&opts, dt, &sink).expect("generates");
    let objects = std::mem::take(&mut *sink.0.lock().unwrap());
    let marker_name = names::marker(dt);
    let marker = objects
        .iter()
        .find(|(n, _)| *n == marker_name)
        .cloned()
        .expect("marker");
    let parts = objects
        .into_iter()
        .filter(|(n, _)| n.starts_with("extracts/") && *n != marker_name)
        .collect();
    let rows = truth
        .tables
        .iter()
        .map(|(k, t)| (k.clone(), t.rows_read))
        .collect();
    (marker, parts, rows)
}

pub(crate) async fn until<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The batch version of what is in the raw bucket now.
pub(crate) async fn current_batch(gcs: &Gcs, cfg: &Config, dt: NaiveDate) -> BatchReady {
    let raw = &cfg.gcp.buckets.raw;
    let (body, marker_generation) = gcs
        .read(raw, &names::marker(dt), None)
        .await
        .unwrap()
        .unwrap();
    let marker: Value = serde_json::from_slice(&body).unwrap();
    let mut files = Vec::new();
    for f in marker["files"].as_array().unwrap() {
        let name = f.as_str().unwrap().to_string();
        let generation = gcs.stat(raw, &name).await.unwrap().unwrap().generation;
        files.push(ObjectGeneration { name, generation });
    }
    BatchReady {
        schema_version: BATCH_READY_VERSION,
        dt,
        marker_generation,
        files,
        release: false,
        replay: None,
    }
}

/// The GCS notification of an object generation, as fake-gcs-server sends it.
fn notification(bucket: &str, name: &str, generation: i64) -> Outgoing {
    let data = json!({"kind": "storage#object", "name": name, "bucket": bucket,
        "generation": generation.to_string(), "size": "1"});
    Outgoing {
        data: data.to_string().into_bytes(),
        attributes: BTreeMap::from([
            ("eventType".to_string(), "OBJECT_FINALIZE".to_string()),
            ("payloadFormat".to_string(), "JSON_API_V1".to_string()),
            ("bucketId".to_string(), bucket.to_string()),
            ("objectId".to_string(), name.to_string()),
            ("objectGeneration".to_string(), generation.to_string()),
        ]),
    }
}

fn incoming(o: &Outgoing, id: &str) -> Incoming {
    Incoming {
        id: id.to_string(),
        data: o.data.clone(),
        attributes: o.attributes.clone(),
        delivery_attempt: Some(1),
    }
}

/// Checks the batch's curated outputs and quality report against the generator's truth.
async fn check_curated(gcs: &Gcs, cfg: &Config, dt: NaiveDate, truth: &BTreeMap<String, u64>) {
    let curated = &cfg.gcp.buckets.curated;
    for t in ["transactions", "products", "customers"] {
        let name = format!("curated/{t}/dt={dt}/part-00000.parquet");
        assert!(gcs.stat(curated, &name).await.unwrap().is_some(), "{name}");
    }
    let (body, _) = gcs
        .read(curated, &format!("reports/dt={dt}/quality.json"), None)
        .await
        .unwrap()
        .expect("quality report");
    let report: QualityReport = serde_json::from_slice(&body).unwrap();
    for (t, rows) in truth {
        let r = &report.tables[t];
        assert!(r.balances(), "{t} does not balance");
        assert_eq!(
            r.rows_read, *rows,
            "{t}: a part uploaded twice must not double"
        );
    }
}

/// Checks a delivery request's attributes and that its files are what it says.
pub(crate) async fn check_delivery(gcs: &Gcs, m: &Incoming, dt: NaiveDate) -> DeliveryRequest {
    let d = DeliveryRequest::parse(m).expect("a delivery request");
    let a = &m.attributes;
    assert_eq!(a["partner"], "ouchhungry");
    assert_eq!(a["product"], "daily");
    assert_eq!(a["period"], dt.to_string());
    assert_eq!(a["delivery_id"], d.delivery_id);
    assert_eq!(a.get("sink_sftp").map(String::as_str), Some("true"));
    assert_eq!(a.get("sink_api").map(String::as_str), Some("true"));
    assert!(!a.contains_key("sink_email"));
    assert_eq!(
        d.delivery_id,
        sha256_hex(format!("ouchhungry|daily|{dt}|{}", d.product_version).as_bytes())
    );
    assert_eq!(d.files.len(), 2, "parquet and csv");
    for f in &d.files {
        for digest in [&f.file, &f.manifest] {
            let (bucket, name) = digest
                .uri
                .strip_prefix("gs://")
                .unwrap()
                .split_once('/')
                .unwrap();
            let (data, _) = gcs
                .read(bucket, name, None)
                .await
                .unwrap()
                .expect("delivered file");
            assert_eq!(sha256_hex(&data), digest.sha256, "{}", digest.uri);
            assert_eq!(data.len() as u64, digest.bytes);
        }
    }
    assert_eq!(d.files[0].file.sha256, d.product_version);
    d
}

fn is_daily(m: &Incoming) -> bool {
    m.attributes.get("product").map(String::as_str) == Some("daily")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_worker_turns_a_messy_upload_into_one_delivery_per_version() {
    let stack = Stack::up(&[]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = stack.config(&partners(dir.path()), &[]);
    stack.watch("deliveries", "test-deliveries").await;
    stack.watch("updates", "test-updates").await;
    let worker = Arc::new(Worker::start(cfg.clone()).await.expect("worker starts"));
    let (stop, rx) = watch::channel(false);
    let pulling = tokio::spawn(pull::run(worker.clone(), rx));

    let dt = NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();
    let (marker, mut parts, truth) = generated(dt, 400, false);
    parts.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(7));
    let gcs = &worker.gcs;
    let raw = &cfg.gcp.buckets.raw;
    // The marker first, then the parts in any order, one of them twice (a new generation).
    gcs.write(raw, &marker.0, marker.1.clone(), None)
        .await
        .unwrap();
    let mut last = (String::new(), 0);
    for (name, data) in &parts {
        last = (
            name.clone(),
            gcs.write(raw, name, data.clone(), None).await.unwrap(),
        );
    }
    let (again, again_data) = parts[0].clone();
    gcs.write(raw, &again, again_data, None).await.unwrap();
    // A duplicated notification.
    let bus = Bus::connect(
        &cfg.gcp.project,
        &["extracts"],
        cfg.emulators.pubsub.as_deref(),
    )
    .await
    .unwrap();
    bus.publish("extracts", notification(raw, &last.0, last.1))
        .await
        .unwrap();

    let ready = current_batch(gcs, &cfg, dt).await;
    let done = names::batch_done(dt, &ready.version());
    let ops = cfg.gcp.buckets.ops.clone();
    until(
        "the batch's done marker",
        Duration::from_secs(180),
        || async { gcs.stat(&ops, &done).await.unwrap() },
    )
    .await;
    check_curated(gcs, &cfg, dt, &truth).await;
    let got = stack
        .drain("test-deliveries", Duration::from_secs(60), |m| {
            !m.is_empty()
        })
        .await;
    assert_eq!(
        got.len(),
        1,
        "one delivery request per product version: {got:?}"
    );
    assert!(is_daily(&got[0]));
    check_delivery(gcs, &got[0], dt).await;
    // The BigQuery products table's copy of the period's Parquet: the delivered bytes.
    let req = DeliveryRequest::parse(&got[0]).unwrap();
    let parquet = req.files.iter().find(|f| f.format == "parquet").unwrap();
    let table_copy = format!(
        "tables/daily/dt=2026-11-27/partner=ouchhungry/{}",
        parquet.name
    );
    let (copy, _) = gcs
        .read(&cfg.gcp.buckets.products, &table_copy, None)
        .await
        .unwrap()
        .expect("the products table's copy");
    assert_eq!(sha256_hex(&copy), parquet.file.sha256);
    // What the step updated, for the Power BI monitor: once, with the batch version.
    let updates = stack
        .drain("test-updates", Duration::from_secs(30), |m| !m.is_empty())
        .await;
    assert_eq!(updates.len(), 1, "{updates:?}");
    assert!(updates[0].attributes.contains_key("traceparent"));
    let u = datashare::events::Updates::parse(&updates[0]).unwrap();
    assert_eq!(
        (u.dt.as_str(), u.batch_version),
        ("2026-11-27", ready.step_key())
    );
    assert_eq!(
        u.tables,
        [
            "curated/customers",
            "curated/products",
            "curated/transactions",
            "products/daily"
        ]
    );

    stop.send(true).unwrap();
    pulling.await.unwrap().unwrap();
}

/// Uploads a generated day (marker first) and returns the truth's rows per table.
pub(crate) async fn upload_day(
    gcs: &Gcs,
    cfg: &Config,
    dt: NaiveDate,
    rows: u64,
    bad_files: bool,
) -> (Vec<(String, i64)>, BTreeMap<String, u64>) {
    let (marker, parts, truth) = generated(dt, rows, bad_files);
    let raw = &cfg.gcp.buckets.raw;
    let mut written = vec![(
        marker.0.clone(),
        gcs.write(raw, &marker.0, marker.1, None).await.unwrap(),
    )];
    for (name, data) in parts {
        let g = gcs.write(raw, &name, data, None).await.unwrap();
        written.push((name, g));
    }
    (written, truth)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_race_for_one_batch_claim() {
    let stack = Stack::up(&[]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = stack.config(&partners(dir.path()), &[]);
    stack.watch("deliveries", "test-deliveries").await;
    let a = Arc::new(Worker::start(cfg.clone()).await.unwrap());
    let b = Arc::new(Worker::start(cfg.clone()).await.unwrap());
    let ops = &cfg.gcp.buckets.ops;
    let lease = Duration::from_secs(60);

    // The claim itself: of two concurrent takers one wins, the other gets 412 and backs off.
    let name = "claims/test/race.json";
    let (x, y) = tokio::join!(
        claim::take(&a.gcs, ops, name, "a", lease),
        claim::take(&b.gcs, ops, name, "b", lease)
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    let taken = [&x, &y]
        .iter()
        .filter(|c| matches!(c, Claim::Taken { .. }))
        .count();
    assert_eq!(taken, 1, "{x:?} {y:?}");
    assert!([&x, &y].iter().any(|c| matches!(c, Claim::Held { .. })));
    // An expired claim is taken over once, conditionally on its generation.
    let name = "claims/test/expired.json";
    let first = claim::take(&a.gcs, ops, name, "a", Duration::ZERO)
        .await
        .unwrap();
    assert!(matches!(
        first,
        Claim::Taken {
            took_over: false,
            ..
        }
    ));
    let second = claim::take(&b.gcs, ops, name, "b", lease).await.unwrap();
    assert!(
        matches!(
            second,
            Claim::Taken {
                took_over: true,
                ..
            }
        ),
        "{second:?}"
    );
    let third = claim::take(&a.gcs, ops, name, "a", lease).await.unwrap();
    assert!(
        matches!(&third, Claim::Held { owner, .. } if owner == "b"),
        "{third:?}"
    );

    // Stage the batch through worker a's handler (no subscriber runs in this test).
    let dt = NaiveDate::from_ymd_opt(2026, 11, 26).unwrap();
    let (written, truth) = upload_day(&a.gcs, &cfg, dt, 200, false).await;
    for (i, (name, generation)) in written.iter().enumerate() {
        let n = notification(&cfg.gcp.buckets.raw, name, *generation);
        let outcome = a
            .handle(EXTRACTS_SUBSCRIPTION, &incoming(&n, &format!("n{i}")))
            .await;
        assert_eq!(outcome, Outcome::Ack, "{name}");
    }

    // Both workers get the same batch at once: one runs the step, the other backs off (or,
    // if the first already finished, finds the done marker).
    let ready = current_batch(&a.gcs, &cfg, dt).await;
    let msg = incoming(&ready.to_message(), "batch-1");
    let race = |w: &Arc<Worker>| {
        let (w, msg) = (w.clone(), msg.clone());
        tokio::spawn(async move { w.handle(BATCHES_SUBSCRIPTION, &msg).await })
    };
    let (ta, tb) = (race(&a), race(&b));
    let (oa, ob) = (ta.await.unwrap(), tb.await.unwrap());
    assert!(oa == Outcome::Ack || ob == Outcome::Ack, "{oa:?} {ob:?}");
    // A redelivery after the step is acknowledged without running it again.
    assert_eq!(b.handle(BATCHES_SUBSCRIPTION, &msg).await, Outcome::Ack);
    assert_eq!(a.handle(BATCHES_SUBSCRIPTION, &msg).await, Outcome::Ack);
    assert!(
        a.gcs
            .stat(ops, &names::batch_done(dt, &ready.version()))
            .await
            .unwrap()
            .is_some()
    );
    check_curated(&a.gcs, &cfg, dt, &truth).await;

    let got = stack
        .drain("test-deliveries", Duration::from_secs(60), |m| {
            !m.is_empty()
        })
        .await;
    assert_eq!(got.len(), 1, "one delivery request: {got:?}");
    check_delivery(&a.gcs, &got[0], dt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_outside_the_layout_are_dead_lettered_once_and_acked() {
    let stack = Stack::up(&[]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = stack.config(&partners(dir.path()), &[]);
    let worker = Arc::new(Worker::start(cfg.clone()).await.unwrap());
    let raw = cfg.gcp.buckets.raw.clone();

    // Handled directly: acknowledged (never retried) after one dead letter.
    let n = notification(&raw, "uploads/readme.txt", 1);
    assert_eq!(
        worker
            .handle(EXTRACTS_SUBSCRIPTION, &incoming(&n, "x1"))
            .await,
        Outcome::Ack
    );
    let garbage = Incoming {
        id: "x2".into(),
        data: b"not json".to_vec(),
        ..Incoming::default()
    };
    assert_eq!(
        worker.handle(BATCHES_SUBSCRIPTION, &garbage).await,
        Outcome::Ack
    );

    // Through the subscription: a real upload outside the layout.
    let (stop, rx) = watch::channel(false);
    let pulling = tokio::spawn(pull::run(worker.clone(), rx));
    let stray = "extracts/transactions/dt=2026-11-27/notes.txt";
    worker
        .gcs
        .write(&raw, stray, b"hello".to_vec(), None)
        .await
        .unwrap();

    let letters = stack
        .drain(
            "extracts-worker-dead-letter-alert",
            Duration::from_secs(60),
            |m| {
                m.iter()
                    .any(|l| l.attributes.get("objectId").map(String::as_str) == Some(stray))
            },
        )
        .await;
    let kinds: Vec<(&str, &str)> = letters
        .iter()
        .map(|l| {
            (
                l.attributes["error_kind"].as_str(),
                l.attributes["objectId"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("unknown_layout", "uploads/readme.txt"),
            ("unknown_layout", stray)
        ],
        "one dead letter per failure"
    );
    for l in &letters {
        assert_eq!(l.attributes["source_subscription"], "extracts-worker");
        assert_eq!(l.attributes["source_topic"], "extracts");
        assert!(!l.attributes["error"].is_empty());
    }
    let batches = stack
        .drain(
            "batches-worker-dead-letter-alert",
            Duration::from_secs(30),
            |m| !m.is_empty(),
        )
        .await;
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].attributes["error_kind"], "malformed_message");
    assert_eq!(batches[0].data, b"not json");
    stop.send(true).unwrap();
    pulling.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_worker_through_the_emulators_push_subscriptions() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let endpoint = format!("worker=http://127.0.0.1:{port}");
    let stack =
        tokio::task::spawn_blocking(move || Stack::up(&["--push-endpoint".into(), endpoint]))
            .await
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = stack.config(&partners(dir.path()), &[]);
    stack.watch("deliveries", "test-deliveries").await;
    let worker = Arc::new(Worker::start(cfg.clone()).await.unwrap());
    let (stop, rx) = watch::channel(false);
    let serving = tokio::spawn(push::serve(worker.clone(), listener, rx));

    let base = format!("http://127.0.0.1:{port}");
    let health = stack
        .http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let bad = stack
        .http
        .post(format!("{base}/push/extracts"))
        .body("not an envelope")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);

    let dt = NaiveDate::from_ymd_opt(2026, 11, 25).unwrap();
    let (_, truth) = upload_day(&worker.gcs, &cfg, dt, 200, false).await;
    let ready = current_batch(&worker.gcs, &cfg, dt).await;
    let done = names::batch_done(dt, &ready.version());
    let ops = cfg.gcp.buckets.ops.clone();
    until(
        "the batch's done marker",
        Duration::from_secs(120),
        || async { worker.gcs.stat(&ops, &done).await.unwrap() },
    )
    .await;
    check_curated(&worker.gcs, &cfg, dt, &truth).await;
    let got = stack
        .drain("test-deliveries", Duration::from_secs(60), |m| {
            !m.is_empty()
        })
        .await;
    assert_eq!(got.len(), 1, "one delivery request: {got:?}");
    check_delivery(&worker.gcs, &got[0], dt).await;
    stop.send(true).unwrap();
    serving.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_file_holds_the_products_until_the_batch_is_released() {
    let stack = Stack::up(&[]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = stack.config(&partners(dir.path()), &[]);
    stack.watch("deliveries", "test-deliveries").await;
    let worker = Arc::new(Worker::start(cfg.clone()).await.unwrap());
    let (stop, rx) = watch::channel(false);
    let pulling = tokio::spawn(pull::run(worker.clone(), rx));
    let gcs = &worker.gcs;
    let ops = cfg.gcp.buckets.ops.clone();

    // One part per table can never be parsed: each is one dead letter, the batch step still
    // writes what it can, and the products are held.
    let dt = NaiveDate::from_ymd_opt(2026, 11, 24).unwrap();
    upload_day(gcs, &cfg, dt, 200, true).await;
    let ready = current_batch(gcs, &cfg, dt).await;
    let done = names::batch_done(dt, &ready.version());
    until(
        "the held batch's done marker",
        Duration::from_secs(120),
        || async { gcs.stat(&ops, &done).await.unwrap() },
    )
    .await;
    let (body, _) = gcs.read(&ops, &done, None).await.unwrap().unwrap();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["held"].as_array().map(Vec::len), Some(1), "{body}");
    assert!(
        gcs.stat(
            &cfg.gcp.buckets.curated,
            &format!("reports/dt={dt}/quality.json")
        )
        .await
        .unwrap()
        .is_some()
    );
    let letters = stack
        .drain(
            "extracts-worker-dead-letter-alert",
            Duration::from_secs(60),
            |m| m.len() >= 3,
        )
        .await;
    assert_eq!(letters.len(), 3, "one dead letter per failed file");
    assert!(
        letters
            .iter()
            .all(|l| l.attributes["error_kind"] == "invalid_extract")
    );
    let none = stack
        .drain("test-deliveries", Duration::from_secs(30), |_| true)
        .await;
    assert!(none.is_empty(), "held products are not delivered: {none:?}");

    // The team releases the batch without the failed files (the CLI, as an operator would).
    let out = crate::run_ok(
        crate::datashare_cmd()
            .args(["release", "--date", &dt.to_string()])
            .envs(&stack.env),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("released batch"));
    let released = names::batch_done(dt, &format!("{}.release", ready.version()));
    until(
        "the release's done marker",
        Duration::from_secs(120),
        || async { gcs.stat(&ops, &released).await.unwrap() },
    )
    .await;
    let got = stack
        .drain("test-deliveries", Duration::from_secs(60), |m| {
            !m.is_empty()
        })
        .await;
    assert_eq!(got.len(), 1, "one delivery request: {got:?}");
    check_delivery(gcs, &got[0], dt).await;
    stop.send(true).unwrap();
    pulling.await.unwrap().unwrap();
}

/// A `datashare worker` process, killed on drop.
struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn worker(stack: &Stack, partners: &Path, extra_env: &[(&str, &str)]) -> Proc {
        let mut cmd = crate::datashare_cmd();
        cmd.args(["worker", "--pull"])
            .envs(&stack.env)
            .env("DATASHARE_PARTNERS_DIR", partners)
            .env("RUST_LOG", "datashare=info,warn")
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        Proc(cmd.spawn().expect("datashare worker starts"))
    }

    async fn exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        until("the worker to exit", limit, || {
            let status = self.0.try_wait().unwrap();
            async move { status }
        })
        .await
    }
}

/// A publisher of one topic on the emulator.
pub(crate) async fn publisher(cfg: &Config, topic: &str) -> Bus {
    Bus::connect(&cfg.gcp.project, &[topic], cfg.emulators.pubsub.as_deref())
        .await
        .unwrap()
}

/// Kills a worker (a real process, SIGKILL: no cleanup) at an injected point of the batch step,
/// drops its messages (as if Pub/Sub had given up on them: the test does not rely on the
/// emulator's redelivery) and starts another: a tick finds the abandoned claim, publishes the
/// batch again, the new worker takes the claim over and the batch completes with exactly one
/// delivery request.
async fn killed_at(point: &str, dt: NaiveDate) {
    let stack = Stack::up(&[]);
    let dir = tempfile::tempdir().unwrap();
    let partners = partners(dir.path());
    let cfg = stack.config(&partners, &[]);
    stack.watch("deliveries", "test-deliveries").await;
    // Short claim leases (2 × 10 s), so the takeover comes soon.
    let lease = [
        ("DATASHARE_STEP_TIMEOUT_SECS", "10"),
        ("DATASHARE_LEASE_EXTENSION_SECS", "10"),
    ];
    let crash = format!("crash:{point}");
    let mut a = Proc::worker(
        &stack,
        &partners,
        &[lease[0], lease[1], ("DATASHARE_FAULTS", crash.as_str())],
    );
    let gcs = Gcs::connect(cfg.emulators.storage.as_deref())
        .await
        .unwrap();
    upload_day(&gcs, &cfg, dt, 200, false).await;

    // Worker a dies at the point, holding the claim and its messages.
    let status = a.exit(Duration::from_secs(120)).await;
    assert!(
        !status.success(),
        "the injected crash kills the worker: {status:?}"
    );
    stack.forget(BATCHES_SUBSCRIPTION).await;
    let ready = current_batch(&gcs, &cfg, dt).await;
    let ops = cfg.gcp.buckets.ops.clone();
    let done = names::batch_done(dt, &ready.version());
    assert!(gcs.stat(&ops, &done).await.unwrap().is_none());
    let first = stack
        .drain("test-deliveries", Duration::from_secs(15), |_| true)
        .await;
    let published_before = usize::from(point == "before_done");
    assert_eq!(first.len(), published_before, "{point}: {first:?}");

    // Worker b gets ticks (Cloud Scheduler's, every 5 minutes in production); once the dead
    // worker's lease has run out a tick publishes the batch again, b takes the claim over and
    // finishes the step without publishing what was already published.
    let mut b = Proc::worker(&stack, &partners, &lease);
    let schedules = publisher(&cfg, &cfg.gcp.topics.schedules).await;
    until("the done marker", Duration::from_secs(240), || async {
        // At 15:00 UTC: outside the sink checks' window before the 06:00 local deadline.
        let at = chrono::Utc::now()
            .date_naive()
            .and_hms_opt(15, 0, 0)
            .unwrap();
        let tick = Schedule::Tick { at: at.and_utc() };
        schedules
            .publish(&cfg.gcp.topics.schedules, tick.to_message())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        gcs.stat(&ops, &done).await.unwrap()
    })
    .await;
    let again = stack
        .drain("test-deliveries", Duration::from_secs(30), |m| {
            m.len() + published_before >= 1
        })
        .await;
    assert_eq!(
        again.len() + published_before,
        1,
        "{point}: one delivery request in all: {again:?}"
    );
    let taken = claim::read(&gcs, &ops, &names::batch_claim(dt, &ready.version()))
        .await
        .unwrap()
        .expect("the claim");
    assert_eq!(taken.takeovers, 1, "{point}: taken over once: {taken:?}");

    // SIGTERM: the worker finishes in-flight messages and exits cleanly.
    let pid = b.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = b.exit(Duration::from_secs(60)).await;
    assert!(status.success(), "graceful shutdown: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_after_taking_the_claim_is_taken_over() {
    killed_at(
        "after_claim",
        NaiveDate::from_ymd_opt(2026, 11, 21).unwrap(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_before_publishing_is_taken_over_and_publishes_once() {
    killed_at(
        "before_publish",
        NaiveDate::from_ymd_opt(2026, 11, 20).unwrap(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_before_its_done_marker_is_taken_over_without_publishing_again() {
    killed_at(
        "before_done",
        NaiveDate::from_ymd_opt(2026, 11, 23).unwrap(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_step_longer_than_the_ack_deadline_runs_once() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let endpoint = format!("worker=http://127.0.0.1:{port}");
    let stack =
        tokio::task::spawn_blocking(move || Stack::up(&["--push-endpoint".into(), endpoint]))
            .await
            .unwrap();
    stack.ack_deadline(BATCHES_SUBSCRIPTION, 10).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = stack.config(&partners(dir.path()), &[]);
    stack.watch("deliveries", "test-deliveries").await;
    let mut worker = Worker::start(cfg.clone()).await.unwrap();
    worker.faults = datashare::service::faults::Faults::parse("delay:batch_step:25").unwrap();
    let worker = Arc::new(worker);
    let (stop, rx) = watch::channel(false);
    let serving = tokio::spawn(push::serve(worker.clone(), listener, rx));

    let started = Instant::now();
    let dt = NaiveDate::from_ymd_opt(2026, 11, 22).unwrap();
    upload_day(&worker.gcs, &cfg, dt, 200, false).await;
    let ready = current_batch(&worker.gcs, &cfg, dt).await;
    let done = names::batch_done(dt, &ready.version());
    let ops = cfg.gcp.buckets.ops.clone();
    until("the done marker", Duration::from_secs(180), || async {
        worker.gcs.stat(&ops, &done).await.unwrap()
    })
    .await;
    assert!(started.elapsed() >= Duration::from_secs(25));
    // Redeliveries during the step found the claim held (503); after it, the done marker (204).
    let got = stack
        .drain("test-deliveries", Duration::from_secs(60), |m| {
            !m.is_empty()
        })
        .await;
    assert_eq!(got.len(), 1, "one delivery request: {got:?}");
    check_delivery(&worker.gcs, &got[0], dt).await;
    stop.send(true).unwrap();
    serving.await.unwrap().unwrap();
}

/// Pull mode: the subscriber extends the lease of a step longer than the ack deadline, so the
/// message that runs it is not redelivered meanwhile (its trace id would show up again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_step_longer_than_the_ack_deadline_keeps_its_lease_and_runs_once() {
    let stack = Stack::up(&[]);
    stack.ack_deadline(BATCHES_SUBSCRIPTION, 10).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = stack.config(&partners(dir.path()), &[]);
    cfg.worker.lease_extension_secs = 10;
    stack.watch("deliveries", "test-deliveries").await;
    let mut worker = Worker::start(cfg.clone()).await.unwrap();
    worker.faults = datashare::service::faults::Faults::parse("delay:batch_step:25").unwrap();
    let worker = Arc::new(worker);
    let (stop, rx) = watch::channel(false);
    let pulling = tokio::spawn(pull::run(worker.clone(), rx));

    let dt = NaiveDate::from_ymd_opt(2026, 11, 19).unwrap();
    upload_day(&worker.gcs, &cfg, dt, 200, false).await;
    let ready = current_batch(&worker.gcs, &cfg, dt).await;
    let done = names::batch_done(dt, &ready.version());
    let ops = cfg.gcp.buckets.ops.clone();
    until("the done marker", Duration::from_secs(180), || async {
        worker.gcs.stat(&ops, &done).await.unwrap()
    })
    .await;
    let got = stack
        .drain("test-deliveries", Duration::from_secs(30), |m| {
            !m.is_empty()
        })
        .await;
    assert_eq!(got.len(), 1, "one delivery request: {got:?}");

    let logs = crate::sinks::captured_logs();
    let version = ready.version();
    let ran: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("batch step ran") && l.contains(&format!("dt={dt}")))
        .filter(|l| l.contains("subscription=\"batches-worker\""))
        .collect();
    let taken: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("batch claim taken") && l.contains(&version))
        .collect();
    assert_eq!(taken.len(), 1, "{taken:?}");
    let trace = taken[0]
        .split("trace_id=")
        .nth(1)
        .and_then(|t| t.split(['}', ' ']).next())
        .expect("the step's message span has a trace id");
    let seen: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains(&format!("trace_id={trace}")) && l.contains("batches-worker"))
        .filter(|l| !l.contains("attempt=1 "))
        .collect();
    assert!(seen.is_empty(), "redelivered during the step: {seen:?}");
    assert!(
        ran.iter().any(|l| l.contains(&format!("trace_id={trace}"))),
        "{ran:?}"
    );
    stop.send(true).unwrap();
    pulling.await.unwrap().unwrap();
}
