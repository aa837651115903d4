"""Which config changes a --resume refuses: those that change the model's parameters, named key by key."""
from engine.config import load_config
from engine.training.preflight import model_differences


def _tree(*overrides):
    import json

    return json.loads(json.dumps(load_config("configs/demo.yaml", list(overrides)).to_dict()))


def test_only_parameter_shaping_keys_block_a_resume():
    saved = _tree("--model.aux_loss_weight=0.5")
    assert model_differences(saved, _tree("--model.aux_loss_weight=0.2", "--model.dropout=0.3",
                                          "--model.grad_checkpointing=true")) == []
    assert model_differences(saved, _tree("--model.aux_loss_weight=0")) == [("model.aux_loss_weight", 0.5, 0.0)]
    assert model_differences(saved, _tree("--model.aux_loss_weight=0.5", "--model.backbone=resnet50",
                                          "--data.numeric_columns=[]")) == [
        ("model.backbone", "resnet18", "resnet50"), ("data.numeric_columns", ["age"], [])]
    del saved["model"]["queue_size"]  # a checkpoint older than a setting: not a difference
    assert model_differences(saved, _tree("--model.aux_loss_weight=0.5")) == []
