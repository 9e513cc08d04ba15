"""The ``hookwrap`` command line.

``SPEC`` is ``package.module:factory`` or ``path/to/file.py:factory``; the factory takes
no arguments and returns a model, or a pair ``(model, example_inputs)``.

Exit codes: 0 success (or parity passed), 1 parity failed, 2 bad usage or bad input
(one line on stderr; ``--debug`` shows the traceback). torch, onnx and onnxruntime are
imported only by the commands that need them, so ``--version`` and ``--help`` are instant.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

from ._defaults import DEFAULT_ATOL, DEFAULT_RTOL, DEFAULT_SAMPLES
from ._version import __version__

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A problem with what the user asked for: reported as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"hookwrap: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_USAGE)


_TORCH_EXTRA = ("torch", "torchvision", "onnxscript")  # what pip install 'hookwrap[torch]' adds
_SPEC_HELP = "package.module:factory or path/to/file.py:factory; the factory returns a model or (model, example)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hookwrap",
        description="Make PyTorch models that carry hooks safe to save, export and check.",
        epilog="SPEC is package.module:factory or path/to/file.py:factory; the factory returns a "
               "model or (model, example_inputs). Exit codes: 0 ok, 1 parity failed, 2 bad usage or input.",
    )
    parser.add_argument("--version", action="version", version=f"hookwrap {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("inspect", help="list every hook on a model and what convert would do")
    p.add_argument("spec", metavar="SPEC", help=_SPEC_HELP)
    _json_option(p, "the inventory")

    p = sub.add_parser("convert", help="convert hooks to modules and save one .safetensors file")
    p.add_argument("spec", metavar="SPEC", help=_SPEC_HELP)
    p.add_argument("-o", "--output", required=True, help="the .safetensors file to write")
    _json_option(p, "a summary")

    p = sub.add_parser("export", help="convert, export to ONNX and optionally check parity")
    p.add_argument("spec", metavar="SPEC", help=_SPEC_HELP)
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    p.add_argument("--weights", help="a .safetensors file loaded into the model first (plain state dict)")
    p.add_argument("--dynamic-batch", action="store_true", help="make the batch dimension dynamic")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.add_argument("--exporter", choices=["dynamo", "legacy"], default="dynamo",
                   help="torch.onnx.export(dynamo=True) (default) or the legacy TorchScript exporter")
    p.add_argument("--check", action="store_true", help="check parity with onnxruntime; exit 1 if it fails")
    _json_option(p, "a summary (with the parity report under --check)")

    p = sub.add_parser("check", help="check that an ONNX file computes what the hooked model computes")
    p.add_argument("onnx", metavar="M.onnx", help="the ONNX file to check")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--reference", metavar="SPEC", help="the original, hooked model")
    source.add_argument("--golden", metavar="G.npz", help="a golden file from hookwrap record (needs no torch)")
    p.add_argument("--weights", help="with --reference: a .safetensors file whose tensors a copy of it gets")
    p.add_argument("--inputs", help="with --reference: an .npz of inputs (keys: ONNX input names)")
    _tolerance_options(p, "or the golden file's")
    p.add_argument("--samples", type=int, help=f"draws per side for stochastic models (default {DEFAULT_SAMPLES}, or "
                                               f"the golden file's)")
    p.add_argument("--seed", type=int, help="fixes the random inputs and every draw of both sides: the same seed "
                                            "gives the same report (default 0, or the golden file's)")
    _json_option(p, "the parity report (also when the check cannot run)")
    p.add_argument("--junit", metavar="PATH", help="write a JUnit XML report here (also when the check cannot run)")
    p.add_argument("--override-tolerance", action="store_true",
                   help="with --golden: allow --atol/--rtol looser than the golden file's (the report says so)")
    p.add_argument("--bisect", action="store_true", help="with --reference: on failure, name the first diverging module")
    p.add_argument("--plot", metavar="PNG", help="with --bisect: draw the error per layer")
    p.add_argument("--strict", action="store_true", help="exit 1 on warnings too (such as a check that cannot fail)")

    p = sub.add_parser("record", help="record the hooked model's outputs into a golden .npz, for a gate without torch")
    p.add_argument("spec", metavar="SPEC", help=_SPEC_HELP)
    p.add_argument("-o", "--output", required=True, help="the golden .npz file to write")
    p.add_argument("--inputs", help="an .npz of inputs (default: the factory's example and 3 random sets)")
    p.add_argument("--samples", type=int, help=f"draws per input for stochastic models (default {DEFAULT_SAMPLES})")
    p.add_argument("--seed", type=int, default=0, help="fixes the random inputs and the draws (default 0)")
    _tolerance_options(p, "the tolerance checks of this file use")
    p.add_argument("--onnx", metavar="M.onnx", help="the export the gate will check: the golden file binds its "
                                                    "interface (names, types, ranks, dynamic axes) and gets its "
                                                    "input sets as the live check makes them")
    _json_option(p, "a summary")

    p = sub.add_parser("verify", help="check a .safetensors file's tensors against their recorded digests")
    p.add_argument("file", metavar="FILE.safetensors", help="the .safetensors file hookwrap saved")
    _json_option(p, "the result")
    for command in _subcommands(parser).values():  # --debug works after the subcommand too
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    return parser


def _json_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", metavar="PATH", help=f"write {what} as JSON to PATH; '-' prints it to stdout "
                                                 f"instead of the tables")


def _emit_json(args: argparse.Namespace, text: str) -> None:
    """``--json PATH`` writes the file (atomically); ``--json -`` prints to stdout."""
    if args.json == "-":
        print(text)
    else:
        from ._fs import atomic_write_text

        _output_folder(args.json)
        atomic_write_text(args.json, text + "\n")


def _quiet(args: argparse.Namespace) -> bool:
    """``--json -``: stdout holds the JSON alone."""
    return bool(args.json == "-")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _tolerance_options(p: argparse.ArgumentParser, which: str) -> None:
    for name, default in (("atol", DEFAULT_ATOL), ("rtol", DEFAULT_RTOL)):
        p.add_argument(f"--{name}", action="append", metavar=f"[OUTPUT=]{name.upper()}",
                       help=f"default {default:g}, {which}; OUTPUT={name.upper()} sets one output's "
                            f"(repeat the option for more)")


def _tolerances(args: argparse.Namespace) -> dict[str, Any]:
    """``--atol``/``--rtol`` as ``check_parity`` and ``record`` take them."""
    from .compare import parse_tolerance

    parsed = {name: parse_tolerance(getattr(args, name), name) for name in ("atol", "rtol")}
    return {name: value for name, value in parsed.items() if value is not None}


# --------------------------------------------------------------------------------------
# SPEC loading
# --------------------------------------------------------------------------------------


def load_spec(spec: str) -> tuple[Any, tuple | None]:
    """Call the factory named by ``spec``; return ``(model, example_inputs or None)``."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise UsageError(f"SPEC {spec!r} must look like package.module:factory or path/to/file.py:factory")
    if target.endswith(".py") or os.sep in target or "/" in target:
        path = Path(target)
        if not path.is_file():
            raise UsageError(f"SPEC {spec!r}: file {target!r} does not exist")
        folder = str(path.resolve().parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        name = f"_hookwrap_spec_{path.stem}"
        loader_spec = importlib.util.spec_from_file_location(name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise UsageError(f"SPEC {spec!r}: cannot load {target!r} as Python")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as exc:
            raise UsageError(f"SPEC {spec!r}: running {target!r} raised {type(exc).__name__}: {exc}") from exc
    else:
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            raise UsageError(f"SPEC {spec!r}: cannot import module {target!r} ({exc})") from exc
        except Exception as exc:
            raise UsageError(f"SPEC {spec!r}: importing {target!r} raised {type(exc).__name__}: {exc}") from exc
    factory = getattr(module, attr, None)
    if factory is None:
        raise UsageError(f"SPEC {spec!r}: {target!r} has no attribute {attr!r}")
    if not callable(factory):
        raise UsageError(f"SPEC {spec!r}: {attr!r} is not callable")
    try:
        made = factory()
    except Exception as exc:
        raise UsageError(f"SPEC {spec!r}: the factory raised {type(exc).__name__}: {exc}") from exc
    from torch import nn

    example = None
    if isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], nn.Module):
        made, example = made
        if not isinstance(example, tuple):
            raise UsageError(f"SPEC {spec!r}: example_inputs must be a tuple, got {type(example).__name__}")
    if not isinstance(made, nn.Module):
        raise UsageError(
            f"SPEC {spec!r}: the factory returned {type(made).__name__}; expected an nn.Module "
            f"or (model, example_inputs)")
    return made, example


def _need_example(example: tuple | None, spec: str, why: str) -> tuple:
    if example is None:
        raise UsageError(f"SPEC {spec!r}: {why} needs example inputs; make the factory return (model, (x,))")
    return example


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------


def _console() -> Any:
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=False)
    if not console.is_terminal:  # logs and CI: wide enough that tables stay readable
        console = Console(highlight=False, soft_wrap=False, width=max(console.width, 140))
    return console


_CONTROL = dict.fromkeys([*range(0x20), *range(0x7f, 0xa0)], "?")


def _shown(text: object) -> str:
    """Text from a file, safe to print: control characters (terminal escapes) replaced and
    rich markup escaped, so a file can neither style nor link the terminal."""
    from rich.markup import escape

    return escape(str(text).translate(_CONTROL))


def _table(title: str, rows: list[list[str]], *, fail_column: int | None = None) -> Any:
    from rich.table import Table

    # Cells may hold text from files (names, details): shown inert, never as markup or escapes.
    table = Table(title=_shown(title), title_justify="left", show_lines=False, show_header=any(rows[0]))
    for header in rows[0]:
        table.add_column(_shown(header), overflow="fold")
    for row in rows[1:]:
        style = "red" if fail_column is not None and row[fail_column] == "FAIL" else None
        table.add_row(*(_shown(cell) for cell in row), style=style)
    return table


def _status(console: Any, message: str, quiet: bool) -> Any:
    import contextlib

    return contextlib.nullcontext() if quiet else console.status(message)


def _files_table(files: list[Path]) -> Any:
    rows = [["file", "size"]] + [[str(f), f"{f.stat().st_size / 1e6:.1f} MB"] for f in files]
    return _table("files written", rows)


@contextlib.contextmanager
def _bar(console: Any, label: str, quiet: bool, *, size: bool = True) -> Iterator[Callable[[int, int], None] | None]:
    """A rich progress bar fed by ``step(done, total)`` callbacks (bytes with ``size``, else
    counts); none under ``--json -`` or when the output is not a terminal."""
    if quiet or not console.is_terminal:
        yield None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    amount = DownloadColumn() if size else MofNCompleteColumn()
    with Progress(TextColumn(label), BarColumn(), amount, TimeElapsedColumn(), console=console,
                  transient=True) as bar:
        task = bar.add_task(label, total=None)

        def step(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield step


def _parity(console: Any, reference: Any, onnx_path: str, inputs: Any, quiet: bool, **kwargs: Any) -> Any:
    import hookwrap as hw

    with _bar(console, "checking parity", quiet, size=False) as step:
        return hw.check_parity(reference, onnx_path, inputs, progress=step, **kwargs)


def _show_report(console: Any, report: Any) -> None:
    console.print(_table(f"parity ({report.mode}, {report.reference} reference)", report.rows(), fail_column=2))
    for note in report.notes:
        console.print(f"note: {_shown(note)}")
    for warning in report.warnings:
        console.print(f"[yellow]warning: {_shown(warning)}[/yellow]")
    style = "bold green" if report else "bold red"
    console.print(f"[{style}]{_shown(report.summary())}[/{style}]")


# --------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------


def cmd_inspect(args: argparse.Namespace) -> int:
    if args.spec.endswith((".safetensors", ".npz")) and ":" not in Path(args.spec).name:
        return _inspect_file(args)
    import hookwrap as hw

    model, example = load_spec(args.spec)
    inv = hw.inventory(model, example)
    if args.json:
        _emit_json(args, inv.to_json())
    if _quiet(args):
        return EXIT_OK
    console = _console()
    title = f"{len(inv)} hook(s) on {inv.model_name}"
    if len(inv):
        console.print(_table(title, inv.rows()))
    else:
        console.print(title)
    return EXIT_OK


def _inspect_file(args: argparse.Namespace) -> int:
    """``inspect FILE.safetensors`` (its manifest) or ``inspect G.npz`` (a golden file's
    metadata): read and checked without torch, nothing built."""
    if args.spec.endswith(".npz"):
        from .golden import read_meta

        data = read_meta(args.spec)
        rows = [["", ""]] + [[k, str(data[k])[:200]] for k in ("stochastic", "sets", "inputs", "outputs", "samples",
                                                                 "atol", "rtol", "seed", "torch_version") if k in data]
        title = f"golden file {args.spec}"
    else:
        from . import _file

        data = _file.read_manifest(args.spec)
        actions = [a for part in ("converted", "baked", "stripped", "kept") for a in data.get(part, [])]
        rows = [["module", "hook", "action", "detail"]] + [
            [a["path"] or "<root>", f"{a['kind']} {a['name']}", a["action"], a["detail"] or ""] for a in actions]
        wrappers = sum(len(e["pre"]) + len(e["post"]) for e in data["wrappers"].values())
        title = (f"{args.spec}: {data.get('model')}, {len(data['tensors'])} tensors, {wrappers} wrapper(s), "
                 f"hookwrap {data.get('hookwrap_version')}, torch {data.get('torch_version')}")
    if args.json:
        _emit_json(args, json.dumps(data, indent=2))
    if _quiet(args):
        return EXIT_OK
    console = _console()
    console.print(_table(title, rows) if len(rows) > 1 else _shown(title))
    return EXIT_OK


def _output_folder(path: str) -> None:
    """Commands create the folder of their output, as ``mkdir -p`` would."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)


def cmd_convert(args: argparse.Namespace) -> int:
    import hookwrap as hw

    output = Path(args.output)
    if output.suffix != ".safetensors":
        raise UsageError(f"--output must end with .safetensors, got {args.output!r}")
    console = _console()
    model, example = load_spec(args.spec)
    _output_folder(args.output)
    with _status(console, "converting hooks", _quiet(args)):
        converted = hw.convert(model, example)
    with _bar(console, f"saving {output}", _quiet(args)) as step:
        hw.save(converted, output, progress=step)
    report = hw.conversion_report(converted)
    if args.json:
        _emit_json(args, json.dumps({"output": str(output), "bytes": output.stat().st_size,
                                     "report": report.to_dict() if report else None}, indent=2))
    if _quiet(args):
        return EXIT_OK
    if report and len(report):
        console.print(_table(report.summary(), report.rows()))
    else:
        console.print("no hooks: nothing to convert")
    console.print(_files_table([output]))
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    import hookwrap as hw

    console = _console()
    model, example = load_spec(args.spec)
    example = _need_example(example, args.spec, "export")
    _output_folder(args.output)
    if args.weights:
        from .io import load_weights

        load_weights(model, args.weights)
    with _bar(console, f"converting and exporting with the {args.exporter} exporter", _quiet(args),
              size=False) as step:
        result = hw.export_onnx(model, example, args.output, dynamic_batch=args.dynamic_batch,
                                opset=args.opset, exporter=args.exporter, progress=step)
    report = None
    if args.check:
        report = _parity(console, model, args.output, example, _quiet(args))
    if args.json:
        data = result.to_dict()
        if report is not None:
            data["parity"] = report.to_dict()
        _emit_json(args, json.dumps(data, indent=2))
    if not _quiet(args):
        if result.report and len(result.report):
            console.print(_table("conversion report", result.report.rows()))
        rows = [["opset", str(result.opset)], ["nodes", str(result.nodes)],
                ["ops", ", ".join(f"{k} {v}" for k, v in sorted(result.node_counts.items()))],
                ["random ops", ", ".join(f"{k} {v}" for k, v in result.random_ops.items()) or "none"],
                ["exporter", result.exporter], ["seconds", f"{result.seconds:.1f}"]]
        console.print(_table("export", [["", ""]] + rows))
        for note in result.notes:
            console.print(f"note: {_shown(note)}")
        console.print(_files_table(result.files))
        if report is not None:
            _show_report(console, report)
    return EXIT_OK if report is None or report else EXIT_FAILED


def cmd_check(args: argparse.Namespace) -> int:
    """Exit 0 if parity holds (and, with --strict, no warning), 1 if not, 2 for bad input."""
    import hookwrap as hw

    console = _console()
    if args.golden and (args.weights or args.inputs or args.bisect):
        raise UsageError("--weights, --inputs and --bisect need --reference: a golden file holds its own inputs")
    if args.plot and not args.bisect:
        raise UsageError("--plot needs --bisect")
    model, inputs = _check_subject(args)
    for path in (args.json, args.junit, args.plot):
        if path and path != "-":
            _output_folder(path)
    report = _parity(console, model, args.onnx, inputs, _quiet(args), samples=args.samples, seed=args.seed,
                     weights=args.weights, override_tolerance=args.override_tolerance, **_tolerances(args))
    if args.bisect and not report:
        try:
            with _status(console, "bisecting: comparing every module's output", _quiet(args)):
                report.bisect = hw.bisect(model, args.onnx, inputs, atol=report.atol, rtol=report.rtol)
        except hw.HookwrapError as exc:
            report.notes.append(f"bisect not run: {_one_line(exc)}")
        if args.plot and report.bisect is not None:
            report.bisect.plot(args.plot)
    if args.json:
        _emit_json(args, report.to_json())
    if args.junit:
        report.to_junit(args.junit)
    if _quiet(args):
        return _verdict(args, report, None)
    _show_report(console, report)
    if report.bisect is not None:
        console.print(_table("bisect: error per module", report.bisect.rows()))
        console.print(report.bisect.summary())
    for path in (args.json, args.junit, args.plot):
        if path and path != "-" and Path(path).exists():
            console.print(f"wrote {_shown(path)}")
    return _verdict(args, report, console)


def _verdict(args: argparse.Namespace, report: Any, console: Any) -> int:
    if args.strict and report.warnings:
        message = f"--strict: {len(report.warnings)} warning(s) make this check fail"
        if console is None:
            sys.stderr.write(f"hookwrap: {message}\n")
        else:
            console.print(f"[bold red]{message}[/bold red]")
        return EXIT_FAILED
    return EXIT_OK if report else EXIT_FAILED


def _check_subject(args: argparse.Namespace) -> tuple[Any, Any]:
    """The reference (a model, or the golden file's path) and the inputs of ``check``."""
    if args.golden:
        return args.golden, None
    model, example = load_spec(args.reference)
    return model, args.inputs if args.inputs else example


def cmd_record(args: argparse.Namespace) -> int:
    import hookwrap as hw

    if not args.output.endswith(".npz"):
        raise UsageError(f"--output must end with .npz, got {args.output!r}")
    console = _console()
    model, example = load_spec(args.spec)
    inputs = args.inputs or _need_example(example, args.spec, "record without --inputs")
    _output_folder(args.output)
    with _status(console, "recording the reference", _quiet(args)):
        meta = hw.record(model, inputs, args.output, samples=args.samples, seed=args.seed, onnx=args.onnx,
                         **_tolerances(args))
    size = Path(args.output).stat().st_size
    summary = {k: meta[k] for k in ("stochastic", "sets", "inputs", "outputs", "samples", "atol", "rtol")}
    if args.json:
        _emit_json(args, json.dumps({"output": args.output, "bytes": size, **summary, "warnings": meta["warnings"]},
                                    indent=2))
    if _quiet(args):
        return EXIT_OK
    console.print(_table(f"recorded {args.output}", [["", ""]] + [[k, str(v)] for k, v in summary.items()]))
    for warning in meta["warnings"]:
        console.print(f"warning: {_shown(warning)}")
    console.print(_files_table([Path(args.output)]))
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    """Exit 0 if the file is intact, 1 if it was changed or is damaged, 2 for bad input.
    Without torch (the gate's plain install) the header and every digest are checked, and
    the wrapper types are left to ``load``, which always checks them."""
    from . import _file
    from .errors import ManifestError

    check: Any = None
    try:
        from .io import check_wrapper_specs as check
    except ModuleNotFoundError as exc:
        if _missing_extra(exc) is None:
            raise
    try:
        with _bar(_console(), "verifying digests", _quiet(args)) as step:
            result = _file.verify(args.file, check, progress=step)
    except ManifestError as exc:
        if args.json:
            _emit_json(args, json.dumps({"path": args.file, "intact": False, "key": exc.key,
                                         "error": _one_line(exc)}, indent=2))
        if not _quiet(args):
            sys.stderr.write(f"hookwrap: CHANGED: {_one_line(exc)}\n")
        return EXIT_FAILED
    if args.json:
        _emit_json(args, result.to_json())
    if not _quiet(args):
        print(result.summary())
    return EXIT_OK


COMMANDS = {"inspect": cmd_inspect, "convert": cmd_convert, "export": cmd_export, "check": cmd_check,
            "record": cmd_record, "verify": cmd_verify}


def _one_line(exc: BaseException) -> str:
    text = " | ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text or type(exc).__name__


def _missing_extra(exc: BaseException | None) -> str | None:
    """The package of hookwrap's torch extra whose absence caused ``exc`` (anywhere in its
    chain: a factory that imports torch fails inside the SPEC loader), or None."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] in _TORCH_EXTRA:
            return (exc.name or "").split(".")[0]
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def _error_reports(args: argparse.Namespace, detail: str) -> None:
    """With --json/--junit, ``check`` writes its reports on exit 2 too, naming the cause."""
    if args.command != "check" or not (args.json or args.junit):
        return
    from .parity_report import error_report, write_error_reports

    try:
        if args.json == "-":
            print(json.dumps(error_report(detail, args.onnx), indent=2))
        write_error_reports(detail, onnx=args.onnx, json_path=None if args.json == "-" else args.json,
                            junit_path=args.junit)
    except Exception as exc:  # the error itself is what the user must see; say why no report too
        sys.stderr.write(f"hookwrap: could not write the error report: {_one_line(exc)}\n")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # say it where the user was: the subcommand's help lists its options
        _subcommands(parser).get(args.command or "", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    try:
        return COMMANDS[args.command](args)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        sys.stderr.write("hookwrap: interrupted\n")
        return 130
    except BaseException as exc:
        if args.debug:
            traceback.print_exc()
        known = isinstance(exc, UsageError) or type(exc).__module__.startswith("hookwrap")
        detail = _one_line(exc)
        missing = _missing_extra(exc)
        if missing:
            detail = (f"hookwrap {args.command} needs {missing}, which this install does not have: "
                      f"pip install 'hookwrap[torch]' (check --golden needs no torch)")
        elif not known:
            detail = f"{type(exc).__name__}: {detail}"
        _error_reports(args, detail)
        hint = "" if args.debug else " (--debug shows the traceback)"
        sys.stderr.write(f"hookwrap: error: {detail}{hint}\n")
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
