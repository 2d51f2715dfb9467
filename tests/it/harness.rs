//! The test harness (zero2prod's `spawn_app`): one place that starts what a test needs and
//! hands back guards that stop it on drop. A test asks [`TestApp::spawn`] for a [`Spec`]: the
//! local Google stack (fake-gcp/stack.py: Pub/Sub emulator and fake-gcs-server, random names,
//! free ports), the partner stand-ins (OpenSSH sshd, an HTTPS API, an SMTP server) with a
//! contract pointing at them, and the roles (worker, `deliver` per sink, alerting) in pull or
//! push mode. The pieces are usable alone too ([`Stack::up`], [`sftp_env`], [`Proc::worker`]).
//! Waits poll a condition with a deadline ([`until`], [`Stack::drain`]); nothing sleeps to wait.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use base64::Engine;
use chrono::NaiveDate;
use datashare::config::Config;
use datashare::config::secret::SecretRef;
use datashare::config::sinks::{ApiAuth, ApiConfig, SftpConfig, SmtpSettings, SmtpTls};
use datashare::events::batch::BATCH_READY_VERSION;
use datashare::events::{BatchReady, Incoming, ObjectGeneration};
use datashare::gcp::{Bus, Gcs};
use datashare::generate::{GenerateOptions, ObjectSink, ObjectWriter, generate_day};
use datashare::pipeline::deliver::Deliver;
use datashare::pipeline::{Worker, names};
use datashare::service::{Role, pull, push};
use serde_json::{Value, json};
use tokio::sync::watch;

// ---------------------------------------------------------------------------------------------
// The test app: what a test asks for, started in one place.

/// Which partner contracts the roles load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Partners {
    /// An empty folder: no partner.
    None,
    /// The shipped OuchHungry contract with a throwaway key (its sinks are not reachable).
    #[default]
    Shipped,
    /// The OuchHungry contract pointing at the local sshd and HTTPS API stand-ins (started),
    /// and the SMTP stand-in as the relay.
    StandIns,
}

/// A change to the SFTP settings written into the contract (e.g. a wrong host key).
type SftpTweak = Box<dyn FnOnce(&Path, &mut SftpConfig)>;

/// What a test asks the harness for.
#[derive(Default)]
pub(crate) struct Spec {
    partners: Partners,
    smtp: bool,
    push: Vec<String>,
    watch: Vec<(String, String)>,
    sftp_tweak: Option<SftpTweak>,
}

impl Spec {
    /// The stack and the shipped contract; nothing else.
    pub(crate) fn new() -> Spec {
        Spec::default()
    }

    /// Which contracts the roles load ([`Partners::StandIns`] starts the stand-ins).
    pub(crate) fn partners(mut self, partners: Partners) -> Spec {
        self.partners = partners;
        self
    }

    /// Also the SMTP stand-in, as the roles' relay.
    pub(crate) fn smtp(mut self) -> Spec {
        self.smtp = true;
        self
    }

    /// `role` (`worker`, `sftp`, ...) is served by push: a port is reserved for it and the
    /// emulator's subscriptions of that role push there.
    pub(crate) fn push(mut self, role: &str) -> Spec {
        self.push.push(role.to_string());
        self
    }

    /// A pull subscription `name` on `topic`, for the test to read ([`Stack::drain`]).
    pub(crate) fn watch(mut self, topic: &str, name: &str) -> Spec {
        self.watch.push((topic.to_string(), name.to_string()));
        self
    }

    /// Changes the SFTP settings written into the stand-ins' contract.
    pub(crate) fn tweak_sftp(
        mut self,
        tweak: impl FnOnce(&Path, &mut SftpConfig) + 'static,
    ) -> Spec {
        self.sftp_tweak = Some(Box::new(tweak));
        self
    }
}

/// What a role task returns.
type RoleTask = tokio::task::JoinHandle<Result<(), String>>;

/// A running test app: the stack, the stand-ins asked for, the config the roles use, and the
/// roles started; everything stops on drop (roles first, then servers, then the stack).
pub(crate) struct TestApp {
    /// The roles' tasks, stopped first on drop.
    stop: watch::Sender<bool>,
    rx: watch::Receiver<bool>,
    tasks: Mutex<Vec<RoleTask>>,
    listeners: Mutex<BTreeMap<String, tokio::net::TcpListener>>,
    /// The configuration every role gets.
    pub(crate) cfg: Config,
    /// A storage client of the stack.
    pub(crate) gcs: Gcs,
    /// The folder of partner contracts.
    pub(crate) partners: PathBuf,
    sftp: Option<SftpEnv>,
    api: Option<ApiEnv>,
    smtp: Option<SmtpEnv>,
    /// The local Google stack.
    pub(crate) stack: Stack,
    /// Scratch folder of the test (keys, contracts, the stand-ins' state).
    pub(crate) work: tempfile::TempDir,
}

/// The `DATASHARE_SMTP_*` settings that point the roles at an SMTP stand-in.
pub(crate) fn smtp_overrides(smtp: &SmtpEnv) -> Vec<(String, String)> {
    let s = &smtp.settings;
    vec![
        ("DATASHARE_SMTP_HOST".into(), s.host.clone()),
        ("DATASHARE_SMTP_PORT".into(), s.port.to_string()),
        ("DATASHARE_SMTP_TLS".into(), "starttls".into()),
        ("DATASHARE_SMTP_FROM".into(), s.from.clone()),
        ("DATASHARE_SMTP_USER".into(), s.user.clone().unwrap()),
        (
            "DATASHARE_SMTP_PASSWORD_FILE".into(),
            s.password
                .as_ref()
                .unwrap()
                .file
                .as_ref()
                .unwrap()
                .display()
                .to_string(),
        ),
        (
            "DATASHARE_SMTP_CA_FILE".into(),
            s.ca_file.as_ref().unwrap().display().to_string(),
        ),
    ]
}

impl TestApp {
    /// Starts what `spec` asks for; no role runs yet.
    pub(crate) async fn spawn(spec: Spec) -> TestApp {
        capture_logs();
        let mut listeners = BTreeMap::new();
        let mut args = Vec::new();
        for role in &spec.push {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = l.local_addr().unwrap().port();
            args.push("--push-endpoint".to_string());
            args.push(format!("{role}=http://127.0.0.1:{port}"));
            listeners.insert(role.clone(), l);
        }
        let stack = tokio::task::spawn_blocking(move || Stack::up(&args))
            .await
            .unwrap();
        let work = tempfile::tempdir().unwrap();
        let (mut sftp, mut api, mut smtp) = (None, None, None);
        let partners = match spec.partners {
            Partners::None => work.path().to_path_buf(),
            Partners::Shipped => partners(work.path()),
            Partners::StandIns => {
                let s = sftp_env(work.path());
                let a = api_env(work.path());
                let mut sftp_config = s.config.clone();
                if let Some(tweak) = spec.sftp_tweak {
                    tweak(work.path(), &mut sftp_config);
                }
                let p = local_contract(work.path(), &sftp_config, &a.config);
                (sftp, api) = (Some(s), Some(a));
                p
            }
        };
        if spec.smtp || spec.partners == Partners::StandIns {
            smtp = Some(smtp_env(work.path(), SmtpTls::Starttls));
        }
        let overrides = smtp.as_ref().map(smtp_overrides).unwrap_or_default();
        let o: Vec<(&str, &str)> = overrides
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let cfg = stack.config(&partners, &o);
        for (topic, name) in &spec.watch {
            stack.watch(topic, name).await;
        }
        let gcs = Gcs::connect(cfg.emulators.storage.as_deref())
            .await
            .unwrap();
        let (stop, rx) = watch::channel(false);
        TestApp {
            stop,
            rx,
            tasks: Mutex::new(Vec::new()),
            listeners: Mutex::new(listeners),
            cfg,
            gcs,
            partners,
            sftp,
            api,
            smtp,
            stack,
            work,
        }
    }

    /// The port reserved for `role`'s push endpoint ([`Spec::push`]), until the role runs.
    pub(crate) fn push_port(&self, role: &str) -> u16 {
        self.listeners.lock().unwrap()[role]
            .local_addr()
            .unwrap()
            .port()
    }

    /// A worker on the app's configuration, not running (to change it, or to call its handler).
    pub(crate) async fn worker(&self) -> Worker {
        Worker::start(self.cfg.clone())
            .await
            .expect("worker starts")
    }

    /// Runs `role`: served by push when the spec asked so for `name`, pulling otherwise.
    pub(crate) fn run<R: Role>(&self, name: &str, role: Arc<R>) {
        let rx = self.rx.clone();
        let listener = self.listeners.lock().unwrap().remove(name);
        let task = match listener {
            Some(l) => {
                tokio::spawn(
                    async move { push::serve(role, l, rx).await.map_err(|e| e.to_string()) },
                )
            }
            None => {
                tokio::spawn(async move { pull::run(role, rx).await.map_err(|e| e.to_string()) })
            }
        };
        self.tasks.lock().unwrap().push(task);
    }

    /// Starts a worker and runs it (pull, or push if asked for `worker`).
    pub(crate) async fn spawn_worker(&self) -> Arc<Worker> {
        let worker = Arc::new(self.worker().await);
        self.run("worker", worker.clone());
        worker
    }

    /// Starts `datashare deliver --sink <sink>` and runs it.
    pub(crate) async fn spawn_deliver(&self, sink: &str) {
        let role = Arc::new(
            Deliver::start(self.cfg.clone(), sink)
                .await
                .unwrap_or_else(|e| panic!("{sink} starts: {e}")),
        );
        self.run(sink, role);
    }

    /// Starts the alerting consumer (`datashare alert`) and runs it.
    pub(crate) async fn spawn_alerting(&self) -> Arc<datashare::alerting::Alerting> {
        let alerting = Arc::new(
            datashare::alerting::Alerting::start(self.cfg.clone())
                .await
                .expect("alerting starts"),
        );
        self.run("alert", alerting.clone());
        alerting
    }

    /// Stops the roles (the stack and the stand-ins keep running until the app is dropped)
    /// and fails the test if one of them ended with an error.
    pub(crate) async fn stop(&self) {
        self.stop.send(true).unwrap();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap());
        for t in tasks {
            t.await.unwrap().unwrap();
        }
    }

    /// The sshd stand-in (asked for with [`Partners::StandIns`]).
    pub(crate) fn sftp(&self) -> &SftpEnv {
        self.sftp
            .as_ref()
            .expect("the spec asked for the stand-ins")
    }

    /// The sshd stand-in, to stop it.
    pub(crate) fn sftp_mut(&mut self) -> &mut SftpEnv {
        self.sftp
            .as_mut()
            .expect("the spec asked for the stand-ins")
    }

    /// The HTTPS API stand-in (asked for with [`Partners::StandIns`]).
    pub(crate) fn api(&self) -> &ApiEnv {
        self.api.as_ref().expect("the spec asked for the stand-ins")
    }

    /// The SMTP stand-in (asked for with [`Spec::smtp`] or the stand-ins).
    pub(crate) fn smtp(&self) -> &SmtpEnv {
        self.smtp.as_ref().expect("the spec asked for SMTP")
    }

    /// The SMTP stand-in, to replace it (a server restarted on the same port).
    pub(crate) fn smtp_mut(&mut self) -> &mut SmtpEnv {
        self.smtp.as_mut().expect("the spec asked for SMTP")
    }

    /// Where the SMTP stand-in stores the mails it accepted.
    pub(crate) fn mail_dir(&self) -> PathBuf {
        PathBuf::from(self.smtp().server.field("mail"))
    }

    /// The sshd stand-in's upload folder.
    pub(crate) fn upload_dir(&self) -> PathBuf {
        PathBuf::from(self.sftp().server.field("upload"))
    }

    /// POSTs the API stand-in stored (status 201).
    pub(crate) fn api_stored(&self) -> usize {
        requests(&self.api().state)
            .iter()
            .filter(|r| r["status"] == 201)
            .count()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // A test that ends early (a failed assertion) still stops its roles before the
        // servers and the stack go.
        let _ = self.stop.send(true);
        if let Ok(tasks) = self.tasks.lock() {
            for t in tasks.iter() {
                t.abort();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The local Google stack.

/// A running fake-gcp stack; `down` runs on drop.
pub(crate) struct Stack {
    _dir: tempfile::TempDir,
    state: PathBuf,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) http: reqwest::Client,
}

/// Logs of the code under test, shown for failing tests (`RUST_LOG` to change the level).
fn init_tracing() {
    // One subscriber for the whole test binary: the sinks' capture (the secret checks read it).
    capture_logs();
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

/// Polls `f` every 200 ms until it returns a value; fails the test after `limit`.
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

/// A `datashare worker` process, killed on drop.
pub(crate) struct Proc(pub(crate) std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    pub(crate) fn worker(stack: &Stack, partners: &Path, extra_env: &[(&str, &str)]) -> Proc {
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

    pub(crate) async fn exit(&mut self, limit: Duration) -> std::process::ExitStatus {
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

// ---------------------------------------------------------------------------------------------
// Logs: everything the roles (and reqwest, lettre, rustls) log at debug level, kept in memory
// for the secret checks; the one subscriber of the test binary (`DATASHARE_TEST_LOGS=1` also
// copies it to stderr, to read a failing test's logs).

static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        if std::env::var_os("DATASHARE_TEST_LOGS").is_some() {
            let _ = std::io::stderr().write_all(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the test binary's one log subscriber (idempotent).
pub(crate) fn capture_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // Transport internals at debug are megabytes per test and carry no secret of ours.
        datashare::telemetry::init(
            || Capture,
            "debug,h2=info,tonic=info,tower=info,hyper_util=info,hyper=info",
            false,
        );
    });
}

/// Everything logged in this test binary so far.
pub(crate) fn captured_logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned()
}

/// Fails when a secret shows up in the captured logs or in any of the texts given.
pub(crate) fn assert_secrets_hidden(secrets: &[&str], texts: &[String]) {
    let logs = captured_logs();
    assert!(!logs.is_empty(), "logs were captured");
    for s in secrets.iter().filter(|s| s.len() >= 8) {
        assert!(!logs.contains(s), "a throwaway secret appears in the logs");
        for t in texts {
            assert!(!t.contains(s), "a throwaway secret appears in {t:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Throwaway material.

/// `bytes` random bytes from the OS, in hex.
pub(crate) fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A secret written to a file, referenced by it.
pub(crate) fn secret_file(dir: &Path, name: &str, value: &str) -> SecretRef {
    let path = dir.join(name);
    std::fs::write(&path, format!("{value}\n")).unwrap();
    SecretRef {
        env: None,
        file: Some(path),
    }
}

/// An ed25519 key pair made by ssh-keygen; returns (private key path, public key line).
pub(crate) fn ssh_keygen(dir: &Path, name: &str, passphrase: &str) -> (PathBuf, String) {
    ssh_keygen_rounds(dir, name, passphrase, 16)
}

/// As [`ssh_keygen`], with `rounds` of bcrypt protecting the passphrase (ssh-keygen's default
/// is 16).
pub(crate) fn ssh_keygen_rounds(
    dir: &Path,
    name: &str,
    passphrase: &str,
    rounds: u32,
) -> (PathBuf, String) {
    let path = dir.join(name);
    let rounds = rounds.to_string();
    let out = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-a",
            &rounds,
            "-C",
            "throwaway",
            "-N",
            passphrase,
            "-f",
        ])
        .arg(&path)
        .output()
        .expect("ssh-keygen runs (scripts/setup.sh installs openssh-client)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    (path, public.trim().to_string())
}

// ---------------------------------------------------------------------------------------------
// Partner-side servers.

fn partner_python() -> PathBuf {
    let cache = std::env::var_os("DATASHARE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/datashare")
        });
    let python = cache.join("venvs/partner/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh",
        python.display()
    );
    python
}

/// A stand-in server; dropping it kills its process group.
pub(crate) struct Server {
    child: Child,
    ready: Value,
    log: PathBuf,
}

impl Server {
    pub(crate) fn start(script: &str, state: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        std::fs::create_dir_all(state).unwrap();
        let log = state.join(format!("{script}.log"));
        let mut cmd = Command::new(partner_python());
        cmd.arg(crate::root().join("fake-gcp/partner").join(script))
            .arg("--state-dir")
            .arg(state)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .process_group(0);
        let mut child = cmd.spawn().expect("stand-in starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("\"ready\"") {
                    let _ = tx.send(line);
                }
            }
        });
        let mut server = Server {
            child,
            ready: Value::Null,
            log,
        };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => server.ready = serde_json::from_str(&line).unwrap(),
            Err(_) => panic!("{script} did not get ready: {}", server.log_text()),
        }
        server
    }

    pub(crate) fn port(&self) -> u16 {
        self.ready["port"].as_u64().unwrap() as u16
    }

    pub(crate) fn field(&self, name: &str) -> String {
        self.ready[name].as_str().unwrap().to_string()
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Server {
    /// Stops the server now (as dropping it does).
    pub(crate) fn stop(&mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pgid = self.child.id() as i32;
        // SAFETY: signals our own child's process group (process_group(0) made pgid == pid).
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.terminate();
    }
}

// ---------------------------------------------------------------------------------------------
// The stand-ins, configured: SFTP, API, SMTP, and a contract pointing at them.

/// The sshd stand-in with a throwaway client key (and passphrase) it accepts.
pub(crate) struct SftpEnv {
    pub(crate) server: Server,
    pub(crate) config: SftpConfig,
    pub(crate) secrets: Vec<String>,
}

/// Starts the sshd stand-in under `work`, with a fresh key pair.
pub(crate) fn sftp_env(work: &Path) -> SftpEnv {
    let passphrase = random_hex(16);
    let (key, public) = ssh_keygen(work, "client_key", &passphrase);
    let authorized = work.join("authorized_keys");
    std::fs::write(&authorized, format!("{public}\n")).unwrap();
    let server = Server::start(
        "sshd.py",
        &work.join("sftpd"),
        &["--authorized-keys", authorized.to_str().unwrap()],
        &[],
    );
    let key_text = std::fs::read_to_string(&key).unwrap();
    let config = SftpConfig {
        host: "127.0.0.1".into(),
        port: server.port(),
        user: server.field("user"),
        root: server.field("upload"),
        host_key: server.field("host_key"),
        private_key: SecretRef {
            env: None,
            file: Some(key),
        },
        passphrase: Some(secret_file(work, "passphrase", &passphrase)),
    };
    // The base64 body of the private key: no line of it may leak.
    let mut secrets: Vec<String> = key_text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::to_string)
        .collect();
    secrets.push(passphrase);
    SftpEnv {
        server,
        config,
        secrets,
    }
}

/// (name, inode, size, mtime) of every file under a folder: a new upload changes the inode.
pub(crate) fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                out.push(format!(
                    "{} ino={} size={} mtime={}",
                    e.path().strip_prefix(dir).unwrap().display(),
                    m.ino(),
                    m.len(),
                    m.mtime_nsec()
                ));
            }
        }
    }
    out.sort();
    out
}

/// The HTTPS API stand-in (its own CA) with a throwaway basic-auth password.
pub(crate) struct ApiEnv {
    pub(crate) server: Server,
    pub(crate) state: PathBuf,
    pub(crate) config: ApiConfig,
    pub(crate) password: String,
}

/// Starts the HTTPS API stand-in under `work`.
pub(crate) fn api_env(work: &Path) -> ApiEnv {
    let password = random_hex(16);
    let state = work.join("api");
    let server = Server::start(
        "api.py",
        &state,
        &[],
        &[
            ("PARTNER_API_USER", "datashare"),
            ("PARTNER_API_PASSWORD", password.as_str()),
        ],
    );
    let config = ApiConfig {
        base_url: format!("{}/v1/", server.field("base_url")),
        auth: ApiAuth::Basic {
            user: "datashare".into(),
            password: secret_file(work, "api_password", &password),
        },
        ca_file: Some(PathBuf::from(server.field("ca"))),
    };
    ApiEnv {
        server,
        state,
        config,
        password,
    }
}

/// The requests the API stand-in logged (health checks left out).
pub(crate) fn requests(state: &Path) -> Vec<Value> {
    std::fs::read_to_string(state.join("requests.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &Value| v["path"] != "/health")
        .collect()
}

/// The statuses the API stand-in answered, in order.
pub(crate) fn statuses(state: &Path) -> Vec<String> {
    requests(state)
        .iter()
        .map(|r| r["status"].to_string())
        .collect()
}

/// Scripts the API stand-in's next answers (statuses, `Retry-After`, hangs).
pub(crate) async fn script(env: &ApiEnv, answers: Value) {
    let ca =
        reqwest::Certificate::from_pem(&std::fs::read(env.server.field("ca")).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([ca])
        .build()
        .unwrap();
    let url = format!("{}/_control/script", env.server.field("base_url"));
    let resp = client
        .post(url)
        .body(answers.to_string())
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
}

/// The SMTP stand-in (STARTTLS or implicit TLS, AUTH with a throwaway password).
pub(crate) struct SmtpEnv {
    pub(crate) server: Server,
    pub(crate) settings: SmtpSettings,
    pub(crate) password: String,
}

/// Starts the SMTP stand-in under `work`.
pub(crate) fn smtp_env(work: &Path, tls: SmtpTls) -> SmtpEnv {
    let password = random_hex(16);
    let mode = match tls {
        SmtpTls::Starttls => "starttls",
        SmtpTls::Implicit => "implicit",
    };
    let server = Server::start(
        "smtp.py",
        &work.join(format!("smtp-{mode}")),
        &["--tls", mode],
        &[
            ("PARTNER_SMTP_USER", "datashare"),
            ("PARTNER_SMTP_PASSWORD", password.as_str()),
        ],
    );
    let settings = SmtpSettings {
        host: "127.0.0.1".into(),
        port: server.port(),
        tls,
        from: "datashare <dados@datashare.example>".into(),
        user: Some("datashare".into()),
        password: Some(secret_file(
            work,
            &format!("smtp_password_{mode}"),
            &password,
        )),
        ca_file: Some(PathBuf::from(server.field("ca"))),
        timeout_secs: 5,
    };
    SmtpEnv {
        server,
        settings,
        password,
    }
}

/// The mails the SMTP stand-in stored, in name order.
pub(crate) fn mails(folder: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(folder)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|e| e == "eml"));
    v.sort();
    v
}

/// Parses an .eml with Python's e-mail package (decodes headers and bodies as a client would).
pub(crate) fn parse_eml(path: &Path) -> Value {
    const PY: &str = r#"
import email, email.policy, json, sys
m = email.message_from_binary_file(open(sys.argv[1], "rb"), policy=email.policy.default)
parts = []
for p in m.walk():
    if p.is_multipart():
        continue
    parts.append({"type": p.get_content_type(), "filename": p.get_filename(),
                  "text": p.get_content() if p.get_content_maintype() == "text" else None})
print(json.dumps({"subject": m["subject"], "message_id": m["message-id"], "to": m["to"],
                  "reply_to": m["reply-to"], "from": m["from"], "parts": parts}))
"#;
    let out = Command::new(partner_python())
        .args(["-c", PY])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The OuchHungry contract pointing at the local stand-ins, with throwaway secrets in files.
pub(crate) fn local_contract(work: &Path, sftp: &SftpConfig, api: &ApiConfig) -> PathBuf {
    let p = work.join("partners");
    std::fs::create_dir_all(&p).unwrap();
    let key = work.join("hmac-key");
    std::fs::write(&key, random_hex(32)).unwrap();
    let text = crate::shipped_contract_with_hmac_file(&key);
    let head = &text[..text.find("[[sinks]]").unwrap()];
    let tail = &text[text.find("[[contacts]]").unwrap()..];
    let file = |r: &SecretRef| {
        format!(
            "{{ file = {:?} }}",
            r.file.as_ref().unwrap().display().to_string()
        )
    };
    let ApiAuth::Basic { user, password } = &api.auth else {
        panic!("the test API uses basic auth")
    };
    let sinks = format!(
        r#"[[sinks]]
type = "sftp"
host = "{host}"
port = {port}
user = "{suser}"
root = "{root}"
host_key = "{host_key}"
private_key = {key}
{pass}

[[sinks]]
type = "api"
base_url = "{base}"
ca_file = {ca:?}
auth = {{ type = "basic", user = "{user}", password = {password} }}

[[sinks]]
type = "email"
reply_to = "dados@datashare.example"

"#,
        host = sftp.host,
        port = sftp.port,
        suser = sftp.user,
        root = sftp.root,
        host_key = sftp.host_key,
        key = file(&sftp.private_key),
        pass = sftp
            .passphrase
            .as_ref()
            .map(|p| format!("passphrase = {}", file(p)))
            .unwrap_or_default(),
        base = api.base_url,
        ca = api.ca_file.as_ref().unwrap().display().to_string(),
        password = file(password),
    );
    std::fs::write(p.join("ouchhungry.toml"), format!("{head}{sinks}{tail}")).unwrap();
    p
}
