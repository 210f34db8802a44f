"""Ensembles of face models, and the soft labels that distil one into a single model.

    ens = Ensemble([load_model("runs/a"), load_model("runs/b")])
    probs = predict_probabilities(ens, faces)          # the members' average, (N, 7)
    save_ensemble(ens, "ensemble.npz")                 # one file; load_model reads it back
    targets = soft_labels(ens, x_train)                # (N, 7) for fit(x_train, targets)

Why an average helps: members trained from different seeds (or architectures) make
partly independent mistakes, so averaging their probabilities cancels some of each
one's noise; on FER-2013 the literature gains 2-3 points from a handful of members.
An ensemble costs one forward pass per member, which is what distillation removes: a
single *student* is trained on the ensemble's probabilities (its "dark knowledge": that
this angry face is also a bit sad) instead of the one-hot labels, and keeps part of the
gain at one member's cost (Hinton, Vinyals and Dean, 2015).

Each member keeps its own preprocessing (``fer_models.preprocess``): the ensemble is
given raw [0, 1] faces and every member sees them as it was trained to.
"""
from __future__ import annotations

import json

import numpy as np

from tinycnn.model import save_npz_atomic

from .architectures import build, names
from .preprocess import METHODS
from .probabilities import predict_probabilities, preprocessing_of

ENSEMBLE_KEY = "__ensemble__"   # a JSON list of the members' architecture and preprocessing


class Ensemble:
    """Several trained models whose softmax probabilities are averaged.

    Args:
        members: ``tinycnn.Sequential`` models with 7 outputs, e.g. from ``load_model``.
        name: shown in reports; default ``ensemble(<member names>)``.
    """

    def __init__(self, members, name=None):
        members = list(members)
        if not members:
            raise ValueError("Ensemble: needs at least one member")
        for m in members:
            if isinstance(m, Ensemble):
                raise ValueError("Ensemble: members must be single models (pass an ensemble's .members)")
        self.members = members
        self.name = name or f"ensemble({'+'.join(m.name for m in members)})"

    def __len__(self):
        return len(self.members)

    def count_params(self) -> int:
        return sum(m.count_params() for m in self.members)

    def multiply_adds(self) -> int:
        return sum(m.multiply_adds() for m in self.members)

    def predict_probabilities(self, batch, tta=False) -> np.ndarray:
        """faces (N, 48, 48, 1) in [0, 1] -> the members' mean probabilities (N, 7)."""
        return np.mean([predict_probabilities(m, batch, tta=tta) for m in self.members], axis=0)

    def inference_copy(self) -> "Ensemble":
        """The same ensemble for prediction only: each member's ``inference_copy()``
        (BatchNorm folded once, Dropout left out), a snapshot of their weights."""
        return Ensemble([m.inference_copy() for m in self.members], name=self.name)

    def __repr__(self):
        return f"Ensemble({self.name!r}, {len(self)} members)"


def save_ensemble(ensemble: Ensemble, path, half=False) -> None:
    """One ``.npz`` with every member's weights (``member<i>/<layer>/<weight>``) and a JSON
    list of their architectures and preprocessing; ``load_model(path)`` returns the Ensemble.

    ``half``: store the weights as float16, half the file (they are float32 again once
    loaded), and deflate the file (float16's exponent bits compress: 8.85 MB became
    8.16 MB for three networks of 1.3-1.5M weights, under the 8 MiB a bundled file may
    take). Each weight then carries a relative rounding error of at most 2**-11, far
    below what training itself leaves uncertain; measure the stored file all the same
    (``train.py --ensemble ... --half`` does). A weight beyond float16's range (65504)
    raises ValueError rather than being stored as inf."""
    arrays = {ENSEMBLE_KEY: np.array(json.dumps(
        [{"model": m.name, "preprocessing": preprocessing_of(m)} for m in ensemble.members]))}
    for i, m in enumerate(ensemble.members):
        for k, v in m.get_weights().items():
            if half:
                if np.abs(v).max(initial=0) > np.finfo(np.float16).max:
                    raise ValueError(f"save_ensemble: member {i} ({m.name}) weight '{k}' exceeds float16's "
                                     f"range (largest {np.abs(v).max():.4g}); save it with half=False")
                v = v.astype(np.float16)
            arrays[f"member{i}/{k}"] = v
    save_npz_atomic(path, arrays, compressed=half)


def ensemble_from_arrays(arrays: dict, path) -> Ensemble:
    """The Ensemble stored in ``arrays`` (as read from ``path``, named in errors)."""
    try:
        specs = json.loads(str(arrays[ENSEMBLE_KEY]))
        assert isinstance(specs, list) and specs and all(isinstance(s, dict) for s in specs)
    except (ValueError, AssertionError):
        raise ValueError(f"{path}: its ensemble description is damaged") from None
    members = []
    for i, spec in enumerate(specs):
        name, preprocessing = spec.get("model"), spec.get("preprocessing", "none")
        if name not in names() or preprocessing not in METHODS:
            raise ValueError(f"{path}: member {i} has unknown architecture {name!r} or preprocessing "
                             f"{preprocessing!r}")
        prefix = f"member{i}/"
        weights = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
        net = build(name)
        try:
            net.set_weights(weights)
        except ValueError as e:
            raise ValueError(f"{path}: member {i} does not fit model '{name}': {e}") from None
        net.preprocessing = preprocessing
        members.append(net)
    return Ensemble(members)


def soft_labels(teacher, x, tta=True, batch_size=256, progress=False) -> np.ndarray:
    """A teacher's probabilities (N, 7) float32 for faces x (N, 48, 48, 1) in [0, 1]:
    the targets a distilled student is trained on. ``teacher``: an Ensemble or a model.
    Rows are renormalised in float64 so each sums to 1 (as the loss checks)."""
    from tqdm import tqdm
    out = np.empty((len(x), 7), np.float64)
    for s in tqdm(range(0, len(x), batch_size), desc="teacher's soft labels", disable=not progress, unit="batch"):
        out[s:s + batch_size] = predict_probabilities(teacher, x[s:s + batch_size], tta=tta)
    out /= out.sum(axis=1, keepdims=True)
    return out.astype(np.float32)


__all__ = ["Ensemble", "save_ensemble", "soft_labels", "ENSEMBLE_KEY"]
