"""vscene_engine.io.checkpoints: checkpoints read without executing pickled code, refusal of malicious pickles, errors,
conversion to safetensors and the convert-mvsplat command."""
import builtins
import collections
import dataclasses
import enum
import os
import pathlib
import io
import pickle
import re
import sys
import types
import zipfile

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from vscene_engine.tools.cli import main
from vscene_engine.io.checkpoints import (CheckpointError, StubGlobal, StubObject, UnsafeCheckpointError,
                                     convert_to_safetensors, load_checkpoint, read_state_dict)


class Color(enum.Enum):
    RED = 1
    GREEN = 2


@dataclasses.dataclass
class TrainCfg:
    lr: float = 1e-4
    name: str = "re10k"
    sub: dict = dataclasses.field(default_factory=lambda: {"depth": 128})

    created = 0  # class attributes (not fields): count every construction / state restore
    restored = 0

    def __post_init__(self):
        TrainCfg.created += 1

    def __setstate__(self, state):
        TrainCfg.restored += 1
        self.__dict__.update(state)


def _state_dict():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g)
    sd = collections.OrderedDict()
    sd["encoder.backbone.weight"] = base
    sd["encoder.backbone.view_t"] = base[:, 1:4].t()  # non-contiguous view sharing base's storage
    sd["encoder.backbone.row"] = base[2]  # contiguous view at an offset
    sd["encoder.head.half"] = torch.randn(5, generator=g).half()
    sd["encoder.head.bf16"] = torch.randn(3, 2, generator=g).bfloat16()
    sd["encoder.head.index"] = torch.arange(-3, 7, dtype=torch.int64)
    sd["encoder.head.flag"] = torch.tensor([True, False, True])
    sd["encoder.head.param"] = torch.nn.Parameter(torch.randn(2, 2, generator=g))
    sd["encoder.head.empty"] = torch.empty(0, 3)
    sd["decoder.bg"] = torch.ones(3)
    sd._metadata = collections.OrderedDict({"": {"version": 1}})
    return sd


def _lightning_ckpt(path, sd=None):
    sd = _state_dict() if sd is None else sd
    obj = {
        "epoch": 7, "global_step": 300000, "pytorch-lightning_version": "2.0.9", "state_dict": sd,
        "loops": {"fit_loop": {"epoch_progress": {"total": {"ready": 8}}, "state_dict": {}}},
        "callbacks": {"ModelCheckpoint{}": {"best_model_path": pathlib.Path("/ckpt/best.ckpt"),
                                            "best_model_score": torch.tensor(0.25)}},
        "optimizer_states": [{"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}},
                              "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": [0]}]}],
        "lr_schedulers": [{"last_epoch": 5, "base_lrs": [1e-4]}],
        "hparams_name": "cfg",
        "hyper_parameters": {"cfg": TrainCfg(), "mode": Color.GREEN, "np_scalar": np.float32(2.5),
                             "np_int": np.int64(-4), "np_array": np.arange(12, dtype=np.float64).reshape(3, 4),
                             "nested": {"list": [1, "two", (3.0, None)], "set": {1, 2}, "bytes": b"\x00\xff"}},
    }
    torch.save(obj, path)
    return obj


def _assert_bit_equal(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


# ------------------------------------------------------------------------------------------------ round trips
def test_lightning_checkpoint_loads_tensors_bit_exact_and_objects_as_inert_stubs(tmp_path):
    src = tmp_path / "re10k.ckpt"
    orig = _lightning_ckpt(src)
    created, restored = TrainCfg.created, TrainCfg.restored
    obj = load_checkpoint(src)
    assert (TrainCfg.created, TrainCfg.restored) == (created, restored)  # the class was never used

    sd = obj["state_dict"]
    assert isinstance(sd, collections.OrderedDict) and list(sd) == list(orig["state_dict"])
    for k, v in orig["state_dict"].items():
        _assert_bit_equal(sd[k], v.detach())
    assert isinstance(sd["encoder.head.param"], torch.nn.Parameter)
    assert sd["encoder.backbone.view_t"].stride() == (1, 6)  # the view is still a view ...
    assert sd["encoder.backbone.view_t"].untyped_storage().data_ptr() == \
        sd["encoder.backbone.weight"].untyped_storage().data_ptr()  # ... of the same storage
    assert sd["encoder.backbone.row"].storage_offset() == 12
    assert sd._metadata == {"": {"version": 1}}

    assert obj["epoch"] == 7 and obj["global_step"] == 300000 and obj["pytorch-lightning_version"] == "2.0.9"
    hp = obj["hyper_parameters"]
    cfg = hp["cfg"]
    assert isinstance(cfg, StubObject) and not isinstance(cfg, TrainCfg)
    assert cfg.module == __name__ and cfg.name == "TrainCfg"
    assert cfg.state == {"lr": 1e-4, "name": "re10k", "sub": {"depth": 128}}
    assert isinstance(hp["mode"], StubObject) and hp["mode"].name == "Color" and hp["mode"].args == (2,)
    path_stub = obj["callbacks"]["ModelCheckpoint{}"]["best_model_path"]
    assert isinstance(path_stub, StubObject) and path_stub.module.startswith("pathlib")
    assert pathlib.PurePosixPath(*path_stub.args) == pathlib.PurePosixPath("/ckpt/best.ckpt")
    assert torch.equal(obj["callbacks"]["ModelCheckpoint{}"]["best_model_score"], torch.tensor(0.25))
    assert type(hp["np_scalar"]) is np.float32 and hp["np_scalar"] == np.float32(2.5)
    assert type(hp["np_int"]) is np.int64 and hp["np_int"] == -4
    assert isinstance(hp["np_array"], np.ndarray) and hp["np_array"].dtype == np.float64
    np.testing.assert_array_equal(hp["np_array"], np.arange(12.0).reshape(3, 4))
    assert hp["nested"] == {"list": [1, "two", (3.0, None)], "set": {1, 2}, "bytes": b"\x00\xff"}
    assert obj["optimizer_states"][0]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert torch.equal(obj["optimizer_states"][0]["state"][0]["step"], torch.tensor(3.0))


def test_the_stub_check_would_catch_a_real_unpickle(tmp_path):
    # control for the counters above: torch.load(weights_only=False) does use the class
    src = tmp_path / "c.ckpt"
    _lightning_ckpt(src)
    restored = TrainCfg.restored
    obj = torch.load(src, weights_only=False)
    assert isinstance(obj["hyper_parameters"]["cfg"], TrainCfg) and TrainCfg.restored == restored + 1


def test_convert_to_safetensors_round_trips_bit_exact_with_prefix(tmp_path):
    src, out = tmp_path / "re10k.ckpt", tmp_path / "out" / "re10k.safetensors"
    orig = _lightning_ckpt(src)["state_dict"]
    rep = convert_to_safetensors(src, out)
    enc = {k: v for k, v in orig.items() if k.startswith("encoder.")}
    assert rep["n_tensors"] == len(enc) == 9 and rep["skipped_by_prefix"] == 1 and rep["dropped_non_tensor"] == 0
    assert rep["n_params"] == sum(v.numel() for v in enc.values()) and rep["out"] == str(out)
    assert rep["global_step"] == 300000 and rep["epoch"] == 7
    loaded = load_file(str(out))
    assert set(loaded) == set(enc)
    for k, v in enc.items():
        _assert_bit_equal(loaded[k], v.detach())
    with safe_open(str(out), "pt") as f:
        md = f.metadata()
    assert md["source"] == "re10k.ckpt" and md["format"] == "mvsplat" and md["n_tensors"] == "9"
    assert md["global_step"] == "300000" and md["epoch"] == "7" and md["prefix"] == "encoder."
    assert [p.name for p in out.parent.iterdir()] == ["re10k.safetensors"]  # no temporary left behind

    # read back through read_state_dict (safetensors branch) with a narrower prefix
    head = read_state_dict(out, prefix="encoder.head.")
    assert sorted(head) == sorted(k for k in enc if k.startswith("encoder.head."))
    _assert_bit_equal(head["encoder.head.bf16"], orig["encoder.head.bf16"])

    # all keys + extra metadata
    out_all = tmp_path / "all.safetensors"
    rep = convert_to_safetensors(src, out_all, prefix=None, metadata={"note": "x", "n": 3})
    assert rep["n_tensors"] == 10 and rep["skipped_by_prefix"] == 0
    with safe_open(str(out_all), "pt") as f:
        assert f.metadata()["note"] == "x" and f.metadata()["n"] == "3" and f.metadata()["prefix"] == ""
    _assert_bit_equal(load_file(str(out_all))["decoder.bg"], orig["decoder.bg"])


def test_read_state_dict_containers_and_prefix(tmp_path):
    sd = _state_dict()
    p_model = tmp_path / "model.pth"
    torch.save({"model": sd, "iteration": 5, "note": "x"}, p_model)
    got = read_state_dict(p_model)
    assert list(got) == list(sd) and all(type(v) is torch.Tensor for v in got.values())  # parameters unwrapped
    _assert_bit_equal(got["encoder.head.param"], sd["encoder.head.param"].detach())
    p_plain = tmp_path / "pytorch_model.bin"
    torch.save({**sd, "not_a_tensor": 3}, p_plain)
    got = read_state_dict(p_plain, prefix="decoder.")
    assert list(got) == ["decoder.bg"] and torch.equal(got["decoder.bg"], torch.ones(3))
    with pytest.raises(CheckpointError, match="no tensors with prefix 'nope.'"):
        read_state_dict(p_plain, prefix="nope.")


def test_legacy_and_plain_pickle_formats(tmp_path):
    sd = _state_dict()
    legacy = tmp_path / "legacy.pt"
    torch.save({"state_dict": sd}, legacy, _use_new_zipfile_serialization=False)
    got = read_state_dict(legacy)
    assert list(got) == list(sd)
    for k, v in sd.items():
        _assert_bit_equal(got[k], v.detach())
    plain = tmp_path / "plain.pkl"  # tensors pickled by plain pickle (storages as torch.storage._load_from_bytes)
    plain.write_bytes(pickle.dumps({"w": sd["encoder.backbone.weight"], "h": sd["encoder.head.half"]}, protocol=2))
    obj = load_checkpoint(plain)
    _assert_bit_equal(obj["w"], sd["encoder.backbone.weight"])
    _assert_bit_equal(obj["h"], sd["encoder.head.half"])


# ------------------------------------------------------------------------------------------------ malicious files
class _Evil:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def _payloads(tmp_path):
    return {
        "system": (_Evil(os.system, (f"touch {tmp_path / 'pwned'}",)), tmp_path / "pwned", "system"),
        "open": (_Evil(builtins.open, (str(tmp_path / "pwned2"), "w")), tmp_path / "pwned2", "open"),
        "eval": (_Evil(builtins.eval, (f"open({str(tmp_path / 'pwned3')!r}, 'w')",)), tmp_path / "pwned3", "eval"),
    }


@pytest.mark.parametrize("kind", ["system", "open", "eval"])
def test_malicious_checkpoint_is_refused_and_nothing_runs(tmp_path, kind):
    evil, marker, name = _payloads(tmp_path)[kind]
    src = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"encoder.w": torch.ones(2)}, "hyper_parameters": {"x": evil}}, src)
    with pytest.raises(UnsafeCheckpointError, match=name) as ei:
        load_checkpoint(src)
    assert "not a plain checkpoint" in str(ei.value) and "untrusted" in str(ei.value)
    with pytest.raises(UnsafeCheckpointError):
        read_state_dict(src)
    out = tmp_path / "evil.safetensors"
    with pytest.raises(UnsafeCheckpointError):
        convert_to_safetensors(src, out)
    assert not marker.exists() and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.ckpt"]


def test_malicious_payload_nested_in_state_dict_and_raw_pickle(tmp_path):
    marker = tmp_path / "pwned"
    evil = _Evil(os.system, (f"touch {marker}",))
    nested = tmp_path / "nested.ckpt"
    torch.save({"state_dict": collections.OrderedDict([("encoder.w", torch.ones(2)), ("encoder.meta", [evil])])},
               nested)
    raw = tmp_path / "raw.ckpt"
    raw.write_bytes(pickle.dumps({"state_dict": {"w": evil}}, protocol=2))
    raw4 = tmp_path / "raw4.pt"
    raw4.write_bytes(pickle.dumps([evil], protocol=4))  # STACK_GLOBAL + framing
    for f in (nested, raw, raw4):
        with pytest.raises(UnsafeCheckpointError, match="system"):
            load_checkpoint(f)
        assert main(["convert-mvsplat", str(f), "--out", str(tmp_path / "o.safetensors")]) == 2
    assert not marker.exists() and not (tmp_path / "o.safetensors").exists()
    # control: the payload is live under an unrestricted unpickler
    control = tmp_path / "control"
    torch.load(_save(tmp_path / "ctl.ckpt", _Evil(os.system, (f"touch {control}",))), weights_only=False)
    assert control.exists()


def _save(path, obj):
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("module,name", [
    ("os", "system"), ("posix", "system"), ("nt", "system"), ("builtins", "exec"), ("builtins", "getattr"),
    ("builtins", "__import__"), ("builtins", "compile"), ("__builtin__", "eval"), ("subprocess", "Popen"),
    ("shutil", "rmtree"), ("sys", "exit"), ("io", "open"), ("importlib", "import_module"), ("runpy", "run_path"),
    ("pickle", "loads"), ("codecs", "open"), ("socket", "socket"), ("webbrowser", "open"),
    ("functools", "partial"), ("operator", "attrgetter"), ("operator", "methodcaller"), ("torch", "load"),
    ("numpy", "load"), ("torch.hub", "load"),
])
def test_denylisted_globals_are_refused(tmp_path, module, name):
    # PROTO 2, GLOBAL module name, 'x', TUPLE1, REDUCE, STOP
    data = b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\nX\x01\x00\x00\x00x\x85R."
    f = tmp_path / "g.pkl"
    f.write_bytes(data)
    shown = "builtins" if module == "__builtin__" else module  # python 2 names are mapped first
    with pytest.raises(UnsafeCheckpointError, match=rf"references {shown}\.{name}, "):
        load_checkpoint(f)


def test_unknown_globals_are_inert_stubs_even_when_called(tmp_path):
    f = tmp_path / "s.pkl"
    # [somepkg.run_me('x'), somepkg.Klass]: a call and a reference to a class as data (EMPTY_LIST MARK ... APPENDS)
    f.write_bytes(b"\x80\x02](csomepkg\nrun_me\nX\x01\x00\x00\x00x\x85Rcsomepkg\nKlass\ne.")
    obj = load_checkpoint(f)
    assert isinstance(obj[0], StubObject) and obj[0].qualname == "somepkg.run_me" and obj[0].args == ("x",)
    assert isinstance(obj[1], StubGlobal) and obj[1].qualname == "somepkg.Klass"


def test_malformed_pickles_are_rejected_without_calling(tmp_path):
    f = tmp_path / "m.pkl"
    f.write_bytes(b"\x80\x02X\x01\x00\x00\x00x)R.")  # REDUCE of a string
    with pytest.raises(CheckpointError, match="malformed checkpoint .*unrecognized function x"):
        load_checkpoint(f)
    sparse = tmp_path / "sparse.pt"
    torch.save({"w": torch.eye(3).to_sparse()}, sparse)
    with pytest.raises(CheckpointError, match="only dense tensors"):
        load_checkpoint(sparse)


# ------------------------------------------------------------------------------------------------ bad input
def test_truncated_missing_text_and_tensorless_files(tmp_path):
    src = tmp_path / "re10k.ckpt"
    _lightning_ckpt(src)
    data = src.read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="download is probably incomplete"):
        load_checkpoint(cut)
    out = tmp_path / "cut.safetensors"
    with pytest.raises(CheckpointError, match="incomplete"):
        convert_to_safetensors(cut, out)
    assert not out.exists()

    # a damaged storage record (CRC mismatch) inside an intact zip
    bad = tmp_path / "bad.ckpt"
    with zipfile.ZipFile(src) as zf:
        name = next(n for n in zf.namelist() if n.endswith("/data/0"))
        off = zf.getinfo(name).header_offset
    raw = bytearray(data)
    hdr = 30 + int.from_bytes(raw[off + 26:off + 28], "little") + int.from_bytes(raw[off + 28:off + 30], "little")
    raw[off + hdr] ^= 0xFF
    bad.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="incomplete"):
        load_checkpoint(bad)

    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.randn(100)}, legacy, _use_new_zipfile_serialization=False)
    lcut = tmp_path / "legacy_cut.pt"
    lcut.write_bytes(legacy.read_bytes()[:-50])
    with pytest.raises(CheckpointError, match="incomplete"):
        load_checkpoint(lcut)

    with pytest.raises(FileNotFoundError, match="not found"):
        read_state_dict(tmp_path / "missing.ckpt")
    txt = tmp_path / "notes.ckpt"
    txt.write_text("this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        read_state_dict(txt)
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(empty)
    nt = tmp_path / "nt.ckpt"
    torch.save({"epoch": 1, "state_dict": {"a": 1, "b": "x"}}, nt)
    with pytest.raises(CheckpointError, match="no tensors found"):
        read_state_dict(nt)
    nt2 = tmp_path / "nt2.ckpt"
    torch.save([1, 2], nt2)
    with pytest.raises(CheckpointError, match="no tensors found"):
        read_state_dict(nt2)


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_convert_mvsplat(tmp_path, capsys):
    src, out = tmp_path / "re10k.ckpt", tmp_path / "re10k.safetensors"
    orig = _lightning_ckpt(src)["state_dict"]
    assert main(["convert-mvsplat", str(src), "--out", str(out)]) == 0
    msg = capsys.readouterr().out
    assert f"wrote {out}: 9 tensors" in msg and "global step 300000" in msg and "skipped 1 tensors" in msg
    assert sorted(load_file(str(out))) == sorted(k for k in orig if k.startswith("encoder."))

    out_all = tmp_path / "all.safetensors"
    assert main(["convert-mvsplat", str(src), "--out", str(out_all), "--all-keys"]) == 0
    assert "10 tensors" in capsys.readouterr().out and len(load_file(str(out_all))) == 10

    before = src.read_bytes()
    assert main(["convert-mvsplat", str(src), "--out", str(src)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "refusing to overwrite the source" in err
    assert src.read_bytes() == before

    assert main(["convert-mvsplat", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "m.safetensors")]) == 2
    assert "not found" in capsys.readouterr().err and not (tmp_path / "m.safetensors").exists()
    assert main(["convert-mvsplat", str(src), "--out", str(tmp_path / "p.safetensors"), "--prefix", "zzz."]) == 2
    assert "no tensors with prefix 'zzz.'" in capsys.readouterr().err
    assert not (tmp_path / "p.safetensors").exists()


@pytest.mark.parametrize("protocol", [1, 2, 4, 5])
def test_other_pickle_protocols(tmp_path, protocol):
    # protocol 2 is what torch.save and Lightning write; PyTorch's weights-only unpickler reads no other (protocol 1
    # writes INT/copyreg._reconstructor, 4/5 FRAME, STACK_GLOBAL, NEWOBJ_EX): those are refused with a clear message
    sd = _state_dict()
    src = tmp_path / "p.ckpt"
    created, restored = TrainCfg.created, TrainCfg.restored
    cfg = TrainCfg(lr=0.5)
    torch.save({"state_dict": sd, "cfg": cfg, "arr": np.arange(4, dtype=np.int16), "mode": Color.RED},
               src, pickle_protocol=protocol)
    if protocol != 2:
        with pytest.raises(CheckpointError, match=rf"pickle protocol {protocol if protocol > 1 else '0/1'}, whose "
                                                  r"opcode [A-Z_0-9]+ .* only protocol 2"):
            load_checkpoint(src)
        assert (TrainCfg.created, TrainCfg.restored) == (created + 1, restored)
        return
    obj = load_checkpoint(src)
    assert (TrainCfg.created, TrainCfg.restored) == (created + 1, restored)  # only the construction above
    for k, v in sd.items():
        _assert_bit_equal(obj["state_dict"][k], v.detach())
    assert isinstance(obj["cfg"], StubObject) and obj["cfg"].state["lr"] == 0.5
    assert obj["arr"].dtype == np.int16 and obj["arr"].tolist() == [0, 1, 2, 3]
    assert isinstance(obj["mode"], StubObject) and obj["mode"].args == (1,)


# ------------------------------------------------------------------------------------------------ more hostile files
def _pkl(tmp_path, data: bytes, name="h.pkl"):
    f = tmp_path / name
    f.write_bytes(data)
    return f


@pytest.mark.parametrize("data,shown", [
    (b"\x80\x02}X\x01\x00\x00\x00a}X\x01\x00\x00\x00bcposix\nsystem\nss.", "posix.system"),  # nested, never called
    (b"\x80\x02]cbuiltins\neval\na.", "builtins.eval"),                                      # GLOBAL as data
    (b"\x80\x02cbuiltins\ngetattr\ncsomepkg\nKlass\nX\x03\x00\x00\x00run\x86R.", "builtins.getattr"),
    (b"(X\x08\x00\x00\x00touch xxios\nsystem\n.", "os.system"),                               # INST opcode
    (b"(cposix\nsystem\nX\x07\x00\x00\x00touch xo.", "posix.system"),                          # OBJ opcode
    (b"\x80\x02ccollections\ndefaultdict\ncsubprocess\nPopen\n\x85R.", "subprocess.Popen"),   # inside an allowed call
    (b"\x80\x04\x95\x1a\x00\x00\x00\x00\x00\x00\x00\x8c\x05posix\x94\x8c\x06system\x94\x93\x94.", "posix.system"),
])
def test_hostile_globals_anywhere_refuse_the_file(tmp_path, data, shown):
    with pytest.raises(UnsafeCheckpointError, match=rf"references {re.escape(shown)}, "):
        load_checkpoint(_pkl(tmp_path, data))


def test_stand_ins_never_call_anything(tmp_path):
    # a stand-in instance used as a function, a stand-in built by an unsupported opcode, an INST of an unknown class
    for data, msg in [(b"\x80\x02csomepkg\nKlass\n)R)R.", "unrecognized function"),
                      (b"\x80\x02(csomepkg\nKlass\no.", "opcode OBJ"),
                      (b"(isomepkg\nKlass\n.", "opcode INST"),
                      (b"\x80\x02csomepkg\nKlass\n)R(K\x01e.", "malformed .*extend lists"),  # APPENDS to one
                      (b"\x80\x02csomepkg\nKlass\n)R(K\x01K\x02u.", "malformed .*SETITEMS")]:   # SETITEMS on one
        with pytest.raises(CheckpointError, match=msg):
            load_checkpoint(_pkl(tmp_path, data))
    # our own module's functions named by the file are inert records too (convert_to_safetensors(src, out))
    out = tmp_path / "written.safetensors"
    src = _pkl(tmp_path, b"\x80\x02cvscene_engine.io.checkpoints\nconvert_to_safetensors\nX\x01\x00\x00\x00aX"
                         + len(str(out)).to_bytes(4, "little") + str(out).encode() + b"\x86R.")
    rec = load_checkpoint(src)
    assert isinstance(rec, StubObject) and rec.qualname == "vscene_engine.io.checkpoints.convert_to_safetensors"
    assert rec.args == ("a", str(out)) and not out.exists()
    # BUILD state naming dunders is recorded, never applied
    rec = load_checkpoint(_pkl(tmp_path, b"\x80\x02csomepkg\nKlass\n)R}(X\t\x00\x00\x00__class__csomepkg\nOther\n"
                                         b"X\x0c\x00\x00\x00__setstate__K\x01ub."))
    assert type(rec).__name__ == "Klass" and isinstance(rec, StubObject) and set(rec.state) == {"__class__",
                                                                                                  "__setstate__"}
    # the real ndarray is never handed to the file: numpy.ndarray(10**9 elements) is a record, nothing is allocated
    rec = load_checkpoint(_pkl(tmp_path, b"\x80\x02cnumpy\nndarray\nJ\x00\xca\x9a;\x85R."))
    assert isinstance(rec, StubObject) and rec.qualname == "numpy.ndarray" and rec.args == (10 ** 9,)
    # a checked constructor refuses non-data arguments
    with pytest.raises(CheckpointError, match="malformed pickle: list"):
        load_checkpoint(_pkl(tmp_path, b"\x80\x02cbuiltins\nlist\ncsomepkg\nKlass\n)R\x85\x85R."))


def test_torch_refuses_what_the_listing_would_let_through(tmp_path, monkeypatch):
    # defence in depth: with the listing's refusal switched off (and torch's opt-out variable set), PyTorch's
    # weights-only unpickler still refuses os.system and nothing runs
    from vscene_engine.io import checkpoints as safe_ckpt
    marker = tmp_path / "pwned"
    src = _save(tmp_path / "evil.ckpt", {"x": _Evil(os.system, (f"touch {marker}",))})
    monkeypatch.setattr(safe_ckpt, "_classify", lambda q, s: None)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(CheckpointError, match="posix.system"):
        load_checkpoint(src)
    assert not marker.exists()


def test_stand_ins_are_registered_only_during_a_load(tmp_path):
    before = set(torch.serialization.get_safe_globals())  # torch keeps them in a set: order is not kept
    src = tmp_path / "c.ckpt"
    _lightning_ckpt(src)
    load_checkpoint(src)
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(_pkl(tmp_path, b"\x80\x02cposix\nsystem\n."))
    assert set(torch.serialization.get_safe_globals()) == before
    with pytest.raises(pickle.UnpicklingError):  # a plain weights-only load knows nothing of our stand-ins
        torch.load(src, weights_only=True)


class _StorageRef:
    pass


def _huge_pickle(pid):
    ref = _StorageRef()

    class T:
        def __reduce__(self):
            return torch._utils._rebuild_tensor_v2, (ref, 0, (2 ** 40,), (1,), False, collections.OrderedDict())

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            return pid if obj is ref else None

    b = io.BytesIO()
    P(b, protocol=2).dump({"w": T()})
    return b.getvalue()


def test_huge_claims_and_cut_pickles_are_refused(tmp_path):
    # a string claiming 2 GB in a 10-byte file
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(_pkl(tmp_path, b"\x80\x02X\xff\xff\xff\x7fab"))
    # a zip whose storage claims 4 TiB for a 16-byte record
    z = tmp_path / "huge.pt"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("archive/data.pkl", _huge_pickle(("storage", torch.FloatStorage, "0", "cpu", 2 ** 40)))
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/data/0", b"\0" * 16)
        zf.writestr("archive/version", "3\n")
    with pytest.raises(CheckpointError, match="does not match expected size"):
        load_checkpoint(z)
    # the legacy stream: the claim is refused by the allocator or by the short data
    leg = (pickle.dumps(0x1950A86A20F9469CFC6C, 2) + pickle.dumps(1001, 2) + pickle.dumps({}, 2)
           + _huge_pickle(("storage", torch.FloatStorage, "0", "cpu", 2 ** 40, None)) + pickle.dumps(["0"], 2)
           + b"\0" * 16)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(_pkl(tmp_path, leg, "huge_legacy.pt"))
    # two copies of data.pkl: python's zipfile and torch's reader might not read the same one
    dup = tmp_path / "dup.pt"
    with zipfile.ZipFile(src := tmp_path / "ok.pt", "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"w": 1}, 2))
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(dup, "w") as b, pytest.warns(UserWarning, match="Duplicate"):
        b.writestr("archive/data.pkl", a.read("archive/data.pkl"))
        b.writestr("archive/data.pkl", pickle.dumps({"w": 2}, 2))
    with pytest.raises(CheckpointError, match="duplicate entries"):
        load_checkpoint(dup)
    # an unresolvable STACK_GLOBAL (its names built by a call) is refused
    with pytest.raises(CheckpointError, match="STACK_GLOBAL"):
        load_checkpoint(_pkl(tmp_path, b"\x80\x04csomepkg\nf\n)Rcsomepkg\ng\n)R\x93."))


# ------------------------------------------------------------------------------------------------ what Lightning writes
FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "safe_ckpt"


def test_omegaconf_hparams_become_inert_records():
    # written by real omegaconf 2.4.0 (fixtures/safe_ckpt/make_omegaconf_ckpt.py); omegaconf is not needed to read it
    had = {m for m in sys.modules if m.split(".")[0] == "omegaconf"}
    obj = load_checkpoint(FIXTURES / "omegaconf_hparams.ckpt")
    assert {m for m in sys.modules if m.split(".")[0] == "omegaconf"} == had
    assert torch.equal(read_state_dict(FIXTURES / "omegaconf_hparams.ckpt")["encoder.w"], torch.arange(4.0))
    cfg = obj["hyper_parameters"]["cfg"]
    assert isinstance(cfg, StubObject) and cfg.qualname == "omegaconf.dictconfig.DictConfig"
    content = cfg.state["_content"]
    assert list(content) == ["model", "path", "f", "flag", "none"] and content["path"].state["_val"] == "/x"
    assert content["path"].qualname == "omegaconf.nodes.AnyNode" and content["path"].state["_parent"] is cfg
    meta = cfg.state["_metadata"]
    assert meta.qualname == "omegaconf.base.ContainerMetadata" and isinstance(meta.state["ref_type"], StubGlobal)
    dims = content["model"].state["_content"]["encoder"].state["_content"]["dims"]
    assert dims.qualname == "omegaconf.listconfig.ListConfig"
    assert [n.state["_val"] for n in dims.state["_content"]] == [1, 2]
    args = obj["args"]
    assert args.qualname == "argparse.Namespace" and args.state["lr"] == 1 and args.state["p"].args == ("/", "a")


def test_lightning_1x_objects_with_training_code_absent(tmp_path):
    # Lightning 1.x keyed callback states by the callback class and kept hparams in an AttributeDict (a dict
    # subclass); the training code's config dataclass is not importable when the checkpoint is read
    mods = {}
    for name in ("pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint",
                 "pytorch_lightning.utilities", "pytorch_lightning.utilities.parsing", "src", "src.config"):
        mods[name] = types.ModuleType(name)
    ModelCheckpoint = type("ModelCheckpoint", (), {"__module__": "pytorch_lightning.callbacks.model_checkpoint"})
    AttributeDict = type("AttributeDict", (dict,), {"__module__": "pytorch_lightning.utilities.parsing"})
    EncoderCfg = dataclasses.make_dataclass("EncoderCfg", [("d_feature", int), ("name", str)])
    EncoderCfg.__module__ = "src.config"
    mods["pytorch_lightning.callbacks.model_checkpoint"].ModelCheckpoint = ModelCheckpoint
    mods["pytorch_lightning.utilities.parsing"].AttributeDict = AttributeDict
    mods["src.config"].EncoderCfg = EncoderCfg
    src = tmp_path / "l1.ckpt"
    hp = AttributeDict(encoder=EncoderCfg(128, "costvolume"), lr=2e-4)
    saved = {k: sys.modules.get(k) for k in mods}
    sys.modules.update(mods)
    try:
        torch.save({"state_dict": {"encoder.w": torch.ones(2)}, "hyper_parameters": hp,
                    "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.5)}}}, src)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    obj = load_checkpoint(src)
    assert not any(k in sys.modules for k in ("pytorch_lightning", "src.config"))
    (key, val), = obj["callbacks"].items()
    assert isinstance(key, StubGlobal)
    assert key.qualname == "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"
    assert torch.equal(val["best_model_score"], torch.tensor(0.5))
    assert type(obj["hyper_parameters"]) is dict and obj["hyper_parameters"]["lr"] == 2e-4
    enc = obj["hyper_parameters"]["encoder"]
    assert enc.qualname == "src.config.EncoderCfg" and enc.state == {"d_feature": 128, "name": "costvolume"}


def test_inside_a_host_that_registered_its_own_safe_globals(tmp_path):
    # ComfyUI registers numpy's real scalar/dtype and a dummy Lightning ModelCheckpoint process-wide; whichever class
    # torch picks for a shared name, the tensors and the data come back and our stand-ins are unregistered after
    from numpy import dtype as np_dtype

    class ModelCheckpoint:
        pass

    ModelCheckpoint.__module__ = "pytorch_lightning.callbacks.model_checkpoint"
    host = [ModelCheckpoint, np_dtype, np.dtypes.Float64DType]
    src = tmp_path / "c.ckpt"
    orig = _lightning_ckpt(src)
    with torch.serialization.safe_globals(host):
        before = list(torch.serialization.get_safe_globals())
        obj = load_checkpoint(src)
        assert sorted(map(repr, torch.serialization.get_safe_globals())) == sorted(map(repr, before))
    for k, v in orig["state_dict"].items():
        _assert_bit_equal(obj["state_dict"][k], v.detach())
    assert obj["hyper_parameters"]["np_scalar"] == np.float32(2.5)
    np.testing.assert_array_equal(obj["hyper_parameters"]["np_array"], np.arange(12.0).reshape(3, 4))
