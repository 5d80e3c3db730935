"""docs/models.md lists every model and loss with the parameter counts the code computes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from seg_models import (
    available_losses,
    available_models,
    loss_table_markdown,
    model_table,
    model_table_markdown,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "models.md"


def _section(name: str) -> str:
    match = re.search(rf"<!-- BEGIN {name} -->\n(.*?)\n<!-- END {name} -->", DOC.read_text(), re.S)
    assert match, f"docs/models.md lacks the {name} markers"
    return match.group(1)


@pytest.mark.parametrize(
    ("section", "render"),
    [("model-table", model_table_markdown), ("loss-table", loss_table_markdown)],
)
def test_doc_tables_match_the_code(section: str, render) -> None:
    assert _section(section) == render(), (
        'regenerate with: python -c "import seg_models as s; '
        'print(s.model_table_markdown()); print(s.loss_table_markdown())"'
    )


def test_tables_cover_everything() -> None:
    rows = {row.name: row for row in model_table()}
    assert set(rows) == set(available_models())
    assert all((row.params_2d or 0) > 0 for row in rows.values() if row.kind == "neural")
    assert rows["unet"].params_3d and rows["dynunet"].params_3d
    # The classical U-Net of the paper has about 31 M parameters.
    assert 30e6 < (rows["unet"].params_2d or 0) < 32e6
    loss_section = _section("loss-table")
    assert all(f"`{name}`" in loss_section for name in available_losses())
