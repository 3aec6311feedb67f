"""Snapshot a working session, carry on, and later start again from the
snapshot (a named checkpoint), or look at what changed since."""

import os
import uuid

from spinup import Spinup

ENV = os.environ.get("SPINUP_TEST_ENV", "busybox")
name = f"session-{uuid.uuid4().hex[:8]}"

with Spinup() as client:
    with client.sandboxes.create(env=ENV, labels={"example": "snapshot"}) as sbx:
        sbx.files.write("/notes/todo.txt", "1. write the parser\n")
        sbx.files.write("/notes/draft.txt", "half an idea\n")
        snap = sbx.snapshot(name)
        print("checkpoint", snap.name, snap.layer, snap.size_bytes, "bytes")

        sbx.files.write("/notes/todo.txt", "1. write the parser\n2. oops, broke it\n")
        sbx.exec("rm /notes/draft.txt; echo scratch > /tmp/scratch", check=True)
        for c in sbx.diff(since=name).changes:
            print(f"  {c.kind:8} {c.type:4} {c.path}")

    # The session is gone; its checkpoint is not.
    with client.sandboxes.create(from_snapshot=name) as again:
        text = again.files.read_text("/notes/todo.txt")
        print("restored:", text.strip())
        assert text == "1. write the parser\n"
        assert again.files.exists("/notes/draft.txt")
    client.snapshots.remove(name)
