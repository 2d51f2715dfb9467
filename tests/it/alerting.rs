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
use datashare::gcp::Bus;
use serde_json::Value;

use crate::harness::{
    Partners, SmtpEnv, Spec, Stack, TestApp, assert_secrets_hidden, mails, parse_eml, smtp_env,
    smtp_overrides, until,
};

/// The stack, the SMTP stand-in and the alerting consumer pulling (no partner contract).
struct Setup {
    app: TestApp,
    alerting: Arc<Alerting>,
    bus: Bus,
    mail_dir: PathBuf,
}

impl std::ops::Deref for Setup {
    type Target = TestApp;
    fn deref(&self) -> &TestApp {
        &self.app
    }
}

async fn setup() -> Setup {
    let app = TestApp::spawn(Spec::new().partners(Partners::None).smtp()).await;
    let mail_dir = app.mail_dir();
    let alerting = app.spawn_alerting().await;
    let g = &app.cfg.gcp;
    let bus = Bus::connect(
        &g.project,
        &[
            g.topics.alerts.as_str(),
            g.topics.schedules.as_str(),
            g.topics.budgets.as_str(),
            "deliveries-api-dead-letter",
        ],
        app.cfg.emulators.pubsub.as_deref(),
    )
    .await
    .unwrap();
    Setup {
        app,
        alerting,
        bus,
        mail_dir,
    }
}

impl Setup {
    async fn finish(&self) {
        self.app.stop().await;
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

    /// Moves the last e-mail of a fingerprint `secs` into the past (the window has passed).
    async fn age(&self, fingerprint: &str, secs: i64) {
        let mut st = self.state(fingerprint).await.unwrap();
        st.last_mail_at = st.last_mail_at.map(|t| t - chrono::Duration::seconds(secs));
        self.gcs
            .write(
                self.ops(),
                &state_object(fingerprint),
                serde_json::to_vec(&st).unwrap(),
                None,
            )
            .await
            .unwrap();
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
        "O que falhou:",
        "parceiro ouchhungry",
        "Desde: ",
        "(America/Sao_Paulo) / ",
        "Frequência: 1 vez no total",
        "O que fazer: O número de linhas",
        "  datashare status --date 2026-11-27 --partner ouchhungry\n",
    ] {
        assert!(body.contains(needle), "{needle}: {body}");
    }
    let st = s.state(&fp).await.unwrap();
    assert_eq!((st.pending, st.first.is_none()), (49, true));

    // Within the window a tick sends nothing; after it, one digest.
    s.tick().await;
    exactly(&s.mail_dir, 1).await;
    s.age(&fp, 3600).await;
    s.tick().await;
    let got = exactly(&s.mail_dir, 2).await;
    let digest = got
        .iter()
        .find(|m| m["subject"].as_str().unwrap().contains("a mais desde"))
        .expect("a digest");
    assert!(
        digest["subject"]
            .as_str()
            .unwrap()
            .contains("49 a mais desde"),
        "{digest}"
    );
    assert!(text(digest).contains("49 a mais desde"), "{digest}");
    let st = s.state(&fp).await.unwrap();
    assert_eq!((st.pending, st.digest.is_none(), st.total), (0, true, 50));

    // Another tick with nothing pending: no e-mail.
    s.tick().await;
    exactly(&s.mail_dir, 2).await;
    let texts: Vec<String> = got.iter().map(|m| m.to_string()).collect();
    assert_secrets_hidden(&[s.smtp().password.as_str()], &texts);
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
        "deliveries-api mandou para a dead letter: partner api answered 400",
        "partner ouchhungry",
        "delivery_id: d-42",
        "subscription: deliveries-api",
        "O que fazer: O parceiro recusou a entrega",
        "  datashare replay --dead-letters deliveries-api\n",
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
    assert_secrets_hidden(&[s.smtp().password.as_str()], &texts);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_that_failed_is_retried_on_redelivery_and_arrives_once() {
    use datashare::service::{Outcome, dispatch};
    let app = TestApp::spawn(Spec::new().partners(Partners::None)).await;
    let (stack, dir) = (&app.stack, &app.work);
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
    assert!(text(&got[0]).contains("O que fazer: Um destino falhou no teste de conexão"));
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
        "O que fazer: O Pub/Sub desistiu",
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
    let app = TestApp::spawn(Spec::new().partners(Partners::None)).await;
    let (stack, dir) = (&app.stack, &app.work);
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
    assert!(text(&got[0]).contains("O que fazer: Um produto falhou no filtro de privacidade"));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_condition_raised_at_every_tick_is_one_mail_per_window_then_one_resolved() {
    let s = setup().await;
    let day = "2026-11-25";
    let missing = Alert::new(
        Severity::Critical,
        "extract.missing",
        ("*", "*", day),
        "extract.missing",
        format!("nenhum lote completo de {day} até o prazo"),
    );
    let stalled = Alert::new(
        Severity::Critical,
        "batch.stalled",
        ("*", "*", "2026-11-24"),
        "k",
        "a etapa do lote de 2026-11-24 perdeu seu worker 4 vezes".into(),
    );
    // Six ticks of the worker raising both conditions, each followed by the alerting tick.
    for i in 0..6 {
        for a in [&missing, &stalled] {
            s.bus.publish("alerts", a.to_message()).await.unwrap();
        }
        until("the alerts counted", Duration::from_secs(60), || async {
            let a = s.state(&missing.fingerprint).await?;
            let b = s.state(&stalled.fingerprint).await?;
            (a.total == i + 1 && b.total == i + 1).then_some(())
        })
        .await;
        s.tick().await;
    }
    // One e-mail per fingerprint, not one per tick.
    let got = exactly(&s.mail_dir, 2).await;
    assert!(
        got.iter()
            .all(|m| !m["subject"].as_str().unwrap().contains("a mais desde"))
    );
    // The window passes: one digest each.
    s.age(&missing.fingerprint, 3600).await;
    s.age(&stalled.fingerprint, 3600).await;
    s.tick().await;
    let got = exactly(&s.mail_dir, 4).await;
    let digests: Vec<&Value> = got
        .iter()
        .filter(|m| m["subject"].as_str().unwrap().contains("5 a mais desde"))
        .collect();
    assert_eq!(digests.len(), 2, "{got:?}");

    // The day arrives (its batch step finishes): one "resolved" e-mail for it; the stalled
    // batch of another day stays open.
    s.bus.publish("alerts", missing.to_message()).await.unwrap();
    until("the repeat counted", Duration::from_secs(60), || async {
        s.state(&missing.fingerprint)
            .await
            .filter(|st| st.total == 7)
            .map(|_| ())
    })
    .await;
    s.gcs
        .write(
            s.ops(),
            &format!("claims/batch/dt={day}/9-abc.done.json"),
            b"{}".to_vec(),
            None,
        )
        .await
        .unwrap();
    s.tick().await;
    let got = exactly(&s.mail_dir, 5).await;
    let resolved: Vec<&Value> = got
        .iter()
        .filter(|m| m["subject"].as_str().unwrap().contains("resolvido"))
        .collect();
    assert_eq!(resolved.len(), 1, "{got:?}");
    let body = text(resolved[0]);
    assert!(
        resolved[0]["subject"]
            .as_str()
            .unwrap()
            .starts_with("[datashare] resolvido: extract.missing"),
        "{body}"
    );
    for needle in [
        "RESOLVIDO em ",
        "1 a mais desde",
        "7 vezes no total",
        &missing.fingerprint,
    ] {
        assert!(body.contains(needle), "{needle}: {body}");
    }
    let st = s.state(&missing.fingerprint).await.unwrap();
    assert!(!st.is_open() && st.resolving.is_none(), "{st:?}");
    assert!(s.state(&stalled.fingerprint).await.unwrap().is_open());
    // The stalled batch goes through too (a replay): its own "resolved" e-mail.
    s.gcs
        .write(
            s.ops(),
            "claims/batch/dt=2026-11-24/9-abc.replay-1.done.json",
            b"{}".to_vec(),
            None,
        )
        .await
        .unwrap();
    s.tick().await;
    let got = exactly(&s.mail_dir, 6).await;
    assert!(
        got.iter().any(|m| m["subject"]
            .as_str()
            .unwrap()
            .starts_with("[datashare] resolvido: batch.stalled")),
        "{got:?}"
    );
    // Further ticks: nothing more.
    s.tick().await;
    exactly(&s.mail_dir, 6).await;
    s.finish().await;
}

/// Google's documented budget notification (the example of "Manage programmatic budget alert
/// notifications"), with the threshold fields given.
fn budget_message(threshold: Option<(&str, f64)>, cost: f64) -> datashare::events::Outgoing {
    let mut data = serde_json::json!({
        "budgetDisplayName": "name-of-budget",
        "costAmount": cost,
        "costIntervalStart": "2019-01-01T00:00:00Z",
        "budgetAmount": 100.00,
        "budgetAmountType": "SPECIFIED_AMOUNT",
        "currencyCode": "USD"
    });
    if let Some((k, v)) = threshold {
        data[k] = v.into();
    }
    datashare::events::Outgoing {
        data: data.to_string().into_bytes(),
        attributes: [
            ("billingAccountId", "01D4EE-079462-DFD6EC"),
            ("budgetId", "de72f49d-779b-4945-a127-4d6ce8def0bb"),
            ("schemaVersion", "1.0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn budget_notifications_mail_each_threshold_once_and_duplicates_nothing() {
    let s = setup().await;
    let actual = "alertThresholdExceeded";
    let forecast = "forecastThresholdExceeded";
    // As Google sends them: a plain update, then each crossing several times a day.
    let sends = [
        (None, 20.0),
        (Some((actual, 0.5)), 50.10),
        (Some((actual, 0.5)), 50.10),
        (Some((actual, 0.5)), 61.00),
        (Some((forecast, 1.0)), 61.00),
        (Some((forecast, 1.0)), 70.00),
        (Some((actual, 0.9)), 90.50),
        (Some((actual, 0.9)), 95.00),
        (Some((actual, 1.0)), 100.01),
        (Some((actual, 1.0)), 100.01),
        (Some((actual, 1.0)), 100.01),
    ];
    for (t, cost) in sends {
        s.bus
            .publish("budgets", budget_message(t, cost))
            .await
            .unwrap();
    }
    let got = exactly(&s.mail_dir, 4).await;
    let find = |needle: &str| {
        got.iter()
            .filter(|m| m["subject"].as_str().unwrap().contains(needle))
            .collect::<Vec<_>>()
    };
    assert!(got.iter().all(|m| {
        m["subject"]
            .as_str()
            .unwrap()
            .starts_with("[datashare] budget.threshold: ")
    }));
    let half = find(" 50% de 100.00 USD");
    assert_eq!(half.len(), 1, "{got:?}");
    let body = text(half[0]);
    for needle in [
        "Tipo: budget.threshold (aviso)",
        "budget_amount: 100.00 USD",
        "threshold: 50% (actual)",
        "budget: name-of-budget",
        "período 2019-01",
        "O que fazer: Os gastos passaram de um limite do orçamento",
    ] {
        assert!(body.contains(needle), "{needle}: {body}");
    }
    // The amounts of the copy that came first (Pub/Sub does not keep the order).
    assert!(
        body.contains("cost_amount: 50.10 USD") || body.contains("cost_amount: 61.00 USD"),
        "{body}"
    );
    assert!(text(find(" 90% de ")[0]).contains("(aviso)"));
    let full = find(": 100% de 100.00 USD");
    assert_eq!(full.len(), 1, "{got:?}");
    assert!(text(full[0]).contains("Tipo: budget.threshold (erro)"));
    assert!(text(full[0]).contains("cost_amount: 100.01 USD"));
    let fc = find("previsão acima de 100%");
    assert_eq!(fc.len(), 1, "{got:?}");
    assert!(text(fc[0]).contains("(erro)"));
    // Every copy was counted on its mark, none mailed.
    let marks = s.gcs.list(s.ops(), "alerts/budgets/").await.unwrap();
    assert_eq!(marks.len(), 4, "{marks:?}");
    let mut duplicates = 0;
    for m in &marks {
        let (b, _) = s.gcs.read(s.ops(), &m.name, None).await.unwrap().unwrap();
        let mark: datashare::alerting::budget::Mark = serde_json::from_slice(&b).unwrap();
        assert!(mark.sent_at.is_some() && mark.sending.is_none(), "{mark:?}");
        duplicates += mark.duplicates;
    }
    assert!(duplicates >= 6, "{duplicates}");
    // A new cost interval: the same threshold is mailed again.
    let mut next = budget_message(Some((actual, 0.5)), 55.0);
    let mut d: Value = serde_json::from_slice(&next.data).unwrap();
    d["costIntervalStart"] = "2019-02-01T00:00:00Z".into();
    next.data = d.to_string().into_bytes();
    s.bus.publish("budgets", next).await.unwrap();
    exactly(&s.mail_dir, 5).await;
    s.finish().await;
}
