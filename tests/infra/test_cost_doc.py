"""docs/cost.md shows what docs/cost_model.py computes: every row of the monthly estimate printed
by the model is in the page, so a changed input cannot leave the page's figures behind."""

import contextlib
import importlib.util
import io
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def model_output():
    spec = importlib.util.spec_from_file_location("cost_model", ROOT / "docs" / "cost_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        module.main()
    return out.getvalue()


def test_the_monthly_table_of_the_page_is_the_models():
    printed = model_output()
    start = printed.index("| line |")
    table = printed[start:printed.index("\n\n", start)].splitlines()
    assert len(table) >= 10, table
    page = (ROOT / "docs" / "cost.md").read_text()
    missing = [row for row in table if row not in page]
    assert not missing, "docs/cost.md lacks these rows of `python3 docs/cost_model.py`:\n" + "\n".join(missing)
