"""Commands not yet converted to stage modules (transition only; see invmon.cli)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _print_json(data: dict) -> None:
    print(json.dumps(data, indent=2, default=str))


# -- stages ----------------------------------------------------------------------------------


def _add_s3_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint-url", help="S3-compatible endpoint URL (MinIO, moto, ...)")
    p.add_argument(
        "--anonymous",
        action="store_true",
        help="send unsigned requests (public buckets such as aft-vbi-pds)",
    )


def cmd_deploy(args) -> None:
    from invmon.cluster import inference_service as deploy

    if args.local:
        sample = args.sample or _synthetic_sample()
        _print_json(deploy.deploy_local(args.model_uri, sample, name=args.name).to_dict())
        return
    spec = _service_spec(args)
    if args.dry_run:
        import yaml

        print(yaml.safe_dump(deploy.render_inference_service(spec), sort_keys=False), end="")
        return
    image = (
        Path(args.sample).read_bytes() if args.sample else Path(_synthetic_sample()).read_bytes()
    )
    report = deploy.deploy_to_cluster(
        spec,
        image,
        model_dir=args.model,
        timeout=args.timeout,
        smoke_url=args.smoke_url,
        smoke_host=args.smoke_host,
    )
    _print_json(report.to_dict())


def _service_spec(args):
    from invmon.cluster import inference_service as deploy
    from invmon.cluster.container_images import DEFAULT_IMAGES

    return deploy.ServiceSpec(
        name=args.name,
        namespace=args.namespace or deploy.current_namespace(),
        model_uri=deploy.storage_uri(args.model_uri),
        image=args.image or DEFAULT_IMAGES.image("serve"),
        service_account=args.service_account,
        deployment_mode=args.deployment_mode,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        cpu=args.cpu,
        memory=args.memory,
        gpus=args.gpus,
        node_selector=dict(args.node_selector or []),
        tolerations=tuple(deploy.toleration(t) for t in args.toleration or []),
        canary_traffic_percent=args.canary_traffic_percent,
    )


def _synthetic_sample() -> str:
    import tempfile

    from invmon.data.synth import make_bin

    _, jpeg, _, _ = make_bin(seed=0, number=1, max_items=5)
    path = Path(tempfile.mkdtemp()) / "sample.jpg"
    path.write_bytes(jpeg)
    return str(path)


def _percent(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be between 0 and 100, got {value}")
    return value


def _deploy_parser(sub) -> None:
    from invmon.cluster.inference_service import DEPLOYMENT_MODES

    p = sub.add_parser(
        "deploy",
        description="Create or update a KServe InferenceService for the model, wait until it is "
        "Ready (failing with its conditions otherwise) and check a smoke request. --dry-run "
        "prints the manifest; --local serves a model folder on loopback instead.",
    )
    p.add_argument(
        "--model-uri",
        required=True,
        help="s3:// URI of the model folder (with --local: a local model folder)",
    )
    p.add_argument("--name", default="bin-counter", help="service and model name")
    p.add_argument(
        "--namespace", default="", help="Kubernetes namespace (default: this pod's, or default)"
    )
    p.add_argument("--image", help="predictor image (default: the project's serving image)")
    p.add_argument(
        "--service-account",
        default="invmon-s3",
        help="ServiceAccount whose Secret carries KServe's S3 settings",
    )
    p.add_argument("--deployment-mode", choices=DEPLOYMENT_MODES, default="Standard")
    p.add_argument("--min-replicas", type=_non_negative_int, default=1)
    p.add_argument("--max-replicas", type=_positive_int, default=2)
    p.add_argument("--cpu", default="1", help="CPU request and limit per replica (default 1)")
    p.add_argument("--memory", default="2Gi", help="memory request and limit (default 2Gi)")
    p.add_argument("--gpus", type=_non_negative_int, default=0, help="GPUs per replica")
    p.add_argument(
        "--node-selector",
        type=_key_value,
        action="append",
        metavar="KEY=VALUE",
        help="node label the predictor must run on (repeatable)",
    )
    p.add_argument(
        "--toleration",
        action="append",
        metavar="KEY[=VALUE]:EFFECT",
        help="node taint the predictor tolerates (repeatable)",
    )
    p.add_argument(
        "--canary-traffic-percent",
        type=_percent,
        help="on update in Knative mode: share of traffic for the new revision",
    )
    p.add_argument("--timeout", type=_positive_float, default=600, help="seconds to wait for Ready")
    p.add_argument("--model", help="local copy of the model folder: the smoke answer must match it")
    p.add_argument("--smoke-url", help="URL for the smoke request (default: the service's own)")
    p.add_argument("--smoke-host", help="Host header for the smoke request (ingress routing)")
    p.add_argument("--dry-run", action="store_true", help="print the manifest, apply nothing")
    p.add_argument(
        "--local",
        action="store_true",
        help="serve --model-uri (a folder) on loopback and send real requests",
    )
    p.add_argument("--sample", help="image for the smoke request (default: a synthetic bin)")
    p.set_defaults(func=cmd_deploy)


class _Reuse:
    """Stands in for the subparsers object the old builders expect: hands back the parser the
    registry made."""

    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser

    def add_parser(self, name, help=None, description=None):
        self.parser.description = description
        return self.parser


class _Legacy:
    """A command still defined by an argparse builder and a cmd_* function (being converted to a
    stage module with settings; see invmon.core.command.Command)."""

    def __init__(self, builder: Callable, description: str = ""):
        self.builder, self.description = builder, description

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        self.builder(_Reuse(parser))

    def execute(self, args) -> None:
        args.func(args)


deploy = _Legacy(_deploy_parser)
