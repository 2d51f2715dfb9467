//! Partner contracts: one TOML file per partner under `partners/`, typed and validated at start-up.
//!
//! A contract names the manufacturer and the brands (each with its segment) the partner bought,
//! which products (daily, monthly) in which formats, `k` for small cells, the pseudonymization
//! key *reference* (an environment variable or a file, never a value), the sinks and the
//! contacts. Every problem is reported as `<file>: <field>: <problem>`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::clean::validators;
use crate::config::secret::{Secret, SecretError, SecretRef};
use crate::config::sinks::{ApiAuth, SinkConfig};
use crate::events::ProductKind;

/// Minimum length in bytes of a pseudonymization secret.
pub const MIN_SECRET_BYTES: usize = 32;

/// A partner contract could not be loaded, or a secret it references could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The contract file.
        file: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The TOML is malformed, has an unknown field or a value of the wrong type.
    #[error("{file}: {message}")]
    Parse {
        /// The contract file.
        file: PathBuf,
        /// The parser's message (it names the field and the line).
        message: String,
    },
    /// A field holds a value the contract does not allow.
    #[error("{file}: {field}: {problem}")]
    Invalid {
        /// The contract file.
        file: PathBuf,
        /// The field, as a TOML path (e.g. `sinks[1].base_url`).
        field: String,
        /// What is wrong.
        problem: String,
    },
    /// No contract has this partner name.
    #[error("no partner contract named {name} in {dir}")]
    UnknownPartner {
        /// The partner asked for.
        name: String,
        /// The folder searched.
        dir: PathBuf,
    },
    /// A referenced secret is not available.
    #[error("secret {what} of partner {partner}: {problem}")]
    Secret {
        /// The partner.
        partner: String,
        /// Which secret (its field).
        what: String,
        /// What is wrong (names the variable or file, never the value).
        problem: String,
    },
}

impl From<SecretError> for ContractError {
    fn from(e: SecretError) -> Self {
        ContractError::Secret {
            partner: e.owner,
            what: e.what,
            problem: e.problem,
        }
    }
}

/// A file format.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Apache Parquet, compressed as the contract's `[parquet]` says (Snappy by default).
    Parquet,
    /// CSV, UTF-8, comma-separated, with a header.
    Csv,
}

impl Format {
    /// The file extension.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Parquet => "parquet",
            Format::Csv => "csv",
        }
    }
}

/// The compression codec of Parquet files.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// Snappy: fast, read everywhere (the default).
    #[default]
    Snappy,
    /// Zstandard at [`ParquetOptions::zstd_level`]: smaller files.
    Zstd,
}

/// Zstandard level used when the contract asks for Zstd without a level.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// Parquet writer options of a contract (`[parquet]`).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ParquetOptions {
    /// `snappy` (default) or `zstd`.
    #[serde(default)]
    pub compression: Codec,
    /// Zstandard level, 1 to 22 (only with `zstd`; default [`DEFAULT_ZSTD_LEVEL`]).
    #[serde(default)]
    pub zstd_level: Option<i32>,
}

impl ParquetOptions {
    /// The codec's name as the data dictionary and the manifests show it (`snappy`, `zstd(3)`).
    pub fn describe(&self) -> String {
        match self.compression {
            Codec::Snappy => "snappy".into(),
            Codec::Zstd => format!("zstd({})", self.zstd_level.unwrap_or(DEFAULT_ZSTD_LEVEL)),
        }
    }
}

/// The period of pseudonymous customer keys.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KeyPeriod {
    /// One key per customer and month (`YYYY-MM` of the local sale month).
    #[default]
    Month,
    /// One key per customer for the whole contract.
    Contract,
}

/// A brand the partner bought, with its segment.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Brand {
    /// Brand as in the cleaned product table (case-sensitive).
    pub name: String,
    /// Segment as in the cleaned product table.
    pub segment: String,
}

/// Pseudonymization settings.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Pseudonymization {
    /// Which secret: named in every manifest.
    pub key_version: String,
    /// Where the HMAC secret lives.
    pub secret: SecretRef,
}

/// A person to notify at the partner.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Contact {
    /// Name.
    pub name: String,
    /// E-mail address.
    pub email: String,
    /// Role, free text.
    #[serde(default)]
    pub role: Option<String>,
}

/// When a partner's products are due (`[delivery]`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DeliveryTerms {
    /// Local time (America/Sao_Paulo) by which the daily file is due, `HH:MM`.
    pub deadline: String,
}

/// A partner contract, validated.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Contract {
    /// Partner name: lower-case, used in file names; equals the file's stem.
    pub name: String,
    /// Name shown to people.
    pub display_name: String,
    /// Manufacturer as in the cleaned product table.
    pub manufacturer: String,
    /// Brands bought.
    pub brands: Vec<Brand>,
    /// Products bought.
    pub products: Vec<ProductKind>,
    /// File formats (both: one delivery carries both files).
    #[serde(default = "default_formats")]
    pub formats: Vec<Format>,
    /// Parquet writer options (compression).
    #[serde(default)]
    pub parquet: ParquetOptions,
    /// Minimum customers per cell.
    #[serde(default = "default_k")]
    pub k: u32,
    /// Period of customer keys.
    #[serde(default)]
    pub key_period: KeyPeriod,
    /// Days after a month whose batches may still correct it.
    #[serde(default = "default_late_days")]
    pub late_days: u32,
    /// Pseudonymization settings.
    pub pseudonymization: Pseudonymization,
    /// Where products are delivered.
    pub sinks: Vec<SinkConfig>,
    /// People at the partner.
    #[serde(default)]
    pub contacts: Vec<Contact>,
    /// When the products are due.
    pub delivery: DeliveryTerms,
}

fn default_formats() -> Vec<Format> {
    vec![Format::Parquet]
}

fn default_k() -> u32 {
    5
}

fn default_late_days() -> u32 {
    2
}

impl Contract {
    /// Reads and validates one contract file.
    pub fn load(path: &Path) -> Result<Contract, ContractError> {
        let text = std::fs::read_to_string(path).map_err(|source| ContractError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates contract text; `path` names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Contract, ContractError> {
        let c: Contract = toml::from_str(text).map_err(|e| ContractError::Parse {
            file: path.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        c.validate(path)?;
        Ok(c)
    }

    /// Checks what types cannot: names, ranges, addresses, references, duplicates.
    pub fn validate(&self, path: &Path) -> Result<(), ContractError> {
        let bad = |field: &str, problem: &str| {
            Err(ContractError::Invalid {
                file: path.to_path_buf(),
                field: field.to_string(),
                problem: problem.to_string(),
            })
        };
        let name_ok = !self.name.is_empty()
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            return bad("name", "must be lower-case letters, digits and '-'");
        }
        if let Some(stem) = path.file_stem().and_then(|s| s.to_str())
            && path.extension().is_some_and(|e| e == "toml")
            && stem != self.name
        {
            return bad("name", &format!("must equal the file name ({stem})"));
        }
        if self.display_name.trim().is_empty() {
            return bad("display_name", "must not be empty");
        }
        if self.manufacturer.trim().is_empty() {
            return bad("manufacturer", "must not be empty");
        }
        if self.brands.is_empty() {
            return bad("brands", "must list at least one brand");
        }
        let mut seen = BTreeSet::new();
        for (i, b) in self.brands.iter().enumerate() {
            if b.name.trim().is_empty() {
                return bad(&format!("brands[{i}].name"), "must not be empty");
            }
            if b.segment.trim().is_empty() {
                return bad(&format!("brands[{i}].segment"), "must not be empty");
            }
            if !seen.insert((&b.name, &b.segment)) {
                return bad(&format!("brands[{i}]"), "duplicate brand and segment");
            }
        }
        if self.products.is_empty() {
            return bad(
                "products",
                "must list at least one of daily, monthly, monthly_brands",
            );
        }
        if self.products.iter().collect::<BTreeSet<_>>().len() != self.products.len() {
            return bad("products", "duplicate product");
        }
        if self.formats.is_empty() {
            return bad("formats", "must list parquet, csv or both");
        }
        if self.formats.iter().collect::<BTreeSet<_>>().len() != self.formats.len() {
            return bad("formats", "duplicate format");
        }
        match (self.parquet.compression, self.parquet.zstd_level) {
            (Codec::Snappy, Some(_)) => {
                return bad("parquet.zstd_level", "only with compression = \"zstd\"");
            }
            (Codec::Zstd, Some(l)) if !(1..=22).contains(&l) => {
                return bad("parquet.zstd_level", "must be 1 to 22");
            }
            _ => {}
        }
        if self.k < 2 {
            return bad("k", "must be at least 2");
        }
        if self.late_days > 31 {
            return bad("late_days", "must be at most 31");
        }
        let kv = &self.pseudonymization.key_version;
        if kv.is_empty()
            || !kv
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return bad(
                "pseudonymization.key_version",
                "must be a non-empty name of letters, digits, '-', '_', '.'",
            );
        }
        check_secret_ref(
            path,
            "pseudonymization.secret",
            &self.pseudonymization.secret,
        )?;
        if self.sinks.is_empty() {
            return bad("sinks", "must list at least one sink");
        }
        let mut names = BTreeSet::new();
        for (i, s) in self.sinks.iter().enumerate() {
            let field = format!("sinks[{i}]");
            if !names.insert(s.name()) {
                return bad(&field, &format!("duplicate sink of type {}", s.name()));
            }
            match s {
                SinkConfig::Sftp(x) => {
                    if x.host.trim().is_empty() {
                        return bad(&format!("{field}.host"), "must not be empty");
                    }
                    if x.port == 0 {
                        return bad(&format!("{field}.port"), "must not be 0");
                    }
                    if x.user.trim().is_empty() {
                        return bad(&format!("{field}.user"), "must not be empty");
                    }
                    if !x.root.starts_with('/') {
                        return bad(&format!("{field}.root"), "must be an absolute path");
                    }
                    let hk = x.host_key.trim();
                    let pinned = hk.starts_with("SHA256:")
                        || hk.starts_with("ssh-")
                        || hk.starts_with("ecdsa-");
                    if !pinned {
                        return bad(
                            &format!("{field}.host_key"),
                            "must be an OpenSSH public key line or a SHA256: fingerprint",
                        );
                    }
                    check_secret_ref(path, &format!("{field}.private_key"), &x.private_key)?;
                    if let Some(p) = &x.passphrase {
                        check_secret_ref(path, &format!("{field}.passphrase"), p)?;
                    }
                }
                SinkConfig::Api(x) => {
                    let rest = x.base_url.strip_prefix("https://").unwrap_or("");
                    if rest.is_empty() || rest.contains(char::is_whitespace) {
                        return bad(&format!("{field}.base_url"), "must be an https:// URL");
                    }
                    match &x.auth {
                        ApiAuth::Basic { user, password } => {
                            if user.trim().is_empty() {
                                return bad(&format!("{field}.auth.user"), "must not be empty");
                            }
                            check_secret_ref(path, &format!("{field}.auth.password"), password)?;
                        }
                        ApiAuth::Bearer { token } => {
                            check_secret_ref(path, &format!("{field}.auth.token"), token)?;
                        }
                    }
                }
                SinkConfig::Email(x) => {
                    if self.contacts.is_empty() {
                        return bad("contacts", "an email sink needs at least one contact");
                    }
                    if let Some(r) = &x.reply_to
                        && validators::email(r).is_err()
                    {
                        return bad(&format!("{field}.reply_to"), "not an e-mail address");
                    }
                }
            }
        }
        for (i, c) in self.contacts.iter().enumerate() {
            if c.name.trim().is_empty() {
                return bad(&format!("contacts[{i}].name"), "must not be empty");
            }
            if validators::email(&c.email).is_err() {
                return bad(&format!("contacts[{i}].email"), "not an e-mail address");
            }
        }
        if parse_hh_mm(&self.delivery.deadline).is_none() {
            return bad(
                "delivery.deadline",
                "must be a local time HH:MM (00:00-23:59)",
            );
        }
        Ok(())
    }

    /// Returns true when the contract bought this product.
    pub fn buys(&self, product: ProductKind) -> bool {
        self.products.contains(&product)
    }

    /// The products of a month the contract bought (monthly aggregate, brand view), in order.
    pub fn monthly_products(&self) -> Vec<ProductKind> {
        ProductKind::ALL
            .into_iter()
            .filter(|k| k.is_monthly() && self.buys(*k))
            .collect()
    }

    /// Returns true when (brand, segment) is one of the contract's brands.
    pub fn covers(&self, brand: &str, segment: &str) -> bool {
        self.brands
            .iter()
            .any(|b| b.name == brand && b.segment == segment)
    }

    /// The segments of the contract's brands, sorted.
    pub fn segments(&self) -> BTreeSet<&str> {
        self.brands.iter().map(|b| b.segment.as_str()).collect()
    }

    /// Reads the pseudonymization secret; fails clearly when it is missing or too short.
    pub fn hmac_secret(&self) -> Result<Secret, ContractError> {
        let what = "pseudonymization.secret";
        let s = self.pseudonymization.secret.read(&self.name, what)?;
        if s.expose().len() < MIN_SECRET_BYTES {
            return Err(ContractError::Secret {
                partner: self.name.clone(),
                what: what.into(),
                problem: format!(
                    "{} holds fewer than {MIN_SECRET_BYTES} bytes",
                    self.pseudonymization.secret.describe()
                ),
            });
        }
        Ok(s)
    }
}

fn check_secret_ref(path: &Path, field: &str, r: &SecretRef) -> Result<(), ContractError> {
    let bad_env = r
        .env
        .as_ref()
        .is_some_and(|v| v.is_empty() || v.contains('=') || v.contains('\0'));
    let bad_file = r.file.as_ref().is_some_and(|p| p.as_os_str().is_empty());
    let problem = if bad_env {
        "env must name an environment variable"
    } else if bad_file {
        "file must name a file"
    } else if r.env.is_none() && r.file.is_none() {
        "set env, file or both (a reference, never the secret itself)"
    } else {
        return Ok(());
    };
    Err(ContractError::Invalid {
        file: path.to_path_buf(),
        field: field.to_string(),
        problem: problem.to_string(),
    })
}

/// Parses `HH:MM` (24 h).
pub fn parse_hh_mm(s: &str) -> Option<(u32, u32)> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let h: u32 = h.parse().ok()?;
    let m: u32 = m.parse().ok()?;
    (h < 24 && m < 60).then_some((h, m))
}

/// Loads every `*.toml` contract of a folder, sorted by file name; rejects duplicate names.
pub fn load_dir(dir: &Path) -> Result<Vec<Contract>, ContractError> {
    let read_err = |source| ContractError::Read {
        file: dir.to_path_buf(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    let mut out: Vec<Contract> = Vec::with_capacity(files.len());
    for f in files {
        let c = Contract::load(&f)?;
        if out.iter().any(|o| o.name == c.name) {
            return Err(ContractError::Invalid {
                file: f,
                field: "name".into(),
                problem: format!("another contract is named {}", c.name),
            });
        }
        out.push(c);
    }
    Ok(out)
}

/// Loads the folder's contracts (all validated) and returns the one named `name`.
pub fn find(dir: &Path, name: &str) -> Result<Contract, ContractError> {
    load_dir(dir)?
        .into_iter()
        .find(|c| c.name == name)
        .ok_or_else(|| ContractError::UnknownPartner {
            name: name.to_string(),
            dir: dir.to_path_buf(),
        })
}

/// A test partner, Acme (one brand, k = 2, an API sink), buying `product`.
#[cfg(test)]
pub(crate) fn acme_buying(product: &str) -> Contract {
    let text = format!(
        r#"
name = "acme"
display_name = "Acme"
manufacturer = "Acme"
brands = [{{ name = "Zap", segment = "Sucos" }}]
products = ["{product}"]
k = 2
[pseudonymization]
key_version = "v1"
secret = {{ env = "ACME_KEY" }}
[[sinks]]
type = "api"
base_url = "https://x.example"
auth = {{ type = "bearer", token = {{ env = "T" }} }}
[delivery]
deadline = "08:00"
"#
    );
    Contract::parse(Path::new("acme.toml"), &text).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
name = "acme"
display_name = "Acme"
manufacturer = "Acme"
brands = [{ name = "Zap", segment = "Sucos" }]
products = ["monthly"]
formats = ["csv"]
k = 5
[pseudonymization]
key_version = "v1"
secret = { env = "ACME_KEY" }
[[sinks]]
type = "email"
[[contacts]]
name = "Dados"
email = "dados@acme.example"
[delivery]
deadline = "08:00"
"#;

    fn parse(text: &str) -> Result<Contract, ContractError> {
        Contract::parse(Path::new("partners/acme.toml"), text)
    }

    #[test]
    fn base_contract_is_valid() {
        let c = parse(BASE).unwrap();
        assert_eq!(c.k, 5);
        assert_eq!(c.late_days, 2);
        assert_eq!(c.key_period, KeyPeriod::Month);
        assert_eq!(c.parquet.describe(), "snappy");
        let z =
            parse(&BASE.replace("k = 5", "k = 5\nparquet = { compression = \"zstd\" }")).unwrap();
        assert_eq!(z.parquet.describe(), "zstd(3)");
        assert!(c.covers("Zap", "Sucos") && !c.covers("zap", "Sucos"));
    }

    #[test]
    fn errors_name_file_field_and_problem() {
        let cases = [
            ("k = 5", "k = 1", "k: must be at least 2"),
            (
                "brands = [{ name = \"Zap\", segment = \"Sucos\" }]",
                "brands = []",
                "brands: must list at least one brand",
            ),
            (
                "email = \"dados@acme.example\"",
                "email = \"dados at acme\"",
                "contacts[0].email: not an e-mail address",
            ),
            (
                "deadline = \"08:00\"",
                "deadline = \"8h\"",
                "delivery.deadline: must be a local time",
            ),
            (
                "secret = { env = \"ACME_KEY\" }",
                "secret = {}",
                "pseudonymization.secret: set env, file or both",
            ),
            (
                "formats = [\"csv\"]",
                "formats = []",
                "formats: must list parquet, csv or both",
            ),
            (
                "type = \"email\"",
                "type = \"email\"\n[[sinks]]\ntype = \"email\"",
                "sinks[1]: duplicate sink of type email",
            ),
            (
                "name = \"acme\"",
                "name = \"other\"",
                "name: must equal the file name",
            ),
            ("k = 5", "k = 5\ncolour = \"red\"", "unknown field `colour`"),
            (
                "k = 5",
                "k = 5\nparquet = { compression = \"zstd\", zstd_level = 23 }",
                "parquet.zstd_level: must be 1 to 22",
            ),
            (
                "k = 5",
                "k = 5\nparquet = { zstd_level = 3 }",
                "parquet.zstd_level: only with compression",
            ),
            (
                "k = 5",
                "k = 5\nparquet = { compression = \"gzip\" }",
                "unknown variant `gzip`",
            ),
        ];
        for (from, to, expected) in cases {
            let text = BASE.replacen(from, to, 1);
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.starts_with("partners/acme.toml: "), "{e}");
            assert!(e.contains(expected), "{expected:?} not in {e:?}");
        }
    }

    #[test]
    fn secrets_print_stars_and_missing_ones_fail_clearly() {
        let s = Secret::new(b"very secret".to_vec());
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        let c = parse(&BASE.replace("ACME_KEY", "DATASHARE_TEST_UNSET_KEY_9f2c")).unwrap();
        let e = c.hmac_secret().unwrap_err().to_string();
        assert_eq!(
            e,
            "secret pseudonymization.secret of partner acme: environment variable \
             DATASHARE_TEST_UNSET_KEY_9f2c is not set (or not UTF-8)"
        );

        // Both: the variable when set, else the file (a Secret Manager mount on Cloud Run).
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("value");
        std::fs::write(&file, "from-the-file\n").unwrap();
        let both = |var: &str| SecretRef {
            env: Some(var.into()),
            file: Some(file.clone()),
        };
        let got = both("DATASHARE_TEST_UNSET_KEY_9f2c")
            .read("acme", "k")
            .unwrap();
        assert_eq!(got.expose(), b"from-the-file");
        let got = both("PATH").read("acme", "k").unwrap();
        assert_eq!(
            got.expose(),
            std::env::var("PATH").unwrap().trim().as_bytes()
        );
        std::fs::remove_file(&file).unwrap();
        let e = both("DATASHARE_TEST_UNSET_KEY_9f2c")
            .read("acme", "k")
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not set (or not UTF-8) and file"), "{e}");
    }

    #[test]
    fn shipped_contracts_are_valid() {
        // At run time: the test binary may come from a target directory another checkout built.
        let root = std::env::var("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into());
        let dir = Path::new(&root).join("partners");
        let c = find(&dir, "ouchhungry").unwrap();
        assert_eq!(c.manufacturer, "OuchHungry");
        assert!(c.covers("Hungry", "Refrigerantes") && c.covers("Ouch", "Salgadinhos"));
        let sinks: Vec<_> = c.sinks.iter().map(SinkConfig::name).collect();
        assert_eq!(sinks, ["sftp", "api", "email"]);
    }

    #[test]
    fn deadlines() {
        assert_eq!(parse_hh_mm("08:00"), Some((8, 0)));
        assert_eq!(parse_hh_mm("23:59"), Some((23, 59)));
        assert_eq!(parse_hh_mm("24:00"), None);
        assert_eq!(parse_hh_mm("8:00"), None);
    }
}
