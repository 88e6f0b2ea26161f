"""Standard (natural) training: mean cross-entropy on clean inputs."""

from __future__ import annotations

from advjax.objectives import _common as c


def make(apply_fn: c.ApplyFn) -> c.Objective:
    """Empirical risk minimization, L = mean_i CE(f(x_i), y_i) (the ADT paper's "Standard" row)."""

    def objective(params, state, batch, key):
        logits, model_state = c.train_forward(apply_fn, params, state["model"], batch["image"], key)
        loss = c.mean_ce(logits, batch["label"])
        return c.result(loss, {"acc": c.accuracy(logits, batch["label"])}, model_state,
                        state["method"])

    return c.Objective(objective)
