"""The package's front door: the usage example in sphere_core's docstring (and docs/model.md) runs as
written."""

from __future__ import annotations

import textwrap

import torch

import sphere_core


def test_docstring_example_trains_a_step_and_samples() -> None:
    doc = sphere_core.__doc__ or ""
    example = textwrap.dedent(doc[doc.index("    import torch") : doc.index("The package never")])
    namespace: dict[str, object] = {}
    exec(compile(example, "sphere_core.__doc__", "exec"), namespace)
    out, samples = namespace["out"], namespace["samples"]
    assert torch.isfinite(torch.tensor(out.metrics["loss"]))  # type: ignore[attr-defined]
    assert samples.shape == (10, 1, 32, 32)  # type: ignore[attr-defined]
    assert samples.min() >= 0.0 and samples.max() <= 1.0  # type: ignore[attr-defined]


def test_public_names_resolve() -> None:
    for name in sphere_core.__all__:
        assert getattr(sphere_core, name) is not None
