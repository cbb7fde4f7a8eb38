"""toto.compile.cache: resolution, a cross-process round trip, and every failure degrading to a cold compile."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from toto.compile import cache as compile_cache
from toto.compile.cache import ENV_COMPILE_CACHE, ENV_INDUCTOR_CACHE, FILE_NAME, CompileCache

# Compiles f = (x.sin() * 2).cos() on 64 floats and prints what the test needs as JSON.
# argv: cache directory, "save" or "load".
PROCESS = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import torch
    from torch._dynamo.utils import counters
    from toto.compile.cache import CompileCache

    cache = CompileCache(Path(sys.argv[1]))
    loaded = cache.load() if sys.argv[2] == "load" else None
    x = torch.linspace(-3, 3, 64)
    compiled = torch.compile(lambda x: (x.sin() * 2).cos(), fullgraph=True)
    out = compiled(x)
    saved = cache.save() if sys.argv[2] == "save" else None
    print(json.dumps({
        "loaded": loaded,
        "saved": saved,
        "fxgraph_cache_hit": counters["inductor"]["fxgraph_cache_hit"],
        "autograd_cache_hit": counters["aot_autograd"]["autograd_cache_hit"],
        "max_error": (out - (x.sin() * 2).cos()).abs().max().item(),
        "output": out.tolist(),
    }))
    """
)


def run_process(cache_dir: Path, action: str, inductor_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != ENV_COMPILE_CACHE}
    env[ENV_INDUCTOR_CACHE] = str(inductor_dir)  # set, so the cache does not redirect it: only the file carries over
    done = subprocess.run(
        [sys.executable, "-c", PROCESS, str(cache_dir), action],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def first_process(tmp_path_factory) -> tuple[Path, Path, dict]:
    """A cold process that compiled f and saved: (cache dir, its inductor dir, its report)."""
    root = tmp_path_factory.mktemp("compile_cache")
    report = run_process(root / "cache", "save", root / "inductor1")
    return root / "cache", root / "inductor1", report


@pytest.fixture
def inductor_dir(tmp_path, monkeypatch) -> Path:
    """A private inductor cache for in-process tests, restored afterwards."""
    monkeypatch.setenv(ENV_INDUCTOR_CACHE, str(tmp_path / "inductor"))
    return tmp_path / "inductor"


@pytest.fixture
def torch_loads(monkeypatch) -> list[bytes]:
    """Records what reaches torch.compiler.load_cache_artifacts, loading nothing."""
    from torch.compiler._cache import CacheInfo

    calls: list[bytes] = []

    def fake(payload: bytes) -> CacheInfo:
        calls.append(payload)
        return CacheInfo()

    monkeypatch.setattr(torch.compiler, "load_cache_artifacts", fake)
    monkeypatch.setattr(compile_cache, "_keep_in_later_saves", lambda payload: None)  # these payloads are not torch's
    return calls


@pytest.fixture
def no_inductor_dir(monkeypatch) -> None:
    """TORCHINDUCTOR_CACHE_DIR unset for the test, and put back afterwards even if load() sets it."""
    monkeypatch.setenv(ENV_INDUCTOR_CACHE, "placeholder")  # records the original for teardown
    monkeypatch.delenv(ENV_INDUCTOR_CACHE)


def write_cache_file(directory: Path, payload: bytes, **header_changes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    header = json.loads(compile_cache._header(payload))
    header.update(header_changes)
    path = directory / FILE_NAME
    path.write_bytes(json.dumps(header).encode() + b"\n" + payload)
    return path


def only_warning(caught: list[warnings.WarningMessage]) -> str:
    assert [w.category for w in caught] == [RuntimeWarning], [str(w.message) for w in caught]
    return str(caught[0].message)


# --- resolve -------------------------------------------------------------------------------


def test_resolve_argument_wins_over_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_COMPILE_CACHE, str(tmp_path / "env"))
    assert CompileCache.resolve(tmp_path / "arg").directory == tmp_path / "arg"


def test_resolve_reads_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_COMPILE_CACHE, str(tmp_path / "env"))
    assert CompileCache.resolve(None).directory == tmp_path / "env"


@pytest.mark.parametrize("env", [None, "", "  "])
def test_resolve_none_without_argument_or_environment(monkeypatch, env):
    if env is None:
        monkeypatch.delenv(ENV_COMPILE_CACHE, raising=False)
    else:
        monkeypatch.setenv(ENV_COMPILE_CACHE, env)
    assert CompileCache.resolve(None) is None


def test_resolve_expands_home_and_makes_absolute(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert CompileCache.resolve("~/cache").directory == tmp_path / "cache"
    monkeypatch.chdir(tmp_path)
    assert CompileCache.resolve("relative").directory == tmp_path / "relative"


# --- round trip ------------------------------------------------------------------------------


def test_cold_process_saves_a_checked_file(first_process):
    cache_dir, _, report = first_process
    assert report["saved"] is True and report["max_error"] < 1e-5
    assert report["fxgraph_cache_hit"] == 0
    data = (cache_dir / FILE_NAME).read_bytes()
    assert compile_cache._payload(data)  # header, size and checksum agree
    assert not [p for p in cache_dir.iterdir() if p.name != FILE_NAME]  # no temp files left behind


def test_fresh_process_loads_the_file_and_hits_the_cache(first_process, tmp_path):
    cache_dir, _, cold = first_process
    report = run_process(cache_dir, "load", tmp_path / "inductor2")  # a different, empty inductor cache
    assert report["loaded"] is True
    assert report["fxgraph_cache_hit"] >= 1 and report["autograd_cache_hit"] >= 1
    assert report["output"] == cold["output"]  # the same kernel: bit for bit the cold compile's numbers


def test_loaded_artifacts_survive_a_later_save(first_process, tmp_path, inductor_dir):
    # A process that loads the file but compiles something else must not save a smaller file.
    from torch.compiler._cache import CacheArtifactManager

    source, _, _ = first_process
    saved_payload = compile_cache._payload((source / FILE_NAME).read_bytes())
    copy = tmp_path / "copy"
    write_cache_file(copy, saved_payload)
    with CacheArtifactManager.with_fresh_cache():
        assert CompileCache(copy).load()
        assert CompileCache(tmp_path / "later").save()
    later = compile_cache._payload((tmp_path / "later" / FILE_NAME).read_bytes())
    keys = lambda payload: {  # noqa: E731
        (kind, a.key) for kind, items in CacheArtifactManager.deserialize(payload).items() for a in items
    }
    assert keys(saved_payload) and keys(saved_payload) <= keys(later)


# --- a file that cannot be used -------------------------------------------------------------


def _garbage(payload: bytes, tmp_path: Path) -> Path:
    path = tmp_path / "cache" / FILE_NAME
    path.parent.mkdir()
    path.write_bytes(os.urandom(4096))
    return path


def _truncated(payload: bytes, tmp_path: Path) -> Path:
    path = write_cache_file(tmp_path / "cache", payload)
    path.write_bytes(path.read_bytes()[: -len(payload) // 2])
    return path


def _flipped_byte(payload: bytes, tmp_path: Path) -> Path:
    path = write_cache_file(tmp_path / "cache", payload)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def _other_torch(payload: bytes, tmp_path: Path) -> Path:
    return write_cache_file(tmp_path / "cache", payload, torch="1.0.0")


def _other_machine(payload: bytes, tmp_path: Path) -> Path:
    return write_cache_file(tmp_path / "cache", payload, machine="riscv64/DEFAULT")


def _header_only(payload: bytes, tmp_path: Path) -> Path:
    path = write_cache_file(tmp_path / "cache", payload)
    path.write_bytes(path.read_bytes().partition(b"\n")[0])  # cut before the newline
    return path


UNUSABLE = {
    "garbage": (_garbage, "no valid header"),
    "truncated": (_truncated, "truncated"),
    "flipped byte": (_flipped_byte, "checksum mismatch"),
    "other torch": (_other_torch, "saved by torch 1.0.0"),
    "other machine": (_other_machine, "saved on a riscv64/DEFAULT machine"),
    "header only": (_header_only, "no valid header"),
}


@pytest.mark.parametrize(("make", "reason"), list(UNUSABLE.values()), ids=list(UNUSABLE))
def test_unusable_file_warns_once_and_never_reaches_torch(make, reason, tmp_path, torch_loads, inductor_dir):
    corrupt = make(b"torch artifacts " * 64, tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert CompileCache(tmp_path / "cache").load() is False
    message = only_warning(caught)
    assert str(corrupt) in message and reason in message
    assert torch_loads == []


def test_payload_torch_cannot_decode_warns_once(tmp_path, inductor_dir):
    # A well-formed file around bytes torch rejects (its own checksum fails): torch returns None.
    write_cache_file(tmp_path / "cache", b"not torch's format")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert CompileCache(tmp_path / "cache").load() is False
    assert "could not decode" in only_warning(caught)


def test_torch_loader_raising_warns_once(tmp_path, monkeypatch, inductor_dir):
    def explode(payload: bytes):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch.compiler, "load_cache_artifacts", explode)
    write_cache_file(tmp_path / "cache", b"payload")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert CompileCache(tmp_path / "cache").load() is False
    message = only_warning(caught)
    assert "torch failed to load it" in message and "No space left" in message


def test_compiling_after_a_corrupt_file_gives_eager_numbers(first_process, tmp_path, monkeypatch):
    # Reuse the first process's inductor cache so this compile is quick; numbers are what matter.
    _, warm_inductor, _ = first_process
    monkeypatch.setenv(ENV_INDUCTOR_CACHE, str(warm_inductor))
    _truncated(b"torch artifacts " * 64, tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert CompileCache(tmp_path / "cache").load() is False
    only_warning(caught)
    x = torch.linspace(-3, 3, 64)
    compiled = torch.compile(lambda x: (x.sin() * 2).cos(), fullgraph=True)
    torch.testing.assert_close(compiled(x), (x.sin() * 2).cos())


def test_missing_file_is_a_quiet_cold_start(tmp_path, torch_loads, inductor_dir):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert CompileCache(tmp_path / "never-saved").load() is False
    assert caught == [] and torch_loads == []


# --- load once ---------------------------------------------------------------------------------


def test_load_runs_once_per_directory_and_repeats_its_answer(tmp_path, torch_loads, inductor_dir):
    write_cache_file(tmp_path / "a", b"payload a")
    write_cache_file(tmp_path / "b", b"payload b")
    assert CompileCache(tmp_path / "a").load() is True
    (tmp_path / "a" / FILE_NAME).unlink()  # a second load would now fail; it must not look
    assert CompileCache(tmp_path / "a").load() is True
    assert CompileCache(tmp_path / "b").load() is True
    assert torch_loads == [b"payload a", b"payload b"]


# --- inductor's own cache ------------------------------------------------------------------------


@pytest.fixture
def nothing_compiled(monkeypatch) -> None:
    """This test process may have compiled already; pretend it has not."""
    monkeypatch.setattr(compile_cache, "_compiled_anything", lambda: False)


@pytest.mark.parametrize("preset", ["unset", "inductor's default"])
def test_load_keeps_inductor_cache_in_directory(tmp_path, no_inductor_dir, nothing_compiled, monkeypatch, preset):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    if preset != "unset":  # importing torch._dynamo sets it so
        monkeypatch.setenv(ENV_INDUCTOR_CACHE, default_cache_dir())
    CompileCache(tmp_path / "cache").load()
    assert os.environ[ENV_INDUCTOR_CACHE] == str(tmp_path / "cache" / "inductor")


def test_load_leaves_a_chosen_inductor_cache_alone(tmp_path, inductor_dir, nothing_compiled):
    CompileCache(tmp_path / "cache").load()
    assert os.environ[ENV_INDUCTOR_CACHE] == str(inductor_dir)


def test_load_after_compiling_leaves_inductor_cache_alone(tmp_path, no_inductor_dir, monkeypatch):
    monkeypatch.setattr(compile_cache, "_compiled_anything", lambda: True)
    CompileCache(tmp_path / "cache").load()
    assert ENV_INDUCTOR_CACHE not in os.environ


def test_use_for_inductor_false_leaves_it_unset(tmp_path, no_inductor_dir, nothing_compiled):
    CompileCache(tmp_path / "cache", use_for_inductor=False).load()
    assert ENV_INDUCTOR_CACHE not in os.environ


def test_fresh_process_moves_inductor_cache_in(tmp_path):
    # End to end, as a user runs it: torch picks its default on import, load() must still move it.
    script = (
        "import os, sys, toto; from toto.compile.cache import CompileCache; from pathlib import Path; "
        "CompileCache(Path(sys.argv[1])).load(); print(os.environ['TORCHINDUCTOR_CACHE_DIR'])"
    )
    env = {k: v for k, v in os.environ.items() if k != ENV_INDUCTOR_CACHE}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(tmp_path / "inductor")


# --- saving fails ----------------------------------------------------------------------------------


@pytest.fixture
def something_to_save(monkeypatch) -> bytes:
    payload = b"new artifacts"
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: (payload, None))
    return payload


def test_save_writes_header_and_payload(tmp_path, something_to_save):
    assert CompileCache(tmp_path / "new" / "cache").save() is True
    assert compile_cache._payload((tmp_path / "new" / "cache" / FILE_NAME).read_bytes()) == something_to_save


def test_save_with_nothing_compiled_keeps_the_old_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: None)
    path = write_cache_file(tmp_path / "cache", b"old")
    assert CompileCache(tmp_path / "cache").save() is False
    assert compile_cache._payload(path.read_bytes()) == b"old"


def test_save_into_an_unusable_directory_warns_once(tmp_path, something_to_save):
    (tmp_path / "a-file").write_text("")
    cache = CompileCache(tmp_path / "a-file" / "cache")  # a directory cannot be made inside a file
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cache.save() is False
    message = only_warning(caught)
    assert str(cache.path) in message and "could not save" in message


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes anywhere")
def test_save_into_a_read_only_directory_warns_once(tmp_path, something_to_save):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache").chmod(0o500)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert CompileCache(tmp_path / "cache").save() is False
        assert "Permission denied" in only_warning(caught)
    finally:
        (tmp_path / "cache").chmod(0o700)


def test_full_disk_warns_once_and_keeps_the_old_file(tmp_path, monkeypatch, something_to_save):
    def fill_disk(file, data: bytes) -> None:
        file.write(data[:10])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    path = write_cache_file(tmp_path / "cache", b"old")
    monkeypatch.setattr(compile_cache, "_write_all", fill_disk)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert CompileCache(tmp_path / "cache").save() is False
    message = only_warning(caught)
    assert str(path) in message and "No space left on device" in message
    assert compile_cache._payload(path.read_bytes()) == b"old"
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [FILE_NAME]  # temp file removed


def test_torch_failing_to_serialize_warns_once(tmp_path, monkeypatch):
    def explode():
        raise RuntimeError("boom")

    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", explode)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert CompileCache(tmp_path / "cache").save() is False
    assert "RuntimeError: boom" in only_warning(caught)
