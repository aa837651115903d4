"""The generated DeepSpeed config: pass-through keys validated, batch arithmetic checked, ZeRO stages."""
import pytest

from engine.config import ConfigError, load_config
from engine.training.wrap import deepspeed_config, known_deepspeed_keys


def cfg_with(**sections):
    return load_config(None, {k: v for k, v in sections.items()})


def test_typo_in_pass_through_key_fails_naming_it():
    cfg = cfg_with(deepspeed={"extra": {"zero_optimisation": {"stage": 1}}})
    with pytest.raises(ValueError, match=r"deepspeed\.extra\.zero_optimisation.*did you mean 'zero_optimization'"):
        deepspeed_config(cfg, "fp32", 1)
    cfg = cfg_with(deepspeed={"extra": {"tensorbord": {"enabled": True}}})
    with pytest.raises(ValueError, match="did you mean 'tensorboard'"):
        deepspeed_config(cfg, "fp32", 1)


def test_known_keys_cover_the_documented_sections():
    keys = known_deepspeed_keys()
    for key in ("train_batch_size", "gradient_clipping", "zero_optimization", "fp16", "bf16", "optimizer", "scheduler",
                "tensorboard", "activation_checkpointing", "flops_profiler", "communication_data_type"):
        assert key in keys


def test_pass_through_merges_into_sections():
    cfg = cfg_with(deepspeed={"zero_stage": 2,
                              "extra": {"zero_optimization": {"overlap_comm": True}, "prescale_gradients": True}})
    ds = deepspeed_config(cfg, "bf16", 1)
    assert ds["zero_optimization"] == {"stage": 2, "overlap_comm": True}
    assert ds["prescale_gradients"] is True


@pytest.mark.parametrize("micro,accum,world", [(8, 1, 1), (4, 2, 2), (2, 3, 4)])
def test_batch_arithmetic(micro, accum, world):
    cfg = cfg_with(loader={"batch_size": micro}, train={"grad_accum": accum, "grad_clip": 0.5})
    ds = deepspeed_config(cfg, "fp32", world)
    assert ds["train_batch_size"] == micro * accum * world
    assert ds["train_micro_batch_size_per_gpu"] == micro and ds["gradient_accumulation_steps"] == accum
    assert ds["gradient_clipping"] == 0.5


def test_inconsistent_batch_size_refused():
    cfg = cfg_with(loader={"batch_size": 8}, deepspeed={"extra": {"train_batch_size": 12}})
    with pytest.raises(ValueError, match=r"train_batch_size=12 != micro batch 8 x accumulation 1 x world size 2"):
        deepspeed_config(cfg, "fp32", 2)


def test_zero_stage_3_refused():
    with pytest.raises(ConfigError, match="zero_stage"):
        cfg_with(deepspeed={"zero_stage": 3})


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_zero_stages_wrap_and_step(stage):
    """Each supported ZeRO stage initialises on the CPU accelerator and takes an optimizer step."""
    import torch
    from torch import nn

    from engine.training.distributed import init_distributed
    from engine.training.wrap import wrap_model

    dist = init_distributed()
    cfg = cfg_with(deepspeed={"zero_stage": stage}, loader={"batch_size": 4})
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 3))
    engine, _, _ = wrap_model(model, cfg, dist.device, "fp32", dist.world, total_steps=4, base_lr=0.1)
    before = [p.detach().clone() for p in engine.module.parameters()]
    loss = engine(torch.randn(4, 6)).pow(2).mean()
    engine.backward(loss)
    engine.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, engine.module.parameters()))


def test_evaluation_drops_batch_sizes_pinned_for_the_training_world():
    """A run trained on 2 ranks with deepspeed.extra.train_batch_size evaluates on 1 or 3 ranks."""
    from tools.evaluate import without_batch_arithmetic

    cfg = cfg_with(deepspeed={"extra": {"train_batch_size": 64, "gradient_clipping": 0.5}}, loader={"batch_size": 32})
    deepspeed_config(cfg, "fp32", 2)
    with pytest.raises(ValueError, match="train_batch_size=64"):
        deepspeed_config(cfg, "fp32", 3)
    ds = deepspeed_config(without_batch_arithmetic(cfg), "fp32", 3)
    assert ds["train_batch_size"] == 96 and ds["gradient_clipping"] == 0.5
