"""Files whose records go a little back in time (multi-queue NICs, `tcpdump -i any`): the same
document as from the same frames in time order, in both modes (each packet's sightings are put
in time order before its shape is looked up: the shapes are shared again, which is most of the
speed, bench/bench_analyze.py --step-back)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from factories import SAMPLES, pcap_bytes, run_cli
from tracer.capture.pcapio import open_capture


def rewritten(src: Path, dst: Path, step_back: bool) -> int:
    """`src`'s sample with every point's files written anew, with `step_back` each third record
    before the one ahead of it (the times as they were: the file goes back in time there).
    Returns how many records went back."""
    shutil.copytree(src, dst)
    back = 0
    for f in sorted(dst.glob("*/*.pcap")):
        cap, recs = open_capture(str(f))
        frames = [(r.time, bytes(r.data)) for r in recs]
        for i in range(2, len(frames), 3) if step_back else ():
            if frames[i][0] != frames[i - 1][0]:
                frames[i - 1], frames[i] = frames[i], frames[i - 1]
                back += 1
        f.write_bytes(pcap_bytes([d for _, d in frames], times=[t for t, _ in frames], nanos=True,
                                 linktype=cap.interfaces[0].linktype))
    return back


def document(capsys, path: Path, *args: str) -> dict:
    code, out, err = run_cli(capsys, "analyze", str(path), "-o", "json", *args)
    assert code == 0, err
    return json.loads(out.replace(str(path), "DIR"))


@pytest.mark.parametrize("mode", [(), ("--summary",)], ids=["packets", "summary"])
@pytest.mark.parametrize("scenario", ["http-get", "bytes-offloads"])
def test_the_same_document_as_in_time_order(capsys, tmp_path: Path, scenario: str, mode: tuple[str, ...]) -> None:
    if not (SAMPLES / scenario).is_dir():
        pytest.skip(f"no sample {scenario}")
    ordered = tmp_path / "ordered"
    rewritten(SAMPLES / scenario, ordered, step_back=False)
    assert rewritten(SAMPLES / scenario, tmp_path / "back", step_back=True) > 0
    assert document(capsys, tmp_path / "back", *mode) == document(capsys, ordered, *mode)
