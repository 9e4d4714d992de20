"""core/runs.py: the run folder's readers, read without the trainer and without torch (the web process)."""
import json
import subprocess
import sys

from conftest import ROOT

BLOCK_TORCH = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "timm") or name == "core.train":
            raise ImportError(f"{name} may not be imported to draw a run")
sys.meta_path.insert(0, NoTorch())
sys.path.insert(0, %r)
"""


def test_the_page_reads_and_draws_a_run_without_torch_or_the_trainer(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model_name": "été", "model": {"decoder": "attention"}},
                                                ensure_ascii=False), encoding="utf-8")
    events = [{"event": "start", "time": 1.0}, {"event": "phase", "phase": "training", "time": 2.0},
              {"event": "step", "epoch": 1, "epochs": 2, "step": 3, "total_steps": 6, "loss": 2.0, "time": 3.0},
              {"event": "epoch", "epoch": 1, "metrics": {"BLEU-4": 1.0, "CIDEr": 2.0}, "time": 4.0},
              {"event": "stopped", "reason": "stop file", "time": 5.0}]
    (run / "progress.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    code = BLOCK_TORCH % str(ROOT) + f"""
from pathlib import Path
from core import jobs, runs, config, paths
import ui.monitor  # the Train page's drawing of a run
info = runs.run_info({str(run)!r})
p = runs.summarize(runs.read_progress({str(run)!r}))
assert jobs.current_job(Path({str(tmp_path)!r})) is None
config.TrainConfig.from_dict({{"epochs": 2}}).resolved().check()  # the page's validation
print(info.status, info.resumable, info.config["model_name"] == "été", p.label, runs.list_runs({str(tmp_path)!r})[0].name)
print(sorted(m for m in sys.modules if m.startswith(("torch", "core.train"))))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["stopped True True epoch 1/2, step 3/6 run", "[]"]


def test_backbone_names_match_the_registry():
    from core.backbones import BACKBONES
    from core.config import BACKBONE_NAMES

    assert tuple(BACKBONES) == BACKBONE_NAMES


def test_form_values_round_trip_and_damage(tmp_path):
    """The Train form's memory: plain values kept beside the run folders, not seen as a run; damage -> {}."""
    from core.runs import FORM_MEMORY, list_runs, load_form_values, save_form_values

    assert load_form_values(tmp_path / "none-yet") == {}
    save_form_values(tmp_path, {"data": "/photos", "epochs": 3, "lr": 4e-4, "fine_tune": True, "odd": [1, 2]})
    assert load_form_values(tmp_path) == {"data": "/photos", "epochs": 3, "lr": 4e-4, "fine_tune": True}
    assert list_runs(tmp_path) == []
    (tmp_path / FORM_MEMORY).write_text("[1, 2]")
    assert load_form_values(tmp_path) == {}
    (tmp_path / FORM_MEMORY).write_text('{"data": "' + "x" * 200_000 + '"}')
    assert load_form_values(tmp_path) == {}
