"""The walkthrough notebook (``examples/segflow_walkthrough.ipynb``) runs top to bottom.

The notebook is read into memory, its parameter cell replaced (a temporary ``WORKDIR``, a
training budget of a few seconds) and executed with ``nbclient`` on a ``python3`` kernel that
runs this interpreter; the file in the repository is never written. Every file the notebook
lists as written (its ``WRITTEN`` dict) must exist.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "segflow_walkthrough.ipynb"
KERNEL = "python3"
#: Names jupyter_client replaces with ``sys.executable`` when it launches a kernel.
_THIS_PYTHON = {"python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info)}
#: Appended to the executed copy: reports the kernel's interpreter and what the notebook wrote.
_REPORT_CELL = """
import json as _json, sys as _sys
print(_json.dumps({
    "prefix": _sys.prefix,
    "written": {k: [str(p) for p in v] if isinstance(v, list) else str(v) for k, v in WRITTEN.items()},
}))
"""


def _use_this_interpreter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make sure the ``python3`` kernel spec runs this interpreter (install one if needed)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        argv0 = KernelSpecManager().get_kernel_spec(KERNEL).argv[0]
    except NoSuchKernel:
        argv0 = ""
    if argv0 in _THIS_PYTHON or argv0 == sys.executable:
        return
    from ipykernel.kernelspec import install

    prefix = tmp_path / "jupyter-prefix"
    install(kernel_name=KERNEL, prefix=str(prefix))  # argv: [sys.executable, "-m", ...]
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))


def _with_parameters(nb: Any, **values: object) -> None:
    """Replace the source of the cell tagged ``parameters`` with ``name = repr(value)`` lines."""
    (cell,) = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    cell.source = "\n".join(f"{name} = {value!r}" for name, value in values.items())


def _errors(nb: Any) -> list[str]:
    return [
        f"cell {cell.get('id')}: {output.get('ename')}: {output.get('evalue')}"
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]


def test_walkthrough_notebook_runs_and_writes_what_it_lists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nbformat
    from nbclient import NotebookClient

    original = NOTEBOOK.read_bytes()
    nb = nbformat.reads(original.decode("utf-8"), as_version=4)
    assert all(
        not cell.get("outputs") and cell.get("execution_count") is None
        for cell in nb.cells
        if cell.cell_type == "code"
    ), "commit the notebook without outputs"
    workdir = tmp_path / "walkthrough"
    _with_parameters(nb, WORKDIR=str(workdir), MINUTES=0.1)
    nb.cells.append(nbformat.v4.new_code_cell(_REPORT_CELL, id="test-report"))
    run_dir = tmp_path / "cwd"  # the kernel's working directory
    run_dir.mkdir()
    _use_this_interpreter(tmp_path, monkeypatch)

    client = NotebookClient(
        nb, kernel_name=KERNEL, timeout=600, resources={"metadata": {"path": str(run_dir)}}
    )
    client.execute()

    assert not _errors(nb), _errors(nb)
    assert NOTEBOOK.read_bytes() == original
    text = "".join(output.get("text", "") for output in nb.cells[-1].outputs)
    report = json.loads(text.strip().splitlines()[-1])
    assert report["prefix"] == sys.prefix, "the kernel ran another interpreter"
    written = report["written"]
    assert {"masks", "metrics", "overlay", "manifest"} <= set(written)
    paths = [
        Path(p)
        for value in written.values()
        for p in ([value] if isinstance(value, str) else value)
    ]
    for path in paths:
        assert path.is_file(), path
        assert path.is_relative_to(workdir), f"{path} is outside WORKDIR"
    assert len(written["masks"]) == 8
    metrics = json.loads(Path(written["metrics"]).read_text())
    assert len(metrics["cases"]) == 8 and not metrics["failed"]
    assert not any(run_dir.iterdir()), "the notebook wrote into its working directory"
