"""Model and optimizer: a sequence-pair classifier with 2 labels, and AdamW with the usual decay groups."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from train_mrpc.config import TrainConfig
from train_mrpc.errors import UserError
from train_mrpc.hub import check_model_dir, is_hub_name, local_model_error, offline_error
from train_mrpc.schema import LABEL_NAMES
from train_mrpc.synthetic import TINY_MODEL, build_tiny_model


def load_tokenizer_and_model(config: TrainConfig):
    """Tokenizer and ``AutoModelForSequenceClassification`` from the Hub, a local directory or the tiny model."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    name = config.model_name_or_path
    if name == TINY_MODEL:
        tokenizer, model = build_tiny_model(config.seed)
    else:
        hub = is_hub_name(name)
        where = "model" if hub else "model directory"
        # A local folder's problems (missing, no config.json, no weights, custom code) are reported as
        # themselves; only a Hub id can be "not in the cache".
        load_error = offline_error if hub else local_model_error
        source = name if hub else str(check_model_dir(name, config.trust_remote_code))
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=config.trust_remote_code)
        except Exception as err:  # OSError offline or for a folder without tokenizer files
            raise load_error(f"tokenizer of {where}", name, err) from None
        if len(tokenizer) <= len(tokenizer.all_special_tokens):
            # transformers builds an empty-vocabulary tokenizer from config.json alone: every word would be [UNK].
            raise UserError(
                f"cannot load tokenizer of {where} '{name}': it has no tokenizer files (tokenizer.json, or a "
                f"vocabulary such as vocab.txt), so every word would be unknown ({len(tokenizer)} tokens, all special)"
            )
        kwargs = dict(
            trust_remote_code=config.trust_remote_code,
            ignore_mismatched_sizes=config.ignore_mismatched_sizes,
            num_labels=len(LABEL_NAMES),
            id2label=dict(enumerate(LABEL_NAMES)),
            label2id={label: i for i, label in enumerate(LABEL_NAMES)},
        )
        try:
            try:
                model = AutoModelForSequenceClassification.from_pretrained(
                    source, attn_implementation=config.attn_implementation, **kwargs
                )
            except ValueError as err:
                if "attn_implementation" not in str(err) and "sdpa" not in str(err).lower():
                    raise
                # Architectures without an SDPA path: fall back to the eager attention they do have.
                model = AutoModelForSequenceClassification.from_pretrained(
                    source, attn_implementation="eager", **kwargs
                )
        except Exception as err:
            if "ignore_mismatched_sizes" in str(err):  # a classification head for another label count
                raise UserError(
                    f"{where} '{name}' has a classification head for {head_labels(source, config)} labels, "
                    f"MRPC has {len(LABEL_NAMES)}: pass --ignore_mismatched_sizes true to replace it by a "
                    "new one (trained from scratch), or start from a model without that head"
                ) from None
            raise load_error(where, name, err) from None
    check_max_length(config.max_length, tokenizer, model, name)
    check_vocabulary(tokenizer, model, name)
    check_padding_token(tokenizer, model, name)
    check_fsdp_layer_classes(model, name)
    return tokenizer, model


def head_labels(source: str, config: TrainConfig) -> int | str:
    """How many labels a checkpoint's own classification head has, by its config."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=config.trust_remote_code).num_labels
    except Exception:
        return "another number of"


def check_vocabulary(tokenizer, model, name: str) -> None:
    """Every token id the tokenizer can give must have a row in the model's embedding (else an IndexError at
    the first step: a tokenizer copied from another model)."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise UserError(
            f"the tokenizer of model {name} has {len(tokenizer)} tokens, but the model's embedding has "
            f"{rows} rows: ids from {rows} on have none (a tokenizer of another model?); use the "
            "tokenizer saved with the model"
        )


def check_padding_token(tokenizer, model, name: str) -> None:
    """Batches of pairs are padded, so the tokenizer needs a padding token; a classifier that reads the last real
    token (GPT-2 and other decoders) finds it by the config's pad_token_id, which their configs often leave unset."""
    if tokenizer.pad_token_id is None:
        raise UserError(
            f"the tokenizer of model {name} has no padding token, which batches of sentence pairs need: "
            "give it one (for a decoder such as GPT-2, tokenizer.pad_token = tokenizer.eos_token) and "
            "save it with the model"
        )
    if getattr(model.config, "pad_token_id", 0) is None:
        model.config.pad_token_id = tokenizer.pad_token_id  # the id the batches are padded with: the same token


def check_padded_length(max_length: int, multiple: int | None, model, tokenizer, name: str, why: str) -> None:
    """A batch padded up to a multiple must still fit the model's positions (--max_length alone is checked above)."""
    if not multiple:
        return
    padded = -(-max_length // multiple) * multiple
    limit = position_limit(tokenizer, model)
    if padded > limit:
        raise UserError(
            f"{why} pads batches of up to --max_length {max_length} tokens to {padded}, beyond the {limit} "
            f"positions model {name} has: use a multiple that divides {limit}, or a smaller --max_length"
        )


def position_limit(tokenizer, model) -> int:
    """The longest input the model (and its tokenizer, where it says) supports."""
    limit = model.config.max_position_embeddings
    if tokenizer.model_max_length < 100_000:  # unset tokenizers report a huge sentinel
        limit = min(limit, tokenizer.model_max_length)
    return limit


def check_fsdp_layer_classes(model, name: str) -> None:
    """An FSDP launch wraps the layer classes its config names (fsdp.yaml: BertLayer): refuse a model without
    them here, in one line, rather than in a traceback from inside accelerator.prepare."""
    import os

    wanted = os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "")
    if (
        os.environ.get("ACCELERATE_USE_FSDP", "").lower() != "true"
        or not wanted
        or os.environ.get("FSDP_AUTO_WRAP_POLICY", "").upper() != "TRANSFORMER_BASED_WRAP"
    ):
        return
    present = {type(module).__name__ for module in model.modules()}
    missing = [cls for cls in wanted.split(",") if cls not in present]
    if missing:
        layers = sorted(c for c in present if c.endswith(("Layer", "Block")))
        raise UserError(
            f"the FSDP launch config wraps {', '.join(missing)}, which model {name} does not have (its layers: "
            f"{', '.join(layers) or 'none named *Layer or *Block'}): set fsdp_transformer_layer_cls_to_wrap in the "
            "config, or pass --fsdp_transformer_layer_cls_to_wrap to accelerate launch"
        )


def check_max_length(max_length: int, tokenizer, model, name: str) -> None:
    # Below one token of each sentence plus the special tokens, the Rust tokenizer gives up truncating (1 or 2
    # for BERT: whole pairs pass, however long) or keeps a sentence empty (3 or 4): refuse, per tokenizer
    # (BERT adds 3 special tokens to a pair, RoBERTa 4), so the floor is right for every model family.
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    if max_length < specials + 2:
        raise UserError(
            f"--max_length {max_length} is too short for a sentence pair with model {name}: its tokenizer adds "
            f"{specials} special tokens, so at least {specials + 2} are needed to keep a token of each sentence"
        )
    limit = position_limit(tokenizer, model)
    if max_length > limit:
        raise UserError(f"--max_length {max_length} is beyond what model {name} supports ({limit} tokens)")


def freeze_parameters(model, word_embeddings: bool, lower_layers: int, distributed_type: str) -> None:
    """--freeze_word_embeddings and --freeze_lower_layers: the frozen tensors keep their loaded values, so they need
    no gradient and no AdamW state.

    The word-embedding table is half of all-MiniLM-L6-v2's parameters; frozen, a step no longer writes a dense
    47 MB gradient for a table of which a batch uses a few hundred rows. Freezing all the embeddings and the
    lowest N layers also ends backward at layer N: nothing below it needs a gradient.
    """
    flag = "--freeze_lower_layers" if lower_layers else "--freeze_word_embeddings"
    if distributed_type in ("FSDP", "DEEPSPEED"):  # sharded wrappers flatten parameters: not tested frozen
        raise UserError(
            f"{flag} is tested with one process and DDP, not under {distributed_type}: "
            "launch with another config, or leave it out"
        )
    if lower_layers:  # checked before anything is frozen
        base = model.base_model
        layers = getattr(getattr(base, "encoder", None), "layer", None)
        if getattr(base, "embeddings", None) is None or layers is None:
            raise UserError(
                f"--freeze_lower_layers {lower_layers}: model {type(model).__name__} is not a BERT-style encoder "
                "(base_model.embeddings and base_model.encoder.layer); leave the flag out for it"
            )
        if lower_layers > len(layers):
            raise UserError(
                f"--freeze_lower_layers {lower_layers} is more than the model's {len(layers)} encoder layers; "
                f"expected 0 to {len(layers)}"
            )
        for module in (base.embeddings, *layers[:lower_layers]):
            module.requires_grad_(False)
    if word_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)


# The config fields transformers' encoders read their dropout rates from (BERT, RoBERTa, ELECTRA: the first three;
# DistilBERT: the last three); a None classifier_dropout means "hidden_dropout_prob" and stays None.
DROPOUT_CONFIG_FIELDS = (
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "classifier_dropout",
    "dropout",
    "attention_dropout",
    "seq_classif_dropout",
)


def set_dropout(model, p: float, name: str) -> None:
    """--dropout: every ``torch.nn.Dropout`` of the model drops with probability ``p``, and the model's config
    (saved with the trained model) says so. A model whose dropout is not made of such layers is refused."""
    import torch

    layers = [module for module in model.modules() if isinstance(module, torch.nn.Dropout)]
    if not layers:
        raise UserError(
            f"--dropout {p}: model {name} has no torch.nn.Dropout layers to set ({type(model).__name__}); "
            "leave the flag out for it"
        )
    for layer in layers:
        layer.p = p
    for field in DROPOUT_CONFIG_FIELDS:
        if getattr(model.config, field, None) is not None:
            setattr(model.config, field, p)


def build_optimizer(model, config: TrainConfig, fused: bool = False):
    """AdamW with weight decay on every weight except biases and LayerNorm parameters."""
    import torch
    from transformers.trainer_pt_utils import get_parameter_names

    decay = set(get_parameter_names(model, [torch.nn.LayerNorm], ["bias", "layernorm"]))
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in params if n in decay], "weight_decay": config.weight_decay},
        {"params": [p for n, p in params if n not in decay], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups,
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_epsilon,
        fused=fused or None,
    )


def deepspeed_master_weights(engine, state_dict: dict) -> dict:
    """The fp32 master weights in place of the bf16/fp16 copies a DeepSpeed engine computes with.

    Under DeepSpeed mixed precision the module's parameters are 16-bit; the fp32 weights the optimizer updates
    are split among the processes (ZeRO-1/2 partitions). Each is gathered (an all-reduce: every process calls
    this), so the saved model is the fp32 one, as under DDP and FSDP.
    """
    from deepspeed.utils import safe_get_full_fp32_param

    full = {name: safe_get_full_fp32_param(p) for name, p in engine.module.named_parameters()}
    return {k: full[k].detach().cpu() if full.get(k) is not None else v for k, v in state_dict.items()}


def computes_with_16bit_copies(accelerator, model) -> bool:
    """Whether ``model`` is a DeepSpeed engine in bf16/fp16: its module's parameters are 16-bit copies of the fp32
    master weights the optimizer holds, and save_model writes the master weights, not these copies."""
    import torch

    return accelerator.distributed_type == "DEEPSPEED" and accelerator.unwrap_model(model).dtype != torch.float32


def deepspeed_zero_stage(accelerator) -> int:
    return int(accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0))


def scored_weights(accelerator, model) -> str:
    """Which weights weights_as_saved evaluates, for all_results.json (``eval_weights``)."""
    if not computes_with_16bit_copies(accelerator, model):
        return "saved"
    if deepspeed_zero_stage(accelerator) < 3:
        return "saved (the fp32 master weights; DeepSpeed trains with 16-bit copies of them)"
    return (
        "not saved: DeepSpeed ZeRO-3's 16-bit copies of the saved fp32 master weights (the saved model, "
        "reloaded, can score slightly differently)"
    )


@contextmanager
def weights_as_saved(accelerator, model):
    """``model`` computing with the weights save_model writes; evaluate through the module this yields.

    Under DeepSpeed bf16/fp16 the engine's module holds 16-bit copies of the fp32 master weights, and save_model
    writes the master weights: an evaluation of the engine scored other weights than the saved model's (tiny
    BERT, ZeRO-2 bf16 on 2 CPU processes: a reported eval loss of 0.666469 for a saved model that scores 0.666434
    reloaded; where logits are near a decision boundary, predictions move as well). Here each parameter's
    tensor is swapped for its gathered fp32 master weight (a collective: every process enters), float buffers
    are upcast as from_pretrained loads them, and the module is yielded unwrapped (the engine's forward adds
    nothing to a ZeRO-1/2 evaluation); on leaving, the 16-bit tensors are put back, so the parameters are again
    views into DeepSpeed's flat buffers and training goes on untouched. Elsewhere the model's parameters are
    the saved weights already, and ``model`` itself is yielded. ZeRO-3 is left as it is (its hooks gather each
    layer's 16-bit parameters into place at every forward, over any tensor swapped in): scored_weights says so.
    """
    import torch

    if not computes_with_16bit_copies(accelerator, model) or deepspeed_zero_stage(accelerator) >= 3:
        yield model
        return
    from deepspeed.utils import safe_get_full_fp32_param

    module = accelerator.unwrap_model(model)
    swapped = []  # (parameter or buffer owner, name, the 16-bit tensor to put back)
    try:
        for param in module.parameters():
            master = safe_get_full_fp32_param(param)
            if master is not None:
                swapped.append((param, None, param.data))
                param.data = master
        for owner in module.modules():
            for name, buffer in list(owner.named_buffers(recurse=False)):
                if buffer is not None and buffer.is_floating_point() and buffer.dtype != torch.float32:
                    swapped.append((owner, name, buffer))
                    setattr(owner, name, buffer.float())
        yield module
    finally:
        for holder, name, tensor in reversed(swapped):
            if name is None:
                holder.data = tensor
            else:
                setattr(holder, name, tensor)


def save_model(accelerator, model, tokenizer, output_dir: str | Path) -> None:
    """Weights as safetensors plus the tokenizer: ``from_pretrained(output_dir)`` and ``pipeline`` load it.

    Written into a temporary folder first and moved into place file by file, so a failed save (a full disk)
    never leaves config.json without its weights; the failure is one line saying why.
    """
    import os
    import shutil

    output_dir = Path(output_dir)
    tmp = output_dir.parent / f".tmp-{output_dir.name}-model"
    if output_dir.exists() and not output_dir.is_dir():  # checked on every process: none waits for a failed one
        raise UserError(f"cannot save the model to {output_dir}: it is a file, expected a folder")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    # The stale folder is gone before any process enters save_pretrained, which lists the folder on every
    # process (a removal racing that listing failed a 2-process CI run).
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    # The full weights, gathered by Accelerate on every process (a collective under FSDP, where each process
    # holds only its shards and save_pretrained on the module would write those or fail); under FSDP only the
    # main process receives them, and only it writes.
    state_dict = accelerator.get_state_dict(model)
    master_weights = computes_with_16bit_copies(accelerator, model)
    if master_weights:
        state_dict = deepspeed_master_weights(model, state_dict)
    try:
        unwrapped.save_pretrained(
            tmp, is_main_process=accelerator.is_main_process, state_dict=state_dict, save_function=accelerator.save
        )
        if master_weights and accelerator.is_main_process:  # save_pretrained wrote the engine's 16-bit dtype
            unwrapped.config.dtype = "float32"
            unwrapped.config.save_pretrained(tmp)
        # Every process is done with the temporary folder before the main one moves it away (a process still
        # inside save_pretrained would otherwise find its folder gone).
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            tokenizer.save_pretrained(tmp)
            output_dir.mkdir(parents=True, exist_ok=True)
            for file in tmp.iterdir():
                os.replace(file, output_dir / file.name)
    except OSError as err:
        raise UserError(
            f"saving the model to {output_dir} failed: {(err.strerror or str(err)).lower()}; the "
            "checkpoints are kept (resume with --resume_from_checkpoint latest)"
        ) from None
    except Exception as err:  # safetensors reports a full disk as its own error type
        if "No space left" not in str(err):
            raise
        raise UserError(
            f"saving the model to {output_dir} failed: no space left on the device; the checkpoints "
            "are kept (resume with --resume_from_checkpoint latest)"
        ) from None
    finally:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
