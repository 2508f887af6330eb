"""Backups of one tenant database, as each engine makes them: the interface, the fingerprint a
backup is verified against, and the edges every engine shares (running a client tool, a file
written atomically and privately).

A ``Fingerprint`` is what "the same content" means: per table, its row count and a digest of
its rows (SQL engines), or the key count and a digest of the dumped values (Redis). ``dump``
takes it from the same snapshot as the file; ``verify`` restores the file into a scratch
database of the source's server (names derived from the ids, dropped afterwards whatever
happens) and takes it there. Equal fingerprints, and only then, make a backup verified.

Client tools run as argument lists with a minimal environment; a password travels only in the
child's environment (PGPASSWORD, MYSQL_PWD), never on a command line or in a log.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from berth.databases.names import Engine, ServerNames, server_names
from berth.databases.provider import Account
from berth.errors import BerthError

# {table (or "keys"): [rows, digest]}: JSON as it is.
Fingerprint = dict[str, list[str | int]]


class BackupFailed(BerthError):
    """A dump, a restore or a verification failed; the message says which and why."""

    status = 502
    code = "backup_failed"


class Backups(Protocol):
    engine: Engine

    def dump(self, account: Account, path: Path) -> Fingerprint:
        """Write the database to ``path`` (a new file; the caller renames it into place) and
        return the fingerprint of the content it holds."""

    def verify(self, account: Account, path: Path) -> Fingerprint:
        """Restore ``path`` into the account's scratch database and return its fingerprint;
        the scratch database is dropped after, whatever happened."""

    def restore(self, source: Account, target: Account, path: Path) -> None:
        """Replace ``target``'s content with the backup of ``source`` at ``path``."""


def scratch_names(account: Account) -> ServerNames:
    """The scratch database a backup of ``account`` is verified in: derived like every name
    (so never a tenant's), and the same for every backup of the database (a leftover from a
    crash is dropped by the next one)."""
    return server_names(account.tenant_id, f"scratch{account.database_id}")


@dataclass(frozen=True)
class Tools:
    """The client programs, from the distro (tests point one at a broken stand-in)."""

    pg_dump: str = "pg_dump"
    pg_restore: str = "pg_restore"
    mariadb_dump: str = "mariadb-dump"
    mariadb: str = "mariadb"
    timeout: float = 3600.0

    def path(self, name: str) -> str:
        found = shutil.which(name)
        if found is None:
            raise BackupFailed(f"{name} is not installed on the Berth server")
        return found


def _tail(text: bytes, limit: int = 600) -> str:
    return text.decode(errors="replace").strip()[-limit:]


def run_tool(
    argv: list[str],
    *,
    secret_env: Mapping[str, str],
    what: str,
    timeout: float,
    stdin: Iterator[bytes] | None = None,
) -> None:
    """Run a client tool; a non-zero exit is a ``BackupFailed`` with the end of its stderr.
    ``stdin`` is streamed in chunks (the restore's dump file, rewritten as it goes)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", **secret_env}
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            raise BackupFailed(f"{what}: {argv[0]} could not run: {exc.strerror}") from None
        try:
            if stdin is not None:
                assert proc.stdin is not None
                try:
                    for chunk in stdin:
                        proc.stdin.write(chunk)
                except BrokenPipeError:
                    pass  # the tool stopped reading: its exit status and stderr say why
                finally:
                    with suppress(BrokenPipeError):
                        proc.stdin.close()
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise BackupFailed(f"{what}: {Path(argv[0]).name} took over {timeout:.0f} s") from None
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if code != 0:
            err.seek(0)
            detail = _tail(err.read())
            for secret in secret_env.values():
                if secret:
                    detail = detail.replace(secret, "***")
            raise BackupFailed(
                f"{what}: {Path(argv[0]).name} exited with {code}: {detail or '(no message)'}"
            )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def private_file(final: Path) -> Iterator[Path]:
    """A temporary file beside ``final`` (0600 from its creation), renamed onto ``final`` once
    the body succeeded and the data is on disk; removed if it did not."""
    final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", dir=final.parent)
    os.close(fd)
    temp = Path(name)
    try:
        yield temp
        os.chmod(temp, 0o600)
        with open(temp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(temp, final)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def compare(source: Fingerprint, restored: Fingerprint) -> str:
    """Why ``restored`` is not ``source`` (empty when equal), for the backup's reason."""
    if source == restored:
        return ""
    missing = sorted(set(source) - set(restored))
    extra = sorted(set(restored) - set(source))
    if missing:
        return f"the restored copy lacks {', '.join(missing[:5])}"
    if extra:
        return f"the restored copy has more: {', '.join(extra[:5])}"
    differ = sorted(k for k in source if source[k] != restored[k])
    details = [
        f"{k} (rows {source[k][0]} -> {restored[k][0]}"
        + (", content differs)" if source[k][0] == restored[k][0] else ")")
        for k in differ[:5]
    ]
    return f"the restored copy differs: {'; '.join(details)}"
