"""notebooks/zscir_demo.ipynb executed headless, as Colab would run it top to bottom: offline (the package is already
installed, so the install cell installs nothing), in the venv's own kernel, with its workdir in tmp and a smaller run
than :smoke (the overrides of test_demo_smoke) so the test stays near a minute on 2 cores."""
import json
import os
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
NOTEBOOKS = os.path.join(ROOT, "notebooks")
NOTEBOOK = os.path.join(NOTEBOOKS, "zscir_demo.ipynb")
SMALL = {"prepare.num_train": 120, "prepare.num_val_queries": 20, "train.steps": 8, "warmup.train.steps": 8,
         "train.log_every": 4, "warmup.train.log_every": 4}


def _kernel_manager(directory):
    """A "python3" kernel run by this interpreter, whatever kernelspec python3 is installed elsewhere."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec = directory / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (test venv)", "language": "python"}))
    specs = KernelSpecManager(kernel_dirs=[str(directory)], ensure_native_kernel=False)
    return KernelManager(kernel_name="python3", kernel_spec_manager=specs)


def _outputs(cell, output_type):
    return [o for o in cell.get("outputs", ()) if o.get("output_type") == output_type]


def test_saved_notebook_is_clean():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert "colab.research.google.com/github/" in nb.cells[0].source
    assert sum("top5" in c.metadata.get("tags", ()) for c in code) == 1


@pytest.mark.slow
def test_notebook_runs_offline(tmp_path, monkeypatch):
    workdir = tmp_path / "workdir"
    monkeypatch.setenv("ZSCIR_NOTEBOOK_WORKDIR", str(workdir))
    monkeypatch.setenv("ZSCIR_NOTEBOOK_OVERRIDES", json.dumps(SMALL))
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # an install attempt would fail instead of downloading
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    probe = nbformat.v4.new_code_cell("import sys; print(sys.executable)")  # which interpreter ran the notebook
    nb.cells.append(probe)
    client = nbclient.NotebookClient(nb, km=_kernel_manager(tmp_path / "kernels"), timeout=600, allow_errors=False,
                                     resources={"metadata": {"path": NOTEBOOKS}})
    client.execute()  # top to bottom, as "Run all" does; raises CellExecutionError on any error

    printed = "".join(o.get("text", "") for o in _outputs(probe, "stream")).strip()
    assert os.path.realpath(printed) == os.path.realpath(sys.executable)
    for cell in nb.cells:
        assert not _outputs(cell, "error")
    install = next(c for c in nb.cells if c.cell_type == "code")
    assert "zscir_jax from" in "".join(o.get("text", "") for o in _outputs(install, "stream"))

    results = json.loads((workdir / "results.json").read_text())
    assert {"pvlf", "image_only"} <= set(results)
    grids = [c for c in nb.cells if c.cell_type == "code" and "SHOW_GRIDS" in c.source][0]
    assert any("image/png" in o.get("data", {}) for o in _outputs(grids, "display_data"))
    top5 = next(c for c in nb.cells if "top5" in c.metadata.get("tags", ()))
    assert any("image/png" in o.get("data", {}) for o in _outputs(top5, "display_data")), top5.outputs
