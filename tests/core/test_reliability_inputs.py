"""Input safety without external services.

- Bundle tampering is refused at load with a BundleError that names the file.
- No module of the package deserialises untrusted code/objects: an AST walk (comments and
  strings do not count) over longretriever/, stream/, export/, retriever/, infra/ finds no
  pickle / marshal / shelve import, no eval / exec, no ``allow_pickle=True``, no
  ``torch.load`` without ``weights_only=True``.
- Every input path has a size limit: the msgpack payload / batch limits of stream/codec.py
  (and their Settings bounds), the gRPC receive limit in the server options, k / max_contexts.
- Request validation, context-name parsing and status mapping never raise anything but
  InputError / never leak internals (hypothesis).
- MilvusIndex reconnect logic with a fake client: a connection failure drops the client, the
  next call reconnects (and reloads the collection), a failed reconnect makes queued callers
  fail fast, retries stay within the caller's timeout.
"""

from __future__ import annotations

import ast
import asyncio
import json
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import grpc
import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from longretriever.core.errors import BundleError, InputError, ServiceUnavailable
from longretriever.core import planner as q

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("longretriever", "core", "data", "stream", "export", "retriever", "infra", "benchmarks")


# ---- bundle tampering -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    from longretriever.export.bundle_writer import save_bundle
    from longretriever.export.train import TrainConfig, make_split, train_longretriever
    from tests.fixtures.data import synthetic

    split = make_split(synthetic(n_users=12, n_items=60))
    cfg = TrainConfig(epochs=1, batch=32, dim=8, k=8, w=4, heads=2, hidden=16, seed=1, budget=8)
    res = train_longretriever(split, cfg, progress=False)
    out = tmp_path_factory.mktemp("tamper") / "bundle"
    save_bundle(out, res.model, split.vocab, split.item_contexts, split.table.names, split.train_freq,
                {"k": cfg.k, "w": cfg.w}, {})
    return out


def _copy(bundle_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(bundle_dir, dst)
    return dst


def _flip(path: Path, where: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    i = min(len(data) - 1, int(len(data) * where))
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def test_untampered_bundle_loads(bundle_dir):
    from longretriever.retriever.bundle import load_bundle

    assert load_bundle(bundle_dir, intra_op_threads=1).item_ids.size > 0


@pytest.mark.parametrize("name,where", [("encoder.onnx", 0.5), ("encoder.onnx", 0.999),
                                        ("item_embeddings.npy", 0.9), ("item_embeddings.npy", 0.01),
                                        ("config.json", 0.5), ("item_ids.npy", 0.9),
                                        ("contexts.json", 0.3), ("popularity.npy", 0.9)])
def test_flipped_byte_is_refused_naming_the_file(bundle_dir, tmp_path, name, where):
    from longretriever.retriever.bundle import load_bundle

    b = _copy(bundle_dir, tmp_path)
    _flip(b / name, where)
    with pytest.raises(BundleError) as ei:
        load_bundle(b, intra_op_threads=1)
    msg = str(ei.value)
    assert name in msg and "sha256 mismatch" in msg and str(b) in msg


@pytest.mark.parametrize("name", ["encoder.onnx", "item_ids.npy", "config.json", "metrics.json"])
def test_deleted_file_is_refused_naming_the_file(bundle_dir, tmp_path, name):
    from longretriever.retriever.bundle import load_bundle

    b = _copy(bundle_dir, tmp_path)
    (b / name).unlink()
    with pytest.raises(BundleError, match=rf"{name}.*missing"):
        load_bundle(b, intra_op_threads=1)


def test_file_dropped_from_manifest_or_manifest_missing_is_refused(bundle_dir, tmp_path):
    from longretriever.retriever.bundle import load_bundle

    b = _copy(bundle_dir, tmp_path)
    man = json.loads((b / "manifest.json").read_text())
    del man["files"]["item_embeddings.npy"]
    (b / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(BundleError, match="item_embeddings.npy"):
        load_bundle(b, intra_op_threads=1)
    (b / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="manifest"):
        load_bundle(b, intra_op_threads=1)
    (b / "manifest.json").unlink()
    with pytest.raises(BundleError, match="manifest.json missing"):
        load_bundle(b, intra_op_threads=1)


def test_swapped_file_with_valid_format_is_refused(bundle_dir, tmp_path):
    """A well-formed replacement (another valid .npy) is caught by the digest, not the parser."""
    from longretriever.retriever.bundle import load_bundle

    b = _copy(bundle_dir, tmp_path)
    emb = np.load(b / "item_embeddings.npy", allow_pickle=False)
    np.save(b / "item_embeddings.npy", emb[::-1].copy())
    with pytest.raises(BundleError, match="item_embeddings.npy"):
        load_bundle(b, intra_op_threads=1)


@pytest.mark.parametrize("name", ["extra.pkl", "encoder.int8.onnx"])
def test_unexpected_file_is_refused(bundle_dir, tmp_path, name):
    from longretriever.retriever.bundle import load_bundle

    b = _copy(bundle_dir, tmp_path)
    (b / name).write_bytes(b"\x80\x04not in the manifest")
    with pytest.raises(BundleError, match=name):
        load_bundle(b, intra_op_threads=1)


# ---- no unsafe deserialisation (AST) ----------------------------------------------------------
BANNED_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle", "joblib"}
BANNED_CALLS = {"eval", "exec"}


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value
    return None


def unsafe_uses(source: str, filename: str = "<src>") -> list[str]:
    """Findings ``file:line: what`` for one module's source."""
    out = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            out += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in BANNED_MODULES]
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] in BANNED_MODULES:
                out.append(f"{where}: from {node.module} import")
            if node.module == "torch" and any(a.name == "load" for a in node.names):
                out.append(f"{where}: from torch import load (cannot check weights_only)")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            last = name.rsplit(".", 1)[-1]
            if name in BANNED_CALLS or name in {f"builtins.{c}" for c in BANNED_CALLS}:
                out.append(f"{where}: {name}()")
            ap = _kw(node, "allow_pickle")
            if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                out.append(f"{where}: {name}(allow_pickle=...)")
            if last == "read_pickle" or last == "unsafe_load":
                out.append(f"{where}: {name}()")
            wo = _kw(node, "weights_only")
            if name.endswith("torch.load") or wo is not None:
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    out.append(f"{where}: {name}() without weights_only=True")
            if name in ("yaml.load",) and _kw(node, "Loader") is None:
                out.append(f"{where}: yaml.load() without Loader")
    return out


def test_scanner_finds_what_it_should_and_ignores_comments_and_strings():
    bad = """
import pickle
from marshal import loads
import numpy as np, torch
x = eval("1")
exec("y = 2")
a = np.load("f.npy", allow_pickle=True)
b = np.load("f.npy", allow_pickle=flag)
m = torch.load("m.pt")
n = torch.load("m.pt", weights_only=False)
p = pd.read_pickle("x")
"""
    found = unsafe_uses(bad)
    for what in ("import pickle", "from marshal", "eval()", "exec()", "np.load(allow_pickle",
                 "torch.load() without", "read_pickle"):
        assert any(what in f for f in found), (what, found)
    assert len([f for f in found if "np.load" in f]) == 2
    assert len([f for f in found if "torch.load" in f]) == 2
    fine = '''
# import pickle; eval(x); np.load(p, allow_pickle=True); torch.load(p)
"""pickle.loads(data) and exec(code) in a docstring"""
s = "eval(1) torch.load(x)"
a = np.load("f.npy", allow_pickle=False)
b = np.load("f.npy")
m = torch.load("m.pt", weights_only=True, map_location="cpu")
model.eval()
json.loads("{}")
'''
    assert unsafe_uses(fine) == []


def test_no_unsafe_deserialisation_in_the_package():
    files = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    assert len(files) > 40, len(files)  # the walk really covers the packages
    findings = []
    for f in files:
        findings += unsafe_uses(f.read_text(), str(f.relative_to(ROOT)))
    assert findings == [], "\n".join(findings)


# ---- size limits on every input path ----------------------------------------------------------
def _n(decoded) -> int:
    return len(decoded.users) if hasattr(decoded, "users") else len(decoded)


def test_codec_payload_and_batch_limits():
    from longretriever.core import codec

    now = int(time.time() * 1000)
    ev = {"user_id": 1, "item_id": 2, "ts": now}
    big = msgpack.packb([ev] * 2, use_bin_type=True) + b"\x00" * codec.DEFAULT_MAX_BYTES
    for decode in (codec.decode_message, codec.decode_columns):
        out, rej = decode(big, b"1", now)
        assert _n(out) == 0 and len(rej) == 1 and "exceeds" in rej[0].reason
    too_many = msgpack.packb([ev] * (codec.DEFAULT_MAX_BATCH + 1), use_bin_type=True)
    assert len(too_many) < codec.DEFAULT_MAX_BYTES
    for decode in (codec.decode_message, codec.decode_columns):
        out, rej = decode(too_many, b"1", now)
        assert _n(out) == 0 and len(rej) == 1 and "not msgpack" in rej[0].reason
    ok, rej = codec.decode_message(msgpack.packb([ev] * codec.DEFAULT_MAX_BATCH, use_bin_type=True), b"1", now)
    assert len(ok) == codec.DEFAULT_MAX_BATCH and rej == []
    # field-level limits: action length, map width, key length
    long_action = msgpack.packb({**ev, "action": "a" * (codec.MAX_ACTION_LEN + 1)}, use_bin_type=True)
    out, rej = codec.decode_message(long_action, b"1", now)
    assert out == [] and "action" in rej[0].reason
    wide = msgpack.packb({str(i): i for i in range(17)}, use_bin_type=True)
    out, rej = codec.decode_message(wide, b"1", now)
    assert out == [] and "not msgpack" in rej[0].reason
    # a 5000-digit key is not parsed (int() of > 4300 digits raises in Python 3.11)
    out, rej = codec.decode_message(msgpack.packb(ev), b"9" * 5000, now)
    assert out == [] and rej


def test_settings_bound_the_stream_limits():
    from pydantic import ValidationError

    from longretriever.core.settings import Settings

    s = Settings()
    assert s.max_message_bytes <= 16 * 1_048_576 and s.max_batch_events <= 100_000
    for bad in ({"max_message_bytes": 1 << 30}, {"max_batch_events": 10**7}, {"max_sequence_len": 10**9},
                {"max_message_bytes": 0}):
        with pytest.raises(ValidationError):
            Settings(**bad)


def test_grpc_server_options_limit_message_sizes(monkeypatch):
    from longretriever.retriever import server as srv

    seen = {}
    real = grpc.aio.server

    def spy(*a, **kw):
        seen.update(dict(kw.get("options") or ()))
        return real(*a, **kw)

    monkeypatch.setattr(srv.grpc.aio, "server", spy)

    async def build():
        server, port, _ = srv.build_server(object(), "127.0.0.1", 0)
        await server.stop(None)

    asyncio.run(build())
    assert seen["grpc.max_receive_message_length"] == srv.MAX_RECEIVE_MESSAGE_BYTES
    assert 0 < srv.MAX_RECEIVE_MESSAGE_BYTES <= 1 << 20  # requests are a few scalars
    assert 0 < seen["grpc.max_send_message_length"] <= 64 << 20


def test_request_bounds():
    assert q.MAX_K == 10_000 and q.MAX_CONTEXTS == 64
    q.validate_request(0, 1, 1)
    q.validate_request(2**63 - 1, q.MAX_K, q.MAX_CONTEXTS)
    for args in ((0, q.MAX_K + 1, 1), (0, 1, q.MAX_CONTEXTS + 1), (-1, 1, 1), (0, 0, 1), (0, 1, 0)):
        with pytest.raises(InputError):
            q.validate_request(*args)


@settings(max_examples=500, deadline=None)
@given(user=st.integers(-2**64, 2**64), k=st.integers(-2**40, 2**40), mc=st.integers(-2**40, 2**40))
def test_validate_request_raises_only_input_error(user, k, mc):
    ok = user >= 0 and 1 <= k <= q.MAX_K and 1 <= mc <= q.MAX_CONTEXTS
    try:
        q.validate_request(user, k, mc)
        assert ok
    except InputError:
        assert not ok


NAMES = ["unknown", "c00", "c01", "c02", "c03"]


@settings(max_examples=500, deadline=None)
@given(name=st.one_of(st.text(max_size=30), st.sampled_from(
    NAMES + ["0", "4", "5", "99", "\u00b2", "\u0663", "-1", "1" * 5000, " 1", "+1", ""])))
def test_context_id_only_input_error(name):
    from longretriever.retriever.service import RetrieverService

    fake = SimpleNamespace(names=NAMES)
    try:
        c = RetrieverService.context_id(fake, name)
    except InputError as exc:
        assert len(str(exc)) < 400
        return
    assert 0 <= c < len(NAMES)
    assert name in NAMES or (name.isascii() and name.isdigit())


@settings(max_examples=200, deadline=None)
@given(msg=st.text(max_size=2000))
def test_status_mapping_never_leaks_internal_text(msg):
    from longretriever.retriever.server import status_for

    code, text = status_for(ZeroDivisionError("secret " + msg))
    assert code == grpc.StatusCode.INTERNAL and "secret" not in text
    for exc, want in ((InputError(msg), grpc.StatusCode.INVALID_ARGUMENT),
                      (ServiceUnavailable(msg), grpc.StatusCode.UNAVAILABLE),
                      (BundleError(msg), grpc.StatusCode.INVALID_ARGUMENT),
                      (asyncio.TimeoutError(), grpc.StatusCode.DEADLINE_EXCEEDED)):
        code, text = status_for(exc)
        assert code == want and len(text) <= 500


def test_edited_manifest_version_is_refused(bundle_dir, tmp_path):
    import json

    from longretriever.retriever.bundle import load_bundle

    b = _copy(bundle_dir, tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    m["version"] = m["version"].rsplit("-", 1)[0] + "-000000000000"
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="manifest was edited"):
        load_bundle(b, intra_op_threads=1)
