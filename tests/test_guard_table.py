"""The guard's event table: one check per audit event, and `exec`/`os.rename` keep their own checks (a later
table entry used to overwrite them silently)."""
from judge import guard

SPECIAL = ("open", "os.listdir", "os.scandir", "os.rename", "object.__getattr__", "object.__setattr__",
           "object.__delattr__", "import", "exec", "os.putenv", "os.unsetenv")


def table_events() -> list[str]:
    return (list(guard.WRITE_EVENTS) + list(guard.PROCESS_EVENTS) + list(guard.NETWORK_EVENTS)
            + list(guard.DIRECT_EVENTS) + list(guard.CTYPES_EVENTS) + list(guard.ALWAYS_DENIED) + list(SPECIAL))


def test_no_event_is_listed_twice():
    events = table_events()
    assert sorted({e for e in events if events.count(e) > 1}) == []


def test_the_built_table_has_exec_and_rename_checks_of_their_own(tmp_path):
    policy = dict(deny_read=(), allow_read=None, allow_write=(str(tmp_path),), protect=frozenset(),
                  candidates=frozenset(), no_code=(), code_ok=(), watch=frozenset(), watch_files=frozenset(),
                  programs=frozenset(), subprocess=False, network=False, pid=0, checkpoint_paths=frozenset(),
                  checkpoint_fn=None)
    checks = guard._event_checks(policy, lambda p: str(p), None)
    assert sorted(checks) == sorted(table_events())
    assert checks["exec"]((compile("1", "<x>", "exec"),), True) == "calls exec from the candidate's code"
    assert "os.rename on /etc/passwd" in (checks["os.rename"](("/etc/passwd", str(tmp_path / "a")), False) or "")
    assert checks["os.rename"]((str(tmp_path / "a"), str(tmp_path / "b")), False) is None
