"""The documentation's notebook (docs/notebooks/client.md, jupytext Markdown) executed as a notebook with
nbclient on a real kernel: it starts a server on the test bundle, scores the demo catalog through
attrx.client and draws coverage against precision per situation."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_notebook_runs_and_draws_its_plot(bundle, demo_catalog, tmp_path, monkeypatch):
    jupytext = pytest.importorskip("jupytext", reason="the notebook needs the dev extra (jupytext, nbclient)")
    from nbclient import NotebookClient

    nb = jupytext.read(ROOT / "docs" / "notebooks" / "client.md")
    monkeypatch.setenv("ATTRX_NOTEBOOK_BUNDLE", str(bundle))
    monkeypatch.setenv("ATTRX_NOTEBOOK_CATALOG", str(demo_catalog))
    monkeypatch.setenv("ATTRX_NOTEBOOK_OUT", str(tmp_path))
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "products scored by tiny-test" in text and "failed: 0" in text, text
    assert "server stopped" in text
    assert (tmp_path / "coverage-precision.png").stat().st_size > 10_000
    summary = next(o["data"]["text/plain"] for o in outputs if o.get("output_type") == "execute_result")
    assert "precision_accepted" in summary
