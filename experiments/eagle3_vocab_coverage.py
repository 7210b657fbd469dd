"""What a draft vocabulary of N tokens can cover (README, "EAGLE-3"): the vocabulary is the N most
frequent assistant tokens of the training part of a ShareGPT token file (all but its last 500
conversations), and the figure is the share of assistant tokens it holds in the held-back 500 and
in the target's own greedy answers (a self-distilled token file). A token outside the vocabulary is
never drafted, so this share bounds the draft's per-token acceptance from above.
    python experiments/eagle3_vocab_coverage.py SHAREGPT.npz SELF_DISTILL.npz OUT.csv
"""
import csv
import sys

from specbench.drafters.base import frequent_tokens
from specbench.train.data import TokenData

SIZES = (1024, 2048, 4096, 8192, 13888, 16384, 32000)
HELD_BACK = 500

sharegpt, own, out = TokenData.load(sys.argv[1]), TokenData.load(sys.argv[2]), sys.argv[3]
vocab = int(sharegpt.meta["vocab_size"])
n = len(sharegpt)
counts = sharegpt.assistant_counts(list(range(n - HELD_BACK)), vocab)
held = sharegpt.assistant_counts(list(range(n - HELD_BACK, n)), vocab)
answers = own.assistant_counts(list(range(len(own))), vocab)
with open(out, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["draft_vocab", "heldback_sharegpt_coverage", "target_greedy_answers_coverage"])
    for size in SIZES:
        ids = frequent_tokens(counts, size)
        writer.writerow([size, round(float(held[ids].sum() / held.sum()), 4),
                         round(float(answers[ids].sum() / answers.sum()), 4)])
print(open(out).read())
