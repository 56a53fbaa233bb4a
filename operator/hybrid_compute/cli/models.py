"""The model commands: ``vram`` (estimate a GGUF model's GPU memory), ``fetch`` (download
a model file, a slot's init container) and ``eval`` (run a slot's evaluation now)."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from hybrid_compute.plan.vram import CACHE_TYPES

    vram_command = commands.add_parser(
        "vram", help="estimate the GPU memory a llama-server needs for a GGUF model")
    vram_command.add_argument("model", nargs="?", metavar="MODEL.gguf",
                              help="the model file (only its header is read)")
    vram_command.add_argument("--ctx", type=int, default=8192,
                              help="--ctx-size: KV cells shared by all sequences (default 8192)")
    vram_command.add_argument("--parallel", type=int, default=1,
                              help="--parallel: sequences decoded at once (default 1)")
    vram_command.add_argument("--flash-attn", action="store_true",
                              help="flash attention on (needed for a quantised KV cache)")
    vram_command.add_argument("--cache-type-k", default="f16", choices=CACHE_TYPES,
                              help="K cache type (default f16)")
    vram_command.add_argument("--cache-type-v", default="f16", choices=CACHE_TYPES,
                              help="V cache type (default f16)")
    vram_command.add_argument("--n-gpu-layers", type=int, default=None,
                              help="layers offloaded to the GPU (default: all)")
    vram_command.add_argument("--ubatch-size", type=int, default=512,
                              help="--ubatch-size: tokens per micro-batch (default 512)")
    vram_command.add_argument("--seed-table", action="store_true",
                              help="the seed's models, estimated beside the seed's VRAM column")
    vram_command.set_defaults(handler=_vram)

    fetch = commands.add_parser(
        "fetch", help="download a model file onto the node (a slot's init container): "
                      "resumes, verifies SHA-256, skips a file already there")
    fetch.add_argument("--url", help="plain URL of the file")
    fetch.add_argument("--hf-repo", metavar="OWNER/NAME", help="Hugging Face repository")
    fetch.add_argument("--hf-file", metavar="PATH", help="file in the repository")
    fetch.add_argument("--hf-revision", default="main",
                       help="branch, tag or commit (default main); the endpoint comes from "
                            "$HF_ENDPOINT (default https://huggingface.co)")
    fetch.add_argument("--dest", required=True, help="where the file goes (no '..' segment)")
    fetch.add_argument("--root", metavar="FOLDER",
                       help="the models folder --dest must stay inside")
    fetch.add_argument("--sha256", help="expected SHA-256 (64 hex digits)")
    fetch.add_argument("--attempts", type=int, default=5,
                       help="connections tried, each resuming the partial file (default 5)")
    fetch.add_argument("--progress-file",
                       help="JSON progress file (default: DEST.fetch.json); the token, if "
                            "any, comes from $HF_TOKEN")
    fetch.set_defaults(handler=_fetch)

    eval_command = commands.add_parser(
        "eval", help="run a ModelSlot's spec.evaluation against its endpoint now and print "
                     "each prompt's checks (exit 1 when it fails)")
    eval_command.add_argument("slot", metavar="SLOT", help="the ModelSlot's name")
    eval_command.add_argument("-n", "--namespace", default="default",
                              help="its namespace (default: default)")
    eval_command.add_argument("--endpoint", metavar="URL",
                              help="OpenAI base URL to send the prompts to, e.g. "
                                   "http://127.0.0.1:8080/v1 after kubectl port-forward "
                                   "(default: the slot's status.endpoint)")
    eval_command.add_argument("--kubeconfig",
                              help="kubeconfig file (default: $KUBECONFIG, in-cluster)")
    eval_command.set_defaults(handler=_eval)


def _vram(args: argparse.Namespace) -> int:
    from hybrid_compute.plan import vram

    if args.seed_table:
        print(vram.seed_table(vram.seed_rows()))
        return 0
    if args.model is None:
        print("error: name a GGUF file, or pass --seed-table", file=sys.stderr)
        return 2
    settings = vram.ServerSettings(
        ctx_size=args.ctx, parallel=args.parallel, flash_attn=args.flash_attn,
        cache_type_k=args.cache_type_k, cache_type_v=args.cache_type_v,
        gpu_layers=args.n_gpu_layers, ubatch_size=args.ubatch_size)
    try:
        shape = vram.read_shape(Path(args.model))
        result = vram.estimate(shape, settings)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(vram.describe(shape, settings, result))
    return 0



def _fetch(args: argparse.Namespace) -> int:
    from hybrid_compute.fetch.download import (
        TOKEN_ENV,
        ExitCode,
        FetchRequest,
        destination_problem,
        hugging_face_url,
        run_fetch,
    )

    if bool(args.url) == bool(args.hf_repo):
        print("error: give either --url or --hf-repo with --hf-file", file=sys.stderr)
        return int(ExitCode.USAGE)
    if args.hf_repo and not args.hf_file:
        print("error: --hf-repo needs --hf-file", file=sys.stderr)
        return int(ExitCode.USAGE)
    if args.attempts < 1:
        print("error: --attempts must be at least 1", file=sys.stderr)
        return int(ExitCode.USAGE)
    if args.sha256 and not re.fullmatch(r"[0-9a-fA-F]{64}", args.sha256):
        print("error: --sha256 takes 64 hexadecimal digits", file=sys.stderr)
        return int(ExitCode.USAGE)
    problem = destination_problem(args.dest, args.root)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return int(ExitCode.USAGE)
    url = args.url or hugging_face_url(args.hf_repo, args.hf_file, args.hf_revision)
    request = FetchRequest(url=url, dest=Path(args.dest), sha256=args.sha256 or None,
                           token=os.environ.get(TOKEN_ENV) or None, attempts=args.attempts)
    return run_fetch(request, progress_file=Path(args.progress_file)
                     if args.progress_file else None)



def _eval(args: argparse.Namespace) -> int:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from hybrid_compute.api.common import GROUP, VERSION
    from hybrid_compute.control import clock, evaluator, kube
    from hybrid_compute.plan import evaluation
    from hybrid_compute.plan.objects import slot_from_object
    from hybrid_compute.render.children import served_name

    try:
        api = kube.load_client(args.kubeconfig)
        body = client.CustomObjectsApi(api).get_namespaced_custom_object(
            GROUP, VERSION, args.namespace, "modelslots", args.slot)
    except ApiException as error:
        print(f"error: cannot read ModelSlot {args.namespace}/{args.slot}: {error.status} "
              f"{error.reason}", file=sys.stderr)
        return 2
    except Exception as error:  # no kubeconfig, no cluster
        print(f"error: cannot reach the cluster: {error}", file=sys.stderr)
        return 2
    slot = slot_from_object(body)
    if slot.spec is None:
        print(f"error: the spec is invalid: {slot.invalid_reason}", file=sys.stderr)
        return 2
    if slot.spec.evaluation is None:
        print(f"error: {args.namespace}/{args.slot} has no spec.evaluation", file=sys.stderr)
        return 2
    endpoint = args.endpoint or slot.status.endpoint
    if not endpoint:
        print("error: the slot's status names no endpoint yet; pass --endpoint "
              "(e.g. after kubectl port-forward svc/SLOT PORT: "
              "--endpoint http://127.0.0.1:PORT/v1)", file=sys.stderr)
        return 2
    name = served_name(slot.spec)
    model = evaluation.model_fingerprint(slot.spec.model)
    print(f"evaluating {name} (model {model}) of {slot.spec.alias} at {endpoint}")
    result = evaluator.run(slot.spec.evaluation, endpoint, name, model, clock.now)
    print(evaluation.report(result))
    return 0 if result.passed else 1
