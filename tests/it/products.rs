//! Partner products built end to end from generated curated data.

mod fixture;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use arrow_array::cast::AsArray;
use chrono::{TimeZone, Utc};
use datashare::products::contract::{self, Contract};
use datashare::products::gate::{FORBIDDEN_COLUMNS, GateError};
use datashare::products::month_lines::MonthReads;
use datashare::products::{BuildError, BuildOptions, Period, Released, build};
use fixture::{Fixture, day};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

const SUCORAMA: &str = r#"
name = "sucorama"
display_name = "Sucorama"
manufacturer = "Sucorama"
brands = [{ name = "Suquinho", segment = "Sucos" }]
products = ["daily", "monthly"]
formats = ["csv"]
k = 3

[pseudonymization]
key_version = "2026a"
secret = { env = "SUCORAMA_KEY_VAR" }

[[sinks]]
type = "api"
base_url = "https://dados.sucorama.example"
auth = { type = "bearer", token = { env = "SUCORAMA_TOKEN_VAR" } }

[delivery]
deadline = "07:30"
"#;

/// A throwaway random secret, from the OS's randomness (never committed).
fn throwaway_secret() -> String {
    use std::io::Read;
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct Env {
    _dir: tempfile::TempDir,
    input: PathBuf,
    partners: PathBuf,
    root: PathBuf,
    fixture: Fixture,
}

/// Curated data, the shipped contract and the fictional second partner, each with a fresh
/// secret in an environment variable unique to this test.
fn setup(tag: &str, tweak: impl FnOnce(&mut Fixture)) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let mut fixture = Fixture::generate(7);
    tweak(&mut fixture);
    let input = root.join("lake");
    fixture.write(&input);
    let partners = root.join("partners");
    std::fs::create_dir_all(&partners).unwrap();
    let var = format!("DATASHARE_TEST_{tag}_OH_KEY");
    let shipped = std::fs::read_to_string(crate::root().join("partners/ouchhungry.toml"))
        .unwrap()
        .replace("DATASHARE_OUCHHUNGRY_HMAC_KEY", &var);
    std::fs::write(partners.join("ouchhungry.toml"), shipped).unwrap();
    let svar = format!("DATASHARE_TEST_{tag}_SUCO_KEY");
    std::fs::write(
        partners.join("sucorama.toml"),
        SUCORAMA.replace("SUCORAMA_KEY_VAR", &svar),
    )
    .unwrap();
    // SAFETY: each test uses its own variable names; nothing reads them concurrently.
    unsafe {
        std::env::set_var(&var, throwaway_secret());
        std::env::set_var(&svar, throwaway_secret());
    }
    Env {
        _dir: dir,
        input,
        partners,
        root,
        fixture,
    }
}

impl Env {
    fn contract(&self, name: &str) -> Contract {
        contract::find(&self.partners, name).unwrap()
    }

    /// Build options reading this curated data into `out` (under the test's folder).
    fn options(&self, out: &str) -> BuildOptions {
        BuildOptions {
            input: self.input.clone(),
            output: self.root.join(out),
            allow_missing_batches: false,
            built_at: Utc.with_ymd_and_hms(2026, 12, 3, 9, 0, 0).unwrap(),
            window: None,
            months: Default::default(),
            transactions: None,
        }
    }

    fn build(&self, name: &str, period: Period, out: &str) -> Result<Released, BuildError> {
        build(&self.contract(name), period, &self.options(out))
    }
}

fn read_parquet(path: &Path) -> RecordBatch {
    let r = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let batches: Vec<RecordBatch> = r.map(Result::unwrap).collect();
    arrow_select::concat::concat_batches(&batches[0].schema(), &batches).unwrap()
}

fn strings(b: &RecordBatch, col: &str) -> Vec<String> {
    b.column_by_name(col)
        .unwrap()
        .as_string::<i32>()
        .iter()
        .map(|s| s.unwrap_or_default().to_string())
        .collect()
}

/// Every file under `dir`, recursively, sorted.
pub(crate) fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn builds_are_byte_identical() {
    let env = setup("DET", |_| {});
    for out in ["a", "b"] {
        env.build("ouchhungry", Period::Day(day("2026-11-27")), out)
            .unwrap();
        env.build("ouchhungry", Period::Month(day("2026-11-01")), out)
            .unwrap();
        env.build("ouchhungry", Period::MonthBrands(day("2026-11-01")), out)
            .unwrap();
    }
    // 3 products × (parquet, csv, 2 manifests) + 3 dictionaries
    assert_same_files(&env.root.join("a"), &env.root.join("b"), 15);
}

/// The two folders hold `count` files each, of the same names and bytes.
fn assert_same_files(a: &Path, b: &Path, count: usize) {
    let (a, b) = (files_under(a), files_under(b));
    assert_eq!(a.len(), count, "{a:?}");
    assert_eq!(b.len(), count, "{b:?}");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.file_name(), y.file_name());
        assert_eq!(
            std::fs::read(x).unwrap(),
            std::fs::read(y).unwrap(),
            "{x:?}"
        );
    }
}

#[test]
fn daily_file_follows_the_contract() {
    let env = setup("DAILY", |_| {});
    let d = day("2026-11-27");
    let r = env.build("ouchhungry", Period::Day(d), "out").unwrap();
    let b = read_parquet(&r.files[0].path);
    assert!(b.num_rows() > 10);
    // Completed lines of the partner's products sold on local day D, as in batch D.
    let expected: BTreeSet<String> = env
        .fixture
        .lines
        .iter()
        .filter(|l| l.batch == d && l.status == "completed")
        .filter(|l| l.product_code.starts_with("HGY") || l.product_code.starts_with("OUC"))
        .map(|l| l.transaction_id.clone())
        .collect();
    assert_eq!(b.num_rows(), expected.len());
    let brands: BTreeSet<String> = strings(&b, "brand").into_iter().collect();
    assert_eq!(brands, BTreeSet::from(["Hungry".into(), "Ouch".into()]));
    // Small cities over the trailing 30 days are OUTRAS; big ones keep their name.
    let cities: BTreeSet<String> = strings(&b, "city").into_iter().collect();
    assert!(!cities.contains("Itu") && !cities.contains("Armação dos Búzios"));
    assert!(cities.contains("São Paulo"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&r.files[0].manifest).unwrap()).unwrap();
    assert_eq!(manifest["rows"], b.num_rows());
    assert_eq!(manifest["product_version"], r.files[0].sha256);
    assert_eq!(manifest["source_batches"].as_array().unwrap().len(), 30);
    assert_eq!(manifest["key_version"], "v1");
}

/// A completed line of `Hungry Cola` bought in Tatuí (SP) by `customer` on local noon of `d`,
/// in batch `d`, last updated a minute later.
fn tatui_line(id: &str, customer: &str, d: chrono::NaiveDate) -> fixture::FxLine {
    use chrono::TimeZone as _;
    let noon = chrono_tz::America::Sao_Paulo
        .from_local_datetime(&d.and_hms_opt(12, 0, 0).unwrap())
        .unwrap()
        .timestamp();
    fixture::FxLine {
        batch: d,
        transaction_id: id.to_string(),
        order_id: format!("OR-{id}"),
        customer_id: customer.to_string(),
        product_code: "HGY-000001",
        quantity: 1,
        unit_price: 499,
        discount: 0,
        status: "completed",
        sold_at: noon,
        city: "Tatuí",
        uf: "SP",
        updated_at: noon + 60,
    }
}

#[test]
fn small_cities_count_the_latest_version_of_each_line() {
    // Tatuí has exactly k = 5 customers over the window, one of them buying on D: it keeps its
    // name, unless a later version of one of its lines ends that sale (cancelled, or corrected
    // to a rival's product); a version read later but updated earlier changes nothing.
    let d = day("2026-11-27");
    let tatui = |later: Option<(&'static str, &'static str, i64)>| {
        let tag = match later {
            None => "TATUI".to_string(),
            Some((code, status, shift)) => format!("TATUI_{}_{status}_{}", &code[..3], shift > 0),
        };
        let env = setup(&tag, |f| {
            for i in 1..=5u32 {
                let sold = d - chrono::Days::new(u64::from(6 - i) + 2);
                f.lines
                    .push(tatui_line(&format!("TT-{i}"), &format!("CT-{i}"), sold));
            }
            f.lines.push(tatui_line("TT-D", "CT-1", d));
            if let Some((code, status, shift)) = later {
                let mut v = tatui_line("TT-5", "CT-5", d - chrono::Days::new(3));
                v.batch = d - chrono::Days::new(1);
                v.product_code = code;
                v.status = status;
                v.updated_at += shift;
                f.lines.push(v);
            }
        });
        let r = env.build("ouchhungry", Period::Day(d), "out").unwrap();
        strings(&read_parquet(&r.files[0].path), "city").contains(&"Tatuí".to_string())
    };
    assert!(tatui(None), "5 customers: named");
    assert!(
        !tatui(Some(("HGY-000001", "cancelled", 3600))),
        "cancelled later: 4"
    );
    assert!(
        !tatui(Some(("FZZ-000001", "completed", 3600))),
        "a rival's product later: 4"
    );
    assert!(
        tatui(Some(("HGY-000001", "cancelled", -30))),
        "an older version read later"
    );
}

/// Batches' transactions fetched as the builds read them, the way the worker's monthly builds
/// fetch them from the curated bucket: each file is copied from the full lake, and the root's
/// batches are counted at every fetch.
#[derive(Debug)]
struct CopyingSource {
    /// The lake's `curated/transactions`.
    from: PathBuf,
    /// The thin root's `curated/transactions`.
    into: PathBuf,
    /// Most batches under `into` at one fetch (the one being fetched included), and fetches.
    seen: std::sync::Mutex<(usize, usize)>,
}

impl datashare::products::curated::TransactionsSource for CopyingSource {
    fn has(&self, dt: chrono::NaiveDate) -> bool {
        self.from.join(format!("dt={dt}")).is_dir()
    }

    fn fetch(&self, dt: chrono::NaiveDate, dir: &Path) -> std::io::Result<()> {
        let present = std::fs::read_dir(&self.into)?.count();
        let mut seen = self.seen.lock().unwrap();
        *seen = (seen.0.max(present), seen.1 + 1);
        for f in std::fs::read_dir(self.from.join(format!("dt={dt}")))? {
            let f = f?;
            std::fs::copy(f.path(), dir.join(f.file_name()))?;
        }
        Ok(())
    }
}

#[test]
fn monthly_builds_fetch_one_batch_of_transactions_at_a_time() {
    let env = setup("FETCHED", |_| {});
    let thin = env.root.join("thin");
    for d in files_under(&env.input.join("curated/products")) {
        let to = thin.join(d.strip_prefix(&env.input).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&d, &to).unwrap();
    }
    let into = thin.join("curated/transactions");
    std::fs::create_dir_all(&into).unwrap();
    let source = std::sync::Arc::new(CopyingSource {
        from: env.input.join("curated/transactions"),
        into: into.clone(),
        seen: Default::default(),
    });
    let first = day("2026-11-01");
    for period in [Period::Month(first), Period::MonthBrands(first)] {
        env.build("ouchhungry", period, "full").unwrap();
        let opts = BuildOptions {
            input: thin.clone(),
            transactions: Some(source.clone()),
            ..env.options("fetched")
        };
        build(&env.contract("ouchhungry"), period, &opts).unwrap();
    }
    let (most, fetches) = *source.seen.lock().unwrap();
    assert!(
        fetches >= 30,
        "{fetches} batches fetched for November and October"
    );
    assert_eq!(most, 1, "batches under the root at once");
    assert_eq!(
        std::fs::read_dir(&into).unwrap().count(),
        0,
        "fetched batches left"
    );
    // 2 products × (parquet, csv, 2 manifests) + 2 dictionaries
    assert_same_files(&env.root.join("full"), &env.root.join("fetched"), 10);
}

/// Calls of the heap release handed to the month reads below.
static RELEASES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn count_release() {
    RELEASES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

#[test]
fn the_heap_goes_back_once_the_previous_month_is_summed() {
    let env = setup("RELEASE", |_| {});
    let opts = BuildOptions {
        months: MonthReads::releasing(count_release),
        ..env.options("out")
    };
    let calls = || RELEASES.load(std::sync::atomic::Ordering::SeqCst);
    let r = build(
        &env.contract("ouchhungry"),
        Period::Month(day("2026-11-01")),
        &opts,
    )
    .unwrap();
    assert!(r.highlights.iter().any(|h| h.contains(" p.p.)")));
    assert_eq!(calls(), 1, "October summed once, then the heap released");
    // The same request's other builds of November find October's figures: no second read.
    build(
        &env.contract("ouchhungry"),
        Period::Month(day("2026-11-01")),
        &opts,
    )
    .unwrap();
    assert_eq!(calls(), 1);
}

#[test]
fn monthly_file_merges_drops_and_hides_rivals() {
    let env = setup("MONTHLY", |_| {});
    let r = env
        .build("ouchhungry", Period::Month(day("2026-11-01")), "out")
        .unwrap();
    // The share highlight compares with October's product (built when October was read).
    assert!(
        r.highlights.iter().any(|h| h.contains(" p.p.)")),
        "{:?}",
        r.highlights
    );
    let b = read_parquet(&r.files[0].path);
    let city = strings(&b, "city");
    let uf = strings(&b, "uf");
    let merged = b
        .column_by_name("cities_merged")
        .unwrap()
        .as_primitive::<arrow_array::types::Int32Type>();
    let customers = b
        .column_by_name("customers_reached")
        .unwrap()
        .as_primitive::<arrow_array::types::Int64Type>();
    let seg = b.column_by_name("segment_units").unwrap();
    let segment = strings(&b, "segment");
    let mut outras_sp = 0;
    for i in 0..b.num_rows() {
        assert!(customers.value(i) >= 5);
        assert!(!["Itu", "Jundiaí", "Armação dos Búzios"].contains(&city[i].as_str()));
        if city[i] == "OUTRAS" {
            assert_eq!(
                uf[i], "SP",
                "the RJ merged row stays below k and is dropped"
            );
            assert_eq!(merged.value(i), 2);
            outras_sp += 1;
        } else {
            assert_eq!(merged.value(i), 0);
        }
        // Salgadinhos has only two rivals except in Campinas (Tchan sells there).
        if segment[i] == "Salgadinhos" && city[i] != "Campinas" {
            assert!(seg.is_null(i), "row {i} {}", city[i]);
        }
        if segment[i] == "Refrigerantes" && city[i] != "OUTRAS" {
            assert!(!seg.is_null(i));
        }
    }
    assert_eq!(outras_sp, 4, "one merged row per SP product");
    assert!(r.highlights.len() >= 2, "{:?}", r.highlights);
}

#[test]
fn no_personal_data_leaves() {
    let env = setup("PRIVACY", |_| {});
    env.build("ouchhungry", Period::Day(day("2026-11-27")), "out")
        .unwrap();
    env.build("ouchhungry", Period::Month(day("2026-11-01")), "out")
        .unwrap();
    let identifiers: BTreeSet<&str> = env
        .fixture
        .lines
        .iter()
        .flat_map(|l| {
            [
                l.customer_id.as_str(),
                l.order_id.as_str(),
                l.transaction_id.as_str(),
            ]
        })
        .collect();
    for f in files_under(&env.root.join("out")) {
        let text = String::from_utf8(std::fs::read(&f).unwrap()).unwrap_or_default();
        if f.extension().is_some_and(|e| e == "parquet") {
            let b = read_parquet(&f);
            for field in b.schema().fields() {
                assert!(!FORBIDDEN_COLUMNS.contains(&field.name().as_str()), "{f:?}");
            }
        } else {
            for id in &identifiers {
                assert!(!text.contains(id), "{id} in {f:?}");
            }
            assert!(!text.contains("01001-000"), "a CEP in {f:?}");
        }
    }
}

#[test]
fn keys_differ_between_partners_and_months_and_are_stable() {
    let env = setup("KEYS", |f| {
        // One customer buys both partners' products in October and November.
        for l in f.lines.iter_mut().filter(|l| l.customer_id == "C-SP0001") {
            l.status = "completed";
        }
    });
    let keys = |partner: &str, d: &str| -> BTreeSet<String> {
        let r = env.build(partner, Period::Day(day(d)), "out").unwrap();
        let p = r
            .files
            .iter()
            .find(|f| f.path.extension().unwrap() == "csv")
            .unwrap();
        let text = std::fs::read_to_string(&p.path).unwrap();
        let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
        let i = header.iter().position(|h| *h == "customer_key").unwrap();
        text.lines()
            .skip(1)
            .map(|l| l.split(',').nth(i).unwrap().to_string())
            .collect()
    };
    let c = env.contract("ouchhungry");
    let secret = c.hmac_secret().unwrap();
    let p = datashare::products::pseudonym::Pseudonymizer::new(&secret, c.key_period).unwrap();
    let (nov, oct) = (
        p.customer_key("2026-11", "C-SP0001"),
        p.customer_key("2026-10", "C-SP0001"),
    );
    assert_ne!(nov, oct);
    let bought = |d: &str, prefix: &[&str]| {
        env.fixture.lines.iter().any(|l| {
            l.customer_id == "C-SP0001"
                && l.batch == day(d)
                && prefix.iter().any(|x| l.product_code.starts_with(x))
        })
    };
    let nov_day = (1..=30)
        .map(|i| format!("2026-11-{i:02}"))
        .find(|d| bought(d, &["HGY", "OUC"]))
        .unwrap();
    assert!(keys("ouchhungry", &nov_day).contains(&nov));
    assert!(!keys("ouchhungry", &nov_day).contains(&oct));
    // The second partner never sees the first partner's key of the same customer.
    let all_oh: BTreeSet<String> = ["2026-11-05", "2026-11-06", "2026-11-07"]
        .iter()
        .flat_map(|d| keys("ouchhungry", d))
        .collect();
    let all_sq: BTreeSet<String> = ["2026-11-05", "2026-11-06", "2026-11-07"]
        .iter()
        .flat_map(|d| keys("sucorama", d))
        .collect();
    assert!(!all_sq.is_empty());
    assert!(all_oh.is_disjoint(&all_sq));
}

#[test]
fn a_second_partner_needs_config_only() {
    let env = setup("SECOND", |_| {});
    let d = env
        .build("sucorama", Period::Day(day("2026-11-20")), "out")
        .unwrap();
    let m = env
        .build("sucorama", Period::Month(day("2026-11-01")), "out")
        .unwrap();
    for r in [&d, &m] {
        assert_eq!(r.files.len(), 1);
        assert_eq!(r.files[0].path.extension().unwrap(), "csv");
        let text = std::fs::read_to_string(&r.files[0].path).unwrap();
        assert!(
            text.lines().skip(1).all(|l| l.contains("Suquinho")),
            "{text}"
        );
        assert!(!text.contains("Hungry") && !text.contains("Ouch"));
    }
    let dir = env.root.join("out/products/sucorama/monthly");
    assert!(
        dir.join("sucorama_monthly_2026-11.csv.manifest.json")
            .exists()
    );
    assert!(dir.join("sucorama_monthly_dictionary.pt-BR.md").exists());
    assert!(!dir.join("sucorama_monthly_2026-11.parquet").exists());
}

#[test]
fn planted_personal_data_is_refused_and_not_released() {
    let planted = [
        ("Hungry Cola fale com joana.souza@example.com", "email"),
        ("Hungry Cola CPF 529.982.247-25", "cpf"),
        ("Hungry Cola (11) 98765-4321", "phone"),
    ];
    for (i, (name, kind)) in planted.iter().enumerate() {
        let env = setup(&format!("GATE{i}"), |f| {
            f.products[0].name = name.to_string()
        });
        let e = env
            .build("ouchhungry", Period::Day(day("2026-11-27")), "out")
            .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("column product_name row "), "{msg}");
        assert!(msg.contains(kind), "{msg}");
        let alert = e.alert().expect("an alert is raised");
        assert_eq!(alert.kind, "privacy.gate");
        assert!(matches!(e, BuildError::Gate(GateError::Refused { .. })));
        let dir = env.root.join("out/products/ouchhungry/daily");
        assert!(!dir.join("ouchhungry_daily_2026-11-27.parquet").exists());
        assert!(
            !dir.join("ouchhungry_daily_2026-11-27.parquet.manifest.json")
                .exists()
        );
    }
}

#[test]
fn building_without_the_secret_fails_clearly() {
    let env = setup("NOSECRET", |_| {});
    let var = "DATASHARE_TEST_NOSECRET_OH_KEY";
    // SAFETY: this variable belongs to this test only.
    unsafe { std::env::remove_var(var) };
    let e = env
        .build("ouchhungry", Period::Day(day("2026-11-27")), "out")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!(
            "secret pseudonymization.secret of partner ouchhungry: environment variable {var} is not set (or not UTF-8) and file /secrets/ouchhungry-hmac-key/value cannot be read"
        )),
        "{e}"
    );
}

#[test]
fn reconciliation_holds_a_month_that_does_not_add_up() {
    // A November line that never was in its day's batch shows up first in a late batch.
    let env = setup("RECON", |f| {
        let mut l = f
            .lines
            .iter()
            .find(|l| {
                l.batch == day("2026-11-30")
                    && l.status == "completed"
                    && l.product_code.starts_with("HGY")
                    && l.city == "São Paulo"
            })
            .unwrap()
            .clone();
        l.transaction_id = "TX-LATE01".into();
        l.batch = day("2026-12-01");
        f.lines.push(l);
    });
    let e = env
        .build("ouchhungry", Period::Month(day("2026-11-01")), "out")
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("reconciliation held ouchhungry monthly 2026-11"),
        "{e}"
    );
    assert_eq!(e.alert().unwrap().kind, "reconciliation");
    assert!(
        !env.root
            .join("out/products/ouchhungry/monthly/ouchhungry_monthly_2026-11.parquet")
            .exists()
    );
}

#[test]
fn missing_batches_stop_a_month_unless_allowed() {
    let env = setup("MISSING", |_| {});
    std::fs::remove_dir_all(env.input.join("curated/transactions/dt=2026-12-02")).unwrap();
    let e = env
        .build("ouchhungry", Period::Month(day("2026-11-01")), "out")
        .unwrap_err()
        .to_string();
    assert!(e.contains("batch(es) missing, first 2026-12-02"), "{e}");
}

#[test]
fn brand_view_counts_customers_per_level_merges_and_reconciles() {
    let env = setup("BRANDS", |_| {});
    let first = day("2026-11-01");
    let r = env
        .build("ouchhungry", Period::MonthBrands(first), "out")
        .unwrap();
    assert_eq!(r.product.as_str(), "monthly_brands");
    let b = read_parquet(&r.files[0].path);
    let level = strings(&b, "level");
    let brand = strings(&b, "brand");
    let uf = b.column_by_name("uf").unwrap();
    let city = strings(&b, "city");
    let customers = b
        .column_by_name("customers_reached")
        .unwrap()
        .as_primitive::<arrow_array::types::Int64Type>();
    let units = b
        .column_by_name("units_sold")
        .unwrap()
        .as_primitive::<arrow_array::types::Int64Type>();
    let row = |lv: &str, u: Option<&str>, c: &str, br: &str| {
        (0..b.num_rows()).find(|&i| {
            level[i] == lv
                && brand[i] == br
                && city[i] == c
                && (uf.is_null(i) && u.is_none() || u == Some(uf.as_string::<i32>().value(i)))
        })
    };
    // Month lines of the partner (latest version, completed), straight from the fixture.
    let mut latest: std::collections::BTreeMap<&str, &fixture::FxLine> = Default::default();
    for l in &env.fixture.lines {
        let keep = latest
            .get(l.transaction_id.as_str())
            .is_none_or(|cur| (cur.updated_at, cur.batch) <= (l.updated_at, l.batch));
        if keep {
            latest.insert(&l.transaction_id, l);
        }
    }
    let month: Vec<&fixture::FxLine> = latest
        .values()
        .copied()
        .filter(|l| l.status == "completed" && l.product_code.starts_with("HGY"))
        .filter(|l| {
            let local = chrono::DateTime::from_timestamp(l.sold_at, 0)
                .unwrap()
                .with_timezone(&chrono_tz::America::Sao_Paulo);
            local.format("%Y-%m").to_string() == "2026-11"
        })
        .collect();
    let distinct = |f: &dyn Fn(&fixture::FxLine) -> bool| {
        month
            .iter()
            .filter(|l| f(l))
            .map(|l| l.customer_id.as_str())
            .collect::<BTreeSet<_>>()
            .len() as i64
    };
    let country = row("country", None, "", "Hungry").expect("a country row");
    assert_eq!(customers.value(country), distinct(&|_| true));
    assert_eq!(
        units.value(country),
        month.iter().map(|l| l.quantity).sum::<i64>()
    );
    let sp = row("uf", Some("SP"), "", "Hungry").expect("an SP row");
    assert_eq!(customers.value(sp), distinct(&|l| l.uf == "SP"));
    let outras = row("city", Some("SP"), "OUTRAS", "Hungry").expect("SP's OUTRAS");
    assert_eq!(
        customers.value(outras),
        distinct(&|l| l.city == "Itu" || l.city == "Jundiaí")
    );
    assert!(row("city", Some("RJ"), "OUTRAS", "Hungry").is_none());
    for i in 0..b.num_rows() {
        if level[i] != "country" {
            assert!(customers.value(i) >= 5, "row {i}");
        }
        assert!(!["Itu", "Jundiaí", "Armação dos Búzios"].contains(&city[i].as_str()));
    }
    // Files beside it: manifest, CSV twin, the dictionary.
    let dir = env.root.join("out/products/ouchhungry/monthly_brands");
    assert!(
        dir.join("ouchhungry_monthly_brands_2026-11.csv.manifest.json")
            .exists()
    );
    assert!(
        dir.join("ouchhungry_monthly_brands_dictionary.pt-BR.md")
            .exists()
    );
    assert!(r.highlights.len() >= 2, "{:?}", r.highlights);
}

#[test]
fn brand_view_is_held_when_the_month_does_not_add_up() {
    let env = setup("BRECON", |f| {
        let mut l = f
            .lines
            .iter()
            .find(|l| {
                l.batch == day("2026-11-30")
                    && l.status == "completed"
                    && l.product_code.starts_with("HGY")
            })
            .unwrap()
            .clone();
        l.transaction_id = "TX-LATE02".into();
        l.batch = day("2026-12-01");
        f.lines.push(l);
    });
    let e = env
        .build("ouchhungry", Period::MonthBrands(day("2026-11-01")), "out")
        .unwrap_err();
    assert_eq!(e.alert().unwrap().kind, "reconciliation");
    assert!(
        !env.root
            .join("out/products/ouchhungry/monthly_brands")
            .exists()
    );
}

/// The daily build streams the curated lines: on a generated 200k-row day its heap peaks far
/// below what holding the day's lines did (~1 KB a row: ~200 MB here), within 48 MiB plus
/// 200 bytes a row of the day.
#[test]
fn a_daily_build_holds_a_bounded_heap() {
    use datashare::clean::Schemas;
    use datashare::clean::local::run_local_batch;
    use datashare::generate::{GenerateOptions, LocalDirSink, generate_day};

    let env = setup("HEAP", |_| {});
    let raw = env.root.join("raw");
    let d = day("2026-11-27");
    let rows = 200_000u64;
    let opts = GenerateOptions {
        rows,
        parts: 2,
        defect_rate: 0.01,
        ..GenerateOptions::default()
    };
    generate_day(&opts, d, &LocalDirSink::new(&raw)).unwrap();
    let lake = env.root.join("big");
    run_local_batch(&Schemas::builtin().unwrap(), &raw, &lake, d).unwrap();
    let contract = env.contract("ouchhungry");
    let opts = BuildOptions {
        input: lake,
        ..env.options("out-big")
    };
    let (released, peak) =
        crate::alloc::peak_heap(|| build(&contract, Period::Day(d), &opts).unwrap());
    let lines = released.files[0].rows;
    eprintln!(
        "daily build of {rows} rows ({lines} lines): peak heap {:.1} MiB",
        peak as f64 / 1048576.0
    );
    assert!(lines > 40_000, "{lines} lines in the file");
    assert!(
        peak < (48 << 20) + 200 * rows as usize,
        "peak heap {peak} bytes for a {rows}-row day"
    );
}

/// A month is built from its lines replayed from scratch files one order at a time, never from
/// the window's versions and their strings held in memory: twice the lines (120k → 240k over
/// 30 days, the same 997 customers) leave the heap where it was (< 16 bytes a line more),
/// where holding owned lines took 756 bytes a line, and holding them cut to 48 bytes, 184.
#[test]
fn a_monthly_build_holds_a_flat_heap() {
    let first = day("2026-11-01");
    let peak = |per_day: u64| {
        let env = setup(&format!("MONTHHEAP{per_day}"), |f| {
            for n in 0..30u64 {
                let d = first + chrono::Days::new(n);
                for i in 0..per_day {
                    let customer = format!("CM-{}", i % 997);
                    f.lines
                        .push(tatui_line(&format!("TM-{n}-{i}"), &customer, d));
                }
            }
        });
        let opts = BuildOptions {
            allow_missing_batches: true,
            ..env.options("out")
        };
        let contract = env.contract("ouchhungry");
        let (released, peak) =
            crate::alloc::peak_heap(|| build(&contract, Period::Month(first), &opts).unwrap());
        assert!(released.files[0].rows > 0);
        peak
    };
    let (small, large) = (peak(4_000), peak(8_000));
    let per_line = (large.saturating_sub(small)) / (30 * 4_000);
    eprintln!(
        "monthly build of 120k and 240k lines: peak heap {:.1} and {:.1} MiB, {per_line} bytes a line more",
        small as f64 / 1048576.0,
        large as f64 / 1048576.0
    );
    assert!(per_line < 16, "{per_line} bytes a line");
}

/// The window's batches are merged as streams: six times more lines in the 29 earlier days
/// (58k → 348k) leave the daily build's heap where it was; holding one 32-byte record a line,
/// as the build did, grew it by ~9 MiB.
#[test]
fn the_window_is_counted_in_bounded_memory() {
    let d = day("2026-11-27");
    let peak = |per_day: u32| {
        let env = setup(&format!("WINDOW{per_day}"), |f| {
            for back in 1..30u64 {
                let x = d - chrono::Days::new(back);
                for i in 0..per_day {
                    let customer = format!("CW-{}", i % 997);
                    f.lines
                        .push(tatui_line(&format!("TW-{back}-{i}"), &customer, x));
                }
            }
            f.lines.push(tatui_line("TW-D", "CW-1", d));
        });
        let contract = env.contract("ouchhungry");
        let opts = env.options("out");
        let (released, peak) =
            crate::alloc::peak_heap(|| build(&contract, Period::Day(d), &opts).unwrap());
        // Tatuí's customers over the window make it a named city.
        assert!(strings(&read_parquet(&released.files[0].path), "city").contains(&"Tatuí".into()));
        peak
    };
    let (small, large) = (peak(2_000), peak(12_000));
    eprintln!(
        "daily build, 29 earlier days of 2,000 and 12,000 lines: peak heap {:.1} and {:.1} MiB",
        small as f64 / 1048576.0,
        large as f64 / 1048576.0
    );
    assert!(
        large < small + (3 << 20),
        "peak heap {small} → {large} bytes: it grows with the window"
    );
}
