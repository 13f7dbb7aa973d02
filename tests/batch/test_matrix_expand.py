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
    assert [c.varied_roles for c in cells] == [("subject",)] * 4
    assert cells[1].label({"subject": "llama", "judge": "gpt"}) == "llama"
    both = expand([Path("a.yaml")], [A, B, J, "judge=http://127.0.0.1:4/v1"])
    assert len(both) == 4 and both[1].varied == (A, "judge=http://127.0.0.1:4/v1")
    assert (
        both[1].label({"subject": "qwen", "judge": "http://127.0.0.1:4/v1"})
        == "subject=qwen judge=http://127.0.0.1:4/v1"
    )
    assert expand([Path("a.yaml"), Path("b.yaml")], [J])[0].label({"subject": "fake", "judge": "gpt"}) == "fake"


def test_what_is_a_matrix() -> None:
    assert not is_matrix([Path("a.yaml")], [A, J])
    assert not is_matrix([Path("a.yaml")], [])
    assert is_matrix([Path("a.yaml")], [A, B])
    assert is_matrix([Path("a.yaml"), Path("b.yaml")], [])


def test_run_names_are_stable_readable_and_unique() -> None:
    def names_of(specs: list[str], models: list[str], tasks: list[str], labels: list[str]) -> list[str]:
        return run_names(expand([Path(s) for s in specs], models), tasks, labels)

    names = names_of(["a.yaml", "other/a.yaml"], [A, B], ["arith"] * 4, ["qwen", "llama"] * 2)
    assert names == names_of(["a.yaml", "other/a.yaml"], [A, B], ["arith"] * 4, ["qwen", "llama"] * 2)
    assert len(set(names)) == 4  # two specs named alike: a digest tells them apart
    assert all(name.startswith(("arith--qwen-", "arith--llama-")) for name in names)
    assert names_of(["a.yaml"], [A, B], ["arith"] * 2, ["qwen", "llama"]) == ["arith--qwen", "arith--llama"]
    # no model varies: the name a single `proctor run` would use, so either resumes the other
    assert names_of(["a.yaml", "b.yaml"], [A], ["one", "two"], ["qwen", "qwen"]) == ["one", "two"]
    assert names_of(["a.yaml"], [A, B], ["t", "t"], ["org/model name", "x"])[0] == "t--org-model-name"


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
