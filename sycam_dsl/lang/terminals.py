"""The terminals a grammar may use (SPEC section 2): name -> type and meaning."""

from __future__ import annotations

from .types import Type

#: name -> (type, what it is). Gradients are of the logit z_c; "score" is the softmax probability.
TERMINALS: dict[str, tuple[Type, str]] = {
    "grads": (Type.VEC, "mean over h,w of dz_c/dA_k (GradCAM)"),
    "pgrads": (Type.VEC, "mean over h,w of ReLU(dz_c/dA_k) (GradCAM++, positive-gradient form)"),
    "cic": (Type.VEC, "ScoreCAM channel-wise increase of confidence"),
    "abl": (Type.VEC, "AblationCAM score (z_c - z_c^(k)) / z_c"),
    "mlogits": (Type.VEC, "z_c(x * M_k), the target logit of each ScoreCAM-masked image "
                          "(grad-cam's ScoreCAM weights are (softmax mlogits))"),
    "acts": (Type.VEC, "mean over h,w of A_k"),
    "G": (Type.MAP, "gradient maps dz_c/dA [K, h, w]"),
    "A": (Type.MAP, "activations A [K, h, w]"),
}


def terminal_types() -> dict[str, Type]:
    return {name: t for name, (t, _) in TERMINALS.items()}
