//! The privacy gate: the last check before a product file is released.
//!
//! It refuses a file with a forbidden column name, a column it does not know, a free-text cell
//! holding an e-mail address, a CPF with valid check digits or a Brazilian phone number, or a
//! fixed-format cell (keys, codes, states, months) that does not match its format. Typed columns
//! (numbers, dates, timestamps) cannot hold text and are not scanned; keys are checked as exactly
//! 16 lower-case hex characters, so they never trip the text scan.

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch};

use super::FastSet;
use super::schema::{ColType, ProductSchema};
use crate::br;
use crate::clean::validators;
use crate::events::{Alert, Severity};

/// Column names that never leave the company (compared case-insensitively).
pub const FORBIDDEN_COLUMNS: &[&str] = &[
    "customer_id",
    "order_id",
    "transaction_id",
    "name",
    "customer_name",
    "email",
    "e_mail",
    "cpf",
    "phone",
    "telefone",
    "birth_date",
    "cep",
    "delivery_cep",
];

/// Findings reported per file at most (the first ones, in column then row order).
pub const MAX_FINDINGS: usize = 20;

/// The gate refused a file.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// Personal data or a malformed fixed-format value was found.
    #[error("privacy gate refused {file}: {first}")]
    Refused {
        /// The file refused.
        file: String,
        /// The first finding, as text.
        first: String,
        /// Every finding (at most [`MAX_FINDINGS`]).
        findings: Vec<Finding>,
        /// The alert raised.
        alert: Box<Alert>,
    },
}

/// What the gate found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindingKind {
    /// A column whose name is personal data.
    ForbiddenColumn,
    /// A column the product schema does not define.
    UnknownColumn,
    /// An e-mail address in a free-text cell.
    Email,
    /// A CPF with valid check digits in a free-text cell.
    Cpf,
    /// A Brazilian phone number in a free-text cell.
    Phone,
    /// A fixed-format cell that does not match its format.
    BadFormat,
}

impl FindingKind {
    /// A short name for messages and alert details.
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::ForbiddenColumn => "forbidden_column",
            FindingKind::UnknownColumn => "unknown_column",
            FindingKind::Email => "email",
            FindingKind::Cpf => "cpf",
            FindingKind::Phone => "phone",
            FindingKind::BadFormat => "bad_format",
        }
    }
}

/// One finding: the column, the row (from 1; none for a column-level finding) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Column name.
    pub column: String,
    /// Data row, counted from 1.
    pub row: Option<usize>,
    /// What was found.
    pub kind: FindingKind,
}

impl Finding {
    /// The finding in pt-BR, for the team's alert e-mails.
    pub fn pt_br(&self) -> String {
        match self.row {
            Some(r) => format!(
                "{} na coluna {} linha {}",
                self.kind.as_str(),
                self.column,
                r
            ),
            None => format!("{} na coluna {}", self.kind.as_str(), self.column),
        }
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.row {
            Some(r) => write!(
                f,
                "{} in column {} row {}",
                self.kind.as_str(),
                self.column,
                r
            ),
            None => write!(f, "{} column {}", self.kind.as_str(), self.column),
        }
    }
}

/// What the gate checks a file for, and where the alert points.
#[derive(Debug, Clone, Copy)]
pub struct GateTarget<'a> {
    /// Partner.
    pub partner: &'a str,
    /// Product (`daily`, `monthly`).
    pub product: &'a str,
    /// Period.
    pub period: &'a str,
    /// File name.
    pub file: &'a str,
}

/// Scans a batch against its product schema; returns the findings (empty: the file may go).
pub fn scan(schema: &ProductSchema, batch: &RecordBatch) -> Vec<Finding> {
    let mut scanner = Scanner::new(schema);
    scanner.scan(batch);
    scanner.findings()
}

/// Scans the batches of one file in order: the findings are those of one scan of all their
/// rows (row numbers count from the file's first row), so a file can be gated as it is written.
pub struct Scanner<'s> {
    schema: &'s ProductSchema,
    rows: usize,
    found: Vec<(usize, Finding)>,
}

impl<'s> Scanner<'s> {
    /// A scanner for files of `schema`.
    pub fn new(schema: &'s ProductSchema) -> Self {
        Scanner {
            schema,
            rows: 0,
            found: Vec::new(),
        }
    }

    /// Scans the next batch of rows.
    pub fn scan(&mut self, batch: &RecordBatch) {
        let first = self.rows == 0;
        self.found
            .extend(scan_batch(self.schema, batch, self.rows, first));
        self.rows += batch.num_rows();
    }

    /// True once a finding was made.
    pub fn found(&self) -> bool {
        !self.found.is_empty()
    }

    /// The findings by column, then row (at most [`MAX_FINDINGS`]).
    pub fn findings(mut self) -> Vec<Finding> {
        // Each batch listed its first findings column by column: sorting by column (stable, so
        // rows stay in order) and cutting gives the first findings of one whole-file scan.
        self.found.sort_by_key(|(j, _)| *j);
        self.found.truncate(MAX_FINDINGS);
        self.found.into_iter().map(|(_, f)| f).collect()
    }
}

/// Scans one batch whose first row is the file's row `offset + 1`; column findings only when
/// `first`. Returns (column index, finding), column by column.
fn scan_batch(
    schema: &ProductSchema,
    batch: &RecordBatch,
    offset: usize,
    first: bool,
) -> Vec<(usize, Finding)> {
    let mut out = Vec::new();
    for (j, field) in batch.schema().fields().iter().enumerate() {
        if out.len() >= MAX_FINDINGS {
            break;
        }
        let name = field.name();
        let lower = name.to_ascii_lowercase();
        if FORBIDDEN_COLUMNS.contains(&lower.as_str()) {
            if first {
                out.push((j, column_finding(name, FindingKind::ForbiddenColumn)));
            }
            continue;
        }
        let Some(def) = schema.columns.iter().find(|c| c.name == name.as_str()) else {
            if first {
                out.push((j, column_finding(name, FindingKind::UnknownColumn)));
            }
            continue;
        };
        if field.data_type() != &def.ty.arrow() {
            if first {
                out.push((j, column_finding(name, FindingKind::BadFormat)));
            }
            continue;
        }
        let col = batch.column(j);
        let Some(strings) = col.as_string_opt::<i32>() else {
            continue; // numbers, dates and timestamps are typed: nothing to scan
        };
        let mut clean: FastSet<&str> = FastSet::default();
        for r in 0..strings.len() {
            if strings.is_null(r) {
                continue;
            }
            let v = strings.value(r);
            let kind = match def.ty {
                ColType::Key => (!is_key(v)).then_some(FindingKind::BadFormat),
                ColType::ProductCode => (!is_product_code(v)).then_some(FindingKind::BadFormat),
                ColType::Uf => (!br::is_uf(v)).then_some(FindingKind::BadFormat),
                ColType::Month => (!is_month(v)).then_some(FindingKind::BadFormat),
                _ => {
                    if clean.contains(v) {
                        None
                    } else {
                        let k = personal_data_in(v);
                        if k.is_none() {
                            clean.insert(v);
                        }
                        k
                    }
                }
            };
            if let Some(kind) = kind {
                out.push((
                    j,
                    Finding {
                        column: name.clone(),
                        row: Some(offset + r + 1),
                        kind,
                    },
                ));
                if out.len() >= MAX_FINDINGS {
                    break;
                }
            }
        }
    }
    out
}

fn column_finding(name: &str, kind: FindingKind) -> Finding {
    Finding {
        column: name.to_string(),
        row: None,
        kind,
    }
}

/// Scans a batch; on a finding, logs an alert and refuses the file.
pub fn check(
    schema: &ProductSchema,
    batch: &RecordBatch,
    target: GateTarget<'_>,
) -> Result<(), GateError> {
    refuse(scan(schema, batch), target)
}

/// With findings, logs an alert and refuses the file; without, lets it go.
pub fn refuse(findings: Vec<Finding>, target: GateTarget<'_>) -> Result<(), GateError> {
    let Some(first) = findings.first() else {
        return Ok(());
    };
    let alert = Alert::new(
        Severity::Critical,
        "privacy.gate",
        (target.partner, target.product, target.period),
        &format!("{}|{}|{}", target.file, first.column, first.kind.as_str()),
        format!(
            "o portão de privacidade reteve {} de {}: {}",
            target.file,
            target.partner,
            first.pt_br()
        ),
    )
    .with("file", target.file)
    .with("column", first.column.as_str())
    .with("row", first.row.map(|r| r as u64))
    .with("finding", first.kind.as_str())
    .with(
        "findings",
        findings.iter().map(Finding::pt_br).collect::<Vec<_>>(),
    )
    .with(
        "action",
        "corrija a origem ou a definição do produto e reconstrua; o arquivo não foi liberado",
    );
    alert.log();
    Err(GateError::Refused {
        file: target.file.to_string(),
        first: first.to_string(),
        findings,
        alert: Box::new(alert),
    })
}

/// Returns true for exactly 16 lower-case hex characters.
pub fn is_key(s: &str) -> bool {
    s.len() == 16
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Returns true for a product code `AAA-999999`.
pub fn is_product_code(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[..3].iter().all(u8::is_ascii_uppercase)
        && b[3] == b'-'
        && b[4..].iter().all(u8::is_ascii_digit)
}

fn is_month(s: &str) -> bool {
    chrono::NaiveDate::parse_from_str(&format!("{s}-01"), "%Y-%m-%d").is_ok() && s.len() == 7
}

/// Finds an e-mail address, a valid CPF or a Brazilian phone number inside free text.
pub fn personal_data_in(s: &str) -> Option<FindingKind> {
    if s.contains('@') && has_email(s) {
        return Some(FindingKind::Email);
    }
    if s.bytes().filter(u8::is_ascii_digit).count() >= 10 {
        return digits_finding(s);
    }
    None
}

fn is_email_boundary(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            ',' | ';' | '<' | '>' | '(' | ')' | '[' | ']' | '"' | '\'' | ':' | '/'
        )
}

fn has_email(s: &str) -> bool {
    s.match_indices('@').any(|(at, _)| {
        let start = s[..at]
            .char_indices()
            .rev()
            .find(|&(_, c)| is_email_boundary(c))
            .map_or(0, |(i, c)| i + c.len_utf8());
        let end = s[at..]
            .char_indices()
            .find(|&(_, c)| is_email_boundary(c))
            .map_or(s.len(), |(i, _)| at + i);
        let candidate = s[start..end].trim_end_matches(['.', '!', '?']);
        validators::email(candidate).is_ok()
    })
}

/// Separators allowed between the digit groups of one number.
fn is_number_separator(b: u8) -> bool {
    matches!(b, b' ' | b'.' | b'-' | b'(' | b')' | b'/')
}

fn digits_finding(s: &str) -> Option<FindingKind> {
    let b = s.as_bytes();
    // Maximal runs of ASCII digits, as byte ranges.
    let mut groups: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            groups.push((start, i));
        } else {
            i += 1;
        }
    }
    for gi in 0..groups.len() {
        let mut digits = 0;
        for gj in gi..groups.len() {
            if gj > gi {
                let gap = &b[groups[gj - 1].1..groups[gj].0];
                if gap.is_empty() || gap.len() > 3 || !gap.iter().all(|&c| is_number_separator(c)) {
                    break;
                }
            }
            digits += groups[gj].1 - groups[gj].0;
            if digits > 13 {
                break;
            }
            let (start, end) = (groups[gi].0, groups[gj].1);
            let candidate = &s[start..end];
            if digits == 11 && validators::cpf(candidate).is_ok() {
                return Some(FindingKind::Cpf);
            }
            if digits >= 10 && validators::phone(candidate).is_ok() {
                return Some(FindingKind::Phone);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::ProductKind;
    use crate::products::schema::{self, Cell};

    #[test]
    fn free_text_findings() {
        let cases: &[(&str, Option<FindingKind>)] = &[
            ("Ouch Original 96g", None),
            ("Hungry Cola 2L", None),
            ("São Paulo", None),
            ("Refrigerante 350ml pack 12", None),
            ("contato: maria.silva@example.com", Some(FindingKind::Email)),
            ("MARIA@EXAMPLE.COM.BR.", Some(FindingKind::Email)),
            ("a @ b", None),
            ("cpf 529.982.247-25 aqui", Some(FindingKind::Cpf)),
            ("52998224725", Some(FindingKind::Cpf)),
            ("lote 12 529.982.247-25", Some(FindingKind::Cpf)),
            ("529.982.247-26", None),
            ("ligue (11) 91234-5678", Some(FindingKind::Phone)),
            ("+55 11 91234 5678", Some(FindingKind::Phone)),
            ("11912345678", Some(FindingKind::Phone)),
            ("tel 1133334444", Some(FindingKind::Phone)),
            ("EAN 7891234567895", None),
            ("00 91234-5678", None),
        ];
        for (text, expected) in cases {
            assert_eq!(personal_data_in(text), *expected, "{text:?}");
        }
    }

    fn daily_row(name: &str, key: &str) -> Vec<Cell> {
        vec![
            Cell::Date(20_000),
            Cell::Micros(1_700_000_000_000_000),
            Cell::Str(key.into()),
            Cell::Str(key.into()),
            Cell::Str("OHB-000101".into()),
            Cell::Str(name.into()),
            Cell::Str("Hungry".into()),
            Cell::Str("Refrigerantes".into()),
            Cell::Null,
            Cell::I64(1),
            Cell::Cents(799),
            Cell::Cents(0),
            Cell::Cents(799),
            Cell::Str("Campinas".into()),
            Cell::Str("SP".into()),
        ]
    }

    #[test]
    fn planted_values_are_refused_with_column_and_row() {
        let s = schema::of(ProductKind::Daily);
        let rows = vec![
            daily_row("Hungry Cola", "0123456789abcdef"),
            daily_row("Hungry Cola falar com 11 98765-4321", "0123456789abcdef"),
        ];
        let batch = s.to_batch(&rows).unwrap();
        let target = GateTarget {
            partner: "p",
            product: "daily",
            period: "2026-11-27",
            file: "p_daily_2026-11-27.parquet",
        };
        let e = check(s, &batch, target).unwrap_err();
        let GateError::Refused {
            findings, alert, ..
        } = e;
        assert_eq!(
            findings,
            [Finding {
                column: "product_name".into(),
                row: Some(2),
                kind: FindingKind::Phone
            }]
        );
        assert_eq!(alert.kind, "privacy.gate");
        assert_eq!(alert.details["row"], 2);
        let again = check(s, &batch, target).unwrap_err();
        let GateError::Refused { alert: a2, .. } = again;
        assert_eq!(alert.fingerprint, a2.fingerprint);
        assert!(!serde_json::to_string(&*alert).unwrap().contains("98765"));
    }

    /// Scanning a file chunk by chunk finds what one scan of all its rows finds, row numbers
    /// counted from the file's start, at most MAX_FINDINGS, column by column.
    #[test]
    fn chunked_scans_find_what_one_scan_finds() {
        let s = schema::of(ProductKind::Daily);
        let mut rows: Vec<Vec<Cell>> = (0..100)
            .map(|_| daily_row("Hungry Cola", "0123456789abcdef"))
            .collect();
        for i in [3, 40, 41, 97] {
            rows[i][5] = Cell::Str("Hungry Cola (11) 98765-4321".into());
        }
        for i in [2, 60] {
            rows[i][2] = Cell::Str("C-004512".into());
        }
        for r in &mut rows[70..] {
            r[13] = Cell::Str("joana.souza@example.com".into());
        }
        let whole = scan(s, &s.to_batch(&rows).unwrap());
        assert_eq!(whole.len(), MAX_FINDINGS);
        assert_eq!(
            (whole[0].column.as_str(), whole[0].row),
            ("line_key", Some(3))
        );
        for size in [1, 7, 33, 100] {
            let mut scanner = Scanner::new(s);
            for chunk in rows.chunks(size) {
                scanner.scan(&s.to_batch(chunk).unwrap());
            }
            assert_eq!(scanner.findings(), whole, "chunks of {size}");
        }
    }

    #[test]
    fn malformed_keys_are_refused() {
        let s = schema::of(ProductKind::Daily);
        let batch = s.to_batch(&[daily_row("x", "C-004512")]).unwrap();
        let f = scan(s, &batch);
        assert_eq!(f[0].column, "line_key");
        assert_eq!(f[0].kind, FindingKind::BadFormat);
    }

    /// A million real keys never trip the gate (they are checked by format, not scanned).
    #[test]
    fn one_million_keys_never_trip_the_gate() {
        use crate::config::secret::Secret;
        use crate::products::contract::KeyPeriod;
        use crate::products::pseudonym::Pseudonymizer;
        let secret: Vec<u8> = (0..32).map(|i| (i * 37 + 11) as u8).collect();
        let p = Pseudonymizer::new(&Secret::new(secret), KeyPeriod::Month).unwrap();
        let s = schema::of(ProductKind::Daily);
        let base = daily_row("Hungry Cola", "0123456789abcdef");
        let mut rows = Vec::with_capacity(100_000);
        let mut scanned_as_text_would_trip = 0usize;
        for chunk in 0..10 {
            rows.clear();
            for i in 0..100_000 {
                let n = chunk * 100_000 + i;
                let mut r = base.clone();
                let line = p.line_key(&format!("TX-{n:07}"));
                let customer = p.customer_key("2026-11", &format!("C-{n:07}"));
                if personal_data_in(&line).is_some() || personal_data_in(&customer).is_some() {
                    scanned_as_text_would_trip += 1;
                }
                r[2] = Cell::Str(line);
                r[3] = Cell::Str(customer);
                rows.push(r);
            }
            let batch = s.to_batch(&rows).unwrap();
            assert_eq!(scan(s, &batch), []);
        }
        // Why keys are format-checked: a few random hex keys look like numbers.
        eprintln!("keys that a text scan would have flagged: {scanned_as_text_would_trip}");
    }

    #[test]
    fn forbidden_columns_are_refused() {
        use arrow_array::{ArrayRef, StringArray};
        use std::sync::Arc;
        let s = schema::of(ProductKind::Daily);
        let batch = RecordBatch::try_from_iter([(
            "customer_id",
            Arc::new(StringArray::from(vec!["C-1"])) as ArrayRef,
        )])
        .unwrap();
        assert_eq!(scan(s, &batch)[0].kind, FindingKind::ForbiddenColumn);
    }
}
