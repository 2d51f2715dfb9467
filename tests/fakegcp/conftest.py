"""Fixtures of the fake-gcp tests: stacks on free ports, each with its own state
directory, always stopped at the end (even when a test fails)."""

import tomllib

import pytest
import yaml

from fakegcp_lib import ROOT, Stack, load_stack_module


@pytest.fixture(scope="session")
def topology():
    return yaml.safe_load((ROOT / "fake-gcp" / "topology.yaml").read_text())


@pytest.fixture(scope="session")
def config():
    with (ROOT / "config" / "default.toml").open("rb") as f:
        return tomllib.load(f)


@pytest.fixture(scope="session")
def stack_module():
    return load_stack_module()


def _stack(tmp_path_factory, name, *args):
    stack = Stack(tmp_path_factory.mktemp(name) / "stack.json", *args)
    try:
        yield stack.up()
    finally:
        stack.down()


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """The topology exactly as declared (pull subscriptions)."""
    yield from _stack(tmp_path_factory, "stack")


@pytest.fixture(scope="session")
def fast_stack(tmp_path_factory):
    """The topology with retry backoffs capped at 1 s, for redelivery and
    dead-letter tests that would otherwise wait minutes."""
    yield from _stack(tmp_path_factory, "fast-stack", "--retry-backoff-cap", "1")
