"""PyTorch twins of advjax's CNNs, with the weights copied from Flax variables.

Used to check advjax against independent implementations (torchattacks, PyTorch training loops) on
identical weights. Layout conversion: Flax conv kernels are HWIO and torch's OIHW; Flax dense kernels
are (in, out) and torch's (out, in); Flax flattens NHWC, so the twin permutes NCHW -> NHWC before
flattening. Twins take NCHW input (`to_nchw`) and are returned in eval mode, float32.

Supported: MadryCNN and CNN4C3F (any widths / convs_per_block / fc_widths / padding) without input
normalization (mean/std None), the models the cross-checks use.
"""

from __future__ import annotations

import numpy as np


def to_nchw(x: np.ndarray):
    import torch
    return torch.tensor(np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2)))


def _conv(torch, p, padding):
    kernel = np.asarray(p["kernel"])
    kh, kw, c_in, c_out = kernel.shape
    pad = (kh // 2) if padding == "SAME" else 0
    layer = torch.nn.Conv2d(c_in, c_out, (kh, kw), padding=pad)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(kernel.transpose(3, 2, 0, 1)))
        layer.bias.copy_(torch.tensor(np.asarray(p["bias"])))
    return layer


def _dense(torch, p):
    kernel = np.asarray(p["kernel"])
    layer = torch.nn.Linear(*kernel.shape)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(kernel.T))
        layer.bias.copy_(torch.tensor(np.asarray(p["bias"])))
    return layer


def _nchw_to_nhwc(torch):
    class ToNHWC(torch.nn.Module):
        def forward(self, x):
            return x.permute(0, 2, 3, 1)
    return ToNHWC()


def torch_twin(model, variables):
    """An eval-mode torch.nn.Module computing the same logits as `model.apply(variables, x)`."""
    import torch
    name = type(model).__name__
    if getattr(model, "mean", None) is not None or getattr(model, "std", None) is not None:
        raise ValueError("torch_twin supports models without input normalization (mean/std None)")
    p = variables["params"]
    layers = []
    if name == "MadryCNN":
        for i in (1, 2):
            layers += [_conv(torch, p[f"conv{i}"], "SAME"), torch.nn.ReLU(), torch.nn.MaxPool2d(2)]
        layers += [_nchw_to_nhwc(torch), torch.nn.Flatten(), _dense(torch, p["fc1"]),
                   torch.nn.ReLU(), _dense(torch, p["fc2"])]
    elif name == "CNN4C3F":
        n = 0
        for _ in model.widths:
            for _ in range(model.convs_per_block):
                n += 1
                layers += [_conv(torch, p[f"conv{n}"], model.padding), torch.nn.ReLU()]
            layers.append(torch.nn.MaxPool2d(2))
        layers += [_nchw_to_nhwc(torch), torch.nn.Flatten()]
        for i in range(len(model.fc_widths)):
            layers += [_dense(torch, p[f"fc{i + 1}"]), torch.nn.ReLU()]
            if i == 0:
                layers.append(torch.nn.Dropout(model.dropout_rate))
        layers.append(_dense(torch, p[f"fc{len(model.fc_widths) + 1}"]))
    else:
        raise ValueError(f"no torch twin for {name}; supported: MadryCNN, CNN4C3F")
    return torch.nn.Sequential(*layers).float().eval()
