"""Loading models (timm names, the digits ViT, checkpoint files) and checking that the
importer supports them.

Supported: timm ``VisionTransformer`` (ViT, DeiT) with one class token and token pooling,
standard ``Block``/``Attention``/``Mlp`` with GELU, LayerNorm, optional LayerScale.  Anything
else is refused with a message that names the first unsupported module and its type.
"""

from __future__ import annotations

import contextlib
import os
import warnings

import torch
from torch import nn

from . import digits
from .errors import UserError

SUPPORTED = "timm VisionTransformer (ViT, DeiT) with a class token"


def load_model(name: str, checkpoint: str | None = None, pretrained: bool = False) -> nn.Module:
    """Create ``name`` ('digits' or a timm model name) in eval mode, weights loaded.

    ``pretrained`` takes timm's weights from the local caches only (Hugging Face hub cache,
    torch hub cache): when they are not there this fails at once, in one line, without
    touching the network."""
    import timm

    if name == "digits":
        if pretrained:
            raise UserError("--pretrained: the digits model has no timm weights; its own checkpoint is "
                            f"{digits.CHECKPOINT.name} (or give --checkpoint PATH)")
        model = digits.create_model()
        checkpoint = checkpoint or str(digits.CHECKPOINT)
    else:
        if not timm.is_model(name):
            raise UserError(f"unknown model {name!r}; accepted: 'digits' or a timm model name "
                            f"such as deit_tiny_patch16_224")
        try:
            model = timm.create_model(name, pretrained=False)
        except Exception as exc:  # timm raises various errors for a name it lists but cannot build
            raise UserError(f"cannot create {name}: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}") \
                from None
    check_supported(model, name)
    if pretrained:
        path = cached_pretrained_file(name)
        try:
            with _offline():
                model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": path, "source": ""})
        except Exception as exc:  # a damaged cache entry: timm and torch raise various errors
            raise UserError(f"cannot load the cached pretrained weights of {name} from {path}: "
                            f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}") from None
        check_weights(model.state_dict(), f"pretrained weights {path}")
    if checkpoint:
        load_checkpoint(model, checkpoint, name)
    return model.eval()


# --- timm's pretrained weights, from the local caches only --------------------------------------

def _hf_cache_dir() -> str | None:
    """The Hugging Face hub cache (None: huggingface_hub's default)."""
    return None


def _torch_hub_dir() -> str:
    return torch.hub.get_dir()


@contextlib.contextmanager
def _offline():
    """No network for anything timm or huggingface_hub might still try."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        import huggingface_hub.constants as hc
        old_const = hc.HF_HUB_OFFLINE
        hc.HF_HUB_OFFLINE = True
    except (ImportError, AttributeError):
        hc = None
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if hc is not None:
            hc.HF_HUB_OFFLINE = old_const


def cached_pretrained_file(name: str) -> str:
    """The local file of timm's pretrained weights for ``name``, or a one-line UserError."""
    from urllib.parse import urlparse

    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None:
        raise UserError(f"--pretrained: timm has no pretrained weights for {name}; give --checkpoint PATH")
    looked = []
    if cfg.file:
        if os.path.isfile(cfg.file):
            return cfg.file
        looked.append(cfg.file)
    if cfg.hf_hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            try_to_load_from_cache = None
        repo, _, rev = cfg.hf_hub_id.partition("@")
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        if try_to_load_from_cache is not None:
            for fname in names:
                try:
                    hit = try_to_load_from_cache(repo, fname, cache_dir=_hf_cache_dir(), revision=rev or None)
                except Exception:  # a malformed cache folder counts as no cache
                    hit = None
                if isinstance(hit, str) and os.path.isfile(hit):
                    return hit
        looked.append(f"Hugging Face cache ({repo})")
    if cfg.url:
        local = os.path.join(_torch_hub_dir(), "checkpoints", os.path.basename(urlparse(cfg.url).path))
        if os.path.isfile(local):
            return local
        looked.append(local)
    raise UserError(f"--pretrained: the weights of {name} are not in the local cache (looked in "
                    f"{'; '.join(looked) or 'no source'}) and there is no network here; "
                    f"give --checkpoint PATH instead")


# --- checkpoints -------------------------------------------------------------------------------

def check_weights(state: dict, source: str) -> None:
    """Refuse weights that cannot make a meaningful model: NaN/inf anywhere, or a weight
    tensor (``*.weight``: a layer's matrix, a norm's gain) that is all zero."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise UserError(f"{source}: weights are not finite (NaN or inf) in {len(bad)} tensor(s), "
                        f"e.g. {bad[0]}")
    zero = [k for k, v in state.items() if k.endswith("weight") and v.is_floating_point() and v.numel()
            and not bool(v.any())]
    if zero:
        raise UserError(f"{source}: all-zero weights in {len(zero)} tensor(s), e.g. {zero[0]}; "
                        f"such a layer has no scale to quantize (an untrained or damaged checkpoint?)")


def load_checkpoint(model: nn.Module, path: str, name: str) -> None:
    if os.path.isdir(path):
        raise UserError(f"checkpoint {path} is a folder; give the weights file")
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"checkpoint {path} is not a readable torch checkpoint ({type(exc).__name__})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"checkpoint {path} holds no state dict of tensors")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            parts.append(f"{len(wrong)} of another shape (e.g. {wrong[0]})")
        raise UserError(f"checkpoint {path} does not fit model {name}: keys " + ", ".join(parts))
    odd = [k for k in own if own[k].is_floating_point() and not state[k].is_floating_point()]
    if odd:
        raise UserError(f"checkpoint {path}: {odd[0]} holds {str(state[odd[0]].dtype).replace('torch.', '')} "
                        f"values where the model has floating-point weights")
    check_weights(state, f"checkpoint {path}")
    model.load_state_dict(state)


def _refuse(name: str, module_path: str, module: nn.Module, why: str = "") -> None:
    where = f"module '{module_path}'" if module_path else "the model"
    raise UserError(f"model {name} is not supported: {where} of type {type(module).__name__}"
                    f"{' (' + why + ')' if why else ''}; supported: {SUPPORTED}")


def check_supported(model: nn.Module, name: str) -> None:
    from timm.layers import LayerNorm as TimmLayerNorm, Mlp
    from timm.layers.attention import Attention
    from timm.models.vision_transformer import Block, LayerScale, VisionTransformer

    if not isinstance(model, VisionTransformer):
        _refuse(name, "", model)
    identity_like = (nn.Identity, nn.Dropout)
    if getattr(model, "dist_token", None) is not None or getattr(model, "num_prefix_tokens", 1) != 1:
        _refuse(name, "dist_token" if getattr(model, "dist_token", None) is not None else "reg_token",
                model, "only one class token is supported; distilled DeiT and register tokens are not")
    if model.cls_token is None or model.global_pool != "token":
        _refuse(name, "head", model, f"global_pool={model.global_pool!r}; only class-token pooling is supported")
    if getattr(model, "no_embed_class", False) or getattr(model, "pos_embed", None) is None:
        _refuse(name, "pos_embed", model, "the position embedding must cover the class token")
    for path in ("norm_pre", "fc_norm", "patch_embed.norm", "head_drop", "pos_drop", "patch_drop"):
        mod = model.get_submodule(path) if _has(model, path) else nn.Identity()
        if not isinstance(mod, identity_like):
            _refuse(name, path, mod)
    pe = model.patch_embed
    if tuple(pe.proj.kernel_size) != tuple(pe.proj.stride) or pe.proj.kernel_size[0] != pe.proj.kernel_size[1]:
        _refuse(name, "patch_embed.proj", pe.proj, "kernel must equal stride")
    norm_types = (nn.LayerNorm, TimmLayerNorm)
    for path in ("norm",):
        if not isinstance(model.get_submodule(path), norm_types):
            _refuse(name, path, model.get_submodule(path))
    if not isinstance(model.head, nn.Linear):
        _refuse(name, "head", model.head)
    for i, blk in enumerate(model.blocks):
        p = f"blocks.{i}"
        if type(blk) is not Block:
            _refuse(name, p, blk)
        for sub in ("norm1", "norm2"):
            if not isinstance(getattr(blk, sub), norm_types):
                _refuse(name, f"{p}.{sub}", getattr(blk, sub))
        if type(blk.attn) is not Attention:
            _refuse(name, f"{p}.attn", blk.attn)
        for sub in ("q_norm", "k_norm", "norm"):
            mod = getattr(blk.attn, sub, nn.Identity())
            if not isinstance(mod, identity_like):
                _refuse(name, f"{p}.attn.{sub}", mod)
        if type(blk.mlp) is not Mlp or not isinstance(blk.mlp.act, nn.GELU):
            bad = blk.mlp.act if type(blk.mlp) is Mlp else blk.mlp
            _refuse(name, f"{p}.mlp" + (".act" if type(blk.mlp) is Mlp else ""), bad)
        if not isinstance(getattr(blk.mlp, "norm", nn.Identity()), identity_like):
            _refuse(name, f"{p}.mlp.norm", blk.mlp.norm)
        for sub in ("ls1", "ls2"):
            if not isinstance(getattr(blk, sub), (nn.Identity, LayerScale)):
                _refuse(name, f"{p}.{sub}", getattr(blk, sub))


def _has(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
        return True
    except AttributeError:
        return False
