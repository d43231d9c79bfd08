"""ImageNet / pretrained weights of the rest of the original's zoo (`model.pretrained`), in
the layouts the original loads them from:

  vgg16, alexnet  torchvision's state dicts (vgg16-397923af.pth, alexnet-owt-7be5be79.pth):
                  `features.<i>.{weight,bias}` -> backbone.<i>; `classifier.*` ignored
  cct384          the CCT release (cct_14_7x2_384_imagenet.pth): `tokenizer.*`,
                  `classifier.{positional_emb, blocks.*, norm}` -> backbone.*; its
                  `classifier.attention_pool` -> the seqpool aggregation when it is the one
                  trained, `classifier.fc` (the ImageNet head) ignored; blocks beyond
                  model.trunc_te ignored
  vit             Hugging Face ViTModel files (pytorch_model.bin / model.safetensors of
                  google/vit-base-patch16-224-in21k or -384): `embeddings.*`, `encoder.*`,
                  `layernorm.*` (a `vit.` prefix of ViTForImageClassification dropped);
                  `pooler.*` and `classifier.*` ignored; layers beyond model.trunc_te ignored

Every load is strict over the tensors it keeps: a missing or resized one is an error that
lists them by the file's names.
"""

from __future__ import annotations

import logging
import re

from vgssl_jax.errors import ConfigError
from vgssl_jax.models.weights.files import load_state_dict
from vgssl_jax.models.weights.names import from_torch_state, replace_subtrees, subtrees


def _block_index(key: str, prefix: str) -> int | None:
  m = re.match(re.escape(prefix) + r"(\d+)\.", key)
  return int(m.group(1)) if m else None


def _load(path: str, variables: dict, state: dict, what: str, hint: str,
          ignored: list[str]) -> dict:
  modules = ("backbone", "aggregation") if any(k.startswith("aggregation.") for k in state) \
      else ("backbone",)
  target = subtrees(variables, modules)
  loaded = from_torch_state(state, target, hint)
  logging.info("loaded %d %s tensors from %s; ignored %d (%s)", len(state), what, path,
               len(ignored), ", ".join(sorted({k.split(".")[0] + ".*" for k in ignored})) or "none")
  return replace_subtrees(variables, loaded)


def load_plain_cnn(path: str, variables: dict, image_size=None) -> dict:
  """torchvision VGG16 / AlexNet weights into the backbone (`features[:-2]`)."""
  del image_size
  state = load_state_dict(path)
  if not any(k.startswith("features.") for k in state):
    raise ConfigError(f"{path} is not a torchvision VGG16 / AlexNet state dict (no features.* "
                      "keys); give vgg16-397923af.pth or alexnet-owt-7be5be79.pth.")
  have = set(variables["params"]["backbone"])
  keep = {f"backbone.{k[len('features.'):]}": v for k, v in state.items()
          if k.startswith("features.") and k.split(".")[1] in have}
  ignored = [k for k in state if f"backbone.{k.removeprefix('features.')}" not in keep]
  return _load(path, variables, keep, "VGG16/AlexNet", "Check model.backbone (vgg16 or alexnet) "
               "and model.width (64 for torchvision's weights).", ignored)


def load_cct(path: str, variables: dict, image_size=None) -> dict:
  """The CCT release's weights into the CCT backbone (and seqpool's attention pool)."""
  del image_size
  state = load_state_dict(path)
  if not any(k.startswith("tokenizer.conv_layers.") for k in state):
    raise ConfigError(f"{path} is not a CCT checkpoint (no tokenizer.conv_layers.* keys); give "
                      "the cct_14_7x2_384 release.")
  depth = len(variables["params"]["backbone"]["classifier"]["blocks"])
  pool = "attention_pool" in variables["params"].get("aggregation", {})
  keep, ignored = {}, []
  for k, v in state.items():
    block = _block_index(k, "classifier.blocks.")
    if k.startswith("classifier.fc.") or (block is not None and block >= depth):
      ignored.append(k)
    elif k.startswith("classifier.attention_pool."):
      if pool:
        keep["aggregation." + k[len("classifier."):]] = v
      else:
        ignored.append(k)
    else:
      keep[f"backbone.{k}"] = v
  return _load(path, variables, keep, "CCT", "Check model.cct (embed_dim 384, num_heads 6, "
               "img_size 384 for the release) and data.image_size.", ignored)


def load_hf_vit(path: str, variables: dict, image_size=None) -> dict:
  """Hugging Face ViTModel weights into the ViT backbone."""
  del image_size
  state = {k.removeprefix("vit."): v for k, v in load_state_dict(path).items()}
  if not any(k.startswith("embeddings.patch_embeddings.") for k in state):
    raise ConfigError(f"{path} is not a Hugging Face ViT checkpoint (no embeddings.patch_"
                      "embeddings.* keys); give pytorch_model.bin or model.safetensors of "
                      "google/vit-base-patch16-224-in21k (224) or -384 (384).")
  depth = len(variables["params"]["backbone"]["encoder"]["layer"])
  keep, ignored = {}, []
  for k, v in state.items():
    block = _block_index(k, "encoder.layer.")
    if k.startswith(("pooler.", "classifier.")) or (block is not None and block >= depth):
      ignored.append(k)
    else:
      keep[f"backbone.{k}"] = v
  return _load(path, variables, keep, "ViT", "Check model.hf_vit and data.image_size (224 or "
               "384, as the checkpoint).", ignored)
