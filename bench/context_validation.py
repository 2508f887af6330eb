"""Benchmark: validating hostile build contexts costs time linear in the archive.

Times only the validation phase (nothing is written) of archives shaped like the attacks that
were once quadratic; beside each, the baseline in the same run: Python's ``tarfile`` reading
every member header of the same archive and checking nothing. Prints a table and writes
bench/results/context_validation.json; the tests guard the same by counting operations.

    python bench/context_validation.py [--members 20000] [--out PATH]
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
import time
from pathlib import Path

from berth.builds.context import MAX_DEPTH, _open_tar, _plan_extraction
from berth.errors import InvalidInput

DOCKERFILE = b"FROM berth/busybox:latest\n"


def archive(names: list[str], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in ["Dockerfile", *names]:
            info = tarfile.TarInfo(name)
            data = DOCKERFILE if name == "Dockerfile" else b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


def validate(data: bytes, max_files: int) -> tuple[float, str]:
    started = time.perf_counter()
    try:
        with _open_tar(io.BytesIO(data)) as tar:
            _plan_extraction(tar, 1 << 30, max_files)
        outcome = "accepted"
    except InvalidInput as exc:
        outcome = f"refused: {str(exc)[:60]}"
    return time.perf_counter() - started, outcome


def read_only(data: bytes) -> float:
    """The baseline: tarfile reads every member header, nothing is checked."""
    started = time.perf_counter()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for _ in tar:
            pass
    return time.perf_counter() - started


RESULTS = Path(__file__).resolve().parent / "results" / "context_validation.json"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    n = args.members
    spine = [f"level-{i}" for i in range(MAX_DEPTH - 5)]
    cases = {
        "200 members, 2,000 deep (the 60 s upload)": (
            archive(["a/" * 1990 + f"f{i}" for i in range(200)]),
            1000,
        ),
        f"200 members, {MAX_DEPTH} deep, distinct": (
            archive(["/".join(f"n{i}-{d}" for d in range(MAX_DEPTH)) for i in range(200)]),
            200 * MAX_DEPTH + 10,
        ),
        f"{n:,} members up to {len(spine) + 1} deep": (
            archive(["/".join([*spine[: 1 + i % len(spine)], f"f{i}"]) for i in range(n)]),
            n + 100,
        ),
        f"{n:,} symlinks through a 30-link chain": (
            archive(
                ["s0"],
                {
                    **{f"s{i}": f"d/../s{i - 1}" for i in range(1, 31)},
                    **{f"many/l{i}": "../s30" for i in range(n)},
                },
            ),
            n + 100,
        ),
    }
    rows = []
    print(f"{'archive':48} {'size':>8}  {'Berth':>8}  {'tarfile':>8}  outcome")
    for label, (data, max_files) in cases.items():
        seconds, outcome = validate(data, max_files)
        baseline = read_only(data)
        rows.append(
            {
                "archive": label,
                "bytes": len(data),
                "validate_seconds": round(seconds, 4),
                "tarfile_read_seconds": round(baseline, 4),
                "outcome": outcome,
            }
        )
        print(
            f"{label:48} {len(data) / 1e6:6.1f} MB  {seconds:7.3f} s  {baseline:7.3f} s  {outcome}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"members": n, "cases": rows}, indent=2) + "\n")
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
