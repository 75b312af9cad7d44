"""`_jsonfast.dumps` gives exactly `json.dumps(doc, indent=2, allow_nan=False)`: on real
reports of every command and on generated documents, errors included."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bufinspect.render import jsonfast as _jsonfast
from conftest import SAMPLES


def same(doc):
    try:
        want = json.dumps(doc, indent=2, allow_nan=False)
    except (ValueError, TypeError) as exc:
        with pytest.raises(type(exc)):
            _jsonfast.dumps(doc)
        return
    assert _jsonfast.dumps(doc) == want


scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text()
           | st.text(alphabet="%\"\\\x00\u00e9\u4e00\U0001F600 :,{}[]"))
keys = st.text() | st.integers() | st.booleans() | st.none() | st.floats(allow_nan=False)
docs = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                    | st.tuples(inner, inner)
                    | st.dictionaries(keys, inner, max_size=5), max_leaves=40)


@settings(max_examples=400, deadline=None)
@given(docs)
def test_generated_documents(doc):
    same(doc)


def test_many_dicts_of_the_same_shape():
    rows = [{"key": f"layer{i}.weight", "shape": [i, 3] if i % 3 else [], "numel": 3 * i,
             "device": None, "stats": {"min": -1.5, "max": float(i), "nan": 0} if i % 2 else None,
             "flag": i % 4 == 0} for i in range(200)]
    same({"entries": rows, "summary": {"n": 200}})
    rows[151]["stats"]["max"] = math.nan  # non-finite deep inside: json's ValueError
    same({"entries": rows})
    rows[151]["stats"]["max"] = object()  # not encodable: json's TypeError
    same({"entries": rows})


class Str(str):
    pass


def test_subclasses_and_odd_keys_are_left_to_json():
    same({"a": Str("x"), Str("k"): 1, 1: 2, 2.5: [True], None: (1, 2)})
    same([{"a": 1}, {"a": 1.0}, {"a": "1"}, {"a": True}])  # one key set, many value types


@pytest.mark.parametrize("args", [["show"], ["show", "--stats"], ["check"]])
@pytest.mark.parametrize("name", ["cnn_state_dict.pt", "buffer_zoo_module.pt", "train_adam.pt",
                                  "cnn.safetensors"])
def test_reports_of_the_samples(cli, args, name):
    res = cli(*args, SAMPLES / name, "--format", "json")
    assert res.exit_code in (0, 1), res.stderr
    same(json.loads(res.stdout))


def test_diff_report(cli):
    res = cli("diff", SAMPLES / "bn_before.pt", SAMPLES / "bn_after_train.pt", "--all",
              "--format", "json")
    same(json.loads(res.stdout))


def test_show_documents_straight_from_entries(tmp_path):
    """`show_document` (entries encoded from the Entry objects) against
    `json.dumps(report.to_dict(), indent=2)` on every sample, with and without --stats, with
    NaN statistics (the strict-JSON fallback) and on a checkpoint of odd names."""
    import bufinspect
    from bufinspect.render import report_json, to_json

    torch = pytest.importorskip("torch")
    odd = {"a.\u00e9\"\\x": torch.ones(2), "%s{}": torch.zeros(()), "n\x01ul": torch.ones(0),
           "b.bias": torch.tensor([float("nan"), 1.0]), "c.num_batches_tracked": torch.tensor(3)}
    torch.save(odd, tmp_path / "odd.pt")
    paths = sorted(SAMPLES.glob("*.pt")) + sorted(SAMPLES.glob("*.safetensors")) \
        + [tmp_path / "odd.pt"]
    for path in paths:
        for stats in (False, True):
            report = bufinspect.show(str(path), stats=stats)
            assert report_json(report) == to_json(report.to_dict()), (path, stats)
            if stats:
                continue
            assert _jsonfast.show_document(report) == json.dumps(report.to_dict(), indent=2)


def test_show_chunks_join_to_the_document(tmp_path):
    """The pieces `show --format json` writes in turn are the document, split between entries
    (more entries than one piece holds), with and without statistics."""
    import bufinspect
    from bufinspect.render import report_json, report_json_chunks, to_json

    torch = pytest.importorskip("torch")
    path = tmp_path / "many.pt"
    sd = {f"experts.{i}.w": torch.full((2,), float(i)) for i in range(5000)}
    sd["bad.running_var"] = torch.tensor([float("nan")])
    torch.save(sd, path)
    listing = bufinspect.show(str(path))
    pieces = list(report_json_chunks(listing))
    assert len(pieces) > 3 and "".join(pieces) == to_json(listing.to_dict())
    assert "".join(_jsonfast.show_chunks(listing)) == json.dumps(listing.to_dict(), indent=2)
    with_stats = bufinspect.show(str(path), stats=True)
    assert "".join(report_json_chunks(with_stats)) == report_json(with_stats) \
        == to_json(with_stats.to_dict())
