//! Fault injection for crash and long-work tests: `DATASHARE_FAULTS` names points where the
//! worker kills itself with SIGKILL (`crash:<point>`: no cleanup) or waits (`delay:<point>:<secs>`),
//! comma-separated. Read and checked at start-up; empty in production.
//!
//! Points: `after_batch_ready` (a part or marker handler published `BatchReady`, no claim
//! exists yet), `after_claim` (claim taken, nothing done), `batch_step` (before the step's work),
//! `before_publish` (product files uploaded, delivery request not published), `before_done`
//! (everything published, done marker not written).

use std::time::Duration;

/// The points where faults may be injected.
pub const POINTS: [&str; 5] = [
    "after_batch_ready",
    "after_claim",
    "batch_step",
    "before_publish",
    "before_done",
];

/// Faults to inject.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    crash_at: Vec<String>,
    delays: Vec<(String, Duration)>,
}

impl Faults {
    /// Parses `crash:<point>` and `delay:<point>:<secs>`, comma-separated.
    pub fn parse(spec: &str) -> Result<Faults, String> {
        let mut f = Faults::default();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let parts: Vec<&str> = item.split(':').collect();
            let known = |p: &str| {
                if POINTS.contains(&p) {
                    Ok(p.to_string())
                } else {
                    Err(format!(
                        "unknown fault point {p:?} (points: {})",
                        POINTS.join(", ")
                    ))
                }
            };
            match parts.as_slice() {
                ["crash", p] => f.crash_at.push(known(p)?),
                ["delay", p, secs] => {
                    let secs: f64 = secs
                        .parse()
                        .map_err(|_| format!("delay {secs:?} is not a number of seconds"))?;
                    f.delays.push((known(p)?, Duration::from_secs_f64(secs)));
                }
                _ => {
                    return Err(format!(
                        "fault {item:?} is not crash:<point> or delay:<point>:<secs>"
                    ));
                }
            }
        }
        Ok(f)
    }

    /// Reads `DATASHARE_FAULTS`.
    pub fn from_env() -> Result<Faults, String> {
        Self::parse(&std::env::var("DATASHARE_FAULTS").unwrap_or_default())
            .map_err(|e| format!("DATASHARE_FAULTS: {e}"))
    }

    /// Injects what is configured at `point`.
    pub async fn at(&self, point: &str) {
        for (p, d) in &self.delays {
            if p == point {
                tracing::warn!(point, secs = d.as_secs_f64(), "fault injection: delay");
                tokio::time::sleep(*d).await;
            }
        }
        if self.crash_at.iter().any(|p| p == point) {
            tracing::error!(point, "fault injection: crash");
            // SIGKILL to ourselves: no unwinding, no flushing, no core file (abort would dump one).
            // SAFETY: getpid and kill have no preconditions.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let f = Faults::parse("crash:before_done, delay:batch_step:2.5").unwrap();
        assert_eq!(f.crash_at, vec!["before_done".to_string()]);
        assert_eq!(
            f.delays,
            vec![("batch_step".to_string(), Duration::from_millis(2500))]
        );
        assert_eq!(Faults::parse("").unwrap(), Faults::default());
        assert!(Faults::parse("crash:nowhere").is_err());
        assert!(Faults::parse("delay:batch_step:soon").is_err());
        assert!(Faults::parse("explode").is_err());
    }
}
