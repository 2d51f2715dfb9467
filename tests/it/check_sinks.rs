//! `datashare check-sinks` (the binary) against the real partner stand-ins (sshd, HTTPS API,
//! SMTP with STARTTLS and AUTH) and the real Pub/Sub emulator: passes, then fails with the SFTP
//! server stopped and with a wrong API password, each failure with a `sink.check_failed` alert
//! on `alerts`, and no throwaway secret in the output.

use std::process::Output;
use std::time::{Duration, Instant};

use datashare::config::secret::SecretRef;
use datashare::config::sinks::ApiAuth;
use datashare::events::alert::Alert;

use crate::datashare_cmd;
use datashare::config::sinks::SmtpTls;

use crate::harness::{
    Partners, Spec, Stack, TestApp, api_env, capture_logs, local_contract, random_hex, sftp_env,
    smtp_env,
};

fn file_of(r: &SecretRef) -> String {
    r.file
        .as_ref()
        .expect("secret in a file")
        .display()
        .to_string()
}

fn check_sinks(env: &[(String, String)]) -> (bool, String, String) {
    let mut cmd = datashare_cmd();
    cmd.arg("check-sinks").env("RUST_LOG", "debug");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("datashare runs");
    (
        status.success(),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// Pulls alerts until `n` arrived (or 20 s passed).
async fn alerts(stack: &Stack, sub: &str, n: usize) -> Vec<Alert> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    while got.len() < n && Instant::now() < deadline {
        for m in stack.pull(sub).await {
            got.push(Alert::parse(&m).expect("an alert"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_sinks_passes_then_alerts_on_a_stopped_server_and_a_wrong_password() {
    let mut app = TestApp::spawn(
        Spec::new()
            .partners(Partners::StandIns)
            .watch("alerts", "check-sinks-test"),
    )
    .await;
    let partners = &app.partners;

    let mut env: Vec<(String, String)> = app
        .stack
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let s = &app.smtp().settings;
    env.extend(
        [
            ("DATASHARE_PARTNERS_DIR", partners.display().to_string()),
            ("DATASHARE_SMTP_HOST", s.host.clone()),
            ("DATASHARE_SMTP_PORT", s.port.to_string()),
            ("DATASHARE_SMTP_TLS", "starttls".into()),
            ("DATASHARE_SMTP_FROM", s.from.clone()),
            ("DATASHARE_SMTP_USER", s.user.clone().unwrap()),
            (
                "DATASHARE_SMTP_PASSWORD_FILE",
                file_of(s.password.as_ref().unwrap()),
            ),
            (
                "DATASHARE_SMTP_CA_FILE",
                s.ca_file.as_ref().unwrap().display().to_string(),
            ),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    let mut secrets: Vec<String> = app.sftp().secrets.clone();
    secrets.push(app.api().password.clone());
    secrets.push(app.smtp().password.clone());
    let mut outputs = Vec::new();

    // 1. Everything answers: three ok lines, exit 0, no alert.
    let (ok, out, err) = check_sinks(&env);
    assert!(ok, "check-sinks passes: {out}\n{err}");
    for sink in ["sftp", "api", "email"] {
        assert!(out.contains(&format!("ouchhungry {sink}: ok")), "{out}");
    }
    let logins = app.smtp().server.log_text();
    assert!(
        app.api().state.join("requests.jsonl").exists(),
        "the API health call reached the stand-in"
    );
    outputs.push(out);
    outputs.push(err);

    // 2. The SFTP server is stopped: exit 1, the sftp line says why, one alert for sftp.
    app.sftp_mut().server.stop();
    let (ok, out, err) = check_sinks(&env);
    assert!(!ok, "a stopped SFTP server fails the check: {out}");
    assert!(
        out.contains("ouchhungry sftp: FAILED (transient"),
        "{out}\n{err}"
    );
    assert!(out.contains("ouchhungry api: ok"), "{out}");
    assert!(out.contains("ouchhungry email: ok"), "{out}");
    let got = alerts(&app.stack, "check-sinks-test", 1).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let sftp_alert = got[0].clone();
    assert_eq!(sftp_alert.kind, "sink.check_failed");
    assert_eq!(sftp_alert.partner, "ouchhungry");
    assert_eq!(sftp_alert.details["sink"], "sftp");
    outputs.push(out);
    outputs.push(err);

    // 3. A wrong API password: the api line fails permanently, one more alert for api; the
    // stopped SFTP server alerts again under the same fingerprint.
    let ApiAuth::Basic { password, .. } = &app.api().config.auth else {
        unreachable!()
    };
    std::fs::write(
        password.file.as_ref().unwrap(),
        format!("{}\n", random_hex(16)),
    )
    .unwrap();
    let (ok, out, err) = check_sinks(&env);
    assert!(!ok, "a wrong API password fails the check: {out}");
    assert!(
        out.contains("ouchhungry api: FAILED (sink_auth, permanent)"),
        "{out}\n{err}"
    );
    assert!(out.contains("ouchhungry email: ok"), "{out}");
    let got = alerts(&app.stack, "check-sinks-test", 2).await;
    assert_eq!(got.len(), 2, "{got:?}");
    let api_alert = got
        .iter()
        .find(|a| a.details["sink"] == "api")
        .expect("an api alert");
    assert_eq!(api_alert.details["error_kind"], "sink_auth");
    let again = got
        .iter()
        .find(|a| a.details["sink"] == "sftp")
        .expect("the sftp alert again");
    assert_eq!(
        again.fingerprint, sftp_alert.fingerprint,
        "stable per partner+sink"
    );
    assert_ne!(api_alert.fingerprint, sftp_alert.fingerprint);
    outputs.push(out);
    outputs.push(err);
    outputs.push(logins);
    for a in &got {
        outputs.push(serde_json::to_string(a).unwrap());
    }

    // No throwaway secret in any output, log or alert.
    assert!(
        outputs.iter().any(|o| o.contains("DEBUG")),
        "debug logs were captured"
    );
    for s in secrets.iter().filter(|s| s.len() >= 8) {
        for o in &outputs {
            assert!(
                !o.contains(s.as_str()),
                "a throwaway secret appears in the output"
            );
        }
    }
}

/// Each sink role checks its own sink on a tick before a deadline (the worker no longer holds
/// sink credentials): with the SFTP server stopped, the sftp role alerts once for sftp; the api
/// and email roles, whose servers answer, alert nothing; a tick far from a deadline checks
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sink_role_checks_its_own_sink_on_ticks_before_a_deadline() {
    use datashare::events::{Incoming, Schedule};
    use datashare::pipeline::deliver::Deliver;
    use datashare::service::{Outcome, dispatch};

    capture_logs();
    let work = tempfile::tempdir().unwrap();
    let stack = Stack::up(&[]);
    stack.watch("alerts", "role-checks-test").await;
    let sftp = sftp_env(work.path());
    let api = api_env(work.path());
    let smtp = smtp_env(work.path(), SmtpTls::Starttls);
    let partners = local_contract(work.path(), &sftp.config, &api.config);
    let s = &smtp.settings;
    let (port, user) = (s.port.to_string(), s.user.clone().unwrap());
    let (password, ca) = (
        file_of(s.password.as_ref().unwrap()),
        s.ca_file.as_ref().unwrap().display().to_string(),
    );
    let cfg = stack.config(
        &partners,
        &[
            ("DATASHARE_SMTP_HOST", s.host.as_str()),
            ("DATASHARE_SMTP_PORT", port.as_str()),
            ("DATASHARE_SMTP_TLS", "starttls"),
            ("DATASHARE_SMTP_FROM", s.from.as_str()),
            ("DATASHARE_SMTP_USER", user.as_str()),
            ("DATASHARE_SMTP_PASSWORD_FILE", password.as_str()),
            ("DATASHARE_SMTP_CA_FILE", ca.as_str()),
        ],
    );
    let mut roles = Vec::new();
    for sink in ["sftp", "api", "email"] {
        let role = Deliver::start(cfg.clone(), sink)
            .await
            .unwrap_or_else(|e| panic!("{sink} starts: {e}"));
        roles.push((sink, role));
    }
    let tick = |at: &str| {
        let at = chrono::DateTime::parse_from_rfc3339(at).unwrap().to_utc();
        let m = Schedule::Tick { at }.to_message();
        Incoming {
            id: "tick".into(),
            data: m.data,
            attributes: m.attributes,
            delivery_attempt: Some(1),
        }
    };
    drop(sftp.server);
    // 08:00 UTC is 05:00 in São Paulo: one hour before the 06:00 deadline.
    let before_deadline = tick("2026-11-28T08:00:00Z");
    for (sink, role) in &roles {
        let sub = format!("schedules-{sink}");
        assert_eq!(dispatch(role, &sub, &before_deadline).await, Outcome::Ack);
    }
    let got = alerts(&stack, "role-checks-test", 2).await;
    assert_eq!(got.len(), 1, "one alert, from the sftp role: {got:?}");
    assert_eq!(got[0].kind, "sink.check_failed");
    assert_eq!(got[0].details["sink"], "sftp");
    assert_eq!(got[0].partner, "ouchhungry");

    // Far from a deadline: no check, no alert.
    let afternoon = tick("2026-11-28T18:00:00Z");
    for (sink, role) in &roles {
        let sub = format!("schedules-{sink}");
        assert_eq!(dispatch(role, &sub, &afternoon).await, Outcome::Ack);
    }
    let got = alerts(&stack, "role-checks-test", 1).await;
    assert!(got.is_empty(), "no check outside the window: {got:?}");
}
