#!/usr/bin/env python3
"""Parse Apptainer's own definition-file test data with instancelib; report any difference.

    python3 tools/apptainer_deffile_parity.py APPTAINER_CHECKOUT

APPTAINER_CHECKOUT is a clone of github.com/apptainer/apptainer (not shipped here: the
data is theirs). Each case of its parser tests is read the way that test reads it (its
testdata_good with ParseDefinitionFile: ``Definition.parse``; testdata_multi with All:
``Definition.parse_stages``) and compared with the case's JSON, field by field
(``Definition.to_dict`` has Apptainer's shape); every testdata_bad file must be refused.
Exit status 1 if anything differs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from instancelib import Definition, DefinitionError

# The cases Apptainer's tests use (its fixtures without a test, such as multistage in
# testdata_good, are stale and left out; shub is disabled there too).
GOOD = ["arch/arch", "apps/apps", "busybox/busybox", "debootstrap/debootstrap", "docker/docker",
        "fingerprint/fingerprint", "localimage/localimage", "scratch/scratch", "yum/yum",
        "zypper/zypper", "zypper_sle/zypper", "noheader/noheader",
        "noheadercomments/noheadercomments", "noheaderwhitespace/noheaderwhitespace",
        "multiplescripts/multiplescripts", "sectionargs/sectionargs",
        "multiplefiles/multiplefiles", "quotedfiles/quotedfiles", "shebang/shebang",
        "shebang_test/shebang_test"]
MULTI = ["single/docker", "simple/simple", "noheader/noheader",
         "noheadercomments/noheadercomments", "noheaderwhitespace/noheaderwhitespace"]


def differences(got: dict, expected: dict, where: str) -> list[str]:  # type: ignore[type-arg]
    return [f"{where}: {key}: ours {json.dumps(got.get(key))[:300]} / Apptainer's "
            f"{json.dumps(expected.get(key))[:300]}"
            for key in sorted(set(got) | set(expected)) if got.get(key) != expected.get(key)]


def main() -> int:
    if len(sys.argv) != 2:
        sys.stderr.write(__doc__)
        return 2
    base = Path(sys.argv[1]) / "pkg" / "build" / "types" / "parser"
    problems: list[str] = []
    for case in GOOD:
        text = (base / "testdata_good" / case).read_text()
        expected = json.loads((base / "testdata_good" / f"{case}.json").read_text())
        problems += differences(Definition.parse(text).to_dict(), expected, f"good/{case}")
    for case in MULTI:
        text = (base / "testdata_multi" / case).read_text()
        expected = json.loads((base / "testdata_multi" / f"{case}.json").read_text())
        got = [stage.to_dict() for stage in Definition.parse_stages(text)]
        if len(got) != len(expected):
            problems.append(f"multi/{case}: {len(got)} stages, Apptainer's {len(expected)}")
        for n, (ours, theirs) in enumerate(zip(got, expected, strict=False)):
            problems += differences(ours, theirs, f"multi/{case}[{n}]")
    bad = sorted((base / "testdata_bad").iterdir())
    for path in bad:
        try:
            Definition.parse_stages(path.read_text())
            problems.append(f"bad/{path.name}: accepted")
        except DefinitionError:
            pass
    print("\n".join(problems) if problems else
          f"same as Apptainer: {len(GOOD)} good, {len(MULTI)} multi-stage, {len(bad)} refused")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
