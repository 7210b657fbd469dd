"""Fakes for the benchmark tests (no test here): a tokenizer-less model and a fake generate."""
import json
from types import SimpleNamespace
from typing import Any

import torch

from specbench.bench import config as config_mod
from specbench.bench import runner
from specbench.options import OptionSpec, method_options

V = 16


def fake_model():
    return SimpleNamespace(tokenizer=None, device=torch.device("cpu"), dtype=torch.float32,
                           args=SimpleNamespace(eos_token_ids=(), vocab_size=V, num_layers=2))


class FakeGenerate:
    """Deterministic answers: the same tokens for every lossless method, others for 'lossy'.

    raise_after: raise KeyboardInterrupt on the call after that many timed answers.
    """

    def __init__(self, raise_after=None):
        self.calls = []
        self.raise_after = raise_after

    def __call__(self, model, prompt, method="vanilla", max_new_tokens=8, **kw):
        self.calls.append((method, list(prompt), max_new_tokens, kw))
        # warm-up calls are the short ones; count only the timed ones
        timed = [c for c in self.calls if c[2] != 2]
        if self.raise_after is not None and len(timed) > self.raise_after:
            raise KeyboardInterrupt
        s = sum(prompt)
        toks = [(s + 3 * i) % V for i in range(max_new_tokens)]
        if method == "lossy":
            toks[-1] = (toks[-1] + 1) % V
        per = {"vanilla": 1, "pld": 2, "lossy": 3}.get(method, 1)
        acc, left = [], len(toks)
        while left:
            acc.append(min(per, left))
            left -= acc[-1]
        stats = {"new_tokens": len(toks), "steps": len(acc), "accepted_lengths": acc,
                 "draft_tokens": [per - 1] * len(acc), "wall_time_s": 0.001,
                 "lossless": method != "lossy", "extra_stat": 7}
        return SimpleNamespace(token_ids=toks, text=" ".join(map(str, toks)), stats=stats)


def _any(*names):
    return {n: OptionSpec(n, Any, None) for n in names}


# method -> options, as config.known_methods gives them (sps's are the real ones: its draft= is checked)
FAKE_REGISTRY = {"vanilla": {}, "pld": _any("num_draft", "max_ngram"), "lossy": _any("depth"),
                 "sps": method_options("sps"), "hf": {}}


def install(monkeypatch, gen=None):
    gen = gen or FakeGenerate()
    monkeypatch.setattr(runner, "core_generate", gen)
    monkeypatch.setattr(runner, "core_load_model", lambda *a, **k: fake_model())
    monkeypatch.setattr(config_mod, "known_methods", lambda: dict(FAKE_REGISTRY))
    return gen


def write_questions(path, n=3, turns=2, categories=("a", "b")):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"question_id": i + 1, "category": categories[i % len(categories)],
                                "turns": [[1 + i, 2, 3 + t] for t in range(turns)]}) + "\n")
    return path


def base_config(qfile, **kw):
    cfg = {"dataset": str(qfile), "max_new_tokens": 6, "warmup_tokens": 2,
           "methods": {"vanilla": {}, "pld": {"num_draft": 4}, "lossy": {}}}
    cfg.update(kw)
    return cfg
