"""numerics="batch_invariant" on CPU: each token's logits independent of how many tokens share a
forward, so every lossless method's bf16 greedy output equals vanilla's. "fast" is the control.

The CPU facts the mode rests on are measured here, not assumed: torch's CPU matmul is not
row-invariant (a 1-row F.linear takes another kernel than a k-row one), so the mode multiplies
blocks of exactly CPU_ROWS rows and these tests check that a row then gets the same bits wherever
it sits; RMSNorm's row reduction is row-invariant as it is.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")   # the attention reference lives beside the kernels

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import specbench  # noqa: E402
from specbench import numerics  # noqa: E402
from specbench.cli import main as cli_main  # noqa: E402
from specbench.errors import SpecbenchError  # noqa: E402
from specbench.model import Linear, RMSNorm  # noqa: E402
from specbench_kernels import gpu_check  # noqa: E402
from specbench_kernels.attention import attention_reference  # noqa: E402

from attention_cases import DTYPES, TOL, attention_case, randn, random_tree, rel_err  # noqa: E402, I001

BI = "batch_invariant"


def assert_rows_invariant(f, x: torch.Tensor) -> None:
    """f's row i is bit-identical for every prefix of x holding row i, and for row i alone."""
    full = f(x)
    for rows in (1, 3, numerics.CPU_ROWS, numerics.CPU_ROWS + 1, x.shape[0]):
        assert torch.equal(f(x[:rows]), full[:rows]), rows
    for i in (2, x.shape[0] - 1):
        assert torch.equal(f(x[i:i + 1].clone()), full[i:i + 1]), i


# ---- the CPU building blocks ----------------------------------------------------------------

# (in, out) of the default model's projections (q/k/v fused, o, gate/up fused, down, a slice of
# the LM head) and of a 7B model's q and down projections
LINEAR_SHAPES = [(576, 960), (576, 576), (576, 3072), (1536, 576), (576, 8192), (4096, 512), (11008, 256)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", LINEAR_SHAPES)
def test_cpu_linear_rows_are_batch_invariant(dtype, shape):
    layer = Linear(*shape, bias=shape == (576, 960)).to(dtype)
    x = randn(21, shape[0], dtype=dtype)
    assert_rows_invariant(lambda t: numerics.linear(t, layer, BI), x)
    assert rel_err(numerics.linear(x, layer, BI), nn.functional.linear(x, layer.weight, layer.bias)) < TOL[dtype]


def test_cpu_half_precision_products_run_in_float32_from_a_kept_copy():
    """batch_invariant on CPU: a bfloat16 product is the float32 product of the widened inputs
    (one 8-row block), rounded once; the float32 weight is kept, and remade when the weight changes."""
    layer = Linear(64, 32, bias=True).to(torch.bfloat16)
    x = randn(3, 64, dtype=torch.bfloat16)

    def expected() -> torch.Tensor:
        block = torch.cat([x.float(), torch.zeros(numerics.CPU_ROWS - 3, 64)])
        return nn.functional.linear(block, layer.weight.float(), layer.bias.float())[:3].to(torch.bfloat16)

    y = numerics.linear(x, layer, BI)
    assert y.dtype == torch.bfloat16 and torch.equal(y, expected())
    kept = layer.float32_weight()[0]
    numerics.linear(x, layer, BI)
    assert layer.float32_weight()[0] is kept
    with torch.no_grad():
        layer.weight.mul_(-1)                     # in place: a stale copy would give y again
    assert torch.equal(numerics.linear(x, layer, BI), expected()) and not torch.equal(expected(), y)
    layer.to(torch.float32)
    layer.pack()                                  # what Transformer.pack_weights does on a move or cast
    assert "_float32" not in layer.__dict__       # the stale copy's memory is not held


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [32, 576, 4096])
def test_cpu_rms_norm_rows_are_batch_invariant(dtype, dim):
    norm = RMSNorm(dim, 1e-5).to(dtype)
    assert_rows_invariant(lambda t: numerics.rms_norm(t, norm, BI), randn(21, dim, dtype=dtype) * 3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [36, 1536])      # 36: a row ends inside a vector, so tails differ
def test_cpu_silu_rows_are_batch_invariant(dtype, dim):
    x = randn(21, dim, dtype=dtype) * 4
    assert_rows_invariant(lambda t: numerics.silu(t, BI), x)
    assert torch.equal(numerics.silu(x, BI), torch.stack([torch.nn.functional.silu(r) for r in x]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(6, 2, 16), (4, 4, 8)])
def test_cpu_attention_rows_match_reference_and_the_token_alone(dtype, shape):
    start, n = 45, 14
    q, k, v, parents, mask, positions = attention_case(dtype, *shape, start, n)
    tree = numerics.Attention(BI, start, mask, positions)(q, k, v)
    assert rel_err(tree, attention_reference(q, k, v, start, mask)) < TOL[dtype]
    for i in range(n):
        path = [i]
        while parents[path[-1]] >= 0:
            path.append(parents[path[-1]])
        k1, v1 = k.clone(), v.clone()
        k1[:, start:start + len(path)] = k[:, [start + j for j in path[::-1]]]
        v1[:, start:start + len(path)] = v[:, [start + j for j in path[::-1]]]
        p = int(positions[i])
        alone = numerics.Attention(BI, p, None, positions[i:i + 1])(q[i:i + 1], k1, v1)
        assert torch.equal(alone, tree[i:i + 1]), i


@pytest.mark.parametrize("shape", [(6, 2, 16), (9, 3, 8)])
def test_cpu_fast_attention_groups_its_mask_once_per_forward(shape):
    """fast numerics on the CPU: the tree mask, repeated for the query heads sharing a kv head, is
    made once per forward and reused by every layer, with the output of sdpa given the plain mask
    and of the reference; a mask passed already grouped is not grouped again."""
    start, n = 45, 14
    q, k, v, _, mask, positions = attention_case(torch.float32, *shape, start, n)
    attend = numerics.Attention("fast", start, mask, positions)
    out = attend(q, k, v)
    grouped = attend._grouped_full
    assert grouped is not None and grouped.shape == (q.shape[1] // k.shape[0] * n, start + n)
    assert torch.equal(attend(q, k, v), out) and attend._grouped_full is grouped
    span = start + n
    assert torch.equal(numerics.sdpa(q, k[:, :span], v[:, :span], attend.full), out)
    assert torch.equal(numerics.sdpa(q, k[:, :span], v[:, :span], grouped), out)
    assert rel_err(out, attention_reference(q, k, v, start, mask)) < TOL[torch.float32]


# ---- whole forwards -------------------------------------------------------------------------

# near-ties are common with a flat next-token distribution over a large vocabulary
TIED = dict(vocab_size=2048, num_layers=2, hidden_size=256, num_heads=4, num_kv_heads=2,
            intermediate_size=512, logit_scale=0.3, dtype="bfloat16")


def rows_unlike_one_token_forwards(model, parents: list[int]) -> int:
    """Rows of one forward over a token tree (on a 20-token prefix) whose logits differ in any bit
    from those of one-token forwards along the node's path, vanilla's way of computing them; the
    GPU check runs the same count through CUDA graphs."""
    tokens = torch.randint(0, model.args.vocab_size, (20 + len(parents),), generator=torch.Generator().manual_seed(0))
    cache = model.new_cache(20 + len(parents) + 1)
    model(tokens[:20], torch.arange(20), cache, stop_layer=model.args.num_layers)
    cache.length = 20

    def forward(new, positions, mask, offset):
        return model(new, positions, cache, mask, start=cache.length + offset).logits
    return gpu_check.rows_unlike_alone(forward, parents, tokens[20:], 20)


def test_tree_forward_equals_one_token_forwards_bitwise():
    """batch_invariant: no row differs, for a 16-token chain and a 16-node tree. fast, the
    control: some of the chain's rows differ (measured 2 of 16 with this 2-layer model, 12 of 16
    with 4 layers): SDPA and the matmuls of a 16-row forward round unlike one-row ones."""
    chain = [-1] + list(range(15))
    tree = random_tree(16, seed=2)[0]
    invariant = specbench.random_model(**TIED, numerics=BI)
    assert rows_unlike_one_token_forwards(invariant, chain) == 0
    assert rows_unlike_one_token_forwards(invariant, tree) == 0
    assert rows_unlike_one_token_forwards(specbench.random_model(**TIED), chain) > 0


def test_batch_invariant_is_as_accurate_as_fast():
    """The mode changes rounding, not results: float32 logits of both modes agree to 1e-5."""
    model = specbench.random_model(vocab_size=256, num_layers=2, hidden_size=64, seed=1)
    prompt = torch.arange(30) % 256
    fast = model(prompt, torch.arange(30), model.new_cache(32)).logits
    model.numerics = BI
    assert rel_err(model(prompt, torch.arange(30), model.new_cache(32)).logits, fast) < 1e-5


def greedy_matches(model, methods: dict[str, dict], prompts, max_new_tokens) -> dict[str, int]:
    """Per lossless method (name -> options), on how many prompts its greedy output equals vanilla's."""
    counts = dict.fromkeys(methods, 0)
    for prompt in prompts:
        ref = specbench.generate(model, prompt, "vanilla", max_new_tokens=max_new_tokens).token_ids
        for method, options in methods.items():
            out = specbench.generate(model, prompt, method, max_new_tokens=max_new_tokens, **options)
            counts[method] += out.token_ids == ref
    return counts


def test_random_bf16_models_lossless_methods_equal_vanilla():
    """30 prompts x 32 tokens on a bf16 model with many near-ties. batch_invariant: every lossless
    method equals vanilla on 30 of 30. fast, the control (measured: pld 30, sps 28, early_exit 30,
    lookahead 28, medusa 28 of 30; with 4 layers and 40 tokens pld 29, sps 23, early_exit 29,
    lookahead 23): not on all."""
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 2048, (12,), generator=gen).tolist() for _ in range(30)]
    draft = specbench.random_model(**dict(TIED, num_layers=1, hidden_size=64), seed=7)
    counts = {}
    for mode in numerics.MODES:
        model = specbench.random_model(**TIED, numerics=mode)
        methods = {"pld": {}, "sps": {"draft": draft}, "early_exit": {"exit_layer": 1}, "lookahead": {},
                   "medusa": {"drafter": specbench.random_drafter(model, "medusa", seed=0)}}
        counts[mode] = greedy_matches(model, methods, prompts, 32)
    assert counts[BI] == dict.fromkeys(counts[BI], 30)
    assert sum(counts["fast"].values()) < 5 * 30, counts["fast"]


def test_default_model_bf16_lossless_methods_equal_vanilla(default_model):
    """The default model in bf16, batch_invariant, 2 short prompts x 16 tokens: pld, sps (the model
    as its own draft), early_exit, lookahead and medusa (the shipped heads) all equal vanilla.
    About 25 s on a CPU with native bfloat16 (3 prompts then); on session 34's AVX2-only EPYC 3
    prompts took 138 s, its bfloat16 products over several rows being unpacked, so 2 it is (41 s
    there since session 35's float32 products in this mode)."""
    import copy
    model = copy.deepcopy(default_model).to(torch.bfloat16)
    model.numerics = BI
    prompts = [specbench.encode_prompt(model, p) for p in ("What is 2+2?", "Name a color.")]
    methods = {"pld": {}, "sps": {"draft": model}, "early_exit": {}, "lookahead": {}, "medusa": {}}
    assert greedy_matches(model, methods, prompts, 16) == dict.fromkeys(methods, 2)


# ---- the switch: API, CLI, bench ------------------------------------------------------------

def test_bad_numerics_fail_early_with_one_line(tmp_path, capsys):
    with pytest.raises(SpecbenchError, match="unknown numerics 'exact'"):
        specbench.load_model(tmp_path / "missing.gguf", numerics="exact")     # checked before loading
    with pytest.raises(SpecbenchError, match="unknown numerics"):
        specbench.random_model(numerics="exact")
    model = specbench.random_model()
    with pytest.raises(SpecbenchError, match="unknown numerics"):
        model.numerics = "exact"
    assert model.numerics == "fast"
    assert cli_main(["generate", "--prompt", "hi", "--model", str(tmp_path / "missing.gguf"),
                     "--numerics", "exact"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown numerics 'exact'") and err.count("\n") == 1


def test_bench_runs_each_method_in_its_mode_and_compares_within_it(tmp_path):
    """A config in fast mode with batch_invariant variants: each answer records its mode, the
    target ran in it, and exact match compares with the vanilla of the same mode."""
    from specbench.bench import config as config_mod
    from specbench.bench import run_benchmark
    qfile = tmp_path / "q.jsonl"
    qfile.write_text('{"question_id": 1, "category": "a", "turns": [[1, 2, 3, 1, 2, 3]]}\n'
                     '{"question_id": 2, "category": "b", "turns": [[4, 5, 4, 5]]}\n')
    cfg = {"dataset": str(qfile), "max_new_tokens": 8, "warmup_tokens": 2, "draft": "target",
           "methods": {"pld": {}, "vanilla": {}, "lookahead_bi": {"method": "lookahead", "numerics": BI},
                       "modes": {"method": "sps", "sweep": {"numerics": ["fast", BI]}},
                       "vanilla_bi": {"method": "vanilla", "numerics": BI}}}
    resolved = config_mod.resolve_config(config_mod.load_config(cfg))
    assert [(m["label"], m["numerics"]) for m in resolved["methods"]] == [
        ("vanilla", "fast"), ("vanilla_bi", BI), ("pld", "fast"), ("lookahead_bi", BI),
        ("modes_numericsfast", "fast"), ("modes_numericsbatch-invariant", BI)]
    assert config_mod.reference_for(resolved, "lookahead_bi") == "vanilla_bi"
    assert config_mod.reference_for(resolved, "pld") == "vanilla"
    seen = []
    model = specbench.random_model(vocab_size=16, num_layers=2, hidden_size=32, seed=0)
    original = model.forward
    model.forward = lambda *a, **k: seen.append(model.numerics) or original(*a, **k)
    res = run_benchmark(cfg, tmp_path / "res", model=model, progress=False)
    assert {a["method"]: a["numerics"] for a in res.answers} == {m["label"]: m["numerics"] for m in resolved["methods"]}
    assert all(a["matches_vanilla"] is True for a in res.answers)
    assert set(seen) == {"fast", BI}
    assert "numerics batch_invariant" in (tmp_path / "res" / "summary.md").read_text()
    with pytest.raises(SpecbenchError, match="numerics does not apply"):
        config_mod.resolve_config({"methods": {"hf": {"numerics": BI}}})
    with pytest.raises(SpecbenchError, match="unknown numerics"):
        config_mod.resolve_config({"numerics": "exact"})


@pytest.mark.parametrize("name", ["gpu_numerics.yaml", "cpu_numerics.yaml"])
def test_shipped_numerics_experiments_resolve(name):
    """Both modes in one run: the two vanillas first, each method compared within its mode."""
    from pathlib import Path

    from specbench.bench import config as config_mod
    cfg = config_mod.resolve_config(config_mod.load_config(Path(__file__).parents[1] / "experiments" / name))
    labels = [m["label"] for m in cfg["methods"]]
    assert labels[:2] == ["vanilla", "vanilla_bi"] and len(labels) == 8
    for m in cfg["methods"]:
        assert config_mod.reference_for(cfg, m["label"]) == ("vanilla_bi" if m["numerics"] == BI else "vanilla")

