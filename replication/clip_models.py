"""Frozen OpenAI-CLIP encoders for guidance: offline loading, NADA's tensor preprocessing, cached text features."""
from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

with warnings.catch_warnings():
    # the clip package imports the deprecated pkg_resources at import time; that warning is not ours to act on
    warnings.simplefilter("ignore", UserWarning)
    import clip
    import clip.model as clip_model

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


class ClipModelError(ValueError):
    """A CLIP model name or file cannot be loaded (unknown name, unreadable file, not a CLIP checkpoint)."""


class ImageInputError(ValueError):
    """An image batch handed to CLIP does not have the shape [B, 3, H, W]."""


class PromptError(ValueError):
    """A prompt cannot be tokenised: empty, not a string, or longer than the model's context."""


def known_clip_names() -> list[str]:
    """Names the ``clip`` package knows (``"ViT-B/32"``, ``"ViT-B/16"``, ...); they resolve via the weight registry."""
    return list(clip.available_models())


def _read_clip_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a CLIP checkpoint without unpickling foreign objects: TorchScript archive or plain state dict."""
    try:
        # OpenAI's released files are TorchScript archives; loading one runs no pickled Python
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
            return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    except RuntimeError:
        pass
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types (UnpicklingError, RuntimeError, EOFError)
        raise ClipModelError(f"cannot read CLIP checkpoint {path}: {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}; pass a CLIP TorchScript archive "
                             "or a state-dict .pt file") from None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ClipModelError(f"{path} is not a CLIP state dict (expected a flat dict of tensors)")
    return state


def _build_clip(state: dict[str, torch.Tensor], source: str) -> clip_model.CLIP:
    try:
        # build_model is the clip package's own constructor; it infers every size from the tensor shapes
        return clip_model.build_model(dict(state))
    except (KeyError, RuntimeError, AssertionError, IndexError, ValueError) as exc:
        raise ClipModelError(f"{source} is not an OpenAI CLIP checkpoint ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:200] if str(exc) else 'bad keys'})") from None


def _cast_like_openai(model: nn.Module, dtype: torch.dtype) -> None:
    """Cast the layers OpenAI runs in reduced precision (convs, linears, attention, projections); LayerNorms stay
    fp32 because clip's LayerNorm computes in fp32 and casts back."""
    for module in model.modules():
        tensors: list[torch.Tensor | None] = []
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            tensors += [module.weight, module.bias]
        if isinstance(module, nn.MultiheadAttention):
            tensors += [module.in_proj_weight, module.q_proj_weight, module.k_proj_weight, module.v_proj_weight,
                        module.in_proj_bias, module.bias_k, module.bias_v]
        for name in ("text_projection", "proj"):
            tensors.append(getattr(module, name, None) if isinstance(getattr(module, name, None), torch.Tensor)
                           else None)
        for tensor in tensors:
            if tensor is not None:
                tensor.data = tensor.data.to(dtype)


def clip_normalise(x01: torch.Tensor) -> torch.Tensor:
    """CLIP's per-channel mean/std normalisation of images [B, 3, H, W] in [0, 1] (the last step of preprocess)."""
    mean = torch.tensor(CLIP_MEAN, device=x01.device, dtype=x01.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x01.device, dtype=x01.dtype).view(1, 3, 1, 1)
    return (x01 - mean) / std


class ClipEncoder:
    """A frozen CLIP model with NADA's generator-image preprocessing and a per-run text-feature cache.

    Not an ``nn.Module`` on purpose: holding it inside a trainable module must not register CLIP's parameters.
    Image inputs are NCHW float tensors with values nominally in [-1, 1] (generator output; not clamped, as in NADA).
    Every returned embedding is float32, whatever precision CLIP runs in.
    """

    def __init__(self, model: clip_model.CLIP, *, antialias: bool = True, name: str = "clip") -> None:
        self.model = model.eval().requires_grad_(False)
        self.name = name
        # True = torchvision >= 0.17 tensor Resize (the golden values); False = the paper-era resize (faithful mode)
        self.antialias = bool(antialias)
        self.input_resolution = int(model.visual.input_resolution)
        self.context_length = int(model.context_length)
        param = next(model.parameters())
        self.device = param.device
        self.dtype = model.dtype
        self._text_cache: dict[str, torch.Tensor] = {}

    def __repr__(self) -> str:
        return (f"ClipEncoder({self.name!r}, resolution={self.input_resolution}, device={self.device}, "
                f"dtype={self.dtype}, antialias={self.antialias})")

    @property
    def logit_scale(self) -> float:
        """exp(logit_scale) of the checkpoint: 100 for OpenAI's models (the global loss must not assume that)."""
        return float(self.model.logit_scale.detach().float().exp())

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[1])

    # ----------------------------------------------------------------------------------------------- images
    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """Output size of torchvision's ``Resize(R)``: the smaller edge becomes R, the other keeps the aspect."""
        r = self.input_resolution
        if height <= width:
            return r, int(r * width / height)
        return int(r * height / width), r

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Generator images [B,3,H,W] in [-1,1] -> CLIP input [B,3,R,R] (float32, differentiable).

        (x+1)/2, bicubic resize of the smaller edge to R (skipped when already R), centre crop R, CLIP normalise.
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise ImageInputError(f"CLIP expects images of shape [B, 3, H, W], got {tuple(x.shape)}")
        x = (x.float() + 1.0) / 2.0
        height, width = x.shape[-2:]
        out_h, out_w = self.resized_size(height, width)
        if (out_h, out_w) != (height, width):
            x = F.interpolate(x, size=(out_h, out_w), mode="bicubic", align_corners=False, antialias=self.antialias)
        r = self.input_resolution
        if (out_h, out_w) != (r, r):
            # torchvision's CenterCrop rounds the offsets this way
            top = int(round((out_h - r) / 2.0))
            left = int(round((out_w - r) / 2.0))
            x = x[..., top:top + r, left:left + r]
        return clip_normalise(x)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """CLIP-ready pixels [B,3,R,R] -> raw (un-normalised) image embeddings [B,D], float32."""
        return self.model.encode_image(pixels.to(self.device)).float()

    def image_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """Generator images [B,3,H,W] in [-1,1] -> raw image embeddings [B,D] (preprocess + encode)."""
        return self.encode_image(self.preprocess(x))

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """Generator images [B,3,H,W] in [-1,1] -> unit-norm image embeddings [B,D] (preprocess, encode, L2)."""
        embeddings = self.image_embeddings(x)
        return embeddings / embeddings.norm(dim=-1, keepdim=True)

    # ------------------------------------------------------------------------------------------------- text
    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Prompts -> CLIP BPE tokens [N, context_length] int64 on this encoder's device; never truncates."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise PromptError("no prompt given; pass at least one non-empty text")
        for text in texts:
            if not isinstance(text, str):
                raise PromptError(f"prompt {text!r} is a {type(text).__name__}, not a string")
            if not text.strip():
                raise PromptError(f"prompt {text!r} is empty; describe the domain in words, e.g. 'sketch'")
        try:
            tokens = clip.tokenize(texts, context_length=self.context_length, truncate=False)
        except RuntimeError:
            # clip's message is multi-line for long prompts; find the offending prompt and say it in one line
            for text in texts:
                try:
                    clip.tokenize([text], context_length=self.context_length, truncate=False)
                except RuntimeError:
                    shown = text if len(text) <= 60 else text[:57] + "..."
                    raise PromptError(f"prompt {shown!r} is longer than CLIP's context of {self.context_length} "
                                      "tokens; shorten it") from None
            raise
        return tokens.to(self.device)

    def encode_text(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Prompts -> raw text embeddings [N,D] float32 (no grad; cached per text for the encoder's lifetime).

        Only prompts not seen before are tokenised and encoded (NADA re-tokenised its text at every step).
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise PromptError("no prompt given; pass at least one non-empty text")
        for text in texts:
            if not isinstance(text, str):
                raise PromptError(f"prompt {text!r} is a {type(text).__name__}, not a string")
        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            with torch.no_grad():
                raw = self.model.encode_text(self.tokenize(missing)).float()
            for text, embedding in zip(missing, raw):
                self._text_cache[text] = embedding
        return torch.stack([self._text_cache[t] for t in texts])

    def text_features(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Prompts -> unit-norm text embeddings [N,D] float32 (no grad, cached)."""
        embeddings = self.encode_text(texts)
        return embeddings / embeddings.norm(dim=-1, keepdim=True)


# metadata entries of OpenAI's archives that build_model drops before loading the weights
_NON_PARAMETER_KEYS = ("input_resolution", "context_length", "vocab_size")


def _default_dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type == "cuda" else torch.float32


def load_clip(name_or_path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
              *, antialias: bool = True) -> ClipEncoder:
    """Load a frozen CLIP encoder by ``clip`` model name (through the offline weight registry) or by file path.

    ``dtype`` None: fp16 on CUDA (as OpenAI's clip.load does; LayerNorms stay fp32), fp32 elsewhere.
    ``antialias``: resize antialiasing of ``preprocess``; False reproduces the paper-era torchvision.
    Raises ``ClipModelError`` for an unknown name or unreadable file, ``weights.WeightError`` for a missing weight.
    """
    device = torch.device(device)
    name = str(name_or_path)
    from replication import weights  # the registry knows OpenAI's models and the mini world's shipped ones

    registered = {n for n, e in weights.registry().items() if e.kind == "clip"}
    if name in known_clip_names() or name in registered:
        path = Path(weights.resolve(name))
    elif Path(name).is_file():
        path = Path(name)
    else:
        known = sorted(set(known_clip_names()) | registered)
        raise ClipModelError(f"unknown CLIP model {name!r}: not a file and not one of {', '.join(known)}")
    if dtype is None:
        dtype = _default_dtype(device)
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ClipModelError(f"unsupported CLIP dtype {dtype}; use torch.float32, torch.float16 or torch.bfloat16")
    state = _read_clip_state_dict(path)
    model = _build_clip(state, str(path)).float()
    # build_model stores the weights through fp16; reload them in fp32 so fp32 checkpoints (the mini world's) are not
    # rounded twice. OpenAI's files are fp16 already, so for them this changes nothing.
    model.load_state_dict({k: v for k, v in state.items() if k not in _NON_PARAMETER_KEYS})
    if dtype != torch.float32:
        _cast_like_openai(model, dtype)  # the layers OpenAI's build_model puts in fp16
    model.to(device)
    return ClipEncoder(model, antialias=antialias, name=name)


def load_weighted_encoders(names: Sequence[str], weights: Sequence[float], device: str | torch.device = "cpu", *,
                           antialias: bool = True, skip_zero_weight: bool = False) -> list[tuple[ClipEncoder, float]]:
    """(encoder, weight) pairs for the named CLIP models, loaded with :func:`load_clip` (no downloads).

    ``skip_zero_weight``: a model of weight 0 is not even loaded, for callers that would only multiply it by 0.
    """
    return [(load_clip(name, device=device, antialias=antialias), float(weight))
            for name, weight in zip(names, weights) if weight > 0 or not skip_zero_weight]
