#!/usr/bin/env python3
"""Writes the machine-readable (DEP-5) copyright file of the prom-daemon package.

usage: gen-copyright.py METADATA.json TRIPLE [PACKAGE] > copyright

PACKAGE is prom-daemon (the default) or prom-bridge.

METADATA.json is `cargo metadata --format-version 1 --filter-platform TRIPLE`. The crates
listed are exactly those linked into /usr/bin/prom-daemon and /usr/bin/promctl for that
target: the resolve graph walked from prom-daemon over normal (not build or dev)
dependencies (from prom-bridge for its package: /usr/bin/prom-bridge), leaving out proc-macro crates, which run in the compiler and put no code of
their own into the binaries. Called by scripts/package.sh once per architecture, so the
file changes whenever Cargo.lock does.
"""

import datetime
import json
import os
import re
import subprocess
import sys

# Licences Debian ships in /usr/share/common-licenses (referenced, not copied).
COMMON = {"Apache-2.0", "MPL-2.0", "CC0-1.0", "GPL-2", "GPL-3", "LGPL-2.1", "LGPL-3"}

# Where crates keep the text of each licence, tried in order (file names, case-insensitive).
TEXT_FILES = {
    "MIT": ["LICENSE-MIT", "LICENSE-MIT.md", "LICENSE-MIT.txt", "license-mit"],
    "Zlib": ["LICENSE-ZLIB", "LICENSE-ZLIB.md", "LICENSE-Zlib"],
    "BSD-3-Clause": ["LICENSE-BSD", "LICENSE-BSD-3-Clause", "LICENSE-BSD3"],
    "Unlicense": ["UNLICENSE", "LICENSE-UNLICENSE"],
    "0BSD": ["LICENSE-0BSD", "LICENSE-0BSD.md"],
    "Unicode-3.0": ["LICENSE-UNICODE"],
}
# Single-licence crates keep their text in a plain LICENSE file.
PLAIN = ["LICENSE", "LICENSE.md", "LICENSE.txt", "COPYING"]

# torchvision's BSD-3-Clause notice (the weights of the ImageNet model, docs/MODELS.md).
TORCHVISION = "2016, Soumith Chintala (torchvision)"


# The BSD-3-Clause terms (for torchvision's weights when no crate ships the text).
BSD3 = """Redistribution and use in source and binary forms, with or without modification, are
permitted provided that the following conditions are met:

1. Redistributions of source code must retain the above copyright notice, this list of
   conditions and the following disclaimer.

2. Redistributions in binary form must reproduce the above copyright notice, this list of
   conditions and the following disclaimer in the documentation and/or other materials
   provided with the distribution.

3. Neither the name of the copyright holder nor the names of its contributors may be used
   to endorse or promote products derived from this software without specific prior
   written permission.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS" AND ANY EXPRESS
OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE IMPLIED WARRANTIES OF
MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE DISCLAIMED. IN NO EVENT SHALL THE
COPYRIGHT HOLDER OR CONTRIBUTORS BE LIABLE FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL,
EXEMPLARY, OR CONSEQUENTIAL DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF
SUBSTITUTE GOODS OR SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION)
HOWEVER CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT LIABILITY, OR
TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE OF THIS
SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE."""


def dep5_expression(spdx):
    """SPDX expression -> DEP-5 License field ("MIT or Apache-2.0", "... with X exception")."""
    s = spdx.replace("/", " OR ")  # old crates.io style "MIT/Apache-2.0"
    s = re.sub(r"\s+WITH\s+([A-Za-z0-9.-]+?)-exception\b", r" with \1 exception", s)
    s = re.sub(r"\s+OR\s+", " or ", s)
    s = re.sub(r"\s+AND\s+", " and ", s)
    return " ".join(s.split())


def short_names(spdx):
    names = set(re.findall(r"[A-Za-z0-9.+-]+", spdx.replace("/", " ")))
    return {
        n
        for n in names
        if n.upper() not in {"OR", "AND", "WITH"} and not n.endswith("-exception")
    }


def linked_packages(meta, root_name):
    pkgs = {p["id"]: p for p in meta["packages"]}
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    root = next(
        p["id"]
        for p in meta["packages"]
        if p["name"] == root_name and p["source"] is None
    )
    seen, stack = set(), [root]
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        for dep in nodes[pid]["deps"]:
            if not any(k["kind"] is None for k in dep["dep_kinds"]):
                continue
            target_kinds = {k for t in pkgs[dep["pkg"]]["targets"] for k in t["kind"]}
            if "proc-macro" in target_kinds:
                continue
            stack.append(dep["pkg"])
    return [pkgs[i] for i in seen], pkgs[root]


def project_years():
    """First-last year of the git history ("2026", "2025-2026"); this year without git."""
    try:
        out = subprocess.run(
            ["git", "log", "--format=%ad", "--date=format:%Y"],
            check=True,
            capture_output=True,
            text=True,
            cwd=os.path.dirname(__file__),
        ).stdout
        years = sorted(set(out.split()))
    except (OSError, subprocess.CalledProcessError):
        years = []
    if not years:
        years = [str(datetime.date.today().year)]
    return years[0] if years[0] == years[-1] else f"{years[0]}-{years[-1]}"


def find_text(pkg, licence, single):
    folder = os.path.dirname(pkg["manifest_path"])
    try:
        files = {f.lower(): f for f in os.listdir(folder)}
    except OSError:
        return None
    names = TEXT_FILES.get(licence, []) + (PLAIN if single else [])
    for n in names:
        f = files.get(n.lower())
        if f:
            with open(
                os.path.join(folder, f), encoding="utf-8", errors="replace"
            ) as fh:
                return fh.read()
    return None


def field_text(text):
    """A multi-line field body: each line indented, empty lines as " ."."""
    out = []
    for line in text.strip("\n").splitlines():
        line = line.rstrip()
        out.append(" " + line if line.strip() else " .")
    return "\n".join(out)


def main():
    meta_path, triple = sys.argv[1], sys.argv[2]
    package = sys.argv[3] if len(sys.argv) > 3 else "prom-daemon"
    if package not in ("prom-daemon", "prom-bridge"):
        sys.exit(f"gen-copyright: unknown package {package} (prom-daemon, prom-bridge)")
    with open(meta_path, encoding="utf-8") as fh:
        meta = json.load(fh)
    linked, root = linked_packages(meta, package)
    ours = [p for p in linked if p["source"] is None]
    crates = sorted(
        (p for p in linked if p["source"] is not None),
        key=lambda p: (p["name"], p["version"]),
    )

    out = []
    out.append(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
        "Upstream-Name: prom-daemon\n"
        f"Source: {root.get('repository') or 'https://example.invalid/prom-daemon'}\n"
        "Comment: Generated by packaging/gen-copyright.py from `cargo metadata` for\n"
        f" {triple}. The binaries link statically the {len(crates)} crates listed below\n"
        " (sources from crates.io, at the versions in Cargo.lock); their Files patterns name\n"
        " the crate sources as vendor/NAME-VERSION/."
    )
    authors = ", ".join(root.get("authors") or ["prom-daemon developers"])
    years = project_years()
    workspace = sorted(p["name"] for p in ours)
    models = (
        ", and the Fashion-MNIST model\n"
        " /usr/share/prom/models/fashion-mnist-prom.prom (trained by the project on the\n"
        " MIT-licensed Fashion-MNIST data set from torchvision's BSD-3-Clause initial weights)."
    )
    out.append(
        "Files: *\n"
        f"Copyright: {years} {authors}\n"
        f"License: {dep5_expression(root['license'])}\n"
        f"Comment: The workspace crates {', '.join(workspace)}"
        + (models if package == "prom-daemon" else ".")
    )
    if package == "prom-daemon":
        out.append(
            "Files: usr/share/prom/models/mobilenetv2-imagenet-int8.prom\n"
            f"Copyright: {TORCHVISION}\n"
            "License: BSD-3-Clause\n"
            "Comment: torchvision's MobileNetV2 IMAGENET1K_V1 weights, quantized to int8 by "
            "the\n project (models/make-imagenet-int8.sh); a derived work under torchvision's "
            "licence."
        )

    used = short_names(root["license"]) | (
        {"BSD-3-Clause"} if package == "prom-daemon" else set()
    )
    for p in crates:
        spdx = p.get("license")
        if not spdx:
            sys.exit(f"gen-copyright: {p['name']} {p['version']} declares no licence")
        used |= short_names(spdx)
        owners = (
            ", ".join(a.replace("\n", " ") for a in p.get("authors") or [])
            or f"the {p['name']} authors"
        )
        out.append(
            f"Files: vendor/{p['name']}-{p['version']}/*\n"
            f"Copyright: {owners}\n"
            f"License: {dep5_expression(spdx)}\n"
            f"Comment: crates.io {p['name']} {p['version']}"
            + (f", {p['repository']}" if p.get("repository") else "")
        )

    # One stand-alone paragraph per licence named above.
    for licence in sorted(used):
        if licence in COMMON:
            out.append(
                f"License: {licence}\n"
                f" On Debian systems, the complete text of this licence can be found in\n"
                f" /usr/share/common-licenses/{licence}."
            )
            continue
        text = None
        for p in crates:
            names = short_names(p["license"])
            if licence in names:
                text = find_text(p, licence, single=len(names) == 1)
                if text:
                    source = f"{p['name']} {p['version']}"
                    break
        if text:
            out.append(
                f"License: {licence}\n{field_text(text)}\n .\n (Text as shipped by the crate {source}.)"
            )
        elif licence == "BSD-3-Clause":
            out.append(f"License: {licence}\n{field_text(BSD3)}")
        else:
            out.append(
                f"License: {licence}\n"
                f" The {licence} licence (https://spdx.org/licenses/{licence}.html); the crates\n"
                " that use it ship its text in their crates.io source packages."
            )
    sys.stdout.write("\n\n".join(out) + "\n")


if __name__ == "__main__":
    main()
