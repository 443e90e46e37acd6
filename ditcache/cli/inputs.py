"""What the sampling commands read from their arguments: the model, the schedule, the prompts."""

from __future__ import annotations

import argparse
import sys


def sampling_defaults(args: argparse.Namespace, spec) -> None:
    """Fill --scheduler and --guidance left out with the model's defaults."""
    if getattr(args, "scheduler", None) is None:
        args.scheduler = spec.sampler
    if getattr(args, "guidance", None) is None:
        args.guidance = spec.guidance_scale


def prompts(args: argparse.Namespace, spec):
    """The prompt embeddings of a text-conditioned model (None for class-conditional ones), from --embeddings or
    encoded from --prompt with --text-encoder."""
    from ditcache.compiler.runtime.prompts import PromptEmbeddings, encode_prompts

    given = [flag for flag, value in (("--embeddings", args.embeddings), ("--text-encoder", args.text_encoder),
                                      ("--prompt", args.prompt)) if value]
    if not spec.text_conditioned:
        if given:
            raise ValueError(f"{spec.name} is class-conditional: {given[0]} applies to text-conditioned models; "
                             f"give --classes")
        return None
    if args.classes:
        raise ValueError(f"{spec.name} is text-conditioned: give prompts (--embeddings or --text-encoder with "
                         f"--prompt), not --classes")
    if args.embeddings and (args.text_encoder or args.prompt):
        raise ValueError("give either --embeddings FILE or --text-encoder DIR with --prompt, not both")
    if args.embeddings:
        return PromptEmbeddings.load(args.embeddings)
    if args.text_encoder:
        if not args.prompt:
            raise ValueError("--text-encoder encodes --prompt TEXT [TEXT ...]: give the prompts")
        return encode_prompts(args.text_encoder, args.prompt, args.negative_prompt, max_length=int(spec.text_length))
    raise ValueError(f"{spec.name} is text-conditioned: give --embeddings FILE (precomputed text-encoder "
                     f"embeddings) or --text-encoder DIR --prompt TEXT ...")


def load(args: argparse.Namespace):
    """(spec, model, weights info) of --model/--weights/--random-weights; fills the sampling defaults."""
    from ditcache.graphs.registry import get_spec
    from ditcache.graphs.weights import load_model

    spec = get_spec(args.model)
    sampling_defaults(args, spec)
    model, info = load_model(spec, args.weights, args.random_weights)
    if info.random:
        print(f"WARNING: {spec.name} has RANDOM weights ({info.source}): timings are real, images are noise",
              file=sys.stderr)
    return spec, model, info


def schedule(args: argparse.Namespace):
    """--schedule (checked against --steps), or the full schedule of --steps (default 50)."""
    from ditcache.graphs.schedule import full_schedule, load_schedule

    if args.schedule:
        loaded = load_schedule(args.schedule)
        if args.steps is not None and args.steps != loaded.steps:
            raise ValueError(f"--steps {args.steps} contradicts the schedule's steps: {loaded.steps}; drop --steps")
        return loaded
    return full_schedule(args.steps or 50)
