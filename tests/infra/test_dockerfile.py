"""Static checks of the Dockerfile (no Docker engine runs here; hadolint
lints it in scripts/check-infra.sh)."""

import re

import pytest

from infra_lib import REPO


@pytest.fixture(scope="module")
def stages():
    """[(base image, alias, [(instruction, arguments)])] with continuation
    lines joined and comments dropped."""
    text = (REPO / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    result = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", args, re.I)
            result.append((m.group(1), m.group(2), []))
        else:
            result[-1][2].append((instruction, args))
    return result


def test_base_images_are_pinned(stages):
    for image, _, _ in stages:
        if ":" not in image and "@" not in image:
            assert image in {alias for _, alias, _ in stages}, image  # a previous stage
            continue
        assert not image.endswith(":latest"), image


def test_dependencies_are_cached_before_the_sources(stages):
    builder = next(instrs for _, alias, instrs in stages if alias == "builder")
    runs = [i for i, (ins, args) in enumerate(builder) if ins == "RUN"]
    cook = next(i for i in runs if "cargo chef cook" in builder[i][1])
    copy_all = next(i for i, (ins, args) in enumerate(builder) if ins == "COPY" and args.startswith(". "))
    build = next(i for i in runs if "cargo build" in builder[i][1])
    assert cook < copy_all < build
    assert "--release" in builder[build][1] and "--locked" in builder[build][1]
    assert "--locked" in builder[cook][1]


def test_runtime_is_small_non_root_and_runs_the_binary(stages):
    image, _, instrs = stages[-1]
    # distroless cc ships libssl3 (ssh2 links it) and CA certificates
    assert image.startswith("gcr.io/distroless/cc-debian12:") or image.startswith("debian:bookworm-slim")
    user = [args for ins, args in instrs if ins == "USER"]
    assert user and user[-1].split(":")[0] not in {"0", "root"}
    entry = [args for ins, args in instrs if ins == "ENTRYPOINT"]
    assert entry == ['["/usr/local/bin/datashare"]']
    assert not any(ins == "RUN" and "cargo" in args for ins, args in instrs)


def subcommands():
    """The binary's subcommands: the variants of `enum Command` (clap's kebab-case names),
    wherever the command line is declared (src/main.rs, src/cli.rs or src/cli/mod.rs)."""
    names = set()
    for path in (REPO / "src" / "main.rs", REPO / "src" / "cli.rs", REPO / "src" / "cli" / "mod.rs"):
        if not path.exists():
            continue
        m = re.search(r"enum Command \{(.*?)\n\}", path.read_text(), re.S)
        if m:
            for variant in re.findall(r"^\s{4}([A-Z][A-Za-z0-9]*)\b", m.group(1), re.M):
                names.add(re.sub(r"(?<!^)([A-Z])", r"-\1", variant).lower())
    return names


def test_every_role_is_a_subcommand_of_the_binary(topology):
    commands = subcommands()
    assert {"worker", "deliver", "alert", "check-sinks"} <= commands, commands
    for role, r in topology["roles"].items():
        assert r["args"][0] in commands, f"role {role}: `datashare {r['args'][0]}` is not a subcommand"
        if r["args"][0] == "deliver":
            assert r["args"][1:] == ["--sink", role]
