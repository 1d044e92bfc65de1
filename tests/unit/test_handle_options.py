"""DeploymentHandle.options(): Ray's keywords, and TypeError for any other."""

from __future__ import annotations

import pytest

from schooner.handle import DeploymentHandle


def test_unknown_keyword_raises_type_error() -> None:
    handle = DeploymentHandle("Model", "app")
    with pytest.raises(TypeError, match="unexpected keyword"):
        handle.options(method="other")  # type: ignore[call-arg]


def test_ray_keywords_are_accepted() -> None:
    handle = DeploymentHandle("Model", "app").options(
        method_name="predict",
        multiplexed_model_id="m1",
        session_id="s",
        stream=True,
        _by_reference=False,
        request_serialization="pickle",
        response_serialization="cloudpickle",
    )
    assert handle._options.method_name == "predict"
    assert handle._options.stream and handle._options.multiplexed_model_id == "m1"


def test_unknown_serialization_is_refused() -> None:
    with pytest.raises(ValueError, match="request_serialization"):
        DeploymentHandle("Model", "app").options(request_serialization="json")


def test_prefer_local_routing_is_deprecated() -> None:
    with pytest.warns(DeprecationWarning):
        DeploymentHandle("Model", "app").options(_prefer_local_routing=True)
