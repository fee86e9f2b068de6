"""Property tests of the fake Firecracker API: whatever arrives, it answers like Firecracker (200/204, or 400 with
a fault message) and accepts a body only when it satisfies the endpoint's published schema."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.agent.vmm.fake_firecracker import ENDPOINTS, FakeFirecracker

_FIELDS = sorted({name for e in ENDPOINTS for name in (*e.required, *e.optional)})
_PATHS = sorted({e.path.replace("{id}", "x") for e in ENDPOINTS})

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 100) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
bodies = (
    st.none()
    | st.lists(json_values, max_size=2)
    | st.dictionaries(st.sampled_from(_FIELDS) | st.text(max_size=6), json_values, max_size=6)
)


@settings(max_examples=300, deadline=None)
@given(
    method=st.sampled_from(["GET", "PUT", "PATCH", "DELETE"]),
    path=st.sampled_from(_PATHS) | st.text(max_size=12),
    body=bodies,
)
def test_every_request_gets_a_firecracker_answer(method: str, path: str, body: Any) -> None:
    fake = FakeFirecracker()
    status, reply = fake.handle(method, path, body)
    assert status in {200, 204, 400}
    if status == 400:
        assert isinstance(reply, dict)
        assert isinstance(reply["fault_message"], str)
        assert reply["fault_message"]
    if status == 204:
        endpoint = next(e for e in ENDPOINTS if e.match(method, path) is not None)
        assert isinstance(body, dict)
        assert set(endpoint.required) <= set(body)
        if endpoint.path != "/mmds":
            assert set(body) <= {*endpoint.required, *endpoint.optional}
    assert fake.calls[-1].status == status
