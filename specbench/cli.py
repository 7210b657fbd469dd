"""Command line: `specbench generate`, `bench`, `train` and `export`. Bad input: one line on stderr, exit 2."""
from __future__ import annotations

import argparse
import json
import sys

from .errors import SpecbenchError


def _option_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate from one prompt and print text and speed")
    p.add_argument("--prompt", required=True, help="text (the chat template is applied unless --no-chat)")
    p.add_argument("--model", default=None, help="GGUF file, local directory or hub id (default: SmolLM2-135M-Instruct)")
    p.add_argument("--method", default="vanilla")
    p.add_argument("--draft", default=None,
                   help="sps draft: a model path, target:K (the target's first K layers) or target "
                        "(default: the draft shipped for the default model)")
    p.add_argument("--drafter", default=None, help="drafter folder for medusa or eagle (default: the one shipped for the default model)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--numerics", default="fast", help="fast (default) or batch_invariant: every token's "
                   "logits independent of how many tokens share a forward")
    p.add_argument("--no-chat", action="store_true", help="feed the prompt as plain text")
    p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="a method option, e.g. --option num_draft=8 (repeatable)")


def _generate(args) -> int:
    from .generate import generate
    from .loading import load_model
    options = {}
    for item in args.option:
        name, sep, value = item.partition("=")
        if not sep:
            raise SpecbenchError(f"--option needs NAME=VALUE, got {item!r}")
        options[name] = _option_value(value)
    model = load_model(args.model, device=args.device, dtype=args.dtype, numerics=args.numerics)
    if args.draft:
        options["draft"] = args.draft
    if args.drafter:
        options["drafter"] = args.drafter
    out = generate(model, args.prompt, method=args.method, max_new_tokens=args.max_new_tokens,
                   temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                   chat=not args.no_chat, **options)
    s = out.stats
    print(out.text)
    print(f"\n[{args.method}] {s['new_tokens']} tokens in {s['wall_time_s']:.2f} s = "
          f"{s['tokens_per_s']:.1f} tok/s, {s['steps']} steps, mean accepted {s['mean_accepted']:.2f}, "
          f"{'lossless' if s['lossless'] else 'LOSSY'}", file=sys.stderr)
    return 0


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="write a model (e.g. a compact draft folder) as a self-contained "
                                      "Hugging Face folder")
    p.add_argument("--model", default=None, help="anything load_model reads, e.g. a folder from `specbench train draft`")
    p.add_argument("--out", required=True, help="new folder: config.json, model.safetensors, tokenizer files")
    p.add_argument("--dtype", default="float32", help="dtype of the written weights")


def _export(args) -> int:
    from .loading import load_model, new_folder, parse_dtype, save_model
    parse_dtype(args.dtype)
    new_folder(args.out)      # before the slow load
    folder = save_model(load_model(args.model, dtype=args.dtype), args.out)
    print(f"wrote {folder}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specbench", description="A workbench for LLM decoding strategies.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_export(sub)
    from .bench import command as bench_command
    bench_command.add_arguments(sub.add_parser("bench", help="Spec-Bench-style benchmark of decoding methods"))
    from .train import command as train_command
    train_command.add_arguments(sub.add_parser("train", help="train a drafter (Medusa heads, a distilled sps draft, an EAGLE draft) for a frozen target"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            return _generate(args)
        if args.command == "export":
            return _export(args)
        if args.command == "train":
            from .train import command as train_command
            return train_command.run(args)
        from .bench import command as bench_command
        return bench_command.run(args)
    except SpecbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
