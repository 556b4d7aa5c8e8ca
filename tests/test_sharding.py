"""What an accelerate FSDP config turns into (vineppo.parallel.backend.launch_settings), and what it refuses. The
sharded training itself runs in tests/test_distributed.py (2 CPU processes); DeepSpeed configs: tests/test_zero.py."""

import os
import subprocess
import sys

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tiny import ACCELERATE_CONFIGS, cpu_launch_config

from vineppo.config import ConfigError
from vineppo.parallel.backend import launch_settings as settings_from_env
from vineppo.parallel.fsdp import FSDPSettings, shard

ZERO3 = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_RESHARD_AFTER_FORWARD": "true"}


def test_without_an_fsdp_config_nothing_is_sharded():
    assert settings_from_env({}) is None
    assert settings_from_env({"ACCELERATE_USE_FSDP": "false", "FSDP_VERSION": "1"}) is None


def test_the_fsdp_settings_are_read_from_the_launchers_environment():
    assert settings_from_env(ZERO3) == FSDPSettings(True, (), False)
    env = {**ZERO3, "FSDP_RESHARD_AFTER_FORWARD": "false", "FSDP_TRANSFORMER_CLS_TO_WRAP": "LlamaDecoderLayer, Foo",
           "FSDP_ACTIVATION_CHECKPOINTING": "true"}
    assert settings_from_env(env) == FSDPSettings(False, ("LlamaDecoderLayer", "Foo"), True)


@pytest.mark.parametrize("key, value, named", [
    ("FSDP_VERSION", "1", "fsdp_version is '1'"),
    ("FSDP_OFFLOAD_PARAMS", "true", "fsdp_offload_params is 'true'"),
    ("FSDP_AUTO_WRAP_POLICY", "SIZE_BASED_WRAP", "fsdp_auto_wrap_policy is 'SIZE_BASED_WRAP'"),
    ("FSDP_STATE_DICT_TYPE", "SHARDED_STATE_DICT", "fsdp_state_dict_type is 'SHARDED_STATE_DICT'"),
    ("ACCELERATE_MIXED_PRECISION", "bf16", "mixed_precision is 'bf16'"),
])
def test_settings_that_cannot_be_honoured_are_refused_by_name(key, value, named):
    with pytest.raises(ConfigError, match=named):
        settings_from_env({**ZERO3, key: value})


def test_a_model_without_the_named_block_class_is_refused_before_sharding():
    model = LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=32))
    with pytest.raises(ConfigError, match=r"fsdp_transformer_layer_cls_to_wrap.*\['GPT2Block'\]"):
        shard(model, FSDPSettings(True, ("GPT2Block",), False))
    assert all(type(p) is torch.nn.Parameter for p in model.parameters())  # left as it was


@pytest.mark.slow
@pytest.mark.parametrize("zero, reshard_after_forward", [(2, False), (3, True)])
def test_the_shipped_fsdp_configs_reach_the_trainer(zero, reshard_after_forward, tmp_path):
    """The shipped config, as `accelerate launch` would read it (on 2 CPU processes instead of 8 GPUs)."""
    from accelerate.commands.config.config_args import load_config_from_file

    shipped = ACCELERATE_CONFIGS / f"fsdp_zero{zero}.yaml"
    assert str(load_config_from_file(str(shipped)).distributed_type).endswith("FSDP")
    config = cpu_launch_config(f"fsdp_zero{zero}", tmp_path)
    (tmp_path / "show.py").write_text("from vineppo.parallel.backend import launch_settings\nprint(launch_settings())\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
         str(tmp_path / "show.py")], env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    expected = str(FSDPSettings(reshard_after_forward, (), False))
    assert result.stdout.count(expected) == 2, result.stdout  # one line per process
