"""The released OmniGlue's preset around the model, without TensorFlow: what a user without the
extra or without the files sees, ``omniglue-sfm weights`` (list, fetch, checks) and the preset
table. TensorFlow is taken away (or faked present) here, so these run with or without it."""

from __future__ import annotations

import os
import sys
import tarfile
import types
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import SAMPLE_IMAGES  # noqa: I001

from omniglue_sfm import cli, reconstruct
from omniglue_sfm.config import presets
from omniglue_sfm.runtime import extras, weights, weights_fetch

OFFICIAL = ("og_export", "sp_v6", "dinov2_vitb14")


@pytest.fixture(autouse=True)
def _empty_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("OMNIGLUE_SFM_OFFLINE", "1")
    monkeypatch.setenv("OMNIGLUE_SFM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for spec in weights.KNOWN.values():
        monkeypatch.delenv(spec.env_var, raising=False)


def fake_extras(monkeypatch) -> None:
    """TensorFlow and OpenCV look installed (nothing here imports them)."""
    for name in ("tensorflow", "cv2"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))


def one_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return err


def test_missing_tensorflow_is_one_line_with_the_install_command(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # an import of it now fails
    out = tmp_path / "out"
    code = cli.main(["reconstruct", str(SAMPLE_IMAGES), str(out), "--preset", "omniglue-official"])
    err = one_error(capsys)
    assert code == 1 and err.count("\n") == 1
    assert "needs TensorFlow" in err and 'pip install "omniglue-sfm[official]"' in err
    assert not out.exists()  # before any work
    with pytest.raises(extras.ExtraMissingError, match="omniglue-sfm\\[official\\]"):
        extras.tensorflow()


def test_missing_files_stop_before_any_work_naming_each(monkeypatch, tmp_path, capsys):
    fake_extras(monkeypatch)
    out = tmp_path / "out"
    code = cli.main(["reconstruct", str(SAMPLE_IMAGES), str(out), "--preset", "omniglue-official"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.startswith("error: missing weights: sp_v6, dinov2_vitb14, og_export\n")
    for name in OFFICIAL:
        spec = weights.KNOWN[name]
        assert spec.url in err and spec.licence in err and f"weights fetch {name}" in err
    assert "Fetch them all: omniglue-sfm weights fetch sp_v6 dinov2_vitb14 og_export" in err
    assert not out.exists()


def test_the_preset_refuses_knobs_that_change_what_the_model_sees(monkeypatch, tmp_path, capsys):
    fake_extras(monkeypatch)
    for knob, words in ((["--resize-max", "1024"], "full-resolution"), (["--rotation", "auto"], "as stored")):
        code = cli.main(["extract", str(SAMPLE_IMAGES), str(tmp_path / "f.h5"), "--preset",
                         "omniglue-official", *knob])
        assert code == 1 and words in one_error(capsys)
    assert not (tmp_path / "f.h5").exists()


# --------------------------------------------------------------------------------------------
# omniglue-sfm weights


def saved_model_tree(root: Path, name: str) -> Path:
    """A folder laid out like a SavedModel (what the fetch checks; not a loadable model)."""
    folder = root / name
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"\x08\x01" * 64)
    (folder / "variables" / "variables.index").write_bytes(b"index")
    (folder / "variables" / "variables.data-00000-of-00001").write_bytes(os.urandom(4096))
    return folder


def make_zip(path: Path, folder: Path, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(folder.parent).as_posix())
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


def make_tgz(path: Path, folder: Path, symlink: bool = False) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        tf.add(folder, arcname=folder.name)
        if symlink:
            info = tarfile.TarInfo(f"{folder.name}/link")
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tf.addfile(info)
    return path


def test_listing_names_every_checkpoint_with_url_licence_and_state(capsys):
    assert cli.main(["weights"]) == 0
    out = capsys.readouterr().out
    for name, spec in weights.KNOWN.items():
        assert name in out and spec.env_var in out and (spec.url or "-") in out
    entries = {e.name: e for e in weights_fetch.listing()}
    assert set(OFFICIAL) <= set(entries)
    assert all(entries[n].found is None for n in OFFICIAL)
    assert entries["og_export"].filename == "og_export/"


def test_fetch_unpacks_and_checks_the_three_files(tmp_path, capsys):
    src = tmp_path / "src"
    og = make_zip(tmp_path / "og_export.zip", saved_model_tree(src, "og_export"))
    sp = make_tgz(tmp_path / "sp_v6.tgz", saved_model_tree(src, "sp_v6"))
    pth = tmp_path / "dinov2_vitb14_pretrain.pth"
    torch.save({"cls_token": torch.zeros(1, 1, 768), "pos_embed": torch.zeros(1, 1370, 768)}, pth)
    assert cli.main(["weights", "fetch", "og_export", "--from", str(og)]) == 0
    assert cli.main(["weights", "fetch", "sp_v6", "--from", sp.as_uri()]) == 0  # a file:// URL
    assert cli.main(["weights", "fetch", "dinov2_vitb14", "--from", str(pth)]) == 0
    out = capsys.readouterr().out
    assert "sha256" in out and "checked" in out
    cache = weights.cache_dir()
    assert (cache / "og_export" / "saved_model.pb").is_file() and (cache / "sp_v6" / "variables").is_dir()
    for name in OFFICIAL:
        assert weights.resolve_known(name) == cache / weights.KNOWN[name].filename
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporary left behind
    weights.check_available(OFFICIAL)
    assert all(e.found for e in weights_fetch.listing() if e.name in OFFICIAL)
    again = weights_fetch.fetch("og_export", og)
    assert again.already_there
    assert not weights_fetch.fetch("og_export", og, force=True).already_there
    by_path = weights.fingerprint({"weights": str(cache / "og_export")})
    assert weights.fingerprint({"weights": "og_export"}) == by_path


def test_fetch_refuses_bad_archives(tmp_path, capsys):
    src = tmp_path / "src"
    model = saved_model_tree(src, "og_export")
    good = make_zip(tmp_path / "good.zip", model).read_bytes()
    corrupt = bytearray(good)
    data = (model / "variables" / "variables.data-00000-of-00001").read_bytes()
    at = corrupt.find(data) + 100  # inside a stored member's bytes: its CRC no longer fits
    assert at > 100
    corrupt[at] ^= 0xFF
    (tmp_path / "corrupt.zip").write_bytes(bytes(corrupt))
    make_zip(tmp_path / "outside.zip", model, {"../evil.txt": b"x"})
    with zipfile.ZipFile(tmp_path / "nomodel.zip", "w") as zf:
        zf.writestr("og_export/readme.txt", b"no model here")
    for name, words in (("corrupt.zip", "corrupt"), ("outside.zip", "outside the folder"),
                        ("nomodel.zip", "holds no SavedModel")):
        with pytest.raises(ValueError, match=words):
            weights_fetch.fetch("og_export", tmp_path / name)
    with pytest.raises(ValueError, match="not a file or folder"):
        linked = make_tgz(tmp_path / "link.tgz", saved_model_tree(src, "sp_v6"), symlink=True)
        weights_fetch.fetch("sp_v6", linked)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    code = cli.main(["weights", "fetch", "dinov2_vitb14", "--from", str(tmp_path / "junk.pth")])
    assert code == 1 and "not a readable PyTorch checkpoint" in one_error(capsys)
    assert not (weights.cache_dir() / "og_export").exists()
    assert not (weights.cache_dir() / "dinov2_vitb14_pretrain.pth").exists()


def test_fetch_command_errors_are_one_line(capsys):
    for argv, words in ((["weights", "fetch"], "name the checkpoints"),
                        (["weights", "fetch", "nope"], "unknown checkpoint"),
                        (["weights", "fetch", "sp_v6", "og_export", "--from", "x.zip"], "exactly one"),
                        (["weights", "fetch", "omniglue"], "no download URL")):
        assert cli.main(argv) == 1
        assert words in one_error(capsys)


# --------------------------------------------------------------------------------------------
# the preset table


def test_presets_that_mean_something():
    names = presets.names()
    assert "omniglue-official" in names and "omniglue-dinov2" not in names
    assert "10-40% slower" in presets.get("omniglue-guided")["description"]
    for alias, canonical in (("aliked+lightglue", "aliked-lightglue"),
                             ("superpoint+superglue", "superpoint-superglue")):
        assert presets.get(alias)["name"] == canonical and alias not in presets.names(aliases=False)
    official = presets.get("omniglue-official")
    assert official["rotation"] == "off" and "resize_max" not in official["features"]
    assert official["features"]["max_keypoints"] == 1024
    presets.validate(official, "built-in")


def test_help_lists_each_preset_once(capsys):
    with pytest.raises(SystemExit):
        cli.main(["reconstruct", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "omniglue- official" in text or "omniglue-official" in text
    assert "aliked+lightglue" not in text and "superpoint+superglue" not in text


def test_check_weights_lists_every_missing_file_once(monkeypatch):
    fake_extras(monkeypatch)
    with pytest.raises(weights.WeightsNotFoundError) as err:
        reconstruct.check_weights(presets.get("superpoint+superglue"))
    first = str(err.value).splitlines()[0]
    assert first == "missing weights: superpoint, superglue_outdoor"
    assert str(err.value).count("Licence:") == 2
