"""The suite's own selection rules (tests/conftest.py): intrusive tests run only when asked for."""
import pytest
from conftest import INTRUSIVE_VARIABLE, pytest_collection_modifyitems


class _Item:
    """What the collection hook uses of a pytest item: its markers."""

    def __init__(self, *markers: str):
        self.markers = [getattr(pytest.mark, m) for m in markers]

    def get_closest_marker(self, name):
        return next((m for m in self.markers if m.name == name), None)

    def add_marker(self, marker):
        self.markers.append(marker)

    def skip_reason(self):
        skip = self.get_closest_marker("skip")
        return skip and skip.kwargs["reason"]


@pytest.mark.parametrize("asked", [None, "", "0", "1", "true"])
def test_intrusive_tests_are_skipped_with_the_reason_unless_the_variable_asks_for_them(monkeypatch, asked):
    if asked is None:
        monkeypatch.delenv(INTRUSIVE_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(INTRUSIVE_VARIABLE, asked)
    intrusive, harmless = _Item("runs_last", "intrusive"), _Item()
    items = [intrusive, harmless]
    pytest_collection_modifyitems(None, items)
    assert items == [harmless, intrusive] and harmless.skip_reason() is None
    if asked in ("1", "true"):
        assert intrusive.skip_reason() is None
    else:
        assert f"set {INTRUSIVE_VARIABLE}=1 to run it" in intrusive.skip_reason()
