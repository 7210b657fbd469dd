"""Command line: `specbench generate`, `bench`, `train`, `export`, `methods` and `profile`.

Every command checks all the input it can without a model first (`specbench.checks`, the
method's options against its strategy's signature, model files with `locate_model`), then loads
with one `loading NAME ... done in N s` line on stderr (transformers' own output only with
--verbose). Bad input: one `error: ...` line on stderr and exit 2, no traceback. New commands
reuse `ArgumentParser`, `add_verbose` and `report_errors` for the same behaviour.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

from .errors import SpecbenchError


class ArgumentParser(argparse.ArgumentParser):
    """argparse with its errors as SpecbenchError (one line) instead of usage text and exit."""

    def error(self, message: str):
        raise SpecbenchError(f"{message} (see {self.prog} --help)")


def add_verbose(parser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help="show transformers' progress bars and warnings while loading models")


def report_errors(command: Callable[[], int]) -> int:
    """Run a command: a SpecbenchError becomes one `error: ...` line and exit code 2."""
    try:
        return command()
    except SpecbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def parse_option_args(items: list[str]) -> dict[str, str]:
    """--option NAME=VALUE pairs; the values stay text until parsed against the method's types."""
    options = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SpecbenchError(f"--option needs NAME=VALUE, got {item!r}")
        options[name] = value
    return options


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate from one prompt and print text and speed")
    p.add_argument("--prompt", required=True, help="text (the chat template is applied unless --no-chat)")
    p.add_argument("--model", default=None, help="GGUF file, local directory or hub id (default: SmolLM2-135M-Instruct)")
    p.add_argument("--method", default="vanilla", help="see `specbench methods`")
    p.add_argument("--draft", default=None,
                   help="sps draft: a model path, target:K (the target's first K layers) or target "
                        "(default: the draft shipped for the default model; = --option draft=...)")
    p.add_argument("--drafter", default=None, help="drafter folder for medusa, eagle or eagle3 (default: the one shipped "
                                                   "for the default model; = --option drafter=PATH)")
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
                   help="a method option, e.g. --option num_draft=8 (repeatable; lists as JSON: [10,20])")
    add_verbose(p)


def _generate(args) -> int:
    from .checks import check_decoding, check_device, check_dtype
    from .generate import check_prompt_fits, encode_prompt, generate
    from .loading import load_with_status, locate_model
    from .numerics import check_numerics
    # everything that needs no model, in milliseconds
    options = parse_option_args(args.option)
    options.update({name: getattr(args, name) for name in ("draft", "drafter") if getattr(args, name) is not None})
    _, options = check_decoding(args.method, options, args.max_new_tokens, args.temperature, args.top_k, args.top_p)
    device, dtype = check_device(args.device), check_dtype(args.dtype)
    check_numerics(args.numerics)
    source = locate_model(args.model, args.verbose)
    # the prompt, with the tokenizer alone (a GGUF is converted into the cache here, once)
    started = time.perf_counter()
    ids = encode_prompt(source, args.prompt, chat=not args.no_chat)
    check_prompt_fits(len(ids), source.args)
    model = load_with_status(source, device, dtype, args.numerics, started=started)
    out = generate(model, ids, method=args.method, max_new_tokens=args.max_new_tokens,
                   temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed, **options)
    s = out.stats
    print(out.text)
    print(f"\n[{args.method}] {s['new_tokens']} tokens in {s['wall_time_s']:.2f} s = "
          f"{s['tokens_per_s']:.1f} tok/s, {s['steps']} steps, mean accepted {s['mean_accepted']:.2f}, "
          f"{'lossless' if s['lossless'] else 'LOSSY'}", file=sys.stderr)
    return 0


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="write a model (e.g. a compact draft folder) as a self-contained "
                                      "Hugging Face folder, or a drafter in its official layout")
    p.add_argument("--model", default=None, help="anything load_model reads, e.g. a folder from `specbench train draft`; "
                                                 "with --drafter, its target")
    p.add_argument("--drafter", default=None,
                   help="a drafter folder (`specbench train medusa|eagle|eagle3`) to write in its official layout: "
                        "FasterDecoding Medusa, SafeAILab EAGLE, or for eagle3 the SpecForge folder SGLang and vLLM load")
    p.add_argument("--out", required=True, help="new folder: config.json, model.safetensors, tokenizer files")
    p.add_argument("--dtype", default="float32", help="dtype of the written model weights (a drafter layout keeps its own: "
                                                     "fp16, eagle3 bf16)")
    add_verbose(p)


def _export(args) -> int:
    from .checks import check_dtype
    from .loading import load_with_status, locate_model, new_folder, save_model
    check_dtype(args.dtype)
    if args.drafter is not None and not (Path(args.drafter) / "config.json").is_file():
        raise SpecbenchError(f"not a drafter folder (no config.json): {args.drafter}")
    new_folder(args.out)
    source = locate_model(args.model, args.verbose)
    if args.drafter is not None:
        from .drafters import load_drafter
        model = load_with_status(source, "cpu", "float32")
        folder = load_drafter(args.drafter, model).export_official(args.out, model)
    else:
        folder = save_model(load_with_status(source, "cpu", args.dtype), args.out)
    print(f"wrote {folder}", file=sys.stderr)
    return 0


def _add_methods(sub) -> None:
    p = sub.add_parser("methods", help="list the decoding methods: options, types, defaults, lossless")
    p.add_argument("--markdown", action="store_true", help="as the README's markdown table")


def _methods(args) -> int:
    from .options import methods_table
    print(methods_table(markdown=args.markdown))
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
    p.add_argument("--numerics", default="fast", help="fast (default) or batch_invariant")
    p.add_argument("--cache-len", nargs="+", default=["512"], metavar="L", help="cache lengths (default 512)")
    p.add_argument("--repeats", default="5", help="timed calls per point (median reported)")
    p.add_argument("--decode-tokens", default="64", help="tokens per vanilla decode run")
    p.add_argument("--threads", default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", default="results/profile", help="folder for the CSV (default results/profile)")
    p.add_argument("--trace", action="store_true",
                   help="also write torch.profiler's operator/kernel tables of 1- and 16-token forwards")
    add_verbose(p)


def _profile(args) -> int:
    from .checks import check_output_dir
    from .profile import check_request, kernel_table, measure, table, torch_threads, write_csv
    shape = args.shape if args.shape or args.model else "default"
    request = check_request(shape, args.model, args.device, args.dtype, args.numerics, args.cache_len,
                            repeats=args.repeats, decode_tokens=args.decode_tokens, threads=args.threads,
                            verbose=args.verbose)
    out = check_output_dir(args.out, "--out")
    with torch_threads(request.threads):
        model = request.load()
    df = measure(request, model)
    print(table(df))
    path = write_csv(df, out)
    print(f"\nwrote {path}")
    if args.trace:
        cache_len = request.cache_lens[0]
        with torch_threads(request.threads):
            text = "\n\n".join(f"{n} new tokens on a cache of {cache_len}, 5 forwards:\n"
                                f"{kernel_table(model, cache_len, n)}" for n in (1, 16))
        trace = path.with_name(path.stem.replace("profile_", "kernels_", 1) + ".txt")
        trace.write_text(text + "\n")
        print(f"wrote {trace}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="specbench", description="A workbench for LLM decoding strategies.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_export(sub)
    from .bench import command as bench_command
    bench_command.add_arguments(sub.add_parser("bench", help="Spec-Bench-style benchmark of decoding methods"))
    from .train import command as train_command
    train_command.add_arguments(sub.add_parser("train", help="train a drafter (Medusa heads, a distilled sps draft, an EAGLE draft) for a frozen target"))
    _add_methods(sub)
    _add_profile(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    def command() -> int:
        args = build_parser().parse_args(argv)
        if args.command == "generate":
            return _generate(args)
        if args.command == "export":
            return _export(args)
        if args.command == "methods":
            return _methods(args)
        if args.command == "profile":
            return _profile(args)
        if args.command == "train":
            from .train import command as train_command
            return train_command.run(args)
        from .bench import command as bench_command
        return bench_command.run(args)
    return report_errors(command)


if __name__ == "__main__":
    sys.exit(main())
