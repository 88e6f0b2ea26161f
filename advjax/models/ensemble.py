"""Ensembles of N members of one architecture (thesis Ch. 4, Sec. 4.3 (CCE) and Sec. 3.2 (ENS)).

``Ensemble(member="cnn4c3f", num_members=N, member_config=(("widths", (16, 32)), ...))`` holds the N
members as ONE Flax module lifted with ``nn.vmap``: every parameter (and batch-norm statistic) has a
leading member axis of size N, under ``params["members"]["member"]``, so all members run in one
vectorized forward pass and the parameters stay one pytree for the optimizer, checkpoints and pmap.

Outputs (``apply(variables, x, train=..., return_features=..., return_members=...)``):
  * default: the ensemble prediction log((1/N) sum_n softmax(h_n(x))), the log of the mean of the member
    probabilities (Ch. 4: "ensemble output = mean of softmax probabilities"). Log-probabilities are
    valid logits (softmax gives back the mean probability), so the ensemble is a ``logits_fn`` for
    every attack and for ``advjax eval``.
  * ``return_features=True``: (log-probabilities, member features concatenated on the last axis).
  * ``return_members=True``: the member logits, shape (N, B, classes) (with return_features: a pair
    (member logits, member features (N, B, d))).
  * ``per_member_inputs=True``: x has shape (N, B, ...) and member n sees x[n] (CCE's per-member
    attacks); implies return_members.

``member_config`` is a tuple of (field, value) pairs for the member class (hashable, so the module stays
a valid static argument); configs may give a dict, which ``get_model`` turns into pairs.
``member_variables(variables, n)`` slices member n's variables out, for the member model
``member_model(ensemble)``.
"""

from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp


def _member_class(name: str):
    from advjax.models import MODELS  # late import: this module is imported by advjax.models
    return MODELS[name]


class _Member(nn.Module):
    """One member with its call options fixed as fields (``nn.vmap`` does not map keyword args)."""
    member: str
    member_config: Tuple[Tuple[str, Any], ...]
    num_classes: int
    train: bool
    return_features: bool

    @nn.compact
    def __call__(self, x):
        model = _member_class(self.member)(num_classes=self.num_classes, **dict(self.member_config),
                                           name="member")
        return model(x, train=self.train, return_features=self.return_features)


class Ensemble(nn.Module):
    """N members of one architecture with stacked parameters; output = log mean member probability
    (Ch. 4, Sec. 4.3). See the module docstring."""

    member: str = "cnn4c3f"
    num_members: int = 2
    member_config: Tuple[Tuple[str, Any], ...] = ()
    num_classes: int = 10

    def __post_init__(self):
        # Configs give member_config as a dict; the module needs hashable (field, value) pairs.
        if hasattr(self.member_config, "items"):
            object.__setattr__(self, "member_config", _as_pairs(self.member_config))
        super().__post_init__()

    @nn.compact
    def __call__(self, x, *, train: bool = False, return_features: bool = False,
                 return_members: bool = False, per_member_inputs: bool = False):
        lifted = nn.vmap(_Member, in_axes=0 if per_member_inputs else None, out_axes=0,
                         axis_size=self.num_members,
                         variable_axes={"params": 0, "batch_stats": 0},
                         split_rngs={"params": True, "dropout": True})
        out = lifted(self.member, tuple(self.member_config), self.num_classes, train,
                     return_features, name="members")(x)
        if return_members or per_member_inputs:
            return out
        member_logits, features = out if return_features else (out, None)
        log_probs = ensemble_log_probs(member_logits)
        if not return_features:
            return log_probs
        feats = jnp.concatenate(list(features), axis=-1)
        return log_probs, feats


def _hashable(value):
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    return value


def _as_pairs(config) -> Tuple[Tuple[str, Any], ...]:
    return tuple(sorted((str(k), _hashable(v)) for k, v in config.items()))


def ensemble_log_probs(member_logits: jax.Array) -> jax.Array:
    """log((1/N) sum_n softmax(z_n)) from member logits (N, B, C), stably (logsumexp)."""
    n = member_logits.shape[0]
    return jax.nn.logsumexp(jax.nn.log_softmax(member_logits, axis=-1), axis=0) - jnp.log(n)


def member_model(ensemble: Ensemble) -> nn.Module:
    """The standalone member architecture of an ensemble."""
    return _member_class(ensemble.member)(num_classes=ensemble.num_classes,
                                          **dict(ensemble.member_config))


def member_variables(variables: Dict[str, Any], n: int) -> Dict[str, Any]:
    """Member n's variables (every collection), for ``member_model(ensemble).apply``."""
    return {col: jax.tree_util.tree_map(lambda a: a[n], tree["members"]["member"])
            for col, tree in variables.items()}


def stack_member_variables(members: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """The ensemble variables from a list of member variable dicts (inverse of member_variables)."""
    cols = members[0].keys()
    return {col: {"members": {"member": jax.tree_util.tree_map(lambda *a: jnp.stack(a),
                                                               *[m[col] for m in members])}}
            for col in cols}
