"""Add the token counts `draft_vocab` ranks by to the shipped Medusa heads (session 30).

The heads were trained (session 13) before `MedusaHeads` kept the counts. `specbench train medusa`
now stores them from its training data (`init_from_data`); this rebuilds the same data as the
card names (ShareGPT, 3,000 conversations, at most 1,024 tokens, the last 32 held back) on the CPU,
counts its assistant tokens over the training split, and rewrites the weights file with the counts
beside the unchanged weights. Run from the repository root:

    python experiments/shipped_medusa_counts.py
"""
from pathlib import Path

import torch

import specbench
from specbench.drafters.base import read_shards, write_shards
from specbench.train.data import sharegpt_tokens
from specbench.train.trainer import split

FOLDER = Path("specbench/drafters/shipped/medusa")


def main() -> None:
    model = specbench.load_model(dtype="float32")
    data = sharegpt_tokens(model, 3000, 1024)
    train_idx, _ = split(data, 32)
    counts = data.assistant_counts(train_idx, model.args.vocab_size)
    state = read_shards(FOLDER)
    state["token_counts"] = counts
    write_shards(state, FOLDER)
    print(f"{len(train_idx)} conversations, {int(counts.sum())} assistant tokens, "
          f"{int((counts > 0).sum())} distinct; wrote {FOLDER}")


if __name__ == "__main__":
    main()
