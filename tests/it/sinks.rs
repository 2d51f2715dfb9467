//! Sinks against real partner-side servers (fake-gcp/partner/): Debian's OpenSSH sshd, an HTTPS
//! API and an SMTP relay, each started by its test on a free port with throwaway keys and
//! passwords made here, and stopped by a guard that kills its process group.
//!
//! Every sink passes [`sink_contract`]: it checks, delivers, does not deliver twice thanks to the
//! receipt, classifies refused credentials as permanent and a stopped server as transient, and no
//! throwaway secret appears in the captured logs or errors.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use datashare::config::secret::SecretRef;
use datashare::config::sinks::{
    ApiAuth, ApiConfig, ApiOptions, EmailConfig, SftpConfig, SftpOptions, SinkConfig, SinkSettings,
    SmtpSettings, SmtpTls,
};
use datashare::events::{ProductKind, Receipt, ReceiptFile};
use datashare::products::contract::{self, Contact, Contract};
use datashare::products::manifest::{self, MANIFEST_VERSION, Manifest, sha256_hex};
use datashare::sinks::api::ApiSink;
use datashare::sinks::email::EmailSink;
use datashare::sinks::sftp::{SftpSink, fingerprint};
use datashare::sinks::{
    AnySink, Delivery, DeliveryFile, LocalFile, LocalReceipts, Sink, SinkError, deliver_once,
};

use crate::harness::{
    Server, api_env, assert_secrets_hidden, capture_logs, mails, parse_eml, random_hex, requests,
    script, secret_file, sftp_env, smtp_env, ssh_keygen, ssh_keygen_rounds, statuses, tree,
};

/// A daily product of `partner`: a data file with random content and its manifest.
fn delivery(dir: &Path, partner: &str) -> Delivery {
    let period = "2026-11-27";
    let name = format!("{partner}_daily_{period}.csv");
    let data = format!(
        "uf,city,units\nSP,São Paulo,{}\nPR,Maringá,7\n",
        random_hex(4)
    );
    let data_path = dir.join(&name);
    std::fs::write(&data_path, &data).unwrap();
    let sha = sha256_hex(data.as_bytes());
    let delivery_id = manifest::delivery_id(partner, "daily", period, &sha);
    let dictionary = format!("{partner}_daily_dictionary.pt-BR.md");
    let dictionary_text = format!("# Dicionário de dados: Analítico diário ({partner})\n");
    let dictionary_path = dir.join(&dictionary);
    std::fs::write(&dictionary_path, &dictionary_text).unwrap();
    let m = Manifest {
        manifest_version: MANIFEST_VERSION,
        partner: partner.into(),
        product: "daily".into(),
        period: period.into(),
        file: name.clone(),
        format: "csv".into(),
        compression: None,
        schema_version: 1,
        schema_fingerprint: "f".repeat(64),
        rows: 1234,
        bytes: data.len() as u64,
        sha256: sha.clone(),
        product_version: sha.clone(),
        delivery_id: delivery_id.clone(),
        key_version: "v1".into(),
        key_period: "month".into(),
        k: 5,
        source_batches: vec![period.into()],
        missing_batches: vec![],
        comparison_batches: vec![],
        companion_files: vec![],
        dictionary,
        dictionary_sha256: sha256_hex(dictionary_text.as_bytes()),
        highlights: vec![
            "Maringá teve o maior crescimento de unidades (+32,5%).".into(),
            "Refrigerantes: 61,2% das unidades.".into(),
        ],
        built_at: "2026-11-28T06:00:00Z".into(),
    };
    let manifest_path = dir.join(format!("{name}.manifest.json"));
    std::fs::write(&manifest_path, m.to_json().unwrap()).unwrap();
    Delivery {
        delivery_id,
        partner: partner.into(),
        product: ProductKind::Daily,
        period: period.into(),
        files: vec![DeliveryFile {
            data: LocalFile::from_path(&data_path).unwrap(),
            manifest: LocalFile::from_path(&manifest_path).unwrap(),
        }],
        dictionary: Some(LocalFile::from_path(&dictionary_path).unwrap()),
        new_dictionary: None,
        upstream: vec![],
        checked: false,
    }
}

// ---------------------------------------------------------------------------------------------
// The contract every sink passes.

struct Harness<S: Sink> {
    /// The sink, well configured.
    sink: S,
    /// The same sink with refused credentials.
    refused: S,
    /// What the partner side holds (changes when something is delivered).
    snapshot: Box<dyn Fn() -> Vec<String>>,
    /// The server, stopped at the end.
    server: Option<Server>,
    /// When the destination recognises content it has (SFTP, API), a redelivery without the
    /// receipt is a no-op too.
    recognises_content: bool,
}

async fn sink_contract<S: Sink>(mut h: Harness<S>, d: &Delivery, work: &Path) -> Vec<String> {
    let store = LocalReceipts::new(work.join("ops"));
    let mut errors = Vec::new();
    h.sink.check().await.expect("check passes");

    let before = (h.snapshot)();
    let first = deliver_once(&h.sink, &store, d).await.expect("delivers");
    assert_eq!(first.sink, h.sink.name());
    assert_eq!(first.delivery_id, d.delivery_id);
    assert!(!first.already_present);
    let after = (h.snapshot)();
    assert_ne!(before, after, "something arrived at the partner");
    let path = store.path(&d.partner, h.sink.name(), &d.delivery_id);
    let stored: Receipt = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(stored, first, "the receipt is stored as JSON");

    let again = deliver_once(&h.sink, &store, d).await.expect("redelivery");
    assert_eq!(again, first, "a redelivery returns the stored receipt");
    assert_eq!((h.snapshot)(), after, "a redelivery sends nothing");

    if h.recognises_content {
        let lost_receipt = h.sink.deliver(d).await.expect("delivery without receipt");
        assert!(lost_receipt.already_present, "{lost_receipt:?}");
        assert_eq!(
            (h.snapshot)(),
            after,
            "content already there is not sent again"
        );
    }

    let mut bad = d.clone();
    bad.files[0].data.name = "../escape.csv".into();
    let e = deliver_once(&h.sink, &store, &bad).await.unwrap_err();
    assert!(
        matches!(e, SinkError::Invalid { .. }) && !e.is_transient(),
        "{e}"
    );

    let e = h.refused.deliver(d).await.unwrap_err();
    assert!(!e.is_transient(), "refused credentials are permanent: {e}");
    errors.push(e.to_string());
    let e = h.refused.check().await.unwrap_err();
    assert!(!e.is_transient(), "refused credentials are permanent: {e}");
    errors.push(e.to_string());

    drop(h.server.take());
    let e = h.sink.deliver(d).await.unwrap_err();
    assert!(e.is_transient(), "a stopped server is transient: {e}");
    errors.push(e.to_string());
    let e = h.sink.check().await.unwrap_err();
    assert!(e.is_transient(), "a stopped server is transient: {e}");
    errors.push(e.to_string());
    assert_eq!((h.snapshot)(), after);
    errors
}

// ---------------------------------------------------------------------------------------------
// SFTP

fn sftp_options() -> SftpOptions {
    SftpOptions {
        connect_timeout_secs: 5,
        io_timeout_secs: 10,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_sink_passes_the_contract() {
    capture_logs();
    let work = tempfile::tempdir().unwrap();
    let env = sftp_env(work.path());
    let d = delivery(work.path(), "ouchhungry");
    let upload = PathBuf::from(env.server.field("upload"));
    let (other_key, _) = ssh_keygen(work.path(), "not_authorized", "");
    let refused = SftpConfig {
        private_key: SecretRef {
            env: None,
            file: Some(other_key),
        },
        passphrase: None,
        ..env.config.clone()
    };
    let sink = SftpSink::new("ouchhungry", &env.config, &sftp_options()).unwrap();
    let debug = format!("{sink:?}");
    let harness = Harness {
        sink: sink.clone(),
        refused: SftpSink::new("ouchhungry", &refused, &sftp_options()).unwrap(),
        snapshot: Box::new({
            let upload = upload.clone();
            move || tree(&upload)
        }),
        server: Some(env.server),
        recognises_content: true,
    };
    let mut texts = sink_contract(harness, &d, work.path()).await;

    let folder = upload.join("ouchhungry/daily");
    let dictionary = d.dictionary.as_ref().unwrap();
    for f in &d.files {
        for lf in [&f.data, &f.manifest, dictionary] {
            let remote = std::fs::read(folder.join(&lf.name)).unwrap();
            assert_eq!(sha256_hex(&remote), lf.sha256, "{} arrived whole", lf.name);
        }
    }
    let names: Vec<_> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        names.len(),
        3,
        "data, manifest and dictionary, no temporary file is left: {names:?}"
    );
    texts.push(debug);
    let secrets: Vec<&str> = env.secrets.iter().map(String::as_str).collect();
    assert_secrets_hidden(&secrets, &texts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_refuses_a_host_key_that_is_not_pinned() {
    capture_logs();
    let work = tempfile::tempdir().unwrap();
    let env = sftp_env(work.path());
    let d = delivery(work.path(), "ouchhungry");

    // The real key by fingerprint works.
    let blob = base64_blob(&env.config.host_key);
    let by_fingerprint = SftpConfig {
        host_key: fingerprint(&blob),
        ..env.config.clone()
    };
    SftpSink::new("ouchhungry", &by_fingerprint, &sftp_options())
        .unwrap()
        .check()
        .await
        .expect("the pinned fingerprint matches");

    // A rebuilt product (same file names, new content) replaces the files at the destination.
    let good = SftpSink::new("ouchhungry", &env.config, &sftp_options()).unwrap();
    let rebuilt_dir = work.path().join("rebuilt");
    std::fs::create_dir(&rebuilt_dir).unwrap();
    let rebuilt = delivery(&rebuilt_dir, "ouchhungry");
    assert_eq!(rebuilt.files[0].data.name, d.files[0].data.name);
    for version in [&d, &rebuilt] {
        let r = good.deliver(version).await.unwrap();
        assert!(!r.already_present);
        let folder = Path::new(&env.server.field("upload")).join("ouchhungry/daily");
        for lf in [&version.files[0].data, &version.files[0].manifest] {
            let remote = std::fs::read(folder.join(&lf.name)).unwrap();
            assert_eq!(sha256_hex(&remote), lf.sha256);
        }
    }

    let logins = |s: &Server| s.log_text().matches("Accepted publickey").count();
    let logins_before = logins(&env.server);

    // Another key, as a line or as a fingerprint: refused before authenticating, permanently.
    let (_, other) = ssh_keygen(work.path(), "other_host", "");
    for pin in [other.clone(), fingerprint(&base64_blob(&other))] {
        let wrong = SftpConfig {
            host_key: pin,
            ..env.config.clone()
        };
        let sink = SftpSink::new("ouchhungry", &wrong, &sftp_options()).unwrap();
        for e in [
            sink.deliver(&d).await.unwrap_err(),
            sink.check().await.unwrap_err(),
        ] {
            assert!(matches!(e, SinkError::HostKey { .. }), "{e}");
            assert!(!e.is_transient());
            assert!(e.to_string().contains("not the pinned host key"), "{e}");
        }
    }
    assert_eq!(
        logins(&env.server),
        logins_before,
        "no login was attempted with a wrong host key"
    );
    let upload = PathBuf::from(env.server.field("upload"));
    assert_eq!(
        tree(&upload).len(),
        3,
        "nothing else than data, manifest and dictionary was uploaded"
    );
}

/// A passphrase-protected key is decrypted once, when the sink is built: with a key made slow to
/// decrypt (many bcrypt rounds), every connection takes far less than building the sink did
/// (libssh2 given the passphrase decrypts twice per connection). A wrong or missing passphrase
/// fails when the sink is built, as a permanent `sink_config` error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_decrypts_the_key_once_and_refuses_a_wrong_passphrase_at_start_up() {
    capture_logs();
    let work = tempfile::tempdir().unwrap();
    let env = sftp_env(work.path());
    let passphrase = random_hex(16);
    let (key, public) = ssh_keygen_rounds(work.path(), "slow_key", &passphrase, 128);
    let authorized = work.path().join("sftpd/authorized_keys");
    let mut keys = std::fs::read_to_string(&authorized).unwrap();
    keys.push_str(&format!("{public}\n"));
    std::fs::write(&authorized, keys).unwrap();
    let slow = SftpConfig {
        private_key: SecretRef {
            env: None,
            file: Some(key),
        },
        passphrase: Some(secret_file(work.path(), "slow_passphrase", &passphrase)),
        ..env.config.clone()
    };

    let started = Instant::now();
    let sink = SftpSink::new("ouchhungry", &slow, &sftp_options()).unwrap();
    let build = started.elapsed();
    let logins = |s: &Server| s.log_text().matches("Accepted publickey").count();
    let before = logins(&env.server);
    let mut connections = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        sink.check().await.expect("the decrypted key logs in");
        connections.push(started.elapsed());
    }
    assert_eq!(logins(&env.server), before + 3, "each check logged in");
    eprintln!("building the sink took {build:?}, each connection {connections:?}");
    let slowest = connections.iter().max().unwrap();
    assert!(
        *slowest * 2 < build,
        "a connection ({connections:?}) should cost far less than decrypting the key ({build:?})"
    );

    let mut texts = vec![format!("{sink:?}")];
    let wrong = SftpConfig {
        passphrase: Some(secret_file(work.path(), "wrong", &random_hex(16))),
        ..env.config.clone()
    };
    let missing = SftpConfig {
        passphrase: None,
        ..env.config.clone()
    };
    for (config, says) in [(wrong, "does not decrypt"), (missing, "no passphrase")] {
        let e = SftpSink::new("ouchhungry", &config, &sftp_options()).unwrap_err();
        assert!(matches!(e, SinkError::Config { .. }), "{e}");
        assert_eq!(e.kind(), "sink_config");
        assert!(!e.is_transient());
        assert!(e.to_string().contains(says), "{e}");
        texts.push(e.to_string());
    }
    let mut secrets: Vec<&str> = env.secrets.iter().map(String::as_str).collect();
    secrets.push(&passphrase);
    for s in secrets {
        for t in &texts {
            assert!(!t.contains(s), "a throwaway secret appears in {t:?}");
        }
    }
}

/// The connection opened while the files download is the one the delivery uses (one login for
/// both); opened ahead to a server that stopped, the delivery fails as a transient error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_delivers_over_the_connection_opened_ahead() {
    capture_logs();
    let work = tempfile::tempdir().unwrap();
    let mut env = sftp_env(work.path());
    let d = delivery(work.path(), "ouchhungry");
    let sink = SftpSink::new("ouchhungry", &env.config, &sftp_options()).unwrap();
    let logins = |s: &Server| s.log_text().matches("Accepted publickey").count();
    let before = logins(&env.server);

    sink.open_ahead();
    let first = sink.deliver(&d).await.expect("delivers");
    assert!(!first.already_present, "{first:?}");
    assert_eq!(
        logins(&env.server),
        before + 1,
        "one login: the connection opened ahead"
    );

    // A delivery without a connection opened ahead connects itself.
    let again = sink.deliver(&d).await.expect("delivers again");
    assert!(again.already_present, "{again:?}");
    assert_eq!(logins(&env.server), before + 2);

    env.server.stop();
    sink.open_ahead();
    let e = sink.deliver(&d).await.unwrap_err();
    assert!(e.is_transient(), "a stopped server is transient: {e}");
}

fn base64_blob(line: &str) -> Vec<u8> {
    use base64::Engine as _;
    let b64 = line.split_whitespace().nth(1).unwrap();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// API

fn api_options() -> ApiOptions {
    ApiOptions {
        connect_timeout_secs: 2,
        request_timeout_secs: 2,
        max_attempts: 4,
        initial_backoff_ms: 50,
        max_backoff_ms: 3_000,
        retry_budget_secs: 20,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_sink_passes_the_contract() {
    capture_logs();
    let work = tempfile::tempdir().unwrap();
    let env = api_env(work.path());
    let d = delivery(work.path(), "ouchhungry");
    let wrong = ApiConfig {
        auth: ApiAuth::Basic {
            user: "datashare".into(),
            password: secret_file(work.path(), "wrong", &random_hex(16)),
        },
        ..env.config.clone()
    };
    let sink = ApiSink::new("ouchhungry", &env.config, &api_options()).unwrap();
    let debug = format!("{sink:?}");
    let state = env.state.clone();
    let harness = Harness {
        sink,
        refused: ApiSink::new("ouchhungry", &wrong, &api_options()).unwrap(),
        snapshot: Box::new(move || tree(&state.join("received"))),
        server: Some(env.server),
        recognises_content: true,
    };
    let mut texts = sink_contract(harness, &d, work.path()).await;

    let got = env.state.join("received").join(&d.delivery_id);
    let dictionary = d.dictionary.as_ref().unwrap();
    for lf in [&d.files[0].data, &d.files[0].manifest, dictionary] {
        assert_eq!(
            sha256_hex(&std::fs::read(got.join(&lf.name)).unwrap()),
            lf.sha256
        );
    }
    let posted: Vec<_> = requests(&env.state)
        .into_iter()
        .filter(|r| r["status"] == 201)
        .collect();
    assert_eq!(posted.len(), 1);
    assert_eq!(posted[0]["path"], "/v1/datasets/daily/files");
    assert_eq!(posted[0]["key"], d.delivery_id.as_str());
    texts.push(debug);
    assert_secrets_hidden(&[&env.password], &texts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_retries_what_may_pass_and_stops_on_what_cannot() {
    capture_logs();
    let work = tempfile::tempdir().unwrap();
    let env = api_env(work.path());
    let sink = ApiSink::new("ouchhungry", &env.config, &api_options()).unwrap();

    // 429 with Retry-After: the next attempt waits at least that long, then succeeds.
    script(
        &env,
        serde_json::json!([{"status": 429, "retry_after": "1"}]),
    )
    .await;
    let d = delivery(work.path(), "ouchhungry");
    let r = sink.deliver(&d).await.expect("delivered after the 429");
    assert!(!r.already_present);
    let reqs = requests(&env.state);
    assert_eq!(statuses(&env.state), ["429", "201"]);
    let waited = reqs[1]["time"].as_f64().unwrap() - reqs[0]["time"].as_f64().unwrap();
    assert!(waited >= 0.95, "Retry-After honoured: waited {waited:.2}s");

    // 500 twice, then success; a hung request times out and is retried too.
    script(
        &env,
        serde_json::json!([{"status": 500}, {"hang": 3}, {"status": 503}]),
    )
    .await;
    let d = delivery(work.path(), "ouchhungry");
    sink.deliver(&d)
        .await
        .expect("delivered after 5xx and a timeout");
    assert_eq!(statuses(&env.state)[2..], ["500", "\"hang\"", "503", "201"]);

    // 400: permanent, not retried.
    script(&env, serde_json::json!([{"status": 400}])).await;
    let d = delivery(work.path(), "ouchhungry");
    let e = sink.deliver(&d).await.unwrap_err();
    assert!(
        matches!(e, SinkError::Rejected { .. }) && !e.is_transient(),
        "{e}"
    );
    assert!(e.to_string().contains("http 400"), "{e}");
    assert_eq!(statuses(&env.state)[6..], ["400"]);

    // Failing beyond the bound: a transient error goes back to Pub/Sub.
    script(
        &env,
        serde_json::json!([{"status": 503}, {"status": 503}, {"status": 503}, {"status": 503}]),
    )
    .await;
    let e = sink.deliver(&d).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(e.to_string().contains("gave up after 4 attempts"), "{e}");

    // The partner refuses to wait past our bound: Retry-After longer than allowed is not slept.
    script(
        &env,
        serde_json::json!([{"status": 429, "retry_after": "3600"}]),
    )
    .await;
    let started = Instant::now();
    let e = sink.deliver(&d).await.unwrap_err();
    assert!(
        e.is_transient() && started.elapsed() < Duration::from_secs(5),
        "{e}"
    );
    let logs = crate::harness::captured_logs();
    assert!(
        logs.contains("api delivery failed, retrying"),
        "retries are logged"
    );
    assert_secrets_hidden(&[&env.password], &[e.to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_bearer_tokens_and_the_contract_built_sink() {
    capture_logs();
    let work = tempfile::tempdir().unwrap();
    let token = random_hex(24);
    let server = Server::start(
        "api.py",
        &work.path().join("api"),
        &[],
        &[("PARTNER_API_TOKEN", &token)],
    );
    let c = ApiConfig {
        base_url: server.field("base_url"),
        auth: ApiAuth::Bearer {
            token: secret_file(work.path(), "token", &token),
        },
        ca_file: Some(PathBuf::from(server.field("ca"))),
    };
    let contract = test_contract(vec![SinkConfig::Api(c.clone())]);
    let settings = SinkSettings {
        api: api_options(),
        ..SinkSettings::default()
    };
    let sink = AnySink::build(&contract, &contract.sinks[0], &settings).unwrap();
    assert_eq!(sink.name(), "api");
    sink.check().await.unwrap();
    let d = delivery(work.path(), &contract.name);
    let r = deliver_once(&sink, &LocalReceipts::new(work.path()), &d)
        .await
        .unwrap();
    assert_eq!(r.files.len(), 3, "data, manifest and dictionary");
    // Without the partner's CA its certificate is not trusted: a configuration problem.
    let no_ca = ApiConfig {
        ca_file: None,
        ..c.clone()
    };
    let e = ApiSink::new(&contract.name, &no_ca, &api_options())
        .unwrap()
        .check()
        .await
        .unwrap_err();
    assert!(matches!(e, SinkError::Config { .. }), "{e}");
    assert_secrets_hidden(&[&token], &[format!("{sink:?}")]);
}

// ---------------------------------------------------------------------------------------------
// E-mail

fn test_contract(sinks: Vec<SinkConfig>) -> Contract {
    Contract {
        name: "ouchhungry".into(),
        display_name: "OuchHungry".into(),
        manufacturer: "OuchHungry".into(),
        brands: vec![],
        products: vec![ProductKind::Daily],
        formats: vec![contract::Format::Csv],
        parquet: contract::ParquetOptions::default(),
        k: 5,
        key_period: contract::KeyPeriod::Month,
        late_days: 2,
        pseudonymization: contract::Pseudonymization {
            key_version: "v1".into(),
            secret: SecretRef {
                env: Some("UNUSED".into()),
                file: None,
            },
        },
        sinks,
        contacts: vec![
            Contact {
                name: "Equipe de dados OuchHungry".into(),
                email: "dados@ouchhungry.example".into(),
                role: None,
            },
            Contact {
                name: "Trade marketing".into(),
                email: "trade@ouchhungry.example".into(),
                role: None,
            },
        ],
        delivery: contract::DeliveryTerms {
            deadline: "08:00".into(),
        },
    }
}

fn sftp_receipt(d: &Delivery) -> Receipt {
    let files = d
        .files
        .iter()
        .flat_map(|f| [&f.data, &f.manifest])
        .map(|lf| ReceiptFile {
            name: lf.name.clone(),
            location: format!(
                "sftp://sftp.ouchhungry.example/upload/ouchhungry/daily/{}",
                lf.name
            ),
            bytes: lf.bytes,
            sha256: lf.sha256.clone(),
        })
        .collect();
    datashare::sinks::receipt("sftp", d, files, false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_sink_passes_the_contract() {
    capture_logs();
    let work = tempfile::tempdir().unwrap();
    let env = smtp_env(work.path(), SmtpTls::Starttls);
    let mail = PathBuf::from(env.server.field("mail"));
    let contract = test_contract(vec![SinkConfig::Email(EmailConfig {
        reply_to: Some("dados@datashare.example".into()),
    })]);
    let email_cfg = EmailConfig {
        reply_to: Some("dados@datashare.example".into()),
    };
    let mut d = delivery(work.path(), "ouchhungry");
    d.upstream = vec![sftp_receipt(&d)];
    let dictionary = work.path().join("ouchhungry_daily_dictionary.pt-BR.md");
    std::fs::write(
        &dictionary,
        "# Dicionário de dados\n\n| coluna | descrição |\n",
    )
    .unwrap();
    d.new_dictionary = Some(LocalFile::from_path(&dictionary).unwrap());
    // The same file as the product's dictionary (rewritten above), as the worker hands it over.
    d.dictionary = d.new_dictionary.clone();

    let wrong = SmtpSettings {
        password: Some(secret_file(work.path(), "wrong", &random_hex(16))),
        ..env.settings.clone()
    };
    let sink = EmailSink::new(&contract, &email_cfg, &env.settings).unwrap();
    let debug = format!("{sink:?}");
    let harness = Harness {
        sink,
        refused: EmailSink::new(&contract, &email_cfg, &wrong).unwrap(),
        snapshot: Box::new({
            let mail = mail.clone();
            move || {
                mails(&mail)
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect()
            }
        }),
        server: Some(env.server),
        recognises_content: false,
    };
    let mut texts = sink_contract(harness, &d, work.path()).await;

    let got = mails(&mail);
    assert_eq!(got.len(), 1, "the e-mail arrives once");
    let m = parse_eml(&got[0]);
    assert_eq!(m["message_id"], format!("<{}@datashare>", d.delivery_id));
    assert_eq!(m["subject"], "OuchHungry: diário de 27/11/2026 disponível");
    assert!(
        m["to"]
            .as_str()
            .unwrap()
            .contains("dados@ouchhungry.example")
    );
    assert!(
        m["to"]
            .as_str()
            .unwrap()
            .contains("trade@ouchhungry.example")
    );
    assert_eq!(m["reply_to"], "dados@datashare.example");
    let parts = m["parts"].as_array().unwrap();
    let types: Vec<_> = parts.iter().map(|p| p["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["text/plain", "text/html", "text/markdown"]);
    let plain = parts[0]["text"].as_str().unwrap();
    for expected in [
        "Olá, equipe OuchHungry",
        "Período: 27/11/2026",
        "1.234 linhas",
        &d.files[0].data.sha256,
        "SFTP: sftp://sftp.ouchhungry.example/upload/ouchhungry/daily/ouchhungry_daily_2026-11-27.csv",
        "Maringá teve o maior crescimento de unidades (+32,5%).",
        "O dicionário de dados segue em anexo.",
    ] {
        assert!(plain.contains(expected), "{expected:?} not in {plain}");
    }
    assert!(
        !plain.contains(".manifest.json\n"),
        "manifests are not listed as places to fetch"
    );
    let html = parts[1]["text"].as_str().unwrap();
    assert!(
        html.contains("<html lang=\"pt-BR\">") && html.contains("Maringá"),
        "{html}"
    );
    assert_eq!(parts[2]["filename"], "ouchhungry_daily_dictionary.pt-BR.md");
    assert!(
        parts[2]["text"]
            .as_str()
            .unwrap()
            .starts_with("# Dicionário")
    );
    texts.push(debug);
    assert_secrets_hidden(&[&env.password], &texts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_over_implicit_tls_without_dictionary() {
    capture_logs();
    let work = tempfile::tempdir().unwrap();
    let env = smtp_env(work.path(), SmtpTls::Implicit);
    let contract = test_contract(vec![SinkConfig::Email(EmailConfig::default())]);
    let settings = SinkSettings {
        smtp: Some(env.settings.clone()),
        ..SinkSettings::default()
    };
    let sink = AnySink::build(&contract, &contract.sinks[0], &settings).unwrap();
    sink.check().await.unwrap();
    let d = delivery(work.path(), "ouchhungry");
    let r = sink.deliver(&d).await.unwrap();
    assert_eq!(r.reference, Some(format!("<{}@datashare>", d.delivery_id)));
    let got = mails(Path::new(&env.server.field("mail")));
    assert_eq!(got.len(), 1);
    let m = parse_eml(&got[0]);
    let types: Vec<_> = m["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        types,
        ["text/plain", "text/html"],
        "no dictionary unless asked"
    );

    // Without the relay's CA its certificate is not trusted: a configuration problem.
    let untrusted = SmtpSettings {
        ca_file: Some(PathBuf::from(
            env.server
                .field("ca")
                .replace("smtp-ca.pem", "smtp-cert.pem"),
        )),
        ..env.settings.clone()
    };
    let e = EmailSink::new(&contract, &EmailConfig::default(), &untrusted)
        .unwrap()
        .check()
        .await
        .unwrap_err();
    assert!(!e.is_transient(), "{e}");
    assert_secrets_hidden(&[&env.password], &[e.to_string()]);
}
