//! Canonical texts of cleaned values, the local-time convention, and seeded sub-generators.

use chrono::{
    DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, Offset, TimeZone, Timelike, Utc,
};
use chrono_tz::America::Sao_Paulo;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use xxhash_rust::xxh3::Xxh3;

/// The ten null markers of the spec, as the generator writes them.
pub const NULL_MARKERS: [&str; 10] = [
    "", "null", "NULL", " None ", "nan", "n/a", "N/A", "na", "-", "?",
];

/// Derives an independent deterministic RNG from the seed, a label, a date and an index.
pub(crate) fn sub_rng(seed: u64, label: &str, date: Option<NaiveDate>, index: u64) -> ChaCha8Rng {
    let mut h = Xxh3::with_seed(seed);
    h.update(label.as_bytes());
    h.update(&[0xff]);
    h.update(
        &date
            .map_or(i32::MIN, |d| d.num_days_from_ce())
            .to_le_bytes(),
    );
    h.update(&index.to_le_bytes());
    ChaCha8Rng::seed_from_u64(h.digest())
}

/// Renders an instant in the canonical UTC text `YYYY-MM-DDTHH:MM:SSZ`.
pub(crate) fn fmt_ts(t: DateTime<Utc>) -> String {
    // Hand-rolled: strftime parsing dominated the profile of large parts.
    let n = t.naive_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        n.year(),
        n.month(),
        n.day(),
        n.hour(),
        n.minute(),
        n.second()
    )
}

/// Parses the canonical UTC text back into an instant.
pub(crate) fn parse_ts(s: &str) -> Option<DateTime<Utc>> {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%SZ")
        .ok()
        .map(|n| n.and_utc())
}

/// Renders an amount in cents as the canonical BRL text `1234.56`.
pub(crate) fn fmt_money(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let c = cents.unsigned_abs();
    format!("{sign}{}.{:02}", c / 100, c % 100)
}

/// Parses a canonical BRL text into cents.
pub(crate) fn parse_money(s: &str) -> Option<i64> {
    let (int, frac) = s.split_once('.')?;
    let neg = int.starts_with('-');
    let int: i64 = int.trim_start_matches('-').parse().ok()?;
    let frac: i64 = frac.parse().ok()?;
    let v = int * 100 + frac;
    Some(if neg { -v } else { v })
}

/// Converts an America/Sao_Paulo wall-clock time to UTC by the project convention.
///
/// A time in a spring-forward gap is read with the offset in force before the gap (so it moves
/// forward by the gap); an ambiguous time takes the earlier instant (the daylight offset).
pub fn local_to_utc(naive: NaiveDateTime) -> DateTime<Utc> {
    match Sao_Paulo.from_local_datetime(&naive) {
        chrono::LocalResult::Single(t) => t.with_timezone(&Utc),
        chrono::LocalResult::Ambiguous(a, b) => a.with_timezone(&Utc).min(b.with_timezone(&Utc)),
        chrono::LocalResult::None => {
            let before = Sao_Paulo
                .offset_from_utc_datetime(&(naive - Duration::days(1)))
                .fix()
                .local_minus_utc();
            naive.and_utc() - Duration::seconds(i64::from(before))
        }
    }
}

/// Converts an instant to America/Sao_Paulo wall-clock time.
pub(crate) fn utc_to_local(t: DateTime<Utc>) -> NaiveDateTime {
    t.with_timezone(&Sao_Paulo).naive_local()
}

/// Returns the UTC instant of local midnight starting day `d`.
pub(crate) fn local_midnight(d: NaiveDate) -> DateTime<Utc> {
    local_to_utc(d.and_hms_opt(0, 0, 0).unwrap_or_default())
}

/// The timestamp layouts of the spec, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TsLayout {
    /// `2026-11-27T14:03:00-03:00`.
    Offset,
    /// `2026-11-27 14:03:00` (naive local).
    Naive,
    /// `27/11/2026 14:03` (naive local, no seconds).
    DmyHm,
    /// `27/11/2026` (local midnight).
    Dmy,
    /// `2026/11/27 14:03:00` (naive local).
    YmdSlash,
    /// `1795798980` (epoch seconds, UTC).
    Epoch,
}

/// All timestamp layouts, in a fixed order.
pub(crate) const TS_LAYOUTS: [TsLayout; 6] = [
    TsLayout::Offset,
    TsLayout::Naive,
    TsLayout::DmyHm,
    TsLayout::Dmy,
    TsLayout::YmdSlash,
    TsLayout::Epoch,
];

/// Writes instant `t` in `layout`; returns the raw text and the instant a cleaner reads back.
pub(crate) fn write_ts(t: DateTime<Utc>, layout: TsLayout) -> (String, DateTime<Utc>) {
    let local = utc_to_local(t);
    match layout {
        TsLayout::Offset => {
            let off = t.with_timezone(&Sao_Paulo);
            (off.format("%Y-%m-%dT%H:%M:%S%:z").to_string(), t)
        }
        TsLayout::Naive => (
            local.format("%Y-%m-%d %H:%M:%S").to_string(),
            local_to_utc(local),
        ),
        TsLayout::DmyHm => {
            let n = local.with_second(0).unwrap_or(local);
            (n.format("%d/%m/%Y %H:%M").to_string(), local_to_utc(n))
        }
        TsLayout::Dmy => {
            let d = local.date();
            (d.format("%d/%m/%Y").to_string(), local_midnight(d))
        }
        TsLayout::YmdSlash => (
            local.format("%Y/%m/%d %H:%M:%S").to_string(),
            local_to_utc(local),
        ),
        TsLayout::Epoch => (t.timestamp().to_string(), t),
    }
}

/// Formats a CEP's eight digits as `NNNNN-NNN`.
pub(crate) fn fmt_cep(digits: u32) -> String {
    format!("{:05}-{:03}", digits / 1000, digits % 1000)
}

/// Returns the eight digits of a canonical CEP.
pub(crate) fn cep_digits(canon: &str) -> Option<u32> {
    let d: String = canon.chars().filter(char::is_ascii_digit).collect();
    if d.len() == 8 { d.parse().ok() } else { None }
}

/// Title-cases a word (`sp` → `Sp`).
pub(crate) fn title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, c) in s.chars().enumerate() {
        if i == 0 {
            out.extend(c.to_uppercase());
        } else {
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// Returns the year of an instant in local time (used to build day-first invalid dates).
pub(crate) fn local_year(t: DateTime<Utc>) -> i32 {
    utc_to_local(t).year()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> DateTime<Utc> {
        parse_ts(s).unwrap_or_else(|| panic!("bad test ts {s}"))
    }

    #[test]
    fn money_roundtrips() {
        for c in [0, 7, 799, 123456, -799] {
            assert_eq!(parse_money(&fmt_money(c)), Some(c));
        }
        assert_eq!(fmt_money(790), "7.90");
        assert_eq!(fmt_money(0), "0.00");
    }

    #[test]
    fn local_time_convention() {
        let n = |s: &str| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap_or_default();
        assert_eq!(
            fmt_ts(local_to_utc(n("2026-11-27 14:03:00"))),
            "2026-11-27T17:03:00Z"
        );
        // DST started 2018-11-04 00:00 (-03 → -02): 00:30 is in the gap, moved forward to 01:30 -02.
        assert_eq!(
            fmt_ts(local_to_utc(n("2018-11-04 00:30:00"))),
            "2018-11-04T03:30:00Z"
        );
        // DST ended 2019-02-17 00:00 (-02 → -03): 23:30 on the 16th happens twice; the earlier wins.
        assert_eq!(
            fmt_ts(local_to_utc(n("2019-02-16 23:30:00"))),
            "2019-02-17T01:30:00Z"
        );
        assert_eq!(
            fmt_ts(local_to_utc(n("2017-01-10 12:00:00"))),
            "2017-01-10T14:00:00Z"
        );
    }

    #[test]
    fn timestamp_layouts() {
        let t = ts("2026-11-27T17:03:00Z");
        let got: Vec<String> = TS_LAYOUTS.iter().map(|&l| write_ts(t, l).0).collect();
        assert_eq!(
            got,
            [
                "2026-11-27T14:03:00-03:00",
                "2026-11-27 14:03:00",
                "27/11/2026 14:03",
                "27/11/2026",
                "2026/11/27 14:03:00",
                "1795798980"
            ]
        );
        assert_eq!(fmt_ts(write_ts(t, TsLayout::Dmy).1), "2026-11-27T03:00:00Z");
    }

    #[test]
    fn sub_rngs_are_stable_and_distinct() {
        use rand::RngExt;
        let d = NaiveDate::from_ymd_opt(2026, 11, 27);
        let a: u64 = sub_rng(42, "x", d, 1).random();
        let b: u64 = sub_rng(42, "x", d, 1).random();
        let c: u64 = sub_rng(42, "x", d, 2).random();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
