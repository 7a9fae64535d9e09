"""cvexp checkpoints: written atomically, read safely, and rebuilt into a classifier alone."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.plugins.io import TorchCheckpointIO

from cvexp.classifier import ImageClassifier
from cvexp.errors import UserError
from cvexp.run_record import RunDir


def read_checkpoint(path: str | Path, *, trust: bool = False) -> dict[str, Any]:
    """Load a checkpoint file: tensors and plain containers only (torch.load weights_only=True),
    so that loading can never run code. `trust=True` (the user's explicit
    `trust_checkpoint=true`) allows arbitrary pickled objects, for files from a trusted source."""
    file = Path(path).expanduser()
    if file.is_dir():
        raise UserError(
            f"{file} is a folder, not a checkpoint; pass ckpt_path=<a .ckpt file>, e.g. "
            f"{RunDir(file).last_checkpoint} for a run's newest state."
        )
    if not file.is_file():
        raise UserError(f"Checkpoint not found: {file}; pass ckpt_path=<path to a .ckpt file>.")
    if not looks_like_torch_file(file):
        raise UserError(
            f"{file} is not a PyTorch checkpoint (it is neither torch.save's zip archive nor a "
            "pickle); check ckpt_path."
        )
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            raise UserError(
                f"{file} holds pickled Python objects that could run code when loaded, so it was "
                "refused; if you trust its source, pass trust_checkpoint=true to load it anyway."
            ) from None
        raise UserError(
            f"{file} is not a PyTorch checkpoint (it cannot be unpickled); check ckpt_path."
        ) from None
    except Exception as err:  # garbage makes the unpickler fail in many ways (KeyError, EOFError)
        first_line = (str(err).splitlines() or [type(err).__name__])[0]
        raise UserError(
            f"{file} is not a readable PyTorch checkpoint ({first_line}); check ckpt_path."
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(
            f"{file} is not a Lightning checkpoint (it has no state_dict); check ckpt_path."
        )
    return checkpoint


# A checkpoint names its net by import path (`net_config._target_`). When a model moves, its
# old path maps here to the new one, so that the checkpoints users already have keep loading
# (tests/test_checkpoint.py loads one written before the package was split into layers).
MOVED_TARGETS: dict[str, str] = {}


def current_target(target: str) -> str:
    """The import path a checkpoint's `_target_` has today (the same, unless it moved)."""
    return MOVED_TARGETS.get(target, target)


def offline_net_config(net_config: dict[str, Any]) -> dict[str, Any]:
    """The net's config without pretrained-weight loading: a checkpoint already holds every weight,
    so rebuilding its architecture must neither download nor need the original weights file.
    A net that moved is built from its new place (MOVED_TARGETS)."""
    config = dict(net_config)
    config["_target_"] = current_target(str(config["_target_"]))
    if "pretrained" in config:
        config["pretrained"] = False
    if "weights" in config:
        config["weights"] = None
    return config


def load_classifier(
    path: str | Path, *, trust: bool = False
) -> tuple[ImageClassifier, dict[str, Any]]:
    """Rebuild the classifier saved in a cvexp checkpoint; returns it (in eval mode) and the raw
    checkpoint. `trust` is passed to `read_checkpoint`."""
    checkpoint = read_checkpoint(path, trust=trust)
    net_config = checkpoint.get("net_config")
    if not isinstance(net_config, dict) or "_target_" not in net_config:
        raise UserError(
            f"{path} was not written by cvexp-train (it has no net_config); pass a checkpoint "
            "from a cvexp run's checkpoints/ folder."
        )
    try:
        net = instantiate(offline_net_config(net_config))
    except InstantiationException as err:
        raise UserError(
            f"{path} names a network that cannot be built ({err}); check ckpt_path."
        ) from None
    hparams = {
        k: v
        for k, v in checkpoint.get("hyper_parameters", {}).items()
        if k in ("num_classes", "label_smoothing")
    }
    classifier = ImageClassifier(net=net, **hparams)
    classifier.net_config = net_config
    try:
        classifier.load_state_dict(checkpoint["state_dict"], strict=False)
        missing, unexpected = _mismatch(classifier, checkpoint["state_dict"])
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise UserError(
            f"The weights in {path} do not fit the architecture it names ({first}); "
            "the checkpoint is from another model or corrupt."
        ) from None
    if missing or unexpected:
        raise UserError(
            f"The weights in {path} do not fit the architecture it names "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); the checkpoint is from another model."
        )
    return classifier.eval(), checkpoint


def _mismatch(
    classifier: ImageClassifier, state_dict: dict[str, torch.Tensor]
) -> tuple[list[str], list[str]]:
    """Net parameter names missing from, or unexpected in, a state dict (metric states are optional)."""
    expected = {f"net.{k}" for k in classifier.net.state_dict()}
    given = {k for k in state_dict if k.startswith("net.")}
    return sorted(expected - given), sorted(given - expected)


class AtomicCheckpointIO(TorchCheckpointIO):
    """A crash or kill during the write leaves the previous checkpoint (e.g. last.ckpt) intact."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        path = Path(path)
        partial = path.with_name(f".{path.name}.partial")
        try:
            super().save_checkpoint(checkpoint, partial, storage_options)
            os.replace(partial, path)
        except (OSError, RuntimeError) as err:  # disk full, quota, file size limit, read-only
            cause = _os_error_in(err)  # torch's zip writer may raise RuntimeError over it
            if cause is None:
                raise
            reason = os.strerror(cause.errno) if cause.errno else str(cause)
            raise UserError(
                f"Could not write the checkpoint {path} ({reason}); the checkpoints already "
                "there are unchanged. Free disk space (or write runs elsewhere with "
                "hydra.run.dir=...) and continue with resume=<run dir>."
            ) from None
        finally:
            if partial.exists():
                partial.unlink()


def _os_error_in(error: BaseException | None) -> OSError | None:
    """The OSError an exception is, or was raised while handling, if any."""
    while error is not None and not isinstance(error, OSError):
        error = error.__context__
    return error


def looks_like_torch_file(file: Path) -> bool:
    """Whether the file starts as torch.save writes: a zip archive, or (the legacy format) a
    pickle, whose first byte is the PROTO opcode 0x80."""
    with file.open("rb") as stream:
        head = stream.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def read_weights(path: str | Path, *, trust: bool = False) -> dict[str, torch.Tensor]:
    """A net's weights from a cvexp checkpoint, a plain state dict (.pt/.pth) or a .safetensors file."""
    file = Path(path).expanduser()
    if file.is_dir():
        raise UserError(
            f"{file} is a folder, not a weights file; pass init_from=<a .ckpt, .pt or "
            f".safetensors file>, e.g. {RunDir(file).last_checkpoint} of a run."
        )
    if not file.is_file():
        raise UserError(
            f"Weights not found: {file}; pass init_from=<a .ckpt, .pt or .safetensors file>."
        )
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(file))
        except (SafetensorError, OSError) as err:
            raise UserError(
                f"{file} is not a readable .safetensors file ({err}); check init_from."
            ) from None
    try:
        loaded = torch.load(file, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError:
        raise UserError(
            f"{file} holds pickled Python objects that could run code, or is not a PyTorch file; "
            "pass trust_checkpoint=true only if you trust its source."
        ) from None
    except Exception as err:  # garbage makes the unpickler fail in many ways
        raise UserError(
            f"{file} is not a readable PyTorch file ({type(err).__name__}); check init_from."
        ) from None
    for wrapper in ("state_dict", "model"):  # Lightning checkpoints, common training scripts
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
            loaded = loaded[wrapper]
    if not isinstance(loaded, dict) or not all(
        isinstance(v, torch.Tensor) for v in loaded.values()
    ):
        raise UserError(f"{file} holds no state dict of tensors; check init_from.")
    if any(k.startswith("net.") for k in loaded):  # a cvexp checkpoint: the net's own keys
        loaded = {k[len("net.") :]: v for k, v in loaded.items() if k.startswith("net.")}
    return loaded


def compare_weights(
    own: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], list[str], list[str], list[str]]:
    """(the weights that fit, missing names, unexpected names, names with other shapes)."""
    fits = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    missing = sorted(k for k in own if k not in fits)
    unexpected = sorted(k for k in weights if k not in own)
    mismatched = sorted(k for k in weights if k in own and own[k].shape != weights[k].shape)
    return fits, missing, unexpected, mismatched


def check_checkpoint_fits(
    net: torch.nn.Module, checkpoint: dict[str, Any], path: str | Path
) -> None:
    """`ckpt_path=` continues a fit: its weights must be this very network's."""
    weights = {
        k[len("net.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")
    }
    _, missing, unexpected, mismatched = compare_weights(net.state_dict(), weights)
    if missing or unexpected or mismatched:
        raise UserError(
            f"{path} holds the weights of another network (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}, other shapes {mismatched[:3]}); pass ckpt_path=<a checkpoint of "
            "this model>, or init_from=<it> with init_from_strict=false to start from what fits."
        )


def check_optimizer_fits(
    classifier: ImageClassifier, checkpoint: dict[str, Any], path: str | Path
) -> None:
    """`ckpt_path=` continues a fit: its optimiser state must fit this run's parameter groups."""
    states = checkpoint.get("optimizer_states") or [{}]
    saved = [len(group["params"]) for group in states[0].get("param_groups", [])]
    own = [len(group["params"]) for group in classifier.parameter_groups()]
    if saved and saved != own:
        raise UserError(
            f"{path} holds an optimiser state for parameter groups of {saved} parameters, not "
            f"this run's {own} (a ViT or SASA ResNet run started before weight decay followed "
            f"timm's rule, say); start a new run from its weights with init_from={path}."
        )


def load_net_weights(
    net: torch.nn.Module, path: str | Path, *, strict: bool = True, trust: bool = False
) -> dict[str, Any]:
    """Load weights into `net` for `init_from`; returns what was loaded and what kept its init.

    `strict`: every parameter must be there with its shape. Otherwise the parameters that fit
    are loaded and the rest (typically a head for another number of classes) keep their fresh
    initialisation; most of the net must still fit, or it is another architecture.
    """
    weights = read_weights(path, trust=trust)
    own = net.state_dict()
    fits, missing, unexpected, mismatched = compare_weights(own, weights)
    params = {k for k, _ in net.named_parameters()}
    loaded_share = sum(own[k].numel() for k in fits if k in params) / max(
        1, sum(p.numel() for p in net.parameters())
    )
    problem = f"missing {missing[:3]}, unexpected {unexpected[:3]}, other shapes {mismatched[:3]}"
    if (missing or unexpected) and (strict or loaded_share < 0.5):
        hint = (
            " or init_from_strict=false to keep what fits and initialise the rest (a head for "
            "another number of classes, say)"
            if strict and loaded_share >= 0.5
            else ""
        )
        raise UserError(
            f"The weights in {path} do not fit this network ({problem}); pass init_from=<weights "
            f"of the same architecture>{hint}."
        )
    net.load_state_dict({**own, **fits})
    if missing:
        print(
            f"init_from: {len(missing)} tensors kept their fresh initialisation: {', '.join(missing)}"
        )
    return {"path": str(Path(path).expanduser().resolve()), "initialised_fresh": missing}


def completed_epochs(checkpoint: dict) -> int:
    """How many epochs a Lightning checkpoint's fit had completed.

    A checkpoint saved at an epoch's validation end (as last.ckpt is, every epoch) has all of
    that epoch's training batches done but the epoch not yet counted as completed: it counts.
    """
    try:
        fit_loop = checkpoint["loops"]["fit_loop"]
        progress = fit_loop["epoch_progress"]["current"]
        done = int(progress["completed"])
        if int(progress["started"]) > done and fit_loop["epoch_loop.batch_progress"].get(
            "is_last_batch"
        ):
            done += 1
        return done
    except (KeyError, TypeError, AttributeError):
        return int(checkpoint.get("epoch", 0))


def check_train_on(checkpoint: dict, max_epochs: int | None) -> None:
    """Continuing a fit needs `trainer.max_epochs` at least the epochs the checkpoint completed."""
    done = completed_epochs(checkpoint)
    if max_epochs is not None and 0 <= max_epochs < done:
        raise UserError(
            f"The checkpoint has completed {done} epochs, more than trainer.max_epochs={max_epochs}; "
            f"pass trainer.max_epochs={done + 10} (or any number of epochs above {done}) to train on."
        )
