"""The one command line: `fer-kaggle`, `python -m fer_kaggle` and `bash run.sh` are the same program.

    fer-kaggle [run] TRAIN TEST OUT [options]   the whole competition run ("run" may be left out)
    fer-kaggle ensemble [--all]                 re-blend a run on disk into a submission
    fer-kaggle report --out DIR                 the analysis report of a run
    fer-kaggle predict PHOTO...                 emotions of the faces in photos
    fer-kaggle export --out model.onnx          the run's ensemble as one ONNX graph
    fer-kaggle distill                          one small model: students of the run's ensemble
    fer-kaggle bench [SUBCOMMAND]               benchmarks (fer-kaggle bench --help lists them)

A first word that names a command is that command, even where a file or folder of that name exists
here: give such a folder as data with a slash (`./report`) or after the word run (`run report out.csv`).
`python -m fer_kaggle.<command>` is the same as `fer-kaggle <command>` (the files at the top of the package).
The options of `run` come from config.Config (name, type, help) and show each preset's values.
"""
import argparse
import dataclasses
import importlib
import importlib.metadata
import re
import signal
import sys
from pathlib import Path

from fer_kaggle._startup import quiet_interrupts
from fer_kaggle.core.config import PRESETS, Config
from fer_kaggle.core.errors import FerKaggleError, TimeLimitReached, machine_fault
from fer_kaggle.core.runfolder import HOME, find_default_run

COMMANDS = {  # word -> (module, one line of help); a module has add_arguments(parser) and command(args)
    "run": ("run.pipeline", "the whole competition run: folds, units, TTA, ensemble, pseudo-labels, submission"),
    "ensemble": ("blend.ensemble", "re-blend a run's models on disk into a submission"),
    "report": ("analysis.report", "the analysis report of a finished run (index.html and report.md)"),
    "predict": ("serve.predict", "emotions of the faces in photos or image folders, with a finished run"),
    "export": ("serve.export", "a finished run's ensemble (or one unit) as one ONNX graph"),
    "distill": ("student.distill", "one small model from a finished run: students of the kept ensemble's probabilities"),
    "bench": ("bench.benchmarks", "speed of training and inference, recipe ablations, a command's time and memory"),
}
READS_A_RUN = {"ensemble", "report", "predict", "export", "distill"}  # --workdir defaults to the run finished last


def split_command(argv):
    """(command word, the rest): the first word if it names a command, else "run" with everything."""
    if argv and argv[0] in COMMANDS:
        return argv[0], argv[1:]
    return "run", argv


# ---------------------------------------------------------------- run's options, from Config

def _shown(value):
    return ",".join(value) if isinstance(value, tuple) else str(value)


def preset_values(name):
    """'(default X)' when every preset agrees, else '(demo X, cpu Y, fast Z, full W)'."""
    values = {preset: getattr(cfg, name) for preset, cfg in PRESETS.items()}
    if all(value == "" for value in values.values()):
        return ""  # an empty default: the help says what stands in for it
    if len({_shown(v) for v in values.values()}) == 1:
        return f"(default {_shown(next(iter(values.values())))})"
    return "(" + ", ".join(f"{preset} {_shown(value)}" for preset, value in values.items()) + ")"


def _comma_list(text):
    return tuple(name for name in text.split(",") if name)


def add_config_options(parser):
    """One option per Config field: --epochs, --no-pseudo, ...; None when not given (the preset decides)."""
    for field in dataclasses.fields(Config):
        if field.name == "preset":
            continue
        meta, default = field.metadata, field.default
        help_text = f"{meta['help']} {preset_values(field.name)}".rstrip().replace("%", "%%")
        flag = f"--{field.name.replace('_', '-')}"
        if isinstance(default, bool):
            parser.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        else:
            kind = _comma_list if isinstance(default, tuple) else type(default)
            parser.add_argument(flag, dest=field.name, type=kind, choices=meta["choices"], default=None,
                                metavar=meta["metavar"], help=help_text)


def add_run_arguments(parser):
    parser.add_argument("paths", nargs="*", type=Path, metavar="PATH",
                        help="TRAIN TEST OUT (CSVs: label,feature and id,feature, or emotion,pixels and pixels; "
                        "or two image folders), or DATA OUT (fer2013.csv, icml_face_data.csv, or a folder with "
                        "train/ and test/), or nothing for the bundled demo; CSVs may be .gz or .xz")
    from fer_kaggle.data.inputs import FORMATS
    parser.add_argument("--format", choices=FORMATS, help="insist on one input form instead of recognising it")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="bundle of settings (default: demo without "
                        "files; with files, full where a CUDA device is present and cpu where not)")
    parser.add_argument("--workdir", type=Path, help="run folder for folds, units and cache (default: folds, "
                        "folds/demo for the demo)")
    parser.add_argument("--submissions", type=Path, help="folder for the named submission files "
                        "(default: submissions)")
    parser.add_argument("--report", type=Path, metavar="DIR", help="also write the analysis report "
                        "(index.html, report.md) here")
    add_config_options(parser)


# ---------------------------------------------------------------- the parser

def build_parser(command=None):
    """The parser; only `command`'s own options are built (a report's imports cost seconds)."""
    parser = argparse.ArgumentParser(
        prog="fer-kaggle", description="Win the FER2013 facial-expression competition with one command.",
        epilog="With no command word, the arguments are run's: fer-kaggle TRAIN TEST OUT [options]. "
               "A command word wins over a file or folder of that name: write ./NAME for the folder.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parser.commands = {}
    for word, (module, help_text) in COMMANDS.items():
        subparser = parser.commands[word] = sub.add_parser(
            word, help=help_text, description=help_text,
            epilog="Options left out take the preset's value (shown in brackets)." if word == "run" else None)
        if word == command:
            if word == "run":
                add_run_arguments(subparser)
            else:
                importlib.import_module(f"fer_kaggle.{module}").add_arguments(subparser)
    return parser


def options_markdown():
    """docs/options.md: every option of `run`, from the parser itself (tests/test_cli.py keeps the file current)."""
    run = build_parser("run").commands["run"]
    lines = ["# Options of `bash run.sh` (`fer-kaggle run`)", "",
             "Generated from the parser: `python -c 'from fer_kaggle.cli import options_markdown as o; "
             "print(o(), end=\"\")' > docs/options.md`. Options left out take the preset's value, shown in "
             "brackets (demo, cpu, fast, full).", "", "| option | what it does |", "| --- | --- |"]
    for action in run._actions:
        if not action.option_strings or action.dest == "help":
            continue
        flags = ", ".join(f"`{flag}`" for flag in action.option_strings)
        if action.choices:
            flags += " " + "\\|".join(map(str, action.choices))
        elif action.metavar or action.nargs != 0:
            flags += f" {action.metavar or action.dest.upper()}"
        help_text = (action.help or "").replace("%%", "%").replace("|", "\\|")
        lines.append(f"| {flags} | {help_text} |")
    return "\n".join(lines) + "\n"


def _default_run(args):
    """Fill --workdir of a command that reads a run, and say which run it is."""
    if getattr(args, "workdir", None) is None:
        folder, why = find_default_run(HOME)
        args.workdir = folder.path
        print(f"run folder: {folder} ({why})", file=sys.stderr)


def optional_modules():
    """{module: the optional extra that installs it}, from the installed package's own requirements
    (setup.cfg's extras: those of report and serve import under their distributions' names). Empty when the
    package is not installed."""
    try:
        requirements = importlib.metadata.requires("fer_kaggle") or []
    except importlib.metadata.PackageNotFoundError:
        requirements = []
    modules = {}
    for requirement in requirements:  # e.g. "captum>=0.8; extra == 'report'"
        match = re.match(r"([A-Za-z0-9_.-]+).*extra\s*==\s*['\"]([\w-]+)['\"]", requirement)
        if match:
            modules.setdefault(match.group(1).lower().replace("-", "_"), match.group(2))
    return modules


def missing_extra(exc, command):
    """One line for a command whose optional extra is not installed, or None when the missing module is not
    an extra's."""
    name = (exc.name or "").partition(".")[0]
    extra = optional_modules().get(name.lower())
    if extra is None:
        return None
    return (f"{command} needs {name}, part of the optional extra [{extra}]: pip install 'fer_kaggle[{extra}]' "
            f"(bash run.sh installs it)")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    with quiet_interrupts():  # a Ctrl-C while the libraries load: one line, not their traceback
        if argv[:1] in (["-h"], ["--help"]):  # the commands, then run's options: what run.sh users look for
            parser = build_parser("run")
            print(parser.format_help())
            print(parser.commands["run"].format_help())
            return 0
        command, rest = split_command(argv)
        try:
            args = build_parser(command).parse_args([command, *rest])
            module = importlib.import_module(f"fer_kaggle.{COMMANDS[command][0]}")
            report = None
            if command == "run" and args.report is not None:  # before training: a missing extra stops it at once
                from fer_kaggle.analysis import report  # matplotlib, captum, torchinfo: loaded only when asked for
        except ModuleNotFoundError as exc:
            message = missing_extra(exc, command)
            if message is None:
                raise
            print(f"error: {message}", file=sys.stderr)
            return 2
    try:
        if command in READS_A_RUN:
            _default_run(args)
        if getattr(args, "submissions", "") is None:  # run and ensemble: this project's submissions/
            args.submissions = HOME / "submissions"
        code = module.command(args)
        if report is not None:  # here, not in the pipeline: the analysis layer sits above the run's
            report.build(args.workdir, args.report)
            print(f"report: {args.report / 'index.html'} (and report.md)")
        return code
    except FerKaggleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the machine's fault (a full disk, a read-only folder): one line; any other: a bug
        message = machine_fault(exc, getattr(exc, "run_needs", None))
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 1
    except TimeLimitReached as exc:
        print(f"\ntime limit of {args.time_limit} minutes reached: {exc}; everything so far is saved. "
              f"Run the same command again to continue (exit status 3: not finished)", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume where it stopped", file=sys.stderr)
        return 130


def run_program(command=None):
    """`python -m fer_kaggle[.command] ARGS`: main, then the process's exit status."""
    code = main(([command] if command else []) + sys.argv[1:])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # done: a Ctrl-C now would only interrupt Python's own exit
    sys.exit(code)
