import struct

import pytest
from hypothesis import given, strategies as st

from appliance.kafka.framing import FrameError, FrameSplitter, frame


@given(st.lists(st.binary(max_size=300), max_size=20), st.data())
def test_any_split_of_a_stream_gives_back_the_frames(payloads, data):
    stream = b"".join(frame(p) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    splitter = FrameSplitter(1 << 20)
    got = []
    last = 0
    for cut in cuts + [len(stream)]:
        got += splitter.feed(stream[last:cut])
        last = cut
        assert all(type(f) is bytes for f in got)  # never a view of a buffer that changes later
        assert splitter.pending == cut - sum(map(len, got))  # the budget's books: exactly what is held
    assert got == [frame(p) for p in payloads]
    assert splitter.pending == 0


def test_an_oversized_frame_behind_whole_frames_in_one_read_is_refused():
    with pytest.raises(FrameError, match="frame size 2000 is outside 0..1024"):
        FrameSplitter(1024).feed(frame(b"ok") + frame(b"fine") + struct.pack(">i", 2000) + b"x" * 10)


def test_oversized_frame_is_refused_before_it_is_buffered():
    splitter = FrameSplitter(1024)
    with pytest.raises(FrameError, match="frame size 1025 is outside 0..1024"):
        splitter.feed(struct.pack(">i", 1025))


def test_negative_size_is_refused():
    with pytest.raises(FrameError, match="frame size -1"):
        FrameSplitter(1024).feed(b"\xff\xff\xff\xff")
