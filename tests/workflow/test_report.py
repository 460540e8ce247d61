"""The run's index.html and the environment record."""

from __future__ import annotations

from medattn.workflow.report import environment, write_index


def test_index_links_outputs_and_escapes_text(tmp_path):
    (tmp_path / "model" / "checkpoints").mkdir(parents=True)
    (tmp_path / "model" / "checkpoints" / "best.pt").write_bytes(b"x")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "model.log").write_text("log")
    manifest = {"workflow": {"name": "w", "path": "/x/w.yaml"}, "status": "failed", "started": "t",
                "medattn_version": "0.1.0", **environment(), "stages": [
                    {"name": "model", "kind": "train", "output": "model", "status": "failed", "duration_s": 1.5,
                     "error": "bad <value> & more", "links": {"best.pt": "checkpoints/best.pt", "gone": "nope.txt"}},
                    {"name": "scores", "kind": "evaluate", "output": "scores", "status": "pending"}]}
    html = write_index(tmp_path, manifest).read_text()
    assert '<a href="model/checkpoints/best.pt">best.pt</a>' in html and '<a href="logs/model.log">log</a>' in html
    assert '<span class="missing">gone</span>' in html and '<span class="missing">scores/</span>' in html
    assert "bad &lt;value&gt; &amp; more" in html and "<td>1.5 s</td>" in html


def test_environment_records_versions_and_device():
    env = environment()
    assert set(env["versions"]) == {"python", "torch", "monai", "numpy", "platform"}
    assert env["device"]["type"] in ("cpu", "cuda") and env["device"]["cpu"]
