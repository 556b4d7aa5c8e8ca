from pathlib import Path

import pytest

from vineppo.config import Config, ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def error_of(overrides=None, path=None):
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


def test_defaults_and_overrides():
    overrides = ["algo.vineppo.k=3", "train.iterations=20", "engine.top_p=0.95", "algo.vineppo.max_value_steps=null"]
    cfg = load_config(None, overrides)
    vine = cfg.algo.vineppo
    assert (vine.k, cfg.train.iterations, cfg.engine.top_p, vine.max_value_steps) == (3, 20, 0.95, None)
    assert load_config().algo.vineppo.k == Config().algo.vineppo.k


def test_quickstart_yaml_is_the_default_config():
    assert load_config(REPO / "configs" / "quickstart.yaml") == Config()


@pytest.mark.parametrize(
    "override, expected",
    [
        ("algo.vineppo.k=0", "algo.vineppo.k: Input should be greater than or equal to 1 (got 0)"),
        ("engine.temperature=0", "engine.temperature: Input should be greater than 0"),
        ("engine.temperature=-1", "engine.temperature"),
        ("engine.top_p=1.5", "engine.top_p"),
        ("train.iterations=abc", "train.iterations: Input should be a valid integer"),
        ("algo.whiten_advantages=maybe", "algo.whiten_advantages"),
        ("train.micro_batch_size=7", "micro_batch_size (7) must divide mini_batch_size (64)"),
        ("train.mini_batch_size=100", "mini_batch_size (100) must divide the episodes per iteration"),
        ("model.tiny.num_heads=3", "hidden_size (128) must be divisible by num_heads (3)"),
        ("task.arithmetic.operators=+/", "task.arithmetic.operators"),
        ("algo.name=reinforce", "algo.name: 'reinforce' is not a method; choose one of vineppo, ppo, grpo, rloo, restem, "
                                "dpo_plus"),
    ],
)
def test_impossible_values_name_the_key(override, expected):
    assert expected in error_of([override])


def test_unknown_keys_are_rejected():
    assert "unknown key 'algo.kk'" in error_of(["algo.kk=1"])
    assert "unknown key 'training'" in error_of(["training.iterations=3"])
    assert "expected key=value" in error_of(["algo.k"])


def test_a_key_of_one_method_is_refused_for_another_naming_where_it_lives(tmp_path):
    """Each method's options live in its own section: `algo.name=grpo algo.k=5` cannot pass silently."""
    assert error_of(["algo.name=grpo", "algo.k=5"]) == (
        "override: unknown key 'algo.k' (it is now 'algo.vineppo.k', an option of that method alone)"
    )
    assert "unknown key 'algo.grpo'" in error_of(["algo.name=grpo", "algo.grpo.k=5"])
    assert "unknown key 'algo.restem.k'" in error_of(["algo.name=restem", "algo.restem.k=5"])
    old = tmp_path / "old.yaml"
    old.write_text("algo:\n  dpo_beta: 0.1\n")
    assert error_of(path=old) == f"{old}: unknown key 'algo.dpo_beta' (it is now 'algo.dpo_plus.beta', an option of that method alone)"


def test_file_errors_name_the_file(tmp_path):
    assert "config file not found" in error_of(path=tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("algo:\n  k: [1\n")
    assert f"{bad}: not valid YAML" in error_of(path=bad)
    extra = tmp_path / "extra.yaml"
    extra.write_text("algo:\n  k: 3\n  beta: 2\n")
    assert f"{extra}: unknown key 'algo.beta'" in error_of(path=extra)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    assert "expected a mapping of sections" in error_of(path=listy)


def test_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("algo:\n  vineppo:\n    k: 5\ntrain:\n  iterations: 7\n")
    cfg = load_config(path, ["algo.vineppo.k=2"])
    assert (cfg.algo.vineppo.k, cfg.train.iterations) == (2, 7)


PAPER = REPO / "configs" / "paper"


@pytest.mark.parametrize("setup", ["rho1b_gsm8k", "rho1b_math", "deepseek7b_gsm8k", "deepseek7b_math"])
@pytest.mark.parametrize("method", ["vineppo", "ppo", "grpo", "rloo", "restem", "dpo_plus"])
def test_the_paper_configs_load_and_validate(setup, method):
    cfg = load_config([PAPER / "common.yaml", PAPER / f"{setup}.yaml", PAPER / "methods" / f"{method}.yaml"])
    assert cfg.algo.name == method
    assert cfg.task.name == setup.split("_")[1]
    assert cfg.model.path.startswith("realtreetune/")
    assert (cfg.train.lr, cfg.algo.kl_coef, cfg.engine.temperature) == (1e-6, 1e-4, 0.6)
    assert cfg.algo.vineppo.max_value_steps == (25 if setup.endswith("gsm8k") else None)
    assert cfg.algo.dpo_plus.beta == (0.3 if setup.endswith("gsm8k") else 0.1)


@pytest.mark.parametrize("setup", ["rho1b_gsm8k", "rho1b_math", "deepseek7b_gsm8k", "deepseek7b_math"])
def test_the_paper_configs_carry_the_official_sft_recipe(setup):
    """McGill-NLP/VinePPO configs/sft_{rho1b,deepseekmath}_for_{gsm8k,MATH}.jsonnet, trainers/training_args.jsonnet
    and deepspeed/lr_scheduler.jsonnet (WarmupDecayLR), written out here independently of the config defaults."""
    sft = load_config([PAPER / "common.yaml", PAPER / f"{setup}.yaml"]).sft
    assert (sft.epochs, sft.batch_size, sft.warmup_ratio, sft.weight_decay, sft.max_grad_norm) == (2, 64, 0.03, 0, 1)
    assert (sft.schedule, sft.loss_reduction, sft.max_length, sft.lora.r) == ("linear", "sequence_mean", 2048, 0)
    assert sft.lr == (1e-5 if setup.startswith("rho1b") else 5e-5)
    assert sft.micro_batch_size == (8 if setup.startswith("rho1b") else 2)
    assert sft.mixed_precision == "bf16"


def test_later_config_files_win_key_by_key(tmp_path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("algo:\n  vineppo:\n    k: 3\n    max_value_steps: 4\n  clip_range: 0.1\n")
    second.write_text("algo:\n  vineppo:\n    k: 5\n")
    cfg = load_config([first, second], ["train.iterations=7"])
    vine = cfg.algo.vineppo
    assert (vine.k, vine.max_value_steps, cfg.algo.clip_range, cfg.train.iterations) == (5, 4, 0.1, 7)
