"""Invalid strategy options get one clear SpecbenchError (and exit 2 from the CLI's generate)."""
import pytest
import torch

import specbench
from specbench.options import method_options, parse_options


@pytest.fixture(scope="module")
def model():
    return specbench.random_model(vocab_size=16, num_layers=3, seed=0)


@pytest.mark.parametrize("method,options,message", [
    ("pld", {"num_draft": 0}, r"option num_draft of method 'pld' must be int >= 1, got 0"),
    ("pld", {"max_ngram": 0}, r"option max_ngram of method 'pld' must be int >= 1"),
    ("pld", {"num_draft": "abc"}, r"option num_draft of method 'pld' must be int >= 1, got 'abc'"),
    ("pld", {"num_draft": 2.5}, r"must be int >= 1, got 2\.5"),
    ("pld", {"num_draft": True}, r"must be int >= 1, got True"),
    ("sps", {}, "train one with `specbench train draft"),
    ("sps", {"draft": "target:3"}, r"needs 1\.\.2 layers"),
    ("sps", {"draft": 3}, r"option draft of method 'sps' must be 'target', 'target:K' or a model path or model or DraftLayers or None, got 3"),
    ("sps", {"draft": "no/such/draft.gguf"}, r"option draft of method 'sps': model file not found"),
    ("sps", {"draft": "target:1", "num_draft": 0}, r"option num_draft of method 'sps' must be int >= 1 or None, got 0"),
    ("sps", {"draft": "target:1", "draft_vocab": 17}, r"draft_vocab must be a token count in 1\.\.16"),
    ("early_exit", {"num_draft": 0}, r"option num_draft of method 'early_exit' must be int >= 1"),
    ("early_exit", {"exit_layer": 0}, r"option exit_layer .* must be int >= 1 or None, got 0"),
    ("early_exit", {"exit_layer": 3}, r"exit layer 3 is outside 1\.\.2"),
    ("early_exit", {"mode": "fast"}, r"option mode .* must be 'self_speculative' or 'confidence', got 'fast'"),
    ("early_exit", {"mode": "confidence", "exit_layers": [1, 3]}, r"exit layer 3 is outside 1\.\.2"),
    ("early_exit", {"mode": "confidence", "exit_layers": [1, "x"]}, r"option exit_layers .* must be list\[int >= 1\] or None"),
    ("early_exit", {"mode": "confidence", "thresholds": [0.5]}, r"one per exit layer \(2\), got 1"),
    ("early_exit", {"thresholds": 1.5}, r"option thresholds .* must be float in \(0, 1\] or list\[float in \(0, 1\]\]"),
    ("lookahead", {"W": 0}, r"option W of method 'lookahead' must be int >= 1, got 0"),
    ("lookahead", {"N": 1}, r"option N of method 'lookahead' must be int >= 2, got 1"),
    ("lookahead", {"prompt_ngrams": "maybe"}, r"option prompt_ngrams .* must be bool, got 'maybe'"),
    ("vanilla", {"num_draft": 3}, "unknown option 'num_draft' for method 'vanilla'"),
])
def test_invalid_option(model, method, options, message):
    with pytest.raises(specbench.SpecbenchError, match=message):
        specbench.generate(model, [1, 2, 3], method=method, max_new_tokens=4, **options)


def test_sps_draft_with_another_vocabulary(model):
    draft = specbench.random_model(vocab_size=12, num_layers=1, seed=1)
    with pytest.raises(specbench.SpecbenchError, match=r"vocabulary \(12\) differs"):
        specbench.generate(model, [1, 2, 3], method="sps", draft=draft, max_new_tokens=4)


@pytest.mark.parametrize("method,given,parsed", [
    ("pld", {"num_draft": "8", "max_ngram": 2}, {"num_draft": 8, "max_ngram": 2}),        # command-line text
    ("lookahead", {"prompt_ngrams": "False", "W": "4"}, {"prompt_ngrams": False, "W": 4}),
    ("early_exit", {"exit_layers": "[1, 2]", "thresholds": "0.5", "mode": "confidence"},
     {"exit_layers": [1, 2], "thresholds": 0.5, "mode": "confidence"}),
    ("early_exit", {"thresholds": [0.5, 1], "exit_layer": "none"}, {"thresholds": [0.5, 1.0], "exit_layer": None}),
])
def test_option_values_are_parsed_to_declared_types(method, given, parsed):
    out = parse_options(method, given)
    assert out == parsed and all(type(out[k]) is type(v) for k, v in parsed.items())


def test_draft_references_are_checked_without_a_model():
    """sps's draft= as text: keywords stay, a path is checked (its file header) and made absolute."""
    from specbench.loading import default_model_path
    gguf = default_model_path()
    assert parse_options("sps", {"draft": "target:2"}) == {"draft": "target:2"}
    assert parse_options("sps", {"draft": str(gguf)}) == {"draft": str(gguf.resolve())}
    assert method_options("sps")["draft"].type_name == "'target', 'target:K' or a model path or model or DraftLayers or None"


def test_path_options_must_exist(tmp_path):
    """A Path-typed option (medusa's drafter folder) is checked before any model exists."""
    with pytest.raises(specbench.SpecbenchError, match=r"option drafter of method 'medusa': path not found"):
        parse_options("medusa", {"drafter": str(tmp_path / "nope")})
    assert parse_options("medusa", {"drafter": str(tmp_path)}) == {"drafter": tmp_path}


@pytest.mark.parametrize("pad, kind", [(True, "cpu"), (False, "cpu-avx2")])
def test_cpu_defaults_follow_the_two_row_product(model, monkeypatch, pad, kind):
    """A CPU that pads 2-row products to 3 gets the "cpu" defaults; one that runs them as given
    (AVX2) gets the smaller drafts measured there; a device other than the CPU gets CUDA's."""
    from specbench import model as core
    from specbench.strategies import eagle, make_proposer, medusa, sps
    monkeypatch.setattr(core, "pad_two_rows", lambda: pad)
    assert core.device_kind(model.device) == kind
    assert core.device_kind(torch.device("cuda")) == "cuda"
    draft = specbench.random_model(vocab_size=16, num_layers=1, seed=1)
    assert make_proposer("sps", model, draft=draft).num_draft == sps.DEFAULT_NUM_DRAFT[kind]
    heads = specbench.random_drafter(model, "medusa", seed=0)
    assert len(make_proposer("medusa", model, drafter=heads).paths) == medusa.DEFAULT_TREE_SIZE[kind]
    for method, table in (("eagle", eagle.DEFAULTS), ("eagle3", eagle.EAGLE3_DEFAULTS)):
        plan = make_proposer(method, model, drafter=specbench.random_drafter(model, method, seed=0)).plan
        assert (plan.depth, plan.size) == (table[kind]["depth"], table[kind]["total_tokens"]), method
