"""A pretrained timm model, fine-tuned on CIFAR-10: it resizes and normalises its own input.

Any timm model name works (ViTs, ConvNeXts, ResNets, ...). Weights come from timm's hub
(`pretrained=True`), from a local file through timm's own file-loading path
(`weights=PATH`, no network touched), or not at all (`pretrained=False`).
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import safetensors
import timm
import torch
import torch.nn.functional as F
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from torch import nn

from cvexp.errors import UserError
from cvexp.models.normalize import Normalize

Finetune = Literal["full", "linear_probe"]
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
_OPTIMIZER_DEFAULT = -1.0  # marks groups that should keep the optimiser's own weight decay


def create_timm_model(
    name: str, *, pretrained: bool, weights: str | None, **kwargs: Any
) -> nn.Module:
    """timm.create_model with cvexp's errors: a missing or mismatched weights file, a failed download."""
    if name.split(".")[0] not in timm.list_models():
        raise UserError(
            f"timm has no model named {name!r}; pick one from timm.list_models(), e.g. vit_tiny_patch16_224."
        )
    if weights is not None:
        file = Path(weights).expanduser()
        if not file.is_file():
            raise UserError(
                f"Weights file not found: {file}; pass model.net.weights=<a .safetensors, .pth or .bin file>."
            )
        if file.suffix not in WEIGHT_SUFFIXES:
            raise UserError(
                f"{file} is not a weights file ({', '.join(WEIGHT_SUFFIXES)}); check model.net.weights."
            )

        def mismatch(reason: str) -> UserError:
            return UserError(
                f"The weights in {file} do not fit {name} ({reason}); pass model.net.weights= a file saved "
                f"from {name}, or set model.net.name to the file's architecture."
            )

        found = _weight_names(file)  # read safely first: refuses a file that could run code
        try:  # timm's own file path: adapts the classifier and the position embeddings, no network
            model = timm.create_model(
                name, pretrained=True, pretrained_cfg_overlay={"file": str(file)}, **kwargs
            )
        except (RuntimeError, KeyError, ValueError) as err:
            raise mismatch(str(err).strip().splitlines()[0][:200]) from None
        # timm loads non-strictly when it replaces the classifier, so a foreign file could load
        # (almost) nothing without a word: require the file to hold most of the backbone
        classifier = model.get_classifier().named_parameters(prefix=_classifier_prefix(model))
        head = {key for key, _ in classifier}
        backbone = [k for k in model.state_dict() if k not in head]
        missing = [k for k in backbone if k not in found]
        if len(missing) > len(backbone) // 2:
            raise mismatch(f"{len(missing)} of its {len(backbone)} tensors are not in the file")
        return model
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as err:
        if not pretrained:
            raise
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise UserError(
            f"Could not download pretrained weights for {name} ({first}); the machine may be offline, so pass "
            "model.net.weights=<local .safetensors/.pth/.bin file>, or model.net.pretrained=false for random init."
        ) from None


def _classifier_prefix(model: nn.Module) -> str:
    """The module path of a timm model's classifier, e.g. 'head' or 'fc'."""
    target = model.get_classifier()
    return next((name for name, module in model.named_modules() if module is target), "")


def _weight_names(file: Path) -> set[str]:
    """The tensor names a weights file holds (read safely: safetensors, or torch.load weights_only)."""
    if file.suffix == ".safetensors":
        with safetensors.safe_open(str(file), framework="pt") as weights:
            return set(weights.keys())
    try:
        try:  # memory-mapped: only the names are needed
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # the legacy (non-zip) format cannot be mapped
            state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            raise UserError(
                f"{file} holds pickled Python objects that could run code when loaded, so it was "
                "refused; pass model.net.weights= a .safetensors file or a state dict of tensors."
            ) from None
        raise UserError(
            f"{file} is not a readable weights file ({type(err).__name__}); check model.net.weights."
        ) from None
    except Exception as err:
        raise UserError(
            f"{file} is not a readable weights file ({type(err).__name__}); check model.net.weights."
        ) from None
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return set(state) if isinstance(state, dict) else set()


class TimmClassifier(nn.Module):
    """A timm model for CIFAR-10; takes float images in [0, 1] at any size and prepares them itself.

    The batch is resized on its device to the model's input size (its pretrained size, or
    `img_size` for a smaller fine-tuning resolution, with interpolated position embeddings)
    and normalised with the pretrained config's mean and std.
    """

    def __init__(
        self,
        *,
        name: str = "vit_tiny_patch16_224.augreg_in21k_ft_in1k",
        pretrained: bool = True,
        weights: str | None = None,
        num_classes: int = 10,
        img_size: int | None = None,
        finetune: Finetune = "full",
        layer_decay: float | None = None,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if finetune not in ("full", "linear_probe"):
            raise ValueError(f"finetune must be 'full' or 'linear_probe', got {finetune!r}.")
        if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}.")
        kwargs: dict[str, Any] = {"num_classes": num_classes}
        if img_size is not None:
            kwargs["img_size"] = img_size
        if drop_path_rate:
            kwargs["drop_path_rate"] = drop_path_rate
        self.model = create_timm_model(name, pretrained=pretrained, weights=weights, **kwargs)
        data_config = timm.data.resolve_model_data_config(self.model)
        self.input_size: tuple[int, int] = (
            (img_size, img_size) if img_size else tuple(data_config["input_size"][-2:])
        )
        mode = data_config.get("interpolation", "bilinear")
        self.interpolation = mode if mode in ("bilinear", "bicubic") else "bilinear"
        self.normalize = Normalize(tuple(data_config["mean"]), tuple(data_config["std"]))
        self.finetune, self.layer_decay = finetune, layer_decay
        if finetune == "linear_probe":
            for param in self.model.parameters():
                param.requires_grad = False
            for param in self.model.get_classifier().parameters():
                param.requires_grad = True

    def train(self, mode: bool = True) -> TimmClassifier:
        """As nn.Module.train, but a linear probe keeps its frozen backbone in eval mode."""
        super().train(mode)
        if self.finetune == "linear_probe":
            self.model.eval()
            self.model.get_classifier().train(mode)
        return self

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) in [0, 1] -> (B, 3, H, W) at the model's input size, normalised as in pretraining."""
        if tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode=self.interpolation, align_corners=False)
        return self.normalize(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> the backbone's features (for a ViT: tokens (B, T, D))."""
        return self.model.forward_features(self.preprocess(x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Features -> logits (B, num_classes)."""
        return self.model.forward_head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, h, w) in [0, 1] -> logits (B, num_classes)."""
        return self.model(self.preprocess(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        *,
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's own `forward_intermediates` on the prepared batch: each (B, C, h, w)."""
        if not hasattr(self.model, "forward_intermediates"):
            raise UserError(f"{type(self.model).__name__} does not expose its per-layer outputs.")
        return self.model.forward_intermediates(
            self.preprocess(x), indices=indices, intermediates_only=intermediates_only
        )

    def no_weight_decay(self) -> set[str]:
        """The parameters that get no weight decay beyond biases and norms, by their names in
        this wrapper: what the timm model's own `no_weight_decay()` names (position
        embeddings, class token), under `model.`."""
        return {f"model.{name}" for name in getattr(self.model, "no_weight_decay", set)()}

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimiser groups (timm's): no weight decay on biases, norms and what the model's
        `no_weight_decay()` names (position embeddings, class token); with `layer_decay`, an
        `lr_scale` per group that shrinks the learning rate layer by layer towards the input."""
        no_decay = getattr(self.model, "no_weight_decay", set)()
        if self.layer_decay is None:
            groups = param_groups_weight_decay(
                self.model, weight_decay=_OPTIMIZER_DEFAULT, no_weight_decay_list=no_decay
            )
        else:
            groups = param_groups_layer_decay(
                self.model,
                weight_decay=_OPTIMIZER_DEFAULT,
                no_weight_decay_list=no_decay,
                layer_decay=self.layer_decay,
            )
        for group in groups:
            if group.get("weight_decay") == _OPTIMIZER_DEFAULT:
                del group["weight_decay"]
        return groups

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Attention weights (B, h, T, T) of every block of a timm VisionTransformer (none for others).

        timm's fused attention never forms the weights, so a forward hook on each block's
        `attn` module takes its input and recomputes softmax(q k^T * scale) with the module's
        own qkv projection and q/k norms: the same weights the fused kernel applies.
        """
        blocks = getattr(self.model, "blocks", None)
        if blocks is None or not all(hasattr(b, "attn") and hasattr(b.attn, "qkv") for b in blocks):
            return []  # not a ViT (a timm CNN, say): no attention to show
        if getattr(self.model, "num_prefix_tokens", 1) != 1:
            raise UserError(
                "attention maps need a ViT with exactly one class token and no register tokens."
            )
        weights: list[torch.Tensor] = []

        def record(
            attn: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor
        ) -> None:
            tokens = inputs[0]  # (B, T, D)
            b, t, _ = tokens.shape
            qkv = attn.qkv(tokens).reshape(b, t, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
            q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])  # (B, h, T, d)
            weights.append((q @ k.transpose(-2, -1) * attn.scale).softmax(dim=-1))  # (B, h, T, T)

        handles = [block.attn.register_forward_hook(record) for block in blocks]
        try:
            self.eval()(x)
        finally:
            for handle in handles:
                handle.remove()
        return weights
