"""Share tokens: round-trip, tamper detection, key rotation, campaign binding."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.tokens import MAX_DEPTH, TOKEN_LENGTH, ShareToken, TokenError, TokenSigner

KEY_A = b"a" * 32
KEY_B = b"b" * 32
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
campaigns = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True)
node_ids = st.integers(min_value=1, max_value=2**64 - 1)


def signer(key_id: int = 1) -> TokenSigner:
    return TokenSigner({1: KEY_A, 2: KEY_B}, key_id)


@given(campaign=campaigns, node=node_ids, generations=st.integers(0, 30))
def test_token_round_trips(campaign: str, node: int, generations: int) -> None:
    s = signer()
    token = s.mint_root(campaign, node)
    for _ in range(generations):
        token = s.mint_child(token)
    assert len(token.raw) <= TOKEN_LENGTH
    assert all(ch in ALPHABET for ch in token.raw)
    assert s.verify(token.raw, campaign) == token
    assert token.root == node and token.depth == generations


@settings(max_examples=300)
@given(campaign=campaigns, position=st.integers(0, TOKEN_LENGTH - 1), data=st.data())
def test_any_single_character_edit_is_detected(
    campaign: str, position: int, data: st.DataObject
) -> None:
    s = signer()
    token = s.mint_child(s.mint_root(campaign))
    replacement = data.draw(st.sampled_from([c for c in ALPHABET if c != token.raw[position]]))
    forged = token.raw[:position] + replacement + token.raw[position + 1 :]
    with pytest.raises(TokenError) as caught:
        s.verify(forged, campaign)
    assert caught.value.reason in {"bad_signature", "unknown_key", "wrong_campaign", "malformed"}


@given(campaign=campaigns, other=campaigns)
def test_token_of_another_campaign_is_refused(campaign: str, other: str) -> None:
    if campaign == other:
        return
    s = signer()
    token = s.mint_root(campaign)
    with pytest.raises(TokenError) as caught:
        s.verify(token.raw, other)
    # The 3-byte campaign tag can collide; the MAC still refuses the token.
    assert caught.value.reason in {"wrong_campaign", "bad_signature"}


@given(campaign=campaigns)
def test_token_signed_with_a_key_we_do_not_hold_is_refused(campaign: str) -> None:
    outsider = TokenSigner({1: b"x" * 32}, 1)
    with pytest.raises(TokenError) as caught:
        signer().verify(outsider.mint_root(campaign).raw, campaign)
    assert caught.value.reason == "bad_signature"
    retired = TokenSigner({9: KEY_A}, 9).mint_root(campaign)
    with pytest.raises(TokenError) as caught:
        signer().verify(retired.raw, campaign)
    assert caught.value.reason == "unknown_key"


def test_rotation_old_key_still_verifies_and_children_use_the_new_key() -> None:
    old = TokenSigner({1: KEY_A}, 1).mint_root("spring")
    rotated = TokenSigner({1: KEY_A, 2: KEY_B}, 2)
    parent = rotated.verify(old.raw, "spring")
    child = rotated.mint_child(parent)
    assert child.key_id == 2 and child.root == old.root and child.depth == 1
    assert rotated.verify(child.raw, "spring") == child
    # Once key 1 is retired, tokens it signed no longer verify.
    with pytest.raises(TokenError):
        TokenSigner({2: KEY_B}, 2).verify(old.raw, "spring")


@pytest.mark.parametrize(
    "raw",
    ["", "short", "A" * 39, "A" * 41, "!" * 40, "A" * 39 + "=", "é" * 40, "A" * 40],
)
def test_malformed_strings_are_refused(raw: str) -> None:
    with pytest.raises(TokenError):
        signer().verify(raw, "spring")


def test_link_root_is_stable_and_distinct_per_slug() -> None:
    s = signer()
    assert s.link_root("spring", "launch") == s.link_root("spring", "launch")
    assert s.link_root("spring", "launch").root != s.link_root("spring", "other").root
    assert signer().link_root("spring", "launch").is_root


def test_depth_limit() -> None:
    s = signer()
    deep = ShareToken("x", 1, 5, 6, MAX_DEPTH, "spring")
    with pytest.raises(TokenError) as caught:
        s.mint_child(deep)
    assert caught.value.reason == "too_deep"
