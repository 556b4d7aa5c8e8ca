"""What an accelerate DeepSpeed config turns into (vineppo.parallel.zero.settings_from_env, reached through
vineppo.parallel.backend.launch_settings), and what it refuses. ZeRO training itself runs in
tests/test_distributed.py (2 CPU processes)."""

import builtins
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from tiny import ACCELERATE_CONFIGS, cpu_launch_config

from vineppo.config import ConfigError, TrainConfig
from vineppo.parallel.backend import launch_settings as settings_from_env
from vineppo.parallel.zero import ZeroSettings, initialize

ZERO2 = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2",
         "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "1", "ACCELERATE_MIXED_PRECISION": "no"}
needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed is not installed (README's test command installs it)"
)


def test_the_stage_is_read_from_the_launchers_environment():
    assert settings_from_env(ZERO2) == ZeroSettings(stage=2)
    assert settings_from_env({**ZERO2, "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}) == ZeroSettings(stage=3)


@pytest.mark.parametrize("key, value, named", [
    ("ACCELERATE_DEEPSPEED_ZERO_STAGE", "0", "deepspeed_config.zero_stage is '0'; it must be 1, 2 or 3"),
    ("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "cpu", "offload_optimizer_device is 'cpu'"),
    ("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "nvme", "offload_param_device is 'nvme'"),
    ("ACCELERATE_DEEPSPEED_ZERO3_INIT", "true", "zero3_init_flag is true"),
    ("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "4", "gradient_accumulation_steps is '4'"),
    ("ACCELERATE_GRADIENT_CLIPPING", "0.5", "gradient_clipping is '0.5'; leave it out and set train.max_grad_norm"),
    ("ACCELERATE_MIXED_PRECISION", "bf16", "mixed_precision is 'bf16'"),
])
def test_settings_that_cannot_be_honoured_are_refused_by_name(key, value, named):
    with pytest.raises(ConfigError, match=named):
        settings_from_env({**ZERO2, key: value})


def write_config_file(tmp_path, config) -> dict:
    path = tmp_path / "ds.json"
    path.write_text(config if isinstance(config, str) else json.dumps(config))
    return {**ZERO2, "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(path)}


def test_a_deepspeed_config_file_passes_its_zero_section_through(tmp_path):
    config = {"train_batch_size": "auto", "gradient_clipping": "auto", "bf16": {"enabled": "auto"},
              "zero_optimization": {"stage": 3, "overlap_comm": True, "reduce_bucket_size": 5e7}}
    assert settings_from_env(write_config_file(tmp_path, config)) == ZeroSettings(
        stage=3, zero_optimization={"overlap_comm": True, "reduce_bucket_size": 5e7}
    )


@pytest.mark.parametrize("config, named", [
    ({"train_batch_size": 64, "zero_optimization": {"stage": 2}}, "train_batch_size is 64; set it to \"auto\""),
    ({"optimizer": {"type": "AdamW"}, "zero_optimization": {"stage": 2}}, "remove 'optimizer'"),
    ({"bf16": {"enabled": True}, "zero_optimization": {"stage": 2}}, "bf16.enabled must be false"),
    ({"zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}}}, "offload_param.device must be none"),
    ({"zero_optimization": {}}, "zero_optimization.stage is None"),
    ('{"zero_optimization":\n  {"stage": 2,}}', "line 2: not JSON"),
])
def test_a_deepspeed_config_file_is_checked_key_by_key(tmp_path, config, named):
    with pytest.raises(ConfigError, match=f"ds.json.*{named}".replace("(", r"\(")):
        settings_from_env(write_config_file(tmp_path, config))


def test_a_missing_deepspeed_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="deepspeed_config_file .*nowhere.json does not exist"):
        settings_from_env({**ZERO2, "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(tmp_path / "nowhere.json")})


def test_without_deepspeed_installed_the_error_says_how_to_install_it(monkeypatch):
    real_import = builtins.__import__

    def no_deepspeed(name, *args, **kwargs):
        if name == "deepspeed" or name.startswith("deepspeed."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_deepspeed)
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ConfigError, match="asks for DeepSpeed.*pip install --no-build-isolation"):
        initialize(model, torch.optim.AdamW(model.parameters()), ZeroSettings(2), TrainConfig(), per_step=1)


@needs_deepspeed
@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_the_shipped_deepspeed_configs_reach_the_trainer(stage, tmp_path):
    """The shipped config, as `accelerate launch` would read it (on 2 CPU processes instead of 8 GPUs)."""
    from accelerate.commands.config.config_args import load_config_from_file

    shipped = ACCELERATE_CONFIGS / f"deepspeed_zero{stage}.yaml"
    assert str(load_config_from_file(str(shipped)).distributed_type).endswith("DEEPSPEED")
    config = cpu_launch_config(f"deepspeed_zero{stage}", tmp_path)
    (tmp_path / "show.py").write_text("from vineppo.parallel.backend import launch_settings\nprint(launch_settings())\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
         str(tmp_path / "show.py")], env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count(str(ZeroSettings(stage=stage))) == 2, result.stdout  # one line per process
