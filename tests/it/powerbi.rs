//! The Power BI monitor against the Power BI stand-in (fake-gcp/partner/powerbi.py: HTTPS, a
//! throwaway CA, Entra client credentials with a throwaway secret) and the emulators: refreshes
//! follow a batch's updates once per dataset and batch version, within the quota, honouring a
//! 429's Retry-After; the token is renewed when it expires; a wrong secret is one configuration
//! alert; a failed and a stuck refresh are one team e-mail each, and the failed one is counted
//! once (`powerbi/seen/`) across ticks and instances.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use datashare::alerting::Alerting;
use datashare::config::powerbi::{ItemKind, PowerBiConfig, PowerBiItem};
use datashare::config::sinks::SmtpTls;
use datashare::events::updates::UPDATES_VERSION;
use datashare::events::{Alert, Incoming, Schedule, Updates};
use datashare::pipeline::powerbi::{
    CONFIG, PowerBi, QUOTA, SCHEDULES_SUBSCRIPTION, STALE, UPDATES_SUBSCRIPTION, seen_record,
};
use datashare::service::{Disposition, Role, pull};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::harness::{
    Server, Stack, assert_secrets_hidden, mails, parse_eml, partners, smtp_env, smtp_overrides,
    until,
};

const VENDAS: &str = "a3e91c07-4b5d-4f2a-8e63-1c9d7b0f2e48";
const PARCEIROS: &str = "c6f2d815-90ab-4c3e-b7d4-5e1a8f9c0b27";
const DATAFLOW: &str = "e81b4a9d-2c6f-4d07-a5e3-7f0c1b9d4a62";
const QUOTA_ITEM: &str = "0d9a6c2e-1f3b-4e57-8a90-b1c2d3e4f501";
const GROUP: &str = "5b0c3f1e-7a2d-4e8b-9c61-0d4f2a7b8e15";

/// The stand-in with the stack's `powerbi.json`, and monitor settings pointing at it.
struct Pbi {
    server: Server,
    http: reqwest::Client,
    secret: String,
    env: Vec<(String, String)>,
}

impl Pbi {
    fn start(work: &Path) -> Pbi {
        let secret: String = (0..32)
            .map(|_| format!("{:x}", rand::random::<u8>() % 16))
            .collect();
        let (tenant, client) = (uuid(), uuid());
        let server = Server::start(
            "powerbi.py",
            &work.join("powerbi"),
            &[
                "--config",
                crate::root()
                    .join("fake-gcp/powerbi.json")
                    .to_str()
                    .unwrap(),
            ],
            &[
                ("PBI_TENANT", tenant.as_str()),
                ("PBI_CLIENT_ID", client.as_str()),
                ("PBI_CLIENT_SECRET", secret.as_str()),
            ],
        );
        let secret_file = work.join("powerbi_client_secret");
        std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
        let ca = server.field("ca");
        let pem = std::fs::read(&ca).unwrap();
        let http = reqwest::Client::builder()
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem).unwrap())
            .build()
            .unwrap();
        let base = server.field("base_url");
        let env = vec![
            ("DATASHARE_POWERBI_AUTHORITY_URL".into(), base.clone()),
            ("DATASHARE_POWERBI_API_URL".into(), base),
            ("DATASHARE_POWERBI_CA_FILE".into(), ca),
            ("DATASHARE_POWERBI_TENANT".into(), tenant),
            ("DATASHARE_POWERBI_CLIENT_ID".into(), client),
            (
                "DATASHARE_POWERBI_CLIENT_SECRET_FILE".into(),
                secret_file.display().to_string(),
            ),
        ];
        Pbi {
            server,
            http,
            secret,
            env,
        }
    }

    /// The shipped example with the stand-in's endpoints and credentials.
    fn settings(&self) -> PowerBiConfig {
        let env = self.env.clone();
        PowerBiConfig::load_with(None, &move |k| {
            env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
        .expect("monitor settings are valid")
    }

    async fn admin(&self, path: &str, body: Value) {
        let r = self
            .http
            .post(format!("{}/_admin/{path}", self.server.field("base_url")))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
    }

    /// Every logged request; the stand-in logs a request after answering it, so this waits
    /// until the log has been quiet for a moment.
    async fn requests(&self) -> Vec<Value> {
        let mut last = self.requests_now().await;
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now = self.requests_now().await;
            if now.len() == last.len() {
                return now;
            }
            last = now;
        }
    }

    async fn requests_now(&self) -> Vec<Value> {
        let v: Value = self
            .http
            .get(format!("{}/_admin/requests", self.server.field("base_url")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v.as_array()
            .cloned()
            .or_else(|| v["requests"].as_array().cloned())
            .unwrap_or_default()
    }

    /// Refresh POSTs per item id: (accepted, refused).
    async fn posts(&self, id: &str) -> (usize, usize) {
        let r = self.requests().await;
        let posts: Vec<&Value> = r
            .iter()
            .filter(|e| {
                e["method"] == "POST"
                    && e["path"]
                        .as_str()
                        .unwrap_or("")
                        .ends_with(&format!("{id}/refreshes"))
            })
            .collect();
        let ok = posts
            .iter()
            .filter(|e| e["status"].as_u64().is_some_and(|s| s < 300))
            .count();
        (ok, posts.len() - ok)
    }

    async fn token_requests(&self) -> Vec<u64> {
        self.requests()
            .await
            .iter()
            .filter(|e| {
                e["path"]
                    .as_str()
                    .unwrap_or("")
                    .ends_with("/oauth2/v2.0/token")
            })
            .map(|e| e["status"].as_u64().unwrap_or(0))
            .collect()
    }
}

fn uuid() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn updates(version: &str, tables: &[&str]) -> Incoming {
    let u = Updates {
        schema_version: UPDATES_VERSION,
        dt: "2026-12-04".into(),
        batch_version: version.into(),
        tables: tables.iter().map(|t| t.to_string()).collect(),
    };
    let m = u.to_message();
    Incoming {
        id: format!("m-{version}"),
        data: m.data,
        attributes: m.attributes,
        delivery_attempt: Some(1),
    }
}

fn alerts_of(msgs: &[Incoming]) -> Vec<Alert> {
    msgs.iter().map(|m| Alert::parse(m).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refreshes_follow_updates_once_within_quota_and_misconfiguration_alerts_once() {
    let stack = Stack::up(&[]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = stack.config(&partners(dir.path()), &[]);
    stack.watch("alerts", "test-alerts").await;
    let pbi = Pbi::start(dir.path());
    // A fourth dataset, with a quota of one refresh a day already used a minute ago.
    pbi.admin(
        "items",
        json!({"items": [{"kind": "dataset", "name": "cota", "group": GROUP, "id": QUOTA_ITEM,
            "daily_quota": 8,
            "history": [{"status": "Completed", "ago_secs": 60, "after_secs": 5, "refresh_type": "Scheduled"}]}]}),
    )
    .await;
    let mut settings = pbi.settings();
    settings.items.push(PowerBiItem {
        name: "cota".into(),
        kind: ItemKind::Dataset,
        workspace: GROUP.into(),
        id: QUOTA_ITEM.into(),
        daily_quota: 1,
        tables: vec!["curated/cota".into()],
        freshness_sla_hours: 26,
        max_refresh_mins: 30,
    });
    let role = PowerBi::with_settings(cfg.clone(), settings.clone())
        .await
        .expect("the monitor starts");

    // A batch updated transactions: vendas-diarias reads it, the others do not.
    let m = updates("v1", &["curated/transactions", "reports/quality"]);
    assert_eq!(
        role.handle_message(UPDATES_SUBSCRIPTION, &m).await.unwrap(),
        Disposition::Done
    );
    assert_eq!(pbi.posts(VENDAS).await, (1, 0));
    assert_eq!(pbi.posts(PARCEIROS).await, (0, 0));
    assert_eq!(pbi.posts(DATAFLOW).await, (0, 0));
    let body = pbi
        .requests()
        .await
        .into_iter()
        .find(|e| e["method"] == "POST" && e["path"].as_str().unwrap().contains(VENDAS))
        .unwrap();
    assert_eq!(
        body["body"],
        json!({"notifyOption": "NoNotification"}),
        "{body}"
    );
    // Its record in the ops bucket.
    let record = datashare::pipeline::powerbi::refresh_record(&settings.items[0], "v1");
    assert!(
        role.gcs
            .stat(&cfg.gcp.buckets.ops, &record)
            .await
            .unwrap()
            .is_some()
    );

    // Redelivered (and delivered twice more): no second request.
    for _ in 0..3 {
        assert_eq!(
            role.handle_message(UPDATES_SUBSCRIPTION, &m).await.unwrap(),
            Disposition::Done
        );
    }
    assert_eq!(pbi.posts(VENDAS).await, (1, 0));
    assert_eq!(pbi.token_requests().await, vec![200], "one token, cached");

    // The token expires (the stand-in's clock moves an hour on): renewed once, then refreshed.
    pbi.admin("clock", json!({"advance_secs": 3700})).await;
    let m2 = updates("v2", &["curated/customers"]);
    assert_eq!(
        role.handle_message(UPDATES_SUBSCRIPTION, &m2)
            .await
            .unwrap(),
        Disposition::Done
    );
    assert_eq!(
        pbi.posts(DATAFLOW).await,
        (1, 0),
        "{:#?}",
        pbi.requests().await
    );
    assert_eq!(pbi.token_requests().await, vec![200, 200], "renewed once");

    // The quota is used: no request, one alert, however often the update comes.
    for v in ["v3", "v4"] {
        let q = updates(v, &["curated/cota"]);
        assert_eq!(
            role.handle_message(UPDATES_SUBSCRIPTION, &q).await.unwrap(),
            Disposition::Done
        );
    }
    assert_eq!(pbi.posts(QUOTA_ITEM).await, (0, 0));

    // 429 with Retry-After: nacked, no request before it has passed, then one.
    pbi.admin("answers", json!([{"status": 429, "retry_after": "4"}]))
        .await;
    let p = updates("v5", &["products/daily"]);
    assert!(role.handle_message(UPDATES_SUBSCRIPTION, &p).await.is_err());
    assert!(role.handle_message(UPDATES_SUBSCRIPTION, &p).await.is_err());
    assert_eq!(
        pbi.posts(PARCEIROS).await,
        (0, 1),
        "no request while throttled"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        role.handle_message(UPDATES_SUBSCRIPTION, &p).await.unwrap(),
        Disposition::Done
    );
    assert_eq!(
        pbi.posts(PARCEIROS).await,
        (1, 1),
        "{:#?}",
        pbi.requests().await
    );

    // A wrong secret: one configuration alert, the messages acknowledged, one token request each.
    let wrong = dir.path().join("wrong_secret");
    std::fs::write(&wrong, "not-the-secret-at-all").unwrap();
    let mut bad = settings.clone();
    bad.entra.client_secret.file = Some(wrong);
    let bad_role = PowerBi::with_settings(cfg.clone(), bad).await.unwrap();
    let before = pbi.token_requests().await.len();
    for v in ["v6", "v7", "v8"] {
        let w = updates(v, &["curated/transactions", "products/daily"]);
        assert_eq!(
            bad_role
                .handle_message(UPDATES_SUBSCRIPTION, &w)
                .await
                .unwrap(),
            Disposition::Done
        );
    }
    let tick = Schedule::Tick {
        at: chrono::Utc::now(),
    }
    .to_message();
    let tick = Incoming {
        id: "t1".into(),
        data: tick.data,
        ..Default::default()
    };
    assert_eq!(
        bad_role
            .handle_message(SCHEDULES_SUBSCRIPTION, &tick)
            .await
            .unwrap(),
        Disposition::Done
    );
    let tokens = pbi.token_requests().await;
    assert_eq!(
        tokens[before..],
        [401, 401, 401, 401],
        "one token request per message"
    );
    assert_eq!(pbi.posts(VENDAS).await, (1, 0));

    // Ticks 60 hours on (every refresh has ended): each item is past its freshness SLA, one
    // stale alert each however many ticks.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for n in 0..2 {
        let t = Schedule::Tick {
            at: chrono::Utc::now() + chrono::Duration::hours(60),
        }
        .to_message();
        let t = Incoming {
            id: format!("t-stale-{n}"),
            data: t.data,
            ..Default::default()
        };
        assert_eq!(
            role.handle_message(SCHEDULES_SUBSCRIPTION, &t)
                .await
                .unwrap(),
            Disposition::Done
        );
    }

    let got = stack
        .drain("test-alerts", Duration::from_secs(30), |m| m.len() >= 6)
        .await;
    let kinds: Vec<String> = alerts_of(&got).into_iter().map(|a| a.kind).collect();
    assert_eq!(kinds.iter().filter(|k| *k == QUOTA).count(), 1, "{kinds:?}");
    assert_eq!(
        kinds.iter().filter(|k| *k == CONFIG).count(),
        1,
        "{kinds:?}"
    );
    let stale: Vec<Alert> = alerts_of(&got)
        .into_iter()
        .filter(|a| a.kind == STALE)
        .collect();
    let mut items: Vec<&str> = stale.iter().map(|a| a.product.as_str()).collect();
    items.sort();
    assert_eq!(
        items,
        [
            "cota",
            "curated-dataflow",
            "parceiros-produtos",
            "vendas-diarias"
        ],
        "{kinds:?}"
    );
    assert_eq!(kinds.len(), 6, "{kinds:?}");
    let texts: Vec<String> = got
        .iter()
        .map(|m| String::from_utf8_lossy(&m.data).to_string())
        .collect();
    assert_secrets_hidden(&[pbi.secret.as_str()], &texts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_and_a_stuck_refresh_are_one_team_email_each() {
    let stack = Stack::up(&[]);
    let dir = tempfile::tempdir().unwrap();
    let smtp = smtp_env(dir.path(), SmtpTls::Starttls);
    let mail_dir = PathBuf::from(smtp.server.field("mail"));
    let overrides = smtp_overrides(&smtp);
    let o: Vec<(&str, &str)> = overrides
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let cfg = stack.config(&partners(dir.path()), &o);
    let alerting = Arc::new(Alerting::start(cfg.clone()).await.expect("alerting starts"));
    let (stop, rx) = watch::channel(false);
    let pulling = tokio::spawn(pull::run(alerting.clone(), rx));

    let pbi = Pbi::start(dir.path());
    let error = json!({"errorCode": "ModelRefresh_ShortMessage_ProcessingError",
        "errorDescription": "Column 'valor_total' in table 'vendas' cannot be found"});
    pbi.admin(
        "script",
        json!({"kind": "dataset", "group": GROUP, "id": VENDAS,
            "script": [{"status": "Failed", "after_secs": 1, "error": error}]}),
    )
    .await;
    pbi.admin(
        "script",
        json!({"kind": "dataset", "group": GROUP, "id": PARCEIROS, "script": [{"status": "Unknown"}]}),
    )
    .await;
    let role = PowerBi::with_settings(cfg.clone(), pbi.settings())
        .await
        .unwrap();
    let m = updates("v1", &["curated/transactions", "products/daily"]);
    assert_eq!(
        role.handle_message(UPDATES_SUBSCRIPTION, &m).await.unwrap(),
        Disposition::Done
    );
    assert_eq!(pbi.posts(VENDAS).await, (1, 0));
    assert_eq!(pbi.posts(PARCEIROS).await, (1, 0));
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Ticks: 40 minutes on, the stuck one is past its 30-minute limit; a second tick, and a
    // tick of a second instance, repeat nothing.
    let other = PowerBi::with_settings(cfg.clone(), pbi.settings())
        .await
        .unwrap();
    let gcs = datashare::gcp::Gcs::connect(cfg.emulators.storage.as_deref())
        .await
        .unwrap();
    let ops = &cfg.gcp.buckets.ops;
    let mut seen_after = Vec::new();
    for n in 0..3 {
        let t = Schedule::Tick {
            at: chrono::Utc::now() + chrono::Duration::minutes(40),
        }
        .to_message();
        let t = Incoming {
            id: format!("t{n}"),
            data: t.data,
            ..Default::default()
        };
        let instance = if n == 2 { &other } else { &role };
        assert_eq!(
            instance
                .handle_message(SCHEDULES_SUBSCRIPTION, &t)
                .await
                .unwrap(),
            Disposition::Done
        );
        seen_after.push(gcs.list(ops, "powerbi/seen/").await.unwrap());
    }
    // Each ended refresh of the histories counted once, at the first tick (create-only
    // `powerbi/seen/` markers, never rewritten); the failed one among them, the running one not.
    assert_eq!(seen_after[0], seen_after[1], "a second tick counts nothing");
    assert_eq!(seen_after[0], seen_after[2], "nor a second instance");
    let items = pbi.settings().items;
    let item = |id: &str| items.iter().find(|i| i.id == id).unwrap();
    let mut outcomes = Vec::new();
    for o in &seen_after[0] {
        let (body, _) = gcs.read(ops, &o.name, None).await.unwrap().unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        let refresh = body["refresh_id"].as_str().unwrap();
        let owner = items
            .iter()
            .find(|i| o.name == seen_record(i, refresh))
            .unwrap_or_else(|| panic!("{} is no item's refresh {refresh}", o.name));
        outcomes.push((
            owner.id.clone(),
            body["outcome"].as_str().unwrap().to_string(),
        ));
    }
    let failed: Vec<_> = outcomes.iter().filter(|(_, o)| o == "failed").collect();
    assert_eq!(failed.len(), 1, "{outcomes:?}");
    assert_eq!(failed[0].0, item(VENDAS).id);
    assert!(
        outcomes
            .iter()
            .all(|(_, o)| ["completed", "failed", "disabled", "cancelled"].contains(&o.as_str())),
        "{outcomes:?}"
    );
    until("two e-mails", Duration::from_secs(60), || async {
        (mails(&mail_dir).len() >= 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got: Vec<Value> = mails(&mail_dir).iter().map(|p| parse_eml(p)).collect();
    assert_eq!(got.len(), 2, "exactly two e-mails");
    let text = |m: &Value| {
        format!(
            "{} {}",
            m["subject"].as_str().unwrap_or_default(),
            m["parts"][0]["text"].as_str().unwrap_or_default()
        )
    };
    let failed: Vec<&Value> = got
        .iter()
        .filter(|m| text(m).contains("powerbi.refresh_failed"))
        .collect();
    assert_eq!(failed.len(), 1, "{got:?}");
    assert!(
        text(failed[0]).contains("Column 'valor_total' in table 'vendas' cannot be found"),
        "{}",
        text(failed[0])
    );
    assert_eq!(
        got.iter()
            .filter(|m| text(m).contains("powerbi.refresh_stuck"))
            .count(),
        1,
        "{got:?}"
    );
    stop.send(true).unwrap();
    pulling.await.unwrap().unwrap();
}
