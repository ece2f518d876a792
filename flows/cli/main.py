"""The ``dsqnet`` command line.

Each subcommand imports what it needs when it runs, so ``dsqnet --help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import textwrap
import time
from typing import NoReturn
from collections.abc import Callable, Sequence
from pathlib import Path

from dsqnet.inference.defaults import BATCH_SIZE, DEFAULT_THRESHOLD, STRIDE, WINDOW

DESCRIPTION = """\
DSQNet change detection between two images of the same place.

Start here:
  dsqnet detect                               the whole job on the embedded demo (no network, no GPU)
  dsqnet detect --region 16.3,48.1,16.5,48.3 --before 2021-06-01 --after 2023-06-01 --catalog CATALOG
  dsqnet monitor --regions regions.yaml --catalog CATALOG --state monitor-state   new acquisitions, once each
  dsqnet example-pair --out example/          write a small synthetic before/after pair
  dsqnet init-model dsqnet_swin_mini --out example/model.safetensors
  dsqnet predict --model example/model.safetensors \\
      --before example/before.tif --after example/after.tif --out example/change.tif
"""


def _writable(folder: Path, option: str = "out") -> None:
    """Fail before the work if ``folder`` cannot hold what the command writes (set with ``--option``)."""
    from flows.outputs.run_folder import check_writable

    check_writable(folder, option=option, flow_parameter=False)


def positive_int(text: str) -> int:
    """An option that counts pixels or steps: a whole number of at least 1, said so by argparse if not."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    from flows.runtime.allocator import keep_freed_memory

    keep_freed_memory()  # before any thread: blocks reuse the memory the blocks before them freed
    parser = build_parser()
    args, unknown = parser.parse_known_args(attach_negative_values(sys.argv[1:] if argv is None else list(argv)))
    if unknown:  # told by the command's own parser, so that the line points to that command's --help
        getattr(args, "command_parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    from flows.cli.console import console

    try:
        from flows.runtime.interrupts import interruptible

        with console(args.verbose, uses_prefect=getattr(args, "uses_prefect", False)):
            # Ctrl-C or SIGTERM ends every command in one line (the flow commands' own call is the same one)
            return interruptible(args.command, lambda: args.handler(args)) or 0
    except Exception as err:  # a user error in one line; a bug keeps its traceback
        from flows.cli.errors import user_message

        from flows.runtime.terminal import progress_bar_open

        message = user_message(err)
        if message is None:
            raise
        below_the_bar = "\n" if progress_bar_open() else ""  # a failed step leaves its bar's line open
        sys.stdout.flush()  # what the command printed comes before its error line, also where stdout is a file
        print(f"{below_the_bar}dsqnet {args.command}: error: {message}", file=sys.stderr)
        return 1


_NEGATIVE_VALUE = re.compile(r"-\d[\d.]*([eE][-+]?\d+)?(,\s*-?\d[\d.]*([eE][-+]?\d+)?)*")


def attach_negative_values(argv: list[str]) -> list[str]:
    """``--region -105.3,40.1,-105.2,40.2`` as ``--region=-105.3,...``: argparse takes a value that
    starts with '-' for an option unless it is one plain number, which would refuse every western bbox."""
    joined: list[str] = []
    for token in argv:
        if (joined and joined[-1].startswith("--") and "=" not in joined[-1] and _NEGATIVE_VALUE.fullmatch(token)):
            joined[-1] = f"{joined[-1]}={token}"
        else:
            joined.append(token)
    return joined


class _OneLineParser(argparse.ArgumentParser):
    """argparse, except that a bad option ends in one line that points to ``--help``, not after the
    usage block; the subcommands' parsers are of the same class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} ({self.prog} --help lists the options)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="dsqnet", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_detect, _add_monitor, _add_predict, _add_train, _add_evaluate, _add_evaluate_model, _add_retrain,
                _add_models, _add_scenes, _add_demo_data, _add_init_model, _add_convert, _add_example_pair,
                _add_architectures):
        add(commands)
    return parser


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, except that names such as ``levir-cd_vitae-s`` never wrap at a hyphen."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def _command(commands, name: str, help: str, handler: Callable[[argparse.Namespace], int | None]) -> argparse.ArgumentParser:
    sub = commands.add_parser(name, help=help, description=help, formatter_class=_HelpFormatter)
    sub.set_defaults(handler=handler, command_parser=sub)
    sub.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return sub


VERBOSE_HELP = "also show the libraries' logs (Prefect, Dask) and warnings; by default only progress and results"


# ------------------------------------------------------------------------------------------------
def _add_fields(parser: argparse.ArgumentParser, fields: dict) -> None:
    """One ``--option`` per pydantic field, typed and documented from the field; unset options stay None
    (the model's default)."""
    import types
    from typing import Literal, Union, get_args, get_origin

    for name, field in fields.items():
        optional = get_origin(field.annotation) in (Union, types.UnionType)
        kinds = [t for t in get_args(field.annotation) if t is not type(None)] if optional else [field.annotation]
        options: dict = {"help": f"{field.description} (default: {field.default})"}
        if field.is_required():
            options = {"help": f"{field.description} (required)", "required": True}
        if kinds[0] is bool:
            options = {"help": field.description, "action": "store_true"}
        elif get_origin(kinds[0]) is Literal:
            options["choices"] = list(get_args(kinds[0]))
        elif get_origin(kinds[0]) is list:
            options["action"] = "append"
            options["help"] = f"{field.description} (repeatable)"
        elif kinds[0] in (int, float):
            options["type"] = kinds[0]
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, **options)


def _add_detect(commands) -> None:
    _flow_command(commands, "detect",
                  "Find what changed in a region between two dates: STAC scenes -> both dates on one grid -> "
                  "DSQNet on Dask workers -> change.tif, change_prob.tif, changes.parquet, preview.png, run.json. "
                  "With no region and dates it runs the embedded demo.",
                  "flows.params.detect:DetectRequest", "flows.detect:detect_changes")


def _flow_command(commands, name: str, help: str, request: str, flow: str) -> None:
    """A subcommand that runs a flow (``module:function``), with one option per field of its parameter
    model (``module:Class``); parameters are checked before Prefect starts."""
    module, cls = request.split(":")
    request_model = getattr(importlib.import_module(module), cls)

    def run(args: argparse.Namespace) -> None:
        from flows.params.detect import parse_parameters
        from flows.runtime.interrupts import interruptible

        from flows.params.inputs import check_inputs

        params = {k: getattr(args, k) for k in request_model.model_fields if getattr(args, k) is not None}
        check_inputs(parse_parameters(request_model, name, params))  # region, catalog, model, --out: before Prefect
        flow_module, function = flow.split(":")
        run_flow = getattr(importlib.import_module(flow_module), function)
        print(interruptible(name, lambda: run_flow(**params))["text"])

    sub = _command(commands, name, help, run)
    sub.set_defaults(uses_prefect=True)
    _add_fields(sub, request_model.model_fields)


# ------------------------------------------------------------------------------------------------
def _add_monitor(commands) -> None:
    from flows.monitoring.config import DETECT_OPTIONS, MonitorRequest
    from flows.params.detect import DetectRequest

    p = _command(commands, "monitor",
                 "Watch regions for change: run detect on every new acquisition pair of each region in a regions "
                 "file (once each), keep a history of the change polygons, alert when a watch zone changes too "
                 "much. With no regions file it watches the embedded demo.", _monitor)
    p.set_defaults(uses_prefect=True)
    fields = MonitorRequest.model_fields
    _add_fields(p, {"regions": fields["regions"]})
    p.add_argument("--region", dest="region_names", action="append", metavar="NAME",
                   help="watch only this region of the regions file (repeatable; default: every region)")
    _add_fields(p, {k: fields[k] for k in ("catalog", "collection", "model", "state", "out", "baseline", "since", "min_coverage",
                                           "alert_area_m2", "alert_polygons", "webhook_url", "notify_block")})
    detect = p.add_argument_group("detect options", "passed to detect-changes for every pair "
                                                    "(--threshold is the change probability, not an alert threshold)")
    _add_fields(detect, {k: DetectRequest.model_fields[k] for k in DETECT_OPTIONS})


def _monitor(args: argparse.Namespace) -> int:
    from flows.monitoring.config import DETECT_OPTIONS, MonitorRequest, parse_monitor_request, watch_list

    params = {k: getattr(args, k) for k in MonitorRequest.model_fields if getattr(args, k, None) is not None}
    options = {k: getattr(args, k) for k in DETECT_OPTIONS if getattr(args, k) is not None}
    if options:
        params["detect_options"] = options
    request = parse_monitor_request(**params)  # fail on bad parameters or regions before Prefect starts
    if request.regions:
        watch_list(request, request.regions)
    from flows.monitor import MonitorError, monitor_region
    from flows.runtime.interrupts import interruptible

    try:
        summary = interruptible("monitor", lambda: monitor_region(**params))
    except MonitorError as err:  # some regions failed; the others were processed and are in the summary
        sys.stdout.flush()  # the summary first, the error line last, also where stdout is a file
        print(f"dsqnet monitor: error: {err}", file=sys.stderr)
        return 1
    print(summary["text"])
    return 0


# ------------------------------------------------------------------------------------------------
def _add_predict(commands) -> None:
    p = _command(commands, "predict", "Detect change between two co-registered images (PNG or GeoTIFF).", _predict)
    p.add_argument("--model", required=True,
                   help="model file (a DSQNet .safetensors checkpoint, or an authors' open-cd .pth checkpoint) "
                        "or a registry reference name@VERSION / name@ALIAS")
    p.add_argument("--registry", help=REGISTRY_HELP)
    p.add_argument("--before", required=True, type=Path, help="the earlier image (RGB, uint8 or float on 0-255)")
    p.add_argument("--after", required=True, type=Path, help="the later image, same size and grid as --before")
    p.add_argument("--out", required=True, type=Path,
                   help="change map to write: .tif (0 unchanged / 1 changed, georeferenced like --before) "
                        "or .png (0 / 255)")
    p.add_argument("--probabilities", type=Path, metavar="TIF",
                   help="also write the change probability (float32 GeoTIFF)")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help=f"probability from which a pixel counts as changed (default {DEFAULT_THRESHOLD})")
    p.add_argument("--window", type=positive_int, default=WINDOW, help=f"window side in pixels (default {WINDOW}, as the paper)")
    p.add_argument("--stride", type=positive_int, default=STRIDE, help=f"step between windows (default {STRIDE}, as the paper)")
    p.add_argument("--batch-size", type=positive_int, default=BATCH_SIZE, help=f"windows per forward pass (default {BATCH_SIZE})")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="fp32 (default), bf16 autocast (2-4x faster on CPUs with AVX512-BF16 or AMX, several times "
                        "slower on others) or fp16 (CUDA)")


def _predict(args: argparse.Namespace) -> None:
    import numpy as np

    from dsqnet import Predictor
    from dsqnet.inference.threshold import is_change
    from dsqnet.weights.model_file import load_model_file

    from flows.outputs.imageio import read_pair, write_rasters
    from flows.models.resolve import locate_model

    if not 0.0 <= args.threshold <= 1.0:
        raise ValueError(f"--threshold must lie in [0, 1], got {args.threshold}")
    check_map_paths(args.out, args.probabilities)  # before minutes of inference, not after
    before, after = read_pair(args.before, args.after)
    started = time.perf_counter()
    predictor = Predictor(load_model_file(locate_model(args.model, args.registry)[0]), device=args.device,
                          precision=args.precision)
    from flows.runtime.out_of_memory import out_of_memory, said_in_one_line

    with said_in_one_line(lambda err: out_of_memory(err, "the pair", str(predictor.device), args.batch_size,
                                                    args.window, args.precision)):
        probability = predictor.predict_windows(
            before.pixels, after.pixels, window=args.window, stride=args.stride, batch_size=args.batch_size
        )
    changed = is_change(probability, args.threshold)
    scale = 255 if args.out.suffix.lower() == ".png" else 1
    maps = [(args.out, changed.astype(np.uint8) * scale)]
    if args.probabilities:
        maps.append((args.probabilities, probability.astype(np.float32)))
    write_rasters(maps, like=before)  # both or neither
    height, width = changed.shape
    print(
        f"{args.out}: {changed.mean():.2%} of {width}x{height} px changed "
        f"({time.perf_counter() - started:.1f} s on {predictor.device}, {args.precision})"
    )


def check_map_paths(out: Path, probabilities: Path | None) -> None:
    """The maps ``predict`` writes: a format it can write, in a folder it can write to."""
    for option, path, formats in (("out", out, (".tif", ".tiff", ".png")), ("probabilities", probabilities, (".tif", ".tiff"))):
        if path is None:
            continue
        if path.suffix.lower() not in formats:
            raise ValueError(f"--{option} {path}: write the {'map' if option == 'out' else 'probabilities'} as "
                             f"{' or '.join(formats)} (the suffix picks the format)")
        _writable(path.absolute().parent, option)


# ------------------------------------------------------------------------------------------------
def _add_train(commands) -> None:
    p = _command(commands, "train", "Train or fine-tune DSQNet with the paper's recipe from a YAML config.", _train)
    p.add_argument("--config", required=True,
                   help="a YAML file, or a bundled config: levir-cd_swin-t, s2looking_swin-t, svcd_swin-t, "
                        "dsifn_swin-t, levir-cd_vitae-s, s2looking_vitae-s, svcd_vitae-s, dsifn_vitae-s (the "
                        "paper's recipe with Swin-T or ViTAEv2-S), cpu-small (minutes on a CPU) or demo (the demo model)")
    p.add_argument("--data-root", help="dataset folder (overrides data.root)")
    p.add_argument("--work-dir", help="where checkpoints and logs go (overrides runtime.work_dir)")
    p.add_argument("--backbone-weights",
                   help="local ImageNet weights of the model's backbone: Swin (Microsoft .pth or timm .safetensors) "
                        "or ViTAEv2 (the ViTAE-Transformer release, e.g. ViTAEv2-S.pth.tar)")
    p.add_argument("--init-from", help="start from this checkpoint instead (fine-tuning)")
    p.add_argument("--max-iters", type=positive_int, help="iterations to train (overrides schedule.max_iters)")
    p.add_argument("--batch-size", type=positive_int, help="crops per optimiser step (overrides schedule.batch_size)")
    p.add_argument("--accumulate", type=positive_int,
                   help="split each step into this many micro-batches, so batch 8 fits a small GPU")
    p.add_argument("--num-workers", type=int, help="data loader processes (overrides data.num_workers)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"),
                   help="autocast: auto = bf16/fp16 on CUDA, fp32 on CPU; bf16 also works on CPU, fast only "
                        "with AVX512-BF16 or AMX")
    p.add_argument("--seed", type=int, help="seed of weights, data order and augmentation")
    p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard scalars")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --work-dir exactly where its last checkpoint left off")


def _train(args: argparse.Namespace) -> None:
    from dsqnet.training import Trainer, load_config

    config = load_config(args.config)
    updates = {
        "data": {"root": args.data_root, "num_workers": args.num_workers},
        "model": {"backbone_weights": args.backbone_weights, "init_from": args.init_from},
        "schedule": {"max_iters": args.max_iters, "batch_size": args.batch_size, "accumulate": args.accumulate},
        "runtime": {"work_dir": args.work_dir, "device": args.device, "precision": args.precision, "seed": args.seed,
                    "tensorboard": args.tensorboard or None},
    }
    updates = {section: {k: v for k, v in values.items() if v is not None} for section, values in updates.items()}
    config = config.with_updates(**{section: values for section, values in updates.items() if values})
    from flows.runtime.out_of_memory import said_in_one_line, training_out_of_memory

    trainer = Trainer(config)
    with said_in_one_line(lambda err: training_out_of_memory(
            err, str(trainer.device), config.schedule.batch_size, config.schedule.accumulate, trainer.precision,
            "--batch-size (now {now})", "--accumulate (now {now})")):
        result = trainer.run(resume=args.resume)
    best = f", best val mIoU {result.best_miou:.4f} in {result.best}" if result.best_miou is not None else ""
    print(f"trained {result.step} iterations: {result.last}{best}; log in {result.work_dir / 'log.jsonl'}")


def _add_evaluate(commands) -> None:
    p = _command(commands, "evaluate",
                 "Score a model on a labelled dataset (the paper's test mode), or score prediction images.", _evaluate)
    p.add_argument("--model", help="model file (.safetensors, or an authors' .pth) or a registry reference name@VERSION")
    p.add_argument("--registry", help=REGISTRY_HELP)
    p.add_argument("--data", help="dataset folder")
    p.add_argument("--layout", default="generic",
                   help="dataset layout: levir-cd, s2looking, svcd, dsifn or generic (A/, B/, label/; the default)")
    p.add_argument("--split", default="test", help="split folder to score (default test; ignored if absent for generic)")
    p.add_argument("--predictions", help="folder of prediction images (0/255 or 0/1) to score instead of a model")
    p.add_argument("--labels", help="folder of label images matching --predictions by file name")
    p.add_argument("--label-encoding", choices=("zero-one", "threshold"),
                   help="how the labels say change: zero-one (0/1, 255 ignored) or threshold (0/255); default: "
                        "the layout's, or read from the labels")
    p.add_argument("--window", type=positive_int, default=WINDOW, help=f"window side (default {WINDOW}, as the paper)")
    p.add_argument("--stride", type=positive_int, default=STRIDE, help=f"window stride (default {STRIDE}, as the paper)")
    p.add_argument("--batch-size", type=positive_int, default=BATCH_SIZE, help=f"windows per forward pass (default {BATCH_SIZE})")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--mode", choices=("lattice", "paper"), default="lattice",
                   help="lattice: the blended windows every job runs, as detect does (default); paper: the paper's "
                        "test mode (flush windows, mean logits), for comparing with published figures")
    p.add_argument("--save-predictions", metavar="DIR", help="also write each prediction as a 0/255 PNG")
    p.add_argument("--json", action="store_true", help="print the scores as JSON instead of a table")


def _evaluate(args: argparse.Namespace) -> None:
    import json

    from dsqnet.metrics import format_table

    if args.predictions or args.labels:
        if not (args.predictions and args.labels) or args.model or args.data:
            raise ValueError("score prediction images with --predictions DIR --labels DIR (and no --model/--data)")
        from dsqnet.evaluation import evaluate_folders

        scores = evaluate_folders(args.predictions, args.labels, args.label_encoding)
    else:
        if not (args.model and args.data):
            raise ValueError("evaluate a model with --model CKPT --data DIR [--layout NAME], "
                             "or prediction images with --predictions DIR --labels DIR")
        from dsqnet import Predictor
        from dsqnet.weights.model_file import load_model_file
        from dsqnet.data import ChangeDetectionDataset, find_samples
        from dsqnet.data.dataset import label_encoding_for
        from dsqnet.evaluation import evaluate_model

        from flows.scoring.labeled_data import folder_label_encoding
        from flows.models.resolve import locate_model

        if args.save_predictions:  # before the model loads
            from dsqnet.evaluation import check_predictions_folder

            check_predictions_folder(Path(args.save_predictions))
        samples = find_samples(args.data, args.layout, args.split)
        encoding = args.label_encoding or folder_label_encoding(args.data) or label_encoding_for(args.layout, samples)
        pairs = ChangeDetectionDataset(samples, encoding)
        predictor = Predictor(load_model_file(locate_model(args.model, args.registry)[0]), device=args.device,
                              precision=args.precision)
        from flows.runtime.out_of_memory import out_of_memory, said_in_one_line

        with said_in_one_line(lambda err: out_of_memory(err, "the evaluation", str(predictor.device),
                                                        args.batch_size, args.window, args.precision)):
            scores = evaluate_model(predictor, pairs, window=args.window, stride=args.stride,
                                    batch_size=args.batch_size, save_predictions=args.save_predictions, mode=args.mode)
    print(json.dumps(scores, indent=2) if args.json else format_table(scores))


def _add_evaluate_model(commands) -> None:
    _flow_command(commands, "evaluate-model",
                  "Run the evaluate-model flow: score a model on a benchmark folder (--data) or on scenes with label "
                  "polygons (--catalog --region --before --after --labels), per pixel and per changed object; writes "
                  "<out>/<run>/evaluation.json and Prefect artifacts.",
                  "flows.params.evaluate:EvaluateRequest", "flows.evaluate:evaluate_model_flow")


def _add_retrain(commands) -> None:
    _flow_command(commands, "retrain",
                  "Run the retrain-model flow: fine-tune NAME@production on new labels (--data, or --catalog --region "
                  "--before --after --labels), score it and the base on the same holdout, register the candidate and "
                  "promote it only if it is better; writes <out>/<run>/retrain.json and Prefect artifacts.",
                  "flows.params.retrain:RetrainRequest", "flows.retrain:retrain_model")


# ------------------------------------------------------------------------------------------------
REGISTRY_HELP = ("model registry folder (default: $DSQNET_REGISTRY, else $XDG_DATA_HOME/dsqnet/registry or "
                 "~/.local/share/dsqnet/registry)")


def _add_models(commands) -> None:
    p = _command(commands, "models", "The model registry: list, show, register and promote versioned models.",
                 lambda args: p.print_help() or 2)
    sub = p.add_subparsers(dest="models_command", metavar="ACTION")

    def action(name: str, help: str, handler) -> argparse.ArgumentParser:
        a = sub.add_parser(name, help=help, description=help)
        a.set_defaults(handler=handler, command_parser=a)
        a.add_argument("--registry", help=REGISTRY_HELP)
        return a

    a = action("list", "List the registered models, their versions and aliases.", _models_list)
    a.add_argument("--name", help="only this model")
    a.add_argument("--json", action="store_true", help="print JSON instead of a table")
    a = action("show", "Show one version: file, sha256, metrics, lineage, aliases.", _models_show)
    a.add_argument("ref", help="name@VERSION, name@ALIAS, name@latest, or name (its production alias, else latest)")
    a = action("register", "Copy a .safetensors model into the registry as the next version of its name.",
               _models_register)
    a.add_argument("file", type=Path, help="the DSQNet .safetensors checkpoint to register")
    a.add_argument("--name", help="model name (default: the checkpoint's architecture)")
    a.add_argument("--alias", action="append", default=[], help="point this alias at the new version (repeatable)")
    a.add_argument("--metrics", type=Path, metavar="JSON",
                   help="metrics to record: a JSON object, or an evaluation.json of evaluate-model (kept under its "
                        "folder's name)")
    a.add_argument("--lineage", action="append", default=[], metavar="KEY=VALUE",
                   help="lineage to record, e.g. training_data=/data/labels base_model=levir@2 (repeatable)")
    a = action("promote", "Point an alias (default production) at a version.", _models_promote)
    a.add_argument("ref", help="the version to promote: name@VERSION or name@ALIAS (e.g. name@candidate)")
    a.add_argument("--alias", default="production", help="the alias to set (default production)")
    action("verify", "Re-read every record and file; report any inconsistency (exit 1 if any).", _models_verify)


def _registry(args: argparse.Namespace):
    from flows.models.registry import ModelRegistry

    return ModelRegistry(args.registry)


def _models_list(args: argparse.Namespace) -> None:
    import json

    registry = _registry(args)
    models = registry.list(args.name)
    if args.name and not models:
        registry.resolve(args.name)  # raises with what the registry holds
    if args.json:
        print(json.dumps([m.to_dict() for m in models], indent=2))
        return
    if not models:
        print(f"no models in {registry.root}; add one with: dsqnet models register FILE --name NAME")
        return
    print(f"{'NAME':24s} {'VERSION':>7s}  {'ALIASES':22s} {'REGISTERED':25s} SHA256")
    for m in models:
        print(f"{m.name:24s} {m.version:>7d}  {','.join(m.aliases) or '-':22s} {m.registered:25s} {m.sha256[:12]}")


def _models_show(args: argparse.Namespace) -> None:
    import json

    registry = _registry(args)
    model = registry.resolve(args.ref)
    print(json.dumps({**model.to_dict(), "registry": str(registry.root),
                      "alias_history": [h for h in registry.history(model.name)]}, indent=2))


def _models_register(args: argparse.Namespace) -> None:
    import json

    metrics = {}
    if args.metrics:
        try:
            metrics = json.loads(args.metrics.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"--metrics {args.metrics} is not a readable JSON file ({err})") from None
        if not isinstance(metrics, dict):
            raise ValueError(f"--metrics {args.metrics} must hold a JSON object")
        if {"pixel", "objects", "model"} <= set(metrics):  # an evaluate-model report
            from flows.evaluate import registry_metrics

            metrics = {args.metrics.resolve().parent.name: registry_metrics(metrics)}
    lineage = {}
    for item in args.lineage:
        key, eq, value = item.partition("=")
        if not (key and eq):
            raise ValueError(f"--lineage {item!r} is not KEY=VALUE, e.g. training_data=/data/labels")
        lineage[key] = value
    model = _registry(args).register(args.file, name=args.name, metrics=metrics, lineage=lineage, aliases=args.alias)
    aliases = f" ({', '.join(model.aliases)})" if model.aliases else ""
    print(f"registered {model.ref}{aliases}: {model.path} sha256 {model.sha256[:12]}")


def _models_promote(args: argparse.Namespace) -> None:
    from flows.models.registry import parse_ref

    name, selector = parse_ref(args.ref)
    if selector is None:
        raise ValueError(f"say which version to promote: {name}@VERSION or {name}@ALIAS (e.g. {name}@candidate)")
    registry = _registry(args)
    model = registry.promote(name, registry.resolve(args.ref).version, alias=args.alias)
    print(f"{name}@{args.alias} -> version {model.version} ({model.path})")


def _models_verify(args: argparse.Namespace) -> int:
    registry = _registry(args)
    problems = registry.verify()
    for problem in problems:
        print(problem)
    count = len(registry.list())
    print(f"{registry.root}: {count} version(s), " + (f"{len(problems)} problem(s)" if problems else "consistent"))
    return 1 if problems else 0


# ------------------------------------------------------------------------------------------------
def _add_scenes(commands) -> None:
    p = _command(commands, "scenes",
                 "Find the scenes of a region for two dates and put both on one grid in scenes.zarr.", _scenes)
    p.add_argument("--region", required=True,
                   help="lon/lat bbox 'minlon,minlat,maxlon,maxlat', GeoJSON (text or file), or a name in --regions")
    p.add_argument("--regions", help="YAML regions file (name: {geometry: GeoJSON, watch_zones: {...}})")
    p.add_argument("--before", required=True, help="the earlier date, YYYY-MM-DD")
    p.add_argument("--after", required=True, help="the later date, YYYY-MM-DD")
    p.add_argument("--tolerance-days", type=int, default=15, help="scenes up to this many days away count (default 15)")
    p.add_argument("--catalog", required=True, help="a static STAC catalog (catalog.json, collection.json, "
                                                    "ItemCollection file) or a STAC API URL")
    p.add_argument("--collection", action="append", help="restrict the search to this collection (repeatable)")
    p.add_argument("--out", required=True, help="the scenes.zarr folder to write (reused if already complete)")
    p.add_argument("--crs", help="target CRS (default: the UTM zone of the region's centroid)")
    p.add_argument("--resolution", type=float, help="target pixel size in metres (default: finest of the scenes)")
    p.add_argument("--chunk", type=int, default=2048, help="chunk side in pixels (default 2048)")


def _scenes(args: argparse.Namespace) -> None:
    import json

    from catalog import date_pair, open_source, parse_region
    from catalog.prepare import choose_pair, chosen_grid, prepare_chosen
    from flows.runtime.disk_full import DiskFull

    out = Path(args.out).absolute()
    _writable(out.parent)
    region = parse_region(args.region, regions_file=args.regions)
    before, after = date_pair(args.before, args.after, args.tolerance_days)
    first, second = choose_pair(region, before, after, open_source(args.catalog), args.collection)
    height, width = chosen_grid(region, first, second, crs=args.crs, resolution=args.resolution).shape
    need = height * width * SCENE_BYTES_PER_PIXEL
    with DiskFull(out.parent, need, fix="free some space or choose another --out; nothing was left half-written").said():
        result = prepare_chosen(region, before, after, first, second, out, crs=args.crs, resolution=args.resolution,
                                chunk=args.chunk)
    print(json.dumps(result.summary(), indent=2))


SCENE_BYTES_PER_PIXEL = 2 * 3 + 2  # scenes.zarr, uncompressed: two dates of RGB bytes and a valid mask each


def _add_demo_data(commands) -> None:
    p = _command(commands, "demo-data",
                 "Write the embedded demo: a synthetic STAC catalog of three dates, regions, truth and "
                 "a training set (no network).", _demo_data)
    p.add_argument("--out", type=Path, default=Path("demo"), help="folder to write into (default ./demo)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic world (default 0)")


def _demo_data(args: argparse.Namespace) -> None:
    from catalog.demo import build_demo

    started = time.perf_counter()
    _writable(Path(args.out))
    demo = build_demo(args.out, seed=args.seed)
    print(f"{demo.root}: catalog {demo.catalog}, regions {demo.regions} (region {demo.region_name!r}), "
          f"dates {', '.join(demo.dates)}, training set {demo.training} ({time.perf_counter() - started:.0f} s)")


# ------------------------------------------------------------------------------------------------
def _add_init_model(commands) -> None:
    p = _command(commands, "init-model",
                 "Write a new, untrained DSQNet checkpoint (optionally with an ImageNet backbone).", _init_model)
    p.add_argument("architecture", help="a registered architecture, see 'dsqnet architectures'")
    p.add_argument("--out", required=True, type=Path, help="checkpoint to write (.safetensors)")
    p.add_argument("--backbone-weights", type=Path,
                   help="local ImageNet backbone weights: Swin (Microsoft's .pth release or timm's .safetensors) "
                        "or ViTAEv2 (the ViTAE-Transformer release, e.g. ViTAEv2-S.pth.tar)")
    p.add_argument("--head-width", type=positive_int, help="head width D (128 or 64 for the paper's variants)")
    p.add_argument("--seed", type=int, default=0, help="random seed for the initial weights (default 0)")


def _init_model(args: argparse.Namespace) -> None:
    import torch

    from dsqnet import build_model
    from dsqnet.weights.model_file import save

    torch.manual_seed(args.seed)
    overrides = {"head_width": args.head_width} if args.head_width else {}
    model = build_model(args.architecture, pretrained_backbone=args.backbone_weights, **overrides)
    provenance = {"trained": False, "seed": args.seed,
                  "backbone_weights": str(args.backbone_weights) if args.backbone_weights else None}
    _writable(args.out.absolute().parent)
    save(model, args.out, metadata={"training": provenance})
    count = sum(p.numel() for p in model.parameters())
    print(f"{args.out}: {args.architecture}, {count:,} parameters, untrained")


def _add_convert(commands) -> None:
    p = _command(commands, "convert-opencd",
                 "Convert an authors' open-cd DSQNet checkpoint (.pth) into a DSQNet .safetensors file.", _convert)
    p.add_argument("checkpoint", type=Path, help="the .pth file (loaded with weights_only=True: no code runs)")
    p.add_argument("--out", required=True, type=Path, help="checkpoint to write (.safetensors)")


def _convert(args: argparse.Namespace) -> None:
    from dsqnet.weights.files import safe_torch_load
    from dsqnet.weights.model_file import save
    from dsqnet.weights.opencd import load_opencd

    model = load_opencd(safe_torch_load(args.checkpoint))
    save(model, args.out, metadata={"training": {"source": "open-cd checkpoint", "file": args.checkpoint.name}})
    print(f"{args.out}: converted from {args.checkpoint} (head width {model.config.head.head_width})")


def _add_example_pair(commands) -> None:
    p = _command(commands, "example-pair",
                 "Write a small synthetic georeferenced before/after pair with its true change.", _example_pair)
    p.add_argument("--out", type=Path, default=Path("example"), help="folder to write into (default ./example)")
    p.add_argument("--seed", type=int, default=0)


def _example_pair(args: argparse.Namespace) -> None:
    from catalog.example_pair import write_example_pair

    _writable(Path(args.out))
    pair = write_example_pair(args.out, seed=args.seed)
    print(f"wrote {pair.before}, {pair.after} and the true change {pair.truth}")


def _add_architectures(commands) -> None:
    _command(commands, "architectures", "List the DSQNet architectures this version can build.", _architectures)


def _architectures(args: argparse.Namespace) -> None:
    from dsqnet.model import describe_model, list_models

    for name in list_models():
        print(f"{name:20s} {describe_model(name)}")


if __name__ == "__main__":
    raise SystemExit(main())
