//! The `pattern` kind: a column rule written as a regular expression in `config/tables.toml`.
//!
//! The value is normalized first (`trim`, `upper` or `lower`, then the `remove` characters are
//! deleted), the normalized value must match the whole pattern, and it is what the cleaned column
//! keeps. Patterns use the `regex` crate: matching runs in time linear in the value whatever the
//! pattern (no backtracking), and a pattern is compiled once, when the schemas are loaded.

use compact_str::CompactString;
use regex::{Regex, RegexBuilder};

use super::validators::Invalid;

/// Largest compiled pattern accepted (bytes of the regex crate's program): a typo such as
/// `\w{1000}{1000}` fails at start-up instead of taking the memory of every worker.
pub const MAX_COMPILED_BYTES: usize = 1 << 20;

/// A normalization step applied before matching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Normalize {
    /// Removes surrounding white space.
    Trim,
    /// Upper-cases (Unicode).
    Upper,
    /// Lower-cases (Unicode).
    Lower,
}

impl Normalize {
    /// Parses a step's name in `config/tables.toml`.
    pub fn from_name(s: &str) -> Option<Normalize> {
        match s {
            "trim" => Some(Normalize::Trim),
            "upper" => Some(Normalize::Upper),
            "lower" => Some(Normalize::Lower),
            _ => None,
        }
    }
}

/// A compiled pattern rule.
#[derive(Debug, Clone)]
pub struct PatternRule {
    /// The pattern as written in the configuration.
    pub source: String,
    regex: Regex,
    trim: bool,
    case: Option<Normalize>,
    remove: Vec<char>,
}

impl PatternRule {
    /// Compiles a rule; the error says what is wrong (the regex crate's message shows the
    /// position in the pattern).
    pub fn compile(pattern: &str, normalize: &[String], remove: &str) -> Result<Self, String> {
        let mut trim = false;
        let mut case = None;
        for n in normalize {
            match Normalize::from_name(n) {
                Some(Normalize::Trim) => trim = true,
                Some(c) => {
                    if case.is_some_and(|prev| prev != c) {
                        return Err("normalize cannot hold both upper and lower".into());
                    }
                    case = Some(c);
                }
                None => {
                    return Err(format!("normalize `{n}` is not one of trim, upper, lower"));
                }
            }
        }
        if pattern.is_empty() {
            return Err("pattern is empty".into());
        }
        // Anchored by the rule: the whole value must match, whatever the pattern says.
        let regex = RegexBuilder::new(&format!(r"\A(?:{pattern})\z"))
            .size_limit(MAX_COMPILED_BYTES)
            .build()
            .map_err(|e| {
                // The anchored wrapper would shift positions: compile the pattern alone for the
                // message when it is the pattern itself that is wrong.
                match Regex::new(pattern) {
                    Err(own) => format!("pattern does not compile: {}", one_line(&own)),
                    Ok(_) => format!("pattern does not compile: {}", one_line(&e)),
                }
            })?;
        Ok(PatternRule {
            source: pattern.to_string(),
            regex,
            trim,
            case,
            remove: remove.chars().collect(),
        })
    }

    /// Normalizes a raw value and checks it against the pattern.
    pub fn apply(&self, raw: &str) -> Result<CompactString, Invalid> {
        let s = if self.trim { raw.trim() } else { raw };
        let mut out = match self.case {
            Some(Normalize::Upper) => CompactString::from(s.to_uppercase()),
            Some(Normalize::Lower) => CompactString::from(s.to_lowercase()),
            _ => CompactString::from(s),
        };
        if !self.remove.is_empty() && out.contains(self.remove.as_slice()) {
            out = out.chars().filter(|c| !self.remove.contains(c)).collect();
        }
        if self.regex.is_match(&out) {
            Ok(out)
        } else {
            Err(Invalid)
        }
    }
}

/// The regex crate's error on one line, with the position (1-based, in characters) that its
/// multi-line message marks with `^`.
fn one_line(e: &regex::Error) -> String {
    let text = e.to_string();
    let lines: Vec<&str> = text.lines().collect();
    let error = lines
        .iter()
        .find_map(|l| l.strip_prefix("error: "))
        .unwrap_or_else(|| text.trim());
    // `regex parse error:` / `    <pattern>` / `    ^^^` / `error: <what>` (single-line patterns).
    if let [_, pattern, marks, ..] = lines.as_slice()
        && let Some(col) = marks.find('^')
        && marks.trim().chars().all(|c| c == '^')
        && let Some(body) = pattern.get(4..)
    {
        let at = marks[..col].chars().count().saturating_sub(4) + 1;
        return format!("{error} at character {at} of `{body}`");
    }
    lines
        .join(" ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(p: &str, n: &[&str], remove: &str) -> PatternRule {
        let n: Vec<String> = n.iter().map(|s| s.to_string()).collect();
        PatternRule::compile(p, &n, remove).unwrap()
    }

    #[test]
    fn normalizes_then_matches_the_whole_value() {
        let code = rule(r"[A-Z]{3}\d{6}", &["trim", "upper"], "-. /");
        let cases = [
            (" ohb-000101 ", Ok("OHB000101")),
            ("OHB.000.101", Ok("OHB000101")),
            ("OHB000101", Ok("OHB000101")),
            ("OHB0001011", Err(Invalid)),
            ("xOHB000101", Err(Invalid)),
            ("OHB-00010", Err(Invalid)),
        ];
        for (raw, want) in cases {
            assert_eq!(code.apply(raw).as_deref(), want.as_deref(), "{raw:?}");
        }
        // An alternation is anchored as a whole, not only its last branch.
        let alt = rule("a|b", &[], "");
        assert!(alt.apply("a").is_ok() && alt.apply("ab").is_err() && alt.apply("xb").is_err());
        // Without trim, surrounding spaces are part of the value.
        assert!(rule(r"\d+", &[], "").apply(" 12").is_err());
        assert_eq!(
            rule(r"\d+", &["lower"], "").apply("12").as_deref(),
            Ok("12")
        );
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        let e = PatternRule::compile("[A-Z", &[], "").unwrap_err();
        assert!(e.starts_with("pattern does not compile"), "{e}");
        assert!(
            e.contains("unclosed character class at character 1 of `[A-Z`"),
            "{e}"
        );
        let e = PatternRule::compile(r"\d{3}(x", &[], "").unwrap_err();
        assert!(e.contains("unclosed group at character 6"), "{e}");
        let n = vec!["upper".to_string(), "lower".to_string()];
        assert!(PatternRule::compile("a", &n, "").is_err());
        let n = vec!["strip".to_string()];
        let e = PatternRule::compile("a", &n, "").unwrap_err();
        assert!(e.contains("`strip`"), "{e}");
        let e = PatternRule::compile(r"\w{1000}{1000}", &[], "").unwrap_err();
        assert!(e.contains("size limit"), "{e}");
    }

    #[test]
    fn pathological_patterns_run_in_linear_time() {
        // Catastrophic for a backtracking engine: (a+)+$ against a long run of a's and a b.
        let r = rule(r"(a+)+", &[], "");
        let long = format!("{}b", "a".repeat(200_000));
        let started = std::time::Instant::now();
        assert!(r.apply(&long).is_err());
        let nested = rule(r"(a|aa|a?)*(x|y)*", &[], "");
        assert!(nested.apply(&long).is_err());
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}
