"""The shared trainer: held-out data never used, resume after a kill, clear lines for bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import specbench
from sampled_data import own_samples
from specbench.bench import sharegpt_is_heldout
from specbench.bench.datasets import _sharegpt_conversations
from specbench.cli import main
from specbench.train.trainer import CHECKPOINT, split
from specbench.train import Stop, TrainConfig, train_drafter, training_data
from specbench.train.data import TokenData, encode_chat, training_conversations


@pytest.fixture(scope="module")
def tiny():
    return specbench.random_model(vocab_size=16, num_layers=2, hidden_size=32, seed=1)


@pytest.fixture(scope="module")
def tiny_data(tiny):
    """The tiny model's own sampled continuations: a signal heads can learn."""
    return own_samples(tiny)


def config(**kw) -> TrainConfig:
    base = dict(kind="medusa", epochs=3, lr=3e-2, batch_size=4, warmup_steps=2, checkpoint_every=4, validation=4)
    return TrainConfig(**{**base, **kw})


def test_heldout_conversations_are_never_trained_on():
    n = 3000
    file_ids = [str(c["id"]) for c in _sharegpt_conversations()[:n]]
    assert any(sharegpt_is_heldout(i) for i in file_ids), "the range read must contain held-out ids"
    used = [cid for cid, _ in training_conversations(n)]
    assert len(used) == n
    assert not any(sharegpt_is_heldout(i) for i in used)


def test_loss_mask_covers_exactly_the_assistant_turns(default_model):
    tok = default_model.tokenizer
    messages = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."},
                {"role": "user", "content": "Another?"}, {"role": "assistant", "content": "Green, then."}]
    ids, mask = encode_chat(tok, messages, 1024)
    spans, cur = [], []
    for t, m in zip(ids, mask):
        if m:
            cur.append(t)
        elif cur:
            spans.append(cur)
            cur = []
    spans += [cur] if cur else []
    texts = [tok.decode(s, skip_special_tokens=True).strip() for s in spans]
    assert texts == ["Blue.", "Green, then."]
    short_ids, short_mask = encode_chat(tok, messages, 20)
    assert len(short_ids) == 20 and short_ids == ids[:20] and short_mask == mask[:20]


def kind_config(kind: str, **kw) -> TrainConfig:
    """eagle3 with 3 training-time-test steps and a draft vocabulary of 12 of the 16 tokens."""
    extra = {"drafter": {"draft_vocab_size": 12}, "objective": {"ttt_steps": 3}} if kind == "eagle3" else {}
    return config(kind=kind, **extra, **kw)


@pytest.mark.parametrize("kind", ["medusa", "eagle", "eagle3"])   # eagle: random init and feature noise
def test_resume_after_kill_reaches_the_same_loss(tiny, tiny_data, tmp_path, kind):
    straight = train_drafter(tiny, kind_config(kind), tmp_path / "straight", data=tiny_data, eval_tokens=8,
                             progress=False)
    with pytest.raises(Stop):
        train_drafter(tiny, kind_config(kind), tmp_path / "killed", data=tiny_data, eval_tokens=8, progress=False,
                      stop_after=6)
    state = torch.load(tmp_path / "killed" / CHECKPOINT, weights_only=True)
    assert state["seconds"] > 0
    state["seconds"] = 1e6          # the killed run's time, made unmistakable: the card must add it
    torch.save(state, tmp_path / "killed" / CHECKPOINT)
    resumed = train_drafter(tiny, kind_config(kind), tmp_path / "killed", data=tiny_data, eval_tokens=8,
                            progress=False)
    a = [json.loads(r) for r in (straight / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(r) for r in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in b] == list(range(1, len(a) + 1))          # no step lost or duplicated
    assert b[-1]["loss"] == pytest.approx(a[-1]["loss"], rel=1e-5)
    wa = specbench.load_drafter(straight, tiny).state_dict()
    wb = specbench.load_drafter(resumed, tiny).state_dict()
    assert all(torch.allclose(wa[k], wb[k], atol=1e-3) for k in wa)
    if kind == "medusa":     # what its draft_vocab ranks by: the training split's assistant tokens
        train_idx, _ = split(tiny_data, 4)
        assert torch.equal(wb["token_counts"], tiny_data.assistant_counts(train_idx, tiny.args.vocab_size))
    card = (resumed / "card.md").read_text()
    assert "Mean accepted tokens" in card and (resumed / "loss.png").is_file()
    training = json.loads((resumed / "config.json").read_text())["training"]    # every run's time, not the last's
    assert 1e6 < training["seconds"] < 1e6 + 600 and f"{training['seconds']} s of training" in card


@pytest.mark.parametrize("kind", ["medusa", "eagle", "eagle3"])
def test_training_improves_the_drafter(tiny, tiny_data, tmp_path, kind):
    """Trained drafters agree with the target far more often than their start does."""
    out = train_drafter(tiny, kind_config(kind, epochs=6), tmp_path / "t", data=tiny_data, eval_tokens=16,
                        progress=False)
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    first, last = (sum(r["loss"] for r in part) / 3 for part in (rows[:3], rows[-3:]))
    assert last < 0.8 * first
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["training"]["evaluation"]["mean_accepted"] > 1.2


def test_out_folder_of_another_run_is_refused(tiny, tiny_data, tmp_path):
    with pytest.raises(Stop):
        train_drafter(tiny, config(), tmp_path / "o", data=tiny_data, progress=False, stop_after=1)
    with pytest.raises(specbench.SpecbenchError, match="holds another training run .*lr"):
        train_drafter(tiny, config(lr=1e-4), tmp_path / "o", data=tiny_data, progress=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(specbench.SpecbenchError, match="not empty"):
        train_drafter(tiny, config(), tmp_path / "busy", data=tiny_data, progress=False)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_malformed_and_foreign_token_files(tiny, tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_text("not a zip")
    with pytest.raises(specbench.SpecbenchError, match="not a specbench token file"):
        TokenData.load(bad)
    np.savez(tmp_path / "broken.npz", tokens=np.zeros(5, np.uint16), mask=np.zeros(5, np.uint8),
             offsets=np.array([0, 9]), meta=np.array("{}"))
    with pytest.raises(specbench.SpecbenchError, match="damaged token file"):
        TokenData.load(tmp_path / "broken.npz")
    foreign = TokenData.from_lists([[1, 2, 300], [4, 5, 6]], [[0, 1, 1], [0, 1, 1]], {"vocab_size": 1000})
    path = foreign.save(tmp_path / "foreign.npz")
    with pytest.raises(specbench.SpecbenchError, match="outside the model's vocabulary"):
        training_data(tiny, config(data=str(path)))


@pytest.mark.parametrize("argv, match", [
    (["train", "medusa", "--out", "X", "--data", "nope"], "--data must be"),
    (["train", "medusa", "--out", "X", "--conversations", "0"], "conversations must be >= 1"),
    (["train", "medusa", "--out", "X", "--dtype", "float8"], "unknown dtype"),
    (["train", "medusa", "--out", "X", "--epochs", "0"], "epochs and lr"),
    (["train", "eagle", "--out", "X", "--data", "nope.npz"], "--data must be"),
    (["train", "eagle3", "--out", "X", "--draft-vocab", "0"], "draft-vocab must be an integer >= 1, got 0"),
    (["train", "eagle3", "--out", "X", "--ttt-steps", "0"], "ttt-steps must be an integer >= 1, got 0"),
    (["train", "eagle3", "--out", "X", "--features", "low"], "invalid choice: 'low'"),
])
def test_cli_bad_input_is_one_line(argv, match, capsys, tmp_path):
    argv = [a if a != "X" else str(tmp_path / "out") for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and match in err[0]
    assert not (tmp_path / "out").exists()
