"""The source never evaluates text, never unpickles without weights_only, and trusts no remote code by default."""

import ast
from pathlib import Path

from vineppo.config import Config

SOURCE = Path(__file__).resolve().parents[1] / "src" / "vineppo"


def calls():
    for path in sorted(SOURCE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call):
                yield f"{path.relative_to(SOURCE)}:{node.lineno}", node


def keyword(node: ast.Call, name: str):
    return next((k.value for k in node.keywords if k.arg == name), None)


def test_the_scan_sees_the_source():
    assert sum(1 for _ in calls()) > 100


def test_no_eval_or_exec():
    found = [where for where, node in calls() if isinstance(node.func, ast.Name) and node.func.id in {"eval", "exec"}]
    assert found == []


def test_torch_load_always_with_weights_only():
    for where, node in calls():
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "load" and getattr(func.value, "id", None) == "torch":
            value = keyword(node, "weights_only")
            assert isinstance(value, ast.Constant) and value.value is True, where


def test_remote_code_is_never_trusted_by_default():
    assert Config().model.trust_remote_code is False
    for where, node in calls():
        value = keyword(node, "trust_remote_code")
        assert not (isinstance(value, ast.Constant) and value.value is True), where
