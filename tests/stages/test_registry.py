"""The stage and method tables are consistent with the tables they point into (row shapes, model kinds,
losses), so a new entry that names something unknown fails here, not in the middle of a run."""

from tunelab.data.shapes import SHAPES
from tunelab.methods.registry import METHODS
from tunelab.models.kinds import MODEL_KINDS
from tunelab.stages.registry import STAGES
from tunelab.training.losses import LOSSES


def test_every_stage_points_at_known_shapes_kinds_and_losses():
    assert set(STAGES) == {"sft", "pretrain", "classify", "reward", "dpo", "kto", "orpo", "simpo", "grpo", "rloo"}
    for name, stage in STAGES.items():
        assert stage.name == name and callable(stage.run)
        assert stage.shapes and set(stage.shapes) <= set(SHAPES), name
        assert stage.model_kind in MODEL_KINDS and stage.loss in LOSSES, name
        assert stage.headline_metrics, name


def test_every_method_declares_where_it_saves_and_what_it_can_do():
    for name, method in METHODS.items():
        assert method.name == name and method.weights_dir in ("adapter", "model")
        assert method.saves_whole_model == (method.weights_dir == "model")
        if method.virtual_tokens:  # prompt learning: no packing, no sliced logits, nothing to merge
            assert not method.packs_rows and not method.sliced_logits and not method.mergeable
    assert {n for n, m in METHODS.items() if m.virtual_tokens} == {"prompt", "ptuning", "prefix"}
