//! datashare: marketplace extracts in, partner data products out.
//!
//! The modules follow the data. Dependencies point one way, from the top of this list down:
//! - [`cli`]: every command's arguments, one runtime, one exit-code convention.
//! - [`pipeline`]: what the roles do, one file per step: stage a part, the batch step, deliver,
//!   notify; beside them schedules (ticks, monthly builds), release and replay, sink checks.
//! - [`alerting`]: the alerting consumer: dead-letter archive, grouping, e-mails to the data team,
//!   `replay --dead-letters`.
//! - [`service`]: the transport: roles behind pull and push front ends, one mapping of errors to
//!   ack, nack or dead letter, claims.
//! - [`sinks`]: delivery to partners (SFTP, REST API, e-mail) behind one trait, idempotent through
//!   receipts; connection checks.
//! - [`products`]: partner products: contracts, pseudonymous keys, daily and monthly files,
//!   privacy gate, manifests.
//! - [`clean`]: the cleaning engine: table schemas from config, validators, staging, the batch
//!   step, the quality report, guardrails.
//! - [`gcp`]: Cloud Storage and Pub/Sub clients, emulator-aware.
//! - [`generate`]: seeded synthetic extracts with injected defects and their ground truth.
//! - Leaves, importing nothing from the rest of the crate: [`extract`] (reading raw objects:
//!   layout, gzip, encodings, CSV dialects), [`config`] (typed settings of every module,
//!   validated at start-up), [`events`] (the Pub/Sub messages), [`br`] (Brazilian reference
//!   data), [`telemetry`] (logs, the W3C trace context, OTLP export of spans and metrics).

#![warn(missing_docs)]

pub mod alerting;
pub mod br;
pub mod clean;
pub mod cli;
pub mod config;
pub mod events;
pub mod extract;
pub mod gcp;
pub mod generate;
pub mod pipeline;
pub mod products;
pub mod service;
pub mod sinks;
pub mod telemetry;

#[cfg(test)]
mod layering {
    //! The dependency direction of the module list above, checked on the source: a module may
    //! use only modules of a lower layer; the leaves use nothing of the crate.

    use std::collections::BTreeSet;
    use std::path::Path;

    /// Each top-level module's layer: 0 is the top (the command line), higher is lower.
    const LAYERS: &[(&str, u8)] = &[
        ("cli", 0),
        ("pipeline", 1),
        ("alerting", 1),
        ("service", 2),
        ("sinks", 3),
        ("products", 4),
        ("generate", 4),
        ("clean", 5),
        ("gcp", 6),
        ("extract", 7),
        ("config", 7),
        ("events", 7),
        ("br", 7),
        ("telemetry", 7),
    ];

    fn layer(module: &str) -> u8 {
        LAYERS
            .iter()
            .find(|(m, _)| *m == module)
            .map(|(_, l)| *l)
            .unwrap_or_else(|| panic!("module {module} has no layer in LAYERS"))
    }

    /// The top-level modules named by `crate::<module>` paths in code (comments skipped).
    fn used_modules(text: &str) -> BTreeSet<String> {
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let mut used = BTreeSet::new();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // `use crate::{a::X, b::{Y, Z}}`: the first segment of each top-level item.
                let mut depth = 0;
                let mut item = String::new();
                for c in group.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            used.extend(first_segment(&item));
                            item.clear();
                            continue;
                        }
                        _ => {}
                    }
                    item.push(c);
                }
                used.extend(first_segment(&item));
            } else {
                used.extend(first_segment(rest));
            }
        }
        used
    }

    fn first_segment(path: &str) -> Option<String> {
        let name: String = path
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        (!name.is_empty() && name != "self").then_some(name)
    }

    fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                sources(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    #[test]
    fn modules_use_only_lower_layers_and_leaves_use_nothing() {
        // Read at run time: the test binary may be reused from another checkout's build.
        let root =
            std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("src");
        let mut files = Vec::new();
        sources(&root, &mut files);
        let mut wrong = Vec::new();
        for f in files {
            let rel = f.strip_prefix(&root).unwrap();
            let top = rel.iter().next().unwrap().to_string_lossy();
            let module = top.trim_end_matches(".rs");
            if matches!(module, "lib" | "main") {
                continue;
            }
            let text = std::fs::read_to_string(&f).unwrap();
            for used in used_modules(&text) {
                if used != module && layer(&used) <= layer(module) {
                    wrong.push(format!("{} uses crate::{used}", rel.display()));
                }
            }
        }
        assert!(
            wrong.is_empty(),
            "imports against the layering:\n{}",
            wrong.join("\n")
        );
    }

    #[test]
    fn the_scanner_sees_grouped_and_plain_paths() {
        let used = used_modules(
            "use crate::{config::Config, events::{A, B}};\nfn f() { crate::gcp::x(); }\n// crate::cli",
        );
        let want: BTreeSet<String> = ["config", "events", "gcp"].map(String::from).into();
        assert_eq!(used, want);
    }
}
