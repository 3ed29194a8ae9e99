"""Shared fixtures: a tiny exact task (built once per test session into a temp cache), the seed-0 reward
model of the SMALL_EXACT task (trained once per session), and :func:`require` for optional dependencies."""

import importlib
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("ALIGNBENCH_QUIET", "1")
os.environ.setdefault("ALIGNBENCH_WORKERS", "1")  # sweeps in tests run in-process unless a test asks for workers
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


# ------------------------------------------------------------------------ optional dependencies: no silent skips

TRUE_VALUES = {"1", "true", "yes", "on"}


def pytest_addoption(parser):
    parser.addoption("--require-all", action="store_true", default=False,
                     help="a missing optional test dependency fails the test instead of skipping it (on under CI)")


def strict(config=None) -> bool:
    """True under CI (the CI variable set to a true value) or with --require-all: missing dependencies fail."""
    if os.environ.get("CI", "").strip().lower() in TRUE_VALUES:
        return True
    config = config or _CONFIG.get("config")
    return bool(config is not None and config.getoption("--require-all"))


_CONFIG: dict = {}


def pytest_configure(config):
    _CONFIG["config"] = config


def missing(what: str, reason: str):
    """Fail (under CI / --require-all) or skip (locally, listed by -rs) for a missing dependency ``what``."""
    message = f"missing test dependency {what!r}: {reason}"
    if strict():
        pytest.fail(message + " (required under CI / --require-all; `make install` installs the test extra)",
                    pytrace=False)
    pytest.skip(message, allow_module_level=True)


def require(module_name: str, reason: str = "install the test extra: pip install -e '.[test]'"):
    """Import ``module_name``, or fail (CI / --require-all) / skip (locally) naming it. Use instead of
    ``pytest.importorskip`` so that a broken install of the test extra cannot turn tests into silent skips."""
    try:
        return importlib.import_module(module_name)
    except ImportError:
        missing(module_name, reason)


def free_port() -> int:
    """A TCP port free on localhost right now (the OS picks it), for launchers that need a rendezvous port."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def require_executable(name: str) -> str:
    """A console script installed next to the running interpreter (e.g. torch's ``torchrun``), or fail/skip."""
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        missing(name, f"no {name} next to {sys.executable}")
    return found


# ------------------------------------------------------------------------ the seed-0 reward model, once


@pytest.fixture(scope="session")
def reward_model(env, cache):
    """The seed-0 reward model of the SMALL_EXACT task, trained once per session into the shared cache.

    PPO and best-of-N runs on ``env`` with ``cache`` get this same model through the in-process memo (or, after
    a ``clear_memo``, from the disk cache), so it is trained once for the whole session."""
    from alignbench.reward_model import get_reward_model

    return get_reward_model(env, cache, 0, torch.device("cpu"), show_progress=False)


@pytest.fixture(scope="session")
def dpo_kto_sweep(tmp_path_factory, cache_dir):
    """One DPO + KTO smoke sweep (TINY_EXACT, betas 0.1 and 1.0) for the whole session: the report and scale-out
    tests read it (treat it as read-only; a test that rebuilds report.md must leave it as it found it)."""
    from alignbench.cli import main

    from .test_sweep import sweep_args

    out = tmp_path_factory.mktemp("dpo-kto-sweep")
    assert main(sweep_args(out, cache_dir, methods="dpo,kto", betas="0.1,1.0")) == 0
    return out


@pytest.fixture(autouse=True)
def _restore_registry():
    """Methods and tasks registered by a test's plugin files (throwaway methods, the README's hinge example) are
    removed after the test: otherwise a later sweep without --methods would also run them (order dependence)."""
    from alignbench import registry

    registry.discover()
    saved = dict(registry._METHODS), dict(registry._TASKS), set(registry._loaded_paths)
    yield
    for table, before in zip((registry._METHODS, registry._TASKS, registry._loaded_paths), saved):
        table.clear()
        table.update(before)
