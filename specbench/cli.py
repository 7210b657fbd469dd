"""Command line: `specbench generate`, `bench`, `train` and `profile`. Bad input: one line on stderr, exit 2."""
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
    p.add_argument("--draft", default=None, help="draft model path for --method sps")
    p.add_argument("--drafter", default=None, help="drafter folder for medusa (default: the one shipped for the default model)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
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
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    if args.draft:
        options["draft"] = load_model(args.draft, device=args.device, dtype=args.dtype)
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


def _add_profile(sub) -> None:
    p = sub.add_parser("profile", help="cost of a target forward over 1..256 new tokens, vanilla speed, bandwidth floor")
    p.description = ("Milliseconds per target forward over n = 1, 2, 4, ..., 256 new tokens at each cache length "
                     "(the engine's forward: CUDA graphs on a GPU), vanilla decode tokens/s and the floor "
                     "(weight bytes / measured copy bandwidth); prints a table and writes a CSV into --out.")
    which = p.add_argument_group("model (default: the default model's shape)")
    which.add_argument("--model", default=None, help="a model path, profiled with its own weights")
    which.add_argument("--shape", default=None, help="random weights of a named shape: default, llama2-7b, "
                       "llama3-8b, qwen2-7b, tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--cache-len", nargs="+", default=["512"], metavar="L", help="cache lengths (default 512)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per point (median reported)")
    p.add_argument("--decode-tokens", type=int, default=64, help="tokens per vanilla decode run")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", default="results/profile", help="folder for the CSV (default results/profile)")
    p.add_argument("--trace", action="store_true",
                   help="also write torch.profiler's operator/kernel tables of 1- and 16-token forwards")


def _profile(args) -> int:
    import torch

    from .loading import load_model
    from .profile import kernel_table, profile, shape_model, table, write_csv
    df = profile(shape=args.shape, model_path=args.model, device=args.device, dtype=args.dtype,
                 cache_lens=args.cache_len, repeats=args.repeats, decode_tokens=args.decode_tokens,
                 threads=args.threads)
    print(table(df))
    path = write_csv(df, args.out)
    print(f"\nwrote {path}")
    if args.trace:
        if args.threads:
            torch.set_num_threads(args.threads)
        model = shape_model(args.shape or "default", args.device, args.dtype) if args.model is None \
            else load_model(args.model, device=args.device, dtype=args.dtype)
        cache_len = int(args.cache_len[0])
        text = "\n\n".join(f"{n} new tokens on a cache of {cache_len}, 5 forwards:\n{kernel_table(model, cache_len, n)}"
                           for n in (1, 16))
        trace = path.with_name(path.stem.replace("profile_", "kernels_", 1) + ".txt")
        trace.write_text(text + "\n")
        print(f"wrote {trace}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specbench", description="A workbench for LLM decoding strategies.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_profile(sub)
    from .bench import command as bench_command
    bench_command.add_arguments(sub.add_parser("bench", help="Spec-Bench-style benchmark of decoding methods"))
    from .train import command as train_command
    train_command.add_arguments(sub.add_parser("train", help="train a drafter (Medusa heads) for a frozen target"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            return _generate(args)
        if args.command == "profile":
            return _profile(args)
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
