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

# name: (module:attribute of its Command, one-line help shown by `invmon --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("invmon.stages.synth:SYNTH", "write synthetic bins in ABID's layout and schema"),
    "ingest": ("invmon.stages.ingest:INGEST", "copy bin images and metadata from S3"),
    "ingest-plan": (
        "invmon.stages.ingest:PLAN",
        "cut a bucket into parts for parallel ingest",
    ),
    "ingest-merge": ("invmon.stages.ingest:MERGE", "join the parts of a parallel ingest"),
    "arrange": ("invmon.stages.arrange:ARRANGE", "label bins by count and split train/val/test"),
    "preprocess": (
        "invmon.stages.preprocess:PREPROCESS",
        "decode and resize once into training shards",
    ),
    "tune": ("invmon.stages.tune:TUNE", "search learning rate, batch size and epochs"),
    "train": ("invmon.stages.train:TRAIN", "train the ResNet50 counting model"),
    "evaluate": ("invmon.stages.evaluate:EVALUATE", "evaluate a model on the test split"),
    "deploy": (
        "invmon.stages.deploy:DEPLOY",
        "create or update the KServe InferenceService, wait for Ready, smoke-test it",
    ),
    "register": (
        "invmon.stages.register:REGISTER",
        "record a model version, its metrics and lineage in the Kubeflow Model Registry",
    ),
    "serve": ("invmon.stages.serve:SERVE", "serve a model folder with KServe until stopped"),
    "monitor": (
        "invmon.stages.monitor:MONITOR",
        "watch a predictor's logged predictions for drift against the model's reference",
    ),
    "predict": ("invmon.stages.predict:PREDICT", "count items in images with a running predictor"),
    "audit": (
        "invmon.stages.audit:AUDIT",
        "flag bins whose photo disagrees with their recorded count",
    ),
    "audit-plan": (
        "invmon.stages.audit_parts:PLAN",
        "cut the bins into key ranges for a parallel audit",
    ),
    "audit-merge": (
        "invmon.stages.audit_parts:MERGE",
        "rank the flags of an audit's parts together into one review",
    ),
    "doctor": (
        "invmon.stages.doctor:DOCTOR",
        "check a cluster before a run: versions, permissions, storage, Secrets, GPU nodes",
    ),
    "recount": (
        "invmon.stages.recount:RECOUNT",
        "send flagged bins to be recounted (export) and read the counts back (import)",
    ),
    "compile": ("invmon.pipelines.compile:COMPILE", "compile the pipeline to Kubeflow IR YAML"),
    "submit": (
        "invmon.pipelines.submit:SUBMIT",
        "compile and start a run on a Kubeflow Pipelines server",
    ),
    "run": ("invmon.pipelines.local_run:RUN", "run the whole pipeline locally (kfp.local)"),
}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``invmon train: error: argument --lr: ...``)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def load(name: str):
    """The Command registered as ``name`` (its module is imported now)."""
    module, _, attribute = COMMANDS[name][0].partition(":")
    return getattr(importlib.import_module(module), attribute)


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
