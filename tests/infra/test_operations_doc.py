"""docs/operations.md explains every alert and dead-letter kind the program can send: each kind
found in src/ (the runbook's lines, the dead letters' error kinds, the alerts' kinds) appears
there in backticks, with what it means and what to run."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "operations.md"
SRC = ROOT / "src"


def kinds_in_source(src=SRC):
    """Every alert kind and dead-letter error kind named in the Rust sources."""
    kinds = set()
    for path in src.rglob("*.rs"):
        text = path.read_text()
        if path.name == "runbook.rs":
            kinds |= set(re.findall(r'^\s*"([a-z_.]+)"\s*=>', text, flags=re.M))
            kinds |= set(re.findall(r'pub const MAX_DELIVERY_ATTEMPTS: &str = "([a-z_]+)"', text))
        if path.name == "dead_letter.rs":
            kinds |= set(re.findall(r'ErrorKind::\w+ => "([a-z_]+)"', text))
        # Alert kinds: constants with a dotted name, and literals given to Alert::new.
        kinds |= set(re.findall(r'const [A-Z_]+: &str = "([a-z]+\.[a-z_]+)"', text))
        kinds |= set(re.findall(r'Alert::new\(\s*[^,()]+,\s*"([a-z_.]+)"', text))
    return kinds


def test_every_kind_the_program_sends_is_in_the_handbook():
    kinds = kinds_in_source()
    # The sources must still be readable this way (a rename would make the check vacuous).
    assert {"invalid_extract", "batch.held", "extract.missing", "max_delivery_attempts"} <= kinds, kinds
    doc = DOC.read_text()
    missing = sorted(k for k in kinds if f"`{k}`" not in doc)
    assert not missing, f"docs/operations.md does not explain: {', '.join(missing)}"


def test_the_check_finds_a_new_kind(tmp_path):
    src = tmp_path / "src"
    (src / "alerting").mkdir(parents=True)
    (src / "alerting" / "runbook.rs").write_text('match kind {\n    "quality.new_measure" => "x",\n}\n')
    (src / "x.rs").write_text('let a = Alert::new(\n    Severity::Error,\n    "partner.quota",\n);\n')
    assert kinds_in_source(src) == {"quality.new_measure", "partner.quota"}
