"""Workspace records: atomic creation, owner filtering, safe ids, damaged entries skipped."""

import json

import pytest

from oodgen.workspace import SECRET_ENV, Workspace, WorkspaceError, browser_secret, check_id, owner_from_key


def _fill(tmp):
    (tmp / "payload.txt").write_text("x")
    return {"n": 3}


def test_create_list_get_and_owner_filtering(tmp_path):
    ws = Workspace(tmp_path)
    a = ws.create("runs", "galaxies t900", "anon-a", _fill)
    b = ws.create("runs", "dust", "anon-b", _fill)
    shared = ws.create("datasets", "public set", "anon-b", _fill, shared=True)
    assert [r.id for r in ws.list("runs", "anon-a")] == [a.id]
    assert {r.id for r in ws.list("runs")} == {a.id, b.id}
    assert [r.id for r in ws.list("datasets", "anon-a")] == [shared.id]  # shared sets are listed to everyone
    assert ws.get("runs", a.id, "anon-a").meta["n"] == 3
    assert (a.root / "payload.txt").read_text() == "x"
    with pytest.raises(WorkspaceError, match="pick one from the list"):
        ws.get("runs", b.id, "anon-a")  # someone else's run
    # a restarted app (new Workspace object) lists the same records
    assert {r.id for r in Workspace(tmp_path).list("runs")} == {a.id, b.id}


@pytest.mark.parametrize("bad", ["../etc", "a/b", "", "A" * 3, "x" * 81, ".hidden", None, "a b"])
def test_ids_that_could_escape_are_refused(tmp_path, bad):
    ws = Workspace(tmp_path)
    with pytest.raises(WorkspaceError):
        ws.get("runs", bad)
    with pytest.raises(WorkspaceError):
        check_id(bad)


def test_crash_while_writing_leaves_nothing_listed(tmp_path):
    ws = Workspace(tmp_path)

    def crash(tmp):
        (tmp / "latents.safetensors").write_bytes(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        ws.create("runs", "doomed", "anon-a", crash)
    assert ws.list("runs") == []
    assert list((tmp_path / "runs").iterdir()) == []  # the temp folder was removed too
    # what a hard kill leaves (a hidden temp folder, a folder without manifest, a damaged manifest) is skipped
    (tmp_path / "runs" / ".x-1.tmp").mkdir()
    (tmp_path / "runs" / "nomanifest").mkdir()
    (tmp_path / "runs" / "damaged").mkdir()
    (tmp_path / "runs" / "damaged" / "run.json").write_text("{not json")
    good = ws.create("runs", "good", "anon-a", _fill)
    assert [r.id for r in ws.list("runs")] == [good.id]


def test_names_are_validated(tmp_path):
    ws = Workspace(tmp_path)
    for bad, msg in [("", "empty"), ("a/b", "slashes"), ("x" * 61, "at most"), ("bell\x07", "control")]:
        with pytest.raises(WorkspaceError, match=msg):
            ws.create("runs", bad, "anon-a", _fill)


def test_update_and_delete(tmp_path):
    ws = Workspace(tmp_path)
    r = ws.create("generated", "set", "anon-a", _fill)
    assert ws.update("generated", r.id, shared=True).shared
    assert json.loads((r.root / "generated.json").read_text())["shared"] is True
    ws.delete("generated", r.id, "anon-a")
    assert ws.list("generated") == []


def test_owner_ids_do_not_reveal_the_browser_key():
    key = "0123456789abcdef0123456789abcdef"
    owner = owner_from_key(key)
    assert owner.startswith("anon-") and key not in owner and owner == owner_from_key(key)
    with pytest.raises(WorkspaceError):
        owner_from_key("short")


def test_browser_secret_is_made_once_private_and_survives_restarts(tmp_path, monkeypatch):
    """A restarted app must read what browsers stored (their workspace key), so the secret is kept, not redrawn."""
    monkeypatch.delenv(SECRET_ENV, raising=False)
    first = browser_secret(tmp_path)
    assert len(first) >= 32 and browser_secret(tmp_path) == first  # a second process (or a restart) gets the same one
    f = tmp_path / ".browser_secret"
    assert f.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [".browser_secret"]  # no temporary file left behind
    f.chmod(0o644)
    assert browser_secret(tmp_path) == first and f.stat().st_mode & 0o777 == 0o600  # made private again
    assert browser_secret(tmp_path / "other") != first  # another workspace, another secret
    monkeypatch.setenv(SECRET_ENV, "a-space-secret-of-enough-length")
    assert browser_secret(tmp_path) == "a-space-secret-of-enough-length"  # a Space's secret wins
    monkeypatch.setenv(SECRET_ENV, "short")
    with pytest.raises(WorkspaceError, match="at least 16"):
        browser_secret(tmp_path)


def test_hugging_face_names_map_to_distinct_owners():
    from oodgen.workspace import ID_RE, owner_from_login

    names = ["a-b", "a_b", "a.b", "A.B", "x" * 41, "x" * 40, "émile", "emile"]
    owners = [owner_from_login(n) for n in names]
    assert owners[0] == "hf-a-b" and owner_from_login("Alice") == owner_from_login("alice") == "hf-alice"  # plain names keep their id
    assert owners[2] == owners[3]  # the same Hugging Face account (names are unique regardless of case)
    distinct = [o for k, o in enumerate(owners) if k != 3]
    assert len(set(distinct)) == len(distinct), owners  # before: a_b, a.b and a-b were one owner, and so were the x's
    assert all(ID_RE.fullmatch(o) for o in owners)
