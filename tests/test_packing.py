"""Prefix-sharing packing: the layout by hand, equality with the concatenated forward (values and gradients, also
on batches full of shared prefixes and duplicates), the fallbacks, and a training run packed vs unpacked."""

import pandas as pd
import pytest
import torch

from alignbench import packing
from alignbench.cli import main
from alignbench.data import TokenizedColumns
from alignbench.models import tiny_gpt2
from alignbench.packing import pack_prefix_tree, packed_forward, plan_packing, worth_packing
from alignbench.trainer import PolicyForward, concat_forward

from .conftest import require

from .test_sweep import sweep_args


def columns(rows: list[tuple[list[int], list[int], list[int]]], pad: int = 0) -> TokenizedColumns:
    """(prompt, chosen, rejected) token lists -> right-padded TokenizedColumns, as data.tokenize lays them out."""
    ids, am, cm = {}, {}, {}
    for k, col in ((1, "chosen"), (2, "rejected")):
        seqs = [r[0] + r[k] for r in rows]
        t = max(map(len, seqs))
        ids[col] = torch.tensor([s + [pad] * (t - len(s)) for s in seqs])
        am[col] = torch.tensor([[1] * len(s) + [0] * (t - len(s)) for s in seqs])
        cm[col] = torch.tensor([[0] * len(r[0]) + [1] * len(r[k]) + [0] * (t - len(r[0]) - len(r[k])) for r in rows])
    return TokenizedColumns(ids, am, cm, None)


def random_rows(n: int, vocab: int, seed: int) -> list[tuple[list[int], list[int], list[int]]]:
    g = torch.Generator().manual_seed(seed)

    def seq(lo, hi):
        return torch.randint(1, vocab, (int(torch.randint(lo, hi + 1, (1,), generator=g)),), generator=g).tolist()

    return [(seq(1, 9), seq(1, 7), seq(1, 7)) for _ in range(n)]


@pytest.fixture
def narrow_rows(monkeypatch):
    """Rows exactly as wide as the longest example (the layout tests below are written for that)."""
    monkeypatch.setattr(packing, "MIN_ROW_WIDTH", 1)


def test_layout_by_hand(narrow_rows):
    # row 0: prompt [5, 6], chosen [7], rejected [8, 9]; row 1: prompt [4], chosen [3, 2], rejected [1]
    b = columns([([5, 6], [7], [8, 9]), ([4], [3, 2], [1])])
    p = pack_prefix_tree(b, ["chosen", "rejected"])
    # one segment per first token, the larger first; within a segment the sequences in lexicographic order
    # ([4, 1] before [4, 3, 2]), each prefix once
    assert p.input_ids.tolist() == [[5, 6, 7, 8, 9], [4, 1, 3, 2, 0]]
    # each token keeps the position it has in its own sequence: the rejected completion restarts after the prompt
    assert p.position_ids.tolist() == [[0, 1, 2, 2, 3], [0, 1, 1, 2, 0]]
    m = p.attention_mask[0, 0].int().tolist()
    assert m == [[1, 0, 0, 0, 0],   # prompt: causal
                 [1, 1, 0, 0, 0],
                 [1, 1, 1, 0, 0],   # chosen: prompt + itself
                 [1, 1, 0, 1, 0],   # rejected 8: the prompt and itself, NOT the chosen token
                 [1, 1, 0, 1, 1]]
    assert p.attention_mask[1, 0, 3].int().tolist() == [1, 0, 1, 1, 0]  # token 2 of [4, 3, 2]: not the 1 of [4, 1]
    assert p.attention_mask[1, 0, 4].int().tolist() == [0, 0, 0, 0, 1]  # padding: itself only (no empty row)
    # predictors, as flat indices into the 2 x 5 slots: chosen 7 from the last prompt token (slot 1); rejected 8
    # from slot 1 too, 9 from 8 (slot 3); row 1 starts at slot 5: 3 from its prompt 4 (slot 5), 2 from 3 (slot 7)
    assert p.source["chosen"][0].tolist() == [0, 0, 1]
    assert p.source["rejected"][0].tolist() == [0, 0, 1, 3]
    assert p.source["chosen"][1].tolist() == [0, 5, 7] and p.source["rejected"][1].tolist()[:2] == [0, 5]
    assert p.weight["rejected"][0].tolist() == [0, 0, 1, 1] and p.weight["rejected"][1].tolist() == [0, 1, 0, 0]


def test_shared_prefixes_and_duplicates_are_computed_once(narrow_rows):
    # A: prompt [1], chosen [2, 3], rejected [2, 4]; B: the same prompt, chosen [2, 3] again, rejected [5]
    b = columns([([1], [2, 3], [2, 4]), ([1], [2, 3], [5])])
    plan = plan_packing(b, ["chosen", "rejected"])
    assert (plan.nodes, plan.rows, plan.width) == (5, 1, 5)  # 1, 1-2, 1-2-3, 1-2-4, 1-5 (12 concatenated positions)
    p = pack_prefix_tree(b, ["chosen", "rejected"], plan)
    assert p.input_ids.tolist() == [[1, 2, 3, 4, 5]] and p.position_ids.tolist() == [[0, 1, 2, 2, 1]]
    assert p.attention_mask[0, 0].int().tolist() == [[1, 0, 0, 0, 0],
                                                     [1, 1, 0, 0, 0],
                                                     [1, 1, 1, 0, 0],
                                                     [1, 1, 0, 1, 0],
                                                     [1, 0, 0, 0, 1]]
    # both chosen completions read the same slots; A's rejected shares the 2 and branches at its last token
    assert p.source["chosen"].tolist() == [[0, 0, 1], [0, 0, 1]]
    assert p.source["rejected"].tolist() == [[0, 0, 1], [0, 0, 0]]
    assert p.weight["rejected"].tolist() == [[0, 1, 1], [0, 1, 0]]


def test_a_segment_wider_than_a_row_is_split(monkeypatch):
    """Sequences behind one first token whose tree would outgrow a row start new segments that repeat their prefix."""
    monkeypatch.setattr(packing, "MIN_ROW_WIDTH", 4)
    b = columns([([9, 9], [i, i], [i + 10, i + 10]) for i in (1, 2, 3)])
    plan = plan_packing(b, ["chosen", "rejected"])
    # the whole tree is 2 + 12 = 14 nodes under one root; a row must hold one example (2 + 2 + 2 = 6 slots), so
    # the tree is cut into 3 segments of 2 sequences each, and each segment has its own copy of the prompt
    assert (plan.nodes, plan.rows, plan.width) == (18, 3, 6)
    assert sorted(plan.token[plan.depth == 0].tolist()) == [9, 9, 9]
    model = tiny_gpt2(32, n_positions=16, n_layer=1, n_embd=16, n_head=2, seed=0)
    a, _ = concat_forward(model, b)
    c, _ = packed_forward(model, b, ["chosen", "rejected"], plan)
    for col in a:
        torch.testing.assert_close(c[col], a[col], rtol=1e-5, atol=1e-5)


def test_segments_share_rows(narrow_rows):
    # segments of 6 (the widest), 3 and 3 slots: first-fit puts the two short ones into one row
    b = columns([([5, 6, 7, 8], [1], [2]), ([4], [3], [1]), ([2], [3], [4])])
    plan = plan_packing(b, ["chosen", "rejected"])
    assert (plan.rows, plan.width) == (2, 6)
    p = pack_prefix_tree(b, ["chosen", "rejected"], plan)
    assert p.input_ids.tolist() == [[5, 6, 7, 8, 1, 2], [2, 3, 4, 4, 1, 3]]
    assert p.position_ids.tolist()[1] == [0, 1, 1, 0, 1, 1]
    # the segment of prompt 4 (slots 3-5) sees only itself
    assert p.attention_mask[1, 0, 3:].int().tolist() == [[0, 0, 0, 1, 0, 0], [0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 0, 1]]
    assert p.source["rejected"][1].tolist()[:2] == [0, 9]  # row 1 starts at slot 6; prompt 4 is at slot 6 + 3


def test_segments_fill_rows_of_about_min_row_width():
    b = columns([([5, 6, 7, 8], [1], [2]), ([4], [3], [1]), ([2], [3], [4])])  # 6 + 3 + 3 slots: one row of 12
    plan = plan_packing(b, ["chosen", "rejected"])
    assert (plan.rows, plan.width) == (1, 12)
    # 30 different prompts of 3 slots each: the 2 rows that MIN_ROW_WIDTH = 64 implies, evened out to 45 slots
    many = columns([([p], [40], [41]) for p in range(1, 31)])
    plan = plan_packing(many, ["chosen", "rejected"])
    assert packing.MIN_ROW_WIDTH == 64 and (plan.rows, plan.width) == (2, 45) and plan.nodes == 90
    # the same example 30 times is one tree of 3 nodes
    assert plan_packing(columns([([1], [2], [3])] * 30), ["chosen", "rejected"]).nodes == 3


@pytest.mark.parametrize("seed,vocab", [(0, 32), (1, 32), (2, 3)])
def test_packed_forward_equals_the_concatenated_forward(seed, vocab):
    """Random ragged rows; with a vocabulary of 2 real tokens (vocab 3) most prefixes are shared, some rows repeat."""
    torch.manual_seed(seed)
    model = tiny_gpt2(32, n_positions=32, n_layer=2, n_embd=32, n_head=4, seed=seed)
    batch = columns(random_rows(12, vocab, seed))
    if vocab == 3:
        assert plan_packing(batch, ["chosen", "rejected"]).nodes < 0.7 * sum(batch.row_lengths[c].sum() for c in
                                                                             ("chosen", "rejected"))
    grads = []
    for fwd in (lambda m, b: concat_forward(m, b), lambda m, b: packed_forward(m, b, ["chosen", "rejected"])):
        model.zero_grad()
        logps, lengths = fwd(model, batch)
        (logps["chosen"] - 0.5 * logps["rejected"]).sum().backward()
        grads.append(([logps[c].detach() for c in ("chosen", "rejected")], [lengths[c] for c in ("chosen", "rejected")],
                      torch.cat([p.grad.flatten() for p in model.parameters()])))
    (lp_a, len_a, g_a), (lp_b, len_b, g_b) = grads
    for a, b in zip(lp_a, lp_b):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    for a, b in zip(len_a, len_b):
        assert torch.equal(a.float(), b.float())
    torch.testing.assert_close(g_b, g_a, rtol=1e-4, atol=1e-5)


def test_packed_forward_is_the_same_math_in_float64():
    """In float64 rounding is ~1e-16, so the two layouts agree to ~1e-12, values and gradients: packing changes the
    layout only (the float32 tests above allow for float32 rounding)."""
    model = tiny_gpt2(32, n_positions=32, n_layer=2, n_embd=32, n_head=4, seed=4).double()
    batch = columns(random_rows(12, 3, 4))
    out = []
    for fwd in (concat_forward, lambda m, b: packed_forward(m, b, ["chosen", "rejected"])):
        model.zero_grad()
        logps, _ = fwd(model, batch)
        assert logps["chosen"].dtype == torch.float64  # no float32 step on the way
        (logps["chosen"] - 0.5 * logps["rejected"]).sum().backward()
        out.append((torch.cat([logps["chosen"], logps["rejected"]]).detach(),
                    torch.cat([p.grad.flatten() for p in model.parameters()])))
    torch.testing.assert_close(out[1][0], out[0][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[1][1], out[0][1], rtol=1e-10, atol=1e-12)


def test_the_exact_tasks_masked_model_packs_too(tiny_exact_env, cache_dir):
    from alignbench.trainer import prepare

    split = prepare(tiny_exact_env, "paired", "train", cache_dir, torch.device("cpu"))
    batch = split.tokens.batch(torch.arange(16), torch.device("cpu"))
    policy = tiny_exact_env.make_policy()
    a, _ = concat_forward(policy, batch)
    b, _ = packed_forward(policy, batch, ["chosen", "rejected"])
    for c in a:
        torch.testing.assert_close(b[c], a[c], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a[c], split.ref_logps[c][:16], rtol=1e-5, atol=1e-5)


def test_worth_packing():
    # long prompts, short completions: 8+1+1 = 10 packed vs 2 x 9 positions; 1-token prompts: 9 vs 10 (no gain)
    assert worth_packing(columns([([1] * 8, [2], [3])]), ["chosen", "rejected"])
    assert not worth_packing(columns([([1], [2] * 4, [3] * 4)]), ["chosen", "rejected"])
    # one column (KTO's completions): packs when rows share their prompts (8 + 4 x 1 vs 4 x 9 positions)
    single = columns([([7] * 8, [i], [i]) for i in (1, 2, 3, 4)]).select(["chosen"])
    assert worth_packing(single, ["chosen"])
    assert not worth_packing(columns([([i] * 8, [1], [1]) for i in (1, 2, 3, 4)]).select(["chosen"]), ["chosen"])


class IgnoresPositions(torch.nn.Module):
    """A causal LM wrapper that drops position ids and masks: packing would give it wrong log-probs."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
        return self.model(input_ids=input_ids, use_cache=use_cache)


class RejectsPositions(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError("attention_mask must be 2D")
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)


def test_policy_forward_checks_the_model_and_falls_back():
    model = tiny_gpt2(32, n_positions=128, n_layer=1, n_embd=16, n_head=2, seed=0)
    tokens = columns(random_rows(10, 32, 5))
    cols = ["chosen", "rejected"]
    assert PolicyForward(model, tokens, cols, True, torch.device("cpu")).pack
    assert not PolicyForward(model, tokens, cols, False, torch.device("cpu")).pack  # share_prompt=false
    ignoring = PolicyForward(IgnoresPositions(model), tokens, cols, True, torch.device("cpu"))
    assert not ignoring.pack and "differ by" in ignoring.reason
    rejecting = PolicyForward(RejectsPositions(model), tokens, cols, True, torch.device("cpu"))
    assert not rejecting.pack and "rejects packed inputs" in rejecting.reason
    # the fallback still computes the concatenated log-probs
    lp, _ = rejecting(RejectsPositions(model), tokens.batch(torch.arange(4), torch.device("cpu")))
    assert not rejecting.last_packed and torch.isfinite(lp["chosen"]).all()


@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_training_packed_and_unpacked_agree(tmp_path, cache_dir, monkeypatch, method):
    """The same run with every batch packed (threshold raised so that no batch of the tiny task is left out) and
    with packing off: the same KL and reward to float rounding; the metrics record which forward ran. KTO packs
    its one gradient column (completions) where rows share prompts and completion prefixes."""
    monkeypatch.setattr(packing, "PACK_IF_AT_MOST", 1.0)
    a, b = tmp_path / "packed", tmp_path / "plain"
    assert main(sweep_args(a, cache_dir, methods=method, betas="0.5")) == 0
    assert main(sweep_args(b, cache_dir, methods=method, betas="0.5", extra=["--train-arg", "share_prompt=false"])) == 0
    sa, sb = pd.read_csv(a / "summary.csv"), pd.read_csv(b / "summary.csv")
    assert sa["kl"][0] == pytest.approx(sb["kl"][0], rel=1e-3) and sa["kl"][0] > 0
    assert sa["reward"][0] == pytest.approx(sb["reward"][0], rel=1e-3, abs=1e-4)
    rows = [pd.read_json(p, lines=True) for p in (next(a.rglob("metrics.jsonl")), next(b.rglob("metrics.jsonl")))]
    assert (rows[0]["train/packed"].dropna() == 1.0).all() and (rows[1]["train/packed"].dropna() == 0.0).all()


@pytest.mark.parametrize("option", ["gradient_checkpointing", "lora"])
def test_packing_with_the_memory_options(option):
    """Packed and concatenated log-probs and gradients agree under gradient checkpointing and LoRA adapters too."""
    from alignbench.config import TrainConfig
    from alignbench.models import prepare_policy

    if option == "lora":
        require("peft")
    model = tiny_gpt2(32, n_positions=32, n_layer=2, n_embd=32, n_head=4, seed=2)
    tc = TrainConfig(gradient_checkpointing=True) if option == "gradient_checkpointing" else TrainConfig(lora_r=4)
    model = prepare_policy(model, tc)
    model.train()
    if option == "lora":  # LoRA's B starts at zero; move it so that the adapters take part in the forward
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1)
    batch = columns(random_rows(10, 32, 7))
    out = []
    for fwd in (concat_forward, lambda m, b: packed_forward(m, b, ["chosen", "rejected"])):
        model.zero_grad()
        logps, _ = fwd(model, batch)
        (logps["chosen"] - logps["rejected"]).sum().backward()
        out.append((torch.cat([logps["chosen"], logps["rejected"]]).detach(),
                    torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])))
    torch.testing.assert_close(out[1][0], out[0][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[1][1], out[0][1], rtol=1e-4, atol=1e-5)
    assert out[0][1].abs().sum() > 0


def test_packing_under_bf16_autocast():
    """precision=bf16 runs the forward under torch.autocast: packed and concatenated stay close (bf16 rounding)."""
    model = tiny_gpt2(32, n_positions=32, n_layer=2, n_embd=32, n_head=4, seed=3)
    batch = columns(random_rows(10, 32, 8))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        a, _ = concat_forward(model, batch)
        b, _ = packed_forward(model, batch, ["chosen", "rejected"])
    for c in a:
        assert b[c].dtype == torch.float32  # token_logps upcasts before the log-softmax
        torch.testing.assert_close(b[c], a[c], rtol=2e-2, atol=5e-2)
