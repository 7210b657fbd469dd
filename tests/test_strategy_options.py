"""Invalid strategy options get one clear SpecbenchError (and exit 2 from the CLI's generate)."""
import pytest

import specbench


@pytest.fixture(scope="module")
def model():
    return specbench.random_model(vocab_size=16, num_layers=3, seed=0)


@pytest.mark.parametrize("method,options,message", [
    ("pld", {"num_draft": 0}, "num_draft must be >= 1"),
    ("pld", {"max_ngram": 0}, "max_ngram must be >= 1"),
    ("sps", {}, "train one with `specbench train draft"),
    ("sps", {"draft": "target:3"}, r"needs 1\.\.2 layers"),
    ("sps", {"draft": 3}, "draft= must be None, 'target', 'target:K', a path or a model"),
    ("sps", {"draft": "target:1", "num_draft": 0}, "num_draft must be an integer >= 1"),
    ("early_exit", {"num_draft": 0}, "num_draft must be >= 1"),
    ("early_exit", {"exit_layer": 0}, r"exit layer 0 is outside 1\.\.2"),
    ("early_exit", {"exit_layer": 3}, r"exit layer 3 is outside 1\.\.2"),
    ("early_exit", {"mode": "fast"}, "mode must be"),
    ("early_exit", {"mode": "confidence", "exit_layers": [1, 3]}, r"exit layer 3 is outside 1\.\.2"),
    ("early_exit", {"mode": "confidence", "thresholds": [0.5]}, "one per exit layer"),
    ("lookahead", {"W": 0}, "W must be an integer >= 1"),
    ("vanilla", {"num_draft": 3}, "unknown option 'num_draft' for method 'vanilla'"),
])
def test_invalid_option(model, method, options, message):
    with pytest.raises(specbench.SpecbenchError, match=message):
        specbench.generate(model, [1, 2, 3], method=method, max_new_tokens=4, **options)


def test_sps_draft_with_another_vocabulary(model):
    draft = specbench.random_model(vocab_size=12, num_layers=1, seed=1)
    with pytest.raises(specbench.SpecbenchError, match=r"vocabulary \(12\) differs"):
        specbench.generate(model, [1, 2, 3], method="sps", draft=draft, max_new_tokens=4)
