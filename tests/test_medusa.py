"""Medusa: greedy identity, official checkpoint layout, drafter checks, tree building."""
from __future__ import annotations

import json

import pytest
import torch

import specbench
from specbench.drafters.medusa import check_tree, expected_accepted, medusa_tree
from specbench.model import device_kind


@pytest.fixture(scope="module")
def target():
    return specbench.random_model(vocab_size=16, num_layers=3, hidden_size=32, seed=1, dtype="float64")


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("tree", [None, 1, 24, [[0], [1], [2], [0, 0], [0, 1], [0, 0, 0], [2, 0]]])
def test_greedy_identical_float64(seed, tree):
    target = specbench.random_model(vocab_size=16, num_layers=3, hidden_size=32, seed=10 + seed, dtype="float64")
    drafter = specbench.random_drafter(target, "medusa", seed=seed)
    prompt = [(seed + i) % 5 for i in range(12)]
    vanilla = specbench.generate(target, prompt, max_new_tokens=40).token_ids
    out = specbench.generate(target, prompt, method="medusa", drafter=drafter, tree=tree, max_new_tokens=40)
    assert out.token_ids == vanilla
    assert out.stats["lossless"] is True


def test_multi_token_steps_happen(target):
    """Not vacuous: random heads on this model get several tokens accepted per step."""
    drafter = specbench.random_drafter(target, "medusa", seed=0)
    out = specbench.generate(target, [1, 2, 3, 4], method="medusa", drafter=drafter, max_new_tokens=60)
    assert out.stats["mean_accepted"] > 1.3


@pytest.mark.parametrize("suffix", ["safetensors", "pt"])
@pytest.mark.parametrize("own_lm_head", [False, True])
def test_official_layout_roundtrip(target, tmp_path, suffix, own_lm_head):
    drafter = specbench.random_drafter(target, "medusa", seed=3, num_heads=3, num_layers=2, own_lm_head=own_lm_head)
    folder = drafter.export_official(tmp_path / "official", target, dtype=torch.float64)
    if suffix == "pt":   # the older .pt layout: a plain state dict of tensors
        from safetensors.torch import load_file
        state = load_file(str(folder / "medusa_lm_head.safetensors"))
        (folder / "medusa_lm_head.safetensors").unlink()
        torch.save(state, folder / "medusa_lm_head.pt")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["medusa_num_heads"] == 3 and cfg["medusa_num_layers"] == 2
    loaded = specbench.load_drafter(folder, target)
    assert loaded.own_lm_head == own_lm_head
    feats = torch.randn(5, 32, dtype=torch.float64)
    torch.testing.assert_close(loaded(feats, target), drafter(feats, target))
    prompt = [3, 1, 4, 1, 5]
    a = specbench.generate(target, prompt, method="medusa", drafter=drafter, max_new_tokens=30)
    b = specbench.generate(target, prompt, method="medusa", drafter=folder, max_new_tokens=30)
    assert a.token_ids == b.token_ids and a.stats["accepted_lengths"] == b.stats["accepted_lengths"]


def test_our_layout_roundtrip(target, tmp_path):
    drafter = specbench.random_drafter(target, "medusa", seed=4)
    drafter.save(tmp_path / "d", dtype=torch.float64)
    loaded = specbench.load_drafter(tmp_path / "d", target)
    feats = torch.randn(3, 32, dtype=torch.float64)
    torch.testing.assert_close(loaded(feats, target), drafter(feats, target))


def test_pickled_objects_are_never_loaded(target, tmp_path):
    drafter = specbench.random_drafter(target, "medusa", seed=3)
    folder = drafter.export_official(tmp_path / "evil", target)
    (folder / "medusa_lm_head.safetensors").unlink()
    torch.save({"0.0.linear.weight": torch.zeros(2), "payload": Exploit()}, folder / "medusa_lm_head.pt")
    with pytest.raises(specbench.SpecbenchError, match="cannot read weights"):
        specbench.load_drafter(folder, target)


class Exploit:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_drafter_for_another_model_is_refused(target, tmp_path):
    other_dims = specbench.random_model(vocab_size=16, num_layers=3, hidden_size=48, seed=1, dtype="float64")
    same_dims = specbench.random_model(vocab_size=16, num_layers=3, hidden_size=32, seed=99, dtype="float64")
    drafter = specbench.random_drafter(target, "medusa")
    drafter.save(tmp_path / "d")
    for model, why in ((other_dims, "hidden size 32"), (same_dims, "other weights")):
        with pytest.raises(specbench.SpecbenchError, match=why):
            specbench.generate(model, [1, 2, 3], method="medusa", drafter=drafter)
        with pytest.raises(specbench.SpecbenchError, match="made for another model"):
            specbench.load_drafter(tmp_path / "d", model)
    wide = specbench.random_drafter(other_dims, "medusa")
    wide.export_official(tmp_path / "official", other_dims)
    with pytest.raises(specbench.SpecbenchError, match="another model"):
        specbench.load_drafter(tmp_path / "official", target)


def test_no_shipped_drafter_for_other_models(target):
    with pytest.raises(specbench.SpecbenchError, match="specbench train medusa"):
        specbench.generate(target, [1, 2, 3], method="medusa")


@pytest.mark.parametrize("tree, match", [([], "at least one"), ([[0, 0]], "lacks its parent"),
                                         ([[0], [0, 0, 0, 0, 0]], "1..4 indices"), ([["a"]], "index paths"),
                                         (0, "node count"), ([[-1]], "indices must be")])
def test_bad_trees(target, tree, match):
    drafter = specbench.random_drafter(target, "medusa")
    with pytest.raises(specbench.SpecbenchError, match=match):
        specbench.generate(target, [1, 2], method="medusa", drafter=drafter, tree=tree)


def test_medusa_tree_is_best_first():
    acc = [[0.6, 0.2, 0.1], [0.4, 0.2, 0.1], [0.3, 0.1, 0.05]]
    paths = medusa_tree(acc, 5)
    assert paths == [(0,), (1,), (2,), (0, 0), (0, 1)]
    assert check_tree(paths, 3) == paths
    # each added node is the best remaining one, so expected acceptance grows with size
    sizes = [expected_accepted(acc, medusa_tree(acc, n)) for n in range(1, 12)]
    assert sizes == sorted(sizes)
    assert expected_accepted(acc, [(0,), (0, 0)]) == pytest.approx(1 + 0.6 + 0.24)


def test_typical_acceptance_is_labelled_lossy(target):
    drafter = specbench.random_drafter(target, "medusa")
    out = specbench.generate(target, [1, 2, 3], method="medusa", drafter=drafter, acceptance="typical",
                             temperature=1.0, max_new_tokens=10)
    assert out.stats["lossless"] is False


def test_shipped_heads_greedy_identical_on_the_default_model(default_model):
    """The committed heads load for the default model (fp32, CPU) and decode exactly as vanilla."""
    from specbench.bench.datasets import load_dataset
    for question in load_dataset("mt_bench")[:2]:
        vanilla = specbench.generate(default_model, question.turns[0], max_new_tokens=32).token_ids
        for tree in (None, 16):
            out = specbench.generate(default_model, question.turns[0], method="medusa", tree=tree, max_new_tokens=32)
            assert out.token_ids == vanilla, (question.question_id, tree)
            assert out.stats["mean_accepted"] > 1.0


@pytest.mark.parametrize("width,k", [(49152, 10), (8192, 1), (1000, 7), (600, 256), (513, 3), (300, 10)])
def test_two_pass_top_k_equals_topk(width, k):
    """The drafters' two-pass top-k (CUDA's) gives torch's values and, without ties, its columns; rows
    that are all -inf (an overflowed draft row) still get columns inside the row."""
    from specbench.tree import two_pass_top_k
    gen = torch.Generator().manual_seed(width + k)
    x = torch.randn(4, width, generator=gen, dtype=torch.float64)
    x[1, : width // 2] = float("-inf")
    x[2] = float("-inf")
    values, index = two_pass_top_k(x, k)
    expected = x.topk(k)
    assert torch.equal(values, expected.values)
    assert torch.equal(index[[0, 1, 3]], expected.indices[[0, 1, 3]])
    assert index.max() < width and torch.equal(x.gather(1, index), values)


@pytest.mark.parametrize("own_lm_head", [False, True])
def test_draft_vocab_drafts_only_frequent_tokens(own_lm_head, monkeypatch):
    """draft_vocab=N: the heads pick among the N tokens most often seen in training; still exact,
    and not vacuous (multi-token steps). Without it the same heads draft other tokens too."""
    from specbench.drafters.base import frequent_tokens
    from specbench.strategies.medusa import Medusa
    target = specbench.random_model(vocab_size=16, num_layers=3, hidden_size=32, seed=11, dtype="float64")
    drafter = specbench.random_drafter(target, "medusa", seed=0, own_lm_head=own_lm_head)
    counts = torch.tensor([5, 0, 9, 1, 7, 3, 0, 8, 2, 6, 0, 4, 1, 0, 3, 2])
    drafter.init_from_data(counts)
    allowed = set(frequent_tokens(counts, 6).tolist())
    assert allowed == {0, 2, 4, 7, 9, 11}
    seen = []
    propose = Medusa.propose
    monkeypatch.setattr(Medusa, "propose", lambda self, ctx: seen.append(propose(self, ctx)) or seen[-1])
    prompt, tree = [1, 2, 3, 4, 5], [[0], [1], [2], [0, 0], [0, 1], [0, 0, 0]]
    vanilla = specbench.generate(target, prompt, max_new_tokens=40).token_ids
    out = specbench.generate(target, prompt, method="medusa", drafter=drafter, tree=tree, draft_vocab=6,
                             max_new_tokens=40)
    assert out.token_ids == vanilla
    drafted = {t for step in seen for t in step.tokens.tolist()}
    assert drafted and drafted <= allowed
    assert max(out.stats["accepted_lengths"]) >= 2
    seen.clear()
    specbench.generate(target, prompt, method="medusa", drafter=drafter, tree=tree, max_new_tokens=40)
    assert {t for step in seen for t in step.tokens.tolist()} - allowed


def test_draft_vocab_refusals(target):
    drafter = specbench.random_drafter(target, "medusa", seed=0)      # random heads count no tokens
    with pytest.raises(specbench.SpecbenchError, match="draft_vocab needs a drafter from `specbench train medusa`"):
        specbench.generate(target, [1, 2], method="medusa", drafter=drafter, draft_vocab=8)
    drafter.init_from_data(torch.ones(16, dtype=torch.long))
    with pytest.raises(specbench.SpecbenchError, match="draft_vocab must be a token count in 1..16"):
        specbench.generate(target, [1, 2], method="medusa", drafter=drafter, draft_vocab=17)
    with pytest.raises(specbench.SpecbenchError, match="draft_vocab 2 is smaller than the 3 choices drafted per node"):
        specbench.generate(target, [1, 2], method="medusa", drafter=drafter, tree=[[0], [1], [2]], draft_vocab=2)


def test_default_draft_vocab_applies_only_where_it_can(monkeypatch):
    """The device's default draft vocabulary restricts heads that counted their training tokens;
    heads without counts (random, official) draft over the whole vocabulary without complaint."""
    from specbench.drafters.base import frequent_tokens
    from specbench.strategies import medusa
    target = specbench.random_model(vocab_size=16, num_layers=3, hidden_size=32, seed=11, dtype="float64")
    monkeypatch.setitem(medusa.DEFAULT_DRAFT_VOCAB, device_kind(target.device), 6)
    counted = specbench.random_drafter(target, "medusa", seed=0)
    counted.init_from_data(torch.arange(16) % 7)
    uncounted = specbench.random_drafter(target, "medusa", seed=0)
    tree = [[0], [1], [2], [0, 0]]
    assert torch.equal(medusa.Medusa(target, drafter=counted, tree=tree).vocab.ids, frequent_tokens(counted.token_counts, 6))
    assert medusa.Medusa(target, drafter=uncounted, tree=tree).vocab is None
    assert medusa.Medusa(target, drafter=counted, tree=tree, draft_vocab=16).vocab is None   # the whole one
