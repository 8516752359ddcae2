"""Generation overlapped with training: a generator process with its own copy of the policy samples the next
step's rollouts while the learner trains on the current ones (GRPO's async_generation).

The design is deterministic one-step-off pipelining ("one-off" asynchronous RL: the generator runs exactly
one update behind). Step t (the learner at version t-1, that many updates done):

1. generate(): the rollouts of step t, requested during step t-1 and sampled from version t-2 weights: lag 1
   (the first step after a start or a resume has no earlier request: generated now, from version t-1, lag 0);
2. prefetch(): the trainer draws step t+1's prompts and hands them over; the generator takes the weights it
   was last given (version t-1) and samples them while the learner scores, updates and evaluates step t;
3. sync_weights() after the update: the learner copies its trained weights into a shared-memory copy of the
   model and raises the version counter to t. It first waits until every request handed over has taken its
   weights, so a request is always sampled from the version that was current when it was made.

Each request carries its own seed (from the run's seed, the version and its place among that version's
requests), so a run with a given seed samples the same tokens whatever the timing of the two processes.

Why the forkserver start method, not a plain fork or spawn: by the time generation starts the learner has
live threads (torch's OpenMP pool, TensorBoard's writer, a tracker's uploader), and a fork copies their locks
in whatever state they are in; libgomp in particular can hang a child forked after its parent ran a parallel
region. Spawn is safe but pays an interpreter start and the imports of torch and transformers for every
generator (seconds; ~15 s on a loaded 2-core machine). The forkserver pays them once per learner process: a
clean single-threaded server, started by spawn, imports this module and the model's modules, and every
generator is a fork of it (~0.2 s). The server stays, idle, until the learner process exits. Python's rule
for spawn-like methods applies: a script that trains with async generation guards its entry point with
`if __name__ == "__main__":`.

The generator ignores SIGINT and SIGTERM (a Ctrl-C or a scheduler's signal to the process group must let
the learner finish its update and save, as proximo/stopping.py promises); it leaves when the learner sends
it away, when the learner dies (its parent-process check; on Linux also PR_SET_PDEATHSIG, fired when the
forkserver, which exits with the learner, goes), or by SIGKILL from close().
"""
from __future__ import annotations

import copy
import ctypes
import multiprocessing
import os
import queue
import signal
import sys
import time
import weakref
from contextlib import nullcontext
from typing import Sequence

import torch

from proximo.errors import GenerationProcessError
from proximo.llm.generation import Rollout, Sampler, generate

_POLL_S = 0.2  # how often a wait checks that the other process is still alive


def request_seed(seed: int, version: int, index: int) -> int:
    """The sampling seed of a request: the index-th one made while the weights were at version (a 63-bit int)."""
    return (seed * 1_000_003 + version * 1_009 + index) % (2 ** 63 - 1)


class AsyncProcessSampler(Sampler):
    """A Sampler whose rollouts come from a generator process one update behind (see the module docstring).
    AsyncProcessSampler(seed, threads, timeout_s, dtype): threads is the generator's torch thread count;
    timeout_s bounds every wait (start, a batch, taking weights); dtype is the autocast dtype of its passes
    (None: float32). Its log-probs are an older policy's, so exact_logprobs is False and GRPO corrects them."""

    exact_logprobs = False
    pipelined = True

    def __init__(self, seed: int = 1, threads: int = 1, timeout_s: float = 900.0,
                 dtype: torch.dtype | None = None) -> None:
        self.seed, self.threads, self.timeout_s, self.dtype = int(seed), int(threads), float(timeout_s), dtype
        self.process = None
        self._finalizer = None
        self._reset()

    def _reset(self) -> None:
        self._pending: tuple[int, tuple] | None = None   # (request id, its arguments) of the prefetched batch
        self._untaken: set[int] = set()                  # requests that have not copied their weights yet
        self._done: dict[int, tuple] = {}                # finished batches not yet collected
        self._discard: set[int] = set()                  # requests whose batch nobody will collect
        self._next_id = 0
        self._version_requests = (None, 0)               # (version, requests made at it): the seed's index
        self._state: tuple | None = None

    # the learner's side ---------------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        """True while the generator process runs."""
        return self.process is not None and self.process.is_alive()

    @property
    def pid(self) -> int | None:
        """The generator process's id (None before it starts and after close)."""
        return None if self.process is None else self.process.pid

    def _start(self, model) -> None:
        """Start the generator (a fork of the forkserver) with a shared-memory copy of model (every weight, at
        policy_version)."""
        ctx = multiprocessing.get_context("forkserver")
        # The server imports this module (torch, transformers) once per learner process; each generator is then
        # a fork of that clean, single-threaded server: no import cost per run, none of the learner's threads.
        # The model's own modules too (transformers imports a family's code on first use, peft its layers).
        ctx.set_forkserver_preload([__name__, *sorted({type(m).__module__ for m in model.modules()})])
        shared = copy.deepcopy(model).eval()
        for p in shared.parameters():
            p.requires_grad_(False)
        shared.share_memory()
        # What a publish copies: the trained parameters (a LoRA run: the adapter alone; the frozen rest was
        # copied once, here).
        mine = dict(shared.named_parameters())
        self._pairs = [(p, mine[name]) for name, p in model.named_parameters() if p.requires_grad]
        names = [name for name, p in model.named_parameters() if p.requires_grad]
        self._version = ctx.Value("q", int(self.policy_version))
        self._requests, self._results = ctx.Queue(), ctx.Queue()
        self._shared = shared
        process = ctx.Process(target=_generator_main, name="proximo-generator", daemon=True,
                              args=(shared, names, self._version, self._requests, self._results, self.threads,
                                    self.dtype))
        process.start()
        self.process = process
        # Interpreter exit or garbage collection without close(): still no process left behind.
        self._finalizer = weakref.finalize(self, _shutdown, process, self._requests, self._results)
        # No wait for it to be ready: requests queue up meanwhile, and the first batch's wait covers the start.

    def _submit(self, model, args: tuple) -> int:
        """Hand one generation request to the generator (started on first use); returns its id."""
        if self.process is None:
            self._start(model)
        version = int(self._version.value)
        last, count = self._version_requests
        index = count if last == version else 0
        self._version_requests = (version, index + 1)
        rid = self._next_id
        self._next_id += 1
        prompt_ids, prompt_mask, *rest = args
        self._requests.put(("generate", rid, version, prompt_ids.cpu().numpy(), prompt_mask.cpu().numpy(),
                            *rest, request_seed(self.seed, version, index)))
        self._untaken.add(rid)
        return rid

    def prefetch(self, model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int,
                 eos_id: int | Sequence[int], pad_id: int, temperature: float = 1.0, repeats: int = 1) -> None:
        """Start sampling the batch the next generate() with these arguments will ask for, from the weights
        the generator has now (prompt_ids [B, P] left-padded)."""
        args = (prompt_ids, prompt_mask, max_new_tokens, _stop_ids(eos_id), pad_id, float(temperature), repeats)
        if self._pending is not None:
            self._discard.add(self._pending[0])
        self._pending = (self._submit(model, args), args)

    def generate(self, model, prompt_ids, prompt_mask, max_new_tokens, eos_id, pad_id, temperature=1.0,
                 repeats=1) -> Rollout:
        """The prefetched batch when these are its arguments (waiting for it), else one sampled now; rows
        carry the policy_version of the weights that sampled them."""
        args = (prompt_ids, prompt_mask, max_new_tokens, _stop_ids(eos_id), pad_id, float(temperature), repeats)
        if self._pending is not None and _same_request(self._pending[1], args):
            rid, self._pending = self._pending[0], None
        else:  # another batch (a dynamic-sampling draw): the prefetched one stays pending for its own call
            rid = self._submit(model, args)
        self._receive(lambda: rid in self._done, "a batch")
        version, seconds, arrays = self._done.pop(rid)
        self.last_seconds = seconds
        prompts, prompt_mask_out, tokens, mask, logprobs = (torch.from_numpy(a) for a in arrays)
        return Rollout(prompts, prompt_mask_out, tokens, mask, logprobs,
                       policy_version=torch.full((tokens.shape[0],), version, dtype=torch.long))

    def sync_weights(self, model) -> None:
        """Publish model's trained weights as version policy_version, once every request made so far has
        copied the weights it was made with (nothing to do before the generator starts: it starts from model)."""
        if self.process is None or int(self._version.value) == int(self.policy_version):
            return  # not started (it starts from model), or these weights are the published ones
        self._receive(lambda: not self._untaken, "to take its weights")
        with torch.no_grad():
            for source, shared in self._pairs:
                shared.copy_(source.detach())
        self._version.value = int(self.policy_version)

    def generator_state(self) -> tuple[int, dict[str, torch.Tensor]]:
        """(version, every parameter and buffer by name) of the generator's own model, after it took the
        latest published weights (for tests and checks)."""
        if self.process is None:
            raise GenerationProcessError("the generation process has not started (it starts with the first batch)")
        self._state = None
        self._requests.put(("state",))
        self._receive(lambda: self._state is not None, "its weights")
        _, version, arrays = self._state
        self._state = None
        return version, {name: torch.from_numpy(a) for name, a in arrays.items()}

    def close(self) -> None:
        """Send the generator away (SIGKILL when it does not leave within seconds) and forget its requests."""
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        self.process = None
        self._shared = self._pairs = None
        self._reset()

    def _receive(self, ready, what: str) -> None:
        """Read the generator's messages until ready() holds; GenerationProcessError (in one line) when it
        failed, died, or sent nothing for timeout_s."""
        deadline = time.monotonic() + self.timeout_s
        while not ready():
            try:
                message = self._results.get(timeout=_POLL_S)
            except queue.Empty:
                if not self.process.is_alive():
                    code = self.process.exitcode
                    self.close()
                    raise GenerationProcessError(
                        f"the generation process died (exit code {code}) while the learner waited for {what}; "
                        "see the lines above for its cause (out of memory: lower prompts_per_step, or turn "
                        "async_generation off)") from None
                if time.monotonic() > deadline:
                    self.close()
                    raise GenerationProcessError(
                        f"the generation process sent nothing for {self.timeout_s:g} s while the learner waited "
                        f"for {what}; raise async_timeout_s if its batches take that long") from None
                continue
            kind = message[0]
            if kind == "error":
                self.close()
                raise GenerationProcessError(f"the generation process failed: {message[1]}")
            if kind == "taken":
                self._untaken.discard(message[1])
            elif kind == "done":
                _, rid, version, seconds, arrays = message
                if rid in self._discard:
                    self._discard.discard(rid)
                else:
                    self._done[rid] = (version, seconds, arrays)
            elif kind == "state":
                self._state = message


def _stop_ids(eos_id) -> int | tuple[int, ...]:
    return int(eos_id) if isinstance(eos_id, int) else tuple(int(i) for i in eos_id)


def _same_request(a: tuple, b: tuple) -> bool:
    """Whether two generation requests' arguments are equal (tensors by value)."""
    return (a[0].shape == b[0].shape and a[1].shape == b[1].shape and torch.equal(a[0].cpu(), b[0].cpu())
            and torch.equal(a[1].cpu(), b[1].cpu()) and a[2:] == b[2:])


def _shutdown(process, requests, results) -> None:
    """Ask the process to leave; kill it if it has not within 5 s; release the queues."""
    try:
        if process.is_alive():
            try:
                requests.put(None)
            except (ValueError, OSError):
                pass
            process.join(timeout=5.0)
        if process.is_alive():
            process.kill()
            process.join(timeout=5.0)
    finally:
        for q in (requests, results):
            q.cancel_join_thread()  # never block the learner's exit on a message nobody reads
            q.close()


# the generator's side -------------------------------------------------------------------------------------
def _die_with_parent() -> None:
    """On Linux, have the kernel SIGKILL this process when its parent (the forkserver) ends."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def _generator_main(shared, names: list[str], version_counter, requests, results, threads: int, dtype) -> None:
    """The generator process: its own copy of the policy, refreshed from `shared` when the version counter
    moved, answering generation requests in order until it receives None or the learner is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    try:
        if threads > 0:
            torch.set_num_threads(threads)
        model = copy.deepcopy(shared)  # its own weights: the learner may publish while this one samples
        local = dict(model.named_parameters())
        theirs = dict(shared.named_parameters())
        pairs = [(local[name], theirs[name]) for name in names]
        version = int(version_counter.value)
        parent = multiprocessing.parent_process()
        while True:
            try:
                message = requests.get(timeout=1.0)
            except queue.Empty:
                if parent is not None and not parent.is_alive():
                    return
                continue
            if message is None:
                return
            published = int(version_counter.value)
            if published != version:
                with torch.no_grad():
                    for mine, source in pairs:
                        mine.copy_(source)
                version = published
            if message[0] == "state":
                state = {name: t.detach().clone().numpy() for name, t in
                         [*model.named_parameters(), *model.named_buffers()]}
                results.put(("state", version, state))
                continue
            _, rid, expected, prompt_ids, prompt_mask, max_new_tokens, eos_id, pad_id, temperature, repeats, seed = \
                message
            if expected != version:  # the learner's publish waits for "taken": this cannot happen
                raise RuntimeError(f"request {rid} was made at weights version {expected} but version {version} "
                                   "is published")
            results.put(("taken", rid))
            started = time.perf_counter()
            generator = torch.Generator().manual_seed(seed)
            autocast = torch.autocast("cpu", dtype=dtype) if dtype is not None else nullcontext()
            with autocast:
                rollout = generate(model, torch.from_numpy(prompt_ids), torch.from_numpy(prompt_mask),
                                   max_new_tokens, eos_id if isinstance(eos_id, int) else list(eos_id), pad_id,
                                   temperature=temperature, generator=generator, repeats=repeats)
            seconds = time.perf_counter() - started
            arrays = tuple(t.numpy() for t in (rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids,
                                               rollout.response_mask, rollout.logprobs.float()))
            results.put(("done", rid, version, seconds, arrays))
    except BaseException as exc:  # noqa: BLE001 - whatever it is, the learner must hear it in one line
        try:
            results.put(("error", f"{type(exc).__name__}: {exc}"))
            time.sleep(0.5)  # let the queue's feeder thread hand the message over before the process ends
        finally:
            os._exit(1)

