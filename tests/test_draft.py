"""The distilled draft model for sps: greedy identity, its folder forms (compact, shards, exported
Hugging Face folder), distillation, resume, bad input, and the draft shipped for the default model."""
from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

import specbench
from sampled_data import own_samples
from shipped_check import check_shipped_folder, greedy_mean_accepted
from specbench import engine
from specbench.cli import main
from specbench.drafters import SHIPPED
from specbench.drafters.base import read_shards, write_shards
from specbench.drafters.draft import DraftLayers, first_layers
from specbench.model import device_kind
from specbench.strategies import make_proposer
from specbench.train import Stop, TrainConfig, train_drafter
from specbench.train.distill import DIVERGENCES, divergence


@pytest.fixture(scope="module")
def target():
    return specbench.random_model(vocab_size=16, num_layers=3, hidden_size=32, seed=1, dtype="float64")


@pytest.fixture(scope="module")
def tiny():
    """A float32 target for training runs (the trainer keeps drafters in float32)."""
    return specbench.random_model(vocab_size=16, num_layers=3, hidden_size=32, seed=1)


@pytest.fixture(scope="module")
def tiny_data(tiny):
    """The tiny target's own sampled continuations (on-policy data, as self-distillation gives)."""
    return own_samples(tiny)


def config(**kw) -> TrainConfig:
    base = dict(kind="draft", epochs=6, lr=1e-2, batch_size=4, warmup_steps=2, checkpoint_every=4, validation=4,
                drafter={"num_layers": 1, "init": "fresh"}, objective={"divergence": "fkl"})
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def distilled(tiny, tiny_data, tmp_path_factory):
    return train_drafter(tiny, config(), tmp_path_factory.mktemp("d") / "draft", data=tiny_data, eval_tokens=16,
                         progress=False)


def logits_of(model, ids):
    return model(torch.tensor(ids), torch.arange(len(ids)), model.new_cache(len(ids))).logits


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_identical_float64(seed):
    target = specbench.random_model(vocab_size=16, num_layers=3, hidden_size=32, seed=10 + seed, dtype="float64")
    prompt = [(seed + i) % 5 for i in range(12)]
    vanilla = specbench.generate(target, prompt, max_new_tokens=40).token_ids
    drafts = [specbench.random_drafter(target, "draft", seed=seed, num_layers=n) for n in (1, 2)]
    lengths = Counter()
    for draft in [*drafts, "target:1", "target:2"]:
        for num_draft, draft_stop, siblings in ((1, 0, 1), (3, 0, 1), (6, 0, 1), (6, 0.6, 1), (1, 0, 3), (3, 0.6, 2)):
            out = specbench.generate(target, prompt, method="sps", draft=draft, num_draft=num_draft,
                                     draft_stop=draft_stop, siblings=siblings, max_new_tokens=40)
            assert out.token_ids == vanilla, (draft, num_draft, draft_stop, siblings)
            assert out.stats["lossless"] is True
            if draft_stop and siblings == 1:
                lengths.update(out.stats["draft_tokens"])
    assert len(lengths) > 1 and lengths[6] < sum(lengths.values()), f"draft_stop left every chain one length: {lengths}"


def test_greedy_identical_with_a_distilled_draft(tiny, distilled):
    draft = specbench.load_draft(distilled, tiny)
    for s in range(3):
        prompt = [(s * 5 + i) % 16 for i in range(6)]
        vanilla = specbench.generate(tiny, prompt, max_new_tokens=40).token_ids
        out = specbench.generate(tiny, prompt, method="sps", draft=distilled, max_new_tokens=40)
        assert out.token_ids == vanilla
        assert specbench.generate(tiny, prompt, method="sps", draft=draft, max_new_tokens=40).token_ids == vanilla


def test_training_forward_is_the_models_forward(target):
    """The cache-free training forward and the materialised Transformer compute the same logits."""
    drafter = specbench.random_drafter(target, "draft", seed=3, num_layers=2)
    ids = [3, 1, 4, 1, 5, 9, 2, 6]
    full = logits_of(drafter.as_model(target), ids)
    torch.testing.assert_close(drafter(torch.tensor(ids), target), full)
    rows = torch.tensor([False, True, True, False, True, False, False, True])
    torch.testing.assert_close(drafter(torch.tensor(ids), target, rows), full[rows])


def test_target_init_is_the_undistilled_draft(target):
    drafter = DraftLayers.for_target(target, num_layers=2, init="target")
    drafter.init_from_target(target)
    drafter.to(torch.float64)
    ids = [1, 2, 3, 4, 5]
    torch.testing.assert_close(logits_of(drafter.as_model(target), ids), logits_of(first_layers(target, 2), ids))
    fresh = DraftLayers.for_target(target, num_layers=2, init="fresh")
    fresh.init_from_target(target)
    assert not torch.equal(fresh.layers[0].wo.weight, drafter.layers[0].wo.weight.float())


def test_the_draft_shares_the_targets_embedding(target):
    view = specbench.random_drafter(target, "draft", num_layers=1).as_model(target)
    assert view.embed.weight is target.embed.weight and view.lm_head.weight is target.lm_head.weight
    assert view.args.num_layers == 1 and view.new_cache(4).k.shape[0] == 1


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_divergences(kind):
    """Zero for equal distributions, positive otherwise; tvd is 1 - sum min(p, q)."""
    logp = torch.randn(4, 16, dtype=torch.float64).log_softmax(-1)
    logq = torch.randn(4, 16, dtype=torch.float64).log_softmax(-1)
    assert divergence(logp, logp, kind).abs().max() < 1e-12
    assert (divergence(logp, logq, kind) > 0).all()
    if kind == "tvd":
        torch.testing.assert_close(divergence(logp, logq, kind), 1 - torch.minimum(logp.exp(), logq.exp()).sum(-1))


@pytest.mark.parametrize("init, kind", [("fresh", "fkl"), ("fresh", "tvd"), ("target", "jsd"), ("target", "rkl")])
def test_distillation_improves_agreement(tiny, tiny_data, tmp_path, init, kind):
    out = train_drafter(tiny, config(drafter={"num_layers": 1, "init": init}, objective={"divergence": kind}),
                        tmp_path / "d", data=tiny_data, eval_tokens=16, progress=False)
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    first, last = (sum(r["agree"] for r in part) / 3 for part in (rows[:3], rows[-3:]))
    assert last > first + 0.1
    evaluation = json.loads((out / "config.json").read_text())["training"]["evaluation"]
    assert evaluation["mean_accepted"] > 1.3 and 0 < evaluation["acceptance_rate"] <= 1
    card = (out / "card.md").read_text()
    assert f'"divergence": "{kind}"' in card and "acceptance_rate" in card


def test_resume_after_kill_reaches_the_same_draft(tiny, tiny_data, tmp_path):
    straight = train_drafter(tiny, config(), tmp_path / "straight", data=tiny_data, eval_tokens=8, progress=False)
    with pytest.raises(Stop):
        train_drafter(tiny, config(), tmp_path / "killed", data=tiny_data, eval_tokens=8, progress=False, stop_after=6)
    resumed = train_drafter(tiny, config(), tmp_path / "killed", data=tiny_data, eval_tokens=8, progress=False)
    a = [json.loads(r) for r in (straight / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(r) for r in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in b] == list(range(1, len(a) + 1))
    assert b[-1]["loss"] == pytest.approx(a[-1]["loss"], rel=1e-5)
    wa = specbench.load_drafter(straight, tiny).state_dict()
    wb = specbench.load_drafter(resumed, tiny).state_dict()
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-3) for k in wa)
    with pytest.raises(specbench.SpecbenchError, match="another training run .*objective"):
        train_drafter(tiny, config(objective={"divergence": "tvd"}), tmp_path / "killed", data=tiny_data,
                      progress=False)


def test_compact_folder_holds_only_the_draft_in_shards(target, tmp_path):
    drafter = specbench.random_drafter(target, "draft", seed=4, num_layers=2)
    folder = drafter.save(tmp_path / "d", dtype=torch.float64)
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["kind"] == "draft" and cfg["model_args"]["num_layers"] == 2
    names = set(read_shards(folder))
    assert names == set(drafter.state_dict()) and not any(n.startswith(("embed", "lm_head")) for n in names)
    # shards: each at most the limit, read back whole
    write_shards(read_shards(folder), folder, max_bytes=40_000)   # the largest tensor: 32 KB
    shards = sorted(folder.glob("model*.safetensors"))
    assert len(shards) > 2 and not (folder / "model.safetensors").exists()
    assert all(f.stat().st_size <= 40_000 + 4096 for f in shards)          # + the safetensors header
    ids = [2, 7, 1, 8, 2, 8]
    torch.testing.assert_close(logits_of(specbench.load_draft(folder, target), ids),
                               logits_of(drafter.as_model(target), ids))


def test_a_draft_for_another_model_is_refused(target, tmp_path):
    drafter = specbench.random_drafter(target, "draft", num_layers=1)
    drafter.save(tmp_path / "d")
    other = specbench.random_model(vocab_size=16, num_layers=3, hidden_size=32, seed=99, dtype="float64")
    with pytest.raises(specbench.SpecbenchError, match="made for another model"):
        specbench.generate(other, [1, 2, 3], method="sps", draft=tmp_path / "d")
    with pytest.raises(specbench.SpecbenchError, match="made for another model"):
        specbench.generate(other, [1, 2, 3], method="sps", draft=drafter)
    medusa = specbench.random_drafter(target, "medusa")
    medusa.save(tmp_path / "m")
    with pytest.raises(specbench.SpecbenchError, match="holds a medusa drafter, not a (draft one|model)"):
        specbench.generate(target, [1, 2, 3], method="sps", draft=tmp_path / "m")
    with pytest.raises(specbench.SpecbenchError, match="not a model: pass it as drafter="):
        specbench.load_model(tmp_path / "m")


def test_export_is_an_ordinary_model_folder(tmp_path):
    """save_model writes a folder that load_model and transformers read without the target."""
    from transformers import AutoModelForCausalLM
    for qkv_bias in (False, True):          # Llama and Qwen2 layouts
        target = specbench.random_model(vocab_size=16, num_layers=3, hidden_size=32, seed=5, qkv_bias=qkv_bias,
                                        dtype="float64")
        draft = specbench.random_drafter(target, "draft", seed=6, num_layers=2).as_model(target)
        folder = specbench.save_model(draft, tmp_path / f"full{qkv_bias}")
        loaded = specbench.load_model(folder, dtype="float64")
        ids = [5, 3, 5, 8, 9, 7]
        expected = logits_of(draft, ids)
        torch.testing.assert_close(logits_of(loaded, ids), expected)
        hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float64).eval()
        with torch.no_grad():
            torch.testing.assert_close(hf(torch.tensor([ids])).logits[0], expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(specbench.SpecbenchError, match="not an empty folder"):
        specbench.save_model(draft, folder)


def test_load_model_materialises_a_compact_draft_on_its_target(tmp_path):
    target = specbench.random_model(vocab_size=16, num_layers=3, hidden_size=32, seed=7)
    specbench.save_model(target, tmp_path / "target")
    target = specbench.load_model(tmp_path / "target")
    drafter = specbench.random_drafter(target, "draft", seed=8, num_layers=1)
    drafter.save(tmp_path / "draft", dtype=torch.float32)
    assert json.loads((tmp_path / "draft" / "config.json").read_text())["target_model"] == str(tmp_path / "target")
    loaded = specbench.load_model(tmp_path / "draft")
    ids = [1, 4, 1, 4, 2]
    torch.testing.assert_close(logits_of(loaded, ids), logits_of(drafter.as_model(target), ids), atol=1e-3, rtol=1e-3)
    # a target_model that is another model: one line naming load_draft
    specbench.save_model(specbench.random_model(vocab_size=16, num_layers=3, hidden_size=32, seed=9), tmp_path / "other")
    cfg = json.loads((tmp_path / "draft" / "config.json").read_text())
    (tmp_path / "draft" / "config.json").write_text(json.dumps({**cfg, "target_model": str(tmp_path / "other")}))
    with pytest.raises(specbench.SpecbenchError, match=r"is not that target .*load_draft"):
        specbench.load_model(tmp_path / "draft")


def test_no_draft_for_other_models(target):
    with pytest.raises(specbench.SpecbenchError, match="specbench train draft"):
        specbench.generate(target, [1, 2, 3], method="sps")


@pytest.mark.parametrize("argv, match", [
    (["train", "draft", "--out", "X", "--init", "copy"], "init must be one of target, fresh, got 'copy'"),
    (["train", "draft", "--out", "X", "--divergence", "kl"], "divergence must be one of fkl, rkl, jsd, tvd"),
    (["train", "draft", "--out", "X", "--layers", "0"], "--layers must be >= 1"),
    (["train", "draft", "--out", "X", "--data", "nope"], "--data must be"),
    (["export", "--out", "BUSY"], "not an empty folder"),
])
def test_cli_bad_input_is_one_line(argv, match, capsys, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    argv = [{"X": str(tmp_path / "out"), "BUSY": str(tmp_path / "busy")}.get(a, a) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and match in err[0]
    assert not (tmp_path / "out").exists() and (tmp_path / "busy" / "keep.txt").read_text() == "mine"


def test_cli_trains_a_draft_with_its_options(tiny, tiny_data, tmp_path, capsys):
    specbench.save_model(tiny, tmp_path / "target")
    data = tiny_data.save(tmp_path / "data.npz")
    argv = ["train", "draft", "--model", str(tmp_path / "target"), "--data", str(data), "--out", str(tmp_path / "d"),
            "--layers", "2", "--init", "fresh", "--divergence", "tvd", "--epochs", "1", "--batch-size", "4",
            "--eval-tokens", "8"]
    assert main(argv) == 0
    cfg = json.loads((tmp_path / "d" / "config.json").read_text())
    assert cfg["kind"] == "draft" and cfg["init"] == "fresh" and cfg["model_args"]["num_layers"] == 2
    run = json.loads((tmp_path / "d" / "train_config.json").read_text())
    assert run["objective"] == {"divergence": "tvd"} and run["drafter"] == {"num_layers": 2, "init": "fresh"}
    assert "Mean accepted tokens" in capsys.readouterr().out
    assert main(["export", "--model", str(tmp_path / "d"), "--out", str(tmp_path / "full")]) == 0
    assert specbench.load_model(tmp_path / "full").args.num_layers == 2


# ---- the draft shipped for the default model ------------------------------------------------------

SHIPPED_DRAFT = SHIPPED / "draft"


def test_export_of_a_default_model_draft_is_self_contained(default_model, tmp_path):
    """The exported folder carries the tokenizer and chat template, and computes the same logits."""
    draft = first_layers(default_model, 2)
    folder = specbench.save_model(draft, tmp_path / "full")
    loaded = specbench.load_model(folder)
    prompt = [{"role": "user", "content": "Name a colour."}]
    ids = specbench.encode_prompt(loaded, prompt)
    assert ids == specbench.encode_prompt(default_model, prompt)
    assert loaded.args.eos_token_ids == default_model.args.eos_token_ids
    torch.testing.assert_close(logits_of(loaded, ids), logits_of(draft, ids))


def test_shipped_draft_on_the_default_model(default_model):
    """Runs once the lead commits the draft: then a broken folder fails here, never skips."""
    if not SHIPPED_DRAFT.exists():
        pytest.skip("no draft shipped yet (specbench/drafters/shipped/draft/)")
    check_shipped_folder(SHIPPED_DRAFT)
    # the shipped draft measured 1.41 here (fp32, these prompts) and 1.50 on its held-back prompts;
    # the undistilled `target:4` accepts ~1.0-1.07, so 1.25 tells a trained draft from a broken one
    from specbench.strategies.sps import DEFAULT_NUM_DRAFT
    mean_accepted = greedy_mean_accepted(default_model, "sps", num_draft=DEFAULT_NUM_DRAFT["cpu"])   # as measured
    assert mean_accepted > 1.25, "the shipped draft barely agrees with its target"


def test_draft_vocab_keeps_greedy_identity_and_drafts_only_frequent_tokens(tiny, distilled):
    counts = specbench.load_drafter(distilled, tiny).token_counts
    assert counts.sum() > 0
    frequent = set(torch.sort(counts.neg(), stable=True).indices[:6].tolist())
    seen_drafts = set()
    for s in range(3):
        prompt = [(s * 5 + i) % 16 for i in range(6)]
        vanilla = specbench.generate(tiny, prompt, max_new_tokens=40).token_ids
        # siblings too: the runner-up first tokens are picked among the draft vocabulary's scores
        proposer = make_proposer("sps", tiny, draft=distilled, draft_vocab=6, siblings=3)
        propose = proposer.propose
        proposer.propose = lambda ctx: seen_drafts.update((tree := propose(ctx)).tokens.tolist()) or tree
        out = engine.run(tiny, proposer, prompt, specbench.SamplingParams(), 40, 0, ())
        assert out.token_ids == vanilla
    assert seen_drafts and seen_drafts <= frequent
    with pytest.raises(specbench.SpecbenchError, match="draft_vocab must be a token count in 1..16"):
        specbench.generate(tiny, [1, 2], method="sps", draft=distilled, draft_vocab=17)
    with pytest.raises(specbench.SpecbenchError, match="draft_vocab needs a drafter from `specbench train draft`"):
        specbench.generate(tiny, [1, 2], method="sps", draft="target:1", draft_vocab=8)


def test_default_draft_vocab_applies_only_to_drafts_with_counts(tiny, distilled, monkeypatch):
    """The device's default draft vocabulary restricts a distilled draft (it counted its training
    tokens); the target's own first layers count nothing and keep the whole vocabulary."""
    from specbench.drafters.base import frequent_tokens
    from specbench.strategies import sps
    monkeypatch.setitem(sps.DEFAULT_DRAFT_VOCAB, device_kind(tiny.device), 6)
    counts = specbench.load_drafter(distilled, tiny).token_counts
    assert torch.equal(make_proposer("sps", tiny, draft=distilled).vocab, frequent_tokens(counts, 6))
    assert make_proposer("sps", tiny, draft="target:1").vocab is None
    assert make_proposer("sps", tiny, draft=distilled, draft_vocab=16).vocab is None     # the whole one

