"""Identical products answered once: the keys, the cross-process leads, the shared table, the cache."""

from __future__ import annotations

from attrx.service.engine.leads import Leads
from attrx.service.http.dedup import ResponseCache, SharedKeys, engine_key, product_key


def test_a_product_key_names_title_and_image_bytes_and_nothing_else():
    k = product_key("Red Tee", b"\x89PNG...")
    assert k == product_key("Red Tee", b"\x89PNG...") and len(k) == 16
    assert len({k, product_key("Red Tee", b"\x89PNG..!"), product_key("Red Tea", b"\x89PNG..."),
                product_key("Red Tee", None), product_key(None, b"\x89PNG..."), product_key("", b"")}) == 6
    # length-prefixed: moving bytes between title and image is another product
    assert product_key("ab", b"c") != product_key("a", b"bc")
    assert engine_key(None) == 0 and engine_key(k) != 0


def test_followers_get_the_leaders_answer_and_a_lead_ending_without_one_misses_them():
    leads, a, b, c = Leads(), object(), object(), object()
    assert not leads.follow(7, b, 1)  # nobody leads 7: a miss at once, never a wait
    leads.lead(7, a)
    leads.lead(7, c)  # a second leader of the same product runs its own; the first keeps the followers
    assert leads.follow(7, b, 1) and leads.follow(7, c, 4)
    assert leads.end(7, c) == []  # only the lead's own front-end ends it
    assert leads.end(7, a) == [(b, 1), (c, 4)]
    assert len(leads) == 0 and not leads.follow(7, b, 2)


def test_a_dead_front_ends_leads_release_their_followers():
    leads, a, b = Leads(), object(), object()
    leads.lead(1, a)
    leads.lead(2, a)
    leads.lead(3, b)
    leads.follow(1, b, 10)
    leads.follow(2, b, 11)
    leads.follow(3, a, 12)
    assert sorted(s for _, s in leads.end_link(a)) == [10, 11]
    assert len(leads) == 1


def test_the_shared_table_is_a_hint_that_forgets_only_its_own_key():
    keys = SharedKeys(size=8)
    keys.add(3)
    assert keys.seen(3) and not keys.seen(11) and not keys.seen(0)
    keys.add(11)  # the same entry (11 % 8 == 3): the later product takes it
    keys.discard(3)  # not 3's entry any more: left alone
    assert keys.seen(11) and not keys.seen(3)
    keys.discard(11)
    assert not keys.seen(11)


def test_the_response_cache_is_a_bounded_lru_keyed_on_bundle_product_and_options():
    cache = ResponseCache(2, bundle_id="sha-a")
    k1, k2, k3 = (cache.key(product_key(t, None), ("0.90", 1)) for t in ("a", "b", "c"))
    assert cache.key(product_key("a", None), ("0.95", 1)) != k1
    assert ResponseCache(2, bundle_id="sha-b").key(product_key("a", None), ("0.90", 1)) != k1
    cache.put(k1, {"v": 1})
    cache.put(k2, {"v": 2})
    assert cache.get(k1) == {"v": 1}  # k1 is now the most recent
    cache.put(k3, {"v": 3})  # evicts k2, the least recently used
    assert cache.get(k2) is None and cache.get(k1) == {"v": 1} and cache.get(k3) == {"v": 3}
    assert (cache.hits, cache.misses) == (3, 1)
    assert not ResponseCache(0, "x").on
