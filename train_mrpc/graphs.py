"""The training step as CUDA graphs (``--cuda_graphs on``): one graph per static batch length, replayed.

Why: a bert-base step of 32 MRPC pairs took 33-48 ms on an H100 in eager mode for ~3 ms of arithmetic; Python and
~3,000 kernel launches a step set the speed (benchmarks/results/h100/). A replayed graph launches the whole step
(forward, backward, clipping, fused AdamW) as one unit, so the host no longer paces the GPU.

How, and what it bypasses:

- Batches come from ``train_mrpc.static_batches``: the same input tensors (one set per bucket length) are filled
  in place each step, so a graph captured once per length reads each step's batch from the addresses it recorded.
- Warm-up: a few eager steps per length on a side stream (cuBLAS handles, the optimizer's state, autocast) before
  capture, as torch's whole-network capture recipe does. They are kept out of the run: the weights, the
  optimizer's state and the CUDA random state are copied before and written back in place after, and the
  scheduler is not stepped, so the run has exactly its scheduled optimizer steps and starts from the same point.
- Inside the graph: ``model(**inputs).loss``, ``loss.backward()``, ``accelerator.clip_grad_norm_`` and the
  prepared optimizer's ``step()``. Accelerate's model wrapper (autocast) and optimizer wrapper run as recorded.
  Bypassed: ``accelerator.accumulate`` (graphs refuse gradient accumulation, so every micro-step is an optimizer
  step) and ``accelerator.backward`` (with one process, no GradScaler and no accumulation it is
  ``loss.backward()``); fp16, FSDP, DeepSpeed and several processes are refused (``resolve_cuda_graphs``).
- The learning rate is a device tensor (``model.build_optimizer``); the prepared scheduler writes each step's value
  into it in place between replays, and the graph reads it.
- The optimizer is the loop's fused AdamW, its groups marked ``capturable`` (torch refuses to capture ``step()``
  otherwise); a fused AdamW keeps its step count on the device either way.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext

from train_mrpc.errors import UserError

WARMUP_STEPS = 3  # eager steps per length before capture (torch's recipe uses 3; 11 for DDP)


def resolve_cuda_graphs(
    requested: str,
    *,
    static_shapes: str,
    mixed_precision: str,
    torch_compile: bool,
    gradient_accumulation_steps: int,
    distributed_type: str,
    num_processes: int,
    device_type: str,
) -> bool:
    """Whether the step runs as CUDA graphs; ``on`` with what cannot be graphed is refused in one line.

    ``auto`` is off: the graph path has not yet run on a GPU here, and auto turns on only after a GPU run shows
    the win (issue 27)."""
    if requested != "on":
        return False
    if static_shapes == "off":
        raise UserError("--cuda_graphs on replays fixed batch shapes: drop --static_shapes off (auto turns them on)")
    if mixed_precision == "fp16":
        raise UserError(
            "--cuda_graphs on cannot graph fp16: its GradScaler checks every step for overflow on the host; "
            "use --precision bf16 (or fp32), or --cuda_graphs off"
        )
    if torch_compile:
        raise UserError(
            "--cuda_graphs on and --torch_compile both take over the step: drop one (torch.compile's own graphs: "
            "--torch_compile --torch_compile_mode reduce-overhead --cuda_graphs off)"
        )
    if gradient_accumulation_steps > 1:
        raise UserError(
            f"--cuda_graphs on graphs whole optimizer steps, not the micro-steps of --gradient_accumulation_steps "
            f"{gradient_accumulation_steps}: use a larger --per_device_train_batch_size instead, or --cuda_graphs off"
        )
    if distributed_type in ("FSDP", "DEEPSPEED"):
        raise UserError(
            f"--cuda_graphs on cannot graph {distributed_type}: it gathers and frees parameters with its own hooks "
            "and streams during the step; launch without it or use --cuda_graphs off"
        )
    if num_processes > 1:
        raise UserError(
            f"--cuda_graphs on runs one process; this launch has {num_processes} (DDP's gradient all-reduce is not "
            "captured here): launch one process, or --cuda_graphs off"
        )
    if device_type != "cuda":
        raise UserError(f"--cuda_graphs on needs a CUDA GPU; this run trains on {device_type}: use --cuda_graphs off")
    return True


def learning_rates_as_tensors(optimizer, device) -> None:
    """Make every parameter group's learning rate a tensor on ``device`` (in place where it already is one).

    A graph records a float learning rate as a constant: the schedule would stop at the value of the capture. A
    checkpoint saved by a run with float rates loads floats back, so this runs again before every capture."""
    import torch

    for group in optimizer.param_groups:
        lr = group["lr"]
        if not (isinstance(lr, torch.Tensor) and lr.device == torch.device(device)):
            group["lr"] = torch.tensor(float(lr), dtype=torch.float32, device=device)


class TrainingSnapshot:
    """The weights, optimizer state and CUDA random state, copied, and written back in place.

    In place, because a captured graph holds the addresses of the tensors it reads and writes. Optimizer state
    created after the snapshot (a fresh run's first steps create AdamW's moments) is zeroed on restore, which is
    exactly the state a fresh AdamW starts from (moments 0, step 0)."""

    def __init__(self, model, optimizer) -> None:
        import torch

        self.model, self.optimizer = model, optimizer
        self.params = [p.detach().clone() for p in model.parameters()]
        self.state = {
            id(p): {k: v.clone() if torch.is_tensor(v) else v for k, v in optimizer.state[p].items()}
            for group in optimizer.param_groups
            for p in group["params"]
            if p in optimizer.state
        }
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        self.cpu_rng = torch.get_rng_state()

    def restore(self) -> None:
        import torch

        with torch.no_grad():
            for p, saved in zip(self.model.parameters(), self.params):
                p.copy_(saved)
            for group in self.optimizer.param_groups:
                for p in group["params"]:
                    saved = self.state.get(id(p), {})
                    for key, value in self.optimizer.state.get(p, {}).items():
                        if not torch.is_tensor(value):
                            self.optimizer.state[p][key] = saved.get(key, 0)
                        elif key in saved:
                            value.copy_(saved[key])
                        else:
                            value.zero_()
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)
        torch.set_rng_state(self.cpu_rng)


class GraphedTrainingStep:
    """``step(inputs) -> (loss, grad_norm)`` replaying the graph captured for ``inputs``' length.

    ``inputs`` must be one of the static input dicts given at construction (one per bucket length), already filled
    with the step's batch. The returned tensors are the graph's outputs: read them (the meters add them on the
    device) before the next replay overwrites them. ``capture=False`` runs the same warm-up, restore and step body
    eagerly: the CPU tests check the bookkeeping with it; the loop uses it nowhere."""

    def __init__(
        self,
        accelerator,
        model,
        optimizer,
        static_inputs: dict[int, dict],
        max_grad_norm: float,
        warmup_steps: int = WARMUP_STEPS,
        capture: bool = True,
    ) -> None:
        self.accelerator, self.model, self.optimizer = accelerator, model, optimizer
        self.max_grad_norm = max_grad_norm
        self.capture = capture
        self.warmup_steps = warmup_steps
        self.graphs: dict[int, tuple] = {}
        self.static_inputs: dict[int, dict] = {}
        self.pool = None  # the memory pool every graph of this step shares
        learning_rates_as_tensors(optimizer, accelerator.device)
        if capture:  # torch refuses to capture step() otherwise (Optimizer._accelerator_graph_capture_health_check);
            for group in optimizer.param_groups:  # the fused kernel is the same either way
                group["capturable"] = True
        self.add_lengths(static_inputs)

    def _body(self, inputs: dict):
        """What one replay does: the loop's training_step without its accumulate/backward wrappers (see above)."""
        loss = self.model(**inputs).loss
        loss.backward()
        grad_norm = None
        if self.max_grad_norm > 0:
            grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        self.optimizer.step()
        return loss.detach(), grad_norm

    def add_lengths(self, static_inputs: dict[int, dict]) -> None:
        """Warm up on, then capture, one graph per length of ``static_inputs`` (length -> input tensors)."""
        import torch

        snapshot = TrainingSnapshot(self.model, self.optimizer)
        for inputs in static_inputs.values():  # valid contents for the warm-up; each step refills them
            inputs["attention_mask"].fill_(1)
            inputs["labels"].fill_(0)
        self.model.train()
        side = torch.cuda.Stream() if self.capture else None
        if side is not None:
            side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side) if side is not None else nullcontext(), warnings.catch_warnings():
            # torch warns once that a capturable optimizer is stepping outside a capture: the warm-up is meant to.
            warnings.filterwarnings("ignore", message="This instance was constructed with capturable=True")
            for inputs in static_inputs.values():
                for _ in range(self.warmup_steps):
                    self.optimizer.zero_grad(set_to_none=True)
                    self._body(inputs)
        if side is not None:
            torch.cuda.current_stream().wait_stream(side)
        for length, inputs in static_inputs.items():
            self.static_inputs[length] = inputs
            # Gradients are created inside each graph (set to None first), in one memory pool the graphs share:
            # they replay one at a time, and each one's outputs are read before the next replays.
            self.optimizer.zero_grad(set_to_none=True)
            if not self.capture:
                self.graphs[length] = (None, None)
                continue
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                outputs = self._body(inputs)
            self.pool = graph.pool()
            self.graphs[length] = (graph, outputs)
        snapshot.restore()  # the warm-up steps leave no trace (capturing itself runs nothing)

    def __call__(self, inputs: dict):
        length = inputs["input_ids"].shape[1]
        if inputs["input_ids"] is not self.static_inputs[length]["input_ids"]:  # a graph reads only its own buffers
            raise RuntimeError(f"the batch of length {length} is not in the static buffers the graph was captured on")
        graph, outputs = self.graphs[length]
        if graph is None:
            self.optimizer.zero_grad(set_to_none=True)
            return self._body(inputs)
        graph.replay()
        return outputs
