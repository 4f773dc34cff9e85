"""Build attrx's serving image and check it, with podman or docker (`make image`, `make image-demo`,
`make image-test`; tests/e2e/test_image.py). Standard library only.

    python deploy/container/image.py build [--target serve|serve-demo] [--tag T] [--base IMAGE] [--demo-bundle DIR]
    python deploy/container/image.py check --tag T --bundle DIR --image FILE [--title TEXT]

What it adapts to the machine, and says so:
- the runtime: podman if `podman info` works, else docker if `docker info` works (a docker client
  without an engine does not count);
- podman's flags: runc and the cgroupfs manager where the cgroups are not v2 only (crun refuses hybrid
  mode), and ulimits no higher than this machine's hard limits (podman's defaults exceed them here);
- the base (Dockerfile ARG BASE): python:3.11-slim if it is present or can be pulled, else a local
  Debian bookworm with python3 and venv made by mmdebstrap and imported (no registry needed);
- pip's CA bundle (PIP_CERT, or pip's configured `cert`), passed as the build secret `pip-cert`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BASE = "docker.io/library/python:3.11-slim"
LOCAL_BASE = "localhost/attrx-debian-base:bookworm"
STAGED_BUNDLE = "build/image-bundle"  # a bundle from outside the build context is copied here (.dockerignore)


class NoRuntime(RuntimeError):
    """No container runtime works on this machine."""


class CheckFailed(AssertionError):
    """The image built but does not serve as it should."""


def _ok(cmd: list[str], timeout: float = 60) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=timeout).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def runtime() -> list[str]:
    """The container command with the flags this machine needs: podman first, then a docker engine."""
    if shutil.which("podman") and _ok(["podman", "info"]):
        flags = []
        if shutil.which("runc") and _fs_type("/sys/fs/cgroup") != "cgroup2fs":
            flags = ["--runtime", "runc", "--cgroup-manager", "cgroupfs"]
        return ["podman", *flags]
    if shutil.which("docker") and _ok(["docker", "info"]):
        return ["docker"]
    raise NoRuntime("no container runtime: podman is not installed (apt-get install podman runc) and no docker "
                    "engine answers `docker info`")


def _fs_type(path: str) -> str:
    r = subprocess.run(["stat", "-fc", "%T", path], capture_output=True, text=True)
    return r.stdout.strip()


def limits(rt: list[str]) -> list[str]:
    """podman: modest ulimits (its defaults exceed what these machines allow, and setting them is refused)."""
    if rt[0] != "podman":
        return []
    out = []
    for name, res in (("nofile", resource.RLIMIT_NOFILE), ("nproc", resource.RLIMIT_NPROC)):
        hard = resource.getrlimit(res)[1]  # 4096: what these machines' sandboxes let a container set
        n = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
        out += ["--ulimit", f"{name}={n}:{n}"]
    return out


def base_image(rt: list[str], wanted: str | None) -> str:
    """`wanted`, or python:3.11-slim, if present or pullable; else the local Debian base (made once)."""
    image = wanted or DEFAULT_BASE
    if _ok([*rt, "image", "inspect", image]) or _ok([*rt, "pull", "-q", image], timeout=300):
        return image
    if wanted:
        raise NoRuntime(f"base image {wanted} is neither present nor pullable")
    if _ok([*rt, "image", "inspect", LOCAL_BASE]):
        return LOCAL_BASE
    if not shutil.which("mmdebstrap"):
        raise NoRuntime(f"{DEFAULT_BASE} cannot be pulled and mmdebstrap is not installed to make a local base "
                        "(apt-get install mmdebstrap)")
    print(f"image: {DEFAULT_BASE} cannot be pulled; making {LOCAL_BASE} with mmdebstrap", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        tar = Path(tmp) / "rootfs.tar"
        subprocess.run(["mmdebstrap", "--quiet", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
                        "bookworm", str(tar)], check=True)
        subprocess.run([*rt, "import", str(tar), LOCAL_BASE], check=True, capture_output=True)
    return LOCAL_BASE


def pip_cert() -> str | None:
    """The CA bundle pip uses on this machine, if one is set (a proxy's); None: the image's own CAs."""
    cert = os.environ.get("PIP_CERT")
    if not cert:
        r = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.cert"], capture_output=True, text=True)
        cert = r.stdout.strip() if r.returncode == 0 else None
    return cert if cert and Path(cert).is_file() else None


def stage_bundle(bundle: str | Path) -> str:
    """A bundle folder as a path inside the build context that .dockerignore lets through."""
    bundle = Path(bundle).resolve()
    if bundle == (ROOT / "build/demo-bundle").resolve():
        return "build/demo-bundle"
    staged = ROOT / STAGED_BUNDLE
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(bundle, staged)
    return STAGED_BUNDLE


def build(target: str = "serve", tag: str | None = None, base: str | None = None,
          demo_bundle: str | Path | None = None) -> str:
    """Build the Dockerfile's `target`; returns the tag."""
    rt = runtime()
    tag = tag or f"localhost/attrx:{target}"
    cmd = [*rt, "build", "--target", target, "-t", tag, "--build-arg", f"BASE={base_image(rt, base)}"]
    if rt[0] == "podman":  # docker format keeps HEALTHCHECK; pip reaches PyPI through the host's network
        cmd += ["--format", "docker", "--network", "host", *limits(rt)]
    if (cert := pip_cert()) is not None:
        cmd += ["--secret", f"id=pip-cert,src={cert}"]
    if target == "serve-demo":
        cmd += ["--build-arg", f"DEMO_BUNDLE={stage_bundle(demo_bundle or ROOT / 'build/demo-bundle')}"]
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    print("image:", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run([*cmd, str(ROOT)], check=True, env=env)
    return tag


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="image.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the serving image")
    b.add_argument("--target", default="serve", choices=["serve", "serve-demo"])
    b.add_argument("--tag")
    b.add_argument("--base", help=f"base image (default {DEFAULT_BASE}, else a local Debian base)")
    b.add_argument("--demo-bundle", help="serve-demo: the bundle to build in (default build/demo-bundle)")
    c = sub.add_parser("check", help="serve a bundle from the image and check it (prints a JSON report)")
    c.add_argument("--tag", default="localhost/attrx:serve")
    c.add_argument("--bundle", help="mounted at /models/bundle (none: the image's own, serve-demo)")
    c.add_argument("--image", required=True, help="a product image to send")
    c.add_argument("--title", default="Roadster Men Blue Striped T-Shirt")
    a = p.parse_args(argv)
    try:
        if a.cmd == "build":
            print(build(a.target, a.tag, a.base, a.demo_bundle))
        else:
            print(json.dumps(check(a.tag, a.bundle, a.image, a.title), indent=2))
    except (NoRuntime, subprocess.CalledProcessError, CheckFailed) as e:
        raise SystemExit(f"image: {e}") from None


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout: float, running=lambda: True) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if not running():
            raise CheckFailed("the container stopped before it was ready")
        try:
            if urllib.request.urlopen(url + "/readyz", timeout=2).status == 200:
                return time.monotonic() - t0
        except OSError:
            time.sleep(0.5)
    raise CheckFailed(f"{url}/readyz not 200 within {timeout:.0f} s")


def container_name() -> str:
    return f"attrx-check-{uuid.uuid4().hex[:8]}"


def _multipart(title: str, image: Path) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="title"\r\n\r\n{title}\r\n'.encode(),
             f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{image.name}"\r\n'
             f"Content-Type: image/jpeg\r\n\r\n".encode() + image.read_bytes() + b"\r\n",
             f"--{boundary}--\r\n".encode()]
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _get(url: str, key: str) -> dict:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def extract(url: str, title: str, image: str | Path, key: str) -> dict:
    """One multipart request to /v1/extract, as a catalog team sends it."""
    body, ctype = _multipart(title, Path(image))
    req = urllib.request.Request(url + "/v1/extract", data=body,
                                 headers={"Content-Type": ctype, "Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


# Run as the Kubernetes manifest runs it (deploy/kubernetes): a read-only root (the runtime mounts a
# tmpfs on /tmp), an anonymous volume where the TensorRT cache goes (it takes the image folder's owner,
# the server's user), no capabilities, no privilege escalation, and the API key from a file
LOCKED_DOWN = ["--read-only", "--tmpfs", "/tmp", "-v", "/var/cache/attrx", "--cap-drop", "ALL",
               "--security-opt", "no-new-privileges"]


def _exec(rt: list[str], name: str, *cmd: str) -> str:
    return subprocess.run([*rt, "exec", name, *cmd], capture_output=True, text=True, check=True).stdout.strip()


# the TensorRT cache folder the server would use, found as the server finds it (its settings, then
# ATTRX_CACHE_DIR), and written as the server's user
PROBE = ("from attrx.service.settings import ServeSettings as S; "
         "from attrx.service.inference.runtime.onnxruntime_backend import cache_root; "
         "d = cache_root(S().trt_cache_dir); p = d / 'probe'; p.write_text('x'); p.unlink(); print(d)")


def _probe(rt: list[str], name: str, url: str, title: str, image: str | Path, key: str) -> dict:
    answer, model = extract(url, title, image, key), _get(url + "/v1/model", key)
    model = {"name": model["name"], "attributes": [a["name"] for a in model["attributes"]]}
    return {"answer": answer, "model": model, "uid": int(_exec(rt, name, "id", "-u")),
            "user": _exec(rt, name, "id", "-un"), "trt_cache_dir": _exec(rt, name, "python", "-c", PROBE)}


def _stop(rt: list[str], name: str, drain_s: float) -> tuple[float, int]:
    """SIGTERM (a grace period well past the drain timeout, so a slow drain shows as time, not a kill)."""
    t0 = time.monotonic()
    subprocess.run([*rt, "stop", "-t", str(int(drain_s) + 30), name], check=True, capture_output=True)
    took = time.monotonic() - t0
    return took, int(_state(rt, name, "ExitCode"))


def _logs(rt: list[str], name: str) -> str:
    r = subprocess.run([*rt, "logs", name], capture_output=True, text=True)
    return r.stdout + r.stderr


def _state(rt: list[str], name: str, field: str) -> str:
    r = subprocess.run([*rt, "inspect", "--format", "{{.State." + field + "}}", name], capture_output=True, text=True)
    return r.stdout.strip()


def check(tag: str, bundle: str | Path | None, image: str | Path, title: str, drain_s: float = 10.0) -> dict:
    """Run the image (a bundle mounted read-only, or its own), wait for /readyz, send one multipart
    request, read the user it runs as and write its TensorRT cache dir, then stop it and time the
    drain. Raises CheckFailed naming what is wrong; returns the report."""
    import secrets

    rt, name, port = runtime(), container_name(), free_port()
    key = secrets.token_urlsafe(32)
    key_dir = Path(tempfile.mkdtemp(prefix="attrx-key-"))
    (key_dir / "api-key").write_text(key)
    (key_dir / "api-key").chmod(0o444)  # the container's user is not this machine's
    key_dir.chmod(0o755)
    cmd = [*rt, "run", "-d", "--name", name, *limits(rt), *LOCKED_DOWN, "-p", f"127.0.0.1:{port}:8000",
           "-e", f"ATTRX_DRAIN_TIMEOUT_S={drain_s}", "-v", f"{key_dir}:/var/run/secrets/attrx:ro",
           "-e", "ATTRX_API_KEY_FILE=/var/run/secrets/attrx/api-key"]
    if bundle is not None:
        cmd += ["-v", f"{Path(bundle).resolve()}:/models/bundle:ro"]
    subprocess.run([*cmd, tag], check=True, capture_output=True)
    url, report = f"http://127.0.0.1:{port}", {"tag": tag, "runtime": " ".join(rt), "drain_timeout_s": drain_s}
    try:
        report["ready_s"] = round(wait_ready(url, 180, lambda: _state(rt, name, "Running") == "true"), 2)
        report.update(_probe(rt, name, url, title, image, key))
        report["stop_s"], report["exit_code"] = _stop(rt, name, drain_s)
        report["log_tail"] = _logs(rt, name).strip().splitlines()[-5:]
    except (OSError, CheckFailed, subprocess.CalledProcessError) as e:
        raise CheckFailed(f"{e}\n--- container log ---\n{_logs(rt, name)[-4000:]}") from e
    finally:
        subprocess.run([*rt, "rm", "-f", "-v", name], capture_output=True)  # -v: its anonymous volume too
        shutil.rmtree(key_dir, ignore_errors=True)
    _verify(report)
    return report


def _verify(r: dict) -> None:
    attrs = sorted(r["model"]["attributes"])
    if sorted(r["answer"]["predictions"]) != attrs:
        raise CheckFailed(f"the answer's attributes {sorted(r['answer']['predictions'])} are not the bundle's {attrs}")
    if r["uid"] == 0 or r["user"] != "attrx":
        raise CheckFailed(f"the server runs as {r['user']} (uid {r['uid']}), not the non-root user attrx")
    if r["exit_code"] != 0 or r["stop_s"] > r["drain_timeout_s"]:
        raise CheckFailed(f"stop took {r['stop_s']:.1f} s (drain timeout {r['drain_timeout_s']} s) and exited "
                          f"{r['exit_code']}: not a clean drain")


if __name__ == "__main__":
    main()
