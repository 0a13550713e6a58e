"""ODE-Net, ResNet and MLP classifiers on scikit-learn's 8x8 digits (Chen et al. 2018, §3).

The ODE-Net and the ResNet share everything but the middle: a 3x3 convolution to C channels
at 8x8, a strided 3x3 convolution to 4x4, then either one ODE block (a `ConvField` solved
over t ∈ [0, 1]) or `n_blocks` residual blocks with the same field (h ← h + f(h)), then
normalization, average pooling and a linear layer. The MLP has one hidden layer.
"""

from __future__ import annotations

import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

from ..nn.neural_ode import ConvField, NeuralODE, ODEBlock, _conv_init, conv3x3, group_norm


class Stem(eqx.Module):
    """8x8x1 -> 8x8xC -> (stride 2) 4x4xC."""

    w1: jax.Array
    b1: jax.Array
    w2: jax.Array
    b2: jax.Array
    groups: int = eqx.field(static=True)

    def __init__(self, channels, *, key):
        k1, k2 = jr.split(key)
        self.w1, self.b1 = _conv_init(k1, 1, channels)
        self.w2, self.b2 = _conv_init(k2, channels, channels)
        self.groups = min(8, channels)

    def __call__(self, x):
        h = conv3x3(x[..., None], self.w1, self.b1)
        h = jax.nn.relu(group_norm(h, self.groups))
        return conv3x3(h, self.w2, self.b2, stride=2)


class Head(eqx.Module):
    linear: eqx.nn.Linear
    groups: int = eqx.field(static=True)

    def __init__(self, channels, *, key):
        self.linear = eqx.nn.Linear(channels, 10, key=key)
        self.groups = min(8, channels)

    def __call__(self, h):
        h = jax.nn.relu(group_norm(h, self.groups))
        return jax.vmap(self.linear)(jnp.mean(h, axis=(-3, -2)))


class ODENet(eqx.Module):
    stem: Stem
    block: ODEBlock
    head: Head

    def __call__(self, x):
        return self.head(self.block(self.stem(x)))


class ResNet(eqx.Module):
    stem: Stem
    blocks: list
    head: Head

    def __call__(self, x):
        h = self.stem(x)
        for block in self.blocks:
            h = h + block(0.0, h)
        return self.head(h)


class MLP(eqx.Module):
    net: eqx.nn.MLP

    def __call__(self, x):
        return jax.vmap(self.net)(x.reshape(x.shape[0], -1))


def make_odenet(key, channels, **ode_kwargs):
    k1, k2, k3 = jr.split(key, 3)
    ode = NeuralODE(ConvField(channels, key=k2), **ode_kwargs)
    return ODENet(Stem(channels, key=k1), ODEBlock(ode), Head(channels, key=k3))


def make_resnet(key, channels, n_blocks):
    k1, k2, k3 = jr.split(key, 3)
    blocks = [ConvField(channels, key=k) for k in jr.split(k2, n_blocks)]
    return ResNet(Stem(channels, key=k1), blocks, Head(channels, key=k3))


def make_mlp(key, hidden):
    return MLP(eqx.nn.MLP(64, 10, hidden, 1, activation=jax.nn.relu, key=key))


def n_params(model) -> int:
    return int(sum(x.size for x in jax.tree.leaves(eqx.filter(model, eqx.is_array))))


def random_shift(x, key):
    """Shift each 8x8 image by -1, 0 or +1 pixel in each direction (zero fill)."""
    k1, k2 = jr.split(key)
    dx = jr.randint(k1, (x.shape[0],), 0, 3)
    dy = jr.randint(k2, (x.shape[0],), 0, 3)
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1)))
    return jax.vmap(lambda im, a, b: jax.lax.dynamic_slice(im, (a, b), (8, 8)))(padded, dx, dy)


def train_classifier(
    model,
    data,
    *,
    epochs,
    batch=64,
    lr=3e-3,
    weight_decay=1e-4,
    seed=0,
    log=None,
    eval_every=0,
    augment=False,
):
    """Adam(W) with a cosine schedule on cross-entropy, optionally with random one-pixel
    shifts of the training images. Returns (model, history dict)."""
    x_tr, y_tr, x_te, y_te = data
    steps_per_epoch = len(x_tr) // batch
    opt = optax.adamw(
        optax.cosine_decay_schedule(lr, epochs * steps_per_epoch), weight_decay=weight_decay
    )
    state = opt.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def step(model, state, x, y, key):
        if augment:
            x = random_shift(x, key)

        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

        loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
        updates, state = opt.update(grads, state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), state, loss

    rng = np.random.default_rng(seed)
    key = jr.key(seed)
    history = {"loss": [], "epoch_test_acc": []}
    start = time.perf_counter()
    for epoch in range(epochs):
        perm = rng.permutation(len(x_tr))
        losses = []
        for i in range(steps_per_epoch):
            idx = perm[i * batch : (i + 1) * batch]
            key, sub = jr.split(key)
            model, state, loss = step(model, state, x_tr[idx], y_tr[idx], sub)
            losses.append(loss)
        history["loss"].append(float(jnp.mean(jnp.stack(losses))))
        if eval_every and (epoch + 1) % eval_every == 0:
            history["epoch_test_acc"].append((epoch + 1, accuracy(model, x_te, y_te)))
        if log is not None:
            log(epoch, history)
    history["train_time_s"] = time.perf_counter() - start
    return model, history


@eqx.filter_jit
def _predict(model, x):
    return jnp.argmax(model(x), axis=-1)


def accuracy(model, x, y) -> float:
    return float(jnp.mean(_predict(model, x).astype(jnp.asarray(y).dtype) == y))
