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

from jode._training import Progress, run_chunks
from jode.nn.neural_ode import ConvField, NeuralODE, ODEBlock, _conv_init, conv3x3, group_norm


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
    desc="train",
    progress=True,
):
    """Adam(W) with a cosine schedule on cross-entropy, optionally with random one-pixel
    shifts of the training images. Returns (model, history dict); the history's
    train_time_s excludes the compilation (compile_time_s)."""
    x_tr, y_tr, x_te, y_te = data
    steps_per_epoch = len(x_tr) // batch
    opt = optax.adamw(
        optax.cosine_decay_schedule(lr, epochs * steps_per_epoch), weight_decay=weight_decay
    )
    state = opt.init(eqx.filter(model, eqx.is_array))

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
    # Compile once, ahead of time, and read XLA's buffer assignment of one training step:
    # its peak memory is arguments + outputs + temporaries (a count, independent of load).
    compiled = eqx.filter_jit(step).lower(model, state, x_tr[:batch], y_tr[:batch], key).compile()
    history["step_memory_bytes"] = step_memory_bytes(compiled)
    history["compile_time_s"] = time.perf_counter() - start
    step = compiled

    def epoch(run):  # one epoch on a fresh permutation: (model, state, key, mean loss)
        model, state, key, _ = run
        perm = rng.permutation(len(x_tr))
        losses = []
        for i in range(steps_per_epoch):
            idx = perm[i * batch : (i + 1) * batch]
            key, sub = jr.split(key)
            model, state, loss = step(model, state, x_tr[idx], y_tr[idx], sub)
            losses.append(loss)
        return model, state, key, float(jnp.mean(jnp.stack(losses)))

    def after(run, done, taken):
        n = done // steps_per_epoch  # epochs done
        history["loss"].append(run[3])
        if eval_every and n % eval_every == 0:
            history["epoch_test_acc"].append((n, accuracy(run[0], x_te, y_te)))
        if log is not None:
            log(n - 1, history)

    start = time.perf_counter()
    # Compiled above: no epoch is left out of the bar's rate.
    bar = Progress(epochs * steps_per_epoch, desc, progress, compiled=True)
    model = run_chunks(epoch, (model, state, key, None), total=epochs * steps_per_epoch,
                       chunk=steps_per_epoch, loss_of=lambda run: run[3], progress=bar,
                       on_chunk=after).state[0]
    bar.close()
    history["train_time_s"] = time.perf_counter() - start
    return model, history


def step_memory_bytes(compiled) -> int | None:
    """Peak memory of a compiled `eqx.filter_jit` function from XLA's memory analysis:
    argument + output + temporary buffers (None when the backend does not report it)."""
    try:
        ma = compiled.compiled.memory_analysis()
    except (AttributeError, NotImplementedError):
        return None
    if ma is None:
        return None
    return int(ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes)


@eqx.filter_jit
def _predict(model, x):
    return jnp.argmax(model(x), axis=-1)


def accuracy(model, x, y) -> float:
    return float(jnp.mean(_predict(model, x).astype(jnp.asarray(y).dtype) == y))


def digits_table(
    seed: int,
    *,
    channels: int,
    res_blocks: int,
    mlp_hidden: int,
    models=("odenet", "resnet", "mlp"),
    log=None,
    **recipe,
):
    """Train the ODE-Net, the ResNet and the MLP with one recipe (`train_classifier`
    keywords: epochs, lr, weight_decay, augment, batch) on the fixed digits split and
    return ({name: row}, {name: trained model}). Each row: test accuracy and error,
    parameters, training and compile time, peak memory of one training step, forward NFE
    of one batch (ODE-Net: counted by the solver; ResNet: its number of blocks)."""
    from jode.ode.explicit import RK4
    from jode_experiments.data.images import load_digits

    data = load_digits(flatten=False)
    key = jr.key(seed)
    k_ode, k_res, k_mlp = jr.split(key, 3)
    makers = {
        "odenet": lambda: make_odenet(k_ode, channels, solver=RK4(), n_steps=2),
        "resnet": lambda: make_resnet(k_res, channels, res_blocks),
        "mlp": lambda: make_mlp(k_mlp, mlp_hidden),
    }
    rows, trained = {}, {}
    for name in models:
        model, hist = train_classifier(makers[name](), data, seed=seed, log=log,
                                       desc=f"digits: {name}", **recipe)
        acc = accuracy(model, data[2], data[3])
        rows[name] = {
            "seed": seed,
            "test_accuracy": acc,
            "test_error": 1 - acc,
            "test_correct": int(round(acc * len(data[3]))),
            "n_test": len(data[3]),
            "params": n_params(model),
            "train_time_s": hist["train_time_s"],
            "compile_time_s": hist["compile_time_s"],
            "step_memory_mb": None
            if hist["step_memory_bytes"] is None
            else hist["step_memory_bytes"] / 2**20,
            "first_train_loss": hist["loss"][0],
            "final_train_loss": hist["loss"][-1],
            "epoch_test_acc": hist["epoch_test_acc"],
        }
        if name == "odenet":
            h = model.stem(jnp.asarray(data[0][: recipe.get("batch", 64)]))
            rows[name]["nfe_forward_per_batch"] = int(model.block.nfe(h))
        elif name == "resnet":
            rows[name]["nfe_forward_per_batch"] = res_blocks
        else:
            rows[name]["nfe_forward_per_batch"] = 0
        trained[name] = model
    return rows, trained, data


if __name__ == "__main__":
    import argparse
    import json

    p = argparse.ArgumentParser(description="ODE-Net / ResNet / MLP on the digits split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--res-blocks", type=int, default=6)
    p.add_argument("--mlp-hidden", type=int, default=256)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--models", default="odenet,resnet,mlp")
    p.add_argument("--out", required=True)
    p.add_argument("--save", help="write the trained ODE-Net here (equinox leaves)")
    a = p.parse_args()
    rows, trained, _ = digits_table(
        a.seed,
        channels=a.channels,
        res_blocks=a.res_blocks,
        mlp_hidden=a.mlp_hidden,
        models=tuple(a.models.split(",")),
        epochs=a.epochs,
        lr=a.lr,
        weight_decay=a.weight_decay,
        augment=not a.no_augment,
        eval_every=10,
        log=lambda e, h: print(e, h["loss"][-1], h["epoch_test_acc"][-1:], flush=True),
    )
    if a.save and "odenet" in trained:
        eqx.tree_serialise_leaves(a.save, trained["odenet"])
    recipe = vars(a)
    with open(a.out, "w") as fh:
        json.dump({"recipe": recipe, "rows": rows}, fh, indent=1)
    for name, r in rows.items():
        print(name, r["test_accuracy"], r["params"], round(r["train_time_s"]), r["step_memory_mb"])
