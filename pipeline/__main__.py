"""Command line of the pipeline: start on your own images (init), run it (run), compare
experiments (exps), use the trained model (predict, serve, export). Each stage also runs
on its own: python -m pipeline.stages.<stage> --help."""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from pipeline.cli import init_data
from pipeline.cli.init_data import data_values, inspect_source, report_lines, set_keys
from pipeline.cli.sweep import DEFAULT_METRIC, DEFAULT_SPACE
from pipeline.contracts.labelfiles import spreadsheet_cell
from pipeline.core import paths
from pipeline.core.config import PARAMS_FILE
from pipeline.core.errors import PipelineError
from pipeline.core.files import not_regular
from pipeline.reporting.offline_plots import TEMPLATE
from pipeline.reporting.summary import PAGES, SUMMARY_LATER, read_summary
from pipeline.serving.predict import (
    TTA,
    Predictor,
    input_suffixes,
    list_inputs,
    predict_files,
    top_k,
)

MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb limit
SKIPPED_SHOWN = 20  # skipped files predict names (it counts them all)
# `dvc exp show` narrowed to what fits a terminal: the params that differ between the rows,
# no dependency hashes (their names hold a "/"), the headline metrics even where equal.
# A plain `dvc exp show` cannot fit 160 columns: rich takes one separator per column of the
# whole table (~190: every param, every code file) off the width before DVC folds any.
EXPS_ARGS = ("--only-changed", "--drop", ".*/", "--keep",
             "kept|leaks|best_epoch|accuracy|macro_f1|log_loss|ece")


def predict_command(args: argparse.Namespace) -> None:
    """Write one CSV row per file: path, pred, confidence, top-k labels and probabilities."""
    predictor = Predictor.load(args.model, device=args.device)
    kind = predictor.modality  # image or text
    files, skipped = list_inputs(args.inputs, modality=kind)
    if skipped:
        shown = ", ".join(map(str, skipped[:SKIPPED_SHOWN]))
        more = f" and {len(skipped) - SKIPPED_SHOWN} more" if len(skipped) > SKIPPED_SHOWN else ""
        print(f"warning: skipped {len(skipped)} file(s) under the given folders whose suffix "
              f"is no {kind} suffix ({' '.join(input_suffixes(kind))}): {shown}{more}",
              file=sys.stderr)
    if not files:
        raise PipelineError(f"no {kind} files found in the given paths"
                            + (f" ({len(skipped)} other file(s) skipped)" if skipped else ""))
    k = min(args.top_k, len(predictor.classes))
    header = ["path", "pred", "confidence"] + [f"top{i}_{what}" for i in range(1, k + 1)
                                               for what in ("label", "prob")] + ["error"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    failed = 0
    with args.out.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        results = predict_files(predictor, files, batch_size=args.batch_size,
                                max_pixels=MAX_PIXELS, tta=args.tta)
        for path, probs, error in tqdm(results, total=len(files), desc="predict",
                                       mininterval=1.0):
            # a list people open in a spreadsheet: no path, label or error runs there as
            # a formula (pipeline.contracts.labelfiles.spreadsheet_cell; plain numbers stay numbers)
            if probs is None:
                failed += 1
                writer.writerow([spreadsheet_cell(str(path)), "", ""] + [""] * (2 * k)
                                + [spreadsheet_cell(error)])
                continue
            best = top_k(probs[None], predictor.classes, k)[0]
            cells = [v for label, p in best for v in (spreadsheet_cell(label), f"{p:.6f}")]
            writer.writerow([spreadsheet_cell(str(path)), spreadsheet_cell(best[0][0]),
                             f"{best[0][1]:.6f}", *cells, ""])
    print(f"predicted {len(files) - failed} of {len(files)} files into {args.out}"
          + (f"; {failed} could not be read (see the error column)" if failed else "")
          + (f"; {len(skipped)} skipped (no {kind} suffix)" if skipped else ""))


def serve_command(args: argparse.Namespace) -> None:
    """Run the HTTP prediction server."""
    import uvicorn

    from pipeline.serving.serve import create_app

    app = create_app(args.model, device=args.device, max_bytes=args.max_bytes,
                     k_default=args.top_k, tta=args.tta)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


def export_command(args: argparse.Namespace) -> None:
    """The export stage's work on any trained model: TorchScript, ONNX and model.json in
    ``--out-dir``, both checked against PyTorch on the cache's test split."""
    from pipeline.core.seeding import pin_cpu
    from pipeline.serving.exporting import export_model

    problem = not_regular(args.model)  # a FIFO or a device is named, never opened
    if problem == "file not found":
        raise PipelineError(f"{args.model} not found: train first (dvc repro train) or "
                            "pass --model")
    if problem:
        raise PipelineError(f"{args.model}: {problem}")
    pin_cpu(deterministic=True)  # the stage's default (base.deterministic): same bytes
    report = args.out_dir / "export.json"
    export_model(args.model, args.cache, args.out_dir, report, run_record=None)
    written = [args.out_dir / n for n in ("model.ts", "model.onnx", "model.json")]
    print(f"wrote {', '.join(map(str, written))}; the check's numbers: {report}")


# Folders under data/ that the stages write (their outputs): never a source of images.
STAGE_OUTPUTS = (paths.PREPARED.parent, paths.EMBED_DIR, paths.CLEAN.parent,
                 paths.SPLIT.parent, paths.CACHE_DIR, paths.DECISIONS.parent)


def check_not_own_data(source: Path, project: Path) -> None:
    """Refuse, in one line, a source that is the project's own ``data/`` folder, lies in
    a stage's output folder there, or holds ``data/`` (the project folder): its "class
    folders" would be the pipeline's outputs, which the next run rewrites."""
    target, project = source.resolve(), project.resolve()
    own = project / "data"
    inside = next((project / d for d in STAGE_OUTPUTS
                   if target.is_relative_to(project / d)), None)
    if target == own:
        what = "the project's own data/ folder, where the stages write their outputs"
    elif inside is not None:
        what = (f"inside {inside.relative_to(project).as_posix()}/, which a stage of this "
                f"pipeline writes")
    elif own.is_dir() and own.is_relative_to(target):
        what = "a folder that holds the project's data/ folder (the stages' outputs)"
    else:
        return
    raise PipelineError(f"{source} is {what}, not a source of images: give the folder of "
                        f"your class folders (or a CSV manifest of your images)")


def init_command(args: argparse.Namespace) -> None:
    """Inspect a folder or CSV manifest, print what it holds, point data.* at it."""
    check_not_own_data(args.path, args.params.parent)
    found = inspect_source(args.path, root=getattr(args, "root", None), sample=args.sample)
    print("\n".join(report_lines(found)))
    if not args.params.is_file():
        raise PipelineError(f"{args.params} not found: run init from the project root")
    values = data_values(found, args.params.parent)
    text = args.params.read_text()
    new = set_keys(text, "data", values)
    settings = [f"  data.{k}: {v}" for k, v in values.items()]
    if args.dry_run:
        print("\n".join([f"would set in {args.params} (--dry-run: nothing written):",
                         *settings, "next: the same without --dry-run"]))
        return
    if new != text:
        args.params.write_text(new)
    print("\n".join([f"set in {args.params} (its comments kept):", *settings,
                     "next: dvc repro (or python -m pipeline run), then open "
                     f"{PAGES['report']}"]))


def guard_special_files() -> None:
    """Before DVC hashes data.root: FIFOs (reading one blocks DVC), devices, sockets and
    broken or looping links get prepare's .dvcignore rules, so a new one cannot hang or
    stop ``dvc repro`` before the prepare stage could list it (a plain ``dvc repro``
    meets it first)."""
    import yaml

    from pipeline.contracts.sources import DVCIGNORE, unhashable, write_dvcignore

    try:
        root = Path((yaml.safe_load(PARAMS_FILE.read_text()) or {})["data"]["root"])
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return  # the stages report a bad params.yaml themselves
    if root.is_dir():
        write_dvcignore(unhashable(root), DVCIGNORE)


def run_command(args: argparse.Namespace, dvc_args: list[str]) -> None:
    """``dvc repro`` with the given arguments; exit with its code. A successful run ends
    with the closing summary, printed here after DVC's own closing lines (the report
    stage leaves it to this command), also when nothing had to be redone."""
    guard_special_files()
    env = dict(os.environ, **{SUMMARY_LATER: "1"})
    code = subprocess.call([sys.executable, "-m", "dvc", "repro", *dvc_args], env=env)
    if code == 0 and PAGES["report"].exists():
        try:
            print("\n".join(read_summary()))
        except (OSError, ValueError, KeyError) as exc:  # metrics of an older version
            print(f"(no closing summary: {exc})", file=sys.stderr)
    sys.exit(code)


def exps_command(args: argparse.Namespace, dvc_args: list[str]) -> None:
    """``dvc exp show`` with :data:`EXPS_ARGS` and any further arguments; exit with its
    code. The table fits the terminal (80 columns when piped, or ``COLUMNS``): DVC's
    pager would draw it as wide as all its columns (hundreds), so it is off unless
    ``--pager`` asks for it."""
    pager = "--pager" in dvc_args
    rest = [a for a in dvc_args if a != "--pager"]
    if not pager and "--no-pager" not in rest:
        rest.append("--no-pager")
    # rich reads COLUMNS; without it, it takes any terminal's width (stderr's too)
    env = dict(os.environ, COLUMNS=str(shutil.get_terminal_size().columns))
    sys.exit(subprocess.call([sys.executable, "-m", "dvc", "exp", "show", *EXPS_ARGS,
                              *rest], env=env))


def plots_template_command(args: argparse.Namespace) -> None:
    """Write the offline page template that `dvc plots show/diff` use."""
    from pipeline.reporting.offline_plots import write_template

    path = write_template(args.out)
    print(f"wrote {path}: dvc plots show / diff now draw their charts offline")


def sweep_command(args: argparse.Namespace) -> None:
    """Search hyperparameters; every trial is a DVC experiment."""
    import yaml

    from pipeline.cli.sweep import Knob, check_keys, parse_fixed, parse_knob, sweep

    knobs = [parse_knob(text) for text in (args.param or DEFAULT_SPACE)]
    fixed = parse_fixed(args.set)
    if not PARAMS_FILE.is_file():
        raise PipelineError(f"{PARAMS_FILE} not found: run sweep from the project root")
    check_keys([*knobs, *[Knob(key, "choice") for key in fixed]],
               yaml.safe_load(PARAMS_FILE.read_text()) or {})
    gpus = [g for g in getattr(args, "gpus", "").split(",") if g]
    jobs = len(gpus) or args.jobs
    if jobs < 1 or args.trials < 1:
        raise PipelineError("--trials and --jobs must be at least 1")
    study = sweep(args.name, knobs, trials=args.trials, metric=args.metric,
                  direction=args.direction, jobs=jobs, gpus=gpus, stages=args.stage,
                  fixed=fixed, seed=args.seed,
                  random_trials=args.random_trials)
    best = study.best_trial
    key = args.metric.partition(":")[2]
    print(f"best: {best.user_attrs['experiment']} (trial {best.number}) {key} = "
          f"{best.value:.6g} with "
          + ", ".join(f"{k}={v}" for k, v in best.user_attrs["set"].items()))
    print(f"table and plot: sweeps/{args.name}/trials.csv, sweeps/{args.name}/search.png")
    order = "desc" if args.direction == "maximize" else "asc"
    print(f"all trials, best first: dvc exp show --sort-by {args.metric} --sort-order {order}")
    print(f"bring the best into the workspace: dvc exp apply {best.user_attrs['experiment']}")


def whole_number(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer from ``low`` to ``high`` (no limit when None); a
    value outside is refused with argparse's one-line error before any work."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            allowed = f"from {low} to {high}" if high is not None else f"{low} or more"
            raise argparse.ArgumentTypeError(f"{value} is out of range: give {allowed}")
        return value

    return parse


def _device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where the model runs")
    p.add_argument("--tta", default="none", choices=TTA,
                   help="test-time augmentation, as evaluate.tta: average the image with "
                        "its mirror (flip) or five shifted crops (crops)")


def sweep_doc() -> str:
    """The sweep command's description: the sweep module's docstring, first paragraph."""
    from pipeline.cli import sweep

    return (sweep.__doc__ or "").split("\n\n")[1].replace("``", "")


# build_parser's pieces: each adds its subcommands to ``sub``
Subcommands = argparse._SubParsersAction
Formatter = type[argparse.HelpFormatter]


def _add_init(sub: Subcommands, formatter: Formatter) -> None:
    """The init subcommand."""
    i = sub.add_parser("init", formatter_class=formatter,
                       help="inspect a folder or CSV of images; point params.yaml's data.* "
                            "at it",
                       description=init_data.__doc__.split("\n\n")[1].replace("``", ""))
    i.add_argument("path", type=Path, help="a class-per-folder tree (optionally under "
                   "train/ val/ test/) or a CSV manifest (path,label[,split,...])")
    i.add_argument("--root", type=Path, default=argparse.SUPPRESS,
                   help="CSV only: the folder its paths are relative to (default: the "
                        "CSV's folder)")
    i.add_argument("--params", type=Path, default=PARAMS_FILE,
                   help="the params file whose data.* lines are rewritten in place")
    i.add_argument("--sample", type=whole_number(1), default=init_data.SAMPLE,
                   help="images decoded for the size statistics")
    i.add_argument("--dry-run", action="store_true", help="print, write nothing")
    i.set_defaults(func=init_command)


def _add_run_and_exps(sub: Subcommands, formatter: Formatter) -> None:
    """The run and exps subcommands (dvc repro, dvc exp show)."""
    r = sub.add_parser("run", formatter_class=formatter,
                       usage="python -m pipeline run [-h] [dvc repro arguments ...]",
                       help="run the pipeline (dvc repro, extra arguments passed on) and "
                            "print the closing summary",
                       description="Runs `dvc repro` with any further arguments (a stage "
                                   "name, --force, ...) and exits with its code; a "
                                   "successful run ends with the closing summary (test "
                                   "metrics, what clean and the leakage audit found, the "
                                   "pages to open).")
    r.set_defaults(func=run_command)
    x = sub.add_parser("exps", formatter_class=formatter,
                       usage="python -m pipeline exps [-h] [dvc exp show arguments ...]",
                       help="compare experiments: dvc exp show narrowed to the params that "
                            "differ and the headline metrics",
                       description=f"Runs `dvc exp show {' '.join(EXPS_ARGS)}` with any "
                                   f"further arguments (-n 5, --csv, ...): the params that "
                                   f"differ between the rows, the headline metrics, no "
                                   f"dependency hashes. The table fits the terminal (80 "
                                   f"columns when piped, or COLUMNS), folding what does not "
                                   f"fit into '…'; --pager shows every column in DVC's "
                                   f"pager instead.")
    x.set_defaults(func=exps_command)


def _add_predict_and_serve(sub: Subcommands, formatter: Formatter) -> None:
    """The predict and serve subcommands."""
    p = sub.add_parser("predict", formatter_class=formatter,
                       help="classify image files or folders (recursive) into a CSV")
    p.add_argument("inputs", nargs="+", type=Path, help="image files or folders")
    p.add_argument("--model", type=Path, default=paths.MODEL, help="a trained model.pt")
    p.add_argument("--out", type=Path, default=Path("predictions.csv"), help="the CSV")
    p.add_argument("--top-k", type=whole_number(1), default=5,
                   help="labels per row (at most the class count)")
    p.add_argument("--batch-size", type=whole_number(1, 65_536), default=64,
                   help="images per forward pass")
    _device(p)
    p.set_defaults(func=predict_command)
    s = sub.add_parser("serve", formatter_class=formatter,
                       help="HTTP prediction server: POST /predict, GET /health")
    s.add_argument("--model", type=Path, default=paths.MODEL, help="a trained model.pt")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on")
    s.add_argument("--port", type=int, default=8000, help="port to listen on")
    s.add_argument("--top-k", type=whole_number(1), default=5,
                   help="labels per answer without ?k=")
    s.add_argument("--max-bytes", type=whole_number(1), default=10 * 2**20,
                   help="largest upload")
    _device(s)
    s.set_defaults(func=serve_command)


def _add_export(sub: Subcommands, formatter: Formatter) -> None:
    """The export subcommand."""
    e = sub.add_parser("export", formatter_class=formatter,
                       help="TorchScript and ONNX copies of a trained model, checked "
                            "against PyTorch (what the export stage does)",
                       description="Writes model.ts (TorchScript), model.onnx (dynamic "
                                   "batch) and model.json (classes and preprocessing) into "
                                   "--out-dir and checks both exports against PyTorch on "
                                   "the cache's test images (same argmax, probabilities "
                                   "within the stage's tolerance), or fails; the check's "
                                   "numbers go to export.json beside them. The export stage writes "
                                   "the same into models/.")
    e.add_argument("--model", type=Path, default=paths.MODEL, help="a trained model.pt")
    e.add_argument("--cache", type=Path, default=paths.CACHE_DIR,
                   help="the cache stage's folder: its test split checks the exports")
    e.add_argument("--out-dir", type=Path, default=Path("exported"),
                   help="folder for model.ts, model.onnx, model.json and export.json")
    e.set_defaults(func=export_command)


def _add_sweep(sub: Subcommands, formatter: Formatter) -> None:
    """The sweep subcommand."""
    w = sub.add_parser("sweep", formatter_class=formatter,
                       help="search hyperparameters with Optuna; every trial is a DVC "
                            "experiment (dvc exp show lists them)",
                       description=sweep_doc())
    w.add_argument("--name", required=True,
                   help="the study: prefixes its experiments (NAME-000, ...); its journal, "
                        "table and plot are in sweeps/NAME/; the same name continues it")
    w.add_argument("--trials", type=int, default=8, help="trials in the study, in all")
    w.add_argument("--param", action="append", metavar="KEY=RANGE",
                   help="a searched key (repeat): KEY=LOW:HIGH, KEY=log:LOW:HIGH, "
                        f"KEY=int:LOW:HIGH or KEY=A,B,C; default: {' '.join(DEFAULT_SPACE)}")
    w.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting every trial gets (repeat), e.g. a shorter train.phases "
                        "for the search")
    w.add_argument("--metric", default=DEFAULT_METRIC, help="FILE:KEY to optimise")
    w.add_argument("--direction", default="maximize", choices=["maximize", "minimize"],
                   help="of the metric")
    w.add_argument("--jobs", type=int, default=1,
                   help="trials at a time: 1 runs each with dvc exp run --temp, more queue "
                        "them and run them with that many DVC queue workers")
    w.add_argument("--gpus", default=argparse.SUPPRESS,
                   help="e.g. 0,1,2,3: one queue worker per GPU (CUDA_VISIBLE_DEVICES), "
                        "as many trials at a time")
    w.add_argument("--stage", action="append", default=[],
                   help="run only this stage and what it needs in each trial (repeat; "
                        "e.g. evaluate: no export or report); default: the whole pipeline")
    w.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    w.add_argument("--random-trials", type=int, default=4,
                   help="trials drawn at random before TPE models the results")
    w.set_defaults(func=sweep_command)


def _add_plots_template(sub: Subcommands, formatter: Formatter) -> None:
    """The plots-template subcommand."""
    t = sub.add_parser("plots-template", formatter_class=formatter,
                       help="write the page template that makes dvc plots show/diff work "
                            "offline (run.sh does it after installing)")
    t.add_argument("--out", type=Path, default=TEMPLATE,
                   help="the file (.dvc/config's plots.html_template names this one)")
    t.set_defaults(func=plots_template_command)


def build_parser() -> argparse.ArgumentParser:
    """The command line: init, run, exps, predict, serve, export, sweep, plots-template."""
    formatter = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog="python -m pipeline", formatter_class=formatter,
                                     description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_init, _add_run_and_exps, _add_predict_and_serve, _add_export, _add_sweep,
                _add_plots_template):
        add(sub, formatter)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run a subcommand."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in ("run", "exps"):  # these pass arguments on to dvc
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command in ("run", "exps"):
            args.func(args, extra)
        else:
            args.func(args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
