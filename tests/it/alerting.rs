//! The alerting consumer on the real emulators and a real SMTP relay (aiosmtpd with STARTTLS
//! and AUTH, a throwaway password): a storm is one e-mail and one digest, a dead letter is
//! archived, e-mailed with its runbook line and replayed once, and no secret leaks.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datashare::alerting::Alerting;
use datashare::alerting::dead_letters::archive_object;
use datashare::alerting::state::{State, state_object};
use datashare::config::sinks::SmtpTls;
use datashare::events::dead_letter_fingerprint;
use datashare::events::{Alert, DeadLetter, ErrorKind, Incoming, Schedule, Severity};
use datashare::gcp::{Bus, Gcs};
use datashare::service::pull;
use serde_json::Value;
use tokio::sync::watch;

use crate::sinks::{SmtpEnv, assert_secrets_hidden, capture_logs, mails, parse_eml, smtp_env};
use crate::worker::{Stack, until};

struct Setup {
    stack: Stack,
    smtp: SmtpEnv,
    alerting: Arc<Alerting>,
    gcs: Gcs,
    bus: Bus,
    mail_dir: PathBuf,
    stop: watch::Sender<bool>,
    pulling: tokio::task::JoinHandle<Result<(), datashare::gcp::ClientError>>,
    _dir: tempfile::TempDir,
}

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

async fn setup() -> Setup {
    capture_logs();
    let stack = Stack::up(&[]);
    let dir = tempfile::tempdir().unwrap();
    let smtp = smtp_env(dir.path(), SmtpTls::Starttls);
    let mail_dir = PathBuf::from(smtp.server.field("mail"));
    let overrides = smtp_overrides(&smtp);
    let o: Vec<(&str, &str)> = overrides
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let cfg = stack.config(dir.path(), &o);
    let alerting = Arc::new(Alerting::start(cfg.clone()).await.expect("alerting starts"));
    let gcs = Gcs::connect(cfg.emulators.storage.as_deref())
        .await
        .unwrap();
    let g = &cfg.gcp;
    let bus = Bus::connect(
        &g.project,
        &[
            g.topics.alerts.as_str(),
            g.topics.schedules.as_str(),
            "deliveries-api-dead-letter",
        ],
        cfg.emulators.pubsub.as_deref(),
    )
    .await
    .unwrap();
    let (stop, rx) = watch::channel(false);
    let pulling = tokio::spawn(pull::run(alerting.clone(), rx));
    Setup {
        stack,
        smtp,
        alerting,
        gcs,
        bus,
        mail_dir,
        stop,
        pulling,
        _dir: dir,
    }
}

impl Setup {
    async fn finish(self) {
        self.stop.send(true).unwrap();
        self.pulling.await.unwrap().unwrap();
    }

    fn ops(&self) -> &str {
        &self.alerting.config.gcp.buckets.ops
    }

    async fn state(&self, fingerprint: &str) -> Option<State> {
        let (b, _) = self
            .gcs
            .read(self.ops(), &state_object(fingerprint), None)
            .await
            .unwrap()?;
        Some(serde_json::from_slice(&b).unwrap())
    }

    async fn tick(&self) {
        let t = Schedule::Tick {
            at: chrono::Utc::now(),
        };
        self.bus.publish("schedules", t.to_message()).await.unwrap();
    }
}

/// Waits for `n` e-mails, then checks that no other arrives for a while.
async fn exactly(dir: &Path, n: usize) -> Vec<Value> {
    until(&format!("{n} e-mails"), Duration::from_secs(60), || async {
        (mails(dir).len() >= n).then_some(())
    })
    .await;
    let quiet = Instant::now() + Duration::from_secs(3);
    while Instant::now() < quiet {
        assert_eq!(mails(dir).len(), n, "exactly {n} e-mails");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    mails(dir).iter().map(|p| parse_eml(p)).collect()
}

fn text(mail: &Value) -> String {
    mail["parts"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_alert_storm_is_one_mail_then_one_digest() {
    let s = setup().await;
    let alert = Alert::new(
        Severity::Warning,
        "quality.volume",
        ("ouchhungry", "daily", "2026-11-27"),
        "transactions",
        "transactions has 60% fewer rows than the median of the last 7 batches".into(),
    )
    .with("table", "transactions");
    for _ in 0..50 {
        s.bus.publish("alerts", alert.to_message()).await.unwrap();
    }
    let fp = alert.fingerprint.clone();
    until("50 alerts counted", Duration::from_secs(60), || async {
        s.state(&fp).await.filter(|st| st.total == 50).map(|_| ())
    })
    .await;
    let got = exactly(&s.mail_dir, 1).await;
    let first = &got[0];
    assert!(
        first["subject"]
            .as_str()
            .unwrap()
            .contains("quality.volume"),
        "{first}"
    );
    let to = first["to"].as_str().unwrap();
    for r in [
        "correa.igor@aiqfome.com",
        "diego.pastrello@aiqfome.com",
        "leonardo.artur@aiqfome.com",
    ] {
        assert!(to.contains(r), "{to}");
    }
    let body = text(first);
    for needle in [
        "What failed:",
        "partner ouchhungry",
        "Since:",
        "How often: 1 time",
        "What to do: The row count",
    ] {
        assert!(body.contains(needle), "{needle}: {body}");
    }
    let st = s.state(&fp).await.unwrap();
    assert_eq!((st.pending, st.first.is_none()), (49, true));

    s.tick().await;
    let got = exactly(&s.mail_dir, 2).await;
    let digest = got
        .iter()
        .find(|m| m["subject"].as_str().unwrap().contains("more since"))
        .expect("a digest");
    assert!(
        digest["subject"]
            .as_str()
            .unwrap()
            .contains("49 more since"),
        "{digest}"
    );
    assert!(text(digest).contains("49 more since"), "{digest}");
    let st = s.state(&fp).await.unwrap();
    assert_eq!((st.pending, st.digest.is_none(), st.total), (0, true, 50));

    // Another tick with nothing pending: no e-mail.
    s.tick().await;
    exactly(&s.mail_dir, 2).await;
    let texts: Vec<String> = got.iter().map(|m| m.to_string()).collect();
    assert_secrets_hidden(&[s.smtp.password.as_str()], &texts);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_letter_is_archived_mailed_and_replayed_once() {
    let s = setup().await;
    s.stack.watch("deliveries", "watch-deliveries").await;
    let original = Incoming {
        id: "orig-1".into(),
        data: br#"{"delivery_id":"d-42","partner":"ouchhungry","product":"daily","period":"2026-11-27"}"#.to_vec(),
        attributes: [
            ("sink".to_string(), "api".to_string()),
            (
                "traceparent".to_string(),
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string(),
            ),
        ]
        .into(),
        delivery_attempt: Some(1),
    };
    let letter = DeadLetter {
        kind: ErrorKind::MalformedMessage,
        error: "partner api answered 400".into(),
        source_subscription: "deliveries-api".into(),
        source_topic: "deliveries".into(),
    };
    let mut out = letter.message(&original);
    // The kind the API sink uses for a 4xx.
    out.attributes
        .insert("error_kind".into(), "partner_rejected".into());
    let id = s
        .bus
        .publish("deliveries-api-dead-letter", out)
        .await
        .unwrap();

    let archive = archive_object("deliveries-api", &id);
    let (bytes, _) = until("the archive", Duration::from_secs(60), || async {
        s.gcs.read(s.ops(), &archive, None).await.unwrap()
    })
    .await;
    let a: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(a["source_topic"], "deliveries");
    assert_eq!(a["attributes"]["error_kind"], "partner_rejected");

    let got = exactly(&s.mail_dir, 1).await;
    let body = text(&got[0]);
    for needle in [
        "deliveries-api dead-lettered: partner api answered 400",
        "partner ouchhungry",
        "delivery_id: d-42",
        "subscription: deliveries-api",
        "What to do: The partner refused the delivery",
        "trace_id: 4bf92f3577b34da6a3ce929d0e0e4736",
        &archive,
    ] {
        assert!(body.contains(needle), "{needle}: {body}");
    }
    let fp = dead_letter_fingerprint("deliveries-api", "partner_rejected", "d-42");
    assert!(
        body.contains(&fp),
        "the fingerprint the worker can reuse: {body}"
    );

    // The same failure told by another service (as the worker's held-batch alert reuses its
    // failed file's dead-letter fingerprint): recorded, no second e-mail, nothing to digest.
    let same = Alert::new(
        Severity::Error,
        "batch.held",
        ("ouchhungry", "daily", "2026-11-27"),
        "d-42",
        "held because of the refused delivery".into(),
    )
    .with_fingerprint(fp.clone());
    s.bus.publish("alerts", same.to_message()).await.unwrap();
    until(
        "the related alert recorded",
        Duration::from_secs(60),
        || async {
            s.state(&fp)
                .await
                .filter(|st| st.related.contains_key("batch.held"))
        },
    )
    .await;
    s.tick().await;
    exactly(&s.mail_dir, 1).await;

    // Replay: once, with the original data and attributes.
    let env = s.stack.env.clone();
    let replay = || {
        let mut c = crate::datashare_cmd();
        c.envs(&env)
            .args(["replay", "--dead-letters", "deliveries-api"]);
        crate::run_ok(&mut c)
    };
    let first = replay();
    let stdout = String::from_utf8_lossy(&first.stdout).into_owned();
    assert!(stdout.contains("1 replayed, 0 already"), "{stdout}");
    let republished = s
        .stack
        .drain("watch-deliveries", Duration::from_secs(30), |m| {
            !m.is_empty()
        })
        .await;
    assert_eq!(republished.len(), 1);
    assert_eq!(republished[0].data, original.data);
    assert_eq!(republished[0].attributes, original.attributes);
    let second = replay();
    let stdout2 = String::from_utf8_lossy(&second.stdout).into_owned();
    assert!(stdout2.contains("0 replayed, 1 already"), "{stdout2}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        s.stack.pull("watch-deliveries").await.is_empty(),
        "nothing replayed twice"
    );

    let mut texts: Vec<String> = got.iter().map(|m| m.to_string()).collect();
    for o in [&first, &second] {
        texts.push(String::from_utf8_lossy(&o.stdout).into_owned());
        texts.push(String::from_utf8_lossy(&o.stderr).into_owned());
    }
    assert_secrets_hidden(&[s.smtp.password.as_str()], &texts);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_that_failed_is_retried_on_redelivery_and_arrives_once() {
    use datashare::service::{Outcome, dispatch};
    capture_logs();
    let stack = Stack::up(&[]);
    let dir = tempfile::tempdir().unwrap();
    let start = |smtp: &SmtpEnv| {
        let overrides = smtp_overrides(smtp);
        let o: Vec<(&str, &str)> = overrides
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let cfg = stack.config(dir.path(), &o);
        async move { Alerting::start(cfg).await.expect("alerting starts") }
    };
    let alert = Alert::new(
        Severity::Critical,
        "sink.check_failed",
        ("ouchhungry", "daily", "*"),
        "sftp",
        "sftp check failed".into(),
    );
    let msg = |id: &str| Incoming {
        id: id.into(),
        data: alert.to_message().data,
        attributes: alert.to_message().attributes,
        delivery_attempt: Some(1),
    };

    // The relay is down: the alert is nacked (transient), never dropped.
    let stopped = smtp_env(&dir.path().join("down"), SmtpTls::Starttls);
    let down = start(&stopped).await;
    let password_down = stopped.password.clone();
    drop(stopped);
    assert_eq!(
        dispatch(&down, "alerts-alert", &msg("m-1")).await,
        Outcome::Nack
    );

    // Back up: a later repeat is counted, the redelivered first alert is e-mailed, once.
    let smtp = smtp_env(&dir.path().join("up"), SmtpTls::Starttls);
    let mail_dir = PathBuf::from(smtp.server.field("mail"));
    let up = start(&smtp).await;
    assert_eq!(
        dispatch(&up, "alerts-alert", &msg("m-2")).await,
        Outcome::Ack
    );
    assert!(mails(&mail_dir).is_empty(), "a repeat is not mailed");
    assert_eq!(
        dispatch(&up, "alerts-alert", &msg("m-1")).await,
        Outcome::Ack
    );
    assert_eq!(
        dispatch(&up, "alerts-alert", &msg("m-1")).await,
        Outcome::Ack
    );
    let got = exactly(&mail_dir, 1).await;
    assert!(text(&got[0]).contains("What to do: A sink failed its connection check"));
    let (b, _) = up
        .gcs
        .read(
            &up.config.gcp.buckets.ops,
            &state_object(&alert.fingerprint),
            None,
        )
        .await
        .unwrap()
        .unwrap();
    let st: State = serde_json::from_slice(&b).unwrap();
    assert_eq!((st.total, st.pending, st.first.is_none()), (2, 1, true));
    let texts: Vec<String> = got.iter().map(|m| m.to_string()).collect();
    assert_secrets_hidden(&[smtp.password.as_str(), password_down.as_str()], &texts);
}

/// Pulls `subscription` without acknowledging and nacks what carries `marker`, until Pub/Sub
/// gives up on it (its dead-letter policy forwards it); acks anything else.
async fn exhaust(
    stack: &Stack,
    subscription: &str,
    marker: &str,
    stop_when: impl AsyncFn() -> bool,
) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while !stop_when().await {
        assert!(
            Instant::now() < deadline,
            "{subscription}: never dead-lettered"
        );
        let r: Value = http
            .post(stack.pubsub(&format!("subscriptions/{subscription}:pull")))
            .json(&serde_json::json!({"maxMessages": 10, "returnImmediately": true}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for m in r["receivedMessages"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let ours = m["message"]["attributes"]["test"] == marker;
            let (verb, body) = if ours {
                (
                    "modifyAckDeadline",
                    serde_json::json!({"ackIds": [m["ackId"]], "ackDeadlineSeconds": 0}),
                )
            } else {
                ("acknowledge", serde_json::json!({"ackIds": [m["ackId"]]}))
            };
            http.post(stack.pubsub(&format!("subscriptions/{subscription}:{verb}")))
                .json(&body)
                .send()
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_pubsub_gave_up_on_is_archived_mailed_and_replayed_without_its_dead_letter_attributes()
 {
    let s = setup().await;
    s.stack.watch("schedules", "watch-schedules").await;
    let tick = Schedule::Tick {
        at: chrono::Utc::now(),
    };
    let mut out = tick.to_message();
    out.attributes.insert("test".into(), "exhausted-1".into());
    s.bus.publish("schedules", out.clone()).await.unwrap();
    // Nobody runs the worker: its subscription nacks the tick until Pub/Sub forwards it.
    let ops = s.ops().to_string();
    let gcs = s.gcs.clone();
    exhaust(&s.stack, "schedules-worker", "exhausted-1", async || {
        !gcs.list(&ops, "deadletters/schedules-worker/")
            .await
            .unwrap()
            .is_empty()
    })
    .await;
    let archived = s
        .gcs
        .list(s.ops(), "deadletters/schedules-worker/")
        .await
        .unwrap();
    assert_eq!(archived.len(), 1, "{archived:?}");
    let got = exactly(&s.mail_dir, 1).await;
    let body = text(&got[0]);
    for needle in [
        "max_delivery_attempts",
        "delivery_attempts: 5",
        "subscription: schedules-worker",
        "topic: schedules",
        "What to do: Pub/Sub gave up",
    ] {
        assert!(body.contains(needle), "{needle}: {body}");
    }
    s.stack.pull("watch-schedules").await;
    let mut c = crate::datashare_cmd();
    c.envs(&s.stack.env)
        .args(["replay", "--dead-letters", "schedules-worker"]);
    let o = crate::run_ok(&mut c);
    assert!(String::from_utf8_lossy(&o.stdout).contains("1 replayed"));
    let again = s
        .stack
        .drain("watch-schedules", Duration::from_secs(30), |m| {
            !m.is_empty()
        })
        .await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].data, out.data);
    assert_eq!(
        again[0].attributes, out.attributes,
        "no CloudPubSubDeadLetter* attributes"
    );
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_command_mails_and_stops_on_sigterm_without_logging_secrets() {
    capture_logs();
    let stack = Stack::up(&[]);
    let dir = tempfile::tempdir().unwrap();
    let smtp = smtp_env(dir.path(), SmtpTls::Starttls);
    let mail_dir = PathBuf::from(smtp.server.field("mail"));
    let log = dir.path().join("alert.log");
    let mut child = crate::datashare_cmd()
        .envs(&stack.env)
        .envs(smtp_overrides(&smtp))
        .env("RUST_LOG", "debug")
        .args(["alert", "--pull"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("datashare alert starts");
    let cfg = stack.config(dir.path(), &[]);
    let bus = Bus::connect(
        &cfg.gcp.project,
        &["alerts"],
        cfg.emulators.pubsub.as_deref(),
    )
    .await
    .unwrap();
    let alert = Alert::new(
        Severity::Critical,
        "privacy.gate",
        ("ouchhungry", "monthly", "2026-11"),
        "k",
        "a group below the minimum size".into(),
    );
    bus.publish("alerts", alert.to_message()).await.unwrap();
    let got = exactly(&mail_dir, 1).await;
    assert!(text(&got[0]).contains("What to do: A product failed the privacy gate"));
    // SAFETY: signals our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("datashare alert did not stop on SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{logs}");
    assert!(logs.contains("alert e-mailed"), "{logs}");
    assert!(
        !logs.contains(&smtp.password),
        "the SMTP password appears in the logs"
    );
    let texts: Vec<String> = got.iter().map(|m| m.to_string()).collect();
    assert_secrets_hidden(&[smtp.password.as_str()], &texts);
}
