"""The notebooks' analyses (specbench/analysis.py) on known inputs, and committed result folders
re-read without their config or a model."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch

import specbench
from specbench import analysis
from specbench.bench import read_results
from specbench.bench.runner import BenchResult

REPO = Path(__file__).resolve().parent.parent


def test_expected_tokens_limits_and_formula():
    assert analysis.expected_tokens(0.0, 5) == 1.0
    assert analysis.expected_tokens(1.0, 5) == 6.0
    # a = 0.5, g = 2: 1 + 0.5 + 0.25
    assert analysis.expected_tokens(0.5, 2) == pytest.approx(1.75)
    # Leviathan et al.'s example setting: a = 0.75, g = 7, c = 0 gives E[tokens]
    assert analysis.predicted_speedup(0.75, 7, 0.0) == pytest.approx(analysis.expected_tokens(0.75, 7))
    assert analysis.predicted_speedup(0.5, 2, 0.25, verify_cost=2.0) == pytest.approx(1.75 / 2.5)


def _result(answers: list[dict]) -> BenchResult:
    return BenchResult(out=Path("."), config={}, answers=answers, summary=pd.DataFrame())


def test_acceptance_mle_counts_rejections():
    # steps (committed, drafted): (3, 2) all accepted; (1, 2) one rejection at once; (2, 2) one accepted then rejected
    answers = [{"method": "sps", "accepted_lengths": [3, 1, 2], "draft_tokens": [2, 2, 2]},
               {"method": "other", "accepted_lengths": [1], "draft_tokens": [5]}]
    # accepted drafts 2 + 0 + 1 = 3, rejections 2
    assert analysis.acceptance_mle(_result(answers), "sps") == pytest.approx(3 / 5)
    assert math.isnan(analysis.acceptance_mle(_result(answers), "missing"))


def test_monotone_share():
    frame = pd.DataFrame({"W": [3, 7, 15, 3, 7, 15], "N": [3, 3, 3, 5, 5, 5], "acc": [1.0, 1.2, 1.3, 1.2, 1.1, 1.4]})
    assert analysis.monotone_share(frame, "W", "N", "acc") == pytest.approx(3 / 4)
    assert analysis.monotone_share(frame, "W", "N", "acc", tolerance=0.2) == 1.0
    assert math.isnan(analysis.monotone_share(frame.iloc[:1], "W", "N", "acc"))


def test_verdict_table():
    text = analysis.verdict([{"claim": "c", "paper": "p", "ours": "o", "agrees": True},
                             {"claim": "d", "paper": "q", "ours": "r", "agrees": False}])
    assert [c.strip() for c in text.splitlines()[0].split("|")[1:-1]] == ["claim", "paper", "ours", "agrees"]
    assert "| yes" in text and "| no " in text


@pytest.mark.parametrize("name", ["cpu_numerics", "cpu_engine", "gpu_medusa_data_h200", "cpu_sps_gamma"])
def test_committed_folders_are_read_back(name):
    """Folders of every age (before the numerics modes too) summarise again without a model."""
    result = read_results(REPO / "docs" / "results" / name)
    stored = pd.read_csv(REPO / "docs" / "results" / name / "summary.csv")
    assert result.already_finished
    assert list(result.summary["method"]) == list(stored["method"])
    assert result.summary["tokens_per_s"].tolist() == pytest.approx(stored["tokens_per_s"].tolist())
    frame = analysis.overall(result)
    assert (frame.loc[frame["base_method"] != "vanilla", "ms_per_step"] > 0).all()


def test_gain_per_doubling_on_the_committed_scaling_run():
    """The data-scaling figures the README and notebook 04 quote, from the committed run and the
    drafters' cards: 1.82x the data lifts EAGLE-3 from 2.149 to 2.293 tokens per step."""
    folder = REPO / "docs" / "results" / "gpu_eagle3_scaling_h200"
    result = read_results(folder)
    small = analysis.training_conversations(folder / "drafters" / "eagle3_shipped")
    large = analysis.training_conversations(folder / "drafters" / "eagle3")
    assert (small, large) == (5487, 10012)
    gain = analysis.gain_per_doubling(result, "eagle3", "eagle3_more_data", small, large)
    assert gain == pytest.approx((2.2928 / 2.1487) ** (1 / math.log2(10012 / 5487)) - 1, abs=1e-3)
    assert analysis.gain_per_doubling(result, "eagle3", "eagle3", small, large) == 0.0


def test_sps_theory_on_the_committed_run():
    result = read_results(REPO / "docs" / "results" / "cpu_sps_gamma")
    alpha = analysis.acceptance_mle(result, "sps_num_draft1")
    theory = analysis.sps_theory(result, alpha)
    assert theory["gamma"].tolist() == [1, 2, 3, 4, 6, 8]
    assert theory.loc[0, "tokens_predicted"] == pytest.approx(1 + alpha)
    assert theory["speedup_leviathan"].isna().all()     # no cost ratio given


def _profile_csv(tmp_path, device: str) -> Path:
    rows = [{"device": device, "cache_len": 512, "new_tokens": n, "x_step": x}
            for n, x in ((1, 1.0), (2, 1.2), (4, 1.6), (8, 3.2))]
    path = tmp_path / f"profile_{device}.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_profile_verify_costs_pads_on_cuda_and_interpolates_on_cpu(tmp_path):
    """A CUDA forward over 3 tokens runs the 4-token bucket; a CPU one costs between 2 and 4."""
    assert analysis.profile_verify_costs(_profile_csv(tmp_path, "cuda"), [2, 3, 5]) == \
        {"2": 1.2, "3": 1.6, "5": 3.2}
    cpu = analysis.profile_verify_costs(_profile_csv(tmp_path, "cpu"), [2, 3, 5])
    assert cpu == pytest.approx({"2": 1.2, "3": 1.4, "5": 2.0})


def test_sweep_draft_cost_is_the_slope_over_the_forward():
    """The committed H200 sweep: draft milliseconds grow by one draft forward per draft token."""
    result = read_results(REPO / "docs" / "results" / "gpu_sps_gamma_h200")
    frame = analysis.overall(result)
    sps = frame[frame["base_method"] == "sps"].sort_values("num_draft")
    forward = frame.loc[frame["base_method"] == "vanilla", "forward_ms"].iloc[0]
    first, last = sps.iloc[0], sps.iloc[-1]
    chord = (last["draft_ms"] - first["draft_ms"]) / (last["num_draft"] - first["num_draft"]) / forward
    assert analysis.sweep_draft_cost(result) == pytest.approx(chord, rel=0.05)
    assert 0 < analysis.sweep_draft_cost(result) < 1


def test_read_results_refuses_an_unfinished_folder(tmp_path):
    with pytest.raises(Exception, match="no finished benchmark"):
        read_results(tmp_path)


def test_chain_fit_distribution_distance():
    # every step accepts both drafts: alpha = 1, the model predicts exactly that
    answers = [{"method": "m", "accepted_lengths": [3, 3], "draft_tokens": [2, 2]}]
    fit = analysis.chain_fit(_result(answers), ["m"]).iloc[0]
    assert fit["alpha_mle"] == 1.0 and fit["tv_distance"] == pytest.approx(0.0)
    assert fit["tokens_measured"] == fit["tokens_predicted"] == 3.0
    # half the steps accept both, half none: alpha = 2/3, the geometric puts 1/3, 2/9, 4/9 on 0, 1, 2
    answers = [{"method": "m", "accepted_lengths": [3, 1], "draft_tokens": [2, 2]}]
    fit = analysis.chain_fit(_result(answers), ["m"]).iloc[0]
    assert fit["alpha_mle"] == pytest.approx(2 / 3)
    assert fit["tv_distance"] == pytest.approx(0.5 * (abs(0.5 - 1 / 3) + 2 / 9 + abs(0.5 - 4 / 9)))


def test_decoded_logits_are_the_ones_vanilla_chose_on():
    """The margins notebook 07 reports are read from the rows vanilla decoding computed: in bf16
    their argmaxes are vanilla's tokens on 10 of 10 prompts. A single forward over the whole text
    (the control) rounds otherwise and, on this model with many near-ties, picks other tokens
    somewhere in 4 of the 10 (measured)."""
    model = specbench.random_model(vocab_size=2048, num_layers=2, hidden_size=256, num_heads=4, num_kv_heads=2,
                                   intermediate_size=512, logit_scale=0.3, dtype="bfloat16")
    gen = torch.Generator().manual_seed(0)
    decoded_agree = whole_disagree = 0
    for _ in range(10):
        prompt = torch.randint(0, 2048, (12,), generator=gen).tolist()
        answer = specbench.generate(model, prompt, max_new_tokens=32).token_ids
        decoded_agree += analysis._decoded_logits(model, prompt, answer).argmax(-1).tolist() == answer
        whole = analysis._logits(model, prompt + answer)[len(prompt) - 1:-1]
        whole_disagree += whole.argmax(-1).tolist() != answer
    assert decoded_agree == 10
    assert whole_disagree > 0
