//! The sink consumers end to end: the worker and `datashare deliver --sink sftp|api|email`
//! in-process (pull mode) on the fake-gcp emulators, with the real partner stand-ins (OpenSSH
//! sshd, the HTTPS API, the SMTP server).

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::NaiveDate;
use datashare::config::Config;
use datashare::config::sinks::{ApiAuth, ApiConfig, SftpConfig};
use datashare::events::{DeliveryRequest, Incoming, Notify, Outgoing};
use datashare::gcp::{Bus, Gcs};
use datashare::pipeline::deliver::Deliver;
use datashare::products::manifest::sha256_hex;
use datashare::service::claim::{self, Claim};
use datashare::sinks::{GcsReceipts, ReceiptStore};
use datashare::telemetry;
use serde_json::Value;

use crate::harness::{Partners, Spec, TestApp, mails, parse_eml, tree, until, upload_day};

/// The sinks of the contract.
const ALL: &[&str] = &["sftp", "api", "email"];

/// What the delivery tests ask for: the stand-ins, and pull subscriptions on the deliveries,
/// the partner e-mails and the sinks' dead letters.
fn spec() -> Spec {
    Spec::new()
        .partners(Partners::StandIns)
        .watch("deliveries", "test-deliveries")
        .watch("notify", "test-notify")
        .watch("deliveries-sftp-dead-letter", "test-sftp-dead")
        .watch("deliveries-api-dead-letter", "test-api-dead")
}

/// The app of `spec` with the worker and the `deliver` roles of `sinks` running.
async fn start(spec: Spec, sinks: &[&str]) -> TestApp {
    let app = TestApp::spawn(spec).await;
    app.spawn_worker().await;
    for sink in sinks {
        app.spawn_deliver(sink).await;
    }
    app
}

/// Waits for the data team's e-mail about `kind` naming `delivery_id`, then checks it stays
/// the only one and that the partner got none.
async fn one_team_mail_about(r: &TestApp, kind: &str, delivery_id: &str) {
    let mail_dir = r.mail_dir();
    let about = |dir: &Path| -> Vec<String> {
        let (team, _) = team_and_partner_mails(dir);
        team.into_iter()
            .filter(|t| {
                t.lines()
                    .find(|l| l.starts_with("Subject:"))
                    .is_some_and(|l| l.contains(kind))
            })
            .collect()
    };
    until(
        &format!("the team's {kind} e-mail"),
        Duration::from_secs(180),
        || {
            let n = about(&mail_dir).len();
            async move { (n > 0).then_some(()) }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = about(&mail_dir);
    assert_eq!(got.len(), 1, "one e-mail about {kind}");
    assert!(got[0].contains(&delivery_id[..12]), "names the delivery");
    let (_, partner) = team_and_partner_mails(&mail_dir);
    assert!(partner.is_empty(), "no partner e-mail");
}

async fn read_json(gcs: &Gcs, uri: &str) -> Value {
    let (bucket, name) = uri.strip_prefix("gs://").unwrap().split_once('/').unwrap();
    let (bytes, _) = gcs.read(bucket, name, None).await.unwrap().unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn republish(m: &Incoming) -> Outgoing {
    Outgoing {
        data: m.data.clone(),
        attributes: m.attributes.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_ends_on_sftp_at_the_api_and_in_one_email_and_redeliveries_change_nothing() {
    let r = start(spec(), ALL).await;
    r.stack.watch("batches", "test-batches").await;
    let dt = NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();
    upload_day(&r.gcs, &r.cfg, dt, 300, false).await;

    let mail_dir = r.mail_dir();
    until("the partner e-mail", Duration::from_secs(300), || {
        let n = mails(&mail_dir).len();
        async move { (n > 0).then_some(()) }
    })
    .await;
    let deliveries = r
        .stack
        .drain("test-deliveries", Duration::from_secs(30), |m| {
            !m.is_empty()
        })
        .await;
    let daily: Vec<_> = deliveries
        .iter()
        .filter(|m| m.attributes.get("product").map(String::as_str) == Some("daily"))
        .collect();
    assert_eq!(daily.len(), 1, "{deliveries:?}");
    let req = DeliveryRequest::parse(daily[0]).unwrap();
    assert_eq!(req.sinks, vec!["sftp".to_string(), "api".to_string()]);

    // SFTP: every file and manifest, with the manifests' checksums.
    let folder = r.upload_dir().join("ouchhungry/daily");
    for f in &req.files {
        let manifest = read_json(&r.gcs, &f.manifest.uri).await;
        let data = std::fs::read(folder.join(&f.name)).expect("data file on the SFTP server");
        assert_eq!(sha256_hex(&data), manifest["sha256"].as_str().unwrap());
        assert_eq!(data.len() as u64, manifest["bytes"].as_u64().unwrap());
        let m_name = f.manifest.uri.rsplit('/').next().unwrap();
        let m = std::fs::read(folder.join(m_name)).expect("manifest on the SFTP server");
        assert_eq!(sha256_hex(&m), f.manifest.sha256);
        // API: the same bytes under the delivery's idempotency key.
        let received = r.api().state.join("received");
        let at_api: Vec<PathBuf> = std::fs::read_dir(&received)
            .unwrap()
            .flatten()
            .map(|e| e.path().join(&f.name))
            .filter(|p| p.exists())
            .collect();
        assert_eq!(at_api.len(), 1, "one copy of {} at the API", f.name);
        assert_eq!(
            sha256_hex(&std::fs::read(&at_api[0]).unwrap()),
            manifest["sha256"].as_str().unwrap()
        );
    }
    assert_eq!(r.api_stored(), 1, "one POST stored at the API");
    // The dictionary goes where the files go: beside them on SFTP, in the API's POST.
    let dict_name = req.dictionary.uri.rsplit('/').next().unwrap();
    assert_eq!(dict_name, "ouchhungry_daily_dictionary.pt-BR.md");
    let at_sftp = std::fs::read(folder.join(dict_name)).expect("dictionary on the SFTP server");
    assert_eq!(sha256_hex(&at_sftp), req.dictionary.sha256);
    let at_api: Vec<PathBuf> = std::fs::read_dir(r.api().state.join("received"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join(dict_name))
        .filter(|p| p.exists())
        .collect();
    assert_eq!(at_api.len(), 1, "the dictionary at the API");
    let manifest = read_json(&r.gcs, &req.files[0].manifest.uri).await;
    assert_eq!(manifest["dictionary"], dict_name);
    assert_eq!(
        manifest["dictionary_sha256"],
        req.dictionary.sha256.as_str()
    );

    // One notify, one e-mail, with the Message-ID of the delivery and the dictionary.
    let notifies = r
        .stack
        .drain("test-notify", Duration::from_secs(30), |m| !m.is_empty())
        .await;
    assert_eq!(notifies.len(), 1, "{notifies:?}");
    let notify = Notify::parse(&notifies[0]).unwrap();
    assert_eq!(notify.delivery_id, req.delivery_id);
    let sinks: Vec<&str> = notify.receipts.iter().map(|r| r.sink.as_str()).collect();
    assert_eq!(sinks, ["api", "sftp"]);

    // One trace from the upload that completed the batch to the e-mail: the batch step runs in
    // the trace of the batch-ready message it claimed, the sinks in the delivery request's.
    let traced = |m: &Incoming| telemetry::trace_id(&m.attributes).expect("a traceparent");
    let trace = traced(daily[0]);
    let ready = r
        .stack
        .drain("test-batches", Duration::from_secs(10), |m| !m.is_empty())
        .await;
    assert!(
        ready.iter().any(|m| traced(m) == trace),
        "the batch step continues a batch-ready message's trace"
    );
    assert_eq!(traced(&notifies[0]), trace, "notify continues it");
    let logs = crate::harness::captured_logs();
    assert!(
        logs.lines()
            .any(|l| l.contains(&format!("trace_id={trace}")) && l.contains("email")),
        "the e-mail role logs under the trace id"
    );
    let got = mails(&mail_dir);
    assert_eq!(got.len(), 1);
    let eml = parse_eml(&got[0]);
    assert!(
        eml["message_id"]
            .as_str()
            .unwrap()
            .contains(&req.delivery_id),
        "{eml}"
    );
    assert!(
        has_dictionary(&eml),
        "first delivery attaches the dictionary: {eml}"
    );
    let receipts = GcsReceipts::new(r.gcs.clone(), r.cfg.gcp.buckets.ops.clone());
    for sink in ["sftp", "api", "email"] {
        assert!(
            receipts
                .get("ouchhungry", sink, &req.delivery_id)
                .await
                .unwrap()
                .is_some(),
            "{sink} receipt"
        );
    }

    // Redelivery of the request and of the notify: nothing uploaded or sent twice.
    let before = tree(&r.upload_dir());
    let bus = Bus::connect(
        &r.cfg.gcp.project,
        &["deliveries", "notify"],
        r.cfg.emulators.pubsub.as_deref(),
    )
    .await
    .unwrap();
    bus.publish("deliveries", republish(daily[0]))
        .await
        .unwrap();
    bus.publish("notify", republish(&notifies[0]))
        .await
        .unwrap();
    // Both consumers acknowledge the copies (the test subscriptions see them too).
    let again = r
        .stack
        .drain("test-deliveries", Duration::from_secs(30), |m| {
            !m.is_empty()
        })
        .await;
    assert_eq!(again.len(), 1);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let notifies_again = r
        .stack
        .drain("test-notify", Duration::from_secs(30), |m| !m.is_empty())
        .await;
    assert_eq!(
        notifies_again.len(),
        1,
        "only the test's copy of the notify: {notifies_again:?}"
    );
    assert_eq!(tree(&r.upload_dir()), before, "nothing uploaded again");
    assert_eq!(r.api_stored(), 1, "nothing posted again");
    assert_eq!(mails(&mail_dir).len(), 1, "no second e-mail");

    // The next day's delivery: same schema, so no dictionary attached.
    let next = dt.succ_opt().unwrap();
    upload_day(&r.gcs, &r.cfg, next, 300, false).await;
    until("the second e-mail", Duration::from_secs(300), || {
        let n = mails(&mail_dir).len();
        async move { (n > 1).then_some(()) }
    })
    .await;
    let second = parse_eml(&mails(&mail_dir)[1]);
    assert!(
        !has_dictionary(&second),
        "no dictionary on a later delivery with the same schema: {second}"
    );
    r.stop().await;
}

fn has_dictionary(eml: &Value) -> bool {
    eml["parts"].as_array().unwrap().iter().any(|p| {
        p["filename"]
            .as_str()
            .is_some_and(|f| f.contains("dicion") || f.contains("dictionary"))
    })
}

/// The daily delivery request the worker published.
async fn daily_request(r: &TestApp) -> (Incoming, DeliveryRequest) {
    let deliveries = r
        .stack
        .drain("test-deliveries", Duration::from_secs(240), |m| {
            m.iter()
                .any(|m| m.attributes.get("product").map(String::as_str) == Some("daily"))
        })
        .await;
    let m = deliveries
        .into_iter()
        .find(|m| m.attributes.get("product").map(String::as_str) == Some("daily"))
        .unwrap();
    let req = DeliveryRequest::parse(&m).unwrap();
    (m, req)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_api_400_is_dead_lettered_once_and_a_429_retry_after_is_honoured() {
    let r = start(spec(), ALL).await;
    crate::harness::script(r.api(), serde_json::json!([{"status": 400}])).await;
    let dt = NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();
    upload_day(&r.gcs, &r.cfg, dt, 300, false).await;
    let (msg, req) = daily_request(&r).await;
    let dead = r
        .stack
        .drain("test-api-dead", Duration::from_secs(120), |m| !m.is_empty())
        .await;
    assert_eq!(dead.len(), 1, "one dead letter: {dead:?}");
    assert_eq!(dead[0].attributes["error_kind"], "partner_rejected");
    let seen = format!(
        "{:?} {}",
        dead[0].attributes,
        String::from_utf8_lossy(&dead[0].data)
    );
    assert!(
        !seen.contains(&r.api().password),
        "no secret in the dead letter"
    );
    assert_eq!(dead[0].attributes["delivery_id"], req.delivery_id);
    assert_eq!(
        crate::harness::statuses(&r.api().state),
        ["400"],
        "a 400 is not retried"
    );
    // The SFTP sink delivered, but without the API's receipt no e-mail goes out.
    let folder = r.upload_dir().join("ouchhungry/daily");
    until("the SFTP upload", Duration::from_secs(60), || {
        let ok = folder.join(&req.files[0].name).exists();
        async move { ok.then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        mails(&r.mail_dir()).is_empty(),
        "no e-mail before every sink delivered"
    );

    // Replayed after the partner fixed its side; it first answers 429 with Retry-After: 2.
    crate::harness::script(
        r.api(),
        serde_json::json!([{"status": 429, "retry_after": "2"}]),
    )
    .await;
    let bus = Bus::connect(
        &r.cfg.gcp.project,
        &["deliveries"],
        r.cfg.emulators.pubsub.as_deref(),
    )
    .await
    .unwrap();
    let mut replay = republish(&msg);
    replay.attributes.remove("sink_sftp");
    bus.publish("deliveries", replay).await.unwrap();
    let mail_dir = r.mail_dir();
    until("the partner e-mail", Duration::from_secs(180), || {
        let n = mails(&mail_dir).len();
        async move { (n > 0).then_some(()) }
    })
    .await;
    let log = crate::harness::requests(&r.api().state);
    let statuses: Vec<String> = log.iter().map(|r| r["status"].to_string()).collect();
    assert_eq!(statuses, ["400", "429", "201"]);
    let gap = log[2]["time"].as_f64().unwrap() - log[1]["time"].as_f64().unwrap();
    assert!(gap >= 1.9, "Retry-After honoured: {gap}s");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(mails(&mail_dir).len(), 1);
    let dead = r
        .stack
        .drain("test-api-dead", Duration::from_secs(10), |_| true)
        .await;
    assert!(dead.is_empty(), "no second dead letter: {dead:?}");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_sftp_host_key_is_refused_dead_lettered_and_alerted() {
    let r = start(
        spec().tweak_sftp(|work, sftp| {
            let (_, other) = crate::harness::ssh_keygen(work, "not_the_host_key", "");
            sftp.host_key = other;
        }),
        ALL,
    )
    .await;
    r.spawn_alerting().await;
    let dt = NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();
    upload_day(&r.gcs, &r.cfg, dt, 300, false).await;
    let (_, req) = daily_request(&r).await;
    let dead = r
        .stack
        .drain("test-sftp-dead", Duration::from_secs(120), |m| {
            !m.is_empty()
        })
        .await;
    assert_eq!(dead.len(), 1, "one dead letter: {dead:?}");
    assert_eq!(dead[0].attributes["error_kind"], "host_key");
    assert_eq!(dead[0].attributes["delivery_id"], req.delivery_id);
    assert!(tree(&r.upload_dir()).is_empty(), "nothing uploaded");
    one_team_mail_about(&r, "host_key", &req.delivery_id).await;
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_sftp_server_down_is_retried_dead_lettered_by_pubsub_and_alerted() {
    // Nothing listens on the contract's port.
    let r = start(
        spec().tweak_sftp(|_, sftp| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            sftp.port = l.local_addr().unwrap().port();
        }),
        ALL,
    )
    .await;
    let dt = NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();
    upload_day(&r.gcs, &r.cfg, dt, 300, false).await;
    let (_, req) = daily_request(&r).await;
    let dead = r
        .stack
        .drain("test-sftp-dead", Duration::from_secs(240), |m| {
            !m.is_empty()
        })
        .await;
    assert_eq!(dead.len(), 1, "one dead letter: {dead:?}");
    let a = &dead[0].attributes;
    assert_eq!(a["delivery_id"], req.delivery_id);
    assert!(
        !a.contains_key("error_kind"),
        "not dead-lettered by the consumer: {a:?}"
    );
    let attempts: u32 = a["CloudPubSubDeadLetterSourceDeliveryCount"]
        .parse()
        .unwrap();
    assert!(attempts > 1, "retried before the dead letter: {attempts}");
    // The alerting consumer starts late: the dead letter waits in its subscription.
    r.spawn_alerting().await;
    one_team_mail_about(&r, "max_delivery_attempts", &req.delivery_id).await;
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_smtp_server_down_then_back_gets_the_email_once() {
    let mut r = start(spec(), ALL).await;
    let port = r.smtp().server.port().to_string();
    let state = r.mail_dir().parent().unwrap().to_path_buf();
    r.smtp_mut().server.stop();
    let dt = NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();
    upload_day(&r.gcs, &r.cfg, dt, 300, false).await;
    let (_, req) = daily_request(&r).await;
    let notifies = r
        .stack
        .drain("test-notify", Duration::from_secs(240), |m| !m.is_empty())
        .await;
    assert_eq!(notifies.len(), 1);
    // A few failed attempts while the relay is down.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let receipts = GcsReceipts::new(r.gcs.clone(), r.cfg.gcp.buckets.ops.clone());
    assert!(
        receipts
            .get("ouchhungry", "email", &req.delivery_id)
            .await
            .unwrap()
            .is_none()
    );
    r.smtp_mut().server = crate::harness::Server::start(
        "smtp.py",
        &state,
        &["--tls", "starttls", "--port", &port],
        &[
            ("PARTNER_SMTP_USER", "datashare"),
            ("PARTNER_SMTP_PASSWORD", r.smtp().password.as_str()),
        ],
    );
    let mail_dir = r.mail_dir();
    until("the partner e-mail", Duration::from_secs(120), || {
        let n = mails(&mail_dir).len();
        async move { (n > 0).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(mails(&mail_dir).len(), 1, "the e-mail arrives once");
    let dead = r
        .stack
        .drain("test-sftp-dead", Duration::from_secs(5), |_| true)
        .await;
    assert!(dead.is_empty());
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_notify_claim_left_by_a_crashed_instance_is_taken_over_once_its_lease_expires() {
    // The API sink starts late, after a "crashed" instance took the notify claim.
    let r = start(spec(), &["sftp", "email"]).await;
    let dt = NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();
    upload_day(&r.gcs, &r.cfg, dt, 300, false).await;
    let (_, req) = daily_request(&r).await;
    let ops = r.cfg.gcp.buckets.ops.clone();
    let name = format!("notify/{}", req.delivery_id);
    let lease = Duration::from_secs(8);
    let taken = claim::take(&r.gcs, &ops, &name, "crashed-instance", lease)
        .await
        .unwrap();
    assert!(matches!(taken, Claim::Taken { .. }), "{taken:?}");
    let claimed_at = std::time::Instant::now();
    r.spawn_deliver("api").await;
    let mail_dir = r.mail_dir();
    until("the partner e-mail", Duration::from_secs(180), || {
        let n = mails(&mail_dir).len();
        async move { (n > 0).then_some(()) }
    })
    .await;
    assert!(
        claimed_at.elapsed() >= lease,
        "the notify waited for the crashed instance's lease"
    );
    let notifies = r
        .stack
        .drain("test-notify", Duration::from_secs(30), |m| !m.is_empty())
        .await;
    assert_eq!(notifies.len(), 1, "one notify: {notifies:?}");
    let (body, _) = r.gcs.read(&ops, &name, None).await.unwrap().unwrap();
    let holder: Value = serde_json::from_slice(&body).unwrap();
    assert_ne!(
        holder["owner"], "crashed-instance",
        "the claim was taken over"
    );
    assert_eq!(mails(&mail_dir).len(), 1);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sink_that_finds_the_notify_claim_held_waits_for_its_holder_instead_of_retrying() {
    // Two sinks finishing together: the other one (here the test) holds the notify claim and
    // writes the marker a moment after this sink's receipt. The API sink acknowledges on that
    // marker; it used to nack, deliver "again" on the redelivery and count it twice.
    crate::harness::capture_logs();
    let r = start(spec(), &["sftp", "email"]).await;
    let dt = NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();
    upload_day(&r.gcs, &r.cfg, dt, 300, false).await;
    let (_, req) = daily_request(&r).await;
    let ops = r.cfg.gcp.buckets.ops.clone();
    let holder = format!("holder-{}", crate::harness::random_hex(8));
    let claim_name = format!("notify/{}", req.delivery_id);
    let taken = claim::take(&r.gcs, &ops, &claim_name, &holder, Duration::from_secs(120))
        .await
        .unwrap();
    assert!(matches!(taken, Claim::Taken { .. }), "{taken:?}");
    r.spawn_deliver("api").await;
    let receipts = GcsReceipts::new(r.gcs.clone(), ops.clone());
    until("the API receipt", Duration::from_secs(120), || {
        let (receipts, id) = (&receipts, &req.delivery_id);
        async move { receipts.get("ouchhungry", "api", id).await.unwrap() }
    })
    .await;
    let marker = format!("notify/{}.published", req.delivery_id);
    r.gcs
        .write(&ops, &marker, b"by-the-test".to_vec(), Some(0))
        .await
        .unwrap();
    let waited = format!("holder={holder}");
    until(
        "the API sink's acknowledgement",
        Duration::from_secs(30),
        || {
            let found = crate::harness::captured_logs().contains(&waited);
            async move { found.then_some(()) }
        },
    )
    .await;
    let logs = crate::harness::captured_logs();
    assert!(
        !logs.contains(&format!("notify claim held by {holder}")),
        "the API sink handed its message back"
    );
    r.stop().await;
}

#[tokio::test]
async fn a_misconfigured_sink_stops_the_role_at_start_up() {
    let work = tempfile::tempdir().unwrap();
    let key = work.path().join("missing-key");
    let sftp = SftpConfig {
        host: "127.0.0.1".into(),
        port: 22,
        user: "datashare".into(),
        root: "/upload".into(),
        host_key: "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
        private_key: datashare::config::secret::SecretRef {
            env: None,
            file: Some(key),
        },
        passphrase: None,
    };
    let api = ApiConfig {
        base_url: "https://127.0.0.1:9/v1/".into(),
        auth: ApiAuth::Basic {
            user: "datashare".into(),
            password: crate::harness::secret_file(
                work.path(),
                "pw",
                &crate::harness::random_hex(8),
            ),
        },
        ca_file: Some(work.path().join("missing-ca.pem")),
    };
    let dir = crate::harness::local_contract(work.path(), &sftp, &api);
    let dir_s = dir.display().to_string();
    let cfg = Config::load_with(None, &|k| {
        (k == "DATASHARE_PARTNERS_DIR").then(|| dir_s.clone())
    })
    .unwrap();
    for (sink, expected) in [
        ("sftp", "missing-key"),
        ("api", "missing-ca.pem"),
        ("email", "no SMTP relay configured"),
    ] {
        let e = Deliver::start(cfg.clone(), sink)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ouchhungry") && e.contains(expected),
            "{sink}: {e}"
        );
    }
    let e = Deliver::start(cfg, "fax").await.unwrap_err().to_string();
    assert!(e.contains("unknown sink"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_requests_and_unknown_partners_are_dead_lettered_not_retried() {
    let r = start(spec(), &["api"]).await;
    let bus = Bus::connect(
        &r.cfg.gcp.project,
        &["deliveries"],
        r.cfg.emulators.pubsub.as_deref(),
    )
    .await
    .unwrap();
    let attrs = |extra: &[(&str, &str)]| {
        let mut a: std::collections::BTreeMap<String, String> =
            [("sink_api".to_string(), "true".to_string())].into();
        for (k, v) in extra {
            a.insert(k.to_string(), v.to_string());
        }
        a
    };
    bus.publish(
        "deliveries",
        Outgoing {
            data: b"{not json".to_vec(),
            attributes: attrs(&[("case", "garbage")]),
        },
    )
    .await
    .unwrap();
    let digest = |u: &str| datashare::events::FileDigest {
        uri: u.into(),
        sha256: "00".repeat(32),
        bytes: 1,
    };
    let req = DeliveryRequest {
        schema_version: datashare::events::delivery::DELIVERY_REQUEST_VERSION,
        delivery_id: "d".repeat(64),
        partner: "nobody".into(),
        product: "daily".into(),
        period: "2026-11-27".into(),
        product_version: "e".repeat(64),
        files: vec![datashare::events::DeliveryFile {
            name: "nobody_daily_2026-11-27.csv".into(),
            format: "csv".into(),
            rows: 1,
            file: digest("gs://datashare-products/x.csv"),
            manifest: digest("gs://datashare-products/x.csv.manifest.json"),
        }],
        dictionary: digest("gs://datashare-products/d.md"),
        sinks: vec!["api".into()],
        source_batches: vec![],
        marker_generation: None,
    };
    let mut m = req.to_message();
    m.attributes.insert("case".into(), "unknown".into());
    bus.publish("deliveries", m).await.unwrap();
    let dead = r
        .stack
        .drain("test-api-dead", Duration::from_secs(60), |m| m.len() >= 2)
        .await;
    assert_eq!(dead.len(), 2, "{dead:?}");
    let kind = |case: &str| {
        dead.iter()
            .find(|m| m.attributes["case"] == case)
            .map(|m| m.attributes["error_kind"].clone())
            .unwrap()
    };
    assert_eq!(kind("garbage"), "malformed_message");
    assert_eq!(kind("unknown"), "unknown_partner");
    assert!(crate::harness::requests(&r.api().state).is_empty());
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sinks_serve_push_subscriptions_too() {
    let r = start(spec().push("sftp").push("api").push("email"), ALL).await;
    let dt = NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();
    upload_day(&r.gcs, &r.cfg, dt, 300, false).await;
    let mail_dir = r.mail_dir();
    until("the partner e-mail", Duration::from_secs(300), || {
        let n = mails(&mail_dir).len();
        async move { (n > 0).then_some(()) }
    })
    .await;
    let (_, req) = daily_request(&r).await;
    let folder = r.upload_dir().join("ouchhungry/daily");
    for f in &req.files {
        let data = std::fs::read(folder.join(&f.name)).expect("data file on the SFTP server");
        assert_eq!(sha256_hex(&data), f.file.sha256);
    }
    assert_eq!(r.api_stored(), 1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(mails(&mail_dir).len(), 1);
    r.stop().await;
}

/// The e-mails in the catcher addressed to the data team (the alert consumer's) and to the
/// partner (the e-mail sink's).
fn team_and_partner_mails(dir: &Path) -> (Vec<String>, Vec<String>) {
    let texts: Vec<String> = mails(dir)
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect();
    texts.into_iter().partition(|t| t.contains("@aiqfome.com"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rejected_delivery_alerts_the_team_and_its_archived_dead_letter_replays_once() {
    let r = start(spec(), ALL).await;
    r.spawn_alerting().await;
    crate::harness::script(r.api(), serde_json::json!([{"status": 400}])).await;
    let dt = NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();
    upload_day(&r.gcs, &r.cfg, dt, 300, false).await;
    let (_, req) = daily_request(&r).await;

    // One dead letter, archived, and one e-mail to the data team saying what and what to do.
    let mail_dir = r.mail_dir();
    // (The team also gets the batch's quality warnings: only the rejection is looked at.)
    let rejected = |team: Vec<String>| -> Vec<String> {
        team.into_iter()
            .filter(|t| {
                t.lines()
                    .find(|l| l.starts_with("Subject:"))
                    .is_some_and(|l| l.contains("partner_rejected"))
            })
            .collect()
    };
    let team = until("the team's alert e-mail", Duration::from_secs(180), || {
        let (team, _) = team_and_partner_mails(&mail_dir);
        let team = rejected(team);
        async move { (!team.is_empty()).then_some(team) }
    })
    .await;
    assert!(
        team[0].contains(&req.delivery_id[..12]),
        "names the delivery"
    );
    let ops = r.cfg.gcp.buckets.ops.clone();
    let archived = r
        .gcs
        .list(&ops, "deadletters/deliveries-api/")
        .await
        .unwrap();
    assert_eq!(archived.len(), 1, "archived before the ack: {archived:?}");

    // The partner fixed its side: the archived dead letter is replayed and delivered once; the
    // SFTP sink, which already delivered, does nothing (its receipt), and one partner e-mail.
    let bus = Bus::connect(
        &r.cfg.gcp.project,
        &["deliveries"],
        r.cfg.emulators.pubsub.as_deref(),
    )
    .await
    .unwrap();
    let report =
        datashare::alerting::replay::replay_dead_letters(&r.cfg, &r.gcs, &bus, "deliveries-api")
            .await
            .unwrap();
    assert_eq!(report.replayed.len(), 1);
    until("the partner e-mail", Duration::from_secs(180), || {
        let (_, partner) = team_and_partner_mails(&mail_dir);
        async move { (!partner.is_empty()).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (team, partner) = team_and_partner_mails(&mail_dir);
    let team = rejected(team);
    assert_eq!(
        (team.len(), partner.len()),
        (1, 1),
        "one alert about the rejection, one partner e-mail"
    );
    assert_eq!(crate::harness::statuses(&r.api().state), ["400", "201"]);
    assert_eq!(
        tree(&r.upload_dir().join("ouchhungry/daily")).len(),
        req.files.len() * 2 + 1,
        "each file and manifest uploaded once, the dictionary beside them"
    );
    for text in team.iter().chain(&partner) {
        assert!(!text.contains(&r.api().password), "no secret in an e-mail");
        assert!(!text.contains(&r.smtp().password), "no secret in an e-mail");
    }
    r.stop().await;
}

/// `datashare status --json` for `days`, through the binary (exit code 1 when a day needs
/// action).
fn status_json(r: &TestApp, args: &[&str]) -> (Value, Option<i32>) {
    let out = crate::datashare_cmd()
        .envs(&r.stack.env)
        .env("DATASHARE_PARTNERS_DIR", &r.cfg.worker.partners_dir)
        .args(["status", "--json"])
        .args(args)
        .output()
        .expect("datashare status runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let v = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (v, out.status.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_tells_a_delivered_a_held_a_failed_part_and_a_missing_day_apart() {
    use datashare::events::{Alert, Severity};
    use datashare::pipeline::status::{DayState, collect, partner_sinks};
    let r = start(spec(), ALL).await;
    r.spawn_alerting().await;
    let day = |d: u32| NaiveDate::from_ymd_opt(2026, 11, d).unwrap();
    let (missing, failed, held, delivered) = (day(20), day(21), day(22), day(23));
    let (_, truth) = upload_day(&r.gcs, &r.cfg, delivered, 200, false).await;
    upload_day(&r.gcs, &r.cfg, held, 200, true).await;
    upload_day(&r.gcs, &r.cfg, failed, 200, true).await;
    // The worker's tick raises this for a day without a batch past its deadline.
    let absent = Alert::new(
        Severity::Critical,
        "extract.missing",
        ("*", "*", &missing.to_string()),
        "extract.missing",
        format!("nenhum lote completo de {missing} até o prazo"),
    );
    let bus = crate::harness::publisher(&r.cfg, "alerts").await;
    bus.publish("alerts", absent.to_message()).await.unwrap();

    let partners = partner_sinks(&r.cfg);
    let mut sinks = partners["ouchhungry"].clone();
    sinks.sort();
    assert_eq!(sinks, ["api", "email", "sftp"].map(String::from));
    let states = |days: Vec<NaiveDate>| {
        let (gcs, cfg, partners) = (&r.gcs, &r.cfg, &partners);
        async move {
            collect(gcs, cfg, partners, &days, None, chrono::Utc::now())
                .await
                .unwrap()
                .iter()
                .map(|d| d.state)
                .collect::<Vec<_>>()
        }
    };
    until(
        "the failed-part days held, the good day delivered",
        Duration::from_secs(300),
        || async {
            let s = states(vec![failed, held, delivered]).await;
            (s == [DayState::Held, DayState::Held, DayState::Delivered]).then_some(())
        },
    )
    .await;
    // The team releases one of the two held days without its failed parts.
    crate::run_ok(
        crate::datashare_cmd()
            .envs(&r.stack.env)
            .env("DATASHARE_PARTNERS_DIR", &r.cfg.worker.partners_dir)
            .args(["release", "--date", &failed.to_string()]),
    );
    until(
        "the released day delivered",
        Duration::from_secs(300),
        || async { (states(vec![failed]).await == [DayState::Delivered]).then_some(()) },
    )
    .await;
    until(
        "the missing day's alert recorded",
        Duration::from_secs(60),
        || async {
            r.gcs
                .stat(
                    &r.cfg.gcp.buckets.ops,
                    &format!("alerts/state/{}.json", absent.fingerprint),
                )
                .await
                .unwrap()
        },
    )
    .await;

    until(
        "the held day's dead letters recorded",
        Duration::from_secs(120),
        || async {
            let d = collect(&r.gcs, &r.cfg, &partners, &[held], None, chrono::Utc::now())
                .await
                .unwrap()
                .remove(0);
            let open: Vec<&str> = d.alerts.iter().map(|a| a.fingerprint.as_str()).collect();
            d.parts
                .iter()
                .filter(|p| p.state == "failed")
                .all(|p| {
                    let fp = datashare::events::dead_letter_fingerprint(
                        "extracts-worker",
                        "invalid_extract",
                        &p.object,
                    );
                    open.contains(&fp.as_str())
                })
                .then_some(())
        },
    )
    .await;
    let (v, code) = status_json(
        &r,
        &[
            "--from",
            &missing.to_string(),
            "--to",
            &delivered.to_string(),
        ],
    );
    assert_eq!(code, Some(1), "a held and a missing day need action");
    let days = v.as_array().unwrap();
    assert_eq!(days.len(), 4);

    // Missing: no marker claimed, no batch, past its deadline, its open alert.
    let m = &days[0];
    assert_eq!(m["date"], missing.to_string());
    assert_eq!(m["state"], "missing");
    assert!(
        m["reason"]
            .as_str()
            .unwrap()
            .contains("no batch by its deadline")
    );
    assert_eq!(m["deadline"], "2026-11-21T09:00:00Z");
    assert_eq!(m["marker"]["seen"], false);
    assert_eq!(m["steps"].as_array().unwrap().len(), 0);
    assert_eq!(m["tables"], serde_json::json!({}));
    assert_eq!(m["products"].as_array().unwrap().len(), 0);
    let alerts = m["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["fingerprint"], absent.fingerprint.as_str());
    assert_eq!(alerts[0]["kind"], "extract.missing");
    assert_eq!(alerts[0]["severity"], "critical");
    assert_eq!(alerts[0]["total"], 1);

    // A failed part, released: delivered without it; the part shown failed, both steps.
    let f = &days[1];
    assert_eq!(f["state"], "delivered", "{f}");
    assert_eq!(f["marker"]["seen"], true);
    assert_eq!(f["marker"]["failed"], 3, "one failed part per table");
    let failed_parts: Vec<&Value> = f["parts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["state"] == "failed")
        .collect();
    assert_eq!(failed_parts.len(), 3);
    assert!(
        failed_parts
            .iter()
            .all(|p| !p["error"].as_str().unwrap().is_empty())
    );
    let steps: Vec<&str> = f["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["held", "done"], "{f}");
    assert!(f["steps"][1]["key"].as_str().unwrap().ends_with(".release"));
    assert_eq!(f["products"][0]["delivered"], true);

    // Held: why, and nothing delivered.
    let h = &days[2];
    assert_eq!(h["state"], "held", "{h}");
    assert!(
        h["reason"]
            .as_str()
            .unwrap()
            .contains("failed part(s): extracts/"),
        "{h}"
    );
    assert_eq!(h["steps"][0]["state"], "held");
    assert_eq!(h["steps"][0]["held"][0], format!("batch {held}"));
    assert_eq!(h["products"].as_array().unwrap().len(), 0);
    assert_eq!(h["marker"]["failed"], 3);
    // Its open alerts: each failed part's dead letter, by the fingerprint the e-mails carry.
    let open: Vec<&str> = h["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["fingerprint"].as_str().unwrap())
        .collect();
    for p in h["parts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["state"] == "failed")
    {
        let fp = datashare::events::dead_letter_fingerprint(
            "extracts-worker",
            "invalid_extract",
            p["object"].as_str().unwrap(),
        );
        assert!(open.contains(&fp.as_str()), "{fp} not in {open:?}");
    }

    // Delivered: rows per table as the generator wrote them, every receipt, the e-mail.
    let d = &days[3];
    assert_eq!(d["state"], "delivered", "{d}");
    assert_eq!(d["marker"]["failed"], 0);
    assert_eq!(d["marker"]["staged"], d["parts"].as_array().unwrap().len());
    assert_eq!(d["steps"][0]["state"], "done");
    for (table, rows) in &truth {
        let t = &d["tables"][table];
        assert_eq!(t["rows_in"], *rows, "{table}");
        let sum = t["curated"].as_u64().unwrap()
            + t["quarantined"].as_u64().unwrap()
            + t["duplicates"].as_u64().unwrap();
        assert!(sum <= *rows, "{table}: {t}");
    }
    let products = d["products"].as_array().unwrap();
    assert_eq!(products.len(), 1, "{products:?}");
    let p = &products[0];
    assert_eq!(p["partner"], "ouchhungry");
    assert_eq!(p["product"], "daily");
    assert_eq!(p["period"], delivered.to_string());
    assert_eq!(p["delivery_id"].as_str().unwrap().len(), 64);
    let sinks: Vec<(&str, bool)> = p["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["sink"].as_str().unwrap(),
                s["delivered"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(sinks, [("sftp", true), ("api", true)]);
    assert!(
        p["sinks"][0]["location"]
            .as_str()
            .unwrap()
            .starts_with("sftp://")
    );
    assert_eq!(p["email"]["delivered"], true);
    assert!(
        p["email"]["reference"]
            .as_str()
            .is_some_and(|m| m.contains('@'))
    );
    assert_eq!(p["delivered"], true);

    // One partner, one day: exit 0 when it went out.
    let (one, code) = status_json(
        &r,
        &["--date", &delivered.to_string(), "--partner", "ouchhungry"],
    );
    assert_eq!(code, Some(0));
    assert_eq!(one[0]["products"], d["products"]);
    let (other, _) = status_json(&r, &["--date", &delivered.to_string(), "--partner", "acme"]);
    assert_eq!(other[0]["products"].as_array().unwrap().len(), 0);

    // The table, not on a tty: no colours; each day shown as such.
    let out = crate::datashare_cmd()
        .envs(&r.stack.env)
        .env("DATASHARE_PARTNERS_DIR", &r.cfg.worker.partners_dir)
        .args([
            "status",
            "--from",
            &missing.to_string(),
            "--to",
            &delivered.to_string(),
        ])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(!table.contains('\x1b'), "{table}");
    for needle in [
        format!("{missing}  MISSING"),
        format!("{failed}  DELIVERED"),
        format!("{held}  HELD"),
        format!("{delivered}  DELIVERED"),
        format!("extract.missing {}", absent.fingerprint),
        "      e-mail receipt ".to_string(),
        "transactions".to_string(),
    ] {
        assert!(table.contains(&needle), "{needle}:\n{table}");
    }
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_product_file_that_is_not_what_the_request_says_is_retried_not_delivered() {
    use datashare::service::{HandleError, Role};
    let r = TestApp::spawn(spec()).await;
    let products = r.cfg.gcp.buckets.products.clone();
    let (data, manifest, dictionary) = (b"a,b\n1,2\n", b"{}", "# dicionário".as_bytes());
    let mut digests = Vec::new();
    for (name, bytes) in [
        ("x.csv", &data[..]),
        ("x.csv.manifest.json", manifest),
        ("d.md", dictionary),
    ] {
        let object = format!("ouchhungry/daily/{name}");
        r.gcs
            .write(&products, &object, bytes.to_vec(), None)
            .await
            .unwrap();
        digests.push(datashare::events::FileDigest {
            uri: format!("gs://{products}/{object}"),
            sha256: sha256_hex(bytes),
            bytes: bytes.len() as u64,
        });
    }
    // The bucket holds other bytes than the request describes (the same size).
    digests[0].sha256 = sha256_hex(b"a,b\n1,3\n");
    let req = DeliveryRequest {
        schema_version: datashare::events::delivery::DELIVERY_REQUEST_VERSION,
        delivery_id: "d".repeat(64),
        partner: "ouchhungry".into(),
        product: "daily".into(),
        period: "2026-11-27".into(),
        product_version: digests[0].sha256.clone(),
        files: vec![datashare::events::DeliveryFile {
            name: "ouchhungry_daily_2026-11-27.csv".into(),
            format: "csv".into(),
            rows: 1,
            file: digests[0].clone(),
            manifest: digests[1].clone(),
        }],
        dictionary: digests[2].clone(),
        sinks: vec!["sftp".into()],
        source_batches: vec![],
        marker_generation: None,
    };
    let m = req.to_message();
    let msg = Incoming {
        id: "1".into(),
        data: m.data,
        attributes: m.attributes,
        delivery_attempt: Some(1),
    };
    let role = Deliver::start(r.cfg.clone(), "sftp").await.unwrap();
    match role.handle_message("deliveries-sftp", &msg).await {
        Err(HandleError::Transient(e)) => assert!(e.contains("SHA-256"), "{e}"),
        other => panic!("a mismatch is transient (a fresh download may fix it): {other:?}"),
    }
    assert!(
        tree(&r.upload_dir()).is_empty(),
        "nothing reached the SFTP server: {:?}",
        tree(&r.upload_dir())
    );
    assert!(
        role.receipts()
            .get("ouchhungry", "sftp", &req.delivery_id)
            .await
            .unwrap()
            .is_none(),
        "no receipt"
    );
    r.stop().await;
}
