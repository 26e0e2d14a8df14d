"""The ``invmon`` command: a registry of subcommands, one per stage, plus the pipeline commands.

Each entry names the module that defines the command (a :class:`invmon.core.command.Command`:
the stage's settings class, its ``run`` function and how a result is printed) and its one-line
help. Only the module of the command being run is imported, so ``invmon --help`` and the light
commands start without PyTorch, kserve or kfp. Bad values end with a one-line error that names
them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from invmon.core.command import Incomplete

PROG = "invmon"

# name: (module:attribute of its Command, a leading dot for invmon., its `invmon --help` line)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": (".stages.synth:SYNTH", "write synthetic bins in ABID's layout and schema"),
    "ingest": (".stages.ingest:INGEST", "copy bin images and metadata from S3"),
    "ingest-plan": (".stages.ingest:PLAN", "cut a bucket into parts for parallel ingest"),
    "ingest-merge": (".stages.ingest:MERGE", "join the parts of a parallel ingest"),
    "arrange": (".stages.arrange:ARRANGE", "label bins by count and split train/val/test"),
    "preprocess": (".stages.preprocess:PREPROCESS", "decode and resize once into training shards"),
    "tune": (".stages.tune:TUNE", "search learning rate, batch size and epochs"),
    "train": (".stages.train:TRAIN", "train the ResNet50 counting model"),
    "evaluate": (".stages.evaluate:EVALUATE", "evaluate a model on the test split"),
    "deploy": (".stages.deploy:DEPLOY", "roll a model out as an InferenceService; smoke-test it"),
    "register": (".stages.register:REGISTER", "record a model's lineage in the Model Registry"),
    "prebuild": (".stages.prebuild:PREBUILD", "build the serving engine ahead of time"),
    "serve": (".stages.serve:SERVE", "serve a model folder with KServe until stopped"),
    "monitor": (".stages.monitor:MONITOR", "watch a predictor's logged answers for drift"),
    "predict": (".stages.predict:PREDICT", "count items in images with a running predictor"),
    "audit": (".stages.audit:AUDIT", "flag bins whose photo disagrees with their recorded count"),
    "audit-plan": (".stages.audit_parts:PLAN", "cut the bins into key ranges for a parallel audit"),
    "audit-merge": (".stages.audit_parts:MERGE", "rank the flags of all parts into one review"),
    "doctor": (".stages.doctor:DOCTOR", "check a cluster before a run: RBAC, storage, GPUs"),
    "recount": (".stages.recount:RECOUNT", "export flagged bins for a recount; import the counts"),
    "compile": (".pipelines.compile:COMPILE", "compile the pipeline to Kubeflow IR YAML"),
    "submit": (".pipelines.submit:SUBMIT", "compile and start a run on a Kubeflow Pipelines host"),
    "run": (".pipelines.local_run:RUN", "run the whole pipeline locally (kfp.local)"),
}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``invmon train: error: argument --lr: ...``)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def load(name: str):
    """The Command registered as ``name`` (its module is imported now)."""
    module, _, attribute = COMMANDS[name][0].partition(":")
    return getattr(importlib.import_module(module, package="invmon"), attribute)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``invmon`` parser: every subcommand in full, or only ``only`` in full (the others are
    listed with their help line; ``only=""`` lists them all that way)."""
    parser = _Parser(
        prog=PROG,
        description="Count items in warehouse bin photos: a Kubeflow "
        "pipeline from S3 to a KServe predictor.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    for name, (_, help_line) in COMMANDS.items():
        if only is not None and only != name:
            sub.add_parser(name, help=help_line)
            continue
        command = load(name)
        p = sub.add_parser(name, help=help_line, description=command.description)
        command.add_options(p)
        p.set_defaults(command_object=command)
    return parser


def _command(argv: list[str]) -> str:
    """The subcommand named in ``argv`` ("" when there is none or it is unknown)."""
    words = [word for word in argv if not word.startswith("-")]
    return words[0] if words and words[0] in COMMANDS else ""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``invmon`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(only=_command(argv)).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        text = args.command_object.execute(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
        return 2
    except Incomplete as err:
        if err.output:
            print(err.output)
        for line in err.details:
            print(line, file=sys.stderr)
        print(f"{PROG} {args.command}: failed: {err}", file=sys.stderr)
        return 1
    except (RuntimeError, TimeoutError) as err:
        print(f"{PROG} {args.command}: failed: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    if text:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
