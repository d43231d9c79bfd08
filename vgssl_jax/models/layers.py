"""Layers with PyTorch's semantics, so that torchvision weights and VG-SSL numbers carry over."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# torchvision's ResNet init: kaiming_normal_(mode="fan_out", nonlinearity="relu").
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# PyTorch's default nn.Linear init: kaiming_uniform_(a=sqrt(5)) = U(+-1/sqrt(fan_in)).
dense_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def dense_bias_init(fan_in: int):
  """PyTorch's default nn.Linear bias init: U(+-1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


class Dense(nn.Module):
  """nn.Linear: float32 parameters, computation in `dtype`. PyTorch's default init unless
  `kernel_init` / `bias_init` are given (e.g. the transformers' truncated normal)."""
  features: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  kernel_init: Any = None
  bias_init: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    fan_in = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init or dense_kernel_init,
                        (fan_in, self.features), jnp.float32)
    y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      bias = self.param("bias", self.bias_init or dense_bias_init(fan_in), (self.features,),
                        jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


class Conv(nn.Module):
  """nn.Conv2d without bias, NHWC, explicit symmetric padding (never "SAME").

  1x1 convolutions are computed as a matrix product over channels: XLA's CPU
  weight gradient of a 1x1 convolution is much slower than that of a dot.
  The kernel is (kh, kw, Cin, Cout) in every case.
  """
  features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  dtype: Dtype = jnp.float32
  use_bias: bool = False  # VGG, AlexNet, the non-local blocks', CRN's convolutions
  kernel_init: Any = None  # default: torchvision's ResNet init (conv_kernel_init)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    kernel = self.param("kernel", self.kernel_init or conv_kernel_init,
                        (k, k, x.shape[-1], self.features), jnp.float32).astype(self.dtype)
    x = x.astype(self.dtype)
    if k == 1 and self.padding == 0:
      if self.stride > 1:
        x = x[:, ::self.stride, ::self.stride, :]
      y = jnp.einsum("nhwc,cd->nhwd", x, kernel[0, 0])
    else:
      y = jax.lax.conv_general_dilated(
          x, kernel, window_strides=(self.stride, self.stride),
          padding=((self.padding, self.padding), (self.padding, self.padding)),
          dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,),
                         jnp.float32).astype(self.dtype)
    return y


class BatchNorm(nn.Module):
  """BatchNorm over all axes but the last, with PyTorch's conventions.

  momentum is PyTorch's (new = (1 - m) * old + m * batch); the running variance is
  updated with the unbiased batch variance, as PyTorch does (Flax uses the biased
  one). Statistics and the normalisation are computed in float32 whatever `dtype`.
  Under a data-sharded jit the batch statistics are global (= SyncBN).
  """
  momentum: float = 0.1
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    features = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
    if train:
      axes = tuple(range(x.ndim - 1))
      xf = x.astype(jnp.float32)
      mean = jnp.mean(xf, axes)
      var = jnp.mean(jnp.square(xf - mean), axes)
      if not self.is_initializing():
        n = math.prod(x.shape[:-1])
        m = self.momentum
        ra_mean.value = (1 - m) * ra_mean.value + m * mean
        ra_var.value = (1 - m) * ra_var.value + m * var * (n / max(n - 1, 1))
    else:
      mean, var = ra_mean.value, ra_var.value
    mul = scale * jax.lax.rsqrt(var + self.epsilon)
    add = bias - mean * mul
    return (x.astype(jnp.float32) * mul + add).astype(self.dtype)


class Numbered(nn.Module):
  """Children named "0", "1", ... (a PyTorch Sequential's or ModuleList's names), made by
  `make(i, name)` and applied in turn."""
  make: Any
  count: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(self.count):
      x = self.make(i, str(i))(x)
    return x


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """F.normalize: x / max(||x||, eps), computed in float32."""
  xf = x.astype(jnp.float32)
  norm = jnp.sqrt(jnp.sum(jnp.square(xf), axis=axis, keepdims=True))
  return xf / jnp.maximum(norm, eps)


def fc_then_l2(x: jax.Array, fc_output_dim: int) -> jax.Array:
  """The original's wrapping of an aggregation with `--fc_output_dim`: Linear (named "fc",
  float32), then L2; `x` unchanged when fc_output_dim is 0. Call it inside a compact module."""
  if not fc_output_dim:
    return x
  return l2_normalize(Dense(fc_output_dim, name="fc")(x))
