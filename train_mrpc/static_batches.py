"""Static training shapes (``--static_shapes``): every batch has the same row count and one of a few fixed lengths,
gathered on the device from token tensors that were copied there once.

Why: a CUDA graph replays fixed shapes reading fixed addresses. So here

- the train split's columns (input ids, attention mask, token type ids where the tokenizer makes them, labels) are
  padded once to the longest bucket and kept on the accelerator's device, with each row's length on the host;
- each bucket length has its own static input tensors, ``[per_device_batch, length]``, the same tensor objects every
  step: a batch is gathered into them in place (``index_select(out=...)``), and a graph captured on them replays
  reading each new batch;
- the rows, their order and their split between processes are the ordinary loader's: a DataLoader over row indices
  with the same sampler, batch size and generator, prepared by Accelerate like the ordinary one (seedable sampler,
  ``set_epoch``, ``even_batches``, ``skip_first_batches`` on resume, the sampler's state in checkpoints). A whole
  epoch's indices are read on the host at its start and copied to the device once: no per-step host-to-device copy
  and no loader workers;
- a short last batch is filled up with a filler row (a copy of the shortest example) whose label is -100, which the
  classification losses ignore (``CrossEntropyLoss``'s ``ignore_index``: the mean is over the real rows), so a run
  equals the dynamic-padding run up to float summation order. Extra padding columns change nothing either: the
  attention mask gives them zero weight, and only the first token feeds the classifier.

One thing differs: dropout draws its masks over the padded shape, so with dropout on the random stream (not the
expected result) differs from a dynamic-padding run's; ``run_identity`` therefore records the choice.

The loop sees one thing from either loader: :class:`TrainBatch` from :func:`epoch_batches`.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import combinations

from train_mrpc.errors import UserError

LENGTH_MULTIPLE = 8  # tensor cores; a larger --pad_to_multiple_of (or --torch_compile's 32) is used instead
MAX_BUCKETS = 3
MIN_GAIN = 0.05  # a further bucket must save at least this fraction of the padded tokens
ORDER_EPOCHS = 3  # epochs of the run's own batch order that the buckets are chosen over
IGNORED_LABEL = -100  # torch's CrossEntropyLoss ignore_index, which transformers' classification losses use


@dataclass(frozen=True)
class TrainBatch:
    """One micro-batch as the training loop uses it, from the ordinary loader or the static one."""

    inputs: dict  # model(**inputs); with static shapes the bucket's static tensors (filler rows included)
    rows: int  # real rows (examples trained on), known on the host
    tokens: object  # real tokens: a host int (static shapes) or a 0-d device tensor (dynamic padding)


def resolve_static_shapes(requested: str, graphs_on: bool) -> bool:
    """``--static_shapes`` auto|on|off as a yes or no: auto is on exactly where CUDA graphs are (they replay fixed
    shapes); graphs cannot run with static shapes off."""
    if requested == "off" and graphs_on:
        raise UserError(
            "--static_shapes off, but --cuda_graphs replays fixed shapes and needs them: use --static_shapes on "
            "or auto, or --cuda_graphs off"
        )
    return requested == "on" or (requested == "auto" and graphs_on)


def check_static_shapes(config, static_shapes: bool) -> None:
    """Refuse, in one line, what cannot run with static shapes (before anything is loaded)."""
    if not static_shapes:
        return
    asked = "--static_shapes on" if config.static_shapes == "on" else "--static_shapes auto (on with --cuda_graphs)"
    if config.dataloader_num_workers > 0:
        raise UserError(
            f"{asked} keeps the training data on the device and gathers each batch there, so no loader workers "
            f"run: drop --dataloader_num_workers {config.dataloader_num_workers} (or use --static_shapes off)"
        )


# --- bucket lengths ----------------------------------------------------------------------------------


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def batch_maxima(lengths: Sequence[int], orders: Iterable[Sequence[int]], batch_size: int) -> Counter:
    """How many batches of ``batch_size`` consecutive rows of each order have each longest length."""
    maxima = Counter()
    for order in orders:
        order = list(order)
        for start in range(0, len(order), batch_size):
            maxima[max(lengths[i] for i in order[start : start + batch_size])] += 1
    return maxima


def padded_tokens(buckets: Sequence[int], maxima: Counter, batch_size: int) -> int:
    """Tokens the static batches hold (real and padding): each batch is ``batch_size`` rows at its bucket."""
    return batch_size * sum(count * min(b for b in buckets if b >= m) for m, count in maxima.items())


def choose_buckets(
    lengths: Sequence[int],
    batch_size: int,
    orders: Iterable[Sequence[int]],
    max_length: int,
    multiple: int = LENGTH_MULTIPLE,
    max_buckets: int = MAX_BUCKETS,
    min_gain: float = MIN_GAIN,
) -> tuple[int, ...]:
    """The bucket lengths (ascending) that minimise the padded tokens of the batches the run draws.

    ``orders``: row orders the run's sampler gives (its first epochs), cut into batches of ``batch_size``; each batch
    goes to the smallest bucket that holds its longest row. The top bucket holds the longest training example
    (rounded up to ``multiple``, never above ``max_length``); the others are multiples of ``multiple``. Few buckets:
    each is one more CUDA graph to capture (memory and start-up time) and one more shape for torch.compile, so a
    bucket is added only while it saves at least ``min_gain`` of the padded tokens, up to ``max_buckets``. For each
    count the best set is found exhaustively (an optimal bucket is always some batch's longest row rounded up).
    """
    if not lengths or max(lengths) > max_length:
        raise ValueError(f"row lengths must be 1 to max_length ({max_length}); got up to {max(lengths, default=0)}")
    top = min(round_up(max(lengths), multiple), max_length)
    maxima = batch_maxima(lengths, orders, batch_size)
    if not maxima:
        return (top,)
    candidates = sorted({round_up(m, multiple) for m in maxima} - {top})
    candidates = [c for c in candidates if c < top]
    # Batches whose longest row is at most x, for every x up to top: a set's cost is then a sum over its buckets.
    at_most = [0] * (top + 1)
    for m, count in maxima.items():
        at_most[m] += count
    for x in range(1, top + 1):
        at_most[x] += at_most[x - 1]

    def cost(buckets: tuple[int, ...]) -> int:
        below, total = 0, 0
        for b in buckets:
            total += b * (at_most[b] - below)
            below = at_most[b]
        return total

    best = (cost((top,)), (top,))
    for extra in range(1, max_buckets):
        if len(candidates) < extra:
            break
        found = min((cost((*lower, top)), (*lower, top)) for lower in combinations(candidates, extra))
        if found[0] > (1 - min_gain) * best[0]:
            break
        best = found
    return best[1]


# --- the loader --------------------------------------------------------------------------------------


def row_index_loader(train_loader):
    """A DataLoader over the train split's row indices with ``train_loader``'s order: the same sampler (or shuffle
    and generator seed), batch size and last-batch rule. Its batches are lists of ints, which Accelerate's device
    placement leaves on the host, so it is prepared like the ordinary loader and shards the same way."""
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    rows = range(len(train_loader.dataset))
    generator = torch.Generator().manual_seed(train_loader.generator.initial_seed())
    if type(train_loader.sampler) is RandomSampler:  # Accelerate swaps it for its seedable sampler, as before
        order = {"shuffle": True}
    else:
        order = {"sampler": copy.deepcopy(train_loader.sampler)}
    return DataLoader(
        rows,
        batch_size=train_loader.batch_size,
        drop_last=train_loader.drop_last,
        collate_fn=list,
        generator=generator,
        **order,
    )


def _make_filler_row(padded: dict, lengths: list[int]) -> dict:
    """The filler row: a copy of the shortest example (a real attention mask, no all-masked row for SDPA to turn
    into NaN) whose label is ignored by the loss."""
    shortest = min(range(len(lengths)), key=lengths.__getitem__)
    row = {name: column[shortest : shortest + 1].clone() for name, column in padded.items()}
    row["labels"].fill_(IGNORED_LABEL)
    return row


class StaticShapeBatches:
    """The training batches of a run with static shapes (see the module's docstring).

    For graph capture: ``buckets`` (the lengths, ascending), ``buffers(length)`` (the static input dict of one
    bucket: the tensors every batch of that length is gathered into), ``batch_size``; ``len()`` is the optimizer
    micro-batches per epoch and process, as the ordinary loader's.
    """

    def __init__(
        self, index_loader, dataset, tokenizer, accelerator, max_length: int, pad_to_multiple_of: int | None
    ) -> None:
        import torch
        from accelerate.state import GradientState
        from transformers import DataCollatorWithPadding

        self.index_loader, self.accelerator = index_loader, accelerator
        self.gradient_state = GradientState()  # this loader tells Accelerate where an epoch ends, as its loaders do
        self.end_of_dataloader, self.remainder = False, -1
        self.batch_size = index_loader.total_batch_size // accelerator.num_processes  # per process
        if "idx" in dataset.column_names:
            dataset = dataset.remove_columns("idx")
        self.lengths = [len(ids) for ids in dataset["input_ids"]]
        # Multiples of 8, and of --pad_to_multiple_of (or --torch_compile's 32) where one is set; at most max_length
        # (or what check_padded_length allowed: max_length rounded up to that multiple).
        multiple = math.lcm(LENGTH_MULTIPLE, pad_to_multiple_of or 1)
        limit = round_up(max_length, pad_to_multiple_of) if pad_to_multiple_of else max_length
        self.orders = self._sampler_orders(ORDER_EPOCHS)
        self.buckets = choose_buckets(self.lengths, self.batch_size, self.orders, limit, multiple)
        self.top = self.buckets[-1]
        # The ordinary collator's padding (pad token, type ids, side), to the top bucket once for every row.
        collate = DataCollatorWithPadding(tokenizer, padding="max_length", max_length=self.top)
        padded = dict(collate([dict(zip(dataset.column_names, row)) for row in zip(*dataset.to_dict().values())]))
        self.right_padded = tokenizer.padding_side == "right"
        filler = _make_filler_row(padded, self.lengths)
        self.filler_row = len(self.lengths)  # its index: after the real rows
        device = accelerator.device
        self.columns = {name: torch.cat([column, filler[name]]).to(device) for name, column in padded.items()}
        # One static input dict per bucket, holding a valid batch from the start (the first rows), so that a graph
        # can be captured before the first step.
        first = (torch.arange(self.batch_size) % len(self.lengths)).to(device)
        self._buffers = {length: self._gather(first, length, into=None) for length in self.buckets}

    def __len__(self) -> int:
        return len(self.index_loader)

    def buffers(self, length: int) -> dict:
        """The static inputs of the bucket of ``length``: the same tensors at every step of that length."""
        return self._buffers[length]

    def bucket_of(self, longest: int) -> int:
        return next(b for b in self.buckets if b >= longest)

    def describe(self, pad_to_multiple_of: int | None) -> str:
        """One line: the buckets and the padding they cost, against dynamic padding, over the epochs chosen on."""
        maxima = batch_maxima(self.lengths, self.orders, self.batch_size)
        static = padded_tokens(self.buckets, maxima, self.batch_size)
        real = sum(self.lengths) * len(self.orders)
        dynamic = 0
        for order in self.orders:
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                dynamic += len(rows) * round_up(max(self.lengths[i] for i in rows), pad_to_multiple_of or 1)
        return (
            f"static shapes: batches of {self.batch_size} rows at lengths {', '.join(map(str, self.buckets))} "
            f"(padding {1 - real / static:.0%} of their tokens; dynamic padding: {1 - real / dynamic:.0%})"
        )

    def identity(self) -> list[int]:
        """What a checkpoint records: the bucket lengths (dropout's random stream follows the padded shapes)."""
        return list(self.buckets)

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[TrainBatch]:
        """The batches of ``epoch``, the first ``skip`` left out (a resumed run); each gathered into its bucket's
        static tensors, which the next batch of that length overwrites."""
        import torch

        # this process's rows of the whole epoch, on the host
        index_batches = list(epoch_of(self.index_loader, self.accelerator, epoch, skip))
        if not index_batches:
            return
        table = torch.full((len(index_batches), self.batch_size), self.filler_row, dtype=torch.long)
        for i, rows in enumerate(index_batches):
            table[i, : len(rows)] = torch.tensor(rows, dtype=torch.long)
        table = table.to(self.accelerator.device)  # once an epoch
        self.begin()
        try:
            for i, rows in enumerate(index_batches):
                lengths = [self.lengths[r] for r in rows]
                # The last batch ends the epoch for Accelerate too: a short accumulation there still steps.
                self.end_of_dataloader = i == len(index_batches) - 1
                length = self.bucket_of(max(lengths))
                inputs = self._gather(table[i], length, into=self._buffers[length])
                yield TrainBatch(inputs, len(rows), sum(lengths))
        finally:
            self.end()

    # Accelerate's GradientState reads end_of_dataloader from the loader it is iterating (accumulate() syncs at
    # an epoch's end with it), as DataLoaderStateMixin.begin/end register its own loaders.
    def begin(self) -> None:
        self.end_of_dataloader, self.remainder = False, -1
        self.gradient_state._add_dataloader(self)

    def end(self) -> None:
        self.gradient_state._remove_dataloader(self)

    def _gather(self, rows, length: int, into: dict | None) -> dict:
        """The rows ``rows`` (a device index tensor) at ``length``, written in place into ``into`` (a bucket's static
        tensors), or into new tensors when it is None."""
        import torch

        gathered = {}
        for name, column in self.columns.items():
            if column.dim() == 2:  # padded on the right: the first ``length`` columns; on the left: the last
                column = column[:, :length] if self.right_padded else column[:, self.top - length :]
            out = {} if into is None else {"out": into[name]}
            gathered[name] = torch.index_select(column, 0, rows, **out)
        return gathered if into is None else into

    def _sampler_orders(self, epochs: int) -> list[list[int]]:
        """The global row orders of the run's first epochs, from a copy of the prepared loader's sampler (this
        process's batches are every Nth batch of it, so every process chooses the same buckets)."""
        batches = self.index_loader.batch_sampler
        while not hasattr(batches, "sampler"):  # Accelerate's per-process shard of a batch sampler
            batches = batches.batch_sampler
        sampler = copy.deepcopy(batches.sampler)
        orders = []
        for epoch in range(epochs):
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            orders.append(list(sampler))
        return orders


def epoch_batches(loader, accelerator, epoch: int, skip: int = 0) -> Iterator[TrainBatch]:
    """The training batches of ``epoch`` from either loader, the first ``skip`` left out (a run resumed mid-epoch)."""
    if isinstance(loader, StaticShapeBatches):
        return loader.epoch(epoch, skip)
    batches = epoch_of(loader, accelerator, epoch, skip)
    return (TrainBatch(batch, len(batch["labels"]), batch["attention_mask"].sum()) for batch in batches)


def epoch_of(prepared_loader, accelerator, epoch: int, skip: int = 0):
    """A prepared loader's batches of ``epoch``, the first ``skip`` left out. The epoch is set on the prepared loader
    itself: one from skip_first_batches cannot pass it down to the sampler, which then replays an earlier epoch's
    order (accelerate issue 2016)."""
    prepared_loader.set_epoch(epoch)
    return accelerator.skip_first_batches(prepared_loader, skip) if skip else prepared_loader


def static_shapes_identity(loader) -> list[int] | bool:
    """For ``run_identity``: the bucket lengths of a static-shapes run, False for dynamic padding."""
    return loader.identity() if isinstance(loader, StaticShapeBatches) else False
