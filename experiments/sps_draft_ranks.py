"""How often the target's next greedy token is the draft's 1st, 2nd, ... choice: the draft read
teacher-forced over vanilla's greedy answers to MT-bench first turns. What `sps`'s `siblings`
(the draft's next choices verified beside its first) can gain at the first drafted position.

    python experiments/sps_draft_ranks.py [--draft PATH|target:K] [--questions 10] [--tokens 128] [--ranks 4]
"""
from __future__ import annotations

import argparse

import torch

import specbench
from specbench.bench.datasets import load_dataset
from specbench.drafters.draft import resolve_draft
from specbench.generate import encode_prompt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draft", default=None, help="a draft folder or target:K (default: the shipped draft)")
    parser.add_argument("--questions", type=int, default=10, help="every 8th MT-bench question, this many")
    parser.add_argument("--tokens", type=int, default=128, help="greedy vanilla tokens per answer")
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = specbench.load_model()
    draft = resolve_draft(args.draft, model)
    questions = load_dataset("mt_bench")[::8][:args.questions]
    hits, total = torch.zeros(args.ranks), 0
    for q in questions:
        prompt = encode_prompt(model, q.turns[0])
        answer = specbench.generate(model, q.turns[0], max_new_tokens=args.tokens).token_ids
        ids = torch.tensor(prompt + answer)
        with torch.inference_mode():
            logits = draft(ids, torch.arange(len(ids)), draft.new_cache(len(ids))).logits
        choices = logits[len(prompt) - 1:-1].topk(args.ranks, -1).indices      # row i predicts answer[i]
        hits += (choices == torch.tensor(answer)[:, None]).sum(0)
        total += len(answer)
    rates = hits / total
    print(f"{len(questions)} MT-bench answers, {total} tokens; the target's token is the draft's choice:")
    for k in range(args.ranks):
        print(f"  rank {k + 1}: {rates[k]:.3f}   (within the first {k + 1}: {rates[:k + 1].sum():.3f})")


if __name__ == "__main__":
    main()
