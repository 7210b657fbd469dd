"""`specbench train <kind>` and `specbench train data`: the command-line face of train_drafter."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..cli import add_verbose
from ..drafters.draft import DEFAULT_LAYERS
from ..errors import SpecbenchError
from . import DATA_SOURCES, DEFAULT_DATA, OBJECTIVES, TrainConfig, check_config
from ..drafters.eagle3 import DEFAULT_DRAFT_VOCAB
from .distill import DIVERGENCES
from .eagle3 import TTT_STEPS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Train a drafter for a frozen target on ShareGPT (never the benchmark's held-out "
                          "conversations); --out receives model.safetensors, config.json, metrics.jsonl, "
                          "loss.png and card.md. Rerunning the same command resumes a killed run.")
    parser.add_argument("kind", choices=[*OBJECTIVES, "data"],
                        help="drafter to train, or `data` to only write a token file (for staging)")
    parser.add_argument("--out", required=True, help="output folder (a .npz file for `data`)")
    parser.add_argument("--model", default=None, help="target: GGUF, folder or hub id (default SmolLM2-135M-Instruct)")
    parser.add_argument("--data", default=None,
                        help=f"{' | '.join(DATA_SOURCES)} | a token file from `specbench train data` (default per kind: "
                             + ", ".join(f"{k} {v}" for k, v in DEFAULT_DATA.items()) + ", else sharegpt)")
    parser.add_argument("--conversations", type=int, default=2000)
    parser.add_argument("--max-len", type=int, default=1024)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per optimizer step")
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", help="the frozen target's dtype (bf16 autocast on CUDA)")
    parser.add_argument("--eval-tokens", type=int, default=128, help="tokens per held-back prompt in the card's figure")
    parser.add_argument("--heads", type=int, default=4, help="medusa: number of heads")
    parser.add_argument("--layers", type=int, default=None,
                        help="medusa: ResBlocks per head (default 1); draft: transformer layers (default 4)")
    parser.add_argument("--own-lm-head", action="store_true", help="medusa: one LM head per head (not shared)")
    parser.add_argument("--labels", default="target", choices=["target", "data"],
                        help="medusa: the target's distribution (soft, default) or the data's token")
    parser.add_argument("--init", default="target",
                        help="draft: start from the target's first layers (target) or at random (fresh)")
    parser.add_argument("--divergence", default="fkl",
                        help=f"draft: what distillation minimises, one of {', '.join(DIVERGENCES)} (README)")
    parser.add_argument("--draft-vocab", type=int, default=DEFAULT_DRAFT_VOCAB,
                        help="eagle3: tokens of the draft vocabulary (the most frequent assistant tokens of the data)")
    parser.add_argument("--ttt-steps", type=int, default=TTT_STEPS,
                        help="eagle3: training-time test steps (1: off, teacher forcing only)")
    parser.add_argument("--features", default="fused", choices=["fused", "top"],
                        help="eagle3: the target's low, middle and high layers fused (default), or its top layer only")
    add_verbose(parser)


def run(args) -> int:
    from ..checks import check_device, check_dtype, check_output_dir
    from ..loading import load_with_status, locate_model
    from . import train_drafter, training_data
    drafter, objective = {}, {}
    if args.kind == "medusa":
        drafter = {"num_heads": args.heads, "num_layers": 1 if args.layers is None else args.layers,
                   "own_lm_head": args.own_lm_head}
        objective = {"labels": args.labels}
    elif args.kind == "eagle3":
        drafter = {"draft_vocab_size": args.draft_vocab}
        objective = {"ttt_steps": args.ttt_steps}
    elif args.kind == "draft":
        drafter = {"num_layers": DEFAULT_LAYERS if args.layers is None else args.layers, "init": args.init}
        objective = {"divergence": args.divergence}
    config = TrainConfig(kind="medusa" if args.kind == "data" else args.kind, data=args.data,
                         conversations=args.conversations, max_len=args.max_len, epochs=args.epochs, lr=args.lr,
                         batch_size=args.batch_size, warmup_steps=args.warmup_steps,
                         checkpoint_every=args.checkpoint_every, seed=args.seed, device=args.device,
                         dtype=args.dtype, drafter=drafter, objective=objective)
    check_config(config)
    check_device(args.device)
    check_dtype(args.dtype)
    if drafter.get("num_heads", 1) < 1 or drafter.get("num_layers", 1) < 1:
        raise SpecbenchError("--heads and --layers must be >= 1")
    if args.eval_tokens < 1:
        raise SpecbenchError("--eval-tokens must be >= 1")
    check_output_dir(Path(args.out).parent if args.kind == "data" else args.out, "the --out folder")
    start = time.perf_counter()
    model = load_with_status(locate_model(args.model, args.verbose), args.device, args.dtype)
    if args.kind == "eagle3" and args.features == "top":     # the layer count is the model's
        config.drafter["feature_layers"] = [model.args.num_layers]
    if args.kind == "data":
        data = training_data(model, config)
        path = data.save(Path(args.out))
        print(f"wrote {len(data)} conversations ({len(data.tokens)} tokens) to {path}", file=sys.stderr)
        return 0
    out = train_drafter(model, config, args.out, eval_tokens=args.eval_tokens)
    print((out / "card.md").read_text())
    print(f"trained in {time.perf_counter() - start:.0f} s -> {out}", file=sys.stderr)
    return 0
