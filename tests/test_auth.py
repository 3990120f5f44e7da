"""API keys: parsing, owners, constant-time lookup; the routes' use of them is in test_api."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from imgcrunch.api.auth import ApiKeys, fingerprint
from imgcrunch.config import Settings

KEY_A = "a" * 16 + "-first-key"
KEY_B = "b" * 16 + "-second-key"


def test_no_keys_means_no_checks() -> None:
    assert not ApiKeys.parse([]).enabled


def test_a_named_key_is_owned_by_its_name_and_a_bare_one_by_its_fingerprint() -> None:
    keys = ApiKeys.parse([f"shop-a:{KEY_A}", KEY_B])
    assert keys.enabled
    assert keys.owner_of(KEY_A) == "shop-a"
    assert keys.owner_of(KEY_B) == fingerprint(KEY_B)
    assert fingerprint(KEY_B).startswith("key-")
    assert KEY_B not in fingerprint(KEY_B)


@pytest.mark.parametrize("presented", ["", KEY_A[:-1], KEY_A + "x", f"shop-a:{KEY_A}", "shop-a"])
def test_anything_but_a_whole_key_is_refused(presented: str) -> None:
    assert ApiKeys.parse([f"shop-a:{KEY_A}"]).owner_of(presented) is None


def test_a_replaced_key_keeps_its_owner() -> None:
    before = ApiKeys.parse([f"shop-a:{KEY_A}"])
    after = ApiKeys.parse([f"shop-a:{KEY_B}"])
    assert before.owner_of(KEY_A) == after.owner_of(KEY_B) == "shop-a"
    assert after.owner_of(KEY_A) is None


def test_keys_come_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGCRUNCH_API_KEYS", f" shop-a:{KEY_A} , {KEY_B} ,")
    assert Settings().api_keys == (f"shop-a:{KEY_A}", KEY_B)


def test_a_short_key_is_refused_without_being_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGCRUNCH_API_KEYS", f"shop-a:{KEY_A},shop-b:tooshort")
    with pytest.raises(ValidationError) as refused:
        Settings()
    message = str(refused.value)
    assert "owner 'shop-b'" in message
    assert "shorter than 16 characters" in message
    assert "tooshort" not in message
