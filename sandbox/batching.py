"""Several trainings' calls of one slot function at once: under ``vmap``, else one training at a time.

A batched trainer (``Task.train_batch``) runs S trainings of equal shapes as one vectorised
training and calls the candidate's function once per step for all of them. Every tensor argument
of such a call has a leading dimension of size S (slice ``s`` belongs to training ``s``); every
plain argument (a ``beta``, a learning rate) is shared. The function is applied per training:

* **vmap** (the fast path): ``torch.func.vmap(fn)`` over the leading dimension, so a loss that
  reduces over its batch (``x.mean()``, ``x.shape[0]``) still sees only its own training's batch,
  and the whole batch costs one call;
* **loop** (the fallback): when the function cannot run under ``vmap`` (data-dependent Python
  control flow, ``.item()``, random numbers, in-place tricks, a non-tensor state), the first such
  failure switches this batch to calling a separate copy of the function per training, each with
  its own module globals and its own torch random-number stream seeded as a fresh sequential
  training would seed it, so the trainings still cannot see each other.

The switch is one way and recorded (:attr:`BatchedSlot.mode`, :attr:`BatchedSlot.fallback`). A
failure that is the candidate's own (a ``NameError``) fails under ``vmap``, falls back, and fails
again in the loop, where it is reported as it would be in a sequential training.

Used by the jailed function server and, for trusted functions run in process (reference
rules, tests), by the trusted side: both get the same semantics. Only torch is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

VMAP = "vmap"
LOOP = "loop"
#: characters of the exception message kept as the reason of a fallback
FALLBACK_CHARS = 200


def seeds_for(seed: int | list[int], batch: int) -> list[int]:
    """One random-number seed per training of a batch: ``seed`` as given (a list), or repeated."""
    return [int(s) for s in seed] if isinstance(seed, list) else [int(seed)] * batch


def _is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def _why(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:FALLBACK_CHARS]


class BatchedSlot:
    """The slot function of S trainings: :meth:`call` for a differentiable slot, :meth:`update` for an
    update rule. ``make()`` returns a fresh copy of the candidate's function (a new module run);
    ``seeds`` seeds each training's torch random numbers in the loop fallback (a sequential training
    seeds its fresh function server the same way)."""

    def __init__(self, make: Callable[[], Callable[..., Any]], batch: int, seeds: list[int] | None = None):
        if batch < 1:
            raise ValueError("a batch holds at least one training")
        self.make, self.batch = make, batch
        self.seeds = list(seeds) if seeds is not None else [0] * batch
        if len(self.seeds) != batch:
            raise ValueError(f"{len(self.seeds)} seeds for {batch} trainings")
        self.mode = VMAP
        self.fallback = ""
        self.fn = make()
        self._copies: list[Callable[..., Any]] = []
        self._rng: list[Any] = []
        #: per parameter index, the update rule's state: stacked tensors (vmap) or one dict per training (loop)
        self.states: dict[int, Any] = {}

    # -- the fallback ------------------------------------------------------------------------------
    def _give_up_vmap(self, exc: BaseException) -> None:
        import torch

        self.mode, self.fallback = LOOP, _why(exc)
        self._copies, self._rng = [], []
        saved = torch.get_rng_state()
        for seed in self.seeds:
            torch.manual_seed(seed)
            self._copies.append(self.make())  # the module's top level may draw numbers too
            self._rng.append(torch.get_rng_state())
        torch.set_rng_state(saved)
        for index, stacked in list(self.states.items()):  # stacked states become one dict per training
            self.states[index] = [
                {k: (v[s] if _is_tensor(v) else v) for k, v in stacked.items()} for s in range(self.batch)
            ]

    def _each(self, s: int, *args: Any) -> Any:
        """Training ``s``'s own copy, called with its own random-number stream."""
        import torch

        torch.set_rng_state(self._rng[s])
        try:
            return self._copies[s](*args)
        finally:
            self._rng[s] = torch.get_rng_state()

    # -- differentiable slots ----------------------------------------------------------------------
    def call(self, args: list[Any]) -> Any:
        """The function applied per training: a tensor [S, ...] (vmap, or loop outputs that stack), else
        the list of the S outputs as the function returned them (the trainer's checks name what is wrong)."""
        import torch

        if self.mode == VMAP:
            dims = tuple(0 if _is_tensor(a) else None for a in args)
            try:
                out = torch.func.vmap(self.fn, in_dims=dims, randomness="error")(*args)
                if _is_tensor(out):
                    return out
                raise TypeError(f"returned {type(out).__name__}, not a tensor")
            except Exception as exc:  # noqa: BLE001 - any failure under vmap means: one training at a time
                self._give_up_vmap(exc)
        outs = [self._each(s, *[a[s] if _is_tensor(a) else a for a in args]) for s in range(self.batch)]
        if all(_is_tensor(o) for o in outs) and len({(o.shape, o.dtype) for o in outs}) == 1:
            return torch.stack(outs)
        return outs

    # -- update rules ------------------------------------------------------------------------------
    def update(self, params: list[Any], grads: list[Any], lr: float, step: int) -> list[Any]:
        """Each parameter's new value, stacked [S, ...] like ``params`` (the rule's state stays here); in the
        loop, the list of the S values as the function returned them when they do not stack."""
        import torch

        if self.mode == VMAP:
            try:
                return self._update_vmap(params, grads, lr, step)
            except Exception as exc:  # noqa: BLE001 - as in :meth:`call`
                self._give_up_vmap(exc)
        new: list[Any] = []
        for i, (param, grad) in enumerate(zip(params, grads, strict=True)):
            states = self.states.setdefault(i, [{} for _ in range(self.batch)])
            outs = [self._each(s, param[s], grad[s], states[s], lr, step) for s in range(self.batch)]
            if all(_is_tensor(o) for o in outs) and len({(o.shape, o.dtype) for o in outs}) == 1:
                new.append(torch.stack(outs))
            else:  # the trainer's check names the first training whose value is wrong, and what is wrong
                new.append(outs)
        return new

    def _update_vmap(self, params: list[Any], grads: list[Any], lr: float, step: int) -> list[Any]:
        import torch

        fn = self.fn

        def one(param: Any, grad: Any, state: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
            state = dict(state)  # vmap hands in its own unflattened copy; the rule mutates it
            return fn(param, grad, state, lr, step), state

        results = []
        for i, (param, grad) in enumerate(zip(params, grads, strict=True)):
            results.append(torch.func.vmap(one, randomness="error")(param, grad, self.states.get(i, {})))
        # states are committed only when every parameter's step succeeded: a fallback restarts the step
        new = []
        for i, (value, state) in enumerate(results):
            if not _is_tensor(value):
                raise TypeError(f"returned {type(value).__name__}, not a tensor")
            self.states[i] = state
            new.append(value)
        return new
