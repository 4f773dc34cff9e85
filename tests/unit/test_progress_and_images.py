"""The stall arithmetic of attrx.service.engine.progress, and the catalog's one image reader."""

from __future__ import annotations

import os
import socket

import pytest

from attrx.service.catalog.images import ImageLimits, ImageReadError, named, read_image_file
from attrx.service.engine.progress import BEAT, ENGINE_FIELDS, Progress


def _progress(now: float = 100.0, bound: float = 3.0) -> Progress:
    p = Progress([0.0] * (ENGINE_FIELDS + 4), fronts=2)
    p.reset_engine(now, bound)
    return p


def test_an_idle_engine_that_beats_is_progressing_and_one_that_stops_is_not():
    p = _progress()
    p.beat(110.0)
    assert p.engine_stalled_for(110.2) == pytest.approx(0.2) and not p.stalled(110.2)
    assert p.stalled(113.5)  # no heartbeat for 3.5 s, past the 3 s bound


def test_a_long_batch_is_a_stall_only_past_the_bound():
    p = _progress()
    p.batch_started(100.0)
    p.beat(100.0)
    assert not p.stalled(102.9)
    assert p.stalled(103.1)
    p.set_bound(10.0)  # slow batches lift the bound
    assert not p.stalled(103.1)


def test_work_waiting_since_the_last_batch_counts_even_when_the_engine_cannot_report_it():
    p = _progress()
    p.batch_done(100.0)
    p.v[BEAT] = 104.9  # a heartbeat that looks fine
    assert not p.stalled(105.0)
    assert p.stalled(105.0, waiting_since=101.0)  # an item sent 4 s ago, no batch completed since
    p.batch_done(104.0)
    assert not p.stalled(105.0, waiting_since=101.0)


def test_a_front_end_is_watched_only_once_it_ticks():
    p = _progress()
    assert p.front_stalled_for(0, 200.0) == 0.0  # still loading
    p.front_beat(1, 100.0, 0.0)
    assert p.front_stalled_for(1, 104.0) == pytest.approx(4.0)
    p.front_beat(1, 104.0, 2.5)  # ticked, but 2.5 s late
    assert p.front_stalled_for(1, 104.1) == pytest.approx(2.5)
    p.clear_front(1)
    assert p.front_stalled_for(1, 500.0) == 0.0


def test_only_regular_files_are_read_and_each_refusal_names_what_it_is(tmp_path):
    ok = tmp_path / "a.jpg"
    ok.write_bytes(b"\xff\xd8data")
    assert read_image_file(ok) == b"\xff\xd8data"
    fifo = tmp_path / "f.jpg"
    os.mkfifo(fifo)
    sock_path = tmp_path / "s.jpg"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock_path))
        for path, kind in ((fifo, "a FIFO"), (tmp_path, "a directory"), (sock_path, "a socket"),
                           ("/dev/zero", "a character device")):
            with pytest.raises(ImageReadError, match=kind):
                read_image_file(path)
    with pytest.raises(ImageReadError, match="cannot be read"):
        read_image_file(tmp_path / "missing.jpg")


def test_size_and_folder_limits(tmp_path):
    big = tmp_path / "big.jpg"
    big.write_bytes(b"x" * 2000)
    with pytest.raises(ImageReadError, match="over the limit of 1,000") as e:
        read_image_file(big, ImageLimits(max_bytes=1000))
    assert e.value.reason == "too_large"
    inside, outside = tmp_path / "in", tmp_path / "out"
    inside.mkdir()
    outside.mkdir()
    (outside / "x.jpg").write_bytes(b"x")
    (inside / "link.jpg").symlink_to(outside / "x.jpg")  # a link out of the folder is outside too
    limits = ImageLimits.of(None, [inside])
    with pytest.raises(ImageReadError, match="outside the folders"):
        read_image_file(inside / "link.jpg", limits)
    (inside / "y.jpg").write_bytes(b"y")
    assert read_image_file(inside / "y.jpg", limits) == b"y"
    assert ImageLimits.of(None, []).roots == ()  # default: no confinement


def test_decoder_messages_name_the_file():
    assert named("image: not a decodable image", "/x/a.jpg") == "image '/x/a.jpg': not a decodable image"
    assert named("title too long", "/x/a.jpg") == "title too long"
