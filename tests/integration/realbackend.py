"""Start and stop the real model servers of ../shared/realbackend for a test module.

``serve`` starts them. Where its llama.cpp libraries are unusable (the copy in
shared/ has its version symlinks flattened into small text files naming their
targets, which the loader reads as truncated libraries), llama-server is
started with a folder of real symlinks instead, and the same flags.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, free_port

REALBACKEND = ROOT.parent / "shared" / "realbackend"
SERVE = REALBACKEND / "serve"
ABSENT = f"no real model server here ({SERVE} is absent)"


def relinked_libraries(folder: Path) -> Path:
    """Return a folder whose libraries link to the real files behind flattened symlinks."""
    source = REALBACKEND / "llama.cpp"
    folder.mkdir(parents=True, exist_ok=True)
    for library in source.iterdir():
        target = library
        if library.is_file() and library.stat().st_size < 256:  # a flattened symlink
            target = source / library.read_text().strip()
        link = folder / library.name
        if not link.exists():
            link.symlink_to(target)
    return folder


def wait_until_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Wait for ``url`` to answer 200, or fail with the server's log."""
    for _ in range(240):
        if process.poll() is not None:
            pytest.fail(f"llama-server died:\n{log.read_text()[-2000:]}")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.25)
    pytest.fail(f"llama-server did not answer {url} in 60 s")


@contextmanager
def llama_server(tmp: Path, model: str = "", extra: tuple[str, ...] = ()) -> Iterator[str]:
    """Run llama-server with the tiny model ("tools": the tool-calling one, "embed": the
    embedding one) and ``extra`` flags; yield its URL."""
    port = free_port()
    started = subprocess.run([str(SERVE), "llama-server", str(port),
                              *([model] if model else []), *extra],
                             capture_output=True, text=True, timeout=90, check=False)
    if started.returncode == 0:
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            subprocess.run([str(SERVE), "stop", str(port)], capture_output=True, timeout=30,
                           check=False)
        return
    print(f"serve llama-server failed ({started.stderr.strip()[-200:]}); starting it with "
          "relinked libraries")
    # serve's flags for each model
    flags = {"tools": ["--model", "tiny-tools.gguf", "--alias", "tiny", "--n-predict", "128"],
             "embed": ["--model", "tiny-embed.gguf", "--alias", "tiny-embed", "--embeddings",
                       "--pooling", "mean", "--n-predict", "64"],
             "": ["--model", "tiny.gguf", "--alias", "tiny", "--n-predict", "64"]}[model]
    flags[1] = str(REALBACKEND / "model" / flags[1])
    log = tmp / f"llama-server-{port}.log"
    command = [str(REALBACKEND / "llama.cpp" / "llama-server"), *flags,
               "--host", "127.0.0.1", "--port", str(port), "--ctx-size", "2048",
               "--parallel", "2", "--threads", "2", "--no-ui", "--jinja", *extra]
    env = {"LD_LIBRARY_PATH": str(relinked_libraries(tmp / "llama-libs")), "PATH": "/usr/bin"}
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}/health", process, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
