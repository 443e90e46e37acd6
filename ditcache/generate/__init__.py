"""``ditcache generate``: many samples on one or many processes (torchrun), sharded, resumable, bit-stable.

How it works:

* The N sample indices are cut into fixed chunks aligned on the global index: chunk ``c`` is indices
  ``[c*B, (c+1)*B)`` (the last one shorter). A chunk is always sampled as one batch, so its numbers do not
  depend on which process computes it or on how many there are (BLAS results depend on the batch) (chunks.py).
* Sample ``i`` gets class ``classes[i % len(classes)]`` (default: all classes, balanced) and its own noise
  seed, derived from the global ``--seed`` and ``i`` only (compiler/runtime/seeds.py, the rule the quality
  benchmarks use) — never from the rank.
* Rank 0 checks the output folder (``run.json`` records the arguments and their hash), validates every
  finished shard (checksum, indices, hash), drops corrupt and half-written ones (output.py), and broadcasts the
  list of missing chunks; every rank takes ``missing[rank::world]`` (round-robin), samples them and writes one
  shard per chunk atomically (shards.py; ``<name>.tmp-<pid>``, fsync, ``os.replace``, folder fsync: files.py).
* After all ranks are done, rank 0 checks that every index 0..N-1 is present exactly once and streams the
  shards into the standard sample batch ``samples_NxHxWxC.npz`` (``arr_0``: uint8 N×H×W×C, ``arr_1``: class
  labels; what guided-diffusion's / DiT's FID evaluator reads), written atomically and byte-deterministic
  (merge.py). Latent models without ``--vae`` store latents and get ``latents_NxCxHxW.npz`` (float32) instead.

Without torchrun it runs as one process with no process group. Under torchrun the process group uses
gloo on CPU and nccl on CUDA (one GPU per local rank) (distributed.py). The output folder must be shared by all
nodes. The command line is ditcache/cli/generate.py.
"""

from .config import DEFAULT_CHUNK_SIZE, GenerateConfig
from .job import generate
from .output import RUN_FILE, SUMMARY_FILE

__all__ = ["DEFAULT_CHUNK_SIZE", "GenerateConfig", "RUN_FILE", "SUMMARY_FILE", "generate"]
