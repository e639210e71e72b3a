"""models.loading: what loading a model sets up around it."""

import os
import subprocess
import sys

import pytest

UNWRAP = """
import sys, torch
from accelerate.utils import other
from tunelab.models import loading
if {patched}:
    loading.import_deepspeed_only_when_used()
other.extract_model_from_parallel(torch.nn.Linear(2, 2))
print("answer", "deepspeed" in sys.modules)
import deepspeed
print("answer", other.is_deepspeed_available())
"""


@pytest.mark.parametrize("patched", [False, True])
def test_a_model_unwrapped_outside_deepspeed_does_not_import_deepspeed(patched):
    # accelerate's own behaviour (unpatched) is the reference: it imports the whole package to unwrap
    pytest.importorskip("deepspeed")
    out = subprocess.run([sys.executable, "-c", UNWRAP.format(patched=patched)], capture_output=True, text=True,
                         check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}).stdout  # fmt: skip
    # DeepSpeed logs to stdout when imported: read only the script's own answers
    out = [line.split()[1] for line in out.splitlines() if line.startswith("answer ")]
    assert out == (["False", "True"] if patched else ["True", "True"])
