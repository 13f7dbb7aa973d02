"""The matrix itself (`proctor.batch`): the cross product, stable run names, the worst exit code."""

from __future__ import annotations

from pathlib import Path

from proctor.batch import expand, is_matrix, new_batch_id, run_names, worst_exit
from proctor.server.schemas import JOB_ID_RE

A, B = "subject=http://127.0.0.1:1/v1@qwen", "subject=http://127.0.0.1:2/v1@llama"
J = "judge=http://127.0.0.1:3/v1@gpt"


def test_roles_given_several_times_multiply_and_a_role_given_once_applies_to_every_cell() -> None:
    cells = expand([Path("a.yaml"), Path("b.yaml")], [A, J, B])
    assert len(cells) == 4
    assert [(c.spec.name, c.models) for c in cells] == [
        ("a.yaml", (A, J)),
        ("a.yaml", (B, J)),
        ("b.yaml", (A, J)),
        ("b.yaml", (B, J)),
    ]
    assert [c.model_label for c in cells] == ["qwen", "llama", "qwen", "llama"]
    both = expand([Path("a.yaml")], [A, B, J, "judge=http://127.0.0.1:4/v1"])
    assert len(both) == 4 and both[1].model_label == "subject=qwen judge=http://127.0.0.1:4/v1"


def test_what_is_a_matrix() -> None:
    assert not is_matrix([Path("a.yaml")], [A, J])
    assert not is_matrix([Path("a.yaml")], [])
    assert is_matrix([Path("a.yaml")], [A, B])
    assert is_matrix([Path("a.yaml"), Path("b.yaml")], [])


def test_run_names_are_stable_readable_and_unique() -> None:
    cells = expand([Path("a.yaml"), Path("other/a.yaml")], [A, B])
    names = run_names(cells, ["arith", "arith", "arith", "arith"])
    assert names == run_names(expand([Path("a.yaml"), Path("other/a.yaml")], [A, B]), ["arith"] * 4)
    assert len(set(names)) == 4  # two specs named alike: a digest tells them apart
    assert all(name.startswith(("arith--qwen-", "arith--llama-")) for name in names)
    assert run_names(expand([Path("a.yaml")], [A, B]), ["arith", "arith"]) == ["arith--qwen", "arith--llama"]
    # no model varies: the name a single `proctor run` would use, so either resumes the other
    assert run_names(expand([Path("a.yaml"), Path("b.yaml")], [A]), ["one", "two"]) == ["one", "two"]
    odd = expand([Path("a.yaml")], ["subject=http://h:1/v1@org/model name", "subject=http://h:1/v1@x"])
    assert run_names(odd, ["t", "t"])[0] == "t--org-model-name"


def test_the_worst_exit_code_wins() -> None:
    assert worst_exit([]) == 0
    assert worst_exit([0, 1, 0]) == 1
    assert worst_exit([1, 130]) == 130
    assert worst_exit([130, 2, 1]) == 2
    assert worst_exit([2, 3]) == 3
    assert worst_exit([0, 137]) == 3  # a code no run gives on its own (a signal) counts as a crash


def test_batch_ids_are_valid_ids() -> None:
    ids = {new_batch_id() for _ in range(50)}
    assert len(ids) == 50 and all(JOB_ID_RE.match(i) for i in ids)
