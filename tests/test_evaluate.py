"""`python -m core.evaluate`: a bundle captions a split, its scores land in the bundle."""
import json
import subprocess
import sys

from conftest import ROOT, make_flickr


def test_evaluate_command_writes_metrics_into_the_bundle(tiny_bundle, tmp_path):
    data = make_flickr(tmp_path / "d")
    proc = subprocess.run([sys.executable, "-m", "core.evaluate", "--model", str(tiny_bundle), "--data", str(data),
                           "--split", "val", "--beam", "2"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    assert printed["images"] == 8 and printed["CIDEr"] > 300  # the overfit model gets these right
    stored = json.loads((tiny_bundle / "metrics.json").read_text())
    assert stored["d/val"]["CIDEr"] == printed["CIDEr"]
