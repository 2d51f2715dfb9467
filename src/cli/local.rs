//! The commands that work on local folders: `clean`, `bench clean`, `build`.

use chrono::NaiveDate;

use crate::clean::local::{marker_days, run_local_batch, run_local_batch_with};
use crate::clean::{Limits, Schemas};
use crate::events::ProductKind;
use crate::products::{BuildOptions, Period, Released, contract, month_periods, monthly};

use super::{BenchArgs, BuildArgs, CleanArgs};
use crate::service::Verdict;

/// Runs `datashare clean`; `Failed` when a file or batch failed.
pub fn clean(args: &CleanArgs) -> anyhow::Result<Verdict> {
    let schemas = match &args.tables {
        Some(p) => Schemas::load(p)?,
        None => Schemas::builtin()?,
    };
    let days = match args.date {
        Some(d) => vec![d],
        None => marker_days(&args.input)?,
    };
    if days.is_empty() {
        anyhow::bail!(
            "no batch marker (extracts/dt=<D>/_SUCCESS) under {}",
            args.input.display()
        );
    }
    let limits = Limits {
        stage_memory_bytes: args.stage_memory_mib.saturating_mul(1 << 20),
        ..Limits::default()
    };
    let mut ok = true;
    for dt in days {
        let batch = match run_local_batch_with(&schemas, &args.input, &args.output, dt, &limits) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("dt={dt}: {e}");
                ok = false;
                continue;
            }
        };
        for (name, t) in &batch.report.tables {
            println!(
                "dt={dt} {name}: read {} kept {} quarantined {} duplicates {} conflicts {}",
                t.rows_read,
                t.rows_kept,
                t.rows_quarantined,
                t.duplicates_removed,
                t.conflicts_resolved
            );
        }
        for f in batch.failed_files() {
            let e = f.error.as_ref().expect("failed files have an error");
            eprintln!("dt={dt} {}: {} ({})", f.object, e.kind, e.message);
            ok = false;
        }
        for u in &batch.unlisted {
            eprintln!("dt={dt} {u}: not listed in the marker, ignored");
        }
        println!("dt={dt} report: {}", batch.outputs.quality().display());
    }
    Ok(Verdict::of(ok))
}

/// Runs `datashare bench clean`: generates one batch, then cleans it on one thread and reports
/// rows/s, MB/s and peak RSS of the cleaning alone.
pub fn bench(args: &BenchArgs) -> anyhow::Result<Verdict> {
    use crate::generate::{GenerateOptions, LocalDirSink, generate_day};
    anyhow::ensure!(args.what == "clean", "only `datashare bench clean` exists");
    let tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = std::env::temp_dir().join(format!("datashare-bench-{}", std::process::id()));
            tmp.clone()
        }
    };
    let raw = dir.join("raw");
    let out = dir.join("out");
    let _ = std::fs::remove_dir_all(&dir);
    let dt = NaiveDate::from_ymd_opt(2026, 11, 27).expect("valid date");
    let opts = GenerateOptions {
        rows: args.rows,
        parts: args.parts,
        gzip: args.gzip,
        defect_rate: args.defect_rate,
        ..GenerateOptions::default()
    };
    eprintln!(
        "generating {} transaction rows into {}",
        args.rows,
        raw.display()
    );
    let truth = generate_day(&opts, dt, &LocalDirSink::new(&raw))?;
    let input_bytes = dir_size(&raw.join("extracts"))?;
    let transactions = truth.tables.get("transactions").map_or(0, |t| t.rows_read);
    let all_rows: u64 = truth.tables.values().map(|t| t.rows_read).sum();

    reset_peak_rss();
    let started = std::time::Instant::now();
    let schemas = Schemas::builtin()?;
    let batch = run_local_batch(&schemas, &raw, &out, dt)?;
    let secs = started.elapsed().as_secs_f64();
    let peak = peak_rss_bytes();
    let kept: u64 = batch.report.tables.values().map(|t| t.rows_kept).sum();
    println!(
        "bench clean: {transactions} transaction rows ({all_rows} rows in all tables), {:.1} MB of CSV",
        input_bytes as f64 / 1e6
    );
    println!("  time        {secs:.2} s (one thread: staging every part, then the batch step)");
    println!(
        "  throughput  {:.0} transaction rows/s, {:.0} rows/s over all tables, {:.1} MB/s",
        transactions as f64 / secs,
        all_rows as f64 / secs,
        input_bytes as f64 / 1e6 / secs
    );
    match peak {
        Some(p) => println!(
            "  peak RSS    {:.1} MiB (cleaning only)",
            p as f64 / (1024.0 * 1024.0)
        ),
        None => println!("  peak RSS    unavailable (no /proc)"),
    }
    println!("  rows kept   {kept}");
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(Verdict::of(batch.failed_files().is_empty()))
}

/// Runs `datashare build`: validates every contract, builds, prints the files and highlights.
pub fn build(args: &BuildArgs) -> anyhow::Result<Verdict> {
    let c = contract::find(&args.partners, &args.partner)?;
    let periods = match (&args.date, &args.month, args.product) {
        (Some(d), None, None | Some(ProductKind::Daily)) => vec![Period::Day(*d)],
        (None, Some(m), None) => {
            let periods = month_periods(&c, monthly::parse_month(m)?);
            if periods.is_empty() {
                anyhow::bail!("partner {} did not buy a month product", c.name);
            }
            periods
        }
        (None, Some(m), Some(k)) if k.is_monthly() => {
            vec![Period::of_month(k, monthly::parse_month(m)?)]
        }
        (_, _, Some(k)) => anyhow::bail!("--product {k} does not go with this period"),
        _ => anyhow::bail!("give exactly one of --date or --month"),
    };
    let opts = BuildOptions {
        input: args.input.clone(),
        output: args.output.clone(),
        allow_missing_batches: args.allow_missing_batches,
        built_at: chrono::Utc::now(),
        window: None,
        months: crate::products::month_lines::MonthReads::releasing(
            crate::service::memory::release_free,
        ),
        transactions: None,
    };
    for period in periods {
        print_released(&crate::products::build(&c, period, &opts)?);
    }
    Ok(Verdict::Done)
}

fn print_released(released: &Released) {
    for f in &released.files {
        println!(
            "{} rows={} bytes={} sha256={}",
            f.path.display(),
            f.rows,
            f.bytes,
            f.sha256
        );
    }
    println!("dictionary {}", released.dictionary.display());
    println!("delivery_id {}", released.delivery_id);
    for h in &released.highlights {
        println!("highlight {h}");
    }
}

fn dir_size(dir: &std::path::Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// Resets the kernel's peak-RSS mark of this process (Linux), so generation does not count.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Reads this process's peak RSS (VmHWM) in bytes.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
