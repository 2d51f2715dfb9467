//! Streams one table of one day into its parts: base rows, one injected defect on some rows,
//! duplicate and conflict groups, extra rows with fresh keys, late corrections; counts the truth.

use std::collections::BTreeMap;
use std::io::Write;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use rand::RngExt;
use rand_chacha::ChaCha8Rng;

use super::GenerateError;
use super::catalog::{Catalog, ean13};
use super::customers;
use super::defects::{GroupKind, Inject, apply_format, apply_invalid, kinds, reformat};
use super::schema::{Need, Row, Table};
use super::sink::ObjectSink;
use super::transactions::{LATE_EVERY, TxDay};
use super::truth::{DefectEntry, FieldCounts, FileSummary, TableSummary};
use super::values::{NULL_MARKERS, fmt_ts, local_midnight, parse_ts, sub_rng};
use super::writer::{Dialect, EXTRA_COLUMNS, PartWriter, Source};

/// Where the rows of a table come from, by index (so any row can be regenerated).
pub(crate) trait RowSource {
    /// The table generated.
    fn table(&self) -> Table;
    /// Number of base rows (the ones other tables may reference).
    fn base_len(&self) -> u64;
    /// Base row `i` as canonical texts.
    fn base_row(&mut self, i: u64) -> Row;
    /// Extra row `e` with a fresh key nobody references (carries quarantining defects).
    fn extra_row(&mut self, e: u64) -> Row;
    /// Late correction `k`, if the table has them.
    fn late_row(&mut self, _k: u64) -> Option<Row> {
        None
    }
    /// Changes a row's content (not its key) into another version.
    fn alter(&self, row: &mut Row, rng: &mut ChaCha8Rng);
    /// Returns an older and a newer `updated_at` for two versions of a row.
    fn conflict_times(&self, row: &Row, rng: &mut ChaCha8Rng) -> (DateTime<Utc>, DateTime<Utc>);
}

/// Order lines of a day.
pub(crate) struct TxSource<'a> {
    pub day: TxDay<'a>,
    pub date: NaiveDate,
    pub rows: u64,
}

impl RowSource for TxSource<'_> {
    fn table(&self) -> Table {
        Table::Transactions
    }
    fn base_len(&self) -> u64 {
        self.rows
    }
    fn base_row(&mut self, i: u64) -> Row {
        self.day.line(self.date, i)
    }
    fn extra_row(&mut self, e: u64) -> Row {
        self.day.line(self.date, self.rows + e)
    }
    fn late_row(&mut self, k: u64) -> Option<Row> {
        self.day.late_correction(self.date, self.rows, k)
    }
    fn alter(&self, row: &mut Row, rng: &mut ChaCha8Rng) {
        if row[7].as_deref() == Some("completed") {
            row[7] = Some(
                if rng.random_bool(0.5) {
                    "refunded"
                } else {
                    "cancelled"
                }
                .to_string(),
            );
        } else {
            let q: u64 = row[4].as_deref().and_then(|q| q.parse().ok()).unwrap_or(1);
            row[4] = Some((q + 1).to_string());
        }
    }
    fn conflict_times(&self, row: &Row, rng: &mut ChaCha8Rng) -> (DateTime<Utc>, DateTime<Utc>) {
        let day_end = local_midnight(self.date + Duration::days(1)) - Duration::seconds(1);
        let older = row[12].as_deref().and_then(parse_ts).unwrap_or(day_end);
        let newer = (older + Duration::minutes(rng.random_range(5..120))).min(day_end);
        if newer <= older {
            (newer - Duration::minutes(1), newer)
        } else {
            (older, newer)
        }
    }
}

/// The product snapshot.
pub(crate) struct ProductSource<'a> {
    pub catalog: &'a Catalog,
    pub seed: u64,
}

impl RowSource for ProductSource<'_> {
    fn table(&self) -> Table {
        Table::Products
    }
    fn base_len(&self) -> u64 {
        self.catalog.products.len() as u64
    }
    fn base_row(&mut self, i: u64) -> Row {
        self.catalog
            .products
            .get(i as usize)
            .map(|p| self.catalog.row(p))
            .unwrap_or_default()
    }
    fn extra_row(&mut self, e: u64) -> Row {
        let n = self.catalog.products.len().max(1);
        let Some(p) = self.catalog.products.get(e as usize % n) else {
            return Row::new();
        };
        let mut rng = sub_rng(self.seed, "product-extra", None, e);
        let mut row = self.catalog.row(p);
        let prefix = p.code.split('-').next().unwrap_or("XPR");
        row[0] = Some(format!("{prefix}-{:06}", 900_001 + e));
        row[1] = Some(ean13(&format!(
            "7899{:08}",
            rng.random_range(0..100_000_000u32)
        )));
        row[2] = Some(format!("{} Lançamento", p.name));
        row
    }
    fn alter(&self, row: &mut Row, _rng: &mut ChaCha8Rng) {
        let name = row[2].clone().unwrap_or_default();
        row[2] = Some(format!("{name} Nova Embalagem"));
    }
    fn conflict_times(&self, row: &Row, rng: &mut ChaCha8Rng) -> (DateTime<Utc>, DateTime<Utc>) {
        let newer = row[7].as_deref().and_then(parse_ts).unwrap_or_default();
        (newer - Duration::days(rng.random_range(1..90)), newer)
    }
}

/// The customer snapshot.
pub(crate) struct CustomerSource {
    pub seed: u64,
    pub date: NaiveDate,
    pub customers: u64,
}

impl RowSource for CustomerSource {
    fn table(&self) -> Table {
        Table::Customers
    }
    fn base_len(&self) -> u64 {
        self.customers
    }
    fn base_row(&mut self, i: u64) -> Row {
        customers::row(self.seed, i, self.date)
    }
    fn extra_row(&mut self, e: u64) -> Row {
        customers::row(self.seed, self.customers + e, self.date)
    }
    fn alter(&self, row: &mut Row, _rng: &mut ChaCha8Rng) {
        let email = row[2].clone().unwrap_or_default();
        let local = email.split('@').next().unwrap_or("cliente");
        row[2] = Some(format!("{local}@{}", super::people::other_domain(&email)));
    }
    fn conflict_times(&self, row: &Row, rng: &mut ChaCha8Rng) -> (DateTime<Utc>, DateTime<Utc>) {
        let newer = row[10].as_deref().and_then(parse_ts).unwrap_or_default();
        (newer - Duration::days(rng.random_range(1..90)), newer)
    }
}

/// The day-wide context a table is generated in.
pub(crate) struct DayCtx<'a> {
    pub seed: u64,
    pub date: NaiveDate,
    pub defect_rate: f64,
    pub gzip: bool,
    pub customers: u64,
    pub sink: &'a dyn ObjectSink,
    pub defects: &'a mut dyn Write,
    pub progress: &'a mut dyn FnMut(u64),
}

/// What the cleaner must see in one cell.
#[derive(Debug, Clone)]
enum State {
    Value(String),
    NullOptional,
    NullDefault(String),
    NullRequired,
    InvalidNull,
    InvalidQuarantine,
}

#[derive(Debug, Clone)]
struct Cell {
    /// Raw text when it differs from the canonical one (`None`: written as canonical, or empty for null).
    raw: Option<String>,
    state: State,
}

impl Cell {
    fn raw(&self) -> &str {
        match (&self.raw, &self.state) {
            (Some(r), _) => r,
            (None, State::Value(v)) => v,
            (None, _) => "",
        }
    }
}

/// Role of a row in a duplicate or conflict group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    ExactKept,
    ExactRemoved,
    Winner,
    Loser,
}

/// Version of a grouped row.
#[derive(Debug, Clone, Copy)]
enum V {
    Old,
    New,
    Tie,
    NullA,
    NullB,
}

#[derive(Debug, Clone)]
struct Note {
    kind: &'static str,
    detail: Option<&'static str>,
    column: Option<usize>,
    outcome: Outcome,
}

#[derive(Debug, Clone)]
enum Outcome {
    /// Decided from the cell states (`fixed`, `nulled`, `defaulted` or `quarantined`).
    FromCell,
    Role(Role),
    Kept,
}

struct OutRow {
    cells: Vec<Cell>,
    malformed: Option<bool>,
    reference: Option<&'static str>,
    note: Option<Note>,
}

fn cells_of(row: &Row) -> Vec<Cell> {
    row.iter()
        .map(|c| match c {
            Some(v) => Cell {
                raw: None,
                state: State::Value(v.clone()),
            },
            None => Cell {
                raw: None,
                state: State::NullOptional,
            },
        })
        .collect()
}

fn detail(kind: GroupKind) -> &'static str {
    match kind {
        GroupKind::Exact => "exact",
        GroupKind::ExactPlain => "exact_plain",
        GroupKind::NewerLater => "newer_later",
        GroupKind::NewerEarlier => "newer_earlier",
        GroupKind::TieEqual => "tie_equal",
        GroupKind::TieNull => "tie_null",
        GroupKind::Mixed => "mixed",
        GroupKind::CrossExact => "cross_exact",
        GroupKind::CrossNewerLater => "cross_newer_later",
        GroupKind::CrossNewerEarlier => "cross_newer_earlier",
        GroupKind::CrossTie => "cross_tie",
    }
}

/// Members of a group: those written at the base row, and those written in the next part.
fn members(kind: GroupKind, at_base: bool) -> &'static [(V, bool, Role)] {
    use Role::*;
    match (kind, at_base) {
        (GroupKind::Exact, _) => &[(V::Old, false, ExactKept), (V::Old, true, ExactRemoved)],
        (GroupKind::ExactPlain, _) => &[(V::Old, false, ExactKept), (V::Old, false, ExactRemoved)],
        (GroupKind::NewerLater, _) => &[(V::Old, false, Loser), (V::New, false, Winner)],
        (GroupKind::NewerEarlier, _) => &[(V::New, false, Winner), (V::Old, false, Loser)],
        (GroupKind::TieEqual, _) => &[(V::Old, false, Loser), (V::Tie, false, Winner)],
        (GroupKind::TieNull, _) => &[(V::NullA, false, Loser), (V::NullB, false, Winner)],
        (GroupKind::Mixed, _) => &[
            (V::Old, false, Loser),
            (V::Old, true, ExactRemoved),
            (V::New, false, Winner),
        ],
        (GroupKind::CrossExact, true) => &[(V::Old, false, ExactKept)],
        (GroupKind::CrossExact, false) => &[(V::Old, true, ExactRemoved)],
        (GroupKind::CrossNewerLater, true) => &[(V::Old, false, Loser)],
        (GroupKind::CrossNewerLater, false) => &[(V::New, false, Winner)],
        (GroupKind::CrossNewerEarlier, true) => &[(V::New, false, Winner)],
        (GroupKind::CrossNewerEarlier, false) => &[(V::Old, false, Loser)],
        (GroupKind::CrossTie, true) => &[(V::Old, false, Loser)],
        (GroupKind::CrossTie, false) => &[(V::Tie, false, Winner)],
    }
}

/// Returns the object name of part `p` of a table.
pub(crate) fn part_object(table: Table, date: NaiveDate, p: usize, gzip: bool) -> String {
    format!(
        "extracts/{}/dt={}/part-{:03}.csv{}",
        table.name(),
        date.format("%Y-%m-%d"),
        p,
        if gzip { ".gz" } else { "" }
    )
}

/// Generates every part of one table; returns the parts written and the table's counters.
pub(crate) fn run_table(
    ctx: &mut DayCtx<'_>,
    src: &mut dyn RowSource,
    parts: usize,
) -> Result<(Vec<FileSummary>, TableSummary), GenerateError> {
    let table = src.table();
    let tix = Table::ALL.iter().position(|&t| t == table).unwrap_or(0);
    let mut run = Run {
        table,
        counts: TableSummary {
            fields: table
                .columns()
                .iter()
                .map(|c| (c.name.to_string(), FieldCounts::default()))
                .collect(),
            ..TableSummary::default()
        },
        orphans: 0,
        rng: sub_rng(
            ctx.seed,
            &format!("defects-{}", table.name()),
            Some(ctx.date),
            0,
        ),
        unreported: 0,
    };
    let n = src.base_len();
    let parts = parts.max(1);
    let range = |p: usize| {
        (
            n * p as u64 / parts as u64,
            n * (p as u64 + 1) / parts as u64,
        )
    };
    let defects_on = ctx.defect_rate > 0.0;

    // Groups spanning two parts: a fixed, small plan per boundary.
    let mut cross: Vec<(u64, GroupKind, usize)> = Vec::new();
    if defects_on {
        let mut plan = sub_rng(
            ctx.seed,
            &format!("plan-{}", table.name()),
            Some(ctx.date),
            0,
        );
        for p in 0..parts.saturating_sub(1) {
            let (a, b) = range(p);
            if b - a < 2 * GroupKind::CROSS.len() as u64 {
                continue;
            }
            let mut chosen: Vec<u64> = Vec::new();
            while chosen.len() < GroupKind::CROSS.len() {
                let i = plan.random_range(a..b);
                if !chosen.contains(&i) {
                    chosen.push(i);
                }
            }
            for (i, kind) in chosen.into_iter().zip(GroupKind::CROSS) {
                cross.push((i, kind, p));
            }
        }
        cross.sort_by_key(|c| c.0);
    }

    let (base_kinds, extra_kinds) = kinds(table);
    let eligible = n - cross.len() as u64;
    let mut remaining_defects = if defects_on {
        ((ctx.defect_rate * n as f64).ceil() as u64)
            .max(base_kinds.len() as u64)
            .min(eligible)
    } else {
        0
    };
    let extras_total = if defects_on && !extra_kinds.is_empty() {
        let share = extra_kinds.len() as f64 / (extra_kinds.len() + base_kinds.len()) as f64;
        ((ctx.defect_rate * n as f64 * share).ceil() as u64).max(extra_kinds.len() as u64)
    } else {
        0
    };
    let mut remaining_eligible = eligible;
    let mut issued = 0usize;
    let mut files = Vec::new();

    for p in 0..parts {
        let object = part_object(table, ctx.date, p, ctx.gzip);
        let dialect = Dialect::for_part(tix, p, parts, defects_on, ctx.gzip);
        let declared: Vec<&str> = table.columns().iter().map(|c| c.name).collect();
        let w = ctx
            .sink
            .create(&object)
            .map_err(|e| GenerateError::io(&object, e))?;
        let layout_rng = sub_rng(
            ctx.seed,
            &format!("layout-{}", table.name()),
            Some(ctx.date),
            p as u64,
        );
        let (mut pw, order, header) = PartWriter::new(w, dialect, &declared, layout_rng)
            .map_err(|e| GenerateError::io(&object, e))?;
        let (a, b) = range(p);
        let remote: Vec<(u64, GroupKind)> = cross
            .iter()
            .filter(|c| p > 0 && c.2 == p - 1)
            .map(|c| (c.0, c.1))
            .collect();
        let remote_at: Vec<u64> = (0..remote.len() as u64)
            .map(|j| a + (j + 1) * (b - a) / (remote.len() as u64 + 1))
            .collect();
        let (e0, e1) = (
            extras_total * p as u64 / parts as u64,
            extras_total * (p as u64 + 1) / parts as u64,
        );
        let mut next_extra = e0;
        let mut next_remote = 0usize;

        for i in a..b {
            while next_remote < remote.len() && remote_at[next_remote] <= i {
                let (x, kind) = remote[next_remote];
                for out in run.group_rows(ctx, src, x, kind, false) {
                    run.emit(ctx, &mut pw, &object, out)?;
                }
                next_remote += 1;
            }
            if next_extra < e1 && run.rng.random_range(0..(b - i)) < e1 - next_extra {
                let out = run.extra(ctx, src, next_extra, &extra_kinds);
                run.emit(ctx, &mut pw, &object, out)?;
                next_extra += 1;
            }
            if let Ok(c) = cross.binary_search_by_key(&i, |c| c.0) {
                for out in run.group_rows(ctx, src, i, cross[c].1, true) {
                    run.emit(ctx, &mut pw, &object, out)?;
                }
            } else {
                let pick = remaining_defects > 0
                    && run.rng.random_range(0..remaining_eligible) < remaining_defects;
                remaining_eligible -= 1;
                if pick {
                    remaining_defects -= 1;
                    let kind = base_kinds[issued % base_kinds.len()];
                    issued += 1;
                    if let Inject::Group(g) = kind {
                        for out in run.group_rows(ctx, src, i, g, true) {
                            run.emit(ctx, &mut pw, &object, out)?;
                        }
                    } else {
                        let row = src.base_row(i);
                        let out = run.defect_row(ctx, row, kind);
                        run.emit(ctx, &mut pw, &object, out)?;
                    }
                } else {
                    let out = OutRow {
                        cells: cells_of(&src.base_row(i)),
                        malformed: None,
                        reference: None,
                        note: None,
                    };
                    run.emit(ctx, &mut pw, &object, out)?;
                }
            }
            if (i + 1).is_multiple_of(LATE_EVERY)
                && let Some(row) = src.late_row(i / LATE_EVERY)
            {
                let note = Note {
                    kind: "late_correction",
                    detail: None,
                    column: Some(7),
                    outcome: Outcome::Kept,
                };
                let out = OutRow {
                    cells: cells_of(&row),
                    malformed: None,
                    reference: None,
                    note: Some(note),
                };
                run.emit(ctx, &mut pw, &object, out)?;
            }
        }
        while next_remote < remote.len() {
            let (x, kind) = remote[next_remote];
            for out in run.group_rows(ctx, src, x, kind, false) {
                run.emit(ctx, &mut pw, &object, out)?;
            }
            next_remote += 1;
        }
        while next_extra < e1 {
            let out = run.extra(ctx, src, next_extra, &extra_kinds);
            run.emit(ctx, &mut pw, &object, out)?;
            next_extra += 1;
        }
        let (rows, non_ascii) = (pw.rows, pw.non_ascii);
        pw.finish().map_err(|e| GenerateError::io(&object, e))?;
        (ctx.progress)(std::mem::take(&mut run.unreported));
        files.push(FileSummary {
            object,
            table: table.name().to_string(),
            encoding: if dialect.latin1 && non_ascii {
                "windows-1252"
            } else {
                "utf-8"
            }
            .to_string(),
            delimiter: if dialect.semicolon { ";" } else { "," }.to_string(),
            crlf: dialect.crlf,
            bom: dialect.bom,
            gzip: dialect.gzip,
            extra_columns: order
                .iter()
                .filter_map(|s| match *s {
                    Source::Extra(e) => Some(EXTRA_COLUMNS[e].to_string()),
                    Source::Declared(_) => None,
                })
                .collect(),
            columns: order
                .iter()
                .map(|s| match *s {
                    Source::Extra(e) => EXTRA_COLUMNS[e].to_string(),
                    Source::Declared(i) => declared[i].to_string(),
                })
                .collect(),
            header,
            rows,
            rejected: None,
        });
    }
    let c = &mut run.counts;
    c.rows_kept = c.rows_read - c.rows_quarantined - c.duplicates_removed - c.conflicts_resolved;
    Ok((files, run.counts))
}

struct Run {
    table: Table,
    counts: TableSummary,
    orphans: u64,
    rng: ChaCha8Rng,
    unreported: u64,
}

impl Run {
    fn extra(
        &mut self,
        ctx: &DayCtx<'_>,
        src: &mut dyn RowSource,
        e: u64,
        kinds: &[Inject],
    ) -> OutRow {
        let row = src.extra_row(e);
        match kinds.get(e as usize % kinds.len().max(1)) {
            Some(&k) => self.defect_row(ctx, row, k),
            None => OutRow {
                cells: cells_of(&row),
                malformed: None,
                reference: None,
                note: None,
            },
        }
    }

    fn defect_row(&mut self, ctx: &DayCtx<'_>, mut row: Row, inject: Inject) -> OutRow {
        let t = self.table;
        let cols = t.columns();
        // Without a readable uf the city can only be title-cased: give such rows a city whose
        // title case is its official spelling, so both readings of the rule agree.
        if let (Inject::Null { col, .. } | Inject::Invalid { col, .. }, Some(uf), Some(city)) =
            (inject, t.col("uf"), t.col("city"))
            && col == uf
            && row[city].as_deref().is_some_and(|c| title_words(c) != c)
        {
            row[city] = Some("São Paulo".to_string());
        }
        let mut out = OutRow {
            cells: Vec::new(),
            malformed: None,
            reference: None,
            note: None,
        };
        let note = |kind, column| {
            Some(Note {
                kind,
                detail: None,
                column,
                outcome: Outcome::FromCell,
            })
        };
        match inject {
            Inject::Format { col, variant } => {
                let raw = apply_format(t, &mut row, col, variant, &mut self.rng);
                out.cells = cells_of(&row);
                out.cells[col].raw = Some(raw);
                out.note = note("format", Some(col));
            }
            Inject::Null { col, marker } => {
                out.cells = cells_of(&row);
                let state = match cols[col].need {
                    Need::Required => State::NullRequired,
                    Need::DefaultZero => State::NullDefault("0.00".to_string()),
                    Need::Optional | Need::Unspecified => State::NullOptional,
                };
                out.cells[col] = Cell {
                    raw: Some(NULL_MARKERS[marker % NULL_MARKERS.len()].to_string()),
                    state,
                };
                out.note = note("null_marker", Some(col));
            }
            Inject::Invalid { col, variant } => {
                let raw = apply_invalid(t, &row, col, variant);
                out.cells = cells_of(&row);
                let state = if cols[col].ty.invalid_quarantines() {
                    State::InvalidQuarantine
                } else {
                    State::InvalidNull
                };
                out.cells[col] = Cell {
                    raw: Some(raw),
                    state,
                };
                out.note = note("invalid", Some(col));
            }
            Inject::OrphanCustomer => {
                row[2] = Some(customers::customer_id(
                    ctx.customers + 1_000_000 + self.orphans,
                ));
                self.orphans += 1;
                out.cells = cells_of(&row);
                out.reference = Some("unknown_customer");
                out.note = note("orphan_customer", Some(2));
            }
            Inject::OrphanProduct => {
                row[3] = Some(format!("ZZZ-{:06}", 800_000 + self.orphans));
                self.orphans += 1;
                out.cells = cells_of(&row);
                out.reference = Some("unknown_product");
                out.note = note("orphan_product", Some(3));
            }
            Inject::Malformed { extra } => {
                out.cells = cells_of(&row);
                out.malformed = Some(extra);
                out.note = note("malformed_row", None);
            }
            Inject::Group(_) => out.cells = cells_of(&row),
        }
        out
    }

    fn group_rows(
        &mut self,
        ctx: &DayCtx<'_>,
        src: &mut dyn RowSource,
        i: u64,
        kind: GroupKind,
        at_base: bool,
    ) -> Vec<OutRow> {
        let t = self.table;
        let up = t.updated_at();
        let base = src.base_row(i);
        let mut g = sub_rng(ctx.seed, &format!("group-{}", t.name()), Some(ctx.date), i);
        let (older, newer) = src.conflict_times(&base, &mut g);
        let mut altered = base.clone();
        src.alter(&mut altered, &mut g);
        let with = |r: &Row, ts: Option<DateTime<Utc>>| {
            let mut r = r.clone();
            r[up] = ts.map(fmt_ts);
            r
        };
        let version = |v: V| match v {
            V::Old => with(&base, Some(older)),
            V::New => with(&altered, Some(newer)),
            V::Tie => with(&altered, Some(older)),
            V::NullA => with(&base, None),
            V::NullB => with(&altered, None),
        };
        let mut rows = Vec::new();
        for &(v, reformatted, role) in members(kind, at_base) {
            let row = version(v);
            let mut cells = cells_of(&row);
            let mut column = None;
            if reformatted {
                let ncols = t.columns().len();
                let start = g.random_range(0..ncols);
                let mut done = 0;
                for k in 0..ncols {
                    let col = (start + k) % ncols;
                    if done < 2
                        && let Some(raw) = reformat(t, &row, col, &mut g)
                    {
                        cells[col].raw = Some(raw);
                        column = column.or(Some(col));
                        done += 1;
                    }
                }
            }
            let kind_name = match role {
                Role::ExactKept | Role::ExactRemoved => "exact_duplicate",
                Role::Winner => "conflict_winner",
                Role::Loser => "conflict_loser",
            };
            let note = Note {
                kind: kind_name,
                detail: Some(detail(kind)),
                column,
                outcome: Outcome::Role(role),
            };
            rows.push(OutRow {
                cells,
                malformed: None,
                reference: None,
                note: Some(note),
            });
        }
        rows
    }

    fn emit(
        &mut self,
        ctx: &mut DayCtx<'_>,
        pw: &mut PartWriter,
        object: &str,
        out: OutRow,
    ) -> Result<(), GenerateError> {
        let line = pw.rows + 2;
        let raws: Vec<&str> = out.cells.iter().map(Cell::raw).collect();
        pw.write_row(&raws, out.malformed)
            .map_err(|e| GenerateError::io(object, e))?;
        let cols = self.table.columns();
        let c = &mut self.counts;
        c.rows_read += 1;
        let mut reasons: Vec<String> = Vec::new();
        if out.malformed.is_some() {
            reasons.push("malformed_row".to_string());
        } else {
            for (i, cell) in out.cells.iter().enumerate() {
                let name = cols[i].name;
                match &cell.state {
                    State::Value(canon) if canon != cell.raw() => bump(&mut c.fields, name, true),
                    State::NullDefault(_) => bump(&mut c.fields, name, true),
                    State::InvalidNull => bump(&mut c.fields, name, false),
                    State::NullRequired => reasons.push(format!("missing_{name}")),
                    State::InvalidQuarantine => reasons.push(format!("invalid_{name}")),
                    State::Value(_) | State::NullOptional => {}
                }
            }
            if reasons.is_empty()
                && let Some(r) = out.reference
            {
                reasons.push(r.to_string());
            }
        }
        if !reasons.is_empty() {
            c.rows_quarantined += 1;
            for r in &reasons {
                *c.quarantined_by_reason.entry(r.clone()).or_insert(0) += 1;
            }
        }
        if let Some(Note {
            outcome: Outcome::Role(role),
            ..
        }) = &out.note
        {
            match role {
                Role::ExactRemoved => c.duplicates_removed += 1,
                Role::Loser => c.conflicts_resolved += 1,
                Role::ExactKept | Role::Winner => {}
            }
        }
        if let Some(note) = out.note {
            let key = if out.malformed.is_some() {
                None
            } else {
                match &out.cells[self.table.key()].state {
                    State::Value(k) => Some(k.clone()),
                    _ => None,
                }
            };
            let col_cell = note.column.and_then(|i| out.cells.get(i));
            let (outcome, expected) = if !reasons.is_empty() {
                ("quarantined", None)
            } else {
                match (&note.outcome, col_cell.map(|c| &c.state)) {
                    (Outcome::Role(Role::ExactRemoved | Role::Loser), _) => ("removed", None),
                    (Outcome::Role(_) | Outcome::Kept, _) => ("kept", None),
                    (Outcome::FromCell, Some(State::Value(v))) => ("fixed", Some(v.clone())),
                    (Outcome::FromCell, Some(State::NullDefault(v))) => {
                        ("defaulted", Some(v.clone()))
                    }
                    (Outcome::FromCell, _) => ("nulled", None),
                }
            };
            let entry = DefectEntry {
                table: self.table.name().to_string(),
                object: object.to_string(),
                line,
                key,
                kind: note.kind.to_string(),
                detail: note.detail.map(str::to_string),
                column: note.column.map(|i| cols[i].name.to_string()),
                raw: if out.malformed.is_some() {
                    None
                } else {
                    col_cell.map(|c| c.raw().to_string())
                },
                outcome: outcome.to_string(),
                expected,
                reasons: if outcome == "quarantined" {
                    reasons
                } else {
                    Vec::new()
                },
            };
            serde_json::to_writer(&mut *ctx.defects, &entry)
                .map_err(|e| GenerateError::io("defects.jsonl", e.into()))?;
            ctx.defects
                .write_all(b"\n")
                .map_err(|e| GenerateError::io("defects.jsonl", e))?;
        }
        self.unreported += 1;
        if self.unreported >= 8192 {
            (ctx.progress)(std::mem::take(&mut self.unreported));
        }
        Ok(())
    }
}

/// Title-cases every word (`são miguel da boa vista` → `São Miguel Da Boa Vista`).
pub(crate) fn title_words(s: &str) -> String {
    s.split_whitespace()
        .map(super::values::title)
        .collect::<Vec<_>>()
        .join(" ")
}

fn bump(fields: &mut BTreeMap<String, FieldCounts>, name: &str, normalized: bool) {
    let Some(f) = fields.get_mut(name) else {
        return;
    };
    if normalized {
        f.normalized += 1;
    } else {
        f.nulled += 1;
    }
}
