"""The `vitrobust` command line: one sub-command per job, the same flags for the same things.

Every command reads configs through `--set KEY=VALUE` overrides, writes under `--out`, and prints on
rank 0 only (under torchrun every rank runs the command). The commands themselves live in the rooms
below (docs/architecture.md); each is imported when its sub-command runs, so `vitrobust --help` is quick.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vitrobust.config import CONFIG_DIR, load_config
from vitrobust.distributed import current, shutdown
from vitrobust.errors import ConfigError, UserError

USER_ERRORS = (UserError, FileExistsError, FileNotFoundError)


def say(*lines: str) -> None:
    """Print on rank 0 only."""
    if current().main:
        print(*lines, sep="\n", flush=True)


def add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=1e-3 (repeatable)")


def add_training(p: argparse.ArgumentParser, what: str = "run") -> None:
    """CONFIG, --set, --out, --resume and --no-progress: the flags of every command that trains."""
    p.add_argument("config", help="YAML path or shipped config name (see `vitrobust configs`)")
    add_set(p)
    p.add_argument("--out", help=f"{what} directory (default runs/<name>)")
    p.add_argument("--resume", action="store_true", help=f"continue from the {what} directory's last checkpoint")
    add_no_progress(p)


def add_no_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bars (a line per epoch instead)")


def add_run_path(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="run directory or .safetensors file")


def run_dir_of(args, cfg=None) -> Path:
    """The directory a training command writes: --out, else runs/<config name>."""
    return Path(args.out or Path("runs") / (cfg or load_config(args.config, args.overrides)).name)


def cmd_train(args) -> int:
    from vitrobust.train import train

    cfg = load_config(args.config, args.overrides)
    run_dir = run_dir_of(args, cfg)
    train(cfg, run_dir, resume=args.resume, progress=not args.no_progress)
    say(f"run directory: {run_dir}")
    return 0


def cmd_evaluate(args) -> int:
    from vitrobust.evaluate import evaluate_path, is_skip

    results, path = evaluate_path(args.path, args.suite, args.overrides, args.out, progress=say,
                                  overwrite=args.overwrite)
    say(f"results: {path}")
    if results and all(is_skip(entry) for entry in results.values()):
        say("nothing was measured: " + "; ".join(f"{name}: {e['skipped']}" for name, e in results.items()))
        return 1
    return 0


def cmd_explain(args) -> int:
    from vitrobust.explain import explain_run

    out = explain_run(args.path, args.n, args.out, args.overrides, method=args.method, target=args.target)
    say(*(f"figure: {f}" for f in out["figures"]), f"maps: {out['maps']}")
    return 0


def cmd_report(args) -> int:
    from vitrobust.report import build_report, report_files

    out = build_report(args.runs, args.out, title=args.title, sort=args.sort)
    files = report_files(out)
    say(f"report: {out}", f"  markdown: {files['markdown']}",
        f"  leaderboard: {files['latex']} (LaTeX), {files['csv']} (CSV)")
    return 0


def cmd_tokenizer(args) -> int:
    from vitrobust.tokenizer import train_tokenizer

    cfg = load_config(args.config, args.overrides)
    run_dir = run_dir_of(args, cfg)
    train_tokenizer(cfg, run_dir, resume=args.resume, progress=not args.no_progress)
    say(f"run directory: {run_dir}")
    return 0


def cmd_quickstart(args) -> int:
    from vitrobust.quickstart import quickstart

    quickstart(args.out, args.overrides, progress=not args.no_progress)
    return 0


def cmd_study(args) -> int:
    from vitrobust.study import claims_study

    if args.seeds is not None and args.seeds < 1:
        raise UserError(f"--seeds {args.seeds}: give at least 1 (2 or more for an interval over seeds)")
    claims_study(args.out, args.seeds, args.quick, args.overrides, progress=not args.no_progress)
    return 0


def cmd_sweep(args) -> int:
    from vitrobust.sweep import sweep

    sweep(args.grid, args.out, args.overrides, progress=not args.no_progress, dry_run=args.dry_run)
    return 0


def cmd_import(args) -> int:
    from vitrobust.models import import_checkpoint
    from vitrobust.zoo import ZOO

    model = import_checkpoint(args.checkpoint, args.out, format=args.format, arch=args.arch, zoo=args.zoo,
                              trust=args.trust)
    spec, pre = model.spec, model.spec.get("preprocess", {})
    norm = f"mean {spec['mean']}, std {spec['std']}" if spec.get("mean") else "none ([0,1] input)"
    say(f"imported {args.checkpoint} ({spec['imported']['format']} format) -> {args.out}",
        f"  model: {spec['name']}, {spec['num_classes']} classes, {spec['img_size']} px, normalisation {norm}",
        f"  resize: crop_pct {pre.get('crop_pct')}, {pre.get('interpolation')}",
        *(f"  note: {n}" for n in spec["imported"].get("notes", [])))
    suite = ZOO.get(args.zoo).suite if args.zoo else "clean"
    say(f"next: vitrobust evaluate {args.out} --suite {suite} --set data.root=...")
    return 0


def cmd_export(args) -> int:
    if args.format == "onnx":
        return export_onnx_cmd(args)
    from vitrobust.export import export_timm

    if args.quantize or args.maps:
        raise ConfigError("--quantize and --maps apply to --format onnx; a timm folder holds the run's own weights")
    out = export_timm(args.source, args.out, ema=args.ema, overwrite=args.overwrite)
    say(f"wrote {out}/config.json and model.safetensors (timm's Hub layout; checked: it gives the run's logits)",
        "load it:",
        "  import timm, vitrobust  # vitrobust only registers its own architectures; timm's need timm alone",
        f"  model = timm.create_model('local-dir:{out}', pretrained=True).eval()",
        "  transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))",
        f"publish it: hf upload USER/NAME {out}  (then timm.create_model('hf-hub:USER/NAME', "
        f"pretrained=True))")
    return 0


def export_onnx_cmd(args) -> int:
    from vitrobust.export import export_onnx

    card = export_onnx(args.source, args.out, ema=args.ema, quantize=args.quantize, maps=args.maps, check=args.check,
                       calibration=args.calibration, overrides=args.overrides, overwrite=args.overwrite)
    eq, files = card["equivalence"], card["files"]
    lines = [f"wrote {args.out} ({files['fp32']['bytes'] / 1e6:.2f} MB, opset {card['opset']}): [0,1] float "
             f"images N x {' x '.join(map(str, card['input']['shape'][1:]))} in, logits"
             + (f" and rollout maps ({' x '.join(map(str, card['maps']['shape'][1:]))})" if card.get("maps") else "")
             + " out",
             f"  checked on {eq['fp32']['images']} test images: max logit difference vs PyTorch "
             f"{eq['fp32']['max_abs_logit_diff']:.1e}, top-1 agreement {100 * eq['fp32']['top1_agreement']:.1f}%"]
    if "int8" in files:
        lines.append(f"wrote {files['int8']['file']} ({files['int8']['bytes'] / 1e6:.2f} MB): top-1 agreement with "
                     f"fp32 {100 * eq['int8']['top1_agreement_with_fp32']:.1f}%")
    card_file = Path(args.out).with_suffix("").name + ".card.md"
    say(*lines, f"model card: {Path(args.out).with_name(card_file)} (and .card.json)",
        "run it: onnxruntime.InferenceSession(FILE).run(['logits'], {'images': x})")
    return 0


def cmd_zoo(args) -> int:
    from vitrobust.zoo import ZOO, describe

    if args.entry:
        e = ZOO.get(args.entry, key="zoo entry")
        norm = "none ([0,1] input)" if e.mean is None else f"mean {e.mean}, std {e.std}"
        threat = f"{e.threat['norm']} eps {e.threat['eps']:.5f}" if e.threat else "none"
        say(e.name, f"  paper: {e.paper}", f"  file format: {e.format}; arch: {e.arch}; data: {e.dataset}",
            f"  preprocessing: {e.img_size} px, crop_pct {e.crop_pct}, {e.interpolation}; normalisation {norm}",
            f"  threat model: {threat}; suite: {e.suite}",
            *(f"  published: {p.label}: {p.value}" + ("" if p.benchmark else " (not compared)")
              for p in e.published),
            f"  source: {e.source}", *([f"  notes: {e.notes}"] if e.notes else []),
            f"import: vitrobust import FILE --zoo {e.name} --out {e.name}.safetensors")
        return 0
    say(describe(), "")
    for _, e in ZOO.items():
        numbers = ", ".join(f"{p.label} {p.value}" for p in e.published[:2]) or "no published number"
        say(f"{e.name}", f"    {e.arch} ({e.format}), {e.dataset}: {numbers}")
    say("", "details: vitrobust zoo ENTRY")
    return 0


def cmd_data_shard(args) -> int:
    from vitrobust.data.shard_writer import write_shards
    from vitrobust.train.loop import EpochProgress

    def progress(items, total, desc, start):
        return EpochProgress(items, total - start, desc, enabled=not args.no_progress, start=start)

    index, written = write_shards(args.source, args.out_dir, shard_size=args.shard_size, root=args.root,
                                  download=args.download, skip_bad=args.skip_bad, seed=args.seed, progress=progress)
    for split, entry in index["splits"].items():
        kept = entry["n_shards"] - written.get(split, 0)
        say(f"{split}: {entry['total']:,} samples in {entry['n_shards']} shards {entry['pattern']} "
            f"({written.get(split, 0)} written, {kept} already finished"
            + (f", {entry['skipped_bad']} unreadable images skipped" if entry.get("skipped_bad") else "") + ")")
    say(f"index: {Path(args.out_dir) / 'index.json'}",
        f"train on them: --set data.name=webdataset --set data.root={args.out_dir} --set data.img_size=...")
    return 0


def cmd_configs(args) -> int:
    for path in sorted(CONFIG_DIR.rglob("*.yaml")):
        name = path.relative_to(CONFIG_DIR).with_suffix("")
        say(f"{name}   (grid for `vitrobust sweep {name.name}`)" if name.parts[0] == "sweeps" else str(name))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vitrobust", description="Train, attack, evaluate and explain robust ViTs.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from a config (any objective)")
    add_training(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="run benchmarks on a run directory or weights file")
    add_run_path(e)
    e.add_argument("--suite", default="clean", help="suite or comma-separated benchmarks (default: clean)")
    add_set(e)
    e.add_argument("--out", help="results file (default: results.json beside the weights)")
    e.add_argument("--overwrite", action="store_true", help="replace stored results measured with other settings "
                                                           "(default: keep both, the new one under variants)")
    e.set_defaults(func=cmd_evaluate)

    x = sub.add_parser("explain", help="relevance maps of a balanced sample of test images, as overlay PNGs and a .pt file")
    add_run_path(x)
    x.add_argument("--n", type=int, default=8, help="number of test images (default 8)")
    x.add_argument("--out", help="output folder (default RUN_DIR/explain)")
    x.add_argument("--method", choices=["chefer", "rollout"], help="default: the run's evaluate.relevance.method")
    x.add_argument("--target", choices=["label", "prediction"], help="class to explain (default: the run's "
                                                                    "evaluate.relevance.target)")
    add_set(x)
    x.set_defaults(func=cmd_explain)

    r = sub.add_parser("report", help="HTML/Markdown report and LaTeX/CSV leaderboard from results.json files")
    r.add_argument("runs", nargs="+", help="run directories (or results .json files)")
    r.add_argument("--out", help="report file (default: RUN/report.html for one run, else report.html); "
                                 "the .md, .tex and .csv versions go beside it")
    r.add_argument("--title", default="vitrobust report", help="page title")
    r.add_argument("--sort", help="order runs by a leaderboard column, best first (e.g. clean, pgd, autoattack, "
                                  "mce, imagenet_v2, psnr); default: the order given")
    r.set_defaults(func=cmd_report)

    q = sub.add_parser("quickstart", help="train and evaluate the quickstart models on Fashion-MNIST")
    q.add_argument("--out", default="runs/quickstart", help="output folder (default runs/quickstart)")
    add_set(q)
    add_no_progress(q)
    q.set_defaults(func=cmd_quickstart)

    st = sub.add_parser("study", help="studies that test the methods' claims (method vs matched control, over seeds)")
    sts = st.add_subparsers(dest="study", required=True)
    sc = sts.add_parser("claims", help="train each method and its matched control with N seeds, evaluate them on the "
                        "same images and give each claim a verdict (holds / not distinguishable / opposite)")
    sc.add_argument("--seeds", type=int, help="seeds per method and control (default 3; 2 with --quick)")
    sc.add_argument("--quick", action="store_true", help="2 seeds, shorter training and fewer images (about 11 "
                    "minutes on 2 CPU cores instead of about 25)")
    sc.add_argument("--out", default="runs/claims", help="study folder (default runs/claims)")
    add_set(sc)
    add_no_progress(sc)
    sc.set_defaults(func=cmd_study)

    w = sub.add_parser("sweep", help="train and evaluate a grid of configs, then compare them in one report")
    w.add_argument("grid", help="grid YAML path or shipped grid (light_recipe_ablation, scale_up)")
    w.add_argument("--out", help="sweep folder (default runs/<grid name>)")
    add_set(w)
    w.add_argument("--dry-run", action="store_true", help="list the runs and their overrides, train nothing")
    add_no_progress(w)
    w.set_defaults(func=cmd_sweep)

    k = sub.add_parser("tokenizer", help="VQ tokenizers (Dr.ViT, DAT)")
    ks = k.add_subparsers(dest="action", required=True)
    kt = ks.add_parser("train", help="train a VQGAN-layout tokenizer on a dataset; reports PSNR and code usage")
    add_training(kt, "tokenizer run")
    kt.set_defaults(func=cmd_tokenizer)

    i = sub.add_parser("import", help="convert a released checkpoint (timm, RobustBench, light recipe, easyrobust "
                                      "Dr.ViT, RobustViT) into a vitrobust weights file")
    i.add_argument("checkpoint", help="the downloaded checkpoint (.pth, .pt, .bin, .safetensors)")
    i.add_argument("--out", required=True, help="the vitrobust weights file to write (.safetensors)")
    i.add_argument("--format", help="checkpoint format (default: detected from the keys)")
    i.add_argument("--arch", help="timm model name (default: from --zoo or the format)")
    i.add_argument("--zoo", help="a zoo entry (`vitrobust zoo`): arch, format and preprocessing, published numbers")
    i.add_argument("--trust", action="store_true", help="read a file that pickles objects besides tensors "
                                                        "(they are read as inert placeholders, nothing runs)")
    i.set_defaults(func=cmd_import)

    xp = sub.add_parser("export", help="write a run or weights file as a model folder timm loads "
                                       "(timm.create_model('local-dir:DIR', pretrained=True)) or as ONNX")
    xp.add_argument("source", help="a run directory or its .safetensors weights file")
    xp.add_argument("--format", choices=["timm", "onnx"], default="timm", help="timm: the Hugging Face Hub folder "
                    "timm reads (config.json + model.safetensors); onnx: FILE.onnx, [0,1] images in, logits out, "
                    "checked against PyTorch on test images, with FILE.card.md/json")
    xp.add_argument("--out", required=True, help="the folder (timm) or .onnx file to write")
    xp.add_argument("--quantize", choices=["int8"], help="onnx: also FILE.int8.onnx, onnxruntime's static "
                    "quantisation calibrated on training images (top-1 agreement with fp32 >= 99%% checked)")
    xp.add_argument("--maps", choices=["rollout"], help="onnx: a second output `rollout`, the attention-rollout map "
                    "at patch resolution (forward only: any runtime computes it)")
    xp.add_argument("--check", type=int, default=1000, help="onnx: test images the equivalence is checked on")
    xp.add_argument("--calibration", type=int, default=512, help="onnx --quantize: training images to calibrate on")
    xp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override the run's data config for the check images (e.g. data.root=...)")
    xp.add_argument("--ema", action="store_true", help="export the run's EMA weights (ema.safetensors)")
    xp.add_argument("--overwrite", action="store_true", help="replace a folder that is not empty")
    xp.set_defaults(func=cmd_export)

    z = sub.add_parser("zoo", help="list the released models with published numbers")
    z.add_argument("entry", nargs="?", help="show one entry in full")
    z.set_defaults(func=cmd_zoo)

    d = sub.add_parser("data", help="data tools")
    ds = d.add_subparsers(dest="action", required=True)
    dsh = ds.add_parser("shard", help="write a dataset or image folder as WebDataset tar shards with an index "
                        "(data.name=webdataset reads them); a re-run skips finished shards")
    dsh.add_argument("source", help="an image folder (train/ and val/ or test/ class folders, or one class-folder "
                     "tree) or a registered dataset (fashion_mnist, cifar10, ...)")
    dsh.add_argument("out_dir", help="folder for the shards and index.json")
    dsh.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    dsh.add_argument("--root", help="data.root of a registered dataset")
    dsh.add_argument("--download", action="store_true", help="let a registered dataset download itself")
    dsh.add_argument("--skip-bad", action="store_true", help="skip images that cannot be decoded (else stop)")
    dsh.add_argument("--seed", type=int, default=0, help="seed of the training split's shuffled order")
    add_no_progress(dsh)
    dsh.set_defaults(func=cmd_data_shard)

    c = sub.add_parser("configs", help="list the shipped configs")
    c.set_defaults(func=cmd_configs)
    return p


INTERRUPTED = 130  # the shell's code for a command ended by Ctrl-C (128 + SIGINT)


def interrupted_note(args) -> str:
    """One line for Ctrl-C: what the interrupted command kept and how to go on."""
    command = args.command
    if command in ("train", "tokenizer"):
        try:
            run_dir = run_dir_of(args)
        except USER_ERRORS:
            run_dir = Path(args.out or "runs/<name>")
        again = "vitrobust " + ("train" if command == "train" else "tokenizer train")
        return (f"interrupted: {run_dir} keeps its last checkpoint; continue with "
                f"`{again} {args.config} --out {run_dir} --resume` (and the same --set flags)")
    if command == "evaluate":
        return ("interrupted: results.json keeps every benchmark that finished, and the unfinished one saved "
                "its progress; run the same command again to resume")
    if command in ("quickstart", "sweep", "study"):
        name = "study claims" if command == "study" else command
        return (f"interrupted: finished runs and results are kept; run `vitrobust {name}` with the same "
                f"arguments again to continue where it stopped")
    if command in ("import", "zoo", "configs"):
        return "interrupted: nothing was written"
    return "interrupted: the files it wrote are whole, the rest are missing; run the same command again"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)  # every rank: the rank that failed says why
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback (every file was written atomically)
        if current().main:
            print(f"\n{interrupted_note(args)}", file=sys.stderr, flush=True)
        return INTERRUPTED
    finally:
        shutdown()


def run() -> None:
    sys.exit(main())
