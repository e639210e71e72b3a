"""The one table of training stages: adding a stage is its module (recipe + `STAGE` declaration)
plus one line here. Stage modules import torch and transformers only inside their functions, so
reading a config (and `tunelab --help`) stays cheap."""

from __future__ import annotations

from tunelab.stages import classify, grpo, preference, pretrain, reward, sft
from tunelab.stages.base import Stage

STAGES: dict[str, Stage] = {}
for stage in (
    sft.STAGE,
    pretrain.STAGE,
    classify.STAGE,
    reward.STAGE,
    preference.DPO,
    preference.KTO,
    preference.ORPO,
    preference.SIMPO,
    grpo.STAGE,
    grpo.RLOO,
):
    STAGES[stage.name] = stage
