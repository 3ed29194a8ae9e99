"""Shared fixtures: a tiny exact task (built once per test session into a temp cache)."""

import os

import pytest
import torch

os.environ.setdefault("ALIGNBENCH_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# A small exact task: 4 prompts x 4^3 = 64 responses, a 1-layer reference; builds in a few seconds.
TINY_EXACT = {"num_prompts": 4, "vocab_size": 4, "length": 3, "n_layer": 1, "n_embd": 32, "n_head": 2,
              "pretrain_steps": 60, "num_train_pairs": 256, "num_eval_pairs": 64}
# A larger exact task for the RLHF tests (reward model, PPO, best-of-N): 4 prompts x 64 responses, more pairs.
SMALL_EXACT = {"num_prompts": 4, "vocab_size": 4, "length": 3, "n_embd": 32, "n_head": 2,
               "pretrain_samples": 4000, "pretrain_steps": 150, "pretrain_batch_size": 128,
               "num_train_pairs": 1024, "num_eval_pairs": 512}
TINY_TRAIN = {"steps": 6, "batch_size": 16, "eval_every": 3, "warmup_steps": 2}


# The models in the tests are tiny: one intra-op thread is faster, and on a busy 2-core machine two threads
# per process were measured 5-10x slower (the sweep runner makes the same choice, runner.configure_threads).
if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("alignbench-cache")


@pytest.fixture(scope="session")
def tiny_exact_env(cache_dir):
    import torch

    from alignbench.config import from_mapping
    from alignbench.registry import get_task

    task_cls = get_task("exact")
    task = task_cls(from_mapping(task_cls.config_cls, TINY_EXACT))
    return task.setup(cache_dir, torch.device("cpu"))


@pytest.fixture(scope="session")
def task():
    """The SMALL_EXACT task (used by the RLHF tests)."""
    from alignbench.config import from_mapping
    from alignbench.registry import get_task

    task_cls = get_task("exact")
    return task_cls(from_mapping(task_cls.config_cls, SMALL_EXACT))


@pytest.fixture(scope="session")
def cache(cache_dir):
    return cache_dir  # one cache for the session: test modules share references and reward models


@pytest.fixture(scope="session")
def env(task, cache):
    return task.setup(cache, torch.device("cpu"))
