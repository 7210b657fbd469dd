"""Hugging Face `generate` as benchmark methods, on the same weights, prompt tokens and sampling.

Methods and options (defaults):

``hf``             plain `model.generate` (greedy at temperature 0, else sampling).
``hf_pld``         prompt lookup decoding: ``prompt_lookup_num_tokens`` (10) and
                   ``max_matching_ngram_size`` (3; transformers' own default is 2): the defaults of
                   specbench's ``pld`` (num_draft=10, max_ngram=3), so the two compare like for like.
``hf_early_exit``  self-speculation with the first ``assistant_early_exit`` layers as the draft
                   (`EarlyExitCandidateGenerator`, transformers >= 4.47). Defaults mirror
                   specbench's ``early_exit``: 4/5 of the layers (24 of SmolLM2-135M's 30) and
                   ``num_assistant_tokens`` 3 with the "constant" schedule (transformers' defaults
                   are 20, constant). The draft is the LM head on an intermediate residual stream,
                   which models not trained for early exit (like SmolLM2) serve poorly: a protocol
                   baseline, not a tuned one. Also ``assistant_confidence_threshold`` (HF's 0.4).

The HF model is loaded with ``AutoModelForCausalLM.from_pretrained(**model.hf_source)`` in the
dtype and on the device of the specbench model, once per run, and shared by the three methods.
The prompt is the very token-id list the specbench methods get; stopping is at the same EOS ids
(the model's and its tokenizer's) or at max_new_tokens; the EOS token is kept in the output, as
the specbench engine does. Sampling uses do_sample with temperature, top_k (0: off) and top_p
(1: off), seeded with ``torch.manual_seed(seed)`` (HF samples from the global generator, so
sampled outputs are not token-identical to specbench's).

Accepted lengths come from a streamer: in assisted decoding transformers streams exactly the
tokens each step commits (accepted drafts + the bonus token), so ``accepted_lengths`` holds those
counts and ``steps`` their number; plain ``hf`` commits one token a step. If the streamed counts
do not add up to the new tokens, both are recorded as null (tables show "-").
"""
from __future__ import annotations

import time
from typing import Annotated, Literal

import torch

from specbench.errors import SpecbenchError
from specbench.loading import transformers_output
from specbench.options import Bound, OptionSpec, PositiveInt, parse_options


def _specs(**options) -> dict[str, OptionSpec]:
    return {name: OptionSpec(name, hint, default) for name, (hint, default) in options.items()}


# the options of each method with their types and defaults, checked like the strategies' own
HF_OPTIONS: dict[str, dict[str, OptionSpec]] = {
    "hf": {},
    "hf_pld": _specs(prompt_lookup_num_tokens=(PositiveInt, 10), max_matching_ngram_size=(PositiveInt, 3)),
    "hf_early_exit": _specs(
        assistant_early_exit=(PositiveInt | None, None),      # None: 4/5 of the layers
        num_assistant_tokens=(PositiveInt, 3),
        num_assistant_tokens_schedule=(Literal["constant", "heuristic", "heuristic_transient"], "constant"),
        assistant_confidence_threshold=(Annotated[float, Bound(0, 1)], 0.4)),
}
HF_METHODS = tuple(HF_OPTIONS)


class HFOutput:
    def __init__(self, token_ids, text, stats):
        self.token_ids, self.text, self.stats = token_ids, text, stats


class _StepRecorder:
    """A transformers streamer that records how many tokens each put() brings (the first: the prompt)."""

    def __init__(self):
        self.sizes: list[int] = []
        self._prompt_seen = False

    def put(self, value):
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.sizes.append(int(value.numel()))

    def end(self):
        pass


def eos_ids(model) -> tuple[int, ...]:
    """The EOS ids specbench.generate stops at: the model config's and the tokenizer's."""
    args = getattr(model, "args", None)
    eos = set(getattr(args, "eos_token_ids", ()) or ())
    tok = getattr(model, "tokenizer", None)
    if tok is not None and getattr(tok, "eos_token_id", None) is not None:
        eos.add(int(tok.eos_token_id))
    return tuple(sorted(eos))


class HFBaselines:
    """Lazily loads the HF twin of a specbench model and runs the hf* methods on it."""

    def __init__(self, model, verbose: bool = False):
        self.model, self.verbose = model, verbose
        self._hf = None

    def hf_model(self):
        if self._hf is None:
            source = getattr(self.model, "hf_source", None)
            if not source:
                raise SpecbenchError("the hf* methods need model.hf_source (a model loaded from a file or "
                                     "a hub id); this model has none")
            from transformers import AutoModelForCausalLM
            try:
                with transformers_output(self.verbose):
                    hf = AutoModelForCausalLM.from_pretrained(**source, dtype=self.model.dtype)
            except Exception as e:
                raise SpecbenchError(f"cannot load the Hugging Face baseline from {source}: "
                                     f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
            self._hf = hf.to(self.model.device).eval().requires_grad_(False)
        return self._hf

    def options(self, method: str, options: dict) -> dict:
        if method not in HF_OPTIONS:
            raise SpecbenchError(f"unknown Hugging Face method {method!r}: choose one of {', '.join(HF_OPTIONS)}")
        opts = {name: spec.default for name, spec in HF_OPTIONS[method].items()}
        opts.update(parse_options(method, options, specs=HF_OPTIONS[method]))
        if method == "hf_early_exit":
            layers = int(self.hf_model().config.num_hidden_layers)
            if opts["assistant_early_exit"] is None:
                opts["assistant_early_exit"] = max(1, (4 * layers) // 5)   # as early_exit's default
            if opts["assistant_early_exit"] >= layers:
                raise SpecbenchError(f"assistant_early_exit must be in [1, {layers - 1}], "
                                     f"got {opts['assistant_early_exit']}")
        return opts

    def generate(self, method: str, prompt_ids: list[int], *, max_new_tokens: int, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, seed: int = 0, **options) -> HFOutput:
        from transformers import GenerationConfig
        opts = self.options(method, options)
        hf = self.hf_model()
        eos = list(eos_ids(self.model))
        kwargs = dict(max_new_tokens=max_new_tokens, eos_token_id=eos or None,
                      pad_token_id=eos[0] if eos else None, num_return_sequences=1)
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_k=top_k or None,
                          top_p=top_p if top_p < 1 else None)
        else:
            kwargs.update(do_sample=False)
        kwargs.update(opts)
        gen_config = GenerationConfig(**kwargs)
        device = self.model.device
        input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
        recorder = _StepRecorder() if method != "hf" else None
        torch.manual_seed(seed)
        # transformers warns from inside assisted generation (its own deprecations): --verbose shows it
        with transformers_output(self.verbose), torch.no_grad():
            start = time.perf_counter()
            seq = hf.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                              generation_config=gen_config, streamer=recorder)
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize(device)
            wall = time.perf_counter() - start
        new = [int(t) for t in seq[0, len(prompt_ids):].tolist()]
        # a sequence that stopped at EOS ends there (HF pads nothing for a batch of one, but be safe)
        eos_set = set(eos)
        for j, t in enumerate(new):
            if t in eos_set:
                new = new[: j + 1]
                break
        if recorder is None:
            accepted, steps = [1] * len(new), len(new)
        elif sum(recorder.sizes) == len(new):
            accepted, steps = list(recorder.sizes), len(recorder.sizes)
        else:
            accepted, steps = None, None
        tok = getattr(self.model, "tokenizer", None)
        text = tok.decode(new, skip_special_tokens=True) if tok is not None else ""
        stats = {"new_tokens": len(new), "steps": steps, "accepted_lengths": accepted, "draft_tokens": None,
                 "wall_time_s": wall, "lossless": True, "hf_options": opts}
        return HFOutput(new, text, stats)
