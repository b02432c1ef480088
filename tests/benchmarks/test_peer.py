"""The peer's command lines (benchmarks/peer.py) are what docs/benchmarks.md says, and the
bars compare our stack with llama-server level by level. Nothing is built or started here."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from benchmarks import peer
from benchmarks.bars import evaluate, peer_bars, throughput_table

DOCS = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"
SOURCE, BUILD = Path("<src>/vendor/llama.cpp"), Path("<build>")


def test_configure_is_a_cpu_only_release_build_of_the_vendored_sources() -> None:
    command = peer.configure_command(SOURCE, BUILD)
    assert command[:5] == ["cmake", "-S", str(SOURCE), "-B", str(BUILD)]
    for option in ("-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DGGML_CUDA=OFF",
                   "-DGGML_VULKAN=OFF", "-DGGML_METAL=OFF", "-DLLAMA_BUILD_SERVER=ON",
                   "-DLLAMA_USE_PREBUILT_UI=OFF", "-DGGML_NATIVE=ON"):  # fmt: skip
        assert option in command


def test_build_makes_llama_server_and_llama_perplexity() -> None:
    command = peer.build_command(BUILD, jobs=2)
    assert command == ["cmake", "--build", str(BUILD), "--config", "Release",
                       "--target", "llama-server", "llama-perplexity", "--parallel", "2"]  # fmt: skip


def test_download_fetches_the_pinned_sdist_only() -> None:
    command = peer.download_command(Path("/tmp/x"))
    assert command[1:4] == ["-m", "pip", "download"]
    assert "--no-deps" in command
    assert command[command.index("--no-binary") + 1] == ":all:"
    assert f"llama-cpp-python=={peer.LLAMA_CPP_PYTHON_VERSION}" in command


def test_server_runs_32_parallel_slots_with_continuous_batching() -> None:
    command = peer.server_command(Path("/b/llama-server"), Path("/m.gguf"), 8090, threads=2)
    flags = dict(zip(command[1::2], command[2::2], strict=False))
    assert command[0] == "/b/llama-server"
    assert flags["--model"] == "/m.gguf"
    assert flags["--threads"] == flags["--threads-batch"] == "2"
    assert flags["--parallel"] == "32"
    assert flags["--ctx-size"] == "32768"
    assert command[-1] == "--cont-batching"


def test_docs_show_the_same_command_lines() -> None:
    docs = DOCS.read_text()
    assert " ".join(peer.configure_command(SOURCE, BUILD)) in docs
    assert " ".join(peer.build_command(BUILD, 2)) in docs
    served = peer.server_command(Path(".cache/peer/llama-server"), Path("<model.gguf>"), 8090, 2)
    assert " ".join(served) in docs


def test_unpack_finds_the_vendored_llama_cpp(tmp_path: Path) -> None:
    sdist = tmp_path / "llama_cpp_python-0.3.36.tar.gz"
    with tarfile.open(sdist, "w:gz") as archive:
        data = b"project(llama.cpp)\n"
        info = tarfile.TarInfo("llama_cpp_python-0.3.36/vendor/llama.cpp/CMakeLists.txt")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    source = peer._unpack(sdist, tmp_path / "src")
    assert source == tmp_path / "src" / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp"
    assert (source / "CMakeLists.txt").read_bytes() == data


def test_unpack_refuses_an_archive_without_llama_cpp(tmp_path: Path) -> None:
    sdist = tmp_path / "llama_cpp_python-0.3.36.tar.gz"
    with tarfile.open(sdist, "w:gz"):
        pass
    with pytest.raises(peer.PeerError, match="vendor/llama.cpp"):
        peer._unpack(sdist, tmp_path / "src")


def test_build_reuses_a_binary_already_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "llama-server").write_text("")
    (tmp_path / "llama-perplexity").write_text("")
    monkeypatch.setattr(peer, "_download", lambda _: pytest.fail("downloaded again"))
    assert peer.build(tmp_path) == tmp_path / "llama-server"


def _level(tokens_per_s: float, ttft_ms: float) -> dict[str, float]:
    return {"output_tokens_per_s": tokens_per_s, "ttft_p50_ms": ttft_ms}


PEER_STAGE = {
    "results": {
        "tritium": {"levels": {"1": _level(22, 70), "8": _level(118, 200), "32": _level(274, 571)}},
        "llama_server": {
            "levels": {"1": _level(109, 40), "8": _level(184, 90), "32": _level(188, 301)}
        },
    }
}


def test_bars_compare_with_llama_server_at_every_level() -> None:
    bars = peer_bars(PEER_STAGE["results"])
    assert [bar["met"] for bar in bars] == [False, False, False, False]
    assert bars[2]["bar"] == "full-stack output tokens/s >= 2x llama-server's (concurrency 32)"
    assert bars[2]["measured"] == "274.0 vs 188.0 tok/s (1.46x); TTFT p50 571 vs 301 ms"
    assert bars[3] == {"bar": "TTFT p50 <= llama-server's (concurrency 32)",
                       "measured": "571 vs 301 ms", "met": False}  # fmt: skip
    assert evaluate(None, None, PEER_STAGE) == bars
    faster = {"tritium": {"levels": {"32": _level(400, 250)}},
              "llama_server": {"levels": {"32": _level(188, 301)}}}  # fmt: skip
    assert [bar["met"] for bar in peer_bars(faster)] == [True, True]


def test_throughput_table_names_llama_server() -> None:
    lines = throughput_table(None, None, PEER_STAGE)
    assert "| llama.cpp llama-server, 32 slots (concurrency 32) | 188.0 |" in lines


def test_suite_levels_and_runs_on_one_server_send_different_prompts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from benchmarks import suite
    from benchmarks.report import RunResult
    from benchmarks.workloads import WorkloadSpec

    seeds: list[int] = []

    async def fake_run_bench(config):  # noqa: ANN001, ANN202
        seeds.append(config.workload.seed)
        return RunResult("x", {}, [])

    monkeypatch.setattr(suite, "run_bench", fake_run_bench)
    spec = WorkloadSpec("fixed", 8, 2)
    suite.bench("a", "openai-completions", "http://x", "m", spec, ((1, 4), (8, 8)))
    suite.bench("b", "openai-completions", "http://x", "m", spec, ((1, 4),), seed=1000)
    assert len(set(seeds)) == 3
    suite.bench("peer", "openai-completions", "http://y", "m", spec, ((1, 4), (8, 8)))
    assert seeds[3:] == seeds[:2]  # another server gets the same prompts
