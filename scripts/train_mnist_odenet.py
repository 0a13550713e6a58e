"""Train the ODE-Net of Chen et al. (2018, §3, Table 1: 0.42% test error, 0.22M parameters)
on the real MNIST (28x28) on a GPU/TPU.

    JODE_MNIST_DIR=/path/to/idx python scripts/train_mnist_odenet.py --epochs 100

Architecture: a 3x3 convolution to 64 channels at 28x28, then strided 3x3 convolutions to
14x14 and to 7x7 (the paper's downsampling), one ODE block with a 64-channel
`jode.nn.ConvField` solved by Dopri5 (rtol=atol=1e-3) over t ∈ [0, 1], group norm, average
pooling and a linear layer. Adam with a step decay, batch 128; checkpoints with
`eqx.tree_serialise_leaves` (no pickle) after every epoch and resumes from them. This
network has 0.15M parameters (the paper's: 0.22M); the script has not been run to completion
here (no GPU and no MNIST files on the development machine).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import equinox as eqx
import jax

import jode  # noqa: E402

jode.configure_cpu()  # one-kernel XLA:CPU solve loops: before any JAX computation
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

from jode.nn.neural_ode import ConvField, NeuralODE, _conv_init, conv3x3, group_norm
from jode_experiments.data import load_mnist


class MNISTODENet(eqx.Module):
    w: list
    b: list
    ode: NeuralODE
    head: eqx.nn.Linear

    def __init__(self, key, channels=64, adjoint=None):
        keys = jr.split(key, 6)
        sizes = [(1, channels), (channels, channels), (channels, channels)]
        params = [_conv_init(k, a, c) for k, (a, c) in zip(keys[:3], sizes, strict=True)]
        self.w = [p[0] for p in params]
        self.b = [p[1] for p in params]
        self.ode = NeuralODE(
            ConvField(channels, key=keys[3]),
            solver=jode.Dopri5(),
            rtol=1e-3,
            atol=1e-3,
            adjoint=adjoint or jode.DirectAdjoint(),
        )
        self.head = eqx.nn.Linear(channels, 10, key=keys[4])

    def __call__(self, x):
        h = conv3x3(x[..., None], self.w[0], self.b[0])
        h = conv3x3(jax.nn.relu(group_norm(h, 8)), self.w[1], self.b[1], stride=2)  # 14x14
        h = conv3x3(jax.nn.relu(group_norm(h, 8)), self.w[2], self.b[2], stride=2)  # 7x7
        h = self.ode(h)
        h = jax.nn.relu(group_norm(h, 8)).mean(axis=(-3, -2))
        return jax.vmap(self.head)(h)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="MNIST IDX folder (default $JODE_MNIST_DIR)")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--adjoint", choices=("direct", "backsolve"), default="direct")
    parser.add_argument("--checkpoint", type=Path, default=Path("results/mnist_odenet.eqx"))
    ns = parser.parse_args()

    x_tr, y_tr = load_mnist("train", ns.root, flatten=False)
    x_te, y_te = load_mnist("test", ns.root, flatten=False)
    adjoint = jode.BacksolveAdjoint() if ns.adjoint == "backsolve" else jode.DirectAdjoint()
    model = MNISTODENet(jr.key(0), adjoint=adjoint)
    n_params = sum(a.size for a in jax.tree.leaves(eqx.filter(model, eqx.is_array)))
    print(f"parameters: {n_params / 1e6:.3f}M", flush=True)
    steps = len(x_tr) // ns.batch
    schedule = optax.piecewise_constant_schedule(
        ns.lr, {int(steps * ns.epochs * f): 0.1 for f in (0.6, 0.8)}
    )
    opt = optax.adam(schedule)
    state = opt.init(eqx.filter(model, eqx.is_array))
    start_epoch = 0
    if ns.checkpoint.exists():
        model, state, start_epoch = eqx.tree_deserialise_leaves(ns.checkpoint, (model, state, 0))
        print(f"resumed from {ns.checkpoint} at epoch {start_epoch}", flush=True)

    @eqx.filter_jit
    def step(model, state, x, y):
        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

        loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
        updates, state = opt.update(grads, state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), state, loss

    @eqx.filter_jit
    def predict(model, x):
        return jnp.argmax(model(x), -1)

    rng = np.random.default_rng(0)
    for epoch in range(int(start_epoch), ns.epochs):
        t = time.perf_counter()
        perm = rng.permutation(len(x_tr))
        for i in range(steps):
            idx = perm[i * ns.batch : (i + 1) * ns.batch]
            model, state, loss = step(model, state, x_tr[idx], y_tr[idx])
        correct = sum(
            int(jnp.sum(predict(model, x_te[i : i + 1000]) == y_te[i : i + 1000]))
            for i in range(0, len(x_te), 1000)
        )
        error = 100 * (1 - correct / len(x_te))
        seconds = time.perf_counter() - t
        print(f"epoch {epoch + 1}: loss {float(loss):.4f}, error {error:.2f}%, {seconds:.0f} s")
        ns.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        eqx.tree_serialise_leaves(ns.checkpoint, (model, state, epoch + 1))


if __name__ == "__main__":
    main()
