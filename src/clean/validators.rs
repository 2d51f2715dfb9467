//! Field validators: each takes a raw string and returns a typed, normalized value or a failure.
//!
//! Adding a kind of validator is one function plus one line in [`Kind`]'s registry.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::OnceLock;

use chrono::{
    DateTime, Datelike, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeZone,
    Timelike,
};
use chrono_tz::America::Sao_Paulo;
use compact_str::{CompactString, ToCompactString};
use regex::Regex;

use super::Invalid;
use super::pattern::PatternRule;
use crate::br;

/// A cleaned, typed value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Text (short values are stored inline, without a heap allocation).
    Str(CompactString),
    /// An integer.
    Int(i64),
    /// An amount in hundredths (BRL cents).
    Cents(i64),
    /// An instant, seconds since the Unix epoch (UTC).
    Ts(i64),
    /// A date, days since 1970-01-01.
    Date(i32),
}

impl Value {
    /// Appends the canonical text of the value (the form the ground truth and reports use).
    pub fn write_canonical(&self, out: &mut String) {
        match self {
            Value::Str(s) => out.push_str(s),
            Value::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Value::Cents(c) => {
                let sign = if *c < 0 { "-" } else { "" };
                let a = c.unsigned_abs();
                let _ = write!(out, "{sign}{}.{:02}", a / 100, a % 100);
            }
            Value::Ts(s) => match DateTime::from_timestamp(*s, 0) {
                Some(t) => {
                    write_date(out, t.date_naive());
                    out.push('T');
                    for (i, part) in [t.hour(), t.minute(), t.second()].into_iter().enumerate() {
                        if i > 0 {
                            out.push(':');
                        }
                        push_2(out, part);
                    }
                    out.push('Z');
                }
                None => {
                    let _ = write!(out, "@{s}");
                }
            },
            Value::Date(d) => match NaiveDate::from_epoch_days(*d) {
                Some(date) => write_date(out, date),
                None => {
                    let _ = write!(out, "#{d}");
                }
            },
        }
    }

    /// Returns the canonical text of the value.
    pub fn canonical(&self) -> String {
        let mut s = String::new();
        self.write_canonical(&mut s);
        s
    }
}

/// Appends `YYYY-MM-DD` without the formatting machinery (it runs for every value).
fn write_date(out: &mut String, d: NaiveDate) {
    let y = d.year();
    if (0..=9999).contains(&y) {
        push_2(out, (y / 100) as u32);
        push_2(out, (y % 100) as u32);
    } else {
        let _ = write!(out, "{y}");
    }
    out.push('-');
    push_2(out, d.month());
    out.push('-');
    push_2(out, d.day());
}

fn push_2(out: &mut String, v: u32) {
    out.push(char::from(b'0' + (v / 10 % 10) as u8));
    out.push(char::from(b'0' + (v % 10) as u8));
}

/// The validators, by the name used in `config/tables.toml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Free text: trimmed, runs of white space folded, canonical spelling from `known`.
    Text,
    /// An identifier: trimmed, optionally upper-cased.
    Id,
    /// A product code `AAA-NNNNNN`.
    ProductCode,
    /// An integer, possibly written `2.0` or `2 un`.
    Int,
    /// A BRL amount with two decimals.
    Brl,
    /// One of a closed set of values, with synonyms.
    Enum,
    /// An instant; naive times are America/Sao_Paulo local time.
    Timestamp,
    /// A calendar date.
    Date,
    /// A CEP `NNNNN-NNN`.
    Cep,
    /// A federative unit code.
    Uf,
    /// A municipality name, canonical when known for the row's UF.
    Municipality,
    /// An e-mail address, lower case.
    Email,
    /// A CPF, 11 digits with valid check digits.
    Cpf,
    /// A Brazilian phone number in E.164.
    Phone,
    /// A GTIN-13 with a valid check digit.
    Gtin13,
    /// A regular expression from the configuration, after optional normalization.
    Pattern,
}

impl Kind {
    /// Finds a validator by its configuration name.
    pub fn from_name(name: &str) -> Option<Kind> {
        Some(match name {
            "text" => Kind::Text,
            "id" => Kind::Id,
            "product_code" => Kind::ProductCode,
            "int" => Kind::Int,
            "brl" => Kind::Brl,
            "enum" => Kind::Enum,
            "timestamp" => Kind::Timestamp,
            "date" => Kind::Date,
            "cep" => Kind::Cep,
            "uf" => Kind::Uf,
            "municipality" => Kind::Municipality,
            "email" => Kind::Email,
            "cpf" => Kind::Cpf,
            "phone" => Kind::Phone,
            "gtin13" => Kind::Gtin13,
            "pattern" => Kind::Pattern,
            _ => return None,
        })
    }

    /// Validates a non-null raw value; `uf` is the row's cleaned UF, `today` bounds dates.
    pub fn validate(
        self,
        raw: &str,
        opts: &KindOptions,
        uf: Option<&str>,
        today: NaiveDate,
    ) -> Result<Value, Invalid> {
        self.validate_trimmed(trim(raw), raw, opts, uf, today)
    }

    /// [`Kind::validate`] of a value already trimmed (`s`: `trim(raw)`), as the row loop has it.
    pub fn validate_trimmed(
        self,
        s: &str,
        raw: &str,
        opts: &KindOptions,
        uf: Option<&str>,
        today: NaiveDate,
    ) -> Result<Value, Invalid> {
        match self {
            Kind::Text => Ok(Value::Str(text(s, &opts.known))),
            // ASCII text (nearly every value) holds no invisible character: no copy, no check.
            Kind::Id if s.is_ascii() => id(s, opts.upper).map(Value::Str),
            Kind::Id => id(trim(&strip_invisible(s)), opts.upper).map(Value::Str),
            Kind::ProductCode if s.is_ascii() => product_code(s).map(Value::Str),
            Kind::ProductCode => product_code(trim(&strip_invisible(s))).map(Value::Str),
            Kind::Int => int_with_units(s, &opts.units)
                .and_then(|v| sign_rule(v, opts))
                .map(Value::Int),
            Kind::Brl => brl_cents(s)
                .and_then(|v| sign_rule(v, opts))
                .map(Value::Cents),
            Kind::Enum => enumeration(s, &opts.values).map(Value::Str),
            Kind::Timestamp => timestamp(s).map(Value::Ts),
            Kind::Date => date(s, opts.min_date, opts.not_future.then_some(today))
                .map(|d| Value::Date(d.to_epoch_days())),
            Kind::Cep => cep(s).map(Value::Str),
            Kind::Uf => uf_code(s).map(|u| Value::Str(CompactString::const_new(u))),
            Kind::Municipality => Ok(Value::Str(municipality(s, uf))),
            Kind::Email => email(s).map(Value::Str),
            Kind::Cpf => cpf(s).map(Value::Str),
            Kind::Phone => phone(s).map(Value::Str),
            Kind::Gtin13 => gtin13(s).map(Value::Str),
            // Normalizes the raw value itself: whether to trim is the rule's choice.
            Kind::Pattern => match &opts.pattern {
                Some(rule) => rule.apply(raw).map(Value::Str),
                None => Err(Invalid),
            },
        }
    }
}

/// Trims white space; values that need no trimming (most) are checked in a few instructions.
#[inline]
pub fn trim(s: &str) -> &str {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(&f), Some(&l)) if f > b' ' && f < 0x80 && l > b' ' && l < 0x80 => s,
        _ => s.trim(),
    }
}

/// Options of a column's validator, as declared.
#[derive(Debug, Clone, Default)]
pub struct KindOptions {
    /// `id`: upper-case the value.
    pub upper: bool,
    /// `int`, `brl`: the value must be > 0.
    pub positive: bool,
    /// `int`, `brl`: the value must be >= 0.
    pub non_negative: bool,
    /// `int`: the largest value (`invalid_<column>` above it).
    pub max: Option<i64>,
    /// `int`: unit suffixes allowed after the number (lower case).
    pub units: Vec<String>,
    /// `enum`: folded spelling → canonical value (canonical values map to themselves).
    pub values: Vec<(String, String)>,
    /// `text`: canonical spellings, matched case-insensitively.
    pub known: Vec<String>,
    /// `municipality`: index of the column holding the row's UF.
    pub uf_column: Option<usize>,
    /// `date`: earliest valid date.
    pub min_date: Option<NaiveDate>,
    /// `date`: dates after today are invalid.
    pub not_future: bool,
    /// `pattern`: the compiled rule.
    pub pattern: Option<PatternRule>,
}

fn sign_rule(v: i64, opts: &KindOptions) -> Result<i64, Invalid> {
    if (opts.positive && v <= 0) || (opts.non_negative && v < 0) || opts.max.is_some_and(|m| v > m)
    {
        Err(Invalid)
    } else {
        Ok(v)
    }
}

/// Returns true when a raw value is one of the null markers (any case, trimmed).
pub fn is_null_marker(raw: &str) -> bool {
    is_trimmed_null_marker(trim(raw))
}

/// [`is_null_marker`] of a value already trimmed.
#[inline]
pub fn is_trimmed_null_marker(s: &str) -> bool {
    // Every marker but the empty, `-` and `?` ones starts with an `n`: most values stop at one byte.
    match s.as_bytes() {
        [] | [b'-'] | [b'?'] => true,
        [b'n' | b'N', ..] if s.len() <= 4 => ["null", "none", "nan", "n/a", "na"]
            .iter()
            .any(|m| s.eq_ignore_ascii_case(m)),
        _ => false,
    }
}

/// Folds text for matching: lower case, no accents, single spaces.
pub fn fold(s: &str) -> String {
    br::fold_name(s)
}

/// Trims, folds runs of white space, and takes the canonical spelling of a known value.
pub fn text(s: &str, known: &[String]) -> CompactString {
    let mut out = CompactString::with_capacity(s.len());
    for (i, w) in s.split_whitespace().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(w);
    }
    let lower = |x: &str| {
        x.chars()
            .flat_map(char::to_lowercase)
            .collect::<Vec<char>>()
    };
    known
        .iter()
        .find(|k| k.eq_ignore_ascii_case(&out) || (!out.is_ascii() && lower(k) == lower(&out)))
        .map(|k| k.to_compact_string())
        .unwrap_or(out)
}

/// Returns true for characters that print as nothing: the BOM, zero-width and joiner characters,
/// direction marks and overrides, the soft hyphen.
pub fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00ad}'
            | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{feff}'
    )
}

/// Removes invisible characters (see [`is_invisible`]) so keys that look alike compare equal.
pub fn strip_invisible(s: &str) -> Cow<'_, str> {
    if s.is_ascii() || !s.chars().any(is_invisible) {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(s.chars().filter(|c| !is_invisible(*c)).collect())
    }
}

/// Trims an identifier, optionally upper-casing it; identifiers hold no white space and no
/// control character (invisible characters are stripped before, see [`strip_invisible`]).
pub fn id(s: &str, upper: bool) -> Result<CompactString, Invalid> {
    if s.is_ascii() {
        // Printable ASCII is `!`..=`~`: white space, controls and DEL are outside. One pass
        // checks that and looks for a lower-case letter (most ids have none to change).
        let (mut unprintable, mut lower) = (false, false);
        for b in s.bytes() {
            unprintable |= !(b'!'..=b'~').contains(&b);
            lower |= b.is_ascii_lowercase();
        }
        if unprintable {
            return Err(Invalid);
        }
        let mut out = CompactString::from(s);
        if upper && lower {
            out.make_ascii_uppercase();
        }
        return Ok(out);
    }
    if s.chars()
        .any(|c| c.is_whitespace() || c.is_control() || is_invisible(c))
    {
        return Err(Invalid);
    }
    Ok(if upper {
        s.to_uppercase().into()
    } else {
        CompactString::from(s)
    })
}

/// Normalizes a product code to `AAA-NNNNNN` (`ohb 000101`, `OHB000101` are accepted).
pub fn product_code(s: &str) -> Result<CompactString, Invalid> {
    if is_canonical_product_code(s.as_bytes()) {
        return Ok(CompactString::from(s));
    }
    let mut letters = CompactString::with_capacity(10);
    let mut digits = CompactString::with_capacity(6);
    for c in s.trim_ascii().chars() {
        match c {
            'a'..='z' | 'A'..='Z' if digits.is_empty() => letters.push(c.to_ascii_uppercase()),
            '0'..='9' if letters.len() == 3 => digits.push(c),
            '-' | ' ' | '_' | '.' if letters.len() == 3 && digits.is_empty() => {}
            _ => return Err(Invalid),
        }
    }
    if letters.len() == 3 && digits.len() == 6 {
        letters.push('-');
        letters.push_str(&digits);
        Ok(letters)
    } else {
        Err(Invalid)
    }
}

fn is_canonical_product_code(b: &[u8]) -> bool {
    b.len() == 10
        && b[..3].iter().all(u8::is_ascii_uppercase)
        && b[3] == b'-'
        && b[4..].iter().all(u8::is_ascii_digit)
}

/// Reads a BRL amount in hundredths: `R$ 1.234,56`, `1,234.56`, `7,99`, `1234.5`.
///
/// With both `.` and `,` present the last is the decimal separator; a single separator followed by
/// exactly three digits is a thousands separator; more than two decimals is invalid.
pub fn brl_cents(s: &str) -> Result<i64, Invalid> {
    canonical_cents(s.as_bytes()).map_or_else(|| cents_by_the_rules(s), Ok)
}

/// [`brl_cents`] by the general rules, whatever the form.
fn cents_by_the_rules(s: &str) -> Result<i64, Invalid> {
    let mut t = s.trim_ascii();
    let mut negative = false;
    if let Some(rest) = t.strip_prefix('-') {
        negative = true;
        t = rest.trim_start();
    }
    let t = t.strip_prefix("R$").unwrap_or(t);
    // Digits and separators only, white space dropped; at most one sign after `R$`.
    let mut body = [0u8; 40];
    let mut n = 0;
    for &b in t.as_bytes() {
        match b {
            b' ' => {}
            b'-' if n == 0 && !negative => negative = true,
            b'0'..=b'9' | b'.' | b',' if n < body.len() => {
                body[n] = b;
                n += 1;
            }
            0xc2 | 0xa0 => {} // a no-break space (U+00A0) in UTF-8
            _ => return Err(Invalid),
        }
    }
    let cents = parse_separated(&body[..n])?;
    Ok(if negative { -cents } else { cents })
}

/// Reads an amount written in canonical form (`1234.56`, `-0.50`: digits, a dot, two digits),
/// as most are, without the general rules; None for any other text.
fn canonical_cents(b: &[u8]) -> Option<i64> {
    let digits = b.strip_prefix(b"-").unwrap_or(b);
    let n = digits.len();
    // At most 18 digits: the value fits in an i64 and in DECIMAL(18,2).
    if !(4..=19).contains(&n) || digits[n - 3] != b'.' {
        return None;
    }
    let mut v: i64 = 0;
    for &c in digits[..n - 3].iter().chain(&digits[n - 2..]) {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        v = v * 10 + i64::from(d);
    }
    Some(if digits.len() < b.len() { -v } else { v })
}

/// Reads digits with `.`/`,` separators by the spec's rules into hundredths.
fn parse_separated(body: &[u8]) -> Result<i64, Invalid> {
    let last_dot = body.iter().rposition(|&b| b == b'.');
    let last_comma = body.iter().rposition(|&b| b == b',');
    let decimal_at = match (last_dot, last_comma) {
        (Some(d), Some(c)) => Some(d.max(c)),
        (Some(p), None) | (None, Some(p)) => {
            let sep = body[p];
            let count = body.iter().filter(|&&b| b == sep).count();
            let after = body.len() - p - 1;
            if count > 1 || after == 3 {
                None
            } else {
                Some(p)
            }
        }
        (None, None) => None,
    };
    let (int_raw, frac) = match decimal_at {
        Some(p) => (&body[..p], &body[p + 1..]),
        None => (body, &body[body.len()..]),
    };
    if frac.len() > 2 || frac.iter().any(|b| !b.is_ascii_digit()) {
        return Err(Invalid);
    }
    // Thousands separators: every group after the first has exactly three digits.
    let mut value: i64 = 0;
    let mut digits = 0;
    let mut group_len = 0;
    let mut groups = 0;
    for &b in int_raw {
        if b.is_ascii_digit() {
            value = value
                .checked_mul(10)
                .and_then(|v| v.checked_add(i64::from(b - b'0')))
                .ok_or(Invalid)?;
            digits += 1;
            group_len += 1;
        } else {
            if (groups == 0 && group_len == 0) || (groups > 0 && group_len != 3) {
                return Err(Invalid);
            }
            groups += 1;
            group_len = 0;
        }
    }
    if groups > 0 && group_len != 3 {
        return Err(Invalid);
    }
    if digits == 0 && frac.is_empty() {
        return Err(Invalid);
    }
    let frac_cents = match frac {
        [a] => i64::from(a - b'0') * 10,
        [a, b] => i64::from(a - b'0') * 10 + i64::from(b - b'0'),
        _ => 0,
    };
    let cents = value
        .checked_mul(100)
        .and_then(|c| c.checked_add(frac_cents))
        .ok_or(Invalid)?;
    // Curated amounts are DECIMAL(18,2): 16 integer digits at most.
    if cents > MAX_CENTS {
        return Err(Invalid);
    }
    Ok(cents)
}

/// The largest amount a DECIMAL(18,2) holds, in hundredths.
pub const MAX_CENTS: i64 = 999_999_999_999_999_999;

/// The earliest instant every Parquet reader accepts: 0001-01-01T00:00:00Z.
pub const MIN_INSTANT: i64 = -62_135_596_800;
/// The latest instant every Parquet reader accepts: 9999-12-31T23:59:59Z.
pub const MAX_INSTANT: i64 = 253_402_300_799;

/// Reads an integer written as `2`, `2.0`, `2 un`, ` 3 `; fractions are invalid.
pub fn int_with_units(s: &str, units: &[String]) -> Result<i64, Invalid> {
    let t = s.trim_ascii();
    // Plain digits (most values), at most 15: the general rules read them the same.
    if (1..=15).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(t.bytes().fold(0, |v, b| v * 10 + i64::from(b - b'0')));
    }
    int_by_the_rules(t, units)
}

/// [`int_with_units`] by the general rules, whatever the form (`t` trimmed).
fn int_by_the_rules(t: &str, units: &[String]) -> Result<i64, Invalid> {
    let number_end = t
        .char_indices()
        .find(|(_, c)| c.is_alphabetic())
        .map_or(t.len(), |(i, _)| i);
    let (number, unit) = t.split_at(number_end);
    if !unit.is_empty()
        && !units
            .iter()
            .any(|u| unit.trim_ascii().eq_ignore_ascii_case(u))
    {
        return Err(Invalid);
    }
    let cents = brl_cents_plain(number.trim_ascii())?;
    if cents % 100 != 0 {
        return Err(Invalid);
    }
    Ok(cents / 100)
}

fn brl_cents_plain(s: &str) -> Result<i64, Invalid> {
    if s.is_empty() || s.contains("R$") {
        return Err(Invalid);
    }
    brl_cents(s)
}

/// Maps a value or one of its synonyms (any case, with or without accents) to its canonical value.
pub fn enumeration(s: &str, values: &[(String, String)]) -> Result<CompactString, Invalid> {
    if let Some((_, canonical)) = values.iter().find(|(folded, _)| folded == s) {
        return Ok(canonical.to_compact_string());
    }
    let f = fold(s);
    values
        .iter()
        .find(|(folded, _)| *folded == f)
        .map(|(_, canonical)| canonical.to_compact_string())
        .ok_or(Invalid)
}

/// Reads an instant in any format of the spec, as seconds since the epoch (UTC).
pub fn timestamp(s: &str) -> Result<i64, Invalid> {
    let t = s.trim_ascii();
    if !t.is_empty() && t.len() <= 11 && t.bytes().all(|b| b.is_ascii_digit()) {
        // Epoch seconds; a bare 8-digit number is more likely a date than 1970.
        return if t.len() >= 9 {
            t.parse().map_err(|_| Invalid)
        } else {
            Err(Invalid)
        };
    }
    canonical_instant(t.as_bytes()).map_or_else(|| instant_by_the_rules(t), Ok)
}

/// [`timestamp`] of a date and time by the general rules, whatever the form (`t` trimmed).
fn instant_by_the_rules(t: &str) -> Result<i64, Invalid> {
    let (naive, offset) = parse_datetime(t)?;
    let secs = match offset {
        Some(off) => naive.and_utc().timestamp() - i64::from(off),
        None => sao_paulo_to_utc(naive),
    };
    // An offset can carry year 1 or 9999 out of the range readers accept.
    if (MIN_INSTANT..=MAX_INSTANT).contains(&secs) {
        Ok(secs)
    } else {
        Err(Invalid)
    }
}

/// Reads an instant written in canonical form (`2026-11-27T18:48:23Z`), as most are, without
/// the general rules; None for any other text (an impossible date or time included).
fn canonical_instant(b: &[u8]) -> Option<i64> {
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return None;
    }
    let two = |i: usize| {
        let (h, l) = (b[i].wrapping_sub(b'0'), b[i + 1].wrapping_sub(b'0'));
        (h < 10 && l < 10).then(|| u32::from(h * 10 + l))
    };
    let (hour, minute, second) = (two(11)?, two(14)?, two(17)?);
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    Some(canonical_epoch_day(b)? * 86_400 + i64::from(hour * 3600 + minute * 60 + second))
}

/// Days since the epoch of the canonical date `b` starts with (`2026-11-27`, dashes checked by
/// the caller); the last date read is remembered, since a day's rows mostly share it.
fn canonical_epoch_day(b: &[u8]) -> Option<i64> {
    use std::cell::Cell;
    thread_local! {
        // A text of zeros is no date: the first look-up misses.
        static LAST: Cell<(u64, u16, i64)> = const { Cell::new((0, 0, 0)) };
    }
    let head = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
    let tail = u16::from_le_bytes(b.get(8..10)?.try_into().ok()?);
    let (last_head, last_tail, last_day) = LAST.get();
    if (head, tail) == (last_head, last_tail) {
        return Some(last_day);
    }
    let two = |i: usize| {
        let (h, l) = (b[i].wrapping_sub(b'0'), b[i + 1].wrapping_sub(b'0'));
        (h < 10 && l < 10).then(|| u32::from(h * 10 + l))
    };
    let year = two(0)? * 100 + two(2)?;
    if year == 0 {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(year as i32, two(5)?, two(8)?)?;
    let day = i64::from(date.to_epoch_days());
    LAST.set((head, tail, day));
    Some(day)
}

/// Converts a São Paulo wall-clock time to UTC: gaps move forward, ambiguous times take the earlier offset.
pub fn sao_paulo_to_utc(naive: NaiveDateTime) -> i64 {
    use std::cell::Cell;
    // Offsets change at most once a day, at midnight: cache each local day with a single offset.
    const SLOTS: usize = 1024;
    thread_local! {
        static DAYS: [Cell<(i64, i32)>; SLOTS] = const { [const { Cell::new((i64::MIN, 0)) }; SLOTS] };
    }
    let local = naive.and_utc().timestamp();
    let day = local.div_euclid(86_400);
    let slot = ((day as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54) as usize % SLOTS;
    let cached = DAYS.with(|d| d[slot].get());
    if cached.0 == day {
        return local - i64::from(cached.1);
    }
    let start = naive.date().and_time(NaiveTime::MIN);
    let end = start + chrono::Duration::seconds(86_399);
    if let (LocalResult::Single(a), LocalResult::Single(b)) = (
        Sao_Paulo.from_local_datetime(&start),
        Sao_Paulo.from_local_datetime(&end),
    ) {
        let (oa, ob) = (
            a.offset().fix().local_minus_utc(),
            b.offset().fix().local_minus_utc(),
        );
        if oa == ob {
            DAYS.with(|d| d[slot].set((day, oa)));
            return local - i64::from(oa);
        }
    }
    resolve_sao_paulo(naive)
}

fn resolve_sao_paulo(naive: NaiveDateTime) -> i64 {
    match Sao_Paulo.from_local_datetime(&naive) {
        LocalResult::Single(t) => t.timestamp(),
        LocalResult::Ambiguous(earlier, _) => earlier.timestamp(),
        LocalResult::None => {
            // In a spring-forward gap: read the time with the offset in force just before it.
            let mut probe = naive;
            for _ in 0..4 {
                probe -= chrono::Duration::hours(1);
                if let LocalResult::Single(t) = Sao_Paulo.from_local_datetime(&probe) {
                    let offset = t.offset().fix().local_minus_utc();
                    return naive.and_utc().timestamp() - i64::from(offset);
                }
            }
            naive.and_utc().timestamp() + 3 * 3600
        }
    }
}

/// Reads a calendar date in any format of the spec (a time part is ignored; epochs in local time).
pub fn date(s: &str, min: Option<NaiveDate>, max: Option<NaiveDate>) -> Result<NaiveDate, Invalid> {
    let t = s.trim_ascii();
    let d = if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        let secs = timestamp(t)?;
        DateTime::from_timestamp(secs, 0)
            .ok_or(Invalid)?
            .with_timezone(&Sao_Paulo)
            .date_naive()
    } else {
        parse_datetime(t)?.0.date()
    };
    if min.is_some_and(|m| d < m) || max.is_some_and(|m| d > m) || !(1..=9999).contains(&d.year()) {
        return Err(Invalid);
    }
    Ok(d)
}

/// Parses `YYYY-MM-DD`, `YYYY/MM/DD` or day-first `DD/MM/YYYY`, then an optional time and offset.
fn parse_datetime(t: &str) -> Result<(NaiveDateTime, Option<i32>), Invalid> {
    let b = t.as_bytes();
    if b.len() < 8 {
        return Err(Invalid);
    }
    let (date, rest) = if b.len() >= 10 && b[4] == b'-' || b.len() >= 10 && b[4] == b'/' {
        let y = num(&b[0..4])?;
        let m = num(&b[5..7])?;
        let d = num(&b[8..10])?;
        if b[7] != b[4] {
            return Err(Invalid);
        }
        (ymd(y, m, d)?, &t[10..])
    } else if b.len() >= 10 && b[2] == b'/' && b[5] == b'/' {
        let d = num(&b[0..2])?;
        let m = num(&b[3..5])?;
        let y = num(&b[6..10])?;
        (ymd(y, m, d)?, &t[10..])
    } else {
        return Err(Invalid);
    };
    // `T` and space are ASCII: skipping them byte by byte stays on a character boundary.
    let skip = rest
        .bytes()
        .take_while(|b| matches!(b, b'T' | b' '))
        .count();
    let rest = &rest[skip..];
    if rest.is_empty() {
        return Ok((date.and_time(NaiveTime::MIN), None));
    }
    let rb = rest.as_bytes();
    if rb.len() < 5 || rb[2] != b':' {
        return Err(Invalid);
    }
    let h = num(&rb[0..2])?;
    let mi = num(&rb[3..5])?;
    let mut i = 5;
    let mut sec = 0;
    if rb.len() >= 8 && rb[5] == b':' {
        sec = num(&rb[6..8])?;
        i = 8;
        if rb.len() > i && (rb[i] == b'.' || rb[i] == b',') {
            i += 1;
            while i < rb.len() && rb[i].is_ascii_digit() {
                i += 1;
            }
        }
    }
    let time = NaiveTime::from_hms_opt(h, mi, sec).ok_or(Invalid)?;
    let zone = rest[i..].trim_ascii();
    let offset = match zone {
        "" => None,
        "Z" | "z" | "UTC" | "+00:00" => Some(0),
        z => Some(parse_offset(z)?),
    };
    Ok((date.and_time(time), offset))
}

fn parse_offset(z: &str) -> Result<i32, Invalid> {
    let b = z.as_bytes();
    let sign = match b.first() {
        Some(b'+') => 1,
        Some(b'-') => -1,
        _ => return Err(Invalid),
    };
    let digits: Vec<u8> = b[1..].iter().copied().filter(|c| *c != b':').collect();
    if digits.len() != 4 && digits.len() != 2 {
        return Err(Invalid);
    }
    let h = num(&digits[0..2])? as i32;
    let m = if digits.len() == 4 {
        num(&digits[2..4])? as i32
    } else {
        0
    };
    if h > 14 || m > 59 {
        return Err(Invalid);
    }
    Ok(sign * (h * 3600 + m * 60))
}

fn num(b: &[u8]) -> Result<u32, Invalid> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return Err(Invalid);
    }
    Ok(b.iter().fold(0, |acc, d| acc * 10 + u32::from(d - b'0')))
}

fn ymd(y: u32, m: u32, d: u32) -> Result<NaiveDate, Invalid> {
    // Year 0 is not a year every Parquet reader accepts.
    if y == 0 {
        return Err(Invalid);
    }
    NaiveDate::from_ymd_opt(i32::try_from(y).map_err(|_| Invalid)?, m, d).ok_or(Invalid)
}

/// Normalizes a CEP to `NNNNN-NNN`; a CEP that lost its leading zero (7 digits) gets it back.
pub fn cep(s: &str) -> Result<CompactString, Invalid> {
    let b = s.as_bytes();
    if b.len() == 9
        && b[5] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, d)| i == 5 || d.is_ascii_digit())
    {
        let prefix = b[..5]
            .iter()
            .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
        return if br::CEP_RANGES
            .iter()
            .any(|&(_, lo, hi)| (lo..=hi).contains(&prefix))
        {
            Ok(CompactString::from(s))
        } else {
            Err(Invalid)
        };
    }
    let mut digits = CompactString::with_capacity(9);
    for c in s.chars() {
        match c {
            '0'..='9' => digits.push(c),
            '.' | '-' | ' ' => {}
            _ => return Err(Invalid),
        }
    }
    if digits.len() == 7 {
        digits.insert(0, '0');
    }
    if digits.len() != 8 {
        return Err(Invalid);
    }
    let prefix: u32 = digits[..5].parse().map_err(|_| Invalid)?;
    if !br::CEP_RANGES
        .iter()
        .any(|&(_, lo, hi)| (lo..=hi).contains(&prefix))
    {
        return Err(Invalid);
    }
    digits.insert(5, '-');
    Ok(digits)
}

/// Normalizes a federative unit code (`sp`, ` Sp ` → `SP`).
pub fn uf_code(s: &str) -> Result<&'static str, Invalid> {
    br::uf_index(s.trim_ascii().as_bytes())
        .map(|i| br::UFS[i])
        .ok_or(Invalid)
}

/// Canonical municipality name: the official spelling for the row's UF, else title case.
pub fn municipality(s: &str, uf: Option<&str>) -> CompactString {
    let Some(uf) = uf else { return title_case(s) };
    if let Some(name) = br::official_municipality(s, uf) {
        return CompactString::from(name);
    }
    match cached_municipality(s, uf) {
        Some(name) => CompactString::from(name),
        None => title_case(s),
    }
}

/// Looks a municipality up through a per-thread cache: the same few spellings repeat on every row.
fn cached_municipality(s: &str, uf: &str) -> Option<&'static str> {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::hash::BuildHasherDefault;
    type Cache = HashMap<(u64, u64), Option<&'static str>, BuildHasherDefault<HashedKey>>;
    thread_local! {
        static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
    }
    // One 128-bit hash of the spelling, seeded by the UF, keys the cache.
    let h = xxhash_rust::xxh3::xxh3_128_with_seed(s.as_bytes(), u64::from_le_bytes(pad8(uf)));
    let key = (h as u64, (h >> 64) as u64);
    CACHE.with(|c| {
        if let Some(hit) = c.borrow().get(&key) {
            return *hit;
        }
        let found = br::canonical_municipality(s, uf);
        let mut cache = c.borrow_mut();
        if cache.len() >= 1 << 16 {
            cache.clear();
        }
        cache.insert(key, found);
        found
    })
}

/// A hasher for keys that are already hashes: it mixes their words, no more.
#[derive(Default)]
struct HashedKey(u64);

impl std::hash::Hasher for HashedKey {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = self.0.rotate_left(29) ^ v;
    }
}

fn pad8(s: &str) -> [u8; 8] {
    let mut out = [0u8; 8];
    for (o, b) in out.iter_mut().zip(s.bytes()) {
        *o = b;
    }
    out
}

/// Title case with single spaces: `SAO  JOAO` → `Sao Joao`.
pub fn title_case(s: &str) -> CompactString {
    let mut out = CompactString::with_capacity(s.len());
    for (i, w) in s.split_whitespace().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let mut chars = w.chars();
        if let Some(first) = chars.next() {
            // A letter whose capital is several letters (`ῴ`) is kept: title case stays idempotent.
            let mut upper = first.to_uppercase();
            match (upper.next(), upper.next()) {
                (Some(u), None) => out.push(u),
                _ => out.push(first),
            }
            for c in chars {
                out.extend(c.to_lowercase());
            }
        }
    }
    out
}

fn email_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"^[a-z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+$")
            .expect("e-mail pattern compiles")
    })
}

/// Lower-cases and checks an e-mail address (local part, `@`, a domain with a dot, no spaces).
pub fn email(s: &str) -> Result<CompactString, Invalid> {
    let e = s.trim_ascii().to_lowercase();
    if e.len() <= 254 && email_regex().is_match(&e) && !e.contains("..") {
        Ok(e.into())
    } else {
        Err(Invalid)
    }
}

/// Reads a CPF (`123.456.789-09` or `12345678909`) with valid check digits, as 11 digits.
pub fn cpf(s: &str) -> Result<CompactString, Invalid> {
    let mut d = [0u8; 11];
    let mut n = 0;
    for c in s.trim_ascii().chars() {
        match c {
            '0'..='9' if n < 11 => {
                d[n] = c as u8 - b'0';
                n += 1;
            }
            '.' | '-' | ' ' => {}
            _ => return Err(Invalid),
        }
    }
    if n == 11 && br::cpf_is_valid(&d) {
        Ok(d.iter()
            .map(|x| char::from(b'0' + x))
            .collect::<CompactString>())
    } else {
        Err(Invalid)
    }
}

/// Normalizes a Brazilian phone number to E.164 `+55DDNNNNNNNN(N)`.
pub fn phone(s: &str) -> Result<CompactString, Invalid> {
    let t = s.trim_ascii();
    let international = t.starts_with('+');
    let mut digits = String::with_capacity(14);
    for c in t.chars() {
        match c {
            '0'..='9' => digits.push(c),
            '+' | ' ' | '-' | '(' | ')' | '.' => {}
            _ => return Err(Invalid),
        }
    }
    let national = if international {
        digits.strip_prefix("55").ok_or(Invalid)?
    } else if let Some(rest) = digits.strip_prefix('0') {
        rest
    } else if (digits.len() == 12 || digits.len() == 13) && digits.starts_with("55") {
        &digits[2..]
    } else {
        &digits
    };
    if national.len() != 10 && national.len() != 11 {
        return Err(Invalid);
    }
    let ddd: u8 = national[..2].parse().map_err(|_| Invalid)?;
    let subscriber = &national[2..];
    let ok_subscriber = match subscriber.len() {
        9 => subscriber.starts_with('9'),
        8 => matches!(subscriber.as_bytes()[0], b'2'..=b'5'),
        _ => false,
    };
    if br::is_ddd(ddd) && ok_subscriber {
        let mut out = CompactString::with_capacity(14);
        out.push_str("+55");
        out.push_str(national);
        Ok(out)
    } else {
        Err(Invalid)
    }
}

/// Checks a GTIN-13 (EAN-13) and its check digit.
pub fn gtin13(s: &str) -> Result<CompactString, Invalid> {
    let mut d = [0u8; 13];
    let mut n = 0;
    for c in s.trim_ascii().chars() {
        match c {
            '0'..='9' if n < 13 => {
                d[n] = c as u8 - b'0';
                n += 1;
            }
            ' ' | '-' => {}
            _ => return Err(Invalid),
        }
    }
    if n == 13 && br::gtin13_is_valid(&d) {
        Ok(d.iter()
            .map(|x| char::from(b'0' + x))
            .collect::<CompactString>())
    } else {
        Err(Invalid)
    }
}

/// Today's date in São Paulo.
pub fn today_sao_paulo() -> NaiveDate {
    chrono::Utc::now().with_timezone(&Sao_Paulo).date_naive()
}

/// Returns the local (São Paulo) date of an instant (seconds UTC).
///
/// A product build asks this of every line (10M times for a 10M-row day), and the zone's rules
/// cost a search each: the answer is kept per UTC hour whose first and last seconds fall on the
/// same local date, in a small table per thread. That is exact for this zone: an hour holds at
/// most one change of offset, and the only changes that turn the clock back (the ends of
/// summer time) fall on whole UTC hours, so the local date cannot leave and come back inside an
/// hour (`the_local_date_per_hour_is_exact_around_every_change_of_offset`).
pub fn local_date(secs: i64) -> Option<NaiveDate> {
    use std::cell::Cell;
    const SLOTS: usize = 64;
    thread_local! {
        static DATES: [Cell<(i64, NaiveDate)>; SLOTS] =
            const { [const { Cell::new((i64::MIN, NaiveDate::MIN)) }; SLOTS] };
    }
    let hour = secs.div_euclid(3600);
    let slot = hour.rem_euclid(SLOTS as i64) as usize;
    if let Some(d) = DATES.with(|t| {
        let (h, d) = t[slot].get();
        (h == hour).then_some(d)
    }) {
        return Some(d);
    }
    let date = local_date_exact(secs)?;
    let first = hour.checked_mul(3600);
    let ends = first.and_then(|f| Some((local_date_exact(f)?, local_date_exact(f + 3599)?)));
    if ends == Some((date, date)) {
        DATES.with(|t| t[slot].set((hour, date)));
    }
    Some(date)
}

/// The local (São Paulo) date of an instant, from the zone's rules every time.
fn local_date_exact(secs: i64) -> Option<NaiveDate> {
    DateTime::from_timestamp(secs, 0).map(|t| t.with_timezone(&Sao_Paulo).date_naive())
}

/// Returns the year of a date given in days since the epoch.
pub fn year_of(days: i32) -> Option<i32> {
    NaiveDate::from_epoch_days(days).map(|d| d.year())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> String {
        Value::Ts(timestamp(s).unwrap()).canonical()
    }

    #[test]
    fn the_local_date_per_hour_is_exact_around_every_change_of_offset() {
        use chrono::Offset;
        let offset = |secs: i64| {
            let t = DateTime::from_timestamp(secs, 0).unwrap();
            t.with_timezone(&Sao_Paulo).offset().fix().local_minus_utc()
        };
        // Every UTC hour from 1913 to 2040; each change of offset (the end of local mean time
        // in 1914, every summer time) is checked second by second over the hours around it.
        let (from, to) = (-1_798_761_600_i64 / 3600, 2_208_988_800_i64 / 3600);
        let mut changes = 0;
        for hour in from..to {
            let first = hour * 3600;
            for secs in [first, first + 1_800, first + 3_599] {
                assert_eq!(local_date(secs), local_date_exact(secs), "at {secs}");
            }
            if offset(first - 1) != offset(first + 3_599) {
                changes += 1;
                for secs in first - 3_600..first + 3_600 {
                    assert_eq!(local_date(secs), local_date_exact(secs), "at {secs}");
                }
            }
        }
        assert!(changes > 90, "the zone's changes were found ({changes})");
        // 2018-11-04 00:00 local: summer time began (23:59:59 → 01:00:00, 03:00 UTC).
        assert_eq!(
            local_date(1_541_300_399),
            NaiveDate::from_ymd_opt(2018, 11, 3)
        );
        assert_eq!(
            local_date(1_541_300_400),
            NaiveDate::from_ymd_opt(2018, 11, 4)
        );
        assert_eq!(local_date(i64::MAX), None);
    }

    #[test]
    fn null_markers() {
        for m in [
            "", "  ", "null", "NULL", " None ", "nan", "NaN", "n/a", "N/A", "na", "NA", "-", "?",
        ] {
            assert!(is_null_marker(m), "{m:?} is null");
        }
        for v in ["0", "nada", "--", "none1", "São Paulo"] {
            assert!(!is_null_marker(v), "{v:?} is not null");
        }
    }

    #[test]
    fn brl_amounts() {
        let cases = [
            ("7.99", Ok(799)),
            ("7,99", Ok(799)),
            ("R$ 7,99", Ok(799)),
            ("R$1.234,56", Ok(123456)),
            ("1,234.56", Ok(123456)),
            ("1234.5", Ok(123450)),
            ("1.234", Ok(123400)),
            ("1,234", Ok(123400)),
            ("1.234.567,8", Ok(123456780)),
            ("12", Ok(1200)),
            ("0,5", Ok(50)),
            ("-7,99", Ok(-799)),
            ("R$ -7,99", Ok(-799)),
            ("12.3456", Err(Invalid)),
            ("7.999.9", Err(Invalid)),
            ("1.23.456", Err(Invalid)),
            ("abc", Err(Invalid)),
            ("", Err(Invalid)),
            ("R$", Err(Invalid)),
            ("7,99 reais", Err(Invalid)),
        ];
        for (raw, want) in cases {
            assert_eq!(brl_cents(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn amounts_never_overflow_and_fit_decimal_18_2() {
        assert_eq!(brl_cents("9999999999999999.99"), Ok(MAX_CENTS));
        assert_eq!(brl_cents("-9999999999999999.99"), Ok(-MAX_CENTS));
        for raw in [
            "10000000000000000",
            "-10000000000000000.00",
            "92233720368547758.07",
            "92233720368547758.99",
            "-92233720368547758.99",
            "R$ -99999999999999999999,99",
            "999999999999999999999999999999999999",
        ] {
            assert_eq!(brl_cents(raw), Err(Invalid), "{raw:?}");
        }
        let opts = KindOptions {
            positive: true,
            max: Some(100_000),
            ..Default::default()
        };
        let today = NaiveDate::from_ymd_opt(2026, 11, 28).unwrap();
        assert_eq!(
            Kind::Int.validate("100000", &opts, None, today),
            Ok(Value::Int(100_000))
        );
        for raw in ["100001", "92233720368547758", "-1", "0"] {
            assert_eq!(
                Kind::Int.validate(raw, &opts, None, today),
                Err(Invalid),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn instants_and_dates_stay_within_years_1_to_9999() {
        for bad in [
            "0000-01-01T00:00:00Z",
            "0001-01-01T00:00:00+01:00",
            "9999-12-31T23:00:00-03:00",
            "00/01/0000",
            "01/01/0000 10:00",
        ] {
            assert_eq!(timestamp(bad), Err(Invalid), "{bad:?}");
        }
        // The remembered date answers only for the same date.
        for (text, want) in [
            ("2026-11-27T00:00:01Z", Some(1_795_737_601)),
            ("2026-11-27T23:59:59Z", Some(1_795_823_999)),
            ("2026-11-28T00:00:00Z", Some(1_795_824_000)),
            ("2026-11-27T00:00:00Z", Some(1_795_737_600)),
            ("2026-02-29T00:00:00Z", None),
            ("2026-11-27T24:00:00Z", None),
        ] {
            assert_eq!(canonical_instant(text.as_bytes()), want, "{text}");
        }
        assert_eq!(timestamp("0001-01-01T00:00:00Z"), Ok(MIN_INSTANT));
        assert_eq!(timestamp("9999-12-31T23:59:59Z"), Ok(MAX_INSTANT));
        assert_eq!(date("0000-06-01", None, None), Err(Invalid));
        assert!(date("9999-12-31", None, None).is_ok());
        assert!(date("0001-01-01", None, None).is_ok());
    }

    #[test]
    fn identifiers_lose_invisible_characters_and_refuse_controls() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 28).unwrap();
        let opts = KindOptions {
            upper: true,
            ..Default::default()
        };
        for raw in [
            "\u{feff}TX-1",
            "\u{200b}tx-1",
            " \u{feff} TX-1\u{200d}",
            "TX\u{2060}-1",
        ] {
            assert_eq!(
                Kind::Id.validate(raw, &opts, None, today),
                Ok(Value::Str("TX-1".into())),
                "{raw:?}"
            );
        }
        for raw in ["TX\u{1}1", "TX\u{7f}1", "TX\u{85}1", "TX\u{0}1"] {
            assert_eq!(
                Kind::Id.validate(raw, &opts, None, today),
                Err(Invalid),
                "{raw:?}"
            );
        }
        assert_eq!(
            Kind::ProductCode.validate("\u{feff}OHB-000101", &opts, None, today),
            Ok(Value::Str("OHB-000101".into()))
        );
    }

    #[test]
    fn integers_with_units() {
        let units: Vec<String> = ["un", "und"].iter().map(|s| s.to_string()).collect();
        for (raw, want) in [
            ("2", Ok(2)),
            ("2.0", Ok(2)),
            ("2,0", Ok(2)),
            ("2 un", Ok(2)),
            ("2un", Ok(2)),
            (" 3 ", Ok(3)),
            ("12 UND", Ok(12)),
            ("2.5", Err(Invalid)),
            ("abc", Err(Invalid)),
            ("2 kg", Err(Invalid)),
            ("un", Err(Invalid)),
        ] {
            assert_eq!(int_with_units(raw, &units), want, "{raw:?}");
        }
    }

    #[test]
    fn timestamps_in_every_format() {
        assert_eq!(ts("2026-11-27T14:03:00-03:00"), "2026-11-27T17:03:00Z");
        assert_eq!(ts("2026-11-27T17:03:00Z"), "2026-11-27T17:03:00Z");
        assert_eq!(ts("2026-11-27 14:03:00"), "2026-11-27T17:03:00Z");
        assert_eq!(ts("27/11/2026 14:03"), "2026-11-27T17:03:00Z");
        assert_eq!(ts("27/11/2026"), "2026-11-27T03:00:00Z");
        assert_eq!(ts("2026/11/27 14:03:00"), "2026-11-27T17:03:00Z");
        assert_eq!(ts("1795798980"), "2026-11-27T17:03:00Z");
        assert_eq!(ts("2026-11-27T14:03:00.123-0300"), "2026-11-27T17:03:00Z");
        // Day first: 01/02 is the 1st of February.
        assert_eq!(ts("01/02/2026 10:00"), "2026-02-01T13:00:00Z");
        for bad in [
            "31/02/2026",
            "yesterday",
            "2026-13-01",
            "27/11/26",
            "2026-11-27 25:00",
            "12345",
        ] {
            assert_eq!(timestamp(bad), Err(Invalid), "{bad:?}");
        }
    }

    #[test]
    fn sao_paulo_historical_daylight_saving() {
        // Summer time 2018/19 began 2018-11-04 00:00 (clocks to 01:00): 00:30 is in the gap.
        assert_eq!(ts("2018-11-04 00:30:00"), "2018-11-04T03:30:00Z");
        assert_eq!(ts("2018-11-04 01:30:00"), "2018-11-04T03:30:00Z");
        // It ended 2019-02-17 00:00 (clocks back to 23:00 on the 16th): 23:30 is ambiguous, earlier offset (-02).
        assert_eq!(ts("2019-02-16 23:30:00"), "2019-02-17T01:30:00Z");
        // In summer time the offset is -02:00; today it is -03:00 all year.
        assert_eq!(ts("2018-12-25 12:00:00"), "2018-12-25T14:00:00Z");
        assert_eq!(ts("2026-12-25 12:00:00"), "2026-12-25T15:00:00Z");
    }

    #[test]
    fn dates() {
        let min = NaiveDate::from_ymd_opt(1900, 1, 1);
        let today = NaiveDate::from_ymd_opt(2026, 11, 28);
        let d = |s| date(s, min, today).map(|d| d.to_string());
        assert_eq!(d("1985-03-07").unwrap(), "1985-03-07");
        assert_eq!(d("07/03/1985").unwrap(), "1985-03-07");
        assert_eq!(d("1985/03/07 00:00:00").unwrap(), "1985-03-07");
        assert_eq!(d("2030-01-01"), Err(Invalid));
        assert_eq!(d("1899-12-31"), Err(Invalid));
    }

    #[test]
    fn ceps() {
        for (raw, want) in [
            ("01001-000", "01001-000"),
            ("01001000", "01001-000"),
            ("01.001-000", "01001-000"),
            ("1001000", "01001-000"),
            (" 69900-000 ", "69900-000"),
        ] {
            assert_eq!(cep(raw).as_deref(), Ok(want), "{raw:?}");
        }
        for bad in ["123", "00000-000", "0100100", "01001-0000", "abcde-fgh"] {
            assert_eq!(cep(bad), Err(Invalid), "{bad:?}");
        }
    }

    #[test]
    fn cpfs() {
        assert_eq!(cpf("529.982.247-25").as_deref(), Ok("52998224725"));
        assert_eq!(cpf("52998224725").as_deref(), Ok("52998224725"));
        for bad in [
            "111.111.111-11",
            "00000000000",
            "529.982.247-26",
            "5299822472",
            "52998224725a",
        ] {
            assert_eq!(cpf(bad), Err(Invalid), "{bad:?}");
        }
    }

    #[test]
    fn phones() {
        for (raw, want) in [
            ("(11) 91234-5678", "+5511912345678"),
            ("11912345678", "+5511912345678"),
            ("+55 11 91234 5678", "+5511912345678"),
            ("011 91234-5678", "+5511912345678"),
            ("(21) 3456-7890", "+552134567890"),
            ("5511912345678", "+5511912345678"),
        ] {
            assert_eq!(phone(raw).as_deref(), Ok(want), "{raw:?}");
        }
        for bad in [
            "(20) 91234-5678",
            "(11) 81234-5678",
            "+1 11 91234 5678",
            "91234-5678",
            "(11) 1234-5678",
        ] {
            assert_eq!(phone(bad), Err(Invalid), "{bad:?}");
        }
    }

    #[test]
    fn emails() {
        assert_eq!(
            email(" Ana.Silva@Example.COM.br ").as_deref(),
            Ok("ana.silva@example.com.br")
        );
        for bad in [
            "foo@bar",
            "a b@c.com",
            "@c.com",
            "a@.com",
            "a@c..com",
            "a@@c.com",
        ] {
            assert_eq!(email(bad), Err(Invalid), "{bad:?}");
        }
    }

    #[test]
    fn product_codes_and_gtins() {
        for raw in [
            "OHB-000101",
            "ohb 000101",
            "OHB000101",
            "ohb-000101",
            " OHB_000101 ",
        ] {
            assert_eq!(product_code(raw).as_deref(), Ok("OHB-000101"), "{raw:?}");
        }
        for bad in ["OH-12", "OHBX-000101", "OHB-00010", "000101-OHB"] {
            assert_eq!(product_code(bad), Err(Invalid), "{bad:?}");
        }
        assert_eq!(gtin13("7894900011517").as_deref(), Ok("7894900011517"));
        assert_eq!(gtin13("7894900011518"), Err(Invalid));
    }

    #[test]
    fn ufs_and_municipalities() {
        assert_eq!(uf_code(" Sp "), Ok("SP"));
        // Every pair of ASCII bytes: a code exactly when it names a UF, in either case.
        for a in 0..0x80u8 {
            for b in 0..0x80u8 {
                let pair = String::from_utf8(vec![a, b]).unwrap();
                let want = br::UFS.iter().find(|u| u.eq_ignore_ascii_case(&pair));
                assert_eq!(uf_code(&pair).ok(), want.copied(), "{pair}");
            }
        }
        assert_eq!(uf_code("XX"), Err(Invalid));
        assert_eq!(municipality("SAO PAULO", Some("SP")), "São Paulo");
        assert_eq!(municipality(" sao  paulo", Some("SP")), "São Paulo");
        // Latin-1 bytes are decoded before validation; the accent survives.
        let latin1 = encoding_rs::WINDOWS_1252.decode(b"S\xe3o Paulo").0;
        assert_eq!(municipality(&latin1, Some("SP")), "São Paulo");
        assert_eq!(
            municipality("VILA  INVENTADA", Some("SP")),
            "Vila Inventada"
        );
    }

    #[test]
    fn enums_with_synonyms() {
        let values: Vec<(String, String)> = [
            ("completed", "completed"),
            ("concluido", "completed"),
            ("cancelado", "cancelled"),
            ("cancelled", "cancelled"),
        ]
        .iter()
        .map(|(a, b)| (fold(a), b.to_string()))
        .collect();
        for raw in [
            "Completed",
            "COMPLETED",
            "concluído",
            "Concluído",
            " concluido ",
        ] {
            assert_eq!(
                enumeration(raw, &values).as_deref(),
                Ok("completed"),
                "{raw:?}"
            );
        }
        assert_eq!(
            enumeration("CANCELADO", &values).as_deref(),
            Ok("cancelled")
        );
        assert_eq!(enumeration("pending", &values), Err(Invalid));
    }

    #[test]
    fn text_canonical_spelling() {
        let known = vec!["Hungry".to_string()];
        assert_eq!(text("  HUNGRY ", &known), "Hungry");
        assert_eq!(text("Guaraná   Brasil", &known), "Guaraná Brasil");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn opts() -> KindOptions {
        KindOptions {
            units: vec!["un".into()],
            values: vec![
                ("completed".into(), "completed".into()),
                ("concluido".into(), "completed".into()),
            ],
            known: vec!["Hungry".into()],
            uf_column: Some(0),
            ..Default::default()
        }
    }

    /// Normalizing a normalized value changes nothing, for every kind.
    fn idempotent(kind: Kind, raw: &str, uf: Option<&str>) {
        let today = NaiveDate::from_ymd_opt(2026, 11, 28).unwrap();
        if let Ok(v) = kind.validate(raw, &opts(), uf, today) {
            let text = v.canonical();
            let again = kind.validate(&text, &opts(), uf, today);
            assert_eq!(
                again.as_ref().map(Value::canonical),
                Ok(text.clone()),
                "{kind:?} {raw:?} → {text:?}"
            );
        }
    }

    const ALL_KINDS: [Kind; 15] = [
        Kind::Text,
        Kind::Id,
        Kind::ProductCode,
        Kind::Int,
        Kind::Brl,
        Kind::Enum,
        Kind::Timestamp,
        Kind::Date,
        Kind::Cep,
        Kind::Uf,
        Kind::Municipality,
        Kind::Email,
        Kind::Cpf,
        Kind::Phone,
        Kind::Gtin13,
    ];

    fn id_value(raw: &str) -> Result<Value, Invalid> {
        let today = NaiveDate::from_ymd_opt(2026, 11, 28).unwrap();
        Kind::Id.validate(raw, &opts(), None, today)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn any_text_is_idempotent(raw in "\\PC{0,30}", uf in "[A-Za-z ]{0,3}") {
            for kind in ALL_KINDS {
                idempotent(kind, &raw, Some(uf.trim()));
            }
        }

        #[test]
        fn amounts_round_trip(cents in 0i64..10_000_000_000, style in 0u8..4) {
            let (int, frac) = (cents / 100, cents % 100);
            let grouped = |sep: char| {
                let digits = int.to_string();
                let mut out = String::new();
                for (i, c) in digits.chars().enumerate() {
                    if i > 0 && (digits.len() - i) % 3 == 0 { out.push(sep); }
                    out.push(c);
                }
                out
            };
            let raw = match style {
                0 => format!("{int}.{frac:02}"),
                1 => format!("R$ {},{frac:02}", grouped('.')),
                2 => format!("{},{frac:02}", grouped('.')),
                _ => format!("{}.{frac:02}", grouped(',')),
            };
            prop_assert_eq!(brl_cents(&raw), Ok(cents), "{}", raw);
            idempotent(Kind::Brl, &raw, None);
        }

        #[test]
        fn any_string_never_panics_and_is_idempotent(raw in any::<String>(), uf in "[A-Z]{2}") {
            for kind in ALL_KINDS {
                idempotent(kind, &raw, Some(&uf));
            }
        }

        #[test]
        fn numbers_near_the_limits_never_panic(raw in "-?(R\\$)? ?[0-9]{0,24}([.,][0-9]{0,4}){0,3}") {
            for kind in [Kind::Int, Kind::Brl, Kind::Timestamp, Kind::Date] {
                idempotent(kind, &raw, None);
            }
            if let Ok(c) = brl_cents(&raw) {
                prop_assert!(c.abs() <= MAX_CENTS);
                // The sign is the text's: a negative amount never reads as a positive one.
                prop_assert!(c == 0 || (c < 0) == raw.contains('-'), "{} → {}", raw, c);
            }
        }

        #[test]
        fn every_amount_that_fits_round_trips(cents in -MAX_CENTS..=MAX_CENTS) {
            let text = Value::Cents(cents).canonical();
            prop_assert_eq!(brl_cents(&text), Ok(cents));
        }

        #[test]
        fn identifiers_with_invisible_characters_match_their_visible_text(
            id in "[A-Z]{2}-[0-9]{1,6}",
            junk in prop::sample::select(vec!['\u{feff}', '\u{200b}', '\u{200c}', '\u{200d}', '\u{2060}']),
            at in 0usize..8,
        ) {
            let mut raw: Vec<char> = id.chars().collect();
            raw.insert(at.min(raw.len()), junk);
            let raw: String = raw.into_iter().collect();
            prop_assert_eq!(id_value(&raw), id_value(&id));
        }

        #[test]
        fn canonical_shortcuts_agree_with_the_rules(
            amount in "-?[0-9]{0,20}\\.[0-9]{2}|-?[0-9]{1,3}([.,][0-9]{3}){0,3}[.,][0-9]{2}",
            int in "[0-9]{1,20}",
            instant in "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z",
            secs in super::MIN_INSTANT..=super::MAX_INSTANT,
        ) {
            if let Some(c) = canonical_cents(amount.as_bytes()) {
                prop_assert_eq!(Ok(c), cents_by_the_rules(&amount), "{}", amount);
            }
            prop_assert_eq!(int_with_units(&int, &[]), int_by_the_rules(&int, &[]), "{}", int);
            if let Some(t) = canonical_instant(instant.as_bytes()) {
                prop_assert_eq!(Ok(t), instant_by_the_rules(&instant), "{}", instant);
            }
            // Every instant readers accept is canonical text the shortcut reads.
            let text = Value::Ts(secs).canonical();
            prop_assert_eq!(canonical_instant(text.as_bytes()), Some(secs), "{}", text);
            prop_assert_eq!(instant_by_the_rules(&text), Ok(secs), "{}", text);
        }

        #[test]
        fn instants_round_trip(secs in 0i64..4_000_000_000) {
            let v = Value::Ts(secs).canonical();
            prop_assert_eq!(timestamp(&v), Ok(secs));
            prop_assert_eq!(timestamp(&secs.to_string()), if secs >= 100_000_000 { Ok(secs) } else { Err(Invalid) });
        }

        #[test]
        fn messy_phones_normalize_once(ddd in prop::sample::select(br::DDDS.iter().map(|d| d.0).collect::<Vec<_>>()),
                                       n in 10_000_000u32..100_000_000, style in 0u8..4) {
            let national = format!("{ddd}9{n:08}");
            let raw = match style {
                0 => format!("({ddd}) 9{}-{:04}", n / 10_000, n % 10_000),
                1 => national.clone(),
                2 => format!("+55 {ddd} 9{} {:04}", n / 10_000, n % 10_000),
                _ => format!("0{ddd} 9{}-{:04}", n / 10_000, n % 10_000),
            };
            let want = format!("+55{national}");
            let got = phone(&raw);
            prop_assert_eq!(got.as_deref(), Ok(want.as_str()), "{}", raw);
            idempotent(Kind::Phone, &raw, None);
        }
    }
}
